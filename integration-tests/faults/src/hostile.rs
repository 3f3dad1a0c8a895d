//! Hostile bodies: "oversized, truncated, deeply nested and invalid-UTF-8 bodies under load: clear
//! errors, no crash".
//!
//! While 10 KB reviews run at 1,000/s, 20 hostile requests a second (each on its own new
//! connection, round robin over the kinds) are sent with `Content-Type: application/json`, as the
//! API server would send them. Every answer must carry the status and the message its kind calls
//! for; the real traffic must not see a single error; the process must be alive and serving after.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Ctx, Outcome, Scenario, Verdict, check_load};
use bench::client::{Connection, REVIEW_PATH, Tls};
use bench::load;
use bench::servers;

/// The server's body cap (`server.maxBodyBytes` default).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Hostile requests per second.
const RATE: f64 = 20.0;
/// Nesting depth of the deep body (`serde_json` stops at 128).
const DEPTH: usize = 100_000;

/// One hostile kind: its body and the answer it must get.
struct Kind {
    name: &'static str,
    body: Bytes,
    status: u16,
    /// A piece of the answer's body that makes the error clear.
    message: &'static str,
}

fn kinds(review: &[u8]) -> anyhow::Result<Vec<Kind>> {
    // A real review padded with whitespace inside the JSON to one byte over the cap.
    let mut oversized = review[..review.len() - 1].to_vec();
    oversized.resize(MAX_BODY, b' ');
    oversized.push(b'}');
    anyhow::ensure!(oversized.len() == MAX_BODY + 1 && review.last() == Some(&b'}'));
    let truncated = review[..review.len() / 2].to_vec();
    // The nesting is inside the object's `spec`, where every decode of the object must descend (the
    // injector's, which sets `metadata.managedFields` aside, refuses an object that is not a JSON
    // object before descending into it).
    let mut nested =
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"deep","object":{"spec":"#
            .to_vec();
    nested.extend(std::iter::repeat_n(b'[', DEPTH));
    nested.extend(std::iter::repeat_n(b']', DEPTH));
    nested.extend(b"}}}");
    // Two bytes that are never UTF-8 inside a string value of the real review.
    let at = memchr(review, b"haystack").ok_or_else(|| anyhow::anyhow!("no `haystack` in the review"))?;
    let mut invalid = review[..at].to_vec();
    invalid.extend([0xff, 0xfe]);
    invalid.extend(&review[at..]);
    // Readable as JSON with a uid, but `operation` has the wrong type: the webhook can answer the
    // review itself (a denial the API server reports), not just the HTTP request.
    let wrong = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-wrong","kind":{"group":"","version":"v1","kind":"Pod"},"operation":7}}"#;
    Ok(vec![
        Kind { name: "oversized (4 MiB + 1 B)", body: oversized.into(), status: 413, message: "length limit exceeded" },
        Kind { name: "truncated (half a review)", body: truncated.into(), status: 400, message: "EOF while parsing" },
        Kind { name: "nested 100,000 deep", body: nested.into(), status: 400, message: "recursion limit exceeded" },
        Kind { name: "invalid UTF-8", body: invalid.into(), status: 400, message: "invalid unicode code point" },
        Kind {
            name: "wrong field type (uid readable)",
            body: Bytes::from_static(wrong),
            status: 200,
            message: r#""allowed":false,"status":{"status":"Failure","code":400,"message":"sidecar-injector.expedia.com: the AdmissionReview request could not be read"#,
        },
    ])
}

fn memchr(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What one hostile request got.
struct Answer {
    kind: usize,
    result: Result<(u16, String), String>,
    took: Duration,
}

#[allow(clippy::too_many_lines, reason = "one scenario read top to bottom: set-up, fault, checks, figures")]
pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let dir = ctx.scenario_dir(Scenario::HostileBodies)?;
    let ca = servers::write_certificates(&dir.join("certs"))?;
    let tls = Tls::verifying(&ca)?;
    let spec = ctx.spec(&dir.join("certs"), &dir);
    let mut server = ctx.start(&spec, 1, &[], "warn", &tls).await?;
    let kinds = kinds(&ctx.review)?;
    let seconds = ctx.pick(6.0, 30.0);
    let load_spec = ctx.load(1000.0, 1.0, seconds);
    let addr = server.webhook;
    let hostile = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut i = 0usize;
        let total = (seconds * RATE).round();
        while f64::from(u32::try_from(i).unwrap_or(u32::MAX)) < total {
            tokio::time::sleep_until(start + Duration::from_secs_f64(f64::from(u32::try_from(i).unwrap_or(0)) / RATE))
                .await;
            let kind = i % kinds.len();
            let body = kinds[kind].body.clone();
            let tls = tls.clone();
            tasks.spawn(async move {
                let sent = Instant::now();
                let result = tokio::time::timeout(Duration::from_secs(10), async {
                    let mut conn = Connection::open(addr, &tls).await?;
                    conn.post(REVIEW_PATH, body, true).await
                })
                .await;
                let result = match result {
                    Ok(Ok(reply)) => Ok((reply.status.as_u16(), String::from_utf8_lossy(&reply.body).into_owned())),
                    Ok(Err(error)) => Err(format!("{error:#}")),
                    Err(_) => Err("no answer within 10 s".to_owned()),
                };
                Answer { kind, result, took: sent.elapsed() }
            });
            i += 1;
        }
        let mut answers = Vec::new();
        while let Some(answer) = tasks.join_next().await {
            if let Ok(answer) = answer {
                answers.push(answer);
            }
        }
        answers
    };
    let (report, answers) = tokio::join!(load::open_loop(addr, &tls, &load_spec), hostile);
    let report = report?;
    let alive = super::still_serving(ctx, &mut server, &tls).await;
    let log = super::log_text(&server);
    let _ = server.stop();

    let mut v = Verdict::new(ctx.short);
    check_load(&mut v, "real traffic", &report);
    let mut per_kind = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        let of: Vec<&Answer> = answers.iter().filter(|a| a.kind == k).collect();
        let clear = of
            .iter()
            .filter(
                |a| matches!(&a.result, Ok((status, body)) if *status == kind.status && body.contains(kind.message)),
            )
            .count();
        let wrong: Vec<String> = of
            .iter()
            .filter_map(|a| match &a.result {
                Ok((status, body)) if *status == kind.status && body.contains(kind.message) => None,
                Ok((status, body)) => Some(format!("HTTP {status}: {}", body.chars().take(200).collect::<String>())),
                Err(error) => Some(error.clone()),
            })
            .collect();
        v.check(!of.is_empty() && wrong.is_empty(), || {
            format!(
                "{}: {} of {} answered without HTTP {} and `{}` (first: {})",
                kind.name,
                wrong.len(),
                of.len(),
                kind.status,
                kind.message,
                wrong.first().map_or("none sent", String::as_str)
            )
        });
        let slowest = of.iter().map(|a| a.took).max().unwrap_or_default();
        let example = of
            .iter()
            .find_map(|a| a.result.as_ref().ok())
            .map(|(status, body)| {
                let body = body.trim();
                let shown = if kind.status == 200 {
                    kind.message.rsplit("\"message\":\"").next().unwrap_or(body)
                } else {
                    body
                };
                format!("{status} `{}`", shown.chars().take(90).collect::<String>())
            })
            .unwrap_or_default();
        per_kind.push(format!(
            "{} {clear}/{} clear, e.g. {example}, slowest {:.0} ms",
            kind.name,
            of.len(),
            super::ms(slowest)
        ));
    }
    v.check(!log.contains("panicked"), || "the server's log reports a panic".to_owned());
    v.check(alive.is_ok(), || format!("after the hostile bodies: {}", alive.clone().err().unwrap_or_default()));
    let figures = format!(
        "real traffic {} requests, {} failed, p99 {:.2} ms; {} hostile requests: {}; process alive and serving after",
        report.scheduled,
        report.errors,
        report.latency_ms(0.99),
        answers.len(),
        per_kind.join("; "),
    );
    let checked = format!(
        "{RATE:.0} hostile requests/s (oversized, truncated, deeply nested, invalid UTF-8, wrong field type), each on a new connection, mixed into 1,000 reviews/s for {seconds:.0} s: every hostile answer has its status and message (413 `length limit exceeded`, 400 `EOF while parsing`, 400 `recursion limit exceeded`, 400 `invalid unicode code point`, 200 denial with code 400); zero failed real requests; no panic in the log; alive and serving after"
    );
    Ok(v.outcome(Scenario::HostileBodies, checked, figures))
}
