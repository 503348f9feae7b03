#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for the tests and the benchmark: a fresh
# cluster in a folder of its own, listening only on a Unix socket in that
# folder (no TCP port to collide with), trust authentication for that socket.
#
#   scripts/pg-cluster.sh start DIR    initdb DIR if need be, start it; prints
#                                      the libpq connection string on stdout
#   scripts/pg-cluster.sh stop DIR     stop it (fast shutdown); DIR stays
#   scripts/pg-cluster.sh kill DIR     stop it abruptly (immediate shutdown)
#   scripts/pg-cluster.sh remove DIR   stop it if it runs, then remove DIR
#
# The server refuses to run as root: run as root, the script runs initdb and
# pg_ctl as the postgres user (runuser), which must be able to reach DIR (a
# folder under /tmp is). DIR's path must be short (a Unix socket path is at
# most 107 bytes). Exits non-zero, saying why, when PostgreSQL is missing.
set -euo pipefail

usage() { echo "usage: $0 start|stop|kill|remove DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
action=$1
dir=$(realpath -m "$2")

bin=${PG_BINDIR:-}
if [[ -z "$bin" ]]; then
  for candidate in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    [[ -x "$candidate/pg_ctl" ]] && { bin=$candidate; break; }
  done
fi
if [[ -z "$bin" || ! -x "$bin/pg_ctl" ]]; then
  echo "pg-cluster.sh: PostgreSQL is not installed (no pg_ctl; apt-get install postgresql)" >&2
  exit 1
fi

as_owner() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_ctl_quiet() { as_owner "$bin/pg_ctl" -D "$dir/data" "$@" >/dev/null; }

running() { as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; }

case $action in
  start)
    if [[ ! -d "$dir/data" ]]; then
      mkdir -p "$dir"
      [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
      as_owner "$bin/initdb" -D "$dir/data" --auth=trust --username=postgres --encoding=UTF8 --no-sync \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    if ! running; then
      pg_ctl_quiet -w -t 60 -l "$dir/server.log" \
        -o "-c listen_addresses='' -c unix_socket_directories='$dir' -c fsync=off -c max_connections=200" start ||
        { cat "$dir/server.log" >&2; exit 1; }
    fi
    echo "host=$dir port=5432 dbname=postgres user=postgres"
    ;;
  stop) running && pg_ctl_quiet -w -t 60 -m fast stop; true ;;
  kill) running && pg_ctl_quiet -w -t 60 -m immediate stop; true ;;
  remove)
    running && pg_ctl_quiet -w -t 60 -m immediate stop
    rm -rf "$dir"
    ;;
  *) usage ;;
esac
