//! The shipped image, run by a real container engine through `testcontainers`: podman's
//! Docker-compatible API (`integration_tests::podman`), the image built from this checkout
//! (`scripts/build-image.sh`), started with its own entrypoint and user (65532), a read-only root
//! filesystem and every capability dropped.
//!
//! - `image_serves_reloads_and_drains`: TLS with mounted certificates, `/livez`, `/readyz` and
//!   `/metrics`, a review answered with the sidecar, a catalog directory swapped the way kubelet
//!   swaps a `ConfigMap` volume (`..data`) reloaded, and `podman stop` (SIGTERM) draining and
//!   exiting 0 within the grace period.
//! - `image_runs_with_the_expedia_2019_charts_args`: the image started with the Expedia 2019
//!   chart's arguments after its entrypoint, its file layout (`/etc/webhook/certs`,
//!   `/etc/webhook/config/sidecarconfig.yaml`, 2019 format) — `GET /healthz` over HTTPS and a review
//!   injected from that catalog. (The 2022 chart's Deployment runs on the test node:
//!   `tests/node_cluster.rs`.)
//! - `api_server_calls_the_container`: the real kube-apiserver calls the containerised webhook
//!   (which watches namespaces and `ConfigMap` catalogs with the kubeconfig it is given) and the
//!   portable scenarios pass through it.
//! - `image_builds_started_together_all_succeed`: `build-image.sh` run several times at once into
//!   one cache (as test processes that start together do) — each succeeds, one whole archive left.
//!
//! Containers share the host's network (`--network host`): rootful podman's bridge network would
//! add firewall rules and turn on IP forwarding machine-wide, which a test must not do. Each
//! container listens on loopback ports chosen here.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use integration_tests::images::{self, Image};
use integration_tests::podman::run_under_service;
use integration_tests::scenarios::{forget_previous_run, portable_scenarios, scenario_sidecars};
use integration_tests::webhook::{client, register};
use integration_tests::{Binaries, ControlPlane};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use sidecar_injector::catalog::{CatalogSource, CatalogStore};
use sidecar_injector::config::Config;
use testcontainers::bollard::models::HostConfig;
use testcontainers::core::{AccessMode, Mount};
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{ContainerAsync, GenericImage, ImageExt as _};

/// The user the image runs as.
const USER: u32 = 65532;

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A CA and a serving certificate for `127.0.0.1` and `localhost`, written as `ca.crt`, `tls.crt`
/// and `tls.key` into `dir`; returns the CA's PEM.
fn certificates(dir: &Path) -> anyhow::Result<String> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.crt"), ca.pem())?;
    std::fs::write(dir.join("tls.crt"), leaf.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(ca.pem())
}

/// Lays out `sidecars.yaml` the way kubelet mounts a `ConfigMap`: `sidecars.yaml -> ..data/…`,
/// `..data -> ..gen_<n>`, the `..data` link replaced by a rename (atomic for readers).
fn mount_catalog(dir: &Path, generation: u32, text: &str) -> anyhow::Result<()> {
    let generation_dir = dir.join(format!("..gen_{generation}"));
    std::fs::create_dir_all(&generation_dir)?;
    std::fs::write(generation_dir.join("sidecars.yaml"), text)?;
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..gen_{generation}"), &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    if std::fs::symlink_metadata(dir.join("sidecars.yaml")).is_err() {
        std::os::unix::fs::symlink("..data/sidecars.yaml", dir.join("sidecars.yaml"))?;
    }
    Ok(())
}

/// Files in the host directory are read by user 65532 in the container.
fn readable_by_all(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if std::fs::symlink_metadata(&path)?.is_symlink() {
            continue;
        }
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        if path.is_dir() {
            readable_by_all(&path)?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The injector image as the tests run it: its own entrypoint (`serve`) and user, `--config`,
/// read-only root, no capabilities, the host's network, and `dir` mounted read-only at `/etc/sidecar-injector`.
async fn start(image: &Image, dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<ContainerAsync<GenericImage>> {
    start_with(image, dir, "/etc/sidecar-injector", &["--config", "/etc/sidecar-injector/config.yaml"], env).await
}

/// [`start`] with `args` after the entrypoint and `dir` mounted at `mount_at`.
async fn start_with(
    image: &Image,
    dir: &Path,
    mount_at: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<ContainerAsync<GenericImage>> {
    let mut request = GenericImage::new(image.repository(), image.tag())
        .with_cmd(args.iter().map(|a| (*a).to_owned()))
        // The network mode, not a network of that name (which testcontainers would try to create).
        .with_host_config_modifier(|config: &mut HostConfig| config.network_mode = Some("host".to_owned()))
        .with_readonly_rootfs(true)
        .with_cap_drop("ALL")
        .with_security_opt("no-new-privileges")
        .with_mount(Mount::bind_mount(dir.to_string_lossy(), mount_at).with_access_mode(AccessMode::ReadOnly))
        .with_startup_timeout(Duration::from_secs(60));
    for (key, value) in env {
        request = request.with_env_var(*key, *value);
    }
    request.start().await.context("failed to start the injector container")
}

/// Polls `http://127.0.0.1:{port}{path}` until it answers 200 (up to 30 s); returns the body.
async fn http_ok(port: u16, path: &str) -> anyhow::Result<String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let started = Instant::now();
    loop {
        if let Ok(response) = reqwest::get(&url).await
            && response.status() == 200
        {
            return Ok(response.text().await?);
        }
        ensure!(started.elapsed() < Duration::from_secs(30), "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tls_client(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .http1_only()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .build()?)
}

fn pod_review(uid: &str, inject: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "apps", "operation": "CREATE",
            "object": {"metadata": {"name": "p", "annotations": {
                           "sidecar-injector.expedia.com/inject": inject,
                           "sidecar-injector.expedia.com/api-key": "k-1"}},
                       "spec": {"containers": [{"name": "app", "image": "app"}]}},
        },
    })
}

/// The names of the containers a review's patch adds to `/spec/containers`.
fn added_containers(answer: &Value) -> anyhow::Result<Vec<String>> {
    let Some(patch) = answer["response"]["patch"].as_str() else { return Ok(Vec::new()) };
    let patch: Value = serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(patch)?)?;
    Ok(patch
        .as_array()
        .context("the patch is not a list")?
        .iter()
        .filter(|op| op["op"] == "add" && op["path"].as_str().is_some_and(|p| p.starts_with("/spec/containers/")))
        .filter_map(|op| op["value"]["name"].as_str().map(str::to_owned))
        .collect())
}

async fn review(client: &reqwest::Client, port: u16, body: &Value) -> anyhow::Result<Value> {
    let response = client.post(format!("https://localhost:{port}/mutate?timeout=10s")).json(body).send().await?;
    ensure!(response.status() == 200, "review answered {}", response.status());
    Ok(response.json().await?)
}

/// The container's main process as the host sees it: its `Uid:` and `CapEff:` lines.
fn process_identity(container: &ContainerAsync<GenericImage>) -> anyhow::Result<(String, String)> {
    let out = std::process::Command::new("podman")
        .env("CONTAINERS_CONF", images::containers_conf())
        .args(["inspect", "--format", "{{.State.Pid}}", container.id()])
        .output()?;
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no /proc/{pid}/status for the container's process"))?;
    let line = |key: &str| status.lines().find(|l| l.starts_with(key)).unwrap_or_default().to_owned();
    Ok((line("Uid:"), line("CapEff:")))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

#[test]
fn image_serves_reloads_and_drains() -> anyhow::Result<()> {
    if !run_under_service("image_serves_reloads_and_drains")? {
        return Ok(());
    }
    runtime()?.block_on(serves_reloads_and_drains())
}

async fn serves_reloads_and_drains() -> anyhow::Result<()> {
    let image = images::injector()?;
    let dir = tempfile::tempdir()?;
    let ca = certificates(dir.path())?;
    std::fs::create_dir(dir.path().join("catalog"))?;
    mount_catalog(
        &dir.path().join("catalog"),
        1,
        "- name: first\n  containers: [{name: first, image: busybox, env: [{name: FROM, value: catalog}]}]\n",
    )?;
    let (port, admin) = (free_port()?, free_port()?);
    // JSON is YAML: the configuration file.
    let file = json!({
        "server": {
            "webhookAddr": format!("127.0.0.1:{port}"), "adminAddr": format!("127.0.0.1:{admin}"),
            "tlsCertFile": "/etc/sidecar-injector/tls.crt", "tlsKeyFile": "/etc/sidecar-injector/tls.key",
            "namespaceCache": "never", "drainDelay": "2s", "shutdownTimeout": "10s", "logFormat": "json",
        },
        "sidecars": null,
        "catalogPaths": ["/etc/sidecar-injector/catalog"],
        "catalogReloadInterval": "200ms",
    });
    std::fs::write(dir.path().join("config.yaml"), serde_json::to_vec_pretty(&file)?)?;
    readable_by_all(dir.path())?;

    let container = start(&image, dir.path(), &[]).await?;
    let ready = http_ok(admin, "/readyz").await?;
    eprintln!("container: /readyz answered {ready:?}");
    http_ok(admin, "/livez").await?;
    let (uid, caps) = process_identity(&container)?;
    eprintln!("container: {uid}; {caps}");
    ensure!(uid.split_whitespace().skip(1).all(|id| id == USER.to_string()), "the process is not user {USER}: {uid}");
    ensure!(caps.ends_with("0000000000000000"), "the process has capabilities: {caps}");

    // TLS with the mounted certificate: the client trusts only the test's CA.
    let tls = tls_client(&ca)?;
    let answer = review(&tls, port, &pod_review("one", "first")).await?;
    ensure!(answer["response"]["uid"] == "one" && answer["response"]["allowed"] == true, "unexpected answer {answer}");
    ensure!(added_containers(&answer)? == ["first"], "the sidecar was not injected: {answer}");
    let metrics = http_ok(admin, "/metrics").await?;
    ensure!(
        metrics.lines().any(|l| l.starts_with("admission_kit_requests_total{")
            && l.contains(r#"result="patched""#)
            && l.ends_with(" 1")),
        "/metrics does not count the patched review:\n{metrics}"
    );

    // The catalog swapped the way kubelet updates a ConfigMap volume.
    mount_catalog(&dir.path().join("catalog"), 2, "- name: second\n  containers: [{name: second, image: busybox}]\n")?;
    readable_by_all(dir.path())?;
    let started = Instant::now();
    loop {
        let answer = review(&tls, port, &pod_review("two", "second")).await?;
        if added_containers(&answer)? == ["second"] {
            eprintln!("container: the swapped catalog served after {:?}", started.elapsed());
            break;
        }
        ensure!(started.elapsed() < Duration::from_secs(10), "the swapped catalog was never loaded: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM (podman stop, 30 s grace): drain delay 2 s, then a clean exit with status 0.
    let started = Instant::now();
    container.stop_with_timeout(Some(30)).await?;
    let took = started.elapsed();
    let code = container.exit_code().await?;
    let logs = String::from_utf8_lossy(&container.stdout_to_vec().await?).into_owned()
        + &String::from_utf8_lossy(&container.stderr_to_vec().await?);
    eprintln!("container: stopped in {took:?} with exit code {code:?}");
    ensure!(code == Some(0), "exit code {code:?} after SIGTERM; logs:\n{logs}");
    ensure!(took < Duration::from_secs(30), "the container needed the whole grace period ({took:?})");
    ensure!(took >= Duration::from_secs(2), "the container did not wait out its drain delay ({took:?})");
    for expected in ["SIGTERM received", "draining", "server stopped"] {
        ensure!(logs.contains(expected), "no `{expected}` in the container's log:\n{logs}");
    }
    Ok(())
}

#[test]
fn image_runs_with_the_expedia_2019_charts_args() -> anyhow::Result<()> {
    if !run_under_service("image_runs_with_the_expedia_2019_charts_args")? {
        return Ok(());
    }
    runtime()?.block_on(expedia_2019_args())
}

async fn expedia_2019_args() -> anyhow::Result<()> {
    let image = images::injector()?;
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs)?;
    let ca = certificates(&certs)?;
    std::fs::create_dir(dir.path().join("config"))?;
    std::fs::write(
        dir.path().join("config/sidecarconfig.yaml"),
        "sidecars:\n  - name: haystack-agent\n    sidecar:\n      containers:\n        - name: haystack-agent\n          image: expediadotcom/haystack-agent:0.1\n",
    )?;
    readable_by_all(dir.path())?;
    let (port, admin) = (free_port()?, free_port()?);
    let port_flag = format!("-port={port}");
    // The 2019 chart's arguments (its port replaced by a free one: the container shares the host's
    // network); the admin port, which Expedia's flags do not set, from the environment.
    let args = [
        port_flag.as_str(),
        "-certFile=/etc/webhook/certs/tls.crt",
        "-keyFile=/etc/webhook/certs/tls.key",
        "-sideCar=/etc/webhook/config/sidecarconfig.yaml",
        "-logtostderr",
        "-v=4",
    ];
    let admin_addr = format!("127.0.0.1:{admin}");
    let container =
        start_with(&image, dir.path(), "/etc/webhook", &args, &[("SIDECAR_INJECTOR_SERVER__ADMIN_ADDR", &admin_addr)])
            .await?;
    http_ok(admin, "/readyz").await?;
    let tls = tls_client(&ca)?;
    let healthz = tls.get(format!("https://localhost:{port}/healthz")).send().await?;
    ensure!(healthz.status() == 200, "GET /healthz on the webhook port answered {}", healthz.status());
    let answer = review(&tls, port, &pod_review("expedia", "haystack-agent")).await?;
    ensure!(added_containers(&answer)? == ["haystack-agent"], "the sidecar was not injected: {answer}");
    container.stop_with_timeout(Some(30)).await?;
    let logs = String::from_utf8_lossy(&container.stderr_to_vec().await?).into_owned();
    ensure!(
        logs.contains("Expedia 2019 (Go flag) command line recognised; serving as: sidecar-injector serve --set"),
        "no compatibility line in the container's log:\n{logs}"
    );
    eprintln!("container: the Expedia 2019 chart's args served /healthz and injected haystack-agent");
    Ok(())
}

#[test]
fn api_server_calls_the_container() -> anyhow::Result<()> {
    if !run_under_service("api_server_calls_the_container")? {
        return Ok(());
    }
    runtime()?.block_on(calls_the_container())
}

async fn calls_the_container() -> anyhow::Result<()> {
    let image = images::injector()?;
    let plane = ControlPlane::start(&Binaries::locate()?)?;
    let client = client(&plane).await?;
    forget_previous_run(&client).await?;
    let dir = tempfile::tempdir()?;
    let ca = certificates(dir.path())?;
    std::fs::copy(&plane.kubeconfig, dir.path().join("kubeconfig"))?;
    let (port, admin) = (free_port()?, free_port()?);
    let mut config = Config::default();
    config.sidecars = scenario_sidecars()?;
    config.namespace_catalogs = true;
    // JSON is YAML: the configuration file, with the scenarios' catalog inline.
    let file = json!({
        "server": {
            "webhookAddr": format!("127.0.0.1:{port}"), "adminAddr": format!("127.0.0.1:{admin}"),
            "tlsCertFile": "/etc/sidecar-injector/tls.crt", "tlsKeyFile": "/etc/sidecar-injector/tls.key",
            "namespaceCache": "always", "drainDelay": "0s",
        },
        "namespaceCatalogs": true,
        "sidecars": config.sidecars,
    });
    std::fs::write(dir.path().join("config.yaml"), serde_json::to_vec_pretty(&file)?)?;
    readable_by_all(dir.path())?;
    let container = start(&image, dir.path(), &[("KUBECONFIG", "/etc/sidecar-injector/kubeconfig")]).await?;
    // Ready means both watch caches (namespaces, ConfigMap catalogs) synced with the API server.
    http_ok(admin, "/readyz").await?;

    // The webhook configuration rendered from the same configuration, calling the container.
    let store = std::sync::Arc::new(CatalogStore::load(vec![CatalogSource::inline(config.sidecars.clone())])?);
    let pipeline = sidecar_injector::pipeline(&config, store, None)?;
    register(&client, &[pipeline], "sidecar-injector", &format!("https://127.0.0.1:{port}"), ca.as_bytes()).await?;
    Box::pin(portable_scenarios(&client)).await?;

    let metrics = http_ok(admin, "/metrics").await?;
    let calls: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("admission_kit_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!("container: the API server sent {calls} reviews to the containerised webhook");
    ensure!(calls > 0.0, "the container's metrics show no review: the scenarios did not go through it");
    drop(container);
    Ok(())
}

/// Test processes that start at once (a binary's tests, a test rerun in a child) build the same
/// image into the same cache: every build succeeds and the archive left is whole.
#[test]
fn image_builds_started_together_all_succeed() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let script = images::repository_root().join("scripts/build-image.sh");
    let builds: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new("bash")
                .arg(&script)
                .args(["busybox", "--out"])
                .arg(out.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for build in builds {
        let done = build.wait_with_output()?;
        ensure!(
            done.status.success(),
            "a build started beside others failed ({}): {}",
            done.status,
            String::from_utf8_lossy(&done.stderr)
        );
    }
    let archive = out.path().join("ak-busybox.oci.tar");
    let listing = std::process::Command::new("tar").arg("-tf").arg(&archive).output()?;
    ensure!(listing.status.success(), "{} is not a whole archive", archive.display());
    ensure!(
        String::from_utf8_lossy(&listing.stdout).lines().any(|l| l.trim_start_matches("./") == "index.json"),
        "{} has no OCI index",
        archive.display()
    );
    let left: Vec<_> = std::fs::read_dir(out.path())?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".partial"))
        .collect();
    ensure!(left.is_empty(), "half-written archives left behind: {left:?}");
    Ok(())
}
