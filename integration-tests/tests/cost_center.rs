//! The cost-center example against a real kube-apiserver: its plugin's asynchronous set-up (a
//! watch of its own `ConfigMap`, on the shell's shared client) feeds the webhook, and a change to
//! the `ConfigMap` reaches the next pod without a restart.

use std::time::Duration;

use admission_kit::app::{Plugin as _, Runtime};
use admission_kit::reexports::kube::api::{Api, Patch, PatchParams, PostParams};
use anyhow::Context as _;
use clap::Parser as _;
use cost_center::plugin::{CostCenterWebhook, Flags};
use integration_tests::scenarios::{eventually, namespace};
use integration_tests::webhook::{client, register, wait_ready};
use integration_tests::{Binaries, ControlPlane};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use serde_json::json;

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
}

/// The label a dry-run pod in `ns` comes back with (the webhook runs on dry runs too).
async fn label_of_a_new_pod(
    client: &admission_kit::reexports::kube::Client,
    ns: &str,
) -> anyhow::Result<Option<String>> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))?;
    let dry = PostParams { dry_run: true, ..PostParams::default() };
    let created = Api::<Pod>::namespaced(client.clone(), ns).create(&dry, &pod).await?;
    Ok(created.metadata.labels.unwrap_or_default().get(cost_center::LABEL).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugins_own_watch_feeds_the_webhook_and_follows_changes() -> anyhow::Result<()> {
    let plane = ControlPlane::start(&Binaries::locate()?)?;
    let client = client(&plane).await?;
    for ns in ["cost-center", "shop", "lab"] {
        namespace(&client, ns, &[]).await?;
    }
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), "cost-center");
    let table: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "cost-centers"},
        "data": {"shop": "retail-42"},
    }))?;
    configmaps.create(&PostParams::default(), &table).await?;

    let cli = Cli::try_parse_from([
        "cost-center",
        "--webhook-addr=127.0.0.1:0",
        "--admin-addr=127.0.0.1:0",
        "--namespace-cache=never",
        "--drain-delay=0s",
    ])?;
    let webhook = CostCenterWebhook::new(cli.flags);
    let mut runtime = Runtime::with_client(webhook.settings().clone(), client.clone());
    let pipelines = webhook.setup(&mut runtime).await?;
    let server = runtime.start(pipelines.clone()).await?;
    // Ready means the plugin's watch has listed the ConfigMap.
    wait_ready(&server).await?;
    let url = format!("https://127.0.0.1:{}", server.webhook_addr().port());
    let ca = server.ca_pem().context("a generated certificate")?.to_owned();
    register(&client, &pipelines, "cost-center", &url, ca.as_bytes()).await?;

    let limit = Duration::from_secs(30);
    eventually("a pod in `shop` labelled from the ConfigMap", limit, || async {
        Ok(label_of_a_new_pod(&client, "shop").await?.filter(|l| l == "retail-42"))
    })
    .await?;
    assert_eq!(label_of_a_new_pod(&client, "lab").await?, None, "a namespace without a cost center");

    // The table changes: the watch brings it to the webhook, no restart.
    let change = json!({"data": {"shop": "retail-43", "lab": "research-1"}});
    configmaps.patch("cost-centers", &PatchParams::default(), &Patch::Merge(&change)).await?;
    eventually("the changed cost center on the next pod", limit, || async {
        Ok(label_of_a_new_pod(&client, "shop").await?.filter(|l| l == "retail-43"))
    })
    .await?;
    assert_eq!(label_of_a_new_pod(&client, "lab").await?.as_deref(), Some("research-1"));
    server.shutdown_and_wait().await?;
    Ok(())
}
