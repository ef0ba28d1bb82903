//! The chart history partitioned by month: each snapshot lands in its UTC month's partition;
//! SNAPSHOT_RETENTION deletes what is older than it (whole months by dropping their partition,
//! the rest row by row, with the charts and the videos no chart has shown since), and replaying
//! the topic does not bring it back.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use plumbing::testing::{unique, Stack, TestDatabase};
use sink_connector::history::Month;
use sink_connector::testing::{
    chart, connect, dump, encode, produce_raw, stored_snapshots, stored_videos, wait_committed,
    wait_metric, Sink, Snapshot,
};

/// The partitions of `video_snapshots`, by name.
async fn partitions(db: &TestDatabase) -> BTreeSet<String> {
    connect(db)
        .await
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'video_snapshots'::regclass",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn month_before(m: Month) -> Month {
    Month::of(m.start() - Duration::days(1))
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

#[tokio::test]
async fn each_snapshot_lands_in_the_partition_of_its_month() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(3).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let last_second_of_october = utc(2026, 10, 31, 23, 59, 59);
    let first_second_of_november = utc(2026, 11, 1, 0, 0, 0);
    let long_ago = utc(1999, 12, 31, 23, 0, 0);
    let mut videos = chart("FR", 4, last_second_of_october, 10);
    videos.extend(chart("FR", 3, first_second_of_november, 20));
    videos.extend(chart("US", 2, long_ago, 30));
    let ends = produce_raw(
        &stack.producer(&[]),
        &topic,
        encode(&stack, &topic, &videos).await,
    )
    .await;
    let started = Utc::now();
    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    wait_committed(&stack, &topic, &group, 3, &ends, &sink).await;

    let rows = connect(&db)
        .await
        .query(
            "SELECT tableoid::regclass::text, count(*) FROM video_snapshots GROUP BY 1",
            &[],
        )
        .await
        .unwrap();
    let by_partition: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        by_partition,
        HashMap::from([
            ("video_snapshots_p2026_10".to_string(), 4),
            ("video_snapshots_p2026_11".to_string(), 3),
            ("video_snapshots_p1999_12".to_string(), 2),
        ])
    );
    // The records' months, and this month's and next month's ahead of any record (the month
    // after the one the test started in: the sink started later, maybe in the next month).
    let mut expected: BTreeSet<String> = [
        Month::of(last_second_of_october),
        Month::of(first_second_of_november),
        Month::of(long_ago),
        Month::of(started).next(),
    ]
    .iter()
    .map(|m| m.partition())
    .collect();
    let stored = partitions(&db).await;
    assert!(
        stored.is_superset(&expected),
        "{stored:?} lacks some of {expected:?}"
    );
    expected.insert(Month::of(started).partition());
    expected.insert(Month::of(started).next().next().partition());
    assert!(
        stored.is_subset(&expected),
        "{stored:?}: more than {expected:?}"
    );
    let addr = sink.http_addr().await;
    wait_metric(
        &addr,
        "sink_snapshot_partitions_created_total",
        stored.len() as f64,
    )
    .await;
    assert_eq!(
        stored_snapshots(&db).await.len(),
        videos.len(),
        "every snapshot stored"
    );
    sink.stop().await;
}

#[tokio::test]
async fn retention_deletes_the_older_history_and_a_replay_does_not_bring_it_back() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(3).await.unwrap();
    let db = stack.create_database().await.unwrap();
    let now = Utc::now();
    let m0 = Month::of(now);
    let m1 = month_before(m0);
    let m2 = month_before(m1);
    let m3 = month_before(m2);
    let m4 = month_before(m3);
    let day = |m: Month, d: i64| m.start() + Duration::days(d);
    // DE only in an expired month; FR in an expired and a kept one; US in the month the
    // retention ends in (a chart before its end, one after) and in this month.
    let mut videos = chart("DE", 5, day(m4, 1), 100);
    videos.extend(chart("FR", 5, day(m3, 1), 200));
    videos.extend(chart("FR", 5, day(m1, 1), 300));
    videos.extend(chart("US", 5, day(m2, 1), 400));
    videos.extend(chart("US", 5, day(m2, 20), 450));
    videos.extend(chart("US", 5, day(m0, 0), 500));
    let ends = produce_raw(
        &stack.producer(&[]),
        &topic,
        encode(&stack, &topic, &videos).await,
    )
    .await;

    // 1. Kept forever (the default): everything stored.
    let group = unique("sink-");
    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    wait_committed(&stack, &topic, &group, 3, &ends, &sink).await;
    sink.stop().await;
    let all_snapshots = stored_snapshots(&db).await;
    let all_videos = stored_videos(&db).await;
    assert_eq!((all_snapshots.len(), all_videos.len()), (30, 15));

    // 2. A retention ending ten days into m2: m4 and m3 are dropped whole, m2's partition
    //    stays with the chart after the horizon, the chart before it deleted.
    let retention = (now - day(m2, 10)).num_seconds();
    let retention = format!("{retention}s");
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SNAPSHOT_RETENTION", retention.as_str())],
    );
    let addr = sink.http_addr().await;
    wait_metric(&addr, "sink_snapshot_partitions_dropped_total", 2.0).await;
    wait_metric(&addr, "sink_snapshots_expired_total", 15.0).await;
    wait_metric(&addr, "sink_charts_expired_total", 3.0).await;
    wait_metric(&addr, "sink_videos_expired_total", 5.0).await;
    // Exactly m4 and m3 dropped (whatever the sink made ahead: it may run in the next month).
    let kept = |stored: BTreeSet<String>| {
        let kept: BTreeSet<String> = [m2, m1, m0].iter().map(|m| m.partition()).collect();
        assert!(
            stored.is_superset(&kept),
            "{stored:?} lacks some of {kept:?}"
        );
        let old: Vec<&String> = stored.iter().filter(|p| **p < m2.partition()).collect();
        assert!(old.is_empty(), "{old:?} should be dropped");
    };
    kept(partitions(&db).await);
    let expired_at = |at_ms: i64| at_ms < day(m2, 10).timestamp_millis();
    let expected_snapshots: HashMap<_, _> = all_snapshots
        .iter()
        .filter(|((_, at, _), _)| !expired_at(*at))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(expected_snapshots.len(), 15);
    assert!(expected_snapshots
        .keys()
        .all(|(_, at, _)| *at >= day(m2, 20).timestamp_millis()));
    assert_eq!(stored_snapshots(&db).await, expected_snapshots);
    let expected_videos: HashMap<_, _> = all_videos
        .iter()
        .filter(|(id, _)| !id.starts_with("DE"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        stored_videos(&db).await,
        expected_videos,
        "the videos no kept chart shows are gone, the others unchanged"
    );
    let charts: Vec<(String, DateTime<Utc>, i32)> = connect(&db)
        .await
        .query(
            "SELECT region_code, fetched_at, videos_written FROM charts ORDER BY fetched_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        charts,
        [
            ("US".to_string(), day(m2, 20), 5),
            ("FR".to_string(), day(m1, 1), 5),
            ("US".to_string(), day(m0, 0), 5),
        ]
    );
    let logs = sink.logs();
    assert!(
        logs.contains("rows older than SNAPSHOT_RETENTION deleted"),
        "the row deletes are logged:\n{logs}"
    );
    for m in [m4, m3] {
        assert!(
            logs.lines().any(
                |l| l.contains("month older than SNAPSHOT_RETENTION dropped")
                    && l.contains(&m.partition())
            ),
            "the drop of {} is logged:\n{logs}",
            m.partition()
        );
    }
    sink.stop().await;
    let (snapshots, videos_table, charts_table) = dump(&db).await;

    // 3. A replay of the whole topic (a new group) with the retention: the expired records
    //    are counted and left out, the tables stay as they are, no partition comes back.
    let replay = unique("sink-replay-");
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &replay,
        &[("SNAPSHOT_RETENTION", retention.as_str())],
    );
    wait_committed(&stack, &topic, &replay, 3, &ends, &sink).await;
    let addr = sink.http_addr().await;
    wait_metric(&addr, "sink_records_expired_total", 15.0).await;
    wait_metric(&addr, "sink_records_written_total", 15.0).await;
    kept(partitions(&db).await);
    assert_eq!(
        dump(&db).await,
        (snapshots, videos_table, charts_table),
        "the replay left the tables as they were"
    );
    sink.stop().await;
}

#[tokio::test]
async fn a_retention_that_is_not_a_duration_is_refused_with_the_setting_named() {
    let stack = Stack::from_env().unwrap();
    let db = stack.create_database().await.unwrap();
    let mut sink = Sink::spawn(
        &stack,
        &db,
        "unused",
        "unused",
        &[("SNAPSHOT_RETENTION", "13 months")],
    );
    let status = sink.wait(std::time::Duration::from_secs(30)).await;
    assert!(!status.success());
    let logs = sink.logs();
    assert!(
        logs.contains("SNAPSHOT_RETENTION") || logs.contains("--snapshot-retention"),
        "{logs}"
    );
}

/// A record with the key of a stored snapshot but other values (not a plain replay) rewrites
/// the row, and the chart still counts the snapshot once.
#[tokio::test]
async fn a_snapshot_stored_again_with_other_values_is_rewritten_and_counted_once() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(3).await.unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    let at = utc(2026, 11, 2, 12, 0, 0);
    let first = chart("FR", 4, at, 100);
    let mut second = chart("FR", 4, at, 900);
    second[2].rank = 1;
    second[0].rank = 3;
    let p = stack.producer(&[]);
    let mut ends = produce_raw(&p, &topic, encode(&stack, &topic, &first).await).await;
    let sink = Sink::spawn(
        &stack,
        &db,
        &topic,
        &group,
        &[("SINK_BATCH_MAX_RECORDS", "4")],
    );
    wait_committed(&stack, &topic, &group, 3, &ends, &sink).await;
    ends = produce_raw(&p, &topic, encode(&stack, &topic, &second).await).await;
    wait_committed(&stack, &topic, &group, 3, &ends, &sink).await;

    let expected: HashMap<_, _> = second
        .iter()
        .map(|v| {
            (
                (
                    v.region_code.clone(),
                    v.fetched_at.timestamp_millis(),
                    v.video_id.clone(),
                ),
                Snapshot::of(v),
            )
        })
        .collect();
    assert_eq!(
        stored_snapshots(&db).await,
        expected,
        "the second values stored"
    );
    let row = connect(&db)
        .await
        .query_one("SELECT videos_written, complete FROM charts", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, bool>(1)), (4, true));
    let addr = sink.http_addr().await;
    let m = wait_metric(&addr, "sink_records_written_total", 8.0).await;
    assert_eq!(
        plumbing::testing::metric_sample(
            &m,
            "sink_rows_upserted_total",
            &[("table", "video_snapshots")]
        ),
        Some(8.0),
        "four inserted, four rewritten"
    );
    sink.stop().await;
}

/// The retention round and a batch race on one video: the batch refreshes the row (its
/// transaction held open) while the round's delete waits on that row's lock. The fresh row
/// must stay, with its `first_seen_at`.
#[tokio::test]
async fn a_video_a_batch_refreshes_while_the_retention_deletes_is_kept() {
    let stack = Stack::from_env().unwrap();
    let db = stack.create_database().await.unwrap();
    let mut setup = connect(&db).await;
    sink_connector::migrate::run(&mut setup).await.unwrap();
    let now = Utc::now();
    let old = now - Duration::days(40);
    setup
        .execute(
            "INSERT INTO videos (video_id, region_code, rank, first_seen_at, last_fetched_at)
             VALUES ('RACE1', 'FR', 7, $1, $1), ('GONE1', 'FR', 8, $1, $1)",
            &[&old],
        )
        .await
        .unwrap();

    // The batch: its row refreshed, not yet committed.
    let mut batch = connect(&db).await;
    let tx = batch.transaction().await.unwrap();
    tx.execute(
        "UPDATE videos SET last_fetched_at = $1, rank = 1 WHERE video_id = 'RACE1'",
        &[&now],
    )
    .await
    .unwrap();

    // The round, on its own connection: it waits on RACE1's lock.
    let mut upkeep = connect(&db).await;
    let round = tokio::spawn(async move {
        let retention = sink_connector::history::Retention::parse("30d").unwrap();
        sink_connector::history::Partitions::default()
            .round(&mut upkeep, retention, Utc::now())
            .await
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let waiting: i64 = setup
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE 'DELETE FROM videos%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && !round.is_finished(),
            "the round's delete never waited on the batch's row"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tx.commit().await.unwrap();
    round.await.unwrap().unwrap();

    let rows = setup
        .query(
            "SELECT video_id, rank, first_seen_at FROM videos ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let kept: Vec<(String, i32, DateTime<Utc>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        kept.iter().map(|(id, ..)| id.as_str()).collect::<Vec<_>>(),
        ["RACE1"],
        "the refreshed video stays, the expired one goes"
    );
    assert_eq!(kept[0].1, 1);
    assert_eq!(
        kept[0].2.timestamp_millis(),
        old.timestamp_millis(),
        "first_seen_at kept"
    );
}
