#!/usr/bin/env bash
# Install the Node.js bench client's packages (axios, pinned by package-lock.json)
# into bench/clients/node/node_modules with `npm ci`. Idempotent: does nothing
# (one line of output) when node_modules already matches package-lock.json.
# Run the client as `node bench/clients/node/client.js load|storm ...`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

fail() {
  echo "bench/clients/node/build.sh: $*" >&2
  exit 1
}

command -v node >/dev/null 2>&1 || fail "Node.js (node) is not installed: run scripts/install-deps.sh"
command -v npm >/dev/null 2>&1 || fail "npm is not installed: run scripts/install-deps.sh"
node_major=$(node -p 'process.versions.node.split(".")[0]')
if (( node_major < 18 )); then
  fail "Node.js 18 or newer is needed (package.json's engines), found $(node --version)"
fi

# The lock file's hash, recorded after a successful install: a changed lock
# file (a new pin) means node_modules is outdated.
stamp=node_modules/.install-stamp
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -d node_modules/axios ]]; then
  echo "bench/clients/node: node_modules is up to date"
  exit 0
fi

echo "bench/clients/node: installing node_modules (npm ci)"
npm ci --no-audit --no-fund
echo "$want" >"$stamp"
