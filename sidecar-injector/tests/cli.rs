//! The `sidecar-injector` binary as a user runs it: every subcommand, configuration layering and
//! errors, offline injection of the Expedia sample, and `serve` answering real reviews over TLS
//! while its catalog is hot-reloaded.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sidecar-injector");

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out =
        Command::new(BIN).args(args).env_remove("SIDECAR_INJECTOR_CONFIG").envs(env.iter().copied()).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["serve", "inject", "explain", "webhook-config", "policy", "check"] {
        let (ok, out, _) = run(&[sub, "--help"], &[]);
        assert!(ok && out.contains("Usage: sidecar-injector"), "{sub} --help:\n{out}");
    }
    let (ok, out, _) = run(&["--help"], &[]);
    assert!(ok && out.contains("--config") && out.contains("--set") && out.contains("--catalog"), "{out}");
}

/// `policy` prints the webhook-less objects for the configuration and catalogs given, as a `List`
/// `kubectl apply -f` takes; a setting a policy cannot honour is refused, naming it, with nothing
/// printed.
#[test]
fn policy_prints_the_objects_of_webhook_less_mode() {
    let (ok, out, err) = run(&["--catalog", &data("catalog-2022.yaml"), "--set", "sidecars=null", "policy"], &[]);
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "List");
    let kinds: Vec<&str> = list["items"].as_array().unwrap().iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "MutatingAdmissionPolicy",
            "MutatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    let policy = list["items"][0].to_string();
    assert!(policy.contains("busybox") && policy.contains("haystack-agent"), "both catalog entries are in the policy");
    let (ok, _, err) = run(&["--exclude-namespace", "x", "policy"], &[]);
    assert!(!ok, "--exclude-namespace belongs to the subcommand: {err}");
    let (ok, out, _) = run(&["policy", "--exclude-namespace", "legacy"], &[]);
    assert!(ok && out.contains("legacy"), "{out}");

    let (ok, out, err) = run(&["--set", "namespaceCatalogs=true", "policy"], &[]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("cannot run as a policy") && err.contains("`namespaceCatalogs`"), "{err}");
}

#[test]
fn check_validates_config_and_catalogs() {
    let (ok, out, _) = run(&["check"], &[]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "configuration OK; 1 sidecar(s): haystack-agent");
    let (ok, out, _) = run(&["--catalog", &data("catalog-2022.yaml"), "--set", "sidecars=null", "check"], &[]);
    assert!(ok);
    assert_eq!(out.trim(), "configuration OK; 2 sidecar(s): busybox, haystack-agent");
    let (ok, _, err) = run(&["--catalog", &data("catalog-2022.yaml"), "check"], &[]);
    assert!(!ok && err.contains("sidecar `haystack-agent` is defined twice"), "{err}");
}

#[test]
fn check_refuses_names_a_pod_could_not_get_twice_naming_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalog.yaml");
    let check = |text: &str| {
        std::fs::write(&file, text).unwrap();
        run(&["--catalog", file.to_str().unwrap(), "--set", "sidecars=null", "check"], &[])
    };
    // One entry with two volumes of the same name: every pod asking for it would be denied.
    let (ok, out, err) = check(
        "- name: agent\n  volumes:\n    - {name: conf, emptyDir: {}}\n    - {name: conf, configMap: {name: x}}\n",
    );
    assert!(!ok && err.contains("sidecar `agent`: volume name `conf` is used twice"), "{out}{err}");
    // Two entries adding the same container, which one pod may ask for together.
    let (ok, out, err) = check(
        "- name: agent\n  containers: [{name: proxy, image: a}]\n- name: mesh\n  containers: [{name: proxy, image: m}]\n",
    );
    assert!(
        !ok && err.contains("sidecars `agent` (in ")
            && err.contains("and `mesh` (in ")
            && err.contains("both add container `proxy`"),
        "{out}{err}"
    );
    // Kept apart by their namespaces, they never meet in one pod.
    let (ok, out, err) = check(
        "- name: agent\n  namespaces: [a]\n  containers: [{name: proxy, image: a}]\n- name: mesh\n  namespaces: [b]\n  containers: [{name: proxy, image: m}]\n",
    );
    assert!(ok && out.trim() == "configuration OK; 2 sidecar(s): agent, mesh", "{out}{err}");
}

#[test]
fn config_errors_name_the_key_and_the_source_and_exit_non_zero() {
    let (ok, _, err) = run(&["check"], &[("SIDECAR_INJECTOR_TIMEOUT_SECONDS", "soon")]);
    assert!(!ok);
    assert!(
        err.contains("`timeoutSeconds`: invalid type: found string \"soon\", expected i32 (from environment variable SIDECAR_INJECTOR_TIMEOUT_SECONDS)"),
        "{err}"
    );
    let (ok, _, err) = run(&["check"], &[("SIDECAR_INJECTOR_SERVER__TLS_CERT_FILE", "3")]);
    assert!(
        !ok && err.contains("`server.tlsCertFile`") && err.contains("SIDECAR_INJECTOR_SERVER__TLS_CERT_FILE"),
        "{err}"
    );
    let (ok, _, err) = run(&["--set", "timeoutSeconds=soon", "check"], &[]);
    assert!(!ok && err.contains("`timeoutSeconds`") && err.contains("(from --set timeoutSeconds)"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, "annotationPrefix: x.io\nnamespaceLabel: oops\n").unwrap();
    let (ok, _, err) = run(&["--config", file.to_str().unwrap(), "check"], &[]);
    assert!(!ok && err.contains("namespaceLabel") && err.contains(file.to_str().unwrap()), "{err}");
    let (ok, _, err) = run(&["check"], &[("SIDECAR_INJECTOR_SERVER__LOG_FORMAT", "xml")]);
    assert!(
        !ok && err.contains(
            "`server.logFormat`: unknown variant: found `xml`, expected ``text` or `json`` (from environment variable SIDECAR_INJECTOR_SERVER__LOG_FORMAT)"
        ),
        "{err}"
    );
}

#[test]
fn layers_defaults_file_environment_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, "timeoutSeconds: 3\nfailurePolicy: Ignore\n").unwrap();
    let config = file.to_str().unwrap();
    let timeout = |args: &[&str], env: &[(&str, &str)]| -> Value {
        let (ok, out, err) = run(args, env);
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()["webhooks"][0]["timeoutSeconds"].clone()
    };
    assert_eq!(timeout(&["webhook-config"], &[]), json!(10), "default");
    assert_eq!(timeout(&["--config", config, "webhook-config"], &[]), json!(3), "file over defaults");
    assert_eq!(timeout(&["webhook-config"], &[("SIDECAR_INJECTOR_CONFIG", config)]), json!(3), "the file named by env");
    assert_eq!(
        timeout(&["--config", config, "webhook-config"], &[("SIDECAR_INJECTOR_TIMEOUT_SECONDS", "7")]),
        json!(7),
        "env over file"
    );
    assert_eq!(
        timeout(
            &["--config", config, "--set", "timeoutSeconds=4", "webhook-config"],
            &[("SIDECAR_INJECTOR_TIMEOUT_SECONDS", "7")]
        ),
        json!(4),
        "flags over env"
    );
    let (_, out, _) = run(&["--config", config, "webhook-config", "--url", "https://127.0.0.1:8443"], &[]);
    let hook = &serde_json::from_str::<Value>(&out).unwrap()["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["clientConfig"]["url"], "https://127.0.0.1:8443/mutate");
    assert_eq!(
        hook["namespaceSelector"]["matchExpressions"][0],
        json!({"key": "kubernetes-sidecar-injector", "operator": "In", "values": ["enabled"]})
    );
    assert_eq!(
        hook["namespaceSelector"]["matchExpressions"][1],
        json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-public"]})
    );
}

#[test]
fn inject_the_expedia_sample_deployment() {
    let (ok, out, err) = run(&["inject", "-f", &data("echo-server-deployment.yaml")], &[]);
    assert!(ok, "{err}");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
    assert_eq!(docs.len(), 2);
    let template = &docs[0]["spec"]["template"];
    let names: Vec<&str> =
        template["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["echo-server", "haystack-agent"]);
    let env = &template["spec"]["containers"][1]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "some-api-key", "value": "6feab492-fc9b-4c38-b50d-3791718c8203"})),
        "{env}"
    );
    assert_eq!(template["spec"]["containers"][0].get("env"), None, "the app's container gets no env");
    assert_eq!(docs[1]["kind"], "Service");
    assert_eq!(docs[1].get("spec").and_then(|s| s.get("template")), None, "other kinds pass through");
}

/// Every workload kind `inject` and `explain` know, one a `List` item, read from stdin: each pod
/// template gets the sidecar and the env, whatever the kind; other kinds pass through unchanged
/// (a `List`'s items as documents of their own).
#[test]
fn inject_and_explain_every_workload_kind_from_stdin() {
    let template = json!({
        "metadata": {"labels": {"app": "w"}, "annotations": {
            "sidecar-injector.expedia.com/inject": "haystack-agent",
            "sidecar-injector.expedia.com/api-key": "k-1",
        }},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    });
    let workload = |kind: &str, api: &str, spec: Value| json!({"apiVersion": api, "kind": kind, "metadata": {"name": kind.to_lowercase()}, "spec": spec});
    let with_template = json!({"selector": {"matchLabels": {"app": "w"}}, "template": template});
    let documents = [
        workload("StatefulSet", "apps/v1", with_template.clone()),
        workload("DaemonSet", "apps/v1", with_template.clone()),
        workload("ReplicaSet", "apps/v1", with_template.clone()),
        workload("Job", "batch/v1", json!({"template": template})),
        workload(
            "CronJob",
            "batch/v1",
            json!({"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}),
        ),
        json!({"apiVersion": "v1", "kind": "List", "items": [
            workload("ReplicationController", "v1", json!({"selector": {"app": "w"}, "template": template})),
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "passes"}, "data": {"k": "v"}},
        ]}),
    ];
    let text: String = documents.iter().map(|d| ["---\n", &serde_json::to_string(d).unwrap(), "\n"].concat()).collect();
    let run_stdin = |args: &[&str]| {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("SIDECAR_INJECTOR_CONFIG")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (ok, out, err) = run_stdin(&["inject", "-f", "-"]);
    assert!(ok, "{err}");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
    let templates: Vec<(&str, &Value)> = docs
        .iter()
        .flat_map(|d| if d["kind"] == "List" { d["items"].as_array().unwrap().iter().collect() } else { vec![d] })
        .filter_map(|d| {
            let kind = d["kind"].as_str().unwrap();
            let template =
                if kind == "CronJob" { &d["spec"]["jobTemplate"]["spec"]["template"] } else { &d["spec"]["template"] };
            (kind != "ConfigMap").then_some((kind, template))
        })
        .collect();
    let kinds: Vec<&str> = templates.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, ["StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "ReplicationController"]);
    for (kind, template) in templates {
        let containers = template["spec"]["containers"].as_array().unwrap();
        let names: Vec<&str> = containers.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["app", "haystack-agent"], "{kind}");
        assert!(
            containers[1]["env"].as_array().unwrap().contains(&json!({"name": "api-key", "value": "k-1"})),
            "{kind}"
        );
    }
    // A `List`'s items come out as documents of their own.
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").expect("the List's ConfigMap");
    assert_eq!(config_map, &documents[5]["items"][1], "other kinds pass through unchanged");

    let (ok, out, err) = run_stdin(&["explain", "-f", "-", "-n", "apps"]);
    assert!(ok, "{err}");
    for name in ["statefulset", "daemonset", "replicaset", "job", "cronjob", "replicationcontroller"] {
        assert!(out.contains(&format!(" {name}: would be injected")), "{name}:\n{out}");
    }
}

#[test]
fn explain_says_why() {
    let (ok, out, _) = run(&["explain", "-f", &data("echo-server-deployment.yaml")], &[]);
    assert!(ok);
    assert!(out.contains("Deployment echo-server-deployment: would be injected"), "{out}");
    assert!(out.contains("Service echo-server: no pod template"), "{out}");
    let (ok, out, _) =
        run(&["explain", "-f", &data("echo-server-deployment.yaml"), "--namespace-labels", "team=a"], &[]);
    assert!(ok);
    assert!(
        out.contains("would NOT be injected") && out.contains("namespace label kubernetes-sidecar-injector=enabled"),
        "{out}"
    );
    let (ok, out, _) = run(&["explain", "-f", &data("echo-server-deployment.yaml"), "-n", "kube-system"], &[]);
    assert!(ok && out.contains("namespace not in [kube-system, kube-public]"), "{out}");
}

struct Served {
    child: std::process::Child,
    port: u16,
    admin: u16,
    ca: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve` with the given arguments on loopback ports chosen by the OS.
fn serve(args: &[&str]) -> Served {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("serve")
        .env("SIDECAR_INJECTOR_SERVER__WEBHOOK_ADDR", "127.0.0.1:0")
        .env("SIDECAR_INJECTOR_SERVER__ADMIN_ADDR", "127.0.0.1:0")
        .env("SIDECAR_INJECTOR_SERVER__NAMESPACE_CACHE", "never")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port_of = |marker: &str| -> u16 {
        let rest = &first[first.find(marker).unwrap_or_else(|| panic!("no {marker} in {first}")) + marker.len()..];
        let addr = rest.split([' ', ')']).next().unwrap();
        addr.rsplit(':').next().unwrap().parse().unwrap()
    };
    let (port, admin) = (port_of("on https://"), port_of("(admin http://"));
    let mut ca = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("-----BEGIN") || !ca.is_empty() {
            ca.push_str(&line);
            ca.push('\n');
        }
        if line.starts_with("-----END") {
            break;
        }
    }
    Served { child, port, admin, ca }
}

async fn review(served: &Served, body: &[u8]) -> Value {
    let client = reqwest::Client::builder()
        .http1_only()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(served.ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let response = client
        .post(format!("https://localhost:{}/mutate?timeout=10s", served.port))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn patch_of(review: &Value) -> Value {
    use base64::Engine as _;
    let Some(patch) = review["response"]["patch"].as_str() else { return json!([]) };
    serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(patch).unwrap()).unwrap()
}

#[tokio::test]
async fn serve_with_the_embedded_configuration_answers_the_captured_review() {
    let served = serve(&[]);
    let body = std::fs::read(data("expedia-2019-admission-review-v1beta1.json")).unwrap();
    let answer = review(&served, &body).await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(answer["response"]["uid"], "6e397dab-317d-11e9-b50f-080027bbd2ff");
    assert_eq!(answer["response"]["allowed"], true);
    let patch = patch_of(&answer);
    let added =
        patch.as_array().unwrap().iter().find(|op| op["path"] == "/spec/containers/1").expect("the sidecar is added");
    assert_eq!(added["value"]["name"], "haystack-agent");
    assert!(
        added["value"]["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "api-key", "value": "bd8a1dd2-735d-466e-ba30-201660185e64"}))
    );
}

fn mount(dir: &Path, generation: u32, text: &str) {
    let ts = dir.join(format!("..gen_{generation}"));
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::write(ts.join("sidecars.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(ts.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if std::fs::symlink_metadata(dir.join("sidecars.yaml")).is_err() {
        std::os::unix::fs::symlink("..data/sidecars.yaml", dir.join("sidecars.yaml")).unwrap();
    }
}

fn pod_review(inject: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "hot", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "apps", "operation": "CREATE",
            "object": {"metadata": {"name": "p", "annotations": {"sidecar-injector.expedia.com/inject": inject}},
                       "spec": {"containers": [{"name": "app", "image": "app"}]}},
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn catalog_hot_reload_from_a_mounted_configmap() {
    let dir = tempfile::tempdir().unwrap();
    mount(dir.path(), 1, "- name: one\n  containers: [{name: one, image: one}]\n");
    let path = dir.path().to_str().unwrap();
    let served = serve(&["--catalog", path, "--set", "sidecars=null", "--set", "catalogReloadInterval=100ms"]);
    let first = review(&served, &pod_review("one")).await;
    assert_eq!(first["response"]["allowed"], true);
    let denied = review(&served, &pod_review("two")).await;
    assert!(
        denied["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("sidecar `two` is not in the catalog; known: one")
    );

    mount(
        dir.path(),
        2,
        "- name: one\n  containers: [{name: one, image: one}]\n- name: two\n  containers: [{name: two, image: two}]\n",
    );
    let started = Instant::now();
    loop {
        let answer = review(&served, &pod_review("two")).await;
        if answer["response"]["allowed"] == true {
            assert!(patch_of(&answer).to_string().contains("\"two\""));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the new sidecar never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken update keeps the last good catalog and is counted.
    mount(dir.path(), 3, "- name: [broken\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(review(&served, &pod_review("two")).await["response"]["allowed"], true);
    // A name no catalog has: denied, and counted as the alert on unknown sidecars reads it.
    assert_eq!(review(&served, &pod_review("nope")).await["response"]["allowed"], false);
    let metrics =
        reqwest::get(format!("http://127.0.0.1:{}/metrics", served.admin)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"admission_kit_sidecar_injector_catalog_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("admission_kit_sidecar_injector_catalog_stale 1"), "{metrics}");
    assert!(metrics.contains("admission_kit_sidecar_injector_catalog_sidecars 2"), "{metrics}");
    assert!(
        metrics.contains(r#"admission_kit_sidecar_injector_injections_total{sidecar="two",outcome="injected"}"#),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with("admission_kit_sidecar_injector_injections_total{")
            && l.contains(r#"outcome="unknown""#)
            && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[test]
fn kubelet_service_variables_in_the_environment_do_not_break_the_configuration() {
    // A pod in the namespace of a Service named `sidecar-injector` gets these from kubelet.
    let links = [
        ("SIDECAR_INJECTOR_PORT", "tcp://10.0.0.12:443"),
        ("SIDECAR_INJECTOR_PORT_443_TCP", "tcp://10.0.0.12:443"),
        ("SIDECAR_INJECTOR_PORT_443_TCP_ADDR", "10.0.0.12"),
        ("SIDECAR_INJECTOR_SERVICE_HOST", "10.0.0.12"),
        ("SIDECAR_INJECTOR_SERVICE_PORT", "443"),
    ];
    let (ok, _, stderr) = run(&["check"], &links);
    assert!(ok, "check failed with kubelet's service variables: {stderr}");
    // Anything else under the prefix is still a key, and a wrong one is still an error.
    let (ok, _, stderr) = run(&["check"], &[("SIDECAR_INJECTOR_PORTS", "1")]);
    assert!(!ok && stderr.contains("SIDECAR_INJECTOR_PORTS"), "{stderr}");
}

/// Starts the binary with `args` exactly as given (an Expedia command line) and serving
/// certificate files it writes; returns the process, its webhook port and the CA.
fn serve_as_given(args: &[String], dir: &Path) -> (Served, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("SIDECAR_INJECTOR_CONFIG")
        .env("SIDECAR_INJECTOR_SERVER__ADMIN_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = lines.next().expect("a banner").unwrap();
    let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    let port = banner.split("on https://").nth(1).and_then(|r| r.split(' ').next()).unwrap();
    let port = port.rsplit(':').next().unwrap().parse().unwrap();
    (Served { child, port, admin: 0, ca: String::new() }, stderr)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn the_2019_expedia_command_line_serves_its_catalog_file_with_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let cert = admission_kit::tls::GeneratedCert::generate(&["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &cert.key_pem).unwrap();
    let port = free_port();
    // The 2019 chart's arguments, with this test's paths and port.
    let args = [
        format!("-port={port}"),
        format!("-certFile={}", dir.path().join("cert.pem").display()),
        format!("-keyFile={}", dir.path().join("key.pem").display()),
        format!("-sideCar={}", data("catalog-2019.yaml")),
        "-logtostderr".to_owned(),
        "-v=2".to_owned(),
    ];
    let (mut served, stderr) = serve_as_given(&args, dir.path());
    served.ca = cert.ca_pem.clone();
    assert_eq!(served.port, port);
    assert!(
        stderr.contains("Expedia 2019 (Go flag) command line recognised; serving as: sidecar-injector serve --set"),
        "{stderr}"
    );
    let answer = review(&served, &pod_review("haystack-agent")).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(patch_of(&answer).to_string().contains("\"name\":\"haystack-agent\""), "{answer}");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let health = client.get(format!("https://localhost:{port}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[test]
fn expedia_command_lines_the_injector_cannot_serve_exit_with_the_flag_named() {
    let (ok, _, err) = run(&["-port=8443", "-sidecarConfig=/etc/x.yaml"], &[]);
    assert!(!ok);
    assert!(err.contains("unknown flag `-sidecarConfig=/etc/x.yaml` in an Expedia command line"), "{err}");
    let (ok, _, err) = run(&["--port=8443", "--local"], &[]);
    assert!(!ok && err.contains("`--local` (plain HTTP with the local kubeconfig) is not supported"), "{err}");
}
