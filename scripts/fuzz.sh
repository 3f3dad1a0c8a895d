#!/usr/bin/env bash
# Fuzzes admission-kit and sidecar-injector with cargo-fuzz (libFuzzer): builds every target of
# fuzz/fuzz_targets/ and runs each for SECONDS_PER_TARGET seconds, starting from the committed
# seeds (fuzz/corpus/<target>/) and the inputs of past findings (fuzz/artifacts-found/<target>/).
# A panic, an abort, a timeout (> 10 s for one input) or running out of memory (> 2 GiB) is a
# finding: the script goes on with the other targets, then exits 1. One summary line per target.
#
# Usage:
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 20 s, every target)
#   bash scripts/fuzz.sh --build-only [TARGET...]             build, run nothing (the test suite
#                                                             builds early, at low priority, beside
#                                                             the tests that mostly wait)
#
# Environment:
#   FUZZ_SANITIZER=none|address   default none: the code under test is safe Rust (unsafe_code is
#                                 forbidden in both crates); address finds memory errors in
#                                 dependencies' unsafe code at about a third of the speed.
#   FUZZ_TOOLCHAIN=nightly|stable default: nightly when rustup has it, else stable with
#                                 RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags to rustc).
#   FUZZ_CORPUS_DIR               where libFuzzer keeps the corpus it grows (default
#                                 <target dir>/corpus/<target>; the committed seeds are never written).
#   FUZZ_JOBS=N                   run N targets at a time (default 1; the machine has 2 cores).
#   FUZZ_TARGET_DIR               build directory (default fuzz/target); CI keeps one in the cache
#                                 root so that a warm run rebuilds only the project's own crates.
#   ADMISSION_KIT_CACHE           cache root (default ~/.cache/admission-kit); cargo-fuzz is
#                                 installed from crates.io into its tools/cargo-fuzz-<version>/.
#
# A finding is written to fuzz/artifacts/<target>/; reproduce it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# and see what the input means with
#   (cd fuzz && cargo run --example show -- <target> artifacts/<target>/<file>)
# Keep it as a regression seed in fuzz/artifacts-found/<target>/ (see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

CARGO_FUZZ_VERSION=0.13.2

log() { printf '[fuzz] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 2
}

build_only=0
if [[ ${1:-} == --build-only ]]; then
    build_only=1
    shift
    seconds=1
else
    seconds=${1:-20}
    [[ $seconds =~ ^[1-9][0-9]*$ ]] || die "SECONDS_PER_TARGET must be a positive whole number, got '$seconds'"
    shift $(($# > 0 ? 1 : 0))
fi
all_targets=()
for f in fuzz/fuzz_targets/*.rs; do all_targets+=("$(basename "$f" .rs)"); done
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
    [[ -f fuzz/fuzz_targets/$t.rs ]] || die "no fuzz target '$t'; targets: ${all_targets[*]}"
done
sanitizer=${FUZZ_SANITIZER:-none}
[[ $sanitizer == none || $sanitizer == address ]] || die "FUZZ_SANITIZER must be none or address, got '$sanitizer'"
jobs=${FUZZ_JOBS:-1}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "FUZZ_JOBS must be a positive whole number, got '$jobs'"

# cargo-fuzz, from crates.io at a pinned version, cached across runs (scripts/cargo-tool.sh).
fuzz_bin=$(bash "$repo/scripts/cargo-tool.sh" cargo-fuzz "$CARGO_FUZZ_VERSION") || die "cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed"
export PATH="$fuzz_bin:$PATH"

# The toolchain: cargo-fuzz hands rustc -Z flags (sanitizer coverage, the sanitizer), which a
# nightly accepts and a stable accepts only with RUSTC_BOOTSTRAP=1. Nothing is installed: a
# nightly rustup does not already have cannot be fetched here (only package registries are reachable).
choice=${FUZZ_TOOLCHAIN:-}
if [[ -z $choice ]]; then
    if rustup toolchain list 2>/dev/null | grep -q '^nightly-' && cargo +nightly --version >/dev/null 2>&1; then
        choice=nightly
    else
        choice=stable
    fi
fi
case $choice in
nightly)
    toolchain=(+nightly)
    log "toolchain: $(cargo +nightly --version) (nightly)"
    ;;
stable)
    toolchain=()
    export RUSTC_BOOTSTRAP=1
    log "toolchain: $(cargo --version) (no nightly: the default toolchain with RUSTC_BOOTSTRAP=1)"
    ;;
*) die "FUZZ_TOOLCHAIN must be nightly or stable, got '$choice'" ;;
esac
fuzz() { cargo "${toolchain[@]}" fuzz "$@"; }

# fuzz/ is a workspace of its own; its target dir is fuzz/target (or FUZZ_TARGET_DIR) whatever
# CARGO_TARGET_DIR says, so the shared target/ is neither clobbered nor locked.
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR
target_dir=${FUZZ_TARGET_DIR:-$repo/fuzz/target}
mkdir -p "$target_dir"
target_dir=$(cd "$target_dir" && pwd)
logs="$target_dir/fuzz-logs"
corpus_root=${FUZZ_CORPUS_DIR:-$target_dir/corpus}
mkdir -p "$logs"
build_opts=(--fuzz-dir "$repo/fuzz" --target-dir "$target_dir" --sanitizer "$sanitizer")

log "building ${targets[*]} (sanitizer: $sanitizer; the first build takes about 10 CPU-minutes)"
build_start=$SECONDS
build_ok=1
if [[ ${#targets[@]} -eq ${#all_targets[@]} ]]; then
    fuzz build "${build_opts[@]}" >"$logs/build.log" 2>&1 || build_ok=0
else
    : >"$logs/build.log"
    for t in "${targets[@]}"; do fuzz build "${build_opts[@]}" "$t" >>"$logs/build.log" 2>&1 || build_ok=0; done
fi
if [[ $build_ok -ne 1 ]]; then
    tail -n 40 "$logs/build.log" >&2
    die "cargo fuzz build failed (log: $logs/build.log)"
fi
log "built in $((SECONDS - build_start)) s"
[[ $build_only -eq 0 ]] || exit 0

# Runs one target; writes its summary line to $logs/<target>.summary and returns non-zero on a finding.
run_target() {
    local t=$1
    local work="$corpus_root/$t" artifacts="$repo/fuzz/artifacts/$t" out="$logs/$t.log"
    mkdir -p "$work" "$artifacts"
    local dirs=("$work" "$repo/fuzz/corpus/$t")
    [[ -d $repo/fuzz/artifacts-found/$t ]] && dirs+=("$repo/fuzz/artifacts-found/$t")
    local args=(
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192
        -print_final_stats=1 -artifact_prefix="$artifacts/"
    )
    [[ -f $repo/fuzz/dicts/$t.dict ]] && args+=(-dict="$repo/fuzz/dicts/$t.dict")
    local marker
    marker=$(mktemp)
    local start=$SECONDS status=0
    fuzz run "${build_opts[@]}" "$t" "${dirs[@]}" -- "${args[@]}" >"$out" 2>&1 || status=$?
    local took=$((SECONDS - start))
    local execs cov corpus found=()
    execs=$(awk '/^stat::number_of_executed_units:/ { print $2 }' "$out" | tail -n 1)
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$out" | tail -n 1 || true)
    corpus=$(find "$work" -type f | wc -l)
    while IFS= read -r f; do found+=("$f"); done < <(find "$artifacts" -type f -newer "$marker" | sort)
    rm -f "$marker"
    local line="$t: ${execs:-?} executions in ${took} s"
    [[ -n $execs && $took -gt 0 ]] && line+=" ($((execs / took))/s)"
    line+=", ${cov:-cov: ?}, corpus $corpus, ${#found[@]} crashes"
    if [[ $status -ne 0 || ${#found[@]} -gt 0 || -z $execs ]]; then
        local what
        what=$(grep -m 1 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|out-of-memory|timeout after" "$out" || true)
        line+=" -- FAILED (exit $status): ${what:-see $out}"
        for f in "${found[@]}"; do line+=$'\n'"    input: ${f#"$repo"/}"; done
        echo "$line" >"$logs/$t.summary"
        {
            echo "---- $t: the end of $out"
            grep -v -E '^#[0-9]+ +(NEW|REDUCE|pulse)|^"|recommended dictionary' "$out" | tail -n 60
        } >&2
        return 1
    fi
    echo "$line" >"$logs/$t.summary"
}

log "running ${targets[*]} for ${seconds} s each, $jobs at a time"
failed=0
pids=()
for t in "${targets[@]}"; do
    rm -f "$logs/$t.summary"
    run_target "$t" &
    pids+=($!)
    if [[ ${#pids[@]} -ge $jobs ]]; then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
    fi
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done

for t in "${targets[@]}"; do
    if [[ -f $logs/$t.summary ]]; then cat "$logs/$t.summary"; else echo "$t: no result (see $logs/$t.log)"; failed=1; fi
done
if [[ $failed -ne 0 ]]; then
    echo "fuzz: FAILED (logs in ${logs#"$repo"/}; inputs in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crashes"
