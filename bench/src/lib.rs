//! What both benchmarks share: the records, producing them as the source does, timing a drain
//! to the last committed offset while sampling the processes' RSS and CPU, and checking the
//! rows a drain left against the records produced.
//!
//! - `bench` (`make bench`): both connectors against the raw PostgreSQL limit;
//! - `bench-peers` (`make bench-peers`): the sink against Kafka Connect with Debezium's JDBC sink.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chrono::{TimeZone, Utc};
use futures::SinkExt;
use plumbing::testing::{unique, Stack, TestDatabase};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::async_impl::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::avro_common::get_supplied_schema;
use schemas::TrendingVideo;
use secrecy::SecretString;
use sink_connector::history::{Month, Partitions};
use sink_connector::write::Writer;

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Realistic records: 200 videos per chart, polls every 30 min, 4 regions, texts of hundreds
/// of bytes. Each (region, poll, video) once, so every record is one snapshot row.
/// `fetched_at` of the first poll of [`records`] (2025-11-24), in seconds.
const FIRST_FETCHED_AT: i64 = 1_764_000_000;

pub fn records(n: usize) -> Vec<TrendingVideo> {
    let regions = ["FR", "US", "JP", "DE"];
    (0..n)
        .map(|i| {
            let poll = i / 800;
            let region = regions[(i / 200) % 4];
            let rank = (i % 200) as i32 + 1;
            let at = Utc
                .timestamp_opt(FIRST_FETCHED_AT + poll as i64 * 1800, 0)
                .unwrap();
            let mut v = schemas::sample(
                &format!("{region}{:09}", (i % 200) + poll % 50 * 7),
                region,
                rank,
                at,
            );
            v.view_count = Some(1_000_000 + i as i64);
            // Some counts hidden, as channels do: the checks must see nulls survive.
            if i % 7 == 0 {
                v.like_count = None;
            }
            v.chart_size = Some(200);
            v
        })
        .collect()
}

/// The Confluent wire format of `v` with schema `id`: key and value bytes.
pub fn encode(id: u32, v: &TrendingVideo) -> (String, Vec<u8>) {
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend(apache_avro::to_avro_datum(schemas::schema(), v.to_avro()).expect("encodes"));
    (v.video_id.clone(), bytes)
}

/// Peak RSS (bytes) and CPU seconds (user + system) of a live process.
fn rss_and_cpu(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (hwm_kb * 1024, (ticks(11) + ticks(12)) / 100.0)
}

/// Peak RSS and CPU of a set of processes, sampled while they run.
#[derive(Default)]
pub struct Usage {
    peak_rss: Vec<u64>,
    cpu: Vec<f64>,
}

impl Usage {
    pub fn sample(&mut self, children: &[Child]) {
        self.peak_rss.resize(children.len(), 0);
        self.cpu.resize(children.len(), 0.0);
        for (i, c) in children.iter().enumerate() {
            let (rss, cpu) = rss_and_cpu(c.id());
            self.peak_rss[i] = self.peak_rss[i].max(rss);
            if cpu > 0.0 {
                self.cpu[i] = cpu;
            }
        }
    }

    /// The largest peak of one process: what one instance needs.
    pub fn max_rss(&self) -> u64 {
        self.peak_rss.iter().copied().max().unwrap_or(0)
    }

    pub fn total_cpu(&self) -> f64 {
        self.cpu.iter().sum()
    }
}

pub fn stop(children: Vec<Child>) {
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A binary of the workspace built in release mode (`make bench` builds them).
pub fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    // target/release/bench -> target/release/<name>
    exe.parent().unwrap().join(name)
}

pub fn ensure_release_bins(bins: &[&str]) -> anyhow::Result<()> {
    for bin in bins {
        ensure!(
            release_bin(bin).exists(),
            "target/release/{bin} is missing: run the benchmark through make, which builds it"
        );
    }
    Ok(())
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench sits in the workspace")
        .to_path_buf()
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Starts one sink binary on `topic` with `group`, writing into `db_url`.
pub fn spawn_sink(
    stack: &Stack,
    db_url: &str,
    topic: &str,
    group: &str,
    batch: usize,
    kafka_properties: &str,
) -> anyhow::Result<Child> {
    let mut command = Command::new(release_bin("sink-connector"));
    if !kafka_properties.is_empty() {
        command.env("KAFKA_PROPERTIES", kafka_properties);
    }
    command
        .env("DATABASE_URL", db_url)
        .env("KAFKA_TOPIC", topic)
        .env("KAFKA_GROUP_ID", group)
        .env("KAFKA_BOOTSTRAP_SERVERS", &stack.kafka_bootstrap)
        .env("SCHEMA_REGISTRY_URL", &stack.registry_url)
        .env("SINK_BATCH_MAX_RECORDS", batch.to_string())
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env(
            "LOG_LEVEL",
            std::env::var("BENCH_SINK_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .context("starting target/release/sink-connector")
}

/// Registers the record schema for `topic`'s values; returns its id.
pub async fn register(stack: &Stack, topic: &str) -> anyhow::Result<u32> {
    Ok(post_schema(
        &SrSettings::new(stack.registry_url.clone()),
        format!("{topic}-value"),
        get_supplied_schema(schemas::schema()),
    )
    .await?
    .id)
}

/// A topic filled by [`produce`]: its name and end offset per partition.
pub struct Filled {
    pub topic: String,
    pub ends: HashMap<i32, i64>,
}

impl Filled {
    pub fn records(&self) -> i64 {
        self.ends.values().sum()
    }
}

/// Produces `data` to a new 6-partition topic, batched as the source's producer writes
/// (`linger.ms` 20), keyed by video id, values under our registered schema. End offsets come
/// from the producer's delivery reports.
pub async fn produce(stack: &Stack, data: &[TrendingVideo]) -> anyhow::Result<Filled> {
    produce_to(stack, data, 6).await
}

/// As [`produce`], to a new topic of `partitions` partitions.
pub async fn produce_to(
    stack: &Stack,
    data: &[TrendingVideo],
    partitions: i32,
) -> anyhow::Result<Filled> {
    let topic = unique("bench-");
    stack
        .create_named_topic(&topic, partitions, HashMap::new())
        .await?;
    let id = register(stack, &topic).await?;
    let producer: FutureProducer = stack
        .kafka_config(&[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "20"),
        ])
        .create()?;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for chunk in data.chunks(10_000) {
        let encoded: Vec<(String, Vec<u8>)> = chunk.iter().map(|v| encode(id, v)).collect();
        let sends = encoded.iter().map(|(k, b)| {
            producer.send(
                FutureRecord::to(&topic).key(k).payload(b),
                Duration::from_secs(60),
            )
        });
        for d in futures::future::join_all(sends).await {
            let d = d.map_err(|(e, _)| e)?;
            let end = ends.entry(d.partition).or_insert(0);
            *end = (*end).max(d.offset + 1);
        }
    }
    Ok(Filled { topic, ends })
}

/// A database client for `url`.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Count and order-independent checksum of a table over every column of every row (each row's
/// text, hashed to 64 bits, summed): two tables of the same definition with the same figures
/// hold the same rows, up to a hash collision. Read in sessions with the same settings (time
/// zone), as the benchmark's are.
fn checksum_sql(table: &str) -> String {
    format!("SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {table} t")
}

/// A table's figures (see [`checksum_sql`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub rows: i64,
    pub sum: String,
}

pub async fn checksum(client: &tokio_postgres::Client, table: &str) -> anyhow::Result<Checksum> {
    let row = client.query_one(&checksum_sql(table), &[]).await?;
    Ok(Checksum {
        rows: row.get(0),
        sum: row.get(1),
    })
}

/// What a drain of the records must leave.
#[derive(Debug, Clone)]
pub struct Expected {
    pub snapshots: Checksum,
    /// Only the sink keeps `videos`.
    pub videos: Checksum,
}

/// The tables of a drain, checked against `expected`; `videos` only when `with_videos`.
pub async fn check_tables(
    db_url: &str,
    expected: &Expected,
    with_videos: bool,
    label: &str,
) -> anyhow::Result<()> {
    let client = connect(db_url).await?;
    let mut tables = vec![("video_snapshots", &expected.snapshots)];
    if with_videos {
        tables.push(("videos", &expected.videos));
    }
    for (table, want) in tables {
        let got = checksum(&client, table).await?;
        ensure!(
            &got == want,
            "{label}: {table} holds {} rows (checksum {}), the records produced make {} (checksum {})",
            got.rows,
            got.sum,
            want.rows,
            want.sum
        );
    }
    Ok(())
}

/// One field in `COPY`'s text format: `\N` for null, backslash, tab and line ends escaped.
fn copy_text(field: Option<String>) -> String {
    match field {
        None => "\\N".into(),
        Some(v) => v
            .replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
            .replace('\r', "\\r"),
    }
}

/// The tables a drain of `data` must leave, made without any of the sink's code: the records
/// copied as they are (text `COPY`) into a fresh database with the sink's schema, then
/// `video_snapshots` and `videos` filled from them by plain SQL written here from the README's
/// rules (one snapshot per record; per video, the newest record by `fetched_at` then region
/// code, and the earliest `fetched_at` as `first_seen_at`), and summed.
pub async fn expected_tables(stack: &Stack, data: &[TrendingVideo]) -> anyhow::Result<Expected> {
    let keys: HashSet<_> = data
        .iter()
        .map(|v| (&v.region_code, v.fetched_at, &v.video_id))
        .collect();
    ensure!(
        keys.len() == data.len(),
        "the benchmark's records must be one snapshot each"
    );
    let db = fresh_database(stack).await?;
    let client = connect(&db.url).await?;
    client
        .batch_execute(
            "CREATE TABLE records (video_id text, region_code text, fetched_at timestamptz,
                rank integer, title text, description text, channel_id text, channel_title text,
                category_id text, category_name text, tags jsonb, published_at timestamptz,
                default_language text, default_audio_language text, live_broadcast_content text,
                thumbnail_url text, duration_seconds bigint, definition text, dimension text,
                caption boolean, licensed_content boolean, view_count bigint, like_count bigint,
                comment_count bigint, favorite_count bigint)",
        )
        .await?;
    let sink = client
        .copy_in("COPY records FROM STDIN (FORMAT text)")
        .await?;
    futures::pin_mut!(sink);
    let num = |v: Option<i64>| copy_text(v.map(|n| n.to_string()));
    let at = |v: Option<chrono::DateTime<Utc>>| copy_text(v.map(|t| t.to_rfc3339()));
    let flag = |v: Option<bool>| copy_text(v.map(|b| b.to_string()));
    for chunk in data.chunks(10_000) {
        let mut text = String::new();
        for v in chunk {
            let fields = [
                copy_text(Some(v.video_id.clone())),
                copy_text(Some(v.region_code.clone())),
                at(Some(v.fetched_at)),
                v.rank.to_string(),
                copy_text(v.title.clone()),
                copy_text(v.description.clone()),
                copy_text(v.channel_id.clone()),
                copy_text(v.channel_title.clone()),
                copy_text(v.category_id.clone()),
                copy_text(v.category_name.clone()),
                copy_text(v.tags.as_ref().map(|t| serde_json::json!(t).to_string())),
                at(v.published_at),
                copy_text(v.default_language.clone()),
                copy_text(v.default_audio_language.clone()),
                copy_text(v.live_broadcast_content.clone()),
                copy_text(v.thumbnail_url.clone()),
                num(v.duration_seconds),
                copy_text(v.definition.clone()),
                copy_text(v.dimension.clone()),
                flag(v.caption),
                flag(v.licensed_content),
                num(v.view_count),
                num(v.like_count),
                num(v.comment_count),
                num(v.favorite_count),
            ];
            text.push_str(&fields.join("\t"));
            text.push('\n');
        }
        sink.send(bytes::Bytes::from(text)).await?;
    }
    sink.finish().await?;
    client
        .batch_execute(
            "INSERT INTO video_snapshots (region_code, fetched_at, video_id, rank, view_count,
                like_count, comment_count, favorite_count)
             SELECT region_code, fetched_at, video_id, rank, view_count, like_count,
                comment_count, favorite_count FROM records;
             INSERT INTO videos (video_id, region_code, rank, title, description, channel_id,
                channel_title, category_id, category_name, tags, published_at, default_language,
                default_audio_language, live_broadcast_content, thumbnail_url, duration_seconds,
                definition, dimension, caption, licensed_content, view_count, like_count,
                comment_count, favorite_count, first_seen_at, last_fetched_at)
             SELECT DISTINCT ON (video_id) video_id, region_code, rank, title, description,
                channel_id, channel_title, category_id, category_name,
                CASE WHEN tags IS NULL THEN NULL
                     ELSE ARRAY(SELECT jsonb_array_elements_text(tags)) END, published_at,
                default_language, default_audio_language, live_broadcast_content, thumbnail_url,
                duration_seconds, definition, dimension, caption, licensed_content, view_count,
                like_count, comment_count, favorite_count,
                min(fetched_at) OVER (PARTITION BY video_id), fetched_at
             FROM records ORDER BY video_id, fetched_at DESC, region_code DESC",
        )
        .await?;
    Ok(Expected {
        snapshots: checksum(&client, "video_snapshots").await?,
        videos: checksum(&client, "videos").await?,
    })
}

/// A fresh database with the sink's tables, for one contender.
pub async fn fresh_database(stack: &Stack) -> anyhow::Result<TestDatabase> {
    let db = stack.create_database().await?;
    let writer = Writer::new(
        &SecretString::from(db.url.clone()),
        1,
        Duration::from_secs(60),
    )?;
    let mut client = writer.client().await?;
    sink_connector::migrate::run(&mut client).await?;
    // The history's partitions, from the first record's month to next month: the contenders
    // that write without the sink (the raw methods, the peer, the expected tables) need them,
    // and the sink would create them in its first batches, in its measured time.
    let mut months = vec![Month::of(Utc.timestamp_opt(FIRST_FETCHED_AT, 0).unwrap())];
    let last = Month::of(Utc::now()).next();
    while months[months.len() - 1] < last {
        months.push(months[months.len() - 1].next());
    }
    Partitions::default().ensure(&mut client, months).await?;
    Ok(db)
}

/// Processes killed when dropped: a drain that fails leaves none running.
struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        stop(std::mem::take(&mut self.0));
    }
}

/// One drain of the filled topic by one contender.
pub struct Drain {
    /// From starting the processes to the last offset committed.
    pub secs: f64,
    /// From starting the processes to the first offset committed (start-up, group join).
    pub first_commit_secs: f64,
    /// Records over the whole wall time.
    pub rows_per_sec: f64,
    /// Records committed after the first commit, over the time after it: the pace once running,
    /// start-up left out.
    pub steady_rows_per_sec: f64,
    pub usage: Usage,
}

/// Starts a contender's processes (`start` gets the database and returns them with the consumer
/// group they commit in), times them until every offset of `filled` is committed in that group,
/// stops them, and checks that `video_snapshots` (and `videos` when `with_videos`) equal
/// `expected`: a drain only counts if it wrote everything, exactly.
pub async fn drain(
    stack: &Stack,
    filled: &Filled,
    expected: &Expected,
    with_videos: bool,
    label: &str,
    timeout: Duration,
    start: impl FnOnce(&TestDatabase) -> anyhow::Result<(Vec<Child>, String)>,
) -> anyhow::Result<Drain> {
    let db = fresh_database(stack).await?;
    let started = Instant::now();
    let (children, group) = start(&db)?;
    let mut children = Running(children);
    let reader: BaseConsumer = stack.kafka_config(&[("group.id", &group)]).create()?;
    let mut usage = Usage::default();
    let mut first_commit = None;
    loop {
        usage.sample(&children.0);
        for c in children.0.iter_mut() {
            if let Some(status) = c.try_wait()? {
                anyhow::bail!("{label}: a process exited ({status}) before the drain ended");
            }
        }
        let mut ask = TopicPartitionList::new();
        for p in filled.ends.keys() {
            ask.add_partition(&filled.topic, *p);
        }
        let list = reader.committed_offsets(ask, Duration::from_secs(10))?;
        let committed: Vec<i64> = filled
            .ends
            .keys()
            .map(
                |p| match list.find_partition(&filled.topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                },
            )
            .collect();
        drop(list);
        if first_commit.is_none() && committed.iter().any(|&o| o > 0) {
            first_commit = Some((
                started.elapsed().as_secs_f64(),
                committed.iter().sum::<i64>(),
            ));
        }
        if committed.iter().sum::<i64>() == filled.records() {
            break;
        }
        if started.elapsed() > timeout {
            anyhow::bail!(
                "{label}: not drained in {} s ({} of {} offsets committed)",
                timeout.as_secs(),
                committed.iter().sum::<i64>(),
                filled.records()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    usage.sample(&children.0);
    drop(children);
    check_tables(&db.url, expected, with_videos, label).await?;
    let (first_commit_secs, first_records) = first_commit.unwrap_or((secs, 0));
    let d = Drain {
        secs,
        first_commit_secs,
        rows_per_sec: filled.records() as f64 / secs,
        steady_rows_per_sec: (filled.records() - first_records) as f64
            / (secs - first_commit_secs).max(0.1),
        usage,
    };
    eprintln!(
        "bench: {label}: {:.0} rows/s, {:.0} after the first commit ({:.1} s, first commit at {:.1} s), peak RSS {:.0} MiB, CPU {:.1} s",
        d.rows_per_sec,
        d.steady_rows_per_sec,
        d.secs,
        d.first_commit_secs,
        mib(d.usage.max_rss()),
        d.usage.total_cpu()
    );
    Ok(d)
}

/// How a sink run is set up beyond its batch size.
#[derive(Debug, Clone, Default)]
pub struct SinkRun {
    pub instances: usize,
    /// `KAFKA_PROPERTIES`, if any.
    pub kafka_properties: String,
    /// TLS to PostgreSQL, `sslmode=verify-full` against the stack's CA, instead of plain.
    pub tls: bool,
}

/// The sinks of `run` sharing a fresh group: a contender for [`drain`].
pub fn our_sink(
    stack: &Stack,
    topic: &str,
    batch: usize,
    run: SinkRun,
) -> impl FnOnce(&TestDatabase) -> anyhow::Result<(Vec<Child>, String)> {
    let stack = stack.clone();
    let topic = topic.to_string();
    move |db| {
        let group = unique("bench-");
        let url = match run.tls {
            true => {
                anyhow::ensure!(
                    db.url.contains("sslmode=disable"),
                    "the stack's database URL has no sslmode=disable to replace"
                );
                db.url.replace(
                    "sslmode=disable",
                    &format!("sslmode=verify-full&sslrootcert={}", stack.database_ca),
                )
            }
            false => db.url.clone(),
        };
        let mut sinks = Running(Vec::new());
        for _ in 0..run.instances.max(1) {
            let sink = spawn_sink(&stack, &url, &topic, &group, batch, &run.kafka_properties)?;
            sinks.0.push(sink);
        }
        Ok((std::mem::take(&mut sinks.0), group))
    }
}

/// A benchmark's figures, each declared once: a row of the printed table (its label and its
/// value as shown) and the exact values behind it in the JSON file.
#[derive(Default)]
pub struct Report {
    rows: Vec<(String, String)>,
    json: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// A row of the table, and `values` (JSON key, value) in the file.
    pub fn row(
        &mut self,
        label: impl Into<String>,
        shown: impl Into<String>,
        values: &[(&str, serde_json::Value)],
    ) {
        self.rows.push((label.into(), shown.into()));
        self.value(values);
    }

    /// Values in the file only.
    pub fn value(&mut self, values: &[(&str, serde_json::Value)]) {
        for (key, value) in values {
            self.json.insert(key.to_string(), value.clone());
        }
    }

    /// Prints the table and writes the file (with the time of measure) to `path`.
    pub fn finish(mut self, path: &str) -> anyhow::Result<()> {
        println!("| figure | value |");
        println!("| --- | --- |");
        for (label, shown) in &self.rows {
            println!("| {label} | {shown} |");
        }
        self.json.insert(
            "measured_at".into(),
            serde_json::Value::String(Utc::now().to_rfc3339()),
        );
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&self.json)?)?;
        eprintln!("bench: figures written to {path}");
        Ok(())
    }
}
