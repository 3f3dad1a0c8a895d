//! `deploy/deploy.sh` run against a real kube-apiserver, as a person would run it: the harness's
//! kubectl, the admin kubeconfig, and the injector binary of this workspace (to render the webhook
//! configuration). There are no nodes, so the injector's pods never run; every assertion reads what
//! the API server stored, checks it with independent tools (openssl, and rustls through reqwest),
//! and runs the injector in-process with the deployed configuration, certificate and
//! `ServiceAccount` to prove that they work together:
//!
//! - every object exists in the chosen namespace, the Secret's serving certificate verifies against
//!   the webhook's `caBundle` and covers the Service's DNS names;
//! - the Deployment's pods, made by the real controllers, are admitted in the namespace that
//!   enforces Pod Security `restricted` (created by the script's own manifest);
//! - the injector, configured by `deploy/config.yaml`, serving the Secret's certificate and acting
//!   as the `ServiceAccount`, becomes ready (its RBAC is enough) and injects;
//! - a second run changes nothing; `--rotate` makes a new CA and keeps the old one in the
//!   `caBundle` until the next run; `--dry-run` prints manifests the API server accepts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use admission_kit::reexports::kube::{
    self, Api, Resource, ResourceExt as _,
    api::{ListParams, PostParams},
};
use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use integration_tests::webhook::{client, serve_injector};
use integration_tests::{Binaries, ControlPlane};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::{Value, json};
use sidecar_injector::config::Config;

/// Not the script's default, so that every namespace reference in the manifests is exercised.
const NS: &str = "webhooks";
const NAME: &str = "sidecar-injector";
const SECRET: &str = "sidecar-injector-tls";
const SERVICE_HOST: &str = "sidecar-injector.webhooks.svc";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_owned).unwrap_or_default()
}

/// Builds the `sidecar-injector` binary of this workspace and returns its path (cargo's JSON
/// messages name the executable, wherever the target directory is).
fn build_injector() -> anyhow::Result<PathBuf> {
    let out = integration_tests::images::without_cargo_test_env(&mut Command::new(env!("CARGO")))
        .current_dir(repo_root())
        .args(["build", "--locked", "-p", "sidecar-injector", "--bin", "sidecar-injector"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run cargo build -p sidecar-injector")?;
    ensure!(out.status.success(), "cargo build -p sidecar-injector failed ({})", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "sidecar-injector")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo build named no sidecar-injector executable")
}

/// What `deploy.sh` needs: the cluster, kubectl and the injector binary.
struct Deployer<'a> {
    plane: &'a ControlPlane,
    kubectl: PathBuf,
    injector: PathBuf,
}

impl Deployer<'_> {
    /// Runs `deploy/deploy.sh --namespace webhooks <args>`; fails with its output if it fails.
    fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let script = repo_root().join("deploy/deploy.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(["--namespace", NS])
            .args(args)
            .env("KUBECONFIG", &self.plane.kubeconfig)
            .env("KUBECTL", &self.kubectl)
            .env("SIDECAR_INJECTOR", &self.injector)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("failed to run {}", script.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("---- deploy.sh {args:?} ----\n{stderr}");
        ensure!(
            out.status.success(),
            "deploy.sh {args:?} failed ({}):\n{stderr}\nstdout:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        // The namespace warns on Pod Security `restricted`: kubectl would print the violation.
        ensure!(!stderr.contains("PodSecurity"), "deploy.sh {args:?} met a Pod Security warning:\n{stderr}");
        Ok(out)
    }

    /// `kubectl <args>` with `stdin`, as the admin.
    fn kubectl(&self, args: &[&str], stdin: &[u8]) -> anyhow::Result<String> {
        use std::io::Write as _;
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.plane.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("failed to start kubectl")?;
        child.stdin.take().context("kubectl's stdin")?.write_all(stdin)?;
        let out = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.success(), "kubectl {args:?} failed ({}): {stderr}", out.status);
        Ok(format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// Runs openssl; fails with its output unless it exits 0.
fn openssl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("openssl").args(args).output().context("failed to run openssl (is it installed?)")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "openssl {args:?} failed ({}): {text}", out.status);
    Ok(text)
}

/// The PEM certificates of a bundle, in order, normalised (no surrounding text).
fn pem_blocks(bundle: &str) -> Vec<String> {
    bundle
        .split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|rest| rest.split("-----END CERTIFICATE-----").next())
        .map(|body| format!("-----BEGIN CERTIFICATE-----{body}-----END CERTIFICATE-----\n"))
        .collect()
}

/// What a deployment left in the API server that the checks need.
#[derive(Debug)]
struct Deployed {
    ca_bundle: String,
    tls_crt: String,
    tls_key: String,
    ca_crt: String,
    /// Kind → `resourceVersion`, for the objects only the script writes.
    versions: BTreeMap<&'static str, String>,
    /// Kind → `generation`, for the objects whose status the controllers also write.
    generations: BTreeMap<&'static str, i64>,
}

fn version_of<K: Resource>(object: &K) -> anyhow::Result<String> {
    object.meta().resource_version.clone().context("a stored object has a resourceVersion")
}

async fn read_deployed(client: &kube::Client) -> anyhow::Result<Deployed> {
    let secret = Api::<Secret>::namespaced(client.clone(), NS).get(SECRET).await?;
    ensure!(secret.type_.as_deref() == Some("kubernetes.io/tls"), "Secret type {:?}", secret.type_);
    ensure!(
        !secret.annotations().contains_key("kubectl.kubernetes.io/last-applied-configuration"),
        "the private key must not be copied into a last-applied annotation (server-side apply)"
    );
    let data = secret.data.clone().unwrap_or_default();
    let key = |k: &str| -> anyhow::Result<String> {
        let bytes = data.get(k).with_context(|| format!("Secret {SECRET} has no {k}"))?;
        Ok(String::from_utf8(bytes.0.clone())?)
    };
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone()).get(NAME).await?;
    let hooks = webhooks.webhooks.clone().unwrap_or_default();
    ensure!(hooks.len() == 1, "one webhook, got {}", hooks.len());
    let bundle = hooks[0].client_config.ca_bundle.clone().context("the webhook has a caBundle")?;

    let (c, deployment, pdb) = (
        client.clone(),
        Api::<Deployment>::namespaced(client.clone(), NS).get(NAME).await?,
        Api::<PodDisruptionBudget>::namespaced(client.clone(), NS).get(NAME).await?,
    );
    let versions = BTreeMap::from([
        ("Namespace", version_of(&Api::<Namespace>::all(c.clone()).get(NS).await?)?),
        ("ServiceAccount", version_of(&Api::<ServiceAccount>::namespaced(c.clone(), NS).get(NAME).await?)?),
        ("ClusterRole", version_of(&Api::<ClusterRole>::all(c.clone()).get(NAME).await?)?),
        ("ClusterRoleBinding", version_of(&Api::<ClusterRoleBinding>::all(c.clone()).get(NAME).await?)?),
        ("ConfigMap", version_of(&Api::<ConfigMap>::namespaced(c.clone(), NS).get(NAME).await?)?),
        ("Service", version_of(&Api::<Service>::namespaced(c, NS).get(NAME).await?)?),
        ("Secret", version_of(&secret)?),
        ("MutatingWebhookConfiguration", version_of(&webhooks)?),
    ]);
    let generations = BTreeMap::from([
        ("Deployment", deployment.metadata.generation.context("a Deployment has a generation")?),
        ("PodDisruptionBudget", pdb.metadata.generation.context("a PodDisruptionBudget has a generation")?),
    ]);

    Ok(Deployed {
        ca_bundle: String::from_utf8(bundle.0)?,
        tls_crt: key("tls.crt")?,
        tls_key: key("tls.key")?,
        ca_crt: key("ca.crt")?,
        versions,
        generations,
    })
}

impl Deployed {
    /// The Secret's serving certificate verifies against the caBundle as a TLS server certificate
    /// and names every DNS name of the Service (checked with openssl).
    fn check_certificate(&self, dir: &Path) -> anyhow::Result<()> {
        let bundle = dir.join("bundle.pem");
        let cert = dir.join("tls.crt");
        std::fs::write(&bundle, &self.ca_bundle)?;
        std::fs::write(&cert, &self.tls_crt)?;
        let (bundle, cert) = (bundle.to_string_lossy().into_owned(), cert.to_string_lossy().into_owned());
        let verified = openssl(&["verify", "-CAfile", &bundle, "-purpose", "sslserver", &cert])?;
        ensure!(verified.contains(": OK"), "{verified}");
        for host in [NAME, "sidecar-injector.webhooks", SERVICE_HOST, "sidecar-injector.webhooks.svc.cluster.local"] {
            let answer = openssl(&["x509", "-in", &cert, "-noout", "-checkhost", host])?;
            ensure!(answer.contains("does match"), "the serving certificate does not cover {host}: {answer}");
        }
        ensure!(pem_blocks(&self.ca_bundle).contains(&pem_blocks(&self.ca_crt)[0]), "the caBundle holds ca.crt");
        Ok(())
    }
}

/// The objects the first run made, in the namespace asked for, as the manifests describe them.
async fn check_objects(client: &kube::Client) -> anyhow::Result<()> {
    let ns = Api::<Namespace>::all(client.clone()).get(NS).await?;
    assert_eq!(ns.labels().get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("restricted"));

    let role = Api::<ClusterRole>::all(client.clone()).get(NAME).await?;
    let rules = serde_json::to_value(role.rules.unwrap_or_default())?;
    assert_eq!(rules, json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}]));
    let binding = Api::<ClusterRoleBinding>::all(client.clone()).get(NAME).await?;
    let subjects = serde_json::to_value(binding.subjects.unwrap_or_default())?;
    assert_eq!(subjects, json!([{"kind": "ServiceAccount", "name": NAME, "namespace": NS}]));
    ensure!(
        Api::<ClusterRole>::all(client.clone()).get_opt("sidecar-injector-namespace-catalogs").await?.is_none(),
        "no ConfigMap access while namespaceCatalogs is off"
    );

    let config_map = Api::<ConfigMap>::namespaced(client.clone(), NS).get(NAME).await?;
    let data = config_map.data.unwrap_or_default();
    for key in ["config.yaml", "sidecars.yaml"] {
        let file = std::fs::read_to_string(repo_root().join("deploy").join(key))?;
        assert_eq!(data.get(key), Some(&file), "ConfigMap key {key} is deploy/{key}");
    }

    let service = Api::<Service>::namespaced(client.clone(), NS).get(NAME).await?;
    let ports = serde_json::to_value(service.spec.context("Service spec")?.ports)?;
    assert_eq!(ports[0]["port"], 443);
    assert_eq!(ports[0]["targetPort"], "webhook");

    let deployment = Api::<Deployment>::namespaced(client.clone(), NS).get(NAME).await?;
    let spec = deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let template = spec.template;
    let sum = Command::new("sha256sum").arg(repo_root().join("deploy/config.yaml")).output()?;
    let sum = String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap_or_default().to_owned();
    ensure!(sum.len() == 64, "sha256sum printed {sum:?}");
    let annotations = template.metadata.as_ref().and_then(|m| m.annotations.clone()).unwrap_or_default();
    assert_eq!(annotations.get("checksum/config"), Some(&sum), "the pods roll when config.yaml changes");
    let pod = template.spec.context("pod spec")?;
    assert_eq!(pod.service_account_name.as_deref(), Some(NAME));
    let grace = pod.termination_grace_period_seconds.context("terminationGracePeriodSeconds")?;
    ensure!(grace > 5 + 30, "terminationGracePeriodSeconds {grace} must exceed drainDelay + shutdownTimeout");
    let container = serde_json::to_value(&pod.containers[0])?;
    assert_eq!(container["args"], json!(["--config", "/etc/sidecar-injector/config/config.yaml"]));
    assert_eq!(container["livenessProbe"]["httpGet"], json!({"path": "/livez", "port": "admin", "scheme": "HTTP"}));
    assert_eq!(container["readinessProbe"]["httpGet"], json!({"path": "/readyz", "port": "admin", "scheme": "HTTP"}));

    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), NS).get(NAME).await?;
    assert_eq!(serde_json::to_value(pdb.spec.context("PDB spec")?.min_available)?, json!(1));

    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone()).get(NAME).await?;
    let hook = serde_json::to_value(&webhooks.webhooks.unwrap_or_default()[0])?;
    assert_eq!(hook["clientConfig"]["service"], json!({"namespace": NS, "name": NAME, "path": "/mutate", "port": 443}));
    assert_eq!(hook["name"], "sidecar-injector.expedia.com");
    assert_eq!(
        hook["namespaceSelector"]["matchExpressions"][0],
        json!({"key": "kubernetes-sidecar-injector", "operator": "In", "values": ["enabled"]})
    );
    assert_eq!(
        hook["namespaceSelector"]["matchExpressions"][1],
        json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-public", NS]}),
        "the injector's own namespace is never sent to it"
    );
    Ok(())
}

/// The Deployment's pods, made by the real `Deployment` and `ReplicaSet` controllers, pass Pod Security
/// `restricted` (enforced by the namespace): both are stored (they stay Pending: no nodes).
async fn check_pods_admitted(client: &kube::Client) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let selector = ListParams::default().labels("app.kubernetes.io/name=sidecar-injector");
    let started = Instant::now();
    loop {
        let made = pods.list(&selector).await?.items;
        if made.len() == 2 {
            for pod in &made {
                assert_eq!(pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()), Some(NAME));
            }
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(90) {
            let sets = Api::<ReplicaSet>::namespaced(client.clone(), NS).list(&selector).await?;
            let conditions: Vec<Value> = sets
                .items
                .iter()
                .map(|rs| serde_json::to_value(rs.status.as_ref().and_then(|s| s.conditions.clone())))
                .collect::<Result<_, _>>()?;
            bail!("the controllers made {} of 2 pods; ReplicaSet conditions: {conditions:?}", made.len());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A kube client that acts as the injector's `ServiceAccount` (a token from the `TokenRequest`
/// API, as kubelet would project it).
async fn service_account_client(deployer: &Deployer<'_>, dir: &Path) -> anyhow::Result<kube::Client> {
    let token = deployer.kubectl(&["create", "token", NAME, "--namespace", NS, "--duration", "10m"], b"")?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&deployer.plane.ca_pem);
    let path = dir.join("service-account.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority-data: {b64}\nusers:\n- name: sa\n  user:\n    token: {}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: sa\ncurrent-context: local\n",
            deployer.plane.server,
            token.trim()
        ),
    )?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// What the `ServiceAccount` may do, as the API server's authorizer decides it: list and watch
/// namespaces (the label cache), nothing on `Secrets` or `ConfigMaps` (`namespaceCatalogs` is off).
fn check_rbac(deployer: &Deployer<'_>) -> anyhow::Result<()> {
    let account = format!("--as=system:serviceaccount:{NS}:{NAME}");
    for (verb, resource, allowed) in [
        ("list", "namespaces", true),
        ("watch", "namespaces", true),
        ("get", "secrets", false),
        ("list", "configmaps", false),
        ("patch", "namespaces", false),
    ] {
        let out = Command::new(&deployer.kubectl)
            .args(["auth", "can-i", verb, resource, "--all-namespaces", &account])
            .env("KUBECONFIG", &deployer.plane.kubeconfig)
            .output()?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(
            answer == if allowed { "yes" } else { "no" },
            "can the injector {verb} {resource}? kubectl auth can-i says {answer:?} (expected allowed: {allowed})"
        );
    }
    Ok(())
}

/// Sends the webhook a pod asking for `haystack-agent` in `namespace`; says whether it was injected.
async fn injects(https: &reqwest::Client, url: &str, namespace: &str) -> anyhow::Result<bool> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("deploy-{namespace}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE", "userInfo": {},
            "object": {
                "metadata": {"name": "p", "namespace": namespace,
                             "annotations": {"sidecar-injector.expedia.com/inject": "haystack-agent"}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]},
            },
        },
    });
    let answer: Value = https
        .post(url)
        .json(&review)
        .send()
        .await
        .with_context(|| format!("a TLS client trusting only the caBundle could not call {url}"))?
        .error_for_status()?
        .json()
        .await?;
    let response = &answer["response"];
    ensure!(response["allowed"] == true, "namespace {namespace}: {answer}");
    let patch = match response["patch"].as_str() {
        Some(b64) => String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64)?)?,
        None => String::new(),
    };
    Ok(patch.contains("haystack-agent"))
}

async fn create_namespace(client: &kube::Client, name: &str, labels: &Value) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// The injector as the pods would run it — `deploy/config.yaml` with the catalog and the
/// certificate of the Secret (paths moved to this machine, addresses to loopback), watching
/// namespaces as its `ServiceAccount` — becomes ready, and answers a TLS client that trusts only
/// the caBundle and asks for the Service's DNS name. A pod in an opted-in namespace is injected, one
/// elsewhere is not, and a namespace opted in after the start is seen at once: the RBAC allows both
/// the list and the watch of the namespace cache.
async fn check_injector_runs(
    client: &kube::Client,
    deployer: &Deployer<'_>,
    stored: &Deployed,
    dir: &Path,
) -> anyhow::Result<()> {
    let opted_in = json!({"kubernetes-sidecar-injector": "enabled"});
    create_namespace(client, "demo", &opted_in).await?;
    create_namespace(client, "plain", &json!({})).await?;
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, &stored.tls_crt)?;
    std::fs::write(&key, &stored.tls_key)?;
    let deploy_dir = repo_root().join("deploy");
    let overrides = vec![
        ("catalogPaths".to_owned(), json!([deploy_dir.join("sidecars.yaml")])),
        ("server.tlsCertFile".to_owned(), json!(cert)),
        ("server.tlsKeyFile".to_owned(), json!(key)),
        ("server.webhookAddr".to_owned(), json!("127.0.0.1:0")),
        ("server.adminAddr".to_owned(), json!("127.0.0.1:0")),
        ("server.drainDelay".to_owned(), json!("0s")),
    ];
    let config = Config::load(Some(&deploy_dir.join("config.yaml")), &overrides)?;
    assert_eq!(config.server.namespace_cache, admission_kit::app::NamespaceCacheMode::Always);
    // The injector's own set-up, as its ServiceAccount: it becomes ready only once its caches
    // have synced with that account's permissions.
    let server = serve_injector(&service_account_client(deployer, dir).await?, &config)
        .await
        .context("the injector never became ready as its ServiceAccount: is the RBAC in deploy/rbac.yaml enough?")?;

    let mut https = reqwest::Client::builder().resolve(SERVICE_HOST, server.webhook_addr());
    for root in reqwest::Certificate::from_pem_bundle(stored.ca_bundle.as_bytes())? {
        https = https.add_root_certificate(root);
    }
    let https = https.build()?;
    let url = format!("https://{SERVICE_HOST}:{}/mutate", server.webhook_addr().port());
    ensure!(injects(&https, &url, "demo").await?, "a pod in an opted-in namespace was not injected");
    ensure!(!injects(&https, &url, "plain").await?, "a pod in a namespace not opted in was injected");

    create_namespace(client, "late", &opted_in).await?;
    let started = Instant::now();
    while !injects(&https, &url, "late").await? {
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "a namespace opted in after the start never reached the cache: can the ServiceAccount watch namespaces?"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown_and_wait().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_script_against_a_real_api_server() -> anyhow::Result<()> {
    let binaries = Binaries::locate()?;
    let kubectl = binaries.kubectl.clone().context(
        "no kubectl next to kube-apiserver; rebuild the cache with integration-tests/build-control-plane.sh",
    )?;
    let injector = build_injector()?;
    let plane = ControlPlane::start(&binaries)?;
    let client = client(&plane).await?;
    let deployer = Deployer { plane: &plane, kubectl, injector };
    let dir = tempfile::tempdir()?;

    // --dry-run prints manifests and changes nothing.
    let dry = deployer.run(&["--dry-run"])?;
    let printed = String::from_utf8(dry.stdout)?;
    for kind in ["Namespace", "ServiceAccount", "ClusterRole", "ConfigMap", "Service", "Deployment"] {
        ensure!(printed.contains(&format!("kind: {kind}\n")), "--dry-run printed no {kind}:\n{printed}");
    }
    ensure!(printed.contains("\"kind\": \"MutatingWebhookConfiguration\""), "--dry-run printed no webhook");
    ensure!(!printed.contains("PRIVATE KEY") && !printed.contains("namespace: sidecar-injector\n"), "{printed}");
    ensure!(Api::<Namespace>::all(client.clone()).get_opt(NS).await?.is_none(), "--dry-run created the namespace");

    // The first run.
    deployer.run(&[])?;
    check_objects(&client).await?;
    check_rbac(&deployer)?;
    let first = Box::pin(read_deployed(&client)).await?;
    first.check_certificate(dir.path())?;
    assert_eq!(pem_blocks(&first.ca_bundle).len(), 1, "a first deployment trusts one CA");
    check_pods_admitted(&client).await?;
    check_injector_runs(&client, &deployer, &first, dir.path()).await?;

    // What --dry-run prints is what the API server accepts (server-side dry run, no warnings).
    let accepted = deployer.kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=sidecar-injector-deploy",
            "--dry-run=server",
            "-f",
            "-",
        ],
        printed.as_bytes(),
    )?;
    ensure!(!accepted.contains("Warning"), "{accepted}");

    // A second run changes nothing: same certificate and CA, no write to any object.
    deployer.run(&[])?;
    let second = Box::pin(read_deployed(&client)).await?;
    assert_eq!((&second.ca_crt, &second.tls_crt, &second.ca_bundle), (&first.ca_crt, &first.tls_crt, &first.ca_bundle));
    assert_eq!(second.versions, first.versions, "resourceVersions after an idempotent run");
    assert_eq!(second.generations, first.generations, "generations after an idempotent run");

    // --rotate: a new CA and certificate; the caBundle trusts both CAs, so replicas still serving
    // the old certificate keep working until kubelet hands them the new Secret.
    deployer.run(&["--rotate"])?;
    let rotated = Box::pin(read_deployed(&client)).await?;
    ensure!(rotated.ca_crt != first.ca_crt && rotated.tls_crt != first.tls_crt, "--rotate made a new CA and cert");
    rotated.check_certificate(dir.path())?;
    assert_eq!(
        pem_blocks(&rotated.ca_bundle),
        vec![pem_blocks(&rotated.ca_crt)[0].clone(), pem_blocks(&first.ca_crt)[0].clone()]
    );
    let old = Deployed { tls_crt: first.tls_crt.clone(), ca_bundle: rotated.ca_bundle.clone(), ..first };
    old.check_certificate(dir.path()).context("the old serving certificate is still trusted during the rotation")?;
    assert_eq!(rotated.generations, second.generations, "a new certificate needs no rollout (hot reload)");

    // The next run keeps the new certificate and drops the old CA.
    deployer.run(&[])?;
    let settled = Box::pin(read_deployed(&client)).await?;
    assert_eq!((&settled.ca_crt, &settled.tls_crt), (&rotated.ca_crt, &rotated.tls_crt));
    assert_eq!(pem_blocks(&settled.ca_bundle), pem_blocks(&rotated.ca_crt));
    settled.check_certificate(dir.path())?;
    Ok(())
}
