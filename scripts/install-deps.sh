#!/usr/bin/env bash
# Install the Debian packages needed to build, test and demo confluence_oauth.
# Idempotent: does nothing (one line of output) when everything is present.
#
# Usage: scripts/install-deps.sh [--no-browser]
#   --no-browser   do not require/install chromium (the demo and tests then
#                  fall back to the built fake-browser)
set -euo pipefail

with_browser=1
for arg in "$@"; do
  case "$arg" in
    --no-browser) with_browser=0 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

packages=(
  g++ cmake ninja-build pkg-config
  libasio-dev libssl-dev nlohmann-json3-dev doctest-dev
  meson ca-certificates
)
if (( with_browser )); then
  packages+=(chromium)
fi

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if (( ${#missing[@]} == 0 )); then
  echo "install-deps: all ${#packages[@]} required packages are already installed"
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
