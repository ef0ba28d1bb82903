//! The sink connector as a user runs it: the real binary against the real broker, schema
//! registry and PostgreSQL of the local stack. Every test has its own topic, group and database.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use plumbing::testing::{unique, Stack, TestDatabase};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::avro_common::get_supplied_schema;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use schemas::TrendingVideo;
use tokio::process::{Child, Command};
use tokio_postgres::NoTls;

const WAIT: Duration = Duration::from_secs(60);

/// A record as bytes: key and value, either possibly absent.
type Raw = (Option<Vec<u8>>, Option<Vec<u8>>);

struct Sink {
    child: Child,
    log: PathBuf,
}

impl Sink {
    fn spawn(
        stack: &Stack,
        db: &TestDatabase,
        topic: &str,
        group: &str,
        extra: &[(&str, &str)],
    ) -> Sink {
        let log = std::env::temp_dir().join(format!("{}.log", unique("sink-")));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sink-connector"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &db.url)
            .env("KAFKA_TOPIC", topic)
            .env("KAFKA_GROUP_ID", group)
            .env("KAFKA_BOOTSTRAP_SERVERS", &stack.kafka_bootstrap)
            .env("SCHEMA_REGISTRY_URL", &stack.registry_url)
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("SINK_BATCH_MAX_WAIT", "100ms")
            .env("RETRY_INITIAL_BACKOFF", "100ms")
            .env("RETRY_MAX_BACKOFF", "1s")
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info,sink_connector=debug");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Sink { child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("running").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
    }

    async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => s.unwrap(),
            Err(_) => panic!(
                "the sink did not exit within {timeout:?}; logs:\n{}",
                self.logs()
            ),
        }
    }

    async fn stop(mut self) {
        self.sigterm();
        let status = self.wait(Duration::from_secs(30)).await;
        assert!(status.success(), "sink exit {status:?}:\n{}", self.logs());
        assert!(
            !self.logs().contains("password"),
            "a secret reached the logs"
        );
    }
}

fn at(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(s, 0).unwrap()
}

/// A producer whose every record is its own batch: tansu's high watermark is only right for
/// single-record batches (README, known differences), and the tests compare against it.
fn producer(stack: &Stack) -> FutureProducer {
    stack
        .kafka_config(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("batch.num.messages", "1"),
        ])
        .create()
        .unwrap()
}

/// Produces raw key/value pairs; returns per partition the offset after the last record.
async fn produce_raw(p: &FutureProducer, topic: &str, records: Vec<Raw>) -> HashMap<i32, i64> {
    let mut ends = HashMap::new();
    for (key, value) in records {
        let mut r = FutureRecord::<[u8], [u8]>::to(topic);
        if let Some(k) = &key {
            r = r.key(k);
        }
        if let Some(v) = &value {
            r = r.payload(v);
        }
        let d = p
            .send(r, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        let end = ends.entry(d.partition).or_insert(0);
        *end = (*end).max(d.offset + 1);
    }
    ends
}

async fn encode(stack: &Stack, topic: &str, videos: &[TrendingVideo]) -> Vec<Raw> {
    let encoder = AvroEncoder::new(SrSettings::new(stack.registry_url.clone()));
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic.to_string(),
        false,
        get_supplied_schema(schemas::schema()),
    );
    let mut out = Vec::new();
    for v in videos {
        let bytes = encoder.encode_value(v.to_avro(), &strategy).await.unwrap();
        out.push((Some(v.video_id.as_bytes().to_vec()), Some(bytes)));
    }
    out
}

/// The wire format written by hand, as any Confluent producer would: magic 0, the schema id in
/// 4 big-endian bytes, the Avro binary body.
async fn encode_by_hand(stack: &Stack, topic: &str, videos: &[TrendingVideo]) -> Vec<Raw> {
    let id = post_schema(
        &SrSettings::new(stack.registry_url.clone()),
        format!("{topic}-value"),
        get_supplied_schema(schemas::schema()),
    )
    .await
    .unwrap()
    .id;
    videos
        .iter()
        .map(|v| {
            let mut bytes = vec![0u8];
            bytes.extend_from_slice(&id.to_be_bytes());
            bytes.extend(apache_avro::to_avro_datum(schemas::schema(), v.to_avro()).unwrap());
            (Some(v.video_id.as_bytes().to_vec()), Some(bytes))
        })
        .collect()
}

/// Committed offsets of `group` on `topic`, by partition.
fn committed(stack: &Stack, topic: &str, group: &str, partitions: i32) -> HashMap<i32, i64> {
    let c: BaseConsumer = stack.kafka_config(&[("group.id", group)]).create().unwrap();
    let mut ask = TopicPartitionList::new();
    for p in 0..partitions {
        ask.add_partition(topic, p);
    }
    let list = c.committed_offsets(ask, Duration::from_secs(10)).unwrap();
    let out = list
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    drop(list);
    out
}

async fn wait_committed(
    stack: &Stack,
    topic: &str,
    group: &str,
    partitions: i32,
    ends: &HashMap<i32, i64>,
    sink: &Sink,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c = committed(stack, topic, group, partitions);
        if ends.iter().all(|(p, end)| c.get(p) == Some(end)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed {c:?} never reached the end offsets {ends:?}; logs:\n{}",
            sink.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn connect(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// Both tables as text, in key order: what "the same tables" means.
async fn dump(db: &TestDatabase) -> (Vec<String>, Vec<String>) {
    let c = connect(db).await;
    let rows = |q: &'static str| {
        let c = &c;
        async move {
            c.query(q, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    (
        rows("SELECT v::text FROM videos v ORDER BY video_id").await,
        rows("SELECT s::text FROM video_snapshots s ORDER BY region_code, fetched_at, video_id")
            .await,
    )
}

fn chart(region: &str, n: usize, fetched_at: DateTime<Utc>, views: i64) -> Vec<TrendingVideo> {
    (0..n)
        .map(|i| {
            let mut v =
                schemas::sample(&format!("{region}{i:09}"), region, i as i32 + 1, fetched_at);
            v.view_count = Some(views + i as i64);
            if i % 3 == 0 {
                v.like_count = None;
                v.tags = None;
            }
            v
        })
        .collect()
}

#[tokio::test]
async fn records_become_rows_and_offsets_are_committed_to_the_end() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(3).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let p = producer(&stack);
    let mut records = encode(&stack, &topic, &chart("FR", 100, at(1_000), 10)).await;
    records.extend(encode(&stack, &topic, &chart("FR", 100, at(2_800), 20)).await);
    records.extend(encode_by_hand(&stack, &topic, &chart("US", 50, at(2_000), 30)).await);
    let ends = produce_raw(&p, &topic, records).await;

    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    wait_committed(&stack, &topic, &group, 3, &ends, &sink).await;
    let c = connect(&db).await;
    let count = |q: &'static str| {
        let c = &c;
        async move { c.query_one(q, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM videos").await, 150);
    assert_eq!(count("SELECT count(*) FROM video_snapshots").await, 250);
    let row = c
        .query_one(
            "SELECT view_count, like_count, tags, first_seen_at, last_fetched_at, title \
             FROM videos WHERE video_id = 'FR000000001'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<i64>>(0),
        Some(21),
        "the newer poll's count"
    );
    assert_eq!(row.get::<_, Option<i64>>(1), Some(45_678));
    assert_eq!(
        row.get::<_, Option<Vec<String>>>(2),
        Some(vec!["musique".into(), "clip officiel".into()])
    );
    assert_eq!(row.get::<_, DateTime<Utc>>(3), at(1_000));
    assert_eq!(row.get::<_, DateTime<Utc>>(4), at(2_800));
    assert_eq!(
        row.get::<_, Option<String>>(5).unwrap(),
        "Vidéo n°2 — l'été 🎉"
    );
    let nulls = c
        .query_one(
            "SELECT like_count, tags FROM videos WHERE video_id = 'US000000000'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        nulls.get::<_, Option<i64>>(0),
        None,
        "absent is NULL, not 0"
    );
    assert_eq!(nulls.get::<_, Option<Vec<String>>>(1), None);
    sink.stop().await;
}

#[tokio::test]
async fn the_newest_record_wins_and_an_older_one_only_adds_history() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let p = producer(&stack);
    let mut newer = schemas::sample("vid", "FR", 1, at(2_000));
    newer.view_count = Some(200);
    let mut older = schemas::sample("vid", "FR", 5, at(1_000));
    older.view_count = Some(100);
    let mut newest = schemas::sample("vid", "FR", 2, at(3_000));
    newest.view_count = Some(300);

    // Same key twice in one batch (newest last and first), then an older record alone.
    let first = encode(
        &stack,
        &topic,
        &[newer.clone(), newest.clone(), newer.clone()],
    )
    .await;
    let ends = produce_raw(&p, &topic, first).await;
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SINK_BATCH_MAX_WAIT", "2s")],
    );
    wait_committed(&stack, &topic, &group, 1, &ends, &sink).await;
    let ends = produce_raw(&p, &topic, encode(&stack, &topic, &[older]).await).await;
    wait_committed(&stack, &topic, &group, 1, &ends, &sink).await;

    let c = connect(&db).await;
    let row = c
        .query_one(
            "SELECT view_count, rank, first_seen_at, last_fetched_at FROM videos",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<i64>>(0), Some(300));
    assert_eq!(row.get::<_, i32>(1), 2);
    assert_eq!(
        row.get::<_, DateTime<Utc>>(2),
        at(1_000),
        "the older record lowers first_seen_at"
    );
    assert_eq!(row.get::<_, DateTime<Utc>>(3), at(3_000));
    let history: Vec<i64> = c
        .query(
            "SELECT view_count FROM video_snapshots ORDER BY fetched_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(history, vec![100, 200, 300]);
    assert!(sink.logs().contains("Batch written"));
    sink.stop().await;
}

#[tokio::test]
async fn replaying_the_whole_topic_leaves_the_tables_identical() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(2).await.unwrap();
    let db = stack.create_database().await.unwrap();
    let p = producer(&stack);
    let mut records = encode(&stack, &topic, &chart("FR", 60, at(5_000), 1)).await;
    records.extend(encode(&stack, &topic, &chart("FR", 60, at(1_000), 9)).await);
    records.extend(encode(&stack, &topic, &chart("JP", 40, at(5_000), 5)).await);
    let ends = produce_raw(&p, &topic, records).await;

    let group = unique("sink-");
    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    wait_committed(&stack, &topic, &group, 2, &ends, &sink).await;
    sink.stop().await;
    let before = dump(&db).await;
    assert_eq!(before.0.len(), 100);

    // A new group starts from the earliest offset: the whole topic again, in batches of 7.
    let replay = unique("replay-");
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &replay,
        &[("SINK_BATCH_MAX_RECORDS", "7")],
    );
    wait_committed(&stack, &topic, &replay, 2, &ends, &sink).await;
    sink.stop().await;
    assert_eq!(dump(&db).await, before);
}

fn header(m: &OwnedMessage, name: &str) -> String {
    let h = m.headers().expect("headers");
    let value = h
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .unwrap_or_else(|| panic!("no header {name}"));
    String::from_utf8(value.to_vec()).unwrap()
}

fn read_all(stack: &Stack, topic: &str) -> Vec<OwnedMessage> {
    let c: BaseConsumer = stack
        .kafka_config(&[("group.id", &unique("reader-"))])
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    drop(tpl);
    let mut out = Vec::new();
    let mut quiet = std::time::Instant::now();
    while quiet.elapsed() < Duration::from_secs(2) {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            out.push(m.unwrap().detach());
            quiet = std::time::Instant::now();
        }
    }
    out
}

#[tokio::test]
async fn poison_records_go_to_the_dlq_with_connect_headers_and_the_rest_is_written() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let p = producer(&stack);
    let good = chart("FR", 10, at(1_000), 1);
    let mut encoded = encode(&stack, &topic, &good).await;
    let valid = encoded[0].1.clone().unwrap();
    let mut wrong_magic = valid.clone();
    wrong_magic[0] = 1;
    let mut unknown_id = valid.clone();
    unknown_id[1..5].copy_from_slice(&999_999u32.to_be_bytes());
    let truncated = valid[..valid.len() / 2].to_vec();
    let mut negative = good[1].clone();
    negative.view_count = Some(-5);
    let negative = encode(&stack, &topic, &[negative]).await.remove(0);
    let poison = [
        (Some(b"garbage".to_vec()), Some(b"\xff\x00garbage".to_vec())),
        (Some(b"tombstone".to_vec()), None),
        (Some(b"magic".to_vec()), Some(wrong_magic)),
        (Some(b"unknown".to_vec()), Some(unknown_id)),
        (Some(b"truncated".to_vec()), Some(truncated)),
        (Some(b"FR000000001".to_vec()), negative.1),
        (None, Some(valid.clone())),
    ];
    // Poison interleaved with the valid records.
    let mut records = Vec::new();
    for bad in &poison {
        records.push(encoded.remove(0));
        records.push(bad.clone());
    }
    records.extend(encoded);
    let ends = produce_raw(&p, &topic, records).await;

    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    wait_committed(&stack, &topic, &group, 1, &ends, &sink).await;
    let c = connect(&db).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM videos", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10, "every valid record around the poison is written");

    let dlq = read_all(&stack, &format!("{topic}.dlq"));
    assert_eq!(dlq.len(), poison.len(), "{}", sink.logs());
    let reasons: Vec<String> = dlq
        .iter()
        .map(|m| header(m, "__connect.errors.exception.class.name"))
        .collect();
    for expected in [
        "not_wire_format",
        "tombstone",
        "unknown_schema",
        "avro",
        "invalid",
        "missing_key",
    ] {
        assert!(
            reasons.iter().any(|r| r.ends_with(expected)),
            "{expected} not in {reasons:?}"
        );
    }
    for m in &dlq {
        assert_eq!(header(m, "__connect.errors.topic"), topic);
        assert_eq!(header(m, "__connect.errors.partition"), "0");
        let offset: i64 = header(m, "__connect.errors.offset").parse().unwrap();
        assert!(offset % 2 == 1, "poison sits at odd offsets, got {offset}");
        assert_eq!(header(m, "__connect.errors.stage"), "VALUE_CONVERTER");
        assert!(!header(m, "__connect.errors.exception.message").is_empty());
    }
    let garbage = dlq.iter().find(|m| m.key() == Some(b"garbage")).unwrap();
    assert_eq!(
        garbage.payload(),
        Some(&b"\xff\x00garbage"[..]),
        "original bytes kept"
    );
    sink.stop().await;
}

#[tokio::test]
async fn with_errors_tolerance_none_a_poison_record_stops_the_sink_and_nothing_passes_it() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let p = producer(&stack);
    let mut records = encode(&stack, &topic, &chart("FR", 3, at(1_000), 1)).await;
    records.insert(1, (Some(b"bad".to_vec()), Some(b"not avro".to_vec())));
    produce_raw(&p, &topic, records).await;
    let mut sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SINK_ERRORS_TOLERANCE", "none")],
    );
    let status = sink.wait(WAIT).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        sink.logs().contains("SINK_ERRORS_TOLERANCE=none"),
        "{}",
        sink.logs()
    );
    let c = committed(&stack, &topic, &group, 1);
    assert!(
        c.get(&0).is_none_or(|o| *o <= 1),
        "committed past the poison: {c:?}"
    );
}
