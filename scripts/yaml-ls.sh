#!/usr/bin/env bash
# The YAML language server (what VS Code's YAML extension, Neovim's yamlls and others run),
# for tests/integration/test_editor_schema.py: the editor checks our shipped files with our
# JSON Schemas exactly as a user's editor would.
#
# Usage: scripts/yaml-ls.sh path   install once (npm, into the tool cache outside the repo)
#                                  and print the server's path; exit 3 when npm is missing.
#
# Environment:
#   YAML_LS_VERSION   npm version of yaml-language-server (default 1.15.0)
#   STREAMFLOW_TOOLS  tool cache (default ~/.cache/streamflow-tools): yaml-ls/node_modules
set -euo pipefail

VERSION="${YAML_LS_VERSION:-1.15.0}"
TOOLS="${STREAMFLOW_TOOLS:-$HOME/.cache/streamflow-tools}"
DIR="$TOOLS/yaml-ls-$VERSION"
BIN="$DIR/node_modules/.bin/yaml-language-server"

log() { echo "yaml-ls: $*" >&2; }

if [[ "${1:-path}" != "path" ]]; then
  log "usage: $0 path"
  exit 2
fi
mkdir -p "$TOOLS"
exec 9>"$TOOLS/yaml-ls.lock"
flock 9  # one install at a time (parallel test runs share the cache)
if [[ ! -x "$BIN" ]]; then
  if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
    log "NO YAML LANGUAGE SERVER: node/npm not found (apt-get install nodejs npm)"
    exit 3
  fi
  log "installing yaml-language-server@$VERSION into $DIR"
  mkdir -p "$DIR"
  (cd "$DIR" && { [[ -f package.json ]] || npm init -y >/dev/null; } \
    && npm install --no-audit --no-fund --silent "yaml-language-server@$VERSION" >&2) \
    || { log "NO YAML LANGUAGE SERVER: npm install failed"; exit 3; }
fi
echo "$BIN"
