#!/usr/bin/env bash
# A throw-away MariaDB (MySQL-compatible) server on loopback, for tests and examples.
#
# Usage: scripts/mariadb.sh install
#        scripts/mariadb.sh run DIR PORT
#
#   install  apt-get install -y --no-install-recommends mariadb-server when mariadbd is
#            missing (needs root; .ci/run does it up front).
#   run      initialise DIR/data once (mariadb-install-db, small redo log), then exec
#            mariadbd in the foreground on 127.0.0.1:PORT only (socket DIR/mysqld.sock,
#            log DIR/error.log), so the caller owns its PID: SIGTERM stops it cleanly.
#            On start it creates database "streamflow" and user streamflow/streamflow
#            for 127.0.0.1 (DSN mysql://streamflow:streamflow@127.0.0.1:PORT/streamflow).
# Every tool runs with --no-defaults: /etc/mysql/my.cnf is never read.
set -euo pipefail

log() { printf '[mariadb.sh] %s\n' "$*" >&2; }

install() {
  command -v mariadbd >/dev/null && return 0
  [[ "$(id -u)" == 0 ]] || { log "mariadbd missing: apt-get install mariadb-server (root)"; exit 1; }
  log "installing mariadb-server from the Debian packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mariadb-server >&2 \
    || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq --no-install-recommends mariadb-server >&2; }
}

run() {
  local dir="$1" port="$2"
  install
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local user=()
  [[ "$(id -u)" == 0 ]] && user=(--user=root)  # mariadbd refuses root without it
  if [[ ! -d "$dir/data/mysql" ]]; then
    mariadb-install-db --no-defaults "${user[@]}" --datadir="$dir/data" \
      --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
      --innodb-log-file-size=8M >"$dir/install.log" 2>&1 \
      || { cat "$dir/install.log" >&2; exit 1; }
  fi
  cat >"$dir/init.sql" <<SQL
CREATE DATABASE IF NOT EXISTS streamflow;
CREATE USER IF NOT EXISTS 'streamflow'@'127.0.0.1' IDENTIFIED BY 'streamflow';
GRANT ALL ON *.* TO 'streamflow'@'127.0.0.1';
SQL
  exec mariadbd --no-defaults "${user[@]}" --datadir="$dir/data" --port="$port" \
    --bind-address=127.0.0.1 --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" \
    --log-error="$dir/error.log" --skip-name-resolve --skip-log-bin \
    --innodb-log-file-size=8M --innodb-buffer-pool-size=64M \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
    --init-file="$dir/init.sql"
}

case "${1:-}" in
  install) install ;;
  run) [[ $# == 3 ]] || { log "usage: $0 run DIR PORT"; exit 2; }; run "$2" "$3" ;;
  *) log "usage: $0 install | run DIR PORT"; exit 2 ;;
esac
