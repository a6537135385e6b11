#!/usr/bin/env bash
# FerretDB v1 over SQLite (the MongoDB wire protocol) for StreamFlow's MongoDB tests.
#
# Usage: scripts/ferretdb.sh build
#
#   build   build scripts/ferretdb (a tiny main module embedding FerretDB v1.24.2, see
#           main.go) into $STREAMFLOW_FERRETDB_HOME/bin/ferretdb-sqlite, once: it is built
#           again only when main.go, go.mod or go.sum change. Needs Go >= 1.24 (`go` on
#           PATH or /usr/local/go/bin/go); modules come from the Go module proxy.
#           Prints, on stdout only:  FERRETDB_BIN=/path/to/ferretdb-sqlite
#           (progress goes to stderr). Cold: about 50 s on an idle 2-core machine, with
#           ~1 GB of Go module and build caches under $STREAMFLOW_FERRETDB_HOME/go,
#           emptied after the build (the 37 MB binary is all that is kept).
#
# The test fixture (tests/integration/mongo_server.py) runs the binary on a free loopback
# port with a fresh data folder:  ferretdb-sqlite -listen-addr 127.0.0.1:PORT -sqlite-url file:DIR/
#
# Environment:
#   STREAMFLOW_FERRETDB_HOME  where the binary goes (default ~/.cache/streamflow-ferretdb)
#   GO                        go binary (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

SRC="$(cd "$(dirname "$0")/ferretdb" && pwd)"
HOME_DIR="${STREAMFLOW_FERRETDB_HOME:-$HOME/.cache/streamflow-ferretdb}"
BIN="$HOME_DIR/bin/ferretdb-sqlite"
STAMP="$HOME_DIR/bin/.source-sha256"

log() { printf '[ferretdb.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

find_go() {
  if [[ -n "${GO:-}" ]]; then command -v "$GO"; return; fi
  if command -v go >/dev/null; then command -v go; return 0; fi
  [[ -x /usr/local/go/bin/go ]] && { echo /usr/local/go/bin/go; return 0; }
  return 1
}

build() {
  local want go
  want="$(cat "$SRC/main.go" "$SRC/go.mod" "$SRC/go.sum" | sha256sum | cut -d' ' -f1)"
  if [[ -x "$BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "FERRETDB_BIN=$BIN"
    return 0
  fi
  go="$(find_go)" || die "Go is not installed (needs go >= 1.24: https://go.dev/dl/)"
  mkdir -p "$HOME_DIR/bin" "$HOME_DIR/go"
  log "building FerretDB v1.24.2 (SQLite) with $("$go" version | cut -d' ' -f3) into $BIN"
  export GOPATH="$HOME_DIR/go" GOMODCACHE="$HOME_DIR/go/mod" GOCACHE="$HOME_DIR/go/cache"
  export GOFLAGS=-buildvcs=false CGO_ENABLED=0
  local rc=0
  (cd "$SRC" && "$go" build -trimpath -o "$BIN.tmp" .) >&2 || rc=$?
  "$go" clean -modcache >&2 || true   # the module cache is read-only: rm -rf cannot
  rm -rf "$HOME_DIR/go"
  [[ $rc == 0 ]] || die "go build failed"
  mv "$BIN.tmp" "$BIN"
  echo "$want" > "$STAMP"
  echo "FERRETDB_BIN=$BIN"
}

case "${1:-}" in
  build) build ;;
  *) echo "usage: $0 build" >&2; exit 2 ;;
esac
