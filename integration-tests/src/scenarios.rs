//! The scenarios proving the injector against a real kube-apiserver: the API server calls it over
//! TLS with the caBundle, filters by namespaceSelector and matchConditions, applies the patch,
//! validates the result and stores it. Every assertion reads what the API server stored (or
//! answered). Each scenario uses its own namespace.
//!
//! [`portable_scenarios`] need only an API server and an injector it calls with the catalog of
//! `integration-tests/cluster/values.yaml` (the local control plane with the injector in this
//! process, the chart installed in `url` mode, or any cluster with the chart installed); the rest
//! need this process (a webhook served from here, catalog and certificate files).

#![allow(clippy::missing_panics_doc, reason = "scenarios assert: a panic is a failed scenario, with its message")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::webhook::{Injector, register, serve_and_register, start_injector_with};
use admission_kit::pipeline::FailurePolicy;
use admission_kit::reexports::kube::{
    self, Api,
    api::{ListParams, PostParams},
};
use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use serde_json::{Value, json};
use sidecar_injector::config::Config;

/// The Expedia annotation naming the sidecars.
pub const INJECT: &str = "sidecar-injector.expedia.com/inject";

/// The labels of a namespace that enforces Pod Security `restricted` (and warns about it).
pub const RESTRICTED: [(&str, &str); 3] = [
    ("pod-security.kubernetes.io/enforce", "restricted"),
    ("pod-security.kubernetes.io/enforce-version", "latest"),
    ("pod-security.kubernetes.io/warn", "restricted"),
];

/// Polls `check` every 200 ms until it gives a value, for up to `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        anyhow::ensure!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A container that meets Pod Security `restricted`.
fn restricted(name: &str, image: &str) -> Value {
    json!({"name": name, "image": image, "securityContext": {
        "runAsNonRoot": true, "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}})
}

/// The scenarios' catalog: `sidecars` of `integration-tests/cluster/values.yaml`, the values the
/// chart is installed with when the scenarios run against an existing cluster.
pub fn scenario_sidecars() -> anyhow::Result<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/values.yaml");
    let values: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path)?)?;
    Ok(values["sidecars"].clone())
}

pub fn catalog_config(catalog_dir: &std::path::Path) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.catalog_paths = vec![catalog_dir.to_owned()];
    config.namespace_catalogs = true;
    config.catalog_reload_interval = Duration::from_millis(100);
    config.sidecars = scenario_sidecars()?;
    Ok(config)
}

pub async fn namespace(client: &kube::Client, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        // kube-system exists: label it instead.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = json!({"metadata": {"labels": labels}});
            api.patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
        }
        Err(e) => return Err(e.into()),
    }
    // The ServiceAccount admission plugin rejects pods until the namespace's `default` account exists.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let started = Instant::now();
    while accounts.get_opt("default").await?.is_none() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "no default ServiceAccount in {name}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[allow(clippy::needless_pass_by_value, reason = "called with inline JSON literals")]
fn pod(name: &str, annotations: Value) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))?)
}

/// The names of the pod's containers, in order.
#[must_use]
pub fn names(pod: &Pod) -> Vec<String> {
    pod.spec.as_ref().map(|s| s.containers.iter().map(|c| c.name.clone()).collect()).unwrap_or_default()
}

/// A new webhook configuration takes effect asynchronously: dry-run creates until the mutation shows.
pub async fn wait_for_webhook(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    loop {
        let probe = pod("probe", json!({INJECT: "haystack-agent"}))?;
        let created = pods.create(&PostParams { dry_run: true, ..PostParams::default() }, &probe).await?;
        if names(&created).contains(&"haystack-agent".to_owned()) {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the webhook never took effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The scenarios' namespaces and webhook configurations, removed so that a cluster can run the
/// suite again.
pub async fn forget_previous_run(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let names = ["injected", "plain", "restricted", "down-fail", "down-ignore"];
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in names {
        let _ = namespaces.delete(name, &kube::api::DeleteParams::default()).await;
    }
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for name in ["down-fail", "down-ignore"] {
        let _ = configurations.delete(name, &kube::api::DeleteParams::default()).await;
    }
    // The one pod made outside the scenarios' own namespaces.
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let _ = system_pods.delete("p", &kube::api::DeleteParams::default()).await;
    let started = Instant::now();
    while system_pods.get_opt("p").await?.is_some() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(180), "pod kube-system/p is not going away");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for name in names {
        while namespaces.get_opt(name).await?.is_some() {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(180), "namespace {name} is not going away");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

/// Every scenario that needs only the API server and an injector it can call.
pub async fn portable_scenarios(client: &kube::Client) -> anyhow::Result<()> {
    namespace(client, "injected", &[("kubernetes-sidecar-injector", "enabled")]).await?;
    wait_for_webhook(client, "injected").await?;
    Box::pin(core_scenarios(client)).await?;
    webhook_down(client).await?;
    pod_security(client).await?;
    configmap_catalog(client).await?;
    Ok(())
}

/// A Deployment through the controllers, unlabelled and excluded namespaces, several sidecars of
/// each kind, an unknown sidecar, and a dry run.
async fn core_scenarios(client: &kube::Client) -> anyhow::Result<()> {
    // A Deployment's pods, made by the real controllers, carry the sidecar and the env.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "injected");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "echo"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "echo"}}, "template": {
            "metadata": {"labels": {"app": "echo"}, "annotations": {INJECT: "haystack-agent", "sidecar-injector.expedia.com/api-key": "k-1"}},
            "spec": {"containers": [{"name": "echo", "image": "hashicorp/http-echo"}]}}}
    }))?;
    deployments.create(&PostParams::default(), &deployment).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "injected");
    let started = Instant::now();
    let made = loop {
        let list = pods.list(&ListParams::default().labels("app=echo")).await?;
        if list.items.len() == 2 {
            break list.items;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the controllers made {} pods", list.items.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for p in &made {
        assert_eq!(names(p), vec!["echo", "haystack-agent"], "stored pod {:?}", p.metadata.name);
        let sidecar = &p.spec.as_ref().unwrap().containers[1];
        let env: Vec<(String, Option<String>)> =
            sidecar.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone())).collect();
        assert_eq!(env, vec![("api-key".to_owned(), Some("k-1".to_owned()))]);
    }

    // Unlabelled namespace: untouched. kube-system: untouched even when labelled.
    namespace(client, "plain", &[]).await?;
    let stored = Api::<Pod>::namespaced(client.clone(), "plain")
        .create(&PostParams::default(), &pod("p", json!({INJECT: "haystack-agent"}))?)
        .await?;
    assert_eq!(names(&stored), vec!["app"]);
    namespace(client, "kube-system", &[("kubernetes-sidecar-injector", "enabled")]).await?;
    let stored = Api::<Pod>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &pod("p", json!({INJECT: "haystack-agent"}))?)
        .await?;
    assert_eq!(names(&stored), vec!["app"]);

    // Two sidecars, an init-container sidecar and a native sidecar.
    let stored =
        pods.create(&PostParams::default(), &pod("many", json!({INJECT: "logger, proxy, haystack-agent"}))?).await?;
    assert_eq!(names(&stored), vec!["app", "logger", "haystack-agent"]);
    let init = stored.spec.as_ref().unwrap().init_containers.clone().unwrap_or_default();
    let init: Vec<(String, Option<String>)> = init.iter().map(|c| (c.name.clone(), c.restart_policy.clone())).collect();
    assert_eq!(init, vec![("proxy".to_owned(), Some("Always".to_owned())), ("logger-init".to_owned(), None)]);

    // Unknown sidecar: the create is rejected and the user sees why.
    let err = pods.create(&PostParams::default(), &pod("typo", json!({INJECT: "haystak-agent"}))?).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("sidecar `haystak-agent` is not in the catalog (known: haystack-agent, logger, proxy, restricted-agent) nor a ConfigMap with a sidecars catalog in namespace `injected`"),
        "{message}"
    );

    // Env from annotations: a loader variable is refused, naming the rule; an api-key arrives.
    let hook = json!({INJECT: "logger", "sidecar-injector.expedia.com/LD_PRELOAD": "/tmp/evil.so"});
    let err = pods.create(&PostParams::default(), &pod("preload", hook)?).await.unwrap_err().to_string();
    assert!(
        err.contains("sidecar `logger` (container `logger-init`): annotation `sidecar-injector.expedia.com/LD_PRELOAD` may not set env var `LD_PRELOAD`: it matches `LD_*` of the built-in deny-list"),
        "{err}"
    );
    let keyed = json!({INJECT: "logger", "sidecar-injector.expedia.com/api-key": "6feab"});
    let stored = pods.create(&PostParams::default(), &pod("keyed", keyed)?).await?;
    let logger = stored.spec.as_ref().unwrap().containers.iter().find(|c| c.name == "logger").cloned().unwrap();
    let env: Vec<(String, Option<String>)> =
        logger.env.unwrap_or_default().into_iter().map(|e| (e.name, e.value)).collect();
    assert!(env.contains(&("api-key".to_owned(), Some("6feab".to_owned()))), "{env:?}");

    // Server-side dry run: the mutation is in the response, nothing is stored.
    let dry = pods
        .create(&PostParams { dry_run: true, ..PostParams::default() }, &pod("dry", json!({INJECT: "logger"}))?)
        .await?;
    assert_eq!(names(&dry), vec!["app", "logger"]);
    assert!(pods.get_opt("dry").await?.is_none(), "a dry run stores nothing");

    Ok(())
}

/// A CA and leaves it signs, the way cert-manager rotates a webhook's serving certificate (same CA,
/// so the registered caBundle stays valid).
pub struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA.
    pub fn new() -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key)?.pem();
        Ok(Self { pem, issuer: rcgen::Issuer::new(params, key) })
    }

    fn leaf(&self) -> anyhow::Result<(String, String)> {
        self.leaf_for(&["127.0.0.1"])
    }

    /// A serving certificate for `names` (DNS names or IP addresses) and its key, both PEM.
    pub fn leaf_for(&self, names: &[&str]) -> anyhow::Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let cert = rcgen::CertificateParams::new(names)?.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The CA certificate, PEM (a webhook's `caBundle`, base64-encoded).
    #[must_use]
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

/// Lays out a Secret volume as kubelet does (`tls.crt -> ..data/tls.crt`, `..data -> ..<n>`).
fn secret_volume(dir: &std::path::Path, generation: u32, (cert, key): &(String, String)) -> anyhow::Result<()> {
    let ts = dir.join(format!("..gen_{generation}"));
    std::fs::create_dir_all(&ts)?;
    std::fs::write(ts.join("tls.crt"), cert)?;
    std::fs::write(ts.join("tls.key"), key)?;
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(ts.file_name().unwrap_or_default(), &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for name in ["tls.crt", "tls.key"] {
        if std::fs::symlink_metadata(dir.join(name)).is_err() {
            std::os::unix::fs::symlink(std::path::Path::new("..data").join(name), dir.join(name))?;
        }
    }
    Ok(())
}

/// The serving certificate rotated (kubelet-style symlink swap) while pods are being created: no
/// create fails, every pod is injected, and the new certificate is served afterwards.
pub async fn certificate_rotation(client: &kube::Client) -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let (first, second) = (ca.leaf()?, ca.leaf()?);
    let dir = tempfile::tempdir()?;
    secret_volume(dir.path(), 1, &first)?;
    let mut config = catalog_config(dir.path())?;
    config.server = admission_kit::app::ServeSettings::local();
    config.server.tls_cert_file = Some(dir.path().join("tls.crt"));
    config.server.tls_key_file = Some(dir.path().join("tls.key"));
    config.server.cert_reload_interval = Duration::from_millis(100);
    config.server.namespace_cache = admission_kit::app::NamespaceCacheMode::Always;
    config.catalog_paths.clear();
    config.namespace_catalogs = false;
    "rotation-test".clone_into(&mut config.namespace_label_key);
    "rotation.integration.example.com".clone_into(&mut config.webhook_name);
    let rotating = start_injector_with(client, &config, "rotation", Some(&ca.pem)).await?;
    namespace(client, "rotation", &[("rotation-test", "enabled")]).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "rotation");
    let started = Instant::now();
    loop {
        let dry = PostParams { dry_run: true, ..PostParams::default() };
        if names(&pods.create(&dry, &pod("probe", json!({INJECT: "logger"}))?).await?).len() == 2 {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the rotation webhook never took effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let creates = (0..60).map(|i| {
        let pods = pods.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20 * i)).await;
            pods.create(&PostParams::default(), &pod(&format!("r-{i}"), json!({INJECT: "logger"}))?)
                .await
                .map_err(anyhow::Error::from)
        }
    });
    let rotate = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        secret_volume(dir.path(), 2, &second)
    };
    let (results, rotated) = tokio::join!(futures::future::join_all(creates), rotate);
    rotated?;
    for (i, result) in results.into_iter().enumerate() {
        let stored = result.map_err(|e| anyhow::anyhow!("create r-{i} failed during rotation: {e}"))?;
        assert_eq!(names(&stored), vec!["app", "logger"], "r-{i}");
    }
    let served = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", rotating.server.webhook_addr().port())])
        .stdin(std::process::Stdio::null())
        .output()?;
    let served = String::from_utf8_lossy(&served.stdout).into_owned();
    let second_body: String = second.0.lines().filter(|l| !l.starts_with("-----")).collect();
    let served_body: String = served
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|s| s.split("-----END CERTIFICATE-----").next())
        .unwrap_or_default()
        .lines()
        .collect();
    assert_eq!(served_body, second_body, "new handshakes present the rotated certificate");
    Ok(())
}

/// A `ConfigMap` catalog in the pod's own namespace (the 2022 generation), read from the watch
/// cache: created after the injector started, then updated; each next pod gets what it says.
async fn configmap_catalog(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "injected");
    let catalog = |image: &str| -> anyhow::Result<ConfigMap> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": "team-agent"},
            "data": {"sidecars.yaml": format!("- name: team-agent\n  containers: [{{name: team-agent, image: {image}}}]\n")},
        }))?)
    };
    config_maps.create(&PostParams::default(), &catalog("team:1")?).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "injected");
    let image_of = |pod: &Pod| {
        pod.spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == "team-agent"))
            .and_then(|c| c.image.clone())
    };
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    for expected in ["team:1", "team:2"] {
        if expected == "team:2" {
            let mut updated = config_maps.get("team-agent").await?;
            updated.data = catalog("team:2")?.data;
            config_maps.replace("team-agent", &PostParams::default(), &updated).await?;
        }
        let started = Instant::now();
        loop {
            let result = pods.create(&dry, &pod("cm", json!({INJECT: "team-agent"}))?).await;
            if let Ok(created) = &result
                && image_of(created).as_deref() == Some(expected)
            {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "ConfigMap catalog {expected} never served: {result:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Counts the injector's answers by result, from its own metrics.
async fn answers(injector: &Injector, result: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(format!("http://{}/metrics", injector.server.admin_addr())).await?.text().await?;
    let prefix = format!(
        "admission_kit_requests_total{{webhook=\"sidecar-injector.expedia.com\",operation=\"CREATE\",result=\"{result}\"}} "
    );
    Ok(text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.trim().parse().ok()).unwrap_or(0))
}

/// A second mutating webhook, called after the injector, changes the pod: the API server would call
/// the injector again (`reinvocationPolicy: IfNeeded`), but its match condition leaves the injected
/// pod out, and the pod gets one copy of each sidecar.
pub async fn reinvocation(client: &kube::Client, injector: &Injector) -> anyhow::Result<()> {
    // The second webhook is the `default-labels` example, as a user would run it; configurations
    // are called in name order, and the injector's sorts first.
    let _labeler = serve_and_register(client, &[default_labels::pipeline()], "zz-default-labels").await?;
    namespace(client, "reinvoke", &[("kubernetes-sidecar-injector", "enabled"), ("default-labels", "enabled")]).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "reinvoke");
    let started = Instant::now();
    let (patched_before, allowed_before) = (answers(injector, "patched").await?, answers(injector, "allowed").await?);
    let stored = loop {
        let name = format!("p{}", started.elapsed().as_millis());
        let stored =
            pods.create(&PostParams::default(), &pod(&name, json!({INJECT: "haystack-agent, logger"}))?).await?;
        if stored.metadata.labels.as_ref().and_then(|l| l.get("team")).is_some_and(|t| t == "unassigned") {
            break stored;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the second webhook never took effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(names(&stored), vec!["app", "haystack-agent", "logger"], "exactly one copy of each sidecar");
    let init: Vec<String> =
        stored.spec.as_ref().unwrap().init_containers.iter().flatten().map(|c| c.name.clone()).collect();
    assert_eq!(init, vec!["logger-init"]);
    assert!(answers(injector, "patched").await? > patched_before);
    // The API server reinvokes an `IfNeeded` webhook after a later one changed the pod, but the pod
    // then arrives with the status annotation, which the rendered `matchConditions` exclude: the
    // injector is called once per pod (before the exclusion, every pod here was answered twice).
    assert_eq!(
        answers(injector, "allowed").await?,
        allowed_before,
        "the injector was called again for a pod it had injected"
    );
    Ok(())
}

/// The webhook unreachable: `failurePolicy: Fail` rejects with the API server's message, `Ignore`
/// admits the pod unmutated. With `Fail` and nothing answering, a pod the API server does not send
/// (unlabelled namespace, kube-system even when labelled, no `inject` annotation) is still created:
/// the rendered `namespaceSelector` and `matchConditions` did the filtering, not the webhook.
async fn webhook_down(client: &kube::Client) -> anyhow::Result<()> {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("https://127.0.0.1:{dead}");
    for (policy, label) in [(FailurePolicy::Fail, "down-fail"), (FailurePolicy::Ignore, "down-ignore")] {
        let mut config = Config::default();
        config.namespace_label_key = label.to_owned();
        config.failure_policy = policy;
        config.webhook_name = format!("{label}.integration.example.com");
        let store = std::sync::Arc::new(sidecar_injector::catalog::CatalogStore::fixed(
            sidecar_injector::catalog::Catalog::default(),
        ));
        let pipeline = sidecar_injector::pipeline(&config, store, None)?;
        register(client, &[pipeline], label, &url, b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").await?;
        namespace(client, label, &[(label, "enabled")]).await?;
    }
    let fail: Api<Pod> = Api::namespaced(client.clone(), "down-fail");
    let started = Instant::now();
    let message = loop {
        if let Err(e) = fail.create(&PostParams::default(), &pod("p", json!({INJECT: "haystack-agent"}))?).await {
            break e.to_string();
        }
        fail.delete("p", &kube::api::DeleteParams::default()).await?;
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the Fail webhook never took effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        message.contains("failed calling webhook") && message.contains("down-fail.integration.example.com"),
        "{message}"
    );
    // What the API server filters out never reaches the dead webhook, so it is created.
    let created = |ns: &str, name: &str, annotations: Value| {
        let (client, ns, name) = (client.clone(), ns.to_owned(), name.to_owned());
        async move {
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            let stored = pods
                .create(&PostParams::default(), &pod(&name, annotations)?)
                .await
                .with_context(|| format!("pod {ns}/{name} was sent to the dead webhook"))?;
            pods.delete(&name, &kube::api::DeleteParams::default()).await?;
            anyhow::Ok(stored)
        }
    };
    created("down-fail", "no-annotation", json!({"team": "x"})).await?;
    namespace(client, "down-unlabelled", &[]).await?;
    created("down-unlabelled", "annotated", json!({INJECT: "haystack-agent"})).await?;
    namespace(client, "kube-system", &[("down-fail", "enabled")]).await?;
    created("kube-system", "down-annotated", json!({INJECT: "haystack-agent"})).await?;
    let ignore: Api<Pod> = Api::namespaced(client.clone(), "down-ignore");
    let stored = ignore.create(&PostParams::default(), &pod("p", json!({INJECT: "haystack-agent"}))?).await?;
    assert_eq!(names(&stored), vec!["app"], "admitted unmutated");
    Ok(())
}

/// A namespace enforcing Pod Security `restricted`: a sidecar meeting it is admitted, one that does
/// not is rejected by the API server with the Pod Security message.
async fn pod_security(client: &kube::Client) -> anyhow::Result<()> {
    namespace(
        client,
        "restricted",
        &[("kubernetes-sidecar-injector", "enabled"), ("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "restricted");
    let compliant = |name: &str, inject: &str| -> anyhow::Result<Pod> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {INJECT: inject}},
            "spec": {"containers": [restricted("app", "app:1")]},
        }))?)
    };
    let stored = pods.create(&PostParams::default(), &compliant("ok", "restricted-agent")?).await?;
    assert_eq!(names(&stored), vec!["app", "restricted-agent"]);
    let err = pods.create(&PostParams::default(), &compliant("bad", "haystack-agent")?).await.unwrap_err().to_string();
    assert!(err.contains("violates PodSecurity \"restricted:latest\"") && err.contains("haystack-agent"), "{err}");
    Ok(())
}

/// A catalog file added to the watched directory: the next pod gets the new sidecar.
pub async fn hot_reload(client: &kube::Client, catalog_dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::write(
        catalog_dir.join("late.yaml"),
        "- name: late-sidecar\n  containers: [{name: late, image: late:1}]\n",
    )?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "injected");
    let started = Instant::now();
    loop {
        let dry = PostParams { dry_run: true, ..PostParams::default() };
        match pods.create(&dry, &pod("late", json!({INJECT: "late-sidecar"}))?).await {
            Ok(created) => {
                assert_eq!(names(&created), vec!["app", "late"]);
                return Ok(());
            }
            Err(e) => {
                anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "the new catalog never took effect: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
