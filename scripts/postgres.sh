#!/usr/bin/env bash
# A throw-away PostgreSQL (Debian's packages) on loopback, for sweeps shared by several processes or
# machines and for the tests of that path. Prints the Optuna storage URL on stdout.
#
#   export PEFTLAB_POSTGRES_URL=$(bash scripts/postgres.sh start)   # CI, before pytest
#   python sweep.py sweeps/lora.yaml --workers 2 --storage "$PEFTLAB_POSTGRES_URL"
#   bash scripts/postgres.sh stop
#
# PGDATA (default /tmp/peftlab-postgres) and PGPORT (default 55432) choose the cluster. It trusts
# local connections and listens on 127.0.0.1 only: for tests and one machine, not a shared server.
set -euo pipefail
cd "$(dirname "$0")/.."

action="${1:-start}"
data="${PGDATA:-/tmp/peftlab-postgres}"
port="${PGPORT:-55432}"
url="postgresql+psycopg2://postgres@127.0.0.1:${port}/peftlab"

bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$bindir" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -q && apt-get install -y -q postgresql; } >&2   # Debian's server packages
    bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
fi
[ -n "$bindir" ] || { echo "error: PostgreSQL is not installed (Debian: apt-get install postgresql)" >&2; exit 1; }

# The server refuses to run as root: run it as the postgres system user then.
as_db_user() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "$action" in
start)
    if [ ! -f "$data/PG_VERSION" ]; then
        mkdir -p "$data"
        [ "$(id -u)" = 0 ] && chown postgres: "$data"
        as_db_user "$bindir/initdb" -D "$data" -U postgres -A trust --no-sync >/dev/null
    fi
    if ! as_db_user "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        as_db_user "$bindir/pg_ctl" -D "$data" -w -l "$data/server.log" \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$data -c fsync=off" start >/dev/null
    fi
    as_db_user "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'peftlab'" \
        | grep -q 1 || as_db_user "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres peftlab
    echo "$url"
    ;;
stop)
    as_db_user "$bindir/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1 || true
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
