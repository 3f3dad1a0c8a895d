//! The cost-center webhook binary: `serve` (the default) and `webhook-config` from admission-kit's
//! shell, `lint FILE` of its own.

use cost_center::plugin::{self, CostCenterWebhook, Flags};

// ANCHOR: main
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    plugin::app().run(|flags: Flags| Ok(CostCenterWebhook::new(flags))).await
}
// ANCHOR_END: main
