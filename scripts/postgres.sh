#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the tests, on loopback, with a fresh data directory,
# and print the connection URL for MXPOLICY_TEST_POSTGRES. Stop it with `postgres.sh stop DIR`.
#
# Usage: url=$(scripts/postgres.sh start DIR)   # DIR: an empty directory to hold the cluster
#        scripts/postgres.sh stop DIR
#
# PostgreSQL refuses to run as root (CI runs as root): the server then runs as the `postgres`
# user that Debian's package creates, which must own DIR.
set -euo pipefail

cmd=${1:?start or stop}
dir=${2:?data directory}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$bin" ] || [ ! -x "$bin/pg_ctl" ]; then
    echo "postgres.sh: PostgreSQL is not installed (Debian package: postgresql)" >&2
    exit 3
fi

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "$cmd" in
start)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    # A port derived from the directory, so parallel runs do not collide.
    port=$(( 20000 + $(printf '%s' "$dir" | cksum | cut -d' ' -f1) % 20000 ))
    as_owner "$bin/initdb" -D "$dir/data" -U mxpolicy --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=on" start >/dev/null
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U mxpolicy mxpolicy_test
    echo "postgresql://mxpolicy@127.0.0.1:$port/mxpolicy_test"
    ;;
stop)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
    ;;
*)
    echo "postgres.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
