//! Everything the sink tells operators, as typed events whose `emit()` logs and counts together.
//! Emitted per batch, never per record. Metric names are listed in the README ("Metrics").

use std::collections::BTreeMap;
use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::write::Written;

/// A batch was written and its offsets committed.
pub struct BatchWritten {
    pub records: usize,
    pub deduplicated: usize,
    pub dead_lettered: usize,
    /// Records older than the SNAPSHOT_RETENTION horizon, left out.
    pub expired: usize,
    pub written: Written,
    pub partitions_committed: usize,
    /// `partition:first-last` of the batch's records.
    pub offsets: String,
    pub write_duration: Duration,
    /// Seconds from each record's `fetched_at` to now, for the end-to-end histogram.
    pub latencies: Vec<f64>,
}

impl BatchWritten {
    pub fn emit(&self) {
        tracing::debug!(
            records = self.records,
            videos = self.written.videos,
            snapshots = self.written.snapshots,
            deduplicated = self.deduplicated,
            dead_lettered = self.dead_lettered,
            expired = self.expired,
            partitions = self.partitions_committed,
            offsets = %self.offsets,
            write_ms = self.write_duration.as_millis() as u64,
            "Batch written and committed"
        );
        counter!("sink_records_consumed_total").increment(self.records as u64);
        counter!("sink_records_written_total")
            .increment((self.records - self.dead_lettered - self.expired) as u64);
        counter!("sink_records_expired_total").increment(self.expired as u64);
        counter!("sink_records_deduplicated_total").increment(self.deduplicated as u64);
        counter!("sink_rows_upserted_total", "table" => "videos").increment(self.written.videos);
        counter!("sink_rows_upserted_total", "table" => "video_snapshots")
            .increment(self.written.snapshots);
        histogram!("sink_batch_size_records").record(self.records as f64);
        histogram!("sink_batch_write_duration_seconds").record(self.write_duration.as_secs_f64());
        let latency = histogram!("sink_end_to_end_latency_seconds");
        for l in &self.latencies {
            latency.record(*l);
        }
    }
}

/// PostgreSQL refused the data of some record of a batch: the batch was written in parts until
/// each refused record was alone (they go to the dead-letter topic as `rejected`).
pub struct BatchBisected {
    pub records: usize,
    pub refused: usize,
    /// Transactions the batch took, the first (refused) one included.
    pub transactions: usize,
    pub duration: Duration,
}

impl BatchBisected {
    pub fn emit(&self) {
        tracing::warn!(
            records = self.records,
            refused = self.refused,
            transactions = self.transactions,
            write_ms = self.duration.as_millis() as u64,
            "PostgreSQL refused a record's data: batch written in parts to set the record apart"
        );
        counter!("sink_batches_bisected_total").increment(1);
        counter!("sink_bisection_transactions_total").increment(self.transactions as u64);
    }
}

/// Poison records sent to the dead-letter topic, by reason.
pub struct RecordsDeadLettered<'a> {
    pub topic: &'a str,
    pub by_reason: BTreeMap<&'static str, u64>,
    pub first_error: String,
}

impl RecordsDeadLettered<'_> {
    pub fn emit(&self) {
        tracing::warn!(dlq = self.topic, by_reason = ?self.by_reason, first_error = %self.first_error,
            "Poison records sent to the dead-letter topic");
        for (reason, n) in &self.by_reason {
            counter!("sink_records_dead_lettered_total", "reason" => *reason).increment(*n);
        }
    }
}

/// A dead letter too large for its topic, produced again with less of the original record.
pub struct DeadLetterTrimmed {
    pub partition: i32,
    pub offset: i64,
    pub key_bytes: usize,
    pub value_bytes: usize,
    /// `value` or `key_and_value`.
    pub dropped: &'static str,
}

impl DeadLetterTrimmed {
    pub fn emit(&self) {
        tracing::warn!(
            partition = self.partition,
            offset = self.offset,
            key_bytes = self.key_bytes,
            value_bytes = self.value_bytes,
            dropped = self.dropped,
            "Dead letter too large for its topic: sending it without part of the original"
        );
        counter!("sink_dead_letters_trimmed_total", "dropped" => self.dropped).increment(1);
    }
}

/// A dependency failed; the batch is retried after `delay`, nothing committed meanwhile.
pub struct DependencyRetrying<'a> {
    /// `postgres`, `kafka` or `schema_registry`.
    pub dependency: &'static str,
    /// Bounded label (e.g. `connection`, `unavailable`).
    pub kind: &'static str,
    pub error: &'a dyn std::fmt::Display,
    pub attempt: u32,
    pub delay: Duration,
}

impl DependencyRetrying<'_> {
    pub fn emit(&self) {
        tracing::warn!(dependency = self.dependency, kind = self.kind, attempt = self.attempt,
            retry_in_ms = self.delay.as_millis() as u64, error = %self.error,
            "Dependency failed; partitions paused, nothing committed, retrying");
        counter!("sink_retries_total", "dependency" => self.dependency, "kind" => self.kind)
            .increment(1);
        if self.dependency == "postgres" {
            counter!("sink_db_errors_total", "kind" => self.kind).increment(1);
        }
        if self.kind == "commit" {
            counter!("sink_commit_errors_total").increment(1);
        }
    }
}

/// Records of a partition not yet committed by the group.
pub struct ConsumerLag {
    pub partition: i32,
    pub lag: i64,
}

impl ConsumerLag {
    pub fn emit(&self) {
        gauge!("sink_consumer_lag_records", "partition" => self.partition.to_string())
            .set(self.lag as f64);
    }
}

/// Charts older than SINK_CHART_GRACE with fewer videos stored than their size; logged when
/// the number grows.
pub struct ChartsIncomplete {
    pub count: i64,
    pub previous: i64,
}

impl ChartsIncomplete {
    pub fn emit(&self) {
        gauge!("sink_charts_incomplete").set(self.count as f64);
        if self.count > self.previous {
            tracing::warn!(
                charts = self.count,
                "Charts still missing videos past SINK_CHART_GRACE (see the charts table: \
                 complete = false); their records may have been dead-lettered"
            );
        }
    }
}

/// Partitions of the chart history created (ahead of their month, or for a record's month).
pub struct PartitionsCreated<'a> {
    pub names: &'a [String],
}

impl PartitionsCreated<'_> {
    pub fn emit(&self) {
        tracing::info!(partitions = ?self.names, "Chart history: partitions created");
        counter!("sink_snapshot_partitions_created_total").increment(self.names.len() as u64);
    }
}

/// A month of chart history dropped whole: all of it is older than SNAPSHOT_RETENTION.
pub struct PartitionDropped {
    pub month: crate::history::Month,
    pub partition: String,
    pub snapshots: u64,
    pub retention: crate::history::Retention,
}

impl PartitionDropped {
    pub fn emit(&self) {
        tracing::info!(month = %self.month, partition = %self.partition,
            snapshots = self.snapshots, retention = %self.retention,
            "Chart history: month older than SNAPSHOT_RETENTION dropped");
        counter!("sink_snapshot_partitions_dropped_total").increment(1);
        counter!("sink_snapshots_expired_total").increment(self.snapshots);
    }
}

/// Rows older than the SNAPSHOT_RETENTION horizon deleted one by one: the snapshots of the
/// month the horizon falls in, the charts, the videos no chart has shown since.
pub struct HistoryExpired {
    pub horizon: chrono::DateTime<chrono::Utc>,
    pub snapshots: u64,
    pub charts: u64,
    pub videos: u64,
}

impl HistoryExpired {
    pub fn emit(&self) {
        if self.snapshots + self.charts + self.videos > 0 {
            tracing::info!(older_than = %self.horizon, snapshots = self.snapshots,
                charts = self.charts, videos = self.videos,
                "Chart history: rows older than SNAPSHOT_RETENTION deleted");
        }
        counter!("sink_snapshots_expired_total").increment(self.snapshots);
        counter!("sink_charts_expired_total").increment(self.charts);
        counter!("sink_videos_expired_total").increment(self.videos);
    }
}

/// The history maintenance round failed; it is tried again at the next round.
pub struct HistoryRoundFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl HistoryRoundFailed<'_> {
    /// The counter at 0 from the start: a first failure then shows as an increase.
    pub fn register() {
        counter!("sink_history_round_errors_total").increment(0);
    }

    pub fn emit(&self) {
        tracing::warn!(error = %self.error, every_s = crate::history::ROUND_EVERY.as_secs(),
            "Chart history: could not create or drop partitions; trying again at the next round");
        counter!("sink_history_round_errors_total").increment(1);
    }
}
