//! Configuration of the sink connector: environment variables, also settable as flags.
//! Every field's doc comment is its `--help` text and its README entry.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use plumbing::backoff::parse_duration;
use plumbing::kafka::KafkaArgs;
use plumbing::registry::RegistryArgs;
use plumbing::telemetry::LogArgs;
use secrecy::SecretString;

use crate::history::Retention;

/// Consumes TrendingVideo records from Kafka and keeps PostgreSQL up to date with batched,
/// idempotent upserts, committing offsets only after the database has committed.
///
/// The database URL (it holds a password) is read from the environment variable DATABASE_URL
/// or from the file named by DATABASE_URL_FILE; it is never accepted as a flag, and never logged.
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about)]
pub struct Config {
    /// Offset tools; without a subcommand the sink runs.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Kafka topic the records are consumed from.
    #[arg(
        long,
        global = true,
        env = "KAFKA_TOPIC",
        default_value = "youtube_trending"
    )]
    pub topic: String,

    /// Consumer group of the sink instances.
    #[arg(
        long,
        global = true,
        env = "KAFKA_GROUP_ID",
        default_value = "youtube-trending-sink"
    )]
    pub group_id: String,

    /// Dead-letter topic for records that cannot be decoded or validated
    /// (default: `<KAFKA_TOPIC>.dlq`; created if missing).
    #[arg(long, env = "SINK_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,

    /// What to do with a poison record: `all` dead-letters it and goes on, `none` stops the sink
    /// without committing past it (Kafka Connect's `errors.tolerance`).
    #[arg(long, env = "SINK_ERRORS_TOLERANCE", value_enum, default_value_t = ErrorsTolerance::All)]
    pub errors_tolerance: ErrorsTolerance,

    /// A batch is written when it holds this many records...
    #[arg(long, env = "SINK_BATCH_MAX_RECORDS", default_value_t = 5000)]
    pub batch_max_records: usize,

    /// ...or when its first record has waited this long, e.g. `200ms`...
    #[arg(long, env = "SINK_BATCH_MAX_WAIT", default_value = "200ms", value_parser = parse_duration)]
    pub batch_max_wait: Duration,

    /// ...or when its records' keys and values add up to this many bytes: with two batches in
    /// flight, about twice this is what the sink holds of the topic at most.
    #[arg(long, env = "SINK_BATCH_MAX_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub batch_max_bytes: usize,

    /// Subjects whose schemas the sink decodes, comma-separated (default: the topic's own,
    /// `<topic>-value`). A record whose schema id is registered under none of them is
    /// dead-lettered as `unknown_schema` without being decoded.
    #[arg(long, env = "SINK_SCHEMA_SUBJECTS", value_delimiter = ',')]
    pub schema_subjects: Vec<String>,

    /// Longest string, bytes or array (in bytes or items) a record may announce. apache-avro
    /// allocates what a length announces before reading it: a bound keeps a corrupt or hostile
    /// record from exhausting memory.
    #[arg(long, env = "SINK_AVRO_MAX_LENGTH", default_value_t = 1024 * 1024)]
    pub avro_max_length: usize,

    /// File holding the PostgreSQL URL (alternative to the DATABASE_URL variable), e.g.
    /// `postgres://user:password@host:5432/db?sslmode=disable`.
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,

    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 4)]
    pub database_pool_size: usize,

    /// Longest a batch's transaction may take, e.g. `30s`. Past it the connection is dropped,
    /// the batch retried and /readyz fails; it is also PostgreSQL's `statement_timeout` and the
    /// connections' TCP user timeout, so a frozen server or a half-open connection cannot hang
    /// the sink.
    #[arg(long, env = "SINK_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// How long a chart may miss videos before it counts as incomplete in the
    /// `sink_charts_incomplete` gauge (and the SinkChartsIncomplete alert), e.g. `30m`: the
    /// source's poll interval is a good value. Its records are spread over the partitions, so a
    /// chart is briefly incomplete while they are being written.
    #[arg(long, env = "SINK_CHART_GRACE", default_value = "30m", value_parser = parse_duration)]
    pub chart_grace: Duration,

    /// How long the chart history is kept, e.g. `30d` or `400d`; `0` keeps it forever. At start
    /// and every hour, the snapshots and charts older than this are deleted (whole months by
    /// dropping their partition), with the `videos` rows no chart has shown since; records older
    /// than this are not written, so a replay does not bring them back. YouTube's developer
    /// policies limit how long data fetched with an API key may be stored: see the README,
    /// "Running for months".
    #[arg(long, env = "SNAPSHOT_RETENTION", default_value = "0", value_parser = Retention::parse)]
    pub snapshot_retention: Retention,

    /// Do not apply migrations at start-up (when they are applied by another process).
    #[arg(long, env = "SINK_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,

    /// First delay between retries of an unavailable dependency; doubles up to
    /// RETRY_MAX_BACKOFF, with jitter.
    #[arg(long, env = "RETRY_INITIAL_BACKOFF", default_value = "200ms", value_parser = parse_duration)]
    pub retry_initial_backoff: Duration,

    /// Cap of the delay between retries.
    #[arg(long, env = "RETRY_MAX_BACKOFF", default_value = "30s", value_parser = parse_duration)]
    pub retry_max_backoff: Duration,

    /// Time given to the batch in flight after SIGTERM before it is abandoned (rolled back,
    /// nothing committed: it is redone after restart).
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Address of the HTTP port serving /metrics, /healthz and /readyz. Loopback by default:
    /// set `0.0.0.0:9102` (as the container images do) to let Prometheus reach it from
    /// another host.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9102")]
    pub http_addr: SocketAddr,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub admin: plumbing::control::AdminArgs,
}

/// Operations on the sink's consumer group, for replays. Stop every sink instance first.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Move the group's committed offsets (dry run unless --execute), e.g.
    /// `sink-connector reset-offsets --to-datetime 2026-11-01T00:00:00Z --execute`.
    ResetOffsets(crate::replay::ResetArgs),
    /// Show the group's state, members, committed offsets, end offsets and lag.
    DescribeGroup,
    /// The dead-letter topic: list the dead letters, or produce chosen ones back to their
    /// topic once what made them poison is fixed, e.g.
    /// `sink-connector dlq replay --reason unknown_schema --execute`.
    #[command(subcommand)]
    Dlq(crate::redrive::DlqCommand),
}

/// Kafka Connect's `errors.tolerance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ErrorsTolerance {
    /// Dead-letter poison records and go on.
    All,
    /// Stop at the first poison record.
    None,
}

impl Config {
    pub fn validate(self) -> anyhow::Result<Self> {
        if self.batch_max_records == 0 {
            bail!("SINK_BATCH_MAX_RECORDS must be at least 1");
        }
        if self.batch_max_bytes == 0 {
            bail!("SINK_BATCH_MAX_BYTES must be at least 1");
        }
        if self.database_pool_size == 0 {
            bail!("DATABASE_POOL_SIZE must be at least 1");
        }
        Ok(self)
    }

    /// The subjects whose schema ids are decoded (SINK_SCHEMA_SUBJECTS, or `<topic>-value`).
    pub fn schema_subjects(&self) -> Vec<String> {
        if self.schema_subjects.is_empty() {
            vec![format!("{}-value", self.topic)]
        } else {
            self.schema_subjects.clone()
        }
    }

    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.topic))
    }

    /// The database URL, from DATABASE_URL_FILE or DATABASE_URL.
    pub fn database_url(&self) -> anyhow::Result<SecretString> {
        plumbing::secret::from_env_or_file(
            "DATABASE_URL",
            self.database_url_file.as_deref(),
            "DATABASE_URL_FILE",
        )?
        .context(
            "no database: set DATABASE_URL or DATABASE_URL_FILE \
             (postgres://user:password@host:5432/db)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_flags_override() {
        let c = Config::try_parse_from(["x"]).unwrap().validate().unwrap();
        assert_eq!(c.topic, "youtube_trending");
        assert_eq!(c.group_id, "youtube-trending-sink");
        assert_eq!(c.dlq_topic(), "youtube_trending.dlq");
        assert_eq!(c.errors_tolerance, ErrorsTolerance::All);
        assert_eq!(c.batch_max_wait, Duration::from_millis(200));
        let c = Config::try_parse_from([
            "x",
            "--topic",
            "t2",
            "--errors-tolerance",
            "none",
            "--batch-max-records",
            "10",
        ])
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(c.dlq_topic(), "t2.dlq");
        assert_eq!(c.errors_tolerance, ErrorsTolerance::None);
        assert_eq!(c.batch_max_records, 10);
    }
}
