//! A ready-made command line for webhook binaries: `serve` (the default) and `webhook-config`.
//!
//! Every flag also reads an environment variable (`ADMISSION_KIT_…`), so the same binary is
//! configured by flags locally and by env in a Deployment. Plugins with their own configuration
//! flatten [`ServeArgs`] into their clap parser and call [`ServeArgs::server_config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cache::CacheHealth;
use crate::namespaces::NamespaceSource;
use crate::pipeline::Pipeline;
use crate::server::{Server, ServerConfig, shutdown_signal};
use crate::telemetry::{self, LogFormat};
use crate::tls::TlsSource;
use crate::webhook_config::{ClientTarget, WebhookConfigOptions, render_webhook_config};

/// Parses a duration like `5s`, `250ms` or `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::server::parse_duration(text).ok_or_else(|| format!("`{text}` is not a duration like 5s, 250ms or 1m30s"))
}

/// Parses a cache staleness bound: a duration like `10m`, or `never` (also `0`) for none.
pub fn parse_staleness(text: &str) -> Result<Option<Duration>, String> {
    match text.trim() {
        "never" | "0" => Ok(None),
        other => match crate::server::parse_duration(other) {
            Some(d) if d.is_zero() => Ok(None),
            Some(d) => Ok(Some(d)),
            None => Err(format!("`{text}` is neither `never` nor a duration like 30s, 10m or 1h")),
        },
    }
}

/// A cache staleness bound as a flag: a duration, `Duration::ZERO` for `never`.
fn parse_staleness_flag(text: &str) -> Result<Duration, String> {
    parse_staleness(text).map(Option::unwrap_or_default)
}

/// Whether to watch namespaces for their labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum NamespaceCacheMode {
    /// Watch if a cluster is reachable (in-cluster or kubeconfig); otherwise trust the selectors.
    #[default]
    Auto,
    /// Watch, and fail to start without cluster access.
    Always,
    /// Never watch; trust the API server's selectors.
    Never,
}

/// Flags of the webhook server.
#[derive(Clone, Debug, Args)]
#[non_exhaustive]
pub struct ServeArgs {
    /// Address of the HTTPS webhook port.
    #[arg(long, env = "ADMISSION_KIT_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// Address of the plain-HTTP admin port (/livez, /readyz, /metrics).
    #[arg(long, env = "ADMISSION_KIT_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Serving certificate (PEM). Without it a self-signed one is generated (development mode).
    #[arg(long, env = "ADMISSION_KIT_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving key (PEM).
    #[arg(long, env = "ADMISSION_KIT_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// How often the certificate files are checked for a change.
    #[arg(long, env = "ADMISSION_KIT_CERT_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub cert_reload_interval: Duration,
    /// Names for a generated certificate (DNS names or IPs); repeat the flag for several.
    #[arg(
        long = "self-signed-name",
        env = "ADMISSION_KIT_SELF_SIGNED_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    pub self_signed_names: Vec<String>,
    /// Write the generated CA (PEM) to this file (`-` for stdout), for a webhook configuration's caBundle.
    #[arg(long, env = "ADMISSION_KIT_WRITE_CA")]
    pub write_ca: Option<PathBuf>,
    /// Largest request body, in bytes (413 above it).
    #[arg(long, env = "ADMISSION_KIT_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most open connections.
    #[arg(long, env = "ADMISSION_KIT_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// TLS handshake timeout.
    #[arg(long, env = "ADMISSION_KIT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Time allowed to send a request's headers.
    #[arg(long, env = "ADMISSION_KIT_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Time allowed for a whole request.
    #[arg(long, env = "ADMISSION_KIT_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    #[arg(long, env = "ADMISSION_KIT_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// On SIGTERM, keep serving this long while unready.
    #[arg(long, env = "ADMISSION_KIT_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// Then wait at most this long for in-flight requests.
    #[arg(long, env = "ADMISSION_KIT_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Namespace label cache.
    #[arg(long, env = "ADMISSION_KIT_NAMESPACE_CACHE", value_enum, default_value_t = NamespaceCacheMode::Auto)]
    pub namespace_cache: NamespaceCacheMode,
    /// How long a watch cache may be out of contact with the API server before /readyz fails
    /// (`never` or `0`: it never fails for that). Until then the webhook answers from the cache and
    /// /readyz says `ok (degraded)`. Every replica loses contact at once in most outages, and no
    /// ready replica means failurePolicy for every request: keep it long.
    #[arg(long, env = "ADMISSION_KIT_CACHE_MAX_STALENESS", default_value = "10m", value_parser = parse_staleness_flag)]
    pub cache_max_staleness: Duration,
    /// Log format.
    #[arg(long, env = "ADMISSION_KIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, `RUST_LOG` syntax (default: `$RUST_LOG`, else `info,kube_runtime::watcher=error`).
    #[arg(long, env = "ADMISSION_KIT_LOG")]
    pub log: Option<String>,
}

impl ServeArgs {
    /// The server configuration these flags describe.
    #[must_use]
    pub fn server_config(&self) -> ServerConfig {
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                TlsSource::Files { cert: cert.clone(), key: key.clone(), reload_interval: self.cert_reload_interval }
            }
            _ => TlsSource::SelfSigned { names: self.self_signed_names.clone() },
        };
        ServerConfig {
            webhook_addr: self.webhook_addr,
            admin_addr: self.admin_addr,
            tls,
            max_body_bytes: self.max_body_bytes,
            handshake_timeout: self.handshake_timeout,
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            drain_delay: self.drain_delay,
            shutdown_timeout: self.shutdown_timeout,
            cache_max_staleness: (!self.cache_max_staleness.is_zero()).then_some(self.cache_max_staleness),
        }
    }

    /// The namespace source for this mode, and the health of its cache (for [`Server::cache`]).
    pub async fn namespace_source(&self) -> anyhow::Result<(NamespaceSource, Option<CacheHealth>)> {
        if self.namespace_cache == NamespaceCacheMode::Never {
            return Ok((NamespaceSource::Unknown, None));
        }
        match kube::Client::try_default().await {
            Ok(client) => {
                let (source, health) = NamespaceSource::watch(client);
                Ok((source, Some(health)))
            }
            Err(error) if self.namespace_cache == NamespaceCacheMode::Auto => {
                tracing::warn!(%error, "no cluster access: namespace labels will not be cached");
                Ok((NamespaceSource::Unknown, None))
            }
            Err(error) => Err(anyhow::anyhow!("failed to create a Kubernetes client for the namespace cache: {error}")),
        }
    }

    /// Builds the server for `pipelines` (namespace cache included), starts it, writes the CA if
    /// asked, serves until SIGTERM/SIGINT and drains.
    pub async fn serve(
        &self,
        pipelines: Vec<Pipeline>,
        metrics: Option<crate::metrics::Metrics>,
    ) -> anyhow::Result<()> {
        let (namespaces, cache) = self.namespace_source().await?;
        let mut server = Server::new(self.server_config(), pipelines).namespaces(namespaces);
        if let Some(cache) = cache {
            server = server.cache(cache);
        }
        if let Some(metrics) = metrics {
            server = server.metrics(metrics);
        }
        let running = server.start().await?;
        match (&self.write_ca, running.ca_pem()) {
            (Some(path), Some(ca)) if path.as_os_str() == "-" => print!("{ca}"),
            (Some(path), Some(ca)) => {
                std::fs::write(path, ca)
                    .map_err(|e| anyhow::anyhow!("failed to write the CA to {}: {e}", path.display()))?;
                tracing::info!(path = %path.display(), "wrote the generated CA");
            }
            (Some(_), None) => tracing::warn!("--write-ca ignored: the certificate comes from files, not generated"),
            (None, _) => {}
        }
        shutdown_signal().await;
        running.shutdown_and_wait().await?;
        Ok(())
    }
}

/// Parses `namespace/name` or `namespace/name:port` (port 443 by default) as a Service target.
pub fn parse_service(service: &str) -> anyhow::Result<ClientTarget> {
    let (namespace, rest) = service
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--service must be namespace/name[:port], got `{service}`"))?;
    let (name, port) = match rest.split_once(':') {
        Some((name, port)) => {
            (name, port.parse().map_err(|_| anyhow::anyhow!("--service port `{port}` is not a number"))?)
        }
        None => (rest, 443),
    };
    Ok(ClientTarget::Service { namespace: namespace.to_owned(), name: name.to_owned(), port })
}

/// Flags of `webhook-config`.
#[derive(Clone, Debug, Args)]
#[non_exhaustive]
pub struct WebhookConfigArgs {
    /// `metadata.name` of the `MutatingWebhookConfiguration`.
    #[arg(long, default_value = "admission-kit")]
    pub name: String,
    /// Call the webhook at this base URL (out-of-cluster development), e.g. <https://127.0.0.1:8443>.
    #[arg(long, conflicts_with = "service")]
    pub url: Option<String>,
    /// Call the webhook through this Service: `namespace/name` or `namespace/name:port`.
    #[arg(long)]
    pub service: Option<String>,
    /// PEM file whose content becomes the caBundle.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Never call the webhook for these namespaces (its own, to avoid deadlocks).
    #[arg(long = "exclude-namespace", value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
}

impl WebhookConfigArgs {
    /// Renders the configuration for `pipelines` as YAML-compatible JSON.
    pub fn render(&self, pipelines: &[Pipeline]) -> anyhow::Result<String> {
        let target = match (&self.url, &self.service) {
            (Some(url), None) => ClientTarget::Url(url.clone()),
            (None, Some(service)) => parse_service(service)?,
            _ => anyhow::bail!("give exactly one of --url or --service"),
        };
        let mut options =
            WebhookConfigOptions::new(&self.name, target).exclude_namespaces(self.exclude_namespaces.clone());
        if let Some(path) = &self.ca_file {
            let pem =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("failed to read --ca-file {}: {e}", path.display()))?;
            options = options.ca_bundle(pem);
        }
        let config = render_webhook_config(pipelines, &options);
        let mut value = serde_json::to_value(&config)?;
        if let Some(object) = value.as_object_mut() {
            object.insert("apiVersion".into(), "admissionregistration.k8s.io/v1".into());
            object.insert("kind".into(), "MutatingWebhookConfiguration".into());
        }
        Ok(serde_json::to_string_pretty(&value)? + "\n")
    }
}

#[derive(Debug, Parser)]
#[command(about = "An admission-kit mutating webhook", version)]
struct Cli<A: Args> {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    plugin: A,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the webhook (the default).
    Serve,
    /// Print the `MutatingWebhookConfiguration` (JSON, valid YAML) for this webhook.
    WebhookConfig(WebhookConfigArgs),
}

/// No flags of the plugin's own (see [`run`]).
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct NoFlags {}

/// Runs the standard command line for `pipelines`: serve by default, or print the webhook
/// configuration.
pub async fn run(pipelines: Vec<Pipeline>) -> anyhow::Result<()> {
    run_with(|_: NoFlags| Ok(pipelines)).await
}

/// [`run`] for a webhook with flags of its own: `A` is the plugin's [`clap::Args`] struct (mark
/// its flags `global = true` to accept them after a subcommand too; give each an `env`), and
/// `build` makes the pipelines from the parsed flags. Logging is set up first, so `build` may log;
/// an error from `build` ends the program with that error.
///
/// ```no_run
/// use admission_kit::prelude::*;
/// use admission_kit::{mutator, pipeline::ResourceTarget};
/// use k8s_openapi::api::core::v1::Pod;
///
/// #[derive(Debug, clap::Args)]
/// struct Flags {
///     /// The team label pods get when they name none.
///     #[arg(long, global = true, env = "TEAM_LABEL", default_value = "unassigned")]
///     team: String,
/// }
///
/// fn pipeline(team: String) -> anyhow::Result<Pipeline> {
///     let label = mutator::from_fn(move |pod: &mut serde_json::Value, _ctx: &mut Context<'_>| {
///         if pod["metadata"]["labels"]["team"].is_null() {
///             pod["metadata"]["labels"]["team"] = team.clone().into();
///         }
///         Ok(())
///     });
///     Ok(Pipeline::builder("team.example.com").step(Step::dynamic("team", ResourceTarget::of::<Pod>(), label)).build()?)
/// }
///
/// #[tokio::main]
/// async fn main() -> anyhow::Result<()> {
///     admission_kit::cli::run_with(|flags: Flags| Ok(vec![pipeline(flags.team)?])).await
/// }
/// ```
pub async fn run_with<A, F>(build: F) -> anyhow::Result<()>
where
    A: Args,
    F: FnOnce(A) -> anyhow::Result<Vec<Pipeline>>,
{
    let mut command = <Cli<A> as clap::CommandFactory>::command();
    if let Some(name) = std::env::args_os().next().as_deref().map(std::path::Path::new).and_then(|p| p.file_stem()) {
        command = command.name(name.to_string_lossy().into_owned());
    }
    let matches = command.get_matches();
    let cli = match <Cli<A> as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    telemetry::init(cli.serve.log_format, cli.serve.log.as_deref())?;
    let pipelines = build(cli.plugin)?;
    match cli.command {
        None | Some(Command::Serve) => cli.serve.serve(pipelines, None).await,
        Some(Command::WebhookConfig(args)) => {
            print!("{}", args.render(&pipelines)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staleness(args: &[&str]) -> Option<Duration> {
        let cli = <Cli<NoFlags> as Parser>::try_parse_from(std::iter::once("webhook").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        cli.serve.server_config().cache_max_staleness
    }

    #[test]
    fn cache_max_staleness_defaults_to_ten_minutes_and_never_turns_it_off() {
        assert_eq!(staleness(&[]), Some(Duration::from_secs(600)));
        assert_eq!(staleness(&["--cache-max-staleness", "2s"]), Some(Duration::from_secs(2)));
        for never in ["never", "0", "0s"] {
            assert_eq!(staleness(&["--cache-max-staleness", never]), None, "{never}");
        }
        let err = <Cli<NoFlags> as Parser>::try_parse_from(["webhook", "--cache-max-staleness", "soon"]).unwrap_err();
        assert!(err.to_string().contains("`soon` is neither `never` nor a duration"), "{err}");
    }
}
