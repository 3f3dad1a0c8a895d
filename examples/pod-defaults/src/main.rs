//! The pod-defaults webhook binary.
//!
//! `cargo run -p pod-defaults` serves it with the built-in defaults, `… -- --config FILE` with a
//! YAML file; `… -- webhook-config --url https://127.0.0.1:8443` prints its
//! `MutatingWebhookConfiguration`. Its own flag sits next to admission-kit's standard ones
//! (`cli::run_with`).

use std::path::PathBuf;

use pod_defaults::config::Config;

/// Default resources, tolerations and zone spread for pods.
#[derive(Debug, clap::Args)]
struct Flags {
    /// YAML configuration file (without it: the built-in defaults).
    #[arg(long, global = true, env = "POD_DEFAULTS_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    admission_kit::cli::run_with(|flags: Flags| {
        let config = match &flags.config {
            Some(path) => Config::from_file(path)?,
            None => Config::built_in()?,
        };
        Ok(vec![pod_defaults::pipeline(config)])
    })
    .await
}
