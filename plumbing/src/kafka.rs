//! Kafka client configuration shared by both connectors, topic creation, a producer that is
//! renewed after failed sends, and a watch that keeps long-lived consumers connected.
//!
//! Every librdkafka property can be passed through (`KAFKA_PROPERTIES`), so users reach SASL_SSL
//! clusters, tune batching or set a client id without a code change. The SASL password is the one
//! secret and comes only from the environment or a file, never from the property list that could
//! be logged.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use tokio::task::JoinHandle;

/// Kafka connection options shared by both connectors.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, a comma-separated list of host:port.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:19092"
    )]
    pub kafka_bootstrap_servers: String,

    /// Extra librdkafka properties as comma-separated `key=value` pairs, e.g.
    /// `security.protocol=SASL_SSL,sasl.mechanism=PLAIN,sasl.username=me`. They override the
    /// connector's own settings, so use with care; the ones its delivery guarantees rest on
    /// (acks, enable.idempotence, enable.auto.commit, enable.auto.offset.store,
    /// auto.offset.reset, group.id) are refused. Put the SASL password in KAFKA_SASL_PASSWORD.
    #[arg(long, env = "KAFKA_PROPERTIES", value_delimiter = ',', value_parser = parse_property)]
    pub kafka_properties: Vec<(String, String)>,

    /// File holding the SASL password (`sasl.password`), read at start-up. The password can also
    /// be given directly in the environment variable KAFKA_SASL_PASSWORD (never as a flag).
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,

    /// Partitions of topics the connector creates when they do not exist.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 6)]
    pub kafka_topic_partitions: i32,

    /// Replication factor of topics the connector creates when they do not exist.
    #[arg(long, env = "KAFKA_TOPIC_REPLICATION", default_value_t = 1)]
    pub kafka_topic_replication: i32,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not a key=value librdkafka property"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("`{s}` has an empty property name"));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

impl KafkaArgs {
    /// A client configuration with the bootstrap servers, the SASL password if any, and the
    /// user's properties on top of `defaults` (the connector's own settings).
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> anyhow::Result<ClientConfig> {
        // Refused here rather than by the argument parser, whose error would echo the value.
        if let Some((k, _)) = self.kafka_properties.iter().find(|(k, _)| is_secret(k)) {
            bail!(
                "`{k}` holds a secret and must not be set in KAFKA_PROPERTIES, which may be shown \
                 in logs and process lists: the SASL password goes in KAFKA_SASL_PASSWORD or \
                 KAFKA_SASL_PASSWORD_FILE"
            );
        }
        if let Some((k, _)) = self
            .kafka_properties
            .iter()
            .find(|(k, _)| PINNED.contains(&&*k.to_ascii_lowercase()))
        {
            bail!(
                "`{k}` cannot be set in KAFKA_PROPERTIES: the connectors' delivery guarantees \
                 (nothing lost, nothing committed before it is written) depend on their own \
                 value; remove it (the sink's group is KAFKA_GROUP_ID, the source's \
                 transactional id KAFKA_TRANSACTIONAL_ID)"
            );
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.kafka_bootstrap_servers);
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in &self.kafka_properties {
            config.set(k, v);
        }
        if let Some(password) = self.sasl_password()? {
            config.set("sasl.password", password.expose_secret());
        }
        Ok(config)
    }

    fn sasl_password(&self) -> anyhow::Result<Option<SecretString>> {
        crate::secret::from_env_or_file(
            "KAFKA_SASL_PASSWORD",
            self.kafka_sasl_password_file.as_deref(),
            "KAFKA_SASL_PASSWORD_FILE",
        )
    }
}

/// A librdkafka client could not be created from its configuration: the error without the
/// rejected value (librdkafka quotes it, `Invalid value "..." for configuration property
/// "..."`, and it may be a credential given in the wrong property), with what to check.
pub fn config_error(e: rdkafka::error::KafkaError) -> anyhow::Error {
    let text = match &e {
        // (result, description, property, value): the value is left out.
        rdkafka::error::KafkaError::ClientConfig(_, description, property, _) => {
            format!("{} (property `{property}`)", without_values(description))
        }
        other => without_values(&other.to_string()),
    };
    anyhow::anyhow!(
        "creating the Kafka client: {text} (check KAFKA_PROPERTIES and the Kafka settings)"
    )
}

/// `text` with every `value "..."` reduced to `value`.
fn without_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("value \"") {
        out.push_str(&rest[..i + "value".len()]);
        let after = &rest[i + "value \"".len()..];
        match after.find('"') {
            Some(end) => rest = &after[end + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Properties the connectors set themselves and their guarantees rest on: an idempotent,
/// all-replica, transactional producer, and a consumer that reads committed transactions only,
/// starts a new group at the beginning of the topic and whose offsets move only when the sink
/// commits them after the rows are written, in the group the replay tool works on. Aliases
/// included.
const PINNED: &[&str] = &[
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "transactional.id",
    "isolation.level",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "group.id",
];

/// Properties that hold a secret: passwords, client secrets, private keys, and OAUTHBEARER's
/// config string (it carries credentials). Matched whatever the case: the list must not let a
/// secret through because of a capital letter.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.ends_with("password")
        || key.ends_with("secret")
        || key.ends_with(".key.pem")
        || key == "sasl.oauthbearer.config"
        || key == "ssl.key.pem"
}

/// A producer replaced by a fresh one after a failed send (the sink's dead-letter producer).
///
/// An idempotent producer whose sends timed out may not publish again: librdkafka must drain
/// its in-flight requests and bump the producer epoch before it sends more, and with new
/// records arriving it may never get there. Measured on Apache Kafka 4.3 with renewal turned
/// off: after the broker was frozen for 15 s, every later poll's records timed out until the
/// test gave up (`broker_restart.rs`, 2 of 3 tests failed). Fatal errors (fenced, out of
/// sequence) end a producer for good as well. A new producer (a new producer id) publishes at
/// once. Dropping the old one, once no other send still holds it, purges what it still queued,
/// so a failed send's records not yet sent stop there.
pub struct RenewableProducer {
    config: ClientConfig,
    current: std::sync::Mutex<FutureProducer>,
}

impl RenewableProducer {
    /// Creates the first producer (without contacting the broker).
    pub fn new(config: ClientConfig) -> anyhow::Result<Self> {
        let first = config.create().map_err(config_error)?;
        Ok(RenewableProducer {
            config,
            current: std::sync::Mutex::new(first),
        })
    }

    /// The current producer (a cheap handle), e.g. to flush it at shutdown.
    pub fn get(&self) -> FutureProducer {
        self.current.lock().expect("producer lock").clone()
    }

    /// Runs `send` with the current producer. If it fails, that producer is replaced before
    /// the error is returned, so the caller's retry starts on a fresh one.
    pub async fn send_with<T, E: std::fmt::Display>(
        &self,
        send: impl AsyncFnOnce(&FutureProducer) -> Result<T, E>,
    ) -> Result<T, E> {
        let producer = self.get();
        let result = send(&producer).await;
        if let Err(e) = &result {
            self.replace(producer, &format!("{e:#}"));
        }
        result
    }

    /// Replaces `failed` after `error`, unless another failed send has replaced it already.
    fn replace(&self, failed: FutureProducer, error: &str) {
        let mut current = self.current.lock().expect("producer lock");
        let mut old = None;
        if current.client().native_ptr() == failed.client().native_ptr() {
            let fatal = failed.client().fatal_error().map(|(_, reason)| reason);
            match self.config.create::<FutureProducer>() {
                Ok(fresh) => {
                    tracing::warn!(error = %error, fatal = ?fatal,
                        "Sending failed: the Kafka producer is replaced by a new one for the retry");
                    old = Some(std::mem::replace(&mut *current, fresh));
                }
                Err(e) => tracing::error!(error = %e, "Could not create a new Kafka producer"),
            }
        }
        drop(current);
        // The last handle's drop purges, flushes (up to 500 ms) and joins librdkafka's threads:
        // not on an async worker, where it would stall every other task.
        tokio::task::spawn_blocking(move || drop((failed, old)));
    }
}

/// Keeps a long-lived consumer connected across librdkafka's lost-broker bug, for as long as
/// `client` lives (the watching task ends by itself once the client is dropped).
///
/// librdkafka (2.10 up to 2.15 at least; confluentinc/librdkafka#5301, open) forgets every
/// broker it knows when a metadata response lists none, and then never reconnects: there is no
/// broker left to ask, and its re-bootstrap does not trigger in that state. A single KRaft broker
/// answers so for a moment after a pause or a restart (it is fenced until its controller sees it
/// again). Seen here: after a 15 s freeze of the broker, the sink neither rejoined its group nor
/// fetched again, with no error and `/readyz` green (`broker_restart.rs`, about 1 run in 4 under
/// load). So every [`WATCH_INTERVAL`] the client is asked for `topic`'s metadata; when it
/// cannot answer, it is given its bootstrap servers again, as a re-bootstrap would (at every
/// check for 10 minutes, then once a minute: librdkafka keeps every list it is given). A
/// configured server it still knows is not added twice; one it knows as a learned broker is
/// dropped again by the next metadata the broker answers.
pub fn keep_bootstrapped<T, C>(client: Weak<T>, bootstrap: &str, topic: &str) -> JoinHandle<()>
where
    T: Consumer<C> + Send + Sync + 'static,
    C: ConsumerContext + 'static,
{
    let Ok(servers) = CString::new(bootstrap) else {
        // Unreachable: the same string was accepted as `bootstrap.servers`.
        return tokio::spawn(async {});
    };
    let topic = topic.to_string();
    tokio::spawn(async move {
        // Checks failed in a row: the outage so far.
        let mut failed_checks = 0u32;
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let (client, servers, topic) = (client.clone(), servers.clone(), topic.clone());
            // Every check for the first 10 minutes of an outage (a broker that comes back may
            // be forgotten again as it thaws), then once a minute.
            let add_now = failed_checks < 60 || failed_checks.is_multiple_of(6);
            let checked = tokio::task::spawn_blocking(move || {
                let client = client.upgrade()?;
                let reachable = client
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                    .is_ok();
                if !reachable && add_now {
                    // SAFETY: the handle is alive (`client` is held) and librdkafka copies the
                    // list it is given.
                    unsafe {
                        rdkafka::bindings::rd_kafka_brokers_add(
                            client.client().native_ptr(),
                            servers.as_ptr(),
                        );
                    }
                }
                Some(reachable)
            })
            .await;
            match checked {
                Ok(Some(true)) => {
                    if failed_checks > 0 {
                        tracing::info!("Kafka metadata answers again");
                    }
                    failed_checks = 0;
                }
                Ok(Some(false)) => {
                    if failed_checks == 0 {
                        tracing::warn!(
                            "No Kafka broker answers metadata requests: the bootstrap servers \
                             are given to the client again, and again until one answers"
                        );
                    }
                    failed_checks += 1;
                }
                // The client is gone (or the check panicked): nothing left to watch.
                _ => return,
            }
        }
    })
}

/// How often [`keep_bootstrapped`] checks its client.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(10);

/// How a topic the connector owns should be created if missing.
#[derive(Debug, Clone)]
pub struct TopicSpec<'a> {
    pub name: &'a str,
    pub partitions: i32,
    pub replication: i32,
    /// Topic-level configs, e.g. `cleanup.policy=compact` for a state topic.
    pub configs: HashMap<&'a str, &'a str>,
}

/// Creates each topic that does not exist yet; existing topics are left as they are. Brokers
/// that do not auto-create topics on produce (well-run production clusters) need this.
pub async fn ensure_topics(config: &ClientConfig, topics: &[TopicSpec<'_>]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(config_error)?;
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let mut nt =
                NewTopic::new(t.name, t.partitions, TopicReplication::Fixed(t.replication));
            for (k, v) in &t.configs {
                nt = nt.set(k, v);
            }
            nt
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new_topics.iter(), &opts)
        .await
        .context("asking the broker to create topics (is KAFKA_BOOTSTRAP_SERVERS right?)")?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "Created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic `{name}` failed: {code}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    #[test]
    fn properties_pass_through_and_override_defaults() {
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-properties",
            "security.protocol=SASL_SSL, linger.ms=5",
        ])
        .unwrap();
        let config = cli.kafka.client_config(&[("linger.ms", "100")]).unwrap();
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:19092"));
    }

    #[test]
    fn properties_the_guarantees_rest_on_are_refused() {
        for property in [
            "acks=1",
            "request.required.acks=1",
            "enable.idempotence=false",
            "transactional.id=other",
            "isolation.level=read_uncommitted",
            "enable.auto.commit=true",
            "enable.auto.offset.store=true",
            "auto.offset.reset=latest",
            "group.id=other",
        ] {
            let cli = Cli::try_parse_from(["x", "--kafka-properties", property]).unwrap();
            let err = cli.kafka.client_config(&[]).unwrap_err().to_string();
            let key = property.split('=').next().unwrap();
            assert!(err.contains(&format!("`{key}` cannot be set")), "{err}");
        }
    }

    #[test]
    fn configuration_errors_do_not_echo_the_rejected_value() {
        let cli = Cli::try_parse_from(["x", "--kafka-properties", "linger.ms=hunter2"]).unwrap();
        let err = cli
            .kafka
            .client_config(&[])
            .unwrap()
            .create::<FutureProducer>()
            .map_err(config_error)
            .err()
            .expect("librdkafka refuses a non-numeric linger.ms");
        let text = format!("{err:#}");
        assert!(text.contains("linger.ms"), "{text}");
        assert!(
            !text.contains("hunter2"),
            "the error echoes the value: {text}"
        );
    }

    #[test]
    fn secrets_are_refused_in_properties_whatever_their_case() {
        for property in [
            "sasl.password=hunter2",
            "SASL.PASSWORD=hunter2",
            "ssl.key.password=hunter2",
            "sasl.oauthbearer.client.secret=hunter2",
            "sasl.oauthbearer.config=principal=me secret=hunter2",
        ] {
            let cli = Cli::try_parse_from(["x", "--kafka-properties", property]).unwrap();
            let err = cli.kafka.client_config(&[]).unwrap_err().to_string();
            assert!(err.contains("KAFKA_SASL_PASSWORD"), "{property}: {err}");
            assert!(
                !err.contains("hunter2"),
                "the error echoes the secret: {err}"
            );
        }
    }
}
