//! SIGTERM with a second replica taking over: "SIGTERM under load with a second replica taking
//! over: zero failed requests".
//!
//! Two `sidecar-injector serve` processes (A and B) behind a loopback TCP balancer that does what a
//! Service does for the API server: each new connection goes to one of the backends whose admin
//! `/readyz` answered 200 at the last poll (every 100 ms, as the endpoints controller removes an
//! unready pod; a real cluster takes longer, hence the server's drain delay), round robin; TLS
//! passes through end to end. A rolling restart under 1,000 reviews/s: SIGTERM A; once A has
//! exited start A′ and wait until the balancer sees it ready; SIGTERM B. The load driver never
//! retries a request: a connection is only replaced when the server answered `Connection: close`
//! (as Go's `http.Transport` does), so every failure would count.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::{Ctx, Outcome, Scenario, Verdict, admin, check_load};
use bench::client::Tls;
use bench::load;
use bench::servers::{self, Running};

/// How often the balancer polls each backend's `/readyz`.
const POLL: Duration = Duration::from_millis(100);

/// One backend of the balancer.
#[derive(Debug)]
struct Backend {
    name: String,
    webhook: SocketAddr,
    admin: SocketAddr,
    ready: AtomicBool,
    /// Connections routed to it.
    connections: AtomicU64,
    /// When a poll first found it unready after it had been ready.
    unready_since: Mutex<Option<Instant>>,
}

/// A loopback TCP balancer routing new connections to ready backends, on its own thread.
#[derive(Debug)]
struct Balancer {
    addr: SocketAddr,
    backends: Arc<Mutex<Vec<Arc<Backend>>>>,
    /// Connections that found no ready backend, or whose backend refused them.
    refused: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Balancer {
    fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let backends: Arc<Mutex<Vec<Arc<Backend>>>> = Arc::default();
        let refused = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, r, s) = (backends.clone(), refused.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("balancer".to_owned()).spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else { return };
                tokio::spawn(poll_readiness(b.clone(), s.clone()));
                let mut next = 0usize;
                while !s.load(Ordering::Relaxed) {
                    let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
                    let Ok(Ok((client, _))) = accepted else { continue };
                    let ready: Vec<Arc<Backend>> = {
                        let all = b.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        all.iter().filter(|b| b.ready.load(Ordering::Acquire)).cloned().collect()
                    };
                    if ready.is_empty() {
                        r.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    next = next.wrapping_add(1);
                    let backend = ready[next % ready.len()].clone();
                    let refused = r.clone();
                    tokio::spawn(async move {
                        // As kube-proxy: the connection goes to that endpoint, or fails.
                        let Ok(mut upstream) = TcpStream::connect(backend.webhook).await else {
                            refused.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        backend.connections.fetch_add(1, Ordering::Relaxed);
                        let _ = client.set_nodelay(true);
                        let _ = upstream.set_nodelay(true);
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    });
                }
            });
        })?;
        Ok(Self { addr, backends, refused, stop, thread: Some(thread) })
    }

    fn add(&self, name: &str, server: &Running) -> anyhow::Result<Arc<Backend>> {
        let backend = Arc::new(Backend {
            name: name.to_owned(),
            webhook: server.webhook,
            admin: server.admin.context("no admin address")?,
            ready: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            unready_since: Mutex::new(None),
        });
        self.backends.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(backend.clone());
        Ok(backend)
    }

    /// Waits until the balancer's own poll has seen `backend` ready.
    async fn until_ready(backend: &Backend, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while !backend.ready.load(Ordering::Acquire) {
            anyhow::ensure!(
                start.elapsed() < limit,
                "the balancer did not see {} ready within {limit:?}",
                backend.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Polls every backend's `/readyz` every [`POLL`] (the balancer's view of the endpoints).
async fn poll_readiness(backends: Arc<Mutex<Vec<Arc<Backend>>>>, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(POLL);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let all: Vec<Arc<Backend>> = backends.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for b in all {
            let ready = admin::get(b.admin, "/readyz").await.is_ok_and(|(status, _)| status == 200);
            let was = b.ready.swap(ready, Ordering::AcqRel);
            if was && !ready {
                let mut since = b.unready_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                since.get_or_insert_with(Instant::now);
            }
        }
    }
}

/// SIGTERMs `server` and waits for it to exit: the exit status, when the balancer saw it unready
/// (after the signal), and when it exited.
async fn terminate(server: &mut Running, backend: &Backend, limit: Duration) -> anyhow::Result<Terminated> {
    let sent = Instant::now();
    server.signal("TERM")?;
    loop {
        if let Some(status) = server.exited()? {
            let unready = backend
                .unready_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .map(|t| t.saturating_duration_since(sent));
            let connections_at_exit = backend.connections.load(Ordering::Relaxed);
            return Ok(Terminated {
                success: status.success(),
                status: status.to_string(),
                unready,
                exited: sent.elapsed(),
                connections_at_exit,
            });
        }
        anyhow::ensure!(sent.elapsed() < limit, "{} had not exited {limit:?} after SIGTERM", backend.name);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Terminated {
    success: bool,
    status: String,
    unready: Option<Duration>,
    exited: Duration,
    connections_at_exit: u64,
}

#[allow(clippy::too_many_lines, reason = "one scenario read top to bottom: set-up, fault, checks, figures")]
pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let dir = ctx.scenario_dir(Scenario::SigtermTakeover)?;
    let ca = servers::write_certificates(&dir.join("certs"))?;
    let tls = Tls::verifying(&ca)?;
    let spec = ctx.spec(&dir.join("certs"), &dir);
    // Full: the shipped default drain delay (5 s); short: 2 s, still 20 balancer polls.
    let drain = ctx.pick(Duration::from_secs(2), Duration::from_secs(5));
    let extra = [format!("--set=server.drainDelay={}ms", drain.as_millis())];
    let mut a = ctx.start(&spec, 1, &extra, "info", &tls).await?;
    let mut b = ctx.start(&spec, 2, &extra, "info", &tls).await?;
    let balancer = Balancer::start()?;
    let backend_a = balancer.add("A", &a)?;
    let backend_b = balancer.add("B", &b)?;
    Balancer::until_ready(&backend_a, Duration::from_secs(5)).await?;
    Balancer::until_ready(&backend_b, Duration::from_secs(5)).await?;
    let (seconds, term_a, term_b) = ctx.pick((11.0, 1.5, 6.5), (30.0, 5.0, 18.0));
    let load_spec = ctx.load(1000.0, 1.0, seconds);
    let start = Instant::now() + Duration::from_secs(1);
    let exit_limit = drain + Duration::from_secs(10);
    let rolling = async {
        tokio::time::sleep_until(start + Duration::from_secs_f64(term_a)).await;
        let b_before = backend_b.connections.load(Ordering::Relaxed);
        let first = terminate(&mut a, &backend_a, exit_limit).await?;
        let b_after_a = backend_b.connections.load(Ordering::Relaxed) - b_before;
        let a2 = ctx.start(&spec, 3, &extra, "info", &tls).await?;
        let backend_a2 = balancer.add("A′", &a2)?;
        Balancer::until_ready(&backend_a2, Duration::from_secs(5)).await?;
        tokio::time::sleep_until(start + Duration::from_secs_f64(term_b)).await;
        let a2_before = backend_a2.connections.load(Ordering::Relaxed);
        let second = terminate(&mut b, &backend_b, exit_limit).await?;
        let a2_after_b = backend_a2.connections.load(Ordering::Relaxed) - a2_before;
        anyhow::Ok((first, second, a2, backend_a2, b_after_a, a2_after_b))
    };
    let (report, rolled) = tokio::join!(load::open_loop(balancer.addr, &tls, &load_spec), rolling);
    let report = report?;
    let (first, second, mut a2, backend_a2, b_after_a, a2_after_b) = rolled?;
    let a2_reviews = admin::read(
        backend_a2.admin,
        "admission_kit_requests_total{webhook=\"sidecar-injector.expedia.com\",operation=\"CREATE\",result=\"patched\"}",
    )
    .await
    .unwrap_or(0.0);
    let alive = super::still_serving(ctx, &mut a2, &tls).await;
    let refused = balancer.refused.load(Ordering::Relaxed);
    let log_a = super::log_text(&a);
    drop(balancer);
    let _ = a2.stop();
    let _ = a.stop();
    let _ = b.stop();

    let mut v = Verdict::new(ctx.short);
    check_load(&mut v, "load during the rolling restart", &report);
    for (name, t) in [("A", &first), ("B", &second)] {
        v.check(t.success, || format!("{name} exited with {} after SIGTERM", t.status));
        v.check(t.unready.is_some(), || format!("the balancer never saw {name} unready before it exited"));
    }
    v.check(log_a.contains("draining: unready, still serving"), || "A's log has no `draining` line".to_owned());
    v.check(b_after_a > 0, || "no new connection went to B after A's SIGTERM".to_owned());
    v.check(a2_after_b > 0 && a2_reviews > 0.0, || {
        format!("A′ did not take over after B's SIGTERM ({a2_after_b} connections, {a2_reviews} reviews)")
    });
    v.check(refused == 0, || format!("{refused} connections found no ready backend or were refused by one"));
    v.check(alive.is_ok(), || format!("A′ after the test: {}", alive.clone().err().unwrap_or_default()));
    let describe = |t: &Terminated| {
        format!(
            "unready seen after {}, exited after {:.2} s ({}; {} connections routed to it in all)",
            t.unready.map_or_else(|| "never".to_owned(), |d| format!("{:.0} ms", super::ms(d))),
            t.exited.as_secs_f64(),
            t.status,
            t.connections_at_exit
        )
    };
    let figures = format!(
        "{} requests at 1,000/s through the balancer, {} failed, 0 retries (the driver never resends); {} connections reopened after `Connection: close`; A: {}; B: {}; after A's SIGTERM B got {b_after_a} new connections, after B's A′ got {a2_after_b} ({a2_reviews} reviews in all); connections without a ready backend: {refused}; p99 {:.2} ms, max {:.1} ms",
        report.scheduled,
        report.errors,
        report.reopened,
        describe(&first),
        describe(&second),
        report.latency_ms(0.99),
        report.latency_ms(1.0),
    );
    let checked = format!(
        "rolling restart of 2 replicas behind a loopback balancer routing new connections to backends whose `/readyz` was 200 at its last poll (every {} ms), drain delay {} s: SIGTERM A, start A′, SIGTERM B, all under 1,000 reviews/s; zero failed requests with no retries; both exit 0; the other replica takes the new connections",
        POLL.as_millis(),
        drain.as_secs(),
    );
    Ok(v.outcome(Scenario::SigtermTakeover, checked, figures))
}
