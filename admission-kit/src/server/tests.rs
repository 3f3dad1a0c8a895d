use std::time::{Duration, SystemTime};

use super::verdict;
use crate::cache::{CacheStatus, OutOfContact};

fn healthy(name: &str) -> CacheStatus {
    CacheStatus {
        cache: name.into(),
        synced: true,
        last_contact: Some(SystemTime::UNIX_EPOCH),
        out_of_contact: None,
        errors: 0,
    }
}

/// Out of contact for `secs` since 2023-11-14T22:13:20Z.
fn lost(name: &str, secs: u64, error: &str) -> CacheStatus {
    let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    CacheStatus {
        out_of_contact: Some(OutOfContact { since, elapsed: Duration::from_secs(secs), error: error.into() }),
        ..healthy(name)
    }
}

const TEN_MINUTES: Option<Duration> = Some(Duration::from_secs(600));

#[test]
fn ready_when_every_cache_is_in_contact() {
    assert_eq!(verdict(0, false, &[], TEN_MINUTES), (true, "ok\n".to_owned()));
    assert_eq!(verdict(0, false, &[healthy("namespaces"), healthy("configmaps")], TEN_MINUTES), (true, "ok\n".into()));
}

#[test]
fn unready_until_synced_with_the_first_error() {
    let mut first = lost("namespaces", 3, "403 forbidden");
    first.synced = false;
    let mut pending = healthy("configmaps");
    pending.synced = false;
    assert_eq!(
        verdict(1, false, &[first, pending], TEN_MINUTES),
        (
            false,
            "not ready: 1 cache(s) not yet synced; cache `namespaces` not yet synced: 403 forbidden; cache `configmaps` not yet synced\n"
                .to_owned()
        )
    );
}

#[test]
fn degraded_within_the_staleness_bound_then_unready() {
    let (ready, body) =
        verdict(0, false, &[healthy("configmaps"), lost("namespaces", 12, "connection refused")], TEN_MINUTES);
    assert!(ready, "{body}");
    assert_eq!(
        body,
        "ok (degraded): cache `namespaces` out of contact with the API server since 2023-11-14T22:13:20Z (12s ago): connection refused; serving its last contents, unready after 10m out of contact\n"
    );
    // Exactly at the bound: still ready; past it: not.
    assert!(verdict(0, false, &[lost("namespaces", 600, "e")], TEN_MINUTES).0);
    let (ready, body) = verdict(0, false, &[lost("namespaces", 601, "connection refused")], TEN_MINUTES);
    assert!(!ready);
    assert_eq!(
        body,
        "not ready: cache `namespaces` out of contact with the API server since 2023-11-14T22:13:20Z (10m1s ago): connection refused; longer than the 10m allowed (cache max staleness)\n"
    );
}

#[test]
fn no_bound_means_never_unready_for_staleness() {
    let (ready, body) = verdict(0, false, &[lost("namespaces", 86_400, "connection refused")], None);
    assert!(ready);
    assert!(body.starts_with("ok (degraded): cache `namespaces`") && body.contains("(no staleness bound)"), "{body}");
}

#[test]
fn every_reason_is_named_together() {
    let (ready, body) =
        verdict(0, true, &[lost("namespaces", 700, "refused"), lost("configmaps", 5, "timeout")], TEN_MINUTES);
    assert!(!ready);
    assert!(body.starts_with("not ready: cache `namespaces`"), "{body}");
    let draining = body.find("draining before shutdown").unwrap();
    let degraded = body.find("cache `configmaps`").unwrap();
    assert!(draining < degraded, "unready reasons first, then the degraded caches: {body}");
}

#[tokio::test]
async fn a_served_cache_drives_readyz_and_its_metrics() {
    use crate::cache::{CacheHealth, FailureKind, Seen};
    let health = CacheHealth::new("things");
    let mut config = super::ServerConfig::local();
    config.cache_max_staleness = Some(Duration::from_secs(3600));
    let server = super::Server::new(config, []).cache(health.clone()).start().await.unwrap();
    let readyz = || async {
        let r = reqwest::get(format!("http://{}/readyz", server.admin_addr())).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let metrics = || async {
        reqwest::get(format!("http://{}/metrics", server.admin_addr())).await.unwrap().text().await.unwrap()
    };
    assert_eq!(readyz().await, (503, "not ready: cache `things` not yet synced\n".to_owned()));
    health.seen(Seen::Listed);
    assert_eq!(readyz().await, (200, "ok\n".to_owned()));
    assert!(metrics().await.contains("admission_kit_cache_healthy{cache=\"things\"} 1\n"));

    health.failed(FailureKind::Watch, "connection refused".into());
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "within the bound: {body}");
    assert!(
        body.starts_with("ok (degraded): cache `things` out of contact") && body.contains("connection refused"),
        "{body}"
    );
    let text = metrics().await;
    assert!(text.contains("admission_kit_cache_healthy{cache=\"things\"} 0\n"), "{text}");
    assert!(text.contains("admission_kit_cache_watch_errors_total{cache=\"things\"} 1\n"), "{text}");
    health.seen(Seen::Listed);
    assert_eq!(readyz().await, (200, "ok\n".to_owned()));
    server.shutdown_and_wait().await.unwrap();

    // With a bound of zero time, any time out of contact is too long.
    let mut config = super::ServerConfig::local();
    config.cache_max_staleness = Some(Duration::ZERO);
    let server = super::Server::new(config, []).cache(health.clone()).start().await.unwrap();
    health.failed(FailureKind::Probe, "no answer within 10s".into());
    std::thread::sleep(Duration::from_millis(5));
    let r = reqwest::get(format!("http://{}/readyz", server.admin_addr())).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("no answer within 10s; longer than the 0s allowed"));
    server.shutdown_and_wait().await.unwrap();
}
