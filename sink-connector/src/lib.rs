//! The sink connector: Kafka → Avro decode → batched idempotent upserts into PostgreSQL.
//!
//! Stages, one module each (being built): `config`, `consume`, `decode`, `batch`, `write`,
//! `commit`, `dlq`.

pub mod config;
pub mod migrate;
