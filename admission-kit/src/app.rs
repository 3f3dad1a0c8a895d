//! The application shell every webhook binary uses: the command line (`serve`, `webhook-config`,
//! and the plugin's own subcommands), logging, one Kubernetes client shared by everything that
//! needs one, asynchronous set-up for a plugin's own caches and metrics, readiness over all of
//! them, and the server with its drain on SIGTERM.
//!
//! A simple webhook needs none of this by name: [`crate::cli::run`] is one line. A plugin with a
//! configuration, caches or commands of its own implements [`Plugin`] and hands it to [`App`]:
//!
//! ```no_run
//! use admission_kit::app::{App, NoCommands, Plugin, Runtime, ServeSettings};
//! use admission_kit::pipeline::ResourceTarget;
//! use admission_kit::{mutator, prelude::*};
//! use k8s_openapi::api::core::v1::Pod;
//!
//! /// The flags: the standard serving settings and nothing else.
//! #[derive(Debug, clap::Args)]
//! struct Flags {
//!     #[command(flatten)]
//!     serve: ServeSettings,
//! }
//!
//! struct Labels {
//!     serve: ServeSettings,
//! }
//!
//! #[async_trait]
//! impl Plugin for Labels {
//!     type Flags = Flags;
//!     type Command = NoCommands;
//!
//!     fn settings(&self) -> &ServeSettings {
//!         &self.serve
//!     }
//!
//!     fn pipelines(&self) -> anyhow::Result<Vec<Pipeline>> {
//!         let label = mutator::from_fn(|pod: &mut serde_json::Value, _ctx: &mut Context<'_>| {
//!             pod["metadata"]["labels"]["labelled"] = "true".into();
//!             Ok(())
//!         });
//!         let step = Step::dynamic("label", ResourceTarget::of::<Pod>(), label);
//!         Ok(vec![Pipeline::builder("labels.example.com").step(step).build()?])
//!     }
//!
//!     async fn setup(&self, runtime: &mut Runtime) -> anyhow::Result<Vec<Pipeline>> {
//!         // One client for the whole process: a watch of the plugin's own goes here, and its
//!         // health joins /readyz through `runtime.cache(…)`.
//!         let _client = runtime.client().await?;
//!         self.pipelines()
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     App::new("labels").run(|flags: Flags| Ok(Labels { serve: flags.serve })).await
//! }
//! ```

mod settings;

use std::ffi::OsString;
use std::path::PathBuf;

use async_trait::async_trait;
use clap::{Args, FromArgMatches as _, Subcommand};

use crate::cache::CacheHealth;
use crate::cli::WebhookConfigArgs;
use crate::metrics::Metrics;
use crate::namespaces::NamespaceSource;
use crate::pipeline::Pipeline;
use crate::server::{RunningServer, Server, shutdown_signal};
use crate::telemetry;

pub use settings::{
    MaxStaleness, NamespaceCacheMode, ServeSettings, SettingsError, duration_text, format_duration, parse_duration,
};

/// A webhook binary's own part: its configuration (built from its [`Plugin::Flags`]), its
/// pipelines, what it sets up before serving, and its subcommands. [`App`] does the rest.
#[async_trait]
pub trait Plugin: Send + Sync + Sized + 'static {
    /// The plugin's command-line flags, flattened next to the subcommands. Include
    /// [`ServeSettings`] (`#[command(flatten)]`) to take the server's settings as flags, or read
    /// them from a configuration file of your own (embed [`ServeSettings`] in it: it deserialises).
    /// Mark flags `global = true` to accept them after a subcommand too.
    type Flags: Args + Send;
    /// Subcommands of the plugin's own, next to `serve` and `webhook-config`; [`NoCommands`] for
    /// none.
    type Command: Subcommand + Send;

    /// The serving settings (from the flags or the plugin's configuration).
    fn settings(&self) -> &ServeSettings;

    /// The pipelines as definitions: what `webhook-config` renders, and what `serve` serves unless
    /// [`Plugin::setup`] says otherwise. Must not need a cluster.
    ///
    /// # Errors
    /// When the configuration does not make valid pipelines.
    fn pipelines(&self) -> anyhow::Result<Vec<Pipeline>>;

    /// Set-up before serving, with the [`Runtime`]: the shared Kubernetes client, the metrics
    /// registry for the plugin's own metrics, caches whose health joins `/readyz`, and tasks of the
    /// plugin's own (spawn them here, on the server's runtime). Returns the pipelines to serve; by
    /// default [`Plugin::pipelines`].
    ///
    /// # Errors
    /// Ends the program before it serves, with this error.
    async fn setup(&self, runtime: &mut Runtime) -> anyhow::Result<Vec<Pipeline>> {
        let _ = runtime;
        self.pipelines()
    }

    /// Runs one of the plugin's own subcommands.
    ///
    /// # Errors
    /// Ends the program with this error.
    async fn command(&self, command: Self::Command) -> anyhow::Result<()> {
        let _ = command;
        anyhow::bail!("this webhook has no subcommands of its own")
    }
}

/// No subcommands of the plugin's own (see [`Plugin::Command`]).
#[derive(Clone, Copy, Debug, Subcommand)]
pub enum NoCommands {}

/// Why the runtime could not provide what a plugin asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// No Kubernetes client: neither in a cluster nor with a kubeconfig.
    #[error("failed to create a Kubernetes client (in-cluster or from a kubeconfig): {0}")]
    Client(String),
}

type StartedHook = Box<dyn FnOnce(&RunningServer) + Send>;

/// What a plugin's [`Plugin::setup`] may use: one Kubernetes client created on first use and
/// shared with the framework's own caches, the metrics registry, and the caches whose health
/// decides readiness.
pub struct Runtime {
    settings: ServeSettings,
    client: Option<Result<kube::Client, String>>,
    metrics: Metrics,
    caches: Vec<CacheHealth>,
    started: Vec<StartedHook>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("settings", &self.settings)
            .field("client", &self.client.as_ref().map(Result::is_ok))
            .field("caches", &self.caches)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime for `settings`; the client is created when first asked for.
    #[must_use]
    pub fn new(settings: ServeSettings) -> Self {
        Self { settings, client: None, metrics: Metrics::new(), caches: Vec::new(), started: Vec::new() }
    }

    /// A runtime with `client` as its shared client (tests, or a client configured by the plugin).
    #[must_use]
    pub fn with_client(settings: ServeSettings, client: kube::Client) -> Self {
        let mut runtime = Self::new(settings);
        runtime.client = Some(Ok(client));
        runtime
    }

    /// The serving settings.
    #[must_use]
    pub fn settings(&self) -> &ServeSettings {
        &self.settings
    }

    /// The shared Kubernetes client, created on the first call (in-cluster, else the kubeconfig)
    /// and cloned for every caller after it. A failure is remembered: every caller gets it.
    ///
    /// # Errors
    /// When there is no cluster to reach.
    pub async fn client(&mut self) -> Result<kube::Client, RuntimeError> {
        if self.client.is_none() {
            self.client = Some(kube::Client::try_default().await.map_err(|e| e.to_string()));
        }
        match self.client.as_ref() {
            Some(Ok(client)) => Ok(client.clone()),
            Some(Err(error)) => Err(RuntimeError::Client(error.clone())),
            None => unreachable!("set just above"),
        }
    }

    /// The metrics registry: register the plugin's own metrics in
    /// [`Metrics::registry_mut`]; they are served on `/metrics` with the server's.
    pub fn metrics(&mut self) -> &mut Metrics {
        &mut self.metrics
    }

    /// Serves with a watch cache of the plugin's own: unready until its first list, unready again
    /// when out of contact longer than [`ServeSettings::cache_max_staleness`], its health in the
    /// metrics (see [`Server::cache`]).
    pub fn cache(&mut self, health: CacheHealth) {
        self.caches.push(health);
    }

    /// Runs `hook` once the server is listening (to print where, for instance).
    pub fn on_started(&mut self, hook: impl FnOnce(&RunningServer) + Send + 'static) {
        self.started.push(Box::new(hook));
    }

    /// The namespace source for [`ServeSettings::namespace_cache`], on the shared client.
    async fn namespace_source(&mut self) -> anyhow::Result<NamespaceSource> {
        let mode = self.settings.namespace_cache;
        if mode == NamespaceCacheMode::Never {
            return Ok(NamespaceSource::Unknown);
        }
        match self.client().await {
            Ok(client) => {
                let (source, health) = NamespaceSource::watch(client);
                self.caches.push(health);
                Ok(source)
            }
            Err(error) if mode == NamespaceCacheMode::Auto => {
                tracing::warn!(%error, "no cluster access: namespace labels will not be cached");
                Ok(NamespaceSource::Unknown)
            }
            Err(error) => Err(anyhow::anyhow!("the namespace cache is `always`, but {error}")),
        }
    }

    /// Serves `pipelines` with everything set up so far (and the namespace cache the settings
    /// ask for), writes the generated CA if asked, runs the started hooks, serves until SIGTERM or
    /// SIGINT and drains.
    ///
    /// # Errors
    /// When the server cannot start (ports, certificate, limits) or the namespace cache is
    /// `always` without a cluster.
    pub async fn serve(self, pipelines: Vec<Pipeline>) -> anyhow::Result<()> {
        let running = self.start(pipelines).await?;
        shutdown_signal().await;
        running.shutdown_and_wait().await?;
        Ok(())
    }

    /// [`Runtime::serve`] without waiting for a signal: returns the running server.
    ///
    /// # Errors
    /// As [`Runtime::serve`].
    pub async fn start(mut self, pipelines: Vec<Pipeline>) -> anyhow::Result<RunningServer> {
        let config = self.settings.server_config()?;
        let namespaces = self.namespace_source().await?;
        let mut server = Server::new(config, pipelines).namespaces(namespaces).metrics(self.metrics);
        for cache in self.caches {
            server = server.cache(cache);
        }
        let running = server.start().await?;
        write_ca(self.settings.write_ca.as_ref(), running.ca_pem())?;
        for hook in self.started {
            hook(&running);
        }
        Ok(running)
    }
}

fn write_ca(path: Option<&PathBuf>, ca: Option<&str>) -> anyhow::Result<()> {
    match (path, ca) {
        (Some(path), Some(ca)) if path.as_os_str() == "-" => print!("{ca}"),
        (Some(path), Some(ca)) => {
            std::fs::write(path, ca)
                .map_err(|e| anyhow::anyhow!("failed to write the CA to {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), "wrote the generated CA");
        }
        (Some(_), None) => tracing::warn!("writeCa ignored: the certificate comes from files, not generated"),
        (None, _) => {}
    }
    Ok(())
}

#[derive(Debug, clap::Parser)]
struct Cli<F: Args, C: Subcommand> {
    #[command(subcommand)]
    command: Option<ShellCommand<C>>,
    #[command(flatten)]
    flags: F,
}

#[derive(Debug, Subcommand)]
enum ShellCommand<C: Subcommand> {
    /// Serve the webhook (the default).
    Serve,
    /// Print the `MutatingWebhookConfiguration` (JSON, which is valid YAML) for this webhook.
    WebhookConfig(WebhookConfigArgs),
    /// Print the `MutatingAdmissionPolicy` objects (webhook-less mode) for this webhook as a
    /// `List`; fails naming each step that cannot run as a policy, and why.
    Policy(crate::cli::PolicyArgs),
    #[command(flatten)]
    Plugin(C),
}

/// The command line and start-up of a webhook binary (see the [module](self) docs).
#[derive(Clone, Debug)]
#[must_use]
pub struct App {
    name: String,
    about: Option<String>,
    version: Option<String>,
    default_service: Option<String>,
}

impl App {
    /// An application called `name`: the command's name in `--help`, the default
    /// `MutatingWebhookConfiguration` name, and the prefix of error messages.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), about: None, version: None, default_service: None }
    }

    /// The one-line description in `--help`.
    pub fn about(mut self, about: impl Into<String>) -> Self {
        self.about = Some(about.into());
        self
    }

    /// The version `--version` prints (usually `env!("CARGO_PKG_VERSION")`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The Service `webhook-config` points at when given neither `--url` nor `--service`
    /// (`namespace/name[:port]`, as `--service` takes it).
    pub fn default_service(mut self, service: impl Into<String>) -> Self {
        self.default_service = Some(service.into());
        self
    }

    fn command<P: Plugin>(&self) -> clap::Command {
        let mut command = <Cli<P::Flags, P::Command> as clap::CommandFactory>::command().name(self.name.clone());
        command = match &self.about {
            Some(about) => command.about(about.clone()),
            None => command.about(format!("{}: an admission-kit mutating webhook", self.name)),
        };
        if let Some(version) = &self.version {
            command = command.version(version.clone());
        }
        let name = self.name.clone();
        let service = self.default_service.clone();
        command.mut_subcommand("webhook-config", move |sub| {
            let sub = sub.mut_arg("name", |arg| arg.required(false).default_value(name));
            match service {
                Some(service) => sub.mut_arg("service", |arg| arg.default_value(service)),
                None => sub,
            }
        })
    }

    /// Parses the process's arguments and runs: `serve` (the default), `webhook-config`, or one
    /// of the plugin's commands, with the plugin that `configure` makes from its flags. Logging is
    /// set up from the plugin's settings once `configure` has made it, before anything else runs.
    /// `--help` and bad flags exit as clap does.
    ///
    /// # Errors
    /// From `configure`, the set-up, the server, or the command.
    pub async fn run<P: Plugin>(self, configure: impl FnOnce(P::Flags) -> anyhow::Result<P>) -> anyhow::Result<()> {
        self.run_from(std::env::args_os(), configure).await
    }

    /// [`App::run`] with these arguments (the first is the program's name).
    ///
    /// # Errors
    /// As [`App::run`].
    pub async fn run_from<P: Plugin>(
        self,
        args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
        configure: impl FnOnce(P::Flags) -> anyhow::Result<P>,
    ) -> anyhow::Result<()> {
        let matches = self.command::<P>().get_matches_from(args);
        let cli = match Cli::<P::Flags, P::Command>::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(error) => error.exit(),
        };
        let plugin = configure(cli.flags)?;
        let settings = plugin.settings();
        telemetry::init(settings.log_format, settings.log.as_deref())?;
        match cli.command {
            None | Some(ShellCommand::Serve) => {
                let mut runtime = Runtime::new(settings.clone());
                let pipelines = plugin.setup(&mut runtime).await?;
                runtime.serve(pipelines).await
            }
            Some(ShellCommand::WebhookConfig(args)) => {
                print!("{}", args.render(&plugin.pipelines()?)?);
                Ok(())
            }
            Some(ShellCommand::Policy(args)) => {
                print!("{}", args.render(&plugin.pipelines()?)?);
                Ok(())
            }
            Some(ShellCommand::Plugin(command)) => plugin.command(command).await,
        }
    }
}

#[cfg(test)]
mod tests;
