//! The default-labels webhook binary: `cargo run -p default-labels` serves it, and
//! `cargo run -p default-labels -- webhook-config --url https://127.0.0.1:8443` prints its
//! `MutatingWebhookConfiguration`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    admission_kit::cli::run(vec![default_labels::pipeline()]).await
}
