#!/usr/bin/env bash
# The fault tests against the real `sidecar-injector serve` process: soak, certificate
# rotation, SIGTERM with a second replica taking over, stalled connections, hostile bodies and pods, broken
# catalog (integration-tests/faults/; each scenario is described in its README.md).
#
# Usage:
#   bash scripts/fault-tests.sh            full run (about 16 minutes; the soak alone is 10): enforces
#                                          correctness and timing, writes integration-tests/faults/results/faults.md
#   bash scripts/fault-tests.sh --short    CI variant (about 2 minutes after the build): enforces
#                                          correctness only, reports timing; writes target/fault-short/
#
# Prints one line per scenario, `fault <name>: PASS|FAIL — figures`, and exits non-zero if any
# failed. Needs util-linux (taskset, chrt, renice) as `bench run` does; servers run pinned to CPU 0
# under SCHED_RR, the harness on CPU 1 (pass BENCH_FAULT_ARGS="--nice 0 --no-realtime" to run
# without raised priorities, e.g. unprivileged).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=()
case "${1:-}" in
  --short) mode=(--short) ;;
  "") ;;
  *) echo "usage: bash scripts/fault-tests.sh [--short]" >&2; exit 2 ;;
esac

# The same packages as the benchmark smoke's and the integration tests' release builds: another set
# would unify dependency features differently and rebuild them.
echo "== building release binaries (sidecar-injector, bench, fault-tests)" >&2
cargo build --release --locked -p sidecar-injector -p bench -p fault-tests >&2

# The stalled-connections scenario holds about 1,100 descriptors in the harness and as many in the
# server: raise the soft limit when it is lower (the hard limit allowing).
need=4096
soft=$(ulimit -Sn)
if [ "$soft" != unlimited ] && [ "$soft" -lt "$need" ]; then
  hard=$(ulimit -Hn)
  if [ "$hard" = unlimited ] || [ "$hard" -ge "$need" ]; then
    ulimit -Sn "$need"
    echo "== raised the open-file limit from $soft to $need" >&2
  else
    echo "== WARNING: open-file limit $soft (hard $hard) is below $need; stalled-connections may fail" >&2
  fi
fi

target_dir="${CARGO_TARGET_DIR:-target}"
# shellcheck disable=SC2086 # BENCH_FAULT_ARGS is a list of flags
exec "$target_dir/release/fault-tests" all "${mode[@]}" ${BENCH_FAULT_ARGS:-}
