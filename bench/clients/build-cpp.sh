#!/usr/bin/env bash
# Builds the two C/C++ reference clients of the bench harness:
#   OUT_DIR/curl-client     libcurl multi interface (bench/clients/curl_client.cpp)
#   OUT_DIR/cpprest-client  cpprestsdk http_client with its OAuth 2.0 config (bench/clients/cpprest_client.cpp)
# Usage: bash bench/clients/build-cpp.sh OUT_DIR
# Needs g++ (C++20), pkg-config, libcurl4-openssl-dev, libcpprest-dev (which brings boost and libssl-dev).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
out=$1
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cxx=${CXX:-g++}
cxxflags=(-std=c++20 -O2 -g -Wall -Wextra -Wpedantic -Werror)

missing() {
    echo "build-cpp.sh: $1 not found; install it with: apt-get install $2" >&2
    exit 1
}
command -v "$cxx" >/dev/null || missing "$cxx" g++
command -v pkg-config >/dev/null || missing pkg-config pkg-config
pkg-config --exists libcurl || missing "libcurl development files (pkg-config libcurl)" libcurl4-openssl-dev
echo '#include <cpprest/http_client.h>' | "$cxx" -std=c++20 -fsyntax-only -x c++ - 2>/dev/null \
    || missing "cpprest development files (<cpprest/http_client.h>)" libcpprest-dev
pkg-config --exists openssl || missing "OpenSSL development files (pkg-config openssl)" libssl-dev

mkdir -p "$out"

# Both at once: the cpprest one (boost headers) takes most of the time.
# shellcheck disable=SC2046  # pkg-config output is meant to be split into words
"$cxx" "${cxxflags[@]}" $(pkg-config --cflags libcurl) "$src/curl_client.cpp" \
    -o "$out/curl-client" $(pkg-config --libs libcurl) &
curl_build=$!

# cpprest and its boost/OpenSSL headers live in /usr/include, so their warnings are already
# suppressed as system headers.
"$cxx" "${cxxflags[@]}" "$src/cpprest_client.cpp" -o "$out/cpprest-client" \
    -lcpprest -lssl -lcrypto -lpthread
wait "$curl_build"

echo "built $out/curl-client $out/cpprest-client"
