//! Configuration of the source connector: environment variables, also settable as flags.
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

use crate::quota::{self, Plan, PollInterval, QuotaError};
use secrecy::SecretString;

/// Polls YouTube's most-popular charts (one per region) and publishes each video as an Avro
/// record to Kafka.
///
/// The API key is read from the environment variable YOUTUBE_API_KEY or from the file named by
/// YOUTUBE_API_KEY_FILE; it is never accepted as a flag, and never logged.
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about)]
pub struct Config {
    /// Regions whose chart is polled: comma-separated ISO 3166-1 alpha-2 codes.
    #[arg(
        long,
        env = "YOUTUBE_REGIONS",
        value_delimiter = ',',
        default_value = "FR"
    )]
    pub regions: Vec<String>,

    /// Time between two successful polls of a region, e.g. `30m`, `1h`, `90s`; or `auto`: the
    /// shortest whole-minute interval whose plan fits 90% of YOUTUBE_DAILY_QUOTA.
    #[arg(long, env = "POLL_INTERVAL", default_value = "30m", value_parser = parse_interval)]
    pub poll_interval: PollInterval,

    /// The project's YouTube API quota, in units a day (Google's default: 10,000). The source
    /// refuses to start when its regions and interval would spend more.
    #[arg(long, env = "YOUTUBE_DAILY_QUOTA", default_value_t = 10_000)]
    pub daily_quota: u64,

    /// Poll every region once, publish, and exit: 0 if every region succeeded, 1 otherwise.
    /// For external schedulers (cron, Airflow): every region is polled at once, whatever the
    /// schedule state says; successful polls are still recorded in it.
    #[arg(long)]
    pub once: bool,

    /// Base URL of the YouTube Data API v3 (override for a proxy or a stand-in).
    #[arg(
        long,
        env = "YOUTUBE_API_BASE_URL",
        default_value = "https://www.googleapis.com/youtube/v3"
    )]
    pub api_base_url: String,

    /// File holding the API key (alternative to the YOUTUBE_API_KEY variable).
    #[arg(long, env = "YOUTUBE_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// How the key is sent: `header` (`x-goog-api-key`, which keeps it out of proxies' and
    /// servers' URL logs) or `query` (the `key` parameter, for proxies that drop the header).
    #[arg(long, env = "YOUTUBE_API_KEY_IN", value_enum, default_value_t = KeyPlacement::Header)]
    pub api_key_in: KeyPlacement,

    /// Timeout of one API request, e.g. `10s`.
    #[arg(long, env = "YOUTUBE_API_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub api_timeout: Duration,

    /// Attempts of one API request on transient errors (network, timeout, 5xx, 429, malformed
    /// body) before the poll is given up and retried whole later.
    #[arg(long, env = "YOUTUBE_API_MAX_ATTEMPTS", default_value_t = 4)]
    pub api_max_attempts: u32,

    /// First delay between retries; it doubles up to RETRY_MAX_BACKOFF, with jitter.
    #[arg(long, env = "RETRY_INITIAL_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub retry_initial_backoff: Duration,

    /// Cap of the delay between retries (of a request, and of a failed poll).
    #[arg(long, env = "RETRY_MAX_BACKOFF", default_value = "5m", value_parser = parse_duration)]
    pub retry_max_backoff: Duration,

    /// Kafka topic the records are published to (created if missing).
    #[arg(long, env = "KAFKA_TOPIC", default_value = "youtube_trending")]
    pub topic: String,

    /// Compacted topic holding the time of each region's last successful poll, so a restart
    /// does not re-poll too early (default: `<KAFKA_TOPIC>.source-state`).
    #[arg(long, env = "SOURCE_STATE_TOPIC")]
    pub state_topic: Option<String>,

    /// Kafka transactional id of this source (default: `<KAFKA_TOPIC>.source`). Each poll is
    /// one transaction; a second source started with the same id fences this one, which stops
    /// (exit 1) rather than polling the same charts twice. Sources meant to run side by side
    /// (other regions, another topic) each need their own.
    #[arg(long, env = "KAFKA_TRANSACTIONAL_ID")]
    pub transactional_id: Option<String>,

    /// How long a whole poll may wait for the broker to acknowledge its records before it is
    /// failed and retried, e.g. `60s`.
    #[arg(long, env = "PRODUCE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub produce_timeout: Duration,

    /// Time given to a poll in flight to finish after SIGTERM before it is abandoned (it is
    /// then redone whole after restart).
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Address of the HTTP port serving /metrics, /healthz and /readyz. Loopback by default:
    /// set `0.0.0.0:9101` (as the container images do) to let Prometheus reach it from
    /// another host.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9101")]
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

/// Where the API key goes in each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyPlacement {
    Query,
    Header,
}

impl Config {
    /// Checks what clap cannot, and normalises region codes to upper case.
    pub fn validate(mut self) -> anyhow::Result<Self> {
        for r in &mut self.regions {
            *r = r.trim().to_ascii_uppercase();
            if r.len() != 2 || !r.bytes().all(|b| b.is_ascii_alphabetic()) {
                bail!("YOUTUBE_REGIONS: `{r}` is not an ISO 3166-1 alpha-2 code such as FR or US");
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = self.regions.iter().find(|r| !seen.insert(*r)) {
            bail!("YOUTUBE_REGIONS names {twice} twice: list each region once");
        }
        let unknown = |r: &&String| isocountry::CountryCode::for_alpha2(r).is_err();
        if let Some(unknown) = self.regions.iter().find(unknown) {
            // The one such slip users make: YouTube names the United Kingdom by ISO's code.
            let hint = if unknown == "UK" {
                " (the United Kingdom is GB)"
            } else {
                ""
            };
            bail!(
                "YOUTUBE_REGIONS: `{unknown}` is not an ISO 3166-1 alpha-2 country code{hint}; \
                 YouTube's regions are listed by its i18nRegions.list"
            );
        }
        if self.regions.is_empty() {
            bail!("YOUTUBE_REGIONS is empty: name at least one region, e.g. FR");
        }
        if matches!(self.poll_interval, PollInterval::Fixed(d) if d < Duration::from_secs(1)) {
            bail!("POLL_INTERVAL must be at least 1s");
        }
        // --once polls each region once, whatever the interval.
        if !self.once {
            self.quota_plan()?;
        }
        if self.api_max_attempts == 0 {
            bail!("YOUTUBE_API_MAX_ATTEMPTS must be at least 1");
        }
        Ok(self)
    }

    /// What the regions and interval spend per day, or why they do not fit the quota.
    pub fn quota_plan(&self) -> Result<Plan, QuotaError> {
        quota::plan(
            self.regions.len() as u64,
            self.poll_interval,
            self.daily_quota,
        )
    }

    pub fn state_topic(&self) -> String {
        self.state_topic
            .clone()
            .unwrap_or_else(|| format!("{}.source-state", self.topic))
    }

    pub fn transactional_id(&self) -> String {
        self.transactional_id
            .clone()
            .unwrap_or_else(|| format!("{}.source", self.topic))
    }

    /// Where this source's target state (paused or not) is kept in the state topic.
    pub fn target_key(&self) -> crate::state::TargetKey {
        crate::state::TargetKey::new(&self.transactional_id(), self.transactional_id.is_none())
    }

    /// What the API client needs.
    pub fn api_settings(&self) -> crate::youtube::Settings {
        crate::youtube::Settings {
            base_url: self.api_base_url.clone(),
            key_in: self.api_key_in,
            timeout: self.api_timeout,
            backoff: plumbing::backoff::Backoff::new(
                self.retry_initial_backoff,
                self.retry_max_backoff,
            ),
            max_attempts: self.api_max_attempts,
        }
    }

    /// The API key, from YOUTUBE_API_KEY_FILE or YOUTUBE_API_KEY.
    pub fn api_key(&self) -> anyhow::Result<SecretString> {
        plumbing::secret::from_env_or_file(
            "YOUTUBE_API_KEY",
            self.api_key_file.as_deref(),
            "YOUTUBE_API_KEY_FILE",
        )?
        .context(
            "no YouTube API key: set YOUTUBE_API_KEY or YOUTUBE_API_KEY_FILE \
             (create one in the Google Cloud console, with the YouTube Data API v3 enabled)",
        )
    }
}

fn parse_interval(s: &str) -> Result<PollInterval, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        Ok(PollInterval::Auto)
    } else {
        parse_duration(s).map(PollInterval::Fixed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_flags_override() {
        let c = Config::try_parse_from(["x"]).unwrap().validate().unwrap();
        assert_eq!(c.regions, vec!["FR"]);
        assert_eq!(
            c.poll_interval,
            PollInterval::Fixed(Duration::from_secs(1800))
        );
        assert_eq!(c.daily_quota, 10_000);
        assert_eq!(c.state_topic(), "youtube_trending.source-state");
        assert_eq!(c.transactional_id(), "youtube_trending.source");
        let c = Config::try_parse_from([
            "x",
            "--regions",
            "fr,US, jp",
            "--poll-interval",
            "5m",
            "--topic",
            "t2",
        ])
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(c.regions, vec!["FR", "US", "JP"]);
        assert_eq!(
            c.poll_interval,
            PollInterval::Fixed(Duration::from_secs(300))
        );
        assert_eq!(c.state_topic(), "t2.source-state");
    }

    #[test]
    fn a_plan_over_the_quota_is_refused_unless_auto_or_once() {
        let args = ["x", "--regions", "FR,US,JP", "--poll-interval", "90s"];
        let err = Config::try_parse_from(args)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("YOUTUBE_DAILY_QUOTA=10000"),
            "{err}"
        );
        let once = [&args[..], &["--once"]].concat();
        assert!(Config::try_parse_from(once).unwrap().validate().is_ok());
        let auto = ["x", "--regions", "FR,US,JP", "--poll-interval", "auto"];
        let c = Config::try_parse_from(auto).unwrap().validate().unwrap();
        assert_eq!(c.poll_interval, PollInterval::Auto);
        assert!(c.quota_plan().unwrap().units_per_day <= 9_000);
    }

    #[test]
    fn bad_regions_are_refused_with_a_hint() {
        let err = Config::try_parse_from(["x", "--regions", "France"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("alpha-2"));
        for (regions, says) in [
            ("FR,US,FR", "names FR twice"),
            ("fr,FR", "names FR twice"),
            (
                "FR,UK",
                "`UK` is not an ISO 3166-1 alpha-2 country code (the United Kingdom is GB)",
            ),
            ("ZZ", "`ZZ` is not an ISO 3166-1"),
        ] {
            let err = Config::try_parse_from(["x", "--regions", regions])
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(says), "{regions}: {err}");
        }
        let c = Config::try_parse_from(["x", "--regions", "FR,GB,JP,BR,IN,KR,DE,MX"])
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(c.quota_plan().unwrap().regions, 8);
    }
}
