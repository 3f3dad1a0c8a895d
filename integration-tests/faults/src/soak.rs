//! Soak: "10 minutes at 1,000 reviews/s: zero errors, RSS flat".
//!
//! RSS (`VmRSS`) is sampled every second of the measured window (after the warm-up). *Flat* means:
//! the median of the last 10% of the samples exceeds the median of the 10%–20% window by at most
//! 10% of the latter and at most 2 MiB. (The first 10% are skipped: allocator pools and caches
//! still settle there.) A leak of a few bytes per review, 600,000 reviews long, grows by more.

use std::time::Duration;

use tokio::time::Instant;

use super::{Ctx, Outcome, Scenario, Verdict, check_load, f, median, still_serving};
use bench::client::Tls;
use bench::load;
use bench::servers;

/// The flatness bounds.
const MAX_GROWTH_FRACTION: f64 = 0.10;
const MAX_GROWTH_MIB: f64 = 2.0;

/// Whether a series of RSS samples (MiB) is flat, with the two medians compared.
#[derive(Clone, Copy, Debug)]
pub(super) struct Flatness {
    pub(super) early: f64,
    pub(super) late: f64,
}

impl Flatness {
    /// The medians of the 10%–20% window and of the last 10% of `samples`; `None` with fewer than 10.
    pub(super) fn of(samples: &[f64]) -> Option<Self> {
        let n = samples.len();
        if n < 10 {
            return None;
        }
        let early = median(&samples[n / 10..n / 5]);
        let late = median(&samples[n - n.div_ceil(10)..]);
        Some(Self { early, late })
    }

    pub(super) fn growth(self) -> f64 {
        self.late - self.early
    }

    pub(super) fn is_flat(self) -> bool {
        self.growth() <= MAX_GROWTH_FRACTION * self.early && self.growth() <= MAX_GROWTH_MIB
    }
}

#[allow(clippy::too_many_lines, reason = "one scenario read top to bottom: set-up, fault, checks, figures")]
pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let dir = ctx.scenario_dir(Scenario::Soak)?;
    let ca = servers::write_certificates(&dir.join("certs"))?;
    let tls = Tls::verifying(&ca)?;
    let spec = ctx.spec(&dir.join("certs"), &dir);
    let mut server = ctx.start(&spec, 1, &[], "warn", &tls).await?;
    let (warmup, seconds) = ctx.pick((2.0, 20.0), (10.0, 600.0));
    let spec_load = ctx.load(1000.0, warmup, seconds);
    let cpu_before = server.cpu_time()?;
    let measure_from = Instant::now() + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let pid = server.pid;
    let sampling = async move {
        let mut samples = Vec::new();
        let mut errors = Vec::new();
        let mut tick = tokio::time::interval_at(measure_from + Duration::from_millis(500), Duration::from_secs(1));
        while tick.tick().await < end {
            match rss_mib(pid) {
                Ok(mib) => samples.push(mib),
                Err(error) => errors.push(format!("{error:#}")),
            }
        }
        (samples, errors)
    };
    let (report, (samples, sample_errors)) = tokio::join!(load::open_loop(server.webhook, &tls, &spec_load), sampling);
    let report = report?;
    let cpu = server.cpu_time()?.saturating_sub(cpu_before);
    let alive = still_serving(ctx, &mut server, &tls).await;
    let _ = server.stop();

    let mut v = Verdict::new(ctx.short);
    check_load(&mut v, "soak", &report);
    v.check(alive.is_ok(), || format!("after the soak: {}", alive.clone().err().unwrap_or_default()));
    v.check(sample_errors.is_empty(), || format!("RSS could not be read: {}", sample_errors.join("; ")));
    let flat = Flatness::of(&samples);
    v.check(flat.is_some_and(Flatness::is_flat), || match flat {
        Some(fl) => format!(
            "RSS not flat: median {:.2} MiB in the last 10% vs {:.2} MiB in the 10–20% window (+{:.2} MiB, {:+.1}%; at most +10% and +{MAX_GROWTH_MIB} MiB)",
            fl.late,
            fl.early,
            fl.growth(),
            fl.growth() / fl.early * 100.0
        ),
        None => format!("only {} RSS samples", samples.len()),
    });
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let flat_text = flat.map_or_else(
        || "n/a".to_owned(),
        |fl| {
            format!(
                "10–20% window {:.2} → last 10% {:.2} MiB ({:+.2} MiB, {:+.1}%)",
                fl.early,
                fl.late,
                fl.growth(),
                fl.growth() / fl.early * 100.0
            )
        },
    );
    let figures = format!(
        "{} reviews (10k) at 1,000/s over {seconds:.0} s: {} errors; RSS every 1 s ({} samples) min/median/max {min:.2}/{:.2}/{max:.2} MiB, {flat_text}; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms; server CPU {:.1} ms per 1,000 reviews",
        report.scheduled,
        report.errors,
        samples.len(),
        median(&samples),
        report.latency_ms(0.5),
        report.latency_ms(0.99),
        report.latency_ms(0.999),
        report.latency_ms(1.0),
        cpu.as_secs_f64() * 1e6 / f(report.answered_total.max(1)),
    );
    let checked = format!(
        "{seconds:.0} s at 1,000 reviews/s (after {warmup:.0} s warm-up): zero failed requests, every answer admitted with haystack-agent injected (patch decoded); RSS flat: median of the last 10% of 1-s samples ≤ median of the 10–20% window + 10% and + 2 MiB; server alive and serving after"
    );
    Ok(v.outcome(Scenario::Soak, checked, figures))
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(f(kib) / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::Flatness;

    #[test]
    fn flatness_compares_the_last_tenth_with_the_second() {
        let flat: Vec<f64> = (0..100).map(|i| if i < 10 { 5.0 } else { 10.0 }).collect();
        assert!(Flatness::of(&flat).is_some_and(Flatness::is_flat));
        // +1.5 MiB on 10 MiB: more than 10%.
        let growing: Vec<f64> = (0..100).map(|i| 10.0 + f64::from(i) * 0.02).collect();
        let fl = Flatness::of(&growing).unwrap();
        assert!(!fl.is_flat(), "{fl:?}");
        // +3 MiB on 100 MiB: within 10% but more than 2 MiB.
        let big: Vec<f64> = (0..100).map(|i| if i < 80 { 100.0 } else { 103.0 }).collect();
        assert!(!Flatness::of(&big).unwrap().is_flat());
        assert!(Flatness::of(&[1.0; 9]).is_none());
    }
}
