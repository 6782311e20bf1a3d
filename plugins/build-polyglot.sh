#!/usr/bin/env bash
# Builds the example plugins written in Python and JavaScript into
# plugins/greeter-py.wasm and plugins/greeter-js.wasm (`./dev build-plugins` calls this).
#
# Their toolchains are installed, pinned, into .tools/ (untracked) on first use:
#   .tools/py   a venv with componentize-py (COMPONENTIZE_PY_VERSION below)
#   .tools/js   componentize-js, exactly as in plugins/greeter-js/package-lock.json
# A component is rebuilt only when its source, the WIT or its toolchain is newer than it.
#
# The examples build against the `handler-only` world: these tools import every
# interface of their world, and importing `sql` would need the operator's grant.
# The SDKs' sql test plugins build against `sql-handler`.
set -euo pipefail
cd "$(dirname "$0")/.."

COMPONENTIZE_PY_VERSION=0.25.1
TOOLS=.tools

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need() {
    if ! command -v "$1" >/dev/null; then
        echo "error: $1 not found; it is needed to build the $2 example plugin ($3)" >&2
        exit 1
    fi
}

# True if $1 exists and no file in the remaining files and folders is newer.
up_to_date() {
    local out=$1
    shift
    [ -f "$out" ] && [ -z "$(find "$@" -type f -newer "$out" -print -quit)" ]
}

# Build with "$@" (which writes $tmp), then rename into place: the host watching
# plugins/ never reads a half-written file.
build_into() {
    local out=$1
    shift
    local tmp
    tmp="$(dirname "$out")/.$(basename "$out").tmp"
    if ! "$@" -o "$tmp" >/dev/null; then
        rm -f "$tmp"
        echo "error: building $out failed" >&2
        exit 1
    fi
    mv "$tmp" "$out"
}

python_plugin() {
    local tool="$TOOLS/py/bin/componentize-py"
    if [ "$("$tool" --version 2>/dev/null)" != "componentize-py $COMPONENTIZE_PY_VERSION" ]; then
        need python3 Python "3.10 or newer, with venv"
        say "installing componentize-py $COMPONENTIZE_PY_VERSION into $TOOLS/py"
        rm -rf "$TOOLS/py"
        python3 -m venv "$TOOLS/py"
        "$TOOLS/py/bin/pip" install --quiet --disable-pip-version-check \
            "componentize-py==$COMPONENTIZE_PY_VERSION"
    fi
    py_component plugins/greeter-py.wasm plugins/greeter-py "$tool"
    # The Python SDK's test plugin, beside the Rust test plugins.
    local release="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release"
    mkdir -p "$release"
    py_component "$release/sdk-py.wasm" tests/plugins/sdk-py "$tool"
    py_component "$release/sql-py.wasm" tests/plugins/sql-py "$tool" sql-handler
    py_component "$release/http-py.wasm" tests/plugins/http-py "$tool" http-handler
    py_component "$release/pub-py.wasm" tests/plugins/pub-py "$tool" publisher
}

# Build the component $1 from the app.py in $2, with the Python SDK on the path,
# against the world $4 (default handler-only; those with HTTP are in wit/http).
py_component() {
    local out=$1 src=$2 tool=$3 world=${4:-handler-only}
    local wit=wit
    case "$world" in *http-handler) wit=wit/http ;; esac
    if up_to_date "$out" "$src" plugin-sdk/python wit "$tool"; then
        return
    fi
    say "building $out (componentize-py, about 10 s)"
    build_into "$out" "$tool" -d "$wit" -w "$world" componentize \
        -p "$src" -p plugin-sdk/python app
    # The build imports the modules, which leaves bytecode next to the source.
    rm -rf "$src/__pycache__" plugin-sdk/python/__pycache__
}

js_plugin() {
    local lock=plugins/greeter-js/package-lock.json
    local tool="$TOOLS/js/node_modules/.bin/componentize-js"
    local stamp="$TOOLS/js/installed-package-lock.json"
    if ! { [ -x "$tool" ] && cmp -s "$lock" "$stamp"; }; then
        need npm JavaScript "Node.js 20 or newer"
        say "installing componentize-js into $TOOLS/js"
        rm -rf "$TOOLS/js"
        mkdir -p "$TOOLS/js"
        cp plugins/greeter-js/package.json "$lock" "$TOOLS/js/"
        # `npm install` rather than `npm ci`: the lock may lack other platforms'
        # optional native binaries, which `npm ci` refuses. Versions and
        # integrity hashes still come from the lock.
        npm install --prefix "$TOOLS/js" --no-audit --no-fund --loglevel=error
        cp "$lock" "$stamp"
    fi
    local out=plugins/greeter-js.wasm
    if up_to_date "$out" plugins/greeter-js/greeter.js wit "$stamp"; then
        return
    fi
    say "building $out (componentize-js, about 10 s)"
    js_component "$out" plugins/greeter-js/greeter.js "$tool"
}

# Build the component $1 from the module $2 ($3: componentize-js) against the
# world $4 (default handler-only); $5 = http keeps the wasi:http import.
js_component() {
    local out=$1 src=$2 tool=$3 world=${4:-handler-only}
    # Without the http feature the component does not import wasi:http,
    # which the host treats as a capability the operator must grant.
    local features=(-d http fetch-event)
    if [ "${5:-}" = http ]; then
        features=(-d fetch-event)
    fi
    build_into "$out" "$tool" "$src" -w wit -n "$world" "${features[@]}"
}

# The JavaScript SDK's test plugin $1 (from tests/plugins/$1/app.js), against
# the world $2 ($3 = http: with the wasi:http import): componentize-js builds
# one module, so the SDK goes in front of the plugin's own code, with the parts
# its world has (sql, publish) and its http part for http.
js_sdk_plugin() {
    local name=$1 world=$2 http=${3:-}
    local tool="$TOOLS/js/node_modules/.bin/componentize-js"
    local release="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release"
    local out="$release/$name.wasm"
    mkdir -p "$release"
    if up_to_date "$out" "tests/plugins/$name" plugin-sdk/js wit "$TOOLS/js/installed-package-lock.json"; then
        return
    fi
    say "building $out (componentize-js)"
    local sdk=(plugin-sdk/js/pgevents-sdk.js)
    case "$world" in sql-handler | plugin) sdk+=(plugin-sdk/js/pgevents-sdk-sql.js) ;; esac
    case "$world" in publisher | plugin) sdk+=(plugin-sdk/js/pgevents-sdk-publish.js) ;; esac
    if [ "$http" = http ]; then
        sdk+=(plugin-sdk/js/pgevents-sdk-http.js)
    fi
    local bundle="$release/.$name.js"
    cat "${sdk[@]}" "tests/plugins/$name/app.js" >"$bundle"
    js_component "$out" "$bundle" "$tool" "$world" "$http"
    rm -f "$bundle"
}

python_plugin
js_plugin
js_sdk_plugin sdk-js handler-only
js_sdk_plugin sql-js sql-handler
js_sdk_plugin http-js handler-only http
js_sdk_plugin pub-js publisher
