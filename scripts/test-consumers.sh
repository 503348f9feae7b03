#!/usr/bin/env bash
# Prove every way in to confluence_oauth: for each, a consumer project that
# includes <confluence_oauth.hpp>, constructs a real oauth_client, prints
# CONFLUENCE_OAUTH_VERSION and checks it against the project's version (and
# against the version the package system itself reports), is built and run.
#
#   dropin              the header alone in an empty folder, one g++ command
#   cmake-install       cmake --install into a prefix; find_package(... 1.0 CONFIG)
#                       with only CMAKE_PREFIX_PATH; 2.0 and 0.9 are refused
#   cmake-subdirectory  add_subdirectory(<repo>): no tests/examples/install, no doctest
#   cmake-fetchcontent  FetchContent (SOURCE_DIR <repo>): the same checks
#   meson-<version>     a wrap (packaging/meson's, pointed at a git-archive
#                       tarball of this tree with its real sha256), run with
#                       Debian's meson and with a current one from PyPI
#   conan               conan create . (recipe + test_package) offline, against
#                       the system's asio/openssl/nlohmann_json through one
#                       wrapper recipe exported under each name
#                       (tests/consumers/conan/system_package)
#   pkg-config          the installed confluence_oauth.pc: validate, build, run;
#                       the one Meson generates agrees with it
# cmake-install and pkg-config also build and run tests/consumers/postgres
# (confluence_oauth::postgres; confluence_oauth_postgres.pc): libpq is
# required, as in CI.
#
# Each runs twice: header-only (the default; the names above) and with the
# library compiled once (separate compilation; the names with "-separate"):
# dropin-separate adds an implementation file to the g++ command, the CMake
# ones set CONFLUENCE_OAUTH_SEPARATE_COMPILATION=ON, the Meson ones
# -Dconfluence_oauth:separate_compilation=true, Conan
# -o confluence_oauth/*:separate_compilation=True, and pkg-config-separate
# uses cmake-install-separate's prefix. The consumer is told the mode and
# checks that CONFLUENCE_OAUTH_SEPARATE_COMPILATION reached it exactly then.
#
# Everything goes to build/consumers/ (wiped first); PyPI packages (pinned)
# go to a venv in build/venv-consumers/, kept between runs. Run
# scripts/install-deps.sh first. Last line: "consumers: N passed, N failed";
# exits 1 if any consumer failed.
#
# Usage: scripts/test-consumers.sh
set -uo pipefail

CONAN_PIN=2.34.0   # PyPI conan
MESON_PIN=1.12.1   # PyPI meson, the second Meson run (the first is /usr/bin/meson)

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
out=$repo/build/consumers
logs=$out/logs
venv=$repo/build/venv-consumers

rm -rf "$out"
mkdir -p "$logs"

# The project's version: CMakeLists.txt's project(VERSION). Every consumer
# checks the header's CONFLUENCE_OAUTH_VERSION against it.
version=$(sed -n '/^project(confluence_oauth/,/)/s/^ *VERSION \([0-9][0-9.]*\).*/\1/p' CMakeLists.txt | head -n 1)
if [[ -z "$version" ]]; then
  echo "test-consumers: no VERSION in CMakeLists.txt's project()" >&2
  exit 1
fi
echo "test-consumers: confluence_oauth $version, output in ${out#"$repo"/}"

generator=()
if command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi

# children_cpu: sets cpu to the CPU seconds (user + system) this shell's
# finished children have used. On a shared machine the wall times of the
# steps vary with the load; this measures the work itself.
children_cpu() {
  local f=$logs/times.$BASHPID
  times >"$f"   # in this shell, not a subshell: its second line is the children's
  cpu=$(awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] } }
             END { printf "%.0f", s }' "$f")
  rm -f "$f"
}

# step <name> <function> [header-only|separate]: runs the function in a
# subshell with errexit, its output in build/consumers/logs/<name>.log; the
# function finds its name in $current_step and the mode (default header-only)
# in $mode. The function (or the ERR trap, naming the failed command) writes
# the reason of a failure to $reason_file.
step() {
  local name=$1 fn=$2 start=$SECONDS rc cpu cpu_start
  local log=$logs/$name.log
  children_cpu
  cpu_start=$cpu
  reason_file=$logs/$name.reason
  printf '\n---- consumer %s ----\n' "$name"
  (
    current_step=$name
    mode=${3:-header-only}
    set -eE
    trap 'rc=$?; [[ -s "$reason_file" ]] || echo "\"$BASH_COMMAND\" exited with status $rc" >"$reason_file"' ERR
    "$fn"
  ) >"$log" 2>&1
  rc=$?
  local line
  if (( rc == 0 )); then
    line="consumer $name: ok"
  else
    local reason="exit status $rc"
    [[ -s "$reason_file" ]] && reason=$(head -n 1 "$reason_file")
    line="consumer $name: FAILED ($reason; log: ${log#"$repo"/})"
    echo "(last lines of ${log#"$repo"/})"
    tail -n 40 "$log" | sed 's/^/  | /'
  fi
  children_cpu
  echo "$name: $((SECONDS - start)) s ($((cpu - cpu_start)) s CPU)"
  echo "$line"
  echo "$line" >"$logs/$name.result"
}

# fail <reason>: ends the current step.
fail() {
  echo "$*" >"$reason_file"
  echo "FAILED: $*"
  exit 1
}

# run_consumer <binary>: the consumer must print the version and exit 0; it
# is given the version and the mode, and checks both.
run_consumer() {
  local output
  output=$("$@" "$version" "$mode") ||
    fail "$1 exited with status $? (version or mode ($mode) mismatch, or error; see log)"
  echo "$output"
  [[ "$output" == *"confluence_oauth $version ($mode)"* ]] ||
    fail "$1 did not print confluence_oauth $version ($mode)"
}

# separate: true in a step of the separate-compilation mode.
separate() { [[ "$mode" == separate ]]; }

# cmake_mode_args: what a CMake configure adds for the step's mode (nothing
# for header-only: the option's default).
cmake_mode_args() {
  if separate; then
    echo -DCONFLUENCE_OAUTH_SEPARATE_COMPILATION=ON
  fi
}

# ---------------------------------------------------------------------------
# 1. Drop-in: the header alone next to main.cpp, one compiler command.
#    Separate compilation: main.cpp with CONFLUENCE_OAUTH_SEPARATE_COMPILATION
#    and a file of the user's that compiles the implementation (the two
#    defines and the include), still in one command.
# ---------------------------------------------------------------------------
consumer_dropin() {
  local d=$out/$current_step
  mkdir -p "$d"
  cp confluence_oauth.hpp tests/consumers/main.cpp "$d/"
  cd "$d"
  local cmd=(g++ -std=c++20 main.cpp -I. -lssl -lcrypto -pthread)
  if separate; then
    # "1": the definition -D gives it, so the two do not clash.
    cat >confluence_oauth.cpp <<'CPP'
#define CONFLUENCE_OAUTH_SEPARATE_COMPILATION 1
#define CONFLUENCE_OAUTH_IMPLEMENTATION
#include "confluence_oauth.hpp"
CPP
    cat confluence_oauth.cpp
    cmd=(g++ -std=c++20 -DCONFLUENCE_OAUTH_SEPARATE_COMPILATION main.cpp confluence_oauth.cpp
         -I. -lssl -lcrypto -pthread)
  fi
  echo "+ ${cmd[*]}"
  "${cmd[@]}" || fail "the one-command build failed"
  run_consumer ./a.out
}

# ---------------------------------------------------------------------------
# 2. CMake, installed package. The install is configured without tests and
#    examples and with doctest made unfindable: it must not need it.
#    Header-only, all of it is arch-independent (share/); compiled, the
#    static library, the CMake package and the .pc go to the libdir.
# ---------------------------------------------------------------------------
prefix=$out/prefix                      # header-only
prefix_separate=$out/prefix-separate    # separate compilation

consumer_cmake_install() {
  local p=$prefix lib=$out/$current_step-lib
  separate && p=$prefix_separate
  # shellcheck disable=SC2046
  cmake -S . -B "$lib" "${generator[@]}" $(cmake_mode_args) \
    -DCONFLUENCE_OAUTH_BUILD_TESTS=OFF -DCONFLUENCE_OAUTH_BUILD_EXAMPLES=OFF \
    -DCMAKE_DISABLE_FIND_PACKAGE_doctest=ON \
    -DCMAKE_INSTALL_PREFIX="$p" || fail "configuring the library for install failed"
  cmake --build "$lib" || fail "building the library failed"
  cmake --install "$lib" || fail "cmake --install failed"

  local expected actual libdir
  if separate; then
    # GNUInstallDirs' choice for this prefix (lib, lib64 or lib/<multiarch>).
    libdir=$(sed -n 's/^CMAKE_INSTALL_LIBDIR:PATH=//p' "$lib/CMakeCache.txt")
    [[ -n "$libdir" ]] || fail "no CMAKE_INSTALL_LIBDIR in $lib/CMakeCache.txt"
    expected=$(printf '%s\n' \
      include/confluence_oauth.hpp \
      "$libdir/libconfluence_oauth.a" \
      "$libdir/cmake/confluence_oauth/FindAsio.cmake" \
      "$libdir/cmake/confluence_oauth/confluence_oauthConfig.cmake" \
      "$libdir/cmake/confluence_oauth/confluence_oauthConfigVersion.cmake" \
      "$libdir/cmake/confluence_oauth/confluence_oauthTargets.cmake" \
      "$libdir/cmake/confluence_oauth/confluence_oauthTargets-noconfig.cmake" \
      "$libdir/pkgconfig/confluence_oauth.pc" \
      include/confluence_oauth_postgres.hpp \
      include/confluence_oauth_postgres.sql \
      "$libdir/libconfluence_oauth_postgres.a" \
      "$libdir/cmake/confluence_oauth/confluence_oauth_postgresTargets.cmake" \
      "$libdir/cmake/confluence_oauth/confluence_oauth_postgresTargets-noconfig.cmake" \
      "$libdir/pkgconfig/confluence_oauth_postgres.pc" | sort)
  else
    expected=$(printf '%s\n' \
      include/confluence_oauth.hpp \
      share/cmake/confluence_oauth/FindAsio.cmake \
      share/cmake/confluence_oauth/confluence_oauthConfig.cmake \
      share/cmake/confluence_oauth/confluence_oauthConfigVersion.cmake \
      share/cmake/confluence_oauth/confluence_oauthTargets.cmake \
      share/pkgconfig/confluence_oauth.pc \
      include/confluence_oauth_postgres.hpp \
      include/confluence_oauth_postgres.sql \
      share/cmake/confluence_oauth/confluence_oauth_postgresTargets.cmake \
      share/pkgconfig/confluence_oauth_postgres.pc | sort)
  fi
  actual=$(cd "$p" && find . -type f | sed 's|^\./||' | sort)
  echo "installed:"; echo "$actual" | sed 's/^/  /'
  [[ "$actual" == "$expected" ]] ||
    fail "installed files differ from the expected headers + $(separate && echo "libraries + ")CMake package + .pc files"

  local b=$out/$current_step
  cmake -S tests/consumers/cmake-install -B "$b" "${generator[@]}" \
    -DCMAKE_PREFIX_PATH="$p" || fail "consumer configure failed (find_package)"
  cmake --build "$b" || fail "consumer build failed"
  run_consumer "$b/consumer"

  cmake -S tests/consumers/postgres -B "$b-postgres" "${generator[@]}" \
    -DCMAKE_PREFIX_PATH="$p" || fail "postgres consumer configure failed (find_package COMPONENTS postgres)"
  cmake --build "$b-postgres" || fail "postgres consumer build failed"
  run_consumer "$b-postgres/consumer_postgres"
}

# ---------------------------------------------------------------------------
# 3. CMake, in the consumer's tree: add_subdirectory() and FetchContent.
#    Separate compilation: the consumer's configure sets the option, as a
#    user would on their command line.
# ---------------------------------------------------------------------------
in_tree_consumer() {
  local kind=$1 b=$out/$current_step
  # shellcheck disable=SC2046
  cmake -S "tests/consumers/cmake-$kind" -B "$b" "${generator[@]}" $(cmake_mode_args) \
    -DCONFLUENCE_OAUTH_SOURCE_DIR="$repo" || fail "consumer configure failed"
  cmake --build "$b" || fail "consumer build failed"
  # Only the consumer was built (and, compiled, confluence_oauth's static
  # library), and installing the consumer installs nothing of
  # confluence_oauth (its install rules are off below the top level).
  local built expected=consumer
  separate && expected="consumer libconfluence_oauth.a"
  built=$(cd "$b" && find . -type f \( -perm -u+x -o -name '*.a' -o -name '*.so*' \) ! -name '*.sh' \
            ! -path '*/CMakeFiles/*' -printf '%f\n' | sort | tr '\n' ' ' | sed 's/ $//')
  echo "built: $built"
  [[ "$built" == "$expected" ]] || fail "built other than $expected: $built"
  cmake --install "$b" --prefix "$b/install-check" >/dev/null
  [[ -z "$(find "$b/install-check" -type f 2>/dev/null)" ]] ||
    fail "installing the consumer installed confluence_oauth files"
  run_consumer "$b/consumer"
}
consumer_cmake_subdirectory() { in_tree_consumer subdirectory; }
consumer_cmake_fetchcontent() { in_tree_consumer fetchcontent; }

# ---------------------------------------------------------------------------
# Shared by the Meson and Conan steps: a tarball of this tree as git would
# archive it, and a venv with the pinned PyPI packages.
# ---------------------------------------------------------------------------
dist=$out/dist
tarball=$dist/confluence_oauth-$version.tar.gz
tarball_error=""
make_tarball() {
  mkdir -p "$dist"
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1 &&
     [[ "$(git rev-parse --show-toplevel)" == "$repo" ]]; then
    # git archive of the work tree as it would be committed (tracked and
    # untracked files, .gitignore respected): a throw-away index, so neither
    # the real index nor HEAD is touched. In a fresh clone this is HEAD.
    local tmp tree
    tmp=$(mktemp -d)
    GIT_INDEX_FILE=$tmp/index git add -A &&
      tree=$(GIT_INDEX_FILE=$tmp/index git write-tree) &&
      git archive --format=tar.gz --prefix="confluence_oauth-$version/" -o "$tarball" "$tree"
    local rc=$?
    rm -rf "$tmp"
    (( rc == 0 )) || return 1
    echo "test-consumers: $(basename "$tarball") by git archive of tree ${tree:0:12}"
  else
    tar -czf "$tarball" --exclude-vcs --exclude=./build --exclude='./build-*' \
      --exclude='./cmake-build-*' --exclude=./tests/browser/node_modules \
      --transform "s,^\.,confluence_oauth-$version," -C "$repo" . || return 1
    echo "test-consumers: $(basename "$tarball") by tar (not a git work tree)"
  fi
}
make_tarball >"$logs/dist.log" 2>&1 || tarball_error="making the source tarball failed (${logs#"$repo"/}/dist.log)"
[[ -z "$tarball_error" ]] && tail -n 1 "$logs/dist.log"

venv_error=""
setup_venv() {
  if [[ -x "$venv/bin/conan" && -x "$venv/bin/meson" ]] &&
     [[ "$("$venv/bin/conan" --version 2>/dev/null)" == "Conan version $CONAN_PIN" ]] &&
     [[ "$("$venv/bin/meson" --version 2>/dev/null)" == "$MESON_PIN" ]]; then
    echo "test-consumers: venv ${venv#"$repo"/} has conan $CONAN_PIN and meson $MESON_PIN"
    return 0
  fi
  rm -rf "$venv"
  local py=python3
  [[ -x /usr/bin/python3 ]] && py=/usr/bin/python3
  "$py" -m venv "$venv" &&
    "$venv/bin/pip" install --disable-pip-version-check --no-input --no-compile -q \
      "conan==$CONAN_PIN" "meson==$MESON_PIN" || return 1
  echo "test-consumers: installed conan $CONAN_PIN and meson $MESON_PIN into ${venv#"$repo"/}"
}
venv_start=$SECONDS
setup_venv >"$logs/venv.log" 2>&1 || venv_error="could not set up the PyPI venv (${logs#"$repo"/}/venv.log; needs python3-venv)"
[[ -z "$venv_error" ]] && tail -n 1 "$logs/venv.log" && echo "venv: $((SECONDS - venv_start)) s"

# ---------------------------------------------------------------------------
# 4. Meson: dependency('confluence_oauth') through the shipped wrap, pointed at
#    the local tarball (a file:// source_url, downloaded and hash-checked by
#    Meson like any release tarball: offline).
# ---------------------------------------------------------------------------
meson_consumer() {
  local meson=$1
  [[ -z "$tarball_error" ]] || fail "$tarball_error"
  local mv d=$out/$current_step
  mv=$("$meson" --version)
  echo "meson $mv ($meson)"
  mkdir -p "$d/subprojects"
  cp tests/consumers/meson/meson.build tests/consumers/main.cpp "$d/"

  # packaging/meson's wrap, with the release fields replaced by the tarball.
  local wrap=packaging/meson/confluence_oauth.wrap sha
  grep -qx "directory = confluence_oauth-$version" "$wrap" ||
    fail "$wrap: directory is not confluence_oauth-$version"
  grep -qx "source_filename = confluence_oauth-$version.tar.gz" "$wrap" ||
    fail "$wrap: source_filename is not confluence_oauth-$version.tar.gz"
  sha=$(sha256sum "$tarball" | cut -d' ' -f1)
  sed -e "s|^source_url = .*|source_url = file://$tarball|" \
      -e "s|^source_hash = .*|source_hash = $sha|" \
      "$wrap" >"$d/subprojects/confluence_oauth.wrap"
  cat "$d/subprojects/confluence_oauth.wrap"

  local options=() expected=consumer
  if separate; then
    options=(-Dconfluence_oauth:separate_compilation=true)
    expected="confluence_oauth consumer"
  fi
  (cd "$d" && "$meson" setup build "${options[@]}") || fail "meson setup failed"
  # As a subproject it builds nothing (but its static library, compiled),
  # looks for no doctest, installs nothing.
  local targets
  targets=$(cd "$d" && "$meson" introspect build --targets |
    python3 -c 'import json, sys; print(" ".join(sorted(t["name"] for t in json.load(sys.stdin))))')
  [[ "$targets" == "$expected" ]] || fail "targets other than $expected: $targets"
  if grep -qi doctest "$d/build/meson-logs/meson-log.txt"; then
    fail "the subproject looked for doctest"
  fi
  [[ "$(cd "$d" && "$meson" introspect build --installed | tr -d '[:space:]')" == "{}" ]] ||
    fail "the subproject installs files"
  "$meson" compile -C "$d/build" || fail "meson compile failed"
  run_consumer "$d/build/consumer"
}

# ---------------------------------------------------------------------------
# 5. Conan 2: conan create . (export, package, test_package) with no remote.
#    asio, openssl and nlohmann_json are the system's, through one wrapper
#    recipe exported under each of ConanCenter's names (same CMake files and
#    targets) whose versions are read from the installed headers, so the
#    recipe's version ranges resolve to them and CMakeDeps generates real find
#    files and targets. Each run has its own Conan home.
#    Separate compilation: -o confluence_oauth/*:separate_compilation=True,
#    a package for these settings that holds the static library too.
# ---------------------------------------------------------------------------
consumer_conan() {
  [[ -z "$venv_error" ]] || fail "$venv_error"
  local d=$out/$current_step
  export CONAN_HOME=$d/home
  local conan=$venv/bin/conan
  "$conan" --version
  "$conan" remote disable "*"
  "$conan" profile detect
  local profile=$CONAN_HOME/profiles/default
  sed -i -e 's/^compiler\.cppstd=.*/compiler.cppstd=20/' "$profile"
  grep -qx 'compiler.cppstd=20' "$profile" || fail "no compiler.cppstd in the detected profile"
  # test_package builds in build/consumers (not in test_package/) at -O0.
  cat >>"$profile" <<EOF

[conf]
tools.cmake.cmaketoolchain:user_presets=
tools.cmake.cmake_layout:test_folder=$d/test_package
tools.cmake.cmaketoolchain:extra_variables={'CMAKE_CXX_FLAGS_RELEASE': '-O0'}
EOF
  if (( ${#generator[@]} )); then
    echo "tools.cmake.cmaketoolchain:generator=Ninja" >>"$profile"
  fi
  cat "$profile"

  local r
  for r in asio openssl nlohmann_json; do
    "$conan" export tests/consumers/conan/system_package --name "$r" ||
      fail "exporting the system_package wrapper as $r failed"
  done
  local options=()
  separate && options=(-o "confluence_oauth/*:separate_compilation=True")
  # --version: the recipe checks it against the header's version.
  "$conan" create . --version "$version" --build=missing "${options[@]}" || fail "conan create failed"

  local pkg files expected
  if separate; then
    # One package, for these settings, with the option on; it holds the
    # header, the static library and the license.
    local ids
    ids=$("$conan" list "confluence_oauth/$version:*" --format=json | python3 -c '
import json, sys
for recipe in json.load(sys.stdin)["Local Cache"].values():
    for revision in recipe["revisions"].values():
        for pkg_id, pkg in revision.get("packages", {}).items():
            if pkg["info"].get("options", {}).get("separate_compilation") == "True":
                print(pkg_id)')
    [[ $(wc -w <<<"$ids") == 1 ]] || fail "not one package with separate_compilation=True: $(echo $ids)"
    pkg=$("$conan" cache path "confluence_oauth/$version:$ids") || fail "no package folder for $ids"
    expected="include/confluence_oauth.hpp lib/libconfluence_oauth.a licenses/LICENSE "
  else
    # A header-only package: one binary for every configuration, holding just
    # the header and the license.
    pkg=$("$conan" cache path "confluence_oauth/$version:da39a3ee5e6b4b0d3255bfef95601890afd80709") ||
      fail "no settings-independent package (package_id not cleared?)"
    expected="include/confluence_oauth.hpp licenses/LICENSE "
  fi
  files=$(cd "$pkg" && find . -type f ! -name conaninfo.txt ! -name conanmanifest.txt | sed 's|^\./||' | sort | tr '\n' ' ')
  echo "package: $files"
  [[ "$files" == "$expected" ]] || fail "package holds: $files"

  # validate(): C++17 is refused.
  local out17
  if out17=$("$conan" install --requires="confluence_oauth/$version" -s compiler.cppstd=17 "${options[@]}" 2>&1); then
    fail "conan install with compiler.cppstd=17 was accepted"
  fi
  echo "$out17" | tail -n 2
  grep -q "Invalid" <<<"$out17" || fail "compiler.cppstd=17 failed for another reason than validate()"
}

# ---------------------------------------------------------------------------
# 6. pkg-config: the .pc installed by step 2, and the one Meson generates.
#    Separate compilation: cmake-install-separate's, in its libdir, and
#    Meson's with separate_compilation=true.
# ---------------------------------------------------------------------------
consumer_pkg_config() {
  local pcdir=$prefix/share/pkgconfig meson_options=()
  if separate; then
    local libdir
    libdir=$(sed -n 's/^CMAKE_INSTALL_LIBDIR:PATH=//p' "$out/cmake-install-separate-lib/CMakeCache.txt" 2>/dev/null ||
      true)
    pcdir=$prefix_separate/${libdir:-lib}/pkgconfig
    meson_options=(-Dseparate_compilation=true)
  fi
  [[ -f "$pcdir/confluence_oauth.pc" ]] ||
    fail "no $pcdir/confluence_oauth.pc (cmake-install$(separate && echo -separate || true) failed?)"
  export PKG_CONFIG_PATH=$pcdir
  cat "$pcdir/confluence_oauth.pc"
  pkg-config --validate confluence_oauth || fail "pkg-config --validate failed"
  [[ "$(pkg-config --variable=pcfiledir confluence_oauth)" == "$pcdir" ]] ||
    fail "pkg-config found another confluence_oauth.pc"
  [[ "$(pkg-config --modversion confluence_oauth)" == "$version" ]] ||
    fail "pkg-config --modversion is not $version"

  local d=$out/$current_step
  mkdir -p "$d"
  cp tests/consumers/main.cpp "$d/"
  cd "$d"
  local flags
  flags=$(pkg-config --cflags --libs confluence_oauth) || fail "pkg-config --cflags --libs failed"
  echo "+ g++ -std=c++20 main.cpp $flags"
  # shellcheck disable=SC2086
  g++ -std=c++20 main.cpp $flags || fail "build with pkg-config's flags failed"
  run_consumer ./a.out
  pkg-config --validate confluence_oauth_postgres || fail "pkg-config --validate confluence_oauth_postgres failed"
  flags=$(pkg-config --cflags --libs confluence_oauth_postgres) || fail "pkg-config confluence_oauth_postgres failed"
  echo "+ g++ -std=c++20 postgres/main.cpp $flags"
  # shellcheck disable=SC2086
  g++ -std=c++20 -o consumer_postgres "$repo/tests/consumers/postgres/main.cpp" $flags ||
    fail "build with confluence_oauth_postgres.pc's flags failed"
  run_consumer ./consumer_postgres
  cd "$repo"

  # Meson writes its .pc at setup time (meson-private/): set up the top-level
  # project (nothing is compiled) and compare.
  local mb=$out/$current_step-meson
  "$system_meson" setup "$mb" --prefix="$mb-prefix" "${meson_options[@]}" \
    >"$logs/$current_step-meson-setup.log" 2>&1 ||
    fail "meson setup of the top-level project failed (${logs#"$repo"/}/$current_step-meson-setup.log)"
  local mpc=$mb/meson-private/confluence_oauth.pc
  [[ -f "$mpc" ]] || fail "Meson generated no confluence_oauth.pc"
  cat "$mpc"
  PKG_CONFIG_PATH=$(dirname "$mpc") pkg-config --validate confluence_oauth ||
    fail "Meson's .pc does not validate"
  local field a b
  for field in Name Version Requires Cflags Libs; do
    a=$(sed -n "s/^$field: *//p" "$pcdir/confluence_oauth.pc" | tr -s ' ')
    b=$(sed -n "s/^$field: *//p" "$mpc" | tr -s ' ')
    [[ "$a" == "$b" ]] || fail "CMake's and Meson's .pc differ in $field: '$a' vs '$b'"
  done
  echo "CMake's and Meson's confluence_oauth.pc agree in Name, Version, Requires, Cflags, Libs"
}

system_meson=/usr/bin/meson   # Debian's
[[ -x "$system_meson" ]] || system_meson=$(command -v meson || echo meson)
meson_system() { meson_consumer "$system_meson"; }
meson_venv() { [[ -z "$venv_error" ]] || fail "$venv_error"; meson_consumer "$venv/bin/meson"; }

meson_system_name=meson-$("$system_meson" --version 2>/dev/null || echo system)
meson_venv_name=meson-$MESON_PIN

# both <name> <function>: the step header-only, then <name>-separate.
both() {
  step "$1" "$2" header-only
  step "$1-separate" "$2" separate
}

# Two lanes at once (one compiler each on 2 cores); pkg-config needs
# cmake-install's prefix, so they share a lane.
lane_install() {
  both dropin consumer_dropin
  both cmake-install consumer_cmake_install
  both pkg-config consumer_pkg_config
  both conan consumer_conan
}
lane_source() {
  both cmake-subdirectory consumer_cmake_subdirectory
  both cmake-fetchcontent consumer_cmake_fetchcontent
  both "$meson_system_name" meson_system
  both "$meson_venv_name" meson_venv
}
lanes_start=$SECONDS
children_cpu
lanes_cpu_start=$cpu
lane_install >"$logs/lane-install.out" 2>&1 &
lane_install_pid=$!
lane_source >"$logs/lane-source.out" 2>&1
wait "$lane_install_pid"
cat "$logs/lane-install.out" "$logs/lane-source.out"

passed=0
failed=0
echo
for base in dropin cmake-install pkg-config conan cmake-subdirectory cmake-fetchcontent \
            "$meson_system_name" "$meson_venv_name"; do
  for name in "$base" "$base-separate"; do
    if [[ -s "$logs/$name.result" ]]; then
      cat "$logs/$name.result"
    else
      echo "consumer $name: FAILED (did not run to its end; see ${logs#"$repo"/}/lane-*.out)"
    fi
    if grep -q ': ok$' "$logs/$name.result" 2>/dev/null; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  done
done
children_cpu
echo "both lanes: $((SECONDS - lanes_start)) s ($((cpu - lanes_cpu_start)) s CPU)"
echo "consumers: $passed passed, $failed failed"
(( failed == 0 ))
