//! `charts/sidecar-injector` installed into the real local control plane (`helm install --no-hooks`,
//! never `--wait`: there are no nodes, so the chart's own pods are created but never run).
//!
//! - User-provided certificates and `webhook.url`: the chart's own `MutatingWebhookConfiguration`
//!   sends pods to an injector running in this process with the chart's own configuration file and
//!   catalog (as rendered into its `ConfigMaps`); a Deployment's pods get the sidecar and the env,
//!   the opt-out labels work, and the chart's Deployment is admitted by a namespace enforcing Pod
//!   Security `restricted` (its pods are created, with no warning).
//!   Then the portable scenarios of `integration_tests::scenarios` run through it.
//! - Helm-generated certificates: `helm upgrade` keeps the CA (and the serving certificate while it
//!   is not due), renews the serving certificate under the same CA when due; a Helm 4 upgrade of a
//!   Helm 3 release keeps it too.
//! - Policy mode: with the policies `sidecar-injector policy` renders for the chart's configuration,
//!   the chart installs no Deployment, and a Deployment's pods get their sidecar and env from the
//!   API server alone; an unknown sidecar is refused with the webhook's message.

use std::path::Path;
use std::time::Duration;

use admission_kit::reexports::kube::{
    self, Api,
    api::{ListParams, PostParams},
};
use anyhow::Context as _;
use integration_tests::helm::{Helm, Rendered, chart_dir, verify_chain};
use integration_tests::scenarios::{RESTRICTED, eventually, forget_previous_run, names, namespace, portable_scenarios};
use integration_tests::webhook::{client, serve_injector};
use integration_tests::{Binaries, ControlPlane};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use serde_json::{Value, json};
use sidecar_injector::config::Config;

const SYSTEM: &str = "injector-system";
const INJECT: &str = "sidecar-injector.expedia.com/inject";

fn data(secret: &Secret, key: &str) -> anyhow::Result<String> {
    let bytes = secret.data.as_ref().and_then(|d| d.get(key)).with_context(|| format!("no {key} in the Secret"))?;
    Ok(String::from_utf8(bytes.0.clone())?)
}

async fn ca_bundle(client: &kube::Client, name: &str) -> anyhow::Result<String> {
    let config = Api::<MutatingWebhookConfiguration>::all(client.clone()).get(name).await?;
    let bundle = config.webhooks.as_ref().and_then(|w| w[0].client_config.ca_bundle.clone()).context("no caBundle")?;
    Ok(String::from_utf8(bundle.0)?)
}

fn app_pod(name: &str, annotations: &Value, labels: &Value) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))?)
}

/// A client of the admin kubeconfig that acts as `user` (impersonation), to run with that user's
/// permissions only.
async fn client_as(kubeconfig: &Path, user: &str) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?;
    config.auth_info.impersonate = Some(user.to_owned());
    Ok(kube::Client::try_from(config)?)
}

/// A CA and a serving certificate for 127.0.0.1, as a user would bring them.
fn user_certificates() -> anyhow::Result<(String, String, String)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = params.self_signed(&ca_key)?.pem();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &issuer)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chart_installs_into_a_real_api_server() -> anyhow::Result<()> {
    let binaries = Binaries::locate()?;
    let plane = ControlPlane::start(&binaries)?;
    let client = client(&plane).await?;
    integration_tests::control_plane::check_kubernetes_version(&client).await?;
    let helm4 = Helm::locate(4)?.kubeconfig(&plane.kubeconfig);
    let helm3 = Helm::locate(3)?.kubeconfig(&plane.kubeconfig);

    Box::pin(url_mode_injects_through_the_charts_webhook(&client, &helm4, &plane.kubeconfig)).await?;
    Box::pin(helm_generated_ca_survives_upgrades(&client, &helm3, &helm4)).await?;
    Box::pin(policy_mode_injects_with_no_injector_pod(&client, &helm4)).await?;
    Ok(())
}

/// `helm install … --set mode=policy --set-file policy=…` with the List that `sidecar-injector
/// policy` prints for the chart's own configuration and catalog: nothing that runs is installed,
/// and a Deployment's pods are injected by the API server.
async fn policy_mode_injects_with_no_injector_pod(client: &kube::Client, helm: &Helm) -> anyhow::Result<()> {
    const RELEASE_NS: &str = "policy-system";
    namespace(client, RELEASE_NS, &[]).await?;
    namespace(client, "policy-apps", &[("kubernetes-sidecar-injector", "enabled")]).await?;
    let dir = tempfile::tempdir()?;
    let values = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/values.yaml");
    let values = values.to_str().context("UTF-8 path")?;
    let mut config = helm.template("policy", RELEASE_NS, &["-f", values])?.injector_config(dir.path())?;
    // These values also read namespace ConfigMap catalogs, which a policy cannot: policy mode goes
    // without them (the chart renders the same file with injector.namespaceCatalogs=false).
    config.namespace_catalogs = false;
    let list = dir.path().join("policy.json");
    std::fs::write(&list, integration_tests::helm::policy_list(&config)?)?;
    let set_file = format!("policy={}", list.display());
    let chart = chart_dir();
    let args = ["install", "policy", chart.to_str().context("UTF-8 path")?, "--namespace", RELEASE_NS, "-f", values];
    let install = helm.run(args.iter().copied().chain(["--set", "mode=policy", "--set-file", &set_file]))?;
    let version = integration_tests::control_plane::check_kubernetes_version(client).await?;
    if version.split('.').nth(1).and_then(|m| m.parse::<u32>().ok()).is_some_and(|minor| minor < 36) {
        // An API server without the v1 policy API: the chart refuses, saying why.
        anyhow::ensure!(
            !install.ok && install.stderr.contains("Kubernetes 1.36 or later"),
            "policy mode on Kubernetes {version}: {}",
            install.stderr
        );
        eprintln!("chart: policy mode refused on Kubernetes {version}, as it must be");
        return Ok(());
    }
    install.success()?;

    let apps: Api<Pod> = Api::namespaced(client.clone(), "policy-apps");
    // The policies act once the API server's informers have them.
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe", "annotations": {INJECT: "haystack-agent"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))?;
    eventually("the policies to take effect", Duration::from_secs(30), || async {
        let created = apps.create(&PostParams { dry_run: true, ..PostParams::default() }, &probe).await?;
        Ok((created.spec.map_or(0, |s| s.containers.len()) == 2).then_some(()))
    })
    .await?;
    deployment_pods_are_injected(client, "policy-apps").await?;
    let installed = Api::<Deployment>::namespaced(client.clone(), RELEASE_NS).list(&ListParams::default()).await?;
    assert!(installed.items.is_empty(), "policy mode installs no Deployment");
    let running = Api::<Pod>::namespaced(client.clone(), RELEASE_NS).list(&ListParams::default()).await?;
    assert!(running.items.is_empty(), "no injector pod");

    let unknown: Pod = serde_json::from_value(json!({
        "metadata": {"name": "unknown", "annotations": {INJECT: "no-such-sidecar"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))?;
    // The refusal is a ValidatingAdmissionPolicy: the API server's informers may see it after the
    // mutating policies the probe above waited for.
    let error = eventually("an unknown sidecar to be refused", Duration::from_secs(30), || async {
        Ok(apps.create(&PostParams { dry_run: true, ..PostParams::default() }, &unknown).await.err())
    })
    .await?;
    assert!(error.to_string().contains("sidecar `no-such-sidecar` is not in the catalog"), "{error}");
    let refused = apps.create(&PostParams::default(), &unknown).await.err().context("an unknown sidecar is refused")?;
    assert!(refused.to_string().contains("sidecar `no-such-sidecar` is not in the catalog"), "{refused}");

    helm.run(["uninstall", "policy", "--namespace", RELEASE_NS])?.success()?;
    // Uninstalled, the policies are gone: a pod is created as it was sent (after the API server's
    // informers see the deletion).
    eventually("the policies to be gone", Duration::from_secs(30), || async {
        let created = apps.create(&PostParams { dry_run: true, ..PostParams::default() }, &probe).await?;
        Ok((created.spec.map_or(0, |s| s.containers.len()) == 1).then_some(()))
    })
    .await?;
    Ok(())
}

async fn url_mode_injects_through_the_charts_webhook(
    client: &kube::Client,
    helm: &Helm,
    plane_kubeconfig: &Path,
) -> anyhow::Result<()> {
    namespace(client, SYSTEM, &RESTRICTED).await?;
    namespace(client, "chart-apps", &[("kubernetes-sidecar-injector", "enabled")]).await?;
    namespace(
        client,
        "chart-opted-out",
        &[("kubernetes-sidecar-injector", "enabled"), ("sidecar-injector.expedia.com/disable-inject", "true")],
    )
    .await?;

    // The user's certificate, in the Secret the chart is told to use.
    let (ca_pem, cert_pem, key_pem) = user_certificates()?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "local-tls"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert_pem, "tls.key": key_pem},
    }))?;
    Api::<Secret>::namespaced(client.clone(), SYSTEM).create(&PostParams::default(), &secret).await?;
    let dir = tempfile::tempdir()?;
    let write = |name: &str, text: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let ca_file = write("ca.crt", &ca_pem)?;
    let values = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/values.yaml");

    // The injector runs here, with the configuration file and catalog the chart renders; only
    // the file locations and the addresses differ from the chart's pods.
    let common = [
        "--set",
        "tls.existingSecret=local-tls",
        "--set-file",
        &format!("tls.caBundle={}", ca_file.display()),
        "-f",
        values.to_str().context("UTF-8 path")?,
    ];
    let rendered: Rendered = helm.template("sidecar-injector", SYSTEM, &common)?;
    let rendered_config = rendered.one("ConfigMap", Some("sidecar-injector-config"))?["data"]["config.yaml"]
        .as_str()
        .context("config.yaml")?
        .to_owned();
    let catalog = rendered.one("ConfigMap", Some("sidecar-injector-catalog"))?["data"]["sidecars.yaml"]
        .as_str()
        .context("sidecars.yaml")?
        .to_owned();
    let mut config = Config::load(Some(&write("config.yaml", &rendered_config)?), &[])?;
    config.catalog_paths = vec![write("sidecars.yaml", &catalog)?];
    config.server.tls_cert_file = Some(write("tls.crt", &cert_pem)?);
    config.server.tls_key_file = Some(write("tls.key", &key_pem)?);
    // The port is chosen before the install (the webhook's URL names it); the injector starts
    // after it, because it runs as the chart's ServiceAccount, whose RBAC the chart creates.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    config.server.webhook_addr = format!("127.0.0.1:{port}").parse()?;
    config.server.admin_addr = "127.0.0.1:0".parse()?;
    config.server.drain_delay = std::time::Duration::ZERO;
    let url = format!("https://127.0.0.1:{port}");

    let mut install = vec!["install", "sidecar-injector"];
    let chart = chart_dir();
    install.extend([chart.to_str().context("UTF-8 path")?, "--namespace", SYSTEM, "--no-hooks"]);
    install.extend_from_slice(&common);
    let url_value = format!("webhook.url={url}");
    install.extend(["--set", &url_value]);
    let run = helm.run(&install)?.success()?;
    assert!(!run.stderr.contains("PodSecurity"), "the chart's pods meet Pod Security restricted:\n{}", run.stderr);
    assert!(
        run.stdout.contains("kubectl label namespace <namespace> kubernetes-sidecar-injector=enabled"),
        "{}",
        run.stdout
    );

    // The injector runs with the chart's RBAC only: as its ServiceAccount (impersonated), its
    // namespace and ConfigMap caches must sync, or it never becomes ready.
    let as_chart = client_as(plane_kubeconfig, &format!("system:serviceaccount:{SYSTEM}:sidecar-injector")).await?;
    let injector = serve_injector(&as_chart, &config).await?;

    // What was installed is what the injector here runs with.
    let installed = Api::<ConfigMap>::namespaced(client.clone(), SYSTEM).get("sidecar-injector-config").await?;
    assert_eq!(installed.data.as_ref().and_then(|d| d.get("config.yaml")), Some(&rendered_config));

    // The chart's Deployment makes its pods in the restricted namespace (Pod Security would
    // refuse a pod that does not meet `restricted`; the ReplicaSet would then have none).
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let selector = ListParams::default().labels("app.kubernetes.io/instance=sidecar-injector");
    eventually("the chart's pods", Duration::from_secs(60), || async {
        let pods = system_pods.list(&selector).await?;
        Ok((pods.items.len() == 2).then_some(()))
    })
    .await?;

    // The webhook configuration takes effect asynchronously: wait until a dry run is injected.
    let apps: Api<Pod> = Api::namespaced(client.clone(), "chart-apps");
    eventually("the chart's webhook to take effect", Duration::from_secs(60), || async {
        let probe = app_pod("probe", &json!({INJECT: "haystack-agent"}), &json!({}))?;
        let created = apps.create(&PostParams { dry_run: true, ..PostParams::default() }, &probe).await?;
        Ok(names(&created).contains(&"haystack-agent".to_owned()).then_some(()))
    })
    .await?;

    deployment_pods_are_injected(client, "chart-apps").await?;
    opt_outs_are_respected(client).await?;
    // The scenario suite, through the chart's webhook configuration: what `kind-e2e.sh` runs
    // against a cluster where the chart's own pods serve.
    Box::pin(portable_scenarios(client)).await?;
    // And again, as on a cluster that ran it before: the previous run is removed first.
    forget_previous_run(client).await?;
    Box::pin(portable_scenarios(client)).await?;

    // The injector stopped, the chart's webhook (failurePolicy Fail) still registered: what the
    // rendered selectors and condition filter out never reaches it and is created; the rest is not.
    injector.shutdown_and_wait().await?;
    opt_outs_are_filtered_by_the_api_server(client).await?;

    helm.run(["uninstall", "sidecar-injector", "--namespace", SYSTEM, "--no-hooks"])?.success()?;
    Ok(())
}

/// A Deployment annotated on its pod template: every pod the controllers make is injected.
async fn deployment_pods_are_injected(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let apps: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {
                    "labels": {"app": "shop"},
                    "annotations": {INJECT: "haystack-agent", "sidecar-injector.expedia.com/shop-tier": "gold"},
                },
                "spec": {"containers": [{"name": "app", "image": "shop:1"}]},
            },
        },
    }))?;
    Api::<Deployment>::namespaced(client.clone(), ns).create(&PostParams::default(), &deployment).await?;
    let pods = eventually("the Deployment's pods", Duration::from_secs(60), || async {
        let pods = apps.list(&ListParams::default().labels("app=shop")).await?;
        Ok((pods.items.len() == 2).then_some(pods.items))
    })
    .await?;
    for pod in &pods {
        assert_eq!(names(pod), ["app", "haystack-agent"]);
        let sidecar = &pod.spec.as_ref().context("spec")?.containers[1];
        let env: Vec<(String, Option<String>)> =
            sidecar.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone())).collect();
        assert!(env.contains(&("shop-tier".to_owned(), Some("gold".to_owned()))), "{env:?}");
    }

    Ok(())
}

/// With nothing answering the chart's webhook (`failurePolicy: Fail`): a pod it should inject is
/// refused by the API server (so the call is really made), while a pod labelled `…/inject=skip`, a
/// pod in a namespace labelled `…/disable-inject=true`, and a pod without the `inject` annotation
/// are created — the chart's `objectSelector`, `namespaceSelector` and `matchConditions` filtered
/// them, not the injector. So is a pod in kube-system, labelled to opt in.
async fn opt_outs_are_filtered_by_the_api_server(client: &kube::Client) -> anyhow::Result<()> {
    let apps: Api<Pod> = Api::namespaced(client.clone(), "chart-apps");
    let refused =
        apps.create(&PostParams::default(), &app_pod("down", &json!({INJECT: "haystack-agent"}), &json!({}))?).await;
    let message = refused.err().context("a pod for the stopped webhook was created")?.to_string();
    assert!(message.contains("failed calling webhook"), "{message}");
    let cases = [
        (
            "chart-apps",
            "down-skip",
            json!({INJECT: "haystack-agent"}),
            json!({"sidecar-injector.expedia.com/inject": "skip"}),
        ),
        ("chart-opted-out", "down-opted-out", json!({INJECT: "haystack-agent"}), json!({})),
        ("chart-apps", "down-no-annotation", json!({"team": "x"}), json!({})),
        // kube-system, even labelled to opt in: the chart's namespaceSelector never sends it.
        ("kube-system", "down-kube-system", json!({INJECT: "haystack-agent"}), json!({})),
    ];
    namespace(client, "kube-system", &[("kubernetes-sidecar-injector", "enabled")]).await?;
    for (ns, name, annotations, labels) in cases {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let stored = pods
            .create(&PostParams::default(), &app_pod(name, &annotations, &labels)?)
            .await
            .with_context(|| format!("pod {ns}/{name} was sent to the stopped webhook"))?;
        assert_eq!(names(&stored), ["app"]);
    }
    Ok(())
}

/// A pod labelled `…/inject=skip`, a namespace labelled `…/disable-inject=true`, and the release
/// namespace (even when labelled) are never injected.
async fn opt_outs_are_respected(client: &kube::Client) -> anyhow::Result<()> {
    let apps: Api<Pod> = Api::namespaced(client.clone(), "chart-apps");
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let skipped = app_pod(
        "skipped",
        &json!({INJECT: "haystack-agent"}),
        &json!({"sidecar-injector.expedia.com/inject": "skip"}),
    )?;
    let stored = apps.create(&PostParams::default(), &skipped).await?;
    assert_eq!(names(&stored), ["app"], "the pod opted out by label");
    let opted_out: Api<Pod> = Api::namespaced(client.clone(), "chart-opted-out");
    let stored = opted_out
        .create(&PostParams::default(), &app_pod("p", &json!({INJECT: "haystack-agent"}), &json!({}))?)
        .await?;
    assert_eq!(names(&stored), ["app"], "the namespace opted out by label");
    // The release namespace is never sent to the webhook, even when labelled.
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let label = json!({"metadata": {"labels": {"kubernetes-sidecar-injector": "enabled"}}});
    ns_api.patch(SYSTEM, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&label)).await?;
    let stored = system_pods
        .create(
            &PostParams { dry_run: true, ..PostParams::default() },
            &serde_json::from_value(json!({
                "metadata": {"name": "p", "annotations": {INJECT: "haystack-agent"}},
                "spec": {"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                         "containers": [{"name": "app", "image": "app:1", "securityContext": {
                             "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]},
            }))?,
        )
        .await?;
    assert_eq!(names(&stored), ["app"], "the release namespace is excluded");

    Ok(())
}

async fn helm_generated_ca_survives_upgrades(client: &kube::Client, helm3: &Helm, helm4: &Helm) -> anyhow::Result<()> {
    const NS: &str = "injector-gen";
    namespace(client, NS, &RESTRICTED).await?;
    let chart = chart_dir();
    let chart = chart.to_str().context("UTF-8 path")?;
    // Its own opt-in label, which no namespace carries: nothing is sent to this release (it has
    // no running pods to answer).
    let base = ["--namespace", NS, "--no-hooks", "--set", "webhook.namespaceSelector.optInLabel.key=gen-injector"];
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let read = || async {
        let secret = secrets.get("gen-sidecar-injector-tls").await?;
        let bundle = ca_bundle(client, "gen-sidecar-injector").await?;
        anyhow::Ok((data(&secret, "ca.crt")?, data(&secret, "tls.crt")?, bundle))
    };

    let mut install = vec!["install", "gen", chart];
    install.extend_from_slice(&base);
    let run = helm3.run(&install)?.success()?;
    assert!(!run.stderr.contains("PodSecurity"), "{}", run.stderr);
    let (ca, cert, bundle) = read().await?;
    assert_eq!(bundle, ca, "the webhook trusts the Secret's CA");
    verify_chain(&ca, &cert, "gen-sidecar-injector.injector-gen.svc")?;

    // An ordinary upgrade changes neither the CA nor the serving certificate.
    let mut upgrade = vec!["upgrade", "gen", chart, "--set", "replicaCount=3"];
    upgrade.extend_from_slice(&base);
    helm3.run(&upgrade)?.success()?;
    let (ca2, cert2, bundle2) = read().await?;
    assert_eq!((ca2.as_str(), cert2.as_str(), bundle2.as_str()), (ca.as_str(), cert.as_str(), bundle.as_str()));
    let deployment = Api::<Deployment>::namespaced(client.clone(), NS).get("gen-sidecar-injector").await?;
    assert_eq!(deployment.spec.replicas, Some(3), "the upgrade was applied");

    // A serving certificate within `renewBeforeDays` of expiry is renewed, under the same CA
    // (Helm 4 upgrading the Helm 3 release).
    let mut renew = vec!["upgrade", "gen", chart, "--set", "tls.generated.renewBeforeDays=400"];
    renew.extend_from_slice(&base);
    helm4.run(&renew)?.success()?;
    let (ca3, cert3, bundle3) = read().await?;
    assert_eq!(ca3, ca, "the CA is kept");
    assert_eq!(bundle3, ca, "the caBundle is unchanged");
    assert_ne!(cert3, cert, "the serving certificate was renewed");
    verify_chain(&ca, &cert3, "gen-sidecar-injector.injector-gen.svc")?;

    // Uninstall keeps the Secret (resource-policy keep); a reinstall reuses the CA.
    helm4.run(["uninstall", "gen", "--namespace", NS, "--no-hooks"])?.success()?;
    let mut reinstall = vec!["install", "gen", chart];
    reinstall.extend_from_slice(&base);
    helm4.run(&reinstall)?.success()?;
    let (ca4, _, bundle4) = read().await?;
    assert_eq!((ca4.as_str(), bundle4.as_str()), (ca.as_str(), ca.as_str()), "a reinstall reuses the CA");
    Ok(())
}
