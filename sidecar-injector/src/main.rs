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
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // A Deployment written for the Expedia injector starts this binary with Expedia's flags.
    match sidecar_injector::expedia::native(args.get(1..).unwrap_or_default()) {
        None => {}
        Some(Ok(native)) => {
            eprintln!("sidecar-injector: {}", native.describe());
            args.truncate(1);
            args.extend(native.args.into_iter().map(Into::into));
        }
        Some(Err(error)) => {
            eprintln!("sidecar-injector: {error}");
            return std::process::ExitCode::from(2);
        }
    }
    match plugin::app().run_from(args, |flags: Flags| Injector::from_flags(&flags)).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sidecar-injector: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
