//! The request corpus: `AdmissionReview` v1 pod CREATEs of about 2 KB, 10 KB, 100 KB and 1 MB.
//!
//! Built in code, deterministically (values come from a fixed-seed generator), so every run and
//! every machine sends byte-identical requests. Each pod is what the API server sends a mutating
//! webhook after its own defaulting and the `ServiceAccount` admission plugin: defaulted fields in
//! their canonical form (no `creationTimestamp` before creation, as apimachinery ≥ 0.34 encodes it
//! with `omitzero`; `status: {}`; canonical quantities; no empty lists), so that a webhook that round-trips the pod through typed Go structs (the baseline)
//! changes nothing it did not mean to. Each pod asks for the catalog's `haystack-agent` sidecar and
//! carries env-from-annotations values, one of which overrides the catalog's own `haystack_env`.
//!
//! See <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#request>.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value, json};

/// The namespace every corpus pod is created in. It is not excluded, and the runner starts the
/// injector with `server.namespaceCache: never`, so its opt-in label is trusted from the webhook's
/// `namespaceSelector`.
pub const NAMESPACE: &str = "bench";

/// The annotation prefix of the embedded default configuration.
pub const PREFIX: &str = "sidecar-injector.expedia.com";

/// The sidecar every corpus pod asks for (the embedded default catalog's only entry).
pub const SIDECAR: &str = "haystack-agent";

/// One size class of the corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    /// About 2 KB: one container, the defaults, a projected service-account token.
    K2,
    /// About 10 KB: three containers with env, probes and mounts, five volumes, `managedFields`.
    K10,
    /// About 100 KB: the 10 KB pod with long env lists (and their `managedFields`).
    K100,
    /// About 1 MB: the same, longer still.
    M1,
}

impl Size {
    /// Every size, smallest first.
    pub const ALL: [Self; 4] = [Self::K2, Self::K10, Self::K100, Self::M1];

    /// The short name used in file names, tables and JSON keys (`2k`, `10k`, `100k`, `1m`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::K2 => "2k",
            Self::K10 => "10k",
            Self::K100 => "100k",
            Self::M1 => "1m",
        }
    }

    /// The size the review body aims at, in bytes.
    #[must_use]
    pub fn target_bytes(self) -> usize {
        match self {
            Self::K2 => 2 * 1024,
            Self::K10 => 10 * 1024,
            Self::K100 => 100 * 1024,
            Self::M1 => 1024 * 1024,
        }
    }

    /// Parses a short name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One corpus entry: the size class and the review body as sent.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The size class.
    pub size: Size,
    /// The `AdmissionReview` request body (compact JSON).
    pub body: Vec<u8>,
}

impl Entry {
    /// The review's request `uid`.
    #[must_use]
    pub fn uid(&self) -> String {
        uid(self.size)
    }

    /// The pod the review carries, as JSON.
    ///
    /// # Panics
    /// Never for a corpus entry: the body is built by this module.
    #[must_use]
    pub fn pod(&self) -> Value {
        let review: Value = serde_json::from_slice(&self.body).expect("corpus bodies are JSON");
        review["request"]["object"].clone()
    }
}

/// The whole corpus, smallest first.
#[must_use]
pub fn corpus() -> Vec<Entry> {
    Size::ALL.into_iter().map(entry).collect()
}

/// The entry of one size.
#[must_use]
pub fn entry(size: Size) -> Entry {
    Entry { size, body: review(size) }
}

/// Writes every entry as `review-<size>.json` into `dir` (created if needed) and returns the paths.
pub fn write(dir: &Path) -> anyhow::Result<Vec<(Size, std::path::PathBuf, usize)>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for e in corpus() {
        let path = dir.join(format!("review-{}.json", e.size.name()));
        std::fs::write(&path, &e.body)?;
        written.push((e.size, path, e.body.len()));
    }
    Ok(written)
}

/// splitmix64: a tiny, fixed-seed generator, so the corpus needs no dependency and never changes.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn hex(&mut self, len: usize) -> String {
        let mut out = String::with_capacity(len + 16);
        while out.len() < len {
            let _ = write!(out, "{:016x}", self.next());
        }
        out.truncate(len);
        out
    }
}

fn uid(size: Size) -> String {
    let n = match size {
        Size::K2 => 2,
        Size::K10 => 10,
        Size::K100 => 100,
        Size::M1 => 1000,
    };
    format!("b3c1e5a0-0000-4000-8000-{n:012}")
}

/// The shape of a pod before it is sized: how many app containers and env vars each carries.
#[derive(Clone, Copy, Debug)]
struct Shape {
    /// Containers of the 10 KB shape (app, worker, log-shipper) instead of one.
    full: bool,
    /// Env vars per container.
    env: usize,
}

fn review(size: Size) -> Vec<u8> {
    let target = size.target_bytes();
    let shape = |env| Shape { full: size != Size::K2, env };
    let base = usize::from(size != Size::K2);
    // The smallest env count whose review reaches the target: env vars are what makes large pods
    // large in practice (with their managedFields entries).
    let mut lo = base;
    let mut hi = base;
    while render(size, shape(hi)).len() < target {
        lo = hi;
        hi = (hi * 2).max(1);
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if render(size, shape(mid)).len() < target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    render(size, shape(lo))
}

fn render(size: Size, shape: Shape) -> Vec<u8> {
    let mut rng = Rng(0x5EED_0000 + size.target_bytes() as u64);
    let pod = pod(size, shape, &mut rng);
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid(size),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "",
            "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "0d8e8a52-0d4a-4b1c-9a57-6b1d4f2b7c11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    });
    serde_json::to_vec(&review).expect("a JSON value always encodes")
}

fn pod(size: Size, shape: Shape, rng: &mut Rng) -> Value {
    let app = "checkout";
    let hash = rng.hex(10);
    let mut annotations = Map::new();
    annotations.insert(format!("{PREFIX}/inject"), json!(SIDECAR));
    annotations.insert(format!("{PREFIX}/api-key"), json!(rng.hex(32)));
    annotations.insert(format!("{PREFIX}/service-name"), json!(app));
    annotations.insert(format!("{PREFIX}/haystack_env"), json!("production"));
    if shape.full {
        annotations.insert("prometheus.io/scrape".to_owned(), json!("true"));
        annotations.insert("prometheus.io/port".to_owned(), json!("9090"));
        annotations.insert("kubectl.kubernetes.io/restartedAt".to_owned(), json!("2024-05-01T10:00:00Z"));
        annotations.insert(format!("{PREFIX}/region"), json!("us-west-2"));
    }
    let mut containers = vec![container("app", &format!("registry.example.com/{app}:1.42.0"), 8080, shape, rng)];
    if shape.full {
        containers.push(container("worker", &format!("registry.example.com/{app}-worker:1.42.0"), 8081, shape, rng));
        containers.push(container("log-shipper", "registry.example.com/fluent-bit:3.0.4", 2020, shape, rng));
    }
    let mut volumes = Vec::new();
    if shape.full {
        volumes.push(json!({
            "name": format!("kube-api-access-{}", rng.hex(5)),
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        }));
        volumes.push(json!({"name": "config", "configMap": {"name": format!("{app}-config"), "defaultMode": 420}}));
        volumes.push(json!({"name": "tls", "secret": {"secretName": format!("{app}-tls"), "defaultMode": 420}}));
        volumes.push(json!({"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}}));
        volumes.push(json!({"name": "tmp", "emptyDir": {}}));
        let token_volume = volumes[0]["name"].clone();
        for c in &mut containers {
            let mounts = c["volumeMounts"].as_array_mut().expect("full containers have mounts");
            mounts.push(json!({"name": token_volume, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}));
            mounts.push(json!({"name": "config", "readOnly": true, "mountPath": "/etc/app"}));
            mounts.push(json!({"name": "tls", "readOnly": true, "mountPath": "/etc/tls"}));
            mounts.push(json!({"name": "cache", "mountPath": "/var/cache/app"}));
            mounts.push(json!({"name": "tmp", "mountPath": "/tmp"}));
        }
    }
    let mut metadata = json!({
        "generateName": format!("{app}-{hash}-"),
        "namespace": NAMESPACE,
        "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "shop", "pod-template-hash": hash},
        "annotations": annotations,
        "ownerReferences": [{
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": format!("{app}-{hash}"),
            "uid": "5f0c9b7e-8d3a-4a51-9c1e-2b7d6e4f8a90",
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    });
    if size != Size::K2 {
        metadata["managedFields"] = managed_fields(&containers, &metadata);
    }
    let mut spec = Map::new();
    if volumes.is_empty() {
        // No service-account token: the small pod opts out, so Go's encoding has no empty list to drop.
        spec.insert("automountServiceAccountToken".to_owned(), json!(false));
    } else {
        spec.insert("volumes".to_owned(), Value::Array(volumes));
    }
    spec.insert("containers".to_owned(), Value::Array(containers));
    let defaults = json!({
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {"runAsNonRoot": true, "fsGroup": 2000},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ],
        "priority": 0,
        "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority",
    });
    if let Value::Object(defaults) = defaults {
        spec.extend(defaults);
    }
    json!({"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": spec, "status": {}})
}

fn container(name: &str, image: &str, port: u16, shape: Shape, rng: &mut Rng) -> Value {
    let env: Vec<Value> = (0..shape.env)
        .map(|i| {
            if i % 7 == 3 {
                json!({"name": format!("SECRET_{i:04}"), "valueFrom": {"secretKeyRef": {"name": "app-secrets", "key": format!("key-{i}")}}})
            } else {
                json!({"name": format!("SETTING_{i:04}"), "value": rng.hex(24 + (i % 5) * 8)})
            }
        })
        .collect();
    if !shape.full {
        // The small pod: what a minimal Deployment's pod looks like after defaulting (no empty
        // lists: the API server's encoding omits them).
        let mut c = json!({
            "name": name,
            "image": image,
            "ports": [{"containerPort": port, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
        });
        if !env.is_empty() {
            c["env"] = Value::Array(env);
        }
        return c;
    }
    json!({
        "name": name,
        "image": image,
        "args": ["--port", port.to_string(), "--log-format", "json"],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": env,
        "resources": {"limits": {"memory": "512Mi"}, "requests": {"cpu": "250m", "memory": "256Mi"}},
        "volumeMounts": [],
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": port, "scheme": "HTTP"},
            "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http", "scheme": "HTTP"},
            "timeoutSeconds": 1, "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3,
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "securityContext": {"capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false},
    })
}

/// `managedFields` as the API server records a Deployment's pod: the controller-manager's `Update`
/// with a `fieldsV1` set naming every field the pod template sets.
fn managed_fields(containers: &[Value], metadata: &Value) -> Value {
    let mut f_containers = Map::new();
    for c in containers {
        let mut fields = Map::new();
        fields.insert(".".to_owned(), json!({}));
        for key in c.as_object().into_iter().flat_map(|o| o.keys()) {
            if key != "env" && key != "name" {
                fields.insert(format!("f:{key}"), json!({}));
            }
        }
        let mut f_env = Map::new();
        f_env.insert(".".to_owned(), json!({}));
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or_default();
            let value_field = if e.get("valueFrom").is_some() {
                json!({"f:valueFrom": {".": {}, "f:secretKeyRef": {}}})
            } else {
                json!({"f:value": {}})
            };
            let mut item = json!({".": {}, "f:name": {}});
            if let (Some(item), Some(extra)) = (item.as_object_mut(), value_field.as_object()) {
                item.extend(extra.clone());
            }
            f_env.insert(format!("k:{{\"name\":\"{name}\"}}"), item);
        }
        fields.insert("f:env".to_owned(), Value::Object(f_env));
        f_containers
            .insert(format!("k:{{\"name\":\"{}\"}}", c["name"].as_str().unwrap_or_default()), Value::Object(fields));
    }
    let mut f_labels = Map::new();
    for key in metadata["labels"].as_object().into_iter().flat_map(|o| o.keys()) {
        f_labels.insert(format!("f:{key}"), json!({}));
    }
    let mut f_annotations = Map::new();
    for key in metadata["annotations"].as_object().into_iter().flat_map(|o| o.keys()) {
        f_annotations.insert(format!("f:{key}"), json!({}));
    }
    json!([
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2024-05-01T10:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {
                    "f:annotations": f_annotations,
                    "f:generateName": {},
                    "f:labels": f_labels,
                    "f:ownerReferences": {".": {}, "k:{\"uid\":\"5f0c9b7e-8d3a-4a51-9c1e-2b7d6e4f8a90\"}": {}},
                },
                "f:spec": {
                    "f:containers": f_containers,
                    "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {},
                    "f:securityContext": {".": {}, "f:fsGroup": {}, "f:runAsNonRoot": {}},
                    "f:terminationGracePeriodSeconds": {},
                    "f:volumes": {".": {}},
                },
            },
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_near_their_targets_and_deterministic() {
        for size in Size::ALL {
            let a = entry(size);
            let b = entry(size);
            assert_eq!(a.body, b.body, "{} is not deterministic", size.name());
            let target = size.target_bytes();
            // "About": within 20% of the target.
            assert!(a.body.len().abs_diff(target) < target / 5, "{}: {} bytes", size.name(), a.body.len());
        }
    }

    #[test]
    fn every_pod_asks_for_the_sidecar_and_decodes_as_a_review() {
        for e in corpus() {
            let review = admission_kit::review::Review::from_slice(&e.body).expect("decodes");
            assert_eq!(review.request.uid, e.uid());
            let pod = e.pod();
            assert_eq!(pod["metadata"]["annotations"][format!("{PREFIX}/inject")], SIDECAR);
        }
    }
}
