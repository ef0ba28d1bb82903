//! The offset tool against the real broker and PostgreSQL: `reset-offsets` (dry run, execute,
//! every target, clamping, refusal while a sink runs) and `describe-group`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use plumbing::testing::{unique, Stack};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Runs `sink-connector --topic T --group-id G <args>`; returns (exit code, stdout, stderr).
async fn tool(stack: &Stack, topic: &str, group: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sink-connector"))
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

/// A topic with records already drained by a sink into a fresh database.
async fn drained(
    stack: &Stack,
    partitions: i32,
) -> (
    String,
    String,
    plumbing::testing::TestDatabase,
    HashMap<i32, i64>,
) {
    let topic = stack.create_topic(partitions).await.unwrap();
    let group = unique("replay-");
    let db = stack.create_database().await.unwrap();
    let p = producer(stack);
    let mut records = encode(stack, &topic, &chart("FR", 60, at(1_000), 1)).await;
    records.extend(encode(stack, &topic, &chart("FR", 60, at(2_000), 2)).await);
    let ends = produce_raw(&p, &topic, records).await;
    let sink = Sink::spawn(stack, &db, &topic, &group, &[]);
    wait_committed(stack, &topic, &group, partitions, &ends, &sink).await;
    sink.stop().await;
    (topic, group, db, ends)
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_shows_a_readable_table() {
    let stack = Stack::from_env().unwrap();
    let (topic, group, _db, ends) = drained(&stack, 2).await;
    let before = committed(&stack, &topic, &group, 2);
    let (code, out, err) = tool(&stack, &topic, &group, &["reset-offsets", "--to-earliest"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        committed(&stack, &topic, &group, 2),
        before,
        "a dry run commits nothing"
    );
    let header = out.lines().nth(1).unwrap();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        ["PARTITION", "LOW", "HIGH", "CURRENT", "NEW", "CHANGE"]
    );
    assert!(out.starts_with("Dry run"), "{out}");
    let total: i64 = ends.values().sum();
    assert!(
        out.contains(&format!("Total: replays {total} records, skips 0 records.")),
        "{out}"
    );
    assert!(out.contains("--execute"));
}

#[tokio::test]
async fn to_earliest_then_a_sink_run_rewrites_every_row_identically() {
    let stack = Stack::from_env().unwrap();
    let (topic, group, db, ends) = drained(&stack, 2).await;
    let before = dump(&db).await;
    let (code, out, err) = tool(
        &stack,
        &topic,
        &group,
        &["reset-offsets", "--to-earliest", "--execute"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Done."), "{out}");
    let zero: HashMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
    assert_eq!(committed(&stack, &topic, &group, 2), zero);

    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    wait_committed(&stack, &topic, &group, 2, &ends, &sink).await;
    // Every record is read again.
    let total = ends.values().sum::<i64>() as f64;
    wait_metric(
        &sink.http_addr().await,
        "sink_records_consumed_total",
        total,
    )
    .await;
    sink.stop().await;
    assert_eq!(dump(&db).await, before);
}

#[tokio::test]
async fn to_datetime_replays_exactly_the_records_at_or_after_the_time() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("replay-");
    let p: FutureProducer = stack.kafka_config(&[("acks", "all")]).create().unwrap();
    let t0 = 1_700_000_000_000i64;
    for i in 0..40i64 {
        p.send(
            FutureRecord::to(&topic)
                .partition(0)
                .key("k")
                .payload("v")
                .timestamp(t0 + i * 1000),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    let at = chrono::DateTime::from_timestamp_millis(t0 + 25_500)
        .unwrap()
        .to_rfc3339();
    let (code, out, err) = tool(
        &stack,
        &topic,
        &group,
        &["reset-offsets", "--to-datetime", &at, "--execute"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(committed(&stack, &topic, &group, 1)[&0], 26, "{out}");
    assert!(
        out.contains("skips 26"),
        "a group that never committed starts at 0: {out}"
    );
    // Exactly at a record's time: that record is included.
    let at = chrono::DateTime::from_timestamp_millis(t0 + 10_000)
        .unwrap()
        .to_rfc3339();
    tool(
        &stack,
        &topic,
        &group,
        &["reset-offsets", "--to-datetime", &at, "--execute"],
    )
    .await;
    assert_eq!(committed(&stack, &topic, &group, 1)[&0], 10);
    // After the last record: the end.
    let at = chrono::DateTime::from_timestamp_millis(t0 + 99_000)
        .unwrap()
        .to_rfc3339();
    tool(
        &stack,
        &topic,
        &group,
        &["reset-offsets", "--to-datetime", &at, "--execute"],
    )
    .await;
    assert_eq!(committed(&stack, &topic, &group, 1)[&0], 40);
}

#[tokio::test]
async fn shift_and_offset_targets_clamp_at_the_watermarks() {
    let stack = Stack::from_env().unwrap();
    let (topic, group, _db, ends) = drained(&stack, 1).await;
    let end = ends[&0];
    tool(
        &stack,
        &topic,
        &group,
        &["reset-offsets", "--shift-by", "-10", "--execute"],
    )
    .await;
    assert_eq!(committed(&stack, &topic, &group, 1)[&0], end - 10);
    tool(
        &stack,
        &topic,
        &group,
        &["reset-offsets", "--shift-by", "-500", "--execute"],
    )
    .await;
    assert_eq!(
        committed(&stack, &topic, &group, 1)[&0],
        0,
        "clamped to the start"
    );
    tool(
        &stack,
        &topic,
        &group,
        &["reset-offsets", "--to-offset", "99999", "--execute"],
    )
    .await;
    assert_eq!(
        committed(&stack, &topic, &group, 1)[&0],
        end,
        "clamped to the end"
    );
    tool(
        &stack,
        &topic,
        &group,
        &[
            "reset-offsets",
            "--to-offset",
            "7",
            "--partitions",
            "0",
            "--execute",
        ],
    )
    .await;
    assert_eq!(committed(&stack, &topic, &group, 1)[&0], 7);
    let (code, _, err) = tool(
        &stack,
        &topic,
        &group,
        &["reset-offsets", "--to-latest", "--partitions", "5"],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("no partition 5"), "{err}");
    let (_, out, _) = tool(&stack, &topic, &group, &["describe-group"]).await;
    assert!(out.contains("COMMITTED") && out.contains("LAG"), "{out}");
}

#[tokio::test]
async fn with_a_sink_running_in_the_group_the_tool_refuses_and_changes_nothing() {
    let stack = Stack::from_env().unwrap();
    let (topic, group, db, ends) = drained(&stack, 2).await;
    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    // Wait until the sink has joined the group.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !sink.logs().contains("Rebalance") {
        assert!(tokio::time::Instant::now() < deadline, "{}", sink.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _, err) = tool(
        &stack,
        &topic,
        &group,
        &["reset-offsets", "--to-earliest", "--execute"],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("is not empty") && err.contains("describe-group"),
        "{err}"
    );
    assert_eq!(
        committed(&stack, &topic, &group, 2),
        ends,
        "nothing changed"
    );
    let (_, out, _) = tool(&stack, &topic, &group, &["describe-group"]).await;
    assert!(!out.contains("state Empty"), "{out}");
    sink.stop().await;
}
