//! The image-mirror webhook binary.
//!
//! `cargo run -p image-mirror -- --mirror mirror.example.com --allow-registry registry.k8s.io`
//! serves it; `… -- webhook-config --url https://127.0.0.1:8443` prints its
//! `MutatingWebhookConfiguration`. admission-kit's `cli::run` takes no plugin flags, so this binary
//! has its own parser that flattens the kit's `ServeArgs` and reuses its `WebhookConfigArgs`.

use admission_kit::cli::{ServeArgs, WebhookConfigArgs};
use admission_kit::telemetry;
use clap::{Parser, Subcommand};
use image_mirror::{ImageMirror, MirrorPrefix, Registry};

#[derive(Debug, Parser)]
#[command(name = "image-mirror", version, about = "Pull every container image through a mirror registry")]
struct Cli {
    /// Mirror that images are pulled through: a registry host and an optional path
    /// (`mirror.example.com`, `registry.corp:5000/mirrors`).
    #[arg(long, global = true, env = "IMAGE_MIRROR_MIRROR", default_value = "localhost:5000")]
    mirror: MirrorPrefix,
    /// Registries whose images stay as they are (repeat the flag or separate with commas).
    #[arg(long = "allow-registry", global = true, env = "IMAGE_MIRROR_ALLOW_REGISTRIES", value_delimiter = ',')]
    allow_registries: Vec<Registry>,
    /// Namespaces whose pods are never mirrored (rendered into the webhook's namespaceSelector).
    #[arg(
        long = "skip-namespace",
        global = true,
        env = "IMAGE_MIRROR_SKIP_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    skip_namespaces: Vec<String>,
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
    let mirror = ImageMirror::new(cli.mirror, cli.allow_registries);
    let pipelines = vec![image_mirror::pipeline(mirror, cli.skip_namespaces)];
    match cli.command {
        None | Some(Command::Serve) => cli.serve.serve(pipelines, None).await,
        Some(Command::WebhookConfig(args)) => {
            print!("{}", args.render(&pipelines)?);
            Ok(())
        }
    }
}
