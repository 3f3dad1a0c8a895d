//! The one-liners for webhook binaries: [`run`] serves pipelines with the standard command line
//! (`serve`, the default, and `webhook-config`), [`run_with`] adds flags of the webhook's own.
//! Both are [`crate::app::App`] with a plugin made for you; a webhook with asynchronous set-up,
//! caches or subcommands of its own implements [`crate::app::Plugin`] instead.
//!
//! Every flag also reads an environment variable (`ADMISSION_KIT_…`), so the same binary is
//! configured by flags locally and by env in a Deployment.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::app::{App, MaxStaleness, NoCommands, Plugin};
use crate::pipeline::Pipeline;
use crate::webhook_config::{ClientTarget, WebhookConfigOptions, render_webhook_config};

pub use crate::app::{NamespaceCacheMode, ServeSettings, parse_duration};

/// Parses a cache staleness bound: a duration like `10m`, or `never` (also `0`) for none.
///
/// # Errors
/// When the text is neither.
pub fn parse_staleness(text: &str) -> Result<Option<Duration>, String> {
    text.parse::<MaxStaleness>().map(|bound| bound.0)
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

/// Flags of `policy`.
#[derive(Clone, Debug, Args)]
#[non_exhaustive]
pub struct PolicyArgs {
    /// Never apply the policies in these namespaces.
    #[arg(long = "exclude-namespace", value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
}

impl PolicyArgs {
    /// Renders the policies for `pipelines` as a `List` (JSON, which is valid YAML), ending in a
    /// newline.
    ///
    /// # Errors
    /// Every step that cannot be a policy, with its reason.
    pub fn render(&self, pipelines: &[Pipeline]) -> anyhow::Result<String> {
        let options = crate::policy::PolicyOptions::new().exclude_namespaces(self.exclude_namespaces.clone());
        let items = crate::policy::render_policies(pipelines, &options)?;
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        Ok(format!("{}\n", serde_json::to_string_pretty(&list)?))
    }
}

/// Flags of `webhook-config`.
#[derive(Clone, Debug, Args)]
#[non_exhaustive]
pub struct WebhookConfigArgs {
    /// `metadata.name` of the `MutatingWebhookConfiguration`.
    #[arg(long)]
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
            // A default `--service` gives way to an explicit `--url` (clap refuses both explicit).
            (Some(url), _) => ClientTarget::Url(url.clone()),
            (None, Some(service)) => parse_service(service)?,
            (None, None) => anyhow::bail!("give --url or --service"),
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

/// No flags of the plugin's own (see [`run_with`]).
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct NoFlags {}

/// The flags of a [`run_with`] webhook: its own and the serving settings.
#[derive(Debug, Args)]
struct WithServe<A: Args> {
    #[command(flatten)]
    plugin: A,
    #[command(flatten)]
    serve: ServeSettings,
}

/// The plugin [`run`] and [`run_with`] make: fixed pipelines, settings from the flags (`A`: the
/// webhook's own, already used to make the pipelines).
struct Fixed<A> {
    serve: ServeSettings,
    pipelines: Vec<Pipeline>,
    flags: std::marker::PhantomData<fn() -> A>,
}

impl<A> Fixed<A> {
    fn new(serve: ServeSettings, pipelines: Vec<Pipeline>) -> Self {
        Self { serve, pipelines, flags: std::marker::PhantomData }
    }
}

impl<A: Args + Send + 'static> Plugin for Fixed<A> {
    type Flags = WithServe<A>;
    type Command = NoCommands;

    fn settings(&self) -> &ServeSettings {
        &self.serve
    }

    fn pipelines(&self) -> anyhow::Result<Vec<Pipeline>> {
        Ok(self.pipelines.clone())
    }
}

/// The program's name, as invoked (for `--help` and the default configuration name).
fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_stem)
        .map_or_else(|| "webhook".to_owned(), |name| name.to_string_lossy().into_owned())
}

/// Runs the standard command line for `pipelines`: serve by default, or print the webhook
/// configuration.
///
/// # Errors
/// When the server cannot start, or the configuration cannot be rendered.
pub async fn run(pipelines: Vec<Pipeline>) -> anyhow::Result<()> {
    App::new(program_name()).run(|flags: WithServe<NoFlags>| Ok(Fixed::<NoFlags>::new(flags.serve, pipelines))).await
}

/// [`run`] for a webhook with flags of its own: `A` is the plugin's [`clap::Args`] struct (mark
/// its flags `global = true` to accept them after a subcommand too; give each an `env`), and
/// `build` makes the pipelines from the parsed flags. An error from `build` ends the program with
/// that error. For asynchronous set-up, a shared client, caches or subcommands, implement
/// [`crate::app::Plugin`].
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
///
/// # Errors
/// From `build`, or as [`run`].
pub async fn run_with<A, F>(build: F) -> anyhow::Result<()>
where
    A: Args + Send + 'static,
    F: FnOnce(A) -> anyhow::Result<Vec<Pipeline>>,
{
    App::new(program_name()).run(|flags: WithServe<A>| Ok(Fixed::<A>::new(flags.serve, build(flags.plugin)?))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        serve: ServeSettings,
    }

    fn staleness(args: &[&str]) -> Option<Duration> {
        let flags = <Flags as clap::Parser>::try_parse_from(std::iter::once("webhook").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        flags.serve.server_config().expect("valid settings").cache_max_staleness
    }

    #[test]
    fn cache_max_staleness_defaults_to_ten_minutes_and_never_turns_it_off() {
        assert_eq!(staleness(&[]), Some(Duration::from_secs(600)));
        assert_eq!(staleness(&["--cache-max-staleness", "2s"]), Some(Duration::from_secs(2)));
        for never in ["never", "0", "0s"] {
            assert_eq!(staleness(&["--cache-max-staleness", never]), None, "{never}");
        }
        let err = <Flags as clap::Parser>::try_parse_from(["webhook", "--cache-max-staleness", "soon"]).unwrap_err();
        assert!(err.to_string().contains("`soon` is neither `never` nor a duration"), "{err}");
    }
}
