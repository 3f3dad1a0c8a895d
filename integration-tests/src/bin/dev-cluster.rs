//! `cargo run -p integration-tests --bin dev-cluster`: a local control plane with the sidecar
//! injector (embedded default configuration) running against it and registered, until Ctrl-C.
//! Then, in another shell: `export KUBECONFIG=…` (printed), and
//! `kubectl create namespace demo && kubectl label namespace demo kubernetes-sidecar-injector=enabled`,
//! and apply a Deployment whose pod template asks for `haystack-agent`.

use integration_tests::webhook::{client, start_injector};
use integration_tests::{Binaries, ControlPlane};
use sidecar_injector::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binaries = Binaries::locate()?;
    let plane = ControlPlane::start(&binaries)?;
    let client = client(&plane).await?;
    let config = Config::load(None, &[])?;
    let injector = start_injector(&client, &config, "sidecar-injector").await?;
    println!("control plane up; the injector serves on https://{}", injector.server.webhook_addr());
    println!("export KUBECONFIG={}", plane.kubeconfig.display());
    if let Some(kubectl) = binaries.kubectl.as_ref().and_then(|k| k.parent()) {
        println!("export PATH={}:$PATH   # kubectl v1.36, built with the control plane", kubectl.display());
    }
    println!("logs and certificates: {}", plane.dir().display());
    println!("Ctrl-C stops everything.");
    admission_kit::server::shutdown_signal().await;
    injector.server.shutdown_and_wait().await?;
    drop(plane);
    Ok(())
}
