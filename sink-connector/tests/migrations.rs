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
    assert_eq!(applied, vec![1, 2]);

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
        applied, 2,
        "exactly one instance applied the two migrations"
    );
    let client = connect(&db.url).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}
