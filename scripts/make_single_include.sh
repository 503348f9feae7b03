#!/usr/bin/env bash
# Regenerate single_include/confluence_oauth.hpp from the root header.
# The root header is already self-contained, so the single include is an exact
# copy of it.
#
# Usage: scripts/make_single_include.sh [--check]
#   --check   do not write anything; exit 1 if the copy is missing or stale
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

src=confluence_oauth.hpp
dst=single_include/confluence_oauth.hpp

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
  *) echo "make_single_include: unknown argument: $1" >&2; exit 2 ;;
esac

if [[ ! -f "$src" ]]; then
  echo "make_single_include: $src not found" >&2
  exit 1
fi

if (( check )); then
  if [[ ! -f "$dst" ]]; then
    echo "make_single_include: $dst is missing; run scripts/make_single_include.sh" >&2
    exit 1
  fi
  if ! cmp -s "$src" "$dst"; then
    echo "make_single_include: $dst is out of date with $src; run scripts/make_single_include.sh" >&2
    exit 1
  fi
  echo "make_single_include: $dst is up to date"
  exit 0
fi

mkdir -p "$(dirname "$dst")"
tmp=$(mktemp "$dst.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cp "$src" "$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$dst"
trap - EXIT
echo "make_single_include: wrote $dst"
