#!/usr/bin/env bash
# A RabbitMQ broker on loopback for StreamFlow's tests (Debian's rabbitmq-server, no systemd).
#
# Usage: scripts/rabbitmq.sh install
#        scripts/rabbitmq.sh run DIR AMQP_PORT EPMD_PORT DIST_PORT
#
#   install  apt-get install rabbitmq-server when /usr/lib/rabbitmq/bin/rabbitmq-server is
#            missing (needs root; .ci/run does it on a fresh machine). apt never starts the
#            service where policy-rc.d forbids it (containers); elsewhere Debian's init
#            script would start one on 5672, which the tests do not use.
#   run      run a broker in the foreground until SIGTERM, all state in DIR: its own epmd
#            on 127.0.0.1:EPMD_PORT (never the shared 4369), AMQP on 127.0.0.1:AMQP_PORT,
#            Erlang distribution on 127.0.0.1:DIST_PORT, node rabbit@localhost, no plugins,
#            user guest/guest (loopback only). Ready when AMQP_PORT accepts connections
#            (about 4 s). SIGTERM stops the broker cleanly (about 1 s), then epmd.
#
# The test fixture (tests/integration/rabbitmq_server.py) picks free ports and a temp DIR.
# As root the broker runs as root: /usr/sbin/rabbitmq-server (which su's to rabbitmq) is
# not used.
set -euo pipefail

SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
log() { printf '[rabbitmq.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

install() {
  [[ -x "$SERVER" ]] && return 0
  [[ "$(id -u)" == 0 ]] || die "rabbitmq-server is not installed; run as root: apt-get install -y --no-install-recommends rabbitmq-server"
  log "installing rabbitmq-server from Debian packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server >&2
}

run() {
  local dir="$1" port="$2" epmd_port="$3" dist_port="$4"
  [[ -x "$SERVER" ]] || die "rabbitmq-server is not installed: $0 install"
  mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
  : > "$dir/rabbitmq-env.conf"
  echo '[].' > "$dir/enabled_plugins"
  export HOME="$dir/home" ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$epmd_port"
  export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" RABBITMQ_NODENAME=rabbit@localhost
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$port"
  export RABBITMQ_DIST_PORT="$dist_port"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_PID_FILE="$dir/rabbit.pid"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  epmd -port "$epmd_port" &
  local epmd=$!
  "$SERVER" &
  local server=$!
  stop() {
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    kill -TERM "$epmd" 2>/dev/null || true
    wait "$epmd" 2>/dev/null || true
    exit 0
  }
  trap stop TERM INT
  local rc=0
  wait "$server" || rc=$?
  kill -TERM "$epmd" 2>/dev/null || true
  wait "$epmd" 2>/dev/null || true
  exit "$rc"
}

case "${1:-}" in
  install) install ;;
  run) [[ $# == 5 ]] || die "usage: $0 run DIR AMQP_PORT EPMD_PORT DIST_PORT"; run "$2" "$3" "$4" "$5" ;;
  *) echo "usage: $0 install | run DIR AMQP_PORT EPMD_PORT DIST_PORT" >&2; exit 2 ;;
esac
