#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 and prints a URL
# the tests can use (KODA_TEST_POSTGRES_URL). Starts the installed cluster, or
# installs PostgreSQL from Debian's packages when none is installed.
set -euo pipefail

log() { echo "postgres: $*" >&2; }

cluster_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

ready() { command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; }

as_postgres() { runuser -u postgres -- "$@"; }

if ! ready; then
  if [ -z "$(cluster_version)" ]; then
    log "no PostgreSQL installed: installing it"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
  fi
  v="$(cluster_version)"
  if [ -z "$v" ] || [ ! -d "/etc/postgresql/$v/main" ]; then
    log "creating a cluster"
    pg_createcluster "${v:-15}" main >&2
    v="$(cluster_version)"
  fi
  log "starting cluster $v/main"
  pg_ctlcluster --skip-systemctl-redirect "$v" main start >&2 || true
  for _ in $(seq 1 60); do ready && break; sleep 0.5; done
  ready || { log "the server did not come up"; exit 1; }
fi

# Log in over TCP: trust where configured, else with a password we set.
url="postgres://postgres@127.0.0.1:5432/postgres"
if ! psql "$url" -qAtc 'SELECT 1' >/dev/null 2>&1; then
  log "setting a password for the postgres role"
  as_postgres psql -qc "ALTER ROLE postgres PASSWORD 'postgres'" >&2
  url="postgres://postgres:postgres@127.0.0.1:5432/postgres"
fi
if [ "$(psql "$url" -qAtc "SELECT 1 FROM pg_database WHERE datname = 'test'")" != "1" ]; then
  log "creating database test"
  psql "$url" -qc 'CREATE DATABASE test' >&2
fi
echo "${url%/postgres}/test"
