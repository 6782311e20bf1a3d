#!/usr/bin/env bash
# Regenerates plugins/greeter-c/bindings/ (committed) from wit/plugin.wit with
# `wit-bindgen c`, for the `handler-only` world. Run it after changing the WIT;
# the normal build (plugins/build-c.sh) uses the committed files and does not
# need wit-bindgen.
#
# wit-bindgen-cli is installed, pinned and with only its C generator, into
# .tools/wit-bindgen (untracked) on first use: a few minutes of compiling.
set -euo pipefail
cd "$(dirname "$0")/../.."

WIT_BINDGEN_VERSION=0.61.1
ROOT=.tools/wit-bindgen
TOOL="$ROOT/bin/wit-bindgen"
OUT=plugins/greeter-c/bindings

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "$("$TOOL" --version 2>/dev/null | awk '{ print $2 }')" != "$WIT_BINDGEN_VERSION" ]; then
    say "installing wit-bindgen-cli $WIT_BINDGEN_VERSION (C generator only) into $ROOT"
    cargo install --locked --quiet --version "$WIT_BINDGEN_VERSION" \
        --no-default-features --features c --root "$ROOT" wit-bindgen-cli
fi

say "generating $OUT with wit-bindgen $WIT_BINDGEN_VERSION"
tmp="$OUT.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
"$TOOL" c --world handler-only --out-dir "$tmp" wit
rm -rf "$OUT"
mv "$tmp" "$OUT"
ls -l "$OUT" >&2
