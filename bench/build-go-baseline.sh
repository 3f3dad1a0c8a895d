#!/usr/bin/env bash
# Builds bench/go-baseline, the Go baseline of the benchmark (controller-runtime's webhook server
# doing sidecar-injector's injection; see bench/go-baseline/README.md), from the Go module proxy
# with the committed go.mod and go.sum.
#
# Usage:
#   bin=$(bash bench/build-go-baseline.sh | tail -1)
#       Builds into ${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools/go-baseline-<hash>/go-baseline
#       unless it is already there, and prints that path as the last line of stdout. <hash> covers
#       go.mod, go.sum and the server's *.go files, so a change to any of them builds anew.
#       Progress goes to stderr. Needs only Go (GOTOOLCHAIN=local) and the Go module proxy.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod_dir="$here/go-baseline"

log() { printf '[build-go-baseline] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
# readonly: a build from a fresh clone uses the committed go.mod/go.sum as they are.
export GOFLAGS="-mod=readonly -buildvcs=false"

command -v go >/dev/null || die "go is not on PATH"
[[ -f $mod_dir/go.mod && -f $mod_dir/go.sum ]] || die "missing $mod_dir/go.mod or go.sum"

# The server is the module's root package: its non-test .go files (cmd/reviewtool, the comparison
# helper, and the tests are not part of the binary).
mapfile -t sources < <(cd "$mod_dir" && find . -maxdepth 1 -name '*.go' ! -name '*_test.go' | LC_ALL=C sort)
((${#sources[@]} > 0)) || die "no .go files in $mod_dir"
hash=$(cd "$mod_dir" && cat go.mod go.sum "${sources[@]}" | sha256sum | cut -c1-16)

cache_root="${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools"
out="$cache_root/go-baseline-$hash"
binary="$out/go-baseline"

if [[ -x $binary ]]; then
    log "go-baseline already built: $binary"
    echo "$binary"
    exit 0
fi

mkdir -p "$cache_root"
# One build at a time per hash (parallel runs may call this together).
exec 9>"$cache_root/.go-baseline-$hash.lock"
if ! flock -n 9; then
    log "another build of go-baseline-$hash is running; waiting for it"
    flock 9
fi
if [[ -x $binary ]]; then
    log "go-baseline already built: $binary"
    echo "$binary"
    exit 0
fi

stage=$(mktemp -d "$cache_root/.build-go-baseline-$hash.XXXXXX")
trap 'rm -rf "$stage"' EXIT
start=$SECONDS
log "building go-baseline ($(go version | cut -d' ' -f3), $(awk '$1 == "sigs.k8s.io/controller-runtime" { print "controller-runtime " $2 }' "$mod_dir/go.mod")) into $out"
log "(a cold build downloads ~33 MB of modules and compiles for ~4 CPU-minutes: 2-6 minutes on 2 cores)"
(cd "$mod_dir" && go build -trimpath -ldflags="-s -w" -o "$stage/go-baseline" .)
mkdir -p "$out"
mv -f "$stage/go-baseline" "$binary"
log "built in $((SECONDS - start))s: $binary"
echo "$binary"
