//! The one HTTP port of each connector: `/metrics` (Prometheus text format), `/healthz` (the
//! process is alive) and `/readyz` (its dependencies answer; 503 with the failing ones if not).

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::readiness::Readiness;

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

/// Binds `addr` (failing at boot with a clear message if taken) and serves until `shutdown`.
/// Returns the bound address (useful with port 0) and the server task.
pub async fn spawn(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP port {addr} (set HTTP_ADDR to another)"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AppState { metrics, readiness });
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(addr = %bound, "Serving /metrics, /healthz and /readyz");
    Ok((bound, task))
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    match state.readiness.status() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(failing) => {
            let body = failing
                .iter()
                .map(|(check, why)| format!("{check}: {why}\n"))
                .collect();
            (StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}
