//! `sidecar-injector`: the webhook (`serve`), offline injection (`inject`), explanations
//! (`explain`), the webhook configuration (`webhook-config`) and a config check (`check`). The
//! injector is an admission-kit plugin ([`sidecar_injector::plugin`]) on admission-kit's shell.

use sidecar_injector::plugin::{self, Flags, Injector};

/// mimalloc: the review path allocates and frees many small JSON nodes; the system allocator spent
/// a third of the in-process time on them (`bench profile 10k --breakdown`, see book/src/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match plugin::app().run(|flags: Flags| Injector::from_flags(&flags)).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sidecar-injector: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
