#!/usr/bin/env bash
# Builds vegeta (github.com/tsenart/vegeta), the open-loop HTTP load generator the benchmark's
# fixed-rate figures are measured with, from the Go module proxy at the version pinned by the
# wrapper module bench/vegeta/ (go.mod with a `tool` directive, and its go.sum).
#
# Usage:
#   bin=$(bash bench/build-vegeta.sh | tail -1)
#       Builds into ${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools/vegeta-<version>/vegeta
#       unless it is already there, and prints that path as the last line of stdout. Progress goes
#       to stderr. Needs only Go (GOTOOLCHAIN=local) and the Go module proxy; about a minute cold.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod_dir="$here/vegeta"
module=github.com/tsenart/vegeta/v12

log() { printf '[build-vegeta] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
# readonly: a build from a fresh clone uses the committed go.mod/go.sum as they are.
export GOFLAGS="-mod=readonly -buildvcs=false"

command -v go >/dev/null || die "go is not on PATH"
[[ -f $mod_dir/go.mod && -f $mod_dir/go.sum ]] || die "missing $mod_dir/go.mod or go.sum"
version=$(awk -v m="$module" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$mod_dir/go.mod")
[[ -n $version ]] || die "bench/vegeta/go.mod requires no version of $module"

tools="${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools"
out="$tools/vegeta-$version"
binary="$out/vegeta"
if [[ -x $binary ]]; then
    echo "$binary"
    exit 0
fi

mkdir -p "$tools"
exec 9>"$tools/.vegeta-$version.lock"
flock 9
if [[ ! -x $binary ]]; then
    stage=$(mktemp -d "$tools/.vegeta-$version.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    start=$SECONDS
    log "building vegeta $version ($(go version | cut -d' ' -f3)) into $out"
    (cd "$mod_dir" && go build -trimpath -ldflags="-s -w -X main.Version=$version" -o "$stage/vegeta" "$module")
    mkdir -p "$out"
    mv -f "$stage/vegeta" "$binary"
    log "built in $((SECONDS - start)) s"
fi
echo "$binary"
