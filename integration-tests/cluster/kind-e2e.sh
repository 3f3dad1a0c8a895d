#!/usr/bin/env bash
# The scenario suite against a real cluster with nodes: creates (or reuses) a kind cluster, builds
# the injector's image from the repository's Dockerfile, loads it into the cluster, installs the
# chart with integration-tests/cluster/values.yaml (the catalog the scenarios expect), waits for
# its pods, and runs the scenarios through it (ADMISSION_KIT_TEST_KUBECONFIG).
#
# Needs a Docker engine. Without one it says so and exits 2: it never passes without running.
#
# Usage: bash integration-tests/cluster/kind-e2e.sh [--keep]   (--keep: leave the cluster up)
set -euo pipefail
cd "$(dirname "$0")/../.."

cluster=${KIND_CLUSTER_NAME:-admission-kit-e2e}
image=admission-kit/sidecar-injector:e2e
kind_version=v0.33.0
keep=false
[ "${1:-}" = "--keep" ] && keep=true

log() { printf '[kind-e2e] %s\n' "$*" >&2; }

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    cat >&2 <<'MSG'
[kind-e2e] DOCKER MISSING: no reachable Docker engine on this machine.
[kind-e2e] The kind end-to-end suite DID NOT RUN (kind needs Docker to start its node containers).
[kind-e2e] The same scenarios run against the local control plane instead:
[kind-e2e]   cargo test -p integration-tests --test scenarios --test chart_cluster
MSG
    exit 2
fi

if ! command -v kind >/dev/null 2>&1; then
    log "installing kind $kind_version from the Go module proxy"
    GOBIN="${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools/kind-$kind_version" \
        go install "sigs.k8s.io/kind@$kind_version"
    PATH="${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools/kind-$kind_version:$PATH"
fi
helm=$(bash scripts/build-helm.sh v4 | tail -1)

if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    log "creating kind cluster $cluster"
    kind create cluster --name "$cluster" --wait 180s
fi
$keep || trap 'log "deleting kind cluster $cluster"; kind delete cluster --name "$cluster"' EXIT
kubeconfig=$(mktemp)
kind get kubeconfig --name "$cluster" >"$kubeconfig"

log "building $image"
docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

log "installing the chart"
"$helm" upgrade --install sidecar-injector charts/sidecar-injector \
    --kubeconfig "$kubeconfig" --namespace sidecar-injector --create-namespace \
    -f integration-tests/cluster/values.yaml \
    --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never \
    --wait --timeout 5m

log "running the scenarios through the chart's injector"
ADMISSION_KIT_TEST_KUBECONFIG="$kubeconfig" cargo test -p integration-tests --test scenarios -- --nocapture
