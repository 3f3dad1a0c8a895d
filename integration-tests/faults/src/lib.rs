//! The fault tests: system tests of the real `sidecar-injector serve` process under faults (TLS
//! certificate files written here, the server pinned to one core as the benchmark does) and under
//! open-loop load from the benchmark harness's driver ([`bench::load`]):
//!
//! - [`soak`]: 1,000 reviews/s for 10 minutes: zero errors, RSS flat.
//! - [`cert`]: the serving certificate replaced under load (kubelet's `..data` symlink swap).
//! - [`takeover`]: two replicas behind a loopback balancer that follows `/readyz`; SIGTERM one.
//! - [`stalled`]: 1,000 stalled or slow connections while real traffic runs.
//! - [`hostile`]: oversized, truncated, deeply nested, invalid-UTF-8 bodies mixed into real traffic.
//! - [`hostile_pods`]: pods with 60,000 sidecar names or 30,000 env annotations, and 1,100 silent
//!   connections, while probes check that the server stays responsive.
//! - [`catalog`]: the catalog file replaced by a broken one under load, then by a good one.
//!
//! Every scenario's load decodes each answer's patch and requires the seed's `haystack-agent`
//! injected: a server that kept answering but stopped injecting under a fault fails.
//!
//! `--short` runs every scenario for seconds instead of minutes and enforces correctness (failed
//! requests, answers, injection, errors, certificate and catalog behaviour) and the named criteria
//! with bounds a noisy 2-core machine holds (a new certificate or catalog within 5 intervals,
//! stalled connections closed within twice their timeout, p99 at most 3× with stalled connections,
//! RSS flat); the strict timing figures are reported, not enforced. The full run enforces the
//! strict ones. See this crate's README.md.

mod admin;
mod catalog;
mod cert;
mod hostile;
mod hostile_pods;
mod soak;
mod stalled;
mod takeover;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;

use bench::client::{Tls, post_once};
use bench::corpus::{self, Size};
use bench::load::OpenLoop;
use bench::report::median;
use bench::runner::{
    CLIENT_CPU, REALTIME_PRIORITY, SERVER_CPU, checkout_commit, command_line, cpu_model, workspace_root,
};
use bench::servers::{self, Kind, Running, Spec};

/// One fault scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// 1,000 reviews/s for a long time: zero errors, RSS flat.
    Soak,
    /// Certificate files replaced under load.
    CertRotation,
    /// SIGTERM of one of two replicas under load.
    SigtermTakeover,
    /// 1,000 stalled or slow connections while real traffic runs.
    StalledConnections,
    /// Hostile bodies mixed into real traffic.
    HostileBodies,
    /// Hostile pods and silent peers while probes check responsiveness.
    HostilePods,
    /// The catalog file replaced by a broken one under load.
    BrokenCatalog,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Self; 7] = [
        Self::Soak,
        Self::CertRotation,
        Self::SigtermTakeover,
        Self::StalledConnections,
        Self::HostileBodies,
        Self::HostilePods,
        Self::BrokenCatalog,
    ];

    /// The name on the command line and in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Soak => "soak",
            Self::CertRotation => "cert-rotation",
            Self::SigtermTakeover => "sigterm-takeover",
            Self::StalledConnections => "stalled-connections",
            Self::HostileBodies => "hostile-bodies",
            Self::HostilePods => "hostile-pods",
            Self::BrokenCatalog => "broken-catalog",
        }
    }

    /// A scenario by name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Options of `fault-tests`.
#[derive(Clone, Debug)]
pub struct Options {
    /// The scenarios to run.
    pub scenarios: Vec<Scenario>,
    /// Seconds instead of minutes; timing criteria reported, not enforced.
    pub short: bool,
    /// The sidecar-injector binary (default `target/release/sidecar-injector`).
    pub binary: Option<PathBuf>,
    /// Run even if the binary is older than its sources.
    pub allow_stale: bool,
    /// Niceness of the servers and the harness (as for `bench run`).
    pub nice: i32,
    /// `SCHED_RR` for the servers and the load generator (as for `bench run`).
    pub realtime: bool,
    /// Where `faults.md` and the servers' logs go.
    pub out_dir: PathBuf,
}

/// What one scenario found.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The scenario.
    pub scenario: Scenario,
    /// What was checked, in a sentence (the report's second column).
    pub checked: String,
    /// The measured figures, in a line.
    pub figures: String,
    /// Every check that failed, in words (empty: passed).
    pub failures: Vec<String>,
    /// Timing criteria missed in `--short` mode, where they are reported but not enforced.
    pub not_enforced: Vec<String>,
    /// When it finished (UTC, ISO 8601).
    pub date: String,
}

impl Outcome {
    /// Whether every enforced check held.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The one-line result: `fault <name>: PASS|FAIL — figures`.
    #[must_use]
    pub fn line(&self) -> String {
        let mut line = format!(
            "fault {}: {} — {}",
            self.scenario.name(),
            if self.passed() { "PASS" } else { "FAIL" },
            self.figures
        );
        for failure in &self.failures {
            let _ = write!(line, "\n    FAILED: {failure}");
        }
        for missed in &self.not_enforced {
            let _ = write!(line, "\n    (not enforced with --short) {missed}");
        }
        line
    }
}

/// The checks of one scenario: correctness checks always fail it; timing checks only in full mode.
#[derive(Debug, Default)]
struct Verdict {
    short: bool,
    failures: Vec<String>,
    not_enforced: Vec<String>,
}

impl Verdict {
    fn new(short: bool) -> Self {
        Self { short, ..Self::default() }
    }

    /// A correctness check: fails the scenario in both modes.
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }

    /// A timing criterion: fails the scenario in full mode; reported only with `--short`.
    fn timing(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            if self.short {
                self.not_enforced.push(what());
            } else {
                self.failures.push(what());
            }
        }
    }

    fn outcome(self, scenario: Scenario, checked: impl Into<String>, figures: impl Into<String>) -> Outcome {
        Outcome {
            scenario,
            checked: checked.into(),
            figures: figures.into(),
            failures: self.failures,
            not_enforced: self.not_enforced,
            date: now_utc(),
        }
    }
}

fn now_utc() -> String {
    command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
}

/// What every scenario shares: the binary, where to write, priorities, the corpus.
struct Ctx {
    short: bool,
    binary: PathBuf,
    dir: PathBuf,
    nice: i32,
    realtime: Option<u8>,
    /// The 10 KB review: the real traffic of every scenario.
    review: Bytes,
    /// The 2 KB review: readiness and liveness probes.
    probe: Bytes,
}

/// Keep-alive connections of the real traffic, as in `bench run`.
const CONNECTIONS: usize = 16;

impl Ctx {
    /// Picks `short` or `full`.
    fn pick<T>(&self, short: T, full: T) -> T {
        if self.short { short } else { full }
    }

    /// A scratch directory for one scenario, emptied first.
    fn scenario_dir(&self, scenario: Scenario) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join(scenario.name());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// How a server of this run is started: pinned to the server core, prioritised as `bench run`
    /// does, certificates from `cert_dir`, log into `log_dir`.
    fn spec(&self, cert_dir: &Path, log_dir: &Path) -> Spec {
        Spec {
            kind: Kind::Ours,
            binary: self.binary.clone(),
            cert_dir: cert_dir.to_path_buf(),
            core: SERVER_CPU,
            log_dir: log_dir.to_path_buf(),
            nice: self.nice,
            realtime: self.realtime,
        }
    }

    /// Starts a server and waits, without blocking the runtime, until `/readyz` answers 200 and a
    /// review sent over a new verified connection is admitted.
    async fn start(
        &self,
        spec: &Spec,
        run: usize,
        extra: &[String],
        log_level: &str,
        tls: &Tls,
    ) -> anyhow::Result<Running> {
        let mut server = spec.spawn_with(run, extra, log_level)?;
        let limit = Duration::from_secs(30);
        let admin = server.admin.context("no admin address")?;
        loop {
            if admin::get(admin, "/readyz").await.is_ok_and(|(status, _)| status == 200) {
                break;
            }
            if let Some(status) = server.exited()? {
                bail!("the server exited at start ({status}); log: {}", server.log_tail());
            }
            if server.spawned.elapsed() > limit {
                bail!("the server was not ready after {limit:?}; log: {}", server.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let reply = post_once(server.webhook, tls, self.probe.clone(), Duration::from_secs(10))
            .await
            .context("the first review after /readyz")?;
        anyhow::ensure!(reply.is_admitted(), "the first review was not admitted: HTTP {}", reply.status);
        Ok(server)
    }

    /// An open-loop run of the 10 KB review at `rate`. Every answer must inject the seed's
    /// `haystack-agent` (its patch is decoded): a server that admitted pods without their sidecar
    /// under a fault would fail the scenario. A scenario may replace the check with a stricter one.
    fn load(&self, rate: f64, warmup: f64, seconds: f64) -> OpenLoop {
        OpenLoop {
            rate,
            duration: Duration::from_secs_f64(seconds),
            warmup: Duration::from_secs_f64(warmup),
            connections: CONNECTIONS,
            body: self.review.clone(),
            check: Some(bench::load::Check(std::sync::Arc::new(|reply: &bench::client::Reply| {
                injected_container(reply, "haystack-agent").map(drop)
            }))),
        }
    }
}

/// Runs the scenarios, prints one line per scenario, writes `faults.md`; `Ok(true)` if all passed.
pub fn run(opts: &Options) -> anyhow::Result<bool> {
    let started = Instant::now();
    let root = workspace_root();
    let binary = bench::runner::injector_binary(&root, opts.binary.as_deref(), "release", opts.allow_stale)?;
    let fd_limit = fd_limit();
    let priority = servers::Priority::take(CLIENT_CPU, opts.nice, opts.realtime.then_some(REALTIME_PRIORITY))?;
    let mode = if opts.short { "short" } else { "full" };
    let dir = root.join("target").join(format!("fault-{mode}"));
    std::fs::create_dir_all(&dir)?;
    let ctx = Ctx {
        short: opts.short,
        binary,
        dir,
        nice: priority.nice,
        realtime: opts.realtime.then_some(REALTIME_PRIORITY),
        review: Bytes::from(corpus::entry(Size::K10).body),
        probe: Bytes::from(corpus::entry(Size::K2).body),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut outcomes = Vec::new();
    for &scenario in &opts.scenarios {
        eprintln!("bench: fault {} ({mode})…", scenario.name());
        let began = Instant::now();
        let result = rt.block_on(async {
            match scenario {
                Scenario::Soak => soak::run(&ctx).await,
                Scenario::CertRotation => cert::run(&ctx).await,
                Scenario::SigtermTakeover => takeover::run(&ctx).await,
                Scenario::StalledConnections => stalled::run(&ctx).await,
                Scenario::HostileBodies => hostile::run(&ctx).await,
                Scenario::HostilePods => hostile_pods::run(&ctx).await,
                Scenario::BrokenCatalog => catalog::run(&ctx).await,
            }
        });
        let outcome = result.unwrap_or_else(|error| Outcome {
            scenario,
            checked: "(the harness failed before its checks)".to_owned(),
            figures: "no figures".to_owned(),
            failures: vec![format!("{error:#}")],
            not_enforced: Vec::new(),
            date: now_utc(),
        });
        println!("{}", outcome.line());
        eprintln!("bench: fault {} took {:.0} s", scenario.name(), began.elapsed().as_secs_f64());
        outcomes.push(outcome);
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let markdown = report(&Circumstances {
        root: &root,
        ctx: &ctx,
        outcomes: &outcomes,
        wall: started.elapsed(),
        fd_limit,
        load_before: &load_before,
        load_after: &load_after,
        realtime: opts.realtime,
    });
    std::fs::create_dir_all(&opts.out_dir)?;
    let path = opts.out_dir.join("faults.md");
    // Scenario rows quote server logs, which name scratch files under the repository.
    std::fs::write(&path, bench::runner::without_workspace_root(&markdown))?;
    eprintln!("bench: wrote {} ({:.0} s in all)", path.display(), started.elapsed().as_secs_f64());
    drop(priority);
    Ok(outcomes.iter().all(Outcome::passed))
}

/// The soft limit on open files (`Max open files` of `/proc/self/limits`).
fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

struct Circumstances<'a> {
    root: &'a Path,
    ctx: &'a Ctx,
    outcomes: &'a [Outcome],
    wall: Duration,
    fd_limit: Option<u64>,
    load_before: &'a str,
    load_after: &'a str,
    realtime: bool,
}

/// `faults.md`: a header on the circumstances, then one table row per scenario.
fn report(c: &Circumstances<'_>) -> String {
    let commit = checkout_commit(c.root);
    let cpu = cpu_model();
    let short = c.ctx.short;
    let mut md = String::new();
    let _ = writeln!(md, "# Fault tests{}\n", if short { ": short variant" } else { "" });
    let _ = writeln!(
        md,
        "`bash scripts/fault-tests.sh{}` (which runs `fault-tests all{}` after building the release binaries). \
         Every scenario runs the real `target/release/sidecar-injector serve` process with TLS certificate files \
         written by the test, reviewed over loopback TLS and HTTP/1.1 keep-alive by the open-loop load driver of \
         `bench/src/load.rs` (10 KB `AdmissionReview`s, {CONNECTIONS} keep-alive connections).\n",
        if short { " --short" } else { "" },
        if short { " --short" } else { "" },
    );
    let passed = c.outcomes.iter().filter(|o| o.passed()).count();
    // The book's Benchmarks page includes what lies between the anchors (mdBook `{{#include}}`).
    let _ = writeln!(md, "<!-- ANCHOR: table -->");
    let _ = writeln!(md, "- Result: **{passed} of {} passed**.", c.outcomes.len());
    let _ = writeln!(
        md,
        "- Mode: {}.",
        if short {
            "short (seconds per scenario; correctness enforced, timing criteria reported but not enforced)"
        } else {
            "full (the specified durations; correctness and timing criteria enforced)"
        }
    );
    let _ = writeln!(
        md,
        "- Commit {}; {} CPUs ({cpu}), Linux {}; wall time {:.0} s; load average {} at the start, {} at the end.",
        commit,
        command_line("nproc", &["--all"]),
        command_line("uname", &["-r"]),
        c.wall.as_secs_f64(),
        c.load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        c.load_after.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    let _ = writeln!(
        md,
        "- Servers pinned to CPU {SERVER_CPU}, harness to CPU {CLIENT_CPU}, niceness {}, {}. Open-file limit {} \
         (stalled-connections needs about 1,100 descriptors in each process; `scripts/fault-tests.sh` raises a \
         soft limit below 4,096).\n",
        c.ctx.nice,
        if c.realtime {
            format!(
                "servers and load generator under SCHED_RR (priority {REALTIME_PRIORITY}); the stalled-connections thread under the normal scheduler"
            )
        } else {
            "normal scheduler".to_owned()
        },
        c.fd_limit.map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
    );
    md.push_str("| Scenario | What was checked | Measured | Result | Date | Command |\n|---|---|---|---|---|---|\n");
    for o in c.outcomes {
        let mut result = if o.passed() { "**PASS**".to_owned() } else { "**FAIL**".to_owned() };
        for f in &o.failures {
            let _ = write!(result, "<br>failed: {}", cell(f));
        }
        for f in &o.not_enforced {
            let _ = write!(result, "<br>not enforced (short): {}", cell(f));
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | `cargo run -p fault-tests --release -- {}{}` |",
            o.scenario.name(),
            cell(&o.checked),
            cell(&o.figures),
            result,
            o.date,
            o.scenario.name(),
            if short { " --short" } else { "" },
        );
    }
    md.push_str("\n<!-- ANCHOR_END: table -->\n");
    md.push_str(
        "\nServer logs and scratch files of this run: `target/fault-short/` or `target/fault-full/`, one directory \
         per scenario. Each scenario is described in `integration-tests/faults/README.md`.\n",
    );
    md
}

/// Text safe in a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', "<br>")
}

/// Puts the calling thread under the normal scheduler (`SCHED_OTHER`) when the harness runs under
/// `SCHED_RR`: the stalled connections' thread must never preempt the load generator it shares a
/// core with. (The balancer of `sigterm-takeover` keeps the real-time policy: it is on the path of
/// every request, as the kernel's forwarding would be.)
fn demote_current_thread() {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else { return };
    let Some(tid) = link.file_name().and_then(|t| t.to_str()).map(str::to_owned) else { return };
    let _ = std::process::Command::new("chrt")
        .args(["-o", "-p", "0", &tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Milliseconds, for reports.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A count as a float, for ratios and reports.
#[allow(clippy::cast_precision_loss, reason = "counts and sizes here are far below 2^52")]
fn f(n: u64) -> f64 {
    n as f64
}

/// `min/median/max` of durations in seconds, for reports.
fn spread_s(values: &[Duration]) -> String {
    if values.is_empty() {
        return "none".to_owned();
    }
    let secs: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    let min = secs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = secs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}/{:.2}/{max:.2} s", median(&secs))
}

/// Reads the server's log with terminal colour codes removed.
fn log_text(server: &Running) -> String {
    strip_ansi(&std::fs::read_to_string(server.log_path()).unwrap_or_default())
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Checks a server is still running and serving: not exited, `/livez` 200, a review admitted on a
/// new connection. `Err` says what is wrong.
async fn still_serving(ctx: &Ctx, server: &mut Running, tls: &Tls) -> Result<(), String> {
    if let Ok(Some(status)) = server.exited() {
        return Err(format!("the server exited ({status})"));
    }
    let admin = server.admin.ok_or("no admin address")?;
    match admin::get(admin, "/livez").await {
        Ok((200, _)) => {}
        Ok((status, body)) => return Err(format!("/livez answered {status}: {body}")),
        Err(error) => return Err(format!("/livez failed: {error:#}")),
    }
    match post_once(server.webhook, tls, ctx.probe.clone(), Duration::from_secs(10)).await {
        Ok(reply) if reply.is_admitted() => Ok(()),
        Ok(reply) => Err(format!("a review after the test was answered HTTP {}", reply.status)),
        Err(error) => Err(format!("a review after the test failed: {error:#}")),
    }
}

/// The container named `name` that an answer's patch adds (decoded from the answer's base64 JSON
/// patch), or why there is none.
fn injected_container(reply: &bench::client::Reply, name: &str) -> Result<serde_json::Value, String> {
    use base64::Engine as _;
    use serde_json::Value;
    let review: Value = serde_json::from_slice(&reply.body).map_err(|e| format!("answer not JSON: {e}"))?;
    let patch = review["response"]["patch"].as_str().ok_or("no patch in the answer")?;
    let patch =
        base64::engine::general_purpose::STANDARD.decode(patch).map_err(|e| format!("patch not base64: {e}"))?;
    let patch: Value = serde_json::from_slice(&patch).map_err(|e| format!("patch not JSON: {e}"))?;
    patch
        .as_array()
        .into_iter()
        .flatten()
        .filter(|op| op["op"] == "add")
        .map(|op| &op["value"])
        .flat_map(|value| if let Value::Array(items) = value { items.iter().collect() } else { vec![value] })
        .find(|c| c["name"] == name && c["image"].is_string())
        .cloned()
        .ok_or_else(|| format!("the patch injects no {name} container"))
}

/// The load's verdict on failed requests: zero, and every scheduled request answered.
fn check_load(v: &mut Verdict, what: &str, report: &bench::load::LoadReport) {
    v.check(report.errors == 0 && report.ok == report.scheduled, || {
        format!(
            "{what}: {} of {} requests failed (first: {})",
            report.errors,
            report.scheduled,
            report.error_samples.join(" / ")
        )
    });
}
