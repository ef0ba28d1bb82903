//! The source connector: YouTube Data API v3 `videos.list?chart=mostPopular` → Avro → Kafka.
//!
//! Stages, one module each (being built): `config`, `youtube`, `schedule`, `record`, `produce`.

pub mod config;
