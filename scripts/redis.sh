#!/usr/bin/env bash
# A throw-away Redis server on loopback, for tests and examples.
#
# Usage: scripts/redis.sh install
#        scripts/redis.sh run DIR PORT [PASSWORD]
#
#   install  apt-get install -y --no-install-recommends redis-server when redis-server is
#            missing (needs root; .ci/run does it up front).
#   run      exec redis-server in the foreground on 127.0.0.1:PORT only, nothing
#            persisted, log DIR/redis.log, no config file; with PASSWORD, AUTH is required.
#            The caller owns its PID: SIGTERM stops it.
set -euo pipefail

log() { printf '[redis.sh] %s\n' "$*" >&2; }

install() {
  command -v redis-server >/dev/null && return 0
  [[ "$(id -u)" == 0 ]] || { log "redis-server missing: apt-get install redis-server (root)"; exit 1; }
  log "installing redis-server from the Debian packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2 \
    || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq --no-install-recommends redis-server >&2; }
}

run() {
  local dir="$1" port="$2" password="${3:-}"
  install
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local auth=()
  [[ -n "$password" ]] && auth=(--requirepass "$password")
  exec redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" "${auth[@]}"
}

case "${1:-}" in
  install) install ;;
  run) [[ $# -ge 3 ]] || { log "usage: $0 run DIR PORT [PASSWORD]"; exit 2; }; run "$2" "$3" "${4:-}" ;;
  *) log "usage: $0 install | run DIR PORT [PASSWORD]"; exit 2 ;;
esac
