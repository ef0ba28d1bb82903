//! What both binaries' `main` does around the connector itself: tracing, the Prometheus
//! recorder, the signal handler, the HTTP port, and the exit code.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::readiness::Readiness;
use crate::telemetry::LogArgs;

/// Runs `connector` until it returns: `Ok(true)` exits 0, `Ok(false)` (a `--once` run that
/// failed) exits 1, an error is logged and exits 1. `control` builds the connector's control
/// API (its mutating calls behind the token `admin` names), served on the same port from the
/// start, and the handle the connector fills it in through.
pub async fn run<T, C, F, Fut>(
    service: &'static str,
    checks: &[&'static str],
    log: &LogArgs,
    http_addr: SocketAddr,
    admin: &crate::control::AdminArgs,
    control: C,
    connector: F,
) -> ExitCode
where
    C: FnOnce(&Readiness, crate::control::Admin) -> (axum::Router, T),
    F: FnOnce(T, Readiness, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    if let Err(e) = crate::telemetry::init_tracing(log) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let admin = match admin.token() {
        Ok(token) => crate::control::Admin::new(service, token),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match serve_and_run(service, checks, http_addr, admin, control, connector).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "{service} connector stopped on an error"
            );
            ExitCode::from(1)
        }
    }
}

async fn serve_and_run<T, C, F, Fut>(
    service: &'static str,
    checks: &[&'static str],
    http_addr: SocketAddr,
    admin: crate::control::Admin,
    control: C,
    connector: F,
) -> anyhow::Result<bool>
where
    C: FnOnce(&Readiness, crate::control::Admin) -> (axum::Router, T),
    F: FnOnce(T, Readiness, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let metrics = crate::telemetry::init_metrics()?;
    let shutdown = crate::shutdown::on_signals();
    let readiness = Readiness::new(service, checks);
    // The HTTP port outlives the connector's drain, so /metrics is scraped until the end.
    let server_stop = CancellationToken::new();
    let (routes, handle) = control(&readiness, admin);
    let (_, server) = crate::serve::spawn(
        http_addr,
        metrics,
        readiness.clone(),
        routes,
        server_stop.clone(),
    )
    .await?;
    let result = connector(handle, readiness, shutdown).await;
    server_stop.cancel();
    server.await.context("HTTP server task")?;
    result
}
