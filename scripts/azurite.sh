#!/usr/bin/env bash
# Azurite (Microsoft's Azure Storage emulator, from npm) for StreamFlow's azure_blob tests.
#
# Usage: scripts/azurite.sh install
#
#   install  npm-install a pinned Azurite once into $STREAMFLOW_AZURITE_HOME (default
#            ~/.cache/streamflow-azurite, outside the repository); reuse it afterwards.
#            Installs Node.js and npm from Debian packages first when npm is missing.
#            Prints, on stdout only:  AZURITE_BLOB=<path of azurite-blob>
#            (progress goes to stderr).
#
# The test fixture (tests/integration/cloud.py) starts that binary itself, in memory, on a
# free loopback port:  azurite-blob --blobHost 127.0.0.1 --blobPort PORT
#   --inMemoryPersistence --skipApiVersionCheck --disableTelemetry --silent
# and stops it by its PID.
set -euo pipefail

VERSION="${AZURITE_VERSION:-3.35.0}"
HOME_DIR="${STREAMFLOW_AZURITE_HOME:-$HOME/.cache/streamflow-azurite}"
BIN="$HOME_DIR/node_modules/.bin/azurite-blob"

log() { echo "azurite.sh: $*" >&2; }

install() {
  if [[ -x "$BIN" ]] && grep -q "\"version\": \"$VERSION\"" \
      "$HOME_DIR/node_modules/azurite/package.json" 2>/dev/null; then
    echo "AZURITE_BLOB=$BIN"
    return 0
  fi
  if ! command -v npm >/dev/null; then
    log "npm missing: installing nodejs and npm from Debian packages"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      nodejs npm >&2
  fi
  mkdir -p "$HOME_DIR"
  log "installing azurite@$VERSION into $HOME_DIR"
  (cd "$HOME_DIR" && { [[ -f package.json ]] || npm init -y >/dev/null; } \
    && npm install --no-audit --no-fund --loglevel=error "azurite@$VERSION" >&2)
  [[ -x "$BIN" ]] || { log "no $BIN after npm install"; exit 1; }
  echo "AZURITE_BLOB=$BIN"
}

case "${1:-}" in
  install) install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
