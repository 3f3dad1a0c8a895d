//! The webhook server runtime: HTTPS for reviews, plain HTTP for probes and metrics.
//!
//! # Why not `kubert` or `axum-server`
//!
//! Built directly on tokio, tokio-rustls, hyper and axum. The two ready-made options were read
//! (kubert 0.25's `server` module, axum-server 0.9) and set aside:
//!
//! - **kubert** re-reads and re-parses the certificate and key files for *every* connection (a
//!   disk read per handshake, and a rotation caught between the two writes fails that connection
//!   instead of keeping the last good pair); its header-read timeout is a fixed 2 s, which in hyper
//!   also closes idle keep-alive connections after 2 s and so forces the API server to re-handshake;
//!   it has no connection cap, no handshake timeout and no body cap; and it pins kube 1.1, while this
//!   crate builds on kube 5.
//! - **axum-server** reloads certificates and shuts down gracefully, but keeps the accept loop to
//!   itself: no connection cap, and for keep-alive connections only hyper's header timer or a
//!   first-request timeout, no idle timeout of their own.
//!
//! What a webhook needs is a small accept loop we own (`server/conn.rs`): a connection cap, a
//! handshake timeout, a header-read timeout separate from the keep-alive idle timeout, a certificate
//! swapped atomically for new handshakes after a background poll validated it, and a drain that asks
//! each keep-alive connection to close after its in-flight request.
//!
//! Behaviour follows the webhook contract in
//! <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/>:
//! HTTP/1.1 keep-alive over TLS 1.2+, the `?timeout=` deadline, HTTP 200 with `allowed: false` for
//! denials, and 4xx only where there is no review to answer.

mod admin;
mod conn;
mod pool;
mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cache::{CacheHealth, CacheStatus, format_duration, format_time};
use crate::metrics::Metrics;
use crate::namespaces::NamespaceSource;
use crate::pipeline::Pipeline;
use crate::tls::{CertStore, FileReloader, GeneratedCert, TlsError, TlsSource};

pub use webhook::parse_go_duration as parse_duration;
use webhook::webhook_router;

/// Limits and addresses of the server.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where reviews are served over HTTPS.
    pub webhook_addr: SocketAddr,
    /// Where `/livez`, `/readyz` and `/metrics` are served over plain HTTP.
    pub admin_addr: SocketAddr,
    /// The serving certificate.
    pub tls: TlsSource,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Time allowed for a TLS handshake. Short: the API server completes one in milliseconds,
    /// and a peer that says nothing holds a handshake slot until then.
    pub handshake_timeout: Duration,
    /// Most connections in their TLS handshake at once, from all peers; more are refused at accept.
    /// Connections in the handshake do not count against [`ServerConfig::max_connections`], so
    /// silent or slow peers cannot take the slots of clients that have shaken hands.
    pub max_handshakes: usize,
    /// Most connections in their TLS handshake at once from one IP address: one peer cannot take
    /// the whole handshake budget. Well above the bursts of new connections an API server opens
    /// (each handshake takes it milliseconds); raise it when many API servers reach the webhook
    /// through one address (a NAT).
    pub max_handshakes_per_peer: usize,
    /// Time allowed between the first byte of a request and the end of its headers.
    pub header_read_timeout: Duration,
    /// Time allowed for a whole request (body and answer); 408 after it.
    pub request_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections past the TLS handshake open at once; more are refused (at accept when
    /// every slot is taken). Each connection, and each handshake in progress, holds a 17 KiB read
    /// buffer under its TLS (one largest TLS record: a review arrives in one read).
    pub max_connections: usize,
    /// Also serve `GET /metrics` on the webhook port (HTTPS), for scrape configurations written for
    /// webhooks that serve it there; the admin port serves it in any case.
    pub metrics_on_webhook_port: bool,
    /// Threads that decode and answer reviews, apart from the threads that serve connections and
    /// probes (so CPU-bound steps cannot stall either); 0: one per CPU the process may use.
    pub review_threads: usize,
    /// After SIGTERM, how long to keep serving while unready (so endpoints drop this replica).
    pub drain_delay: Duration,
    /// After the drain delay, how long in-flight requests may take before connections are cut.
    pub shutdown_timeout: Duration,
    /// How long a watch cache ([`Server::cache`]) may be out of contact with the API server before
    /// `/readyz` fails; `None`: never. Until then the server answers from the cache and `/readyz`
    /// says `ok (degraded)`. Default 10 minutes: see [`DEFAULT_CACHE_MAX_STALENESS`].
    pub cache_max_staleness: Option<Duration>,
}

/// The default of [`ServerConfig::cache_max_staleness`]: 10 minutes.
///
/// Readiness is per replica, but the usual reasons a cache loses the API server (the API server
/// restarting or overloaded, a `NetworkPolicy` or RBAC change, a control-plane upgrade) hit every
/// replica at once, and a webhook with no ready replica is the `failurePolicy` for every request
/// it selects: `Fail` blocks them all, `Ignore` admits them unmutated. A cache a few minutes stale
/// costs little (a namespace label or catalog change not yet seen; namespaces the cache has never
/// seen are decided by the API server's own `namespaceSelector`). So the bound is long enough to
/// ride out restarts and upgrades of the control plane, and short enough that a replica cut off on
/// its own (its node's network) leaves the Service before its view drifts far.
pub const DEFAULT_CACHE_MAX_STALENESS: Duration = Duration::from_secs(600);

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            webhook_addr: SocketAddr::from(([0, 0, 0, 0], 8443)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: TlsSource::SelfSigned { names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()] },
            max_body_bytes: 4 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(3),
            max_handshakes: 256,
            max_handshakes_per_peer: 64,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            // Longer than Go's http.Transport IdleConnTimeout (90 s), so that the API server, not
            // this server, closes an idle connection: no request races a close.
            idle_timeout: Duration::from_secs(120),
            max_connections: 1024,
            review_threads: 0,
            metrics_on_webhook_port: false,
            drain_delay: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(30),
            cache_max_staleness: Some(DEFAULT_CACHE_MAX_STALENESS),
        }
    }
}

impl ServerConfig {
    /// A configuration for tests: both ports on 127.0.0.1 chosen by the OS, a generated
    /// certificate, and no drain delay.
    #[must_use]
    pub fn local() -> Self {
        Self {
            webhook_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            drain_delay: Duration::ZERO,
            ..Self::default()
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The certificate could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A port could not be bound.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Two pipelines share a path.
    #[error("failed to start: pipelines `{0}` and `{1}` are both served on `{2}`")]
    DuplicatePath(String, String, String),
    /// A limit is out of range.
    #[error("failed to start: {0}")]
    BadLimit(String),
    /// A pipeline is served on a path the server keeps for itself.
    #[error("failed to start: pipeline `{0}` is served on `{1}`, which the webhook port keeps for its own use")]
    ReservedPath(String, String),
    /// The server task failed.
    #[error("server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Readiness: certificate loaded, every gate passed, every cache synced and not out of contact
/// for longer than the staleness bound, not draining.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    pending_gates: AtomicUsize,
    draining: AtomicBool,
    caches: Vec<CacheHealth>,
    max_staleness: Option<Duration>,
}

impl Readiness {
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the server is ready, and the `/readyz` body saying why (not).
    pub(crate) fn check(&self) -> (bool, String) {
        let caches: Vec<CacheStatus> = self.caches.iter().map(CacheHealth::status).collect();
        verdict(
            self.pending_gates.load(Ordering::Acquire),
            self.draining.load(Ordering::Acquire),
            &caches,
            self.max_staleness,
        )
    }
}

/// The readiness decision and `/readyz` body, from the state it depends on.
fn verdict(
    pending_gates: usize,
    draining: bool,
    caches: &[CacheStatus],
    max_staleness: Option<Duration>,
) -> (bool, String) {
    let mut unready = Vec::new();
    let mut degraded = Vec::new();
    if pending_gates > 0 {
        unready.push(format!("{pending_gates} cache(s) not yet synced"));
    }
    for cache in caches {
        let name = &cache.cache;
        match (&cache.out_of_contact, cache.synced) {
            (None, true) => {}
            (None, false) => unready.push(format!("cache `{name}` not yet synced")),
            (Some(lost), false) => unready.push(format!("cache `{name}` not yet synced: {}", lost.error)),
            (Some(lost), true) => {
                let what = format!(
                    "cache `{name}` out of contact with the API server since {} ({} ago): {}",
                    format_time(lost.since),
                    format_duration(lost.elapsed),
                    lost.error
                );
                match max_staleness {
                    Some(max) if lost.elapsed > max => {
                        unready.push(format!(
                            "{what}; longer than the {} allowed (cache max staleness)",
                            format_duration(max)
                        ));
                    }
                    Some(max) => degraded.push(format!(
                        "{what}; serving its last contents, unready after {} out of contact",
                        format_duration(max)
                    )),
                    None => degraded.push(format!("{what}; serving its last contents (no staleness bound)")),
                }
            }
        }
    }
    if draining {
        unready.push("draining before shutdown".to_owned());
    }
    if !unready.is_empty() {
        unready.extend(degraded);
        (false, format!("not ready: {}\n", unready.join("; ")))
    } else if !degraded.is_empty() {
        (true, format!("ok (degraded): {}\n", degraded.join("; ")))
    } else {
        (true, "ok\n".to_owned())
    }
}

/// What request handling shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) namespaces: NamespaceSource,
    pub(crate) readiness: Readiness,
    pub(crate) config: ServerConfig,
    /// Where reviews run; `None` in an in-process [`router`], which answers on the caller's task.
    pub(crate) pool: Option<pool::ReviewPool>,
}

type Gate = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A webhook server for one or more pipelines.
#[must_use]
pub struct Server {
    config: ServerConfig,
    pipelines: Vec<Pipeline>,
    namespaces: NamespaceSource,
    gates: Vec<Gate>,
    caches: Vec<CacheHealth>,
    metrics: Metrics,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("pipelines", &self.pipelines)
            .field("caches", &self.caches)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server for `pipelines` with `config`.
    pub fn new(config: ServerConfig, pipelines: impl IntoIterator<Item = Pipeline>) -> Self {
        Self {
            config,
            pipelines: pipelines.into_iter().collect(),
            namespaces: NamespaceSource::Unknown,
            gates: Vec::new(),
            caches: Vec::new(),
            metrics: Metrics::new(),
        }
    }

    /// Where namespace labels come from (default: unknown, trusting the API server's selectors).
    pub fn namespaces(mut self, source: NamespaceSource) -> Self {
        self.namespaces = source;
        self
    }

    /// Stays unready until `gate` resolves (e.g. a cache's first sync).
    pub fn ready_when(mut self, gate: impl Future<Output = ()> + Send + 'static) -> Self {
        self.gates.push(Box::pin(gate));
        self
    }

    /// Serves with a watch cache (from [`crate::cache::watch`], [`NamespaceSource::watch`], …):
    /// unready until its first list has loaded; unready again while it has been out of contact
    /// with the API server for longer than [`ServerConfig::cache_max_staleness`] (until then
    /// `/readyz` says `ok (degraded)`); its health in the metrics (`admission_kit_cache_*`).
    pub fn cache(mut self, health: CacheHealth) -> Self {
        self.caches.push(health);
        self
    }

    /// Uses `metrics` (with a plugin's own metrics registered in it) instead of a fresh set.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Loads the certificate, binds both ports and starts serving. Returns at once with a handle.
    pub async fn start(self) -> Result<RunningServer, ServerError> {
        if self.config.max_handshakes == 0 || self.config.max_handshakes_per_peer == 0 {
            return Err(ServerError::BadLimit(format!(
                "max_handshakes and max_handshakes_per_peer must be at least 1, got {} and {}",
                self.config.max_handshakes, self.config.max_handshakes_per_peer
            )));
        }
        if self.config.max_connections == 0 || self.config.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ServerError::BadLimit(format!(
                "max_connections must be between 1 and {}, got {}",
                tokio::sync::Semaphore::MAX_PERMITS,
                self.config.max_connections
            )));
        }
        let mut seen: Vec<&Pipeline> = Vec::new();
        for p in &self.pipelines {
            if p.path() == webhook::HEALTHZ || (self.config.metrics_on_webhook_port && p.path() == webhook::METRICS) {
                return Err(ServerError::ReservedPath(p.name().to_owned(), p.path().to_owned()));
            }
            if let Some(other) = seen.iter().find(|o| o.path() == p.path()) {
                return Err(ServerError::DuplicatePath(
                    other.name().to_owned(),
                    p.name().to_owned(),
                    p.path().to_owned(),
                ));
            }
            seen.push(p);
        }
        let metrics = Arc::new(self.metrics);
        for cache in &self.caches {
            cache.attach_metrics(&metrics);
        }
        let (store, reloader, ca_pem) = load_certificate(&self.config.tls)?;
        crate::tls::record_expiry(&metrics, &store.current());
        let tls = Arc::new(crate::tls::server_config(store.clone())?);
        let bind = |addr: SocketAddr| async move { listen(addr).map_err(|source| ServerError::Bind { addr, source }) };
        let webhook_listener = bind(self.config.webhook_addr).await?;
        let admin_listener = bind(self.config.admin_addr).await?;
        let webhook_addr = webhook_listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr: self.config.webhook_addr, source })?;
        let admin_addr =
            admin_listener.local_addr().map_err(|source| ServerError::Bind { addr: self.config.admin_addr, source })?;

        let shared = Arc::new(Shared {
            metrics: metrics.clone(),
            namespaces: self.namespaces,
            readiness: Readiness {
                pending_gates: AtomicUsize::new(self.gates.len()),
                draining: AtomicBool::new(false),
                caches: self.caches,
                max_staleness: self.config.cache_max_staleness,
            },
            config: self.config.clone(),
            pool: Some(
                pool::ReviewPool::new(pool::threads(self.config.review_threads))
                    .map_err(|e| ServerError::BadLimit(format!("cannot start the review threads: {e}")))?,
            ),
        });
        for gate in self.gates {
            let shared = shared.clone();
            tokio::spawn(async move {
                gate.await;
                shared.readiness.pending_gates.fetch_sub(1, Ordering::AcqRel);
            });
        }
        let mut background = Vec::new();
        if let Some((reloader, interval)) = reloader {
            background.push(tokio::spawn(reloader.run(store.clone(), interval, metrics.clone())));
        }
        log_namespace_trust(&self.pipelines, &shared.namespaces);

        let (stop_tx, stop_rx) = watch::channel(false);
        let router = webhook_router(&self.pipelines, &shared);
        let admin = admin::serve(admin_listener, shared.clone(), stop_rx.clone());
        let accept = conn::AcceptLoop { listener: webhook_listener, tls, router, shared: shared.clone() };
        let (drain_tx, drain_rx) = watch::channel(false);
        let shutdown_timeout = self.config.shutdown_timeout;
        let task = tokio::spawn(async move {
            let mut drain_rx = drain_rx;
            let served = tokio::spawn(accept.run(stop_rx.clone()));
            let admin = tokio::spawn(admin);
            // Wait for the shutdown request, then drain.
            conn::stopped(&mut drain_rx).await;
            shared.readiness.draining.store(true, Ordering::Release);
            shared.metrics.draining.set(1);
            tracing::info!(delay = ?shared.config.drain_delay, "draining: unready, still serving");
            tokio::time::sleep(shared.config.drain_delay).await;
            let _ = stop_tx.send(true);
            let _ = served.await;
            // The admin port has no per-connection limits of its own: never let it hold the exit.
            if tokio::time::timeout(shutdown_timeout, admin).await.is_err() {
                tracing::warn!("admin port connections still open at the shutdown timeout; closing them");
            }
            for b in background {
                b.abort();
            }
            tracing::info!("server stopped");
        });
        tracing::info!(%webhook_addr, %admin_addr, "serving");
        Ok(RunningServer { webhook_addr, admin_addr, ca_pem, drain: drain_tx, task })
    }

    /// Starts, serves until `shutdown` resolves (e.g. [`shutdown_signal`]), then drains and stops.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let running = self.start().await?;
        shutdown.await;
        running.shutdown_and_wait().await
    }
}

/// The serving certificate: loaded from files (with their reloader) or generated (with its CA).
type LoadedCertificate = (Arc<CertStore>, Option<(FileReloader, Duration)>, Option<String>);

/// The listen backlog of both ports: connections the kernel completes before the server accepts
/// them. A burst of new connections beyond it (a rolling restart of API servers, a reconnect storm)
/// is dropped by the kernel and retried by clients a second later; tokio's default is 128, Go's
/// `net.Listen` uses the system's maximum (`net.core.somaxconn`, which also caps this value).
pub const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As `TcpListener::bind` does: a restarted server can bind while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn load_certificate(tls: &TlsSource) -> Result<LoadedCertificate, TlsError> {
    match tls {
        TlsSource::Files { cert, key, reload_interval } => {
            let (reloader, key) = FileReloader::load(cert, key)?;
            Ok((Arc::new(CertStore::new(key)), Some((reloader, *reload_interval)), None))
        }
        TlsSource::SelfSigned { names } => {
            let generated = GeneratedCert::generate(names)?;
            let generated_path = std::path::Path::new("<generated>");
            let key = crate::tls::parse_pair(
                generated.cert_pem.as_bytes(),
                generated.key_pem.as_bytes(),
                generated_path,
                generated_path,
            )?;
            Ok((Arc::new(CertStore::new(key)), None, Some(generated.ca_pem)))
        }
    }
}

fn log_namespace_trust(pipelines: &[Pipeline], namespaces: &NamespaceSource) {
    if namespaces.is_known() {
        return;
    }
    for p in pipelines {
        let (trusted, unchecked) = p.namespace_label_needs();
        if !trusted.is_empty() {
            let trusted: Vec<String> = trusted.iter().map(ToString::to_string).collect();
            tracing::warn!(
                webhook = p.name(),
                requirements = ?trusted,
                "no namespace cache: namespace label requirements are enforced by the API server's namespaceSelector and trusted, not re-checked"
            );
        }
        if !unchecked.is_empty() {
            let unchecked: Vec<String> = unchecked.iter().map(ToString::to_string).collect();
            tracing::error!(
                webhook = p.name(),
                requirements = ?unchecked,
                "no namespace cache: these namespace label requirements are not in the webhook's namespaceSelector and cannot be decided; their steps will fail"
            );
        }
    }
}

/// A started server.
#[derive(Debug)]
pub struct RunningServer {
    webhook_addr: SocketAddr,
    admin_addr: SocketAddr,
    ca_pem: Option<String>,
    drain: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// The bound webhook (HTTPS) address.
    #[must_use]
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_addr
    }

    /// The bound admin (HTTP) address.
    #[must_use]
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The generated CA (PEM) when the server made its own certificate.
    #[must_use]
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Starts the drain (as SIGTERM does) without waiting.
    pub fn begin_shutdown(&self) {
        let _ = self.drain.send(true);
    }

    /// Drains and waits until the server has stopped.
    pub async fn shutdown_and_wait(self) -> Result<(), ServerError> {
        self.begin_shutdown();
        self.task.await?;
        Ok(())
    }
}

/// The webhook router alone, for driving pipelines in-process (`tower::ServiceExt::oneshot`)
/// without sockets or TLS: same decoding, limits, status codes and answers as the server. Reviews
/// run on the caller's task, not on review threads of their own, so the deadline holds only for
/// steps that await or check it.
pub fn router(config: ServerConfig, pipelines: &[Pipeline], namespaces: NamespaceSource) -> axum::Router {
    let shared = Arc::new(Shared {
        metrics: Arc::new(Metrics::new()),
        namespaces,
        readiness: Readiness::default(),
        config,
        pool: None,
    });
    webhook_router(pipelines, &shared)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests;
