//! The API's answers, as documented (https://developers.google.com/youtube/v3/docs/videos), and
//! its error bodies.

use std::collections::HashMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoListResponse {
    pub items: Vec<Video>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Video {
    pub id: String,
    pub snippet: Option<Snippet>,
    pub content_details: Option<ContentDetails>,
    pub statistics: Option<Statistics>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snippet {
    pub published_at: Option<chrono::DateTime<chrono::Utc>>,
    pub channel_id: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub thumbnails: HashMap<String, Thumbnail>,
    pub channel_title: Option<String>,
    pub tags: Option<Vec<String>>,
    pub category_id: Option<String>,
    pub live_broadcast_content: Option<String>,
    pub default_language: Option<String>,
    pub default_audio_language: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Thumbnail {
    pub url: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentDetails {
    pub duration: Option<String>,
    pub dimension: Option<String>,
    pub definition: Option<String>,
    /// The API sends `"true"` or `"false"` as a string.
    pub caption: Option<String>,
    pub licensed_content: Option<bool>,
}

/// Counts arrive as decimal strings; an absent field (hidden likes, disabled comments) stays
/// absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Statistics {
    pub view_count: Option<String>,
    pub like_count: Option<String>,
    pub favorite_count: Option<String>,
    pub comment_count: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct CategoryListResponse {
    pub(super) items: Vec<Category>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Category {
    pub(super) id: String,
    pub(super) snippet: Option<CategorySnippet>,
}

#[derive(Debug, Deserialize)]
pub(super) struct CategorySnippet {
    pub(super) title: String,
}

/// `{"error": {"code": 403, "message": "...", "errors": [{"reason": "quotaExceeded", ...}]}}`
#[derive(Debug, Deserialize)]
pub(super) struct ErrorResponse {
    pub(super) error: ErrorBody,
}

#[derive(Debug, Deserialize)]
pub(super) struct ErrorBody {
    pub(super) message: Option<String>,
    #[serde(default)]
    pub(super) errors: Vec<ErrorItem>,
    /// Google's newer error model, beside `errors`: an invalid key comes back as 400
    /// `badRequest` in `errors`, and only `details` says `API_KEY_INVALID`.
    #[serde(default)]
    pub(super) details: Vec<ErrorItem>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ErrorItem {
    pub(super) reason: Option<String>,
}
