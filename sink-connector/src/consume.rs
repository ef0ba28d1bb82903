//! Consuming and committing.
//!
//! The consumer runs with `enable.auto.commit=false` and `enable.auto.offset.store=false`: the
//! sink commits offsets itself, only after the transaction that wrote the records (and the
//! dead-letter produce of poison records) has succeeded. The committed offset of a partition is
//! the offset after the last record of the batch from that partition; this relies on Kafka's
//! per-partition order, and on records of a partition being consumed contiguously from its
//! committed offset (librdkafka restarts from it after every rebalance).
//!
//! Rebalances are served only while the sink polls, which it does only between batches. A batch
//! collected across a revoke may hold records of partitions no longer owned: they are written
//! (harmless, the writes are idempotent) but their offsets are not committed, so the new owner
//! processes them again and nothing is skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use plumbing::kafka::{keep_bootstrapped, KafkaArgs};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::OwnedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::time::Instant;

/// Counts rebalances and logs the partitions that move; keeps newly assigned partitions as
/// paused or running as the sink wants them.
#[derive(Default)]
pub struct SinkContext {
    /// Fetching is paused (a dependency is away). librdkafka keeps a partition's pause across a
    /// revoke and a new assignment, and a resume while nothing is assigned reaches nothing: a
    /// dependency that came back during a rebalance left the partitions paused for good.
    /// A lock rather than an atomic: the pause of the assignment and a new assignment must not
    /// interleave.
    paused: std::sync::Mutex<bool>,
}

impl ClientContext for SinkContext {}

impl ConsumerContext for SinkContext {
    fn post_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Assign(tpl) = rebalance {
            let paused = self.paused.lock().expect("pause lock");
            let result = if *paused {
                consumer.pause(tpl)
            } else {
                consumer.resume(tpl)
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "Could not pause or resume the assigned partitions");
            }
        }
        let (kind, partitions) = match rebalance {
            Rebalance::Assign(tpl) => ("assign", describe(tpl)),
            Rebalance::Revoke(tpl) => ("revoke", describe(tpl)),
            Rebalance::Error(e) => ("error", e.to_string()),
        };
        tracing::info!(kind, partitions, "Rebalance");
        counter!("sink_rebalances_total", "kind" => kind).increment(1);
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "Offset commit failed");
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

pub type SinkConsumer = StreamConsumer<SinkContext>;

/// Fetch settings of the sink's consumer (the benchmark reads with them too).
pub const FETCH_SETTINGS: &[(&str, &str)] = &[
    // Bounds what librdkafka prefetches per partition while the sink is busy or paused.
    ("queued.max.messages.kbytes", "16384"),
    // When that prefetch queue is full (a batch being written), librdkafka postpones the
    // partition's next fetch by this much: 1 s by default, which left the sink idle between
    // batches. `make bench` on Kafka 4.3, 1,000,000 records, batch 5000: 38,868 rows/s with
    // the default, 56,387 with 20 ms (the two side by side in one run).
    ("fetch.queue.backoff.ms", "20"),
];

/// The sink's consumer, subscribed to `topic`, and watched by [`keep_bootstrapped`] while it
/// lives.
pub fn consumer(kafka: &KafkaArgs, group: &str, topic: &str) -> anyhow::Result<Arc<SinkConsumer>> {
    let consumer: SinkConsumer = kafka
        .client_config(
            &[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("session.timeout.ms", "10000"),
                // Records of aborted or still open transactions are never delivered: a failed
                // poll of the source shows nowhere (librdkafka's default, pinned).
                ("isolation.level", "read_committed"),
            ]
            .iter()
            .chain(FETCH_SETTINGS)
            .copied()
            .collect::<Vec<_>>(),
        )?
        .create_with_context(SinkContext::default())
        .map_err(plumbing::kafka::config_error)?;
    consumer.subscribe(&[topic])?;
    let consumer = Arc::new(consumer);
    keep_bootstrapped(
        Arc::downgrade(&consumer),
        &kafka.kafka_bootstrap_servers,
        topic,
    );
    Ok(consumer)
}

/// How long the sink waits for a record before it counts as idle (see [`collect`]).
pub const IDLE: Duration = Duration::from_secs(1);

/// Collects up to `max` records or `max_bytes` of keys and values (the record that crosses it
/// is the last), waiting at most `max_wait` after the first one. While no record comes,
/// `on_idle` runs every [`IDLE`]; when it returns false, the (empty) batch is returned at once.
pub async fn collect(
    consumer: &SinkConsumer,
    max: usize,
    max_bytes: usize,
    max_wait: Duration,
    on_idle: impl Fn() -> bool,
) -> KafkaResult<Vec<OwnedMessage>> {
    let mut batch = Vec::new();
    let first = loop {
        match tokio::time::timeout(IDLE, consumer.recv()).await {
            Ok(m) => break m?.detach(),
            Err(_) if on_idle() => {}
            Err(_) => return Ok(batch),
        }
    };
    let mut bytes = size(&first);
    batch.push(first);
    let deadline = Instant::now() + max_wait;
    while batch.len() < max && bytes < max_bytes {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => {
                let m = m.detach();
                bytes += size(&m);
                batch.push(m);
            }
            // The records received so far are kept: librdkafka has moved past them, and
            // dropping them would skip them for good. An error that lasts comes back at the
            // next batch's first record.
            Ok(Err(e)) => {
                tracing::debug!(error = %e, records = batch.len(), "Consume error: the batch ends here");
                break;
            }
            Err(_) => break,
        }
    }
    Ok(batch)
}

fn size(m: &OwnedMessage) -> usize {
    m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)
}

/// The offsets to commit after `batch`: per partition, the offset after its last record.
pub fn next_offsets(batch: &[OwnedMessage]) -> Vec<(String, i32, i64)> {
    let mut next: Vec<(String, i32, i64)> = Vec::new();
    for m in batch {
        match next
            .iter_mut()
            .find(|(t, p, _)| t == m.topic() && *p == m.partition())
        {
            Some(entry) => entry.2 = entry.2.max(m.offset() + 1),
            None => next.push((m.topic().to_string(), m.partition(), m.offset() + 1)),
        }
    }
    next
}

/// The offsets a batch holds, per partition, for logs: `partition:first-last,...`.
pub fn describe_offsets(batch: &[OwnedMessage]) -> String {
    let mut ranges: std::collections::BTreeMap<(&str, i32), (i64, i64)> = Default::default();
    for m in batch {
        let r = ranges
            .entry((m.topic(), m.partition()))
            .or_insert((m.offset(), m.offset()));
        r.0 = r.0.min(m.offset());
        r.1 = r.1.max(m.offset());
    }
    ranges
        .iter()
        .map(|((_, p), (first, last))| format!("{p}:{first}-{last}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Commits `offsets` for the partitions this consumer still owns, synchronously; returns the
/// offsets committed. Lists from the consumer are dropped before returning (a consumer closed
/// while one is alive never finishes closing).
pub fn commit(
    consumer: &SinkConsumer,
    offsets: &[(String, i32, i64)],
) -> KafkaResult<Vec<(String, i32, i64)>> {
    let assignment = consumer.assignment()?;
    let mut tpl = TopicPartitionList::new();
    let mut owned = Vec::with_capacity(offsets.len());
    for (topic, partition, offset) in offsets {
        if assignment.find_partition(topic, *partition).is_some() {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
            owned.push((topic.clone(), *partition, *offset));
        } else {
            tracing::info!(
                topic,
                partition,
                "Not committing a partition no longer owned"
            );
        }
    }
    drop(assignment);
    if owned.is_empty() {
        return Ok(owned);
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        // The group moved on (a rebalance the consumer has not served yet): these offsets can
        // never be committed, and retrying would wait forever, since the rebalance is served
        // only when the sink polls again. The records are redone by their next owner.
        Err(KafkaError::ConsumerCommit(code)) if moved_on(code) => {
            tracing::info!(error = %code, offsets = owned.len(),
                "Offsets not committed: the group rebalanced; the partitions' next owner \
                 redoes these records (the same rows again)");
            Ok(Vec::new())
        }
        Err(e) => Err(e),
        Ok(()) => Ok(owned),
    }
}

/// Commit errors that mean the partitions are no longer this member's to commit.
fn moved_on(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::AssignmentLost
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::FencedInstanceId
            | RDKafkaErrorCode::StaleMemberEpoch
    )
}

/// Commits the consumer's position where it is past the offset the sink last committed, and
/// returns what it committed. Call it only with no batch in flight: then every record before
/// the position is written and committed, and what lies between is transaction markers (the
/// last offset of a transactional topic is always one), never delivered. Without this the
/// group would show a lag of 1 on every partition for good.
pub fn commit_positions(
    consumer: &SinkConsumer,
    lag: &LagReporter,
) -> KafkaResult<Vec<(String, i32, i64)>> {
    let positions = consumer.position()?;
    let mut offsets = Vec::new();
    let mut unknown: HashMap<(String, i32), i64> = HashMap::new();
    for e in positions.elements() {
        if let Offset::Offset(position) = e.offset() {
            match lag.last_committed(e.topic(), e.partition()) {
                Some(c) if position > c => {
                    offsets.push((e.topic().to_string(), e.partition(), position))
                }
                Some(_) => {}
                None => {
                    unknown.insert((e.topic().to_string(), e.partition()), position);
                }
            }
        }
    }
    drop(positions);
    // Partitions this process has not committed yet (assigned since it started): the group's
    // committed offsets, asked once and remembered; where the group has none, the position is
    // committed (it is past nothing undelivered).
    if !unknown.is_empty() {
        let mut ask = TopicPartitionList::new();
        for (topic, partition) in unknown.keys() {
            ask.add_partition(topic, *partition);
        }
        let committed = consumer.committed_offsets(ask, Duration::from_secs(5))?;
        let mut known = Vec::new();
        for e in committed.elements() {
            let position = unknown[&(e.topic().to_string(), e.partition())];
            match e.offset() {
                Offset::Offset(c) => {
                    known.push((e.topic().to_string(), e.partition(), c));
                    if position > c {
                        offsets.push((e.topic().to_string(), e.partition(), position));
                    }
                }
                _ => offsets.push((e.topic().to_string(), e.partition(), position)),
            }
        }
        drop(committed);
        lag.committed(&known);
    }
    if offsets.is_empty() {
        return Ok(offsets);
    }
    commit(consumer, &offsets)
}

/// Fetching paused while at least one stage waits for a dependency: each holds a [`Held`]
/// guard, and the partitions resume when the last guard is dropped (also when the waiting stage
/// is abandoned at shutdown).
pub struct PauseGate {
    consumer: std::sync::Arc<SinkConsumer>,
    holders: std::sync::Mutex<usize>,
}

/// Keeps fetching paused while it lives.
pub struct Held<'a> {
    gate: &'a PauseGate,
}

impl PauseGate {
    /// Whether fetching is paused now, by any holder.
    pub fn is_held(&self) -> bool {
        *self.holders.lock().expect("holders lock") > 0
    }

    pub fn new(consumer: std::sync::Arc<SinkConsumer>) -> Self {
        PauseGate {
            consumer,
            holders: std::sync::Mutex::new(0),
        }
    }

    pub fn hold(&self) -> Held<'_> {
        let mut holders = self.holders.lock().expect("holders lock");
        *holders += 1;
        if *holders == 1 {
            set_paused(&self.consumer, true);
        }
        Held { gate: self }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut holders = self.gate.holders.lock().expect("holders lock");
        *holders -= 1;
        if *holders == 0 {
            set_paused(&self.gate.consumer, false);
        }
    }
}

/// Stops fetching every owned partition (while a dependency is down) or starts again.
pub fn set_paused(consumer: &SinkConsumer, paused: bool) {
    let mut wanted = consumer.context().paused.lock().expect("pause lock");
    *wanted = paused;
    let result = consumer.assignment().and_then(|a| {
        if paused {
            consumer.pause(&a)
        } else {
            consumer.resume(&a)
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, paused, "Could not pause or resume the partitions");
    }
}

/// Reports the group's lag per partition (end offset minus the offset the sink committed; the
/// end is the last stable offset, as the lag client reads committed transactions only)
/// every [`LagReporter::INTERVAL`], also while no batch comes: after a drain the gauge reaches
/// 0, and while the sink is stuck and records keep arriving it grows. Commits only record their
/// offsets here; the broker round trips run on a client of their own, off the pipeline.
pub struct LagReporter {
    committed: Arc<std::sync::Mutex<HashMap<(String, i32), i64>>>,
    /// The lag last measured per partition (what `/status` shows).
    lags: Arc<std::sync::Mutex<HashMap<i32, i64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LagReporter {
    /// How often lag is measured: each measure asks the broker for every partition's watermarks.
    pub const INTERVAL: Duration = Duration::from_secs(5);

    /// Measures the lag of the partitions `consumer` is assigned; a partition it loses in a
    /// rebalance is forgotten (its committed offset would go stale) and its gauge set to 0, so
    /// that across instances the group's lag is the owners' lag.
    pub fn start(
        kafka: &KafkaArgs,
        topic: &str,
        consumer: std::sync::Weak<SinkConsumer>,
    ) -> anyhow::Result<Self> {
        // No group: this client only asks for watermarks.
        let client: rdkafka::consumer::BaseConsumer = kafka
            .client_config(&[
                ("group.id", "youtube-trending-sink-lag"),
                ("isolation.level", "read_committed"),
            ])?
            .create()
            .map_err(plumbing::kafka::config_error)?;
        let client = Arc::new(client);
        keep_bootstrapped(
            Arc::downgrade(&client),
            &kafka.kafka_bootstrap_servers,
            topic,
        );
        let committed: Arc<std::sync::Mutex<HashMap<(String, i32), i64>>> = Default::default();
        let lags: Arc<std::sync::Mutex<HashMap<i32, i64>>> = Default::default();
        let offsets = committed.clone();
        let measured_lags = lags.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Self::INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(consumer) = consumer.upgrade() else {
                    return;
                };
                // A local call: librdkafka knows its assignment without asking the broker.
                let assigned: std::collections::HashSet<(String, i32)> = match consumer.assignment()
                {
                    Ok(tpl) => tpl
                        .elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition()))
                        .collect(),
                    Err(_) => continue,
                };
                drop(consumer);
                let now = Self::owned(&offsets, &measured_lags, &assigned);
                let client = client.clone();
                let lags = measured_lags.clone();
                let measured = tokio::task::spawn_blocking(move || {
                    for ((topic, partition), committed) in now {
                        match client.fetch_watermarks(&topic, partition, Duration::from_secs(2)) {
                            Ok((_, high)) => {
                                let lag = (high - committed).max(0);
                                lags.lock().expect("lags lock").insert(partition, lag);
                                crate::events::ConsumerLag { partition, lag }.emit()
                            }
                            Err(e) => tracing::debug!(partition, error = %e,
                                "Could not read watermarks for the lag"),
                        }
                    }
                });
                let _ = measured.await;
            }
        });
        Ok(LagReporter {
            committed,
            lags,
            task,
        })
    }

    /// The committed offsets of the partitions in `assigned`; the others are forgotten and
    /// their gauges set to 0.
    fn owned(
        committed: &std::sync::Mutex<HashMap<(String, i32), i64>>,
        lags: &std::sync::Mutex<HashMap<i32, i64>>,
        assigned: &std::collections::HashSet<(String, i32)>,
    ) -> Vec<((String, i32), i64)> {
        let mut committed = committed.lock().expect("lag offsets lock");
        let mut lags = lags.lock().expect("lags lock");
        committed.retain(|key, _| {
            let owned = assigned.contains(key);
            if !owned {
                lags.remove(&key.1);
                crate::events::ConsumerLag {
                    partition: key.1,
                    lag: 0,
                }
                .emit();
            }
            owned
        });
        committed.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The offset this sink last committed for a partition, if it committed one.
    pub fn last_committed(&self, topic: &str, partition: i32) -> Option<i64> {
        self.committed
            .lock()
            .expect("lag offsets lock")
            .get(&(topic.to_string(), partition))
            .copied()
    }

    /// The lag last measured for a partition (every [`Self::INTERVAL`]), if measured yet.
    pub fn last_lag(&self, partition: i32) -> Option<i64> {
        self.lags
            .lock()
            .expect("lags lock")
            .get(&partition)
            .copied()
    }

    /// Offsets just committed (topic, partition, next offset).
    pub fn committed(&self, offsets: &[(String, i32, i64)]) {
        let mut map = self.committed.lock().expect("lag offsets lock");
        for (topic, partition, next) in offsets {
            map.insert((topic.clone(), *partition), *next);
        }
    }
}

impl Drop for LagReporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
