#!/usr/bin/env bash
# Install the Node.js packages of a folder with a package-lock.json into its
# node_modules with `npm ci`: by default the browser tests' (tests/browser,
# playwright-core); bench/run passes the axios bench client's
# (bench/clients/node axios).
# Idempotent: does nothing (one line of output) when node_modules already
# matches package-lock.json. Needs node and npm (scripts/install-deps.sh).
#
# Usage: scripts/install-node-deps.sh [DIR PACKAGE]
#   DIR      the folder, relative to the repository (default tests/browser)
#   PACKAGE  a package that must be in DIR/node_modules (default playwright-core)
set -euo pipefail

dir=${1:-tests/browser}
package=${2:-playwright-core}
cd "$(dirname "${BASH_SOURCE[0]}")/../$dir"

fail() {
  echo "install-node-deps: $*" >&2
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
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -d "node_modules/$package" ]]; then
  echo "install-node-deps: $dir/node_modules is up to date"
  exit 0
fi

echo "install-node-deps: installing $dir/node_modules (npm ci)"
npm ci --no-audit --no-fund
echo "$want" >"$stamp"
