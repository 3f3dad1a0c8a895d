//! The webhook binary: `serve` (the default) and `webhook-config`, from admission-kit's shell.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    admission_kit::cli::run(vec![my_webhook::pipeline()?]).await
}
