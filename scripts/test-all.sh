#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script) and as a developer runs it before
# pushing. Installs what it needs that a fresh machine may lack; needs only the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
# A fresh clone builds everything once: incremental compilation would only add gigabytes of
# session data to the build directory (a developer may set CARGO_INCREMENTAL=1 to keep it).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# The debug build (clippy, the tests) goes to a build directory in the cache root, as the release and
# fuzz builds do: a fresh clone then rebuilds only this project's crates, not every dependency
# (about 6 of a warm run's minutes on 2 cores). Cargo locks the directory, so two runs at once wait
# for each other instead of clobbering it. Set CARGO_TARGET_DIR to use another one (`target/`).
cache_root="${ADMISSION_KIT_CACHE:-$HOME/.cache/admission-kit}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache_root/debug-target}"
# The build directories in the cache root are shared by every checkout that runs this script, and
# cargo decides what to rebuild from file times: a checkout whose files are older than the last
# build made from another checkout would reuse that build, with the other checkout's paths compiled
# into its tests. When the checkout changes, its Rust sources and manifests are touched, so that its
# own crates are rebuilt, as a fresh clone's are.
mkdir -p "$cache_root"
if [ "$(cat "$cache_root/last-checkout" 2>/dev/null)" != "$PWD" ] && git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z -- '*.rs' '*.toml' | xargs -0 touch --no-create
  echo "$PWD" >"$cache_root/last-checkout"
fi

# The TLS tests use the openssl CLI as an independent TLS client (TLS 1.1 must be refused); the
# control-plane harness uses curl for health checks. The container tests build and run images with
# podman + runc (busybox-static for the test images); the node tests run containerd, runc and the
# CNI plugins, with iptables and conntrack for kube-proxy and ip (iproute2) for the node's network
# namespace. Debian packages, installed when missing: package name, then a program it provides.
missing=()
for pair in openssl:openssl curl:curl podman:podman runc:runc busybox-static:busybox containerd:containerd \
  containernetworking-plugins:/usr/lib/cni/bridge iptables:iptables conntrack:conntrack iproute2:ip; do
  package=${pair%%:*} program=${pair#*:}
  if [[ $program == /* ]]; then [ -x "$program" ] || missing+=("$package"); continue; fi
  command -v "$program" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The integration tests build etcd and kube-apiserver from the Go module proxy when not cached.
command -v go >/dev/null 2>&1 || echo "WARNING: go is not installed; the integration tests can only use cached or TEST_ASSET_* binaries"

echo "== helm 3 and 4 (built from the Go module proxy when not cached; the chart tests use both)"
bash scripts/build-helm.sh all >/dev/null
echo "== rustfmt"
cargo fmt --all --check
echo "== clippy (pedantic, warnings are errors)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
bash scripts/deny.sh # cargo deny check (advisories from the committed snapshot, licences, bans, sources), workspace and fuzz/
# The fuzz targets build (minutes of CPU) while the tests run, most of which wait on processes
# they started (API servers, nodes, containers): at the lowest priority, in a session and process
# group of its own that is stopped if this script ends early. A new session is a new scheduling
# autogroup, which the kernel gives an equal share of the CPU whatever its processes' niceness: the
# autogroup's own niceness is lowered too. The short fuzz run waits for the build below.
log=$(mktemp)
fuzz_build_log=$(mktemp)
FUZZ_TARGET_DIR="$cache_root/fuzz-target" setsid -w bash -c \
  'echo 19 >/proc/self/autogroup 2>/dev/null || true; exec nice -n 19 bash scripts/fuzz.sh --build-only' \
  >"$fuzz_build_log" 2>&1 &
fuzz_build=$!
# oha, the load generator of the benchmark's max-throughput search, builds from crates.io (once;
# about 10 minutes of CPU on 2 cores) beside the tests the same way; the benchmark smoke waits for
# it. The version is the one bench/src/oha.rs drives.
oha_version=$(sed -n 's/^pub const VERSION: &str = "\(.*\)";$/\1/p' bench/src/oha.rs)
[ -n "$oha_version" ] || { echo "no oha version in bench/src/oha.rs (pub const VERSION)"; exit 1; }
oha_build_log=$(mktemp)
setsid -w bash -c 'echo 19 >/proc/self/autogroup 2>/dev/null || true; exec nice -n 19 bash scripts/cargo-tool.sh oha "$1"' \
  oha-build "$oha_version" >"$oha_build_log" 2>&1 &
oha_build=$!
trap 'kill -- "-$fuzz_build" "-$oha_build" 2>/dev/null || true; rm -f "$log" "$fuzz_build_log" "$oha_build_log"' EXIT
echo "== tests (unit, property tests at >= 1000 cases each, TLS round trips, SIGTERM, CLI, examples, doctests)"
# cargo-nextest runs every test in a process of its own, two at a time across all the test binaries
# (.config/nextest.toml), so the integration tests that wait on the processes they started overlap
# instead of running one binary after another. It does not run doctests: cargo test --doc does.
nextest_bin=$(bash scripts/cargo-tool.sh cargo-nextest 0.9.151)
set +e
# integration-tests starts a real etcd + kube-apiserver + kube-controller-manager; their binaries
# come from TEST_ASSET_*, $KUBEBUILDER_ASSETS or the cache, else integration-tests/build-control-plane.sh
# builds them from the Go module proxy (about 6 minutes cold on 2 cores, instant when cached).
PATH="$nextest_bin:$PATH" cargo nextest run --workspace --all-features --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
cargo test --doc --workspace --all-features --locked 2>&1 | tee -a "$log"
doc_status=${PIPESTATUS[0]}
set -e
# One closing line over nextest's summary and every doctest binary's result.
# (pipefail: a grep that matches nothing must not end the script.)
summary_line=$(grep -E '^ +Summary \[' "$log" | tail -n 1 || true)
count() { { grep -Eo "[0-9]+ $1" <<<"$summary_line" || true; } | awk '{s += $1} END {print s + 0}'; }
nextest_passed=$(count passed)
nextest_failed=$(($(count failed) + $(count 'timed out')))
doc_passed=$({ grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" || true; } | awk '{s += $4} END {print s + 0}')
doc_failed=$({ grep -E '^test result: ' "$log" || true; } | { grep -Eo '[0-9]+ failed;' || true; } | awk '{s += $1} END {print s + 0}')
summary="summary: $((nextest_passed + doc_passed)) passed, $((nextest_failed + doc_failed)) failed"
if [ "$status" -ne 0 ] || [ "$doc_status" -ne 0 ]; then
  echo "$summary"
  [ "$status" -ne 0 ] && exit "$status"
  exit "$doc_status"
fi
if [ -z "$summary_line" ]; then echo "$summary (nextest printed no summary)"; exit 1; fi

# The book: mdBook build, includes/anchors/links, and every page in headless Chromium.
echo "== book"
bash scripts/test-book.sh

# The fault tests' short variant against the real release binary (soak, certificate rotation,
# SIGTERM with a second replica taking over, stalled connections, hostile bodies and pods, broken catalog):
# correctness enforced, timing reported. Release builds go to a build directory in the cache root,
# so that a warm run rebuilds only this project's crates. Cluster access lost is the cluster_access
# integration test above.
echo "== fault tests (short)"
release_target="$cache_root/release-target"
CARGO_TARGET_DIR="$release_target" bash scripts/fault-tests.sh --short

# The benchmark harness end to end, once and briefly: the correctness gate (sidecar-injector's and
# the Go baseline's patches give the same pods, for every corpus size), then one short run of every
# figure. No timing is checked here; the figures go to target/bench-quick/.
echo "== benchmark smoke (bench run --quick)"
if ! wait "$oha_build"; then
  cat "$oha_build_log"
  echo "bench: oha $oha_version, the search's load generator, did not build (started before the tests)"
  exit 1
fi
grep '^\[cargo-tool\] installed' "$oha_build_log" | sed 's/$/ (beside the tests)/' || true
# The release profile's binary (the fault tests' build): a smoke checks the harness and the gate, not
# speed, which is measured on the `dist` build.
CARGO_TARGET_DIR="$release_target" "$release_target/release/bench" run --quick \
  --ours "$release_target/release/sidecar-injector" >/dev/null
echo "bench smoke: gate passed, every figure measured once (target/bench-quick/latest.md)"

# A short fuzz run of every target (review decoding, the whole pipeline, catalog parsing), from the
# committed seeds and past findings. The build directory and the corpus libFuzzer grows live in the
# cache root, so a warm run rebuilds only this project's crates; the first run builds everything
# (about 15 minutes on 2 cores).
echo "== fuzz (short run)"
if ! wait "$fuzz_build"; then
  cat "$fuzz_build_log"
  echo "fuzz: the build (started before the tests) FAILED"
  exit 1
fi
grep '^\[fuzz\] built' "$fuzz_build_log" | sed 's/^\[fuzz\] built/[fuzz] built beside the tests/'
FUZZ_TARGET_DIR="$cache_root/fuzz-target" bash scripts/fuzz.sh "${FUZZ_SECONDS:-15}"

# The same scenarios on a kind cluster with the chart's own pods (Docker, or podman as kind's
# provider). kind needs its node image from a container registry, which this suite never contacts
# (--no-pull): where the image is not already there, the script says so and exits 2, reported here
# as not run (never as passed). The chart's pods run on a real node in the node_cluster test above.
echo "== kind end-to-end (needs kind's node image)"
set +e
bash integration-tests/cluster/kind-e2e.sh --no-pull
kind_status=$?
set -e
case $kind_status in
  0) kind="kind e2e: passed" ;;
  2) kind="kind e2e: NOT RUN (no kind node image here, and no registry to pull it from; the scenarios ran against the local control plane and the chart on a real node)" ;;
  *) echo "kind e2e: FAILED"; exit "$kind_status" ;;
esac
echo "$kind"
echo "$summary"
