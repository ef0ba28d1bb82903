//! Plumbing shared by the source and the sink connectors, so that neither binary carries a copy:
//!
//! - [`backoff`]: capped exponential backoff with jitter, and the duration syntax of configs;
//! - [`secret`]: secrets from the environment or a file, never flags;
//! - [`service`]: what both `main`s do: tracing, metrics, signals, the HTTP port, exit code;
//! - [`serve`]: the one HTTP port with `/metrics`, `/healthz` and `/readyz`, and the control API;
//! - [`control`]: what the control API of both connectors shares: bearer tokens, JSON errors;
//! - [`readiness`]: what `/readyz` reports, set by the pipeline stages;
//! - [`shutdown`]: the one cancellation signal fanned out to every loop;
//! - [`kafka`]: librdkafka client configuration and topic creation;
//! - [`registry`]: schema registry connection settings;
//! - [`telemetry`]: tracing and the Prometheus recorder set-up;
//! - [`testing`] (feature `testing`): the harness integration tests use to reach the local stack.

pub mod backoff;
pub mod control;
pub mod kafka;
pub mod readiness;
pub mod registry;
pub mod secret;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod telemetry;

#[cfg(feature = "testing")]
pub mod testing;
