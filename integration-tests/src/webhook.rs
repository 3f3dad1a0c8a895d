//! Running the sidecar injector against the control plane: in-process on 127.0.0.1, registered
//! with a `MutatingWebhookConfiguration` whose client config is its URL and CA bundle.

use admission_kit::app::{NamespaceCacheMode, Plugin as _, Runtime, ServeSettings};
use admission_kit::reexports::kube::{self, Api, api::PostParams};
use admission_kit::server::{RunningServer, Server, ServerConfig};
use admission_kit::webhook_config::{ClientTarget, WebhookConfigOptions, render_webhook_config};
use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
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
/// The server's settings are [`ServeSettings::local`] with the namespace cache on; the rest of
/// `config` is the injector's.
pub async fn start_injector(client: &kube::Client, config: &Config, configuration: &str) -> anyhow::Result<Injector> {
    let mut config = config.clone();
    config.server = ServeSettings::local();
    config.server.namespace_cache = NamespaceCacheMode::Always;
    start_injector_with(client, &config, configuration, None).await
}

/// [`start_injector`] with `config`'s own server settings (e.g. certificate files) and, for
/// certificate files, the CA bundle to register.
pub async fn start_injector_with(
    client: &kube::Client,
    config: &Config,
    configuration: &str,
    ca_pem: Option<&str>,
) -> anyhow::Result<Injector> {
    let (runtime, pipelines) = injector_runtime(client, config).await?;
    let server = runtime.start(pipelines.clone()).await?;
    let ca = match ca_pem {
        Some(ca) => ca.to_owned(),
        None => server.ca_pem().context("a generated certificate has a CA")?.to_owned(),
    };
    let url = format!("https://127.0.0.1:{}", server.webhook_addr().port());
    register(client, &pipelines, configuration, &url, ca.as_bytes()).await?;
    wait_ready(&server).await?;
    Ok(Injector { server, configuration: configuration.to_owned() })
}

/// Starts the injector with `config` (its server settings included) on the given client without
/// registering it (something else, such as the Helm chart, registers it), and waits until it is
/// ready.
pub async fn serve_injector(client: &kube::Client, config: &Config) -> anyhow::Result<RunningServer> {
    let (runtime, pipelines) = injector_runtime(client, config).await?;
    let server = runtime.start(pipelines).await?;
    wait_ready(&server).await?;
    Ok(server)
}

/// The injector's own set-up (the binary's, not a copy): catalog files hot-reloaded, `ConfigMap`
/// catalogs when the configuration asks for them, the namespace cache as its settings say, all
/// on `client`, and their readiness.
async fn injector_runtime(
    client: &kube::Client,
    config: &Config,
) -> anyhow::Result<(Runtime, Vec<admission_kit::Pipeline>)> {
    let mut runtime = Runtime::with_client(config.server.clone(), client.clone());
    let pipelines = sidecar_injector::plugin::Injector::new(config.clone()).setup(&mut runtime).await?;
    Ok((runtime, pipelines))
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

/// Creates the policies `sidecar-injector policy` renders for `config` (webhook-less mode), as
/// `kubectl apply -f` of its output would; returns how many objects. They act once the API
/// server's informers have them.
pub async fn install_policies(client: &kube::Client, config: &Config) -> anyhow::Result<usize> {
    let pipelines = sidecar_injector::plugin::Injector::new(config.clone()).pipelines()?;
    let objects = admission_kit::policy::render_policies(&pipelines, &admission_kit::policy::PolicyOptions::new())?;
    for object in &objects {
        create_policy_object(client, object).await?;
    }
    Ok(objects.len())
}

/// Creates one rendered policy or binding (`admissionregistration.k8s.io/v1`).
pub async fn create_policy_object(client: &kube::Client, object: &serde_json::Value) -> anyhow::Result<()> {
    use admission_kit::reexports::kube::api::{ApiResource, DynamicObject};
    let kind = object["kind"].as_str().unwrap_or_default();
    let resource = ApiResource {
        group: "admissionregistration.k8s.io".to_owned(),
        version: "v1".to_owned(),
        api_version: "admissionregistration.k8s.io/v1".to_owned(),
        kind: kind.to_owned(),
        // MutatingAdmissionPolicy → mutatingadmissionpolicies; …Binding → …bindings.
        plural: match kind.to_lowercase().strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{}s", kind.to_lowercase()),
        },
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    api.create(&PostParams::default(), &serde_json::from_value(object.clone())?).await?;
    Ok(())
}
