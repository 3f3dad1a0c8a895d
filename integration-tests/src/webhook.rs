//! Running the sidecar injector against the control plane: in-process on 127.0.0.1, registered
//! with a `MutatingWebhookConfiguration` whose client config is its URL and CA bundle.

use std::sync::Arc;

use admission_kit::namespaces::NamespaceSource;
use admission_kit::reexports::kube::{self, Api, api::PostParams};
use admission_kit::server::{RunningServer, Server, ServerConfig};
use admission_kit::webhook_config::{ClientTarget, WebhookConfigOptions, render_webhook_config};
use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use sidecar_injector::catalog::{CatalogSource, CatalogStore, NamespaceCatalogs};
use sidecar_injector::config::Config;

use crate::ControlPlane;

/// A kube client with the control plane's admin credentials.
pub async fn client(plane: &ControlPlane) -> anyhow::Result<kube::Client> {
    client_from_kubeconfig(&plane.kubeconfig).await
}

/// A kube client for the current context of the kubeconfig file at `path`.
pub async fn client_from_kubeconfig(path: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
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

/// Serves `pipelines` on loopback and registers them as the `MutatingWebhookConfiguration`
/// `configuration`, calling the server by URL with its generated CA as the caBundle.
pub async fn serve_and_register(
    client: &kube::Client,
    pipelines: &[admission_kit::Pipeline],
    configuration: &str,
) -> anyhow::Result<RunningServer> {
    serve_and_register_with(
        Server::new(ServerConfig::local(), pipelines.iter().cloned()),
        client,
        pipelines,
        configuration,
    )
    .await
}

/// [`serve_and_register`] with a server already set up (namespace cache, readiness gates, …).
pub async fn serve_and_register_with(
    server: Server,
    client: &kube::Client,
    pipelines: &[admission_kit::Pipeline],
    configuration: &str,
) -> anyhow::Result<RunningServer> {
    let server = server.start().await?;
    let ca = server.ca_pem().context("a generated certificate has a CA")?.to_owned();
    let url = format!("https://127.0.0.1:{}", server.webhook_addr().port());
    register(client, pipelines, configuration, &url, ca.as_bytes()).await?;
    Ok(server)
}

/// Registers `pipelines` as the `MutatingWebhookConfiguration` `configuration`, called at `url`.
pub async fn register(
    client: &kube::Client,
    pipelines: &[admission_kit::Pipeline],
    configuration: &str,
    url: &str,
    ca_pem: &[u8],
) -> anyhow::Result<()> {
    let options =
        WebhookConfigOptions::new(configuration, ClientTarget::Url(url.to_owned())).ca_bundle(ca_pem.to_vec());
    let rendered: MutatingWebhookConfiguration = render_webhook_config(pipelines, &options);
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.create(&PostParams::default(), &rendered)
        .await
        .with_context(|| format!("failed to register {configuration}"))?;
    Ok(())
}

/// Starts the injector with `config` on loopback (catalog files hot-reloaded) and registers it.
pub async fn start_injector(client: &kube::Client, config: &Config, configuration: &str) -> anyhow::Result<Injector> {
    start_injector_with(client, config, configuration, ServerConfig::local(), None).await
}

/// [`start_injector`] with a server configuration (e.g. certificate files) and, for certificate
/// files, the CA bundle to register.
pub async fn start_injector_with(
    client: &kube::Client,
    config: &Config,
    configuration: &str,
    server_config: ServerConfig,
    ca_pem: Option<&str>,
) -> anyhow::Result<Injector> {
    let (server, pipeline) = injector_server(client, config, server_config)?;
    let server = match ca_pem {
        None => serve_and_register_with(server, client, &[pipeline], configuration).await?,
        Some(ca) => {
            let server = server.start().await?;
            let url = format!("https://127.0.0.1:{}", server.webhook_addr().port());
            register(client, &[pipeline], configuration, &url, ca.as_bytes()).await?;
            server
        }
    };
    wait_ready(&server).await?;
    Ok(Injector { server, configuration: configuration.to_owned() })
}

/// Starts the injector with `config` on loopback without registering it (something else, such as
/// the Helm chart, registers it), and waits until it is ready.
pub async fn serve_injector(
    client: &kube::Client,
    config: &Config,
    server_config: ServerConfig,
) -> anyhow::Result<RunningServer> {
    let (server, _) = injector_server(client, config, server_config)?;
    let server = server.start().await?;
    wait_ready(&server).await?;
    Ok(server)
}

/// The injector's server for `config`: catalog files hot-reloaded, and both watch caches running
/// against the real API server (namespace labels for the matchers, and `ConfigMap` catalogs in
/// pods' namespaces when the configuration asks for them), gating readiness.
fn injector_server(
    client: &kube::Client,
    config: &Config,
    server_config: ServerConfig,
) -> anyhow::Result<(Server, admission_kit::Pipeline)> {
    let mut sources = vec![CatalogSource::inline(config.sidecars.clone())];
    sources.extend(config.catalog_paths.iter().map(CatalogSource::path));
    let store = Arc::new(CatalogStore::load(sources)?);
    store.clone().spawn_reload(config.catalog_reload_interval()?, None);
    let (namespaces, namespaces_health) = NamespaceSource::watch(client.clone());
    let mut caches = vec![namespaces_health];
    let configmaps = if config.namespace_catalogs {
        let (catalogs, health) =
            NamespaceCatalogs::watch(client.clone(), &config.namespace_catalog_key, &config.namespace_catalog_selector);
        caches.push(health);
        Some(Arc::new(catalogs))
    } else {
        None
    };
    let pipeline = sidecar_injector::pipeline_with(config, store, configmaps, None)?;
    let mut server = Server::new(server_config, [pipeline.clone()]).namespaces(namespaces);
    for cache in caches {
        server = server.cache(cache);
    }
    Ok((server, pipeline))
}

/// Waits until the server's `/readyz` says its caches have synced.
pub async fn wait_ready(server: &RunningServer) -> anyhow::Result<()> {
    let url = format!("http://{}/readyz", server.admin_addr());
    let started = std::time::Instant::now();
    loop {
        let ok = tokio::net::TcpStream::connect(server.admin_addr()).await.is_ok()
            && std::process::Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &url])
                .status()
                .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < std::time::Duration::from_secs(30), "the injector's caches never synced");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
