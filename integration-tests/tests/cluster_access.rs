//! The fault test "cluster access lost": the injector loses the API server. Its watch caches
//! (namespace labels, `ConfigMap` catalogs) keep their contents and the webhook keeps answering from
//! them; `/readyz` turns 503, naming the cache, since when and the error, once a cache has been out
//! of contact for longer than `cacheMaxStaleness` (2 s here); the metrics say so; when the API
//! server is back the caches resync by themselves and changes made after that are seen.
//!
//! A control plane of its own (it is paused, killed and restarted). The API server is lost three
//! ways: the injector's permissions revoked (403 to its lists), the API server frozen with SIGSTOP
//! (connections open, no answer), and killed (connections refused), then restarted on the same port
//! with the same etcd. Reviews go straight to the webhook over TLS, as the API server would send
//! them; nothing here needs the API server while it is gone.

use std::time::{Duration, Instant};

use admission_kit::app::{MaxStaleness, NamespaceCacheMode, ServeSettings};
use admission_kit::reexports::json_patch;
use admission_kit::reexports::kube::{
    self, Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use admission_kit::server::RunningServer;
use anyhow::Context as _;
use base64::Engine as _;
use integration_tests::scenarios::{INJECT, namespace};
use integration_tests::webhook::{client, client_from_kubeconfig, serve_injector};
use integration_tests::{Binaries, ControlPlane};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::{Value, json};
use sidecar_injector::config::Config;

/// The staleness bound the injector runs with.
const STALENESS: Duration = Duration::from_secs(2);
/// Generous: the contact check runs every 10 s and allows 10 s; the relist after a failure waits up
/// to 30 s of backoff; a restarted API server takes tens of seconds on 2 cores.
const DEADLINE: Duration = Duration::from_secs(150);
const OPT_IN: (&str, &str) = ("kubernetes-sidecar-injector", "enabled");
const ACCOUNT_NS: &str = "injector-system";
const ACCOUNT: &str = "sidecar-injector";
const BINDING: &str = "sidecar-injector-cluster-access";

fn catalog(image: &str) -> anyhow::Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "team-agent"},
        "data": {"sidecars.yaml": format!("- name: team-agent\n  containers: [{{name: team-agent, image: {image}}}]\n")},
    }))?)
}

/// The injector's own identity, with what the chart grants it: read namespaces and `ConfigMaps`.
async fn injector_client(admin: &kube::Client, plane: &ControlPlane) -> anyhow::Result<kube::Client> {
    namespace(admin, ACCOUNT_NS, &[]).await?;
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": ACCOUNT}}))?;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ACCOUNT_NS);
    accounts.create(&PostParams::default(), &account).await?;
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": BINDING},
        "rules": [{"apiGroups": [""], "resources": ["namespaces", "configmaps"], "verbs": ["get", "list", "watch"]}],
    }))?;
    Api::<ClusterRole>::all(admin.clone()).create(&PostParams::default(), &role).await?;
    grant(admin).await?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() }),
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request(ACCOUNT, &PostParams::default(), &request)
        .await?
        .status
        .context("a token request answers with a token")?
        .token
        .context("a token request answers with a token")?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&plane.ca_pem);
    let path = plane.dir().join("injector.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority-data: {b64}\nusers:\n- name: injector\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: injector\ncurrent-context: local\n",
            plane.server
        ),
    )?;
    client_from_kubeconfig(&path).await
}

async fn grant(admin: &kube::Client) -> anyhow::Result<()> {
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": BINDING},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": BINDING},
        "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": ACCOUNT_NS}],
    }))?;
    Api::<ClusterRoleBinding>::all(admin.clone()).create(&PostParams::default(), &binding).await?;
    Ok(())
}

/// The webhook, called directly over TLS (trusting only its generated CA).
struct Webhook {
    https: reqwest::Client,
    url: String,
    admin: String,
}

impl Webhook {
    fn new(server: &RunningServer) -> anyhow::Result<Self> {
        let ca = reqwest::Certificate::from_pem(server.ca_pem().context("a generated certificate")?.as_bytes())?;
        Ok(Self {
            https: reqwest::Client::builder().add_root_certificate(ca).timeout(Duration::from_secs(10)).build()?,
            url: format!("https://127.0.0.1:{}/mutate", server.webhook_addr().port()),
            admin: format!("http://{}", server.admin_addr()),
        })
    }

    /// Reviews the creation of a pod asking for `team-agent` in `ns`; returns the image of the
    /// injected `team-agent` container (`None`: admitted unchanged).
    async fn team_agent_image(&self, ns: &str) -> anyhow::Result<Option<String>> {
        let pod = json!({
            "metadata": {"name": "p", "namespace": ns, "annotations": {INJECT: "team-agent"}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        });
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": format!("cluster-access-{ns}"),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": ns, "operation": "CREATE", "userInfo": {}, "object": pod,
            },
        });
        let answer: Value = self.https.post(&self.url).json(&review).send().await?.error_for_status()?.json().await?;
        let response = &answer["response"];
        anyhow::ensure!(
            response["uid"] == format!("cluster-access-{ns}") && response["allowed"] == true,
            "namespace {ns}: {answer}"
        );
        let Some(patch) = response["patch"].as_str() else {
            return Ok(None);
        };
        let patch: json_patch::Patch =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(patch)?)?;
        let mut patched = pod;
        json_patch::patch(&mut patched, &patch)?;
        let containers = patched["spec"]["containers"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = containers.iter().filter_map(|c| c["name"].as_str()).collect();
        anyhow::ensure!(names == ["app", "team-agent"], "namespace {ns}: containers {names:?} after {patch:?}");
        Ok(containers[1]["image"].as_str().map(str::to_owned))
    }

    /// What the webhook serves now: the `team-agent` image in the opted-in namespace `access`, and
    /// in `quiet` (not opted in, until the test labels it).
    async fn serving(&self) -> anyhow::Result<(Option<String>, Option<String>)> {
        Ok((self.team_agent_image("access").await?, self.team_agent_image("quiet").await?))
    }

    async fn readyz(&self) -> anyhow::Result<(u16, String)> {
        let response = self.https.get(format!("{}/readyz", self.admin)).send().await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// The value of metric `name{cache="<cache>"}`.
    async fn cache_metric(&self, name: &str, cache: &str) -> anyhow::Result<String> {
        let text = self.https.get(format!("{}/metrics", self.admin)).send().await?.text().await?;
        let prefix = format!("{name}{{cache=\"{cache}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|value| value.trim().to_owned())
            .with_context(|| format!("no {prefix}in\n{text}"))
    }

    /// `admission_kit_cache_healthy` of the namespace and `ConfigMap` caches.
    async fn healthy(&self) -> anyhow::Result<[String; 2]> {
        Ok([
            self.cache_metric("admission_kit_cache_healthy", "namespaces").await?,
            self.cache_metric("admission_kit_cache_healthy", "configmaps").await?,
        ])
    }

    /// Polls `/readyz` until `wanted` holds; returns that answer.
    async fn wait_readyz(&self, what: &str, wanted: impl Fn(u16, &str) -> bool) -> anyhow::Result<(u16, String)> {
        let started = Instant::now();
        let mut seen = Vec::new();
        loop {
            let (status, body) = self.readyz().await?;
            if wanted(status, &body) {
                eprintln!("cluster_access: {what} after {:?}: {status} {body}", started.elapsed());
                return Ok((status, body));
            }
            if seen.last() != Some(&(status, body.clone())) {
                seen.push((status, body));
            }
            anyhow::ensure!(started.elapsed() < DEADLINE, "{what}: not within {DEADLINE:?}; /readyz said {seen:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for 503 naming both caches as out of contact past the bound, with `error` in the body.
    async fn wait_unready(&self, what: &str, error: &str) -> anyhow::Result<String> {
        let (_, body) = self
            .wait_readyz(what, |status, body| {
                status == 503
                    && ["namespaces", "configmaps"].iter().all(|cache| {
                        body.contains(&format!("cache `{cache}` out of contact with the API server since "))
                    })
                    && body.contains(error)
            })
            .await?;
        assert!(body.starts_with("not ready: "), "{body}");
        assert!(body.contains("longer than the 2s allowed (cache max staleness)"), "{body}");
        Ok(body)
    }

    async fn wait_ready(&self, what: &str) -> anyhow::Result<()> {
        self.wait_readyz(what, |status, body| status == 200 && body == "ok\n").await?;
        assert_eq!(self.healthy().await?, ["1", "1"], "{what}: the metrics say healthy");
        Ok(())
    }

    /// While the API server is out of reach: the answers come from the caches as they were, and
    /// the metrics show both caches unhealthy with errors counted.
    async fn serves_from_the_caches(&self, what: &str) -> anyhow::Result<()> {
        assert_eq!(self.serving().await?, (Some("team:1".to_owned()), None), "{what}: served from the caches");
        assert_eq!(self.healthy().await?, ["0", "0"], "{what}: the metrics say unhealthy");
        for cache in ["namespaces", "configmaps"] {
            let errors: u64 = self.cache_metric("admission_kit_cache_watch_errors_total", cache).await?.parse()?;
            assert!(errors >= 1, "{what}: {cache} counted no error");
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_continues_from_the_caches_while_the_api_server_is_lost() -> anyhow::Result<()> {
    let mut plane = ControlPlane::start(&Binaries::locate()?)?;
    let admin = client(&plane).await?;
    integration_tests::control_plane::check_kubernetes_version(&admin).await?;
    namespace(&admin, "access", &[OPT_IN]).await?;
    namespace(&admin, "quiet", &[]).await?;
    for (ns, image) in [("access", "team:1"), ("quiet", "quiet:1")] {
        Api::<ConfigMap>::namespaced(admin.clone(), ns).create(&PostParams::default(), &catalog(image)?).await?;
    }
    let injector = injector_client(&admin, &plane).await?;
    let mut config = Config::default();
    config.namespace_catalogs = true;
    config.server = ServeSettings::local();
    config.server.cache_max_staleness = MaxStaleness(Some(STALENESS));
    config.server.namespace_cache = NamespaceCacheMode::Always;
    let server = serve_injector(&injector, &config).await?;
    let webhook = Webhook::new(&server)?;

    // In contact: the opted-in namespace gets the ConfigMap's sidecar, the other one nothing.
    assert_eq!(webhook.serving().await?, (Some("team:1".to_owned()), None));
    assert_eq!(webhook.readyz().await?, (200, "ok\n".to_owned()));
    assert_eq!(webhook.healthy().await?, ["1", "1"]);

    // 1. Permission revoked: the watches already open go on, but the contact check's list is refused.
    Api::<ClusterRoleBinding>::all(admin.clone()).delete(BINDING, &DeleteParams::default()).await?;
    webhook.wait_unready("unready with the permission revoked", "forbidden").await?;
    webhook.serves_from_the_caches("permission revoked").await?;
    grant(&admin).await?;
    webhook.wait_ready("ready with the permission granted again").await?;

    // 2. The API server frozen (SIGSTOP): connections stay open, nothing answers.
    plane.pause_api_server()?;
    let body = webhook.wait_unready("unready with the API server frozen", "no answer within").await?;
    assert!(body.contains("contact check (list) got no answer within 10s"), "{body}");
    webhook.serves_from_the_caches("API server frozen").await?;
    plane.resume_api_server()?;
    webhook.wait_ready("ready with the API server running again").await?;

    // 3. The API server gone (killed): connections refused; then started again, same port and etcd.
    plane.kill_api_server()?;
    webhook.wait_unready("unready with the API server killed", "Connection refused").await?;
    webhook.serves_from_the_caches("API server killed").await?;
    tokio::task::block_in_place(|| plane.restart_api_server())?;
    webhook.wait_ready("ready with the API server restarted").await?;

    // Changes made after the recovery are seen: the watches resynced and are live.
    let patch = json!({"metadata": {"labels": {OPT_IN.0: OPT_IN.1}}});
    Api::<Namespace>::all(admin.clone()).patch("quiet", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), "access");
    let mut updated = configmaps.get("team-agent").await?;
    updated.data = catalog("team:2")?.data;
    configmaps.replace("team-agent", &PostParams::default(), &updated).await?;
    let started = Instant::now();
    loop {
        let serving = webhook.serving().await?;
        if serving == (Some("team:2".to_owned()), Some("quiet:1".to_owned())) {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "changes after recovery not seen: {serving:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown_and_wait().await?;
    Ok(())
}
