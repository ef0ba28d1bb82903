//! The daily quota plan: what the configured regions and interval cost in YouTube API units per
//! day, checked at start against the project's quota (10,000 units by default), so that a user
//! who adds regions learns it before `quotaExceeded` stops the polls for the rest of the day.
//!
//! Each API call costs 1 unit. A poll of one region reads its chart in pages of 50, at most 4
//! pages (200 videos); its categories are read once a day (cached for 24 h). The plan counts
//! the worst case (full charts); retries come on top, which the margin of `auto` leaves room for.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Pages of `videos.list` per poll at most: 200 videos, 50 per page.
pub const PAGES_PER_POLL: u64 = 4;
/// `videoCategories.list` calls per region per day (the answer is cached for 24 h).
pub const CATEGORY_CALLS_PER_DAY: u64 = 1;
/// `POLL_INTERVAL=auto` plans for this share of the quota, leaving the rest for retries.
pub const AUTO_SHARE: f64 = 0.9;
const DAY_SECS: u64 = 86_400;

/// Units spent per region on the current quota day, counted by the API client (each call costs
/// 1 unit, even when it fails) and read by `/status` and the poll-now refusal.
#[derive(Debug, Default)]
pub struct QuotaMeter {
    spent: Mutex<BTreeMap<String, (chrono::NaiveDate, u64)>>,
}

impl QuotaMeter {
    /// Counts one call for `region`; returns the region's units spent today.
    pub fn spend(&self, region: &str, at: DateTime<Utc>) -> u64 {
        let today = quota_day(at);
        let mut spent = self.spent.lock().expect("quota lock");
        let entry = spent.entry(region.to_string()).or_insert((today, 0));
        if entry.0 != today {
            *entry = (today, 0);
        }
        entry.1 += 1;
        entry.1
    }

    /// Units `region` spent on the quota day of `at`.
    pub fn spent(&self, region: &str, at: DateTime<Utc>) -> u64 {
        let today = quota_day(at);
        match self.spent.lock().expect("quota lock").get(region) {
            Some((day, units)) if *day == today => *units,
            _ => 0,
        }
    }

    /// Units every region spent on the quota day of `at`.
    pub fn spent_by_all(&self, at: DateTime<Utc>) -> u64 {
        let today = quota_day(at);
        self.spent
            .lock()
            .expect("quota lock")
            .values()
            .filter(|(day, _)| *day == today)
            .map(|(_, units)| units)
            .sum()
    }
}

/// The quota day `at` falls in: YouTube resets quotas at midnight America/Los_Angeles.
pub fn quota_day(at: DateTime<Utc>) -> chrono::NaiveDate {
    at.with_timezone(&chrono_tz::America::Los_Angeles)
        .date_naive()
}

/// The configured interval: a duration, or `auto` (the shortest that fits the quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollInterval {
    Fixed(Duration),
    Auto,
}

/// What the source will spend per day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub regions: u64,
    pub interval: Duration,
    pub units_per_day: u64,
    pub daily_quota: u64,
    /// The interval was chosen by `auto`.
    pub auto: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuotaError {
    #[error(
        "the quota plan needs {needed} API units a day ({regions} region(s) polled every {interval_s} s, \
         up to {PAGES_PER_POLL} pages a poll plus {CATEGORY_CALLS_PER_DAY} categories call a day each), \
         more than YOUTUBE_DAILY_QUOTA={quota}: poll fewer regions, or set POLL_INTERVAL to at least \
         {fits_s} s (POLL_INTERVAL=auto picks it), or raise the quota in the Google Cloud console \
         and YOUTUBE_DAILY_QUOTA with it"
    )]
    OverQuota {
        needed: u64,
        regions: u64,
        interval_s: u64,
        quota: u64,
        fits_s: u64,
    },
    #[error(
        "{regions} region(s) cannot fit YOUTUBE_DAILY_QUOTA={quota} even with one poll a day \
         ({needed} units): poll fewer regions or raise the quota"
    )]
    TooManyRegions {
        regions: u64,
        quota: u64,
        needed: u64,
    },
}

/// Units a day for `regions` polled every `interval`.
pub fn units_per_day(regions: u64, interval: Duration) -> u64 {
    let polls = DAY_SECS.div_ceil(interval.as_secs().max(1));
    regions * (polls * PAGES_PER_POLL + CATEGORY_CALLS_PER_DAY)
}

/// The shortest whole-minute interval at which `regions` spend at most `budget` units a day.
fn shortest_fitting(regions: u64, budget: u64) -> Option<Duration> {
    let per_region = budget / regions.max(1);
    let polls = per_region.checked_sub(CATEGORY_CALLS_PER_DAY)? / PAGES_PER_POLL;
    if polls == 0 {
        return None;
    }
    let secs = DAY_SECS.div_ceil(polls).div_ceil(60) * 60;
    Some(Duration::from_secs(secs))
}

/// The plan for `regions` at `interval`, or why it does not fit `daily_quota`.
pub fn plan(regions: u64, interval: PollInterval, daily_quota: u64) -> Result<Plan, QuotaError> {
    let one_a_day = units_per_day(regions, Duration::from_secs(DAY_SECS));
    let (interval, auto) = match interval {
        PollInterval::Fixed(d) => (d, false),
        PollInterval::Auto => {
            let budget = (daily_quota as f64 * AUTO_SHARE) as u64;
            let d = shortest_fitting(regions, budget).ok_or(QuotaError::TooManyRegions {
                regions,
                quota: daily_quota,
                needed: one_a_day,
            })?;
            (d, true)
        }
    };
    let needed = units_per_day(regions, interval);
    if needed > daily_quota {
        let fits = shortest_fitting(regions, daily_quota).ok_or(QuotaError::TooManyRegions {
            regions,
            quota: daily_quota,
            needed: one_a_day,
        })?;
        return Err(QuotaError::OverQuota {
            needed,
            regions,
            interval_s: interval.as_secs(),
            quota: daily_quota,
            fits_s: fits.as_secs(),
        });
    }
    Ok(Plan {
        regions,
        interval,
        units_per_day: needed,
        daily_quota,
        auto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;

    #[test]
    fn one_region_every_30_minutes_costs_193_units() {
        // 48 polls x 4 pages + 1 categories call.
        assert_eq!(units_per_day(1, Duration::from_secs(30 * MIN)), 193);
        let p = plan(
            1,
            PollInterval::Fixed(Duration::from_secs(30 * MIN)),
            10_000,
        )
        .unwrap();
        assert_eq!(p.units_per_day, 193);
        assert!(!p.auto);
    }

    #[test]
    fn too_many_regions_are_refused_with_the_interval_that_fits() {
        // 60 regions every 30 min: 60 x 193 = 11,580 > 10,000.
        let err = plan(
            60,
            PollInterval::Fixed(Duration::from_secs(30 * MIN)),
            10_000,
        );
        let Err(QuotaError::OverQuota { needed, fits_s, .. }) = err else {
            panic!("{err:?}")
        };
        assert_eq!(needed, 11_580);
        // 10,000 / 60 = 166 per region; (166 - 1) / 4 = 41 polls: every 2108 s -> 36 min.
        assert_eq!(fits_s, 36 * MIN);
        assert!(units_per_day(60, Duration::from_secs(fits_s)) <= 10_000);
        let text = err.unwrap_err().to_string();
        assert!(
            text.contains("11580") && text.contains("POLL_INTERVAL=auto"),
            "{text}"
        );
    }

    #[test]
    fn auto_takes_the_shortest_interval_within_90_percent_of_the_quota() {
        let p = plan(60, PollInterval::Auto, 10_000).unwrap();
        // 9,000 / 60 = 150 per region; (150 - 1) / 4 = 37 polls: every 2336 s -> 39 min.
        assert_eq!(p.interval, Duration::from_secs(39 * MIN));
        assert!(p.auto);
        assert!(p.units_per_day <= 9_000, "{}", p.units_per_day);
        assert!(units_per_day(60, p.interval - Duration::from_secs(MIN)) > 9_000);
        // One region: far under the quota, a poll every few minutes.
        let one = plan(1, PollInterval::Auto, 10_000).unwrap();
        assert!(
            one.interval <= Duration::from_secs(MIN),
            "{:?}",
            one.interval
        );
    }

    #[test]
    fn a_quota_too_small_for_one_poll_a_day_is_refused() {
        assert!(matches!(
            plan(3, PollInterval::Auto, 10),
            Err(QuotaError::TooManyRegions { .. })
        ));
        assert!(matches!(
            plan(3, PollInterval::Fixed(Duration::from_secs(86_400)), 10),
            Err(QuotaError::TooManyRegions { .. })
        ));
    }
}
