//! The YouTube Data API v3 client: `videos.list?chart=mostPopular` with its pagination, and
//! `videoCategories.list`, with typed response structs and a typed error per failure kind.
//!
//! The API key travels in the `key` query parameter (or the `x-goog-api-key` header). reqwest
//! errors print the URL with its query, so every error leaving this module is stripped of its
//! URL, and nothing here formats a URL into a message.

mod client;
mod error;
mod response;

pub use client::{Client, Endpoint, Settings, MAX_RESPONSE_BYTES};
pub use error::ApiError;
pub use response::{ContentDetails, Snippet, Statistics, Thumbnail, Video, VideoListResponse};
