//! The HTTP client: `videos.list?chart=mostPopular` with its pagination and
//! `videoCategories.list`, each call retried with backoff while it fails transiently.

use std::collections::HashMap;
use std::time::Duration;

use plumbing::backoff::{Backoff, Retriable};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};

use super::error::{network, ApiError};
use super::response::{CategoryListResponse, ErrorResponse, Video, VideoListResponse};
use crate::config::KeyPlacement;
use crate::events::{ApiCalled, ApiRetrying};

/// The API answers at most 50 items per page.
const PAGE_SIZE: &str = "50";
/// A chart has at most 200 videos (4 pages); more pages than this means a looping token.
const MAX_PAGES: usize = 10;

/// Which API method, for metrics labels.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    Videos,
    VideoCategories,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Videos => "videos",
            Endpoint::VideoCategories => "videoCategories",
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    key: SecretString,
    key_in: KeyPlacement,
    backoff: Backoff,
    max_attempts: u32,
    quota: std::sync::Arc<crate::quota::QuotaMeter>,
}

/// What the client needs of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub base_url: String,
    pub key_in: KeyPlacement,
    /// Of one request.
    pub timeout: std::time::Duration,
    /// Between attempts of one call.
    pub backoff: Backoff,
    pub max_attempts: u32,
}

impl Client {
    pub fn new(
        settings: Settings,
        key: SecretString,
        quota: std::sync::Arc<crate::quota::QuotaMeter>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            // The API never redirects, and reqwest would carry `x-goog-api-key` to whatever
            // host a redirect names.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "youtube-trending-source/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(Client {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            key,
            key_in: settings.key_in,
            backoff: settings.backoff,
            max_attempts: settings.max_attempts,
            quota,
        })
    }

    /// Fetches every page of a region's chart, in order. All or nothing: any failure fails the
    /// whole chart, so a partial chart is never published.
    pub async fn chart(&self, region: &str) -> Result<Vec<Video>, ApiError> {
        let mut videos = Vec::with_capacity(200);
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .with_retries(Endpoint::Videos, region, || {
                    self.videos_page(region, token.as_deref())
                })
                .await?;
            videos.extend(page.items);
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(videos),
            }
        }
        Err(ApiError::Malformed(format!(
            "videos.list: more than {MAX_PAGES} pages, the page tokens seem to loop"
        )))
    }

    /// Category id → name for a region.
    pub async fn categories(&self, region: &str) -> Result<HashMap<String, String>, ApiError> {
        self.with_retries(Endpoint::VideoCategories, region, || async {
            let body = self
                .get(
                    Endpoint::VideoCategories,
                    region,
                    &[("part", "snippet"), ("regionCode", region)],
                )
                .await?;
            let list: CategoryListResponse = serde_json::from_slice(&body)
                .map_err(|e| ApiError::Malformed(format!("videoCategories.list: {e}")))?;
            Ok(list
                .items
                .into_iter()
                .filter_map(|c| c.snippet.map(|s| (c.id, s.title)))
                .collect())
        })
        .await
    }

    /// One page of a region's chart.
    async fn videos_page(
        &self,
        region: &str,
        page_token: Option<&str>,
    ) -> Result<VideoListResponse, ApiError> {
        let mut query = vec![
            ("part", "snippet,contentDetails,statistics"),
            ("chart", "mostPopular"),
            ("regionCode", region),
            ("maxResults", PAGE_SIZE),
        ];
        if let Some(t) = page_token {
            query.push(("pageToken", t));
        }
        let body = self.get(Endpoint::Videos, region, &query).await?;
        let page: VideoListResponse = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Malformed(format!("videos.list: {e}")))?;
        if page.items.iter().any(|v| v.id.is_empty()) {
            return Err(ApiError::Malformed(
                "videos.list: an item has an empty id".into(),
            ));
        }
        Ok(page)
    }

    /// Runs `call` until it succeeds, fails permanently, or has failed `max_attempts` times,
    /// sleeping a backoff (or the server's Retry-After) between attempts.
    async fn with_retries<T, F, Fut>(
        &self,
        endpoint: Endpoint,
        region: &str,
        mut call: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retriable() && attempt + 1 < self.max_attempts => {
                    let delay = match &e {
                        ApiError::RateLimited {
                            retry_after: Some(d),
                        } => (*d).min(self.backoff.max),
                        _ => self.backoff.delay(attempt),
                    };
                    ApiRetrying {
                        endpoint: endpoint.as_str(),
                        region,
                        error: &e,
                        kind: e.kind(),
                        attempt: attempt + 1,
                        delay,
                    }
                    .emit();
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn get(
        &self,
        endpoint: Endpoint,
        region: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<u8>, ApiError> {
        let mut request = self
            .http
            .get(format!("{}/{}", self.base_url, endpoint.as_str()))
            .query(query);
        request = match self.key_in {
            KeyPlacement::Query => request.query(&[("key", self.key.expose_secret())]),
            KeyPlacement::Header => request.header("x-goog-api-key", self.key.expose_secret()),
        };
        let sent = request.send().await;
        ApiCalled {
            endpoint: endpoint.as_str(),
            region,
            status: sent.as_ref().ok().map(|r| r.status().as_u16()),
            units_today: self.quota.spend(region, chrono::Utc::now()),
        }
        .emit();
        let response = sent.map_err(network)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_capped(response).await?;
        if status.is_success() {
            Ok(body.to_vec())
        } else {
            Err(classify(status, &body, region, retry_after))
        }
    }
}

/// The largest response body read: a page of 50 videos is well under 1 MiB; a broken or hostile
/// proxy must not make the source buffer without limit.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, ApiError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(network)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn too_large() -> ApiError {
    ApiError::Malformed(format!(
        "the response body is larger than {} MiB",
        MAX_RESPONSE_BYTES >> 20
    ))
}

/// Turns an error status and body into an [`ApiError`]. The API's `reason` decides, not the
/// status alone: `videoChartNotFound` is documented as 400 and `quotaExceeded` as 403.
fn classify(
    status: StatusCode,
    body: &[u8],
    region: &str,
    retry_after: Option<Duration>,
) -> ApiError {
    let parsed: Option<ErrorResponse> = serde_json::from_slice(body).ok();
    let reason = parsed
        .as_ref()
        .and_then(|e| e.error.errors.iter().find_map(|i| i.reason.clone()))
        .unwrap_or_default();
    let message = parsed
        .as_ref()
        .and_then(|e| e.error.message.clone())
        .unwrap_or_default();
    let key_detail = parsed.as_ref().and_then(|e| {
        e.error.details.iter().find_map(|d| {
            d.reason
                .clone()
                .filter(|r| r.starts_with("API_KEY_") || r == "SERVICE_DISABLED")
        })
    });
    if let Some(reason) = key_detail {
        return ApiError::KeyRejected { reason };
    }
    match reason.as_str() {
        "quotaExceeded" | "dailyLimitExceeded" => return ApiError::QuotaExceeded,
        "videoChartNotFound" => {
            return ApiError::ChartNotFound {
                region: region.to_string(),
            }
        }
        "keyInvalid" | "keyExpired" | "accessNotConfigured" | "ipRefererBlocked" => {
            return ApiError::KeyRejected { reason }
        }
        "rateLimitExceeded" | "userRateLimitExceeded" => {
            return ApiError::RateLimited { retry_after }
        }
        _ => {}
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return ApiError::RateLimited { retry_after };
    }
    if status.is_redirection() {
        // Not followed (see Client::new): the configured base URL is wrong or a proxy misbehaves.
        return ApiError::Rejected {
            status: status.as_u16(),
            reason: "redirect not followed".into(),
            message: "the API answered with a redirect; check YOUTUBE_API_BASE_URL".into(),
        };
    }
    if status.is_server_error() {
        let reason = if reason.is_empty() {
            "no reason given".into()
        } else {
            reason
        };
        return ApiError::Server {
            status: status.as_u16(),
            reason,
        };
    }
    if status == StatusCode::UNAUTHORIZED {
        return ApiError::KeyRejected {
            reason: if reason.is_empty() {
                "unauthorized".into()
            } else {
                reason
            },
        };
    }
    ApiError::Rejected {
        status: status.as_u16(),
        reason: if reason.is_empty() {
            "no reason given".into()
        } else {
            reason
        },
        message: truncate(&message, 300),
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_body(code: u16, reason: &str) -> Vec<u8> {
        serde_json::json!({"error": {"code": code, "message": "m", "errors": [
            {"message": "m", "domain": "youtube.quota", "reason": reason}]}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn errors_are_classified_by_reason_not_status() {
        let c = |s: u16, r: &str| {
            classify(
                StatusCode::from_u16(s).unwrap(),
                &error_body(s, r),
                "FR",
                None,
            )
        };
        assert!(matches!(c(403, "quotaExceeded"), ApiError::QuotaExceeded));
        assert!(matches!(
            c(400, "videoChartNotFound"),
            ApiError::ChartNotFound { .. }
        ));
        assert!(matches!(
            c(404, "videoChartNotFound"),
            ApiError::ChartNotFound { .. }
        ));
        assert!(matches!(c(400, "keyInvalid"), ApiError::KeyRejected { .. }));
        assert!(matches!(
            c(403, "rateLimitExceeded"),
            ApiError::RateLimited { .. }
        ));
        assert!(matches!(
            c(400, "invalidParameter"),
            ApiError::Rejected { status: 400, .. }
        ));
        assert!(matches!(
            c(503, "backendError"),
            ApiError::Server { status: 503, .. }
        ));
        let no_body = classify(StatusCode::BAD_GATEWAY, b"<html>", "FR", None);
        assert!(matches!(no_body, ApiError::Server { status: 502, .. }));
        let too_many = classify(
            StatusCode::TOO_MANY_REQUESTS,
            b"",
            "FR",
            Some(Duration::from_secs(3)),
        );
        assert!(
            matches!(too_many, ApiError::RateLimited { retry_after: Some(d) } if d.as_secs() == 3)
        );
    }

    #[test]
    fn an_invalid_key_in_googles_newer_error_model_is_a_rejected_key() {
        // What googleapis.com answers for a wrong key: `badRequest` in `errors`, the key only in
        // `details`.
        let body = serde_json::json!({"error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "errors": [{"message": "API key not valid. Please pass a valid API key.",
                        "domain": "global", "reason": "badRequest"}],
            "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                         "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                         "metadata": {"service": "youtube.googleapis.com"}}]}});
        let e = classify(
            StatusCode::BAD_REQUEST,
            body.to_string().as_bytes(),
            "FR",
            None,
        );
        assert!(
            matches!(&e, ApiError::KeyRejected { reason } if reason == "API_KEY_INVALID"),
            "{e:?}"
        );
    }

    #[test]
    fn only_transient_errors_are_retriable() {
        assert!(ApiError::Network("x".into()).is_retriable());
        assert!(ApiError::Malformed("x".into()).is_retriable());
        assert!(ApiError::RateLimited { retry_after: None }.is_retriable());
        assert!(!ApiError::QuotaExceeded.is_retriable());
        assert!(!ApiError::KeyRejected {
            reason: "keyInvalid".into()
        }
        .is_retriable());
        assert!(!ApiError::ChartNotFound {
            region: "XX".into()
        }
        .is_retriable());
    }

    #[test]
    fn a_documented_response_parses() {
        let body = r#"{"kind":"youtube#videoListResponse","etag":"e","nextPageToken":"CAUQAA",
          "pageInfo":{"totalResults":200,"resultsPerPage":50},
          "items":[{"kind":"youtube#video","etag":"x","id":"abc",
            "snippet":{"publishedAt":"2026-11-24T17:00:08Z","channelId":"UC1","title":"Été 🎉",
              "description":"","thumbnails":{"default":{"url":"https://i/d.jpg","width":120,"height":90},
              "maxres":{"url":"https://i/m.jpg","width":1280,"height":720}},"channelTitle":"C",
              "categoryId":"10","liveBroadcastContent":"none",
              "localized":{"title":"t","description":""},"defaultAudioLanguage":"fr"},
            "contentDetails":{"duration":"PT4M13S","dimension":"2d","definition":"hd",
              "caption":"false","licensedContent":true,"contentRating":{},"projection":"rectangular"},
            "statistics":{"viewCount":"123","favoriteCount":"0","commentCount":"5"}}]}"#;
        let page: VideoListResponse = serde_json::from_str(body).unwrap();
        assert_eq!(page.next_page_token.as_deref(), Some("CAUQAA"));
        let v = &page.items[0];
        assert_eq!(v.statistics.as_ref().unwrap().like_count, None);
        assert_eq!(v.snippet.as_ref().unwrap().tags, None);
        assert_eq!(v.snippet.as_ref().unwrap().title.as_deref(), Some("Été 🎉"));
    }
}
