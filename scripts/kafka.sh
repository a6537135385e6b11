#!/usr/bin/env bash
# Local single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) for
# StreamFlow tests, run from the Maven Central jars: no Docker, no tarball.
#
# Usage: scripts/kafka.sh start|stop|status|wait
#
#   start   reuse a broker already answering on 127.0.0.1:$KAFKA_PORT, or download the
#           jars (once), format storage (once), launch the broker in the background and
#           wait until it serves metadata and transactions. Prints, on stdout only:
#               KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092
#           (progress and timings go to stderr).
#   stop    stop the broker this script started (TERM, then KILL after 20 s).
#   status  report whether a broker answers; exit 0 if it does, 1 otherwise.
#   wait    wait until a broker answers (up to $KAFKA_START_TIMEOUT s), print the address.
#
# Environment:
#   STREAMFLOW_KAFKA_HOME  cache/state dir (default ~/.cache/streamflow-kafka): libs/,
#                          data/, logs/, server.properties, log4j2.xml, kafka.pid.
#                          Brokers on a non-default port keep their state in port-<PORT>/.
#   KAFKA_PORT             client port (default 9092); the controller uses KAFKA_PORT+1.
#   KAFKA_START_TIMEOUT    readiness timeout in seconds (default 120).
#   PYTHON                 interpreter with confluent_kafka for the readiness checks
#                          (default: the repo's .venv/bin/python, else python3).
#   KAFKA_HEAP_OPTS        JVM heap flags (default "-Xms512m -Xmx1g").
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POM="$REPO_ROOT/kafka/pom.xml"

KAFKA_HOME_DIR="${STREAMFLOW_KAFKA_HOME:-$HOME/.cache/streamflow-kafka}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT=$((KAFKA_PORT + 1))
HOST=127.0.0.1
BOOTSTRAP="$HOST:$KAFKA_PORT"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
STOP_TIMEOUT=20
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}"

LIBS_DIR="$KAFKA_HOME_DIR/libs"          # shared by all ports
if [[ "$KAFKA_PORT" == 9092 ]]; then
  STATE_DIR="$KAFKA_HOME_DIR"
else
  STATE_DIR="$KAFKA_HOME_DIR/port-$KAFKA_PORT"
fi
DATA_DIR="$STATE_DIR/data"
LOGS_DIR="$STATE_DIR/logs"
PROPS="$STATE_DIR/server.properties"
LOG4J_CONF="$STATE_DIR/log4j2.xml"
PID_FILE="$STATE_DIR/kafka.pid"
LOCK_FILE="$STATE_DIR/kafka.lock"
BROKER_LOG="$LOGS_DIR/server.log"
CONSOLE_LOG="$LOGS_DIR/kafka.out"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    PYTHON="$REPO_ROOT/.venv/bin/python"
  else
    PYTHON=python3
  fi
fi

# ---------------------------------------------------------------------------- helpers

log() { printf '[kafka.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

now() { echo "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

print_bootstrap() { echo "KAFKA_BOOTSTRAP_SERVERS=$BOOTSTRAP"; }

port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

HAVE_CLIENT=""  # cached answer of have_python_client: yes/no
have_python_client() {
  if [[ -z "$HAVE_CLIENT" ]]; then
    if "$PYTHON" -c 'import confluent_kafka' >/dev/null 2>&1; then
      HAVE_CLIENT=yes
    else
      HAVE_CLIENT=no
    fi
  fi
  [[ "$HAVE_CLIENT" == yes ]]
}

# The broker answers a Metadata request (AdminClient.list_topics) and lists itself.
admin_ready() {
  timeout 15 "$PYTHON" -c '
import sys
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0})
md = admin.list_topics(timeout=5)
sys.exit(0 if md.brokers else 1)
' "$BOOTSTRAP" >/dev/null 2>&1
}

# Ready = TCP port open and (when confluent_kafka is available) metadata served.
broker_ready() {
  port_open "$KAFKA_PORT" || return 1
  if have_python_client; then admin_ready; else return 0; fi
}

# The transaction coordinator (and __transaction_state) is only created on the first
# InitProducerId, the group coordinator (and __consumer_offsets) on the first group
# lookup: do both once here so the first exactly-once test is not the slow one.
warm_up_coordinators() {
  timeout 90 "$PYTHON" -c '
import sys, time, uuid
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

bootstrap = sys.argv[1]
deadline = time.monotonic() + 60

def retry(step):
    # A fresh broker answers NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS for a
    # moment, and not every librdkafka call retries those by itself.
    while True:
        try:
            return step()
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

producer = Producer({
    "bootstrap.servers": bootstrap,
    "transactional.id": "streamflow-kafka-sh-warmup-" + uuid.uuid4().hex,
    "log_level": 3,
})
retry(lambda: producer.init_transactions(30))
producer.begin_transaction()
producer.commit_transaction(30)

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "streamflow-kafka-sh-warmup",
    "log_level": 3,
})
retry(lambda: consumer.committed([TopicPartition("__transaction_state", 0)], timeout=10))
consumer.close()
' "$BOOTSTRAP"
}

pid_alive() {
  local pid="$1"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
    && grep -qa 'kafka\.Kafka' "/proc/$pid/cmdline" 2>/dev/null
}

our_pid() {
  local pid=""
  [[ -f "$PID_FILE" ]] && pid="$(<"$PID_FILE")"
  if pid_alive "$pid"; then echo "$pid"; fi
}

show_log_tail() {
  local f
  for f in "$BROKER_LOG" "$CONSOLE_LOG"; do
    if [[ -s "$f" ]]; then
      log "---- last 40 lines of $f ----"
      tail -n 40 "$f" >&2
    fi
  done
}

# Wait until the broker is ready; if a pid is given, fail fast when that process dies.
wait_ready() {
  local pid="${1:-}" deadline=$((SECONDS + START_TIMEOUT))
  until broker_ready; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "broker process $pid exited during startup"
      show_log_tail
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "broker on $BOOTSTRAP not ready after ${START_TIMEOUT}s"
      show_log_tail
      if [[ -n "$pid" ]]; then
        log "broker pid $pid is left running; 'scripts/kafka.sh wait' or 'stop' it"
      fi
      return 1
    fi
    sleep 1
  done
}

# ------------------------------------------------------------------------ start phases

require_tools() {
  local missing=()
  command -v java >/dev/null 2>&1 || missing+=("java (a JDK/JRE 17+)")
  if ! libs_current; then
    command -v mvn >/dev/null 2>&1 || missing+=("mvn (Apache Maven, to download the broker jars)")
  fi
  if ((${#missing[@]})); then
    local joined
    joined="$(printf '%s; ' "${missing[@]}")"
    die "cannot start a local Kafka broker, missing on PATH: ${joined%; }." \
      "Install them, or point KAFKA_BOOTSTRAP_SERVERS at an existing broker."
  fi
}

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

libs_current() {
  [[ -f "$LIBS_DIR/.pom.sha256" && "$(<"$LIBS_DIR/.pom.sha256")" == "$(pom_hash)" ]]
}

download_libs() {
  if libs_current; then
    log "jars: cached in $LIBS_DIR"
    return
  fi
  log "jars: resolving kafka/pom.xml from Maven Central into $LIBS_DIR"
  local tmp="$LIBS_DIR.tmp.$$"
  rm -rf "$tmp"
  # Maven 3.8 -q still emits ANSI resets; strip them from what we pass through.
  mvn -B -q -f "$POM" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2 \
    || { rm -rf "$tmp"; die "mvn could not resolve the Kafka jars (see output above)"; }
  pom_hash >"$tmp/.pom.sha256"
  rm -rf "$LIBS_DIR"
  mv "$tmp" "$LIBS_DIR"
  log "jars: $(find "$LIBS_DIR" -name '*.jar' | wc -l) files, $(du -sh "$LIBS_DIR" | cut -f1)"
}

write_config() {
  mkdir -p "$DATA_DIR" "$LOGS_DIR"
  cat >"$PROPS" <<EOF
# Generated by scripts/kafka.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA_DIR

# One broker: replication factor 1 everywhere (else init_transactions() hangs).
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1

# Fast tests.
num.partitions=1
auto.create.topics.enable=true
offsets.topic.num.partitions=3
transaction.state.log.num.partitions=3
group.initial.rebalance.delay.ms=0
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
num.network.threads=2
num.io.threads=4
EOF

  cat >"$LOG4J_CONF" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/kafka.sh. -->
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="server" fileName="$BROKER_LOG" filePattern="$BROKER_LOG.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="20 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
  </Loggers>
</Configuration>
EOF
}

# Classpath "libs/*" stays quoted: java expands the wildcard itself.
JAVA_CP=(-cp "$LIBS_DIR/*" -Dlog4j2.configurationFile="$LOG4J_CONF")

format_storage() {
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    log "storage: already formatted ($DATA_DIR)"
    return
  fi
  local cluster_id
  cluster_id="$(java "${JAVA_CP[@]}" kafka.tools.StorageTool random-uuid)"
  log "storage: formatting $DATA_DIR (cluster id $cluster_id)"
  java "${JAVA_CP[@]}" kafka.tools.StorageTool format \
    -t "$cluster_id" -c "$PROPS" --standalone >"$LOGS_DIR/format.log" 2>&1 \
    || { cat "$LOGS_DIR/format.log" >&2; die "formatting storage failed"; }
}

launch_broker() {
  # setsid: own session, so a Ctrl-C in the terminal/pytest that started it does not
  # kill it. stdin/stdout/stderr detached so callers capturing our output do not hang.
  # 9>&-: do not let the broker inherit (and hold forever) the start lock.
  # shellcheck disable=SC2086
  setsid nohup java $HEAP_OPTS "${JAVA_CP[@]}" kafka.Kafka "$PROPS" \
    </dev/null >"$CONSOLE_LOG" 2>&1 9>&- &
  echo $! >"$PID_FILE"
  log "broker: launched pid $! (logs in $LOGS_DIR)"
}

# ---------------------------------------------------------------------------- commands

cmd_start() {
  mkdir -p "$STATE_DIR"
  # Serialise concurrent starts (e.g. several pytest-xdist workers).
  exec 9>"$LOCK_FILE"
  flock -w $((START_TIMEOUT + 300)) 9 || die "timed out waiting for $LOCK_FILE"

  local t0 t pid
  t0="$(now)"

  pid="$(our_pid)"
  if [[ -n "$pid" ]]; then
    log "broker pid $pid (started by this script) is running; waiting until ready"
    wait_ready "$pid" || exit 1
    print_bootstrap
    return
  fi

  if port_open "$KAFKA_PORT"; then
    if ! have_python_client; then
      log "something listens on $BOOTSTRAP (no confluent_kafka in $PYTHON to check it); reusing it"
    elif admin_ready; then
      log "reusing the Kafka broker already answering on $BOOTSTRAP"
    else
      die "port $KAFKA_PORT is in use but no Kafka broker answers there; free it or set KAFKA_PORT"
    fi
    print_bootstrap
    return
  fi

  require_tools

  t="$(now)"; download_libs;  log "phase jars:      $(elapsed "$t")"
  t="$(now)"; write_config;   log "phase config:    $(elapsed "$t")"
  t="$(now)"; format_storage; log "phase format:    $(elapsed "$t")"

  t="$(now)"
  launch_broker
  wait_ready "$(<"$PID_FILE")" || exit 1
  log "phase ready:     $(elapsed "$t") (broker answers on $BOOTSTRAP)"

  if have_python_client; then
    t="$(now)"
    warm_up_coordinators || { show_log_tail; die "coordinator warm-up failed"; }
    log "phase warm-up:   $(elapsed "$t") (transaction and group coordinators ready)"
  else
    log "no confluent_kafka in $PYTHON: readiness was TCP-only, coordinator warm-up skipped"
  fi
  log "total start:     $(elapsed "$t0")"
  print_bootstrap
}

cmd_stop() {
  local pid
  pid="$(our_pid)"
  if [[ -z "$pid" ]]; then
    log "no broker started by this script is running (pid file: $PID_FILE)"
    rm -f "$PID_FILE"
    return
  fi
  log "stopping broker pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    log "still running after ${STOP_TIMEOUT}s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local pid
  pid="$(our_pid)"
  if broker_ready; then
    log "broker answers on $BOOTSTRAP${pid:+ (pid $pid, started by this script)}"
    print_bootstrap
  elif [[ -n "$pid" ]]; then
    log "broker pid $pid is running but does not answer on $BOOTSTRAP yet"
    exit 1
  else
    log "no broker answers on $BOOTSTRAP"
    exit 1
  fi
}

cmd_wait() {
  wait_ready "$(our_pid)" || exit 1
  print_bootstrap
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  wait) cmd_wait ;;
  *)
    echo "usage: $0 start|stop|status|wait" >&2
    exit 2
    ;;
esac
