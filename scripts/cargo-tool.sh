#!/usr/bin/env bash
# Installs a cargo-installed tool from crates.io at a pinned version, once, into the project's cache,
# and prints the directory holding its executables. The test suite's tools (cargo-deny, cargo-fuzz,
# cargo-nextest, mdbook) all come this way: built from source with `cargo install --locked`, since
# only package registries are reachable.
#
# Usage: bash scripts/cargo-tool.sh CRATE VERSION [EXTRA cargo install ARGS...]
#   e.g. bash scripts/cargo-tool.sh mdbook 0.5.4 --no-default-features --features search
#
# The tool lands in ${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools/CRATE-VERSION/bin. It
# is built in a staging directory of its own and moved there whole, so an interrupted install
# leaves nothing half-made; runs that start together wait for one another (flock).
set -euo pipefail

crate=${1:?usage: cargo-tool.sh CRATE VERSION [cargo install args...]}
version=${2:?usage: cargo-tool.sh CRATE VERSION [cargo install args...]}
shift 2

tools="${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools"
root="$tools/$crate-$version"
done_marker="$root/.installed"

log() { printf '[cargo-tool] %s\n' "$*" >&2; }

# Installs made before the marker existed: a bin directory with an executable in it.
if [[ ! -f $done_marker ]] && compgen -G "$root/bin/*" >/dev/null && [[ -n $(find "$root/bin" -type f -perm -u+x) ]]; then
    touch "$done_marker"
fi
if [[ ! -f $done_marker ]]; then
    mkdir -p "$tools"
    exec 9>"$tools/.$crate-$version.lock"
    flock 9
    if [[ ! -f $done_marker ]]; then
        log "installing $crate $version from crates.io into $root (once; minutes on 2 cores)"
        started=$SECONDS
        stage=$(mktemp -d "$tools/.$crate-$version.XXXXXX")
        # Its own build directory, not the project's: nothing of it is worth keeping.
        if ! env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR cargo install "$crate" --version "$version" \
            --locked --root "$stage/root" --target-dir "$stage/build" "$@" >"$stage/install.log" 2>&1; then
            tail -n 30 "$stage/install.log" >&2
            rm -rf "$stage"
            log "error: cargo install $crate $version failed"
            exit 1
        fi
        rm -rf "$root"
        mv "$stage/root" "$root"
        rm -rf "$stage"
        touch "$done_marker"
        log "installed $crate $version in $((SECONDS - started)) s"
    fi
    exec 9>&-
fi
echo "$root/bin"
