#!/usr/bin/env bash
# The version is said in several places; they must all say the same:
# the header's CONFLUENCE_OAUTH_VERSION (and its MAJOR/MINOR/PATCH macros),
# CMake's project(VERSION), Meson's project(version:), the Meson wrap's
# directory and file names, and the newest release in CHANGELOG.md. (Conan's
# recipe reads the header, so it cannot differ.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

header=$(sed -nE 's/^#define CONFLUENCE_OAUTH_VERSION "([^"]+)".*/\1/p' confluence_oauth.hpp)
parts=$(for p in MAJOR MINOR PATCH; do
  sed -nE "s/^#define CONFLUENCE_OAUTH_VERSION_$p ([0-9]+).*/\1/p" confluence_oauth.hpp
done | paste -sd.)
cmake=$(sed -nE 's/^  VERSION ([0-9.]+)$/\1/p' CMakeLists.txt | head -n 1)
meson=$(sed -nE "s/^  version: '([0-9.]+)',$/\1/p" meson.build | head -n 1)
wrap_dir=$(sed -nE 's/^directory = confluence_oauth-(.+)$/\1/p' packaging/meson/confluence_oauth.wrap)
wrap_file=$(sed -nE 's/^source_filename = confluence_oauth-(.+)\.tar\.gz$/\1/p' packaging/meson/confluence_oauth.wrap)
changelog=$(sed -nE 's/^## \[([0-9]+\.[0-9]+\.[0-9]+)\].*/\1/p' CHANGELOG.md | head -n 1)

status=0
for place in "MAJOR.MINOR.PATCH macros:$parts" "CMakeLists.txt project VERSION:$cmake" \
             "meson.build project version:$meson" "Meson wrap directory:$wrap_dir" \
             "Meson wrap source_filename:$wrap_file" "newest CHANGELOG.md release:$changelog"; do
  name=${place%%:*} value=${place#*:}
  if [[ "$value" != "$header" ]]; then
    echo "check_versions: $name says '${value}', the header's CONFLUENCE_OAUTH_VERSION says '$header'"
    status=1
  fi
done
if [[ ! "$header" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  echo "check_versions: CONFLUENCE_OAUTH_VERSION '$header' is not MAJOR.MINOR.PATCH"
  status=1
fi
(( status == 0 )) && echo "check_versions: every place says version $header"
exit $status
