#!/usr/bin/env bash
# Build and run the whole confluence_oauth test suite:
#   1. CMake + Ninja, -O1 -g1                      -> build/test
#   2. CMake + Ninja, -O0 -g1, ASan + UBSan        -> build/asan
#   3. CMake + Ninja, -O1 -g1, TSan                -> build/tsan
#   4. Meson, -O1 -g1                              -> build/meson
# The last line of output is "N passed, N failed" (CTest results of stages 1
# to 3; the Meson stage counts as one test). Exits non-zero on any failure.
#
# Environment:
#   CTEST_PARALLEL_LEVEL   parallel ctest jobs (default 2)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root=$(pwd)

bash scripts/install-deps.sh

ctest_jobs=${CTEST_PARALLEL_LEVEL:-2}
passed=0
failed=0
log_dir="$repo_root/build/logs"
mkdir -p "$log_dir"

banner() {
  printf '\n==================== %s ====================\n' "$*"
}

# Ninja-generated CMake build dir? (a dir made by another generator cannot be
# reconfigured with -G Ninja, so start it over)
ensure_ninja_build_dir() {
  local dir=$1
  if [[ -f "$dir/CMakeCache.txt" ]] &&
     ! grep -qx 'CMAKE_GENERATOR:INTERNAL=Ninja' "$dir/CMakeCache.txt"; then
    echo "test.sh: $dir was configured with another generator; removing it"
    rm -rf "$dir"
  fi
}

# cmake_stage <title> <build dir> <compiler flags> [extra cmake args...]
cmake_stage() {
  local title=$1 dir=$2 flags=$3
  shift 3
  local start=$SECONDS log="$log_dir/$(basename "$dir")-ctest.log"
  banner "$title"

  ensure_ninja_build_dir "$dir"
  if ! cmake -S . -B "$dir" -G Ninja \
         -DCMAKE_BUILD_TYPE=RelWithDebInfo \
         "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=$flags" \
         -DCONFLUENCE_OAUTH_BUILD_TESTS=ON \
         -DCONFLUENCE_OAUTH_BUILD_EXAMPLES=ON \
         "$@"; then
    echo "test.sh: [$title] CMake configure FAILED after $((SECONDS - start)) s"
    failed=$((failed + 1))
    return 0
  fi
  if ! cmake --build "$dir"; then
    echo "test.sh: [$title] build FAILED after $((SECONDS - start)) s"
    failed=$((failed + 1))
    return 0
  fi

  local rc=0
  ctest --test-dir "$dir" --output-on-failure -j "$ctest_jobs" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}

  # e.g. "95% tests passed, 2 tests failed out of 40"
  local summary
  summary=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1 || true)
  if [[ "$summary" =~ ([0-9]+)\ tests?\ failed\ out\ of\ ([0-9]+) ]]; then
    local f=${BASH_REMATCH[1]} total=${BASH_REMATCH[2]}
    passed=$((passed + total - f))
    failed=$((failed + f))
    if (( rc != 0 && f == 0 )); then
      echo "test.sh: [$title] ctest exited with status $rc"
      failed=$((failed + 1))
    fi
  else
    echo "test.sh: [$title] could not find a CTest result summary (exit status $rc)"
    failed=$((failed + 1))
  fi
  echo "test.sh: [$title] finished in $((SECONDS - start)) s"
}

meson_stage() {
  local title="Meson build + meson test (build/meson)" dir=build/meson start=$SECONDS
  banner "$title"
  local opts=(-Doptimization=1 -Ddebug=false -Dcpp_args=-g1)
  local ok=1
  if [[ -f "$dir/meson-private/coredata.dat" ]]; then
    # (meson 1.0 ignores changed compiler options given to "setup
    # --reconfigure", so apply them with "meson configure" first; the
    # reconfigure re-runs meson.build and so re-lists tests/test_*.cpp)
    { meson configure "$dir" "${opts[@]}" && meson setup --reconfigure "$dir"; } ||
      meson setup --wipe "$dir" "${opts[@]}" || ok=0
  else
    meson setup "$dir" "${opts[@]}" || ok=0
  fi
  if (( ok )); then
    meson compile -C "$dir" || ok=0
  fi
  if (( ok )); then
    meson test -C "$dir" --print-errorlogs || ok=0
  fi
  if (( ok )); then
    passed=$((passed + 1))
  else
    echo "test.sh: [$title] FAILED"
    failed=$((failed + 1))
  fi
  echo "test.sh: [$title] finished in $((SECONDS - start)) s"
}

# -O1: GCC's flow-based warnings (-Wmaybe-uninitialized, ...) need optimisation.
# -g1: line tables only, enough for backtraces, ~30% faster to compile than -g.
cmake_stage "CMake build + ctest (build/test)" build/test "-O1 -g1" \
  -DCONFLUENCE_OAUTH_SANITIZE=

export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# -O0: with ASan+UBSan instrumentation -O1 doubles the compile time (measured
# ~66 s vs ~31 s CPU for one test file); the tests are I/O-bound anyway.
cmake_stage "CMake build + ctest with address,undefined sanitizers (build/asan)" build/asan "-O0 -g1" \
  -DCONFLUENCE_OAUTH_SANITIZE=address,undefined
unset ASAN_OPTIONS UBSAN_OPTIONS

export TSAN_OPTIONS="halt_on_error=1 suppressions=$PWD/tests/tsan.supp"
cmake_stage "CMake build + ctest with the thread sanitizer (build/tsan)" build/tsan "-O1 -g1" \
  -DCONFLUENCE_OAUTH_SANITIZE=thread
unset TSAN_OPTIONS

meson_stage

echo
echo "$passed passed, $failed failed"
if (( failed > 0 )); then
  exit 1
fi
