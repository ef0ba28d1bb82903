use std::process::ExitCode;

use clap::Parser;
use source_connector::config::Config;

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
        "source",
        source_connector::READINESS_CHECKS,
        &log,
        http_addr,
        |readiness, shutdown| source_connector::run(config, readiness, shutdown),
    )
    .await
}
