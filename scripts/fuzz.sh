#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ with clang++-14 (ASan+UBSan), replays
# fuzz/regressions/<target>/*, then fuzzes each target for a while on a
# scratch copy of its corpus. Exits non-zero on any crash, leak, timeout or
# failed invariant, leaving the reproducer in build/fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [--seconds N] [--jobs N] [--merge] [--build-only] [TARGET...]
#   --seconds N    fuzz each target for N seconds (default 10; 0: replay only)
#   --jobs N       targets compiled and fuzzed at once (default 2)
#   --merge        afterwards, add the inputs that found new coverage to fuzz/corpus/<target>/
#   --build-only   compile, do not run anything
#   TARGET...      only these (default: every fuzz/*.cpp)
# Needs clang-14 and libclang-rt-14-dev (scripts/install-deps.sh installs both).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/build/fuzz"
seconds=10
jobs=2
merge=0
build_only=0
targets=()

while (( $# )); do
  case "$1" in
    --seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --merge) merge=1; shift ;;
    --build-only) build_only=1; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[[ "$seconds" =~ ^[0-9]+$ && "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --seconds and --jobs take numbers" >&2; exit 2; }
if (( ${#targets[@]} == 0 )); then
  for f in "$root"/fuzz/*.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi
for t in "${targets[@]}"; do
  [[ -f "$root/fuzz/$t.cpp" ]] || { echo "fuzz.sh: no target fuzz/$t.cpp" >&2; exit 2; }
done

cxx=clang++-14
command -v "$cxx" >/dev/null || { echo "fuzz.sh: $cxx not found: install clang-14 (scripts/install-deps.sh)" >&2; exit 1; }
# -gline-tables-only: enough for the sanitizers' backtraces, and faster to compile than -g.
flags=(-std=c++20 -O1 -gline-tables-only -fsanitize=fuzzer,address,undefined -fno-sanitize=function -fno-sanitize-recover=undefined
       -Wall -Wextra -Wpedantic -Werror -I "$root")
libs=(-lssl -lcrypto -pthread)
mkdir -p "$out"

# libFuzzer and the sanitizer runtimes come with libclang-rt-14-dev.
if [[ ! -x "$out/.probe" ]]; then
  printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' > "$out/.probe.cpp"
  if ! "$cxx" -fsanitize=fuzzer,address,undefined "$out/.probe.cpp" -o "$out/.probe" 2> "$out/.probe.log"; then
    cat "$out/.probe.log" >&2
    echo "fuzz.sh: cannot link libFuzzer: install libclang-rt-14-dev (scripts/install-deps.sh)" >&2
    exit 1
  fi
fi

# Rebuilds a target when its source, the shared fuzz header or the library is newer.
build() {
  local t=$1 bin="$out/$1"
  if [[ -x "$bin" && "$bin" -nt "$root/fuzz/$t.cpp" && "$bin" -nt "$root/fuzz/fuzz_common.hpp" &&
        "$bin" -nt "$root/confluence_oauth.hpp" ]]; then
    return 0
  fi
  local start=$SECONDS
  if "$cxx" "${flags[@]}" "$root/fuzz/$t.cpp" -o "$bin.tmp" "${libs[@]}" 2> "$out/$t.build.log"; then
    mv "$bin.tmp" "$bin"
    echo "built $t ($((SECONDS - start)) s)"
  else
    cat "$out/$t.build.log" >&2
    echo "fuzz.sh: building $t failed" >&2
    return 1
  fi
}

# Runs `fn target` for every target, `jobs` at a time; fails if any did.
for_each() {
  local fn=$1 failed=0 running=0
  local -a pids=()
  for t in "${targets[@]}"; do
    "$fn" "$t" & pids+=($!)
    if (( ++running >= jobs )); then
      wait "${pids[0]}" || failed=1
      pids=("${pids[@]:1}")
      running=$((running - 1))
    fi
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  return $failed
}

for_each build || exit 1
(( build_only )) && exit 0

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Inputs up to these sizes reach every path of each target.
max_len() {
  case "$1" in
    http_response|listener_request) echo 8192 ;;
    token_response|api_response|store_file) echo 4096 ;;
    *) echo 1024 ;;
  esac
}

# Every crash ever found stays fixed.
replay() {
  local t=$1 dir="$root/fuzz/regressions/$1"
  shopt -s nullglob
  local inputs=("$dir"/*)
  (( ${#inputs[@]} )) || return 0
  if "$out/$t" -runs=1 "${inputs[@]}" > "$out/$t.replay.log" 2>&1; then
    echo "replayed $t: ${#inputs[@]} regression input(s) pass"
  else
    tail -n 40 "$out/$t.replay.log" >&2
    echo "fuzz.sh: $t fails on a regression input (log: build/fuzz/$t.replay.log)" >&2
    return 1
  fi
}

fuzz() {
  local t=$1 corpus="$out/corpus/$1" artifacts="$out/artifacts/$1/" log="$out/$1.log"
  rm -rf "$corpus" "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  cp "$root/fuzz/corpus/$t"/* "$corpus"/ 2>/dev/null || true
  local dict=()
  [[ -f "$root/fuzz/dict/$t.dict" ]] && dict=("-dict=$root/fuzz/dict/$t.dict")
  local rc=0
  "$out/$t" "$corpus" "${dict[@]}" -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts" > "$log" 2>&1 || rc=$?
  local execs rate cov files crashes
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  files=$(find "$corpus" -type f | wc -l)
  crashes=$(find "$artifacts" -type f | wc -l)
  printf '%-18s %4ss  execs %-9s exec/s %-7s cov %-5s corpus %-5s crashes %s%s\n' "$t" "$seconds" "${execs:-?}" \
    "${rate:-?}" "${cov:-?}" "$files" "$crashes" "$( ((rc)) && echo "  FAILED (exit $rc, log build/fuzz/$t.log)")"
  if (( merge )); then
    "$out/$t" -merge=1 "$root/fuzz/corpus/$t" "$corpus" > "$out/$t.merge.log" 2>&1
  fi
  return $rc
}

failed=0
for_each replay || failed=1
if (( seconds > 0 )); then
  for_each fuzz || failed=1
fi
if (( failed )); then
  echo "fuzz.sh: FAILED: reproducers in build/fuzz/artifacts/, logs in build/fuzz/*.log"
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} target(s), ${seconds} s each: no crash"
