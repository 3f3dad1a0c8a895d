//! Broken catalog: "catalog replaced by a broken file under load: last good catalog kept, metric
//! and log show the failure".
//!
//! The server reads its only catalog from a file (`catalogPaths`, `catalogReloadInterval: 1s`,
//! through `--config`), whose `haystack-agent` sidecar has the image tag `good-1`. Under 1,000
//! reviews/s the file is broken three ways in turn, each for a few reload intervals: replaced
//! (write and rename) by invalid YAML; replaced by a directory; then rewritten in place by a slow
//! writer (truncated, then a few bytes every 50 ms for 2.5 s), so that every poll finds it
//! truncated part-way — a truncated catalog that may well parse. The slow writer's file is a good
//! catalog with the tag `good-2`. Every answer's patch is decoded and must inject
//! `haystack-agent` with `good-1` or `good-2`, never `good-2` before it was finished; during each
//! break the failure counter must rise and `catalog_stale` be 1, and the log must name the file and
//! the problem; `good-2` must then be taken.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{Ctx, Outcome, Scenario, Verdict, admin, check_load};
use bench::client::{Reply, Tls, post_once};
use bench::load::{self, Check};
use bench::servers;

const INTERVAL: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_millis(250);
const IMAGE: &str = "expediadotcom/haystack-agent:good-";
const FAILURES: &str = "admission_kit_sidecar_injector_catalog_reloads_total{result=\"failure\"}";
const SUCCESSES: &str = "admission_kit_sidecar_injector_catalog_reloads_total{result=\"success\"}";
const STALE: &str = "admission_kit_sidecar_injector_catalog_stale";

fn catalog(version: u32) -> String {
    format!(
        "# 2022 format: a list of sidecars\n- name: haystack-agent\n  containers:\n    - name: haystack-agent\n      image: {IMAGE}{version}\n      env:\n        - name: haystack_env\n          value: local\n      volumeMounts:\n        - name: haystack-agent-config\n          mountPath: /app/haystack\n  volumes:\n    - name: haystack-agent-config\n      emptyDir: {{}}\n"
    )
}

/// Not YAML: an unterminated quoted string (line 5).
const BROKEN: &str = "- name: haystack-agent\n  containers:\n    - name: haystack-agent\n      image: \"expediadotcom/haystack-agent:broken\n      env: [\n";

/// Writes `text` over `path` in place as a slow writer would: truncated first, then a few bytes
/// every 50 ms, so that the write takes `time` and every poll meanwhile finds a truncated file.
/// Returns the number of writes. On a thread of its own with plain sleeps, so that the harness's
/// busy runtime cannot stretch a pause beyond the server's settle time (a writer that pauses that
/// long cannot be told from a finished edit).
fn write_slowly(path: &Path, text: &str, time: Duration) -> anyhow::Result<usize> {
    use std::io::Write as _;
    const DRIP: Duration = Duration::from_millis(50);
    let writes = usize::try_from(time.as_millis() / DRIP.as_millis()).unwrap_or(1).max(1);
    let mut file = std::fs::File::create(path)?;
    let chunks = text.as_bytes().chunks(text.len().div_ceil(writes));
    let count = chunks.len();
    for chunk in chunks {
        file.write_all(chunk)?;
        file.flush()?;
        std::thread::sleep(DRIP);
    }
    Ok(count)
}

/// Writes `text` to `path` as an editor or a deploy script would: a new file renamed over the old.
fn replace(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Which catalog version an answer's patch injected (the `N` of `good-N`).
fn injected_version(reply: &Reply) -> Result<u32, String> {
    let container = super::injected_container(reply, "haystack-agent")?;
    let image = container["image"].as_str().unwrap_or_default();
    image
        .strip_prefix(IMAGE)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("haystack-agent injected with image `{image}`"))
}

#[derive(Debug, Default)]
struct Seen {
    v1: u64,
    v2: u64,
    first_v2: Option<Instant>,
    last_v1: Option<Instant>,
}

#[allow(clippy::too_many_lines, reason = "one scenario read top to bottom: set-up, fault, checks, figures")]
pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let dir = ctx.scenario_dir(Scenario::BrokenCatalog)?;
    let ca = servers::write_certificates(&dir.join("certs"))?;
    let tls = Tls::verifying(&ca)?;
    let catalog_path = dir.join("catalog.yaml");
    replace(&catalog_path, &catalog(1))?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "# No inline sidecars: the catalog file is the only catalog.\ncatalogPaths: [{}]\ncatalogReloadInterval: {}ms\n",
            serde_json::to_string(&catalog_path.display().to_string())?,
            INTERVAL.as_millis()
        ),
    )?;
    let spec = ctx.spec(&dir.join("certs"), &dir);
    let mut server = ctx.start(&spec, 1, &[format!("--config={}", config.display())], "info", &tls).await?;
    let admin = server.admin.context("no admin address")?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let recorder = seen.clone();
    let check = Check(Arc::new(move |reply: &Reply| {
        let version = injected_version(reply)?;
        let now = Instant::now();
        let mut seen = recorder.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match version {
            1 => {
                seen.v1 += 1;
                seen.last_v1 = Some(now);
            }
            2 => {
                seen.v2 += 1;
                seen.first_v2.get_or_insert(now);
            }
            other => return Err(format!("haystack-agent injected from catalog version {other}")),
        }
        Ok(())
    }));
    // Each break lasts this long: several polls, each of which must fail.
    let phase = INTERVAL * 5 / 2;
    let (seconds, broken_at) = ctx.pick((14.0, 2.0), (30.0, 3.0));
    let mut load_spec = ctx.load(1000.0, 1.0, seconds);
    load_spec.check = Some(check);
    let start = tokio::time::Instant::now() + Duration::from_secs(1);
    let before = admin::metrics(admin).await?;
    let faults = async {
        tokio::time::sleep_until(start + Duration::from_secs_f64(broken_at)).await;
        replace(&catalog_path, BROKEN)?;
        let broken = Instant::now();
        tokio::time::sleep(phase).await;
        let during = admin::metrics(admin).await?;
        // A directory where the file was.
        std::fs::remove_file(&catalog_path)?;
        std::fs::create_dir(&catalog_path)?;
        tokio::time::sleep(phase).await;
        let during_dir = admin::metrics(admin).await?;
        std::fs::remove_dir(&catalog_path)?;
        // A slow writer, caught part-way by every poll, finishing catalog 2.
        let (path, text) = (catalog_path.clone(), catalog(2));
        let passes = tokio::task::spawn_blocking(move || write_slowly(&path, &text, phase)).await??;
        let during_slow = admin::metrics(admin).await?;
        let log = super::log_text(&server);
        let restored = Instant::now();
        let mut taken = None;
        while restored.elapsed() < INTERVAL * 5 {
            if let Ok(reply) = post_once(server.webhook, &tls, ctx.review.clone(), Duration::from_secs(5)).await
                && injected_version(&reply) == Ok(2)
            {
                taken = Some(restored.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok((broken, [during, during_dir, during_slow], passes, log, restored, taken))
    };
    let (report, faults) = tokio::join!(load::open_loop(server.webhook, &tls, &load_spec), faults);
    let report = report?;
    let (broken, [during, during_dir, during_slow], passes, log, restored, taken) = faults?;
    let after = admin::metrics(admin).await?;
    let alive = super::still_serving(ctx, &mut server, &tls).await;
    let _ = server.stop();
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner));

    let mut v = Verdict::new(ctx.short);
    check_load(&mut v, "load (every answer must inject haystack-agent from catalog 1 or 2)", &report);
    let file = catalog_path.display().to_string();
    let failure_line = log
        .lines()
        .find(|l| l.contains("catalog not reloaded") && l.contains(&file) && l.contains("failed to parse catalog"));
    let directory_line = log.lines().find(|l| l.contains("catalog not reloaded") && l.contains("a directory"));
    let slow_line =
        log.lines().find(|l| l.contains("catalog not reloaded") && l.contains("changed while it was being read"));
    let mut rises = Vec::new();
    for (what, earlier, later) in [
        ("invalid YAML", &before, &during),
        ("a directory", &during, &during_dir),
        ("a slow writer", &during_dir, &during_slow),
    ] {
        let rise = admin::value(later, FAILURES) - admin::value(earlier, FAILURES);
        rises.push(format!("{what} +{rise}"));
        v.check(rise >= 1.0, || format!("the reload-failure counter rose by {rise} while the file was {what}"));
        v.check((admin::value(later, STALE) - 1.0).abs() < f64::EPSILON, || {
            format!("catalog_stale was not 1 while the file was {what}")
        });
    }
    v.check(failure_line.is_some(), || {
        format!("no log line names {file} and the parse failure (`catalog not reloaded` … `failed to parse catalog`)")
    });
    v.check(directory_line.is_some(), || "no log line says the catalog file is now a directory".to_owned());
    v.check(slow_line.is_some(), || {
        "no log line says the slowly written file `changed while it was being read`".to_owned()
    });
    let failures_during = rises.join(", ");
    v.check(seen.first_v2.is_none_or(|t| t >= restored), || {
        "an answer injected catalog 2 before it was written".to_owned()
    });
    v.check(seen.last_v1.is_some_and(|t| t > broken + INTERVAL * 2), || {
        "no answer injected the last good catalog (1) while the file was broken".to_owned()
    });
    v.check(taken.is_some(), || format!("catalog 2 was not served within {:?} of being written", INTERVAL * 5));
    if let Some(t) = taken {
        v.timing(t <= INTERVAL + SLACK, || {
            format!(
                "catalog 2 served {:.0} ms after it was written: more than the {} ms interval + {} ms",
                super::ms(t),
                INTERVAL.as_millis(),
                SLACK.as_millis()
            )
        });
    }
    v.check(seen.last_v1.is_none_or(|t| t <= restored + INTERVAL * 5) && seen.v2 > 0, || {
        "the load's answers did not move to catalog 2 after it was written".to_owned()
    });
    v.check(admin::value(&after, STALE).abs() < f64::EPSILON, || {
        "catalog_stale still 1 after the good catalog was restored".to_owned()
    });
    v.check(admin::value(&after, SUCCESSES) > admin::value(&during, SUCCESSES), || {
        "no successful reload counted after the restore".to_owned()
    });
    v.check(alive.is_ok(), || format!("after the test: {}", alive.clone().err().unwrap_or_default()));
    let line = failure_line.map_or_else(
        || "none".to_owned(),
        |l| {
            let l = l.trim();
            let from = l.find("catalog not reloaded").or_else(|| l.find("error")).unwrap_or(0);
            format!("`{}`", bench::runner::without_workspace_root(&l[from..]).chars().take(220).collect::<String>())
        },
    );
    let figures = format!(
        "{} reviews at 1,000/s, {} failed; patches injected catalog 1 ×{} and catalog 2 ×{} (never another, none of 2 before it was finished); broken for {:.1} s (invalid YAML, a directory, a slow writer: {passes} writes): reload failures {failures_during}, catalog_stale {}, log: {line}; catalog 2 served {} after it was finished (load's last catalog-1 answer {} after); p99 {:.2} ms",
        report.scheduled,
        report.errors,
        seen.v1,
        seen.v2,
        restored.saturating_duration_since(broken).as_secs_f64(),
        admin::value(&during, STALE),
        taken.map_or_else(|| "never".to_owned(), |t| format!("{:.0} ms", super::ms(t))),
        seen.last_v1.map_or_else(
            || "n/a".to_owned(),
            |t| format!(
                "{:+.0} ms",
                (t.saturating_duration_since(restored).as_secs_f64()
                    - restored.saturating_duration_since(t).as_secs_f64())
                    * 1000.0
            )
        ),
        report.latency_ms(0.99),
    );
    let checked = format!(
        "catalog file (`catalogPaths`, reload every {} ms) replaced mid-load by invalid YAML, then by a directory, then rewritten in place by a slow writer (a few bytes every 50 ms: every poll finds it truncated part-way) of a good catalog 2: every answer's decoded patch injects haystack-agent from the last good catalog (1) until 2 is finished, zero failed requests; during each break `catalog_reloads_total{{result=\"failure\"}}` rises and `catalog_stale` is 1, and a log line names the problem (the parse error with the file, a directory, changed while read); catalog 2 served within the interval + {} ms{}",
        INTERVAL.as_millis(),
        SLACK.as_millis(),
        if ctx.short { " (reported; enforced: within 5× the interval)" } else { "" },
    );
    Ok(v.outcome(Scenario::BrokenCatalog, checked, figures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogs_parse_and_the_broken_one_does_not() {
        let good = sidecar_injector::catalog::parse_catalog(&catalog(1), "x").unwrap();
        assert_eq!(good[0].containers[0]["image"], format!("{IMAGE}1"));
        assert!(sidecar_injector::catalog::parse_catalog(BROKEN, "x").is_err());
    }
}
