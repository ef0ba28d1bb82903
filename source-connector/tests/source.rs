//! The source connector as a user runs it: the real binary, against the real broker and
//! schema registry of the local stack and the API stand-in. Every test has its own topic.

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use plumbing::testing::{metric_sample, read_to_end, unique, Outage, Process, Stack};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schemas::TrendingVideo;
use serde_json::{json, Value};
use source_connector::standin::{self, Fault, StandIn};
use tokio::process::Command;

const API_KEY: &str = "AIzaTEST-secret-key-0123456789";

/// A source connector run by a test (see `plumbing::testing::Process` for logs, signals, wait
/// and its HTTP address).
struct Source {
    process: Process,
}

impl std::ops::Deref for Source {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Source {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// Everything a run needs; `extra` env vars override the defaults.
fn command(stack: &Stack, api: &StandIn, topic: &str, extra: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_source-connector"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("YOUTUBE_API_BASE_URL", &api.url)
        .env("YOUTUBE_API_KEY", API_KEY)
        .env("YOUTUBE_REGIONS", "FR")
        // Some tests poll every second against the stand-in: far over the real API's quota
        // (the quota plan has tests of its own below, which set it back).
        .env("YOUTUBE_DAILY_QUOTA", "1000000000")
        .env("KAFKA_TOPIC", topic)
        .env("KAFKA_BOOTSTRAP_SERVERS", &stack.kafka_bootstrap)
        .env("KAFKA_TOPIC_PARTITIONS", "3")
        .env("SCHEMA_REGISTRY_URL", &stack.registry_url)
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("RETRY_INITIAL_BACKOFF", "50ms")
        .env("RETRY_MAX_BACKOFF", "300ms")
        .env("YOUTUBE_API_TIMEOUT", "2s")
        .env("LOG_LEVEL", "info,source_connector=debug")
        .env("LOG_FORMAT", "json");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

impl Source {
    /// Runs the long-running connector.
    fn spawn(stack: &Stack, api: &StandIn, topic: &str, extra: &[(&str, &str)]) -> Source {
        Self::spawn_with_args(stack, api, topic, extra, &[])
    }

    /// Runs `source-connector --once`.
    fn once(stack: &Stack, api: &StandIn, topic: &str, extra: &[(&str, &str)]) -> Source {
        Self::spawn_with_args(stack, api, topic, extra, &["--once"])
    }

    fn spawn_with_args(
        stack: &Stack,
        api: &StandIn,
        topic: &str,
        extra: &[(&str, &str)],
        args: &[&str],
    ) -> Source {
        let mut cmd = command(stack, api, topic, extra);
        cmd.args(args);
        Source {
            process: Process::run(cmd, "source-connector", None),
        }
    }

    /// Asserts the key never reached a log line.
    fn assert_key_not_logged(&self) {
        let logs = self.logs();
        assert!(!logs.is_empty(), "no logs captured");
        assert!(
            !logs.contains(API_KEY),
            "the API key leaked into the logs:\n{logs}"
        );
        assert!(
            !logs.contains("secret-key"),
            "part of the API key leaked into the logs"
        );
    }

    /// Status and body of `GET path` on the connector's HTTP port.
    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.http_addr().await))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// Every record of the topic that a `read_committed` reader (the sink) sees, decoded by a
/// consumer that knows only the registry URL, with its key.
async fn read_topic(stack: &Stack, topic: &str) -> Vec<(String, TrendingVideo)> {
    read_topic_as(stack, topic, "read_committed").await
}

/// Every record of the topic at `isolation` (`read_uncommitted` also shows the records of
/// aborted and open transactions).
async fn read_topic_as(
    stack: &Stack,
    topic: &str,
    isolation: &str,
) -> Vec<(String, TrendingVideo)> {
    let decoder = AvroDecoder::new(SrSettings::new(stack.registry_url.clone()));
    let mut out = Vec::new();
    for m in read_to_end(stack.kafka_config(&[("isolation.level", isolation)]), topic) {
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let decoded = decoder.decode(m.payload()).await.unwrap();
        assert!(matches!(decoded.value, Avro::Record(_)));
        out.push((key, TrendingVideo::from_avro(decoded.value).unwrap()));
    }
    out
}

fn count(v: &Value, field: &str) -> Option<i64> {
    v["statistics"][field].as_str().map(|s| s.parse().unwrap())
}

fn string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Checks one record against the stand-in's item, field by field, from the API's own text.
fn assert_matches_api(r: &TrendingVideo, item: &Value, rank: i32, region: &str) {
    let s = &item["snippet"];
    let d = &item["contentDetails"];
    assert_eq!(r.video_id, item["id"].as_str().unwrap());
    assert_eq!(r.region_code, region);
    assert_eq!(r.rank, rank);
    assert_eq!(r.title, string(&s["title"]));
    assert_eq!(r.description, string(&s["description"]));
    assert_eq!(r.channel_id, string(&s["channelId"]));
    assert_eq!(r.channel_title, string(&s["channelTitle"]));
    assert_eq!(r.category_id, string(&s["categoryId"]));
    let cat = standin::CATEGORIES
        .iter()
        .find(|(id, _)| Some(*id) == s["categoryId"].as_str())
        .map(|(_, t)| t.to_string());
    assert_eq!(r.category_name, cat);
    let tags: Option<Vec<String>> = s["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect());
    assert_eq!(r.tags, tags);
    assert_eq!(
        r.published_at
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        string(&s["publishedAt"])
    );
    assert_eq!(r.default_language, string(&s["defaultLanguage"]));
    assert_eq!(r.default_audio_language, string(&s["defaultAudioLanguage"]));
    assert_eq!(r.live_broadcast_content, string(&s["liveBroadcastContent"]));
    let best = ["maxres", "standard", "high", "medium", "default"]
        .iter()
        .find_map(|k| s["thumbnails"][*k]["url"].as_str());
    assert_eq!(r.thumbnail_url.as_deref(), best);
    assert_eq!(r.definition, string(&d["definition"]));
    assert_eq!(r.dimension, string(&d["dimension"]));
    assert_eq!(r.caption, d["caption"].as_str().map(|c| c == "true"));
    assert_eq!(r.licensed_content, d["licensedContent"].as_bool());
    assert_eq!(r.view_count, count(item, "viewCount"));
    assert_eq!(r.like_count, count(item, "likeCount"));
    assert_eq!(r.comment_count, count(item, "commentCount"));
    assert_eq!(r.favorite_count, count(item, "favoriteCount"));
    // Durations: the stand-in's forms, computed here independently of the connector's parser.
    let expected = match d["duration"].as_str().unwrap() {
        "P0D" => 0,
        text => {
            let (days, time) = match text.strip_prefix('P').unwrap().split_once('T') {
                Some((days, time)) => {
                    (days.trim_end_matches('D').parse::<i64>().unwrap_or(0), time)
                }
                None => (0, ""),
            };
            let mut secs = days * 86_400;
            let mut n = String::new();
            for c in time.chars() {
                match c {
                    'H' => secs += n.parse::<i64>().unwrap() * 3600,
                    'M' => secs += n.parse::<i64>().unwrap() * 60,
                    'S' => secs += n.parse::<i64>().unwrap(),
                    _ => {
                        n.push(c);
                        continue;
                    }
                }
                n.clear();
            }
            secs
        }
    };
    assert_eq!(r.duration_seconds, Some(expected), "{}", d["duration"]);
}

#[tokio::test]
async fn two_regions_of_200_videos_give_exactly_400_records_equal_to_the_api() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    let fr = api.set_chart("FR", 200);
    let us = api.set_chart("US", 200);
    let topic = unique("test-");
    let mut source = Source::once(&stack, &api, &topic, &[("YOUTUBE_REGIONS", "FR,US")]);
    assert!(
        source.wait(Duration::from_secs(90)).await.success(),
        "{}",
        source.logs()
    );
    source.assert_key_not_logged();
    assert_eq!(api.video_requests(), 8, "4 pages per region");
    assert_eq!(api.category_requests(), 2);
    assert!(api.keys_seen().iter().all(|k| k == API_KEY));

    let records = read_topic(&stack, &topic).await;
    assert_eq!(records.len(), 400);
    let mut fetched_at = HashMap::new();
    for (key, r) in &records {
        assert_eq!(key, &r.video_id, "the key is the video id");
        let chart = if r.region_code == "FR" { &fr } else { &us };
        let item = &chart[(r.rank - 1) as usize];
        assert_matches_api(r, item, r.rank, &r.region_code);
        fetched_at
            .entry(r.region_code.clone())
            .or_insert_with(Vec::new)
            .push(r.fetched_at);
    }
    for (region, times) in fetched_at {
        assert_eq!(times.len(), 200);
        assert!(
            times.iter().all(|t| *t == times[0]),
            "{region}: one fetched_at per poll"
        );
    }
    // Absent fields arrive as null, not 0 or "".
    assert!(records.iter().any(|(_, r)| r.like_count.is_none()));
    assert!(records.iter().any(|(_, r)| r.comment_count.is_none()));
    assert!(records.iter().any(|(_, r)| r.tags.is_none()));
    assert!(records.iter().any(|(_, r)| r.default_language.is_none()));
    assert!(records.iter().any(|(_, r)| r.duration_seconds == Some(0)));
}

#[tokio::test]
async fn transient_api_failures_are_retried_and_the_poll_completes() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 120);
    api.push_faults([
        Fault::Status(500, "backendError"),
        Fault::Status(503, "backendError"),
        Fault::TooManyRequests { retry_after_s: 1 },
        Fault::Truncated,
    ]);
    api.push_page_faults(
        "page-2",
        [
            Fault::Delay(Duration::from_secs(3)),
            Fault::NotJson,
            Fault::MissingItems,
        ],
    );
    let topic = unique("test-");
    let mut source = Source::once(&stack, &api, &topic, &[("YOUTUBE_API_MAX_ATTEMPTS", "5")]);
    assert!(
        source.wait(Duration::from_secs(90)).await.success(),
        "{}",
        source.logs()
    );
    source.assert_key_not_logged();
    assert_eq!(
        source.logs().matches("API call failed, retrying").count(),
        7
    );
    assert_eq!(read_topic(&stack, &topic).await.len(), 120);
}

/// A 50 MB answer (a broken or hostile proxy) is cut off at 8 MiB and retried like any
/// unreadable answer; the poll then completes.
#[tokio::test]
async fn a_huge_api_answer_is_refused_and_the_poll_retried() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 60);
    api.push_faults([Fault::Huge(50 * 1024 * 1024)]);
    let topic = unique("test-");
    let mut source = Source::once(&stack, &api, &topic, &[]);
    assert!(
        source.wait(Duration::from_secs(60)).await.success(),
        "{}",
        source.logs()
    );
    assert!(
        source.logs().contains("larger than 8 MiB"),
        "{}",
        source.logs()
    );
    assert_eq!(read_topic(&stack, &topic).await.len(), 60);
}

/// A redirect to another host is not followed, so the key (a header by default) never reaches
/// it; the poll fails with a message naming the setting to check.
#[tokio::test]
async fn a_redirect_is_not_followed_and_the_key_goes_nowhere_else() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 50);
    let elsewhere = StandIn::start().await;
    elsewhere.set_chart("FR", 50);
    api.push_faults([Fault::Redirect(format!(
        "{}/videos?chart=mostPopular&part=snippet,contentDetails,statistics&regionCode=FR",
        elsewhere.url
    ))]);
    let topic = unique("test-");
    let mut source = Source::once(&stack, &api, &topic, &[]);
    assert_eq!(source.wait(Duration::from_secs(60)).await.code(), Some(1));
    assert_eq!(elsewhere.video_requests(), 0, "the redirect was followed");
    assert!(
        source.logs().contains("YOUTUBE_API_BASE_URL"),
        "{}",
        source.logs()
    );
    source.assert_key_not_logged();
    assert!(read_topic(&stack, &topic).await.is_empty());
}

#[tokio::test]
async fn a_rejected_key_is_not_retried_and_publishes_nothing() {
    let stack = Stack::from_env().unwrap();
    // The documented reason, and what googleapis.com answers today (`badRequest`, the key's
    // fault only in `details`).
    for reason in ["keyInvalid", "API_KEY_INVALID"] {
        let api = StandIn::start().await;
        api.set_chart("FR", 50);
        api.push_faults([Fault::Status(400, reason)]);
        let topic = unique("test-");
        let mut source = Source::once(&stack, &api, &topic, &[]);
        let status = source.wait(Duration::from_secs(60)).await;
        assert_eq!(status.code(), Some(1), "--once fails");
        assert_eq!(api.video_requests(), 1, "{reason} is never retried");
        let logs = source.logs();
        assert!(
            logs.contains(&format!("refused the key ({reason})")),
            "{logs}"
        );
        source.assert_key_not_logged();
        assert!(read_topic(&stack, &topic).await.is_empty());
    }
}

#[tokio::test]
async fn a_chart_with_a_malformed_page_publishes_nothing_until_it_reads_whole() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 200);
    // Page 3 is unreadable for two whole polls (2 attempts each), then heals.
    api.push_page_faults(
        "page-2",
        [
            Fault::Truncated,
            Fault::Truncated,
            Fault::Truncated,
            Fault::Truncated,
        ],
    );
    let topic = unique("test-");
    let mut source = Source::spawn(
        &stack,
        &api,
        &topic,
        &[("YOUTUBE_API_MAX_ATTEMPTS", "2"), ("POLL_INTERVAL", "1h")],
    );
    source
        .wait_for_log("Poll published", Duration::from_secs(60))
        .await;
    let logs = source.logs();
    assert_eq!(
        logs.matches("Poll failed, not recorded as a success")
            .count(),
        2,
        "{logs}"
    );
    source.sigterm();
    assert!(source.wait(Duration::from_secs(30)).await.success());
    // Exactly one chart: nothing of the two failed polls reached the topic.
    assert_eq!(read_topic(&stack, &topic).await.len(), 200);
    source.assert_key_not_logged();
}

#[tokio::test]
async fn quota_exceeded_waits_for_the_reset_instead_of_retrying() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 50);
    api.push_faults([Fault::Status(403, "quotaExceeded")]);
    let topic = unique("test-");
    let mut source = Source::spawn(&stack, &api, &topic, &[("POLL_INTERVAL", "1h")]);
    source
        .wait_for_log(
            "waiting for the reset at midnight America/Los_Angeles",
            Duration::from_secs(60),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(api.video_requests(), 1, "no retry before the quota resets");
    source.sigterm();
    assert!(source.wait(Duration::from_secs(30)).await.success());
    source.assert_key_not_logged();
}

#[tokio::test]
async fn a_restart_within_the_interval_does_not_poll_again_but_after_it_does() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 60);
    let topic = unique("test-");

    let mut first = Source::spawn(&stack, &api, &topic, &[("POLL_INTERVAL", "1h")]);
    first
        .wait_for_log("Poll published", Duration::from_secs(60))
        .await;
    first.sigterm();
    assert!(first.wait(Duration::from_secs(30)).await.success());
    let after_first = api.video_requests();

    let mut second = Source::spawn(&stack, &api, &topic, &[("POLL_INTERVAL", "1h")]);
    second
        .wait_for_log("Next poll scheduled", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        api.video_requests(),
        after_first,
        "polled again within the interval"
    );
    let (status, body) = second.get("/readyz").await;
    assert_eq!(status, 200, "ready while waiting for the next poll: {body}");
    second.sigterm();
    assert!(second.wait(Duration::from_secs(30)).await.success());

    // With a 1 s interval the last success is old enough: polled at once.
    let mut third = Source::spawn(&stack, &api, &topic, &[("POLL_INTERVAL", "1s")]);
    third
        .wait_for_log("Poll published", Duration::from_secs(60))
        .await;
    third.sigterm();
    assert!(third.wait(Duration::from_secs(30)).await.success());
    assert!(api.video_requests() > after_first);
    let published = first.logs().matches("\"Poll published\"").count()
        + third.logs().matches("\"Poll published\"").count();
    assert!(published >= 2, "{published} polls published");
    assert_eq!(read_topic(&stack, &topic).await.len(), published * 60);
}

#[tokio::test]
async fn sigterm_mid_poll_exits_0_promptly_and_the_poll_is_redone_whole() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 200);
    api.set_delay(Some(Duration::from_secs(2)));
    let topic = unique("test-");
    let mut source = Source::spawn(
        &stack,
        &api,
        &topic,
        &[("POLL_INTERVAL", "1h"), ("SHUTDOWN_GRACE", "1s")],
    );
    // Wait until the poll is in flight, then stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api.video_requests() == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopping = std::time::Instant::now();
    source.sigterm();
    assert!(source.wait(Duration::from_secs(15)).await.success());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "took {:?}",
        stopping.elapsed()
    );
    assert!(
        source.logs().contains("poll abandoned"),
        "{}",
        source.logs()
    );
    assert!(
        read_topic(&stack, &topic).await.is_empty(),
        "nothing half-published"
    );

    // After a restart the region is polled again at once and the whole chart arrives.
    api.set_delay(None);
    let mut again = Source::spawn(&stack, &api, &topic, &[("POLL_INTERVAL", "1h")]);
    again
        .wait_for_log("Poll published", Duration::from_secs(60))
        .await;
    again.sigterm();
    assert!(again.wait(Duration::from_secs(30)).await.success());
    assert_eq!(read_topic(&stack, &topic).await.len(), 200);
}

#[tokio::test]
async fn network_errors_never_show_the_key() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    // A port nothing listens on: every request fails with a connection error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/youtube/v3", closed.local_addr().unwrap());
    drop(closed);
    let topic = unique("test-");
    let mut source = Source::once(
        &stack,
        &api,
        &topic,
        &[
            ("YOUTUBE_API_BASE_URL", &url),
            ("YOUTUBE_API_MAX_ATTEMPTS", "2"),
        ],
    );
    assert_eq!(source.wait(Duration::from_secs(60)).await.code(), Some(1));
    assert!(source.logs().contains("network error"), "{}", source.logs());
    source.assert_key_not_logged();
}

#[tokio::test]
async fn a_region_without_a_chart_is_skipped_and_the_others_publish() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 30);
    let topic = unique("test-");
    let mut source = Source::spawn(
        &stack,
        &api,
        &topic,
        &[("YOUTUBE_REGIONS", "FR,AQ"), ("POLL_INTERVAL", "1h")],
    );
    source
        .wait_for_log("Poll published", Duration::from_secs(60))
        .await;
    source
        .wait_for_log("videoChartNotFound", Duration::from_secs(10))
        .await;
    // What the dashboards and alerts read.
    let (_, m) = source.get("/metrics").await;
    assert_eq!(
        metric_sample(
            &m,
            "source_polls_total",
            &[("region", "AQ"), ("outcome", "chart_not_found")]
        ),
        Some(1.0),
        "{m}"
    );
    source.sigterm();
    assert!(source.wait(Duration::from_secs(30)).await.success());
    let records = read_topic(&stack, &topic).await;
    assert_eq!(records.len(), 30);
    assert!(records.iter().all(|(_, r)| r.region_code == "FR"));
}

#[tokio::test]
async fn metrics_and_readiness_tell_what_happened() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 60);
    api.push_faults([Fault::Status(503, "backendError")]);
    let topic = unique("test-");
    let mut source = Source::spawn(&stack, &api, &topic, &[("POLL_INTERVAL", "1h")]);
    let addr = source.http_addr().await;
    source
        .wait_for_log("Poll published", Duration::from_secs(60))
        .await;

    let get = |path: &str| {
        let url = format!("http://{addr}{path}");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (_, m) = get("/metrics").await;
    let fr = [("region", "FR")];
    assert_eq!(
        metric_sample(
            &m,
            "source_polls_total",
            &[("region", "FR"), ("outcome", "success")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_sample(&m, "source_videos_published_total", &fr),
        Some(60.0)
    );
    // 1 categories call, 1 failed + 2 good pages of videos.
    assert_eq!(
        metric_sample(&m, "source_api_quota_units_total", &fr),
        Some(4.0)
    );
    assert_eq!(
        metric_sample(&m, "source_api_quota_units_today", &fr),
        Some(4.0)
    );
    assert_eq!(
        metric_sample(
            &m,
            "source_api_requests_total",
            &[("endpoint", "videos"), ("status", "503")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_sample(
            &m,
            "source_api_retries_total",
            &[("endpoint", "videos"), ("reason", "server_error")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_sample(&m, "source_poll_duration_seconds_count", &fr),
        Some(1.0)
    );
    assert!(metric_sample(&m, "source_last_success_timestamp_seconds", &fr).unwrap() > 1.7e9);
    assert_eq!(metric_sample(&m, "source_ready", &[]), Some(1.0));
    assert!(!m.contains(API_KEY));
    source.sigterm();
    assert!(source.wait(Duration::from_secs(30)).await.success());
}

/// The metrics page of a running source.
async fn scrape(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Each chart in the topic, by (region, fetched_at): its records' ranks.
fn charts_in(records: &[(String, TrendingVideo)]) -> HashMap<(String, i64), Vec<i32>> {
    let mut charts: HashMap<(String, i64), Vec<i32>> = HashMap::new();
    for (_, v) in records {
        charts
            .entry((v.region_code.clone(), v.fetched_at.timestamp_millis()))
            .or_default()
            .push(v.rank);
    }
    charts
}

#[tokio::test]
async fn random_api_faults_never_turn_a_partial_chart_into_a_successful_poll() {
    let seed: u64 = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("FAULT_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    let sizes = [("FR", 200), ("US", 120)];
    for (region, n) in sizes {
        api.set_chart(region, n);
    }
    let kinds = |rng: &mut fastrand::Rng| match rng.u8(0..8) {
        0 => Fault::Status(500, "backendError"),
        1 => Fault::Status(503, "backendError"),
        2 => Fault::TooManyRequests { retry_after_s: 1 },
        3 => Fault::Truncated,
        4 => Fault::NotJson,
        5 => Fault::MissingItems,
        6 => Fault::Delay(Duration::from_secs(3)),
        _ => Fault::Reset,
    };
    let faults: Vec<Fault> = (0..30).map(|_| kinds(&mut rng)).collect();
    api.push_faults(faults);
    // A page in the middle of the pagination missing several times in a row.
    api.push_page_faults("page-2", (0..3).map(|_| kinds(&mut rng)));
    let topic = unique("test-");
    let mut source = Source::spawn(
        &stack,
        &api,
        &topic,
        &[("YOUTUBE_REGIONS", "FR,US"), ("POLL_INTERVAL", "1s")],
    );
    let addr = source.http_addr().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let successes = loop {
        let m = scrape(&addr).await;
        let ok = |region| {
            metric_sample(
                &m,
                "source_polls_total",
                &[("region", region), ("outcome", "success")],
            )
            .unwrap_or(0.0)
        };
        if ok("FR") >= 3.0 && ok("US") >= 3.0 {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: 3 successful polls per region not reached:\n{m}\n{}",
            source.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    source.sigterm();
    assert!(source.wait(Duration::from_secs(30)).await.success());
    source.assert_key_not_logged();

    let records = read_topic(&stack, &topic).await;
    let charts = charts_in(&records);
    for ((region, at), ranks) in &charts {
        let n = sizes.iter().find(|(r, _)| r == region).unwrap().1;
        let mut sorted = ranks.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            (1..=n as i32).collect::<Vec<_>>(),
            "seed {seed}: the {region} chart fetched at {at} is not whole"
        );
    }
    // Read after the last scrape, so a poll may have completed in between: at least as many.
    for (region, _) in sizes {
        let published = charts.keys().filter(|(r, _)| r == region).count() as f64;
        let ok = metric_sample(
            &successes,
            "source_polls_total",
            &[("region", region), ("outcome", "success")],
        )
        .unwrap();
        assert!(
            published >= ok,
            "seed {seed}: {region}: {published} charts for {ok} successful polls"
        );
    }
    assert!(
        api.video_requests() > 3 * 7,
        "the faults made the source retry"
    );
}

#[tokio::test]
async fn a_source_killed_mid_poll_polls_again_after_restart_and_every_video_arrives() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    let chart = api.set_chart("FR", 200);
    api.set_delay(Some(Duration::from_millis(700)));
    let topic = unique("test-");
    let source = Source::spawn(&stack, &api, &topic, &[("POLL_INTERVAL", "1h")]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api.video_requests() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{}", source.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    source.sigkill();
    let mut source = source;
    source.wait(Duration::from_secs(10)).await;
    assert!(
        read_topic(&stack, &topic).await.is_empty(),
        "nothing published by the killed poll"
    );

    api.set_delay(None);
    let mut again = Source::spawn(&stack, &api, &topic, &[("POLL_INTERVAL", "1h")]);
    again
        .wait_for_log("Poll published", Duration::from_secs(60))
        .await;
    again.sigterm();
    assert!(again.wait(Duration::from_secs(30)).await.success());
    let mut ids: Vec<String> = read_topic(&stack, &topic)
        .await
        .into_iter()
        .map(|(_, v)| v.video_id)
        .collect();
    ids.sort();
    let mut expected: Vec<String> = chart
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    expected.sort();
    assert_eq!(ids, expected, "every video of the chart, once");
}

/// SIGKILL while a poll's transaction is open: a `read_committed` reader (the sink) sees none of
/// that poll, and the poll redone after the restart (which aborts the open transaction at once)
/// appears whole, once.
#[tokio::test]
async fn a_source_killed_mid_transaction_shows_none_of_that_poll_and_redoes_it_whole_once() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 200);
    // Time for the watcher below to be reading before the first records come.
    api.set_delay(Some(Duration::from_millis(700)));
    let topic = unique("test-");
    // Small batches sent one at a time: a poll's 200 records take dozens of round trips, so
    // its transaction stays open long enough to be seen open.
    let env = [
        ("POLL_INTERVAL", "1h"),
        (
            "KAFKA_PROPERTIES",
            "batch.size=2000,max.in.flight.requests.per.connection=1",
        ),
    ];
    let source = Source::spawn(&stack, &api, &topic, &env);
    // Watches the records as they land, open transactions included, and kills the source
    // while the first chart is less than half written.
    let watcher: BaseConsumer = stack
        .kafka_config(&[
            ("group.id", &unique("watcher-")),
            ("isolation.level", "read_uncommitted"),
            ("fetch.wait.max.ms", "10"),
            ("topic.metadata.refresh.interval.ms", "200"),
        ])
        .create()
        .unwrap();
    // The source creates the topic with 3 partitions (KAFKA_TOPIC_PARTITIONS in `command`).
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .unwrap();
    }
    watcher.assign(&tpl).unwrap();
    drop(tpl);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    while seen == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no record seen within 60 s:\n{}",
            source.logs()
        );
        // Without blocking: the API stand-in runs on this test's thread.
        match watcher.poll(Duration::ZERO) {
            Some(m) => {
                m.unwrap();
                seen += 1;
            }
            None => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    source.sigkill();
    let mut source = source;
    source.wait(Duration::from_secs(10)).await;
    assert!(
        !source.logs().contains("Poll published"),
        "the kill came after the commit: the test did not catch the transaction open"
    );
    let raw = charts_in(&read_topic_as(&stack, &topic, "read_uncommitted").await);
    assert_eq!(raw.len(), 1, "one chart begun: {raw:?}");
    let (killed, begun) = raw.into_iter().next().unwrap();
    assert!(
        !begun.is_empty() && begun.len() < 200,
        "the killed poll's transaction holds part of its chart: {} records",
        begun.len()
    );
    assert!(
        read_topic(&stack, &topic).await.is_empty(),
        "a read_committed reader sees nothing of the killed poll"
    );

    api.set_delay(None);
    let mut again = Source::spawn(&stack, &api, &topic, &env[..1]);
    again
        .wait_for_log("Poll published", Duration::from_secs(60))
        .await;
    again.sigterm();
    assert!(again.wait(Duration::from_secs(30)).await.success());
    let charts = charts_in(&read_topic(&stack, &topic).await);
    assert_eq!(charts.len(), 1, "one chart visible: {:?}", charts.keys());
    let (redone, mut ranks) = charts.into_iter().next().unwrap();
    assert_ne!(redone, killed, "the visible chart is the redone poll");
    ranks.sort();
    assert_eq!(
        ranks,
        (1..=200).collect::<Vec<i32>>(),
        "whole, each rank once"
    );
}

/// Two sources with the same transactional id: the second fences the first, which stops
/// polling, says why and exits 1; the second goes on, and no chart appears twice.
#[tokio::test]
async fn a_second_source_with_the_same_transactional_id_fences_the_first() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 50);
    let topic = unique("test-");
    let env = [("POLL_INTERVAL", "1s")];
    let mut first = Source::spawn(&stack, &api, &topic, &env);
    first
        .wait_for_log("Poll published", Duration::from_secs(60))
        .await;
    let mut second = Source::spawn(&stack, &api, &topic, &env);
    // Fenced, the first fails /readyz (naming kafka) for a while before it exits.
    let addr = first.http_addr().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = reqwest::get(format!("http://{addr}/readyz")).await;
        if let Ok(r) = answer {
            if r.status() == 503 && r.text().await.unwrap_or_default().contains("kafka") {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fenced source never failed /readyz:\n{}",
            first.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = first.wait(Duration::from_secs(60)).await;
    let logs = first.logs();
    assert_eq!(status.code(), Some(1), "the fenced source exits 1:\n{logs}");
    assert_eq!(
        logs.matches("another source connector took over the transactional id")
            .count(),
        1,
        "one clear error:\n{logs}"
    );
    let polls_of_first = logs.matches("Poll published").count();
    let published = |s: &Source| s.logs().matches("Poll published").count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while published(&second) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second source goes on polling:\n{}",
            second.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.sigterm();
    assert!(second.wait(Duration::from_secs(30)).await.success());
    let records = read_topic(&stack, &topic).await;
    let charts = charts_in(&records);
    assert_eq!(
        charts.len(),
        polls_of_first + published(&second),
        "one chart per poll reported"
    );
    for (chart, mut ranks) in charts {
        ranks.sort();
        assert_eq!(
            ranks,
            (1..=50).collect::<Vec<i32>>(),
            "{chart:?} whole, once"
        );
    }
}

/// A source polling a chart of 80 once an hour, reaching the registry through a proxy that the
/// test switches down and up.
async fn behind_a_registry_proxy(
    stack: &Stack,
    api: &StandIn,
    down_at_start: bool,
) -> (Outage, Source, String) {
    api.set_chart("FR", 80);
    let registry = Outage::start(&stack.registry_url).await;
    registry.set_down(down_at_start);
    let topic = unique("test-");
    let url = registry.url();
    let source = Source::spawn(
        stack,
        api,
        &topic,
        &[("POLL_INTERVAL", "1h"), ("SCHEMA_REGISTRY_URL", &url)],
    );
    (registry, source, topic)
}

#[tokio::test]
async fn with_the_registry_down_at_start_the_source_publishes_nothing_until_it_can_register() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    let (registry, mut source, topic) = behind_a_registry_proxy(&stack, &api, true).await;
    source
        .wait_for_log("register_schema", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = source.get("/readyz").await;
    assert_eq!(status, 503, "not ready without the registry");
    assert!(
        read_topic(&stack, &topic).await.is_empty(),
        "nothing published"
    );

    registry.set_down(false);
    source
        .wait_for_log("Poll published", Duration::from_secs(60))
        .await;
    source.sigterm();
    assert!(source.wait(Duration::from_secs(30)).await.success());
    assert_eq!(read_topic(&stack, &topic).await.len(), 80);
}

#[tokio::test]
async fn with_the_registry_down_at_the_first_poll_the_source_recovers_alone() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    // Slow enough to cut the registry between the start-up registration and the poll's encoding
    // (3 requests of 1 s; the API timeout is 2 s).
    api.set_delay(Some(Duration::from_secs(1)));
    let (registry, mut source, topic) = behind_a_registry_proxy(&stack, &api, false).await;
    source
        .wait_for_log("Source connector started", Duration::from_secs(30))
        .await;
    registry.set_down(true);
    source
        .wait_for_log("\"kind\":\"encode\"", Duration::from_secs(30))
        .await;
    let (status, body) = source.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("schema_registry"),
        "the registry is named as what is missing: {body}"
    );
    assert!(read_topic(&stack, &topic).await.is_empty());

    // The failed lookup must not stay in the encoder's cache: the retried poll succeeds.
    api.set_delay(None);
    registry.set_down(false);
    source
        .wait_for_log("Poll published", Duration::from_secs(60))
        .await;
    assert_eq!(source.get("/readyz").await.0, 200);
    source.sigterm();
    assert!(source.wait(Duration::from_secs(30)).await.success());
    assert_eq!(read_topic(&stack, &topic).await.len(), 80);
}

/// A registry that requires HTTP basic authentication (as Confluent Cloud's does): with
/// SCHEMA_REGISTRY_USERNAME and SCHEMA_REGISTRY_PASSWORD the source registers and publishes;
/// without them it publishes nothing and `/readyz` names the registry. The password reaches no
/// log line, and `--help` does not print the registry URL's value (it may carry credentials).
#[tokio::test]
async fn a_registry_with_basic_auth_is_reached_with_the_configured_credentials_only() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 50);
    let registry = Outage::start(&stack.registry_url).await;
    registry.require_basic_auth("reg-user", "reg-secret-pw");
    let url = registry.url();

    let topic = unique("test-");
    let mut with = Source::once(
        &stack,
        &api,
        &topic,
        &[
            ("SCHEMA_REGISTRY_URL", &url),
            ("SCHEMA_REGISTRY_USERNAME", "reg-user"),
            ("SCHEMA_REGISTRY_PASSWORD", "reg-secret-pw"),
        ],
    );
    assert!(
        with.wait(Duration::from_secs(60)).await.success(),
        "{}",
        with.logs()
    );
    assert_eq!(read_topic(&stack, &topic).await.len(), 50);
    assert!(!with.logs().contains("reg-secret-pw"), "{}", with.logs());

    let other = unique("test-");
    let without = Source::spawn(&stack, &api, &other, &[("SCHEMA_REGISTRY_URL", &url)]);
    without.wait_for_log("401", Duration::from_secs(30)).await;
    let (status, body) = without.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("schema_registry"), "{body}");
    assert!(!without.logs().contains("Poll published"));
    without.sigkill();

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_source-connector"))
        .arg("--help")
        .env(
            "SCHEMA_REGISTRY_URL",
            "http://someone:hunter2@registry:8081",
        )
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("SCHEMA_REGISTRY_USERNAME"), "{help}");
    assert!(
        !help.contains("hunter2"),
        "--help shows the URL's credentials:\n{help}"
    );
}

/// The key goes in the `x-goog-api-key` header by default and in the `key` parameter with
/// YOUTUBE_API_KEY_IN=query; it can come from YOUTUBE_API_KEY_FILE instead of the variable.
#[tokio::test]
async fn the_key_is_sent_as_a_header_by_default_and_read_from_a_file_if_asked() {
    let stack = Stack::from_env().unwrap();
    let key_file = std::env::temp_dir().join(unique("api-key-"));
    std::fs::write(&key_file, "file-key-1234\n").unwrap();
    for (placement, in_header) in [(None, true), (Some("query"), false)] {
        let api = StandIn::start().await;
        api.set_chart("FR", 60);
        let topic = unique("test-");
        let key_file = key_file.to_str().unwrap();
        let mut extra = vec![("YOUTUBE_API_KEY", ""), ("YOUTUBE_API_KEY_FILE", key_file)];
        if let Some(p) = placement {
            extra.push(("YOUTUBE_API_KEY_IN", p));
        }
        let mut source = Source::once(&stack, &api, &topic, &extra);
        assert!(
            source.wait(Duration::from_secs(60)).await.success(),
            "{}",
            source.logs()
        );
        let requests = api.video_requests();
        assert!(requests >= 2);
        let keys = api.keys_seen();
        assert!(keys.len() >= requests, "{keys:?}");
        assert!(keys.iter().all(|k| k == "file-key-1234"), "{keys:?}");
        assert_eq!(
            api.keys_in_header(),
            if in_header { requests } else { 0 },
            "{placement:?}"
        );
        assert!(!source.logs().contains("file-key-1234"));
    }
    let _ = std::fs::remove_file(&key_file);
}

/// SIGTERM lets a poll in flight finish (up to SHUTDOWN_GRACE); a second signal exits at once,
/// with code 130, for an operator who does not want to wait.
#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 50);
    api.set_delay(Some(Duration::from_secs(20)));
    let topic = unique("test-");
    let mut source = Source::spawn(&stack, &api, &topic, &[("SHUTDOWN_GRACE", "60s")]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api.category_requests() + api.video_requests() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "{}", source.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    source.sigterm();
    source
        .wait_for_log("Shutdown requested", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        source.child.try_wait().unwrap().is_none(),
        "the first signal waits for the poll in flight"
    );
    let started = std::time::Instant::now();
    source.sigterm();
    let status = source.wait(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(130), "{}", source.logs());
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// The state topic is input too: a success recorded in the year 9999 (a wrong clock, a
/// hand-written record) counts as now, with a warning, and polls go on one interval later;
/// before, the region was never polled again while the source reported ready.
#[tokio::test]
async fn a_state_record_from_the_future_is_clamped_and_polls_continue() {
    use rdkafka::producer::FutureRecord;
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 50);
    let topic = unique("test-");
    let state_topic = format!("{topic}.source-state");
    stack
        .create_named_topic(
            &state_topic,
            1,
            std::collections::HashMap::from([("cleanup.policy", "compact")]),
        )
        .await
        .unwrap();
    let p = stack.producer(&[]);
    p.send(
        FutureRecord::to(&state_topic)
            .key("FR")
            .payload(r#"{"region":"FR","last_success_at":"9999-12-31T23:59:59Z","videos":50}"#),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut source = Source::spawn(&stack, &api, &topic, &[("POLL_INTERVAL", "2s")]);
    source
        .wait_for_log("Poll published", Duration::from_secs(30))
        .await;
    assert!(source.logs().contains("in the future"), "{}", source.logs());
    source.sigterm();
    assert!(source.wait(Duration::from_secs(30)).await.success());
}

/// A rejected key in long-running mode (not --once): the source keeps running, `/readyz` names
/// the API, metrics are still served and count the outcome `key_rejected` (what the
/// `YoutubeApiKeyRejected` alert reads), and nothing is published.
#[tokio::test]
async fn a_rejected_key_in_long_running_mode_fails_readiness_and_keeps_serving_metrics() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 50);
    api.push_faults([Fault::Status(400, "keyInvalid")]);
    let topic = unique("test-");
    let mut source = Source::spawn(&stack, &api, &topic, &[]);
    source
        .wait_for_log("refused the key", Duration::from_secs(30))
        .await;
    let (status, body) = source.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("youtube_api"), "{body}");
    let (status, m) = source.get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric_sample(
            &m,
            "source_polls_total",
            &[("region", "FR"), ("outcome", "key_rejected")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric_sample(&m, "source_ready", &[]), Some(0.0), "{m}");
    assert!(
        source.child.try_wait().unwrap().is_none(),
        "it keeps running"
    );
    assert_eq!(api.video_requests(), 1, "a rejected key is not retried");
    source.sigterm();
    assert!(source.wait(Duration::from_secs(30)).await.success());
    source.assert_key_not_logged();
    assert!(read_topic(&stack, &topic).await.is_empty());
}

/// The quota plan at start: regions and an interval over YOUTUBE_DAILY_QUOTA are refused with
/// the numbers and the ways out (exit 2, nothing polled); `POLL_INTERVAL=auto` picks an
/// interval that fits, says so, and exports the plan as a metric.
#[tokio::test]
async fn a_plan_over_the_quota_is_refused_and_auto_fits_it() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    for r in ["FR", "US", "JP"] {
        api.set_chart(r, 50);
    }
    let regions = ("YOUTUBE_REGIONS", "FR,US,JP");
    let quota = ("YOUTUBE_DAILY_QUOTA", "10000");
    let topic = unique("test-");
    let mut refused = Source::spawn(
        &stack,
        &api,
        &topic,
        &[regions, quota, ("POLL_INTERVAL", "90s")],
    );
    let status = refused.wait(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{}", refused.logs());
    let logs = refused.logs();
    // 3 regions x (960 polls x 4 pages + 1) = 11,523 units a day.
    assert!(
        logs.contains("11523") && logs.contains("YOUTUBE_DAILY_QUOTA=10000"),
        "{logs}"
    );
    assert!(logs.contains("POLL_INTERVAL=auto"), "{logs}");
    assert_eq!(api.video_requests(), 0, "nothing polled");

    let mut auto = Source::spawn(
        &stack,
        &api,
        &topic,
        &[regions, quota, ("POLL_INTERVAL", "auto")],
    );
    auto.wait_for_log("Quota plan", Duration::from_secs(30))
        .await;
    let plan = auto
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "Quota plan")
        .unwrap();
    assert_eq!(plan["interval_chosen_by_auto"], true);
    let units = plan["units_per_day"].as_u64().unwrap();
    assert!(units <= 9000, "{plan}");
    let (_, m) = auto.get("/metrics").await;
    assert_eq!(
        metric_sample(&m, "source_quota_plan_units_per_day", &[]),
        Some(units as f64)
    );
    auto.wait_for_log("Poll published", Duration::from_secs(30))
        .await;
    auto.sigterm();
    assert!(auto.wait(Duration::from_secs(30)).await.success());
}

/// A subject whose registered version our schema cannot read under BACKWARD (the stack's rule,
/// Confluent's default): the source stops at start with an error naming the subject and the
/// way out, exit code 1, and never calls the API.
#[tokio::test]
async fn a_registry_refusing_the_schema_as_incompatible_stops_the_source_at_start() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 20);
    let topic = unique("test-");
    // Same record name, one field ours lacks and none of ours: ours (the reader) needs video_id,
    // which data written under this version has not.
    let old = serde_json::json!({
        "type": "record", "name": "TrendingVideo", "namespace": "io.youtube_trending",
        "fields": [{"name": "legacy", "type": "string"}]
    });
    let registered = reqwest::Client::new()
        .post(format!(
            "{}/subjects/{topic}-value/versions",
            stack.registry_url
        ))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(&serde_json::json!({ "schema": old.to_string() }))
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success(), "{registered:?}");

    let mut source = Source::spawn(&stack, &api, &topic, &[]);
    let status = source.wait(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1), "{}", source.logs());
    let logs = source.logs();
    assert!(
        logs.contains(&format!(
            "the schema registry refused the TrendingVideo schema for subject `{topic}-value`"
        )) && logs.contains("BACKWARD compatible"),
        "{logs}"
    );
    assert_eq!(api.video_requests(), 0, "no poll without a schema");
    source.assert_key_not_logged();
}

const ADMIN_TOKEN: &str = "source-admin-token-9d3e";

/// Status and JSON body of a control API call, with the admin token if `token`.
async fn control(
    source: &Source,
    method: reqwest::Method,
    path: &str,
    token: bool,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{}{path}", source.http_addr().await));
    if token {
        request = request.bearer_auth(ADMIN_TOKEN);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

async fn wait_polls(source: &Source, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while source.logs().matches("\"Poll published\"").count() < n {
        assert!(tokio::time::Instant::now() < deadline, "{}", source.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_control_api_polls_now_and_a_pause_outlives_a_restart() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 50);
    api.set_chart("US", 40);
    let topic = unique("test-");
    let env = [
        ("POLL_INTERVAL", "1h"),
        ("YOUTUBE_REGIONS", "FR,US"),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    let mut first = Source::spawn(&stack, &api, &topic, &env);
    wait_polls(&first, 2).await;
    let (code, s) = control(&first, reqwest::Method::GET, "/status", false).await;
    assert_eq!(
        (code, &s["connector"]["state"]),
        (200, &json!("RUNNING")),
        "{s}"
    );
    let regions = s["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2, "{s}");
    for r in regions {
        assert_eq!(r["state"], "SCHEDULED", "{s}");
        assert!(r["last_success_at"].is_string(), "{s}");
        // One categories call and one page of the chart.
        assert_eq!(r["quota_units_today"], 2, "{s}");
        assert!(r["last_error"].is_null(), "{s}");
    }
    assert_eq!(s["quota"]["units_spent_today"], 4, "{s}");

    // Poll now: refused for a region the source does not poll, and without the token.
    let (code, body) = control(&first, reqwest::Method::POST, "/regions/XX/poll", true).await;
    assert_eq!((code, &body["error_code"]), (404, &json!(404)), "{body}");
    let (code, _) = control(&first, reqwest::Method::POST, "/regions/FR/poll", false).await;
    assert_eq!(code, 401);
    let (code, body) = control(&first, reqwest::Method::POST, "/regions/FR/poll", true).await;
    assert_eq!(code, 202, "{body}");
    wait_polls(&first, 3).await;
    assert_eq!(read_topic(&stack, &topic).await.len(), 50 + 40 + 50);

    // Paused: no poll starts, asked or due; kept in the state topic.
    let (code, _) = control(&first, reqwest::Method::PUT, "/pause", true).await;
    assert_eq!(code, 202);
    first
        .wait_for_log("Target state recorded", Duration::from_secs(30))
        .await;
    let (_, s) = control(&first, reqwest::Method::GET, "/status", false).await;
    assert_eq!(s["connector"]["state"], "PAUSED", "{s}");
    let (code, body) = control(&first, reqwest::Method::POST, "/regions/US/poll", true).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("paused"),
        "{body}"
    );
    first.sigterm();
    assert!(first.wait(Duration::from_secs(30)).await.success());

    // Restarted with a 1 s interval, every region overdue: still paused.
    let requests = api.video_requests();
    let mut second = Source::spawn(
        &stack,
        &api,
        &topic,
        &[env[1], env[2], ("POLL_INTERVAL", "1s")],
    );
    second
        .wait_for_log("Paused (the state topic says so)", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(api.video_requests(), requests, "polled while paused");
    let (_, s) = control(&second, reqwest::Method::GET, "/status", false).await;
    assert_eq!(s["connector"]["state"], "PAUSED", "{s}");
    assert!(
        s["regions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "PAUSED"),
        "{s}"
    );
    let (code, offsets) = control(&second, reqwest::Method::GET, "/offsets", false).await;
    assert_eq!(code, 200);
    let mut listed: Vec<(String, i64)> = offsets["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            assert!(o["offset"]["last_success_at"].is_string(), "{offsets}");
            (
                o["partition"]["region"].as_str().unwrap().to_string(),
                o["offset"]["videos"].as_i64().unwrap(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(listed, [("FR".to_string(), 50), ("US".to_string(), 40)]);

    let (code, _) = control(&second, reqwest::Method::PUT, "/resume", true).await;
    assert_eq!(code, 202);
    wait_polls(&second, 2).await;
    let (_, s) = control(&second, reqwest::Method::GET, "/status", false).await;
    assert_eq!(s["connector"]["state"], "RUNNING", "{s}");
    second.sigterm();
    assert!(second.wait(Duration::from_secs(30)).await.success());
    for source in [&first, &second] {
        source.assert_key_not_logged();
        assert!(
            !source.logs().contains(ADMIN_TOKEN),
            "the admin token reached the logs"
        );
    }
}

/// Two sources side by side on one state topic, each its own transactional id: a pause of one
/// is that source's only, across both restarts.
#[tokio::test]
async fn a_pause_of_one_of_two_sources_leaves_the_other_running_across_restarts() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 10);
    api.set_chart("US", 10);
    let topic = unique("test-");
    let env = |id: &'static str, region: &'static str, interval: &'static str| {
        [
            ("KAFKA_TRANSACTIONAL_ID", id),
            ("YOUTUBE_REGIONS", region),
            ("POLL_INTERVAL", interval),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ]
    };
    let mut a = Source::spawn(&stack, &api, &topic, &env("source-a", "FR", "1h"));
    wait_polls(&a, 1).await;
    let mut b = Source::spawn(&stack, &api, &topic, &env("source-b", "US", "1h"));
    wait_polls(&b, 1).await;
    let (code, _) = control(&a, reqwest::Method::PUT, "/pause", true).await;
    assert_eq!(code, 202);
    a.wait_for_log("Target state recorded", Duration::from_secs(30))
        .await;
    // B paused and resumed: its records come last in the state topic.
    for (method, recorded) in [(reqwest::Method::PUT, 1), (reqwest::Method::PUT, 2)] {
        let path = if recorded == 1 { "/pause" } else { "/resume" };
        let (code, _) = control(&b, method, path, true).await;
        assert_eq!(code, 202);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while b.logs().matches("Target state recorded").count() < recorded {
            assert!(tokio::time::Instant::now() < deadline, "{}", b.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for s in [&mut a, &mut b] {
        s.sigterm();
        assert!(s.wait(Duration::from_secs(30)).await.success());
    }

    // Both restarted with every region overdue: B polls, A stays paused.
    let b = Source::spawn(&stack, &api, &topic, &env("source-b", "US", "1s"));
    let a = Source::spawn(&stack, &api, &topic, &env("source-a", "FR", "1s"));
    a.wait_for_log("Paused (the state topic says so)", Duration::from_secs(60))
        .await;
    wait_polls(&b, 1).await;
    let (_, s) = control(&b, reqwest::Method::GET, "/status", false).await;
    assert_eq!(s["connector"]["state"], "RUNNING", "{s}");
    assert!(!b.logs().contains("Paused"), "{}", b.logs());
    let (_, s) = control(&a, reqwest::Method::GET, "/status", false).await;
    assert_eq!(s["connector"]["state"], "PAUSED", "{s}");
    assert_eq!(a.logs().matches("\"Poll published\"").count(), 0);
    for mut s in [a, b] {
        s.sigterm();
        assert!(s.wait(Duration::from_secs(30)).await.success());
    }
}

#[tokio::test]
async fn the_control_api_fuzzed_from_its_openapi_document_answers_no_5xx() {
    let stack = Stack::from_env().unwrap();
    let api = StandIn::start().await;
    api.set_chart("FR", 20);
    api.set_chart("US", 20);
    let topic = unique("test-");
    let mut source = Source::spawn(
        &stack,
        &api,
        &topic,
        &[
            ("POLL_INTERVAL", "1h"),
            ("YOUTUBE_REGIONS", "FR,US"),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    wait_polls(&source, 2).await;
    let url = format!("http://{}", source.http_addr().await);
    let fuzzed = tokio::task::spawn_blocking(move || {
        plumbing::testing::fuzz_api("openapi/source.yaml", &url, ADMIN_TOKEN, 100)
    })
    .await
    .unwrap();
    println!("{}", fuzzed.output);
    assert!(fuzzed.passed, "{}", fuzzed.output);
    assert!(fuzzed.cases >= 100, "{}", fuzzed.output);
    let (code, _) = source.get("/healthz").await;
    assert_eq!(code, 200);
    source.sigterm();
    assert!(source.wait(Duration::from_secs(30)).await.success());
    assert!(!source.logs().contains(ADMIN_TOKEN));
}
