//! The real pipeline on the local stack (API stand-in → source → Kafka + the registry → sink →
//! PostgreSQL), scraped by the stack's real Prometheus: every PromQL expression of the Pipeline
//! dashboard must return data from Prometheus, every metric it names must have series there
//! (an expression ending in `or vector(0)` returns data even when its metric is gone, so the
//! run includes an API retry and a dead-lettered record, for the metrics only those create),
//! and every SQL query of the Trending dashboard (variables substituted) must return rows from
//! PostgreSQL. A renamed metric or a broken query fails here.
//!
//! The connectors listen on 9101 and 9102, the ports `prometheus/local.yml` scrapes.

use std::time::Duration;

use plumbing::testing::{unique, workspace_binary, Process, Stack};
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use source_connector::standin::{Fault, StandIn};

const API_KEY: &str = "AIzaTEST-dashboards-key";

async fn prometheus_query(url: &str, expr: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{url}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

fn prometheus_url() -> String {
    std::env::var("TEST_PROMETHEUS_URL").unwrap_or_else(|_| "http://127.0.0.1:19090".into())
}

fn dashboard(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../grafana/dashboards")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The connectors' metrics a PromQL expression reads (`source_…`, `sink_…`).
fn metrics_named(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("source_") || w.starts_with("sink_"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn targets<'a>(d: &'a Value, field: &str) -> Vec<(&'a str, &'a str)> {
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap();
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title, t[field].as_str().unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn every_dashboard_query_returns_data_from_the_running_pipeline() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 60);
    api.set_chart("US", 40);
    // One API answer fails and is retried: `source_api_retries_total` exists after that only.
    api.push_faults([Fault::Status(503, "backendError")]);
    let topic = unique("test-");
    let db = stack.create_database().await.unwrap();
    let common = [
        ("KAFKA_TOPIC", topic.as_str()),
        ("KAFKA_BOOTSTRAP_SERVERS", stack.kafka_bootstrap.as_str()),
        ("SCHEMA_REGISTRY_URL", stack.registry_url.as_str()),
    ];
    let mut source_env = common.to_vec();
    source_env.extend([
        ("YOUTUBE_API_BASE_URL", api.url.as_str()),
        ("YOUTUBE_API_KEY", API_KEY),
        ("YOUTUBE_REGIONS", "FR,US"),
        ("POLL_INTERVAL", "4s"),
        // Polls every few seconds against the stand-in: far over the real API's quota.
        ("YOUTUBE_DAILY_QUOTA", "1000000000"),
        ("HTTP_ADDR", "127.0.0.1:9101"),
    ]);
    let group = unique("e2e-");
    let mut sink_env = common.to_vec();
    sink_env.extend([
        ("DATABASE_URL", db.url.as_str()),
        ("KAFKA_GROUP_ID", group.as_str()),
        ("HTTP_ADDR", "127.0.0.1:9102"),
    ]);
    let _sink = Process::spawn(&workspace_binary("sink-connector"), &sink_env);
    let _source = Process::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_source-connector")),
        &source_env,
    );

    // Two polls per region in PostgreSQL (the "fastest rising" panel needs two).
    let (pg, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let polls: i64 = pg
            .query_one(
                "SELECT coalesce(min(n), 0) FROM (SELECT count(DISTINCT fetched_at) n \
                 FROM video_snapshots GROUP BY region_code HAVING count(*) > 0) x \
                 WHERE (SELECT count(DISTINCT region_code) FROM video_snapshots) = 2",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if polls >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pipeline did not deliver two polls"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A record that is not Avro: dead-lettered, `sink_records_dead_lettered_total` exists.
    let producer = stack.producer(&[]);
    producer
        .send(
            FutureRecord::to(&topic).key("poison").payload("not avro"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    // Every PromQL expression of the Pipeline dashboard returns data (retried while the first
    // scrapes arrive), and every metric it names has series.
    let prom = prometheus_url();
    let pipeline = dashboard("pipeline.json");
    for (title, expr) in targets(&pipeline, "expr") {
        let q = expr
            .replace("$region", "FR|US")
            .replace("$__rate_interval", "1m");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let answer = prometheus_query(&prom, &q).await;
            assert_eq!(answer["status"], "success", "`{title}`: {q}: {answer}");
            if !answer["data"]["result"].as_array().unwrap().is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{title}` returns no data: {q}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for metric in metrics_named(&q) {
            let series = format!("count({{__name__=\"{metric}\"}})");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let answer = prometheus_query(&prom, &series).await;
                if !answer["data"]["result"].as_array().unwrap().is_empty() {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "`{title}` names `{metric}`, which has no series: {q}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    // Every SQL query of the Trending dashboard returns rows, variables included.
    let trending = dashboard("trending.json");
    let vars = trending["templating"]["list"].as_array().unwrap();
    let var_query = |name: &str| {
        vars.iter().find(|v| v["name"] == name).unwrap()["query"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let regions = pg.query(&var_query("region"), &[]).await.unwrap();
    assert_eq!(regions.len(), 2, "the region variable lists FR and US");
    let videos = pg
        .query(&var_query("video").replace("$region", "FR"), &[])
        .await
        .unwrap();
    let video: String = videos
        .first()
        .expect("the video variable lists videos")
        .get(0);
    for (title, sql) in targets(&trending, "rawSql") {
        let q = sql.replace("$region", "FR").replace("$video", &video);
        let rows = pg
            .query(&q, &[])
            .await
            .unwrap_or_else(|e| panic!("`{title}` fails: {e}\n{q}"));
        assert!(!rows.is_empty(), "`{title}` returns no rows:\n{q}");
    }
    let chart = pg
        .query(
            &targets(&trending, "rawSql")[0].1.replace("$region", "FR"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(chart.len(), 60, "today's FR chart is the whole chart");
}
