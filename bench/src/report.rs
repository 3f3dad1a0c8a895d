//! Results: per-figure samples reduced to median and min–max, the performance targets judged on the
//! medians, and the Markdown and JSON files written to `bench/results/`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// A figure's samples over the runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
    /// Every sample, in run order.
    pub samples: Vec<f64>,
}

impl Stats {
    /// Reduces samples; `None` when there are none.
    #[must_use]
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]) };
        Some(Self { median, min: sorted[0], max: sorted[n - 1], samples: samples.to_vec() })
    }
}

/// The median of `values` (the mean of the middle two for an even count); `NaN` when empty.
#[must_use]
pub fn median(values: &[f64]) -> f64 {
    Stats::of(values).map_or(f64::NAN, |s| s.median)
}

/// Which direction is better.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Throughputs.
    Higher,
    /// Latencies, CPU, memory, times, sizes.
    Lower,
}

/// One row of the table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    /// Stable identifier (`max_rps_10k`, …), used by `check`.
    pub id: String,
    /// The table section.
    pub section: String,
    /// What it is, for a person.
    pub label: String,
    /// Its unit.
    pub unit: String,
    /// Which direction is better.
    pub better: Better,
    /// sidecar-injector.
    pub ours: Option<Stats>,
    /// The Go baseline (absent when it was not run or has no such figure).
    pub go: Option<Stats>,
    /// ours / Go, of the medians.
    pub ratio: Option<f64>,
    /// The performance targets on this figure.
    pub targets: Vec<Target>,
}

/// A performance target, judged on the median.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    /// As the target is stated.
    pub text: String,
    /// Whether it bounds our value or the ratio to Go.
    pub on: TargetOn,
    /// `≥` (true) or `≤` (false).
    pub at_least: bool,
    /// The bound.
    pub bound: f64,
    /// Met, missed, or not measurable (`None`: e.g. Go not run).
    pub met: Option<bool>,
}

/// What a target bounds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TargetOn {
    /// sidecar-injector's median.
    Value,
    /// ours / Go.
    Ratio,
}

impl Target {
    /// A target on our median.
    #[must_use]
    pub fn value(text: &str, at_least: bool, bound: f64) -> Self {
        Self { text: text.to_owned(), on: TargetOn::Value, at_least, bound, met: None }
    }

    /// A target on the ratio to Go.
    #[must_use]
    pub fn ratio(text: &str, at_least: bool, bound: f64) -> Self {
        Self { text: text.to_owned(), on: TargetOn::Ratio, at_least, bound, met: None }
    }

    fn judge(&mut self, ours: Option<&Stats>, ratio: Option<f64>) {
        let value = match self.on {
            TargetOn::Value => ours.map(|s| s.median),
            TargetOn::Ratio => ratio,
        };
        self.met = value.map(|v| if self.at_least { v >= self.bound } else { v <= self.bound });
    }
}

/// Collects samples during a run and turns them into figures.
#[derive(Debug, Default)]
pub struct Collector {
    order: Vec<(String, String, String, String, Better, Vec<Target>)>,
    samples: BTreeMap<(String, &'static str), Vec<f64>>,
}

impl Collector {
    /// Declares a figure (order of declaration is the table's order).
    pub fn declare(&mut self, id: &str, section: &str, label: &str, unit: &str, better: Better, targets: Vec<Target>) {
        if !self.order.iter().any(|o| o.0 == id) {
            self.order.push((id.to_owned(), section.to_owned(), label.to_owned(), unit.to_owned(), better, targets));
        }
    }

    /// Adds one sample of `id` for `server` (`ours` or `go`).
    pub fn add(&mut self, id: &str, server: &'static str, value: f64) {
        self.samples.entry((id.to_owned(), server)).or_default().push(value);
    }

    /// The figures, with ratios and judged targets.
    #[must_use]
    pub fn figures(&self) -> Vec<Figure> {
        self.order
            .iter()
            .map(|(id, section, label, unit, better, targets)| {
                let get = |server| self.samples.get(&(id.clone(), server)).and_then(|s| Stats::of(s));
                let ours = get("ours");
                let go = get("go");
                let ratio = match (&ours, &go) {
                    (Some(o), Some(g)) if g.median != 0.0 => Some(o.median / g.median),
                    _ => None,
                };
                let mut targets = targets.clone();
                for t in &mut targets {
                    t.judge(ours.as_ref(), ratio);
                }
                Figure {
                    id: id.clone(),
                    section: section.clone(),
                    label: label.clone(),
                    unit: unit.clone(),
                    better: *better,
                    ours,
                    go,
                    ratio,
                    targets,
                }
            })
            .collect()
    }
}

/// Everything a run wrote: the JSON file's content.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// When, where and how.
    pub meta: BTreeMap<String, serde_json::Value>,
    /// `run` or `NOT RUN (reason)`.
    pub go_baseline: String,
    /// The corpus: size class and bytes.
    pub corpus: Vec<(String, usize)>,
    /// The correctness gate's rows.
    pub gate: serde_json::Value,
    /// The figures.
    pub figures: Vec<Figure>,
    /// Each max-throughput search's probes, by server, size and run.
    pub searches: serde_json::Value,
}

impl Report {
    /// A figure by id.
    #[must_use]
    pub fn figure(&self, id: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.id == id)
    }

    /// The Markdown report.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let meta = |k: &str| {
            self.meta.get(k).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).unwrap_or_default()
        };
        let _ = writeln!(md, "# Benchmark: sidecar-injector vs the Go (controller-runtime) baseline\n");
        // The book's Benchmarks page includes what lies between the anchors (mdBook `{{#include}}`).
        let _ = writeln!(md, "<!-- ANCHOR: report -->");
        let _ = writeln!(md, "Written by `{}` on {} (commit {}).\n", meta("command"), meta("date"), meta("commit"));
        let _ = writeln!(
            md,
            "- Machine: {}; server pinned to CPU {}, load generator to CPU {}.",
            meta("machine"),
            meta("server_cpu"),
            meta("client_cpu")
        );
        let _ = writeln!(
            md,
            "- Runs: {} (each figure: median, min–max in parentheses); servers started afresh for every run, runs interleaved.",
            meta("runs")
        );
        let _ = writeln!(md, "- Go baseline: {}.", self.go_baseline);
        // Runs before the search moved to oha carry no `search_load`: their probes were the
        // harness's own driver's.
        let search_load = match self.meta.get("search_load").and_then(serde_json::Value::as_str) {
            Some(generator) => format!("{generator} (latency from each request's due time)"),
            None => "the harness's own driver (latency from each scheduled send time)".to_owned(),
        };
        let _ = writeln!(
            md,
            "- Load: HTTP/1.1 keep-alive over TLS 1.3 on 127.0.0.1, {} connections, open loop: the fixed rates sent by vegeta (latency from each send), the max-throughput probes by {search_load}.",
            meta("connections")
        );
        let corpus: Vec<String> = self.corpus.iter().map(|(s, b)| format!("{s} = {b} B")).collect();
        let _ = writeln!(md, "- Corpus: {}.", corpus.join(", "));
        let _ = writeln!(
            md,
            "- Ratio column: sidecar-injector ÷ Go, of the medians (higher is better for throughput, lower for everything else).\n"
        );
        let _ = writeln!(md, "| Figure | sidecar-injector | Go baseline | ours ÷ Go | Target |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        let mut section = "";
        for f in &self.figures {
            if f.section != section {
                section = &f.section;
                let _ = writeln!(md, "| **{section}** | | | | |");
            }
            let cell = |s: &Option<Stats>| s.as_ref().map_or_else(|| "—".to_owned(), format_stats);
            let ratio = f.ratio.map_or_else(|| "—".to_owned(), ratio_text);
            let targets: Vec<String> = f
                .targets
                .iter()
                .map(|t| {
                    let verdict = match t.met {
                        Some(true) => "**met**",
                        Some(false) => "**MISSED**",
                        None => "not measured",
                    };
                    format!("{}: {verdict}", t.text)
                })
                .collect();
            let _ = writeln!(
                md,
                "| {} ({}) | {} | {} | {ratio} | {} |",
                f.label,
                f.unit,
                cell(&f.ours),
                cell(&f.go),
                targets.join("; ")
            );
        }
        let _ = writeln!(md, "\n## Targets\n");
        for f in &self.figures {
            for t in &f.targets {
                let verdict = match t.met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "not measured",
                };
                let value = match t.on {
                    TargetOn::Value => f.ours.as_ref().map(|s| format!("{} {}", sig(s.median), f.unit)),
                    TargetOn::Ratio => f.ratio.map(|r| format!("{} Go", ratio_text(r))),
                };
                let _ =
                    writeln!(md, "- {} — {}: {} ({verdict})", f.label, t.text, value.unwrap_or_else(|| "—".to_owned()));
            }
        }
        let _ = writeln!(md, "\n<!-- ANCHOR_END: report -->");
        if let Some(notes) = self.meta.get("notes").and_then(|n| n.as_array()) {
            let _ = writeln!(md, "\n## Notes\n");
            for n in notes {
                let _ = writeln!(md, "- {}", n.as_str().unwrap_or_default());
            }
            for n in self.overload_notes() {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }

    /// A note for each fixed-rate run above a server's max throughput for that size: its
    /// latencies there measure a growing queue, not the server's speed.
    fn overload_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let mut seen = Vec::new();
        for f in &self.figures {
            // Sections read "<size> reviews at a fixed <rate>/s (open loop)".
            let Some((size, rest)) = f.section.split_once(" reviews at a fixed ") else { continue };
            let Some(rate) = rest.split_once("/s").and_then(|(r, _)| r.replace(',', "").parse::<f64>().ok()) else {
                continue;
            };
            if seen.contains(&size) {
                continue;
            }
            seen.push(size);
            let Some(max) = self.figure(&format!("max_rps_{size}")) else { continue };
            for (name, stats) in [("sidecar-injector", &max.ours), ("the Go baseline", &max.go)] {
                if let Some(s) = stats
                    && s.median < rate
                {
                    notes.push(format!(
                        "{size} at {}/s is above {name}'s max throughput for {size} ({}/s): its latencies there are those of a queue that grows for the whole run.",
                        sig(rate),
                        sig(s.median)
                    ));
                }
            }
        }
        notes
    }
}

/// A ratio: `3.81×`, or `1/4,800×` when it is below 1/10 (a small decimal reads badly).
#[must_use]
pub fn ratio_text(r: f64) -> String {
    if r > 0.0 && r < 0.1 { format!("1/{}×", sig(1.0 / r)) } else { format!("{}×", sig(r)) }
}

/// A number to 3–4 significant figures, with thousands separators for large ones.
#[must_use]
pub fn sig(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".to_owned()
    } else if a >= 1000.0 {
        #[allow(clippy::cast_possible_truncation, reason = "benchmark figures are far below i64::MAX")]
        let n = x.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 { format!("-{out}") } else { out }
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn format_stats(s: &Stats) -> String {
    if s.samples.len() == 1 { sig(s.median) } else { format!("{} ({}–{})", sig(s.median), sig(s.min), sig(s.max)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_median() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(format!("{} {} {}", s.median, s.min, s.max), "2 1 3");
        assert_eq!(format!("{}", Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median), "2.5");
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn targets_are_judged_on_the_median_or_the_ratio() {
        let mut c = Collector::default();
        c.declare(
            "t",
            "s",
            "throughput",
            "reviews/s",
            Better::Higher,
            vec![Target::value("≥ 10", true, 10.0), Target::ratio("≥ 3× Go", true, 3.0)],
        );
        for v in [9.0, 12.0, 11.0] {
            c.add("t", "ours", v);
        }
        c.add("t", "go", 5.0);
        let f = &c.figures()[0];
        assert_eq!(f.ratio, Some(11.0 / 5.0));
        assert_eq!(f.targets[0].met, Some(true));
        assert_eq!(f.targets[1].met, Some(false));
    }

    #[test]
    fn the_report_names_the_searchs_load_generator_of_its_own_run() {
        let mut report = Report {
            meta: BTreeMap::new(),
            go_baseline: "run".to_owned(),
            corpus: Vec::new(),
            gate: serde_json::Value::Null,
            figures: Vec::new(),
            searches: serde_json::Value::Null,
        };
        assert!(
            report.markdown().contains("the max-throughput probes by the harness's own driver"),
            "a run from before oha"
        );
        report.meta.insert("search_load".to_owned(), serde_json::json!("oha 1.16.0"));
        assert!(
            report
                .markdown()
                .contains("the max-throughput probes by oha 1.16.0 (latency from each request's due time)")
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(sig(12345.6), "12,346");
        assert_eq!(sig(0.1234), "0.123");
        assert_eq!(sig(4.56789), "4.57");
        assert_eq!(sig(0.0), "0");
        assert_eq!(ratio_text(3.812), "3.81×");
        assert_eq!(ratio_text(0.000_208), "1/4,808×");
    }
}
