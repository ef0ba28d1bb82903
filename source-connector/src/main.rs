use std::process::ExitCode;

use clap::Parser;
use source_connector::config::Config;
use source_connector::control::Control;
use source_connector::quota::QuotaMeter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::parse().validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let (log, http_addr, admin) = (config.log.clone(), config.http_addr, config.admin.clone());
    plumbing::service::run(
        "source",
        source_connector::READINESS_CHECKS,
        &log,
        http_addr,
        &admin,
        move |readiness, admin| {
            let quota = std::sync::Arc::new(QuotaMeter::default());
            let control = Control::new(&config, readiness.clone(), quota.clone());
            (control.router(admin), (control, quota, config))
        },
        |(control, quota, config), readiness, shutdown| {
            source_connector::run(config, control, quota, readiness, shutdown)
        },
    )
    .await
}
