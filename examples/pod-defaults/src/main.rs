//! The pod-defaults webhook binary.
//!
//! `cargo run -p pod-defaults` serves it with the built-in defaults, `… -- --config FILE` with a
//! YAML file; `… -- webhook-config --url https://127.0.0.1:8443` prints its
//! `MutatingWebhookConfiguration`. admission-kit's `cli::run` takes no plugin flags, so this binary
//! has its own parser that flattens the kit's `ServeArgs` and reuses its `WebhookConfigArgs`.

use std::path::PathBuf;

use admission_kit::cli::{ServeArgs, WebhookConfigArgs};
use admission_kit::telemetry;
use clap::{Parser, Subcommand};
use pod_defaults::config::Config;

#[derive(Debug, Parser)]
#[command(name = "pod-defaults", version, about = "Default resources, tolerations and zone spread for pods")]
struct Cli {
    /// YAML configuration file (without it: the built-in defaults).
    #[arg(long, global = true, env = "POD_DEFAULTS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.serve.log_format, cli.serve.log.as_deref())?;
    let config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::built_in()?,
    };
    let pipelines = vec![pod_defaults::pipeline(config)];
    match cli.command {
        None | Some(Command::Serve) => cli.serve.serve(pipelines, None).await,
        Some(Command::WebhookConfig(args)) => {
            print!("{}", args.render(&pipelines)?);
            Ok(())
        }
    }
}
