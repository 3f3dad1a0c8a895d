//! The service-owner webhook binary.
//!
//! `cargo run -p service-owner -- --default-owner platform` serves it; `… -- webhook-config --url
//! https://127.0.0.1:8443` prints its `MutatingWebhookConfiguration`. Its own flags sit next to
//! admission-kit's standard ones (`cli::run_with`).

use service_owner::{DEFAULT_OWNER_LABEL, LabelKey, Owner, OwnerLabel};

/// Give every Service an owner label.
#[derive(Debug, clap::Args)]
struct Flags {
    /// The owner label's key.
    #[arg(long, global = true, env = "SERVICE_OWNER_LABEL", default_value = DEFAULT_OWNER_LABEL)]
    owner_label: LabelKey,
    /// The owner given to Services that name none.
    #[arg(long, global = true, env = "SERVICE_OWNER_DEFAULT_OWNER", default_value = "unassigned")]
    default_owner: Owner,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    admission_kit::cli::run_with(|flags: Flags| {
        Ok(vec![service_owner::pipeline(&OwnerLabel::new(flags.owner_label, flags.default_owner))])
    })
    .await
}
