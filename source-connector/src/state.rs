//! The schedule's memory: the time of each region's last successful poll, kept in a compacted
//! Kafka topic the connector owns (as Kafka Connect keeps source offsets). Key = region code,
//! value = JSON `{"region":"FR","last_success_at":"…","videos":200}`, readable with any Kafka
//! tool. Written in the poll's own transaction, so it is visible exactly when the poll's records
//! are, and a poll that did not complete is redone after a restart.
//!
//! The same topic keeps the connector's target state (`PUT /pause`, `PUT /resume`), as Kafka
//! Connect keeps it in its config topic: key `target-state:<KAFKA_TRANSACTIONAL_ID>` (see
//! [`TargetKey`]), value `{"state":"PAUSED"}`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use plumbing::kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionState {
    pub region: String,
    pub last_success_at: DateTime<Utc>,
    pub videos: usize,
}

/// The key of a source's target-state record: one per transactional id, so that sources
/// sharing a state topic (each its own `KAFKA_TRANSACTIONAL_ID`) are paused and resumed apart.
/// Region codes are two letters: no clash with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetKey {
    key: String,
    /// Also read the key every source wrote before keys were per source (`target-state`): it
    /// belongs to the source with the default transactional id.
    legacy: bool,
}

/// The one key every source used before [`TargetKey`].
const LEGACY_TARGET_STATE_KEY: &str = "target-state";

impl TargetKey {
    /// The key of the source with `transactional_id`; `default` when that id was not set.
    pub fn new(transactional_id: &str, default: bool) -> TargetKey {
        TargetKey {
            key: format!("{LEGACY_TARGET_STATE_KEY}:{transactional_id}"),
            legacy: default,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    fn matches(&self, key: &[u8]) -> bool {
        key == self.key.as_bytes() || (self.legacy && key == LEGACY_TARGET_STATE_KEY.as_bytes())
    }

    /// A target-state key of any source (another source's is not a region either).
    fn is_target(key: &[u8]) -> bool {
        key.starts_with(LEGACY_TARGET_STATE_KEY.as_bytes())
    }
}

/// What an operator asked the source to be: polling or paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum TargetState {
    #[default]
    Started,
    Paused,
}

#[derive(Serialize, Deserialize)]
struct TargetRecord {
    state: TargetState,
}

/// What the state topic holds: each region's last success, and the target state.
#[derive(Debug, Default)]
pub struct Loaded {
    pub regions: HashMap<String, RegionState>,
    pub target: TargetState,
}

/// Reads the whole state topic (one partition) up to its end; the last value per key wins.
/// The target state is this source's (`target`).
pub async fn load(kafka: &KafkaArgs, topic: &str, target: &TargetKey) -> anyhow::Result<Loaded> {
    let kafka = kafka.clone();
    let topic = topic.to_string();
    let target = target.clone();
    tokio::task::spawn_blocking(move || load_blocking(&kafka, &topic, &target))
        .await
        .context("state loader panicked")?
}

fn load_blocking(kafka: &KafkaArgs, topic: &str, target: &TargetKey) -> anyhow::Result<Loaded> {
    const TIMEOUT: Duration = Duration::from_secs(15);
    // No group: this reader owns no offsets, it reads everything each start. Committed
    // transactions only, and told when it reaches the end: the topic's last offset is a
    // transaction marker, never delivered, so "the last record read" cannot say so.
    let consumer: BaseConsumer = kafka
        .client_config(&[
            ("enable.auto.commit", "false"),
            ("group.id", "unused"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
        ])?
        .create()
        .map_err(plumbing::kafka::config_error)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, TIMEOUT)
        .with_context(|| format!("reading the watermarks of the state topic `{topic}`"))?;
    let mut state = Loaded::default();
    if high <= low {
        return Ok(state);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))?;
    consumer.assign(&tpl)?;
    drop(tpl);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading the state topic `{topic}` did not reach its end within 60s"
        );
        let message = match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(state),
            Some(m) => m.with_context(|| format!("reading the state topic `{topic}`"))?,
        };
        let Some(value) = message.payload() else {
            continue;
        };
        let key = message.key().unwrap_or_default();
        if target.matches(key) {
            match serde_json::from_slice::<TargetRecord>(value) {
                Ok(t) => state.target = t.state,
                Err(e) => tracing::warn!(offset = message.offset(), error = %e,
                    "Ignoring an unreadable target state in the state topic"),
            }
            continue;
        }
        if TargetKey::is_target(key) {
            continue; // another source's
        }
        {
            match serde_json::from_slice::<RegionState>(value) {
                Ok(s) => {
                    state.regions.insert(s.region.clone(), s);
                }
                Err(e) => tracing::warn!(offset = message.offset(), error = %e,
                    "Ignoring an unreadable record of the state topic"),
            }
        }
    }
}

/// Records a successful poll (inside its transaction) and waits for the broker's
/// acknowledgement.
pub async fn save(
    producer: &FutureProducer,
    topic: &str,
    state: &RegionState,
    timeout: Duration,
) -> anyhow::Result<()> {
    let value = serde_json::to_vec(state)?;
    producer
        .send(
            FutureRecord::to(topic).key(&state.region).payload(&value),
            timeout,
        )
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("saving the schedule state to `{topic}`"))?;
    Ok(())
}

/// Records the target state (inside a transaction of its own) and waits for the broker.
pub async fn save_target(
    producer: &FutureProducer,
    topic: &str,
    key: &TargetKey,
    target: TargetState,
    timeout: Duration,
) -> anyhow::Result<()> {
    let value = serde_json::to_vec(&TargetRecord { state: target })?;
    producer
        .send(
            FutureRecord::to(topic).key(key.as_str()).payload(&value),
            timeout,
        )
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("saving the target state to `{topic}`"))?;
    Ok(())
}
