//! The way back from the dead-letter topic: `dlq list` shows the dead letters, `dlq replay`
//! produces chosen ones back to the topic they came from, once what made them poison is fixed
//! (a registry restored, a subject added to SINK_SCHEMA_SUBJECTS).
//!
//! A replay is exactly once: the records are produced in one Kafka transaction together with
//! the replay group's offsets on the dead-letter topic (`send_offsets_to_transaction`), so a run
//! that fails or is killed replays nothing and moves nothing, and the next run starts where the
//! last successful one ended. The group's position moves past every dead letter examined,
//! replayed or left out by the filters: the dry run (the default) says how many it would pass
//! over, and `--replay-group` names another group to look at them again.
//!
//! Both read the topic a chunk at a time (`--max-records` dead letters, at most
//! [`MAX_CHUNK_BYTES`] of keys and values): a replay produces a chunk in its transaction before
//! it reads the next, and a listing keeps no key or value bytes, so the memory either needs does
//! not grow with the backlog (millions of dead letters after a misconfigured full replay).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Utc};
use clap::{Args, Subcommand};
use plumbing::kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::dlq::{KEY_DROPPED_HEADER, VALUE_DROPPED_HEADER};

const TIMEOUT: Duration = Duration::from_secs(10);

/// How long reading may go without a record before the end of the topic is given up on.
const STALL: Duration = Duration::from_secs(30);

/// The most key and value bytes one chunk of a replay holds (and one transaction produces).
pub const MAX_CHUNK_BYTES: usize = 32 * 1024 * 1024;

/// Dead letters read per chunk by `dlq list`.
const LIST_CHUNK: usize = 10_000;

#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List the dead letters: partition, offset, time, reason, key and error message.
    List(ListArgs),
    /// Produce chosen dead letters back to the topic they came from (dry run unless
    /// --execute), exactly once: each is replayed by one run of its replay group at most.
    Replay(ReplayArgs),
}

/// Which dead letters.
#[derive(Debug, Clone, Args)]
pub struct Filter {
    /// Only these reasons (comma-separated), as in `sink_records_dead_lettered_total`:
    /// unknown_schema, avro, invalid, not_wire_format, ...
    #[arg(long, value_delimiter = ',')]
    pub reason: Vec<String>,
    /// Only dead letters written at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Only dead letters written before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: Filter,
    /// A JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub filter: Filter,
    /// Produce the records. Without it, only show what would be replayed (dry run).
    #[arg(long)]
    pub execute: bool,
    /// Consumer group keeping the replay's position on the dead-letter topic (its
    /// transactional id is `dlq-replay:<group>`); default `<KAFKA_GROUP_ID>.dlq-replay`.
    #[arg(long)]
    pub replay_group: Option<String>,
    /// Dead letters examined per transaction: each commits its records and the group's
    /// position, so a large backlog is replayed in steps that each fit the transaction timeout.
    #[arg(long, default_value_t = 1000)]
    pub max_records: usize,
}

/// One dead letter, as the sink wrote it (see [`crate::dlq`]).
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// When it was dead-lettered.
    pub time: Option<DateTime<Utc>>,
    pub reason: String,
    pub message: String,
    /// Where the original record was.
    pub topic: Option<String>,
    pub original_partition: Option<i32>,
    pub original_offset: Option<i64>,
    /// The original key, as text (bytes that are not UTF-8 replaced).
    pub key: Option<String>,
    pub key_bytes: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The dead letter carries a value (read or not).
    pub has_value: bool,
    /// The key or the value was too large to be copied into the dead letter.
    pub trimmed: bool,
}

impl DeadLetter {
    /// The dead letter `m`, with its original key and value bytes when `bytes` (to replay it).
    fn of<M: Message>(m: &M, bytes: bool) -> DeadLetter {
        let header = |name: &str| -> Option<String> {
            let headers = m.headers()?;
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let class = header("__connect.errors.exception.class.name").unwrap_or_default();
        DeadLetter {
            partition: m.partition(),
            offset: m.offset(),
            time: m
                .timestamp()
                .to_millis()
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            reason: class.rsplit("::").next().unwrap_or_default().to_string(),
            message: header("__connect.errors.exception.message").unwrap_or_default(),
            topic: header("__connect.errors.topic"),
            original_partition: header("__connect.errors.partition").and_then(|p| p.parse().ok()),
            original_offset: header("__connect.errors.offset").and_then(|o| o.parse().ok()),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            key_bytes: m.key().filter(|_| bytes).map(<[u8]>::to_vec),
            value: m.payload().filter(|_| bytes).map(<[u8]>::to_vec),
            has_value: m.payload().is_some(),
            trimmed: header(KEY_DROPPED_HEADER).is_some() || header(VALUE_DROPPED_HEADER).is_some(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "partition": self.partition,
            "offset": self.offset,
            "time": self.time,
            "reason": self.reason,
            "message": self.message,
            "topic": self.topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "key": self.key,
            "trimmed": self.trimmed,
        })
    }

    fn chosen(&self, f: &Filter) -> bool {
        (f.reason.is_empty() || f.reason.contains(&self.reason))
            && f.since.is_none_or(|s| self.time.is_some_and(|t| t >= s))
            && f.until.is_none_or(|u| self.time.is_some_and(|t| t < u))
    }
}

/// Reads a dead-letter topic a chunk at a time, from `group`'s committed offsets (from the start
/// without a group, or where it never committed) to the end offsets of when it started.
struct Reader {
    consumer: BaseConsumer,
    topic: String,
    /// Partitions not read to their end yet, with that end.
    remaining: BTreeMap<i32, i64>,
    /// The end offsets read at the start.
    ends: TopicPartitionList,
}

impl Reader {
    fn open(kafka: &KafkaArgs, topic: &str, group: Option<&str>) -> anyhow::Result<Reader> {
        let listing = format!("dlq-list-{}", std::process::id());
        let consumer: BaseConsumer = kafka
            .client_config(&[
                ("group.id", group.unwrap_or(&listing)),
                ("enable.auto.commit", "false"),
                ("isolation.level", "read_committed"),
                // Prefetched records count too: 16 MB per partition, not librdkafka's 64.
                ("queued.max.messages.kbytes", "16384"),
            ])?
            .create()
            .map_err(plumbing::kafka::config_error)?;
        let partitions = crate::replay::partitions_of(&consumer, topic, &[])
            .context("the dead-letter topic (SINK_DLQ_TOPIC, or <KAFKA_TOPIC>.dlq)")?;
        let committed = match group {
            Some(_) => crate::replay::committed(&consumer, topic, &partitions)?,
            None => vec![None; partitions.len()],
        };
        let (mut assign, mut ends) = (TopicPartitionList::new(), TopicPartitionList::new());
        let mut remaining = BTreeMap::new();
        for (p, committed) in partitions.into_iter().zip(committed) {
            let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
            let start = committed.unwrap_or(low).clamp(low, high);
            ends.add_partition_offset(topic, p, Offset::Offset(high))?;
            if start < high {
                assign.add_partition_offset(topic, p, Offset::Offset(start))?;
                remaining.insert(p, high);
            }
        }
        consumer.assign(&assign)?;
        Ok(Reader {
            consumer,
            topic: topic.to_string(),
            remaining,
            ends,
        })
    }

    /// Every partition read to its end.
    fn done(&self) -> bool {
        self.remaining.is_empty()
    }

    /// The next dead letters, at most `max` and [`MAX_CHUNK_BYTES`] of key and value bytes,
    /// in offset order within each partition (kept only when `bytes`); empty once done.
    fn next_chunk(&mut self, max: usize, bytes: bool) -> anyhow::Result<Vec<DeadLetter>> {
        let mut letters = Vec::new();
        let mut size = 0;
        let mut last_progress = Instant::now();
        while !self.remaining.is_empty() && letters.len() < max && size < MAX_CHUNK_BYTES {
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    let end = self.remaining.get(&m.partition()).copied();
                    if end.is_some_and(|end| m.offset() < end) {
                        let letter = DeadLetter::of(&m, bytes);
                        size += letter.key_bytes.as_ref().map_or(0, Vec::len)
                            + letter.value.as_ref().map_or(0, Vec::len);
                        letters.push(letter);
                    }
                    if end.is_some_and(|end| m.offset() + 1 >= end) {
                        self.remaining.remove(&m.partition());
                    }
                }
                Some(Err(e)) => return Err(e).context("reading the dead-letter topic"),
                None => {
                    self.past_markers()?;
                    if last_progress.elapsed() > STALL {
                        bail!(
                            "no record of {} for {}s while partitions {:?} were not read to their end",
                            self.topic,
                            STALL.as_secs(),
                            self.remaining.keys().collect::<Vec<_>>()
                        );
                    }
                }
            }
        }
        Ok(letters)
    }

    /// Transaction markers and compacted records take offsets without a record: a partition
    /// whose position reached its end is done.
    fn past_markers(&mut self) -> anyhow::Result<()> {
        let positions = self.consumer.position()?;
        self.remaining.retain(|p, end| {
            !matches!(
                positions.find_partition(&self.topic, *p).map(|e| e.offset()),
                Some(Offset::Offset(o)) if o >= *end
            )
        });
        Ok(())
    }
}

/// `dlq list`: the dead letters the filter chooses, as a table or JSON, written to `out` as
/// they are read.
pub fn list(
    kafka: &KafkaArgs,
    dlq_topic: &str,
    args: &ListArgs,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let mut reader = Reader::open(kafka, dlq_topic, None)?;
    if args.json {
        write!(out, "[")?;
    } else {
        writeln!(
            out,
            "{:>9}  {:>8}  {:<24}  {:<16}  {:<16}  MESSAGE",
            "PARTITION", "OFFSET", "TIME", "REASON", "KEY"
        )?;
    }
    let (mut chosen, mut examined) = (0, 0);
    loop {
        let letters = reader.next_chunk(LIST_CHUNK, false)?;
        if letters.is_empty() {
            break;
        }
        examined += letters.len();
        for l in letters.iter().filter(|l| l.chosen(&args.filter)) {
            if args.json {
                let separator = if chosen == 0 { "\n  " } else { ",\n  " };
                write!(out, "{separator}{}", l.json())?;
            } else {
                let key: String = l.key.as_deref().unwrap_or("-").chars().take(16).collect();
                let message: String = l.message.chars().take(120).collect();
                writeln!(
                    out,
                    "{:>9}  {:>8}  {:<24}  {:<16}  {:<16}  {}",
                    l.partition,
                    l.offset,
                    l.time.map_or("-".into(), |t| t.to_rfc3339()),
                    l.reason,
                    key,
                    message
                )?;
            }
            chosen += 1;
        }
    }
    if args.json {
        writeln!(out, "{}]", if chosen == 0 { "" } else { "\n" })?;
    } else {
        writeln!(out, "{chosen} of {examined} dead letters in {dlq_topic}")?;
    }
    Ok(())
}

/// `dlq replay`: the plan, and with `--execute` the records produced back, in transactions of
/// at most `--max-records` dead letters examined, each with the replay group's new position.
pub fn replay(
    kafka: &KafkaArgs,
    dlq_topic: &str,
    source_topic: &str,
    sink_group: &str,
    args: &ReplayArgs,
) -> anyhow::Result<String> {
    let group = args
        .replay_group
        .clone()
        .unwrap_or_else(|| format!("{sink_group}.dlq-replay"));
    // Before the group's position is read: fences a replay of the same group still running (and
    // aborts its open transaction), so two runs never both replay what they read.
    let producer = if args.execute {
        let producer: BaseProducer = kafka
            .client_config(&[
                ("transactional.id", format!("dlq-replay:{group}").as_str()),
                ("enable.idempotence", "true"),
            ])?
            .create()
            .map_err(plumbing::kafka::config_error)?;
        producer
            .init_transactions(TIMEOUT)
            .context("starting the replay's transactions")?;
        Some(producer)
    } else {
        None
    };
    let mut reader = Reader::open(kafka, dlq_topic, Some(&group))?;
    let mut plan = Plan::default();
    let size = args.max_records.max(1);
    let Some(producer) = producer else {
        loop {
            let chunk = reader.next_chunk(size, false)?;
            if chunk.is_empty() {
                break;
            }
            plan.examine(&chunk, &args.filter);
        }
        let mut out = plan.render(&group, dlq_topic);
        writeln!(
            out,
            "dry run: nothing produced. Add --execute to produce {} records back and move the \
             group past all {} examined.",
            plan.replayed, plan.examined
        )?;
        return Ok(out);
    };
    let metadata = reader
        .consumer
        .group_metadata()
        .context("the replay group's metadata")?;
    loop {
        let chunk = reader.next_chunk(size, true)?;
        let done = reader.done();
        if chunk.is_empty() && plan.examined == 0 {
            break; // nothing to examine: nothing to move
        }
        // The group's position after this chunk: past its last dead letter of each partition,
        // and, once every partition is read, the end offsets read at start (past transaction
        // markers).
        let offsets = if done {
            reader.ends.clone()
        } else {
            let mut last = BTreeMap::new();
            for l in &chunk {
                last.insert(l.partition, l.offset + 1);
            }
            let mut tpl = TopicPartitionList::new();
            for (p, o) in last {
                tpl.add_partition_offset(dlq_topic, p, Offset::Offset(o))?;
            }
            tpl
        };
        let replayed = plan.replayed;
        let in_chunk = plan.examine(&chunk, &args.filter);
        transaction(&producer, source_topic, &in_chunk, &offsets, &metadata).map_err(|e| {
            e.context(format!(
                "after {replayed} records replayed in earlier transactions; run `dlq replay` \
                 without --execute to see what is left"
            ))
        })?;
        if done {
            break;
        }
    }
    let mut out = plan.render(&group, dlq_topic);
    writeln!(
        out,
        "replayed {} records; replay group {group} is at the end of {dlq_topic}",
        plan.replayed
    )?;
    Ok(out)
}

/// What a replay does with the dead letters it examines, counted chunk by chunk.
#[derive(Default)]
struct Plan {
    examined: usize,
    replayed: usize,
    /// Replayed, by reason.
    by_reason: BTreeMap<String, usize>,
    passed_over: usize,
    /// The same original dead-lettered twice (the sink retried a batch, or was stopped between
    /// the dead-letter produce and its commit): replayed once.
    duplicates: usize,
    trimmed: usize,
    no_value: usize,
    /// The originals seen: (topic, by its index in `topics`; partition; offset), compact so that
    /// a backlog of millions fits.
    seen: std::collections::HashSet<(u32, Option<i32>, i64)>,
    topics: Vec<Option<String>>,
}

impl Plan {
    /// Counts `chunk` in, and returns its dead letters to replay.
    fn examine<'a>(&mut self, chunk: &'a [DeadLetter], filter: &Filter) -> Vec<&'a DeadLetter> {
        let mut replay = Vec::new();
        for l in chunk {
            self.examined += 1;
            if !l.chosen(filter) {
                self.passed_over += 1;
            } else if l.trimmed {
                self.trimmed += 1;
            } else if !l.has_value {
                self.no_value += 1;
            } else if l.original_offset.is_some_and(|o| !self.first_time(l, o)) {
                self.duplicates += 1;
            } else {
                self.replayed += 1;
                *self.by_reason.entry(l.reason.clone()).or_default() += 1;
                replay.push(l);
            }
        }
        replay
    }

    /// Whether the original of `l` (at `offset`) is seen for the first time.
    fn first_time(&mut self, l: &DeadLetter, offset: i64) -> bool {
        let topic = match self.topics.iter().position(|t| *t == l.topic) {
            Some(i) => i,
            None => {
                self.topics.push(l.topic.clone());
                self.topics.len() - 1
            }
        };
        self.seen
            .insert((topic as u32, l.original_partition, offset))
    }

    fn render(&self, group: &str, dlq_topic: &str) -> String {
        let mut out = format!(
            "{} dead letters not yet examined by replay group {group} in {dlq_topic}\n",
            self.examined
        );
        for (reason, n) in &self.by_reason {
            let _ = writeln!(out, "  replay {n:>6}  {reason}");
        }
        let lines = [
            (
                self.passed_over,
                "passed over",
                "not chosen by --reason/--since/--until",
            ),
            (
                self.duplicates,
                "duplicates",
                "the same original dead-lettered again: replayed once",
            ),
            (
                self.trimmed,
                "cannot replay",
                "key or value too large to be copied: read the original at the partition and \
                 offset its headers name",
            ),
            (self.no_value, "no value", "a tombstone: nothing to replay"),
        ];
        for (n, what, why) in lines {
            let _ = writeln!(out, "  {what} {n:>6}  ({why})");
        }
        out
    }
}

/// One transaction: the records produced to the topic they came from (`__connect.errors.topic`,
/// else the sink's topic), and the replay group's offsets. A failure before the commit aborts
/// it; a commit whose outcome is unknown is retried, and reported as unknown if it stays so.
fn transaction(
    producer: &BaseProducer,
    source_topic: &str,
    letters: &[&DeadLetter],
    offsets: &TopicPartitionList,
    metadata: &rdkafka::consumer::ConsumerGroupMetadata,
) -> anyhow::Result<()> {
    producer.begin_transaction()?;
    let sent = (|| -> anyhow::Result<()> {
        for l in letters {
            let topic = l.topic.as_deref().unwrap_or(source_topic);
            let mut record = BaseRecord::<[u8], [u8]>::to(topic);
            if let Some(k) = &l.key_bytes {
                record = record.key(k);
            }
            if let Some(v) = &l.value {
                record = record.payload(v);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, r))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        producer.poll(Duration::from_millis(100));
                        record = r;
                    }
                    Err((e, _)) => return Err(e).context("producing a replayed record"),
                }
            }
        }
        producer.send_offsets_to_transaction(offsets, metadata, TIMEOUT)?;
        Ok(())
    })();
    if let Err(e) = sent {
        let _ = producer.abort_transaction(TIMEOUT);
        return Err(e.context("this transaction was rolled back: its records not replayed"));
    }
    let mut committed = producer.commit_transaction(Duration::from_secs(60));
    for _ in 0..3 {
        match &committed {
            Err(rdkafka::error::KafkaError::Transaction(e)) if e.is_retriable() => {
                committed = producer.commit_transaction(Duration::from_secs(60));
            }
            _ => break,
        }
    }
    match committed {
        Ok(()) => Ok(()),
        Err(rdkafka::error::KafkaError::Transaction(e)) if e.txn_requires_abort() => {
            let _ = producer.abort_transaction(TIMEOUT);
            bail!("the broker refused the commit ({e}): this transaction was rolled back")
        }
        Err(e) => bail!("committing the replay failed ({e}): whether it landed is unknown"),
    }
}
