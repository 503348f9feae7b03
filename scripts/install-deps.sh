#!/usr/bin/env bash
# Install the Debian packages needed to build, test and demo confluence_oauth,
# then the browser tests' npm packages (scripts/install-node-deps.sh).
# Idempotent: does nothing (a line or two of output) when everything is present.
#
# Usage: scripts/install-deps.sh [--no-browser] [--bench]
#   --no-browser   do not require/install chromium, Node.js and the browser
#                  tests' npm packages (the demo and tests then fall back to
#                  the built fake-browser)
#   --bench        also what bench/run needs: nginx, wrk, the rival clients'
#                  libraries, Node.js, jq, GNU time, valgrind and gnuplot
set -euo pipefail

with_browser=1
with_bench=0
for arg in "$@"; do
  case "$arg" in
    --no-browser) with_browser=0 ;;
    --bench) with_bench=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

packages=(
  g++ cmake ninja-build pkg-config
  clang-14 libclang-rt-14-dev  # test.sh's ASan+UBSan stage (libclang-rt: sanitizer runtimes)
  libasio-dev libssl-dev nlohmann-json3-dev doctest-dev
  meson ca-certificates
  doxygen  # scripts/check_docs.sh: the public API's doc comments (docs/Doxyfile, Debian 12's 1.9.4)
  python3-venv  # scripts/test-consumers.sh: pinned conan and meson from PyPI in a venv
  libpq-dev postgresql  # confluence_oauth_postgres.hpp; its tests start a PostgreSQL 15 of their own
)
if (( with_browser )); then
  packages+=(chromium)
fi
if (( with_bench )); then
  # Go comes from go.dev's toolchain in /usr/local/go (Debian 12's 1.19 is too old for
  # bench/clients/go/go.mod): bench/clients/go/build.sh says so when it is missing.
  packages+=(nginx-light wrk curl libcurl4-openssl-dev libcpprest-dev jq time valgrind gnuplot-nox)
fi
# Node.js drives the browser tests and the axios bench client. One that came from
# elsewhere (NodeSource's nodejs bundles npm and conflicts with Debian's npm) is used as it is.
if (( with_browser || with_bench )); then
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    packages+=(nodejs npm)
  fi
fi

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

# The browser tests' npm packages, once node and npm are there.
install_node_deps() {
  if (( with_browser )); then
    bash "$(dirname "${BASH_SOURCE[0]}")/install-node-deps.sh"
  fi
}

if (( ${#missing[@]} == 0 )); then
  echo "install-deps: all ${#packages[@]} required packages are already installed"
  install_node_deps
  exit 0
fi

echo "install-deps: installing missing packages: ${missing[*]}"

sudo_cmd=()
if (( EUID != 0 )); then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "install-deps: not root and sudo is not available; please install: ${missing[*]}" >&2
    exit 1
  fi
fi

"${sudo_cmd[@]}" apt-get update
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y "${missing[@]}"
install_node_deps
