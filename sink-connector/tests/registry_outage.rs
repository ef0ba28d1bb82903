//! The schema registry unreachable (behind a proxy switched down; the registry itself is real):
//! at start the sink waits and commits nothing; mid-stream, records of schemas it already knows
//! keep flowing while a new schema id waits, also when the registry answers 500s instead of
//! nothing; nothing is dead-lettered because of the outage.

use std::time::Duration;

use apache_avro::types::Value;
use plumbing::testing::{unique, Outage, Stack};
use sink_connector::testing::{
    at, chart, committed, count, encode_by_hand, produce_raw, read_all, register, reqwest_status,
    wait_committed, wire, Raw, Sink, WAIT,
};

async fn wait_log(sink: &Sink, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !sink.logs().contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{needle}` in:\n{}",
            sink.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn with_the_registry_down_at_start_the_sink_waits_then_writes_everything() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(2).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let registry = Outage::start(&stack.registry_url).await;
    registry.set_down(true);

    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SCHEMA_REGISTRY_URL", &registry.url())],
    );
    // Checked at start, before any record needs it: not ready on an empty topic either.
    wait_log(&sink, "\"dependency\":\"schema_registry\"").await;
    let addr = sink.http_addr().await;
    assert_eq!(reqwest_status(&addr, "/readyz").await, 503);

    let records = encode_by_hand(&stack, &topic, &chart("FR", 100, at(1_000), 1)).await;
    let ends = produce_raw(&stack.producer(&[]), &topic, records).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(reqwest_status(&addr, "/readyz").await, 503);
    assert!(committed(&stack, &topic, &group, 2).is_empty());
    assert_eq!(count(&db, "video_snapshots").await, 0);

    registry.set_down(false);
    wait_committed(&stack, &topic, &group, 2, &ends, &sink).await;
    assert_eq!(count(&db, "video_snapshots").await, 100);
    assert_eq!(reqwest_status(&addr, "/readyz").await, 200);
    assert!(
        read_all(&stack, &format!("{topic}.dlq")).is_empty(),
        "nothing dead-lettered because of the outage"
    );
    sink.stop().await;
}

#[tokio::test]
async fn mid_stream_known_schemas_keep_flowing_and_a_new_schema_id_waits() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let p = stack.producer(&[]);
    let registry = Outage::start(&stack.registry_url).await;
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SCHEMA_REGISTRY_URL", &registry.url())],
    );
    let a = produce_raw(
        &p,
        &topic,
        encode_by_hand(&stack, &topic, &chart("FR", 50, at(1_000), 1)).await,
    )
    .await;
    wait_committed(&stack, &topic, &group, 1, &a, &sink).await;

    // A compatible writer's schema with one more field, registered (while the registry is up)
    // as the topic subject's next version: an id the sink has never seen.
    let mut json: serde_json::Value = serde_json::from_str(schemas::SCHEMA_JSON).unwrap();
    json["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
            {"name": "extra", "type": ["null", "string"], "default": null}
        ));
    let v2 = apache_avro::Schema::parse_str(&json.to_string()).unwrap();
    let v2_id = register(&stack, &format!("{topic}-value"), &v2).await;

    registry.set_down(true);
    // Known id: written and committed while the registry is down.
    let b = produce_raw(
        &p,
        &topic,
        encode_by_hand(&stack, &topic, &chart("FR", 50, at(2_000), 2)).await,
    )
    .await;
    wait_committed(&stack, &topic, &group, 1, &b, &sink).await;
    assert_eq!(count(&db, "video_snapshots").await, 100);

    // New id, the registry still unreachable, then answering 500s (its backend broken, say):
    // it waits through both, uncommitted, not dead-lettered. Only a 404 would make it poison.
    let new: Vec<Raw> = chart("FR", 50, at(3_000), 3)
        .iter()
        .map(|v| {
            let Value::Record(mut fields) = v.to_avro() else {
                unreachable!()
            };
            fields.push((
                "extra".into(),
                Value::Union(1, Box::new(Value::String("x".into()))),
            ));
            let body = apache_avro::to_avro_datum(&v2, Value::Record(fields)).unwrap();
            (
                Some(v.video_id.as_bytes().to_vec()),
                Some(wire(v2_id, &body)),
            )
        })
        .collect();
    let c = produce_raw(&p, &topic, new).await;
    wait_log(&sink, "\"dependency\":\"schema_registry\"").await;
    registry.set_failing(true);
    wait_log(&sink, "failed with status 500").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        committed(&stack, &topic, &group, 1),
        b,
        "nothing past the new id"
    );
    assert_eq!(
        reqwest_status(&sink.http_addr().await, "/readyz").await,
        503
    );

    registry.set_failing(false);
    wait_committed(&stack, &topic, &group, 1, &c, &sink).await;
    assert_eq!(count(&db, "video_snapshots").await, 150);
    assert!(
        read_all(&stack, &format!("{topic}.dlq")).is_empty(),
        "nothing dead-lettered because of the outage"
    );
    sink.stop().await;
}
