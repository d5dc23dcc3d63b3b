#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for the tests (scripts/test.sh, tests/appliance/conftest.py).
#
#   scripts/start_postgres.sh start   -> creates a cluster in a temp dir, listening only on 127.0.0.1 at a free port,
#                                        creates database totalfm_test, prints ONLY the SQLAlchemy URL on stdout
#   scripts/start_postgres.sh stop    -> stops that cluster and removes its directory
#
# Which cluster `stop` means is remembered in a small state file: $TOTALFM_PG_STATE, by default one per user in
# $TMPDIR. Set TOTALFM_PG_STATE to run several clusters side by side (the test fixture does).
# Why trust auth and fsync=off: the cluster lives for one test run on loopback and holds nothing worth keeping.
set -euo pipefail

STATE=${TOTALFM_PG_STATE:-${TMPDIR:-/tmp}/totalfm-test-pg.$(id -u).state}
DB=totalfm_test

find_bin() {
    local name=$1 d
    # Debian keeps the server binaries out of PATH, in /usr/lib/postgresql/<version>/bin.
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/$name" ] && { echo "$d/$name"; return 0; }
    done
    command -v "$name" 2>/dev/null && return 0
    echo "start_postgres.sh: $name not found; install the server: apt-get install -y postgresql" >&2
    return 1
}

# Run a server binary as an unprivileged user: initdb and postgres refuse to run as root.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
    local initdb pg_ctl createdb dir port
    initdb=$(find_bin initdb) && pg_ctl=$(find_bin pg_ctl) && createdb=$(find_bin createdb) || exit 1
    if [ -f "$STATE" ]; then
        echo "start_postgres.sh: a cluster from $STATE is still registered; run '$0 stop' first" >&2
        exit 1
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/totalfm-pg.XXXXXX")
    chmod 755 "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    echo "$dir" > "$STATE"
    if ! as_pg "$initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1; then
        echo "start_postgres.sh: initdb failed, see $dir/initdb.log" >&2
        cat "$dir/initdb.log" >&2
        exit 1
    fi
    port=$(free_port)
    if ! as_pg "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null 2>&1; then
        echo "start_postgres.sh: the server did not start, see $dir/server.log" >&2
        cat "$dir/server.log" >&2 || true
        exit 1
    fi
    echo "$port" > "$dir/port"
    as_pg "$createdb" -h 127.0.0.1 -p "$port" -U postgres "$DB"
    echo "postgresql+psycopg://postgres@127.0.0.1:$port/$DB"
}

stop() {
    local dir pg_ctl
    [ -f "$STATE" ] || { echo "start_postgres.sh: nothing to stop ($STATE not found)" >&2; return 0; }
    dir=$(cat "$STATE")
    pg_ctl=$(find_bin pg_ctl) || exit 1
    if [ -d "$dir/data" ]; then
        as_pg "$pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    case "$dir" in
        */totalfm-pg.*) rm -rf "$dir" ;;  # only ever remove a directory this script made
    esac
    rm -f "$STATE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
