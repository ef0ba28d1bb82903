//! Why an API call failed, one variant per kind of failure, and which are worth retrying.

use std::time::Duration;

/// Why an API call failed. Messages never contain the request URL (it carries the key).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("network error talking to the YouTube API: {0}")]
    Network(String),
    #[error("the YouTube API answered HTTP {status} ({reason})")]
    Server { status: u16, reason: String },
    #[error("the YouTube API is rate limiting (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("the YouTube API answered an unreadable response: {0}")]
    Malformed(String),
    #[error("the daily YouTube API quota is spent (quotaExceeded)")]
    QuotaExceeded,
    #[error("YouTube has no most-popular chart for region {region} (videoChartNotFound)")]
    ChartNotFound { region: String },
    #[error("the YouTube API refused the key ({reason}): check YOUTUBE_API_KEY and that the YouTube Data API v3 is enabled for it")]
    KeyRejected { reason: String },
    #[error("the YouTube API refused the request: HTTP {status} ({reason}): {message}")]
    Rejected {
        status: u16,
        reason: String,
        message: String,
    },
}

impl plumbing::backoff::Retriable for ApiError {
    /// Transient failures, worth retrying soon: network, timeouts, 5xx, 429, malformed bodies.
    fn is_retriable(&self) -> bool {
        matches!(
            self,
            ApiError::Network(_)
                | ApiError::Server { .. }
                | ApiError::RateLimited { .. }
                | ApiError::Malformed(_)
        )
    }
}

impl ApiError {
    /// A short, bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Network(_) => "network",
            ApiError::Server { .. } => "server_error",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Malformed(_) => "malformed",
            ApiError::QuotaExceeded => "quota_exceeded",
            ApiError::ChartNotFound { .. } => "chart_not_found",
            ApiError::KeyRejected { .. } => "key_rejected",
            ApiError::Rejected { .. } => "rejected",
        }
    }
}

pub(super) fn network(e: reqwest::Error) -> ApiError {
    let e = e.without_url();
    let what = if e.is_timeout() {
        "timed out"
    } else {
        "failed"
    };
    // The causes (connection refused, DNS, TLS...) say what to fix; none of them holds the URL.
    let mut text = format!("request {what}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    ApiError::Network(text)
}
