use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use plumbing::readiness::Readiness;
use sink_connector::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::parse().validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "Sink connector stopped on an error"
            );
            ExitCode::from(1)
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    plumbing::telemetry::init_tracing(&config.log)?;
    let metrics = plumbing::telemetry::init_metrics()?;
    let shutdown = plumbing::shutdown::on_signals();
    let readiness = Readiness::new("sink", sink_connector::READINESS_CHECKS);
    let server_stop = tokio_util::sync::CancellationToken::new();
    let (_, server) = plumbing::serve::spawn(
        config.http_addr,
        metrics,
        readiness.clone(),
        server_stop.clone(),
    )
    .await?;
    let result = sink_connector::run(config, readiness, shutdown).await;
    server_stop.cancel();
    server.await.context("HTTP server task")?;
    result
}
