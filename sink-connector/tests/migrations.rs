//! The migrations, applied by refinery against the local stack's PostgreSQL, create the tables
//! of the design, and several instances migrating at once is safe.

use plumbing::testing::Stack;
use tokio_postgres::{Client, NoTls};

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn columns(client: &Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT column_name FROM information_schema.columns \
             WHERE table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn migrations_create_the_design_tables() {
    let stack = Stack::from_env().unwrap();
    let db = stack.create_database().await.unwrap();
    let mut client = connect(&db.url).await;
    client.query_one("SELECT 1", &[]).await.unwrap();

    let applied = sink_connector::migrate::run(&mut client).await.unwrap();
    assert_eq!(applied, vec![1, 2, 3]);

    let videos = columns(&client, "videos").await;
    for c in [
        "video_id",
        "first_seen_at",
        "last_fetched_at",
        "view_count",
        "tags",
    ] {
        assert!(
            videos.contains(&c.to_string()),
            "videos lacks {c}: {videos:?}"
        );
    }
    let snapshots = columns(&client, "video_snapshots").await;
    for c in [
        "region_code",
        "fetched_at",
        "video_id",
        "rank",
        "view_count",
    ] {
        assert!(
            snapshots.contains(&c.to_string()),
            "video_snapshots lacks {c}"
        );
    }
    let charts = columns(&client, "charts").await;
    for c in [
        "region_code",
        "fetched_at",
        "chart_size",
        "videos_written",
        "complete",
    ] {
        assert!(charts.contains(&c.to_string()), "charts lacks {c}");
    }
    let pk: Vec<String> = client
        .query(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a \
               ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = 'video_snapshots'::regclass AND i.indisprimary",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        pk.len(),
        3,
        "primary key (region_code, fetched_at, video_id): {pk:?}"
    );

    // Running again applies nothing.
    assert!(sink_connector::migrate::run(&mut client)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn concurrent_migrations_apply_once() {
    let stack = Stack::from_env().unwrap();
    let db = stack.create_database().await.unwrap();
    let runs = (0..4).map(|_| {
        let url = db.url.clone();
        tokio::spawn(async move {
            let mut client = connect(&url).await;
            sink_connector::migrate::run(&mut client).await
        })
    });
    let results = futures::future::join_all(runs).await;
    let applied: usize = results
        .into_iter()
        .map(|r| r.unwrap().expect("no instance fails").len())
        .sum();
    assert_eq!(
        applied, 3,
        "exactly one instance applied the three migrations"
    );
    let client = connect(&db.url).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

/// Migration 3 partitions the chart history by month: the history already stored moves into
/// one partition per month, row for row, and the key and index hold on every partition.
#[tokio::test]
async fn partitioning_moves_the_stored_history_into_monthly_partitions() {
    let stack = Stack::from_env().unwrap();
    let db = stack.create_database().await.unwrap();
    let mut client = connect(&db.url).await;
    let applied = sink_connector::migrate::run_to(&mut client, refinery::Target::Version(2))
        .await
        .unwrap();
    assert_eq!(applied, vec![1, 2]);
    // Two rows on either side of a month's end (in UTC, whatever the session's time zone),
    // one in another year; a chart row each.
    client
        .batch_execute(
            "SET TIME ZONE 'America/New_York';
             INSERT INTO video_snapshots (region_code, fetched_at, video_id, rank, view_count,
                 like_count, comment_count, favorite_count) VALUES
               ('FR', '2026-10-31 23:59:59+00', 'a', 1, 10, NULL, 3, 0),
               ('FR', '2026-11-01 00:00:00+00', 'a', 2, 11, 5, NULL, 0),
               ('US', '2025-01-15 12:00:00+00', 'b', 7, NULL, NULL, NULL, NULL);
             INSERT INTO charts (region_code, fetched_at, chart_size, videos_written)
             SELECT region_code, fetched_at, 1, 1 FROM video_snapshots;",
        )
        .await
        .unwrap();
    // Each row whole, as text (nulls included), with the table it is stored in.
    let rows = "SELECT tableoid::regclass::text, (region_code, fetched_at, video_id, rank,
                    view_count, like_count, comment_count, favorite_count)::text
                FROM video_snapshots ORDER BY fetched_at";
    let stored = |rows: Vec<tokio_postgres::Row>| -> (Vec<String>, Vec<String>) {
        rows.iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .unzip()
    };
    let (tables, before) = stored(client.query(rows, &[]).await.unwrap());
    assert_eq!(tables, ["video_snapshots"; 3]);
    assert!(
        before[1].ends_with(",a,1,10,,3,0)"),
        "values and nulls as stored: {before:?}"
    );

    assert_eq!(
        sink_connector::migrate::run(&mut client).await.unwrap(),
        vec![3]
    );
    let (partitions, moved) = stored(client.query(rows, &[]).await.unwrap());
    assert_eq!(
        partitions,
        [
            "video_snapshots_p2025_01",
            "video_snapshots_p2026_10",
            "video_snapshots_p2026_11"
        ]
    );
    assert_eq!(moved, before, "every row moved unchanged");
    let kind: String = client
        .query_one(
            "SELECT relkind::text FROM pg_class WHERE relname = 'video_snapshots'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "p", "video_snapshots is partitioned");
    // The key holds across partitions; the rank-history index is on each partition.
    let duplicate = client
        .execute(
            "INSERT INTO video_snapshots (region_code, fetched_at, video_id, rank)
             VALUES ('FR', '2026-11-01 00:00:00+00', 'a', 9)",
            &[],
        )
        .await;
    assert!(duplicate.is_err(), "the primary key holds after the move");
    let indexed: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_indexes
             WHERE tablename LIKE 'video_snapshots_p%' AND indexdef LIKE '%(video_id, fetched_at)%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(indexed, 3);
    let leftovers: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'video_snapshots_unpartitioned%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0, "the old table and its indexes are gone");
}

/// The sink migrates on its pool's connections, whose statement_timeout is SINK_WRITE_TIMEOUT;
/// migration 3 copies the whole history in one statement, which may take longer.
#[tokio::test]
async fn a_long_migration_is_not_cut_short_by_the_sessions_statement_timeout() {
    let stack = Stack::from_env().unwrap();
    let db = stack.create_database().await.unwrap();
    let mut client = connect(&db.url).await;
    sink_connector::migrate::run_to(&mut client, refinery::Target::Version(2))
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO video_snapshots (region_code, fetched_at, video_id, rank)
             SELECT 'FR', '2026-11-01 00:00:00+00'::timestamptz + (i / 200) * interval '1 min',
                    'v' || (i % 200), i % 200 + 1
             FROM generate_series(0, 299999) i",
        )
        .await
        .unwrap();
    // As the pool's connections: the timeout set at connection start.
    let mut config: tokio_postgres::Config = db.url.parse().unwrap();
    config.options("-c statement_timeout=50");
    let (mut client, conn) = config.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let applied = sink_connector::migrate::run(&mut client).await;
    assert_eq!(applied.unwrap(), vec![3]);
    let n: i64 = client
        .query_one("SELECT count(*) FROM video_snapshots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 300_000);
    let timeout: String = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "50ms", "the connection's own timeout is back");
}
