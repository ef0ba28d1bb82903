//! Everything the source connector tells operators, as typed events: each `emit()` writes the
//! log line and updates the metrics together, so the two never disagree. Call sites never touch
//! `metrics` directly. Metric names are listed in the README ("Metrics").

use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{counter, gauge, histogram};

/// One HTTP call to the API (each costs 1 quota unit, even when it fails).
pub struct ApiCalled<'a> {
    /// The API method (`videos`, `videoCategories`).
    pub endpoint: &'static str,
    pub region: &'a str,
    /// `None` when no response came back (network error, timeout).
    pub status: Option<u16>,
    /// The region's units spent on this quota day, this call included.
    pub units_today: u64,
}

impl ApiCalled<'_> {
    pub fn emit(&self) {
        let status = self
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "none".into());
        tracing::debug!(endpoint = self.endpoint, region = self.region, %status, "API call");
        counter!("source_api_requests_total", "endpoint" => self.endpoint, "status" => status)
            .increment(1);
        counter!("source_api_quota_units_total", "region" => self.region.to_string()).increment(1);
        gauge!("source_api_quota_units_today", "region" => self.region.to_string())
            .set(self.units_today as f64);
    }
}

/// A transient API failure that will be retried.
pub struct ApiRetrying<'a> {
    pub endpoint: &'static str,
    pub region: &'a str,
    pub error: &'a dyn std::fmt::Display,
    /// The error's kind, a bounded label.
    pub kind: &'static str,
    pub attempt: u32,
    pub delay: Duration,
}

impl ApiRetrying<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            endpoint = self.endpoint,
            region = self.region,
            attempt = self.attempt,
            retry_in_ms = self.delay.as_millis() as u64,
            error = %self.error,
            "API call failed, retrying"
        );
        counter!("source_api_retries_total", "endpoint" => self.endpoint, "reason" => self.kind)
            .increment(1);
    }
}

/// A region's chart was read whole and every record acknowledged by the broker.
pub struct PollCompleted<'a> {
    pub region: &'a str,
    pub videos: usize,
    pub fetched_at: DateTime<Utc>,
    pub duration: Duration,
}

impl PollCompleted<'_> {
    pub fn emit(&self) {
        // Metrics before the log line: whoever reads the line may scrape at once.
        let region = self.region.to_string();
        counter!("source_polls_total", "region" => region.clone(), "outcome" => "success")
            .increment(1);
        histogram!("source_poll_duration_seconds", "region" => region.clone())
            .record(self.duration.as_secs_f64());
        counter!("source_videos_published_total", "region" => region.clone())
            .increment(self.videos as u64);
        gauge!("source_last_success_timestamp_seconds", "region" => region)
            .set(self.fetched_at.timestamp_millis() as f64 / 1000.0);
        tracing::info!(
            region = self.region,
            videos = self.videos,
            fetched_at = %self.fetched_at,
            duration_ms = self.duration.as_millis() as u64,
            "Poll published"
        );
    }
}

/// A poll failed; what happens next is in `next`.
pub struct PollFailed<'a> {
    pub region: &'a str,
    /// Bounded label: an `ApiError::kind`, `produce`, `encode`, `state` or `fenced`.
    pub kind: &'static str,
    pub error: &'a dyn std::fmt::Display,
    pub next: NextStep,
}

/// What the scheduler does after a failed poll.
#[derive(Debug, Clone, Copy)]
pub enum NextStep {
    RetryIn(Duration),
    WaitForQuotaReset(DateTime<Utc>),
    /// The region is not polled again until restart (key rejected, no chart for the region).
    Parked,
    /// `--once`: the run ends with a failure.
    GiveUp,
    /// The source was fenced by another with the same transactional id: every region stops
    /// (the connector says so once, as it exits).
    Stop,
}

impl PollFailed<'_> {
    pub fn emit(&self) {
        counter!("source_polls_total", "region" => self.region.to_string(), "outcome" => self.kind)
            .increment(1);
        match self.next {
            NextStep::RetryIn(d) => tracing::warn!(
                region = self.region, kind = self.kind, error = %self.error,
                retry_in_s = d.as_secs(),
                "Poll failed, not recorded as a success, nothing of it published; retrying the \
                 whole poll"
            ),
            NextStep::WaitForQuotaReset(at) => tracing::error!(
                region = self.region, error = %self.error, resumes_at = %at,
                "Daily API quota spent; waiting for the reset at midnight America/Los_Angeles"
            ),
            NextStep::Parked => tracing::error!(
                region = self.region, kind = self.kind, error = %self.error,
                "Region not polled again until restart"
            ),
            NextStep::GiveUp => tracing::error!(
                region = self.region, kind = self.kind, error = %self.error,
                "Poll failed"
            ),
            NextStep::Stop => tracing::debug!(region = self.region, "Region stopped: fenced"),
        }
        if matches!(self.kind, "produce" | "encode" | "state") {
            counter!("source_produce_errors_total").increment(1);
        }
    }
}

/// A start-up step (topics, schema registration, state) failed and will be retried.
pub struct BootRetrying<'a> {
    pub step: &'static str,
    pub error: &'a dyn std::fmt::Display,
    pub delay: Duration,
}

impl BootRetrying<'_> {
    pub fn emit(&self) {
        tracing::warn!(step = self.step, error = %self.error, retry_in_ms = self.delay.as_millis() as u64,
            "Start-up step failed, retrying");
        counter!("source_boot_retries_total", "step" => self.step).increment(1);
    }
}

/// A state record says a region was polled after now: counted as polled now.
pub struct StateFromTheFuture<'a> {
    pub region: &'a str,
    pub recorded: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

impl StateFromTheFuture<'_> {
    pub fn emit(&self) {
        tracing::warn!(region = self.region, recorded = %self.recorded, now = %self.now,
            "The state topic records a successful poll in the future (clock or bad record): \
             counting it as now");
        counter!("source_state_from_the_future_total", "region" => self.region.to_string())
            .increment(1);
    }
}

/// The quota plan at start: what the regions and interval spend per day.
pub struct QuotaPlanned<'a> {
    pub plan: &'a crate::quota::Plan,
}

impl QuotaPlanned<'_> {
    pub fn emit(&self) {
        let p = self.plan;
        tracing::info!(
            regions = p.regions,
            interval_s = p.interval.as_secs(),
            units_per_day = p.units_per_day,
            daily_quota = p.daily_quota,
            share = format!(
                "{:.0}%",
                p.units_per_day as f64 * 100.0 / p.daily_quota as f64
            ),
            interval_chosen_by_auto = p.auto,
            "Quota plan"
        );
        gauge!("source_quota_plan_units_per_day").set(p.units_per_day as f64);
        gauge!("source_quota_daily_units").set(p.daily_quota as f64);
    }
}
