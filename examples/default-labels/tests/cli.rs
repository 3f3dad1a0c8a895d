//! The binary a plugin author gets from `admission_kit::cli::run`, run as a user runs it: the
//! standard command line's flags and `ADMISSION_KIT_*` variables, `--write-ca`, and
//! `webhook-config --service`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_default-labels");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills the server when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn webhook_config_through_a_service_with_a_ca_file_and_exclusions() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
    let out = Command::new(BIN)
        .args(["webhook-config", "--service", "team/default-labels:8443", "--exclude-namespace", "kube-system,team"])
        .arg("--ca-file")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hook = &config["webhooks"][0];
    assert_eq!(
        hook["clientConfig"]["service"],
        json!({"namespace": "team", "name": "default-labels", "port": 8443, "path": "/mutate"})
    );
    let bundle = base64::engine::general_purpose::STANDARD.decode(hook["clientConfig"]["caBundle"].as_str().unwrap());
    assert_eq!(bundle.unwrap(), std::fs::read(&ca).unwrap(), "the caBundle is the file's content");
    let excluded = hook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "kubernetes.io/metadata.name")
        .cloned();
    assert_eq!(excluded.unwrap()["values"], json!(["kube-system", "team"]));

    for (bad, named) in [("team", "namespace/name"), ("team/hook:https", "port `https`")] {
        let out = Command::new(BIN).args(["webhook-config", "--service", bad]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(named), "--service {bad}: {stderr}");
    }
}

/// `serve` configured by a flag and an environment variable at once, with a generated certificate
/// whose CA `--write-ca` writes: a client trusting only that CA gets the webhook's answer.
#[tokio::test]
async fn serve_takes_flags_and_environment_and_writes_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    let (webhook, admin) = (free_port(), free_port());
    let _server = Killed(
        Command::new(BIN)
            // The standard flags come before the subcommand (`default-labels [OPTIONS] [COMMAND]`).
            .args(["--admin-addr", &format!("127.0.0.1:{admin}"), "--namespace-cache", "never"])
            .arg("--write-ca")
            .arg(&ca_file)
            .arg("serve")
            .env("ADMISSION_KIT_WEBHOOK_ADDR", format!("127.0.0.1:{webhook}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    loop {
        let ready = reqwest::get(format!("http://127.0.0.1:{admin}/readyz")).await.is_ok_and(|r| r.status() == 200);
        if ready && ca_file.exists() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never ready with its CA written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca = std::fs::read(&ca_file).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "app"}]}});
    let target = admission_kit::pipeline::ResourceTarget::of::<k8s_openapi::api::core::v1::Pod>();
    let review = admission_kit::testing::review_json(pod, &target).namespace("apps").uid("u-1").body();
    let answer: Value = client
        .post(format!("https://localhost:{webhook}/mutate"))
        .header("content-type", "application/json")
        .body(review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["response"]["uid"], "u-1");
    assert_eq!(answer["response"]["allowed"], true);
    let patch =
        base64::engine::general_purpose::STANDARD.decode(answer["response"]["patch"].as_str().unwrap()).unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    assert!(patch.to_string().contains("unassigned"), "the default team label: {patch}");
}
