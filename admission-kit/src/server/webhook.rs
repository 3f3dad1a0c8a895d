//! The review endpoint: decode, dispatch to the pipeline, encode; limits and deadline.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::Shared;
use crate::matcher::NamespaceView;
use crate::metrics::{ReviewLabels, StepLabels, WebhookLabels};
use crate::pipeline::{FailureMode, FailurePolicy, Outcome, Pipeline, StepResult};
use crate::review::{Answer, DecodeError, Review};

/// When a request's headers arrived (set by the connection; absent in-process).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arrived(pub(crate) Instant);

struct Hook {
    pipeline: Pipeline,
    shared: Arc<Shared>,
    /// This webhook's series of the request-duration histogram, looked up once.
    duration: prometheus_client::metrics::histogram::Histogram,
    /// This webhook's series of the request counter, by operation and result, each looked up once:
    /// a lookup in the family builds its labels (three strings) and hashes them, on every review.
    requests: std::sync::RwLock<Vec<(&'static str, &'static str, prometheus_client::metrics::counter::Counter)>>,
}

impl Hook {
    fn new(pipeline: &Pipeline, shared: &Arc<Shared>) -> Self {
        let duration =
            shared.metrics.duration.get_or_create(&WebhookLabels { webhook: pipeline.name().to_owned() }).clone();
        Self { pipeline: pipeline.clone(), shared: shared.clone(), duration, requests: std::sync::RwLock::default() }
    }

    /// Adds one to `admission_kit_requests_total` for this webhook.
    fn count(&self, counted: Counted) {
        let (operation, result) = match counted {
            Counted::Invalid => ("unknown", "invalid"),
            Counted::Answered { operation, result } => (operation, result),
        };
        let known = |list: &[(&str, &str, prometheus_client::metrics::counter::Counter)]| {
            list.iter().find(|(o, r, _)| *o == operation && *r == result).map(|(_, _, c)| c.clone())
        };
        let cached = self.requests.read().map_or_else(|p| known(&p.into_inner()), |list| known(&list));
        let series = cached.unwrap_or_else(|| {
            let found = self
                .shared
                .metrics
                .requests
                .get_or_create(&ReviewLabels {
                    webhook: self.pipeline.name().to_owned(),
                    operation: operation.to_owned(),
                    result: result.to_owned(),
                })
                .clone();
            if let Ok(mut list) = self.requests.write() {
                list.push((operation, result, found.clone()));
            }
            found
        });
        series.inc();
    }
}

/// The path of the webhook port's own health check, reserved: no pipeline may be served on it.
pub(crate) const HEALTHZ: &str = "/healthz";
/// Where the webhook port serves the metrics when asked to (reserved then).
pub(crate) const METRICS: &str = "/metrics";

/// The axum router serving `pipelines` on their paths, with the body cap (413), request timeout
/// (408), method (405) and content-type (415) checks, and `GET /healthz`. Exposed so tests can
/// drive it in-process.
pub(crate) fn webhook_router(pipelines: &[Pipeline], shared: &Arc<Shared>) -> Router {
    let health = shared.clone();
    // For probes that look at the webhook port itself (Deployments written for other injectors
    // probe `GET /healthz` over HTTPS): 200 while serving, 503 once draining, so that a readiness
    // probe on it takes the replica out of its Service before it stops. Unlike `/readyz` it does
    // not wait for caches, so a liveness probe on it never restarts a replica that is syncing.
    let mut router = Router::new();
    // (The server refuses a pipeline on this path; an in-process router serves the pipeline.)
    if pipelines.iter().all(|p| p.path() != HEALTHZ) {
        router = router.route(
            HEALTHZ,
            axum::routing::get(move || {
                let health = health.clone();
                async move {
                    if health.readiness.is_draining() {
                        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                    } else {
                        (StatusCode::OK, "ok\n")
                    }
                }
            }),
        );
    }
    if shared.config.metrics_on_webhook_port && pipelines.iter().all(|p| p.path() != METRICS) {
        router = router.route(METRICS, axum::routing::get(super::admin::metrics).with_state(shared.clone()));
    }
    for pipeline in pipelines {
        let hook = Arc::new(Hook::new(pipeline, shared));
        router = router.route(pipeline.path(), post(review).with_state(hook));
    }
    let paths: Vec<String> = pipelines.iter().map(|p| p.path().to_owned()).collect();
    router
        .fallback(move || {
            let paths = paths.clone();
            async move {
                (
                    StatusCode::NOT_FOUND,
                    format!(
                        "no webhook here; webhooks are served on {}\n",
                        paths.join(", ")
                    ),
                )
            }
        })
        .layer(DefaultBodyLimit::max(shared.config.max_body_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            shared.config.request_timeout,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
}

/// Parses Go's `time.Duration` text as the API server sends it in `?timeout=` (e.g. `10s`, `1m0s`,
/// `2.5s`, `500ms`).
#[must_use]
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// When a review must be settled: steps must finish by `steps`, and the answer leaves by `answer`
/// whatever the steps do.
#[derive(Clone, Copy, Debug)]
struct Deadlines {
    steps: Instant,
    answer: Instant,
}

/// The API server's `?timeout=` (or the pipeline's `timeoutSeconds`), never later than the server's
/// request timeout, less a margin for the answer's trip back (a tenth, at most 250 ms). Steps get
/// the time up to the margin; the backstop answers half-way through it.
fn deadlines(start: Instant, query: Option<&str>, pipeline: &Pipeline, request_timeout: Duration) -> Deadlines {
    let asked = query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("timeout=")))
        .and_then(parse_go_duration)
        .unwrap_or_else(|| Duration::from_secs(u64::try_from(pipeline.timeout_seconds()).unwrap_or(10)));
    let budget = asked.min(request_timeout);
    let margin = (budget / 10).min(Duration::from_millis(250));
    Deadlines { steps: start + budget.saturating_sub(margin), answer: start + budget.saturating_sub(margin / 2) }
}

fn text(status: StatusCode, message: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message + "\n").into_response()
}

fn json(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// What a review adds to `admission_kit_requests_total`.
#[derive(Clone, Copy, Debug)]
enum Counted {
    /// Not an `AdmissionReview` that could be answered.
    Invalid,
    /// Answered: the operation and the result label.
    Answered { operation: &'static str, result: &'static str },
}

/// A review's answer, and how to count it.
struct Reply {
    response: Response,
    counted: Counted,
}

/// The request's `apiVersion`, `uid` and operation, known once its body is decoded: what the
/// backstop needs to answer for a review whose steps overran.
type Header = std::sync::OnceLock<(String, String, &'static str)>;

async fn review(
    State(hook): State<Arc<Hook>>,
    RawQuery(query): RawQuery,
    arrived: Option<axum::Extension<Arrived>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The deadline counts from when the request arrived, not from when its body was read.
    let start = arrived.map_or_else(Instant::now, |a| a.0.0);
    let shared = hook.shared.clone();
    let webhook = hook.pipeline.name();
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !json_body {
        hook.count(Counted::Invalid);
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json with an AdmissionReview body".to_owned(),
        );
    }
    let _in_flight = InFlightGauge::new(&shared.metrics.in_flight);
    let deadlines = deadlines(start, query.as_deref(), &hook.pipeline, shared.config.request_timeout);
    let reply = match &shared.pool {
        // In-process routers answer on the caller's task.
        None => answer(hook.clone(), body, deadlines.steps, None).await,
        Some(pool) => {
            let header = Arc::new(Header::new());
            // A cheap reference: the backstop reads the uid itself when the review never reached a
            // thread.
            let body_copy = body.clone();
            let task = pool.spawn(answer(hook.clone(), body, deadlines.steps, Some(header.clone())));
            let abort = task.abort_handle();
            match tokio::time::timeout_at(deadlines.answer, task).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(error)) => {
                    tracing::error!(%error, "review task failed");
                    Reply {
                        response: text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("{webhook}: the review failed: {error}"),
                        ),
                        counted: Counted::Invalid,
                    }
                }
                Err(_) => {
                    // A step neither finished nor reached an `.await` or a deadline check in time.
                    // Stop it at its next `.await`; a step that never yields keeps its thread.
                    abort.abort();
                    let header = header.get().cloned().or_else(|| envelope(&body_copy));
                    overran(&hook, header.as_ref())
                }
            }
        }
    };
    hook.count(reply.counted);
    hook.duration.observe(start.elapsed().as_secs_f64());
    reply.response
}

/// The `apiVersion`, `uid` and operation of a review, read without decoding its object: for the
/// backstop when the review waited for a review thread until its deadline.
fn envelope(body: &[u8]) -> Option<(String, String, &'static str)> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(rename = "apiVersion")]
        api_version: String,
        request: Request,
    }
    #[derive(serde::Deserialize)]
    struct Request {
        uid: String,
        operation: kube::core::admission::Operation,
    }
    let review: Envelope = serde_json::from_slice(body).ok()?;
    Some((review.api_version, review.request.uid, crate::review::operation_name(&review.request.operation)))
}

/// The backstop's answer for a review still running at its answer deadline: what the pipeline's
/// `failurePolicy` asks of the API server when a webhook does not answer, said in time and with
/// a reason.
fn overran(hook: &Hook, header: Option<&(String, String, &'static str)>) -> Reply {
    let webhook = hook.pipeline.name();
    hook.shared.metrics.overruns.get_or_create(&WebhookLabels { webhook: webhook.to_owned() }).inc();
    let Some((api_version, uid, operation)) = header else {
        tracing::warn!("a body that is not an AdmissionReview was still waiting at its deadline");
        return Reply {
            response: text(StatusCode::BAD_REQUEST, format!("{webhook}: the body is not an AdmissionReview")),
            counted: Counted::Invalid,
        };
    };
    let reason = "a step did not finish before the API server's deadline";
    let answer = match hook.pipeline.failure_policy() {
        FailurePolicy::Fail => {
            tracing::error!(%uid, "{reason}; denied (failurePolicy Fail)");
            Answer::deny(api_version, uid, 500, format!("{webhook}: {reason}, so the object was not admitted"))
        }
        FailurePolicy::Ignore => {
            tracing::error!(%uid, "{reason}; admitted unchanged (failurePolicy Ignore)");
            let mut allowed = Answer::allow(api_version, uid);
            allowed.warnings.push(format!("{webhook}: {reason}; admitted without its changes"));
            allowed
        }
    };
    let result = answer.result_label();
    Reply { response: encode(&answer), counted: Counted::Answered { operation, result } }
}

/// Decodes, runs the pipeline and encodes: the CPU-bound part of a review, run on the review pool.
async fn answer(hook: Arc<Hook>, body: Bytes, deadline: Instant, header: Option<Arc<Header>>) -> Reply {
    let shared = &hook.shared;
    let webhook = hook.pipeline.name();
    let review = match Review::decode(&body, hook.pipeline.managed_fields()) {
        Ok(review) => review,
        Err(DecodeError::MalformedRequest { uid, api_version, source }) => {
            tracing::warn!(%uid, error = %source, "malformed admission request");
            let answer = Answer::deny(
                &api_version,
                &uid,
                400,
                format!("{webhook}: the AdmissionReview request could not be read: {source}"),
            );
            return Reply { response: encode(&answer), counted: Counted::Invalid };
        }
        Err(error) => {
            tracing::warn!(%error, "body is not an AdmissionReview");
            return Reply { response: text(StatusCode::BAD_REQUEST, error.to_string()), counted: Counted::Invalid };
        }
    };
    drop(body);
    let request = &review.request;
    if let Some(header) = header {
        let operation = crate::review::operation_name(&request.operation);
        let _ = header.set((review.api_version.clone(), request.uid.clone(), operation));
    }
    let span = tracing::info_span!(
        "review",
        webhook,
        uid = %request.uid,
        kind = %request.kind.kind,
        namespace = request.namespace.as_deref().unwrap_or(""),
        object_name = %request.name,
        operation = ?request.operation,
    );
    let labels = request.namespace.as_deref().and_then(|ns| shared.namespaces.labels(ns));
    let outcome = hook
        .pipeline
        .review_until(&review, labels.as_ref().map_or(NamespaceView::unknown(), |l| l.get().into()), Some(deadline))
        .instrument(span.clone())
        .await;
    record(shared, webhook, &outcome, &span);
    let counted = Counted::Answered {
        operation: crate::review::operation_name(&request.operation),
        result: outcome.answer.result_label(),
    };
    Reply { response: encode(&outcome.answer), counted }
}

/// Counts a review in flight until dropped — also when the review is cancelled (client gone,
/// request timeout, shutdown) in the middle of an `.await`.
struct InFlightGauge<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlightGauge<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlightGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn encode(answer: &Answer) -> Response {
    match answer.to_review_json() {
        Ok(body) => json(body),
        Err(error) => {
            tracing::error!(%error, "failed to encode the answer");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("failed to encode the answer: {error}"))
        }
    }
}

fn record(shared: &Shared, webhook: &str, outcome: &Outcome, span: &tracing::Span) {
    let _entered = span.enter();
    for report in &outcome.steps {
        let labels = || StepLabels { webhook: webhook.to_owned(), step: report.step.clone() };
        match &report.result {
            StepResult::Panicked(message) => {
                shared.metrics.panics.get_or_create(&labels()).inc();
                tracing::error!(step = %report.step, reason = %message, "mutator panicked; denied");
            }
            StepResult::Failed { message, mode: FailureMode::AllowWithWarning } => {
                shared.metrics.fail_open.get_or_create(&labels()).inc();
                tracing::warn!(step = %report.step, reason = %message, "step failed; admitted without its change");
            }
            StepResult::Failed { message, .. } => {
                shared.metrics.failures.get_or_create(&labels()).inc();
                tracing::warn!(step = %report.step, reason = %message, "step failed; denied");
            }
            StepResult::Denied(message) => tracing::info!(step = %report.step, reason = %message, "denied"),
            StepResult::Undecodable(message) => {
                tracing::warn!(step = %report.step, reason = %message, "object does not decode; denied");
            }
            StepResult::Applied { changed } => {
                // `changed` is not tracked after the first step that changes the object.
                tracing::debug!(step = %report.step, changed = ?changed, "applied");
            }
            StepResult::Skipped(reason) => tracing::trace!(step = %report.step, %reason, "skipped"),
        }
    }
    tracing::debug!(result = outcome.answer.result_label(), "answered");
}

#[cfg(test)]
mod tests {
    use super::parse_go_duration;
    use std::time::Duration;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("2.5s"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration("1e400s"), None);
    }
}
