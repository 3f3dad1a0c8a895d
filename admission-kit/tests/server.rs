//! The server over real sockets: TLS round trips on 127.0.0.1, certificate rotation through a
//! kubelet-style `..data` symlink swap, drain under load, bad inputs, limits and deadlines.
#![cfg(feature = "testing")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use admission_kit::namespaces::NamespaceSource;
use admission_kit::prelude::*;
use admission_kit::server::{RunningServer, Server, ServerConfig};
use admission_kit::testing;
use admission_kit::tls::{GeneratedCert, TlsSource};
use k8s_openapi::api::core::v1::{Container, Pod};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct Sidecar;

#[async_trait]
impl Mutator<Pod> for Sidecar {
    async fn mutate(&self, pod: &mut Pod, ctx: &mut Context<'_>) -> MutationResult {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        match annotations.get("test/behaviour").map(String::as_str) {
            Some("panic") => panic!("mutator bug"),
            // CPU-bound for 3 s, never awaiting: only the server's backstop can answer in time.
            Some("spin") => spin(Duration::from_secs(3), || Ok(()))?,
            // The same, checking the deadline between items as a long loop should.
            Some("spin-checked") => spin(Duration::from_secs(3), || ctx.check_deadline())?,
            Some("slow") => tokio::time::sleep(Duration::from_secs(5)).await,
            Some("pause") => tokio::time::sleep(Duration::from_millis(300)).await,
            Some("deny") => return Err(MutationError::deny("pods here may not ask for that")),
            Some("fail") => return Err(MutationError::failed("the catalog is unavailable")),
            _ => {}
        }
        let spec = pod.spec.get_or_insert_default();
        if !spec.containers.iter().any(|c| c.name == "sidecar") {
            spec.containers.push(Container {
                name: "sidecar".into(),
                image: Some("busybox".into()),
                ..Container::default()
            });
        }
        Ok(())
    }
}

/// Busy for `time` without yielding, calling `between` after each slice of work.
fn spin(time: Duration, mut between: impl FnMut() -> MutationResult) -> MutationResult {
    let started = Instant::now();
    while started.elapsed() < time {
        std::hint::black_box((0..1_000u64).sum::<u64>());
        between()?;
    }
    Ok(())
}

fn pipeline() -> Pipeline {
    Pipeline::builder("sidecar.test.example.com")
        .step(Step::new("sidecar", Sidecar).when(matcher::namespace_label("inject", "enabled")))
        .build()
        .unwrap()
}

fn namespaces() -> NamespaceSource {
    NamespaceSource::fixed([("on", vec![("inject", "enabled")]), ("off", vec![])])
}

fn pod_body(namespace: &str, uid: &str, behaviour: Option<&str>) -> Vec<u8> {
    let mut pod = json!({"metadata": {"name": "p", "namespace": namespace, "annotations": {}}, "spec": {"containers": [{"name": "app", "image": "app"}]}});
    if let Some(b) = behaviour {
        pod["metadata"]["annotations"]["test/behaviour"] = json!(b);
    }
    testing::review_json(pod, &admission_kit::pipeline::ResourceTarget::of::<Pod>())
        .namespace(namespace)
        .uid(uid)
        .body()
}

fn client(ca_pems: &[&str], keep_alive: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().http1_only().timeout(Duration::from_secs(10)).use_rustls_tls();
    for ca in ca_pems {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
    }
    if !keep_alive {
        builder = builder.pool_max_idle_per_host(0);
    }
    builder.build().unwrap()
}

async fn post(client: &reqwest::Client, server: &RunningServer, body: Vec<u8>) -> reqwest::Result<(u16, Value)> {
    let url = format!("https://localhost:{}/mutate?timeout=10s", server.webhook_addr().port());
    let response = client.post(url).header("content-type", "application/json").body(body).send().await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))))
}

async fn start(config: ServerConfig) -> RunningServer {
    Server::new(config, [pipeline()]).namespaces(namespaces()).start().await.unwrap()
}

fn local(tls: TlsSource) -> ServerConfig {
    let mut config = ServerConfig::local();
    config.tls = tls;
    config
}

#[tokio::test]
async fn tls_round_trip_patches_matching_pods_only_and_echoes_uids() {
    let server = start(ServerConfig::local()).await;
    let ca = server.ca_pem().unwrap().to_owned();
    let client = client(&[&ca], true);
    let (status, review) = post(&client, &server, pod_body("on", "uid-match", None)).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["response"]["uid"], "uid-match");
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    let patch = decode_patch(&review);
    assert_eq!(
        patch,
        json!([{"op": "add", "path": "/spec/containers/1", "value": {"name": "sidecar", "image": "busybox"}}])
    );

    let (status, review) = post(&client, &server, pod_body("off", "uid-other", None)).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(review["response"]["uid"], "uid-other");
    assert_eq!(review["response"]["allowed"], true);
    assert!(review["response"].get("patch").is_none(), "{review}");

    let metrics = reqwest::get(format!("http://{}/metrics", server.admin_addr())).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            r#"admission_kit_requests_total{webhook="sidecar.test.example.com",operation="CREATE",result="patched"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"admission_kit_requests_total{webhook="sidecar.test.example.com",operation="CREATE",result="allowed"} 1"#
    ));
    for bucket in ["0.001", "0.005", "0.025", "0.1"] {
        assert!(
            metrics.contains(&format!(
                "admission_kit_request_duration_seconds_bucket{{le=\"{bucket}\",webhook=\"sidecar.test.example.com\"}}"
            )),
            "bucket {bucket} missing:\n{metrics}"
        );
    }
    assert!(metrics.contains("admission_kit_requests_in_flight 0"));
    assert_eq!(reqwest::get(format!("http://{}/livez", server.admin_addr())).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(format!("http://{}/readyz", server.admin_addr())).await.unwrap().status(), 200);
    server.shutdown_and_wait().await.unwrap();
}

fn decode_patch(review: &Value) -> Value {
    use base64::Engine as _;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(review["response"]["patch"].as_str().unwrap()).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn only_tls_1_2_and_newer_are_offered() {
    let server = start(ServerConfig::local()).await;
    let addr = format!("127.0.0.1:{}", server.webhook_addr().port());
    let handshake = |flag: &'static str| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new("openssl")
                .args(["s_client", "-connect", &addr, flag, "-cipher", "DEFAULT@SECLEVEL=0"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("openssl (Debian package `openssl`) must be installed for this test");
            let status = child.wait().unwrap();
            let mut out = String::new();
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
            (status.success(), out)
        })
    };
    let (ok12, out12) = handshake("-tls1_2").await.unwrap();
    assert!(ok12 && out12.contains("New, TLSv1.2, Cipher is ECDHE"), "TLS 1.2 must work:\n{out12}");
    let (ok11, out11) = handshake("-tls1_1").await.unwrap();
    assert!(!ok11 && out11.contains("New, (NONE), Cipher is (NONE)"), "TLS 1.1 must be refused:\n{out11}");
    server.shutdown_and_wait().await.unwrap();
}

/// Lays out a Secret volume the way kubelet does: `tls.crt -> ..data/tls.crt`, `..data -> ..<ts>`.
fn write_secret_volume(dir: &Path, generation: u32, cert: &GeneratedCert) {
    let ts = dir.join(format!("..2026_11_27_{generation}"));
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::write(ts.join("tls.crt"), &cert.cert_pem).unwrap();
    std::fs::write(ts.join("tls.key"), &cert.key_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(ts.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(PathBuf::from("..data").join(name), &link).unwrap();
        }
    }
}

async fn served_cert(addr: std::net::SocketAddr, ca_pems: &[&str]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in ca_pems {
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(admission_kit::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec()
}

#[tokio::test]
async fn certificate_rotation_via_symlink_swap_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let (a, b) = (GeneratedCert::generate(&names).unwrap(), GeneratedCert::generate(&names).unwrap());
    write_secret_volume(dir.path(), 1, &a);
    let server = start(local(TlsSource::Files {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        reload_interval: Duration::from_millis(100),
    }))
    .await;
    assert_eq!(served_cert(server.webhook_addr(), &[&a.ca_pem]).await, der(&a.cert_pem));

    // Load from both kinds of client while the certificate changes.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for keep_alive in [true, false] {
        let client = client(&[&a.ca_pem, &b.ca_pem], keep_alive);
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url_port = server.webhook_addr().port();
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let url = format!("https://localhost:{url_port}/mutate");
                let result = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(pod_body("on", &format!("r{i}"), None))
                    .send()
                    .await;
                match result {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("request failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_secret_volume(dir.path(), 2, &b);
    let rotated = Instant::now();
    let mut seen = Vec::new();
    while rotated.elapsed() < Duration::from_secs(5) {
        seen = served_cert(server.webhook_addr(), &[&a.ca_pem, &b.ca_pem]).await;
        if seen == der(&b.cert_pem) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, der(&b.cert_pem), "new handshakes must present the new certificate");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request may fail during rotation");
    assert!(ok.load(Ordering::Relaxed) > 10, "the load actually ran");

    // A broken update keeps the last good certificate: a chain whose second block is malformed
    // (its leaf alone would load, so this fails only if the bad block is an error, not skipped),
    // then a file with no certificate at all.
    let mut bad_ca = b.ca_pem.clone();
    let body = bad_ca.find('\n').unwrap() + 1;
    bad_ca.replace_range(body + 10..body + 11, "!");
    std::fs::write(dir.path().join("..2026_11_27_2/tls.crt"), format!("{}{bad_ca}", b.cert_pem)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served_cert(server.webhook_addr(), &[&b.ca_pem]).await, der(&b.cert_pem));
    std::fs::write(dir.path().join("..2026_11_27_2/tls.crt"), "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served_cert(server.webhook_addr(), &[&b.ca_pem]).await, der(&b.cert_pem));
    let metrics = reqwest::get(format!("http://{}/metrics", server.admin_addr())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"admission_kit_certificate_reloads_total{result="success"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"admission_kit_certificate_reloads_total{result="failure"}"#), "{metrics}");
    server.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn drain_under_load_fails_no_request_and_finishes_in_flight_ones() {
    let mut config = ServerConfig::local();
    config.drain_delay = Duration::from_millis(500);
    let server = start(config).await;
    let ca = server.ca_pem().unwrap().to_owned();
    let admin = server.admin_addr();
    let client = client(&[&ca], true);
    let failures = Arc::new(AtomicUsize::new(0));
    let served_while_draining = Arc::new(AtomicUsize::new(0));
    let draining = Arc::new(AtomicBool::new(false));
    // A slow request in flight when the drain starts.
    let in_flight = {
        let (client, port) = (client.clone(), server.webhook_addr().port());
        tokio::spawn(async move {
            let url = format!("https://localhost:{port}/mutate");
            client
                .post(url)
                .header("content-type", "application/json")
                .body(pod_body("on", "slow", Some("pause")))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let mut load = Vec::new();
    for worker in 0..4 {
        let (client, port, failures, served_count, draining) = (
            client.clone(),
            server.webhook_addr().port(),
            failures.clone(),
            served_while_draining.clone(),
            draining.clone(),
        );
        load.push(tokio::spawn(async move {
            // Like an endpoints controller: keep sending until the replica has been unready a while.
            let mut unready_since: Option<Instant> = None;
            for i in 0.. {
                if let Some(t) = unready_since
                    && t.elapsed() > Duration::from_millis(250)
                {
                    break;
                }
                let was_draining = draining.load(Ordering::Relaxed);
                let url = format!("https://localhost:{port}/mutate");
                let result = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(pod_body("on", &format!("w{worker}-{i}"), None))
                    .send()
                    .await;
                match result {
                    Ok(r) if r.status() == 200 => {
                        if was_draining {
                            served_count.fetch_add(1, Ordering::Relaxed);
                            unready_since.get_or_insert_with(Instant::now);
                        }
                    }
                    other => {
                        eprintln!("request failed: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.begin_shutdown();
    // Readiness turns false at once.
    let started = Instant::now();
    loop {
        let status = reqwest::get(format!("http://{admin}/readyz")).await.map_or(0, |r| r.status().as_u16());
        if status == 503 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "readiness did not turn false");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    draining.store(true, Ordering::Relaxed);
    // Answers given while draining close their connection, so the API server moves to other replicas.
    let url = format!("https://localhost:{}/mutate", server.webhook_addr().port());
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(pod_body("on", "closing", None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(in_flight.await.unwrap().unwrap(), 200, "the in-flight request completes");
    server.shutdown_and_wait().await.unwrap();
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request may fail during the drain");
    assert!(served_while_draining.load(Ordering::Relaxed) > 0, "requests were served while unready");
}

#[tokio::test]
async fn bad_inputs_get_clear_answers_and_the_server_keeps_serving() {
    let server = start(ServerConfig::local()).await;
    let client = client(&[server.ca_pem().unwrap()], true);
    let url = format!("https://localhost:{}/mutate", server.webhook_addr().port());
    let send = |content_type: &'static str, body: Vec<u8>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client.post(url).header("content-type", content_type).body(body).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let assert_still_serving = || async {
        let (status, review) = post(&client, &server, pod_body("on", "after", None)).await.unwrap();
        assert_eq!((status, review["response"]["allowed"].as_bool()), (200, Some(true)));
    };

    let (status, text) = send("application/json", b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    assert!(text.contains("failed to decode AdmissionReview"), "{text}");
    assert_still_serving().await;

    let (status, text) =
        send("application/json", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec()).await;
    assert_eq!(status, 400);
    assert!(text.contains("no `request`"), "{text}");

    let (status, text) = send("text/plain", pod_body("on", "x", None)).await;
    assert_eq!(status, 415);
    assert!(text.contains("application/json"), "{text}");

    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = client.post(url.replace("/mutate", "/nowhere")).body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.text().await.unwrap().contains("/mutate"));

    let bad_op = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"bad-op","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"EXPLODE"}}"#;
    let (status, text) = send("application/json", bad_op.to_vec()).await;
    let review: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status, 200);
    assert_eq!(review["response"]["uid"], "bad-op");
    assert_eq!(review["response"]["allowed"], false);
    assert!(review["response"]["status"]["message"].as_str().unwrap().contains("EXPLODE"), "{review}");

    let wrong_shape = testing::review_json(
        json!({"metadata": {"name": 1}, "spec": {"containers": {}}}),
        &admission_kit::pipeline::ResourceTarget::of::<Pod>(),
    )
    .namespace("on")
    .uid("wrong-shape")
    .body();
    let (status, text) = send("application/json", wrong_shape).await;
    let review: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (status, &review["response"]["uid"], &review["response"]["allowed"]),
        (200, &json!("wrong-shape"), &json!(false))
    );
    assert!(
        review["response"]["status"]["message"].as_str().unwrap().contains("does not decode as v1 Pod"),
        "{review}"
    );

    let (status, review) = post(&client, &server, pod_body("on", "panics", Some("panic"))).await.unwrap();
    assert_eq!((status, &review["response"]["allowed"]), (200, &json!(false)));
    assert!(review["response"]["status"]["message"].as_str().unwrap().contains("panicked"), "{review}");
    assert_still_serving().await;

    let metrics = reqwest::get(format!("http://{}/metrics", server.admin_addr())).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"admission_kit_mutator_panics_total{webhook="sidecar.test.example.com",step="sidecar"} 1"#),
        "{metrics}"
    );
    server.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn body_cap_is_exact_and_answered_with_413() {
    let mut config = ServerConfig::local();
    let body = pod_body("on", "cap", None);
    config.max_body_bytes = body.len();
    let server = start(config).await;
    let client = client(&[server.ca_pem().unwrap()], true);
    let (status, review) = post(&client, &server, body.clone()).await.unwrap();
    assert_eq!((status, &review["response"]["uid"]), (200, &json!("cap")), "a body at the cap is served");
    let mut over = body.clone();
    over.push(b' ');
    let (status, _) = post(&client, &server, over).await.unwrap();
    assert_eq!(status, 413, "one byte over the cap is refused");
    let (status, _) = post(&client, &server, body).await.unwrap();
    assert_eq!(status, 200, "and the next request is served");
    server.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn the_api_server_deadline_is_honoured() {
    let server = start(ServerConfig::local()).await;
    let client = client(&[server.ca_pem().unwrap()], true);
    let url = format!("https://localhost:{}/mutate?timeout=1s", server.webhook_addr().port());
    let started = Instant::now();
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(pod_body("on", "slow", Some("slow")))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let review: Value = r.json().await.unwrap();
    assert!(elapsed < Duration::from_secs(1), "answered before the 1s deadline, took {elapsed:?}");
    assert_eq!(review["response"]["allowed"], false);
    assert!(review["response"]["status"]["message"].as_str().unwrap().contains("deadline"), "{review}");
    server.shutdown_and_wait().await.unwrap();
}

/// Posts a review with `?timeout=1s`: how long the answer took, its status and its review.
async fn post_within_1s(client: &reqwest::Client, server: &RunningServer, body: Vec<u8>) -> (Duration, u16, Value) {
    let url = format!("https://localhost:{}/mutate?timeout=1s", server.webhook_addr().port());
    let started = Instant::now();
    let response = client.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let review = response.json().await.unwrap();
    (started.elapsed(), status, review)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_bound_steps_are_answered_by_the_deadline_while_probes_keep_answering() {
    let mut config = ServerConfig::local();
    config.review_threads = 2;
    let server = Arc::new(start(config).await);
    let client = client(&[server.ca_pem().unwrap()], true);
    // Three reviews that never yield, on two review threads: the third waits for a thread.
    let spinning: Vec<_> = (0..3)
        .map(|i| {
            let (client, server) = (client.clone(), server.clone());
            tokio::spawn(async move {
                post_within_1s(&client, &server, pod_body("on", &format!("spin-{i}"), Some("spin"))).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every review thread is busy: the probes and the metrics are served elsewhere. Asked from a
    // thread of their own, so that the time measured is the server's, not this test's.
    let admin = server.admin_addr();
    let probes = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            for path in ["livez", "readyz", "metrics"] {
                let started = Instant::now();
                let response = reqwest::get(format!("http://{admin}/{path}")).await.unwrap();
                assert_eq!(response.status(), 200, "/{path}");
                let took = started.elapsed();
                assert!(took < Duration::from_secs(1), "/{path} took {took:?} while reviews spun");
            }
        });
    });
    tokio::task::spawn_blocking(move || probes.join()).await.unwrap().expect("probes answered in time");
    for (i, task) in spinning.into_iter().enumerate() {
        let (elapsed, status, review) = task.await.unwrap();
        assert_eq!(status, 200, "{review}");
        // Due at 0.95 s; the slack covers the connection and a loaded machine, far from the 3 s
        // the steps spin.
        assert!(elapsed < Duration::from_millis(1500), "answered at the 1 s timeout, took {elapsed:?}");
        assert_eq!(review["response"]["uid"], format!("spin-{i}"));
        assert_eq!(review["response"]["allowed"], false, "failurePolicy Fail denies: {review}");
        assert_eq!(review["response"]["status"]["code"], 500);
        let message = review["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("did not finish before the API server's deadline"), "{message}");
    }
    metric_reaches(&server, "admission_kit_review_overruns_total{webhook=\"sidecar.test.example.com\"}", 3.0).await;
    metric_reaches(
        &server,
        "admission_kit_requests_total{webhook=\"sidecar.test.example.com\",operation=\"CREATE\",result=\"denied\"}",
        3.0,
    )
    .await;

    // Once the spinning steps return, the review threads serve again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, _, review) = post_within_1s(&client, &server, pod_body("on", "after", None)).await;
    assert_eq!(review["response"]["allowed"], true, "{review}");
    assert!(review["response"]["patch"].is_string(), "{review}");

    // A loop that checks the deadline stops at it: the step fails by its own failure mode (deny),
    // and the backstop is not needed.
    let (elapsed, _, review) = post_within_1s(&client, &server, pod_body("on", "checked", Some("spin-checked"))).await;
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    let message = review["response"]["status"]["message"].as_str().unwrap();
    assert_eq!(message, "sidecar failed: did not finish before the API server's deadline");
    metric_reaches(&server, "admission_kit_review_overruns_total{webhook=\"sidecar.test.example.com\"}", 3.0).await;
    Arc::into_inner(server).unwrap().shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn an_overrun_under_failure_policy_ignore_is_admitted_unchanged_with_a_warning() {
    let pipeline = Pipeline::builder("sidecar.test.example.com")
        .failure_policy(FailurePolicy::Ignore)
        .step(Step::new("sidecar", Sidecar).on_error(FailureMode::AllowWithWarning))
        .build()
        .unwrap();
    let server = Server::new(ServerConfig::local(), [pipeline]).start().await.unwrap();
    let client = client(&[server.ca_pem().unwrap()], true);
    let (elapsed, status, review) = post_within_1s(&client, &server, pod_body("on", "spin", Some("spin"))).await;
    assert_eq!(status, 200);
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    assert_eq!(review["response"]["allowed"], true, "{review}");
    assert!(review["response"].get("patch").is_none(), "admitted unchanged: {review}");
    let warning = review["response"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("did not finish before the API server's deadline"), "{warning}");
    // The checked loop fails its step by the step's own mode: admitted without its change too.
    let (_, _, review) = post_within_1s(&client, &server, pod_body("on", "checked", Some("spin-checked"))).await;
    assert_eq!(review["response"]["allowed"], true, "{review}");
    let warning = review["response"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("sidecar failed, admitted without its change"), "{warning}");
    server.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn stalled_and_half_open_clients_are_cut_and_do_not_slow_others() {
    let mut config = ServerConfig::local();
    config.handshake_timeout = Duration::from_millis(300);
    config.header_read_timeout = Duration::from_millis(300);
    config.idle_timeout = Duration::from_secs(60);
    let server = start(config).await;
    let ca = server.ca_pem().unwrap().to_owned();
    let addr = server.webhook_addr();
    // 50 TCP connections that never start TLS.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        stalled.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // 20 TLS connections that send half a request header and stop.
    let mut half = Vec::new();
    for _ in 0..20 {
        let mut tls = tls_connect(addr, &ca).await;
        tls.write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-").await.unwrap();
        tls.flush().await.unwrap();
        half.push(tls);
    }
    let client = client(&[&ca], true);
    for i in 0..20 {
        let started = Instant::now();
        let (status, _) = post(&client, &server, pod_body("on", &format!("real-{i}"), None)).await.unwrap();
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a real request waited {:?} behind stalled clients",
            started.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    for mut s in stalled {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("the server closes a stalled handshake");
        assert!(matches!(n, Ok(0) | Err(_)), "stalled connection still open");
    }
    for mut t in half {
        let mut buf = Vec::new();
        // Ok(0 bytes) or a reset: either way the server hung up within the header-read timeout.
        let _closed = tokio::time::timeout(Duration::from_secs(2), t.read_to_end(&mut buf))
            .await
            .expect("the server closes a half-sent header");
        assert!(
            buf.is_empty() || String::from_utf8_lossy(&buf).contains("408"),
            "unexpected answer to a half header: {}",
            String::from_utf8_lossy(&buf)
        );
    }
    server.shutdown_and_wait().await.unwrap();
}

async fn tls_connect(addr: std::net::SocketAddr, ca: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(admission_kit::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect("localhost".try_into().unwrap(), tokio::net::TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_silent_tls_connection_gets_the_header_timeout_not_the_idle_timeout() {
    let mut config = ServerConfig::local();
    config.header_read_timeout = Duration::from_millis(300);
    config.idle_timeout = Duration::from_secs(60);
    let server = start(config).await;
    let mut tls = tls_connect(server.webhook_addr(), server.ca_pem().unwrap()).await;
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a connection that never sends a request is closed after the header-read timeout");
    server.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn healthz_on_the_webhook_port_answers_until_the_drain() {
    let mut config = ServerConfig::local();
    config.drain_delay = Duration::from_secs(2);
    let server = start(config).await;
    let client = client(&[server.ca_pem().unwrap()], false);
    let url = format!("https://localhost:{}/healthz", server.webhook_addr().port());
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok\n");
    // Only GET: a review posted there is not a review.
    assert_eq!(client.post(&url).body("{}").send().await.unwrap().status(), 405);
    server.begin_shutdown();
    let started = Instant::now();
    loop {
        let response = client.get(&url).send().await.unwrap();
        if response.status() == 503 {
            assert_eq!(response.text().await.unwrap(), "draining\n");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "still {} while draining", response.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown_and_wait().await.unwrap();

    // The path is the server's: a pipeline on it is refused at start.
    let on_healthz = Pipeline::builder("healthz.test.example.com")
        .path("/healthz")
        .step(Step::new("sidecar", Sidecar))
        .build()
        .unwrap();
    let err = Server::new(ServerConfig::local(), [on_healthz]).start().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "failed to start: pipeline `healthz.test.example.com` is served on `/healthz`, which the webhook port keeps for its own use"
    );
}

#[tokio::test]
async fn metrics_on_the_webhook_port_only_when_asked() {
    let mut config = ServerConfig::local();
    let server = start(config.clone()).await;
    let client = client(&[server.ca_pem().unwrap()], false);
    let url = |server: &RunningServer| format!("https://localhost:{}/metrics", server.webhook_addr().port());
    assert_eq!(client.get(url(&server)).send().await.unwrap().status(), 404);
    server.shutdown_and_wait().await.unwrap();

    config.metrics_on_webhook_port = true;
    let server = start(config.clone()).await;
    let client = self::client(&[server.ca_pem().unwrap()], false);
    let response = client.get(url(&server)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("admission_kit_connections_open"));
    server.shutdown_and_wait().await.unwrap();
    // Then the path is the server's.
    let on_metrics =
        Pipeline::builder("m.test.example.com").path("/metrics").step(Step::new("sidecar", Sidecar)).build().unwrap();
    let err = Server::new(config, [on_metrics]).start().await.unwrap_err().to_string();
    assert!(err.contains("is served on `/metrics`, which the webhook port keeps for its own use"), "{err}");
}

#[tokio::test]
async fn limits_out_of_range_refuse_to_start() {
    let mut config = ServerConfig::local();
    config.max_connections = 0;
    let err = Server::new(config, [pipeline()]).start().await.unwrap_err().to_string();
    assert!(err.contains("max_connections must be between 1 and"), "{err}");
}

#[tokio::test]
async fn connection_cap_refuses_extra_connections() {
    let mut config = ServerConfig::local();
    config.max_connections = 3;
    let server = start(config).await;
    let ca = server.ca_pem().unwrap().to_owned();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tls_connect(server.webhook_addr(), &ca).await);
    }
    let mut extra = tokio::net::TcpStream::connect(server.webhook_addr()).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await.expect("refused at once");
    assert!(matches!(n, Ok(0) | Err(_)));
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = client(&[&ca], true);
    assert_eq!(post(&client, &server, pod_body("on", "after-cap", None)).await.unwrap().0, 200);
    let metrics = reqwest::get(format!("http://{}/metrics", server.admin_addr())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("admission_kit_connections_refused_total{reason=\"connection_cap\"} 1"), "{metrics}");
    server.shutdown_and_wait().await.unwrap();
}

/// A TCP connection to `server` from the loopback address `source` that never says a word.
async fn silent_from(source: [u8; 4], server: &RunningServer) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((source, 0))).unwrap();
    socket.connect(server.webhook_addr()).await.unwrap()
}

/// The value of a metric line that starts with `series` (0 when absent).
async fn metric(server: &RunningServer, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", server.admin_addr())).await.unwrap().text().await.unwrap();
    text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// Waits (at most 5 s) until `series` reads `value`.
async fn metric_reaches(server: &RunningServer, series: &str, value: f64) {
    let started = Instant::now();
    // Counts and gauges: whole numbers, exactly represented.
    while (metric(server, series).await - value).abs() > 0.5 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{series} never reached {value}: {}",
            metric(server, series).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn silent_peers_hold_handshake_slots_only_within_their_budget() {
    let mut config = ServerConfig::local();
    config.max_connections = 4;
    config.max_handshakes = 6;
    config.max_handshakes_per_peer = 3;
    // Long, so that the silent connections hold their slots for the whole test.
    config.handshake_timeout = Duration::from_secs(60);
    let server = start(config).await;
    let ca = server.ca_pem().unwrap().to_owned();
    let handshaking = "admission_kit_connections_handshaking ";

    // One peer opens 20 connections and says nothing: 3 are in their handshake, 17 refused.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(silent_from([127, 0, 0, 2], &server).await);
    }
    metric_reaches(&server, handshaking, 3.0).await;
    metric_reaches(&server, "admission_kit_connections_refused_total{reason=\"peer_handshakes\"}", 17.0).await;
    // They hold no connection slot: more clients than the connection cap's worth of silent peers
    // are served, each on a connection of its own.
    for i in 0..6 {
        let client = client(&[&ca], false);
        assert_eq!(post(&client, &server, pod_body("on", &format!("real-{i}"), None)).await.unwrap().0, 200);
    }

    // Other peers fill the rest of the budget (6). A new client from an address holding fewer
    // handshakes takes the slot of the oldest handshake of the address holding the most: a flood
    // from many addresses cannot keep new clients out, however fast it comes.
    let mut others = Vec::new();
    for source in [[127, 0, 0, 3], [127, 0, 0, 3], [127, 0, 0, 4]] {
        others.push(silent_from(source, &server).await);
    }
    metric_reaches(&server, handshaking, 6.0).await;
    let client_new = client(&[&ca], false);
    assert_eq!(post(&client_new, &server, pod_body("on", "in-a-full-budget", None)).await.unwrap().0, 200);
    metric_reaches(&server, "admission_kit_connections_refused_total{reason=\"handshake_evicted\"}", 1.0).await;
    let mut oldest = silent.remove(0);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), oldest.read(&mut buf)).await.expect("the oldest is closed");
    assert!(matches!(read, Ok(0) | Err(_)));
    // An address holding as many as any other takes the slot of the oldest handshake once that one
    // has lasted longer than a real client needs.
    // (The client's handshake is over: one more fills the budget again; 127.0.0.2, 127.0.0.3 and
    // 127.0.0.4 then hold two each.)
    let fill = silent_from([127, 0, 0, 4], &server).await;
    metric_reaches(&server, handshaking, 6.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newer = silent_from([127, 0, 0, 4], &server).await;
    metric_reaches(&server, "admission_kit_connections_refused_total{reason=\"handshake_evicted\"}", 2.0).await;

    // The silent peers go away: their slots come back.
    drop((silent, others, fill, newer));
    metric_reaches(&server, handshaking, 0.0).await;
    // Handshakes younger than a real client needs are never evicted for an address holding as
    // many as any other: with the budget filled at once, one each from six addresses, the next
    // connection from one of them is refused.
    let mut burst = Vec::new();
    for last in 3..9 {
        burst.push(silent_from([127, 0, 0, last], &server).await);
    }
    let mut refused = silent_from([127, 0, 0, 5], &server).await;
    let read = tokio::time::timeout(Duration::from_secs(2), refused.read(&mut buf)).await.expect("refused at once");
    assert!(matches!(read, Ok(0) | Err(_)));
    metric_reaches(&server, "admission_kit_connections_refused_total{reason=\"handshake_budget\"}", 1.0).await;
    drop(burst);
    metric_reaches(&server, handshaking, 0.0).await;
    let client = client(&[&ca], true);
    assert_eq!(post(&client, &server, pod_body("on", "after", None)).await.unwrap().0, 200);
    server.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn a_silent_handshake_is_cut_at_the_handshake_timeout() {
    let mut config = ServerConfig::local();
    config.handshake_timeout = Duration::from_millis(300);
    let server = start(config).await;
    let mut silent = silent_from([127, 0, 0, 2], &server).await;
    let started = Instant::now();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await.expect("closed by the server");
    assert!(matches!(read, Ok(0) | Err(_)));
    assert!(started.elapsed() >= Duration::from_millis(250), "closed after {:?}", started.elapsed());
    metric_reaches(&server, "admission_kit_connections_handshaking ", 0.0).await;
    metric_reaches(&server, "admission_kit_tls_handshake_failures_total ", 1.0).await;
    server.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn unready_until_caches_sync() {
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::new(ServerConfig::local(), [pipeline()])
        .ready_when(async move {
            let _ = synced_rx.await;
        })
        .start()
        .await
        .unwrap();
    let readyz = format!("http://{}/readyz", server.admin_addr());
    let r = reqwest::get(&readyz).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("1 cache(s) not yet synced"));
    assert_eq!(reqwest::get(format!("http://{}/livez", server.admin_addr())).await.unwrap().status(), 200);
    synced_tx.send(()).unwrap();
    let started = Instant::now();
    while reqwest::get(&readyz).await.unwrap().status() != 200 {
        assert!(started.elapsed() < Duration::from_secs(2), "never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.shutdown_and_wait().await.unwrap();
}

/// Reads one HTTP/1.1 response (headers and a `Content-Length` body) from a raw stream.
async fn read_response(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed mid-response: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_and_slow_bodies_get_408() {
    let mut config = ServerConfig::local();
    config.idle_timeout = Duration::from_millis(300);
    config.request_timeout = Duration::from_millis(300);
    let server = start(config).await;
    let ca = server.ca_pem().unwrap().to_owned();

    // Keep-alive: two requests on one connection, then silence until the idle timeout.
    let mut tls = tls_connect(server.webhook_addr(), &ca).await;
    for uid in ["ka-1", "ka-2"] {
        let body = pod_body("on", uid, None);
        let head = format!(
            "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&body).await.unwrap();
        let response = read_response(&mut tls).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(uid));
    }
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection must be closed after the idle timeout");
    assert!(rest.is_empty(), "nothing more is sent on an idle connection: {}", String::from_utf8_lossy(&rest));

    // A body that stops arriving is answered with 408 after the request timeout.
    let mut tls = tls_connect(server.webhook_addr(), &ca).await;
    tls.write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"apiVersion\"")
        .await
        .unwrap();
    let response = read_response(&mut tls).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    server.shutdown_and_wait().await.unwrap();
}

#[tokio::test]
async fn hostile_bodies_in_process_get_400_not_a_crash() {
    let router = admission_kit::server::router(ServerConfig::local(), &[pipeline()], namespaces());
    let deep = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"deep","object":{}{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (status, body) = testing::call_router(&router, "/mutate", deep.into_bytes()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("recursion limit"), "{}", String::from_utf8_lossy(&body));
    let mut not_utf8 = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""#.to_vec();
    not_utf8.extend_from_slice(&[0xff, 0xfe]);
    not_utf8.extend_from_slice(br#""}}"#);
    let (status, body) = testing::call_router(&router, "/mutate", not_utf8).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, body) = testing::call_router(&router, "/mutate", pod_body("on", "in-process", None)).await;
    let review: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status.as_u16(), &review["response"]["uid"], &review["response"]["patchType"]),
        (200, &json!("in-process"), &json!("JSONPatch"))
    );
}

/// A burst of new connections must not overflow the kernel's accept queue: the webhook port listens
/// with the system's maximum backlog, not tokio's default of 128 (the `stalled-connections` fault
/// test saw 128 overflow with 1,000 connections opened at once). `ss` reports a listening socket's
/// backlog as its Send-Q.
#[tokio::test]
async fn both_ports_listen_with_the_system_maximum_backlog() {
    let server = start(ServerConfig::local()).await;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    let expected = somaxconn.min(admission_kit::server::LISTEN_BACKLOG);
    assert!(expected > 128, "this machine's somaxconn is {somaxconn}: nothing to tell apart from tokio's default");
    for addr in [server.webhook_addr(), server.admin_addr()] {
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{}", addr.port())])
            .output()
            .expect("`ss` (iproute2) reads the listen backlog");
        let text = String::from_utf8_lossy(&out.stdout);
        // State Recv-Q Send-Q Local-Address:Port Peer-Address:Port
        let backlog: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
        assert_eq!(backlog, vec![expected.to_string()], "ss for {addr}: {text}");
    }
}

/// Fails (admitted without its change, by its failure mode) for pods whose behaviour is `fail-open`.
struct Lenient;

#[async_trait]
impl Mutator<Pod> for Lenient {
    async fn mutate(&self, pod: &mut Pod, _: &mut Context<'_>) -> MutationResult {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        if annotations.get("test/behaviour").map(String::as_str) == Some("fail-open") {
            return Err(MutationError::failed("the label service is unavailable"));
        }
        Ok(())
    }
}

/// The book's example alerts (`book/src/operations/prometheus-alerts.yaml`) query these series by
/// these labels: a running server driven through each outcome must count each one there, with
/// exactly those labels (a renamed metric or label would leave an alert that never fires).
#[tokio::test]
async fn the_series_the_alerts_query_count_each_outcome() {
    const HOOK: &str = "alerts.test.example.com";
    let pipeline = Pipeline::builder(HOOK)
        .step(Step::new("sidecar", Sidecar).when(matcher::namespace_label("inject", "enabled")))
        .step(Step::new("lenient", Lenient).on_error(FailureMode::AllowWithWarning))
        .build()
        .unwrap();
    let server = Server::new(ServerConfig::local(), [pipeline]).namespaces(namespaces()).start().await.unwrap();
    let client = client(&[server.ca_pem().unwrap()], true);
    for (uid, behaviour, allowed) in [
        ("patched", None, true),
        ("denied", Some("deny"), false),
        ("failed", Some("fail"), false),
        ("fail-open", Some("fail-open"), true),
        ("panics", Some("panic"), false),
    ] {
        let (status, review) = post(&client, &server, pod_body("on", uid, behaviour)).await.unwrap();
        assert_eq!((status, review["response"]["allowed"].as_bool()), (200, Some(allowed)), "{uid}: {review}");
    }
    let (status, _) = post(&client, &server, b"{not json".to_vec()).await.unwrap_or((0, Value::Null));
    assert_eq!(status, 400);

    let requests = |result: &str, operation: &str| {
        format!(r#"admission_kit_requests_total{{webhook="{HOOK}",operation="{operation}",result="{result}"}}"#)
    };
    let step = |name: &str, series: &str| format!(r#"{name}{{webhook="{HOOK}",step="{series}"}}"#);
    metric_reaches(&server, &requests("patched", "CREATE"), 2.0).await; // patched, and fail-open (sidecar kept)
    metric_reaches(&server, &requests("denied", "CREATE"), 3.0).await; // denied, failed, panics
    metric_reaches(&server, &requests("invalid", "unknown"), 1.0).await;
    metric_reaches(&server, &step("admission_kit_step_failures_total", "sidecar"), 1.0).await;
    metric_reaches(&server, &step("admission_kit_step_fail_open_total", "lenient"), 1.0).await;
    metric_reaches(&server, &step("admission_kit_mutator_panics_total", "sidecar"), 1.0).await;
    metric_reaches(&server, "admission_kit_draining", 0.0).await;
    let expiry = metric(&server, "admission_kit_certificate_expiry_timestamp_seconds").await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(expiry > now + 14.0 * 24.0 * 3600.0, "a fresh certificate expires in more than 14 days: {expiry}");
    let text = reqwest::get(format!("http://{}/metrics", server.admin_addr())).await.unwrap().text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("admission_kit_request_duration_seconds_bucket{")
            && l.contains(&format!(r#"webhook="{HOOK}""#))),
        "no latency histogram by webhook:\n{text}"
    );
    server.shutdown_and_wait().await.unwrap();
}

/// `shutdownTimeout` bounds the wait for reviews in flight: a review still running when it passes
/// is cut off (its connection closed, no answer) and the server stops, instead of waiting for it.
#[tokio::test]
async fn the_shutdown_timeout_cuts_off_a_review_still_running() {
    let mut config = ServerConfig::local();
    config.shutdown_timeout = Duration::from_secs(1);
    let server = start(config).await;
    let client = client(&[server.ca_pem().unwrap()], true);
    let port = server.webhook_addr().port();
    // The `slow` step sleeps 5 s (the review's own deadline is the default 10 s).
    let in_flight = tokio::spawn(async move {
        client
            .post(format!("https://localhost:{port}/mutate"))
            .header("content-type", "application/json")
            .body(pod_body("on", "slow", Some("slow")))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    server.shutdown_and_wait().await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "stopped before the shutdown timeout: {took:?}");
    assert!(took < Duration::from_secs(3), "waited for the review instead of cutting it off: {took:?}");
    let outcome =
        tokio::time::timeout(Duration::from_secs(5), in_flight).await.expect("the client was answered or cut off");
    assert!(outcome.unwrap().is_err(), "the cut-off review got an answer");
}

/// Each new connection is one completed handshake in `admission_kit_tls_handshake_duration_seconds`
/// (by kind, full or resumed): a client reusing one connection adds one; a client opening a
/// connection per review adds one per review.
#[tokio::test]
async fn handshakes_count_the_connections_clients_open() {
    let server = start(ServerConfig::local()).await;
    let ca = server.ca_pem().unwrap().to_owned();
    let handshakes = || async {
        let series = "admission_kit_tls_handshake_duration_seconds_count";
        metric(&server, &format!(r#"{series}{{kind="full"}}"#)).await
            + metric(&server, &format!(r#"{series}{{kind="resumed"}}"#)).await
    };
    let reusing = client(&[&ca], true);
    for i in 0..5 {
        let (status, _) = post(&reusing, &server, pod_body("on", &format!("k{i}"), None)).await.unwrap();
        assert_eq!(status, 200);
    }
    assert!((handshakes().await - 1.0).abs() < 0.5, "one connection reused: {}", handshakes().await);
    let opening = client(&[&ca], false);
    for i in 0..3 {
        let (status, _) = post(&opening, &server, pod_body("on", &format!("n{i}"), None)).await.unwrap();
        assert_eq!(status, 200);
    }
    assert!((handshakes().await - 4.0).abs() < 0.5, "one more per new connection: {}", handshakes().await);
    server.shutdown_and_wait().await.unwrap();
}
