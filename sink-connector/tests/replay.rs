//! The offset tool against the real broker and PostgreSQL: `reset-offsets` (dry run, execute,
//! every target, clamping, refusal while a sink runs) and `describe-group`, read as a user reads
//! them: exit codes, the group's state and members, each partition's committed offset and lag.

use std::collections::HashMap;
use std::time::Duration;

use plumbing::testing::{unique, Stack};
use rdkafka::producer::FutureRecord;
use sink_connector::testing::{
    at, chart, committed, dump, encode, produce_raw, tool, tool_ok, wait_committed, wait_metric,
    Sink,
};

/// `describe-group` as a user reads it: the group's state, its member count, and per partition
/// (committed offset, end, lag).
struct Described {
    state: String,
    members: usize,
    partitions: HashMap<i32, (Option<i64>, i64, i64)>,
}

async fn describe(stack: &Stack, topic: &str, group: &str) -> Described {
    let out = tool_ok(stack, topic, group, &["describe-group"]).await;
    let first = out.lines().next().unwrap_or_default();
    let (state, members) = first
        .split_once(": state ")
        .and_then(|(_, rest)| rest.split_once(", "))
        .and_then(|(state, rest)| Some((state, rest.split_once(' ')?.0.parse().ok()?)))
        .unwrap_or_else(|| panic!("no state line: {out}"));
    let mut partitions = HashMap::new();
    let mut rows = out.lines().skip_while(|l| !l.contains("PARTITION"));
    assert_eq!(
        rows.next()
            .map(|h| h.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["PARTITION", "COMMITTED", "END", "LAG"]),
        "{out}"
    );
    for row in rows {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.len(), 4, "{out}");
        partitions.insert(
            cells[0].parse().unwrap(),
            (
                cells[1].parse().ok(),
                cells[2].parse().unwrap(),
                cells[3].parse().unwrap(),
            ),
        );
    }
    Described {
        state: state.to_string(),
        members,
        partitions,
    }
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
    let p = stack.producer(&[]);
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
    let p = stack.producer(&[]);
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
    tool_ok(
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
    tool_ok(
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
    tool_ok(
        &stack,
        &topic,
        &group,
        &["reset-offsets", "--shift-by", "-10", "--execute"],
    )
    .await;
    assert_eq!(committed(&stack, &topic, &group, 1)[&0], end - 10);
    tool_ok(
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
    tool_ok(
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
    tool_ok(
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
    let d = describe(&stack, &topic, &group).await;
    assert_eq!((d.state.as_str(), d.members), ("Empty", 0));
    assert_eq!(d.partitions, HashMap::from([(0, (Some(7), end, end - 7))]));
}

#[tokio::test]
async fn to_latest_skips_everything_and_describe_group_shows_no_lag() {
    let stack = Stack::from_env().unwrap();
    let (topic, group, _db, ends) = drained(&stack, 2).await;
    tool_ok(
        &stack,
        &topic,
        &group,
        &["reset-offsets", "--to-earliest", "--execute"],
    )
    .await;
    let d = describe(&stack, &topic, &group).await;
    for (p, end) in &ends {
        assert_eq!(d.partitions[p], (Some(0), *end, *end), "partition {p}");
    }
    let out = tool_ok(
        &stack,
        &topic,
        &group,
        &["reset-offsets", "--to-latest", "--execute"],
    )
    .await;
    let total: i64 = ends.values().sum();
    assert!(out.contains(&format!("skips {total} records")), "{out}");
    assert_eq!(committed(&stack, &topic, &group, 2), ends);
    let d = describe(&stack, &topic, &group).await;
    assert_eq!(d.partitions.len(), 2);
    for (p, end) in &ends {
        assert_eq!(d.partitions[p], (Some(*end), *end, 0), "partition {p}");
    }
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
    let d = describe(&stack, &topic, &group).await;
    assert_eq!((d.state.as_str(), d.members), ("Stable", 1));
    sink.stop().await;
}
