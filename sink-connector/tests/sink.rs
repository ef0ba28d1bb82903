//! The sink connector as a user runs it: the real binary against the real broker, schema
//! registry and PostgreSQL of the local stack. Every test has its own topic, group and database.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use plumbing::testing::{metric_sample, unique, Stack};
use rdkafka::Message;
use sink_connector::testing::{
    at, chart, committed, connect, dump, encode, encode_by_hand, header, produce_raw, read_all,
    register, reqwest_status, scrape, stored_snapshots, stored_videos, wait_committed, wait_metric,
    wire, Raw, Sink, Snapshot, WAIT,
};

#[tokio::test]
async fn records_become_rows_and_offsets_are_committed_to_the_end() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(3).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let p = stack.producer(&[]);
    let mut records = encode(&stack, &topic, &chart("FR", 100, at(1_000), 10)).await;
    records.extend(encode(&stack, &topic, &chart("FR", 100, at(2_800), 20)).await);
    records.extend(encode_by_hand(&stack, &topic, &chart("US", 50, at(2_000), 30)).await);
    let ends = produce_raw(&p, &topic, records).await;

    // Small batches, so the drain takes many of them within the lag report's 5 s.
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SINK_BATCH_MAX_RECORDS", "20")],
    );
    wait_committed(&stack, &topic, &group, 3, &ends, &sink).await;
    // Lag 0 on every partition once drained: what SinkConsumerLagHigh and the replay runbook
    // read.
    let addr = sink.http_addr().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = scrape(&addr).await;
        let lags: Vec<Option<f64>> = (0..3)
            .map(|p| {
                metric_sample(
                    &m,
                    "sink_consumer_lag_records",
                    &[("partition", &p.to_string())],
                )
            })
            .collect();
        if lags.iter().all(|l| *l == Some(0.0)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag after the drain: {lags:?}\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = connect(&db).await;
    let count = |q: &'static str| {
        let c = &c;
        async move { c.query_one(q, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM videos").await, 150);
    assert_eq!(count("SELECT count(*) FROM video_snapshots").await, 250);
    let row = c
        .query_one(
            "SELECT view_count, like_count, tags, first_seen_at, last_fetched_at, title \
             FROM videos WHERE video_id = 'FR000000001'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<i64>>(0),
        Some(21),
        "the newer poll's count"
    );
    assert_eq!(row.get::<_, Option<i64>>(1), Some(45_678));
    assert_eq!(
        row.get::<_, Option<Vec<String>>>(2),
        Some(vec!["musique".into(), "clip officiel".into()])
    );
    assert_eq!(row.get::<_, DateTime<Utc>>(3), at(1_000));
    assert_eq!(row.get::<_, DateTime<Utc>>(4), at(2_800));
    assert_eq!(
        row.get::<_, Option<String>>(5).unwrap(),
        "Vidéo n°2 — l'été 🎉"
    );
    let nulls = c
        .query_one(
            "SELECT like_count, tags FROM videos WHERE video_id = 'US000000000'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        nulls.get::<_, Option<i64>>(0),
        None,
        "absent is NULL, not 0"
    );
    assert_eq!(nulls.get::<_, Option<Vec<String>>>(1), None);

    let m = wait_metric(
        &sink.http_addr().await,
        "sink_records_consumed_total",
        250.0,
    )
    .await;
    assert_eq!(
        metric_sample(&m, "sink_records_written_total", &[]),
        Some(250.0)
    );
    assert_eq!(
        metric_sample(
            &m,
            "sink_rows_upserted_total",
            &[("table", "video_snapshots")]
        ),
        Some(250.0)
    );
    assert!(metric_sample(&m, "sink_batch_size_records_count", &[]).unwrap() >= 1.0);
    assert!(metric_sample(&m, "sink_batch_write_duration_seconds_count", &[]).unwrap() >= 1.0);
    assert_eq!(
        metric_sample(&m, "sink_end_to_end_latency_seconds_count", &[]),
        Some(250.0)
    );
    assert_eq!(metric_sample(&m, "sink_ready", &[]), Some(1.0));
    assert!(metric_sample(&m, "sink_rebalances_total", &[("kind", "assign")]).unwrap() >= 1.0);
    assert!(m.contains("sink_consumer_lag_records{partition="), "{m}");
    sink.stop().await;
}

#[tokio::test]
async fn the_newest_record_wins_and_an_older_one_only_adds_history() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let p = stack.producer(&[]);
    let mut newer = schemas::sample("vid", "FR", 1, at(2_000));
    newer.view_count = Some(200);
    let mut older = schemas::sample("vid", "FR", 5, at(1_000));
    older.view_count = Some(100);
    let mut newest = schemas::sample("vid", "FR", 2, at(3_000));
    newest.view_count = Some(300);

    // Same key twice in one batch (newest last and first), then an older record alone.
    let first = encode(
        &stack,
        &topic,
        &[newer.clone(), newest.clone(), newer.clone()],
    )
    .await;
    let ends = produce_raw(&p, &topic, first).await;
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SINK_BATCH_MAX_WAIT", "2s")],
    );
    wait_committed(&stack, &topic, &group, 1, &ends, &sink).await;
    let ends = produce_raw(&p, &topic, encode(&stack, &topic, &[older]).await).await;
    wait_committed(&stack, &topic, &group, 1, &ends, &sink).await;

    let c = connect(&db).await;
    let row = c
        .query_one(
            "SELECT view_count, rank, first_seen_at, last_fetched_at FROM videos",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<i64>>(0), Some(300));
    assert_eq!(row.get::<_, i32>(1), 2);
    assert_eq!(
        row.get::<_, DateTime<Utc>>(2),
        at(1_000),
        "the older record lowers first_seen_at"
    );
    assert_eq!(row.get::<_, DateTime<Utc>>(3), at(3_000));
    let history: Vec<i64> = c
        .query(
            "SELECT view_count FROM video_snapshots ORDER BY fetched_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(history, vec![100, 200, 300]);
    assert!(sink.logs().contains("Batch written"));
    sink.stop().await;
}

#[tokio::test]
async fn replaying_the_whole_topic_leaves_the_tables_identical() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(2).await.unwrap();
    let db = stack.create_database().await.unwrap();
    let p = stack.producer(&[]);
    let mut records = encode(&stack, &topic, &chart("FR", 60, at(5_000), 1)).await;
    records.extend(encode(&stack, &topic, &chart("FR", 60, at(1_000), 9)).await);
    records.extend(encode(&stack, &topic, &chart("JP", 40, at(5_000), 5)).await);
    let ends = produce_raw(&p, &topic, records).await;

    let group = unique("sink-");
    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    wait_committed(&stack, &topic, &group, 2, &ends, &sink).await;
    sink.stop().await;
    let before = dump(&db).await;
    assert_eq!(before.0.len(), 100);

    // A new group starts from the earliest offset: the whole topic again, in batches of 7.
    let replay = unique("replay-");
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &replay,
        &[("SINK_BATCH_MAX_RECORDS", "7")],
    );
    wait_committed(&stack, &topic, &replay, 2, &ends, &sink).await;
    sink.stop().await;
    assert_eq!(dump(&db).await, before);
}

#[tokio::test]
async fn poison_records_go_to_the_dlq_with_connect_headers_and_the_rest_is_written() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let p = stack.producer(&[]);
    let good = chart("FR", 10, at(1_000), 1);
    let mut encoded = encode(&stack, &topic, &good).await;
    let valid = encoded[0].1.clone().unwrap();
    let mut wrong_magic = valid.clone();
    wrong_magic[0] = 1;
    let mut unknown_id = valid.clone();
    unknown_id[1..5].copy_from_slice(&999_999u32.to_be_bytes());
    let truncated = valid[..valid.len() / 2].to_vec();
    let mut negative = good[1].clone();
    negative.view_count = Some(-5);
    let negative = encode(&stack, &topic, &[negative]).await.remove(0);
    let poison = [
        (Some(b"garbage".to_vec()), Some(b"\xff\x00garbage".to_vec())),
        (Some(b"tombstone".to_vec()), None),
        (Some(b"magic".to_vec()), Some(wrong_magic)),
        (Some(b"unknown".to_vec()), Some(unknown_id)),
        (Some(b"truncated".to_vec()), Some(truncated)),
        (Some(b"FR000000001".to_vec()), negative.1),
        (None, Some(valid.clone())),
    ];
    // Poison interleaved with the valid records.
    let mut records = Vec::new();
    for bad in &poison {
        records.push(encoded.remove(0));
        records.push(bad.clone());
    }
    records.extend(encoded);
    let ends = produce_raw(&p, &topic, records).await;

    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    wait_committed(&stack, &topic, &group, 1, &ends, &sink).await;
    // Every valid record around the poison is written, as it was produced; the dead-lettered
    // record with FR000000001's key (a negative count) changed nothing of that video.
    let videos = stored_videos(&db).await;
    let snapshots = stored_snapshots(&db).await;
    assert_eq!(videos.len(), good.len());
    assert_eq!(snapshots.len(), good.len());
    for v in &good {
        let mut written = v.clone();
        written.chart_size = None;
        assert_eq!(videos[&v.video_id], (written, v.fetched_at));
        let key = (
            v.region_code.clone(),
            v.fetched_at.timestamp_millis(),
            v.video_id.clone(),
        );
        assert_eq!(snapshots[&key], Snapshot::of(v), "{key:?}");
    }

    let dlq = read_all(&stack, &format!("{topic}.dlq"));
    assert_eq!(dlq.len(), poison.len(), "{}", sink.logs());
    let reasons: Vec<String> = dlq
        .iter()
        .map(|m| header(m, "__connect.errors.exception.class.name"))
        .collect();
    for expected in [
        "not_wire_format",
        "tombstone",
        "unknown_schema",
        "avro",
        "invalid",
        "missing_key",
    ] {
        assert!(
            reasons.iter().any(|r| r.ends_with(expected)),
            "{expected} not in {reasons:?}"
        );
    }
    for m in &dlq {
        assert_eq!(header(m, "__connect.errors.topic"), topic);
        assert_eq!(header(m, "__connect.errors.partition"), "0");
        let offset: i64 = header(m, "__connect.errors.offset").parse().unwrap();
        assert!(offset % 2 == 1, "poison sits at odd offsets, got {offset}");
        assert_eq!(header(m, "__connect.errors.stage"), "VALUE_CONVERTER");
        assert!(!header(m, "__connect.errors.exception.message").is_empty());
    }
    let garbage = dlq.iter().find(|m| m.key() == Some(b"garbage")).unwrap();
    assert_eq!(
        garbage.payload(),
        Some(&b"\xff\x00garbage"[..]),
        "original bytes kept"
    );
    let m = wait_metric(&sink.http_addr().await, "sink_records_consumed_total", 17.0).await;
    let dead: f64 = m
        .lines()
        .filter(|l| l.starts_with("sink_records_dead_lettered_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(dead, poison.len() as f64, "{m}");
    sink.stop().await;
}

/// A write PostgreSQL refuses for good (here a constraint added under the sink) stops the sink
/// with exit code 1 at once, also with nothing more to read, and nothing is committed past the
/// batch that failed.
#[tokio::test]
async fn a_write_refused_for_good_stops_the_sink_and_commits_nothing_past_it() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let mut sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    let addr = sink.http_addr().await;
    // Once ready, its migrations are all applied: a constraint added earlier could land on a
    // table a later migration replaces.
    let deadline = tokio::time::Instant::now() + WAIT;
    while reqwest_status(&addr, "/readyz").await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "{}", sink.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not the data's fault (a constraint would be: bisected, dead-lettered): a column the sink
    // writes is gone.
    connect(&db)
        .await
        .execute("ALTER TABLE videos RENAME COLUMN title TO title_gone", &[])
        .await
        .unwrap();
    let p = stack.producer(&[]);
    produce_raw(
        &p,
        &topic,
        encode(&stack, &topic, &chart("FR", 3, at(1_000), 1)).await,
    )
    .await;
    let status = sink.wait(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "{}", sink.logs());
    assert!(
        sink.logs().contains(
            "writing a batch to PostgreSQL failed permanently: a table or column the sink \
             writes is missing"
        ),
        "{}",
        sink.logs()
    );
    let committed = committed(&stack, &topic, &group, 1);
    assert!(
        committed.get(&0).is_none_or(|o| *o == 0),
        "committed past the batch that failed: {committed:?}"
    );
}

#[tokio::test]
async fn with_errors_tolerance_none_a_poison_record_stops_the_sink_and_nothing_passes_it() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let p = stack.producer(&[]);
    let mut records = encode(&stack, &topic, &chart("FR", 3, at(1_000), 1)).await;
    records.insert(1, (Some(b"bad".to_vec()), Some(b"not avro".to_vec())));
    produce_raw(&p, &topic, records).await;
    let mut sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SINK_ERRORS_TOLERANCE", "none")],
    );
    let status = sink.wait(WAIT).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        sink.logs().contains("SINK_ERRORS_TOLERANCE=none"),
        "{}",
        sink.logs()
    );
    let c = committed(&stack, &topic, &group, 1);
    assert!(
        c.get(&0).is_none_or(|o| *o <= 1),
        "committed past the poison: {c:?}"
    );
}

#[tokio::test]
async fn a_sink_killed_mid_batch_and_restarted_leaves_the_tables_as_if_it_never_died() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(2).await.unwrap();
    let p = stack.producer(&[]);
    let mut records = Vec::new();
    for poll in 0..6 {
        records.extend(
            encode(
                &stack,
                &topic,
                &chart("FR", 200, at(1_000 + poll * 1800), poll * 7),
            )
            .await,
        );
    }
    let ends = produce_raw(&p, &topic, records).await;

    // Reference: one clean run into its own database.
    let clean_db = stack.create_database().await.unwrap();
    let clean_group = unique("clean-");
    let clean = Sink::spawn(&stack, &clean_db, &topic, &clean_group, &[]);
    wait_committed(&stack, &topic, &clean_group, 2, &ends, &clean).await;
    clean.stop().await;

    // Crashing runs: small batches, SIGKILL as soon as something is committed, three times.
    let db = stack.create_database().await.unwrap();
    let group = unique("crashy-");
    for _ in 0..3 {
        let sink = Sink::spawn(
            &stack,
            &db,
            &topic,
            &group,
            &[("SINK_BATCH_MAX_RECORDS", "50")],
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        while !sink.logs().contains("Batch written") {
            assert!(tokio::time::Instant::now() < deadline, "{}", sink.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sink.sigkill();
        let mut sink = sink;
        sink.wait(Duration::from_secs(10)).await;
    }
    // Once inside a batch's transaction for sure: the test holds video_snapshots locked, so the
    // sink's write waits there, its videos upsert done and not committed, until it is killed.
    let locker = connect(&db).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE video_snapshots IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SINK_BATCH_MAX_RECORDS", "50")],
    );
    // Watched from another session: pg_stat_activity is read once per transaction.
    let watcher = connect(&db).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'youtube-trending-sink'
                   AND wait_event_type = 'Lock' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", sink.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = committed(&stack, &topic, &group, 2);
    sink.sigkill();
    let mut sink = sink;
    sink.wait(Duration::from_secs(10)).await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        committed(&stack, &topic, &group, 2),
        before,
        "the killed batch committed no offset"
    );
    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    wait_committed(&stack, &topic, &group, 2, &ends, &sink).await;
    sink.stop().await;
    assert_eq!(dump(&db).await, dump(&clean_db).await);
}

#[tokio::test]
async fn two_instances_share_the_partitions_and_one_finishes_when_the_other_stops() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(4).await.unwrap();
    let group = unique("pair-");
    let db = stack.create_database().await.unwrap();
    let a = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SINK_BATCH_MAX_RECORDS", "20")],
    );
    let b = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SINK_BATCH_MAX_RECORDS", "20")],
    );
    let p = stack.producer(&[]);
    let mut ends: HashMap<i32, i64> = HashMap::new();
    // Produce while both run, until both have written something (joining takes a rebalance).
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut poll = 0;
    loop {
        let batch = encode(
            &stack,
            &topic,
            &chart("FR", 50, at(1_000 + poll * 60), poll),
        )
        .await;
        for (p, o) in produce_raw(&p, &topic, batch).await {
            let e = ends.entry(p).or_insert(0);
            *e = (*e).max(o);
        }
        poll += 1;
        let both = a.logs().contains("Batch written") && b.logs().contains("Batch written");
        if both || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        a.logs().contains("Batch written") && b.logs().contains("Batch written"),
        "both members wrote:\nA:\n{}\nB:\n{}",
        a.logs(),
        b.logs()
    );
    b.stop().await;
    let mut last = ends.clone();
    for poll in 100..104 {
        let batch = encode(
            &stack,
            &topic,
            &chart("FR", 50, at(1_000 + poll * 60), poll),
        )
        .await;
        last = produce_raw(&p, &topic, batch).await;
    }
    // `produce_raw` reports only the partitions it wrote to; the highest offsets win.
    for (p, o) in last {
        let e = ends.entry(p).or_insert(0);
        *e = (*e).max(o);
    }
    wait_committed(&stack, &topic, &group, 4, &ends, &a).await;
    let c = connect(&db).await;
    let snapshots: i64 = c
        .query_one("SELECT count(*) FROM video_snapshots", &[])
        .await
        .unwrap()
        .get(0);
    let produced: i64 = ends.values().sum();
    assert_eq!(snapshots, produced, "one snapshot per record, none missing");
    // Each chart's records were spread over both instances: their counts add up.
    let charts: Vec<(i32, bool)> = c
        .query("SELECT videos_written, complete FROM charts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(charts.len() as i64, produced / 50);
    assert!(
        charts.iter().all(|c| *c == (50, true)),
        "every chart complete with its 50 videos: {charts:?}"
    );
    a.stop().await;
}

/// The largest `sink_consumer_lag_records` of any partition in a `/metrics` text.
fn max_lag(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("sink_consumer_lag_records{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(f64::max)
}

/// A partition an instance loses in a rebalance is no longer reported by it from a stale
/// committed offset: once the pair has drained, the group's largest lag is 0 on both.
#[tokio::test]
async fn lag_of_partitions_moved_to_another_instance_falls_to_0_on_both() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(4).await.unwrap();
    let group = unique("pair-");
    let db = stack.create_database().await.unwrap();
    let env = [("SINK_BATCH_MAX_RECORDS", "20")];
    let p = stack.producer(&[]);
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut produce = async |poll: i64| {
        let batch = encode(
            &stack,
            &topic,
            &chart("FR", 50, at(1_000 + poll * 60), poll),
        )
        .await;
        for (p, o) in produce_raw(&p, &topic, batch).await {
            let e = ends.entry(p).or_insert(0);
            *e = (*e).max(o);
        }
        ends.clone()
    };
    // A alone owns and commits every partition...
    let a = Sink::spawn(&stack, &db, &topic, &group, &env);
    let first = produce(0).await;
    assert_eq!(first.len(), 4, "records on every partition");
    wait_committed(&stack, &topic, &group, 4, &first, &a).await;
    // ...then B takes some over while records keep coming.
    let b = Sink::spawn(&stack, &db, &topic, &group, &env);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut poll = 1;
    while !b.logs().contains("Batch written") {
        assert!(tokio::time::Instant::now() < deadline, "{}", b.logs());
        produce(poll).await;
        poll += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for _ in 0..3 {
        produce(poll).await;
        poll += 1;
    }
    let last = produce(poll).await;
    wait_committed(&stack, &topic, &group, 4, &last, &a).await;

    let (addr_a, addr_b) = (a.http_addr().await, b.http_addr().await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lags = (
            max_lag(&scrape(&addr_a).await),
            max_lag(&scrape(&addr_b).await),
        );
        if lags == (Some(0.0), Some(0.0)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "largest lag on A and B after the drain: {lags:?}\n{}",
            scrape(&addr_a).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.stop().await;
    a.stop().await;
}

/// A client that sends half a request to the HTTP port and then nothing does not hold the sink
/// past SIGTERM: it exits 0 well within the header-read timeout.
#[tokio::test]
async fn a_half_sent_http_request_does_not_delay_the_exit() {
    use tokio::io::AsyncWriteExt;
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let mut sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    let addr = sink.http_addr().await;
    wait_metric(&addr, "sink_ready", 1.0).await;
    let mut held = tokio::net::TcpStream::connect(&addr).await.unwrap();
    held.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    sink.sigterm();
    let status = sink.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}:\n{}", sink.logs());
    assert!(
        started.elapsed() < plumbing::serve::HEADER_READ_TIMEOUT,
        "exit took {:?}",
        started.elapsed()
    );
    drop(held);
}

/// Records near 1 MB: batches are cut by SINK_BATCH_MAX_BYTES, not only by count, so what the
/// sink holds stays bounded (5000 such records would be 4.5 GB in one batch).
#[tokio::test]
async fn large_records_are_batched_by_bytes_and_memory_stays_bounded() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let videos: Vec<_> = (0..60)
        .map(|i| {
            let mut v = schemas::sample(&format!("BIG{i:03}"), "FR", i + 1, at(1_000));
            v.description = Some("x".repeat(880_000));
            v
        })
        .collect();
    let ends = produce_raw(
        &stack.producer(&[]),
        &topic,
        encode(&stack, &topic, &videos).await,
    )
    .await;
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SINK_BATCH_MAX_BYTES", "8388608")],
    );
    wait_committed(&stack, &topic, &group, 1, &ends, &sink).await;
    let m = scrape(&sink.http_addr().await).await;
    // 8 MiB holds 9 such records: the last one crosses the bound, so at most 10 a batch.
    let batches = metric_sample(&m, "sink_batch_size_records_count", &[]).unwrap_or(0.0);
    assert!(batches >= 6.0, "{batches} batches for 60 records of 880 KB");
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", sink.child.id().unwrap())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        peak_kib < 300 * 1024,
        "peak RSS {} MiB for batches of 8 MiB",
        peak_kib / 1024
    );
    let c = connect(&db).await;
    let rows: i64 = c
        .query_one(
            "SELECT count(*) FROM videos WHERE length(description) = 880000",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 60);
    sink.stop().await;
}

/// The `charts` table: a chart is complete exactly when all its videos are stored; a chart
/// written with the schema from before `chart_size` (registered first, the current schema
/// registered over it as a BACKWARD-compatible version) decodes and lands with its size unknown,
/// neither complete nor counted incomplete; a chart missing a video stays incomplete and is
/// counted once older than SINK_CHART_GRACE. Replaying the topic rewrites the same rows.
#[tokio::test]
async fn the_charts_table_says_which_charts_are_complete() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(3).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let p = stack.producer(&[]);

    // The schema as it was before `chart_size`, registered first under the topic's subject.
    let mut before: serde_json::Value = serde_json::from_str(schemas::SCHEMA_JSON).unwrap();
    before["fields"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["name"] != "chart_size");
    let before = apache_avro::Schema::parse_str(&before.to_string()).unwrap();
    let before_id = register(&stack, &format!("{topic}-value"), &before).await;
    let old_records = |videos: Vec<schemas::TrendingVideo>| -> Vec<Raw> {
        videos
            .iter()
            .map(|v| {
                let apache_avro::types::Value::Record(mut fields) = v.to_avro() else {
                    unreachable!()
                };
                fields.retain(|(name, _)| name != "chart_size");
                let value = apache_avro::types::Value::Record(fields);
                let body = apache_avro::to_avro_datum(&before, value).unwrap();
                (
                    Some(v.video_id.as_bytes().to_vec()),
                    Some(wire(before_id, &body)),
                )
            })
            .collect()
    };
    let old = chart("US", 20, at(1_000), 5)
        .into_iter()
        .map(|mut v| {
            v.chart_size = None;
            v
        })
        .collect::<Vec<_>>();
    let whole = encode(&stack, &topic, &chart("FR", 30, at(2_000), 5)).await;
    let mut partial = chart("JP", 10, at(3_000), 5);
    partial.remove(4);
    let partial = encode(&stack, &topic, &partial).await;
    let old = old_records(old);
    // Old and new records interleaved on the topic.
    let mut records = Vec::new();
    for i in 0..30 {
        for list in [&old, &whole, &partial] {
            if let Some(r) = list.get(i) {
                records.push(r.clone());
            }
        }
    }
    let ends = produce_raw(&p, &topic, records).await;
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SINK_BATCH_MAX_RECORDS", "7"), ("SINK_CHART_GRACE", "1s")],
    );
    wait_committed(&stack, &topic, &group, 3, &ends, &sink).await;

    let c = connect(&db).await;
    let charts: Vec<(String, Option<i32>, i32, Option<bool>)> = c
        .query(
            "SELECT region_code, chart_size, videos_written, complete FROM charts \
             ORDER BY region_code",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        charts,
        [
            ("FR".to_string(), Some(30), 30, Some(true)),
            ("JP".to_string(), Some(10), 9, Some(false)),
            ("US".to_string(), None, 20, None),
        ]
    );
    let addr = sink.http_addr().await;
    wait_metric(&addr, "sink_charts_incomplete", 1.0).await;
    sink.stop().await;

    // From the beginning again, in a fresh group: the same rows.
    let tables = dump(&db).await;
    let again = unique("sink-");
    let replay = Sink::spawn(&stack, &db, &topic, &again, &[]);
    wait_committed(&stack, &topic, &again, 3, &ends, &replay).await;
    assert_eq!(dump(&db).await, tables);
    replay.stop().await;
}

/// DATABASE_URL_FILE: the URL is read from the file, which wins over DATABASE_URL (here a wrong
/// one); the rows are written and the password reaches no log line.
#[tokio::test]
async fn the_database_url_can_come_from_a_file() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let file = std::env::temp_dir().join(unique("database-url-"));
    std::fs::write(&file, format!("{}\n", db.url)).unwrap();
    let p = stack.producer(&[]);
    let ends = produce_raw(
        &p,
        &topic,
        encode(&stack, &topic, &chart("FR", 5, at(1_000), 1)).await,
    )
    .await;
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[
            ("DATABASE_URL", "postgres://nobody:wrong@127.0.0.1:1/none"),
            ("DATABASE_URL_FILE", file.to_str().unwrap()),
        ],
    );
    wait_committed(&stack, &topic, &group, 1, &ends, &sink).await;
    let snapshots: i64 = connect(&db)
        .await
        .query_one("SELECT count(*) FROM video_snapshots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(snapshots, 5);
    sink.stop().await;
    let _ = std::fs::remove_file(&file);
}
