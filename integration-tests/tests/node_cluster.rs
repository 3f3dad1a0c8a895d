//! The chart installed on a real node (`integration_tests::node`): its own image, built here, runs
//! as the chart's two replicas, and the pods it injects really run. Only the image reference and the
//! catalog (`integration-tests/cluster/node-values.yaml`, busybox sidecars that print what the test
//! reads) differ from the chart's defaults. Assertions read what ran: rollout and readiness, the
//! webhook reached through the chart's Service (kube-proxy), a sidecar's environment in its own
//! log, native and init-container sidecars' start order, the kubelet's `..data` swap of the
//! catalog `ConfigMap`, and pod creation that never fails while a replica is deleted or the chart
//! is upgraded (`failurePolicy: Fail`). Last, the Expedia 2022 chart's own objects (its Deployment's
//! args and HTTPS `/healthz` probes, its Secret's file names, its RBAC without `watch`, its webhook)
//! with only the image swapped for ours.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use admission_kit::reexports::kube::{
    self, Api,
    api::{DeleteParams, ListParams, PostParams},
};
use anyhow::{Context as _, bail, ensure};
use integration_tests::helm::{Helm, chart_dir};
use integration_tests::node::Cluster;
use integration_tests::scenarios::{RESTRICTED, eventually, namespace};
use integration_tests::{Binaries, images};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde_json::{Value, json};

const SYSTEM: &str = "injector-system";
const APPS: &str = "apps";
const PREFIX: &str = "sidecar-injector.expedia.com";
const API_KEY: &str = "bd8a1dd2-735d-466e-ba30-201660185e64";

/// `kubectl` (built with the control plane) against the cluster; its stdout.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let kubectl = Binaries::locate()?.kubectl.context("no kubectl next to kube-apiserver")?;
    let out = Command::new(kubectl).arg("--kubeconfig").arg(kubeconfig).args(args).output()?;
    ensure!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kubectl_apply(kubeconfig: &Path, manifest: &Value) -> anyhow::Result<String> {
    let kubectl = Binaries::locate()?.kubectl.context("no kubectl next to kube-apiserver")?;
    let mut child = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write as _;
        child.stdin.take().context("kubectl's stdin")?.write_all(&serde_json::to_vec(manifest)?)?;
    }
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An app pod (busybox, quick to stop) asking for `inject`, with the env annotation.
fn app_pod(name: &str, inject: &str, runs: bool) -> anyhow::Result<Pod> {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "app", "image": images::busybox()?.reference, "imagePullPolicy": "Never",
            "command": ["sh", "-c", "echo app-started $(cut -d' ' -f1 /proc/uptime); exec sleep 3600"],
        }],
    });
    if !runs {
        // Stored and injected, never scheduled: the load runs measure admission, not the node.
        spec["nodeSelector"] = json!({"admission-kit.test/no-such-node": "true"});
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {
            format!("{PREFIX}/inject"): inject,
            format!("{PREFIX}/api-key"): API_KEY,
        }},
        "spec": spec,
    }))?)
}

fn status_of<'a>(statuses: Option<&'a Vec<ContainerStatus>>, name: &str) -> anyhow::Result<&'a ContainerStatus> {
    statuses.into_iter().flatten().find(|s| s.name == name).with_context(|| format!("no status for container {name}"))
}

/// The `<word> <uptime>` line a test container printed, as seconds of kernel uptime.
fn uptime_in(log: &str, word: &str) -> anyhow::Result<f64> {
    let line = log.lines().find(|l| l.starts_with(word)).with_context(|| format!("no `{word}` in {log:?}"))?;
    Ok(line.split_whitespace().nth(1).context("no uptime")?.parse()?)
}

async fn wait_running(pods: &Api<Pod>, name: &str) -> anyhow::Result<Pod> {
    eventually(&format!("pod {name} Running"), Duration::from_secs(120), || async {
        let pod = pods.get(name).await?;
        Ok((pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).then_some(pod))
    })
    .await
}

/// The chart's Deployment with every replica updated, available and Ready.
async fn wait_rollout(client: &kube::Client) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM);
    eventually("the chart's rollout", Duration::from_secs(180), || async {
        let d = deployments.get("sidecar-injector").await?;
        let want = d.spec.replicas.unwrap_or(1);
        let s = d.status.unwrap_or_default();
        let generation = d.metadata.generation.unwrap_or_default();
        let done = s.observed_generation == Some(generation)
            && s.updated_replicas == Some(want)
            && s.ready_replicas == Some(want)
            && s.available_replicas == Some(want)
            && s.replicas == Some(want);
        Ok(done.then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chart_on_a_real_node() -> anyhow::Result<()> {
    let (injector, busybox, pause) = (images::injector()?, images::busybox()?, images::pause()?);
    let mut cluster = Cluster::start(&Binaries::locate()?, &pause)?;
    cluster.import_image(&injector)?;
    cluster.import_image(&busybox)?;
    cluster.wait_node_ready(Duration::from_secs(120)).await?;
    eprintln!("$ kubectl get nodes -o wide\n{}", kubectl(cluster.kubeconfig(), &["get", "nodes", "-o", "wide"])?);
    let client = cluster.client().await?;

    Box::pin(install_chart(&cluster, &client, &injector)).await?;
    Box::pin(annotated_deployment_runs_with_its_sidecar(&cluster, &client)).await?;
    Box::pin(sidecar_start_order(&cluster, &client)).await?;
    Box::pin(catalog_configmap_update(&cluster, &client)).await?;
    Box::pin(no_failed_creates_while_replicas_change(&cluster, &client, &injector)).await?;
    // Last: its webhook selects every namespace but its own and the system ones.
    Box::pin(expedia_2022_chart_with_our_image(&cluster, &client, &injector)).await?;

    cluster.shutdown()
}

/// `helm <verb>` of the chart as the test installs it: the image built here, the busybox catalog,
/// and `--wait`; then `extra`.
fn chart_command(verb: &str, image: &images::Image, extra: &[&str]) -> anyhow::Result<Vec<String>> {
    let values = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/node-values.yaml");
    let mut args: Vec<String> = [verb, "sidecar-injector", chart_dir().to_str().context("UTF-8 path")?]
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.extend(["--namespace".to_owned(), SYSTEM.to_owned(), "-f".to_owned()]);
    args.push(values.to_str().context("UTF-8 path")?.to_owned());
    args.extend(["--set".to_owned(), format!("image.repository={}", image.repository())]);
    args.extend(["--set".to_owned(), format!("image.tag={}", image.tag()), "--wait".to_owned()]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Ok(args)
}

async fn install_chart(cluster: &Cluster, client: &kube::Client, injector: &images::Image) -> anyhow::Result<()> {
    namespace(client, SYSTEM, &RESTRICTED).await?;
    let helm = Helm::locate(4)?.kubeconfig(cluster.kubeconfig());
    let started = Instant::now();
    let installed = helm.run(chart_command("install", injector, &["--timeout", "3m"])?)?.success();
    let run = match installed {
        Ok(run) => run,
        Err(e) => {
            // What the replicas did: their status, events and last log.
            let k = |args: &[&str]| kubectl(cluster.kubeconfig(), args).unwrap_or_else(|e| format!("{e:#}"));
            eprintln!("{}", k(&["-n", SYSTEM, "describe", "pods"]));
            eprintln!(
                "{}",
                k(&[
                    "-n",
                    SYSTEM,
                    "logs",
                    "-l",
                    "app.kubernetes.io/instance=sidecar-injector",
                    "--previous",
                    "--tail=50"
                ])
            );
            eprintln!(
                "{}",
                k(&["-n", SYSTEM, "logs", "-l", "app.kubernetes.io/instance=sidecar-injector", "--tail=50"])
            );
            return Err(e);
        }
    };
    ensure!(!run.stderr.contains("PodSecurity"), "the chart's pods violate Pod Security restricted:\n{}", run.stderr);
    wait_rollout(client).await?;
    eprintln!("helm install --wait: rollout complete after {:?}", started.elapsed());
    eprintln!(
        "$ kubectl -n {SYSTEM} get pods -o wide\n{}",
        kubectl(cluster.kubeconfig(), &["-n", SYSTEM, "get", "pods", "-o", "wide"])?
    );
    let pods = Api::<Pod>::namespaced(client.clone(), SYSTEM)
        .list(&ListParams::default().labels("app.kubernetes.io/instance=sidecar-injector"))
        .await?;
    ensure!(pods.items.len() == 2, "expected the chart's 2 replicas, found {}", pods.items.len());
    for pod in &pods.items {
        let status = pod.status.as_ref().context("no status")?;
        let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
        ensure!(status.phase.as_deref() == Some("Running") && ready, "replica not Running and Ready: {status:?}");
        let container = status_of(status.container_statuses.as_ref(), "sidecar-injector")?;
        ensure!(container.restart_count == 0, "the injector restarted: {container:?}");
    }

    // The API server calls the webhook through the chart's Service (kube-proxy's rules), not a URL.
    let configuration = Api::<MutatingWebhookConfiguration>::all(client.clone()).get("sidecar-injector").await?;
    let target = &configuration.webhooks.as_ref().context("no webhooks")?[0].client_config;
    ensure!(target.url.is_none(), "the chart's webhook is called by URL: {target:?}");
    let service = target.service.as_ref().context("the chart's webhook names no Service")?;
    ensure!(service.namespace == SYSTEM && service.name == "sidecar-injector", "unexpected Service {service:?}");

    namespace(client, APPS, &[("kubernetes-sidecar-injector", "enabled")]).await?;
    Ok(())
}

async fn annotated_deployment_runs_with_its_sidecar(cluster: &Cluster, client: &kube::Client) -> anyhow::Result<()> {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "echo"},
        "spec": {
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}, "annotations": {
                    format!("{PREFIX}/inject"): "env-printer",
                    format!("{PREFIX}/api-key"): API_KEY,
                }},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "echo", "image": images::busybox()?.reference, "imagePullPolicy": "Never",
                                    "command": ["sh", "-c", "exec sleep 3600"]}],
                },
            },
        },
    }))?;
    Api::<Deployment>::namespaced(client.clone(), APPS).create(&PostParams::default(), &deployment).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), APPS);
    let name = eventually("the Deployment's pod", Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default().labels("app=echo")).await?;
        Ok(list.items.first().and_then(|p| p.metadata.name.clone()))
    })
    .await?;
    let pod = wait_running(&pods, &name).await?;
    let status = pod.status.as_ref().context("no status")?;
    let sidecar = status_of(status.container_statuses.as_ref(), "env-printer")?;
    ensure!(
        sidecar.state.as_ref().and_then(|s| s.running.as_ref()).is_some(),
        "the sidecar is not running: {sidecar:?}"
    );
    // Inside the sidecar's own process: its environment, printed by `env` in the container.
    let log = eventually("the sidecar's log", Duration::from_secs(30), || async {
        let log = cluster.pod_log(APPS, &name, Some("env-printer")).await?;
        Ok(log.contains("env-printer up").then_some(log))
    })
    .await?;
    let expected = format!("api-key={API_KEY}");
    let line = log
        .lines()
        .find(|l| *l == expected)
        .with_context(|| format!("no `{expected}` in the sidecar's log:\n{log}"))?;
    eprintln!("pod {APPS}/{name}: Running; sidecar env-printer's log: {line}");
    Ok(())
}

async fn sidecar_start_order(cluster: &Cluster, client: &kube::Client) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), APPS);
    pods.create(&PostParams::default(), &app_pod("ordered", "proxy,setup", true)?).await?;
    let pod = wait_running(&pods, "ordered").await?;
    let spec = pod.spec.as_ref().context("no spec")?;
    let init: Vec<(&str, Option<&str>)> =
        spec.init_containers.iter().flatten().map(|c| (c.name.as_str(), c.restart_policy.as_deref())).collect();
    ensure!(init == [("proxy", Some("Always")), ("setup", None)], "unexpected init containers {init:?}");
    let log = |container: &'static str| cluster.pod_log(APPS, "ordered", Some(container));
    let app = eventually("the app's log", Duration::from_secs(30), || async {
        let l = log("app").await?;
        Ok(l.contains("app-started").then_some(l))
    })
    .await?;
    let (proxy_started, setup_done, app_started) = (
        uptime_in(&log("proxy").await?, "proxy-started")?,
        uptime_in(&log("setup").await?, "setup-done")?,
        uptime_in(&app, "app-started")?,
    );
    eprintln!(
        "pod {APPS}/ordered, kernel uptime at each start: proxy (native sidecar) {proxy_started}, setup (init container) done {setup_done}, app {app_started}"
    );
    ensure!(proxy_started < setup_done && setup_done <= app_started, "wrong start order");
    let status = pods.get("ordered").await?.status.context("no status")?;
    let proxy = status_of(status.init_container_statuses.as_ref(), "proxy")?;
    ensure!(
        proxy.state.as_ref().and_then(|s| s.running.as_ref()).is_some() && proxy.restart_count == 0,
        "the native sidecar does not keep running: {proxy:?}"
    );
    let setup = status_of(status.init_container_statuses.as_ref(), "setup")?;
    let exit = setup.state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code);
    ensure!(exit == Some(0), "the init-container sidecar did not run to completion: {setup:?}");
    Ok(())
}

async fn catalog_configmap_update(cluster: &Cluster, client: &kube::Client) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), APPS);
    let dry_run = PostParams { dry_run: true, ..PostParams::default() };
    let denied = pods.create(&dry_run, &app_pod("late-probe", "late", false)?).await;
    ensure!(
        matches!(&denied, Err(kube::Error::Api(e)) if e.message.contains("sidecar `late` is not in the catalog")),
        "a sidecar not yet in the catalog was not denied: {denied:?}"
    );
    // The installed catalog plus one sidecar (JSON is YAML).
    let values: Value = serde_saphyr::from_str(&std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/node-values.yaml"),
    )?)?;
    let mut sidecars = values["sidecars"].as_array().context("sidecars in node-values.yaml")?.clone();
    sidecars.push(json!({"name": "late", "containers": [{"name": "late", "image": images::busybox()?.reference,
                         "command": ["sh", "-c", "echo late up; exec sleep 3600"]}]}));
    let catalog = serde_json::to_string(&sidecars)?;
    let applied = kubectl_apply(
        cluster.kubeconfig(),
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "sidecar-injector-catalog", "namespace": SYSTEM},
                "data": {"sidecars.yaml": catalog}}),
    )?;
    let started = Instant::now();
    eprintln!("$ kubectl apply -f catalog.yaml\n{}", applied.trim());
    // Each replica reloads when its kubelet swaps `..data` in its volume, and says so in its log.
    let system: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let replicas: Vec<String> = system
        .list(&ListParams::default().labels("app.kubernetes.io/instance=sidecar-injector"))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    ensure!(replicas.len() == 2, "expected 2 replicas, found {replicas:?}");
    for name in &replicas {
        eventually(&format!("replica {name} reloading the catalog"), Duration::from_secs(120), || async {
            Ok(cluster.pod_log(SYSTEM, name, None).await?.contains("catalog reloaded").then_some(()))
        })
        .await?;
    }
    eprintln!("catalog ConfigMap applied: both replicas logged `catalog reloaded` {:?} later", started.elapsed());
    for _ in 0..10 {
        let created = pods.create(&dry_run, &app_pod("late-probe", "late", false)?).await?;
        ensure!(
            created.spec.iter().flat_map(|s| &s.containers).any(|c| c.name == "late"),
            "a pod asking for the new sidecar was not injected after both replicas reloaded"
        );
    }
    pods.create(&PostParams::default(), &app_pod("late", "late", true)?).await?;
    let pod = wait_running(&pods, "late").await?;
    let status = pod.status.context("no status")?;
    ensure!(status_of(status.container_statuses.as_ref(), "late").is_ok(), "the new sidecar does not run");
    Ok(())
}

/// Creates `count` pods (4 at a time) while `disrupt` runs; returns how many creates failed and the
/// first failure's message.
async fn create_pods_during<F>(
    client: &kube::Client,
    prefix: &str,
    count: usize,
    disrupt: F,
) -> anyhow::Result<(usize, Option<String>)>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let pods: Api<Pod> = Api::namespaced(client.clone(), APPS);
    let creates = async {
        let mut failed = 0;
        let mut first = None;
        let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
        for chunk in names.chunks(4) {
            let results = futures::future::join_all(chunk.iter().map(|name| {
                let pods = pods.clone();
                async move {
                    let pod = app_pod(name, "env-printer", false)?;
                    let created = pods.create(&PostParams::default(), &pod).await?;
                    let injected = created.spec.iter().flat_map(|s| &s.containers).any(|c| c.name == "env-printer");
                    if !injected {
                        bail!("pod {name} was admitted without its sidecar");
                    }
                    anyhow::Ok(())
                }
            }))
            .await;
            for result in results {
                if let Err(e) = result {
                    failed += 1;
                    first.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (failed, first)
    };
    let (outcome, disrupted) = tokio::join!(creates, disrupt);
    disrupted?;
    Ok(outcome)
}

async fn no_failed_creates_while_replicas_change(
    cluster: &Cluster,
    client: &kube::Client,
    injector: &images::Image,
) -> anyhow::Result<()> {
    let system: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let selector = ListParams::default().labels("app.kubernetes.io/instance=sidecar-injector");
    let victim =
        system.list(&selector).await?.items.first().and_then(|p| p.metadata.name.clone()).context("a replica")?;
    let delete_one = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!("deleting replica {victim} while pods are created");
        system.delete(&victim, &DeleteParams::default()).await?;
        anyhow::Ok(())
    };
    let (failed, first) = create_pods_during(client, "during-delete", 100, delete_one).await?;
    eprintln!("replica deleted while creating pods: 100 created, {failed} failed");
    ensure!(failed == 0, "{failed} of 100 creates failed while a replica was deleted; first: {first:?}");
    wait_rollout(client).await?;

    let kubeconfig = cluster.kubeconfig().to_owned();
    let upgrade_command = chart_command(
        "upgrade",
        injector,
        &[
            // A changed configuration value: the pods' config checksum changes, so they roll.
            "--set",
            "injector.logLevel=debug",
            // The catalog ConfigMap was changed with `kubectl apply` above: Helm 4 applies
            // server-side and takes the field back only when told to.
            "--force-conflicts",
            "--timeout",
            "5m",
        ],
    )?;
    let upgrade = async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Helm runs as a blocking process: on a blocking thread, so the creates go on meanwhile.
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            Helm::locate(4)?.kubeconfig(&kubeconfig).run(upgrade_command)?.success()?;
            Ok(())
        })
        .await?
    };
    // Serving replicas: not those still terminating from the deletion above.
    let serving = || async {
        let pods = system.list(&selector).await?.items;
        anyhow::Ok(
            pods.into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.name)
                .collect::<Vec<String>>(),
        )
    };
    let before = serving().await?;
    let (failed, first) = create_pods_during(client, "during-upgrade", 100, upgrade).await?;
    wait_rollout(client).await?;
    let after = serving().await?;
    ensure!(
        before.iter().all(|p| !after.contains(p)),
        "helm upgrade did not roll the replicas: {before:?} → {after:?}"
    );
    eprintln!(
        "helm upgrade rolled the replicas ({before:?} → {after:?}) while creating pods: 100 created, {failed} failed"
    );
    ensure!(failed == 0, "{failed} of 100 creates failed during helm upgrade; first: {first:?}");
    Ok(())
}

/// The Expedia 2022 chart's release `kubernetes-sidecar-injector` in `legacy-system`, with its
/// default values, image `image` and a serving certificate from `ca`.
fn expedia_2022_chart(image: &str, ca: &integration_tests::scenarios::TestCa) -> anyhow::Result<Value> {
    use base64::Engine as _;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let labels = json!({
        "app.kubernetes.io/name": RELEASE, "app.kubernetes.io/component": "webhook", "app.kubernetes.io/instance": RELEASE,
    });
    let (cert, key) = ca.leaf_for(&[&format!("{RELEASE}.{NS}.svc")])?;
    let probe = |initial: u32| {
        json!({"httpGet": {"path": "/healthz", "port": "https", "scheme": "HTTPS"}, "initialDelaySeconds": initial,
               "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 5, "timeoutSeconds": 4})
    };
    Ok(json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": RELEASE, "namespace": NS, "labels": labels},
         "data": {"cert.pem": b64(&cert), "key.pem": b64(&key)}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": RELEASE, "namespace": NS, "labels": labels}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": RELEASE, "labels": labels},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": RELEASE, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": RELEASE},
         "subjects": [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NS}]},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": RELEASE, "namespace": NS, "labels": labels},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": "https"},
                            {"name": "metrics", "port": 9090, "targetPort": "metrics"}],
                  "selector": labels}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": RELEASE, "namespace": NS, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {
                "serviceAccountName": RELEASE,
                "containers": [{
                    "name": "kubernetes-sidecar-injector",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["--port=8443", "--metricsPort=9090",
                             "--certFile=/opt/kubernetes-sidecar-injector/certs/cert.pem",
                             "--keyFile=/opt/kubernetes-sidecar-injector/certs/key.pem",
                             format!("--injectPrefix={PREFIX}"), "--injectName=inject", "--sidecarDataKey=sidecars.yaml"],
                    "volumeMounts": [{"name": format!("{RELEASE}-certs"), "mountPath": "/opt/kubernetes-sidecar-injector/certs", "readOnly": true}],
                    "ports": [{"name": "https", "containerPort": 8443, "protocol": "TCP"},
                              {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                    "livenessProbe": probe(5),
                    "readinessProbe": probe(30),
                }],
                "imagePullSecrets": [],
                "volumes": [{"name": format!("{RELEASE}-certs"), "secret": {"secretName": RELEASE}}],
            }}}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": RELEASE, "labels": labels},
         "webhooks": [{
            "name": "kubernetes-sidecar-injector.expedia.com",
            "clientConfig": {"service": {"name": RELEASE, "namespace": NS, "path": "/mutate"}, "caBundle": b64(ca.pem())},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "rules": [{"apiGroups": [""], "resources": ["pods"], "apiVersions": ["*"], "operations": ["CREATE"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-public"]},
                {"key": format!("{PREFIX}/disable-inject"), "operator": "NotIn", "values": ["true"]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NS]},
            ]},
            "objectSelector": {"matchExpressions": [
                {"key": format!("{PREFIX}/inject"), "operator": "NotIn", "values": ["skip"]},
                {"key": format!("{PREFIX}/disable-inject"), "operator": "NotIn", "values": ["true"]},
            ]},
         }]},
    ]}))
}

/// The Expedia 2022 chart's release name and namespace in the node test.
const RELEASE: &str = "kubernetes-sidecar-injector";
const NS: &str = "legacy-system";

/// The Expedia 2022 chart's objects as it renders them with its default values (release
/// `kubernetes-sidecar-injector`), written here from the chart: the Deployment's args, ports and
/// HTTPS `/healthz` probes, the Secret with `cert.pem`/`key.pem`, the `ClusterRole` granting `get`
/// and `list` on `ConfigMaps` (no `watch`), the Service and the opt-out webhook. Only the image is
/// ours. A pod in an unlabelled namespace asking for a sidecar from a `ConfigMap` there (the 2022
/// catalogs), created after the injector started, gets it and its env.
async fn expedia_2022_chart_with_our_image(
    cluster: &Cluster,
    client: &kube::Client,
    injector: &images::Image,
) -> anyhow::Result<()> {
    const LEGACY: &str = "legacy";
    let ca = integration_tests::scenarios::TestCa::new()?;
    namespace(client, NS, &[]).await?;
    let objects = expedia_2022_chart(&injector.reference, &ca)?;
    kubectl_apply(cluster.kubeconfig(), &objects)?;

    // Ready through its HTTPS /healthz probes, never restarted.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let started = Instant::now();
    let waited = eventually("the Expedia Deployment ready", Duration::from_secs(180), || async {
        let status = deployments.get(RELEASE).await?.status.unwrap_or_default();
        Ok((status.ready_replicas == Some(1) && status.available_replicas == Some(1)).then_some(()))
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let list = pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"))).await?;
    let injector_pod = list.items.first().and_then(|p| p.metadata.name.clone()).context("no injector pod")?;
    let log = cluster.pod_log(NS, &injector_pod, None).await.unwrap_or_else(|e| format!("{e:#}"));
    if let Err(e) = waited {
        eprintln!("{}", kubectl(cluster.kubeconfig(), &["-n", NS, "describe", "pods"]).unwrap_or_default());
        eprintln!("the injector's log:\n{log}");
        return Err(e);
    }
    eprintln!("the Expedia 2022 Deployment with our image: ready after {:?}", started.elapsed());
    let pod = pods.get(&injector_pod).await?;
    let container =
        status_of(pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()), "kubernetes-sidecar-injector")?;
    ensure!(container.restart_count == 0, "the injector restarted: {container:?}");
    ensure!(log.contains("Expedia 2022 (cobra) command line recognised"), "no compatibility line in its log:\n{log}");

    // /metrics on --metricsPort (plain HTTP), through the API server's pod proxy.
    let metrics = kubectl(
        cluster.kubeconfig(),
        &["get", "--raw", &format!("/api/v1/namespaces/{NS}/pods/{injector_pod}:9090/proxy/metrics")],
    )?;
    ensure!(metrics.contains("admission_kit_"), "no admission-kit metrics on port 9090:\n{metrics}");

    // A sidecar from a ConfigMap in the pod's unlabelled namespace, created after the injector
    // started: its role may list ConfigMaps but not watch them, so the injector lists again.
    namespace(client, LEGACY, &[]).await?;
    let catalog = serde_json::to_string(&json!([{"name": "legacy-agent", "containers": [{
        "name": "legacy-agent", "image": images::busybox()?.reference,
        "command": ["sh", "-c", "tr '\\0' '\\n' < /proc/1/environ | sort; echo legacy-agent up; exec sleep 3600"],
    }]}]))?;
    kubectl_apply(
        cluster.kubeconfig(),
        &json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "legacy-agent", "namespace": LEGACY},
            "data": {"sidecars.yaml": catalog},
        }),
    )?;
    let legacy: Api<Pod> = Api::namespaced(client.clone(), LEGACY);
    let created = Instant::now();
    eventually("the legacy pod admitted with its sidecar", Duration::from_secs(60), || async {
        match legacy.create(&PostParams::default(), &app_pod("legacy-app", "legacy-agent", true)?).await {
            Ok(pod) => Ok(Some(pod)),
            Err(kube::Error::Api(status)) if status.message.contains("nor a ConfigMap") => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    eprintln!("the ConfigMap catalog reached the injector {:?} after it was created", created.elapsed());
    wait_running(&legacy, "legacy-app").await?;
    let sidecar_log = eventually("the legacy sidecar's log", Duration::from_secs(30), || async {
        let log = cluster.pod_log(LEGACY, "legacy-app", Some("legacy-agent")).await?;
        Ok(log.contains("legacy-agent up").then_some(log))
    })
    .await?;
    ensure!(
        sidecar_log.lines().any(|l| l == format!("api-key={API_KEY}")),
        "no api-key in the sidecar:\n{sidecar_log}"
    );
    let log = cluster.pod_log(NS, &injector_pod, None).await?;
    ensure!(log.contains("list but not watch"), "the injector did not say it lists instead of watching:\n{log}");
    eprintln!("Expedia 2022 chart, our image: pod {LEGACY}/legacy-app runs sidecar legacy-agent with api-key");
    Ok(())
}
