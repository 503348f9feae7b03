#!/usr/bin/env bash
# End-to-end demo: log in to a local fake Atlassian server with the
# confluence-cli example (OAuth 2.0 authorization code flow driven by a
# headless browser), show the stored (redacted) tokens, then list the sites
# and pages the grant reaches through the session.
#
# Usage: scripts/demo.sh [--no-browser]
#   --no-browser   use the built fake-browser instead of headless chromium
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

use_chromium=1
for arg in "$@"; do
  case "$arg" in
    --no-browser) use_chromium=0 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "demo: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

step() { printf '==> %s\n' "$*"; }

step "Checking build dependencies"
if (( use_chromium )); then
  bash scripts/install-deps.sh
else
  bash scripts/install-deps.sh --no-browser
fi

build_dir=build/demo
step "Building confluence-cli, fake-atlassian and fake-browser in $build_dir (Release)"
if [[ -f "$build_dir/CMakeCache.txt" ]] &&
   ! grep -qx 'CMAKE_GENERATOR:INTERNAL=Ninja' "$build_dir/CMakeCache.txt"; then
  rm -rf "$build_dir"
fi
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCONFLUENCE_OAUTH_BUILD_TESTS=ON -DCONFLUENCE_OAUTH_BUILD_EXAMPLES=ON \
  -DCONFLUENCE_OAUTH_SANITIZE= >/dev/null
cmake --build "$build_dir" --target confluence-cli fake-atlassian fake-browser
cli="$PWD/$build_dir/confluence-cli"
fake_server="$PWD/$build_dir/fake-atlassian"
fake_browser="$PWD/$build_dir/fake-browser"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/confluence-oauth-demo.XXXXXX")
server_pid=
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  # Chromium's helper processes may outlive --dump-dom for a moment and keep
  # writing to the profile: stop them, then remove the folder.
  pkill -f -- "--user-data-dir=$tmp/chrome" 2>/dev/null || true
  for _ in 1 2 3 4 5; do
    rm -rf "$tmp" 2>/dev/null && break
    sleep 0.2
  done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Something listening on 127.0.0.1:$1 (or [::1]:$1)?
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
  (exec 3<>"/dev/tcp/::1/$1") 2>/dev/null && return 0
  return 1
}

redirect_port=53682
while port_in_use "$redirect_port"; do
  redirect_port=$((redirect_port + 1))
  if (( redirect_port > 53782 )); then
    echo "demo: no free loopback port in 53682-53782 for the redirect URI" >&2
    exit 1
  fi
done
redirect_uri="http://localhost:$redirect_port/callback"

step "Starting the fake Atlassian server (redirect URI $redirect_uri)"
port_file="$tmp/port"
ca_file="$tmp/ca.pem"
"$fake_server" --auto-approve --access-token-lifetime 20 \
  --port-file "$port_file" --ca-out "$ca_file" \
  --redirect-uri "$redirect_uri" >"$tmp/fake-atlassian.log" 2>&1 &
server_pid=$!

port=
for _ in $(seq 100); do
  if [[ -s "$port_file" ]]; then
    port=$(tr -dc '0-9' <"$port_file")
    [[ -n "$port" ]] && break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "demo: fake-atlassian exited early; its log:" >&2
    cat "$tmp/fake-atlassian.log" >&2
    exit 1
  fi
  sleep 0.1
done
if [[ -z "$port" ]]; then
  echo "demo: fake-atlassian did not write its port file within 10 s; its log:" >&2
  cat "$tmp/fake-atlassian.log" >&2
  exit 1
fi
step "Fake Atlassian server is listening on https://127.0.0.1:$port"

if (( use_chromium )) && [[ -x /usr/bin/chromium ]]; then
  # The fake server's certificate is issued by a throw-away CA that chromium
  # does not know, hence --ignore-certificate-errors (throw-away profile).
  browser="/usr/bin/chromium --headless --no-sandbox --disable-gpu --no-first-run"
  browser+=" --disable-background-networking --disable-component-update --disable-sync"
  browser+=" --disable-quic --ignore-certificate-errors --user-data-dir=$tmp/chrome --dump-dom"
  browser_name="headless chromium"
else
  browser="$fake_browser"
  browser_name="fake-browser"
fi

token_file="$tmp/tokens.json"
cli_args=(
  --client-id test-client-id
  --client-secret test-client-secret
  --redirect-uri "$redirect_uri"
  --authorize-url "https://127.0.0.1:$port/authorize"
  --token-url "https://127.0.0.1:$port/oauth/token"
  --api-url "https://127.0.0.1:$port"
  --ca-file "$ca_file"
  --token-file "$token_file"
  --timeout 60
  --browser "$browser"
)

step "Running 'confluence-cli login' (authorization code flow via $browser_name)"
"$cli" "${cli_args[@]}" login

step "Stored token file $token_file (secrets redacted):"
sed -E 's/("(access_token|refresh_token)"[[:space:]]*:[[:space:]]*")[^"]*"/\1<redacted>"/g' "$token_file"
echo

step "Running 'confluence-cli token' (prints a valid access token, refreshing if needed)"
token=$("$cli" "${cli_args[@]}" token)
printf '%s…\n' "${token:0:8}"

step "Running 'confluence-cli sites' (accessible-resources through the session)"
"$cli" "${cli_args[@]}" sites

step "Running 'confluence-cli pages --limit 5' (Confluence v2 pages through the API gateway)"
"$cli" "${cli_args[@]}" pages --limit 5

step "Demo finished"
