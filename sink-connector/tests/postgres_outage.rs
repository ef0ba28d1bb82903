//! PostgreSQL stopped mid-stream: the sink pauses, reports not ready, commits nothing early,
//! and catches up alone when PostgreSQL is back. Its own test binary, because it stops the
//! stack's PostgreSQL, which other tests use (cargo runs test binaries one after another).

mod common;

use std::time::Duration;

use common::*;
use plumbing::testing::{unique, Stack};

#[tokio::test]
async fn postgres_down_mid_stream_loses_nothing_and_commits_nothing_early() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(2).await.unwrap();
    let group = unique("outage-");
    let db = stack.create_database().await.unwrap();
    let p = producer(&stack);
    let first = produce_raw(
        &p,
        &topic,
        encode(&stack, &topic, &chart("FR", 100, at(1_000), 1)).await,
    )
    .await;
    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    wait_committed(&stack, &topic, &group, 2, &first, &sink).await;
    let addr = sink.http_addr().await;

    pg_ctl("stop");
    let second = produce_raw(
        &p,
        &topic,
        encode(&stack, &topic, &chart("FR", 100, at(2_000), 2)).await,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !sink.logs().contains("Dependency failed") {
        assert!(tokio::time::Instant::now() < deadline, "{}", sink.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = reqwest_status(&addr, "/readyz").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = committed(&stack, &topic, &group, 2);
    pg_ctl("start");
    assert_eq!(ready, 503, "not ready while PostgreSQL is down");
    assert_eq!(during, first, "nothing committed while PostgreSQL was down");

    let mut ends = first.clone();
    for (p, o) in second {
        ends.insert(p, o);
    }
    wait_committed(&stack, &topic, &group, 2, &ends, &sink).await;
    assert_eq!(reqwest_status(&addr, "/readyz").await, 200);
    let c = connect(&db).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM video_snapshots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200);
    sink.stop().await;
}
