#!/usr/bin/env bash
# Proves that go-baseline and sidecar-injector inject alike: for each pod, the pod that
# `cargo run -p sidecar-injector -- inject` prints must equal the pod that go-baseline's JSON patch,
# served over real TLS on 127.0.0.1 and fetched with curl, makes of it (or both must deny it with
# the same message). Also checks sidecar-injector's result against the committed
# testdata/<case>.want that the Go tests use.
#
# Usage (from anywhere; needs go, cargo, openssl, curl):
#   bash bench/go-baseline/compare.sh                  every testdata/*.pod.json
#   bash bench/go-baseline/compare.sh POD.json|yaml…   these pods (no .want check)
#   bash bench/go-baseline/compare.sh --update         rewrite testdata/*.want from sidecar-injector
# Exits non-zero on any difference.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
namespace=bench

log() { printf '[compare] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

update=false
if [[ ${1-} == --update ]]; then
    update=true
    shift
fi
if (($# > 0)); then
    pods=("$@")
    check_want=false
else
    pods=("$here"/testdata/*.pod.json)
    check_want=true
fi

for tool in go cargo openssl curl; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"

work=$(mktemp -d)
server_pid=
cleanup() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

baseline=$(bash "$repo/bench/build-go-baseline.sh" | tail -1)
(cd "$here" && go build -trimpath -o "$work/reviewtool" ./cmd/reviewtool)
log "building sidecar-injector"
cargo build -q --manifest-path "$repo/Cargo.toml" -p sidecar-injector

# A throwaway certificate for 127.0.0.1; curl trusts exactly it.
mkdir -p "$work/certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$work/certs/tls.key" -out "$work/certs/tls.crt" 2>/dev/null

port=$("$work/reviewtool" free-port)
"$baseline" --host 127.0.0.1 --port "$port" --cert-dir "$work/certs" 2>"$work/server.log" &
server_pid=$!
url="https://127.0.0.1:$port/mutate"
for _ in $(seq 100); do
    # An empty POST gets an HTTP answer once the server listens.
    if curl -s -o /dev/null --cacert "$work/certs/tls.crt" -X POST "$url"; then
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; die "go-baseline exited"; }
    sleep 0.1
done
log "go-baseline $baseline listening on $url"

failures=0
for pod in "${pods[@]}"; do
    name=$(basename "$pod")
    name=${name%.pod.json}
    rust="$work/$name.rust" go="$work/$name.go"

    # sidecar-injector: the injected manifest, or the denial from its error message.
    if cargo run -q --manifest-path "$repo/Cargo.toml" -p sidecar-injector -- \
        inject -f "$pod" --namespace "$namespace" >"$work/$name.yaml" 2>"$work/$name.err"; then
        "$work/reviewtool" canon "$work/$name.yaml" >"$rust"
    else
        grep -q '^sidecar-injector: Pod ' "$work/$name.err" || { cat "$work/$name.err" >&2; die "sidecar-injector inject failed on $pod"; }
        printf 'denied: %s\n' "$(sed 's/^sidecar-injector: Pod [^ ]*: //' "$work/$name.err")" >"$rust"
    fi

    # go-baseline: the review over TLS, its patch applied to the same pod.
    "$work/reviewtool" review "$pod" "$namespace" >"$work/$name.review.json"
    curl -sS --fail --cacert "$work/certs/tls.crt" -H 'Content-Type: application/json' \
        --data-binary @"$work/$name.review.json" "$url" >"$work/$name.answer.json"
    "$work/reviewtool" apply "$pod" "$work/$name.answer.json" >"$go"

    if grep -q '^denied: ' "$rust"; then
        outcome=denied
    elif "$work/reviewtool" canon "$pod" | cmp -s - "$rust"; then
        outcome=unchanged
    else
        outcome=injected
    fi
    if diff -u --label "sidecar-injector/$name" --label "go-baseline/$name" "$rust" "$go" >"$work/$name.diff"; then
        log "same:      $name ($outcome)"
    else
        log "DIFFERENT: $name"
        cat "$work/$name.diff" >&2
        failures=$((failures + 1))
    fi

    if $check_want; then
        want="$here/testdata/$name.want"
        if $update; then
            cp "$rust" "$want"
        elif ! diff -u --label "$want" --label "sidecar-injector now" "$want" "$rust" >&2; then
            log "STALE:     testdata/$name.want (re-run with --update if sidecar-injector changed on purpose)"
            failures=$((failures + 1))
        fi
    fi
done

# SIGTERM: controller-runtime shuts down gracefully and the process exits 0.
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=
if ((status != 0)); then
    cat "$work/server.log" >&2
    log "go-baseline exited with $status on SIGTERM"
    failures=$((failures + 1))
fi

if ((failures > 0)); then
    log "$failures difference(s) in ${#pods[@]} pod(s)"
    exit 1
fi
log "${#pods[@]} pod(s): go-baseline and sidecar-injector give the same result"
