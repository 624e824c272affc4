#!/usr/bin/env bash
# Install and start a local PostgreSQL (Debian packages) listening on 127.0.0.1, with a role and a database for the
# tests. Prints the SQLAlchemy URL on its last line.
# Usage: bash scripts/postgres.sh [DBNAME]     (default sfaomf_test)
#        bash scripts/postgres.sh down         stop the cluster it started (the data stays)
source "$(dirname "$0")/lib.sh"
DB="${1:-sfaomf_test}"
ROLE=sfaomf
MIN_CONNECTIONS=300
if [ "$DB" = down ]; then
    command -v pg_lsclusters >/dev/null || exit 0
    read -r version name _ status _ <<<"$(pg_lsclusters -h | head -n 1)"
    if [ "${status:-}" = online ]; then
        echo "postgres.sh: stopping PostgreSQL $version/$name" >&2
        as_root pg_ctlcluster "$version" "$name" stop
    fi
    exit 0
fi
apt_install postgresql postgresql-contrib
cluster=$(pg_lsclusters -h | head -n 1)
if [ -z "$cluster" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    as_root pg_createcluster "$version" main >/dev/null
    cluster=$(pg_lsclusters -h | head -n 1)
fi
read -r version name port status _ <<<"$cluster"
if [ "$status" != "online" ]; then
    as_root pg_ctlcluster "$version" "$name" start
fi
psql_admin() { (cd / && as_root su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -qtA $*"); }
# The test suite runs in four pytest processes at once, each starting servers with connection pools of their own (a
# cluster test's two hosts hold about 20): Debian's default of 100 connections ran out in a CI run. Raised once (a
# restart, which only this first time interrupts anyone).
if [ "$(psql_admin "-c \"SHOW max_connections\"")" -lt "$MIN_CONNECTIONS" ]; then
    psql_admin "-c \"ALTER SYSTEM SET max_connections = $MIN_CONNECTIONS\""
    as_root pg_ctlcluster "$version" "$name" restart
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname='$ROLE'\"")" != "1" ]; then
    psql_admin "-c \"CREATE ROLE $ROLE LOGIN PASSWORD '$ROLE'\""
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname='$DB'\"")" != "1" ]; then
    psql_admin "-c \"CREATE DATABASE $DB OWNER $ROLE\""
fi
echo "postgresql+psycopg://$ROLE:$ROLE@127.0.0.1:$port/$DB"
