#!/usr/bin/env bash
# Builds Helm 3 and/or Helm 4 from the Go module proxy, at the versions pinned by the wrapper
# modules scripts/go-tools/helm-v3/ and scripts/go-tools/helm-v4/ (each a go.mod with a `tool`
# directive plus its go.sum, so a build from a fresh clone is checked against committed checksums),
# and caches the binaries. Needs only Go (GOTOOLCHAIN=local) and the module proxy.
#
# Usage:
#   helm4=$(bash scripts/build-helm.sh v4 | tail -1)
#   bash scripts/build-helm.sh [v3|v4|all]        (default: all)
#       Builds into ${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools/helm-<version>/helm
#       unless that binary is already there, and prints the path of each binary as the last lines
#       of stdout (v3 before v4 for `all`). Progress goes to stderr.
#   bash scripts/build-helm.sh --pin v3.22.0       (or v4.x.y)
#       Rewrites the matching wrapper module (go.mod, go.sum) for another release. Commit the result.
#
# The version variables are set with -ldflags exactly as Helm's Makefile does for a tagged release
# (internal/version.version, empty metadata, gitTreeState=clean; Helm 3 also gets the Kubernetes
# version its chartutil and lint rules assume, derived from the k8s.io/client-go it builds with).
# gitCommit stays empty: the module proxy does not record the commit a tag points to.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools_dir="$here/go-tools"

log() { printf '[build-helm] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
# readonly: the committed go.mod/go.sum are used as they are (no silent upgrades).
export GOFLAGS="-mod=readonly -buildvcs=false"

command -v go >/dev/null || die "go is not on PATH"

# Version of module $2 required by the wrapper module in directory $1.
required_version() {
    awk -v m="$2" '
        $1 == "require" && $2 != "(" { $1 = ""; $0 = $0 }
        $1 == m && $2 ~ /^v/ { print $2; exit }
    ' "$1/go.mod"
}

pin() {
    local version=$1
    [[ $version =~ ^v([34])\.[0-9]+\.[0-9]+$ ]] || die "--pin wants a Helm release like v3.22.0 or v4.3.1, got '$version'"
    local major="v${BASH_REMATCH[1]}"
    local mod_dir="$tools_dir/helm-$major" module="helm.sh/helm/$major"
    # The release's own go directive (its go.mod, as the module proxy serves it).
    local upstream go_directive
    upstream=$(cd "${TMPDIR:-/tmp}" && go mod download -json "$module@$version" | awk -F'"' '$2 == "GoMod" { print $4 }')
    [[ -f $upstream ]] || die "no go.mod for $module@$version on the module proxy"
    go_directive=$(awk '$1 == "go" { print $2; exit }' "$upstream")
    [[ -n $go_directive ]] || die "cannot read the go directive of $module@$version"
    mkdir -p "$mod_dir"
    cat >"$mod_dir/go.mod" <<EOF
// Wrapper module that pins Helm ${major#v} for scripts/build-helm.sh (built as a Go tool from the module
// proxy; go.sum holds the checksums). Change versions with \`bash scripts/build-helm.sh --pin $major.x.y\`.
module admission-kit/scripts/go-tools/helm-$major

go $go_directive

tool $module/cmd/helm

require $module $version
EOF
    rm -f "$mod_dir/go.sum"
    log "go mod tidy in $mod_dir"
    (cd "$mod_dir" && GOFLAGS=-mod=mod go mod tidy)
    log "wrote $mod_dir/go.mod and go.sum for $module $version"
}

# Builds (or finds) Helm $1 (v3 or v4) and prints the binary's path on stdout.
build_helm() {
    local major=$1
    local mod_dir="$tools_dir/helm-$major" module="helm.sh/helm/$major"
    [[ -f $mod_dir/go.mod && -f $mod_dir/go.sum ]] || die "missing $mod_dir/go.mod or go.sum"
    local version
    version=$(required_version "$mod_dir" "$module")
    [[ $version =~ ^${major}\.[0-9]+\.[0-9]+$ ]] || die "cannot read the $module version from $mod_dir/go.mod"

    local cache_root="${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools"
    local out="$cache_root/helm-$version"
    if [[ -x $out/helm ]]; then
        log "helm $version already in $out"
        echo "$out/helm"
        return 0
    fi

    mkdir -p "$cache_root"
    # One build per version at a time (parallel callers wait for the first one).
    local lock_fd
    exec {lock_fd}>"$cache_root/.helm-$version.lock"
    if ! flock -n "$lock_fd"; then
        log "another build of helm $version is running; waiting for it"
        flock "$lock_fd"
    fi
    if [[ -x $out/helm ]]; then
        exec {lock_fd}>&-
        log "helm $version already in $out"
        echo "$out/helm"
        return 0
    fi

    local pkg="$module/internal/version"
    local ldflags="-s -w -X $pkg.version=$version -X $pkg.metadata= -X $pkg.gitTreeState=clean"
    if [[ $major == v3 ]]; then
        # Helm 3's Makefile: Kubernetes major = client-go major + 1, minor = client-go minor.
        local client_go
        client_go=$(cd "$mod_dir" && go list -m -f '{{.Version}}' k8s.io/client-go)
        [[ $client_go =~ ^v0\.([0-9]+)\.[0-9]+ ]] || die "unexpected k8s.io/client-go version '$client_go'"
        local k8s_major=1 k8s_minor=${BASH_REMATCH[1]} p
        for p in "$module/pkg/lint/rules" "$module/pkg/chartutil"; do
            ldflags+=" -X $p.k8sVersionMajor=$k8s_major -X $p.k8sVersionMinor=$k8s_minor"
        done
    fi

    local stage start=$SECONDS
    stage=$(mktemp -d "$cache_root/.build-helm-$version.XXXXXX")
    log "building helm $version ($module/cmd/helm) into $out"
    (cd "$mod_dir" && go build -trimpath -ldflags="$ldflags" -o "$stage/helm" "$module/cmd/helm") ||
        {
            rm -rf "$stage"
            die "go build of helm $version failed"
        }
    local reported
    reported=$("$stage/helm" version --short 2>/dev/null || true)
    if [[ ${reported%%+*} != "$version" ]]; then
        rm -rf "$stage"
        die "the built helm reports version '$reported', expected $version"
    fi
    mkdir -p "$out"
    mv -f "$stage/helm" "$out/helm"
    rm -rf "$stage"
    exec {lock_fd}>&-
    log "built helm $version in $((SECONDS - start))s: $("$out/helm" version 2>/dev/null)"
    echo "$out/helm"
}

case "${1-all}" in
--pin)
    [[ $# -eq 2 ]] || die "usage: $0 --pin vX.Y.Z"
    pin "$2"
    ;;
v3 | v4)
    [[ $# -eq 1 ]] || die "usage: $0 [v3|v4|all]"
    build_helm "$1"
    ;;
all)
    [[ $# -le 1 ]] || die "usage: $0 [v3|v4|all]"
    build_helm v3
    build_helm v4
    ;;
*) die "usage: $0 [v3|v4|all] | --pin vX.Y.Z" ;;
esac
