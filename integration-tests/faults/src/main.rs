//! `fault-tests <scenario> [--short]`: the fault tests against the real sidecar-injector binary
//! (`scripts/fault-tests.sh` builds the release binaries and runs `fault-tests all`). See README.md.

use std::path::PathBuf;

use clap::Parser;

/// The allocator sidecar-injector ships with (the harness's own process; the server is the binary).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Fault tests: `soak`, `cert-rotation`, `sigterm-takeover`, `stalled-connections`,
/// `hostile-bodies`, `hostile-pods`, `broken-catalog`, or `all`. Writes faults.md (see README.md).
#[derive(Debug, Parser)]
#[command(name = "fault-tests")]
struct Cli {
    /// A scenario's name, or `all`.
    scenario: String,
    /// Seconds per scenario instead of minutes; timing criteria reported, not enforced.
    #[arg(long)]
    short: bool,
    /// The sidecar-injector binary (default: target/release/sidecar-injector).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Run even if the sidecar-injector binary is older than its sources.
    #[arg(long)]
    allow_stale: bool,
    /// Where to write faults.md (default: integration-tests/faults/results for `all` in full mode,
    /// else target/fault-short or target/fault-full).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Niceness of the servers and the load generator (0 leaves it; negative needs root).
    #[arg(long, default_value_t = -19, allow_negative_numbers = true)]
    nice: i32,
    /// Run the servers under the normal scheduler instead of `SCHED_RR`.
    #[arg(long)]
    no_realtime: bool,
}

fn main() -> std::process::ExitCode {
    match run(&Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fault-tests: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The scenarios by name, the default output directory, then [`fault_tests::run`].
fn run(cli: &Cli) -> anyhow::Result<()> {
    let scenarios = if cli.scenario == "all" {
        fault_tests::Scenario::ALL.to_vec()
    } else {
        vec![fault_tests::Scenario::parse(&cli.scenario).ok_or_else(|| {
            let names: Vec<&str> = fault_tests::Scenario::ALL.iter().map(|s| s.name()).collect();
            anyhow::anyhow!("unknown scenario `{}`; one of {} or all", cli.scenario, names.join(", "))
        })?]
    };
    let root = bench::runner::workspace_root();
    // Only a full run of every scenario replaces the committed report.
    let out_dir = cli.out.clone().unwrap_or_else(|| {
        if cli.scenario == "all" && !cli.short {
            root.join("integration-tests/faults/results")
        } else {
            root.join(if cli.short { "target/fault-short" } else { "target/fault-full" })
        }
    });
    let options = fault_tests::Options {
        scenarios,
        short: cli.short,
        binary: cli.binary.clone(),
        allow_stale: cli.allow_stale,
        nice: cli.nice,
        realtime: !cli.no_realtime,
        out_dir,
    };
    if fault_tests::run(&options)? { Ok(()) } else { anyhow::bail!("fault tests failed") }
}
