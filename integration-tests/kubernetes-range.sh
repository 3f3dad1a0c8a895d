#!/usr/bin/env bash
# The API-server tests on every Kubernetes release the project claims: the newest pinned in
# control-plane/go.mod (what CI runs) and each older one pinned in control-plane/v<minor>/ (the
# oldest the docs claim). Each release's programs are built from the Go module proxy the first time
# (about 6-8 minutes on 2 cores) and cached per version.
#
# Usage:
#   bash integration-tests/kubernetes-range.sh          every pinned release
#   bash integration-tests/kubernetes-range.sh 1.30     only these minors
#
# Prints one line per release and test, and exits non-zero if any failed. The tests check that the
# API server they ran against is the release asked for (ADMISSION_KIT_KUBERNETES).
set -euo pipefail
cd "$(dirname "$0")/.."

tests=(scenarios expedia_command_line cluster_access chart_cluster)

minors=("$@")
if [ ${#minors[@]} -eq 0 ]; then
    newest=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { split($2, v, "."); print substr(v[1], 2) "." v[2]; exit }' \
        integration-tests/control-plane/go.mod)
    minors=("$newest")
    for dir in integration-tests/control-plane/v1.*/; do
        [ -f "$dir/go.mod" ] || continue
        dir=${dir%/}
        minors+=("${dir##*/v}")
    done
fi

results=()
status=0
for minor in "${minors[@]}"; do
    echo "== Kubernetes $minor"
    # Built (or found) first, so a build failure is reported as such.
    if ! dir=$(ADMISSION_KIT_KUBERNETES=$minor bash integration-tests/build-control-plane.sh | tail -1); then
        results+=("Kubernetes $minor: control plane FAILED to build")
        status=1
        continue
    fi
    version=$("$dir/kube-apiserver" --version 2>&1 | awk '{ print $2 }')
    for test in "${tests[@]}"; do
        log=$(mktemp)
        if ADMISSION_KIT_KUBERNETES=$minor cargo test -p integration-tests --locked --test "$test" 2>&1 | tee "$log"; then
            outcome="passed"
        else
            outcome="FAILED"
            status=1
        fi
        counts=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | tail -1 | sed 's/^test result: //')
        results+=("Kubernetes $minor ($version): $test $outcome ($counts)")
        rm -f "$log"
    done
done
echo "== results"
printf '%s\n' "${results[@]}"
exit "$status"
