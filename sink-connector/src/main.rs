use clap::Parser;
use sink_connector::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    plumbing::telemetry::init_tracing(&config.log)?;
    tracing::info!(topic = %config.topic, "sink-connector configured");
    Ok(())
}
