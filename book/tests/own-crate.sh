#!/usr/bin/env bash
# The "Your own crate" page, followed literally: a new crate outside the workspace, made with the
# page's own commands (book/src/own-crate/steps.sh, which the page includes) and its own source
# files (book/src/own-crate/*.rs, also included), built with warnings denied, and its tests run.
# A fresh dependency resolve, as a user's crate gets: newer crates than this workspace's lock file
# are exactly what this is for. The build directory lives in the cache root, so a warm run
# rebuilds only admission-kit and the new crate.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export ADMISSION_KIT=$root
export CARGO_TARGET_DIR="${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/own-crate-target"
# A check, not a debugging session: no debug info (it made this build directory 2.7 GB).
export CARGO_PROFILE_DEV_DEBUG=false CARGO_PROFILE_TEST_DEBUG=false
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
steps="$root/book/src/own-crate/steps.sh"
# The commands up to the point where the page says to write the sources, then the sources, then
# the check: all from the page's own files.
sed -n '/ANCHOR: new/,/ANCHOR_END: dependencies/p' "$steps" > setup.sh
sed -n '/ANCHOR: check/,/ANCHOR_END: check/p' "$steps" > check.sh
bash -euo pipefail setup.sh
cp "$root/book/src/own-crate/lib.rs" my-webhook/src/lib.rs
cp "$root/book/src/own-crate/main.rs" my-webhook/src/main.rs
cd my-webhook
bash -euo pipefail ../check.sh
echo "own crate: built with -D warnings and tested outside the workspace"
