//! A real SIGTERM to a real server process under load: it goes unready, keeps serving through the
//! drain delay, finishes in-flight requests, closes keep-alive connections and exits 0, with no
//! failed request.
//!
//! The server process is this test binary run again with `ADMISSION_KIT_SIGTERM_CHILD` set, so
//! that the test needs no separate binary.
#![cfg(feature = "testing")]

use std::io::BufRead as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use admission_kit::prelude::*;
use admission_kit::server::{Server, ServerConfig, shutdown_signal};
use k8s_openapi::api::core::v1::Pod;

const CHILD: &str = "ADMISSION_KIT_SIGTERM_CHILD";

struct Label;

#[async_trait]
impl Mutator<Pod> for Label {
    async fn mutate(&self, pod: &mut Pod, _: &mut Context<'_>) -> MutationResult {
        if pod.metadata.name.as_deref() == Some("slow") {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        pod.metadata.labels.get_or_insert_default().insert("seen".into(), "yes".into());
        Ok(())
    }
}

/// The server side: only does something when run by `sigterm_under_load_fails_no_request`.
#[tokio::test]
async fn child_server() {
    let Ok(ca_path) = std::env::var(CHILD) else {
        return;
    };
    admission_kit::telemetry::init(admission_kit::telemetry::LogFormat::Json, Some("info,admission_kit=debug"))
        .unwrap();
    let mut config = ServerConfig::local();
    config.drain_delay = Duration::from_millis(800);
    let pipeline = Pipeline::builder("sigterm.test.example.com").step(Step::new("label", Label)).build().unwrap();
    let running = Server::new(config, [pipeline]).start().await.unwrap();
    std::fs::write(&ca_path, running.ca_pem().unwrap()).unwrap();
    println!("READY {} {}", running.webhook_addr().port(), running.admin_addr().port());
    // A failed parent must not leave this process behind: give up after a minute.
    tokio::select! {
        () = shutdown_signal() => {}
        () = tokio::time::sleep(Duration::from_secs(60)) => std::process::exit(3),
    }
    running.shutdown_and_wait().await.unwrap();
    println!("STOPPED");
    std::process::exit(0);
}

fn body(name: &str, uid: &str) -> String {
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"{uid}","kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"name":"{name}","namespace":"default","operation":"CREATE","object":{{"metadata":{{"name":"{name}"}},"spec":{{"containers":[{{"name":"a"}}]}}}}}}}}"#
    )
}

#[tokio::test]
async fn sigterm_under_load_fails_no_request() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_server", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &ca_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (logs, mut lines, webhook, admin) = watch_child(&mut child);
    let ca = std::fs::read(&ca_path).unwrap();
    let client = reqwest::Client::builder()
        .http1_only()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{webhook}/mutate");

    let (failures, during_drain, total) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let unready = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (client, url, failures, during_drain, total, unready) =
            (client.clone(), url.clone(), failures.clone(), during_drain.clone(), total.clone(), unready.clone());
        workers.push(tokio::spawn(async move {
            let mut stop_at: Option<Instant> = None;
            for i in 0.. {
                if stop_at.is_some_and(|t| Instant::now() > t) {
                    break;
                }
                let draining = unready.load(Ordering::Relaxed);
                if draining && stop_at.is_none() {
                    // Endpoints take a moment to drop an unready replica; keep sending meanwhile.
                    stop_at = Some(Instant::now() + Duration::from_millis(400));
                }
                let name = if i == 3 && w == 0 { "slow" } else { "fast" };
                let result = match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body(name, &format!("{w}-{i}")))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => r.text().await.map(|t| t.contains("\"allowed\":true")),
                    Ok(r) => Ok(false).inspect(|_| eprintln!("status {}", r.status())),
                    Err(e) => Err(e),
                };
                total.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(true) => {
                        if draining {
                            during_drain.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other => {
                        eprintln!("request {w}-{i} failed: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        let code = reqwest::get(format!("http://127.0.0.1:{admin}/readyz")).await.map_or(0, |r| r.status().as_u16());
        if code == 503 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "the server did not go unready after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    unready.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(exit.success(), "the server exits 0 after draining, got {exit}");
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("STOPPED"))), "the server stopped through its drain path");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request may fail (of {})", total.load(Ordering::Relaxed));
    assert!(during_drain.load(Ordering::Relaxed) > 0, "requests were served while draining");

    assert_structured_logs(&logs.join().unwrap());
}

/// One JSON object per line, each review's line carrying its span's fields.
fn assert_structured_logs(logs: &str) {
    let lines: Vec<serde_json::Value> =
        logs.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let answered = lines
        .iter()
        .find(|l| l["message"] == "answered" && l["span"]["uid"] == "0-3")
        .unwrap_or_else(|| panic!("no `answered` line for uid 0-3 in:\n{logs}"));
    assert_eq!(answered["span"]["kind"], "Pod");
    assert_eq!(answered["span"]["namespace"], "default");
    assert_eq!(answered["span"]["object_name"], "slow");
    assert_eq!(answered["span"]["operation"], "Create");
    assert_eq!(answered["span"]["webhook"], "sigterm.test.example.com");
    assert_eq!(answered["result"], "patched");
    assert!(lines.iter().any(|l| l["message"] == "SIGTERM received"), "{logs}");
}

type ChildLines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// Collects the child's logs on a thread (a full pipe must never block it) and waits for its
/// `READY <webhook port> <admin port>` line.
fn watch_child(child: &mut std::process::Child) -> (std::thread::JoinHandle<String>, ChildLines, u16, u16) {
    // Drain the child's logs as they come so a full pipe never blocks it.
    let mut stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = loop {
        let line = lines.next().expect("the child prints READY").unwrap();
        // libtest prints `test child_server ... ` on the same line first.
        if let Some((_, rest)) = line.split_once("READY ") {
            break rest.to_owned();
        }
    };
    let mut ports = ready.split(' ').map(|p| p.parse::<u16>().unwrap());
    (logs, lines, ports.next().unwrap(), ports.next().unwrap())
}
