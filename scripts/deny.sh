#!/usr/bin/env bash
# `cargo deny check` (advisories, bans, licenses, sources; the policy is deny.toml) over the
# workspace and over the separate fuzz workspace, as CI runs it. Needs only crates.io.
#
# Usage: bash scripts/deny.sh [CHECK...]     (default: all four checks)
#
# cargo-deny is installed from crates.io at the version pinned below (scripts/cargo-tool.sh), into
# ${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}/tools/cargo-deny-<version>/, once: about 5
# minutes on 2 cores, then reused.
#
# The advisory database: cargo-deny fetches the RustSec database from its git repository on GitHub,
# which CI cannot reach, and the database is published on no package registry. So the repository
# carries a dated snapshot of it, deny/advisory-db/ (only crates/, what cargo-deny reads, with the
# upstream commit and its date in deny/advisory-db/SNAPSHOT), refreshed by
# scripts/refresh-advisory-db.sh on a machine that reaches GitHub. This script lays the snapshot
# out as cargo-deny's own checkout (a git repository whose FETCH_HEAD carries the snapshot's date,
# which is what cargo-deny measures staleness from) and runs cargo-deny with --offline, so the
# advisories check really runs, against the snapshot. A snapshot older than 90 days gets a loud
# warning here, not a failure (deny.toml says why).
#
# ADVISORY_DB=fetch uses the live database instead (cargo-deny fetches it; needs GitHub).
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.20.2

log() { printf '[deny] %s\n' "$*" >&2; }

cache="${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}"
deny="$(bash scripts/cargo-tool.sh cargo-deny "$version")/cargo-deny"

checks=("$@")
[ ${#checks[@]} -gt 0 ] || checks=(all)

# cargo-deny reads the crate graph with `cargo metadata`, which needs every crate of every platform
# downloaded; fetch them first (crates.io), so that cargo-deny itself can run --offline.
manifests=(Cargo.toml fuzz/Cargo.toml)
for manifest in "${manifests[@]}"; do
  cargo fetch --locked --quiet --manifest-path "$manifest"
done

offline=(--offline)
if [ "${ADVISORY_DB:-snapshot}" = fetch ]; then
  offline=()
  export ADMISSION_KIT_ADVISORY_DBS="$cache/advisory-dbs-live"
  log "advisory database: fetched live from GitHub"
else
  snapshot=deny/advisory-db
  commit=$(sed -n 's/^commit=//p' "$snapshot/SNAPSHOT")
  date=$(sed -n 's/^date=//p' "$snapshot/SNAPSHOT")
  [ -n "$commit" ] && [ -n "$date" ] || { log "error: $snapshot/SNAPSHOT names no commit or date"; exit 1; }
  export ADMISSION_KIT_ADVISORY_DBS="$cache/advisory-dbs"
  # The directory cargo-deny uses for its default database URL (the URL's last segment and a hash
  # of it). Should a cargo-deny release name it differently, it finds no database and fails.
  db="$ADMISSION_KIT_ADVISORY_DBS/advisory-db-3157b0e258782691"
  stamp=$(cat "$snapshot/SNAPSHOT" && find "$snapshot/crates" -type f | LC_ALL=C sort | xargs cat | sha256sum)
  if [ "$(cat "$db/.snapshot-stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$db"
    mkdir -p "$db"
    cp -R "$snapshot/crates" "$db/crates"
    git -C "$db" init --quiet
    git -C "$db" add crates
    GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" git -C "$db" \
      -c user.name="advisory-db snapshot" -c user.email="snapshot@invalid" -c commit.gpgsign=false \
      commit --quiet -m "RustSec advisory-db $commit"
    printf '%s\t\tbranch %s of https://github.com/rustsec/advisory-db\n' "$commit" "'main'" >"$db/.git/FETCH_HEAD"
    touch -d "$date" "$db/.git/FETCH_HEAD"
    printf '%s' "$stamp" >"$db/.snapshot-stamp"
  fi
  age_days=$(( ($(date +%s) - $(date -d "$date" +%s)) / 86400 ))
  log "advisory database: snapshot of $date (upstream commit ${commit:0:12}, $age_days days old)"
  if [ "$age_days" -gt 90 ]; then
    log "WARNING: the advisory snapshot is $age_days days old: advisories published since $date are not checked; refresh it with scripts/refresh-advisory-db.sh where GitHub is reachable"
  fi
fi

started=$SECONDS
status=0
for manifest in "${manifests[@]}"; do
  # deny.toml serves both workspaces: its duplicate skips are written for the main one (the fuzz
  # workspace has a subset of its crates) and its libfuzzer-sys licence exception for the fuzz one,
  # so each run leaves out the warning about the other's entries.
  case $manifest in
    fuzz/*) quiet=(-A unmatched-skip -A unnecessary-skip) ;;
    *) quiet=(-A license-exception-not-encountered) ;;
  esac
  log "cargo deny check ${checks[*]} ($manifest)"
  "$deny" "${offline[@]}" --locked --color never --manifest-path "$manifest" --all-features --config deny.toml \
    check "${quiet[@]}" "${checks[@]}" || status=$?
done
log "cargo-deny ran in $((SECONDS - started)) s"
exit "$status"
