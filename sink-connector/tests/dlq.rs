//! The way back from the dead-letter topic, against the real sink and broker: a misconfigured
//! sink dead-letters valid records as `unknown_schema`; `dlq list` shows them, `dlq replay`
//! (dry run, then `--execute`) produces them back once the sink is fixed, and they become rows;
//! a second replay produces nothing, and the tables end as a sink that never met the fault
//! leaves them.

use plumbing::testing::{unique, Stack};
use rdkafka::Message;
use sink_connector::testing::{
    at, chart, dump, encode, produce_raw, read_all, register, stored_snapshots, tool_ok,
    wait_committed, Raw, Sink, Snapshot,
};

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_exactly_once_after_the_fix() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let videos = chart("FR", 5, at(1_000), 10);
    let mut records = encode(&stack, &topic, &videos).await;
    records.push((Some(b"garbage".to_vec()), Some(b"not avro".to_vec())));
    let ends = produce_raw(&stack.producer(&[]), &topic, records).await;
    let produced = read_all(&stack, &topic).len();

    // 1. A sink decoding another subject's schemas only: every record is dead-lettered.
    let other = format!("{topic}-other-value");
    let unrelated = apache_avro::Schema::parse_str(
        r#"{"type":"record","name":"Other","fields":[{"name":"x","type":"long"}]}"#,
    )
    .unwrap();
    register(&stack, &other, &unrelated).await;
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SINK_SCHEMA_SUBJECTS", other.as_str())],
    );
    wait_committed(&stack, &topic, &group, 1, &ends, &sink).await;
    sink.stop().await;
    assert!(stored_snapshots(&db).await.is_empty());

    // 2. The list, whole and by reason.
    let listed: serde_json::Value =
        serde_json::from_str(&tool_ok(&stack, &topic, &group, &["dlq", "list", "--json"]).await)
            .unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 6);
    let mut keys: Vec<(String, String)> = listed
        .iter()
        .map(|l| {
            assert_eq!(l["topic"], topic.as_str());
            (
                l["reason"].as_str().unwrap().to_string(),
                l["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    keys.sort();
    let mut expected: Vec<(String, String)> = videos
        .iter()
        .map(|v| ("unknown_schema".to_string(), v.video_id.clone()))
        .collect();
    expected.insert(0, ("not_wire_format".to_string(), "garbage".to_string()));
    assert_eq!(keys, expected);
    let table = tool_ok(
        &stack,
        &topic,
        &group,
        &["dlq", "list", "--reason", "not_wire_format"],
    )
    .await;
    assert!(table.contains("1 of 6 dead letters"), "{table}");
    assert!(table.contains("garbage"), "{table}");

    // 3. The dry run says what it would do and produces nothing.
    let plan = tool_ok(
        &stack,
        &topic,
        &group,
        &["dlq", "replay", "--reason", "unknown_schema"],
    )
    .await;
    assert!(plan.contains("replay      5  unknown_schema"), "{plan}");
    assert!(plan.contains("passed over      1"), "{plan}");
    assert!(plan.contains("dry run"), "{plan}");
    assert_eq!(read_all(&stack, &topic).len(), produced);

    // 4. The sink fixed, the replay executed: the five records come back, as they were
    //    produced (no error headers), and become rows.
    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    let done = tool_ok(
        &stack,
        &topic,
        &group,
        &[
            "dlq",
            "replay",
            "--reason",
            "unknown_schema",
            "--execute",
            "--max-records",
            "2",
        ],
    )
    .await;
    assert!(done.contains("replayed 5 records"), "{done}");
    let all = read_all(&stack, &topic);
    assert_eq!(all.len(), produced + 5);
    let originals = encode(&stack, &topic, &videos).await;
    let mut replayed: Vec<Raw> = all
        .iter()
        .filter(|m| m.offset() >= ends[&m.partition()])
        .map(|m| {
            assert!(m.headers().is_none(), "a replayed record carries no header");
            (m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec))
        })
        .collect();
    replayed.sort();
    let mut originals = originals;
    originals.sort();
    assert_eq!(replayed, originals, "the original keys and values");
    let mut new_ends = std::collections::HashMap::new();
    for m in &all {
        let end = new_ends.entry(m.partition()).or_insert(0);
        *end = (*end).max(m.offset() + 1);
    }
    wait_committed(&stack, &topic, &group, 1, &new_ends, &sink).await;
    let stored = stored_snapshots(&db).await;
    assert_eq!(stored.len(), 5);
    for v in &videos {
        let key = (
            v.region_code.clone(),
            v.fetched_at.timestamp_millis(),
            v.video_id.clone(),
        );
        assert_eq!(stored[&key], Snapshot::of(v));
    }

    // 5. Again: nothing left to replay, nothing produced.
    let again = tool_ok(&stack, &topic, &group, &["dlq", "replay", "--execute"]).await;
    assert!(again.contains("replayed 0 records"), "{again}");
    assert!(
        again.starts_with("0 dead letters not yet examined"),
        "{again}"
    );
    assert_eq!(read_all(&stack, &topic).len(), produced + 5);
    sink.stop().await;

    // 6. The tables end exactly as those of a sink that never met the fault (every column of
    //    videos, video_snapshots and charts), reading the same topic from its start.
    let reference = stack.create_database().await.unwrap();
    let clean_group = unique("sink-");
    let clean = Sink::spawn(&stack, &reference, &topic, &clean_group, &[]);
    wait_committed(&stack, &topic, &clean_group, 1, &new_ends, &clean).await;
    clean.stop().await;
    assert_eq!(dump(&db).await, dump(&reference).await);
}

/// The peak resident memory (VmHWM) of a running process, in bytes, if it still runs.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Committed records of `topic` (one partition), counted as they are read.
fn count_committed(stack: &Stack, topic: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = stack
        .kafka_config(&[
            ("group.id", "counter"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
        ])
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let (mut n, deadline) = (
        0,
        std::time::Instant::now() + std::time::Duration::from_secs(120),
    );
    loop {
        assert!(std::time::Instant::now() < deadline, "{n} records counted");
        match c.poll(std::time::Duration::from_millis(500)) {
            Some(Ok(_)) => n += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return n,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
}

/// A backlog much larger than the memory the tool may use: 200,000 dead letters of 1.5 KB
/// (300 MB) replayed by `dlq replay --execute` whose resident memory stays under 256 MiB, every
/// one produced back once.
#[tokio::test]
async fn a_replay_of_200000_dead_letters_stays_under_256_mib() {
    const LETTERS: usize = 200_000;
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let dlq = format!("{topic}.dlq");
    stack
        .create_named_topic(&dlq, 1, Default::default())
        .await
        .unwrap();
    let producer = stack.producer(&[("linger.ms", "50"), ("compression.type", "none")]);
    let value: Vec<u8> = (0..1500).map(|i| (i * 7 % 251) as u8).collect();
    for start in (0..LETTERS).step_by(10_000) {
        let names: Vec<(String, String)> = (start..start + 10_000)
            .map(|i| (format!("V{i:06}"), i.to_string()))
            .collect();
        let sends = names.iter().map(|(key, offset)| {
            let headers = rdkafka::message::OwnedHeaders::new()
                .insert(header_of("__connect.errors.topic", &topic))
                .insert(header_of("__connect.errors.partition", "0"))
                .insert(header_of("__connect.errors.offset", offset))
                .insert(header_of(
                    "__connect.errors.exception.class.name",
                    "sink_connector::decode::DecodeError::unknown_schema",
                ));
            let record = rdkafka::producer::FutureRecord::to(&dlq)
                .key(key.as_bytes())
                .payload(value.as_slice())
                .headers(headers);
            let send = producer.send(record, std::time::Duration::from_secs(60));
            async move { send.await.map_err(|(e, _)| e).unwrap() }
        });
        futures::future::join_all(sends).await;
    }

    let mut child =
        tokio::process::Command::new(plumbing::testing::workspace_binary("sink-connector"))
            .env_clear()
            .env("KAFKA_BOOTSTRAP_SERVERS", &stack.kafka_bootstrap)
            .args(["--topic", &topic, "--group-id", "big-backlog"])
            .args(["dlq", "replay", "--execute"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let pid = child.id().unwrap();
    let started = std::time::Instant::now();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(peak_rss(pid).unwrap_or(0));
        assert!(started.elapsed() < std::time::Duration::from_secs(600));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "dlq replay of {LETTERS} dead letters of 1.5 KB: {:?}, peak RSS {} MiB",
        started.elapsed(),
        peak >> 20
    );
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("replayed {LETTERS} records")),
        "{stdout}"
    );
    assert!(
        peak < 256 << 20,
        "the replay's resident memory reached {} MiB",
        peak >> 20
    );
    assert_eq!(
        count_committed(&stack, &topic),
        LETTERS,
        "each replayed once"
    );
}

fn header_of<'a>(key: &'a str, value: &'a str) -> rdkafka::message::Header<'a, &'a str> {
    rdkafka::message::Header {
        key,
        value: Some(value),
    }
}
