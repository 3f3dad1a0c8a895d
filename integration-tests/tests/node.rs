//! The test node: pods really run. The control plane, containerd, the kubelet and kube-proxy start
//! in a network namespace of their own; the node turns Ready; a pod's log, read through the API
//! server, shows the environment its spec set; a pod reaches another through a Service's cluster
//! IP (kube-proxy's rules); and the teardown leaves nothing behind.
//!
//! Needs root, containerd, runc and the CNI plugins (see `integration_tests::node`), and podman
//! to build the images; without them it fails, saying what is missing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use admission_kit::reexports::kube::{
    self, Api,
    api::{ListParams, PostParams},
};
use anyhow::{Context as _, bail};
use integration_tests::node::Cluster;
use integration_tests::{Binaries, images};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use serde_json::json;

const NS: &str = "default";
const GREETING: &str = "AK_GREETING=hello-from-the-pod-spec";
const PAGE: &str = "served-through-the-service";

fn pod(name: &str, image: &str, labels: &serde_json::Value, script: &str) -> anyhow::Result<Pod> {
    let (var, value) = GREETING.split_once('=').context("a NAME=value")?;
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": image,
                // Imported into containerd; nothing can be pulled.
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "env": [{"name": var, "value": value}],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }))?)
}

async fn wait_running(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let pod = pods.get(name).await?;
        let status = pod.status.unwrap_or_default();
        if status.phase.as_deref() == Some("Running") {
            eprintln!("pod {name} Running after {:?} on {}", started.elapsed(), status.pod_ip.unwrap_or_default());
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(90) {
            bail!("pod {name} not Running after 90 s: {:?}", status.container_statuses);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_log(cluster: &Cluster, name: &str, wanted: &str) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let log = cluster.pod_log(NS, name, None).await.unwrap_or_default();
        if log.contains(wanted) {
            return Ok(log);
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the log of pod {name} has no {wanted:?} after 60 s:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_nodes(nodes: &[Node]) {
    println!("NAME      STATUS   INTERNAL-IP   VERSION   RUNTIME");
    for node in nodes {
        let status = node.status.clone().unwrap_or_default();
        let ready = status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
        let ip = status.addresses.unwrap_or_default().into_iter().find(|a| a.type_ == "InternalIP").map(|a| a.address);
        let info = status.node_info.unwrap_or_default();
        println!(
            "{}   {}   {}   {}   {}",
            node.metadata.name.as_deref().unwrap_or_default(),
            if ready { "Ready" } else { "NotReady" },
            ip.unwrap_or_default(),
            info.kubelet_version,
            info.container_runtime_version
        );
    }
}

async fn run_pods(cluster: &mut Cluster, client: &kube::Client, busybox: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    print_nodes(&nodes.list(&ListParams::default()).await?.items);

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let post = PostParams::default();
    pods.create(&post, &pod("env", busybox, &json!({}), "env; exec sleep 3600")?).await?;
    wait_running(&pods, "env").await?;
    let log = wait_log(cluster, "env", GREETING).await?;
    let line = log.lines().find(|l| l.contains(GREETING)).unwrap_or_default();
    println!("pod env's log (through the API server): {line}");

    let web = format!("echo {PAGE} > /scratch/index.html && exec httpd -f -p 8080 -h /scratch");
    pods.create(&post, &pod("web", busybox, &json!({"app": "web"}), &web)?).await?;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))?;
    let service = Api::<Service>::namespaced(client.clone(), NS).create(&post, &service).await?;
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).context("a ClusterIP Service has an IP")?;
    wait_running(&pods, "web").await?;

    // Debian's static busybox crashes in `wget` (here, with or without /etc); `nc` works.
    let fetch = format!(
        "until printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {cluster_ip} 80; do sleep 1; done; exec sleep 3600"
    );
    pods.create(&post, &pod("client", busybox, &json!({}), &fetch)?).await?;
    wait_running(&pods, "client").await?;
    wait_log(cluster, "client", PAGE).await?;
    println!("pod client fetched {PAGE:?} from http://{cluster_ip}:80/ (Service web)");

    // The node's own network namespace (where the API server calls webhooks' Services) goes
    // through the same rules.
    let request = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {cluster_ip} 80");
    let started = Instant::now();
    loop {
        let out = cluster.exec("busybox", &["sh", "-c", &request])?;
        if String::from_utf8_lossy(&out.stdout).contains(PAGE) {
            println!("the node's network namespace fetched {PAGE:?} from http://{cluster_ip}:80/");
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "the node's network namespace cannot fetch http://{cluster_ip}/ ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_on_the_node_and_reach_each_other_through_a_service() -> anyhow::Result<()> {
    let binaries = Binaries::locate()?;
    let (pause, busybox) = (images::pause()?, images::busybox()?);
    let mut cluster = Cluster::start(&binaries, &pause)?;
    cluster.import_image(&busybox)?;
    cluster.wait_node_ready(Duration::from_secs(120)).await?;
    let client = cluster.client().await?;
    run_pods(&mut cluster, &client, &busybox.reference).await?;

    let (dir, netns, veth) = (cluster.dir().to_owned(), cluster.netns().to_owned(), cluster.host_veth().to_owned());
    let plane_dir: PathBuf = cluster.control_plane().dir().to_owned();
    cluster.shutdown()?;

    let listed = String::from_utf8_lossy(&std::process::Command::new("ip").args(["netns", "list"]).output()?.stdout)
        .into_owned();
    assert!(!listed.lines().any(|l| l.split_whitespace().next() == Some(netns.as_str())), "{netns} remains: {listed}");
    assert!(!std::path::Path::new("/sys/class/net").join(&veth).exists(), "link {veth} remains");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    for d in [&dir, &plane_dir] {
        let d = d.display().to_string();
        assert!(!mounts.contains(&d), "mounts remain under {d}");
        assert!(!std::path::Path::new(&d).exists(), "{d} remains");
    }
    Ok(())
}
