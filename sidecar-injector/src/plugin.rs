//! The injector as an admission-kit [`Plugin`]: its flags (where the configuration comes from),
//! its own subcommands (`inject`, `explain`, `check`), and what it sets up before serving
//! (catalog reloads, `ConfigMap` catalogs, its metrics, the start-up banner). admission-kit's
//! application shell ([`App`]) provides the rest: `serve`, `webhook-config`, logging, the shared
//! Kubernetes client, the namespace cache, readiness and the drain.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use admission_kit::Pipeline;
use admission_kit::app::{App, Plugin, Runtime, ServeSettings};
use admission_kit::server::RunningServer;
use anyhow::Context as _;
use async_trait::async_trait;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::catalog::{CatalogSource, CatalogStore, NamespaceCatalogs};
use crate::config::Config;
use crate::inject::Annotations;
use crate::metrics::InjectorMetrics;
use crate::{offline, pipeline};

/// The application: the injector's name, description and default Service on admission-kit's shell.
pub fn app() -> App {
    App::new("sidecar-injector")
        .about("Inject sidecars into Kubernetes pods (a drop-in for ExpediaGroup's kubernetes-sidecar-injector)")
        .version(env!("CARGO_PKG_VERSION"))
        .default_service("sidecar-injector/sidecar-injector:443")
}

/// The injector's flags: where its configuration comes from. Every server setting is a key of
/// that configuration (`server.…`), so there are no server flags of admission-kit's own here.
#[derive(Debug, Args)]
pub struct Flags {
    /// YAML configuration file (without it: the embedded default configuration, with an example sidecar).
    #[arg(long, global = true, env = "SIDECAR_INJECTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override one configuration key: `--set key=value` (dotted keys for sections, YAML values).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Add a catalog file or directory (repeatable); added to `catalogPaths`.
    #[arg(long = "catalog", global = true, value_name = "PATH")]
    pub catalogs: Vec<PathBuf>,
}

/// The injector's own subcommands, next to admission-kit's `serve` and `webhook-config`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print manifests with sidecars injected into their pod templates (like `istioctl kube-inject`).
    Inject(OfflineArgs),
    /// Say, for each pod template, whether and why it would or would not be injected.
    Explain(OfflineArgs),
    /// Validate the configuration and its catalogs, then print the catalog's sidecar names.
    Check,
}

#[derive(Debug, Args)]
pub struct OfflineArgs {
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

fn overrides(flags: &Flags) -> anyhow::Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for item in &flags.set {
        let (key, value) = item.split_once('=').with_context(|| format!("--set `{item}`: expected key=value"))?;
        let value: Value = serde_saphyr::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

fn load(flags: &Flags) -> anyhow::Result<Config> {
    let mut config = Config::load(flags.config.as_deref(), &overrides(flags)?)?;
    config.catalog_paths.extend(flags.catalogs.iter().cloned());
    Ok(config)
}

pub(crate) fn sources(config: &Config) -> Vec<CatalogSource> {
    let mut sources = vec![CatalogSource::inline(config.sidecars.clone())];
    sources.extend(config.catalog_paths.iter().map(CatalogSource::path));
    sources
}

/// The injector as an admission-kit plugin: its configuration, its pipeline, what it sets up
/// before serving (catalog reloads, `ConfigMap` catalogs, its metrics) and its own commands.
#[derive(Debug)]
pub struct Injector {
    config: Config,
}

impl Injector {
    /// The injector with `config`.
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// The injector with the configuration its flags name (file, environment, `--set`, `--catalog`).
    ///
    /// # Errors
    /// When the configuration cannot be loaded or is not valid.
    pub fn from_flags(flags: &Flags) -> anyhow::Result<Self> {
        Ok(Self { config: load(flags)? })
    }

    /// Its configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }
}

#[async_trait]
impl Plugin for Injector {
    type Flags = Flags;
    type Command = Command;

    fn settings(&self) -> &ServeSettings {
        &self.config.server
    }

    fn pipelines(&self) -> anyhow::Result<Vec<Pipeline>> {
        Ok(vec![pipeline(&self.config, Arc::new(CatalogStore::load(sources(&self.config))?), None)?])
    }

    async fn setup(&self, runtime: &mut Runtime) -> anyhow::Result<Vec<Pipeline>> {
        let config = &self.config;
        let store = Arc::new(CatalogStore::load(sources(config))?);
        let metrics = InjectorMetrics::register(runtime.metrics());
        metrics.reloaded(true, store.current().len());
        let configmap_catalogs = if config.namespace_catalogs {
            let client = runtime.client().await.context("namespaceCatalogs needs cluster access")?;
            let (catalogs, health) =
                NamespaceCatalogs::watch(client, &config.namespace_catalog_key, &config.namespace_catalog_selector);
            runtime.cache(health);
            Some(Arc::new(catalogs.counting_failures(metrics.namespace_catalog_failures.clone())))
        } else {
            None
        };
        let pipeline = crate::pipeline_with(config, store.clone(), configmap_catalogs, Some(&metrics))?;
        store.clone().spawn_reload(config.catalog_reload_interval, Some(metrics));
        let inject = Annotations::of(&config.injection()).inject;
        runtime.on_started(move |server| print_banner(server, &store, &inject));
        Ok(vec![pipeline])
    }

    async fn command(&self, command: Command) -> anyhow::Result<()> {
        let config = &self.config;
        match command {
            Command::Check => {
                let catalog = crate::catalog::load_sources(&sources(config))?;
                pipeline(config, Arc::new(CatalogStore::fixed(catalog.clone())), None)?;
                println!("configuration OK; {} sidecar(s): {catalog}", catalog.len());
            }
            Command::Inject(args) => {
                let (pipeline, objects, labels) = offline_setup(config, &args)?;
                let injected = offline::inject(&pipeline, objects, &args.namespace, &labels).await?;
                print!("{}", serde_saphyr::to_string_multiple(&injected)?);
            }
            Command::Explain(args) => {
                let (pipeline, objects, labels) = offline_setup(config, &args)?;
                let annotations = Annotations::of(&config.injection());
                print!("{}", offline::explain(&pipeline, &annotations, &objects, &args.namespace, &labels).await);
            }
        }
        Ok(())
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

/// Tells a person where the server listens and how to try it. Printing must never take the server
/// down: if stdout is closed (a supervisor that stopped reading), the banner is dropped, not the
/// process.
fn print_banner(running: &RunningServer, store: &CatalogStore, inject_annotation: &str) {
    use std::io::Write as _;
    let port = running.webhook_addr().port();
    let catalog = store.current();
    let mut banner = format!(
        "sidecar-injector: serving {} sidecar(s) [{catalog}] on https://{} (admin http://{}). Try:\n  curl -sk https://localhost:{port}/mutate -H 'content-type: application/json' -d @review.json\n  (an AdmissionReview of a pod annotated {}: haystack-agent)\n",
        catalog.len(),
        running.webhook_addr(),
        running.admin_addr(),
        inject_annotation,
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
