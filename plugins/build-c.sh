#!/usr/bin/env bash
# Builds the example plugin written in C into plugins/greeter-c.wasm
# (`./dev build-plugins` calls this).
#
#   1. clang compiles plugins/greeter-c/greeter.c and the committed `wit-bindgen c`
#      output in plugins/greeter-c/bindings/ (world `handler-only`) into a core
#      wasm32-wasi (WASI preview1) module, a reactor, against Debian's wasi-libc;
#   2. tools/componentize (a workspace member, `cargo build -p componentize`)
#      makes it a component with wasmtime's preview1 reactor adapter.
#
# The toolchain comes from Debian (bookworm: clang 14): clang, lld (wasm-ld),
# wasi-libc and libclang-rt-14-dev-wasm32 (compiler-rt's builtins for wasm32),
# installed with apt-get if missing. The component is rebuilt only when its
# source, its bindings, this script or the componentizer is newer than it.
# plugins/greeter-c/regen-bindings.sh regenerates the bindings after a WIT change.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(clang lld wasi-libc libclang-rt-14-dev-wasm32)
# Debian's wasi-libc: headers in /usr/include/wasm32-wasi, libraries in
# /usr/lib/wasm32-wasi, which is what clang looks for under the sysroot /usr.
SYSROOT=/usr
SRC=plugins/greeter-c
OUT=plugins/greeter-c.wasm
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# True if $1 exists and no file in the remaining files and folders is newer.
up_to_date() {
    local out=$1
    shift
    [ -f "$out" ] && [ -z "$(find "$@" -type f -newer "$out" -print -quit)" ]
}

installed() {
    dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed
}

ensure_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        installed "$p" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    if ! command -v apt-get >/dev/null; then
        echo "error: the C example plugin needs clang, lld (wasm-ld), wasi-libc and" \
            "compiler-rt's wasm32 builtins; this script installs and finds them as the" \
            "Debian packages ${PACKAGES[*]}, and this machine has no apt-get" >&2
        exit 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "error: the C example plugin needs these Debian packages: ${missing[*]};" \
                "install them as root (apt-get install ${missing[*]})" >&2
            exit 1
        fi
        sudo=(sudo)
    fi
    say "installing ${missing[*]} with apt-get (the C example plugin's toolchain)"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet: update once if the install fails.
    if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

if up_to_date "$OUT" "$SRC/greeter.c" "$SRC/bindings" plugins/build-c.sh \
    tools/componentize/src tools/componentize/Cargo.toml; then
    exit 0
fi

ensure_packages
say "building the componentizer (cargo build -p componentize)"
cargo build --quiet -p componentize
componentize="$TARGET_DIR/debug/componentize"

say "building $OUT (clang, wasm32-wasi reactor + preview1 adapter)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc=(clang --target=wasm32-wasi --sysroot="$SYSROOT" -O2 -std=c11)
# The plugin's own code is held to every warning; the generated code only to -Wall.
"${cc[@]}" -Wall -Wextra -Wpedantic -Wconversion -Werror -I"$SRC/bindings" \
    -c "$SRC/greeter.c" -o "$work/greeter.o"
"${cc[@]}" -Wall -Werror -c "$SRC/bindings/handler_only.c" -o "$work/handler_only.o"
# A reactor: no `main`; `_initialize` sets up libc, then the exports are called.
"${cc[@]}" -mexec-model=reactor -Wl,--strip-debug -o "$work/core.wasm" \
    "$work/greeter.o" "$work/handler_only.o" "$SRC/bindings/handler_only_component_type.o"

# Rename into place: the host watching plugins/ never reads a half-written file.
tmp="plugins/.greeter-c.wasm.tmp"
if ! "$componentize" "$work/core.wasm" -o "$tmp"; then
    rm -f "$tmp"
    echo "error: building $OUT failed" >&2
    exit 1
fi
mv "$tmp" "$OUT"
