//! The accept loop and one task per connection: the handshake budget (connections in their TLS
//! handshake, in all and per peer address, with a short timeout), the connection cap (connections
//! past the handshake), header-read and idle timeouts, and graceful close of keep-alive connections
//! on drain. A flood of peers that connect and say nothing holds handshake slots only, for the
//! handshake timeout at most, and never the slots of clients that have shaken hands.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::Shared;
use crate::metrics::{Metrics, RefusalLabels};

/// Why a connection was refused (or, for [`Refusal::HandshakeEvicted`], closed in its handshake).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    ConnectionCap,
    HandshakeBudget,
    PeerHandshakes,
    HandshakeEvicted,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::ConnectionCap => "connection_cap",
            Self::HandshakeBudget => "handshake_budget",
            Self::PeerHandshakes => "peer_handshakes",
            Self::HandshakeEvicted => "handshake_evicted",
        }
    }

    fn count(self, metrics: &Metrics) {
        metrics.connections_refused.get_or_create(&RefusalLabels { reason: self.label().to_owned() }).inc();
    }
}

/// With the handshake budget full, a new connection takes a slot from the address holding the most
/// handshakes if its own address holds fewer (a fair share: a client with one or two handshakes in
/// progress, like an API server, always gets in, however fast a flood from other addresses
/// arrives); otherwise it takes the slot of the oldest handshake if that one has been at it this
/// long (a real client finishes in milliseconds, so the oldest is the likeliest to be a silent
/// peer). Younger ones are left alone, so a burst of real handshakes does not cut itself short.
const EVICT_AFTER: Duration = Duration::from_millis(250);

/// Connections in their TLS handshake: how many in all, and per peer address.
#[derive(Debug)]
struct Handshakes {
    max: usize,
    max_per_peer: usize,
    // A plain mutex: held for a map update on accept and on a handshake's end, never across an await.
    table: Mutex<HandshakeTable>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct HandshakeTable {
    per_peer: HashMap<IpAddr, usize>,
    /// The handshakes in progress, oldest first (ids grow).
    pending: BTreeMap<u64, Pending>,
    next: u64,
}

#[derive(Debug)]
struct Pending {
    peer: IpAddr,
    since: Instant,
    /// Tells the connection's task to give up its handshake.
    evict: tokio::sync::oneshot::Sender<()>,
}

impl HandshakeTable {
    /// Which handshake a new connection from `peer` may take the slot of, with the budget full
    /// (see [`EVICT_AFTER`]): the oldest of the address holding the most, if `peer` holds fewer;
    /// else the oldest of all, if it is old enough.
    fn victim(&self, peer: IpAddr) -> Option<u64> {
        let mine = self.per_peer.get(&peer).copied().unwrap_or(0);
        let heaviest = self.per_peer.iter().max_by_key(|(_, count)| **count);
        if let Some((&heaviest, &count)) = heaviest
            && count > mine
        {
            return self.pending.iter().find(|(_, p)| p.peer == heaviest).map(|(&id, _)| id);
        }
        self.pending.first_key_value().filter(|(_, p)| p.since.elapsed() >= EVICT_AFTER).map(|(&id, _)| id)
    }

    fn release(&mut self, peer: IpAddr) {
        if let Some(mine) = self.per_peer.get_mut(&peer) {
            *mine -= 1;
            if *mine == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }
}

/// One connection's place in the handshake budget, given back when dropped.
struct HandshakeSlot {
    handshakes: Arc<Handshakes>,
    id: u64,
    /// Resolves when a newer connection took this slot.
    evicted: tokio::sync::oneshot::Receiver<()>,
}

impl Handshakes {
    fn begin(self: &Arc<Self>, peer: IpAddr) -> Result<HandshakeSlot, Refusal> {
        let peer = peer.to_canonical();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.per_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            return Err(Refusal::PeerHandshakes);
        }
        if table.pending.len() >= self.max {
            let Some(victim) = table.victim(peer) else { return Err(Refusal::HandshakeBudget) };
            if let Some(evicted) = table.pending.remove(&victim) {
                table.release(evicted.peer);
                let _ = evicted.evict.send(());
                self.metrics.connections_handshaking.dec();
                Refusal::HandshakeEvicted.count(&self.metrics);
            }
        }
        *table.per_peer.entry(peer).or_insert(0) += 1;
        let id = table.next;
        table.next += 1;
        let (evict, evicted) = tokio::sync::oneshot::channel();
        table.pending.insert(id, Pending { peer, since: Instant::now(), evict });
        self.metrics.connections_handshaking.inc();
        Ok(HandshakeSlot { handshakes: self.clone(), id, evicted })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut table = self.handshakes.table.lock().unwrap_or_else(PoisonError::into_inner);
        // Absent when evicted: its place was given back then.
        if let Some(pending) = table.pending.remove(&self.id) {
            table.release(pending.peer);
            self.handshakes.metrics.connections_handshaking.dec();
        }
    }
}

pub(super) struct AcceptLoop {
    pub(super) listener: TcpListener,
    pub(super) tls: Arc<rustls::ServerConfig>,
    pub(super) router: Router,
    pub(super) shared: Arc<Shared>,
}

impl AcceptLoop {
    /// Accepts until `stop` turns true, then asks every connection to close gracefully and waits
    /// (at most the shutdown timeout) for them.
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) {
        let config = &self.shared.config;
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let handshakes = Arc::new(Handshakes {
            max: config.max_handshakes,
            max_per_peer: config.max_handshakes_per_peer,
            table: Mutex::new(HandshakeTable::default()),
            metrics: self.shared.metrics.clone(),
        });
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let mut connections = JoinSet::new();
        let conn_stop = stop.clone();
        loop {
            tokio::select! {
                () = stopped(&mut stop) => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(error) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // With every connection slot taken, a new one could only be refused after its
                    // handshake: refuse it now. (It is checked again after the handshake, which is
                    // where a slot is taken.)
                    let slot = if permits.available_permits() == 0 {
                        Err(Refusal::ConnectionCap)
                    } else {
                        handshakes.begin(peer.ip())
                    };
                    let slot = match slot {
                        Ok(slot) => slot,
                        Err(refusal) => {
                            refusal.count(&self.shared.metrics);
                            tracing::warn!(%peer, reason = refusal.label(), "connection refused");
                            drop(stream);
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let conn = Connection {
                        acceptor: acceptor.clone(),
                        router: self.router.clone(),
                        shared: self.shared.clone(),
                        stop: conn_stop.clone(),
                        permits: permits.clone(),
                    };
                    connections.spawn(conn.serve(stream, slot));
                }
            }
        }
        drop(self.listener);
        let deadline = tokio::time::sleep(config.shutdown_timeout);
        tokio::pin!(deadline);
        while !connections.is_empty() {
            tokio::select! {
                _ = connections.join_next() => {}
                () = &mut deadline => {
                    tracing::warn!(open = connections.len(), "shutdown timeout: closing connections with requests still in flight");
                    connections.abort_all();
                    break;
                }
            }
        }
    }
}

/// Resolves once `stop` is true (the guard `wait_for` returns is dropped here, keeping callers `Send`).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The read buffer under each connection's TLS: one TLS record of the largest size (16 KiB of
/// plaintext and its overhead) fits.
const READ_BUFFER: usize = 17 * 1024;

struct Connection {
    acceptor: TlsAcceptor,
    router: Router,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    permits: Arc<Semaphore>,
}

/// Activity of one connection, shared by the I/O wrapper, the service and the watchdog.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last byte read or written (+1, so 0 means never).
    last: AtomicU64,
    /// Milliseconds since `epoch` (+1) when the current request's first byte arrived; 0 when idle.
    request_started: AtomicU64,
}

impl Activity {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }
    fn on_read(&self) {
        let now = self.now();
        self.last.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.request_started.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
    fn on_write(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }
}

impl Connection {
    async fn serve(mut self, stream: TcpStream, mut handshake: HandshakeSlot) {
        let metrics = self.shared.metrics.clone();
        let config = &self.shared.config;
        let handshake_started = Instant::now();
        // rustls reads the socket 4 KiB at a time (its deframer's read size), so a 10 KB review took
        // three `recvfrom` calls; a buffer under it takes what has arrived in one.
        let stream = tokio::io::BufReader::with_capacity(READ_BUFFER, stream);
        let handshaken = tokio::select! {
            handshaken = tokio::time::timeout(config.handshake_timeout, self.acceptor.accept(stream)) => handshaken,
            _ = &mut handshake.evicted => {
                tracing::debug!("TLS handshake evicted by a newer connection");
                return;
            }
        };
        drop(handshake);
        let tls = match handshaken {
            Ok(Ok(tls)) => {
                let kind = match tls.get_ref().1.handshake_kind() {
                    Some(rustls::HandshakeKind::Resumed) => "resumed",
                    _ => "full",
                };
                metrics
                    .handshakes
                    .get_or_create(&crate::metrics::HandshakeLabels { kind: kind.to_owned() })
                    .observe(handshake_started.elapsed().as_secs_f64());
                tls
            }
            Ok(Err(error)) => {
                metrics.handshake_failures.inc();
                tracing::debug!(%error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics.handshake_failures.inc();
                tracing::debug!("TLS handshake timed out");
                return;
            }
        };
        // The connection cap counts connections past the handshake only.
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            Refusal::ConnectionCap.count(&metrics);
            tracing::warn!(max = config.max_connections, reason = "connection_cap", "connection refused");
            return;
        };
        metrics.connections.inc();
        let activity = Arc::new(Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(1),
            // The first request's headers are due within the header-read timeout of the handshake:
            // a connection that opens and says nothing is not an idle keep-alive connection.
            request_started: AtomicU64::new(1),
        });
        let io = TokioIo::new(Tracked { inner: tls, activity: activity.clone() });
        let service =
            TrackedService { router: self.router.clone(), activity: activity.clone(), shared: self.shared.clone() };
        let conn = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(io, service);
        tokio::pin!(conn);
        let tick = (config.header_read_timeout.min(config.idle_timeout) / 4).max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When a graceful close was asked for (drain or idle), in milliseconds since the epoch.
        let mut closing: Option<u64> = None;
        let header_limit = u64::try_from(config.header_read_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle_limit = u64::try_from(config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    break;
                }
                () = stopped(&mut self.stop), if closing.is_none() => {
                    // Finishes the request in flight, answers it with `Connection: close`, and
                    // closes an idle keep-alive connection at once.
                    conn.as_mut().graceful_shutdown();
                    closing = Some(activity.now());
                }
                _ = ticker.tick() => {
                    if activity.in_flight.load(Ordering::Acquire) > 0 {
                        continue;
                    }
                    let now = activity.now();
                    let started = activity.request_started.load(Ordering::Acquire);
                    if started != 0 && now.saturating_sub(started) > header_limit {
                        tracing::debug!("header read timeout: closing connection");
                        break;
                    }
                    if started == 0 && closing.is_none() && now.saturating_sub(activity.last.load(Ordering::Relaxed)) > idle_limit {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(now);
                    }
                    // No request is in flight, yet a graceful close has not finished: the peer is
                    // not reading what was written (a full TCP window). Drop the connection rather
                    // than hold its slot under the connection cap forever.
                    if closing.is_some_and(|since| now.saturating_sub(since) > header_limit) {
                        tracing::debug!("peer stopped reading: closing connection");
                        break;
                    }
                }
            }
        }
        metrics.connections.dec();
    }
}

#[derive(Clone)]
struct TrackedService {
    router: Router,
    activity: Arc<Activity>,
    shared: Arc<Shared>,
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.on_write();
    }
}

impl hyper::service::Service<http::Request<Incoming>> for TrackedService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, mut request: http::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(super::webhook::Arrived(tokio::time::Instant::now()));
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        self.activity.request_started.store(0, Ordering::Release);
        let guard = InFlight(self.activity.clone());
        let router = self.router.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut response = router.oneshot(request.map(axum::body::Body::new)).await;
            // While draining, every answer closes its connection, so that the API server opens new
            // ones (to other replicas) instead of reusing one this replica is about to close.
            if shared.readiness.is_draining()
                && let Ok(response) = &mut response
            {
                response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            drop(guard);
            response
        })
    }
}

pin_project_lite::pin_project! {
    /// Records read and write activity of the decrypted stream.
    struct Tracked<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
    }
}

impl<T: AsyncRead> AsyncRead for Tracked<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for Tracked<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.on_write();
        }
        result
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.on_write();
        }
        result
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
