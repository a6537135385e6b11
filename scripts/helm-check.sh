#!/usr/bin/env bash
# Lint and render the Helm chart (helm/streamflow) with every values file in
# helm/streamflow/examples/, against the example topology.
#
# Usage: scripts/helm-check.sh [check|helm-path]
#
#   check      (default) ensure a helm binary, then `helm lint --strict` and `helm template`
#              for each example; rendered manifests go to $HELM_RENDER_DIR (default: a new
#              temp dir), one <example>.yaml each, and the directory is printed last.
#   helm-path  ensure a helm binary and print its path (progress goes to stderr).
#
# helm comes from PATH when it is Helm 3, else from $STREAMFLOW_TOOLS/bin/helm, else it is
# built once with `go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION` from the Go module
# proxy (a couple of minutes on two cores) into that cache, outside the repository.
# When helm cannot be had (not on PATH, no Go, the build fails) `check` prints one loud line
# and exits 0 (skipped) — except under CI=true, where it fails; `helm-path` exits 3.
#
# Environment:
#   HELM_VERSION     helm release to build (default v3.16.4)
#   STREAMFLOW_TOOLS tool cache (default ~/.cache/streamflow-tools): bin/helm; go/ holds
#                    the Go module and build caches while building, emptied afterwards
#   GO               go binary (default: go on PATH, else /usr/local/go/bin/go)
#   HELM_TOPOLOGY    topology rendered into the chart (default the order-routing example)
#   HELM_RENDER_DIR  where rendered manifests go (default: mktemp -d)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$REPO_ROOT/helm/streamflow"
HELM_VERSION="${HELM_VERSION:-v3.16.4}"
TOOLS="${STREAMFLOW_TOOLS:-$HOME/.cache/streamflow-tools}"
TOPOLOGY="${HELM_TOPOLOGY:-$REPO_ROOT/topologies/order-routing/integration.yaml}"
EXIT_NO_HELM=3

log() { echo "helm-check: $*" >&2; }

no_helm() {
  local msg="NO HELM: $1"
  if [[ -n "${CI:-}" && "${CI}" != "false" ]]; then
    log "$msg (CI=true: the chart checks must run)"
  else
    log "$(printf '!%.0s' {1..20}) $msg — chart checks skipped $(printf '!%.0s' {1..20})"
  fi
  exit "$EXIT_NO_HELM"
}

is_helm3() { [[ "$("$1" version --template '{{.Version}}' 2>/dev/null)" == v3.* ]]; }

find_go() {
  if [[ -n "${GO:-}" ]]; then
    command -v "$GO" >/dev/null || return 1
    command -v "$GO"
    return
  fi
  if command -v go >/dev/null; then command -v go; return; fi
  if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return; fi
  return 1
}

build_helm() {
  local go bin="$TOOLS/bin" gomod dir k8s minor started
  go="$(find_go)" || no_helm "helm is not on PATH and there is no Go toolchain to build it"
  mkdir -p "$bin" "$TOOLS/go"
  export GOBIN="$bin" GOPATH="$TOOLS/go" GOMODCACHE="$TOOLS/go/mod" GOCACHE="$TOOLS/go/cache"
  export GOFLAGS="-buildvcs=false" CGO_ENABLED=0
  started=$SECONDS
  log "building helm $HELM_VERSION with $("$go" version | cut -d' ' -f3) (go install, once; cached in $bin)"
  # The Kubernetes version helm assumes without a cluster comes from its client-go
  # module, as in helm's own Makefile (otherwise it would be v1.20).
  dir="$("$go" mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  gomod="$dir/go.mod"
  [[ -f "$gomod" ]] || no_helm "could not download helm.sh/helm/v3@$HELM_VERSION from the Go module proxy"
  k8s="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")"   # e.g. v0.31.3
  minor="$(echo "$k8s" | cut -d. -f2)"
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
  ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  local status=0 buildlog="$TOOLS/helm-build.log"
  "$go" install -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    >"$buildlog" 2>&1 || status=$?
  grep -v '^go: downloading' "$buildlog" >&2 || true
  (( status == 0 )) || no_helm "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed (see $buildlog)"
  log "built $bin/helm ($HELM_VERSION, Kubernetes 1.$minor) in $((SECONDS - started)) s"
  # Only the binary is worth keeping: drop the ~1.3 GB of module and build caches.
  "$go" clean -cache -modcache >/dev/null 2>&1 || true
}

ensure_helm() {
  local cached="$TOOLS/bin/helm"
  if command -v helm >/dev/null && is_helm3 "$(command -v helm)"; then
    command -v helm
    return
  fi
  mkdir -p "$TOOLS"
  # One build at a time (make test and pytest may both ask).
  exec 9>"$TOOLS/helm.lock"
  flock 9
  if [[ -x "$cached" ]] && [[ "$("$cached" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; then
    echo "$cached"
    return
  fi
  build_helm
  is_helm3 "$cached" || no_helm "the built $cached does not run"
  echo "$cached"
}

check() {
  local helm out examples=() f name rc=0
  helm="$(ensure_helm)" || rc=$?
  if (( rc == EXIT_NO_HELM )) && [[ -z "${CI:-}" || "${CI}" == "false" ]]; then
    exit 0
  elif (( rc != 0 )); then
    exit "$rc"
  fi
  log "using $helm ($("$helm" version --template '{{.Version}}'))"
  [[ -f "$TOPOLOGY" ]] || { log "no topology at $TOPOLOGY"; exit 1; }
  out="${HELM_RENDER_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/streamflow-helm.XXXXXX")}"
  mkdir -p "$out"
  shopt -s nullglob
  examples=("$CHART"/examples/*.yaml)
  (( ${#examples[@]} )) || { log "no values files in $CHART/examples"; exit 1; }
  for f in "${examples[@]}"; do
    name="$(basename "$f" .yaml)"
    log "lint + template: examples/$name.yaml"
    "$helm" lint --strict "$CHART" -f "$f" --set-file "topology=$TOPOLOGY" >"$out/$name.lint.txt" 2>&1 \
      || { cat "$out/$name.lint.txt" >&2; log "helm lint failed for examples/$name.yaml"; exit 1; }
    "$helm" template streamflow "$CHART" --namespace streamflow -f "$f" \
      --set-file "topology=$TOPOLOGY" >"$out/$name.yaml" \
      || { log "helm template failed for examples/$name.yaml"; exit 1; }
  done
  log "${#examples[@]} values file(s) linted and rendered into $out"
  echo "$out"
}

case "${1:-check}" in
  check) check ;;
  helm-path) ensure_helm ;;
  *) echo "usage: $0 [check|helm-path]" >&2; exit 2 ;;
esac
