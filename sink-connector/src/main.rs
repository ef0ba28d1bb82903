use std::process::ExitCode;

use clap::Parser;
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
    let (log, http_addr) = (config.log.clone(), config.http_addr);
    plumbing::service::run(
        "sink",
        sink_connector::READINESS_CHECKS,
        &log,
        http_addr,
        |readiness, shutdown| sink_connector::run(config, readiness, shutdown),
    )
    .await
}
