//! The sink's control API against the running binary, the real broker and PostgreSQL: status,
//! pause and resume, offsets read and changed (only while paused), the admin token, and bad
//! input answered with a 4xx JSON error.

use std::collections::HashMap;
use std::time::Duration;

use plumbing::testing::{metric_sample, unique, Stack};
use serde_json::{json, Value};
use sink_connector::testing::{
    at, chart, committed, count, encode, produce_raw, reqwest_status, scrape, wait_committed,
    wait_metric, Sink,
};

const TOKEN: &str = "control-test-token-5f1c";

async fn call(
    addr: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, format!("http://{addr}{path}"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value)
}

async fn status(addr: &str) -> Value {
    let (code, body) = call(addr, reqwest::Method::GET, "/status", None, None).await;
    assert_eq!(code, 200, "{body}");
    body
}

fn patch_body(topic: &str, offsets: &[(i32, Option<i64>)]) -> Value {
    json!({ "offsets": offsets.iter().map(|(p, o)| json!({
        "partition": {"kafka_topic": topic, "kafka_partition": p},
        "offset": o.map(|o| json!({"kafka_offset": o})),
    })).collect::<Vec<_>>() })
}

#[tokio::test]
async fn pause_change_offsets_resume_replays_exactly_what_was_asked() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(2).await.unwrap();
    let group = unique("control-");
    let db = stack.create_database().await.unwrap();
    let p = stack.producer(&[]);
    let ends = produce_raw(
        &p,
        &topic,
        encode(&stack, &topic, &chart("FR", 40, at(1_000), 1)).await,
    )
    .await;
    let sink = Sink::spawn(&stack, &db, &topic, &group, &[("ADMIN_TOKEN", TOKEN)]);
    wait_committed(&stack, &topic, &group, 2, &ends, &sink).await;
    let addr = sink.http_addr().await;

    // Running: every partition committed to its end; the lag is measured every 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = status(&addr).await;
        let lags: Vec<&Value> = s["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["lag"])
            .collect();
        if lags.len() == 2 && lags.iter().all(|l| *l == &json!(0)) {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(s["connector"]["state"], "RUNNING", "{s}");
    assert_eq!(s["type"], "sink");
    for part in s["partitions"].as_array().unwrap() {
        let p = part["partition"].as_i64().unwrap() as i32;
        assert_eq!(part["committed_offset"], json!(ends[&p]), "{s}");
        assert_eq!(part["paused"], false);
    }

    // Mutating calls: the token is required, and a change of offsets needs a pause first.
    let (code, body) = call(&addr, reqwest::Method::PUT, "/pause", None, None).await;
    assert_eq!(
        (code, body["error_code"].as_i64()),
        (401, Some(401)),
        "{body}"
    );
    let (code, _) = call(&addr, reqwest::Method::PUT, "/pause", Some("wrong"), None).await;
    assert_eq!(code, 401);
    let metrics = scrape(&addr).await;
    assert_eq!(
        metric_sample(
            &metrics,
            "sink_admin_refusals_total",
            &[("reason", "missing_token")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_sample(
            &metrics,
            "sink_admin_refusals_total",
            &[("reason", "wrong_token")]
        ),
        Some(1.0)
    );
    let (code, body) = call(
        &addr,
        reqwest::Method::DELETE,
        "/offsets",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("PUT /pause"),
        "{body}"
    );
    assert_eq!(
        committed(&stack, &topic, &group, 2),
        ends,
        "nothing changed"
    );

    // Paused: records produced now are not read.
    let (code, body) = call(&addr, reqwest::Method::PUT, "/pause", Some(TOKEN), None).await;
    assert_eq!((code, &body["state"]), (202, &json!("PAUSED")));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !status(&addr).await["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["paused"] == true)
    {
        assert!(tokio::time::Instant::now() < deadline, "never paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&addr).await["connector"]["state"], "PAUSED");
    let later = produce_raw(
        &p,
        &topic,
        encode(&stack, &topic, &chart("US", 30, at(2_000), 1)).await,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        committed(&stack, &topic, &group, 2),
        ends,
        "paused, nothing more committed"
    );
    let before = count(&db, "video_snapshots").await;
    assert_eq!(before, 40);

    // Bad input: a 4xx with a JSON error, nothing changed.
    for (body, why) in [
        (patch_body(&topic, &[(0, Some(-1))]), "negative offset"),
        (patch_body(&topic, &[(9, Some(0))]), "no such partition"),
        (
            patch_body("another-topic", &[(0, Some(0))]),
            "another topic",
        ),
        (
            patch_body(&topic, &[(0, Some(1)), (0, Some(2))]),
            "a partition twice",
        ),
        (json!({"offsets": []}), "no offsets"),
        (
            json!({"offsets": [{"partition": {"kafka_topic": topic, "kafka_partition": 0}}]}),
            "no offset field (null would reset; missing must not)",
        ),
        (json!({"offsets": "all"}), "wrong shape"),
    ] {
        let (code, answer) = call(
            &addr,
            reqwest::Method::PATCH,
            "/offsets",
            Some(TOKEN),
            Some(body),
        )
        .await;
        assert_eq!(code, 400, "{why}: {answer}");
        assert_eq!(answer["error_code"], 400, "{why}");
    }
    let raw = reqwest::Client::new()
        .patch(format!("http://{addr}/offsets"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    assert_eq!(
        committed(&stack, &topic, &group, 2),
        ends,
        "bad input changed nothing"
    );

    // Partition 0 back to its start, partition 1 left alone.
    let (code, body) = call(
        &addr,
        reqwest::Method::PATCH,
        "/offsets",
        Some(TOKEN),
        Some(patch_body(&topic, &[(0, Some(0))])),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["partitions"][0]["offset"], 0, "{body}");
    assert_eq!(
        body["partitions"][0]["previous_offset"],
        json!(ends[&0]),
        "{body}"
    );
    let now = committed(&stack, &topic, &group, 2);
    assert_eq!(now, HashMap::from([(0, 0), (1, ends[&1])]));
    let (code, offsets) = call(&addr, reqwest::Method::GET, "/offsets", None, None).await;
    assert_eq!(code, 200);
    let listed: HashMap<i64, i64> = offsets["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            assert_eq!(o["partition"]["kafka_topic"], json!(topic));
            (
                o["partition"]["kafka_partition"].as_i64().unwrap(),
                o["offset"]["kafka_offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, HashMap::from([(0, 0), (1, ends[&1])]));

    // Resumed: partition 0 read again from its start, then everything produced meanwhile.
    let (code, _) = call(&addr, reqwest::Method::PUT, "/resume", Some(TOKEN), None).await;
    assert_eq!(code, 202);
    wait_committed(&stack, &topic, &group, 2, &later, &sink).await;
    let consumed = (ends.values().sum::<i64>() + ends[&0] + 30) as f64;
    wait_metric(&addr, "sink_records_consumed_total", consumed).await;
    assert_eq!(count(&db, "video_snapshots").await, 70);
    assert_eq!(status(&addr).await["connector"]["state"], "RUNNING");
    let logs = sink.logs();
    assert!(!logs.contains(TOKEN), "the admin token reached the logs");
    assert!(
        logs.contains("Offsets changed through the control API"),
        "{logs}"
    );
    sink.stop().await;
}

#[tokio::test]
async fn without_a_token_mutating_calls_are_refused_and_unknown_paths_answer_json() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let db = stack.create_database().await.unwrap();
    let sink = Sink::spawn(&stack, &db, &topic, &unique("control-"), &[]);
    let addr = sink.http_addr().await;
    let (code, body) = call(
        &addr,
        reqwest::Method::PUT,
        "/pause",
        Some("anything"),
        None,
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("ADMIN_TOKEN"),
        "{body}"
    );
    let (code, body) = call(&addr, reqwest::Method::GET, "/connectors", None, None).await;
    assert_eq!((code, &body["error_code"]), (404, &json!(404)));
    assert_eq!(
        metric_sample(
            &scrape(&addr).await,
            "sink_admin_refusals_total",
            &[("reason", "disabled")]
        ),
        Some(1.0)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while status(&addr).await["connector"]["state"] != "RUNNING" {
        assert!(tokio::time::Instant::now() < deadline, "{}", sink.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sink.stop().await;
}

#[tokio::test]
async fn the_api_fuzzed_from_its_openapi_document_answers_no_5xx() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(2).await.unwrap();
    let group = unique("control-");
    let db = stack.create_database().await.unwrap();
    let ends = produce_raw(
        &stack.producer(&[]),
        &topic,
        encode(&stack, &topic, &chart("FR", 20, at(1_000), 1)).await,
    )
    .await;
    let sink = Sink::spawn(&stack, &db, &topic, &group, &[("ADMIN_TOKEN", TOKEN)]);
    wait_committed(&stack, &topic, &group, 2, &ends, &sink).await;
    let addr = sink.http_addr().await;
    let fuzzed = tokio::task::spawn_blocking(move || {
        plumbing::testing::fuzz_api("openapi/sink.yaml", &format!("http://{addr}"), TOKEN, 100)
    })
    .await
    .unwrap();
    println!("{}", fuzzed.output);
    assert!(fuzzed.passed, "{}", fuzzed.output);
    assert!(fuzzed.cases >= 100, "{}", fuzzed.output);
    // Still alive and answering after the fuzzing.
    assert_eq!(
        reqwest_status(&sink.http_addr().await, "/healthz").await,
        200
    );
    sink.stop().await;
}

/// An offsets change that fails after its first step (a seek of another partition refused, the
/// commit refused as in a rebalance: injected at those points) answers 503 and leaves every
/// fetch position where it was: resumed, the sink reads nothing again.
#[tokio::test]
async fn a_failed_offsets_change_puts_the_fetch_positions_back() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(2).await.unwrap();
    let group = unique("control-");
    let db = stack.create_database().await.unwrap();
    let ends = produce_raw(
        &stack.producer(&[]),
        &topic,
        encode(&stack, &topic, &chart("FR", 40, at(1_000), 1)).await,
    )
    .await;
    for (failpoint, says) in [
        ("offsets_seek", "moving the fetch position of partition"),
        ("offsets_commit", "committing the new offsets"),
    ] {
        let env = [
            ("ADMIN_TOKEN", TOKEN),
            ("FAILPOINTS", &format!("{failpoint}=return")),
        ];
        let sink = Sink::spawn(&stack, &db, &topic, &group, &env);
        wait_committed(&stack, &topic, &group, 2, &ends, &sink).await;
        let addr = sink.http_addr().await;
        let consumed = || async {
            metric_sample(&scrape(&addr).await, "sink_records_consumed_total", &[]).unwrap_or(0.0)
        };
        let before = consumed().await;
        let (code, _) = call(&addr, reqwest::Method::PUT, "/pause", Some(TOKEN), None).await;
        assert_eq!(code, 202);
        let (code, body) = call(
            &addr,
            reqwest::Method::PATCH,
            "/offsets",
            Some(TOKEN),
            Some(patch_body(&topic, &[(0, Some(0)), (1, Some(0))])),
        )
        .await;
        assert_eq!(code, 503, "{failpoint}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(says), "{failpoint}: {body}");
        assert!(
            message.contains("nothing committed, every fetch position left or put back"),
            "{failpoint}: {body}"
        );
        assert_eq!(committed(&stack, &topic, &group, 2), ends, "{failpoint}");

        // Resumed: fetching goes on from where it was, nothing is read again.
        let (code, _) = call(&addr, reqwest::Method::PUT, "/resume", Some(TOKEN), None).await;
        assert_eq!(code, 202);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            consumed().await,
            before,
            "{failpoint}: records read again after the failed change:\n{}",
            sink.logs()
        );
        assert_eq!(committed(&stack, &topic, &group, 2), ends, "{failpoint}");
        sink.stop().await;
    }
}

/// The threads of a running process (librdkafka runs several per client).
fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Two dozen callers (under the HTTP port's cap of 32 connections) reading `GET /offsets` in a
/// loop share one long-lived client: the sink's
/// thread count stays flat, every call is answered, and the sink drains meanwhile.
#[tokio::test]
async fn many_concurrent_offsets_reads_share_one_client_and_the_sink_keeps_draining() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(2).await.unwrap();
    let group = unique("control-");
    let db = stack.create_database().await.unwrap();
    let p = stack.producer(&[]);
    let produce = |from: i64| {
        let (stack, topic, p) = (&stack, &topic, &p);
        async move {
            let mut videos = Vec::new();
            for poll in from..from + 20 {
                videos.extend(chart("FR", 50, at(1_000 + poll * 60), poll));
            }
            produce_raw(p, topic, encode(stack, topic, &videos).await).await
        }
    };
    let sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    let addr = sink.http_addr().await;
    let started = std::time::Instant::now();
    let ends = produce(0).await;
    wait_committed(&stack, &topic, &group, 2, &ends, &sink).await;
    let quiet = started.elapsed();
    let pid = sink.child.id().unwrap();
    let baseline = threads(pid);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..24)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut answered = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = client
                        .get(format!("http://{addr}/offsets"))
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    let body: Value = r.json().await.unwrap();
                    assert_eq!(body["offsets"].as_array().unwrap().len(), 2, "{body}");
                    answered += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                answered
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let ends = produce(100).await;
    let mut most = baseline;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while committed(&stack, &topic, &group, 2) != ends {
        most = most.max(threads(pid));
        assert!(tokio::time::Instant::now() < deadline, "{}", sink.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let loaded = started.elapsed();
    for _ in 0..20 {
        most = most.max(threads(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = 0;
    for c in callers {
        answered += c.await.unwrap();
    }
    println!(
        "1000 records drained in {quiet:?} alone, {loaded:?} under {answered} GET /offsets \
         from 24 callers; threads {baseline} before, {most} at most"
    );
    assert!(answered >= 100, "{answered} answers");
    assert!(
        most <= baseline + 8,
        "the sink's threads grew from {baseline} to {most} under GET /offsets"
    );
    sink.stop().await;
}
