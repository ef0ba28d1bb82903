//! The sink connector: Kafka → Avro decode → batched idempotent upserts into PostgreSQL.
//!
//! Stages, one module each, in data-flow order: [`config`] → [`consume`] (consumer group,
//! batches, commits) → [`decode`] (wire format, registry, validation) → [`batch`] (dedup) →
//! [`write`] (one transaction per batch) → commit, with poison records going to [`dlq`].
//! [`migrate`] prepares the database; [`events`] is what the sink tells operators; [`control`]
//! is its control API (status, pause, resume, offsets).
//!
//! Delivery: at least once, plus idempotent writes. Offsets move only after the database
//! transaction (and the dead-letter produce) succeeded; a crash anywhere before replays the batch,
//! which rewrites the same rows.

pub mod batch;
pub mod config;
pub mod consume;
pub mod control;
pub mod decode;
pub mod dlq;
pub mod events;
pub mod history;
pub mod migrate;
pub mod redrive;
pub mod replay;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod write;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Instant;

use anyhow::{bail, Context};
use chrono::Utc;
use plumbing::backoff::{Backoff, Retriable};
use plumbing::kafka::{ensure_topics, RenewableProducer, TopicSpec};
use plumbing::readiness::Readiness;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use schemas::TrendingVideo;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ErrorsTolerance};
use crate::consume::SinkConsumer;
use crate::control::Control;
use crate::decode::{DecodeError, Decoder};
use crate::dlq::{DeadLetters, Fault};
use crate::events::{
    BatchBisected, BatchWritten, ChartsIncomplete, DependencyRetrying, HistoryRoundFailed,
    RecordsDeadLettered,
};
use crate::history::Retention;
use crate::write::{WriteError, Writer, Written};

/// The dependencies `/readyz` reports on.
pub const READINESS_CHECKS: &[&str] = &["kafka", "postgres", "schema_registry"];

/// [`Sink::finishing`]'s states.
const NOT_WRITING: u8 = 0;
const WRITING: u8 = 1;
const WRITE_FAILED: u8 = 2;

struct Sink {
    consumer: std::sync::Arc<SinkConsumer>,
    decoder: Decoder,
    writer: Writer,
    dlq: DeadLetters,
    readiness: Readiness,
    backoff: Backoff,
    tolerance: ErrorsTolerance,
    retention: Retention,
    lag: std::sync::Arc<consume::LagReporter>,
    /// Fetching paused while a stage waits for a dependency, or an operator paused the sink.
    pause: std::sync::Arc<consume::PauseGate>,
    control: std::sync::Arc<Control>,
    /// Where the batch being written stands: [`NOT_WRITING`], [`WRITING`] or [`WRITE_FAILED`] (then the
    /// sink stops: the position must not be committed past a batch that was not written).
    finishing: std::sync::atomic::AtomicU8,
}

/// Runs the sink until `shutdown` (then returns `Ok(true)`). Returns an error on a poison record
/// with `SINK_ERRORS_TOLERANCE=none`, or a permanent database error.
pub async fn run(
    config: Config,
    control: std::sync::Arc<Control>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<bool> {
    let sink = tokio::select! {
        sink = Sink::start(&config, control, readiness) => sink?,
        _ = shutdown.cancelled() => return Ok(true),
    };
    sink.control.attach(control::Live {
        consumer: sink.consumer.clone(),
        lag: sink.lag.clone(),
        pause: sink.pause.clone(),
    });
    let watchers = [
        tokio::spawn(watch_charts(sink.writer.clone(), config.chart_grace)),
        tokio::spawn(keep_history(sink.writer.clone(), config.snapshot_retention)),
    ];
    tracing::info!(topic = %config.topic, group = %config.group_id, dlq = sink.dlq.topic(),
        batch_max_records = config.batch_max_records,
        snapshot_retention = %config.snapshot_retention, "Sink connector started");
    if config.snapshot_retention == Retention::FOREVER {
        tracing::info!(
            "Chart history kept forever (SNAPSHOT_RETENTION=0). YouTube's developer policies \
             limit how long data fetched with an API key may be stored: see the README, \
             \"Running for months\""
        );
    }
    let result = tokio::select! {
        r = pipeline(&sink, &config, &shutdown) => r,
        never = follow_pause_requests(&sink) => match never {},
    };
    for w in watchers {
        w.abort();
    }
    // Leave the group at once so the partitions move without waiting for the session timeout.
    sink.consumer.unsubscribe();
    tracing::info!("Sink connector stopped");
    result.map(|()| true)
}

/// Batches until shutdown or a permanent error. Two stages overlap: while one batch is written
/// and committed, the next is collected and decoded, so the sink's CPU work runs while
/// PostgreSQL works on the previous batch. Batches still finish (write, dead-letter, commit)
/// one at a time and in order.
async fn pipeline(
    sink: &Sink,
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut pending: Option<Prepared> = None;
    loop {
        let finishing = sink.finish_pending(pending.take());
        let preparing = async {
            let batch = sink.collect(config).await?;
            sink.prepare(batch).await
        };
        let mut finishing = std::pin::pin!(futures::future::maybe_done(finishing));
        let mut preparing = std::pin::pin!(futures::future::maybe_done(preparing));
        tokio::select! {
            _ = futures::future::join(finishing.as_mut(), preparing.as_mut()) => {}
            _ = shutdown.cancelled() => {
                // The batch being collected or decoded is dropped: it was not committed.
                return finish_in_flight(finishing, config.shutdown_grace).await;
            }
        }
        finishing.as_mut().take_output().transpose()?;
        pending = preparing.as_mut().take_output().transpose()?;
    }
}

/// Holds fetching paused while an operator wants the sink paused (`PUT /pause`); the batch in
/// flight still finishes and commits.
async fn follow_pause_requests(sink: &Sink) -> std::convert::Infallible {
    let mut wanted = sink.control.watch_paused();
    loop {
        // The sender lives in `sink.control`: these waits end only on a change.
        let _ = wanted.wait_for(|paused| *paused).await;
        let _held = sink.pause.hold();
        let _ = wanted.wait_for(|paused| !*paused).await;
    }
}

/// At shutdown: the batch being written gets `grace` to be written and committed; past it, it
/// is abandoned (rolled back, not committed: redone after restart).
async fn finish_in_flight<F>(
    mut finishing: std::pin::Pin<&mut futures::future::MaybeDone<F>>,
    grace: std::time::Duration,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    if let futures::future::MaybeDone::Future(_) = &*finishing {
        tracing::info!("Shutdown: finishing the batch in flight");
    }
    match tokio::time::timeout(grace, finishing.as_mut()).await {
        Ok(()) => finishing.take_output().unwrap_or(Ok(())),
        Err(_) => {
            tracing::warn!(
                "Shutdown: batch abandoned, rolled back and not committed; it is redone after restart"
            );
            Ok(())
        }
    }
}

/// Reports the charts still missing videos past `grace`, every `grace` (at most every minute).
async fn watch_charts(writer: Writer, grace: std::time::Duration) {
    let every = grace.clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous = 0;
    loop {
        tick.tick().await;
        match writer.incomplete_charts(grace).await {
            Ok(count) => {
                ChartsIncomplete { count, previous }.emit();
                previous = count;
            }
            Err(e) => tracing::debug!(error = %e, "Could not count the incomplete charts"),
        }
    }
}

/// Creates the history's partitions ahead and deletes what is older than the retention, at
/// once and then every [`history::ROUND_EVERY`]; alongside the batches, so that a round that
/// fails (a lock not granted in time) never holds the sink up.
async fn keep_history(writer: Writer, retention: Retention) {
    HistoryRoundFailed::register();
    let mut tick = tokio::time::interval(history::ROUND_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = writer.keep_history(retention).await {
            HistoryRoundFailed { error: &e }.emit();
        }
    }
}

/// A batch decoded, waiting to be written and committed.
struct Prepared {
    batch: Vec<OwnedMessage>,
    /// The valid records, with their index in `batch`.
    good: Vec<(usize, TrendingVideo)>,
    /// Poison records, by index in `batch`.
    poison: Vec<(usize, Fault)>,
}

/// What writing a batch's valid records stored, and the records PostgreSQL refused.
#[derive(Default)]
struct Stored {
    written: Written,
    /// Older than the retention keeps: not written.
    expired: usize,
    /// Records of a video folded into a newer one of the same part.
    deduplicated: usize,
    /// Refused as data when written alone, by index in the batch.
    refused: Vec<(usize, Fault)>,
    /// Transactions the batch took (1 when nothing was refused).
    transactions: usize,
}

impl Sink {
    /// Waits for each dependency in turn (with backoff, reporting readiness), then builds the
    /// sink's stages. A TLS handshake PostgreSQL refuses stops it here: DATABASE_URL's TLS
    /// settings do not fit this server, and waiting cannot change that.
    async fn start(
        config: &Config,
        control: std::sync::Arc<Control>,
        readiness: Readiness,
    ) -> anyhow::Result<Sink> {
        let url = config.database_url()?;
        let writer = Writer::new(&url, config.database_pool_size, config.write_timeout)?;
        let backoff = Backoff::new(config.retry_initial_backoff, config.retry_max_backoff);
        let dlq_topic = config.dlq_topic();
        let decoder = Decoder::new(
            &config.registry,
            config.schema_subjects(),
            config.avro_max_length,
        )?;
        // Migrations (unless skipped), a query within the write timeout, then the history's
        // partitions.
        retry_boot(&backoff, &readiness, &control, "postgres", || async {
            if !config.skip_migrations {
                migrate::run(&mut *writer.client().await?).await?;
            }
            writer.ping().await?;
            writer.prepare_history().await?;
            Ok::<_, DatabaseStart>(())
        })
        .await?;
        let kafka_config = config.kafka.client_config(&[])?;
        let dlq_spec = TopicSpec {
            name: &dlq_topic,
            partitions: 1,
            replication: config.kafka.kafka_topic_replication,
            configs: HashMap::new(),
        };
        retry_boot(&backoff, &readiness, &control, "kafka", || {
            ensure_topics(&kafka_config, std::slice::from_ref(&dlq_spec))
        })
        .await?;
        retry_boot(&backoff, &readiness, &control, "schema_registry", || {
            decoder.check_registry()
        })
        .await?;
        for check in READINESS_CHECKS {
            readiness.set_ready(check);
        }

        let producer = RenewableProducer::new(
            config
                .kafka
                .client_config(&[("enable.idempotence", "true"), ("acks", "all")])?,
        )
        .context("creating the dead-letter producer")?;
        let consumer = consume::consumer(&config.kafka, &config.group_id, &config.topic)?;
        let lag = std::sync::Arc::new(consume::LagReporter::start(
            &config.kafka,
            &config.topic,
            std::sync::Arc::downgrade(&consumer),
        )?);
        Ok(Sink {
            pause: std::sync::Arc::new(consume::PauseGate::new(consumer.clone())),
            control,
            consumer,
            decoder,
            writer,
            dlq: DeadLetters::new(producer, dlq_topic),
            readiness,
            backoff,
            tolerance: config.errors_tolerance,
            retention: config.snapshot_retention,
            lag,
            finishing: std::sync::atomic::AtomicU8::new(NOT_WRITING),
        })
    }

    /// Finishes the batch prepared before (if any), saying meanwhile where it stands (see
    /// [`Sink::idle`]).
    async fn finish_pending(&self, previous: Option<Prepared>) -> anyhow::Result<()> {
        let Some(prepared) = previous else {
            return Ok(());
        };
        self.finishing.store(WRITING, SeqCst);
        let finished = self.finish(prepared).await;
        let state = if finished.is_ok() {
            NOT_WRITING
        } else {
            WRITE_FAILED
        };
        self.finishing.store(state, SeqCst);
        finished
    }

    /// Collects the next batch, waiting while the broker is unreachable.
    async fn collect(&self, config: &Config) -> Result<Vec<OwnedMessage>, KafkaError> {
        // Not through `retry`: fetching is what failed, there is nothing to pause.
        let mut failed = false;
        let on_failure = |e: &KafkaError, attempt, delay| {
            failed = true;
            self.readiness.set_not_ready("kafka", e.to_string());
            self.control.failed("kafka", "consume");
            DependencyRetrying {
                dependency: "kafka",
                kind: "consume",
                error: e,
                attempt,
                delay,
            }
            .emit();
        };
        let batch = plumbing::backoff::retry(&self.backoff, on_failure, || {
            consume::collect(
                &self.consumer,
                config.batch_max_records,
                config.batch_max_bytes,
                config.batch_max_wait,
                || self.idle(),
            )
        })
        .await?;
        if failed {
            tracing::info!(dependency = "kafka", "Dependency back");
            self.readiness.set_ready("kafka");
        }
        Ok(batch)
    }

    /// Nothing to read: once no batch is in flight, the offsets move past the transaction
    /// markers that end each partition (see [`consume::commit_positions`]).
    /// Returns false once the batch in flight failed: collecting stops, the sink stops on that
    /// batch's error.
    fn idle(&self) -> bool {
        match self.finishing.load(SeqCst) {
            WRITING => return true,
            WRITE_FAILED => return false,
            _ => {}
        }
        // No batch in flight: the moment an offsets change asked through the control API is
        // applied, so that no batch commits over it.
        if let Some(change) = self.control.take_change() {
            // Broker round trips (plan, seeks, a synchronous commit): off the async worker.
            tokio::task::block_in_place(|| change.apply(&self.control, &self.consumer, &self.lag));
            return true;
        }
        match consume::commit_positions(&self.consumer, &self.lag) {
            Ok(offsets) if !offsets.is_empty() => {
                tracing::debug!(
                    ?offsets,
                    "Idle: committed the positions past transaction markers"
                );
                self.lag.committed(&offsets);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "Idle: could not commit the positions"),
        }
        true
    }

    /// Decodes a batch, waiting while the registry is unavailable; fails on a poison record
    /// with `SINK_ERRORS_TOLERANCE=none`.
    async fn prepare(&self, batch: Vec<OwnedMessage>) -> anyhow::Result<Prepared> {
        let decoded = self
            .retry("schema_registry", |_| "unavailable", || self.decode(&batch))
            .await?;
        let mut good = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        for (i, r) in decoded.into_iter().enumerate() {
            match r {
                Ok(v) => good.push((i, v)),
                Err(e) => poison.push((i, Fault::Undecodable(e))),
            }
        }
        self.tolerate(&batch, &poison)?;
        Ok(Prepared {
            batch,
            good,
            poison,
        })
    }

    /// With `SINK_ERRORS_TOLERANCE=none`, the first poison record stops the sink, before
    /// anything is committed past it.
    fn tolerate(&self, batch: &[OwnedMessage], poison: &[(usize, Fault)]) -> anyhow::Result<()> {
        if let (ErrorsTolerance::None, Some((i, e))) = (self.tolerance, poison.first()) {
            let m = &batch[*i];
            bail!(
                "poison record at {}[{}] offset {} ({}): {}. SINK_ERRORS_TOLERANCE=none: stopping \
                 without committing past it (set it to `all` to dead-letter such records)",
                m.topic(),
                m.partition(),
                m.offset(),
                e.reason(),
                e.message()
            );
        }
        Ok(())
    }

    /// Write, dead-letter, commit; each step retried while its dependency is away.
    async fn finish(&self, prepared: Prepared) -> anyhow::Result<()> {
        let Prepared {
            batch,
            good,
            mut poison,
        } = prepared;
        let started = Instant::now();
        let Stored {
            written,
            expired,
            deduplicated,
            refused,
            transactions,
        } = self.write_bisecting(&good).await?;
        if transactions > 1 {
            BatchBisected {
                records: good.len(),
                refused: refused.len(),
                transactions,
                duration: started.elapsed(),
            }
            .emit();
        }
        self.tolerate(&batch, &refused)?;
        poison.extend(refused);
        poison.sort_by_key(|(i, _)| *i);
        let write_duration = started.elapsed();
        if !poison.is_empty() {
            let records: Vec<(&OwnedMessage, &Fault)> =
                poison.iter().map(|(i, e)| (&batch[*i], e)).collect();
            self.retry("kafka", |_| "dead_letter", || self.dlq.send(&records))
                .await?;
            let mut by_reason = BTreeMap::new();
            for (_, e) in &poison {
                *by_reason.entry(e.reason()).or_insert(0u64) += 1;
            }
            RecordsDeadLettered {
                topic: self.dlq.topic(),
                by_reason,
                first_error: poison[0].1.message(),
            }
            .emit();
        }
        let offsets = consume::next_offsets(&batch);
        let committed = self
            .retry(
                "kafka",
                |_| "commit",
                || async { consume::commit(&self.consumer, &offsets) },
            )
            .await?;
        self.lag.committed(&committed);
        let now = Utc::now();
        BatchWritten {
            records: batch.len(),
            deduplicated,
            dead_lettered: poison.len(),
            expired,
            written,
            partitions_committed: committed.len(),
            offsets: consume::describe_offsets(&batch),
            write_duration,
            latencies: good
                .iter()
                .map(|(_, v)| (now - v.fetched_at).num_milliseconds().max(0) as f64 / 1000.0)
                .collect(),
        }
        .emit();
        Ok(())
    }

    /// Writes a batch's valid records in one transaction. When PostgreSQL refuses the data of
    /// some record (see [`WriteError::Refused`]), the records are split in halves, each written
    /// in its own transaction and split again while refused, until each refused record is
    /// alone: it is returned to be dead-lettered, every other record is written. Each
    /// transaction is idempotent, so halves written before a crash are simply written again.
    /// Any other permanent error stops the sink.
    async fn write_bisecting(&self, good: &[(usize, TrendingVideo)]) -> anyhow::Result<Stored> {
        let mut stored = Stored::default();
        // Last in, first out: the halves are written in the batch's order.
        let mut parts = vec![good];
        while let Some(part) = parts.pop() {
            stored.transactions += 1;
            let attempt = self
                .retry("postgres", WriteError::kind, || self.write_part(part))
                .await;
            match attempt {
                Ok(s) => {
                    stored.written += s.written;
                    stored.expired += s.expired;
                    stored.deduplicated += s.deduplicated;
                }
                Err(WriteError::Refused { sqlstate, message }) if part.len() == 1 => {
                    stored
                        .refused
                        .push((part[0].0, Fault::Refused { sqlstate, message }));
                }
                Err(WriteError::Refused { .. }) if part.len() > 1 => {
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push(second);
                    parts.push(first);
                }
                Err(e) => {
                    let hint = e.hint().map(|h| format!(": {h}")).unwrap_or_default();
                    bail!("writing a batch to PostgreSQL failed permanently{hint} ({e})");
                }
            }
        }
        Ok(stored)
    }

    /// One transaction: the records of `part` the retention keeps, deduplicated.
    async fn write_part(&self, part: &[(usize, TrendingVideo)]) -> Result<Stored, WriteError> {
        // Records older than the retention keeps, at this attempt (a retry may come after a
        // round deleted more): not written, so that neither a replay nor a late retry brings
        // deleted history back.
        let horizon = self.retention.horizon(Utc::now());
        let kept: Vec<&TrendingVideo> = part
            .iter()
            .map(|(_, v)| v)
            .filter(|v| horizon.is_none_or(|h| v.fetched_at >= h))
            .collect();
        let deduped = batch::dedup(kept.iter().copied());
        let written = self.writer.write(&deduped).await?;
        Ok(Stored {
            written,
            expired: part.len() - kept.len(),
            deduplicated: deduped.duplicates(kept.len()),
            ..Stored::default()
        })
    }

    /// Decodes every record; fails as a whole only when the registry is unavailable.
    async fn decode(
        &self,
        batch: &[OwnedMessage],
    ) -> Result<Vec<Result<TrendingVideo, DecodeError>>, DecodeError> {
        let mut out = Vec::with_capacity(batch.len());
        let latest = Decoder::latest_fetched_at();
        for (i, m) in batch.iter().enumerate() {
            // Decoding a cached schema never waits: let the write of the previous batch move on.
            if i % 256 == 255 {
                tokio::task::yield_now().await;
            }
            match self.decoder.decode(m.key(), m.payload(), latest).await {
                Err(e) if e.is_retriable() => return Err(e),
                r => out.push(r),
            }
        }
        Ok(out)
    }

    /// Runs `f` until it succeeds or fails for good. While it fails the partitions are paused
    /// (no more fetching: backpressure) and the dependency is reported not ready; nothing is
    /// committed until the step succeeds.
    async fn retry<T, E, F, Fut>(
        &self,
        dependency: &'static str,
        kind: impl Fn(&E) -> &'static str,
        f: F,
    ) -> Result<T, E>
    where
        E: Retriable,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut held = None;
        let on_failure = |e: &E, attempt, delay| {
            held.get_or_insert_with(|| self.pause.hold());
            self.readiness.set_not_ready(dependency, e.to_string());
            self.control.failed(dependency, kind(e));
            DependencyRetrying {
                dependency,
                kind: kind(e),
                error: e,
                attempt,
                delay,
            }
            .emit();
        };
        let result = plumbing::backoff::retry(&self.backoff, on_failure, f).await;
        let failed = held.take().is_some();
        if result.is_ok() {
            if failed {
                tracing::info!(dependency, "Dependency back");
            }
            self.readiness.set_ready(dependency);
        }
        result
    }
}

/// Retries a start-up step until it succeeds or fails for good, reporting `check` not ready
/// meanwhile.
async fn retry_boot<T, E, F, Fut>(
    backoff: &Backoff,
    readiness: &Readiness,
    control: &Control,
    check: &'static str,
    f: F,
) -> Result<T, E>
where
    E: Retriable,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let on_failure = |e: &E, attempt, delay| {
        readiness.set_not_ready(check, e.to_string());
        control.failed(check, "startup");
        DependencyRetrying {
            dependency: check,
            kind: "startup",
            error: e,
            attempt,
            delay,
        }
        .emit();
    };
    plumbing::backoff::retry(backoff, on_failure, f).await
}

/// What can stop the database's start-up step: everything is retried (PostgreSQL starting, a
/// migration waiting for its lock) but a TLS handshake refused, which says that DATABASE_URL's
/// TLS settings do not fit this server: waiting cannot change that.
#[derive(Debug, thiserror::Error)]
enum DatabaseStart {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
}

impl Retriable for DatabaseStart {
    fn is_retriable(&self) -> bool {
        !matches!(self, DatabaseStart::Write(e) if e.is_tls())
    }
}
