#!/usr/bin/env bash
# Deploys sidecar-injector with plain kubectl, the way ExpediaGroup's deploy.sh does, without the
# deprecated CertificateSigningRequest flow: makes a private CA and a serving certificate for the
# Service's DNS names with openssl, stores them in the Secret `sidecar-injector-tls`, applies the
# manifests of this directory, and registers the webhook with the CA as its caBundle.
#
# The MutatingWebhookConfiguration is rendered by the injector itself (`sidecar-injector
# webhook-config`) from config.yaml, so its selectors and matchConditions are exactly what the
# server re-checks in-process.
#
# Usage: deploy/deploy.sh [options]
#   -n, --namespace NS   namespace to deploy into (default: sidecar-injector)
#   --image IMAGE        the injector image (default: the one in deployment.yaml)
#   --dry-run            print the manifests (Secret and caBundle left out) and change nothing;
#                        needs no cluster
#   --rotate             make a new CA and serving certificate even if the current ones are valid
#   --wait               wait for the Deployment's rollout before registering the webhook
#   --injector PATH      the sidecar-injector binary used to check the configuration and render
#                        the webhook configuration (default: $SIDECAR_INJECTOR, else
#                        `sidecar-injector` on PATH, else `cargo run -p sidecar-injector` in this
#                        repository)
#   -h, --help
# Environment: KUBECTL (default: kubectl), KUBECONFIG as kubectl reads it.
#
# Re-running is safe and changes nothing when nothing changed: a certificate that verifies against
# its CA, covers the Service's names, matches its key and is valid for 30 more days is kept. A new
# certificate (--rotate, expiry, another namespace) is made with a new CA; the caBundle then holds
# the new CA and the previous one, so the API server trusts the replicas until kubelet has given
# them the new Secret (about a minute; the injector reloads it within server.certReloadInterval).
# The next run drops the previous CA from the caBundle.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

name=sidecar-injector
secret=sidecar-injector-tls
field_manager=sidecar-injector-deploy
renew_days=30
ca_days=3650
cert_days=365

log() { printf '[deploy] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
usage() {
    sed -n '/^# Usage:/,/^# Environment:/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

namespace=sidecar-injector
image=""
dry_run=false
rotate=false
wait_rollout=false
injector="${SIDECAR_INJECTOR:-}"
kubectl="${KUBECTL:-kubectl}"

while (($# > 0)); do
    case $1 in
    -n | --namespace)
        (($# >= 2)) || die "$1 needs a value"
        namespace=$2
        shift 2
        ;;
    --namespace=*) namespace=${1#*=} && shift ;;
    --image)
        (($# >= 2)) || die "$1 needs a value"
        image=$2
        shift 2
        ;;
    --image=*) image=${1#*=} && shift ;;
    --injector)
        (($# >= 2)) || die "$1 needs a value"
        injector=$2
        shift 2
        ;;
    --injector=*) injector=${1#*=} && shift ;;
    --dry-run) dry_run=true && shift ;;
    --rotate) rotate=true && shift ;;
    --wait) wait_rollout=true && shift ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        log "unknown argument '$1'"
        usage >&2
        exit 2
        ;;
    esac
done

[[ $namespace =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "--namespace '$namespace' is not a DNS-1123 label"
[[ -z $image || $image =~ ^[A-Za-z0-9][A-Za-z0-9._/:@-]*$ ]] || die "--image '$image' is not an image reference"
$dry_run && $rotate && die "--dry-run and --rotate do not go together"

for tool in openssl sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
command -v "$kubectl" >/dev/null || die "kubectl ('$kubectl') is not on PATH; set KUBECTL"

# The injector, to validate the configuration and render the webhook configuration.
if [[ -n $injector ]]; then
    [[ -x $injector ]] || die "--injector '$injector' is not an executable"
    injector_cmd=("$injector")
elif command -v sidecar-injector >/dev/null; then
    injector_cmd=(sidecar-injector)
elif [[ -f $repo/Cargo.toml ]] && command -v cargo >/dev/null; then
    injector_cmd=(cargo run --quiet --locked --manifest-path "$repo/Cargo.toml" -p sidecar-injector --)
else
    die "no sidecar-injector binary: pass --injector PATH (or set SIDECAR_INJECTOR)"
fi
# In the cluster the catalog is the mounted sidecars.yaml; here it is the file next to config.yaml.
injector_config=(--config "$here/config.yaml" --set 'catalogPaths=[]' --catalog "$here/sidecars.yaml")
log "checking config.yaml and sidecars.yaml with: ${injector_cmd[*]}"
"${injector_cmd[@]}" check "${injector_config[@]}" >&2 || die "config.yaml or sidecars.yaml is invalid"

service_host="$name.$namespace.svc"
dns_names=("$name" "$name.$namespace" "$service_host" "$service_host.cluster.local")
config_sum=$(sha256sum "$here/config.yaml" | cut -d' ' -f1)
namespace_catalogs=false
if grep -Eq '^namespaceCatalogs:[[:space:]]*true([[:space:]]|#|$)' "$here/config.yaml"; then
    namespace_catalogs=true
fi

# A manifest of this directory, in the chosen namespace.
manifest() {
    local file=$here/$1
    local -a edits=(-e "s/^\([[:space:]]*namespace:\)[[:space:]]*sidecar-injector[[:space:]]*\$/\1 $namespace/")
    case $1 in
    namespace.yaml) edits+=(-e "s/^\([[:space:]]*name:\)[[:space:]]*sidecar-injector[[:space:]]*\$/\1 $namespace/") ;;
    deployment.yaml)
        edits+=(-e "s|^\([[:space:]]*checksum/config:\).*\$|\1 \"$config_sum\"|")
        [[ -z $image ]] || edits+=(-e "s|^\([[:space:]]*image:\).*\$|\1 $image|")
        ;;
    esac
    echo "---"
    sed "${edits[@]}" "$file"
}

# Every object but the Secret and the webhook configuration, in apply order.
workload_manifests() {
    manifest rbac.yaml
    if $namespace_catalogs; then
        manifest rbac-namespace-catalogs.yaml
    fi
    echo "---"
    "$kubectl" create configmap "$name" --namespace "$namespace" \
        --from-file=config.yaml="$here/config.yaml" --from-file=sidecars.yaml="$here/sidecars.yaml" \
        --dry-run=client -o yaml
    manifest service.yaml
    manifest deployment.yaml
    manifest pdb.yaml
}

webhook_manifest() {
    # The injector's own namespace is never sent to it (no self-deadlock with failurePolicy: Fail),
    # whatever its labels.
    "${injector_cmd[@]}" "${injector_config[@]}" --set "excludedNamespaces=[kube-system, kube-public, $namespace]" \
        webhook-config --service "$namespace/$name:443" "$@"
}

if $dry_run; then
    manifest namespace.yaml
    echo "# Secret $namespace/$secret (type kubernetes.io/tls: tls.crt, tls.key, ca.crt) is made by"
    echo "# deploy.sh at apply time and not printed here."
    workload_manifests
    echo "---"
    echo "# The caBundle (the CA of $secret) is filled at apply time."
    webhook_manifest
    exit 0
fi

apply() {
    "$kubectl" apply --server-side --force-conflicts --field-manager="$field_manager" -f - >&2
}

log "deploying into namespace $namespace (context: $("$kubectl" config current-context 2>/dev/null || echo '?'))"
manifest namespace.yaml | apply

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/current" "$work/new"

# Key $1 of the current Secret, decoded (empty when absent).
secret_key() {
    local value
    value=$("$kubectl" get secret "$secret" --namespace "$namespace" \
        -o go-template="{{ with index .data \"$1\" }}{{ . }}{{ end }}") || die "cannot read Secret $namespace/$secret"
    [[ -z $value ]] || printf '%s' "$value" | base64 -d
}

# Why the current certificate cannot be kept (empty output: it can).
current_problem() {
    local dir=$work/current
    [[ -s $dir/tls.crt && -s $dir/tls.key && -s $dir/ca.crt ]] || {
        echo "the Secret lacks tls.crt, tls.key or ca.crt"
        return
    }
    openssl verify -CAfile "$dir/ca.crt" -purpose sslserver "$dir/tls.crt" >/dev/null 2>&1 ||
        {
            echo "tls.crt does not verify against ca.crt as a server certificate"
            return
        }
    openssl x509 -in "$dir/tls.crt" -noout -checkend $((renew_days * 86400)) >/dev/null ||
        {
            echo "tls.crt expires within $renew_days days"
            return
        }
    local host
    for host in "${dns_names[@]}"; do
        openssl x509 -in "$dir/tls.crt" -noout -checkhost "$host" | grep -q 'does match' ||
            {
                echo "tls.crt does not cover $host"
                return
            }
    done
    [[ $(openssl x509 -in "$dir/tls.crt" -noout -pubkey) == $(openssl pkey -in "$dir/tls.key" -pubout 2>/dev/null) ]] ||
        echo "tls.key does not match tls.crt"
}

# A new CA (key discarded after signing) and a serving certificate for the Service's names.
make_certificate() {
    local dir=$work/new san="" host
    for host in "${dns_names[@]}"; do
        san+="${san:+,}DNS:$host"
    done
    cat >"$dir/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $name CA ($namespace)
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    openssl req -x509 -new -config "$dir/openssl.cnf" -extensions ca -sha256 -days "$ca_days" \
        -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/tls.key"
    openssl req -new -config "$dir/openssl.cnf" -key "$dir/tls.key" -subj "/CN=$service_host" -out "$dir/tls.csr"
    openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$cert_days" -sha256 \
        -extfile "$dir/openssl.cnf" -extensions leaf -out "$dir/tls.crt" 2>/dev/null
    rm -f "$dir/ca.key" "$dir/tls.csr"
    openssl verify -CAfile "$dir/ca.crt" -purpose sslserver "$dir/tls.crt" >/dev/null ||
        die "the new certificate does not verify against its CA"
}

exists=$("$kubectl" get secret "$secret" --namespace "$namespace" --ignore-not-found -o name) ||
    die "cannot read Secret $namespace/$secret"
problem="there is no Secret $namespace/$secret"
if [[ -n $exists ]]; then
    for key in tls.crt tls.key ca.crt; do
        secret_key "$key" >"$work/current/$key"
    done
    problem=$(current_problem)
fi
if $rotate; then
    problem="--rotate"
fi

if [[ -z $problem ]]; then
    log "keeping the serving certificate in $secret ($(openssl x509 -in "$work/current/tls.crt" -noout -enddate))"
    cp "$work/current/ca.crt" "$work/ca-bundle.pem"
else
    log "making a new CA and serving certificate: $problem"
    make_certificate
    cp "$work/new/ca.crt" "$work/ca-bundle.pem"
    # Trust the previous CA too until the replicas serve the new certificate.
    if [[ -s $work/current/ca.crt ]] && openssl x509 -in "$work/current/ca.crt" -noout -checkend 0 >/dev/null 2>&1 &&
        ! cmp -s "$work/current/ca.crt" "$work/new/ca.crt"; then
        log "the caBundle keeps the previous CA until the next run"
        openssl x509 -in "$work/current/ca.crt" >>"$work/ca-bundle.pem"
    fi
    "$kubectl" create secret generic "$secret" --namespace "$namespace" --type=kubernetes.io/tls \
        --from-file=tls.crt="$work/new/tls.crt" --from-file=tls.key="$work/new/tls.key" \
        --from-file=ca.crt="$work/new/ca.crt" --dry-run=client -o yaml |
        apply
fi

workload_manifests | apply
if $wait_rollout; then
    log "waiting for the rollout of deployment/$name"
    "$kubectl" rollout status "deployment/$name" --namespace "$namespace" --timeout=5m >&2
fi
webhook_manifest --ca-file "$work/ca-bundle.pem" | apply
log "done: MutatingWebhookConfiguration $name calls https://$service_host:443 (caBundle: $(grep -c 'BEGIN CERTIFICATE' "$work/ca-bundle.pem") CA)"
