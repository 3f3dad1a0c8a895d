//! Webhook-less mode proven equal to the webhook on a real kube-apiserver: the same pods — the
//! seed's and generated ones — are created in twin namespaces, one served by the injector's webhook
//! (running in this process), the other by the `MutatingAdmissionPolicy` and
//! `ValidatingAdmissionPolicy` that `sidecar-injector policy` renders from the same configuration.
//! Stored pods must be identical (but for what the API server makes differ between any two pods:
//! uid, namespace, the service account token volume's random name), and a denied pod must be
//! denied in both modes with the same message.
//!
//! Each configuration variant has its own pair of namespaces, told apart by the namespace label's
//! value, and its own webhook and policy names; a third namespace is served by a webhook and
//! policies at once, as while a cluster switches modes, and must store and deny the same. Another mutating webhook (the `default-labels`
//! example, served here) changes every pod after the injector or the policy, so that reinvocation
//! is part of what is compared; and a server-side dry run in policy mode must give what creating
//! the pod gives.

use std::time::Duration;

use admission_kit::policy::{PolicyOptions, render_policies};
use admission_kit::reexports::kube::{
    self, Api,
    api::{ApiResource, DynamicObject, PostParams},
};
use integration_tests::scenarios::{eventually, namespace};
use integration_tests::webhook::{Injector, client, create_policy_object, serve_and_register, start_injector};
use integration_tests::{Binaries, ControlPlane};
use k8s_openapi::api::core::v1::Pod;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use sidecar_injector::config::Config;

/// Generated pods per variant: at least 200 in all.
const GENERATED: usize = 150;

/// The catalog of both modes: the seed's agent, sidecars with init containers, volumes, pull
/// secrets and metadata that overlap, a native sidecar with env rules of its own, one allowed in
/// the twin namespaces only and one allowed elsewhere only.
fn sidecars(namespaces: &[&str]) -> Value {
    json!([
        {"name": "haystack-agent",
         "containers": [{"name": "haystack-agent", "image": "expediadotcom/haystack-agent:0.1",
            "args": ["--config-provider", "file", "--file-path", "/app/haystack/agent.conf"],
            "env": [{"name": "haystack_env", "value": "local"}],
            "volumeMounts": [{"name": "haystack-agent-config", "mountPath": "/app/haystack"}]}],
         "volumes": [{"name": "haystack-agent-config", "configMap": {"name": "haystack-agent-conf"}}]},
        {"name": "logger",
         "containers": [{"name": "logger", "image": "logger:1", "env": [{"name": "LOG_LEVEL", "value": "info"}],
            "resources": {"limits": {"memory": "32Mi"}}}],
         "initContainers": [{"name": "logger-setup", "image": "logger:1", "command": ["setup"]}],
         "volumes": [{"name": "logs", "emptyDir": {}}],
         "imagePullSecrets": [{"name": "registry"}],
         "labels": {"logging": "logger"},
         "annotations": {"logger.example.com/format": "json"}},
        {"name": "proxy", "nativeSidecar": true,
         "containers": [{"name": "proxy", "image": "proxy:2", "ports": [{"containerPort": 15001}],
            "env": [{"name": "PROXY_MODE", "value": "sidecar"}]}],
         "imagePullSecrets": [{"name": "registry"}, {"name": "proxy-registry"}],
         "labels": {"logging": "proxy", "mesh": "on"},
         "annotationEnv": {"allow": ["proxy-*", "PROXY_*", "some-api-key"], "locked": [], "maxVars": 2}},
        {"name": "tracer", "namespaces": namespaces,
         "containers": [{"name": "tracer", "image": "tracer:3"}],
         "annotationEnv": {"deny": ["SECRET_*"], "maxValueBytes": 16}},
        {"name": "restricted", "namespaces": ["elsewhere"],
         "containers": [{"name": "restricted", "image": "restricted:1"}]},
    ])
}

/// A configuration variant: its name, and the configuration keys it sets.
struct Variant {
    name: &'static str,
    keys: Value,
}

fn variants() -> Vec<Variant> {
    vec![
        Variant { name: "defaults", keys: json!({}) },
        Variant {
            name: "variant",
            keys: json!({
                "envNames": "cIdentifier", "nativeSidecarPlacement": "last", "overridePodMetadata": true,
                "literalEnvValues": false, "limits": {"maxInjectNames": 3}, "reinvocationPolicy": "Never"
            }),
        },
    ]
}

/// The configuration of one mode of a variant.
fn config(variant: &Variant, mode: &str, namespaces: &[&str]) -> anyhow::Result<Config> {
    let mut keys = variant.keys.clone();
    keys["namespaceLabelValue"] = json!(format!("{}-{mode}", variant.name));
    keys["webhookName"] = json!(format!("{mode}.{}.sidecar-injector.expedia.com", variant.name));
    keys["sidecars"] = sidecars(namespaces);
    let overrides: Vec<(String, Value)> =
        keys.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok(Config::load(None, &overrides)?)
}

/// Applies the policies rendered from `config` and waits until they act on a dry-run pod.
async fn install_policies(client: &kube::Client, config: &Config, ns: &str) -> anyhow::Result<usize> {
    let objects = integration_tests::webhook::install_policies(client, config).await?;
    // Policies take effect once the API server's informers have them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe", "annotations": {"sidecar-injector.expedia.com/inject": "haystack-agent"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))?;
    eventually("the policies to inject a dry-run pod", Duration::from_secs(30), || {
        let pods = pods.clone();
        let probe = probe.clone();
        async move {
            let created = pods.create(&PostParams { dry_run: true, ..PostParams::default() }, &probe).await?;
            Ok((created.spec.map_or(0, |s| s.containers.len()) == 2).then_some(()))
        }
    })
    .await?;
    // And the validating policy refuses a pod asking for an unknown sidecar.
    let mut unknown = probe.clone();
    unknown.metadata.annotations =
        Some([("sidecar-injector.expedia.com/inject".to_owned(), "no-such-sidecar".to_owned())].into());
    eventually("the validating policy to refuse a dry-run pod", Duration::from_secs(30), || {
        let pods = pods.clone();
        let unknown = unknown.clone();
        async move {
            match pods.create(&PostParams { dry_run: true, ..PostParams::default() }, &unknown).await {
                Err(kube::Error::Api(e)) if e.message.contains("no-such-sidecar") => Ok(Some(())),
                _ => Ok(None),
            }
        }
    })
    .await?;
    Ok(objects)
}

/// A generated pod: annotations asking for sidecars (in any order, repeated, unknown, restricted,
/// with spaces and empty items) and env vars (refused names, locked and denied vars, `$`, long
/// values), the pod's own labels and annotations overlapping the catalog's, existing containers,
/// init containers, volumes and pull secrets (some with a sidecar's names), and an unknown field.
fn pod_strategy() -> impl Strategy<Value = Value> {
    use proptest::prelude::*;
    // Known sidecars twice as often as the names that make a pod denied.
    let sidecar = prop::sample::select(vec![
        "haystack-agent",
        "haystack-agent",
        "logger",
        "logger",
        "proxy",
        "proxy",
        "tracer",
        "tracer",
        "restricted",
        "unknown-sidecar",
        "",
        " logger ",
    ]);
    let inject = prop::option::weighted(0.9, prop::collection::vec(sidecar, 0..4).prop_map(|names| names.join(",")));
    let env_key = prop::sample::select(vec![
        "some-api-key",
        "api_key",
        "LD_PRELOAD",
        "ld-preload",
        "haystack_env",
        "PROXY_MODE",
        "proxy-level",
        "proxy-extra",
        "proxy_level",
        "SECRET_TOKEN",
        "1abc",
        "a.b",
        "LOG_LEVEL",
        "path",
    ]);
    let env_value = prop::sample::select(vec!["v", "$HOME", "a$$b~c/d", "0123456789abcdefXYZ", "", "two words"]);
    // Most pods carry no env annotation or allowed ones, so that many are stored.
    let env = prop::option::weighted(0.4, prop::collection::btree_map(env_key, env_value, 1..4))
        .prop_map(Option::unwrap_or_default);
    let flags = prop::collection::vec(any::<bool>(), 8);
    (inject, env, flags).prop_map(|(inject, env, f)| {
        let mut annotations = serde_json::Map::new();
        if let Some(inject) = inject {
            annotations.insert("sidecar-injector.expedia.com/inject".to_owned(), json!(inject));
        }
        for (key, value) in env {
            annotations.insert(format!("sidecar-injector.expedia.com/{key}"), json!(value));
        }
        if f[0] {
            annotations.insert("logger.example.com/format".to_owned(), json!("text"));
        }
        let mut labels = json!({"app": "generated"});
        if f[1] {
            labels["logging"] = json!("mine");
        }
        let mut containers = vec![json!({"name": "app", "image": "app:1", "unknownField": "dropped"})];
        if f[2] {
            containers.push(json!({"name": if f[3] { "logger" } else { "helper" }, "image": "helper:1"}));
        }
        let mut spec = json!({"containers": containers});
        if f[4] {
            spec["initContainers"] = json!([{"name": if f[5] { "logger-setup" } else { "setup" }, "image": "setup:1"}]);
        }
        if f[6] {
            spec["volumes"] = json!([{"name": if f[7] { "logs" } else { "data" }, "emptyDir": {}}]);
        }
        if f[3] && f[5] {
            spec["imagePullSecrets"] = json!([{"name": "registry"}]);
        }
        json!({"metadata": {"annotations": annotations, "labels": labels}, "spec": spec})
    })
}

/// The seed's pods and `count` generated ones, the same on every run.
fn pods(count: usize) -> anyhow::Result<Vec<Value>> {
    let mut pods = vec![
        json!({"metadata": {"annotations": {
            "sidecar-injector.expedia.com/inject": "haystack-agent",
            "sidecar-injector.expedia.com/some-api-key": "6feab492-fc9b-4c38-b50d-3791718c8203"}},
            "spec": {"containers": [{"name": "echo-server", "image": "hashicorp/http-echo:0.2.3",
                "args": ["-listen=:8080", "-text=hello world"], "ports": [{"containerPort": 8080}]}]}}),
        json!({"metadata": {"annotations": {"sidecar-injector.expedia.com/inject": "haystack-agent, logger, proxy, tracer"}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}], "initContainers": [{"name": "setup", "image": "s:1"}]}}),
        json!({"metadata": {"name": "asks-nothing"}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}),
    ];
    // Many env annotations: the policy's checks must stay linear for the API server's CEL cost
    // budget (a quadratic duplicate check exceeded it at about 300).
    let mut many = serde_json::Map::new();
    many.insert("sidecar-injector.expedia.com/inject".to_owned(), json!("haystack-agent"));
    for i in 0..500 {
        many.insert(format!("sidecar-injector.expedia.com/var-{i:03}"), json!(format!("value {i}")));
    }
    pods.push(json!({"metadata": {"annotations": many}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}));
    let config = ProptestConfig { rng_algorithm: RngAlgorithm::ChaCha, ..ProptestConfig::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]));
    let strategy = pod_strategy();
    for _ in 0..count {
        pods.push(strategy.new_tree(&mut runner).map_err(|e| anyhow::anyhow!("{e}"))?.current());
    }
    Ok(pods)
}

/// What the API server did with a pod: the stored pod as it would be in any namespace, or the
/// denial's own message.
#[derive(Debug, PartialEq)]
enum Outcome {
    Stored(Value),
    Denied(String),
}

/// Pods whose policy-mode creation is first tried as a server-side dry run.
const DRY_RUNS: usize = 10;

async fn create(client: &kube::Client, ns: &str, name: &str, pod: &Value) -> anyhow::Result<Outcome> {
    create_with(client, ns, name, pod, false).await
}

async fn create_with(
    client: &kube::Client,
    ns: &str,
    name: &str,
    pod: &Value,
    dry_run: bool,
) -> anyhow::Result<Outcome> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<Pod>(&()));
    let mut pod = pod.clone();
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["name"] = json!(name);
    match api.create(&PostParams { dry_run, ..PostParams::default() }, &serde_json::from_value(pod)?).await {
        Ok(stored) => Ok(Outcome::Stored(normalized(serde_json::to_value(stored)?))),
        Err(kube::Error::Api(e)) => {
            // "admission webhook \"…\" denied the request: M" or
            // "ValidatingAdmissionPolicy '…' with binding '…' denied request: M": M is the injector's.
            let message = ["denied the request: ", "denied request: "]
                .iter()
                .find_map(|marker| e.message.split_once(marker).map(|(_, m)| m.to_owned()))
                .unwrap_or_else(|| format!("{} (not a denial)", e.message));
            // A message naming the namespace names its twin in the other mode.
            Ok(Outcome::Denied(message.replace(&format!("`{ns}`"), "`<namespace>`")))
        }
        Err(e) => Err(e.into()),
    }
}

/// The pod without what differs between any two pods the API server stores: identity, times,
/// namespace, and the service account token volume's random name.
fn normalized(mut pod: Value) -> Value {
    if let Some(metadata) = pod["metadata"].as_object_mut() {
        for key in ["uid", "resourceVersion", "creationTimestamp", "managedFields", "namespace", "generation"] {
            metadata.remove(key);
        }
    }
    if let Some(object) = pod.as_object_mut() {
        object.remove("status");
    }
    let token = |v: &Value| v["name"].as_str().is_some_and(|n| n.starts_with("kube-api-access-"));
    if let Some(volumes) = pod["spec"]["volumes"].as_array_mut() {
        volumes.retain(|v| !token(v));
    }
    for key in ["containers", "initContainers"] {
        for container in pod["spec"][key].as_array_mut().into_iter().flatten() {
            if let Some(mounts) = container["volumeMounts"].as_array_mut() {
                mounts.retain(|m| !token(m));
                if mounts.is_empty() {
                    container.as_object_mut().map(|c| c.remove("volumeMounts"));
                }
            }
        }
    }
    pod
}

/// How many stored pods show each behaviour a wrong policy could get wrong.
#[derive(Debug, Default)]
struct Coverage {
    stored: usize,
    labelled_by_the_other_webhook: usize,
    injected: usize,
    several_sidecars: usize,
    native_among_init_containers: usize,
    env_from_annotations: usize,
    own_metadata_overlapping: usize,
    pull_secrets: usize,
}

impl Coverage {
    fn count(&mut self, pod: &Value) {
        self.stored += 1;
        self.labelled_by_the_other_webhook += usize::from(pod["metadata"]["labels"]["team"] == "unassigned");
        let status = pod["metadata"]["annotations"]["sidecar-injector.expedia.com/status"].as_str().unwrap_or_default();
        if status.is_empty() {
            return;
        }
        self.injected += 1;
        let status: Value = serde_json::from_str(status).unwrap_or_default();
        self.several_sidecars += usize::from(status["sidecars"].as_array().is_some_and(|s| s.len() > 1));
        let init = pod["spec"]["initContainers"].as_array().cloned().unwrap_or_default();
        self.native_among_init_containers +=
            usize::from(init.len() > 1 && init.iter().any(|c| c["restartPolicy"] == "Always"));
        let annotations = pod["metadata"]["annotations"].as_object().cloned().unwrap_or_default();
        self.env_from_annotations += usize::from(annotations.keys().any(|k| {
            k.starts_with("sidecar-injector.expedia.com/") && !k.ends_with("/inject") && !k.ends_with("/status")
        }));
        self.own_metadata_overlapping += usize::from(
            pod["metadata"]["labels"].get("logging").is_some() && annotations.contains_key("logger.example.com/format"),
        );
        self.pull_secrets += usize::from(pod["spec"]["imagePullSecrets"].as_array().is_some_and(|s| !s.is_empty()));
    }

    fn all_at_least(&self, n: usize) -> bool {
        [
            self.injected,
            self.several_sidecars,
            self.native_among_init_containers,
            self.env_from_annotations,
            self.own_metadata_overlapping,
            self.pull_secrets,
        ]
        .iter()
        .all(|c| *c >= n)
    }
}

/// The namespaces of one variant: served by the webhook, by the policies, and by both at once (as
/// while a cluster switches from one mode to the other).
struct Twins {
    webhook: String,
    policy: String,
    both: String,
}

/// Sets up a variant's namespaces, injectors and policies; returns the injectors to stop.
async fn set_up(client: &kube::Client, variant: &Variant, ns: &Twins) -> anyhow::Result<Vec<Injector>> {
    let allowed = [ns.webhook.as_str(), ns.policy.as_str(), ns.both.as_str()];
    let webhook = config(variant, "webhook", &allowed)?;
    let policy = config(variant, "policy", &allowed)?;
    // Both modes on one namespace: their own webhook and policy names, one namespace label value.
    let mut both_webhook = config(variant, "both-webhook", &allowed)?;
    let mut both_policy = config(variant, "both-policy", &allowed)?;
    let both_label = format!("{}-both", variant.name);
    both_webhook.namespace_label_value.clone_from(&both_label);
    both_policy.namespace_label_value.clone_from(&both_label);
    for (name, label) in [
        (&ns.webhook, &webhook.namespace_label_value),
        (&ns.policy, &policy.namespace_label_value),
        (&ns.both, &both_label),
    ] {
        namespace(client, name, &[("kubernetes-sidecar-injector", label), ("default-labels", "enabled")]).await?;
    }
    let objects = install_policies(client, &policy, &ns.policy).await?;
    // The policies first: once the webhook serves the namespace too, a probe cannot tell them apart.
    install_policies(client, &both_policy, &ns.both).await?;
    eprintln!("policy mode ({}): {objects} policy objects installed", variant.name);
    Ok(vec![
        start_injector(client, &webhook, &format!("{}-webhook", variant.name)).await?,
        start_injector(client, &both_webhook, &format!("{}-both", variant.name)).await?,
    ])
}

/// Counts of what was compared.
#[derive(Debug, Default)]
struct Tally {
    compared: usize,
    stored: usize,
    denied: usize,
    covered: Coverage,
}

/// Creates every pod in a variant's namespaces; returns the pods whose outcomes differ.
async fn compare(
    client: &kube::Client,
    variant: &Variant,
    ns: &Twins,
    tally: &mut Tally,
) -> anyhow::Result<Vec<String>> {
    let mut mismatches = Vec::new();
    for (i, pod) in pods(GENERATED)?.iter().enumerate() {
        let name = format!("pod-{i}");
        let by_webhook = create(client, &ns.webhook, &name, pod).await?;
        let by_policy = if i < DRY_RUNS {
            let dry = create_with(client, &ns.policy, &name, pod, true).await?;
            let real = create(client, &ns.policy, &name, pod).await?;
            anyhow::ensure!(dry == real, "{name} ({}): a dry run gave {dry:?}, creating it {real:?}", variant.name);
            real
        } else {
            create(client, &ns.policy, &name, pod).await?
        };
        let by_both = create(client, &ns.both, &name, pod).await?;
        tally.compared += 1;
        match &by_webhook {
            Outcome::Stored(pod) => {
                tally.stored += 1;
                tally.covered.count(pod);
            }
            Outcome::Denied(_) => tally.denied += 1,
        }
        if by_webhook != by_policy || by_webhook != by_both {
            mismatches.push(format!(
                "{name} ({}): {pod}\n  webhook: {by_webhook:?}\n  policy:  {by_policy:?}\n  both:    {by_both:?}",
                variant.name
            ));
        }
    }
    Ok(mismatches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_mode_stores_and_denies_what_webhook_mode_does() -> anyhow::Result<()> {
    let plane = ControlPlane::start(&Binaries::locate()?)?;
    let client = client(&plane).await?;
    integration_tests::control_plane::check_kubernetes_version(&client).await?;
    let labeler = serve_and_register(&client, &[default_labels::pipeline()], "zz-default-labels").await?;
    let mut injectors = Vec::new();
    let mut tally = Tally::default();
    for variant in variants() {
        let ns = Twins {
            webhook: format!("{}-webhook", variant.name),
            policy: format!("{}-policy", variant.name),
            both: format!("{}-both", variant.name),
        };
        injectors.extend(set_up(&client, &variant, &ns).await?);
        let mismatches = compare(&client, &variant, &ns, &mut tally).await?;
        anyhow::ensure!(
            mismatches.is_empty(),
            "{} of the pods differ between webhook mode, policy mode and both:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }
    let Tally { compared, stored, denied, covered } = tally;
    eprintln!(
        "policy mode: {compared} pods compared ({stored} stored, {denied} denied): identical in webhook mode, policy mode and both"
    );
    anyhow::ensure!(stored >= 50 && denied >= 50, "the pods exercise both outcomes ({stored} stored, {denied} denied)");
    eprintln!("policy mode: stored pods with {covered:?}");
    anyhow::ensure!(covered.all_at_least(10), "too few stored pods exercise each behaviour: {covered:?}");
    anyhow::ensure!(
        covered.labelled_by_the_other_webhook == covered.stored,
        "every stored pod met the other webhook: {covered:?}"
    );
    for injector in injectors {
        injector.server.shutdown_and_wait().await?;
    }
    labeler.shutdown_and_wait().await?;
    Ok(())
}

/// admission-kit's declarative pod mutation: the same value served in-process as a webhook and
/// rendered as a policy stores the same pods.
fn declarative() -> anyhow::Result<admission_kit::declarative::PodMutation> {
    Ok(serde_json::from_value(json!({
        "guard": "logs.example.com/injected",
        "containers": [{"name": "shipper", "image": "shipper:1", "env": [{"name": "level", "value": "info"}],
            "volumeMounts": [{"name": "logs", "mountPath": "/logs"}]}],
        "initContainers": [
            {"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"},
            {"name": "setup", "image": "setup:1"},
        ],
        "volumes": [{"name": "logs", "emptyDir": {}}],
        "imagePullSecrets": [{"name": "registry"}],
        "labels": {"logs.example.com/shipped": "true"},
        "annotations": {"logs.example.com/format": "json"},
        "set": [{"path": "/spec/securityContext/runAsNonRoot", "value": true}, {"path": "/spec/priorityClassName", "value": ""}],
        "envFromAnnotations": {"prefix": "logs.example.com", "allow": ["level", "extra-*"], "containers": ["shipper", "proxy"]},
    }))?)
}

/// Pods for the declarative mutation: its names taken or not, its metadata present or not, env
/// annotations allowed, refused or not env var names, the guard already there.
fn declarative_pod_strategy() -> impl Strategy<Value = Value> {
    use proptest::prelude::*;
    let key = prop::sample::select(vec!["level", "extra-a", "extra-..", "secret", "format", "injected", "shipped"]);
    let annotations = prop::collection::btree_map(key, prop::sample::select(vec!["debug", "$x", ""]), 0..4);
    (annotations, prop::collection::vec(any::<bool>(), 7)).prop_map(|(keys, f)| {
        let annotations: serde_json::Map<String, Value> =
            keys.into_iter().map(|(k, v)| (format!("logs.example.com/{k}"), json!(v))).collect();
        let mut containers = vec![json!({"name": "app", "image": "app:1"})];
        if f[0] {
            containers.push(json!({"name": "shipper", "image": "own:1"}));
        }
        let mut spec = json!({"containers": containers});
        if f[1] {
            spec["initContainers"] = json!([{"name": if f[2] { "setup" } else { "proxy" }, "image": "own:1"}]);
        }
        if f[3] {
            spec["volumes"] = json!([{"name": "logs", "emptyDir": {}}]);
        }
        if f[4] {
            spec["securityContext"] = json!({"runAsUser": 1000});
        }
        if f[5] {
            spec["imagePullSecrets"] = json!([{"name": "registry"}]);
        }
        let labels = if f[6] { json!({"logs.example.com/shipped": "mine"}) } else { json!({}) };
        json!({"metadata": {"annotations": annotations, "labels": labels}, "spec": spec})
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declarative_mutation_stores_the_same_pods_in_process_and_as_a_policy() -> anyhow::Result<()> {
    use admission_kit::matcher;
    use admission_kit::pipeline::{Pipeline, ResourceTarget};
    let plane = ControlPlane::start(&Binaries::locate()?)?;
    let client = client(&plane).await?;
    let pipeline = |mode: &str| -> anyhow::Result<Pipeline> {
        let mutation = declarative()?;
        Ok(Pipeline::builder(format!("{mode}.logs.example.com"))
            .step(
                admission_kit::Step::dynamic("shipper", ResourceTarget::of::<Pod>(), mutation.clone())
                    .when(matcher::namespace_label("logs", mode))
                    .policy_form(mutation),
            )
            .build()?)
    };
    for ns in ["webhook", "policy"] {
        namespace(&client, &format!("logs-{ns}"), &[("logs", ns)]).await?;
    }
    let server = serve_and_register(&client, &[pipeline("webhook")?], "logs-webhook").await?;
    for object in render_policies(&[pipeline("policy")?], &PolicyOptions::new())? {
        create_policy_object(&client, &object).await?;
    }
    let config = ProptestConfig { rng_algorithm: RngAlgorithm::ChaCha, ..ProptestConfig::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[9; 32]));
    let strategy = declarative_pod_strategy();
    let probe = json!({"spec": {"containers": [{"name": "app", "image": "app:1"}]}});
    eventually("the policy to act", Duration::from_secs(30), || async {
        let outcome = create_with(&client, "logs-policy", "probe", &probe, true).await?;
        Ok(matches!(outcome, Outcome::Stored(pod) if pod["spec"]["containers"].as_array().is_some_and(|c| c.len() == 2))
            .then_some(()))
    })
    .await?;
    let (mut mismatches, mut changed) = (Vec::new(), 0);
    for i in 0..100 {
        let pod = strategy.new_tree(&mut runner).map_err(|e| anyhow::anyhow!("{e}"))?.current();
        let name = format!("pod-{i}");
        let by_webhook = create(&client, "logs-webhook", &name, &pod).await?;
        let by_policy = create(&client, "logs-policy", &name, &pod).await?;
        changed += usize::from(
            matches!(&by_webhook, Outcome::Stored(p) if p["metadata"]["annotations"]["logs.example.com/injected"] == "true"),
        );
        if by_webhook != by_policy {
            mismatches.push(format!("{name}: {pod}\n  in-process: {by_webhook:?}\n  policy:     {by_policy:?}"));
        }
    }
    anyhow::ensure!(mismatches.is_empty(), "{} pods differ:\n{}", mismatches.len(), mismatches.join("\n"));
    anyhow::ensure!(changed >= 50, "most pods were mutated ({changed} of 100)");
    eprintln!("declarative mutation: 100 pods stored identically in-process and as a policy ({changed} mutated)");
    server.shutdown_and_wait().await?;
    Ok(())
}
