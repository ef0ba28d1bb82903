//! Helpers of the sink's integration tests (feature `testing`): run the real binary, produce
//! records, read committed offsets and tables. The stack-wide harness (fresh topics, groups and
//! databases, processes, readers) is `plumbing::testing`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use plumbing::testing::{workspace_binary, Process, Stack, TestDatabase};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::avro_common::get_supplied_schema;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use schemas::TrendingVideo;
use tokio_postgres::NoTls;

pub const WAIT: Duration = Duration::from_secs(60);

/// A record as bytes: key and value, either possibly absent.
pub type Raw = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A sink connector run by a test (see `plumbing::testing::Process` for logs, signals, wait
/// and its HTTP address), its database password known so that no log line may carry it.
pub struct Sink {
    process: Process,
    /// The database password inside DATABASE_URL, which must reach no log line.
    secret: String,
}

impl std::ops::Deref for Sink {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Sink {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Sink {
    pub fn spawn(
        stack: &Stack,
        db: &TestDatabase,
        topic: &str,
        group: &str,
        extra: &[(&str, &str)],
    ) -> Sink {
        let mut env = vec![
            ("DATABASE_URL", db.url.as_str()),
            ("KAFKA_TOPIC", topic),
            ("KAFKA_GROUP_ID", group),
            ("KAFKA_BOOTSTRAP_SERVERS", stack.kafka_bootstrap.as_str()),
            ("SCHEMA_REGISTRY_URL", stack.registry_url.as_str()),
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("SINK_BATCH_MAX_WAIT", "100ms"),
            ("RETRY_INITIAL_BACKOFF", "100ms"),
            ("RETRY_MAX_BACKOFF", "1s"),
            ("LOG_FORMAT", "json"),
            ("LOG_LEVEL", "info,sink_connector=debug"),
        ];
        // Later entries win: `extra` overrides the defaults.
        env.extend_from_slice(extra);
        let process = Process::spawn(&workspace_binary("sink-connector"), &env);
        // postgres://user:PASSWORD@host...
        let secret = db
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, password)| password.to_string())
            .expect("the test database URL carries a password");
        Sink { process, secret }
    }

    pub async fn stop(mut self) {
        self.sigterm();
        let status = self.wait(Duration::from_secs(30)).await;
        assert!(status.success(), "sink exit {status:?}:\n{}", self.logs());
        self.assert_secret_not_logged();
    }

    /// The database password reached no log line.
    pub fn assert_secret_not_logged(&self) {
        assert!(
            !self.logs().contains(&self.secret),
            "the database password reached the logs"
        );
    }
}

pub fn at(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(s, 0).unwrap()
}

/// Produces raw key/value pairs; returns per partition the offset after the last record.
pub async fn produce_raw(p: &FutureProducer, topic: &str, records: Vec<Raw>) -> HashMap<i32, i64> {
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

pub async fn encode(stack: &Stack, topic: &str, videos: &[TrendingVideo]) -> Vec<Raw> {
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

/// Registers `schema` under `subject` in the stack's registry; returns its id.
pub async fn register(stack: &Stack, subject: &str, schema: &apache_avro::Schema) -> u32 {
    post_schema(
        &SrSettings::new(stack.registry_url.clone()),
        subject.to_string(),
        get_supplied_schema(schema),
    )
    .await
    .unwrap()
    .id
}

/// The Confluent wire format, as any producer writes it: magic 0, the schema id in 4 big-endian
/// bytes, the Avro binary body.
pub fn wire(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The wire format written by hand (see [`wire`]), the schema registered under `<topic>-value`.
pub async fn encode_by_hand(stack: &Stack, topic: &str, videos: &[TrendingVideo]) -> Vec<Raw> {
    let id = register(stack, &format!("{topic}-value"), schemas::schema()).await;
    videos
        .iter()
        .map(|v| {
            let body = apache_avro::to_avro_datum(schemas::schema(), v.to_avro()).unwrap();
            (Some(v.video_id.as_bytes().to_vec()), Some(wire(id, &body)))
        })
        .collect()
}

/// Committed offsets of `group` on `topic`, by partition.
pub fn committed(stack: &Stack, topic: &str, group: &str, partitions: i32) -> HashMap<i32, i64> {
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

pub async fn wait_committed(
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

pub async fn connect(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// The three tables as text, in key order: what "the same tables" means.
/// Rows in `table`.
pub async fn count(db: &TestDatabase, table: &str) -> i64 {
    connect(db)
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

pub async fn dump(db: &TestDatabase) -> (Vec<String>, Vec<String>, Vec<String>) {
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
        rows("SELECT c::text FROM charts c ORDER BY region_code, fetched_at").await,
    )
}

/// A snapshot row's values (its key aside).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub rank: i32,
    pub view_count: Option<i64>,
    pub like_count: Option<i64>,
    pub comment_count: Option<i64>,
    pub favorite_count: Option<i64>,
}

impl Snapshot {
    pub fn of(v: &TrendingVideo) -> Snapshot {
        Snapshot {
            rank: v.rank,
            view_count: v.view_count,
            like_count: v.like_count,
            comment_count: v.comment_count,
            favorite_count: v.favorite_count,
        }
    }
}

/// Every row of `video_snapshots`, by (region, fetched_at in ms, video id).
pub async fn stored_snapshots(db: &TestDatabase) -> HashMap<(String, i64, String), Snapshot> {
    connect(db)
        .await
        .query(
            "SELECT region_code, (extract(epoch FROM fetched_at) * 1000)::int8, video_id, rank,
                view_count, like_count, comment_count, favorite_count FROM video_snapshots",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let snapshot = Snapshot {
                rank: r.get(3),
                view_count: r.get(4),
                like_count: r.get(5),
                comment_count: r.get(6),
                favorite_count: r.get(7),
            };
            ((r.get(0), r.get(1), r.get(2)), snapshot)
        })
        .collect()
}

/// Every row of `videos`, every column: as the record it was written from (`fetched_at` is
/// `last_fetched_at`, no chart size) and its `first_seen_at`.
pub async fn stored_videos(db: &TestDatabase) -> HashMap<String, (TrendingVideo, DateTime<Utc>)> {
    connect(db)
        .await
        .query(
            "SELECT video_id, region_code, last_fetched_at, rank, title, description, channel_id,
                channel_title, category_id, category_name, tags, published_at, default_language,
                default_audio_language, live_broadcast_content, thumbnail_url, duration_seconds,
                definition, dimension, caption, licensed_content, view_count, like_count,
                comment_count, favorite_count, first_seen_at FROM videos",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let v = TrendingVideo {
                video_id: r.get(0),
                region_code: r.get(1),
                fetched_at: r.get(2),
                rank: r.get(3),
                title: r.get(4),
                description: r.get(5),
                channel_id: r.get(6),
                channel_title: r.get(7),
                category_id: r.get(8),
                category_name: r.get(9),
                tags: r.get(10),
                published_at: r.get(11),
                default_language: r.get(12),
                default_audio_language: r.get(13),
                live_broadcast_content: r.get(14),
                thumbnail_url: r.get(15),
                duration_seconds: r.get(16),
                definition: r.get(17),
                dimension: r.get(18),
                caption: r.get(19),
                licensed_content: r.get(20),
                view_count: r.get(21),
                like_count: r.get(22),
                comment_count: r.get(23),
                favorite_count: r.get(24),
                chart_size: None,
            };
            (v.video_id.clone(), (v, r.get(25)))
        })
        .collect()
}

/// A chart of `n` videos, each record carrying the chart's size.
pub fn chart(region: &str, n: usize, fetched_at: DateTime<Utc>, views: i64) -> Vec<TrendingVideo> {
    (0..n)
        .map(|i| {
            let mut v =
                schemas::sample(&format!("{region}{i:09}"), region, i as i32 + 1, fetched_at);
            v.view_count = Some(views + i as i64);
            v.chart_size = Some(n as i32);
            if i % 3 == 0 {
                v.like_count = None;
                v.tags = None;
            }
            v
        })
        .collect()
}

pub fn header(m: &OwnedMessage, name: &str) -> String {
    let h = m.headers().expect("headers");
    let value = h
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .unwrap_or_else(|| panic!("no header {name}"));
    String::from_utf8(value.to_vec()).unwrap()
}

/// Every record of `topic`, read to its end (see `plumbing::testing::read_to_end`).
pub fn read_all(stack: &Stack, topic: &str) -> Vec<OwnedMessage> {
    plumbing::testing::read_to_end(stack.kafka_config(&[]), topic)
}

/// The HTTP status of GET `path` on the sink's port (0 when it does not answer).
pub async fn reqwest_status(addr: &str, path: &str) -> u16 {
    match reqwest::get(format!("http://{addr}{path}")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// The sink's `/metrics` text.
pub async fn scrape(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until the sink's metric `name` (no labels) reaches `expected`: metrics are updated
/// just after the commit that tests wait for, so a scrape right after may be early.
pub async fn wait_metric(addr: &str, name: &str, expected: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(addr).await;
        let value = plumbing::testing::metric_sample(&m, name, &[]);
        if value == Some(expected) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {value:?}, expected {expected}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops, starts or restarts the stack's PostgreSQL cluster. Only for test binaries of their
/// own (cargo runs test binaries one after another, and other tests use this PostgreSQL).
/// The stack's PostgreSQL stopped until this is dropped, also when an assertion fails first:
/// later test binaries find it running.
pub struct PostgresStopped;

impl PostgresStopped {
    pub fn now() -> PostgresStopped {
        pg_ctl("stop");
        PostgresStopped
    }
}

impl Drop for PostgresStopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pg_ctlcluster")
            .args(["15", "main", "start"])
            .status();
    }
}

pub fn pg_ctl(action: &str) {
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["15", "main", action, "-m", "fast"])
        .status()
        .expect("pg_ctlcluster (run the tests as root, as CI does)");
    assert!(status.success(), "pg_ctlcluster {action}");
}

/// Runs `sink-connector --topic T --group-id G <args>`; returns (exit code, stdout, stderr).
pub async fn tool(stack: &Stack, topic: &str, group: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(workspace_binary("sink-connector"))
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", &stack.kafka_bootstrap)
        .args(["--topic", topic, "--group-id", group])
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs the tool and requires it to succeed; returns what it printed.
pub async fn tool_ok(stack: &Stack, topic: &str, group: &str, args: &[&str]) -> String {
    let (code, out, err) = tool(stack, topic, group, args).await;
    assert_eq!(
        code, 0,
        "sink-connector {args:?} exited {code}: {err}\n{out}"
    );
    out
}
