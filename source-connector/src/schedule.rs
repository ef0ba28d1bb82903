//! The schedule: one independent loop per region, so a failing region never delays another.
//!
//! A region is polled at start unless its last successful poll (from the state topic) is less
//! than one interval old, then every `POLL_INTERVAL` after the start of its last successful
//! poll. A poll is all or nothing: categories and every page are read, then every record and
//! the success record are published in one Kafka transaction. A failed poll publishes nothing
//! that `read_committed` readers see: it is redone whole after a backoff, after the quota reset,
//! or never (a rejected key or a region without a chart) as its error says; a fenced source
//! stops altogether.

use plumbing::backoff::Retriable;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use plumbing::backoff::Backoff;
use plumbing::readiness::Readiness;
use tokio_util::sync::CancellationToken;

use crate::control::{Control, RegionPhase};
use crate::events::{NextStep, PollCompleted, PollFailed, StateFromTheFuture};
use crate::produce::{ProduceError, Publisher};
use crate::record::chart_records;
use crate::state::{RegionState, TargetState};
use crate::youtube::{ApiError, Client};

/// Categories are refetched once a day per region.
const CATEGORIES_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Produce(#[from] ProduceError),
}

impl PollError {
    pub fn kind(&self) -> &'static str {
        match self {
            PollError::Api(e) => e.kind(),
            PollError::Produce(ProduceError::Encode(_)) => "encode",
            PollError::Produce(ProduceError::State(_)) => "state",
            PollError::Produce(e) if e.is_fenced() => "fenced",
            PollError::Produce(_) => "produce",
        }
    }
}

/// Category id → name of one region, as fetched at one time.
type Categories = Arc<HashMap<String, String>>;

/// What every region's loop shares.
pub struct Poller {
    pub client: Client,
    pub publisher: Publisher,
    pub readiness: Readiness,
    categories: Mutex<HashMap<String, (Instant, Categories)>>,
}

impl Poller {
    pub fn new(client: Client, publisher: Publisher, readiness: Readiness) -> Self {
        Poller {
            client,
            publisher,
            readiness,
            categories: Mutex::new(HashMap::new()),
        }
    }

    /// One whole poll of one region; returns how many videos were published.
    pub async fn poll(&self, region: &str, fetched_at: DateTime<Utc>) -> Result<usize, PollError> {
        let started = Instant::now();
        let categories = self.categories(region).await?;
        let videos = self.client.chart(region).await?;
        self.readiness.set_ready("youtube_api");
        let records = chart_records(videos, region, fetched_at, &categories);
        let saved = RegionState {
            region: region.to_string(),
            last_success_at: fetched_at,
            videos: records.len(),
        };
        self.publisher.publish(&records, &saved).await?;
        self.readiness.set_ready("schema_registry");
        self.readiness.set_ready("kafka");
        PollCompleted {
            region,
            videos: records.len(),
            fetched_at,
            duration: started.elapsed(),
        }
        .emit();
        Ok(records.len())
    }

    async fn categories(&self, region: &str) -> Result<Categories, ApiError> {
        if let Some((at, cats)) = self.categories.lock().expect("cache lock").get(region) {
            if at.elapsed() < CATEGORIES_TTL {
                return Ok(cats.clone());
            }
        }
        let cats = Arc::new(self.client.categories(region).await?);
        self.categories
            .lock()
            .expect("cache lock")
            .insert(region.to_string(), (Instant::now(), cats.clone()));
        Ok(cats)
    }

    /// What to do after a failed poll (the `failures`-th in a row).
    fn next_step(
        &self,
        error: &PollError,
        failures: u32,
        backoff: &Backoff,
        once: bool,
    ) -> NextStep {
        match error {
            PollError::Api(ApiError::KeyRejected { .. } | ApiError::Rejected { .. }) => {
                self.readiness
                    .set_not_ready("youtube_api", error.to_string());
            }
            PollError::Produce(ProduceError::Encode(_)) => {
                self.readiness
                    .set_not_ready("schema_registry", error.to_string());
            }
            PollError::Produce(_) => {
                self.readiness.set_not_ready("kafka", error.to_string());
            }
            _ => {}
        }
        if let PollError::Produce(e) = error {
            if e.is_fenced() {
                return NextStep::Stop;
            }
        }
        if once {
            return NextStep::GiveUp;
        }
        match error {
            PollError::Api(ApiError::QuotaExceeded) => {
                NextStep::WaitForQuotaReset(next_quota_reset(Utc::now()))
            }
            PollError::Api(e) if !e.is_retriable() => NextStep::Parked,
            PollError::Produce(e) if !e.is_retriable() => NextStep::Parked,
            _ => NextStep::RetryIn(backoff.delay(failures.saturating_sub(1))),
        }
    }
}

/// The next midnight America/Los_Angeles after `now` (plus a minute of margin), when YouTube
/// resets the daily quota.
pub fn next_quota_reset(now: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::TimeZone;
    let tz = chrono_tz::America::Los_Angeles;
    let tomorrow = now.with_timezone(&tz).date_naive() + chrono::Days::new(1);
    let midnight = tomorrow.and_hms_opt(0, 1, 0).expect("valid time");
    tz.from_local_datetime(&midnight)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now + chrono::Duration::hours(24))
}

/// When a region is first due, given its last successful poll. The state topic is input like
/// any other: a success recorded in the future (a wrong clock, a hand-written record) counts as
/// now, with a warning, or it would hold the region's polls back silently while the source
/// reports ready; and the arithmetic is checked, so that a date near the calendar's end cannot
/// panic at every start.
pub fn first_due(
    last: Option<&RegionState>,
    interval: Duration,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let Some(s) = last else { return now };
    let mut last_success = s.last_success_at;
    if last_success > now {
        StateFromTheFuture {
            region: &s.region,
            recorded: last_success,
            now,
        }
        .emit();
        last_success = now;
    }
    chrono::Duration::from_std(interval)
        .ok()
        .and_then(|i| last_success.checked_add_signed(i))
        .map_or(now, |due| due.max(now))
}

/// How a region's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionEnd {
    /// Shutdown requested (or `--once` succeeded).
    Done,
    /// `--once` failed, or the region was parked.
    Failed,
    /// Another source took over the transactional id: the whole source stops.
    Fenced,
}

pub struct RegionLoop {
    pub region: String,
    pub interval: Duration,
    pub backoff: Backoff,
    pub once: bool,
    pub shutdown_grace: Duration,
}

impl RegionLoop {
    /// Polls the region until shutdown, a parked region or (with `--once`) its one poll. An
    /// operator's pause holds the next poll back; a poll asked for through the control API
    /// starts at once.
    pub async fn run(
        self,
        poller: Arc<Poller>,
        control: Arc<Control>,
        mut due: DateTime<Utc>,
        shutdown: CancellationToken,
    ) -> RegionEnd {
        let region = self.region.as_str();
        let mut target = control.watch_target();
        let asked = control.poll_requests(region);
        let mut waiting = RegionPhase::Scheduled;
        let mut failures = 0u32;
        loop {
            let wait = (due - Utc::now()).to_std().unwrap_or_default();
            if !wait.is_zero() {
                tracing::info!(region, next_poll_at = %due, "Next poll scheduled");
            }
            control.region(region, |s| {
                s.state = waiting;
                s.next_poll_at = Some(due);
            });
            tokio::select! {
                _ = shutdown.cancelled() => return self.stopped(&control, RegionEnd::Done),
                _ = tokio::time::sleep(wait) => {}
                _ = asked.notified() => tracing::info!(region, "Polling now, as asked"),
            }
            // A pause asked while a `--once` run polls does not hold it: it is a one-off run an
            // operator started (one started paused polls nothing at all).
            if !self.once && *target.borrow() == TargetState::Paused {
                tracing::info!(region, "Paused: no poll starts until resumed");
                control.region(region, |s| s.state = RegionPhase::Paused);
                tokio::select! {
                    _ = shutdown.cancelled() => return self.stopped(&control, RegionEnd::Done),
                    _ = target.wait_for(|t| *t != TargetState::Paused) => {}
                }
                tracing::info!(region, "Resumed");
            }
            control.region(region, |s| s.state = RegionPhase::Polling);
            let fetched_at = Utc::now();
            let Some(result) = self.poll(&poller, fetched_at, &shutdown).await else {
                return self.stopped(&control, RegionEnd::Done);
            };
            match result {
                Ok(videos) => {
                    failures = 0;
                    waiting = RegionPhase::Scheduled;
                    control.region(region, |s| {
                        s.last_success_at = Some(fetched_at);
                        s.last_success_videos = Some(videos);
                        s.last_error = None;
                    });
                    if self.once || shutdown.is_cancelled() {
                        return self.stopped(&control, RegionEnd::Done);
                    }
                    due =
                        fetched_at + chrono::Duration::from_std(self.interval).unwrap_or_default();
                }
                Err(e) => {
                    failures += 1;
                    (due, waiting) = match self.after_failure(&poller, &control, &e, failures) {
                        Ok(next) => next,
                        Err(end) => return end,
                    };
                    if shutdown.is_cancelled() {
                        return self.stopped(&control, RegionEnd::Done);
                    }
                }
            }
        }
    }

    /// One poll; at shutdown it gets the grace period to finish, and `None` when abandoned.
    async fn poll(
        &self,
        poller: &Poller,
        fetched_at: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Option<Result<usize, PollError>> {
        let region = self.region.as_str();
        let poll = poller.poll(region, fetched_at);
        tokio::pin!(poll);
        tokio::select! {
            r = &mut poll => Some(r),
            _ = shutdown.cancelled() => {
                tracing::info!(region, grace_s = self.shutdown_grace.as_secs(),
                    "Shutdown: letting the poll in flight finish");
                let finished = tokio::time::timeout(self.shutdown_grace, &mut poll).await.ok();
                if finished.is_none() {
                    tracing::warn!(region,
                        "Shutdown: poll abandoned; it is redone whole after restart");
                }
                finished
            }
        }
    }

    /// After the `failures`-th failed poll in a row: when to poll again and how the region
    /// waits meanwhile, or how the loop ends.
    fn after_failure(
        &self,
        poller: &Poller,
        control: &Control,
        e: &PollError,
        failures: u32,
    ) -> Result<(DateTime<Utc>, RegionPhase), RegionEnd> {
        let region = self.region.as_str();
        let next = poller.next_step(e, failures, &self.backoff, self.once);
        PollFailed {
            region,
            kind: e.kind(),
            error: e,
            next,
        }
        .emit();
        // The kind only (as `source_polls_total`'s outcome): the error itself can quote the
        // API's answer; the logs have it whole.
        control.region(region, |s| s.last_error = Some(e.kind().to_string()));
        match next {
            NextStep::RetryIn(d) => Ok((
                Utc::now() + chrono::Duration::from_std(d).unwrap_or_default(),
                RegionPhase::Scheduled,
            )),
            NextStep::WaitForQuotaReset(at) => Ok((at, RegionPhase::WaitingForQuota)),
            NextStep::Parked => {
                control.region(region, |s| s.state = RegionPhase::Parked);
                Err(RegionEnd::Failed)
            }
            NextStep::GiveUp => Err(self.stopped(control, RegionEnd::Failed)),
            NextStep::Stop => Err(self.stopped(control, RegionEnd::Fenced)),
        }
    }

    fn stopped(&self, control: &Control, end: RegionEnd) -> RegionEnd {
        control.region(&self.region, |s| {
            s.state = RegionPhase::Stopped;
            s.next_poll_at = None;
        });
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn quota_resets_at_midnight_pacific() {
        // Winter (PST, UTC-8): 10:00 UTC is 02:00 PST; next reset 08:01 UTC the next day.
        assert_eq!(
            next_quota_reset(utc("2026-11-25T10:00:00Z")),
            utc("2026-11-26T08:01:00Z")
        );
        // 07:00 UTC is 23:00 PST the day before: reset in about an hour.
        assert_eq!(
            next_quota_reset(utc("2026-11-25T07:00:00Z")),
            utc("2026-11-25T08:01:00Z")
        );
        // Summer (PDT, UTC-7).
        assert_eq!(
            next_quota_reset(utc("2026-07-01T12:00:00Z")),
            utc("2026-07-02T07:01:00Z")
        );
    }

    #[test]
    fn a_recent_success_delays_the_first_poll() {
        let now = utc("2026-11-25T10:00:00Z");
        let interval = Duration::from_secs(1800);
        let state = |at: &str| RegionState {
            region: "FR".into(),
            last_success_at: utc(at),
            videos: 200,
        };
        assert_eq!(first_due(None, interval, now), now);
        assert_eq!(
            first_due(Some(&state("2026-11-25T09:50:00Z")), interval, now),
            utc("2026-11-25T10:20:00Z")
        );
        assert_eq!(
            first_due(Some(&state("2026-11-25T09:00:00Z")), interval, now),
            now
        );
        // From the future: counted as now, so due one interval from now, not in 9999.
        assert_eq!(
            first_due(Some(&state("9999-12-31T23:00:00Z")), interval, now),
            utc("2026-11-25T10:30:00Z")
        );
        let mut far = state("2026-11-25T09:00:00Z");
        far.last_success_at = DateTime::<Utc>::MAX_UTC;
        assert_eq!(
            first_due(Some(&far), interval, now),
            utc("2026-11-25T10:30:00Z")
        );
        // Overflowing arithmetic: due now rather than a panic.
        assert_eq!(
            first_due(Some(&state("2026-11-25T09:00:00Z")), Duration::MAX, now),
            now
        );
    }
}
