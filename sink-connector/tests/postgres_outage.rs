//! PostgreSQL stopped mid-stream for a minute: the sink pauses, reports not ready, commits nothing early,
//! and catches up alone when PostgreSQL is back. Its own test binary, because it stops the
//! stack's PostgreSQL, which other tests use (cargo runs test binaries one after another).

use std::time::Duration;

use plumbing::testing::{metric_sample, unique, Stack};
use sink_connector::testing::{
    at, chart, committed, connect, encode, produce_raw, reqwest_status, scrape, wait_committed,
    wait_metric, PostgresStopped, Sink,
};

#[tokio::test]
async fn postgres_down_mid_stream_loses_nothing_and_commits_nothing_early() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(2).await.unwrap();
    let group = unique("outage-");
    let db = stack.create_database().await.unwrap();
    let p = stack.producer(&[]);
    let first = produce_raw(
        &p,
        &topic,
        encode(&stack, &topic, &chart("FR", 100, at(1_000), 1)).await,
    )
    .await;
    let mut sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    wait_committed(&stack, &topic, &group, 2, &first, &sink).await;
    let addr = sink.http_addr().await;

    let stopped = PostgresStopped::now();
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
    // PostgreSQL refuses connections for a minute (`PG_OUTAGE_SECS`): all along, the sink is
    // alive, not ready, and commits nothing.
    let outage = Duration::from_secs(
        std::env::var("PG_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let down_since = tokio::time::Instant::now();
    let mut checks = 0;
    while down_since.elapsed() < outage {
        let ready = reqwest_status(&addr, "/readyz").await;
        let during = committed(&stack, &topic, &group, 2);
        let alive = sink.child.try_wait().unwrap().is_none();
        assert!(alive, "the sink exited during the outage:\n{}", sink.logs());
        assert_eq!(ready, 503, "not ready while PostgreSQL is down");
        assert_eq!(during, first, "nothing committed while PostgreSQL was down");
        // What the SinkNotReady alert reads.
        let m = scrape(&addr).await;
        assert_eq!(
            metric_sample(&m, "sink_ready", &[]),
            Some(0.0),
            "sink_ready while PostgreSQL is down:\n{m}"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    drop(stopped);
    assert!(checks >= 2);

    let mut ends = first.clone();
    for (p, o) in second {
        ends.insert(p, o);
    }
    wait_committed(&stack, &topic, &group, 2, &ends, &sink).await;
    assert_eq!(reqwest_status(&addr, "/readyz").await, 200);
    wait_metric(&addr, "sink_ready", 1.0).await;
    let c = connect(&db).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM video_snapshots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200);
    // The control API's status: nothing failing now, and the outage as the last error.
    let status: serde_json::Value = reqwest::get(format!("http://{addr}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["failing"], serde_json::json!([]), "{status}");
    assert_eq!(status["last_error"]["dependency"], "postgres", "{status}");
    assert!(status["last_error"]["at"].is_string(), "{status}");
    sink.stop().await;
}
