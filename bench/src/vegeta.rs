//! Open-loop load by vegeta (github.com/tsenart/vegeta, built from the Go module proxy by
//! `bench/build-vegeta.sh`): a well-kept load generator sends the fixed-rate runs, and this module
//! keeps only what it does not do — the warm-up cut, the check of every answer (HTTP 200,
//! `"allowed":true`, and the run's own [`Check`](crate::load::Check)), and the same
//! [`LoadReport`] the rest of the harness reads.
//!
//! vegeta is a Go program using Go's `net/http` client, as the API server's webhook client does:
//! HTTP/1.1 over TLS (HTTP/2 off, as the API server's client has it for webhooks that offer only
//! `http/1.1`), keep-alive connections capped at the run's count. It sends each request at its
//! scheduled time from a pool of workers that grows when answers are slow, so a slow answer does
//! not delay the next send (no coordinated omission); latency runs from the send to the whole
//! answer. It runs as a child of the harness, so on the harness's core and priority.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

use crate::client::{REVIEW_PATH, Reply};
use crate::load::{LoadReport, OpenLoop};

/// The vegeta binary.
#[derive(Clone, Debug)]
pub struct Vegeta {
    binary: PathBuf,
}

/// One result as `vegeta encode --to json` writes it (the fields read here).
#[derive(Debug, Deserialize)]
struct Hit {
    seq: u64,
    code: u16,
    /// Nanoseconds.
    latency: u64,
    #[serde(default)]
    error: String,
    /// Base64.
    #[serde(default)]
    body: String,
}

impl Vegeta {
    /// Asks `bench/build-vegeta.sh` for the binary (it builds it once, from the Go module proxy).
    pub fn locate(root: &Path) -> anyhow::Result<Self> {
        if let Some(binary) = std::env::var_os("BENCH_VEGETA") {
            return Ok(Self { binary: binary.into() });
        }
        let script = root.join("bench/build-vegeta.sh");
        let binary = crate::tool::script_last_line(&script, &[], "is Go installed (the module proxy is enough)?")?;
        Ok(Self { binary: binary.into() })
    }

    /// One open-loop run of `spec` against `addr` (its certificate checked against the CA in
    /// `ca_file`, for the address): `spec.warmup` at the rate first, not recorded, then
    /// `spec.duration` measured, in one attack on the same connections. Scratch files go to `dir`.
    pub async fn open_loop(
        &self,
        addr: SocketAddr,
        ca_file: &Path,
        spec: &OpenLoop,
        dir: &Path,
    ) -> anyhow::Result<LoadReport> {
        anyhow::ensure!(spec.rate >= 1.0, "vegeta runs at whole requests per second, not {}", spec.rate);
        std::fs::create_dir_all(dir)?;
        let body_file = dir.join("vegeta-body.json");
        std::fs::write(&body_file, &spec.body)?;
        let targets = dir.join("vegeta-targets.txt");
        std::fs::write(
            &targets,
            format!("POST https://{addr}{REVIEW_PATH}\nContent-Type: application/json\n@{}\n", body_file.display()),
        )?;
        let results = dir.join("vegeta-results.bin");
        let total = spec.warmup + spec.duration;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a rate of requests per second")]
        let rate = spec.rate.round() as u64;
        let connections = spec.connections.max(1).to_string();
        let mut attack = std::process::Command::new(&self.binary);
        attack
            .arg("attack")
            .arg(format!("-targets={}", targets.display()))
            .arg(format!("-rate={rate}/1s"))
            .arg(format!("-duration={}ms", total.as_millis()))
            .arg(format!("-root-certs={}", ca_file.display()))
            .args(["-http2=false", "-keepalive=true"])
            .arg(format!("-connections={connections}"))
            .arg(format!("-max-connections={connections}"))
            .arg(format!("-timeout={}s", crate::load::REQUEST_TIMEOUT.as_secs()))
            .arg(format!("-output={}", results.display()));
        let attack = crate::tool::run(attack, "vegeta attack").await?;
        if !attack.status.success() {
            bail!("vegeta attack failed ({}): {}", attack.status, String::from_utf8_lossy(&attack.stderr).trim());
        }
        let mut encode = std::process::Command::new(&self.binary);
        encode.args(["encode", "--to", "json"]).arg(&results);
        let encoded = crate::tool::run(encode, "vegeta encode").await?;
        if !encoded.status.success() {
            bail!("vegeta encode failed ({}): {}", encoded.status, String::from_utf8_lossy(&encoded.stderr).trim());
        }
        report(&encoded.stdout, spec)
    }
}

/// The [`LoadReport`] of vegeta's JSON results.
fn report(json_lines: &[u8], spec: &OpenLoop) -> anyhow::Result<LoadReport> {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "seconds times a rate")]
    let first_measured = (spec.warmup.as_secs_f64() * spec.rate).round() as u64;
    let mut report = LoadReport::empty(spec.duration);
    for line in json_lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let hit: Hit = serde_json::from_slice(line).context("a line of vegeta's results is not a result")?;
        let body = base64::engine::general_purpose::STANDARD.decode(hit.body.as_bytes()).unwrap_or_default();
        let status = http::StatusCode::from_u16(hit.code).ok();
        let reply = status.map(|status| Reply { status, body: Bytes::from(body), close: false });
        let failure = match &reply {
            _ if !hit.error.is_empty() => Some(hit.error.clone()),
            None => Some(format!("no HTTP answer (code {})", hit.code)),
            Some(reply) if !reply.is_admitted() => Some(format!(
                "HTTP {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)])
            )),
            Some(reply) => spec.check.as_ref().and_then(|check| (check.0)(reply).err()),
        };
        if failure.is_none() {
            report.answered_total += 1;
        }
        if hit.seq < first_measured {
            continue;
        }
        report.scheduled += 1;
        report.record_latency(Duration::from_nanos(hit.latency));
        match failure {
            None => report.ok += 1,
            Some(why) => report.record_error(why),
        }
    }
    anyhow::ensure!(report.scheduled > 0, "vegeta's results hold no request of the measured window");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::load::Check;

    fn line(seq: u64, code: u16, latency_ms: u64, error: &str, body: &str) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(body);
        format!(
            r#"{{"attack":"","seq":{seq},"code":{code},"timestamp":"2026-01-01T00:00:00Z","latency":{},"bytes_out":10,"bytes_in":20,"error":"{error}","body":"{body}","method":"POST","url":"https://127.0.0.1:1/mutate","headers":{{}}}}"#,
            latency_ms * 1_000_000
        )
    }

    fn spec(check: Option<Check>) -> OpenLoop {
        OpenLoop {
            rate: 10.0,
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(200),
            connections: 1,
            body: Bytes::from_static(b"{}"),
            check,
        }
    }

    const ADMITTED: &str = r#"{"response":{"allowed":true,"patch":"W10="}}"#;

    #[test]
    fn the_warm_up_is_cut_and_every_answer_is_judged() {
        let lines = [
            line(0, 200, 50, "", ADMITTED),                           // warm-up (seq < 0.2 s × 10/s)
            line(1, 500, 50, "", "boom"),                             // warm-up, failed: not counted
            line(2, 200, 1, "", ADMITTED),                            // measured from here
            line(3, 200, 2, "", r#"{"response":{"allowed":false}}"#), // denied
            line(4, 0, 3, "connection refused", ""),                  // no answer
            line(5, 200, 4, "", ADMITTED),
        ]
        .join("\n");
        let report = report(lines.as_bytes(), &spec(None)).unwrap();
        assert_eq!((report.scheduled, report.ok, report.errors), (4, 2, 2));
        assert_eq!(report.answered_total, 3, "admitted answers, warm-up included");
        assert!(report.error_samples[0].contains("allowed\":false"), "{:?}", report.error_samples);
        assert_eq!(report.error_samples[1], "connection refused");
        assert!((report.latency_ms(1.0) - 4.0).abs() < 0.01, "the slowest measured answer: {}", report.latency_ms(1.0));
        assert!((report.latency_ms(0.0) - 1.0).abs() < 0.01, "the warm-up's 50 ms is not in it");
    }

    #[test]
    fn the_runs_check_refuses_an_admitted_answer() {
        let check = Check(Arc::new(|reply: &Reply| {
            if reply.body.windows(5).any(|w| w == b"patch") { Ok(()) } else { Err("no patch".to_owned()) }
        }));
        let lines = [line(2, 200, 1, "", ADMITTED), line(3, 200, 1, "", r#"{"response":{"allowed":true}}"#)].join("\n");
        let report = report(lines.as_bytes(), &spec(Some(check))).unwrap();
        assert_eq!((report.ok, report.errors), (1, 1));
        assert_eq!(report.error_samples, vec!["no patch".to_owned()]);
    }

    #[test]
    fn results_without_a_measured_request_are_an_error() {
        let lines = line(0, 200, 1, "", ADMITTED);
        assert!(report(lines.as_bytes(), &spec(None)).is_err());
        assert!(report(b"not json", &spec(None)).is_err());
    }
}
