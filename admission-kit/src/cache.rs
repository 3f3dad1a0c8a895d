//! Watch caches: what mutators and matchers read on the admission path instead of calling the API
//! server (no GET per admission; see
//! <https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>).
//!
//! [`watch`] fills a kube-runtime reflector [`Store`] from a list and a watch, and returns it with
//! the cache's [`CacheHealth`]; [`watch_into`] feeds the same events to an [`EventSink`] of your
//! own instead (a cache of values derived from the objects, built once per change rather than on
//! every admission). Give the health to [`crate::server::Server::cache`], which keeps the
//! server unready until the first list has loaded, exposes the cache's health as metrics, and
//! turns readiness off when the cache has been out of contact with the API server for longer than
//! [`crate::server::ServerConfig::cache_max_staleness`].
//!
//! # When the API server cannot be reached
//!
//! A cache keeps its last contents through any failure: the store is only replaced by a complete
//! new list, never emptied by an error, so the webhook goes on answering from it. What happens:
//!
//! - **The list or watch fails** (connection refused, TLS or network error, 403 after an RBAC
//!   change, 5xx): the cache counts the error, logs one `warn` naming it (later errors of the same
//!   outage are logged at `debug`, not once per retry), and starts again after kube-runtime's
//!   [`watcher::DefaultBackoff`] (client-go's: 0.8 s doubling to 30 s, with jitter). Starting again
//!   means a fresh list then a watch: a list that completes is the one moment the cache is known to
//!   be current again, so that is when it counts as back in contact (one `info` log). A `410 Gone`
//!   is not a failure: the API server answered, and the watcher relists by itself.
//! - **The API server stops answering** without closing the connection (a hung process, a network
//!   partition that drops packets): a quiet watch shows nothing of it, so while a watch is
//!   established the cache checks every [`PROBE_INTERVAL`] that the API server still answers a
//!   one-item metadata list of the same resource and selectors (the `list` verb, so a revoked
//!   permission shows too), allowing [`PROBE_TIMEOUT`]. A failed check makes the cache out of
//!   contact the same way; the next successful check, or an event from the watch, ends it. A list
//!   in progress that pauses for [`LIST_IDLE_TIMEOUT`] is abandoned and started again.
//!
//! - **The API server lets the cache list but not watch** (an RBAC role with `get` and `list` on
//!   the resource, but no `watch`, as some charts grant): the list completes, then the watch is
//!   refused with `403 Forbidden`. That is no outage: the cache logs one `warn` saying so, and lists
//!   again every [`POLL_INTERVAL`] instead of watching, each completed list being contact (so the
//!   cache is at most that old). Once the role grants `watch`, the next list is followed by a watch.
//!
//! "Out of contact since" is the last time the API server answered the cache (an event, a completed
//! list or a successful check), so at most [`PROBE_INTERVAL`] before it stopped answering.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt as _};
use kube::Api;
use kube::api::ListParams;
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::de::DeserializeOwned;

use crate::metrics::{CacheLabels, Metrics};

/// How often a cache with an established watch checks that the API server still answers it.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long that check may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause within a list (between its pages) before the list is abandoned and started again.
pub const LIST_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a cache lists again when it may list but not watch (see the module's documentation).
pub const POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Starts a reflector over `api` with `config` (label selectors, …). Returns the store and the
/// cache's health (its first sync, contact with the API server, errors); hand the health to
/// [`crate::server::Server::cache`]. `what` names the cache in logs, metrics and `/readyz`.
///
/// Needs a tokio runtime; the watch runs in a task of its own for the life of the process.
#[must_use]
pub fn watch<K>(api: Api<K>, config: watcher::Config, what: &'static str) -> (Store<K>, CacheHealth)
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let writer = Writer::<K>::default();
    let reader = writer.as_reader();
    (reader, watch_into(api, config, what, writer))
}

/// Where a watch's events go: kube-runtime's reflector [`Writer`], or a cache of your own that
/// keeps something derived from each object (parsed once per change, not on every admission).
///
/// Events arrive in the watcher's order: [`watcher::Event::Init`], [`watcher::Event::InitApply`]
/// for every listed object, [`watcher::Event::InitDone`], then [`watcher::Event::Apply`] and
/// [`watcher::Event::Delete`]; a relist (after a failure or a `410 Gone`) starts again at `Init`,
/// and a sink that buffers the `InitApply` objects and swaps them in at `InitDone` drops every
/// object deleted while the watch was down.
pub trait EventSink<K>: Send + 'static {
    /// Takes one event.
    fn apply(&mut self, event: &watcher::Event<K>);
}

impl<K> EventSink<K> for Writer<K>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    fn apply(&mut self, event: &watcher::Event<K>) {
        self.apply_watcher_event(event);
    }
}

/// [`watch`], with the events going to `sink` instead of a reflector store.
///
/// Needs a tokio runtime; the watch runs in a task of its own for the life of the process.
#[must_use]
pub fn watch_into<K, S>(api: Api<K>, config: watcher::Config, what: &'static str, sink: S) -> CacheHealth
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    S: EventSink<K>,
{
    let health = CacheHealth::new(what);
    let probe_params = ListParams {
        label_selector: config.label_selector.clone(),
        field_selector: config.field_selector.clone(),
        limit: Some(1),
        ..ListParams::default()
    };
    let probe_api = api.clone();
    let probe = move || -> BoxFuture<Result<(), String>> {
        let (api, params) = (probe_api.clone(), probe_params.clone());
        Box::pin(async move { api.list_metadata(&params).await.map(drop).map_err(|e| describe_kube_error(&e)) })
    };
    let watch = move || watcher::watcher(api.clone(), config.clone());
    tokio::spawn(run(sink, health.clone(), watch, probe, watcher::DefaultBackoff::default(), Timing::default()));
    health
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A kube error for people: the API server's status as `403 Forbidden: <message>`, anything else
/// with its sources (where the useful part, such as "Connection refused", often is).
fn describe_kube_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} {}: {}", status.code, status.reason, status.message),
        other => crate::error_chain(other),
    }
}

/// A watcher error for people (see [`describe_kube_error`]).
fn describe_watcher_error(error: &watcher::Error) -> String {
    match error {
        watcher::Error::InitialListFailed(e) => format!("list failed: {}", describe_kube_error(e)),
        watcher::Error::WatchStartFailed(e) => format!("watch failed to start: {}", describe_kube_error(e)),
        watcher::Error::WatchFailed(e) => format!("watch failed: {}", describe_kube_error(e)),
        watcher::Error::WatchError(status) => {
            format!("watch ended by the API server: {} {}: {}", status.code, status.reason, status.message)
        }
        watcher::Error::NoResourceVersion => crate::error_chain(error),
    }
}

/// The timings of [`run`] (constants in production, short in tests).
#[derive(Clone, Copy, Debug)]
struct Timing {
    probe_interval: Duration,
    probe_timeout: Duration,
    list_idle_timeout: Duration,
    poll_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            probe_interval: PROBE_INTERVAL,
            probe_timeout: PROBE_TIMEOUT,
            list_idle_timeout: LIST_IDLE_TIMEOUT,
            poll_interval: POLL_INTERVAL,
        }
    }
}

/// Runs watchers made by `make_watch` into `sink` for ever: each until it fails, then, after the
/// backoff, a fresh one (which lists first). Probes with `probe` while a watch is established.
async fn run<K, E, W, S, P>(
    mut sink: E,
    health: CacheHealth,
    make_watch: W,
    probe: P,
    mut backoff: impl Backoff,
    timing: Timing,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
    E: EventSink<K>,
    W: Fn() -> S,
    S: Stream<Item = watcher::Result<watcher::Event<K>>>,
    P: Fn() -> BoxFuture<Result<(), String>>,
{
    let mut polling = false;
    loop {
        match watch_until_failure(&mut sink, &health, make_watch(), &probe, timing).await {
            Ended::WatchForbidden(error) => {
                // The list just completed, so the cache is current: poll, do not back off.
                if polling {
                    tracing::debug!(cache = health.name(), "listed again; the watch is still forbidden");
                } else {
                    tracing::warn!(
                        cache = health.name(),
                        %error,
                        interval = ?timing.poll_interval,
                        "the API server lets this cache list but not watch (the role grants `list` without `watch`); listing again at this interval instead, so changes take up to that long to arrive (grant `watch` to see them at once)"
                    );
                    polling = true;
                }
                backoff.reset();
                tokio::time::sleep(timing.poll_interval).await;
            }
            Ended::Failed(error) => {
                // A new outage starts from the shortest delay; within one, the delay grows.
                if health.failed(FailureKind::Watch, error) {
                    backoff.reset();
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Why one watcher stopped.
enum Ended {
    /// The list or the watch failed; the message names the error.
    Failed(String),
    /// The list completed, then the watch was refused with `403 Forbidden`.
    WatchForbidden(String),
}

/// Whether `error` is the API server refusing a watch (not a list) with `403 Forbidden`.
fn watch_forbidden(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchError(status) => status.code == 403,
        _ => false,
    }
}

/// Feeds one watcher's events to `sink` and `health` until it fails; returns how it ended.
async fn watch_until_failure<K, E, S, P>(
    sink: &mut E,
    health: &CacheHealth,
    stream: S,
    probe: &P,
    timing: Timing,
) -> Ended
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
    E: EventSink<K>,
    S: Stream<Item = watcher::Result<watcher::Event<K>>>,
    P: Fn() -> BoxFuture<Result<(), String>>,
{
    use tokio::time::{Instant as TokioInstant, sleep_until};
    let mut stream = std::pin::pin!(stream);
    // Until this watcher's list completes: the list must keep moving; no probes.
    let mut listing = true;
    let mut last_event = TokioInstant::now();
    let mut next_probe = TokioInstant::now() + timing.probe_interval;
    let mut probing: Option<BoxFuture<Result<Result<(), String>, tokio::time::error::Elapsed>>> = None;
    loop {
        let (probe_running, probe_wanted) = (probing.is_some(), !listing && probing.is_none());
        tokio::select! {
            event = stream.next() => {
                last_event = TokioInstant::now();
                match event {
                    Some(Ok(event)) => {
                        sink.apply(&event);
                        match event {
                            watcher::Event::Init => {
                                listing = true;
                                health.seen(Seen::ListStarted);
                            }
                            watcher::Event::InitDone => {
                                listing = false;
                                next_probe = TokioInstant::now() + timing.probe_interval;
                                health.seen(Seen::Listed);
                            }
                            watcher::Event::InitApply(_) | watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                                health.seen(Seen::Data);
                            }
                        }
                    }
                    Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                        // The API server answered: our resource version is too old. The watcher
                        // relists by itself; the store keeps its contents until that list is done.
                        tracing::debug!(cache = health.name(), "watch expired (410 Gone); relisting");
                        listing = true;
                    }
                    Some(Err(error)) if !listing && watch_forbidden(&error) => {
                        return Ended::WatchForbidden(describe_watcher_error(&error));
                    }
                    Some(Err(error)) => return Ended::Failed(describe_watcher_error(&error)),
                    None => return Ended::Failed("the watch stream ended".to_owned()),
                }
            }
            () = sleep_until(last_event + timing.list_idle_timeout), if listing => {
                return Ended::Failed(format!("no answer to the list for {:?}", timing.list_idle_timeout));
            }
            () = sleep_until(next_probe), if probe_wanted => {
                probing = Some(Box::pin(tokio::time::timeout(timing.probe_timeout, probe())));
            }
            result = async { if let Some(check) = probing.as_mut() { check.await } else { std::future::pending().await } }, if probe_running => {
                probing = None;
                next_probe = TokioInstant::now() + timing.probe_interval;
                match result {
                    Ok(Ok(())) => {
                        health.seen(Seen::ProbeAnswered);
                    }
                    Ok(Err(error)) => {
                        health.failed(FailureKind::Probe, format!("contact check (list) failed: {error}"));
                    }
                    Err(_) => {
                        health.failed(
                            FailureKind::Probe,
                            format!("contact check (list) got no answer within {:?}", timing.probe_timeout),
                        );
                    }
                }
            }
        }
    }
}

/// What made a cache lose contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// A contact check failed while the watch was established: an event or a successful check ends it.
    Probe,
    /// The list or watch failed: only a completed new list ends it.
    Watch,
}

/// Evidence of contact, from the watcher or a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A (re)list began (no contact yet: kube-runtime says so before asking).
    ListStarted,
    /// An object from a list page or the watch.
    Data,
    /// A list completed: the store now holds it.
    Listed,
    /// A contact check was answered.
    ProbeAnswered,
}

/// When the API server last answered a cache, if it ever did.
#[derive(Clone, Copy, Debug)]
struct Moment {
    at: Instant,
    wall: SystemTime,
}

impl Moment {
    fn now() -> Self {
        Self { at: Instant::now(), wall: SystemTime::now() }
    }
}

#[derive(Debug)]
struct Failure {
    kind: FailureKind,
    error: String,
    first: Moment,
}

/// Metric handles of one server the cache reports to.
#[derive(Debug)]
struct Sink {
    healthy: Gauge,
    last_contact: Gauge<f64, std::sync::atomic::AtomicU64>,
    errors: Counter,
}

#[derive(Debug)]
struct State {
    synced: bool,
    /// The current watcher has listed (a watch is established or being re-established by it).
    established: bool,
    last_contact: Option<Moment>,
    failure: Option<Failure>,
    errors: u64,
    sinks: Vec<Sink>,
}

impl State {
    fn healthy(&self) -> bool {
        self.synced && self.failure.is_none()
    }

    fn publish(&self) {
        for sink in &self.sinks {
            sink.healthy.set(i64::from(self.healthy()));
            if let Some(contact) = self.last_contact {
                sink.last_contact.set(unix_seconds(contact.wall));
            }
        }
    }
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Debug)]
struct Inner {
    name: String,
    started: Moment,
    state: Mutex<State>,
    synced: tokio::sync::watch::Sender<bool>,
}

/// The health of one watch cache: whether its first list has loaded, when the API server last
/// answered it, and the error it is failing with, if any. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct CacheHealth(Arc<Inner>);

/// A cache's health at one moment, for readiness and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStatus {
    /// The cache's name.
    pub cache: String,
    /// Whether its first list has loaded.
    pub synced: bool,
    /// When the API server last answered it.
    pub last_contact: Option<SystemTime>,
    /// Set while it is out of contact.
    pub out_of_contact: Option<OutOfContact>,
    /// Failed lists, watches and contact checks so far.
    pub errors: u64,
}

/// How long and why a cache has been out of contact with the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutOfContact {
    /// The last contact (or, if there was none, when the cache started).
    pub since: SystemTime,
    /// Time since then.
    pub elapsed: Duration,
    /// The latest error.
    pub error: String,
}

impl CacheHealth {
    /// The health of a new cache named `name`: not synced, never in contact.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self(Arc::new(Inner {
            name: name.into(),
            started: Moment::now(),
            state: Mutex::new(State {
                synced: false,
                established: false,
                last_contact: None,
                failure: None,
                errors: 0,
                sinks: Vec::new(),
            }),
            synced: tokio::sync::watch::channel(false).0,
        }))
    }

    /// The cache's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Resolves once the cache's first list has loaded (a readiness gate).
    pub fn synced(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut synced = self.0.synced.subscribe();
        async move {
            // The sender lives as long as any handle to this health, which this future does not
            // keep: if every handle is gone, so is the cache, and waiting would be forever.
            let _ = synced.wait_for(|synced| *synced).await;
        }
    }

    /// The health now.
    #[must_use]
    pub fn status(&self) -> CacheStatus {
        self.status_at(Instant::now())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn status_at(&self, now: Instant) -> CacheStatus {
        let state = self.state();
        let out_of_contact = state.failure.as_ref().map(|failure| {
            let since = state.last_contact.unwrap_or(self.0.started);
            OutOfContact {
                since: since.wall,
                elapsed: now.saturating_duration_since(since.at),
                error: failure.error.clone(),
            }
        });
        CacheStatus {
            cache: self.0.name.clone(),
            synced: state.synced,
            last_contact: state.last_contact.map(|c| c.wall),
            out_of_contact,
            errors: state.errors,
        }
    }

    /// Reports to `metrics` from now on (`admission_kit_cache_*{cache="<name>"}`), starting from
    /// what is known so far. Attach each cache to a given `Metrics` once.
    pub fn attach_metrics(&self, metrics: &Metrics) {
        let labels = CacheLabels { cache: self.0.name.clone() };
        let sink = Sink {
            healthy: metrics.cache_healthy.get_or_create(&labels).clone(),
            last_contact: metrics.cache_last_contact.get_or_create(&labels).clone(),
            errors: metrics.cache_watch_errors.get_or_create(&labels).clone(),
        };
        let mut state = self.state();
        sink.errors.inc_by(state.errors);
        state.sinks.push(sink);
        state.publish();
    }

    /// Records evidence of contact. Returns whether it ended an outage.
    pub(crate) fn seen(&self, seen: Seen) -> bool {
        self.seen_at(seen, Moment::now())
    }

    fn seen_at(&self, seen: Seen, now: Moment) -> bool {
        let mut state = self.state();
        let failing = state.failure.as_ref().map(|f| f.kind);
        let contact = match seen {
            Seen::ListStarted => {
                state.established = false;
                false
            }
            Seen::Listed => {
                state.established = true;
                if !state.synced {
                    state.synced = true;
                    self.0.synced.send_replace(true);
                }
                true
            }
            // While a list is in progress after a failed one, objects arriving say nothing about
            // whether the cache is current: only the completed list does.
            Seen::Data => state.established && failing != Some(FailureKind::Watch),
            Seen::ProbeAnswered => failing != Some(FailureKind::Watch),
        };
        if !contact {
            return false;
        }
        state.last_contact = Some(now);
        let recovered = state.failure.take();
        if let Some(failure) = &recovered {
            tracing::info!(
                cache = self.name(),
                out_of_contact_for = ?now.at.saturating_duration_since(failure.first.at),
                errors = state.errors,
                "watch cache back in contact with the API server"
            );
        }
        state.publish();
        recovered.is_some()
    }

    /// Records a failure. Returns whether it started an outage.
    pub(crate) fn failed(&self, kind: FailureKind, error: String) -> bool {
        self.failed_at(kind, error, Moment::now())
    }

    fn failed_at(&self, kind: FailureKind, error: String, now: Moment) -> bool {
        let mut state = self.state();
        state.errors += 1;
        for sink in &state.sinks {
            sink.errors.inc();
        }
        if kind == FailureKind::Watch {
            state.established = false;
        }
        let started = if let Some(failure) = &mut state.failure {
            tracing::debug!(cache = self.name(), %error, "watch cache still out of contact; retrying");
            if kind == FailureKind::Watch {
                failure.kind = FailureKind::Watch;
            }
            failure.error = error;
            false
        } else {
            let last_contact = state.last_contact.map(|c| now.at.saturating_duration_since(c.at));
            if state.synced {
                tracing::warn!(
                    cache = self.name(),
                    %error,
                    last_contact_ago = ?last_contact,
                    "watch cache lost contact with the API server; serving its last contents and retrying with backoff"
                );
            } else {
                tracing::warn!(
                    cache = self.name(),
                    %error,
                    "watch cache cannot load its first list; not ready until it does, retrying with backoff"
                );
            }
            state.failure = Some(Failure { kind, error, first: now });
            true
        };
        state.publish();
        started
    }
}

/// Formats a duration for people: `750ms`, `2.4s`, `12s`, `4m5s`, `2h3m` (tenths of a second
/// below 10 s, so that 2.4 s out of contact does not read as the 2 s allowed).
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs == 0 && !duration.is_zero() {
        return format!("{}ms", duration.as_millis());
    }
    let tenths = duration.subsec_millis() / 100;
    if secs < 10 && tenths > 0 {
        return format!("{secs}.{tenths}s");
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// A time as RFC 3339 in UTC, to the second.
#[must_use]
pub fn format_time(time: SystemTime) -> String {
    use k8s_openapi::jiff::Timestamp;
    Timestamp::try_from(time)
        .and_then(|t| Timestamp::from_second(t.as_second()))
        .map_or_else(|_| format!("{time:?}"), |t| t.to_string())
}

#[cfg(test)]
mod tests;
