#!/usr/bin/env bash
# bench/compile/run.sh — the compile cost of confluence_oauth.hpp, one
# compiler at a time (bench/run calls it; it also runs alone):
#   deps_only.cpp         the quickstart's work by hand on Asio, Asio SSL and
#                         nlohmann/json: the baseline
#   quickstart.cpp        examples/quickstart.cpp, header-only (the default)
#   quickstart.cpp (separate)
#                         the same with CONFLUENCE_OAUTH_SEPARATE_COMPILATION:
#                         what every file of a program pays in that mode
#   implementation        src/confluence_oauth.cpp: the implementation,
#                         compiled once per program in that mode
# Each is compiled with g++ and clang++-14 at -O0 and -O2 (-std=c++20 -c);
# /usr/bin/time gives wall seconds and peak memory. Writes OUT/compile.tsv.
#
# Usage: bench/compile/run.sh OUT_DIR
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${1:?usage: bench/compile/run.sh OUT_DIR}
mkdir -p "$out"
compile="$out/compile.tsv"
printf 'compiler\tflags\tfile\tseconds\tpeak_mib\n' >"$compile"
for cxx in g++ clang++-14; do
  for flags in -O0 -O2; do
    for what in deps_only quickstart separate implementation; do
      case $what in
        deps_only) file=bench/compile/deps_only.cpp label=deps_only.cpp defs=() ;;
        quickstart) file=examples/quickstart.cpp label=quickstart.cpp defs=() ;;
        separate) file=examples/quickstart.cpp label="quickstart.cpp (separate)" defs=(-DCONFLUENCE_OAUTH_SEPARATE_COMPILATION) ;;
        implementation) file=src/confluence_oauth.cpp label=implementation defs=(-DCONFLUENCE_OAUTH_SEPARATE_COMPILATION) ;;
      esac
      /usr/bin/time -f '%e %M' -o "$out/time" "$cxx" -std=c++20 $flags "${defs[@]}" -I. -c "$file" -o "$out/compile.o"
      awk -v c="$cxx" -v f="$flags" -v file="$label" '{ printf "%s\t%s\t%s\t%.1f\t%.0f\n", c, f, file, $1, $2 / 1024 }' \
        "$out/time" >>"$compile"
      tail -n 1 "$compile" | awk -F'\t' '{ printf "  %-12s %-4s %-26s %6s s %6s MiB\n", $1, $2, $3, $4, $5 }'
    done
  done
done
rm -f "$out/time" "$out/compile.o"
