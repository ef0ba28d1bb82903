//! Sink benchmark on the local stack (`make bench`): prints a table and writes
//! `target/bench/latest.json`.
//!
//! 1. raw limit: the same rows written straight into PostgreSQL with the sink's own bulk method
//!    (one transaction of UNNEST upserts per batch), no Kafka, no Avro;
//! 2. sink drain: the records pre-produced to a 6-partition topic, the real sink binary started
//!    with a fresh group, timed until every offset is committed; peak RSS and CPU seconds of the
//!    sink process from /proc;
//! 3. ratio of the two.
//!
//! `BENCH_RECORDS` (default 1,000,000) and `BENCH_BATCH` (default 5000) set the size. End offsets
//! come from the producer's delivery reports, not from watermarks (tansu's are wrong for batched
//! producers).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use plumbing::testing::{unique, Stack};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::async_impl::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::avro_common::get_supplied_schema;
use schemas::TrendingVideo;
use secrecy::SecretString;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Realistic records: 200 videos per chart, polls every 30 min, 4 regions, texts of hundreds
/// of bytes.
fn records(n: usize) -> Vec<TrendingVideo> {
    let regions = ["FR", "US", "JP", "DE"];
    (0..n)
        .map(|i| {
            let poll = i / 800;
            let region = regions[(i / 200) % 4];
            let rank = (i % 200) as i32 + 1;
            let at = Utc
                .timestamp_opt(1_764_000_000 + poll as i64 * 1800, 0)
                .unwrap();
            let mut v = schemas::sample(
                &format!("{region}{:09}", (i % 200) + poll % 50 * 7),
                region,
                rank,
                at,
            );
            v.view_count = Some(1_000_000 + i as i64);
            v
        })
        .collect()
}

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
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    (hwm_kb * 1024, ticks / 100.0)
}

/// Reads the whole topic with a fresh group and the sink's fetch settings, doing nothing with
/// the records: records/s.
async fn broker_read_limit(stack: &Stack, topic: &str, n: usize) -> anyhow::Result<f64> {
    use rdkafka::consumer::StreamConsumer;
    let group = unique("bench-read-");
    let mut settings = vec![
        ("group.id", group.as_str()),
        ("auto.offset.reset", "earliest"),
    ];
    settings.extend(sink_connector::consume::FETCH_SETTINGS);

    let consumer: StreamConsumer = stack.kafka_config(&settings).create()?;
    consumer.subscribe(&[topic])?;
    let started = Instant::now();
    for _ in 0..n {
        consumer.recv().await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_usize("BENCH_RECORDS", 1_000_000);
    let batch = env_usize("BENCH_BATCH", 5000);
    let stack = Stack::from_env()?;
    let data = records(n);
    eprintln!("bench: {n} records, batch {batch}");

    // 1. Raw limit.
    let raw_db = stack.create_database().await?;
    let writer = sink_connector::write::Writer::new(&SecretString::from(raw_db.url.clone()), 1)?;
    let mut client = writer.client().await?;
    sink_connector::migrate::run(&mut client).await?;
    drop(client);
    let started = Instant::now();
    for chunk in data.chunks(batch) {
        writer.write(&sink_connector::batch::dedup(chunk)).await?;
    }
    let raw_secs = started.elapsed().as_secs_f64();
    let raw_rps = n as f64 / raw_secs;
    eprintln!("bench: raw limit {raw_rps:.0} rows/s");

    // 2. Pre-produce, then drain with the real sink.
    let topic = unique("bench-");
    stack.create_named_topic(&topic, 6, HashMap::new()).await?;
    let id = post_schema(
        &SrSettings::new(stack.registry_url.clone()),
        format!("{topic}-value"),
        get_supplied_schema(schemas::schema()),
    )
    .await?
    .id;
    let producer: FutureProducer = stack
        .kafka_config(&[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "20"),
        ])
        .create()?;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for chunk in data.chunks(10_000) {
        let encoded: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|v| {
                let mut bytes = vec![0u8];
                bytes.extend_from_slice(&id.to_be_bytes());
                bytes.extend(apache_avro::to_avro_datum(schemas::schema(), v.to_avro()).unwrap());
                (v.video_id.clone(), bytes)
            })
            .collect();
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
    eprintln!("bench: produced {n} records to {topic}");

    // What the broker can deliver to one consumer doing nothing with the records.
    let read_rps = broker_read_limit(&stack, &topic, n).await?;
    eprintln!("bench: broker read limit {read_rps:.0} records/s");
    let db = stack.create_database().await?;
    let group = unique("bench-");
    let exe = std::env::current_exe()?;
    let sink_bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("sink-connector");
    let started = Instant::now();
    let mut sink = std::process::Command::new(&sink_bin)
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_TOPIC", &topic)
        .env("KAFKA_GROUP_ID", &group)
        .env("KAFKA_BOOTSTRAP_SERVERS", &stack.kafka_bootstrap)
        .env("SCHEMA_REGISTRY_URL", &stack.registry_url)
        .env("SINK_BATCH_MAX_RECORDS", batch.to_string())
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env(
            "LOG_LEVEL",
            std::env::var("BENCH_SINK_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()?;
    let pid = sink.id();
    let reader: BaseConsumer = stack.kafka_config(&[("group.id", &group)]).create()?;
    let (mut peak_rss, mut cpu) = (0, 0.0);
    loop {
        let (rss, c) = rss_and_cpu(pid);
        peak_rss = peak_rss.max(rss);
        cpu = if c > 0.0 { c } else { cpu };
        let mut ask = TopicPartitionList::new();
        for p in ends.keys() {
            ask.add_partition(&topic, *p);
        }
        let list = reader.committed_offsets(ask, Duration::from_secs(10))?;
        let done = ends.iter().all(|(p, end)| {
            list.find_partition(&topic, *p).map(|e| e.offset()) == Some(Offset::Offset(*end))
        });
        drop(list);
        if done {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "the sink did not drain in 15 min"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_secs = started.elapsed().as_secs_f64();
    let _ = sink.kill();
    let _ = sink.wait();
    let sink_rps = n as f64 / drain_secs;
    let ratio = sink_rps / raw_rps;

    println!("| figure | value |");
    println!("| --- | --- |");
    println!("| records | {n} |");
    println!("| batch size | {batch} |");
    println!("| raw limit (rows/s) | {raw_rps:.0} |");
    println!("| broker read limit (records/s) | {read_rps:.0} |");
    println!("| sink drain (rows/s) | {sink_rps:.0} |");
    println!("| sink / raw | {:.0}% |", ratio * 100.0);
    println!(
        "| sink peak RSS (MiB) | {:.1} |",
        peak_rss as f64 / 1048576.0
    );
    println!("| sink CPU (s) | {cpu:.1} |");
    let json = serde_json::json!({
        "records": n, "batch": batch,
        "raw_rows_per_sec": raw_rps, "broker_read_records_per_sec": read_rps, "sink_rows_per_sec": sink_rps, "sink_to_raw_ratio": ratio,
        "sink_peak_rss_bytes": peak_rss, "sink_cpu_seconds": cpu,
        "measured_at": Utc::now().to_rfc3339(),
    });
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/latest.json",
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}
