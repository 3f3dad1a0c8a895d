//! The service-owner webhook binary.
//!
//! `cargo run -p service-owner -- --default-owner platform` serves it; `… -- webhook-config --url
//! https://127.0.0.1:8443` prints its `MutatingWebhookConfiguration`. admission-kit's `cli::run`
//! takes no plugin flags, so this binary has its own parser that flattens the kit's `ServeArgs`
//! and reuses its `WebhookConfigArgs`.

use admission_kit::cli::{ServeArgs, WebhookConfigArgs};
use admission_kit::telemetry;
use clap::{Parser, Subcommand};
use service_owner::{DEFAULT_OWNER_LABEL, LabelKey, Owner, OwnerLabel};

#[derive(Debug, Parser)]
#[command(name = "service-owner", version, about = "Give every Service an owner label")]
struct Cli {
    /// The owner label's key.
    #[arg(long, global = true, env = "SERVICE_OWNER_LABEL", default_value = DEFAULT_OWNER_LABEL)]
    owner_label: LabelKey,
    /// The owner given to Services that name none.
    #[arg(long, global = true, env = "SERVICE_OWNER_DEFAULT_OWNER", default_value = "unassigned")]
    default_owner: Owner,
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
    let pipelines = vec![service_owner::pipeline(&OwnerLabel::new(cli.owner_label, cli.default_owner))];
    match cli.command {
        None | Some(Command::Serve) => cli.serve.serve(pipelines, None).await,
        Some(Command::WebhookConfig(args)) => {
            print!("{}", args.render(&pipelines)?);
            Ok(())
        }
    }
}
