//! Configuration of the sink connector: environment variables, also settable as flags.

use clap::Parser;
use plumbing::kafka::KafkaArgs;
use plumbing::registry::RegistryArgs;
use plumbing::telemetry::LogArgs;

/// Consumes TrendingVideo records from Kafka and keeps PostgreSQL up to date with batched,
/// idempotent upserts, committing offsets only after the database has committed.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Kafka topic the records are consumed from.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "youtube_trending")]
    pub topic: String,

    /// Consumer group of the sink instances.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "youtube-trending-sink")]
    pub group_id: String,

    /// Address of the HTTP port serving /metrics, /healthz and /readyz.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9102")]
    pub http_addr: std::net::SocketAddr,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_flags_override() {
        let c = Config::try_parse_from(["x"]).unwrap();
        assert_eq!(c.topic, "youtube_trending");
        let c =
            Config::try_parse_from(["x", "--topic", "t2", "--http-addr", "127.0.0.1:0"]).unwrap();
        assert_eq!(c.topic, "t2");
        assert_eq!(c.http_addr.port(), 0);
    }
}
