//! The injector binary started with the Expedia 2022 generation's command line, as a Deployment
//! written for that injector starts it, against a real kube-apiserver: its sidecars come from a
//! `ConfigMap` in the pod's namespace under the given data key, its annotations use the given
//! prefix and name, `/healthz` answers on the webhook port and `/metrics` on `--metricsPort`.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use admission_kit::reexports::kube::api::{Api, PostParams};
use anyhow::{Context as _, bail};
use base64::Engine as _;
use integration_tests::images::cache_root;
use integration_tests::scenarios::namespace;
use integration_tests::webhook::client;
use integration_tests::{Binaries, ControlPlane};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};

/// The injector's release binary, built (or found up to date) in the cache's release build
/// directory, which the fault tests and the benchmarks share. The packages are the fault tests'
/// (`scripts/fault-tests.sh`): another set would unify dependency features differently and make the
/// next of the two builds link the whole-program-optimised binary again.
fn injector_binary() -> anyhow::Result<PathBuf> {
    let target = cache_root().join("release-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = integration_tests::images::without_cargo_test_env(&mut Command::new(cargo))
        .args(["build", "--release", "--locked", "-p", "sidecar-injector", "-p", "bench", "-p", "fault-tests"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(integration_tests::images::repository_root())
        .status()
        .context("failed to run cargo build")?;
    anyhow::ensure!(status.success(), "cargo build of sidecar-injector failed: {status}");
    Ok(target.join("release/sidecar-injector"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2022_command_line_serves_configmap_sidecars_with_healthz_and_metrics() -> anyhow::Result<()> {
    let binary = injector_binary()?;
    let plane = ControlPlane::start(&Binaries::locate()?)?;
    let client = client(&plane).await?;
    integration_tests::control_plane::check_kubernetes_version(&client).await?;
    namespace(&client, "shop", &[]).await?;
    let sidecars: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "haystack"},
        "data": {"data.yaml": "- name: haystack\n  containers:\n    - name: haystack-agent\n      image: registry.invalid/haystack:1\n"},
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), "shop").create(&PostParams::default(), &sidecars).await?;

    let dir = tempfile::tempdir()?;
    let cert = admission_kit::tls::GeneratedCert::generate(&["localhost".to_owned()])?;
    std::fs::write(dir.path().join("tls.crt"), &cert.cert_pem)?;
    std::fs::write(dir.path().join("tls.key"), &cert.key_pem)?;
    let (port, metrics_port) = (free_port()?, free_port()?);
    // The 2022 chart's flags, with this test's paths and ports.
    let args = [
        format!("--port={port}"),
        format!("--metricsPort={metrics_port}"),
        format!("--certFile={}", dir.path().join("tls.crt").display()),
        format!("--keyFile={}", dir.path().join("tls.key").display()),
        "--injectPrefix=injector.example.com".to_owned(),
        "--injectName=sidecars".to_owned(),
        "--sidecarDataKey=data.yaml".to_owned(),
        "--debug".to_owned(),
    ];
    let log = dir.path().join("stderr.log");
    let mut server = Killed(
        Command::new(&binary)
            .args(&args)
            .env("KUBECONFIG", &plane.kubeconfig)
            .env_remove("SIDECAR_INJECTOR_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );

    // Ready (its ConfigMap cache has listed) on the metrics port, which is the admin port.
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{metrics_port}/readyz")).await
            && r.status() == 200
        {
            break;
        }
        if let Some(status) = server.0.try_wait()? {
            let mut text = String::new();
            std::fs::File::open(&log)?.read_to_string(&mut text)?;
            bail!("the injector exited ({status}): {text}");
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "not ready after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stderr = std::fs::read_to_string(&log)?;
    assert!(
        stderr.contains("Expedia 2022 (cobra) command line recognised; serving as: sidecar-injector serve"),
        "{stderr}"
    );

    let https = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.ca_pem.as_bytes())?)
        .build()?;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "expedia-2022", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "object": {"metadata": {"name": "p", "annotations": {"injector.example.com/sidecars": "haystack"}},
                       "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}},
        },
    });
    let answer: Value =
        https.post(format!("https://localhost:{port}/mutate?timeout=10s")).json(&review).send().await?.json().await?;
    assert_eq!(answer["response"]["uid"], "expedia-2022");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let patch = answer["response"]["patch"].as_str().context("a patch")?;
    let patch = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(patch)?)?;
    assert!(patch.contains("\"name\":\"haystack-agent\""), "the ConfigMap's sidecar is injected: {patch}");

    let health = https.get(format!("https://localhost:{port}/healthz")).send().await?;
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await?.text().await?;
    assert!(metrics.contains("admission_kit_requests_total{"), "{metrics}");
    drop(server);
    Ok(())
}
