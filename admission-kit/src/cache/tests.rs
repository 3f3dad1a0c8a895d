use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};

use futures::channel::mpsc;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;

use super::*;

fn at(start: Moment, secs: u64) -> Moment {
    Moment { at: start.at + Duration::from_secs(secs), wall: start.wall + Duration::from_secs(secs) }
}

#[test]
fn health_follows_contact_failures_and_recovery() {
    let health = CacheHealth::new("things");
    let t0 = health.0.started;
    let status = health.status_at(t0.at);
    assert_eq!((status.synced, status.last_contact, status.out_of_contact, status.errors), (false, None, None, 0));

    // The first list fails: out of contact since the cache started, not synced.
    assert!(health.failed_at(FailureKind::Watch, "connection refused".into(), at(t0, 1)));
    assert!(!health.failed_at(FailureKind::Watch, "403 forbidden".into(), at(t0, 2)), "one outage, not two");
    let status = health.status_at(at(t0, 3).at);
    assert!(!status.synced);
    let lost = status.out_of_contact.unwrap();
    assert_eq!((lost.since, lost.elapsed, lost.error.as_str()), (t0.wall, Duration::from_secs(3), "403 forbidden"));
    assert_eq!(status.errors, 2);

    // Objects of a list in progress are no proof of being current; the completed list is.
    assert!(!health.seen_at(Seen::ListStarted, at(t0, 4)));
    assert!(!health.seen_at(Seen::Data, at(t0, 4)));
    assert!(health.status_at(at(t0, 4).at).out_of_contact.is_some());
    assert!(health.seen_at(Seen::Listed, at(t0, 5)), "the list ends the outage");
    let status = health.status_at(at(t0, 6).at);
    assert!(status.synced && status.out_of_contact.is_none());
    assert_eq!(status.last_contact, Some(at(t0, 5).wall));

    // Watch events and answered checks are contact.
    assert!(!health.seen_at(Seen::Data, at(t0, 20)));
    assert!(!health.seen_at(Seen::ProbeAnswered, at(t0, 30)));
    assert_eq!(health.status_at(at(t0, 31).at).last_contact, Some(at(t0, 30).wall));

    // A failed check: out of contact since the last answer; the next answer ends it.
    assert!(health.failed_at(FailureKind::Probe, "no answer within 10s".into(), at(t0, 40)));
    let lost = health.status_at(at(t0, 45).at).out_of_contact.unwrap();
    assert_eq!((lost.since, lost.elapsed), (at(t0, 30).wall, Duration::from_secs(15)));
    assert!(health.seen_at(Seen::ProbeAnswered, at(t0, 50)));
    assert!(health.status_at(at(t0, 51).at).out_of_contact.is_none());

    // An event from the established watch also ends a failed check's outage.
    health.failed_at(FailureKind::Probe, "no answer".into(), at(t0, 60));
    assert!(health.seen_at(Seen::Data, at(t0, 61)));

    // Once the watch itself failed, neither a check nor a stray event ends it: only a new list.
    health.failed_at(FailureKind::Probe, "no answer".into(), at(t0, 70));
    assert!(!health.failed_at(FailureKind::Watch, "watch stream failed".into(), at(t0, 71)));
    assert!(!health.seen_at(Seen::ProbeAnswered, at(t0, 72)));
    assert!(!health.seen_at(Seen::Data, at(t0, 72)));
    let lost = health.status_at(at(t0, 80).at).out_of_contact.unwrap();
    assert_eq!((lost.since, lost.error.as_str()), (at(t0, 61).wall, "watch stream failed"));
    health.seen_at(Seen::ListStarted, at(t0, 90));
    assert!(health.seen_at(Seen::Listed, at(t0, 91)));
    let status = health.status_at(at(t0, 92).at);
    assert!(status.synced && status.out_of_contact.is_none());
    assert_eq!(status.errors, 6);
}

#[tokio::test]
async fn synced_resolves_at_the_first_list() {
    let health = CacheHealth::new("things");
    let synced = tokio::spawn(health.synced());
    tokio::task::yield_now().await;
    assert!(!synced.is_finished());
    health.failed(FailureKind::Watch, "refused".into());
    health.seen(Seen::Listed);
    tokio::time::timeout(Duration::from_secs(5), synced).await.unwrap().unwrap();
    // Later waiters resolve at once.
    tokio::time::timeout(Duration::from_secs(5), health.synced()).await.unwrap();
}

fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(line_prefix)).map(|v| v.trim().parse().unwrap())
}

#[test]
fn metrics_report_health_contact_and_errors() {
    let health = CacheHealth::new("things");
    health.failed(FailureKind::Watch, "refused".into());
    // Attached after an error: the count so far is carried over.
    let metrics = Metrics::new();
    health.attach_metrics(&metrics);
    let text = metrics.encode();
    assert_eq!(metric(&text, "admission_kit_cache_healthy{cache=\"things\"} "), Some(0.0), "{text}");
    assert_eq!(metric(&text, "admission_kit_cache_watch_errors_total{cache=\"things\"} "), Some(1.0), "{text}");
    assert_eq!(metric(&text, "admission_kit_cache_last_contact_timestamp_seconds{cache=\"things\"} "), Some(0.0));

    health.seen(Seen::Listed);
    let text = metrics.encode();
    assert_eq!(metric(&text, "admission_kit_cache_healthy{cache=\"things\"} "), Some(1.0), "{text}");
    let contact = metric(&text, "admission_kit_cache_last_contact_timestamp_seconds{cache=\"things\"} ").unwrap();
    assert!((contact - unix_seconds(SystemTime::now())).abs() < 60.0, "{text}");

    health.failed(FailureKind::Probe, "no answer".into());
    health.failed(FailureKind::Probe, "no answer".into());
    let text = metrics.encode();
    assert_eq!(metric(&text, "admission_kit_cache_healthy{cache=\"things\"} "), Some(0.0), "{text}");
    assert_eq!(metric(&text, "admission_kit_cache_watch_errors_total{cache=\"things\"} "), Some(3.0), "{text}");
}

#[test]
fn durations_and_times_read_well() {
    assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    assert_eq!(format_duration(Duration::ZERO), "0s");
    assert_eq!(format_duration(Duration::from_millis(2_450)), "2.4s");
    assert_eq!(format_duration(Duration::from_millis(2_050)), "2s");
    assert_eq!(format_duration(Duration::from_millis(12_900)), "12s");
    assert_eq!(format_duration(Duration::from_secs(12)), "12s");
    assert_eq!(format_duration(Duration::from_secs(600)), "10m");
    assert_eq!(format_duration(Duration::from_secs(245)), "4m5s");
    assert_eq!(format_duration(Duration::from_secs(7380)), "2h3m");
    assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
    assert_eq!(format_time(time), "2023-11-14T22:13:20Z");
}

// The watch loop, driven by a scripted watcher and contact check.

fn config_map(name: &str, version: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.metadata.namespace = Some("team".into());
    cm.metadata.resource_version = Some(version.into());
    cm
}

type Sender = mpsc::UnboundedSender<watcher::Result<Event<ConfigMap>>>;
type Receiver = mpsc::UnboundedReceiver<watcher::Result<Event<ConfigMap>>>;

/// Watchers the loop will start, in order; each is fed by the returned senders.
struct Script {
    watchers: Arc<Mutex<VecDeque<Receiver>>>,
    started: Arc<std::sync::atomic::AtomicUsize>,
}

impl Script {
    fn new(count: usize) -> (Self, Vec<Sender>) {
        let (senders, receivers): (Vec<_>, VecDeque<_>) = (0..count).map(|_| mpsc::unbounded()).unzip();
        let script = Self { watchers: Arc::new(Mutex::new(receivers)), started: Arc::default() };
        (script, senders)
    }

    fn make_watch(
        &self,
    ) -> impl Fn() -> futures::stream::BoxStream<'static, watcher::Result<Event<ConfigMap>>> + use<> {
        let (watchers, started) = (self.watchers.clone(), self.started.clone());
        move || {
            started.fetch_add(1, Ordering::SeqCst);
            match watchers.lock().unwrap().pop_front() {
                Some(receiver) => receiver.boxed(),
                None => futures::stream::pending().boxed(),
            }
        }
    }
}

const ANSWER: u8 = 0;
const REFUSE: u8 = 1;
const HANG: u8 = 2;

fn scripted_probe(mode: Arc<AtomicU8>) -> impl Fn() -> BoxFuture<Result<(), String>> {
    move || {
        let mode = mode.load(Ordering::SeqCst);
        Box::pin(async move {
            match mode {
                ANSWER => Ok(()),
                REFUSE => Err("403 forbidden".to_owned()),
                _ => std::future::pending().await,
            }
        })
    }
}

fn fast() -> Timing {
    Timing {
        probe_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_millis(100),
        list_idle_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_secs(2),
    }
}

/// Polls `condition` (in tokio's paused time) until it holds, or fails after a minute.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn names(store: &Store<ConfigMap>) -> Vec<String> {
    let mut names: Vec<String> = store.state().iter().map(|cm| cm.metadata.name.clone().unwrap()).collect();
    names.sort();
    names
}

/// Runs the watch loop over `script`'s watchers into a reflector store, with the contact check
/// answering as `mode` says and fast timings; returns the store and the cache's health.
fn spawn_loop(script: &Script, mode: Arc<AtomicU8>) -> (Store<ConfigMap>, CacheHealth) {
    let writer = Writer::<ConfigMap>::default();
    let store = writer.as_reader();
    let health = CacheHealth::new("configmaps");
    tokio::spawn(run(
        writer,
        health.clone(),
        script.make_watch(),
        scripted_probe(mode),
        watcher::DefaultBackoff::default(),
        fast(),
    ));
    (store, health)
}

#[tokio::test(start_paused = true)]
async fn a_failed_watch_keeps_the_contents_and_relists_after_backoff() {
    let mode = Arc::new(AtomicU8::new(ANSWER));
    let (script, senders) = Script::new(3);
    let (store, health) = spawn_loop(&script, mode);
    let send = |i: usize, event| senders[i].unbounded_send(event).unwrap();

    send(0, Ok(Event::Init));
    send(0, Ok(Event::InitApply(config_map("a", "1"))));
    send(0, Ok(Event::InitDone));
    send(0, Ok(Event::Apply(config_map("b", "2"))));
    until("synced with a and b", || health.status().synced && names(&store) == ["a", "b"]).await;

    // The watch fails: the contents stay, the cache is out of contact with the error.
    send(0, Err(watcher::Error::NoResourceVersion));
    until("out of contact", || health.status().out_of_contact.is_some()).await;
    assert!(health.status().out_of_contact.unwrap().error.contains("no metadata.resourceVersion"));
    assert_eq!(names(&store), ["a", "b"]);

    // The next watcher's list fails too (the same outage); then one lists, and only its
    // completion ends the outage and replaces the contents.
    until("second watcher", || script.started.load(Ordering::SeqCst) == 2).await;
    send(1, Ok(Event::Init));
    send(1, Err(watcher::Error::NoResourceVersion));
    until("third watcher", || script.started.load(Ordering::SeqCst) == 3).await;
    send(2, Ok(Event::Init));
    send(2, Ok(Event::InitApply(config_map("c", "3"))));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(health.status().out_of_contact.is_some(), "a list in progress does not end the outage");
    assert_eq!(names(&store), ["a", "b"], "readers see the old contents until the list completes");
    send(2, Ok(Event::InitDone));
    until("back in contact", || health.status().out_of_contact.is_none()).await;
    assert_eq!(names(&store), ["c"]);
    assert_eq!(health.status().errors, 2);
    assert!(store.get(&ObjectRef::new("c").within("team")).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_failed_check_puts_the_cache_out_of_contact_until_answered_and_410_is_no_failure() {
    let mode = Arc::new(AtomicU8::new(ANSWER));
    let (script, senders) = Script::new(1);
    let (store, health) = spawn_loop(&script, mode.clone());
    let send = |event| senders[0].unbounded_send(event).unwrap();
    send(Ok(Event::Init));
    send(Ok(Event::InitApply(config_map("a", "1"))));
    send(Ok(Event::InitDone));
    until("synced", || health.status().synced).await;
    let first_contact = health.status().last_contact.unwrap();
    until("checks answered", || health.status().last_contact.unwrap() > first_contact).await;

    // The API server hangs: the check times out.
    mode.store(HANG, Ordering::SeqCst);
    until("out of contact", || health.status().out_of_contact.is_some()).await;
    assert!(health.status().out_of_contact.unwrap().error.contains("no answer within"), "{:?}", health.status());
    // It answers again, with a 403 this time: still out of contact, with the new error.
    mode.store(REFUSE, Ordering::SeqCst);
    until("403 reported", || health.status().out_of_contact.is_some_and(|lost| lost.error.contains("403 forbidden")))
        .await;
    assert_eq!(names(&store), ["a"]);
    mode.store(ANSWER, Ordering::SeqCst);
    until("back in contact", || health.status().out_of_contact.is_none()).await;
    assert_eq!(script.started.load(Ordering::SeqCst), 1, "checks never restart a working watch");

    // 410 Gone: the watcher relists by itself; not a failure.
    let errors = health.status().errors;
    let gone = kube::core::Status::failure("too old resource version", "Expired").with_code(410);
    send(Err(watcher::Error::WatchError(Box::new(gone))));
    send(Ok(Event::Init));
    send(Ok(Event::InitApply(config_map("b", "5"))));
    send(Ok(Event::InitDone));
    until("relisted", || names(&store) == ["b"]).await;
    assert_eq!(health.status().errors, errors);
    assert!(health.status().out_of_contact.is_none());
    assert_eq!(script.started.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_list_is_abandoned_and_started_again() {
    let (script, senders) = Script::new(2);
    let (_, health) = spawn_loop(&script, Arc::new(AtomicU8::new(ANSWER)));
    senders[0].unbounded_send(Ok(Event::Init)).unwrap();
    until("out of contact", || health.status().out_of_contact.is_some()).await;
    assert!(health.status().out_of_contact.unwrap().error.contains("no answer to the list"));
    until("second watcher", || script.started.load(Ordering::SeqCst) == 2).await;
    senders[1].unbounded_send(Ok(Event::Init)).unwrap();
    senders[1].unbounded_send(Ok(Event::InitDone)).unwrap();
    until("synced", || health.status().synced && health.status().out_of_contact.is_none()).await;
}

#[tokio::test(start_paused = true)]
async fn a_forbidden_watch_after_a_good_list_polls_instead_of_failing() {
    let (script, senders) = Script::new(3);
    let (store, health) = spawn_loop(&script, Arc::new(AtomicU8::new(ANSWER)));
    let send = |i: usize, event| senders[i].unbounded_send(event).unwrap();
    let forbidden = || {
        let mut status = kube::core::Status::failure("configmaps is forbidden: cannot watch", "Forbidden");
        status.code = 403;
        Err(watcher::Error::WatchStartFailed(kube::Error::Api(status.boxed())))
    };

    send(0, Ok(Event::Init));
    send(0, Ok(Event::InitApply(config_map("a", "1"))));
    send(0, Ok(Event::InitDone));
    send(0, forbidden());
    until("synced with a", || health.status().synced && names(&store) == ["a"]).await;
    // Not an outage: in contact, no error counted, and the next list waits for the poll interval
    // (a failure would retry after the backoff's 0.8 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = health.status();
    assert!(status.out_of_contact.is_none() && status.errors == 0, "{status:?}");
    assert_eq!(script.started.load(Ordering::SeqCst), 1, "listed again before the poll interval");
    until("second list", || script.started.load(Ordering::SeqCst) == 2).await;
    send(1, Ok(Event::Init));
    send(1, Ok(Event::InitApply(config_map("b", "2"))));
    send(1, Ok(Event::InitDone));
    until("the second list's contents", || names(&store) == ["b"]).await;

    // A refused list is a failure as before.
    send(1, forbidden());
    until("third watcher", || script.started.load(Ordering::SeqCst) == 3).await;
    let mut refused = kube::core::Status::failure("configmaps is forbidden: cannot list", "Forbidden");
    refused.code = 403;
    send(2, Ok(Event::Init));
    send(2, Err(watcher::Error::InitialListFailed(kube::Error::Api(refused.boxed()))));
    until("out of contact", || health.status().out_of_contact.is_some()).await;
    assert_eq!(health.status().errors, 1);
    assert_eq!(names(&store), ["b"], "the last contents stay");
}
