#!/usr/bin/env bash
# Refreshes deny/advisory-db/, the committed snapshot of the RustSec advisory database that
# scripts/deny.sh gives `cargo deny check advisories`. CI reaches only the package registries and the
# database is published nowhere but its git repository, so CI cannot fetch it: the snapshot is
# refreshed here, on a machine that reaches GitHub, and committed. cargo-deny refuses a snapshot
# older than deny.toml's `maximum-db-staleness`, so a forgotten refresh fails CI instead of going
# quietly stale.
#
# Usage:
#   bash scripts/refresh-advisory-db.sh          clones https://github.com/rustsec/advisory-db (shallow)
#   bash scripts/refresh-advisory-db.sh REPO     copies from an existing clone (bare or not) of it
# then review and commit deny/advisory-db/.
#
# Only what cargo-deny reads is kept: crates/ (one Markdown file per advisory, TOML front matter),
# plus the database's licence (CC0-1.0) and SNAPSHOT (the upstream commit and its date).
set -euo pipefail
cd "$(dirname "$0")/.."

url=https://github.com/rustsec/advisory-db
dest=deny/advisory-db
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ $# -ge 1 ]; then
  repo=$1
else
  git clone --quiet --depth 1 "$url" "$work/clone"
  repo=$work/clone
fi
commit=$(git -C "$repo" rev-parse HEAD)
date=$(git -C "$repo" show -s --format=%cI HEAD)

mkdir -p "$work/new"
git -C "$repo" archive --format=tar HEAD crates LICENSE.txt | tar -x -C "$work/new"
[ -n "$(find "$work/new/crates" -name 'RUSTSEC-*.md' -print -quit)" ] || { echo "no advisories under crates/ in $repo" >&2; exit 1; }
cat >"$work/new/SNAPSHOT" <<SNAP
# The RustSec advisory database ($url) as scripts/deny.sh gives it to cargo-deny.
# Written by scripts/refresh-advisory-db.sh; cargo-deny measures the database's age from this date.
commit=$commit
date=$date
SNAP
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$work/new" "$dest"
echo "$dest: $(find "$dest/crates" -name '*.md' | wc -l) advisories, upstream commit $commit of $date"
