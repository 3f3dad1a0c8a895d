//! Hostile pods and peers: "one hostile pod or peer must not stall the webhook".
//!
//! Under 10 KB reviews at 1,000/s (each answer's patch decoded: it must inject `haystack-agent`),
//! with the server's default limits:
//!
//! - pods whose `inject` annotation names 60,000 sidecars (about 400 KB), pods with 30,000 env
//!   annotations (about 1 MB), and both at once, sent every half second on new connections: each is
//!   answered within its deadline (`?timeout=10s`), denied with a message naming the cap;
//! - then, for the second half of the window, 1,100 TCP connections from 11 addresses
//!   (127.0.0.2–127.0.0.12) that never send a byte, each reopened two seconds after the server
//!   closes it: more than the handshake budget, from more addresses than its per-address limit
//!   covers;
//! - throughout, every 100 ms, `/livez` and a normal review on a new connection from 127.0.0.1:
//!   each answered within 1 s, and admitted.
//!
//! Then the same hostile pods against a server with the caps raised far beyond them, so the pods
//! reach the injector's loops: answered within the deadline, and the time each took is the
//! linear-time figure (quadratic code took 5–30 s for these).
//!
//! Bounds: the hostile answers within their 10 s deadline, and the probes within 1 s, are enforced
//! in the short variant too: 1 s is a hundred times a probe's usual time on this machine, so only
//! a real stall misses it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Ctx, Outcome, Scenario, Verdict, admin, check_load};
use bench::client::{Connection, REVIEW_PATH, Reply, Tls, post_once};
use bench::load;
use bench::servers;

const NAMES: usize = 60_000;
const ENV: usize = 30_000;
const SILENT: usize = 1_100;
const SILENT_ADDRESSES: u8 = 11;
const PROBE_EVERY: Duration = Duration::from_millis(100);
const PROBE_BOUND: Duration = Duration::from_secs(1);
/// The hostile reviews' deadline: `REVIEW_PATH` asks for `?timeout=10s`.
const DEADLINE: Duration = Duration::from_secs(10);
const PREFIX: &str = "sidecar-injector.expedia.com/";

/// The caps raised far beyond the hostile pods, for the second server.
const RAISED: [&str; 8] = [
    "--set",
    "limits.maxInjectNames=1000000",
    "--set",
    "limits.maxEnvAnnotations=1000000",
    "--set",
    "limits.maxAnnotationBytes=100000000",
    "--set",
    "annotationEnv.maxVars=1000000",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Names,
    Env,
}

/// The real review with the pod's annotations replaced by a hostile set.
fn hostile(review: &[u8], kind: Kind, uid: &str) -> anyhow::Result<Bytes> {
    let mut review: Value = serde_json::from_slice(review)?;
    let annotations = review
        .pointer_mut("/request/object/metadata/annotations")
        .and_then(Value::as_object_mut)
        .context("the review's pod has no annotations")?;
    match kind {
        Kind::Names => {
            let names: Vec<String> = (0..NAMES).map(|i| format!("s{i}")).collect();
            annotations.insert(format!("{PREFIX}inject"), json!(names.join(",")));
        }
        Kind::Env => {
            for i in 0..ENV {
                annotations.insert(format!("{PREFIX}k{i}"), json!("v"));
            }
        }
    }
    review["request"]["uid"] = json!(uid);
    Ok(Bytes::from(serde_json::to_vec(&review)?))
}

/// Whether the answer's patch adds a container named `name`.
fn injects(reply: &Reply, name: &str) -> Result<(), String> {
    super::injected_container(reply, name).map(drop)
}

/// One hostile review's answer.
#[derive(Debug)]
struct Hostile {
    kinds: Vec<Kind>,
    took: Duration,
    /// HTTP status, `allowed`, and the message or the first warning.
    answer: Result<(u16, bool, String), String>,
}

async fn send_hostile(addr: SocketAddr, tls: &Tls, body: Bytes) -> (Duration, Result<(u16, bool, String), String>) {
    let sent = Instant::now();
    let reply = tokio::time::timeout(DEADLINE + Duration::from_secs(5), async {
        let mut conn = Connection::open(addr, tls).await?;
        conn.post(REVIEW_PATH, body, true).await
    })
    .await;
    let took = sent.elapsed();
    let answer = match reply {
        Ok(Ok(reply)) => {
            let review: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
            let response = &review["response"];
            let text = response["status"]["message"]
                .as_str()
                .or_else(|| response["warnings"][0].as_str())
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            Ok((reply.status.as_u16(), response["allowed"] == true, text))
        }
        Ok(Err(error)) => Err(format!("{error:#}")),
        Err(_) => Err("no answer".to_owned()),
    };
    (took, answer)
}

/// Sends the hostile pods every half second until `until`: names, env, then both at once.
async fn hostile_traffic(addr: SocketAddr, tls: &Tls, review: &[u8], until: Instant) -> anyhow::Result<Vec<Hostile>> {
    let names = hostile(review, Kind::Names, "hostile-names")?;
    let env = hostile(review, Kind::Env, "hostile-env")?;
    let mut out = Vec::new();
    let mut round = 0usize;
    while Instant::now() < until {
        let next = Instant::now() + Duration::from_millis(500);
        match round % 3 {
            0 => {
                let (took, answer) = send_hostile(addr, tls, names.clone()).await;
                out.push(Hostile { kinds: vec![Kind::Names], took, answer });
            }
            1 => {
                let (took, answer) = send_hostile(addr, tls, env.clone()).await;
                out.push(Hostile { kinds: vec![Kind::Env], took, answer });
            }
            _ => {
                let (a, b) = tokio::join!(send_hostile(addr, tls, names.clone()), send_hostile(addr, tls, env.clone()));
                out.push(Hostile { kinds: vec![Kind::Names, Kind::Env], took: a.0, answer: a.1 });
                out.push(Hostile { kinds: vec![Kind::Env, Kind::Names], took: b.0, answer: b.1 });
            }
        }
        round += 1;
        tokio::time::sleep_until(next).await;
    }
    Ok(out)
}

/// What the probes saw.
#[derive(Debug, Default)]
struct Probes {
    sent: usize,
    livez_slowest: Duration,
    review_slowest: Duration,
    failures: Vec<String>,
}

/// `/livez` and a normal review on a new connection every 100 ms until `until`.
async fn probe(admin: SocketAddr, addr: SocketAddr, tls: &Tls, body: Bytes, until: Instant) -> Probes {
    let mut probes = Probes::default();
    while Instant::now() < until {
        let next = Instant::now() + PROBE_EVERY;
        probes.sent += 1;
        let started = Instant::now();
        match admin::get(admin, "/livez").await {
            Ok((200, _)) => {}
            Ok((status, body)) => probes.failures.push(format!("/livez answered {status}: {body}")),
            Err(error) => probes.failures.push(format!("/livez: {error:#}")),
        }
        probes.livez_slowest = probes.livez_slowest.max(started.elapsed());
        let started = Instant::now();
        match post_once(addr, tls, body.clone(), Duration::from_secs(5)).await {
            Ok(reply) => {
                if let Err(why) = injects(&reply, "haystack-agent") {
                    probes.failures.push(format!("a probe review: HTTP {}: {why}", reply.status));
                }
            }
            Err(error) => probes.failures.push(format!("a probe review: {error:#}")),
        }
        probes.review_slowest = probes.review_slowest.max(started.elapsed());
        tokio::time::sleep_until(next).await;
    }
    probes
}

/// 1,100 silent connections from 11 addresses, each reopened two seconds after the server closes
/// it, on a thread and runtime of their own (so they never delay the load generator) until `stop`.
fn silent_flood(addr: SocketAddr, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async move {
            let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..SILENT {
                let (stop, opened) = (stop.clone(), opened.clone());
                let source = std::net::Ipv4Addr::new(
                    127,
                    0,
                    0,
                    2 + u8::try_from(i % usize::from(SILENT_ADDRESSES)).unwrap_or(0),
                );
                tasks.spawn(async move {
                    // Spread the first connections over half a second: a burst of 1,100 SYNs at
                    // once would only measure the kernel's accept queue.
                    tokio::time::sleep(Duration::from_micros(450 * u64::try_from(i).unwrap_or(0))).await;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let Ok(socket) = tokio::net::TcpSocket::new_v4() else { break };
                        if socket.bind(SocketAddr::from((source, 0))).is_err() {
                            break;
                        }
                        if let Ok(mut stream) = socket.connect(addr).await {
                            opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let mut buf = [0u8; 1];
                            // Held until the server closes it (refused, evicted or timed out).
                            let _ = tokio::time::timeout(
                                Duration::from_secs(15),
                                tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
                            )
                            .await;
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            opened.load(std::sync::atomic::Ordering::Relaxed)
        })
    })
}

/// Runs the hostile pods (and, with `flood`, the silent connections) against one server.
struct Phase {
    hostile: Vec<Hostile>,
    probes: Probes,
    load: bench::load::LoadReport,
    silent_opened: usize,
    refusals: String,
}

async fn phase(ctx: &Ctx, server: &servers::Running, tls: &Tls, flood: bool) -> anyhow::Result<Phase> {
    let seconds = ctx.pick(8.0, 30.0);
    // Every real answer must inject the sidecar: the fault tests' load checks that by default.
    let load_spec = ctx.load(1000.0, 1.0, seconds);
    let admin = server.admin.context("no admin address")?;
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs_f64(seconds);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood_task = async {
        if !flood {
            return None;
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(seconds / 2.0)).await;
        Some(silent_flood(server.webhook, stop.clone()))
    };
    let (load, hostile, probes, flood_thread) = tokio::join!(
        load::open_loop(server.webhook, tls, &load_spec),
        hostile_traffic(server.webhook, tls, &ctx.review, end),
        probe(admin, server.webhook, tls, ctx.probe.clone(), end),
        flood_task,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let silent_opened = match flood_thread {
        Some(thread) => tokio::task::spawn_blocking(move || thread.join().unwrap_or(0)).await.unwrap_or(0),
        None => 0,
    };
    let metrics = admin::metrics(admin).await.unwrap_or_default();
    let refusals = metrics
        .lines()
        .filter(|l| l.starts_with("admission_kit_connections_refused_total{"))
        .map(|l| l.trim_start_matches("admission_kit_connections_refused_total").to_owned())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Phase { hostile: hostile?, probes, load: load?, silent_opened, refusals })
}

fn kind_name(kinds: &[Kind]) -> String {
    let one = |k: &Kind| match k {
        Kind::Names => "60,000 names",
        Kind::Env => "30,000 env annotations",
    };
    match kinds {
        [only] => one(only).to_owned(),
        [this, other] => format!("{} (with {} at once)", one(this), one(other)),
        _ => String::new(),
    }
}

/// Checks one phase; `expect` says what a kind's answer must be: allowed, and a piece of its text.
fn judge(v: &mut Verdict, label: &str, phase: &Phase, expect: impl Fn(Kind) -> (bool, &'static str)) -> String {
    check_load(v, &format!("{label}: real traffic (every answer must inject haystack-agent)"), &phase.load);
    let mut slowest: Vec<(String, Duration)> = Vec::new();
    for h in &phase.hostile {
        let (allowed, text) = expect(h.kinds[0]);
        let name = kind_name(&h.kinds);
        match &h.answer {
            Ok((200, a, message)) if *a == allowed && message.contains(text) => {}
            other => {
                v.check(false, || format!("{label}: {name}: expected allowed={allowed} and `{text}`, got {other:?}"));
            }
        }
        v.check(h.took < DEADLINE, || format!("{label}: {name} answered after {:?}, past its 10 s deadline", h.took));
        match slowest.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t = (*t).max(h.took),
            None => slowest.push((name, h.took)),
        }
    }
    v.check(!phase.hostile.is_empty(), || format!("{label}: no hostile pod was sent"));
    let p = &phase.probes;
    v.check(p.failures.is_empty(), || {
        format!("{label}: {} of {} probes failed: {}", p.failures.len(), p.sent, p.failures[0])
    });
    v.check(p.livez_slowest < PROBE_BOUND, || format!("{label}: /livez took {:?}, more than 1 s", p.livez_slowest));
    v.check(p.review_slowest < PROBE_BOUND, || {
        format!("{label}: a normal review on a new connection took {:?}, more than 1 s", p.review_slowest)
    });
    let slowest: Vec<String> = slowest.iter().map(|(n, t)| format!("{n} {:.0} ms", super::ms(*t))).collect();
    format!(
        "{label}: real traffic {} requests, {} failed, p99 {:.2} ms; {} hostile pods, slowest answers: {}; {} probes, slowest /livez {:.1} ms, slowest new-connection review {:.1} ms{}",
        phase.load.scheduled,
        phase.load.errors,
        phase.load.latency_ms(0.99),
        phase.hostile.len(),
        slowest.join(", "),
        p.sent,
        super::ms(p.livez_slowest),
        super::ms(p.review_slowest),
        if phase.silent_opened > 0 {
            format!("; {} silent connections opened, refusals {}", phase.silent_opened, phase.refusals)
        } else {
            String::new()
        }
    )
}

pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let dir = ctx.scenario_dir(Scenario::HostilePods)?;
    let ca = servers::write_certificates(&dir.join("certs"))?;
    let tls = Tls::verifying(&ca)?;
    let spec = ctx.spec(&dir.join("certs"), &dir);
    let mut v = Verdict::new(ctx.short);

    let mut server = ctx.start(&spec, 1, &[], "warn", &tls).await?;
    let defaults = phase(ctx, &server, &tls, true).await?;
    let alive = super::still_serving(ctx, &mut server, &tls).await;
    let log = super::log_text(&server);
    let _ = server.stop();
    let first = judge(&mut v, "default caps", &defaults, |kind| match kind {
        // Both are over the bytes cap (about 400 KB and 1 MB), checked first.
        Kind::Names | Kind::Env => (false, "`limits.maxAnnotationBytes`"),
    });
    v.check(defaults.silent_opened >= SILENT, || {
        format!("only {} silent connections were opened", defaults.silent_opened)
    });
    v.check(alive.is_ok(), || format!("after the default-caps run: {}", alive.clone().err().unwrap_or_default()));
    v.check(!log.contains("panicked"), || "the server's log reports a panic".to_owned());

    let raised: Vec<String> = RAISED.iter().map(ToString::to_string).collect();
    let mut server = ctx.start(&spec, 2, &raised, "warn", &tls).await?;
    let lifted = phase(ctx, &server, &tls, false).await?;
    let alive = super::still_serving(ctx, &mut server, &tls).await;
    let _ = server.stop();
    // With the caps lifted, the names are deduplicated and looked up (the first is unknown: denied,
    // the seed's `unknownSidecar: deny`); the env annotations are injected.
    let second = judge(&mut v, "caps raised", &lifted, |kind| match kind {
        Kind::Names => (false, "is not in the catalog"),
        Kind::Env => (true, ""),
    });
    v.check(alive.is_ok(), || format!("after the raised-caps run: {}", alive.clone().err().unwrap_or_default()));

    let checked = format!(
        "10 KB reviews at 1,000/s (patches decoded: haystack-agent injected) while pods with {NAMES} sidecar names, with {ENV} env annotations, and both at once arrive every 0.5 s on new connections, and (second half) {SILENT} silent connections from {SILENT_ADDRESSES} addresses reopen as the server closes them; every 100 ms `/livez` and a normal review on a new connection: hostile pods answered within their 10 s deadline and denied naming the cap (default caps) or handled (caps raised), probes answered within 1 s and admitted, zero failed real requests; enforced in both variants"
    );
    Ok(v.outcome(Scenario::HostilePods, checked, format!("{first}. {second}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hostile_pods_are_the_sizes_named() {
        let review = bench::corpus::entry(bench::corpus::Size::K10).body;
        let names = hostile(&review, Kind::Names, "u").unwrap();
        assert!(names.len() > 400_000, "{}", names.len());
        let env = hostile(&review, Kind::Env, "u").unwrap();
        let parsed: Value = serde_json::from_slice(&env).unwrap();
        let annotations = parsed["request"]["object"]["metadata"]["annotations"].as_object().unwrap();
        assert!(annotations.len() >= ENV);
        assert_eq!(parsed["request"]["uid"], "u");
    }
}
