#!/usr/bin/env bash
# Install what the interop tests need beyond Python packages: Chromium (Debian's
# `chromium`, for test_chromium.py) and Node's `ws` package (for test_node_ws.py).
#
# Idempotent and quick when everything is there: it only calls apt-get for what is
# missing (and only as root), and only runs npm install when node_modules/ws is absent.
# Without root or apt-get it says what is missing and leaves it: those tests then skip.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
missing=()

command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ! command -v node >/dev/null 2>&1; then
    missing+=(nodejs)
fi
if ! command -v npm >/dev/null 2>&1; then
    missing+=(npm)
fi

if ((${#missing[@]})); then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "interop setup: installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "interop setup: missing ${missing[*]} and not root with apt-get;" \
            "the tests that need them will be skipped" >&2
    fi
fi

if command -v npm >/dev/null 2>&1 && [ ! -d "$here/node/node_modules/ws" ]; then
    echo "interop setup: npm install in $here/node"
    (cd "$here/node" && npm install --no-audit --no-fund --loglevel=error)
fi

echo "interop setup: chromium $(command -v chromium >/dev/null 2>&1 && echo present || echo MISSING)," \
    "node $(command -v node >/dev/null 2>&1 && node --version || echo MISSING)," \
    "ws $([ -d "$here/node/node_modules/ws" ] && echo installed || echo MISSING)"
