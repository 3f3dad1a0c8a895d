//! The admin port: `/livez`, `/readyz` and `/metrics` over plain HTTP, for kubelet probes and
//! Prometheus; never the API server's traffic.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Shared;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// 200 `ok`, 200 `ok (degraded): …` while a cache is out of contact within its staleness bound, or
/// 503 `not ready: …` with every reason.
async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let (ready, body) = shared.readiness.check();
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

pub(super) async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], shared.metrics.encode())
}

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let app = router(shared);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            super::conn::stopped(&mut stop).await;
        })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "admin server failed");
    }
}
