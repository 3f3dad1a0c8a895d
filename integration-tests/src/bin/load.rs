//! `cargo run --release -p integration-tests --bin load -- [PODS] [IN_FLIGHT]`: creates `PODS` pods
//! (default 500) through the real API server, `IN_FLIGHT` at a time (default 16), each injected by the
//! sidecar injector, and reports pods/s and the webhook's latency as the API server measured it
//! (`apiserver_admission_webhook_admission_duration_seconds`).

use std::time::Instant;

use admission_kit::reexports::kube::{Api, api::PostParams};
use futures::StreamExt as _;
use integration_tests::webhook::{client, start_injector};
use integration_tests::{Binaries, ControlPlane};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde_json::json;
use sidecar_injector::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let pods: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500);
    let in_flight: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(16);
    let plane = ControlPlane::start(&Binaries::locate()?)?;
    let client = client(&plane).await?;
    let config = Config::load(None, &[])?;
    let _injector = start_injector(&client, &config, "sidecar-injector").await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(
        json!({"metadata": {"name": "load", "labels": {"kubernetes-sidecar-injector": "enabled"}}}),
    )?;
    namespaces.create(&PostParams::default(), &ns).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "load");
    // Wait for the namespace's default ServiceAccount and for the webhook to take effect.
    let warm = Instant::now();
    loop {
        let probe = pod("warm-up")?;
        let dry = PostParams { dry_run: true, ..PostParams::default() };
        if let Ok(created) = api.create(&dry, &probe).await
            && created.spec.as_ref().is_some_and(|s| s.containers.len() == 2)
        {
            break;
        }
        anyhow::ensure!(warm.elapsed().as_secs() < 60, "the webhook never took effect");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let results: Vec<anyhow::Result<usize>> = futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move {
                let created = api.create(&PostParams::default(), &pod(&format!("p-{i}"))?).await?;
                Ok(created.spec.map_or(0, |s| s.containers.len()))
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    let injected = results.iter().filter(|r| matches!(r, Ok(2))).count();
    #[allow(clippy::cast_precision_loss, reason = "pod counts are small")]
    let rate = pods as f64 / elapsed.as_secs_f64();
    println!(
        "created {pods} pods in {elapsed:.2?} ({rate:.0} pods/s, {in_flight} in flight): {injected} injected, {failed} failed"
    );
    let metrics = client.request_text(http::Request::get("/metrics").body(Vec::new())?).await?;
    println!("the API server's view of the webhook (apiserver_admission_webhook_admission_duration_seconds):");
    for line in metrics.lines().filter(|l| {
        l.starts_with("apiserver_admission_webhook_admission_duration_seconds")
            && l.contains("sidecar-injector.expedia.com")
    }) {
        println!("  {line}");
    }
    drop(plane);
    anyhow::ensure!(failed == 0 && injected == pods, "not every pod was created and injected");
    Ok(())
}

fn pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {
            "sidecar-injector.expedia.com/inject": "haystack-agent",
            "sidecar-injector.expedia.com/api-key": name,
        }},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }))?)
}
