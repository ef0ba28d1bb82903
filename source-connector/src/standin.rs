//! An HTTP stand-in for the YouTube Data API v3 (feature `standin`), the one fake the tests may
//! use, and the sample data source of the demo (`youtube-standin` binary). It answers
//! `videos.list?chart=mostPopular` (with `nextPageToken` pagination, 50 per page) and
//! `videoCategories.list` in the documented format, and can be told to fail.
//!
//! Its charts are built like real ones: counts as strings, optional fields sometimes absent
//! (hidden likes, disabled comments, no tags, no language), French titles with accents and
//! emoji, long descriptions, live streams (`P0D`), several thumbnail sizes.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

/// A failure to serve instead of the next `videos.list` answer.
#[derive(Debug, Clone)]
pub enum Fault {
    /// An error status with the API's error body and `reason`.
    Status(u16, &'static str),
    /// 429 with a `Retry-After` header, in seconds.
    TooManyRequests { retry_after_s: u64 },
    /// The right answer cut in the middle.
    Truncated,
    /// Not JSON at all.
    NotJson,
    /// JSON without `items`.
    MissingItems,
    /// Answer after this delay (longer than the client's timeout = a timeout).
    Delay(Duration),
    /// Start the right answer, then break the connection mid-body.
    Reset,
    /// A 200 whose JSON body is this many bytes (padding after the right answer's fields),
    /// sent as a stream, as a broken or hostile proxy might.
    Huge(usize),
    /// A 302 to this URL.
    Redirect(String),
}

#[derive(Default)]
struct Inner {
    charts: HashMap<String, Vec<Value>>,
    faults: VecDeque<Fault>,
    /// Faults served only for this page token (e.g. a page missing in the middle).
    page_faults: HashMap<String, VecDeque<Fault>>,
    video_requests: usize,
    category_requests: usize,
    keys_seen: Vec<String>,
    /// Requests whose key came in the `x-goog-api-key` header rather than the query.
    keys_in_header: usize,
    /// Delay before every answer (to keep a poll in flight).
    delay: Option<Duration>,
}

#[derive(Clone)]
pub struct StandIn {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl StandIn {
    /// Serves on a free loopback port.
    pub async fn start() -> StandIn {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> StandIn {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/youtube/v3/videos", get(videos))
            .route("/youtube/v3/videoCategories", get(categories))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("binding the stand-in to {addr}: {e}"));
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        StandIn {
            url: format!("http://{addr}/youtube/v3"),
            inner,
        }
    }

    /// Serves a chart of `n` generated videos for `region`.
    pub fn set_chart(&self, region: &str, n: usize) -> Vec<Value> {
        let chart: Vec<Value> = (0..n).map(|i| sample_video(region, i)).collect();
        self.inner
            .lock()
            .unwrap()
            .charts
            .insert(region.to_string(), chart.clone());
        chart
    }

    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.lock().unwrap().faults.extend(faults);
    }

    /// Faults served for one page (`page-1` is the second page).
    pub fn push_page_faults(&self, token: &str, faults: impl IntoIterator<Item = Fault>) {
        self.inner
            .lock()
            .unwrap()
            .page_faults
            .entry(token.to_string())
            .or_default()
            .extend(faults);
    }

    pub fn set_delay(&self, delay: Option<Duration>) {
        self.inner.lock().unwrap().delay = delay;
    }

    pub fn video_requests(&self) -> usize {
        self.inner.lock().unwrap().video_requests
    }

    pub fn category_requests(&self) -> usize {
        self.inner.lock().unwrap().category_requests
    }

    pub fn keys_seen(&self) -> Vec<String> {
        self.inner.lock().unwrap().keys_seen.clone()
    }

    /// How many `videos.list` requests carried the key in the `x-goog-api-key` header.
    pub fn keys_in_header(&self) -> usize {
        self.inner.lock().unwrap().keys_in_header
    }
}

const PAGE: usize = 50;

fn error_body(code: u16, reason: &str) -> Value {
    if reason == "API_KEY_INVALID" {
        // What googleapis.com answers today for a wrong key: the reason only in `details`.
        let message = "API key not valid. Please pass a valid API key.";
        return json!({"error": {"code": code, "message": message,
            "errors": [{"message": message, "domain": "global", "reason": "badRequest"}],
            "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason, "domain": "googleapis.com",
                "metadata": {"service": "youtube.googleapis.com"}}]}});
    }
    let (domain, message) = match reason {
        "quotaExceeded" => ("youtube.quota", "The request cannot be completed because you have exceeded your <a href=\"/youtube/v3/getting-started#quota\">quota</a>."),
        "keyInvalid" => ("usageLimits", "API key not valid. Please pass a valid API key."),
        "videoChartNotFound" => ("youtube.video", "The requested video chart is not supported or is not available."),
        _ => ("global", "Backend Error"),
    };
    json!({"error": {"code": code, "message": message,
        "errors": [{"message": message, "domain": domain, "reason": reason}]}})
}

fn serve_fault(fault: Fault, good: Value) -> Response {
    match fault {
        Fault::Status(code, reason) => (
            StatusCode::from_u16(code).unwrap(),
            axum::Json(error_body(code, reason)),
        )
            .into_response(),
        Fault::TooManyRequests { retry_after_s } => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after_s.to_string())],
            axum::Json(error_body(429, "rateLimitExceeded")),
        )
            .into_response(),
        Fault::Truncated => {
            let text = good.to_string();
            let cut = text.len() / 2;
            let mut end = cut;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                text[..end].to_string(),
            )
                .into_response()
        }
        Fault::NotJson => (StatusCode::OK, "<html>Service Unavailable</html>").into_response(),
        Fault::MissingItems => {
            axum::Json(json!({"kind": "youtube#videoListResponse", "etag": "x"})).into_response()
        }
        Fault::Delay(_) => axum::Json(good).into_response(),
        Fault::Reset => {
            let text = good.to_string();
            let head = text.as_bytes()[..text.len() / 3].to_vec();
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
                Ok(head),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "stand-in: connection reset",
                )),
            ];
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                axum::body::Body::from_stream(futures::stream::iter(chunks)),
            )
                .into_response()
        }
        Fault::Huge(bytes) => {
            let head = b"{\"kind\":\"youtube#videoListResponse\",\"padding\":\"".to_vec();
            let chunk = vec![b'x'; 64 * 1024];
            let n = bytes.saturating_sub(head.len() + 2) / chunk.len();
            let chunks = std::iter::once(head)
                .chain(std::iter::repeat_n(chunk, n))
                .chain(std::iter::once(b"\"}".to_vec()))
                .map(Ok::<_, std::io::Error>);
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                axum::body::Body::from_stream(futures::stream::iter(chunks)),
            )
                .into_response()
        }
        Fault::Redirect(to) => (StatusCode::FOUND, [("location", to)]).into_response(),
    }
}

fn key_of(q: &HashMap<String, String>, headers: &HeaderMap) -> String {
    q.get("key").cloned().unwrap_or_else(|| {
        headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    })
}

async fn videos(
    State(inner): State<Arc<Mutex<Inner>>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let region = q.get("regionCode").cloned().unwrap_or_default();
    let token = q.get("pageToken").cloned();
    let page: usize = token
        .as_deref()
        .and_then(|t| t.strip_prefix("page-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let (fault, delay, chart) = {
        let mut s = inner.lock().unwrap();
        s.video_requests += 1;
        s.keys_seen.push(key_of(&q, &headers));
        if !q.contains_key("key") && headers.contains_key("x-goog-api-key") {
            s.keys_in_header += 1;
        }
        let fault = match token.as_ref().and_then(|t| s.page_faults.get_mut(t)) {
            Some(queue) if !queue.is_empty() => queue.pop_front(),
            _ => s.faults.pop_front(),
        };
        (fault, s.delay, s.charts.get(&region).cloned())
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(Fault::Delay(d)) = &fault {
        tokio::time::sleep(*d).await;
    }
    if q.get("chart").map(String::as_str) != Some("mostPopular")
        || q.get("part").map(String::as_str) != Some("snippet,contentDetails,statistics")
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(error_body(400, "invalidParameter")),
        )
            .into_response();
    }
    let Some(chart) = chart else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(error_body(400, "videoChartNotFound")),
        )
            .into_response();
    };
    let items: Vec<Value> = chart.iter().skip(page * PAGE).take(PAGE).cloned().collect();
    let mut body = json!({
        "kind": "youtube#videoListResponse",
        "etag": format!("etag-{region}-{page}"),
        "items": items,
        "pageInfo": {"totalResults": chart.len(), "resultsPerPage": PAGE},
    });
    if (page + 1) * PAGE < chart.len() {
        body["nextPageToken"] = json!(format!("page-{}", page + 1));
    }
    if page > 0 {
        body["prevPageToken"] = json!(format!("page-{}", page - 1));
    }
    match fault {
        Some(f) => serve_fault(f, body),
        None => axum::Json(body).into_response(),
    }
}

async fn categories(
    State(inner): State<Arc<Mutex<Inner>>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    {
        let mut s = inner.lock().unwrap();
        s.category_requests += 1;
        s.keys_seen.push(key_of(&q, &headers));
    }
    let items: Vec<Value> = CATEGORIES
        .iter()
        .map(|(id, title)| {
            json!({"kind": "youtube#videoCategory", "etag": "c", "id": id,
                   "snippet": {"title": title, "assignable": true,
                               "channelId": "UCBR8-60-B28hp2BmDPdntcQ"}})
        })
        .collect();
    axum::Json(json!({"kind": "youtube#videoCategoryListResponse", "etag": "cats", "items": items}))
        .into_response()
}

pub const CATEGORIES: &[(&str, &str)] = &[
    ("1", "Film & Animation"),
    ("10", "Music"),
    ("17", "Sports"),
    ("20", "Gaming"),
    ("24", "Entertainment"),
    ("25", "News & Politics"),
];

const TITLES: &[&str] = &[
    "Clip officiel — L'été éternel 🎉",
    "Résumé du match : PSG – OM (3-2) ⚽",
    "Bande-annonce VF « Les Misérables »",
    "Je teste la cuisine française 🇫🇷🥐",
    "LIVE 🔴 Soirée électorale",
    "Gaming: l'énigme du château 🏰",
];

/// A realistic item, deterministic in (region, index).
pub fn sample_video(region: &str, i: usize) -> Value {
    let id = format!("{}{:09}", region, i); // 11 characters, like real ids
    let title = format!("{} #{i}", TITLES[i % TITLES.len()]);
    let live = i % 17 == 5;
    let (cat, _) = CATEGORIES[i % CATEGORIES.len()];
    let mut snippet = json!({
        "publishedAt": format!("2026-11-{:02}T{:02}:{:02}:08Z", 1 + i % 24, i % 24, i % 60),
        "channelId": format!("UC{:022}", i),
        "title": title,
        "description": format!("Abonnez-vous ! Épisode {i}. ").repeat(1 + i % 40),
        "thumbnails": {
            "default": {"url": format!("https://i.ytimg.com/vi/{id}/default.jpg"), "width": 120, "height": 90},
            "medium": {"url": format!("https://i.ytimg.com/vi/{id}/mqdefault.jpg"), "width": 320, "height": 180},
            "high": {"url": format!("https://i.ytimg.com/vi/{id}/hqdefault.jpg"), "width": 480, "height": 360}
        },
        "channelTitle": format!("Chaîne n°{}", i % 50),
        "categoryId": cat,
        "liveBroadcastContent": if live { "live" } else { "none" },
        "localized": {"title": title, "description": "…"}
    });
    if !i.is_multiple_of(3) {
        snippet["tags"] = json!(["musique", format!("tag-{i}"), "été 2026"]);
    }
    if !i.is_multiple_of(4) {
        snippet["defaultLanguage"] = json!("fr");
        snippet["defaultAudioLanguage"] = json!("fr-FR");
    }
    if i.is_multiple_of(7) {
        snippet["thumbnails"]["maxres"] = json!({"url": format!("https://i.ytimg.com/vi/{id}/maxresdefault.jpg"), "width": 1280, "height": 720});
    }
    let duration = if live {
        "P0D".to_string()
    } else if i.is_multiple_of(11) {
        format!("P1DT{}H{}M", i % 24, i % 60)
    } else if i.is_multiple_of(5) {
        format!("PT{}H", 1 + i % 3)
    } else {
        format!("PT{}M{}S", i % 60, (i * 7) % 60)
    };
    let mut stats = json!({
        "viewCount": (1_000_000 - i * 1234).to_string(),
        "favoriteCount": "0"
    });
    if i % 6 != 1 {
        stats["likeCount"] = json!((50_000 - i * 17).to_string());
    }
    if i % 9 != 2 {
        stats["commentCount"] = json!((4_000 - i * 3).to_string());
    }
    json!({
        "kind": "youtube#video",
        "etag": format!("etag{i}"),
        "id": id,
        "snippet": snippet,
        "contentDetails": {
            "duration": duration,
            "dimension": "2d",
            "definition": if i.is_multiple_of(2) { "hd" } else { "sd" },
            "caption": if i.is_multiple_of(8) { "true" } else { "false" },
            "licensedContent": i.is_multiple_of(2),
            "contentRating": {},
            "projection": "rectangular"
        },
        "statistics": stats
    })
}
