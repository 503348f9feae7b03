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

# step <name> <function>: runs the function in a subshell with errexit, its
# output in build/consumers/logs/<name>.log. The function (or the ERR trap,
# naming the failed command) writes the reason of a failure to $reason_file.
step() {
  local name=$1 fn=$2 start=$SECONDS rc
  local log=$logs/$name.log
  reason_file=$logs/$name.reason
  printf '\n---- consumer %s ----\n' "$name"
  (
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
  echo "$name: $((SECONDS - start)) s"
  echo "$line"
  echo "$line" >"$logs/$name.result"
}

# fail <reason>: ends the current step.
fail() {
  echo "$*" >"$reason_file"
  echo "FAILED: $*"
  exit 1
}

# run_consumer <binary>: the consumer must print the version and exit 0.
run_consumer() {
  local output
  output=$("$@" "$version") || fail "$1 exited with status $? (version mismatch or error; see log)"
  echo "$output"
  [[ "$output" == *"confluence_oauth $version"* ]] || fail "$1 did not print confluence_oauth $version"
}

# ---------------------------------------------------------------------------
# 1. Drop-in: the header alone next to main.cpp, one compiler command.
# ---------------------------------------------------------------------------
consumer_dropin() {
  local d=$out/dropin
  mkdir -p "$d"
  cp confluence_oauth.hpp tests/consumers/main.cpp "$d/"
  cd "$d"
  echo "+ g++ -std=c++20 main.cpp -I. -lssl -lcrypto -pthread"
  g++ -std=c++20 main.cpp -I. -lssl -lcrypto -pthread || fail "the one-command build failed"
  run_consumer ./a.out
}

# ---------------------------------------------------------------------------
# 2. CMake, installed package. The install is configured without tests and
#    examples and with doctest made unfindable: it must not need it.
# ---------------------------------------------------------------------------
prefix=$out/prefix

consumer_cmake_install() {
  cmake -S . -B "$out/cmake-install-lib" "${generator[@]}" \
    -DCONFLUENCE_OAUTH_BUILD_TESTS=OFF -DCONFLUENCE_OAUTH_BUILD_EXAMPLES=OFF \
    -DCMAKE_DISABLE_FIND_PACKAGE_doctest=ON \
    -DCMAKE_INSTALL_PREFIX="$prefix" || fail "configuring the library for install failed"
  cmake --build "$out/cmake-install-lib"
  cmake --install "$out/cmake-install-lib" || fail "cmake --install failed"

  local expected actual
  expected=$(printf '%s\n' \
    include/confluence_oauth.hpp \
    share/cmake/confluence_oauth/FindAsio.cmake \
    share/cmake/confluence_oauth/confluence_oauthConfig.cmake \
    share/cmake/confluence_oauth/confluence_oauthConfigVersion.cmake \
    share/cmake/confluence_oauth/confluence_oauthTargets.cmake \
    share/pkgconfig/confluence_oauth.pc | sort)
  actual=$(cd "$prefix" && find . -type f | sed 's|^\./||' | sort)
  echo "installed:"; echo "$actual" | sed 's/^/  /'
  [[ "$actual" == "$expected" ]] || fail "installed files differ from the expected header + CMake package + .pc"

  cmake -S tests/consumers/cmake-install -B "$out/cmake-install" "${generator[@]}" \
    -DCMAKE_PREFIX_PATH="$prefix" || fail "consumer configure failed (find_package)"
  cmake --build "$out/cmake-install" || fail "consumer build failed"
  run_consumer "$out/cmake-install/consumer"
}

# ---------------------------------------------------------------------------
# 3. CMake, in the consumer's tree: add_subdirectory() and FetchContent.
# ---------------------------------------------------------------------------
in_tree_consumer() {
  local kind=$1 b=$out/cmake-$1
  cmake -S "tests/consumers/cmake-$kind" -B "$b" "${generator[@]}" \
    -DCONFLUENCE_OAUTH_SOURCE_DIR="$repo" || fail "consumer configure failed"
  cmake --build "$b" || fail "consumer build failed"
  # Only the consumer was built, and installing the consumer installs nothing
  # of confluence_oauth (its install rules are off below the top level).
  local built
  built=$(cd "$b" && find . -type f -perm -u+x ! -name '*.sh' ! -path './CMakeFiles/*' | sed 's|^\./||')
  [[ "$built" == "consumer" ]] || fail "built more than the consumer: $(echo $built)"
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

  (cd "$d" && "$meson" setup build) || fail "meson setup failed"
  # As a subproject it builds nothing, looks for no doctest, installs nothing.
  local targets
  targets=$(cd "$d" && "$meson" introspect build --targets |
    python3 -c 'import json, sys; print(" ".join(sorted(t["name"] for t in json.load(sys.stdin))))')
  [[ "$targets" == "consumer" ]] || fail "targets other than the consumer: $targets"
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
#    files and targets.
# ---------------------------------------------------------------------------
consumer_conan() {
  [[ -z "$venv_error" ]] || fail "$venv_error"
  export CONAN_HOME=$out/conan/home
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
tools.cmake.cmake_layout:test_folder=$out/conan/test_package
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
  # --version: the recipe checks it against the header's version.
  "$conan" create . --version "$version" --build=missing || fail "conan create failed"

  # A header-only package: one binary for every configuration, holding just
  # the header and the license.
  local pkg files
  pkg=$("$conan" cache path "confluence_oauth/$version:da39a3ee5e6b4b0d3255bfef95601890afd80709") ||
    fail "no settings-independent package (package_id not cleared?)"
  files=$(cd "$pkg" && find . -type f ! -name conaninfo.txt ! -name conanmanifest.txt | sed 's|^\./||' | sort | tr '\n' ' ')
  echo "package: $files"
  [[ "$files" == "include/confluence_oauth.hpp licenses/LICENSE " ]] || fail "package holds: $files"

  # validate(): C++17 is refused.
  local out17
  if out17=$("$conan" install --requires="confluence_oauth/$version" -s compiler.cppstd=17 2>&1); then
    fail "conan install with compiler.cppstd=17 was accepted"
  fi
  echo "$out17" | tail -n 2
  grep -q "Invalid" <<<"$out17" || fail "compiler.cppstd=17 failed for another reason than validate()"
}

# ---------------------------------------------------------------------------
# 6. pkg-config: the .pc installed by step 2, and the one Meson generates.
# ---------------------------------------------------------------------------
consumer_pkg_config() {
  local pcdir=$prefix/share/pkgconfig
  [[ -f "$pcdir/confluence_oauth.pc" ]] || fail "no $pcdir/confluence_oauth.pc (cmake-install failed?)"
  export PKG_CONFIG_PATH=$pcdir
  cat "$pcdir/confluence_oauth.pc"
  pkg-config --validate confluence_oauth || fail "pkg-config --validate failed"
  [[ "$(pkg-config --variable=pcfiledir confluence_oauth)" == "$pcdir" ]] ||
    fail "pkg-config found another confluence_oauth.pc"
  [[ "$(pkg-config --modversion confluence_oauth)" == "$version" ]] ||
    fail "pkg-config --modversion is not $version"

  local d=$out/pkg-config
  mkdir -p "$d"
  cp tests/consumers/main.cpp "$d/"
  cd "$d"
  local flags
  flags=$(pkg-config --cflags --libs confluence_oauth) || fail "pkg-config --cflags --libs failed"
  echo "+ g++ -std=c++20 main.cpp $flags"
  # shellcheck disable=SC2086
  g++ -std=c++20 main.cpp $flags || fail "build with pkg-config's flags failed"
  run_consumer ./a.out
  cd "$repo"

  # Meson writes its .pc at setup time (meson-private/): set up the top-level
  # project (nothing is compiled) and compare.
  "$system_meson" setup "$out/meson-pc" --prefix="$out/meson-pc-prefix" >"$logs/meson-pc-setup.log" 2>&1 ||
    fail "meson setup of the top-level project failed (${logs#"$repo"/}/meson-pc-setup.log)"
  local mpc=$out/meson-pc/meson-private/confluence_oauth.pc
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

# Two lanes at once (one compiler each on 2 cores); pkg-config needs
# cmake-install's prefix, so they share a lane.
lane_install() {
  current_step=dropin;             step dropin consumer_dropin
  current_step=cmake-install;      step cmake-install consumer_cmake_install
  current_step=pkg-config;         step pkg-config consumer_pkg_config
  current_step=conan;              step conan consumer_conan
}
lane_source() {
  current_step=cmake-subdirectory; step cmake-subdirectory consumer_cmake_subdirectory
  current_step=cmake-fetchcontent; step cmake-fetchcontent consumer_cmake_fetchcontent
  current_step=meson-$("$system_meson" --version 2>/dev/null || echo system)
  step "$current_step" meson_system
  current_step=meson-$MESON_PIN;   step "$current_step" meson_venv
}
lane_install >"$logs/lane-install.out" 2>&1 &
lane_install_pid=$!
lane_source >"$logs/lane-source.out" 2>&1
wait "$lane_install_pid"
cat "$logs/lane-install.out" "$logs/lane-source.out"

passed=0
failed=0
echo
for name in dropin cmake-install pkg-config conan cmake-subdirectory cmake-fetchcontent \
            "meson-$("$system_meson" --version 2>/dev/null || echo system)" "meson-$MESON_PIN"; do
  if [[ -s "$logs/$name.result" ]]; then
    cat "$logs/$name.result"
  else
    echo "consumer $name: FAILED (did not run to its end; see ${logs#"$repo"/}/lane-*.out)"
  fi
  if grep -q ': ok$' "$logs/$name.result" 2>/dev/null; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "consumers: $passed passed, $failed failed"
(( failed == 0 ))
