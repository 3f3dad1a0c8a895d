//! Running the sidecar injector against the control plane: in-process on 127.0.0.1, registered
//! with a `MutatingWebhookConfiguration` whose client config is its URL and CA bundle.

use std::sync::Arc;

use admission_kit::reexports::kube::{self, Api, api::PostParams};
use admission_kit::server::{RunningServer, Server, ServerConfig};
use admission_kit::webhook_config::{ClientTarget, WebhookConfigOptions, render_webhook_config};
use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use sidecar_injector::catalog::{CatalogSource, CatalogStore};
use sidecar_injector::config::Config;

use crate::ControlPlane;

/// A kube client with the control plane's admin credentials.
pub async fn client(plane: &ControlPlane) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&plane.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// A running injector and the name of its webhook configuration.
#[derive(Debug)]
pub struct Injector {
    /// The server.
    pub server: RunningServer,
    /// The `MutatingWebhookConfiguration`'s name.
    pub configuration: String,
}

/// Starts the injector with `config` on loopback and registers it with the API server.
pub async fn start_injector(client: &kube::Client, config: &Config, configuration: &str) -> anyhow::Result<Injector> {
    let mut sources = vec![CatalogSource::inline(config.sidecars.clone())];
    sources.extend(config.catalog_paths.iter().map(CatalogSource::path));
    let store = Arc::new(CatalogStore::load(sources)?);
    let pipeline = sidecar_injector::pipeline(config, store, None)?;
    let server = Server::new(ServerConfig::local(), [pipeline.clone()]).start().await?;
    let ca = server.ca_pem().context("a generated certificate has a CA")?.to_owned();
    let options = WebhookConfigOptions::new(
        configuration,
        ClientTarget::Url(format!("https://127.0.0.1:{}", server.webhook_addr().port())),
    )
    .ca_bundle(ca.into_bytes());
    let rendered: MutatingWebhookConfiguration = render_webhook_config(&[pipeline], &options);
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.create(&PostParams::default(), &rendered).await.context("failed to register the webhook")?;
    Ok(Injector { server, configuration: configuration.to_owned() })
}
