//! The injector proven against a real kube-apiserver (the scenarios are in
//! `integration_tests::scenarios`). One control plane serves every scenario, run in order by one
//! test so that the processes are always stopped (a `Drop` runs on every exit path, panics
//! included).

use integration_tests::scenarios::{
    catalog_config, certificate_rotation, forget_previous_run, hot_reload, portable_scenarios, reinvocation,
};
use integration_tests::webhook::{client, client_from_kubeconfig, start_injector};
use integration_tests::{Binaries, ControlPlane};

/// Where the scenarios run: by default a local control plane started here, with the injector in
/// this process (every scenario). With `ADMISSION_KIT_TEST_KUBECONFIG` set, an existing cluster
/// where the chart is installed with `integration-tests/cluster/values.yaml` (see
/// `integration-tests/cluster/kind-e2e.sh`): the scenarios that need nothing of this process run
/// through the chart's injector there; those that do (reinvocation with a webhook served from
/// here, catalog files, certificate files) are local only, and the run says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_against_a_real_api_server() -> anyhow::Result<()> {
    if let Some(kubeconfig) = std::env::var_os("ADMISSION_KIT_TEST_KUBECONFIG") {
        let client = client_from_kubeconfig(std::path::Path::new(&kubeconfig)).await?;
        eprintln!("scenarios: running against the cluster of {}", kubeconfig.to_string_lossy());
        forget_previous_run(&client).await?;
        Box::pin(portable_scenarios(&client)).await?;
        eprintln!(
            "scenarios: NOT RUN against that cluster (they need this process): reinvocation, catalog file hot \
             reload, certificate rotation"
        );
        return Ok(());
    }
    let plane = ControlPlane::start(&Binaries::locate()?)?;
    let client = client(&plane).await?;
    integration_tests::control_plane::check_kubernetes_version(&client).await?;
    let catalog_dir = tempfile::tempdir()?;
    let injector = start_injector(&client, &catalog_config(catalog_dir.path())?, "sidecar-injector").await?;
    Box::pin(portable_scenarios(&client)).await?;
    reinvocation(&client, &injector).await?;
    hot_reload(&client, catalog_dir.path()).await?;
    certificate_rotation(&client).await?;
    Ok(())
}
