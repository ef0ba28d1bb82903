//! Configuration of the source connector: environment variables, also settable as flags.

use clap::Parser;
use plumbing::kafka::KafkaArgs;
use plumbing::registry::RegistryArgs;
use plumbing::telemetry::LogArgs;

/// Polls YouTube's most-popular charts and publishes each video as an Avro record to Kafka.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Kafka topic the records are published to.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "youtube_trending")]
    pub topic: String,

    /// Address of the HTTP port serving /metrics, /healthz and /readyz.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9101")]
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
