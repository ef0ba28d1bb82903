//! The one HTTP port of each connector: `/metrics` (Prometheus text format), `/healthz` (the
//! process is alive) and `/readyz` (its dependencies answer; 503 naming the failing ones if not),
//! and the connector's control API (see [`crate::control`]); any other path is a JSON 404.
//!
//! The port is often reachable by more than Prometheus, so the server bounds what a client can
//! hold: request headers must arrive within [`HEADER_READ_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at accept), and at shutdown open
//! connections get [`SHUTDOWN_DRAIN`] before they are dropped, so a half-sent request cannot
//! delay the exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::readiness::Readiness;

/// Time a client gets to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; a scraper and a few probes need far fewer.
pub const MAX_CONNECTIONS: usize = 32;
/// Time open connections get to finish at shutdown.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

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
    control: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP port {addr} (set HTTP_ADDR to another)"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AppState { metrics, readiness })
        .merge(control)
        .fallback(crate::control::not_found)
        .method_not_allowed_fallback(crate::control::method_not_allowed);
    let task = tokio::spawn(serve(listener, app, shutdown));
    tracing::info!(addr = %bound, "Serving /metrics, /healthz, /readyz and the control API");
    Ok((bound, task))
}

async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "HTTP port: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // over the cap: dropped, the client sees the connection closed
        };
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_DRAIN, connection).await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    let drained = tokio::time::timeout(SHUTDOWN_DRAIN * 2, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        connections.abort_all();
    }
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// 503 names the failing dependencies only: their errors can quote input (a URL, a record), and
/// the logs carry them whole.
async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    match state.readiness.status() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(failing) => {
            let body = failing
                .iter()
                .map(|(check, _)| format!("{check}: not ready (see the logs)\n"))
                .collect();
            (StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}
