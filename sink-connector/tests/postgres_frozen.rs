//! PostgreSQL frozen (every server process SIGSTOPped: connections open but nothing answers,
//! as with a hung host or a half-open connection): the sink's write times out
//! (`SINK_WRITE_TIMEOUT`), it reports not ready and commits nothing while frozen, and writes
//! everything once PostgreSQL thaws. Its own test binary, because it freezes the stack's
//! PostgreSQL, which other tests use (cargo runs test binaries one after another).

use std::time::Duration;

use plumbing::testing::{metric_sample, unique, Stack};
use sink_connector::testing::{
    at, chart, committed, connect, encode, produce_raw, reqwest_status, scrape, wait_committed,
    Sink,
};

/// Every process of the PostgreSQL server, stopped until this is dropped (also when an
/// assertion fails, so later tests find PostgreSQL running).
struct Frozen(Vec<String>);

impl Frozen {
    fn now() -> Frozen {
        let out = std::process::Command::new("pgrep")
            .args(["-u", "postgres"])
            .output()
            .expect("pgrep");
        let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert!(!pids.is_empty(), "no PostgreSQL process found");
        signal("-STOP", &pids);
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

fn signal(which: &str, pids: &[String]) {
    std::process::Command::new("kill")
        .arg(which)
        .args(pids)
        .status()
        .expect("kill");
}

#[tokio::test]
async fn postgres_frozen_mid_stream_times_out_commits_nothing_and_recovers() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("frozen-");
    let db = stack.create_database().await.unwrap();
    let p = stack.producer(&[]);
    let first = produce_raw(
        &p,
        &topic,
        encode(&stack, &topic, &chart("FR", 50, at(1_000), 1)).await,
    )
    .await;
    let mut sink = Sink::spawn(&stack, &db, &topic, &group, &[("SINK_WRITE_TIMEOUT", "3s")]);
    wait_committed(&stack, &topic, &group, 1, &first, &sink).await;
    let addr = sink.http_addr().await;

    let frozen = Frozen::now();
    let second = produce_raw(
        &p,
        &topic,
        encode(&stack, &topic, &chart("FR", 50, at(2_000), 2)).await,
    )
    .await;
    // Not ready within the write timeout and a little more; nothing committed meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while reqwest_status(&addr, "/readyz").await != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready 15 s after PostgreSQL froze:\n{}",
            sink.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(reqwest_status(&addr, "/readyz").await, 503);
    assert_eq!(committed(&stack, &topic, &group, 1), first);
    assert!(
        sink.child.try_wait().unwrap().is_none(),
        "the sink exited:\n{}",
        sink.logs()
    );
    drop(frozen);

    wait_committed(&stack, &topic, &group, 1, &second, &sink).await;
    let c = connect(&db).await;
    let rows: i64 = c
        .query_one("SELECT count(*) FROM video_snapshots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 100);
    let m = scrape(&addr).await;
    let timeouts = metric_sample(&m, "sink_db_errors_total", &[("kind", "timeout")]);
    assert!(timeouts.unwrap_or(0.0) >= 1.0, "no timeout counted:\n{m}");
    assert_eq!(reqwest_status(&addr, "/readyz").await, 200);
    sink.stop().await;
}
