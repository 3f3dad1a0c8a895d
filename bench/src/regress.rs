//! `bench check` and `bench accept`: the regression gate on the key ratios to the Go baseline.
//!
//! The ratios, not absolute figures, are compared, because this machine is shared and noisy while
//! both servers run in the same conditions within one run. `check` fails when, against
//! `bench/results/baseline.json`, our 10 KB throughput ÷ Go's fell by more than 10%, or our
//! 10 KB CPU-ms per 1,000 reviews ÷ Go's rose by more than 10%.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::report::{Better, Report};

/// The figures whose ratio to Go is guarded.
pub const KEY_FIGURES: [&str; 2] = ["max_rps_10k", "cpu_ms_per_1k_10k"];

/// The tolerated regression of a key ratio.
pub const TOLERANCE: f64 = 0.10;

/// Reads a report file.
pub fn load(path: &Path) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("failed to parse {}", path.display()))
}

/// One key ratio's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The figure.
    pub id: String,
    /// The baseline's ratio.
    pub baseline: f64,
    /// The latest run's ratio.
    pub latest: f64,
    /// latest ÷ baseline, oriented so that > 1 is better.
    pub change: f64,
    /// Within the tolerance.
    pub ok: bool,
}

/// Compares the key ratios of `latest` with `baseline`.
pub fn compare(latest: &Report, baseline: &Report) -> anyhow::Result<Vec<Verdict>> {
    let mut out = Vec::new();
    for id in KEY_FIGURES {
        let ratio = |r: &Report, which: &str| -> anyhow::Result<(f64, Better)> {
            let f = r.figure(id).with_context(|| format!("{which} has no figure `{id}`"))?;
            let ratio = f.ratio.with_context(|| {
                format!("{which} has no Go ratio for `{id}` (Go baseline: {}): cannot check", r.go_baseline)
            })?;
            Ok((ratio, f.better))
        };
        let (b, better) = ratio(baseline, "the baseline")?;
        let (l, _) = ratio(latest, "the latest run")?;
        let change = match better {
            Better::Higher => l / b,
            Better::Lower => b / l,
        };
        out.push(Verdict { id: id.to_owned(), baseline: b, latest: l, change, ok: change >= 1.0 - TOLERANCE });
    }
    Ok(out)
}

/// `bench check`: prints each key ratio and fails on a regression beyond the tolerance.
pub fn check(results: &Path) -> anyhow::Result<()> {
    let latest = load(&results.join("latest.json"))?;
    let baseline = load(&results.join("baseline.json"))?;
    if latest.meta.get("quick").and_then(serde_json::Value::as_bool) == Some(true) {
        bail!("latest.json is from a --quick run; check compares full runs only");
    }
    let verdicts = compare(&latest, &baseline)?;
    let mut failed = false;
    for v in &verdicts {
        println!(
            "{}: ours/Go {:.3} (baseline {:.3}): {:+.1}% {}",
            v.id,
            v.latest,
            v.baseline,
            (v.change - 1.0) * 100.0,
            if v.ok { "ok" } else { "REGRESSED" }
        );
        failed |= !v.ok;
    }
    if failed {
        bail!("a key ratio regressed by more than {:.0}% against bench/results/baseline.json", TOLERANCE * 100.0);
    }
    Ok(())
}

/// `bench accept`: makes the latest run the baseline.
pub fn accept(results: &Path) -> anyhow::Result<()> {
    let latest = load(&results.join("latest.json"))?;
    if latest.meta.get("quick").and_then(serde_json::Value::as_bool) == Some(true) {
        bail!("latest.json is from a --quick run; only a full run can become the baseline");
    }
    compare(&latest, &latest)?;
    std::fs::copy(results.join("latest.json"), results.join("baseline.json"))?;
    std::fs::copy(results.join("latest.md"), results.join("baseline.md"))?;
    println!("bench/results/baseline.json (and baseline.md) now hold the latest run");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Collector, Target};

    fn report(ours_rps: f64, ours_cpu: f64) -> Report {
        let mut c = Collector::default();
        c.declare("max_rps_10k", "s", "t", "reviews/s", Better::Higher, vec![Target::ratio("≥ 3×", true, 3.0)]);
        c.declare("cpu_ms_per_1k_10k", "s", "c", "CPU-ms", Better::Lower, vec![]);
        c.add("max_rps_10k", "ours", ours_rps);
        c.add("max_rps_10k", "go", 1000.0);
        c.add("cpu_ms_per_1k_10k", "ours", ours_cpu);
        c.add("cpu_ms_per_1k_10k", "go", 100.0);
        Report {
            meta: std::collections::BTreeMap::new(),
            go_baseline: "run".into(),
            corpus: vec![],
            gate: serde_json::Value::Null,
            figures: c.figures(),
            searches: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_ten_percent_drop_is_tolerated_and_more_is_not() {
        let base = report(5000.0, 20.0);
        assert!(compare(&report(4600.0, 21.0), &base).unwrap().iter().all(|v| v.ok));
        let worse = compare(&report(4400.0, 20.0), &base).unwrap();
        assert!(!worse[0].ok && worse[1].ok);
        let costlier = compare(&report(5000.0, 23.0), &base).unwrap();
        assert!(costlier[0].ok && !costlier[1].ok);
    }
}
