//! `sidecar-injector`: the webhook (`serve`), offline injection (`inject`), explanations
//! (`explain`), the webhook configuration (`webhook-config`) and a config check (`check`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use admission_kit::cache::CacheHealth;
use admission_kit::metrics::Metrics;
use admission_kit::namespaces::NamespaceSource;
use admission_kit::server::{Server, shutdown_signal};
use admission_kit::telemetry::{self, LogFormat};
use admission_kit::webhook_config::{ClientTarget, WebhookConfigOptions, render_webhook_config};
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use sidecar_injector::catalog::{CatalogSource, CatalogStore};
use sidecar_injector::config::Config;
use sidecar_injector::inject::Annotations;
use sidecar_injector::metrics::InjectorMetrics;
use sidecar_injector::{offline, pipeline};

/// mimalloc: the review path allocates and frees many small JSON nodes; the system allocator spent
/// a third of the in-process time on them (`bench profile 10k --breakdown`, see book/src/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "sidecar-injector",
    version,
    about = "Inject sidecars into Kubernetes pods (a drop-in for ExpediaGroup's kubernetes-sidecar-injector)"
)]
struct Cli {
    /// YAML configuration file (without it: the embedded default configuration, with an example sidecar).
    #[arg(long, global = true, env = "SIDECAR_INJECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Override one configuration key: `--set key=value` (dotted keys for sections, YAML values).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Add a catalog file or directory (repeatable); added to `catalogPaths`.
    #[arg(long = "catalog", global = true, value_name = "PATH")]
    catalogs: Vec<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the webhook (the default).
    Serve,
    /// Print manifests with sidecars injected into their pod templates (like `istioctl kube-inject`).
    Inject(OfflineArgs),
    /// Say, for each pod template, whether and why it would or would not be injected.
    Explain(OfflineArgs),
    /// Print the `MutatingWebhookConfiguration` (JSON, which is valid YAML).
    WebhookConfig(WebhookConfigArgs),
    /// Validate the configuration and its catalogs, then print the catalog's sidecar names.
    Check,
}

#[derive(Debug, Args)]
struct OfflineArgs {
    /// Manifest file (`-` for stdin): Pod, Deployment, `StatefulSet`, `DaemonSet`, `ReplicaSet`, Job, `CronJob`.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Namespace for objects that do not name one.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The namespace's labels, `key=value,…` (default: the opt-in label, so the namespace counts as enabled).
    #[arg(long, value_delimiter = ',')]
    namespace_labels: Option<Vec<String>>,
}

#[derive(Debug, Args)]
struct WebhookConfigArgs {
    /// Call the webhook at this base URL (out-of-cluster development).
    #[arg(long, conflicts_with = "service")]
    url: Option<String>,
    /// Call the webhook through this Service: `namespace/name[:port]`.
    #[arg(long, default_value = "sidecar-injector/sidecar-injector:443")]
    service: Option<String>,
    /// PEM file whose content becomes the caBundle.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

fn overrides(cli: &Cli) -> anyhow::Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for item in &cli.set {
        let (key, value) = item.split_once('=').with_context(|| format!("--set `{item}`: expected key=value"))?;
        let value: Value = serde_saphyr::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref(), &overrides(cli)?)?;
    config.catalog_paths.extend(cli.catalogs.iter().cloned());
    Ok(config)
}

fn sources(config: &Config) -> Vec<CatalogSource> {
    let mut sources = vec![CatalogSource::inline(config.sidecars.clone())];
    sources.extend(config.catalog_paths.iter().map(CatalogSource::path));
    sources
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sidecar-injector: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load(&cli)?;
    match cli.command {
        None | Some(Command::Serve) => serve(config).await,
        Some(Command::Check) => {
            let catalog = sidecar_injector::catalog::load_sources(&sources(&config))?;
            pipeline(&config, Arc::new(CatalogStore::fixed(catalog.clone())), None)?;
            println!("configuration OK; {} sidecar(s): {catalog}", catalog.len());
            Ok(())
        }
        Some(Command::Inject(args)) => {
            let (pipeline, objects, labels) = offline_setup(&config, &args)?;
            let injected = offline::inject(&pipeline, objects, &args.namespace, &labels).await?;
            print!("{}", serde_saphyr::to_string_multiple(&injected)?);
            Ok(())
        }
        Some(Command::Explain(args)) => {
            let (pipeline, objects, labels) = offline_setup(&config, &args)?;
            let annotations = Annotations::new(&config.annotation_prefix);
            print!("{}", offline::explain(&pipeline, &annotations, &objects, &args.namespace, &labels).await);
            Ok(())
        }
        Some(Command::WebhookConfig(args)) => {
            let pipeline = pipeline(&config, Arc::new(CatalogStore::load(sources(&config))?), None)?;
            let target = match (&args.url, &args.service) {
                (Some(url), _) => ClientTarget::Url(url.clone()),
                (None, Some(service)) => admission_kit::cli::parse_service(service)?,
                (None, None) => anyhow::bail!("give --url or --service"),
            };
            let mut options = WebhookConfigOptions::new("sidecar-injector", target);
            if let Some(path) = &args.ca_file {
                options = options.ca_bundle(
                    std::fs::read(path).with_context(|| format!("failed to read --ca-file {}", path.display()))?,
                );
            }
            let mut value = serde_json::to_value(render_webhook_config(&[pipeline], &options))?;
            value["apiVersion"] = "admissionregistration.k8s.io/v1".into();
            value["kind"] = "MutatingWebhookConfiguration".into();
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(())
        }
    }
}

type Offline = (admission_kit::Pipeline, Vec<Value>, BTreeMap<String, String>);

fn offline_setup(config: &Config, args: &OfflineArgs) -> anyhow::Result<Offline> {
    let pipeline = pipeline(config, Arc::new(CatalogStore::load(sources(config))?), None)?;
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("failed to read stdin")?
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("failed to read {}", args.file.display()))?
    };
    let objects = offline::parse_manifests(&text, &args.file.display().to_string())?;
    let labels = match &args.namespace_labels {
        Some(pairs) => pairs
            .iter()
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .with_context(|| format!("--namespace-labels `{p}`: expected key=value"))
            })
            .collect::<anyhow::Result<_>>()?,
        None => BTreeMap::from([(config.namespace_label_key.clone(), config.namespace_label_value.clone())]),
    };
    Ok((pipeline, objects, labels))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let format = if config.server.log_format == "json" { LogFormat::Json } else { LogFormat::Text };
    telemetry::init(format, None)?;
    let store = Arc::new(CatalogStore::load(sources(&config))?);
    let mut metrics = Metrics::new();
    let injector_metrics = InjectorMetrics::register(&mut metrics);
    injector_metrics.reloaded(true, store.current().len());
    let mut caches = Vec::new();
    let configmap_catalogs = if config.namespace_catalogs {
        let client = admission_kit::reexports::kube::Client::try_default()
            .await
            .context("namespaceCatalogs needs cluster access (in-cluster or a kubeconfig)")?;
        let (catalogs, health) = sidecar_injector::catalog::NamespaceCatalogs::watch(
            client,
            &config.namespace_catalog_key,
            &config.namespace_catalog_selector,
        );
        caches.push(health);
        Some(Arc::new(catalogs.counting_failures(injector_metrics.namespace_catalog_failures.clone())))
    } else {
        None
    };
    let pipeline =
        sidecar_injector::pipeline_with(&config, store.clone(), configmap_catalogs, Some(&injector_metrics))?;
    store.clone().spawn_reload(config.catalog_reload_interval()?, Some(injector_metrics));

    let (namespaces, namespace_cache) = namespace_source(&config.server.namespace_cache).await?;
    caches.extend(namespace_cache);
    let mut server = Server::new(config.server_config()?, [pipeline]).namespaces(namespaces).metrics(metrics);
    for cache in caches {
        server = server.cache(cache);
    }
    let running = server.start().await?;
    print_banner(&running, &store, &config);
    shutdown_signal().await;
    running.shutdown_and_wait().await?;
    Ok(())
}

/// Tells a person where the server listens and how to try it. Printing must never take the server
/// down: if stdout is closed (a supervisor that stopped reading), the banner is dropped, not the
/// process.
fn print_banner(running: &admission_kit::server::RunningServer, store: &CatalogStore, config: &Config) {
    use std::io::Write as _;
    let port = running.webhook_addr().port();
    let catalog = store.current();
    let mut banner = format!(
        "sidecar-injector: serving {} sidecar(s) [{catalog}] on https://{} (admin http://{}). Try:\n  curl -sk https://localhost:{port}/mutate -H 'content-type: application/json' -d @review.json\n  (an AdmissionReview of a pod annotated {}: haystack-agent)\n",
        catalog.len(),
        running.webhook_addr(),
        running.admin_addr(),
        Annotations::new(&config.annotation_prefix).inject,
    );
    if let Some(ca) = running.ca_pem() {
        banner.push_str("self-signed certificate; its CA (for a caBundle):\n");
        banner.push_str(ca);
    }
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(banner.as_bytes()).and_then(|()| stdout.flush()).is_err() {
        tracing::warn!("stdout is closed; the start-up banner was not printed");
    }
}

async fn namespace_source(mode: &str) -> anyhow::Result<(NamespaceSource, Option<CacheHealth>)> {
    if mode == "never" {
        return Ok((NamespaceSource::Unknown, None));
    }
    match admission_kit::reexports::kube::Client::try_default().await {
        Ok(client) => {
            let (source, health) = NamespaceSource::watch(client);
            Ok((source, Some(health)))
        }
        Err(error) if mode == "auto" => {
            tracing::warn!(%error, "no cluster access: namespace labels will not be cached");
            Ok((NamespaceSource::Unknown, None))
        }
        Err(error) => Err(anyhow::anyhow!("failed to create a Kubernetes client for the namespace cache: {error}")),
    }
}
