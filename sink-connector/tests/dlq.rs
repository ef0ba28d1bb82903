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
