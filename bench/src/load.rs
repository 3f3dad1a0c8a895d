//! The load driver: open loop at a fixed rate over keep-alive connections, a closed-loop
//! saturation probe, the max-throughput search, and new TLS connections per second.
//!
//! Open loop without coordinated omission (Gil Tene's term; wrk2 and `oha --latency-correction`
//! do the same): request *i* is scheduled at `start + i / rate` whatever happened to request
//! *i − 1*, and its latency is measured from that scheduled time, so a server that stalls is
//! charged for every request it delayed, including those still waiting for a free connection.
//!
//! Pacing: tokio's timer has a 1 ms resolution, which would add up to 1 ms of the driver's own
//! lateness to every latency. A dedicated OS thread (the ticker) sleeps with `nanosleep` (a
//! high-resolution timer) until each send time and hands the request to the runtime's workers
//! through a channel, which wakes the runtime at once. The ticker's own lateness is reported as
//! `dispatch_lag`; it is included in the latencies, so a busy client makes the server look slower,
//! never faster. (Spinning instead would burn the load generator's core between requests.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use crate::client::{Connection, REVIEW_PATH, Reply, Tls};

/// Requests that take longer than this count as errors.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An open-loop run.
#[derive(Clone, Debug)]
pub struct OpenLoop {
    /// Requests per second.
    pub rate: f64,
    /// Measured time (after the warm-up).
    pub duration: Duration,
    /// Time at the same rate before measuring (not recorded).
    pub warmup: Duration,
    /// Keep-alive connections, opened before the run.
    pub connections: usize,
    /// The review to send.
    pub body: Bytes,
    /// A check of every admitted answer beyond `"allowed":true` (the fault tests look into the
    /// patch); an answer it refuses counts as an error.
    pub check: Option<Check>,
}

/// A check of an admitted answer: `Err` says what is wrong with it.
#[derive(Clone)]
pub struct Check(pub Arc<CheckFn>);

/// The function of a [`Check`].
pub type CheckFn = dyn Fn(&Reply) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Check(..)")
    }
}

/// How many failures a run describes in [`LoadReport::error_samples`].
const ERROR_SAMPLES: usize = 5;

/// What an open-loop run measured.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Requests scheduled in the measured window.
    pub scheduled: u64,
    /// Of those, answered with HTTP 200 and `"allowed":true`.
    pub ok: u64,
    /// Of those, failed (connection error, timeout, other status or answer).
    pub errors: u64,
    /// Latency from scheduled send time to the whole answer, in microseconds.
    pub latency_us: Histogram<u64>,
    /// The dispatcher's lateness behind the schedule, in microseconds.
    pub dispatch_lag_us: Histogram<u64>,
    /// The length of the measured window.
    pub window: Duration,
    /// Reviews admitted over the whole run, warm-up included (for CPU per review).
    pub answered_total: u64,
    /// Connections opened during the run, after the initial ones: after the server answered with
    /// `Connection: close`, or after a failure.
    pub reopened: u64,
    /// What the first few failures were (measured window only).
    pub error_samples: Vec<String>,
}

impl LoadReport {
    /// A report of nothing yet, for a measured window of `window` (for drivers that fill it in
    /// one result at a time; the dispatch lag stays empty where the driver does not report it).
    #[must_use]
    pub fn empty(window: Duration) -> Self {
        Self {
            scheduled: 0,
            ok: 0,
            errors: 0,
            latency_us: histogram(),
            dispatch_lag_us: histogram(),
            window,
            answered_total: 0,
            reopened: 0,
            error_samples: Vec::new(),
        }
    }

    /// Records one measured request's latency.
    pub fn record_latency(&mut self, latency: Duration) {
        let _ = self.latency_us.record(micros(latency));
    }

    /// Counts one measured request as failed, keeping the first few reasons.
    pub fn record_error(&mut self, what: String) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES {
            self.error_samples.push(what);
        }
    }

    /// A latency percentile, in milliseconds.
    #[must_use]
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        us_to_ms(self.latency_us.value_at_quantile(quantile))
    }

    /// Answers per second over the measured window.
    #[must_use]
    pub fn throughput(&self) -> f64 {
        as_f64(self.ok) / self.window.as_secs_f64()
    }
}

/// Microseconds (from a histogram) to milliseconds.
#[must_use]
pub fn us_to_ms(us: u64) -> f64 {
    as_f64(us) / 1000.0
}

#[allow(clippy::cast_precision_loss, reason = "request counts and microseconds are far below 2^52")]
fn as_f64(n: u64) -> f64 {
    n as f64
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|e| unreachable!("static bounds are valid: {e}"))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

async fn open_all(addr: SocketAddr, tls: &Tls, n: usize) -> anyhow::Result<Vec<Connection>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Connection::open(addr, tls).await?);
    }
    Ok(out)
}

/// Under a real-time policy, raises the calling thread one priority above the process's other
/// threads: a woken ticker must not wait for the runtime thread (same core, same policy) to block.
fn outrank_siblings() {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else { return };
    let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else { return };
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 40 (rt_priority) and 41 (policy) of proc(5), counted after the `(comm)` field.
    let (Some(priority), Some(policy)) = (fields.get(37), fields.get(38)) else { return };
    let (Ok(priority), Ok(policy)) = (priority.parse::<u8>(), policy.parse::<u8>()) else { return };
    if !(policy == 1 || policy == 2) {
        return;
    }
    let Ok(link) = std::fs::read_link("/proc/thread-self") else { return };
    let Some(tid) = link.file_name().and_then(|t| t.to_str()).map(str::to_owned) else { return };
    let _ = std::process::Command::new("chrt")
        .args(["-r", "-p", &(priority.saturating_add(1)).to_string(), &tid])
        .stdout(std::process::Stdio::null())
        .status();
}

struct Shared {
    /// Requests still queued after this are failed without being sent (an overloaded server's
    /// backlog must not stretch a probe without bound).
    give_up: Instant,
    latency: std::sync::Mutex<Histogram<u64>>,
    ok: AtomicU64,
    errors: AtomicU64,
    answered_total: AtomicU64,
    reopened: AtomicU64,
    error_samples: std::sync::Mutex<Vec<String>>,
}

impl Shared {
    fn failed(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.error_samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if samples.len() < ERROR_SAMPLES {
            samples.push(what);
        }
    }
}

/// Runs an open-loop load against `addr`. Must run inside a tokio runtime (the harness uses a
/// current-thread runtime on the load generator's core).
pub async fn open_loop(addr: SocketAddr, tls: &Tls, spec: &OpenLoop) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(spec.rate > 0.0 && spec.connections > 0, "rate and connections must be positive");
    let connections = open_all(addr, tls, spec.connections).await?;
    let interval = Duration::from_secs_f64(1.0 / spec.rate);
    let start = Instant::now() + Duration::from_millis(5);
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let shared = Arc::new(Shared {
        give_up: end + REQUEST_TIMEOUT,
        latency: std::sync::Mutex::new(histogram()),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        answered_total: AtomicU64::new(0),
        reopened: AtomicU64::new(0),
        error_samples: std::sync::Mutex::new(Vec::new()),
    });
    let (tx, rx) = mpsc::unbounded_channel::<(Instant, bool)>();
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for conn in connections {
        let rx = rx.clone();
        let shared = shared.clone();
        let request = Request { body: spec.body.clone(), check: spec.check.clone() };
        workers.push(tokio::spawn(worker(addr, tls.clone(), conn, rx, shared, request)));
    }
    // The ticker: a plain thread, so that its sleeps are nanosleep-precise.
    let (start_std, measure_std, end_std) = (start.into_std(), measure_from.into_std(), end.into_std());
    let ticker = std::thread::Builder::new().name("ticker".to_owned()).spawn(move || {
        outrank_siblings();
        let mut lag = histogram();
        let mut scheduled = 0u64;
        let mut i: u32 = 0;
        loop {
            let at = start_std + interval * i;
            if at >= end_std {
                break;
            }
            let now = std::time::Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let measured = at >= measure_std;
            if measured {
                scheduled += 1;
                let _ = lag.record(micros(std::time::Instant::now().saturating_duration_since(at)));
            }
            if tx.send((Instant::from_std(at), measured)).is_err() {
                break;
            }
            let Some(next) = i.checked_add(1) else { break };
            i = next;
        }
        (lag, scheduled)
    })?;
    // Wait for the ticker without blocking the runtime's thread.
    let (lag, scheduled) = loop {
        if ticker.is_finished() {
            break ticker.join().map_err(|_| anyhow::anyhow!("the ticker thread panicked"))?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for w in workers {
        let _ = w.await;
    }
    let latency =
        std::mem::replace(&mut *shared.latency.lock().unwrap_or_else(std::sync::PoisonError::into_inner), histogram());
    Ok(LoadReport {
        scheduled,
        ok: shared.ok.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        latency_us: latency,
        dispatch_lag_us: lag,
        window: spec.duration,
        answered_total: shared.answered_total.load(Ordering::Relaxed),
        reopened: shared.reopened.load(Ordering::Relaxed),
        error_samples: std::mem::take(
            &mut *shared.error_samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        ),
    })
}

/// What every worker sends.
struct Request {
    body: Bytes,
    check: Option<Check>,
}

/// The verdict on one outcome: `Ok` for an admitted answer the check (if any) accepts.
fn verdict(
    outcome: &Result<anyhow::Result<Reply>, tokio::time::error::Elapsed>,
    check: Option<&Check>,
) -> Result<(), String> {
    match outcome {
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        Ok(Err(error)) => Err(format!("{error:#}")),
        Ok(Ok(reply)) if !reply.is_admitted() => {
            let body = String::from_utf8_lossy(&reply.body);
            Err(format!("HTTP {}: {}", reply.status, body.chars().take(300).collect::<String>()))
        }
        Ok(Ok(reply)) => check.map_or(Ok(()), |c| (c.0)(reply)),
    }
}

async fn worker(
    addr: SocketAddr,
    tls: Tls,
    conn: Connection,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<(Instant, bool)>>>,
    shared: Arc<Shared>,
    request: Request,
) {
    let mut conn = Some(conn);
    loop {
        let next = { rx.lock().await.recv().await };
        let Some((at, measured)) = next else { break };
        if Instant::now() > shared.give_up {
            if measured {
                shared.failed("still queued when the run's time was up".to_owned());
            }
            continue;
        }
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if conn.as_ref().is_none_or(|c| !c.is_open()) {
                shared.reopened.fetch_add(1, Ordering::Relaxed);
                conn = Some(Connection::open(addr, &tls).await?);
            }
            let c = conn.as_mut().ok_or_else(|| anyhow::anyhow!("no connection"))?;
            c.post(REVIEW_PATH, request.body.clone(), false).await
        })
        .await;
        let admitted = matches!(&outcome, Ok(Ok(reply)) if reply.is_admitted());
        if admitted {
            shared.answered_total.fetch_add(1, Ordering::Relaxed);
        }
        // A connection the server asked to close (`Connection: close`, as while draining) is not
        // used again, as Go's http.Transport does not; nor is one that failed.
        if !matches!(&outcome, Ok(Ok(reply)) if reply.is_admitted() && !reply.close) {
            conn = None;
        }
        if !measured {
            continue;
        }
        match verdict(&outcome, request.check.as_ref()) {
            Ok(()) => {
                shared.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(what) => shared.failed(what),
        }
        let elapsed = Instant::now().saturating_duration_since(at);
        let _ = shared.latency.lock().unwrap_or_else(std::sync::PoisonError::into_inner).record(micros(elapsed));
    }
}

/// Closed loop: every connection sends its next request as soon as the last one is answered, for
/// `duration`. Returns answers per second: the saturation rate, where latency is unbounded, used
/// only to bracket the max-throughput search.
pub async fn saturation(
    addr: SocketAddr,
    tls: &Tls,
    connections: usize,
    body: Bytes,
    duration: Duration,
) -> anyhow::Result<f64> {
    let conns = open_all(addr, tls, connections).await?;
    let end = Instant::now() + duration;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for mut conn in conns {
        let done = done.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                match conn.post(REVIEW_PATH, body.clone(), false).await {
                    Ok(reply) if reply.is_admitted() => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(as_f64(done.load(Ordering::Relaxed)) / duration.as_secs_f64())
}

/// The max-throughput search.
#[derive(Clone, Debug)]
pub struct Search {
    /// The p99 a rate must keep, in milliseconds.
    pub p99_limit_ms: f64,
    /// Length of each probe.
    pub probe: Duration,
    /// Warm-up before each probe.
    pub warmup: Duration,
    /// Bisection steps after bracketing.
    pub steps: u32,
    /// Length of the closed-loop saturation probe.
    pub saturation: Duration,
    /// Keep-alive connections.
    pub connections: usize,
}

/// One probe of a search.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Probe {
    /// The rate tried.
    pub rate: f64,
    /// Its p99, ms.
    pub p99_ms: f64,
    /// Its errors.
    pub errors: u64,
    /// Whether it passed.
    pub passed: bool,
}

/// What the search found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SearchResult {
    /// The closed-loop saturation rate.
    pub saturation: f64,
    /// The highest rate that passed (0 when none did).
    pub max_rate: f64,
    /// The p99 at that rate, ms.
    pub p99_ms_at_max: f64,
    /// Every probe, in order.
    pub probes: Vec<Probe>,
}

/// What sends a search's probes: a closed-loop saturation probe and open-loop runs.
#[allow(async_fn_in_trait, reason = "called on the harness's own current-thread runtime, never sent across threads")]
pub trait Prober {
    /// Answers per second with every connection sending its next request as soon as the last is
    /// answered, for `duration`.
    async fn saturation(&self, connections: usize, body: &Bytes, duration: Duration) -> anyhow::Result<f64>;
    /// One open-loop run.
    async fn open_loop(&self, spec: &OpenLoop) -> anyhow::Result<LoadReport>;
}

/// The harness's own driver as a [`Prober`] (kept to cross-check the search's load generator).
#[derive(Clone, Copy, Debug)]
pub struct OwnDriver<'a> {
    /// The server.
    pub addr: SocketAddr,
    /// How to reach it.
    pub tls: &'a Tls,
}

impl Prober for OwnDriver<'_> {
    async fn saturation(&self, connections: usize, body: &Bytes, duration: Duration) -> anyhow::Result<f64> {
        saturation(self.addr, self.tls, connections, body.clone(), duration).await
    }

    async fn open_loop(&self, spec: &OpenLoop) -> anyhow::Result<LoadReport> {
        open_loop(self.addr, self.tls, spec).await
    }
}

/// The highest rate whose p99 stays within the limit with no errors: bracket with the closed-loop
/// saturation rate, then bisect. What no load generator does; `prober` sends the load.
pub async fn max_throughput(prober: &impl Prober, body: Bytes, search: &Search) -> anyhow::Result<SearchResult> {
    let saturation = prober.saturation(search.connections, &body, search.saturation).await?;
    let mut tried = Vec::new();
    let try_rate = async |rate: f64, tried: &mut Vec<Probe>| -> anyhow::Result<(bool, f64)> {
        let spec = OpenLoop {
            rate,
            duration: search.probe,
            warmup: search.warmup,
            connections: search.connections,
            body: body.clone(),
            check: None,
        };
        let report = prober.open_loop(&spec).await?;
        let p99 = report.latency_ms(0.99);
        let passed = report.errors == 0 && p99 <= search.p99_limit_ms && report.ok == report.scheduled;
        tried.push(Probe { rate, p99_ms: p99, errors: report.errors, passed });
        Ok((passed, p99))
    };
    let mut lo = 0.0f64;
    let mut lo_p99 = f64::NAN;
    let mut hi = (saturation * 1.05).max(10.0);
    // Start the bisection from half the saturation rate, a likely pass, to waste fewer probes.
    let first = (hi / 2.0).round();
    let (ok, p99) = try_rate(first, &mut tried).await?;
    if ok {
        lo = first;
        lo_p99 = p99;
    } else {
        hi = first;
    }
    for _ in 0..search.steps {
        let mid = f64::midpoint(lo, hi).round();
        if mid <= lo || mid >= hi {
            break;
        }
        let (ok, p99) = try_rate(mid, &mut tried).await?;
        if ok {
            lo = mid;
            lo_p99 = p99;
        } else {
            hi = mid;
        }
    }
    Ok(SearchResult { saturation, max_rate: lo, p99_ms_at_max: lo_p99, probes: tried })
}

/// New TLS connections per second: `concurrency` loops, each connecting, completing a full
/// handshake, posting one review with `Connection: close` and reading the answer, for `duration`.
pub async fn handshakes(
    addr: SocketAddr,
    tls: &Tls,
    concurrency: usize,
    body: Bytes,
    duration: Duration,
) -> anyhow::Result<(f64, u64)> {
    let end = Instant::now() + duration;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (done, failed, body, tls) = (done.clone(), failed.clone(), body.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                match crate::client::post_once(addr, &tls, body.clone(), REQUEST_TIMEOUT).await {
                    Ok(reply) if reply.is_admitted() => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok((as_f64(done.load(Ordering::Relaxed)) / duration.as_secs_f64(), failed.load(Ordering::Relaxed)))
}
