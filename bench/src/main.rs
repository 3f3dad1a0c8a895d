//! `cargo run -p bench --release -- <command>`: see `bench/README.md`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The allocator sidecar-injector ships with, so that in-process figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "bench", about = "sidecar-injector vs the Go baseline: corpus, gate, load, report, regression check")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the request corpus as files (`review-<size>.json`).
    Corpus {
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the gate and every measurement; write bench/results/latest.{md,json}.
    Run {
        /// One short run of everything (seconds, for CI smoke).
        #[arg(long)]
        quick: bool,
        /// Runs of every measurement (medians and min–max over them).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The Go baseline binary (default: ask `bash bench/build-go-baseline.sh | tail -1`).
        #[arg(long)]
        go: Option<PathBuf>,
        /// The sidecar-injector binary (default: target/dist/sidecar-injector, the shipped profile).
        #[arg(long)]
        ours: Option<PathBuf>,
        /// Run even if the sidecar-injector binary is older than its sources.
        #[arg(long)]
        allow_stale: bool,
        /// Run without the Go baseline when it cannot be built (the report says NOT RUN; without
        /// this flag that is an error).
        #[arg(long)]
        allow_no_go: bool,
        /// Keep-alive connections of the load driver.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Where to write latest.md and latest.json (default: bench/results; with --quick,
        /// target/bench-quick, so that a smoke run never replaces the committed results).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Niceness of the servers and the load generator (0 leaves it; negative needs root).
        #[arg(long, default_value_t = -19, allow_negative_numbers = true)]
        nice: i32,
        /// Run the servers under the normal scheduler instead of `SCHED_RR`.
        #[arg(long)]
        no_realtime: bool,
    },
    /// Open-loop runs against one freshly started server, or its max-throughput search (for
    /// investigating a figure, and for cross-checking load generators: `--driver own,vegeta
    /// --runs 5`, `--search --driver own,oha --runs 5`).
    Load {
        /// `ours` or `go`.
        #[arg(long, default_value = "ours")]
        server: String,
        /// The server's binary (default as for `run`).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Corpus size: 2k, 10k, 100k or 1m.
        #[arg(long, default_value = "10k")]
        size: String,
        /// Requests per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Measured seconds (after a one-second warm-up).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Keep-alive connections.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Niceness (see `run`).
        #[arg(long, default_value_t = -19, allow_negative_numbers = true)]
        nice: i32,
        /// Run the server under the normal scheduler instead of `SCHED_RR`.
        #[arg(long)]
        no_realtime: bool,
        /// The load generator: `own` (the harness's driver), `vegeta` or `oha`; several, comma-separated,
        /// alternate on the same server (the cross-check of one against another; `both` is
        /// `own,vegeta`).
        #[arg(long, default_value = "vegeta")]
        driver: String,
        /// Run `bench run`'s max-throughput search instead of one fixed rate (`--rate` and
        /// `--seconds` are then unused; drivers `own` or `oha`).
        #[arg(long)]
        search: bool,
        /// Runs (each driver's, with `both`); medians are printed for more than one.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// Loop the in-process review of one corpus size (for `perf record`): decode → review → encode.
    Profile {
        /// Corpus size: 2k, 10k, 100k or 1m.
        size: String,
        /// How long to loop.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Go through the whole router instead of the pipeline API.
        #[arg(long)]
        router: bool,
        /// Only parse the body into a `serde_json::Value` (a reference for this machine's speed).
        #[arg(long, conflicts_with = "router")]
        parse_only: bool,
        /// Instead of looping, time each step of the path alone and print the table.
        #[arg(long, conflicts_with_all = ["router", "parse_only"])]
        breakdown: bool,
        /// Instead of looping, measure how the whole router scales from one thread to two (one per
        /// core), in-process: `--runs` pairs of runs of `--seconds` each, alternating.
        #[arg(long, conflicts_with_all = ["router", "parse_only", "breakdown"])]
        scaling: bool,
        /// Pairs of runs for `--scaling`; medians are printed.
        #[arg(long, default_value_t = 5, requires = "scaling")]
        runs: usize,
    },
    /// Run `dist` builds under valgrind's callgrind as they start and serve, and write the functions
    /// that ran, hottest first, as the linker's symbol-ordering file (`sidecar-injector/build.rs`
    /// lays them out together). Then build `dist` again.
    Layout {
        /// The builds to measure (default: target/dist/sidecar-injector, and the image's static
        /// build target/x86_64-unknown-linux-gnu/dist/sidecar-injector when it exists).
        #[arg(long)]
        binary: Vec<PathBuf>,
        /// The file to write.
        #[arg(long, default_value = "sidecar-injector/symbol-order.txt")]
        out: PathBuf,
    },
    /// Write bench/results/latest.md, throughput.svg and latency.svg again from latest.json (after a
    /// change to the table's or the pictures' layout).
    Render,
    /// Fail if the latest run's key ratios to Go regressed by more than 10% against baseline.json.
    Check,
    /// Make the latest run the baseline (copy latest.{json,md} to baseline.{json,md}).
    Accept,
}

/// `bench profile <size> --scaling`: one thread and two threads alternating, `runs` pairs.
fn print_scaling(injector: &bench::inprocess::Injector, body: &[u8], seconds: f64, runs: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    anyhow::ensure!(cores >= 2, "--scaling needs two CPUs; this process may use {cores}");
    let (mut one, mut two, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs.max(1) {
        let single = injector.router_throughput(body, 1, seconds)?;
        let double = injector.router_throughput(body, 2, seconds)?;
        println!("run {run}: 1 thread {single:.0}/s, 2 threads {double:.0}/s, {:.2}×", double / single);
        one.push(single);
        two.push(double);
        ratios.push(double / single);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median: 1 thread {:.0}/s, 2 threads {:.0}/s, ratio {:.2}× (medians of each)",
        median(&mut one),
        median(&mut two),
        median(&mut ratios)
    );
    Ok(())
}

/// `bench layout`.
fn layout(binaries: Vec<PathBuf>, out: &std::path::Path) -> anyhow::Result<()> {
    let root = bench::runner::workspace_root();
    let target = bench::runner::target_dir(&root);
    let binaries = if binaries.is_empty() {
        let dynamic = bench::runner::injector_binary(&root, None, "dist", false)?;
        let image = target.join("x86_64-unknown-linux-gnu/dist/sidecar-injector");
        let mut all = vec![dynamic];
        if image.is_file() {
            all.push(image);
        } else {
            println!("{} does not exist: the image's static build is not measured", image.display());
        }
        all
    } else {
        binaries
    };
    let rustc = std::process::Command::new("rustc").arg("--version").output()?;
    let rustc = String::from_utf8(rustc.stdout)?.trim().to_owned();
    let mut measured = Vec::new();
    for (i, binary) in binaries.into_iter().enumerate() {
        let work = target.join(format!("bench-layout/{i}"));
        let m = bench::layout::measure(&binary, &work).with_context(|| format!("measuring {}", binary.display()))?;
        println!(
            "{}: {} functions ran, {} instructions of its own",
            binary.display(),
            m.functions.len(),
            m.instructions
        );
        measured.push((binary.strip_prefix(&target).unwrap_or(&binary).display().to_string(), m));
    }
    let out = if out.is_absolute() { out.to_path_buf() } else { root.join(out) };
    std::fs::write(&out, bench::layout::ordering_file(&rustc, &measured))?;
    println!("wrote {} for {rustc}; build `dist` again to use it", out.display());
    Ok(())
}

/// `bench profile`'s loop: reviews (or parses) of `body` for `seconds`; how many, and µs each.
fn profile_loop(
    injector: &bench::inprocess::Injector,
    rt: &tokio::runtime::Runtime,
    body: &[u8],
    seconds: f64,
    router: bool,
    parse_only: bool,
) -> anyhow::Result<(u32, f64)> {
    let start = std::time::Instant::now();
    let mut count = 0u32;
    while start.elapsed().as_secs_f64() < seconds {
        if parse_only {
            std::hint::black_box(serde_json::from_slice::<serde_json::Value>(body)?);
        } else if router {
            rt.block_on(injector.route(body.to_vec()))?;
        } else {
            rt.block_on(injector.review(body))?;
        }
        count += 1;
    }
    Ok((count, start.elapsed().as_secs_f64() * 1e6 / f64::from(count)))
}

fn results_dir() -> PathBuf {
    bench::runner::workspace_root().join("bench/results")
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Corpus { out } => {
            for (size, path, bytes) in bench::corpus::write(&out)? {
                println!("{}\t{bytes} B\t{}", size.name(), path.display());
            }
            Ok(())
        }
        Command::Run { quick, runs, go, ours, allow_stale, allow_no_go, connections, out, nice, no_realtime } => {
            let options = bench::runner::Options {
                quick,
                runs,
                go,
                ours,
                allow_stale,
                allow_no_go,
                connections,
                out_dir: out.unwrap_or_else(|| {
                    if quick { bench::runner::workspace_root().join("target/bench-quick") } else { results_dir() }
                }),
                nice,
                realtime: !no_realtime,
            };
            let report = bench::runner::run(&options)?;
            print!("{}", report.markdown());
            Ok(())
        }
        Command::Profile { size, seconds, router, parse_only, breakdown, scaling, runs } => {
            let size = bench::corpus::Size::parse(&size).ok_or_else(|| anyhow::anyhow!("unknown size `{size}`"))?;
            let entry = bench::corpus::entry(size);
            let injector = bench::inprocess::Injector::new()?;
            if scaling {
                return print_scaling(&injector, &entry.body, seconds, runs);
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            if breakdown {
                let budget = std::time::Duration::from_secs_f64(seconds / 8.0);
                for (step, us) in rt.block_on(injector.breakdown(&entry.body, budget))? {
                    println!("{us:>10.1} µs  {step}");
                }
                return Ok(());
            }
            let (count, each_us) = profile_loop(&injector, &rt, &entry.body, seconds, router, parse_only)?;
            println!("{}: {count} reviews, {each_us:.1} µs each", size.name());
            Ok(())
        }
        Command::Load { server, binary, size, rate, seconds, connections, nice, no_realtime, driver, search, runs } => {
            let drivers = bench::runner::Driver::parse_list(&driver).ok_or_else(|| {
                anyhow::anyhow!(
                    "--driver is `own`, `vegeta`, `oha` or a list of them such as `own,oha`, not `{driver}`"
                )
            })?;
            if search && drivers.contains(&bench::runner::Driver::Vegeta) {
                anyhow::bail!("the max-throughput search is sent by `own` or `oha`, not `vegeta`");
            }
            let kind = match server.as_str() {
                "ours" => bench::servers::Kind::Ours,
                "go" => bench::servers::Kind::Go,
                other => anyhow::bail!("--server is `ours` or `go`, not `{other}`"),
            };
            let size = bench::corpus::Size::parse(&size).ok_or_else(|| anyhow::anyhow!("unknown size `{size}`"))?;
            bench::runner::single_load(&bench::runner::LoadOptions {
                kind,
                binary,
                size,
                rate,
                seconds,
                connections,
                nice,
                realtime: !no_realtime,
                drivers,
                search,
                runs,
            })
        }
        Command::Layout { binary, out } => layout(binary, &out),
        Command::Render => {
            let dir = results_dir();
            let report = bench::regress::load(&dir.join("latest.json"))?;
            std::fs::write(dir.join("latest.md"), report.markdown())?;
            bench::plots::write(&report, &dir)?;
            print!("{}", report.markdown());
            Ok(())
        }
        Command::Check => bench::regress::check(&results_dir()),
        Command::Accept => bench::regress::accept(&results_dir()),
    }
}
