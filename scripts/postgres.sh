#!/usr/bin/env bash
# A real PostgreSQL server on loopback for StreamFlow's tests and examples.
#
# Usage: scripts/postgres.sh start|stop|status
#
#   start   1. DATABASE_URL, or PG* variables (PGHOST ...), naming a server that answers:
#              use it;
#           2. else a server this script started before, still answering: reuse it;
#           3. else the Debian packages (apt-get install -y postgresql when initdb/pg_ctl
#              are missing): initdb once into $STREAMFLOW_PG_HOME (owned by a non-root
#              user, since postgres refuses to run as root), listen on 127.0.0.1:$PG_PORT
#              only, trust authentication on loopback, create database "streamflow".
#           Prints, on stdout only:  DATABASE_URL=postgresql://...
#           (progress goes to stderr).
#   stop    stop the server this script started.
#   status  exit 0 if the server answers, 1 otherwise.
#
# Environment:
#   STREAMFLOW_PG_HOME  data/log folder (default ~/.cache/streamflow-pg; as root, when the
#                       postgres user cannot reach that folder, /var/tmp/streamflow-pg)
#   PG_PORT             port (default 5433)
#   PG_START_TIMEOUT    seconds to wait for the server (default 60)
set -euo pipefail

HOST=127.0.0.1
PORT="${PG_PORT:-5433}"
DB=streamflow
START_TIMEOUT="${PG_START_TIMEOUT:-60}"
URL="postgresql://postgres@$HOST:$PORT/$DB"

log() { printf '[postgres.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

find_bin() {  # find_bin NAME: a PostgreSQL server binary (newest version wins)
  local name="$1" found
  if found="$(command -v "$name" 2>/dev/null)"; then echo "$found"; return 0; fi
  found="$(ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -1 || true)"
  [[ -n "$found" ]] && echo "$found"
}

answers() {  # answers URL: a query succeeds
  local url="$1"
  if command -v psql >/dev/null; then
    PGCONNECT_TIMEOUT=3 psql "$url" -XAtqc 'select 1' >/dev/null 2>&1
  else
    local py="${PYTHON:-python3}"
    [[ -x "$(dirname "$0")/../.venv/bin/python" ]] && py="$(dirname "$0")/../.venv/bin/python"
    "$py" - "$url" >/dev/null 2>&1 <<'EOF'
import asyncio, sys
import asyncpg
async def main():
    conn = await asyncpg.connect(sys.argv[1], timeout=3)
    await conn.fetchval("select 1")
    await conn.close()
asyncio.run(main())
EOF
  fi
}

from_environment() {
  if [[ -n "${DATABASE_URL:-}" ]]; then
    if answers "$DATABASE_URL"; then echo "$DATABASE_URL"; return 0; fi
    log "DATABASE_URL is set but does not answer; starting a local server instead"
    return 1
  fi
  if [[ -n "${PGHOST:-}${PGPORT:-}${PGUSER:-}${PGDATABASE:-}" ]]; then
    local user="${PGUSER:-postgres}" host="${PGHOST:-$HOST}" port="${PGPORT:-5432}"
    local db="${PGDATABASE:-$user}" auth="$user"
    [[ -n "${PGPASSWORD:-}" ]] && auth="$user:$PGPASSWORD"
    local url="postgresql://$auth@$host:$port/$db"
    if answers "$url"; then echo "$url"; return 0; fi
    log "PG* variables are set but that server does not answer; starting a local server instead"
  fi
  return 1
}

# run as the server's owner: ourselves, or the postgres user when we are root
as_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pick_home() {
  if [[ -n "${STREAMFLOW_PG_HOME:-}" ]]; then echo "$STREAMFLOW_PG_HOME"; return; fi
  local home="$HOME/.cache/streamflow-pg"
  if [[ "$(id -u)" == 0 ]]; then
    mkdir -p "$home" && chown postgres: "$home" 2>/dev/null || true
    if ! runuser -u postgres -- test -w "$home" 2>/dev/null; then
      home=/var/tmp/streamflow-pg
    fi
  fi
  echo "$home"
}

ensure_binaries() {
  if [[ -z "$(find_bin initdb)" || -z "$(find_bin pg_ctl)" ]]; then
    [[ "$(id -u)" == 0 ]] || die "initdb/pg_ctl missing; install the postgresql package"
    log "installing PostgreSQL from Debian packages"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  fi
  if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
}

start_local() {
  ensure_binaries
  local initdb pg_ctl home data
  initdb="$(find_bin initdb)"; pg_ctl="$(find_bin pg_ctl)"
  home="$(pick_home)"; data="$home/data-$PORT"
  mkdir -p "$home"
  [[ "$(id -u)" == 0 ]] && chown postgres: "$home"
  if answers "$URL"; then echo "DATABASE_URL=$URL"; return 0; fi
  if [[ ! -f "$data/PG_VERSION" ]]; then
    log "initdb into $data"
    as_owner "$initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >&2 \
      || as_owner "$initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 >&2
    # loopback only, trust there; nothing else may connect
    as_owner bash -c "cat > '$data/pg_hba.conf'" <<EOF
local   all  all                trust
host    all  all  127.0.0.1/32  trust
EOF
  fi
  log "starting PostgreSQL on $HOST:$PORT ($data)"
  as_owner "$pg_ctl" -D "$data" -l "$home/postgres-$PORT.log" -w -t "$START_TIMEOUT" \
    -o "-c listen_addresses=$HOST -p $PORT -k $data -c fsync=off -c full_page_writes=off" \
    start >&2 || { tail -30 "$home/postgres-$PORT.log" >&2 || true; die "server did not start"; }
  local base="postgresql://postgres@$HOST:$PORT/postgres"
  if ! answers "$URL"; then
    if command -v psql >/dev/null; then
      psql "$base" -XAtqc "create database $DB" >&2
    else
      as_owner "$(dirname "$initdb")/createdb" -h "$HOST" -p "$PORT" -U postgres "$DB" >&2
    fi
  fi
  answers "$URL" || die "server started but $URL does not answer"
  echo "DATABASE_URL=$URL"
}

cmd="${1:-}"
case "$cmd" in
  start)
    if url="$(from_environment)"; then echo "DATABASE_URL=$url"; exit 0; fi
    start_local
    ;;
  stop)
    home="$(pick_home)"; data="$home/data-$PORT"
    if [[ -f "$data/postmaster.pid" ]]; then
      as_owner "$(find_bin pg_ctl)" -D "$data" -m fast stop >&2
    else
      log "no server of this script is running on port $PORT"
    fi
    ;;
  status)
    if answers "$URL"; then log "answers: $URL"; exit 0; fi
    log "no answer on $URL"; exit 1
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2; exit 2
    ;;
esac
