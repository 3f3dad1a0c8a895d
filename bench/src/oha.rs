//! The max-throughput search's load by oha (crates.io `oha`, built by `scripts/cargo-tool.sh`): a
//! well-kept Rust load generator sends the closed-loop saturation probe and the open-loop probes,
//! and this module keeps only what it does not do — the warm-up cut, the check of every answer
//! (HTTP 200 and the length of the answer the harness itself got for the same review), and the same
//! [`LoadReport`] the rest of the harness reads.
//!
//! Open loop: `-q RATE --latency-correction`, so that a request's latency runs from the moment it
//! was due, not from when a connection was free to send it (no coordinated omission). oha paces
//! on tokio's timer (1 ms resolution) and takes the timer's wake-up as the moment a request was
//! due, so its own lateness behind the schedule, under a millisecond, is not charged to the server;
//! what the server delays is. HTTP/1.1 over TLS with keep-alive, `-c` connections, as the API
//! server's webhook client. It runs as a child of the harness, so on the harness's core and priority.
//!
//! oha's per-request output (`--output-format csv`) lists only the requests that got an HTTP
//! answer; a run asks for an exact number of requests (`-n`), so every one missing from the output
//! failed (refused, reset, timed out), and is charged to the measured window.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;

use crate::load::{LoadReport, OpenLoop, Prober, REQUEST_TIMEOUT};

/// The oha release the harness builds and drives.
pub const VERSION: &str = "1.16.0";

/// The oha binary.
#[derive(Clone, Debug)]
pub struct Oha {
    binary: PathBuf,
}

/// One line of oha's CSV output: one answered request.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Answer {
    /// When it was sent, from the start of the run, in seconds.
    start: f64,
    /// From when it was due to the whole answer, in seconds.
    latency: f64,
    /// The answer's body length.
    bytes: u64,
    status: u16,
}

impl Oha {
    /// `BENCH_OHA`, else asks `scripts/cargo-tool.sh` for it (built once from crates.io, cached).
    pub fn locate(root: &Path) -> anyhow::Result<Self> {
        if let Some(binary) = std::env::var_os("BENCH_OHA") {
            return Ok(Self { binary: binary.into() });
        }
        let script = root.join("scripts/cargo-tool.sh");
        let dir = crate::tool::script_last_line(&script, &["oha", VERSION], "oha could not be built")?;
        Ok(Self { binary: Path::new(&dir).join("oha") })
    }

    /// The arguments every run shares: the review sent with POST to `addr` over TLS (the CA in `ca_file`),
    /// `connections` keep-alive connections, CSV to stdout.
    fn command(&self, addr: SocketAddr, ca_file: &Path, body_file: &Path, connections: usize) -> std::process::Command {
        let mut command = std::process::Command::new(&self.binary);
        command
            .args([
                "--no-tui",
                "--output-format",
                "csv",
                "-m",
                "POST",
                "-T",
                "application/json",
                "--http-version",
                "1.1",
            ])
            .arg("-D")
            .arg(body_file)
            .arg("--cacert")
            .arg(ca_file)
            .arg("-c")
            .arg(connections.max(1).to_string())
            .arg("-t")
            .arg(format!("{}s", REQUEST_TIMEOUT.as_secs()))
            // One runtime thread: the harness pins itself, and so oha, to one core.
            .args(["--worker-threads", "1"])
            .arg(format!("https://{addr}/mutate?timeout=10s"));
        command
    }

    /// The runs against one server at `addr` (its certificate checked against the CA in
    /// `ca_file`), where an answer counts when it is HTTP 200 and `answer_len` bytes long: the
    /// length of the answer the harness got for the same review, whose patch its correctness gate
    /// checked. Scratch files go to `dir`.
    #[must_use]
    pub fn against<'a>(&'a self, addr: SocketAddr, ca_file: &'a Path, answer_len: u64, dir: &'a Path) -> Target<'a> {
        Target { oha: self, addr, ca_file, answer_len, dir }
    }
}

/// oha's runs against one server: a [`Prober`] for the max-throughput search.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    oha: &'a Oha,
    addr: SocketAddr,
    ca_file: &'a Path,
    answer_len: u64,
    dir: &'a Path,
}

impl Prober for Target<'_> {
    /// Closed loop for `duration` on `connections` connections: answers per second (the
    /// saturation rate, which only brackets the search).
    async fn saturation(&self, connections: usize, body: &Bytes, duration: Duration) -> anyhow::Result<f64> {
        let body_file = write_body(self.dir, body)?;
        let mut command = self.oha.command(self.addr, self.ca_file, &body_file, connections);
        command.arg("-z").arg(format!("{}ms", duration.as_millis())).arg("--wait-ongoing-requests-after-deadline");
        let answers = parse_csv(&run(command).await?)?;
        let ok = answers.iter().filter(|a| a.status == 200 && a.bytes == self.answer_len).count();
        #[allow(clippy::cast_precision_loss, reason = "request counts are far below 2^52")]
        Ok(ok as f64 / duration.as_secs_f64())
    }

    /// One open-loop run of `spec` (which must not carry a [`Check`](crate::load::Check): oha
    /// keeps no answer's body): `spec.warmup` at the rate first, not recorded, then
    /// `spec.duration` measured, on the same connections.
    async fn open_loop(&self, spec: &OpenLoop) -> anyhow::Result<LoadReport> {
        anyhow::ensure!(spec.check.is_none(), "oha keeps no answer's body: a run with a check needs another driver");
        anyhow::ensure!(spec.rate > 0.0, "the rate must be positive, not {}", spec.rate);
        let body_file = write_body(self.dir, &spec.body)?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "seconds times a rate")]
        let total = ((spec.warmup + spec.duration).as_secs_f64() * spec.rate).round().max(1.0) as u64;
        let mut command = self.oha.command(self.addr, self.ca_file, &body_file, spec.connections);
        command.arg("-n").arg(total.to_string()).arg("-q").arg(format!("{}", spec.rate)).arg("--latency-correction");
        let answers = parse_csv(&run(command).await?)?;
        let run = Run { total, rate: spec.rate, warmup: spec.warmup, window: spec.duration };
        Ok(report(&answers, &run, self.answer_len))
    }
}

fn write_body(dir: &Path, body: &Bytes) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let body_file = dir.join("oha-body.json");
    std::fs::write(&body_file, body)?;
    Ok(body_file)
}

/// Runs oha to its end off the runtime's thread; its stdout.
async fn run(command: std::process::Command) -> anyhow::Result<Vec<u8>> {
    let out = crate::tool::run(command, "oha").await?;
    if !out.status.success() {
        bail!("oha failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// oha's CSV: a header, then `request-start,DNS,DNS+dialup,Response-delay,request-duration,bytes,status`.
fn parse_csv(csv: &[u8]) -> anyhow::Result<Vec<Answer>> {
    let text = std::str::from_utf8(csv).context("oha's output is not UTF-8")?;
    let mut lines = text.lines();
    let header = lines.next().context("oha printed nothing")?;
    anyhow::ensure!(header.starts_with("request-start,"), "oha's output is not its CSV: `{header}`");
    lines
        .filter(|l| !l.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let [start, _dns, _dial, _first_byte, duration, bytes, status] = fields[..] else {
                bail!("a line of oha's CSV has {} fields, not 7: `{line}`", fields.len());
            };
            let number = |what: &str, field: &str| -> anyhow::Result<f64> {
                field.parse::<f64>().with_context(|| format!("oha's {what} `{field}` is not a number"))
            };
            Ok(Answer {
                start: number("request-start", start)?,
                latency: number("request-duration", duration)?,
                bytes: bytes.parse().with_context(|| format!("oha's bytes `{bytes}` is not a count"))?,
                status: status.parse().with_context(|| format!("oha's status `{status}` is not a status"))?,
            })
        })
        .collect()
}

/// An open-loop run as oha was asked for it.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Requests (`-n`).
    total: u64,
    /// Requests per second (`-q`).
    rate: f64,
    /// The first part of the run, not measured.
    warmup: Duration,
    /// The measured part.
    window: Duration,
}

/// How far behind its schedule oha may send the run's last request before the run is refused: 2% of
/// the run, and at least 5 ms (its timer ticks every millisecond).
fn allowed_lateness(run: &Run) -> f64 {
    ((run.warmup + run.window).as_secs_f64() * 0.02).max(0.005)
}

/// The [`LoadReport`] of `run` whose answers are `answers`.
fn report(answers: &[Answer], run: &Run, answer_len: u64) -> LoadReport {
    let mut report = LoadReport::empty(run.window);
    let warmup = run.warmup.as_secs_f64();
    let total = run.total;
    let answered = u64::try_from(answers.len()).unwrap_or(u64::MAX);
    let unanswered = total.saturating_sub(answered);
    for answer in answers {
        let good = answer.status == 200 && answer.bytes == answer_len;
        if good {
            report.answered_total += 1;
        }
        if answer.start < warmup {
            continue;
        }
        report.scheduled += 1;
        report.record_latency(Duration::from_secs_f64(answer.latency.max(0.0)));
        if good {
            report.ok += 1;
        } else if answer.status == 200 {
            report
                .record_error(format!("an answer of {} bytes, not the {answer_len} of the expected one", answer.bytes));
        } else {
            report.record_error(format!("HTTP {}", answer.status));
        }
    }
    if unanswered > 0 {
        report.scheduled += unanswered;
        report.errors += unanswered - 1;
        report
            .record_error(format!("{unanswered} of {total} requests got no HTTP answer (refused, reset or timed out)"));
    }
    // oha dates each request from when its timer woke up to send it, so its own lateness is not in
    // the latencies: a load generator that cannot keep the rate would flatter the server. The last
    // request sent must have left on time.
    #[allow(clippy::cast_precision_loss, reason = "request counts are far below 2^52")]
    let last_due = total.saturating_sub(1) as f64 / run.rate;
    let last_sent = answers.iter().map(|a| a.start).fold(0.0f64, f64::max);
    if last_sent > last_due + allowed_lateness(run) {
        report.record_error(format!(
            "oha fell behind the rate of {}/s: its last request left at {last_sent:.3} s, due at {last_due:.3} s",
            run.rate
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    const HEADER: &str = "request-start,DNS,DNS+dialup,Response-delay,request-duration,bytes,status";

    fn csv(rows: &[(f64, f64, u64, u16)]) -> String {
        let mut out = format!("{HEADER}\n");
        for (start, latency, bytes, status) in rows {
            let _ = writeln!(out, "{start},0.00003,0.0004,{},{latency},{bytes},{status}", latency / 2.0);
        }
        out
    }

    #[test]
    fn oha_csv_is_read_line_by_line() {
        // Two lines as oha 1.16.0 printed them against sidecar-injector (the first one's
        // connection was opened by that request).
        let text = format!(
            "{HEADER}\n0.001371441,0.000034081,0.044062753,0.046068708,0.046152734,1142,200\n0.04727948,0,0,0.000794843,0.004417114,1142,200\n"
        );
        let answers = parse_csv(text.as_bytes()).unwrap();
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[1], Answer { start: 0.047_279_48, latency: 0.004_417_114, bytes: 1142, status: 200 });
        assert!(parse_csv(b"").is_err(), "no header");
        assert!(parse_csv(b"{\"summary\":{}}").is_err(), "not the CSV");
        assert!(parse_csv(format!("{HEADER}\n1,2,3\n").as_bytes()).is_err(), "a short line");
        assert!(parse_csv(format!("{HEADER}\n0.1,0,0,0,x,1,200\n").as_bytes()).is_err(), "not a number");
    }

    #[test]
    fn the_warm_up_is_cut_and_every_answer_is_judged() {
        let answers = parse_csv(
            csv(&[
                (0.05, 0.050, 100, 200), // warm-up (before 0.2 s)
                (0.10, 0.050, 100, 500), // warm-up, failed: neither measured nor counted as answered
                (0.20, 0.001, 100, 200), // measured from here
                (0.30, 0.002, 90, 200),  // the wrong answer
                (0.40, 0.003, 100, 503),
                (0.50, 0.004, 100, 200),
            ])
            .as_bytes(),
        )
        .unwrap();
        let run = Run { total: 6, rate: 10.0, warmup: Duration::from_millis(200), window: Duration::from_secs(1) };
        let report = report(&answers, &run, 100);
        assert_eq!((report.scheduled, report.ok, report.errors), (4, 2, 2));
        assert_eq!(report.answered_total, 3, "good answers, warm-up included");
        assert!(report.error_samples[0].contains("90 bytes"), "{:?}", report.error_samples);
        assert_eq!(report.error_samples[1], "HTTP 503");
        assert!((report.latency_ms(1.0) - 4.0).abs() < 0.01, "the slowest measured answer: {}", report.latency_ms(1.0));
        assert!((report.latency_ms(0.0) - 1.0).abs() < 0.01, "the warm-up's 50 ms is not in it");
    }

    #[test]
    fn requests_missing_from_the_output_are_failures_of_the_measured_window() {
        let answers = parse_csv(csv(&[(0.0, 0.001, 10, 200), (0.3, 0.001, 10, 200)]).as_bytes()).unwrap();
        let run = Run { total: 5, rate: 10.0, warmup: Duration::from_millis(100), window: Duration::from_secs(1) };
        let report = report(&answers, &run, 10);
        assert_eq!((report.scheduled, report.ok, report.errors), (4, 1, 3));
        assert!(
            report.error_samples[0].starts_with("3 of 5 requests got no HTTP answer"),
            "{:?}",
            report.error_samples
        );
        let all_answered = super::report(&answers, &Run { total: 2, rate: 3.0, ..run }, 10);
        assert_eq!((all_answered.scheduled, all_answered.errors), (1, 0));
    }

    #[test]
    fn a_run_oha_sent_behind_its_schedule_is_refused() {
        // 1,000/s for 1.1 s: the last of 1,100 requests is due at 1.099 s.
        let run = Run { total: 1100, rate: 1000.0, warmup: Duration::from_millis(100), window: Duration::from_secs(1) };
        let on_time: Vec<(f64, f64, u64, u16)> = (0..1100).map(|i| (f64::from(i) / 1000.0, 0.001, 10, 200)).collect();
        let answers = parse_csv(csv(&on_time).as_bytes()).unwrap();
        let report = report(&answers, &run, 10);
        assert_eq!((report.ok, report.errors), (1000, 0), "{:?}", report.error_samples);
        // The same requests sent at 800/s: every one answered at once, and the run still refused.
        let late: Vec<(f64, f64, u64, u16)> = (0..1100).map(|i| (f64::from(i) / 800.0, 0.001, 10, 200)).collect();
        let answers = parse_csv(csv(&late).as_bytes()).unwrap();
        let report = super::report(&answers, &run, 10);
        assert_eq!(report.errors, 1);
        assert!(
            report.error_samples[0].starts_with("oha fell behind the rate of 1000/s"),
            "{:?}",
            report.error_samples
        );
    }
}
