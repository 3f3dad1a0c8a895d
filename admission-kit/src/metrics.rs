//! Prometheus metrics for the webhook server, all under the `admission_kit_` prefix.
//!
//! Names follow <https://prometheus.io/docs/practices/naming/>: base units (seconds), `_total`
//! counters, and no per-object labels (no pod names or uids). The latency buckets include the API
//! server's own webhook histogram bounds (5 ms, 25 ms, 100 ms, …) and go down to 0.5 ms.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Labels of a review.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// The webhook (pipeline) name.
    pub webhook: String,
    /// CREATE, UPDATE, …
    pub operation: String,
    /// `patched`, `allowed`, `denied`, or `invalid` for bodies that were not a review.
    pub result: String,
}

/// Labels of a step event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// The webhook (pipeline) name.
    pub webhook: String,
    /// The step.
    pub step: String,
}

/// Labels naming a webhook.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The webhook (pipeline) name.
    pub webhook: String,
}

/// Labels of a certificate reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` or `failure`.
    pub result: String,
}

/// Labels of a refused connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `connection_cap` (as many connections open as allowed), `handshake_budget` (as many
    /// connections in their TLS handshake as allowed) or `peer_handshakes` (as many from this
    /// peer's address).
    pub reason: String,
}

/// Labels of a completed TLS handshake.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `full`, or `resumed` (a session resumed from a ticket: no certificate exchange, cheaper).
    pub kind: String,
}

/// Labels naming a watch cache.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// The cache (`namespaces`, `configmaps`, …).
    pub cache: String,
}

/// Every metric the server records.
#[derive(Debug)]
#[non_exhaustive]
pub struct Metrics {
    /// Reviews answered.
    pub requests: Family<ReviewLabels, Counter>,
    /// Review latency, from body received to answer encoded.
    pub duration: Family<WebhookLabels, Histogram>,
    /// Reviews being processed.
    pub in_flight: Gauge,
    /// Mutator panics (answered as denials).
    pub panics: Family<StepLabels, Counter>,
    /// Step failures admitted with a warning (fail-open).
    pub fail_open: Family<StepLabels, Counter>,
    /// Step failures that denied the object.
    pub failures: Family<StepLabels, Counter>,
    /// Reviews answered by the deadline backstop: a step was still running (it neither finished
    /// nor reached an `.await` or a deadline check) when the answer was due.
    pub overruns: Family<WebhookLabels, Counter>,
    /// Open webhook connections.
    pub connections: Gauge,
    /// Connections refused, by reason.
    pub connections_refused: Family<RefusalLabels, Counter>,
    /// Connections in their TLS handshake.
    pub connections_handshaking: Gauge,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: Counter,
    /// Completed TLS handshakes by kind, and how long each took from the connection's accept: every
    /// new connection a client opens (a client that reuses its connections opens few).
    pub handshakes: Family<HandshakeLabels, Histogram>,
    /// Certificate reloads.
    pub cert_reloads: Family<ReloadLabels, Counter>,
    /// `notAfter` of the certificate being served, as a Unix timestamp.
    pub cert_expiry: Gauge<f64, AtomicU64>,
    /// Whether the server is draining (1) or not (0).
    pub draining: Gauge,
    /// Per watch cache: 1 while synced and in contact with the API server; 0 before its first list
    /// and while out of contact (see [`crate::cache`]).
    pub cache_healthy: Family<CacheLabels, Gauge>,
    /// Per watch cache: when the API server last answered it, as a Unix timestamp (0: never).
    pub cache_last_contact: Family<CacheLabels, Gauge<f64, AtomicU64>>,
    /// Per watch cache: failed lists, watches and checks.
    pub cache_watch_errors: Family<CacheLabels, Counter>,
    registry: Registry,
}

impl Metrics {
    /// Creates the metrics and registers them.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("admission_kit");
        let requests = Family::<ReviewLabels, Counter>::default();
        let duration =
            Family::<WebhookLabels, Histogram>::new_with_constructor(new_latency_histogram as fn() -> Histogram);
        let in_flight = Gauge::default();
        let panics = Family::<StepLabels, Counter>::default();
        let fail_open = Family::<StepLabels, Counter>::default();
        let failures = Family::<StepLabels, Counter>::default();
        let overruns = Family::<WebhookLabels, Counter>::default();
        let connections = Gauge::default();
        let connections_refused = Family::<RefusalLabels, Counter>::default();
        let connections_handshaking = Gauge::default();
        let handshake_failures = Counter::default();
        let handshakes =
            Family::<HandshakeLabels, Histogram>::new_with_constructor(new_handshake_histogram as fn() -> Histogram);
        let cert_reloads = Family::<ReloadLabels, Counter>::default();
        let cert_expiry = Gauge::<f64, AtomicU64>::default();
        let draining = Gauge::default();
        let cache_healthy = Family::<CacheLabels, Gauge>::default();
        let cache_last_contact = Family::<CacheLabels, Gauge<f64, AtomicU64>>::default();
        let cache_watch_errors = Family::<CacheLabels, Counter>::default();
        registry.register("requests", "Admission reviews answered", requests.clone());
        registry.register("request_duration_seconds", "Time to answer an admission review", duration.clone());
        registry.register("requests_in_flight", "Admission reviews being answered", in_flight.clone());
        registry.register("mutator_panics", "Mutator panics, answered as denials", panics.clone());
        registry.register("step_fail_open", "Step failures admitted without the step's change", fail_open.clone());
        registry.register("step_failures", "Step failures that denied the object", failures.clone());
        registry.register(
            "review_overruns",
            "Reviews answered by the deadline backstop while a step was still running",
            overruns.clone(),
        );
        registry.register("connections_open", "Open webhook connections", connections.clone());
        registry.register(
            "connections_refused",
            "Connections refused at accept or after the handshake, by reason",
            connections_refused.clone(),
        );
        registry.register(
            "connections_handshaking",
            "Webhook connections in their TLS handshake",
            connections_handshaking.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            handshake_failures.clone(),
        );
        registry.register(
            "tls_handshake_duration_seconds",
            "Completed TLS handshakes of webhook connections (new connections), by kind",
            handshakes.clone(),
        );
        registry.register("certificate_reloads", "Serving certificate reloads", cert_reloads.clone());
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate",
            cert_expiry.clone(),
        );
        registry.register("draining", "1 while the server drains before exit", draining.clone());
        registry.register(
            "cache_healthy",
            "1 while a watch cache is synced and in contact with the API server",
            cache_healthy.clone(),
        );
        registry.register(
            "cache_last_contact_timestamp_seconds",
            "When the API server last answered a watch cache",
            cache_last_contact.clone(),
        );
        registry.register(
            "cache_watch_errors",
            "Failed lists, watches and contact checks of a watch cache",
            cache_watch_errors.clone(),
        );
        Self {
            requests,
            duration,
            in_flight,
            panics,
            fail_open,
            failures,
            overruns,
            connections,
            connections_refused,
            connections_handshaking,
            handshake_failures,
            handshakes,
            cert_reloads,
            cert_expiry,
            draining,
            cache_healthy,
            cache_last_contact,
            cache_watch_errors,
            registry,
        }
    }

    /// The registry, for a plugin to register its own metrics (e.g. catalog reloads) under the
    /// same prefix before the metrics are handed to the server.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The Prometheus text exposition of every registered metric.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn new_latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Buckets of the handshake histogram, in seconds: a full handshake on loopback takes about a
/// millisecond, a resumed one less; tens of milliseconds mean a busy server or a slow client.
const HANDSHAKE_BUCKETS: [f64; 9] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0];

fn new_handshake_histogram() -> Histogram {
    Histogram::new(HANDSHAKE_BUCKETS)
}
