#!/usr/bin/env bash
# Builds the Go benchmark client (net/http + golang.org/x/oauth2, pinned in go.mod/go.sum):
#   bash bench/clients/go/build.sh OUT_DIR   ->   OUT_DIR/go-client
# Uses the installed go toolchain only (GOTOOLCHAIN=local: never downloads another one).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

if ! command -v go >/dev/null 2>&1; then
    if [ -x /usr/local/go/bin/go ]; then
        PATH=/usr/local/go/bin:$PATH
    else
        echo "$0: go not found (install Go 1.26 or put it on PATH)" >&2
        exit 1
    fi
fi
export GOTOOLCHAIN=local

cd "$here"
go mod download   # no-op when golang.org/x/oauth2 is already in the module cache
go build -mod=readonly -trimpath -o "$out/go-client" .
echo "built $out/go-client ($(go version))" >&2
