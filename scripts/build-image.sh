#!/usr/bin/env bash
# Builds container images without Docker or a registry: podman (with runc) builds them from binaries
# made here, and each is written as an OCI archive that `podman load`, `docker load`,
# `skopeo copy oci-archive:…` and `ctr images import` all read.
#
# Usage: bash scripts/build-image.sh [injector|busybox|pause] [--out DIR]
#   injector (default)  the shipped sidecar-injector image, from a static build of the binary in
#                       the `dist` profile (Dockerfile, BINARY=prebuilt; IMAGE_PROFILE=release for a
#                       quicker build of the same code): localhost/sidecar-injector:<version>
#   busybox             the tests' pod image (Debian's busybox-static): localhost/ak-busybox:1
#   pause               the test node's pod sandbox image: localhost/ak-pause:1
# The image lands in podman's local storage under that name; the archive goes to
# DIR (default ${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/images). The last line of stdout
# is "<reference> <archive>"; progress goes to stderr.
#
# Needs podman and runc (Debian: apt-get install podman runc; busybox-static for the test images).
# Podman runs with scripts/podman/containers.conf (CONTAINERS_CONF) unless the caller set one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '[build-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# Whether an executable needs no dynamic loader (ldd's exit status differs between releases).
is_static() {
    local out
    out=$(LC_ALL=C ldd "$1" 2>&1 || true)
    grep -qE 'statically linked|not a dynamic executable' <<<"$out"
}

what=injector
out="${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/images"
while (($#)); do
    case $1 in
        injector | busybox | pause) what=$1 ;;
        --out) out=${2:?--out needs a directory}; shift ;;
        *) die "unknown argument '$1' (usage: build-image.sh [injector|busybox|pause] [--out DIR])" ;;
    esac
    shift
done

command -v podman >/dev/null || die "podman is not installed (Debian: apt-get install podman runc)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/scripts/podman/containers.conf}"
mkdir -p "$out"
# One build at a time per cache: test processes that start together (a test binary's tests, a test
# that reruns itself in a child) would otherwise tag, save and move the same archive at once.
exec 9>"$out/.build-image.lock"
flock 9
context=$(mktemp -d)
partial=""
trap 'rm -rf "$context"; [[ -z $partial ]] || rm -f "$partial"' EXIT

case $what in
    injector)
        version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
        [[ -n $version ]] || die "no workspace version in Cargo.toml"
        host=$(rustc -vV | sed -n 's/^host: //p')
        target_dir="${CARGO_TARGET_DIR:-$root/target}"
        # The shipped image is the `dist` profile; tests of behaviour build `release` (the same code,
        # without the minutes-long whole-program link): IMAGE_PROFILE=release.
        profile="${IMAGE_PROFILE:-dist}"
        log "cargo build --profile $profile -p sidecar-injector --target $host (static: crt-static)"
        # --target keeps RUSTFLAGS off build scripts and proc macros, which must stay dynamic.
        (cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target_dir" \
            cargo build --profile "$profile" --locked -p sidecar-injector --target "$host" >&2)
        binary="$target_dir/$host/$profile/sidecar-injector"
        # A dynamic binary would start on the host and fail in the empty image: refuse it here.
        is_static "$binary" || die "$binary is dynamically linked; the image has no libc"
        cp "$binary" "$context/sidecar-injector"
        reference="localhost/sidecar-injector:$version"
        revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
        log "podman build $reference (revision $revision)"
        podman build --quiet --runtime runc --network none --build-arg BINARY=prebuilt --build-arg VERSION="$version" \
            --build-arg REVISION="$revision" -f "$root/Dockerfile" -t "$reference" "$context" >&2
        archive="$out/sidecar-injector-$version.oci.tar"
        ;;
    busybox | pause)
        busybox=$(command -v busybox || true)
        [[ -n $busybox ]] || die "busybox is not installed (Debian: apt-get install busybox-static)"
        is_static "$busybox" || die "$busybox is dynamically linked; install busybox-static"
        cp "$busybox" "$context/busybox"
        reference="localhost/ak-$what:1"
        log "podman build $reference"
        podman build --quiet --runtime runc --network none -f "$root/integration-tests/images/$what.Containerfile" \
            -t "$reference" "$context" >&2
        archive="$out/ak-$what.oci.tar"
        ;;
esac

# Written next to its final name and moved, so a reader never sees half an archive.
partial=$(mktemp "$archive.XXXXXX.partial")
rm -f "$partial" # mktemp only reserved the name; podman save creates the file
podman save --quiet --format oci-archive -o "$partial" "$reference"
mv -f "$partial" "$archive"
partial=""
log "$reference: $(podman image inspect --format '{{.Size}}' "$reference") bytes; archive $archive"
echo "$reference $archive"
