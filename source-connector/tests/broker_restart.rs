//! The broker unavailable under a running pipeline (API stand-in → source → broker → sink →
//! PostgreSQL): frozen (SIGSTOP) for longer than the sink's session and the source's produce
//! timeout, then thawed; or restarted. Each test runs an Apache Kafka broker of its own, so the
//! stack's broker is untouched; registry and PostgreSQL are the stack's.
//!
//! Afterwards polls go on; every chart in the topic is whole, and the sink resumes from its
//! committed offsets until the tables hold exactly the topic's records.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use plumbing::testing::{read_to_end, unique, workspace_binary, Process, Stack};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schemas::TrendingVideo;
use source_connector::standin::StandIn;
use tokio::process::Command;

/// Two distinct free ports (the broker's and its controller's): both listeners are held
/// until both ports are known, or the system may hand out the same port twice.
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// An Apache Kafka broker of this test's own (scripts/kafka/broker.sh, as the stack's), its
/// data in `dir` so that a restart keeps it. The script execs the JVM: the child's pid is the
/// broker's, and SIGSTOP freezes the broker itself.
fn start_broker(dir: &std::path::Path, port: u16, controller_port: u16) -> Process {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka/broker.sh");
    let mut command = Command::new(script);
    command
        .arg(dir.join("kafka"))
        .arg(port.to_string())
        .arg(controller_port.to_string())
        .env("KAFKA_HEAP", "256m");
    // Appended: the log of the broker before a restart is kept beside the one after.
    Process::run(
        command,
        "the test's Kafka broker",
        Some(dir.join("kafka.log")),
    )
}

/// Waits until the broker's log says it has started for the `starts`-th time.
async fn wait_started(dir: &std::path::Path, starts: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(dir.join("kafka.log")).unwrap_or_default();
        if log.matches("Kafka Server started").count() >= starts {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the test's Kafka broker did not start within 60 s:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How the broker becomes unavailable.
enum Interruption {
    /// SIGSTOP for this long, then SIGCONT: requests hang, then are answered.
    Freeze(Duration),
    /// SIGTERM, down for 3 s, started again on the same data.
    Restart,
}

/// Every record of `topic` on the broker at `bootstrap`, decoded.
async fn read_topic(bootstrap: &str, registry: &str, topic: &str) -> Vec<TrendingVideo> {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", "read_committed");
    let decoder = AvroDecoder::new(SrSettings::new(registry.to_string()));
    let mut out = Vec::new();
    for m in read_to_end(config, topic) {
        let v = decoder.decode(m.payload()).await.unwrap().value;
        out.push(TrendingVideo::from_avro(v).unwrap());
    }
    out
}

type SnapshotKey = (String, i64, String);

async fn snapshots(pg: &tokio_postgres::Client) -> HashSet<SnapshotKey> {
    pg.query(
        "SELECT region_code, (extract(epoch FROM fetched_at) * 1000)::int8, video_id
         FROM video_snapshots",
        &[],
    )
    .await
    .map(|rows| {
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    })
    .unwrap_or_default()
}

/// Polls the source logged as published, per region.
fn published(log: &std::path::Path) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["message"] == "Poll published" {
            *out.entry(v["region"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    out
}

async fn wait_published(log: &std::path::Path, at_least: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let p = published(log);
        if ["FR", "US"]
            .iter()
            .all(|r| p.get(*r).copied().unwrap_or(0) >= at_least)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: polls published {p:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// 15 s: longer than the source's produce timeout (3 s here) and the sink's session (10 s).
const FREEZE: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_broker_frozen_mid_poll_makes_the_source_retry_whole_and_recover() {
    run(Interruption::Freeze(FREEZE), false).await;
}

#[tokio::test]
async fn a_broker_frozen_mid_stream_the_sink_resumes_from_its_offsets() {
    run(Interruption::Freeze(FREEZE), true).await;
}

#[tokio::test]
async fn a_broker_restarted_mid_stream_loses_nothing_and_reports_no_partial_chart() {
    run(Interruption::Restart, true).await;
}

/// Runs the pipeline (the sink only `with_sink`), interrupts the broker once polls flow, and
/// checks what came out.
async fn run(interruption: Interruption, with_sink: bool) {
    let stack = Stack::from_env().unwrap();
    let dir = std::env::temp_dir().join(unique("kafka-"));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, controller_port) = free_ports();
    let bootstrap = format!("127.0.0.1:{port}");
    let mut broker = start_broker(&dir, port, controller_port);
    wait_started(&dir, 1).await;

    let api = StandIn::start().await;
    let sizes = [("FR", 200usize), ("US", 120)];
    for (region, n) in sizes {
        api.set_chart(region, n);
    }
    // Polls that take a while, so the restart lands in the middle of some.
    api.set_delay(Some(Duration::from_millis(200)));
    let db = stack.create_database().await.unwrap();
    let topic = unique("restart-");
    let group = unique("restart-");
    let common = [
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("SCHEMA_REGISTRY_URL", stack.registry_url.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("RETRY_INITIAL_BACKOFF", "200ms"),
        ("RETRY_MAX_BACKOFF", "2s"),
        ("LOG_FORMAT", "json"),
        ("LOG_LEVEL", "info"),
    ];
    let mut source_env = common.to_vec();
    source_env.extend([
        ("YOUTUBE_API_BASE_URL", api.url.as_str()),
        ("YOUTUBE_API_KEY", "restart-test-key"),
        ("YOUTUBE_REGIONS", "FR,US"),
        ("POLL_INTERVAL", "2s"),
        // Polls every 2 s against the stand-in: far over the real API's quota.
        ("YOUTUBE_DAILY_QUOTA", "1000000000"),
        ("PRODUCE_TIMEOUT", "3s"),
        ("HTTP_ADDR", "127.0.0.1:0"),
    ]);
    let mut sink_env = common.to_vec();
    sink_env.extend([
        ("DATABASE_URL", db.url.as_str()),
        ("KAFKA_GROUP_ID", group.as_str()),
        ("HTTP_ADDR", "127.0.0.1:0"),
    ]);
    let (source_log, sink_log) = (dir.join("source.log"), dir.join("sink.log"));
    let mut source = Process::spawn_logged(
        std::path::Path::new(env!("CARGO_BIN_EXE_source-connector")),
        &source_env,
        &source_log,
    );
    let sink = with_sink
        .then(|| Process::spawn_logged(&workspace_binary("sink-connector"), &sink_env, &sink_log));
    wait_published(&source_log, 2, "before the interruption").await;

    match interruption {
        Interruption::Freeze(d) => {
            broker.signal("STOP");
            tokio::time::sleep(d).await;
            broker.signal("CONT");
        }
        Interruption::Restart => {
            broker.sigterm();
            broker.wait(Duration::from_secs(60)).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            broker = start_broker(&dir, port, controller_port);
            wait_started(&dir, 2).await;
        }
    }
    let before = published(&source_log);
    let after = before.values().copied().max().unwrap_or(0) + 2;
    wait_published(&source_log, after, "after the broker came back").await;

    source.sigterm();
    assert!(source.wait(Duration::from_secs(60)).await.success());
    let records = read_topic(&bootstrap, &stack.registry_url, &topic).await;
    let source_logs = std::fs::read_to_string(&source_log).unwrap();
    // The interruption failed polls (each redone whole later), not only delayed them.
    assert!(
        source_logs.contains("Poll failed, not recorded as a success"),
        "no poll failed during the interruption:\n{source_logs}"
    );

    // Every chart the source reported published is in the topic, and every chart a
    // read_committed reader sees is whole and there once: a poll that failed while publishing
    // left nothing visible (its transaction was aborted).
    let reported: HashSet<i64> = source_logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "Poll published")
        .filter_map(|v| {
            let at = v["fetched_at"]
                .as_str()?
                .trim_end_matches(" UTC")
                .to_string();
            chrono::NaiveDateTime::parse_from_str(&at, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc().timestamp_millis())
        })
        .collect();
    assert!(reported.len() >= 4, "polls reported: {reported:?}");
    let mut charts: HashMap<(String, i64), Vec<i32>> = HashMap::new();
    for v in &records {
        charts
            .entry((v.region_code.clone(), v.fetched_at.timestamp_millis()))
            .or_default()
            .push(v.rank);
    }
    for at in &reported {
        assert!(
            charts.keys().any(|(_, a)| a == at),
            "a poll reported published at {at} is not in the topic"
        );
    }
    for ((region, at), ranks) in &charts {
        let n = sizes.iter().find(|(r, _)| r == region).unwrap().1;
        let mut ranks = ranks.clone();
        ranks.sort();
        assert_eq!(
            ranks,
            (1..=n as i32).collect::<Vec<_>>(),
            "the {region} chart of {at} is partial or doubled in the topic:\n{source_logs}"
        );
    }

    if let Some(mut sink) = sink {
        sink_catches_up(&db, &records, &sink_log).await;
        offsets_reach_the_end(&bootstrap, &topic, &group, &sink_log).await;
        sink.sigterm();
        assert!(sink.wait(Duration::from_secs(60)).await.success());
    }
    broker.sigterm();
    broker.wait(Duration::from_secs(60)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The group's committed offsets reach each partition's end: past the transaction markers that
/// end the partitions, so that its lag (what `describe-group` and the lag gauge show) is 0.
async fn offsets_reach_the_end(
    bootstrap: &str,
    topic: &str,
    group: &str,
    sink_log: &std::path::Path,
) {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut tpl = TopicPartitionList::new();
        for p in 0..6 {
            tpl.add_partition(topic, p);
        }
        let committed = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
        let behind: Vec<(i32, Offset, i64)> = committed
            .elements()
            .iter()
            .map(|e| {
                let (_, end) = c
                    .fetch_watermarks(topic, e.partition(), Duration::from_secs(5))
                    .unwrap();
                (e.partition(), e.offset(), end)
            })
            .filter(|(_, committed, end)| *committed != Offset::Offset(*end))
            .collect();
        drop(committed);
        if behind.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed offsets not at the end (partition, committed, end): {behind:?}\n{}",
            std::fs::read_to_string(sink_log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The sink resumes from its committed offsets until the tables hold exactly the topic.
async fn sink_catches_up(
    db: &plumbing::testing::TestDatabase,
    records: &[TrendingVideo],
    sink_log: &std::path::Path,
) {
    let (pg, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let expected: HashSet<SnapshotKey> = records
        .iter()
        .map(|v| {
            (
                v.region_code.clone(),
                v.fetched_at.timestamp_millis(),
                v.video_id.clone(),
            )
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = snapshots(&pg).await;
        if found == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tables: {} snapshots ({} missing, {} extra), topic: {}\n{}",
            found.len(),
            expected.difference(&found).count(),
            found.difference(&expected).count(),
            expected.len(),
            std::fs::read_to_string(sink_log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
