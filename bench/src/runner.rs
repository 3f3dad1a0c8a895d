//! `bench run`: finds the binaries, generates certificates, runs the correctness gate, then every
//! measurement for both servers, `runs` times, interleaved, and writes `bench/results/latest.{md,json}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::client::{Connection, REVIEW_PATH, Tls};
use crate::corpus::{self, Entry, Size};
use crate::gate;
use crate::inprocess::Injector;
use crate::load::{self, OpenLoop, Search};
use crate::report::{Better, Collector, Report, Target};
use crate::servers::{self, Kind, Running, Spec};

/// The CPU the servers are pinned to.
pub const SERVER_CPU: usize = 0;
/// The CPU the harness (load generator) is pinned to.
pub const CLIENT_CPU: usize = 1;

/// Options of `bench run`.
#[derive(Clone, Debug)]
#[allow(clippy::struct_excessive_bools, reason = "each bool is an independent command-line switch")]
pub struct Options {
    /// One short run of everything (CI smoke).
    pub quick: bool,
    /// Runs of every measurement.
    pub runs: usize,
    /// The Go baseline binary (else asked of `bench/build-go-baseline.sh`).
    pub go: Option<PathBuf>,
    /// The sidecar-injector binary (else `target/dist/sidecar-injector`).
    pub ours: Option<PathBuf>,
    /// Run even when the sidecar-injector binary is older than its sources.
    pub allow_stale: bool,
    /// Run without the Go baseline when it cannot be built (the report says NOT RUN); without
    /// this, a missing baseline is an error, so that the correctness gate never skips it silently.
    pub allow_no_go: bool,
    /// Keep-alive connections of the load driver.
    pub connections: usize,
    /// Where to write `latest.md` and `latest.json`.
    pub out_dir: PathBuf,
    /// Niceness of the servers and the load generator (0: leave as is). The machine is shared:
    /// a high priority keeps other work from landing on the pinned cores mid-measurement.
    pub nice: i32,
    /// Run the servers under `SCHED_RR` (see [`Spec::realtime`]).
    pub realtime: bool,
}

/// The real-time priority servers get with `--realtime`.
pub const REALTIME_PRIORITY: u8 = 10;

/// The workspace root (the bench crate's parent).
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The project's cache root, as the scripts place it: `$ADMISSION_KIT_CACHE`, by default
/// `~/.cache/admission-kit`.
fn cache_root() -> Option<PathBuf> {
    std::env::var_os("ADMISSION_KIT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/admission-kit")))
}

/// `path` as a committed report shows it: relative to the repository root when inside it,
/// `$ADMISSION_KIT_CACHE/…` when inside the cache, else its file name alone. Reports are committed
/// and read on other machines, so they name no directory of the machine that wrote them.
#[must_use]
pub fn report_path(path: &Path) -> String {
    if let Ok(inside) = path.strip_prefix(workspace_root()) {
        return inside.display().to_string();
    }
    if let Some(inside) = cache_root().as_deref().and_then(|cache| path.strip_prefix(cache).ok()) {
        return format!("$ADMISSION_KIT_CACHE/{}", inside.display());
    }
    path.file_name().map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into_owned())
}

/// `text` (a server's log line, say) with the repository root left out of every path in it.
#[must_use]
pub fn without_workspace_root(text: &str) -> String {
    text.replace(&format!("{}/", workspace_root().display()), "")
}

/// Durations and rates of one plan (full or quick).
#[derive(Clone, Debug)]
struct Plan {
    /// Fixed-rate runs: size, rate, measured duration.
    fixed: Vec<(Size, f64, Duration)>,
    warmup: Duration,
    search: Search,
    handshake: Duration,
    handshake_concurrency: usize,
    in_process: Duration,
    idle_settle: Duration,
}

impl Plan {
    fn new(quick: bool, connections: usize) -> Self {
        let s = Duration::from_secs_f64;
        let (fixed_10k, fixed_other, fixed_1m) =
            if quick { (s(1.0), s(0.5), s(1.0)) } else { (s(10.0), s(5.0), s(10.0)) };
        Self {
            // 10 KB at 1,000/s first: the latency, CPU and memory targets are read from it.
            fixed: vec![
                (Size::K10, 1000.0, fixed_10k),
                (Size::K2, 1000.0, fixed_other),
                (Size::K100, 100.0, fixed_other),
                (Size::M1, 10.0, fixed_1m),
            ],
            warmup: if quick { s(0.2) } else { s(1.0) },
            search: Search {
                p99_limit_ms: 5.0,
                probe: if quick { s(0.4) } else { s(2.0) },
                warmup: if quick { s(0.1) } else { s(0.5) },
                steps: if quick { 2 } else { 5 },
                saturation: if quick { s(0.3) } else { s(1.5) },
                connections,
            },
            handshake: if quick { s(0.5) } else { s(3.0) },
            handshake_concurrency: 4,
            in_process: if quick { s(0.1) } else { s(0.5) },
            idle_settle: if quick { s(0.2) } else { s(0.5) },
        }
    }
}

/// The p99 bound of the max-throughput search per size: the target's 5 ms for 2k and 10k; for the
/// large sizes, whose single review takes milliseconds, the next buckets of the API server's own
/// `apiserver_admission_webhook_admission_duration_seconds` histogram (25 ms, 500 ms).
#[must_use]
pub fn p99_bound_ms(size: Size) -> f64 {
    match size {
        Size::K2 | Size::K10 => 5.0,
        Size::K100 => 25.0,
        Size::M1 => 500.0,
    }
}

fn rate_label(rate: f64) -> String {
    crate::report::sig(rate)
}

fn declare(c: &mut Collector, plan: &Plan) {
    let inproc = "In-process cost per review (decode → match → mutate → diff → encode; sidecar-injector only)";
    for size in Size::ALL {
        c.declare(
            &format!("inproc_us_{}", size.name()),
            inproc,
            &format!("{} review, public pipeline API", size.name()),
            "µs",
            Better::Lower,
            vec![],
        );
        c.declare(
            &format!("inproc_parse_us_{}", size.name()),
            inproc,
            &format!("{} review, reference: serde_json parse to Value alone", size.name()),
            "µs",
            Better::Lower,
            vec![],
        );
        c.declare(
            &format!("inproc_router_us_{}", size.name()),
            inproc,
            &format!("{} review, whole router in-process", size.name()),
            "µs",
            Better::Lower,
            if size == Size::K10 { vec![Target::value("≤ 40 µs", false, 40.0)] } else { vec![] },
        );
    }
    declare_throughput(c);
    declare_fixed(c, plan);
    declare_resources(c);
}

fn declare_throughput(c: &mut Collector) {
    let tput = "Max throughput, server on one core, no errors, p99 within the size's bound (5 ms for 2k and 10k)";
    for size in Size::ALL {
        let targets = match size {
            Size::K10 => vec![Target::value("≥ 12,000/s", true, 12_000.0), Target::ratio("≥ 3× Go", true, 3.0)],
            Size::K2 => vec![Target::value("≥ 30,000/s", true, 30_000.0)],
            _ => vec![],
        };
        c.declare(
            &format!("max_rps_{}", size.name()),
            tput,
            &format!("{} reviews, p99 ≤ {} ms", size.name(), p99_bound_ms(size)),
            "reviews/s",
            Better::Higher,
            targets,
        );
    }
}

fn declare_fixed(c: &mut Collector, plan: &Plan) {
    for (size, rate, _) in &plan.fixed {
        let n = size.name();
        let section = format!("{n} reviews at a fixed {}/s (open loop)", rate_label(*rate));
        let p99_targets = if *size == Size::K10 { vec![Target::value("≤ 1 ms", false, 1.0)] } else { vec![] };
        c.declare(&format!("p50_ms_{n}"), &section, "latency p50", "ms", Better::Lower, vec![]);
        c.declare(&format!("p99_ms_{n}"), &section, "latency p99", "ms", Better::Lower, p99_targets);
        c.declare(&format!("p999_ms_{n}"), &section, "latency p99.9", "ms", Better::Lower, vec![]);
        let cpu_targets = if *size == Size::K10 {
            vec![Target::value("≤ 80 (80 µs a review)", false, 80.0), Target::ratio("≤ 1/3 of Go", false, 1.0 / 3.0)]
        } else {
            vec![]
        };
        c.declare(
            &format!("cpu_ms_per_1k_{n}"),
            &section,
            "server CPU per 1,000 reviews",
            "CPU-ms",
            Better::Lower,
            cpu_targets,
        );
        c.declare(&format!("errors_{n}"), &section, "errors", "count", Better::Lower, vec![]);
    }
}

fn declare_resources(c: &mut Collector) {
    let res = "Connections, memory, start-up, size";
    c.declare(
        "tls_conn_per_s",
        res,
        "new TLS connections (full handshake + one 2k review, no keep-alive)",
        "conn/s",
        Better::Higher,
        vec![],
    );
    c.declare(
        "tls_conn_server_cpu_us",
        res,
        "server CPU per new TLS connection (the same runs)",
        "µs",
        Better::Lower,
        vec![],
    );
    c.declare(
        "rss_idle_mib",
        res,
        "RSS idle (after ready and one 2k review)",
        "MiB",
        Better::Lower,
        vec![Target::value("≤ 10 MiB", false, 10.0)],
    );
    c.declare(
        "rss_1k_mib",
        res,
        "peak RSS during 10k reviews at 1,000/s",
        "MiB",
        Better::Lower,
        vec![Target::value("≤ 25 MiB", false, 25.0)],
    );
    c.declare(
        "rss_peak_mib",
        res,
        "peak RSS over the whole run (incl. 1m reviews, searches)",
        "MiB",
        Better::Lower,
        vec![],
    );
    c.declare(
        "ready_ms",
        res,
        "start → /readyz 200 (sidecar-injector only)",
        "ms",
        Better::Lower,
        vec![Target::value("≤ 50 ms", false, 50.0)],
    );
    c.declare("first_review_ms", res, "start → first admitted review over TLS", "ms", Better::Lower, vec![]);
    c.declare("binary_mib", res, "binary size as built", "MiB", Better::Lower, vec![]);
    c.declare("binary_stripped_mib", res, "binary size stripped (`strip`)", "MiB", Better::Lower, vec![]);
    let h = "Harness health (not server figures)";
    c.declare(
        "load_generator_cpu_ms_per_1k",
        h,
        "vegeta's CPU per 1,000 requests sent (TLS, HTTP, results), 10k at 1,000/s",
        "ms",
        Better::Lower,
        vec![],
    );
    c.declare(
        "tls_conn_client_cpu_us",
        h,
        "the harness's own client CPU per new TLS connection",
        "µs",
        Better::Lower,
        vec![],
    );
}

/// Asks `bench/build-go-baseline.sh` for the Go binary. `Err` carries the reason it is not run.
fn find_go(root: &Path) -> Result<PathBuf, String> {
    let script = root.join("bench/build-go-baseline.sh");
    if !script.exists() {
        return Err("bench/build-go-baseline.sh does not exist yet".to_owned());
    }
    eprintln!("bench: asking bench/build-go-baseline.sh for the Go baseline (it may build it)…");
    let output = Command::new("bash")
        .arg(&script)
        .current_dir(root)
        .output()
        .map_err(|e| format!("failed to run bench/build-go-baseline.sh: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("bench/build-go-baseline.sh failed ({}): {}", output.status, tail.join(" / ")));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_owned();
    let path = PathBuf::from(&last);
    if last.is_empty() || !path.is_file() {
        return Err(format!("bench/build-go-baseline.sh printed `{last}`, which is not a file"));
    }
    Ok(path)
}

/// The newest modification time among the files under `paths`.
fn newest(paths: &[PathBuf]) -> Option<std::time::SystemTime> {
    let mut best = None;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else { continue };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
        } else if let Ok(m) = meta.modified() {
            best = best.max(Some(m));
        }
    }
    best
}

fn find_ours(root: &Path, opts: &Options) -> anyhow::Result<PathBuf> {
    injector_binary(root, opts.ours.as_deref(), "dist", opts.allow_stale)
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `target/` under `root`.
#[must_use]
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// The sidecar-injector binary: `explicit`, else the `profile` build (`dist` for measurements,
/// `release` for the fault tests) under `target/` (or `CARGO_TARGET_DIR`). Refused when missing,
/// or older than its sources unless `allow_stale`.
pub fn injector_binary(
    root: &Path,
    explicit: Option<&Path>,
    profile: &str,
    allow_stale: bool,
) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => target_dir(root).join(profile).join("sidecar-injector"),
    };
    if !path.is_file() {
        bail!(
            "{} does not exist: build it first with `cargo build --profile {profile} -p sidecar-injector` (the runner builds nothing itself)",
            path.display()
        );
    }
    let sources: Vec<PathBuf> = [
        "admission-kit/src",
        "admission-kit/Cargo.toml",
        "sidecar-injector/src",
        "sidecar-injector/Cargo.toml",
        "Cargo.lock",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    let built = std::fs::metadata(&path)?.modified()?;
    if let Some(newest) = newest(&sources)
        && newest > built
        && !allow_stale
    {
        bail!(
            "{} is older than its sources: rebuild it with `cargo build --profile {profile} -p sidecar-injector` (or pass --allow-stale)",
            path.display()
        );
    }
    Ok(path)
}

/// The checkout's short commit, with " with uncommitted changes" when tracked files differ from it.
#[must_use]
pub fn checkout_commit(root: &Path) -> String {
    let root = root.display().to_string();
    let commit = command_line("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    let dirty =
        !command_line("git", &["-C", &root, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"])
            .is_empty();
    if dirty { format!("{commit} with uncommitted changes") } else { commit }
}

/// The CPU's model name (`/proc/cpuinfo`), or empty.
#[must_use]
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default()
}

/// The trimmed output of `program args…` (a tool's version, for the reports); empty when it
/// cannot run or fails.
#[must_use]
pub fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn mib(kib: u64) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "memory sizes are far below 2^52")]
    let k = kib as f64;
    k / 1024.0
}

fn file_mib(path: &Path) -> Option<f64> {
    #[allow(clippy::cast_precision_loss, reason = "file sizes are far below 2^52")]
    std::fs::metadata(path).ok().map(|m| m.len() as f64 / (1024.0 * 1024.0))
}

fn stripped_mib(path: &Path, scratch: &Path) -> Option<f64> {
    let out = scratch.join(format!("stripped-{}", path.file_name()?.to_string_lossy()));
    let ok = Command::new("strip").arg("-o").arg(&out).arg(path).status().ok()?.success();
    let size = if ok { file_mib(&out) } else { None };
    let _ = std::fs::remove_file(&out);
    size
}

/// Everything one server measurement needs.
struct Bench<'a> {
    plan: &'a Plan,
    corpus: &'a [Entry],
    tls: &'a Tls,
    handshake_tls: &'a Tls,
    connections: usize,
    /// The fixed-rate runs' load generator, the search's, and the CA file they check the servers
    /// against.
    vegeta: &'a crate::vegeta::Vegeta,
    oha: &'a crate::oha::Oha,
    ca_file: &'a Path,
    scratch: &'a Path,
    /// CPU vegeta and oha used in all (child processes: not in the harness's own CPU time).
    generator_cpu: std::cell::Cell<Duration>,
}

fn body(corpus: &[Entry], size: Size) -> Bytes {
    corpus.iter().find(|e| e.size == size).map(|e| Bytes::from(e.body.clone())).unwrap_or_default()
}

impl Bench<'_> {
    async fn start(&self, spec: &Spec, run: usize, c: &mut Collector, key: &'static str) -> anyhow::Result<Running> {
        let mut server = spec.spawn(run)?;
        let limit = Duration::from_secs(60);
        if let Some(ready) = server.wait_readyz(limit)? {
            c.add("ready_ms", key, ready.as_secs_f64() * 1000.0);
        }
        let first = server.wait_first_review(self.tls, body(self.corpus, Size::K2), limit).await?;
        c.add("first_review_ms", key, first.as_secs_f64() * 1000.0);
        let cpus = server.allowed_cpus()?;
        anyhow::ensure!(
            cpus == SERVER_CPU.to_string(),
            "{} is allowed on CPUs `{cpus}`, not {SERVER_CPU}",
            spec.kind.name()
        );
        Ok(server)
    }

    /// Measures one server once; returns the CPU time it used.
    async fn measure(
        &self,
        spec: &Spec,
        run: usize,
        c: &mut Collector,
        searches: &mut Vec<Value>,
    ) -> anyhow::Result<Duration> {
        let key = match spec.kind {
            Kind::Ours => "ours",
            Kind::Go => "go",
        };
        let name = spec.kind.name();
        let server = self.start(spec, run, c, key).await?;
        tokio::time::sleep(self.plan.idle_settle).await;
        c.add("rss_idle_mib", key, mib(server.memory_kib()?.0));
        for (i, (size, rate, duration)) in self.plan.fixed.iter().enumerate() {
            let spec = OpenLoop {
                rate: *rate,
                duration: *duration,
                warmup: self.plan.warmup,
                connections: self.connections,
                body: body(self.corpus, *size),
                check: None,
            };
            let cpu_before = server.cpu_time()?;
            let generator_before = servers::children_cpu_time()?;
            let report = self.vegeta.open_loop(server.webhook, self.ca_file, &spec, self.scratch).await?;
            let cpu = server.cpu_time()?.saturating_sub(cpu_before);
            let generator = servers::children_cpu_time()?.saturating_sub(generator_before);
            self.generator_cpu.set(self.generator_cpu.get() + generator);
            let n = size.name();
            c.add(&format!("p50_ms_{n}"), key, report.latency_ms(0.5));
            c.add(&format!("p99_ms_{n}"), key, report.latency_ms(0.99));
            c.add(&format!("p999_ms_{n}"), key, report.latency_ms(0.999));
            #[allow(clippy::cast_precision_loss, reason = "request counts are far below 2^52")]
            let answered = report.answered_total.max(1) as f64;
            c.add(&format!("cpu_ms_per_1k_{n}"), key, cpu.as_secs_f64() * 1000.0 / answered * 1000.0);
            #[allow(clippy::cast_precision_loss, reason = "error counts are small")]
            c.add(&format!("errors_{n}"), key, report.errors as f64);
            if i == 0 {
                c.add("rss_1k_mib", key, mib(server.memory_kib()?.1));
                #[allow(clippy::cast_precision_loss, reason = "request counts are far below 2^52")]
                let sent = (report.scheduled.max(1) as f64) * (spec.warmup + spec.duration).as_secs_f64()
                    / spec.duration.as_secs_f64();
                c.add("load_generator_cpu_ms_per_1k", key, generator.as_secs_f64() * 1e6 / sent);
            }
            eprintln!(
                "bench: run {run} {name}: {n} at {rate}/s: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, {} ok, {} errors, CPU {:.0} ms",
                report.latency_ms(0.5),
                report.latency_ms(0.99),
                report.latency_ms(0.999),
                report.ok,
                report.errors,
                cpu.as_secs_f64() * 1000.0
            );
        }
        for size in Size::ALL {
            let search = Search { p99_limit_ms: p99_bound_ms(size), ..self.plan.search.clone() };
            let review = body(self.corpus, size);
            let answer_len = answer_len(server.webhook, self.tls, &review).await?;
            let generator_before = servers::children_cpu_time()?;
            let target = self.oha.against(server.webhook, self.ca_file, answer_len, self.scratch);
            let result = load::max_throughput(&target, review, &search).await?;
            let generator = servers::children_cpu_time()?.saturating_sub(generator_before);
            self.generator_cpu.set(self.generator_cpu.get() + generator);
            eprintln!(
                "bench: run {run} {name}: {} max throughput {:.0}/s (p99 {:.2} ms; closed-loop saturation {:.0}/s)",
                size.name(),
                result.max_rate,
                result.p99_ms_at_max,
                result.saturation
            );
            c.add(&format!("max_rps_{}", size.name()), key, result.max_rate);
            searches.push(json!({"server": name, "size": size.name(), "run": run, "result": result}));
        }
        let cpu_before = server.cpu_time()?;
        let client_before = servers::self_cpu_time()?;
        let (rate, failed) = load::handshakes(
            server.webhook,
            self.handshake_tls,
            self.plan.handshake_concurrency,
            body(self.corpus, Size::K2),
            self.plan.handshake,
        )
        .await?;
        let connections = (rate * self.plan.handshake.as_secs_f64()).max(1.0);
        let server_us = server.cpu_time()?.saturating_sub(cpu_before).as_secs_f64() * 1e6 / connections;
        let client_us = servers::self_cpu_time()?.saturating_sub(client_before).as_secs_f64() * 1e6 / connections;
        eprintln!(
            "bench: run {run} {name}: {rate:.0} new TLS connections/s ({failed} failed); server CPU {server_us:.0} µs, harness client CPU {client_us:.0} µs per connection"
        );
        c.add("tls_conn_per_s", key, rate);
        c.add("tls_conn_server_cpu_us", key, server_us);
        c.add("tls_conn_client_cpu_us", key, client_us);
        c.add("rss_peak_mib", key, mib(server.memory_kib()?.1));
        Ok(server.stop())
    }
}

/// The length of `server`'s answer to `review`, which must admit it: what oha's answers are held to
/// (the correctness gate has checked the patch of this same answer).
async fn answer_len(server: std::net::SocketAddr, tls: &Tls, review: &Bytes) -> anyhow::Result<u64> {
    let reply = crate::client::post_once(server, tls, review.clone(), load::REQUEST_TIMEOUT).await?;
    anyhow::ensure!(
        reply.is_admitted(),
        "the server did not admit the review: HTTP {}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)])
    );
    Ok(u64::try_from(reply.body.len())?)
}

async fn run_gate(specs: &[Spec], corpus: &[Entry], tls: &Tls) -> anyhow::Result<Value> {
    let injector = Injector::new()?;
    let mut pods: BTreeMap<Size, Vec<(String, Value)>> = BTreeMap::new();
    let mut rows: BTreeMap<Size, gate::GateRow> = corpus
        .iter()
        .map(|e| {
            (e.size, gate::GateRow { size: e.size.name().to_owned(), review_bytes: e.body.len(), answers: Vec::new() })
        })
        .collect();
    for spec in specs {
        let mut server = spec.spawn(0)?;
        server.wait_first_review(tls, body(corpus, Size::K2), Duration::from_secs(60)).await?;
        let mut conn = Connection::open(server.webhook, tls).await?;
        for entry in corpus {
            let reply = conn.post(REVIEW_PATH, Bytes::from(entry.body.clone()), false).await?;
            anyhow::ensure!(
                reply.status == http::StatusCode::OK,
                "CORRECTNESS GATE FAILED: {} answered the {} review with HTTP {}: {}",
                spec.kind.name(),
                entry.size.name(),
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
            let (pod, answered) = gate::patched_pod(entry, spec.kind.name(), &reply.body)
                .map_err(|e| anyhow::anyhow!("CORRECTNESS GATE FAILED: {e:#}"))?;
            gate::check_injected(spec.kind.name(), &entry.pod(), &pod)
                .map_err(|e| anyhow::anyhow!("CORRECTNESS GATE FAILED for the {} review: {e:#}", entry.size.name()))?;
            pods.entry(entry.size).or_default().push((spec.kind.name().to_owned(), pod));
            if let Some(row) = rows.get_mut(&entry.size) {
                row.answers.push(answered);
            }
        }
        let _ = server.stop();
    }
    for entry in corpus {
        let response = injector.review(&entry.body).await?;
        let (pod, answered) = gate::patched_pod(entry, "in-process", &response)?;
        pods.entry(entry.size).or_default().push(("in-process".to_owned(), pod));
        if let Some(row) = rows.get_mut(&entry.size) {
            row.answers.push(answered);
        }
    }
    for entry in corpus {
        gate::compare(entry, pods.get(&entry.size).map_or(&[][..], Vec::as_slice))?;
    }
    for row in rows.values() {
        let answers: Vec<String> =
            row.answers.iter().map(|a| format!("{} {} ops/{} B", a.server, a.patch_ops, a.patch_bytes)).collect();
        eprintln!("bench: gate {} ({} B): identical pods; {}", row.size, row.review_bytes, answers.join(", "));
    }
    Ok(serde_json::to_value(rows.into_values().collect::<Vec<_>>())?)
}

fn in_process(
    c: &mut Collector,
    plan: &Plan,
    corpus: &[Entry],
    injector: &Injector,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    for entry in corpus {
        let n = entry.size.name();
        for (id, how) in
            [(format!("inproc_us_{n}"), 0), (format!("inproc_parse_us_{n}"), 1), (format!("inproc_router_us_{n}"), 2)]
        {
            let start = Instant::now();
            let mut count = 0u32;
            while start.elapsed() < plan.in_process || count < 3 {
                match how {
                    0 => drop(rt.block_on(injector.review(&entry.body))?),
                    1 => drop(std::hint::black_box(serde_json::from_slice::<Value>(&entry.body)?)),
                    _ => drop(rt.block_on(injector.route(entry.body.clone()))?),
                }
                count += 1;
            }
            c.add(&id, "ours", start.elapsed().as_secs_f64() * 1e6 / f64::from(count));
        }
    }
    Ok(())
}

/// The Go baseline's binary and what the report says of it; an error when it cannot be built,
/// unless `--allow-no-go`.
fn go_baseline(root: &Path, opts: &Options) -> anyhow::Result<(Option<PathBuf>, String)> {
    let (go, go_status) = match opts.go.clone().map_or_else(|| find_go(root), Ok) {
        Ok(path) if path.is_file() => (Some(path.clone()), format!("run ({})", report_path(&path))),
        Ok(path) => (None, format!("NOT RUN ({} is not a file)", report_path(&path))),
        Err(reason) => (None, format!("NOT RUN ({reason})")),
    };
    eprintln!("bench: Go baseline: {go_status}");
    if go.is_none() && !opts.allow_no_go {
        anyhow::bail!(
            "the Go baseline is {go_status}: the correctness gate compares against it. Install Go (the module \
             proxy is enough), or pass --allow-no-go to run without it"
        );
    }
    Ok((go, go_status))
}

/// What `run` measures and measures with.
struct Tools {
    ours: PathBuf,
    go: Option<PathBuf>,
    go_status: String,
    vegeta: crate::vegeta::Vegeta,
    oha: crate::oha::Oha,
}

/// Finds (or builds, for the Go baseline, vegeta and oha) what `run` needs: before the harness
/// raises its own priority.
fn tools(root: &Path, opts: &Options) -> anyhow::Result<Tools> {
    let ours = find_ours(root, opts)?;
    let (go, go_status) = go_baseline(root, opts)?;
    Ok(Tools { ours, go, go_status, vegeta: crate::vegeta::Vegeta::locate(root)?, oha: crate::oha::Oha::locate(root)? })
}

/// Runs everything and writes the results. Must be called outside any runtime: it makes its own
/// current-thread runtime on the load generator's core.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let root = workspace_root();
    let Tools { ours, go, go_status, vegeta, oha } = tools(&root, opts)?;
    let priority = servers::Priority::take(CLIENT_CPU, opts.nice, opts.realtime.then_some(REALTIME_PRIORITY))?;
    let nice = priority.nice;
    let machine_before = servers::machine_cpu()?;
    let self_before = servers::cpu_time(std::process::id())?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let runs = if opts.quick { 1 } else { opts.runs.max(1) };
    let plan = Plan::new(opts.quick, opts.connections);
    let scratch = root.join("target/bench-run");
    let _ = std::fs::remove_dir_all(&scratch);
    let cert_dir = scratch.join("certs");
    let ca = servers::write_certificates(&cert_dir)?;
    let tls = Tls::verifying(&ca)?;
    let handshake_tls = Tls::handshake_load()?;
    let corpus = corpus::corpus();
    let spec = |kind, binary: &Path| Spec {
        kind,
        binary: binary.to_path_buf(),
        cert_dir: cert_dir.clone(),
        core: SERVER_CPU,
        log_dir: scratch.clone(),
        nice,
        realtime: opts.realtime.then_some(REALTIME_PRIORITY),
    };
    let mut specs = vec![spec(Kind::Ours, &ours)];
    if let Some(go) = &go {
        specs.push(spec(Kind::Go, go));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut c = Collector::default();
    declare(&mut c, &plan);

    eprintln!("bench: correctness gate…");
    let gate = rt.block_on(run_gate(&specs, &corpus, &tls))?;

    let injector = Injector::new()?;
    let ca_file = cert_dir.join("ca.crt");
    let bench = Bench {
        plan: &plan,
        corpus: &corpus,
        tls: &tls,
        handshake_tls: &handshake_tls,
        connections: opts.connections,
        vegeta: &vegeta,
        oha: &oha,
        ca_file: &ca_file,
        scratch: &scratch,
        generator_cpu: std::cell::Cell::new(Duration::ZERO),
    };
    let mut searches = Vec::new();
    let mut server_cpu = Duration::ZERO;
    for run in 1..=runs {
        in_process(&mut c, &plan, &corpus, &injector, &rt)?;
        // Alternate which server goes first, so that drift on a shared machine hits both alike.
        let mut order: Vec<&Spec> = specs.iter().collect();
        if run % 2 == 0 {
            order.reverse();
        }
        for spec in order {
            eprintln!("bench: run {run}/{runs}: {}", spec.kind.name());
            server_cpu += rt
                .block_on(bench.measure(spec, run, &mut c, &mut searches))
                .with_context(|| format!("run {run} of {}", spec.kind.name()))?;
        }
    }
    binary_sizes(&mut c, &specs, &scratch);

    let elapsed = started.elapsed();
    let machine_after = servers::machine_cpu()?;
    let self_used = servers::cpu_time(std::process::id())?.saturating_sub(self_before);
    let machine_busy = machine_after.0.saturating_sub(machine_before.0);
    let machine_total = machine_after.1.saturating_sub(machine_before.1).max(Duration::from_millis(1));
    let others = machine_busy.saturating_sub(self_used + server_cpu + bench.generator_cpu.get());
    let others_share = others.as_secs_f64() / machine_total.as_secs_f64() * 100.0;
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let meta = describe(&Circumstances {
        opts,
        root: &root,
        ours: &ours,
        go_missing: go.is_none(),
        go_status: &go_status,
        runs,
        nice,
        elapsed,
        others_share,
        load_before: &load_before,
        load_after: &load_after,
    });
    let report = Report {
        meta,
        go_baseline: go_status,
        corpus: corpus.iter().map(|e| (e.size.name().to_owned(), e.body.len())).collect(),
        gate,
        figures: c.figures(),
        searches: Value::Array(searches),
    };
    std::fs::create_dir_all(&opts.out_dir)?;
    std::fs::write(opts.out_dir.join("latest.json"), serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(opts.out_dir.join("latest.md"), report.markdown())?;
    crate::plots::write(&report, &opts.out_dir)?;
    Ok(report)
}

/// The servers' binary sizes, as built and stripped.
fn binary_sizes(c: &mut Collector, specs: &[Spec], scratch: &Path) {
    for (spec, key) in specs.iter().map(|s| (s, if s.kind == Kind::Ours { "ours" } else { "go" })) {
        if let Some(size) = file_mib(&spec.binary) {
            c.add("binary_mib", key, size);
        }
        if let Some(size) = stripped_mib(&spec.binary, scratch) {
            c.add("binary_stripped_mib", key, size);
        }
    }
}

/// What `describe` writes down about a run.
struct Circumstances<'a> {
    opts: &'a Options,
    root: &'a Path,
    ours: &'a Path,
    go_missing: bool,
    go_status: &'a str,
    runs: usize,
    nice: i32,
    elapsed: Duration,
    others_share: f64,
    load_before: &'a str,
    load_after: &'a str,
}

/// The report's `meta`: the command, date, commit, machine, settings and notes.
fn describe(c: &Circumstances<'_>) -> BTreeMap<String, Value> {
    let mut notes = vec![
        "Fixed-rate runs: vegeta (Go's net/http client, as the API server's webhook client; HTTP/1.1 keep-alive over TLS, 16 connections), open loop: each request is sent at its scheduled time from a worker pool that grows when answers are slow, and its latency runs from the send to the whole answer; the harness judges every answer and cuts the warm-up. vegeta's own CPU is reported under Harness health. ".to_owned(),
        format!("Max-throughput probes: oha {} (crates.io; hyper and rustls), open loop at the probe's rate with its latency correction (latency from each request's due time, its worker's 1 ms timer tick), the closed-loop saturation probe likewise; an answer counts when it is HTTP 200 and as long as the answer whose patch the correctness gate checked. oha's CPU is in the harness's health figures' totals.", crate::oha::VERSION),
        "Max throughput: a closed-loop saturation probe brackets the search, then open-loop probes bisect to the highest rate with no errors and p99 within the bound (5 ms for 2k and 10k, the target's bound; 25 ms for 100k and 500 ms for 1m, API-server histogram buckets, since one such review alone takes milliseconds).".to_owned(),
        "CPU per 1,000 reviews: utime + stime from /proc/<pid>/stat (10 ms ticks) over the fixed-rate run including its warm-up, divided by the reviews answered in it.".to_owned(),
        "RSS: VmRSS (idle) and VmHWM (peaks) from /proc/<pid>/status.".to_owned(),
        "New TLS connections: 4 closed loops, each a full handshake (no session resumption; the client skips certificate checks to stay cheap) and one 2k review with Connection: close.".to_owned(),
        "In-process: sidecar-injector only (the Go baseline is measured over the wire only); `public pipeline API` is Review::decode (managedFields set aside, as the injector asks) → Pipeline::review_until → Answer::to_review_json, the calls the axum handler makes; `whole router` is admission_kit::server::router through admission_kit::testing::call_router.".to_owned(),
        format!("Wall time of this run: {:.0} s.", c.elapsed.as_secs_f64()),
        format!(
            "Shared machine: other processes used {:.0}% of both CPUs during the measured runs (from /proc/stat, less the servers' and the harness's own CPU); load average {} at the start, {} at the end. Servers and load generator ran at niceness {} and {}.",
            c.others_share,
            c.load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            c.load_after.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            c.nice,
            if c.opts.realtime {
                format!("under SCHED_RR at real-time priority {REALTIME_PRIORITY}, the ticker one above (woken at once, not at a neighbour's next tick)")
            } else {
                "under the normal scheduler".to_owned()
            },
        ),
    ];
    if c.go_missing {
        notes.push(format!(
            "Go baseline: {}: every Go column and ratio is empty, and targets relative to Go are not measured.",
            c.go_status
        ));
    }
    let mut meta: BTreeMap<String, Value> = BTreeMap::new();
    let args: Vec<String> = std::env::args().skip(1).collect();
    meta.insert("command".into(), json!(format!("cargo run -p bench --release -- {}", args.join(" "))));
    meta.insert("date".into(), json!(command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])));
    meta.insert("commit".into(), json!(checkout_commit(c.root)));
    let cpu = cpu_model();
    meta.insert(
        "machine".into(),
        json!(format!("{} CPUs ({cpu}), Linux {}", command_line("nproc", &["--all"]), command_line("uname", &["-r"]))),
    );
    meta.insert("server_cpu".into(), json!(SERVER_CPU));
    meta.insert("client_cpu".into(), json!(CLIENT_CPU));
    meta.insert("runs".into(), json!(c.runs));
    meta.insert("quick".into(), json!(c.opts.quick));
    meta.insert("connections".into(), json!(c.opts.connections));
    meta.insert("search_load".into(), json!(format!("oha {}", crate::oha::VERSION)));
    meta.insert("nice".into(), json!(c.nice));
    meta.insert("server_realtime_priority".into(), json!(c.opts.realtime.then_some(REALTIME_PRIORITY)));
    meta.insert("other_processes_cpu_percent".into(), json!((c.others_share * 10.0).round() / 10.0));
    meta.insert("wall_seconds".into(), json!(c.elapsed.as_secs_f64().round()));
    meta.insert("ours_binary".into(), json!(report_path(c.ours)));
    meta.insert("notes".into(), json!(notes));
    meta
}

/// Options of `bench load`: one open-loop run against one freshly started server.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Which server.
    pub kind: Kind,
    /// Its binary (default as for `run`).
    pub binary: Option<PathBuf>,
    /// The corpus size to send.
    pub size: Size,
    /// Requests per second.
    pub rate: f64,
    /// Measured seconds (after a one-second warm-up).
    pub seconds: f64,
    /// Keep-alive connections.
    pub connections: usize,
    /// Niceness, as for `run`.
    pub nice: i32,
    /// `SCHED_RR` for the server, as for `run`.
    pub realtime: bool,
    /// Which load generators send the runs (more than one: alternating on the same server, the
    /// cross-check of one against another).
    pub drivers: Vec<Driver>,
    /// The max-throughput search of `bench run` instead of one fixed rate.
    pub search: bool,
    /// Runs (each driver's).
    pub runs: usize,
}

/// A load generator of `bench load`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// The harness's own open-loop driver ([`load::open_loop`]).
    Own,
    /// vegeta ([`crate::vegeta`]): the fixed-rate runs of `bench run`.
    Vegeta,
    /// oha ([`crate::oha`]): the max-throughput search of `bench run`.
    Oha,
}

impl Driver {
    /// `own`, `vegeta` or `oha`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "own" => Some(Self::Own),
            "vegeta" => Some(Self::Vegeta),
            "oha" => Some(Self::Oha),
            _ => None,
        }
    }

    /// A comma-separated list of drivers (`own,oha`), each once; `both` is `own,vegeta`.
    #[must_use]
    pub fn parse_list(names: &str) -> Option<Vec<Self>> {
        let names = if names == "both" { "own,vegeta" } else { names };
        let mut drivers = Vec::new();
        for name in names.split(',') {
            let driver = Self::parse(name.trim())?;
            if drivers.contains(&driver) {
                return None;
            }
            drivers.push(driver);
        }
        Some(drivers)
    }

    /// Its name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Own => "own",
            Self::Vegeta => "vegeta",
            Self::Oha => "oha",
        }
    }
}

/// The load generators of one `bench load` against one server.
struct Drivers<'a> {
    addr: std::net::SocketAddr,
    tls: &'a Tls,
    ca_file: &'a Path,
    scratch: &'a Path,
    vegeta: Option<crate::vegeta::Vegeta>,
    oha: Option<crate::oha::Oha>,
    /// The length of the server's answer to the run's review (what oha's answers are held to).
    answer_len: u64,
}

impl Drivers<'_> {
    /// oha against this server (located when `--driver` names it).
    fn oha(&self) -> anyhow::Result<crate::oha::Target<'_>> {
        let oha = self.oha.as_ref().context("oha was not located: `--driver` does not name it")?;
        Ok(oha.against(self.addr, self.ca_file, self.answer_len, self.scratch))
    }

    async fn open_loop(&self, driver: Driver, spec: &OpenLoop) -> anyhow::Result<load::LoadReport> {
        match driver {
            Driver::Own => load::open_loop(self.addr, self.tls, spec).await,
            Driver::Vegeta => {
                let vegeta = self.vegeta.as_ref().context("vegeta was not located: `--driver` does not name it")?;
                vegeta.open_loop(self.addr, self.ca_file, spec, self.scratch).await
            }
            Driver::Oha => load::Prober::open_loop(&self.oha()?, spec).await,
        }
    }

    async fn search(&self, driver: Driver, body: Bytes, search: &Search) -> anyhow::Result<load::SearchResult> {
        match driver {
            Driver::Own => {
                load::max_throughput(&load::OwnDriver { addr: self.addr, tls: self.tls }, body, search).await
            }
            Driver::Oha => load::max_throughput(&self.oha()?, body, search).await,
            Driver::Vegeta => bail!("the max-throughput search is sent by `own` or `oha`, not `vegeta`"),
        }
    }
}

/// `bench load`: starts one server as `run` does, sends open-loop runs (or, with `search`, the
/// max-throughput search of `bench run`), prints what they measured.
pub fn single_load(opts: &LoadOptions) -> anyhow::Result<()> {
    let root = workspace_root();
    let binary = match (&opts.binary, opts.kind) {
        (Some(b), _) => b.clone(),
        (None, Kind::Ours) => find_ours(
            &root,
            &Options {
                quick: true,
                runs: 1,
                go: None,
                ours: None,
                allow_stale: true,
                allow_no_go: true,
                connections: opts.connections,
                out_dir: PathBuf::new(),
                nice: opts.nice,
                realtime: opts.realtime,
            },
        )?,
        (None, Kind::Go) => find_go(&root).map_err(|reason| anyhow::anyhow!("no Go baseline: {reason}"))?,
    };
    let vegeta =
        if opts.drivers.contains(&Driver::Vegeta) { Some(crate::vegeta::Vegeta::locate(&root)?) } else { None };
    let oha = if opts.drivers.contains(&Driver::Oha) { Some(crate::oha::Oha::locate(&root)?) } else { None };
    let priority = servers::Priority::take(CLIENT_CPU, opts.nice, opts.realtime.then_some(REALTIME_PRIORITY))?;
    let scratch = root.join("target/bench-load");
    let cert_dir = scratch.join("certs");
    let ca = servers::write_certificates(&cert_dir)?;
    let ca_file = cert_dir.join("ca.crt");
    let tls = Tls::verifying(&ca)?;
    let spec = Spec {
        kind: opts.kind,
        binary,
        cert_dir,
        core: SERVER_CPU,
        log_dir: scratch.clone(),
        nice: priority.nice,
        realtime: opts.realtime.then_some(REALTIME_PRIORITY),
    };
    let corpus = corpus::corpus();
    let review = body(&corpus, opts.size);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut server = spec.spawn(0)?;
        let ready = server.wait_first_review(&tls, body(&corpus, Size::K2), Duration::from_secs(60)).await?;
        let drivers = Drivers {
            addr: server.webhook,
            tls: &tls,
            ca_file: &ca_file,
            scratch: &scratch,
            vegeta,
            oha,
            answer_len: answer_len(server.webhook, &tls, &review).await?,
        };
        let what = if opts.search {
            "max-throughput search".to_owned()
        } else {
            format!("at {}/s for {} s", opts.rate, opts.seconds)
        };
        println!(
            "{} {} {what} ({} connections; first review {:.1} ms after start):",
            spec.kind.name(),
            opts.size.name(),
            opts.connections,
            ready.as_secs_f64() * 1000.0
        );
        let load = OpenLoop {
            rate: opts.rate,
            duration: Duration::from_secs_f64(opts.seconds),
            warmup: Duration::from_secs(1),
            connections: opts.connections,
            body: review.clone(),
            check: None,
        };
        let search = Search { p99_limit_ms: p99_bound_ms(opts.size), ..Plan::new(false, opts.connections).search };
        let result = load_runs(opts, &drivers, &server, (&load, &search)).await;
        let _ = server.stop();
        result
    })
}

/// `bench load`'s runs against one server, each driver in turn, and their medians.
async fn load_runs(
    opts: &LoadOptions,
    drivers: &Drivers<'_>,
    server: &Running,
    (load, search): (&OpenLoop, &Search),
) -> anyhow::Result<()> {
    // Per driver: (p50, p99) of each fixed-rate run, or the rate each search found.
    let mut results: Vec<(Driver, f64, f64)> = Vec::new();
    for run in 1..=opts.runs.max(1) {
        // Alternate which driver goes first, so that drift hits both alike.
        let mut order = opts.drivers.clone();
        if run % 2 == 0 {
            order.reverse();
        }
        for driver in order {
            let cpu_before = server.cpu_time()?;
            let generator_before = servers::children_cpu_time()?;
            if opts.search {
                let found = drivers.search(driver, load.body.clone(), search).await?;
                let probes: Vec<String> =
                    found.probes.iter().map(|p| format!("{:.0}{}", p.rate, if p.passed { "✓" } else { "✗" })).collect();
                println!(
                    "  run {run}, {}: {:.0}/s (p99 {:.2} ms; saturation {:.0}/s; probes {})",
                    driver.name(),
                    found.max_rate,
                    found.p99_ms_at_max,
                    found.saturation,
                    probes.join(" ")
                );
                results.push((driver, found.max_rate, found.p99_ms_at_max));
                continue;
            }
            let report = drivers.open_loop(driver, load).await?;
            let cpu = server.cpu_time()?.saturating_sub(cpu_before);
            let generator = servers::children_cpu_time()?.saturating_sub(generator_before);
            println!("  run {run}, {}", describe_run(driver, &report, (cpu, generator), server.memory_kib()?));
            results.push((driver, report.latency_ms(0.5), report.latency_ms(0.99)));
        }
    }
    if opts.runs > 1 || opts.drivers.len() > 1 {
        for driver in &opts.drivers {
            let of = |pick: fn(&(Driver, f64, f64)) -> f64| {
                crate::report::median(&results.iter().filter(|r| r.0 == *driver).map(pick).collect::<Vec<_>>())
            };
            let (first, second) = if opts.search { ("max", "p99 at it") } else { ("p50", "p99") };
            let unit = if opts.search { "/s" } else { " ms" };
            println!(
                "  median of {} runs, {}: {first} {:.3}{unit}, {second} {:.3} ms",
                opts.runs.max(1),
                driver.name(),
                of(|r| r.1),
                of(|r| r.2)
            );
        }
    }
    Ok(())
}

/// One line of `bench load`: the driver, latency quantiles, counts, the server's CPU and memory.
/// `cpu` is the server's and the load generator's when it is a child (vegeta, oha).
fn describe_run(
    driver: Driver,
    report: &load::LoadReport,
    (cpu, generator): (Duration, Duration),
    (rss, hwm): (u64, u64),
) -> String {
    #[allow(clippy::cast_precision_loss, reason = "request counts are far below 2^52")]
    let per_1k = cpu.as_secs_f64() * 1e6 / report.answered_total.max(1) as f64;
    #[allow(clippy::cast_precision_loss, reason = "request counts are far below 2^52")]
    let generator_per_1k = generator.as_secs_f64() * 1e6 / report.answered_total.max(1) as f64;
    let name = driver.name();
    let quantiles: Vec<String> =
        [0.5, 0.9, 0.99, 0.999, 1.0].iter().map(|q| format!("p{} {:.3}", q * 100.0, report.latency_ms(*q))).collect();
    let lag = if driver == Driver::Own {
        format!("; load generator lag p99 {:.3} ms", load::us_to_ms(report.dispatch_lag_us.value_at_quantile(0.99)))
    } else {
        format!("; {name} {generator_per_1k:.1} CPU-ms per 1,000")
    };
    let mut line = format!(
        "{name}: {} ms; {} ok, {} errors of {} scheduled ({:.0}/s); server {per_1k:.1} CPU-ms per 1,000, RSS {:.1} MiB (peak {:.1}){lag}",
        quantiles.join(", "),
        report.ok,
        report.errors,
        report.scheduled,
        report.throughput(),
        mib(rss),
        mib(hwm),
    );
    if let Some(first) = report.error_samples.first() {
        line = format!("{line}\n    first error: {first}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_drivers_are_named_and_an_unknown_one_is_refused() {
        assert_eq!(Driver::parse("own"), Some(Driver::Own));
        assert_eq!(Driver::parse("vegeta"), Some(Driver::Vegeta));
        assert_eq!(Driver::parse("oha"), Some(Driver::Oha));
        assert_eq!(Driver::parse("wrk"), None);
        assert_eq!(Driver::parse("Vegeta"), None);
        assert_eq!(Driver::parse_list("own,oha"), Some(vec![Driver::Own, Driver::Oha]));
        assert_eq!(Driver::parse_list("both"), Some(vec![Driver::Own, Driver::Vegeta]));
        assert_eq!(Driver::parse_list("oha"), Some(vec![Driver::Oha]));
        assert_eq!(Driver::parse_list("own,own"), None, "a driver twice");
        assert_eq!(Driver::parse_list("own,"), None, "an empty name");
    }

    #[test]
    fn report_paths_name_no_machine_directory() {
        let root = workspace_root();
        assert_eq!(report_path(&root.join("target/release/sidecar-injector")), "target/release/sidecar-injector");
        assert_eq!(report_path(Path::new("/opt/elsewhere/go-baseline")), "go-baseline");
        let line = format!("failed to parse catalog {}/target/fault-full/catalog.yaml: bad", root.display());
        assert_eq!(without_workspace_root(&line), "failed to parse catalog target/fault-full/catalog.yaml: bad");
    }
}
