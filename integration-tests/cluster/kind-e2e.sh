#!/usr/bin/env bash
# The scenario suite against a kind cluster: creates (or reuses) the cluster, builds the injector's
# image, loads it into the cluster, installs the chart with integration-tests/cluster/values.yaml
# (the catalog the scenarios expect), waits for its pods, and runs the scenarios through it
# (ADMISSION_KIT_TEST_KUBECONFIG).
#
# Engines: Docker when a Docker engine answers; else podman (kind's podman provider,
# KIND_EXPERIMENTAL_PROVIDER=podman), with the image built by scripts/build-image.sh and loaded from
# its OCI archive. kind needs its node image (kindest/node) from a registry: where it is neither
# present nor pullable, the script says so and exits 2. It never passes without running.
#
# Usage: bash integration-tests/cluster/kind-e2e.sh [--keep] [--no-pull]
#   --keep     leave the cluster up
#   --no-pull  never pull the node image (the test suite passes it: a machine whose only network is
#              the package registries must not try a container registry); use it if present
set -euo pipefail
cd "$(dirname "$0")/../.."

cluster=${KIND_CLUSTER_NAME:-admission-kit-e2e}
kind_version=v0.33.0
# The node image of the Kubernetes release the project's control plane is pinned to.
node_image=${KIND_NODE_IMAGE:-kindest/node:$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' integration-tests/control-plane/go.mod)}
keep=false
pull=true
for arg in "$@"; do
    case $arg in
        --keep) keep=true ;;
        --no-pull) pull=false ;;
        *) echo "usage: $0 [--keep] [--no-pull]" >&2; exit 64 ;;
    esac
done

log() { printf '[kind-e2e] %s\n' "$*" >&2; }
not_run() {
    log "$1"
    log "The kind end-to-end suite DID NOT RUN. The same scenarios run on this machine without kind:"
    log "  cargo test -p integration-tests --test scenarios --test chart_cluster   (local control plane)"
    log "  cargo test -p integration-tests --test node_cluster                      (a real node: the chart's pods run)"
    exit 2
}

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    engine=docker
elif command -v podman >/dev/null 2>&1; then
    engine=podman
    export KIND_EXPERIMENTAL_PROVIDER=podman
    # runc and explicit ulimits where podman's defaults are refused (see the file).
    export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/scripts/podman/containers.conf}"
else
    not_run "NO CONTAINER ENGINE: neither a Docker engine nor podman on this machine."
fi
log "engine: $engine"

# The node image first: without it nothing below can work, and `kind create` would only fail late.
if ! "$engine" image inspect "$node_image" >/dev/null 2>&1; then
    $pull || not_run "NODE IMAGE UNAVAILABLE: $node_image is not in $engine's storage, and --no-pull forbids pulling it (no container registry is reachable here). kind starts its nodes from that image; load it, or set KIND_NODE_IMAGE."
    log "pulling $node_image"
    if ! timeout 300 "$engine" pull "$node_image" >&2; then
        not_run "NODE IMAGE UNAVAILABLE: $node_image is not in $engine's storage and cannot be pulled (no registry reachable). kind starts its nodes from that image; build or load it, or set KIND_NODE_IMAGE."
    fi
fi

if ! command -v kind >/dev/null 2>&1; then
    log "installing kind $kind_version from the Go module proxy"
    GOBIN="${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools/kind-$kind_version" \
        go install "sigs.k8s.io/kind@$kind_version"
    PATH="${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools/kind-$kind_version:$PATH"
fi
helm=$(bash scripts/build-helm.sh v4 | tail -1)

if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    log "creating kind cluster $cluster ($node_image)"
    kind create cluster --name "$cluster" --image "$node_image" --wait 180s
fi
$keep || trap 'log "deleting kind cluster $cluster"; kind delete cluster --name "$cluster"' EXIT
kubeconfig=$(mktemp)
kind get kubeconfig --name "$cluster" >"$kubeconfig"

if [ "$engine" = docker ]; then
    image=admission-kit/sidecar-injector:e2e
    log "building $image (docker build)"
    docker build -t "$image" .
    kind load docker-image "$image" --name "$cluster"
else
    # The same image, from the binary built here (no base image to pull); loaded from its archive.
    read -r image archive < <(bash scripts/build-image.sh injector | tail -1)
    log "loading $image from $archive"
    kind load image-archive "$archive" --name "$cluster"
fi

log "installing the chart"
"$helm" upgrade --install sidecar-injector charts/sidecar-injector \
    --kubeconfig "$kubeconfig" --namespace sidecar-injector --create-namespace \
    -f integration-tests/cluster/values.yaml \
    --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never \
    --wait --timeout 5m

log "running the scenarios through the chart's injector"
ADMISSION_KIT_TEST_KUBECONFIG="$kubeconfig" cargo test -p integration-tests --test scenarios -- --nocapture
