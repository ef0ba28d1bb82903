//! Capped exponential backoff with jitter, used by every retry loop of both connectors, and the
//! duration syntax of their configuration.

use std::time::Duration;

/// `initial`, doubled at each attempt up to `max`; each delay is drawn uniformly from its upper
/// half so that instances retrying together spread out.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// Delay before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        let half = ceiling / 2;
        let jitter_ms = fastrand::u64(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// Parses `500ms`, `90s`, `30m`, `2h` or `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit: write e.g. 500ms, 30s, 30m or 2h"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` does not start with a number"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{unit}` is not a unit: use ms, s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

/// An error a retry loop can judge: tried again while retriable, given up on otherwise.
pub trait Retriable: std::fmt::Display {
    /// Whether waiting and trying again can help (a dependency away), or not (a refused
    /// schema, a fenced producer, a write the database rejects).
    fn is_retriable(&self) -> bool;
}

/// A step whose every failure is transient (creating topics, reading a state topic): it has no
/// error worth giving up on.
impl Retriable for anyhow::Error {
    fn is_retriable(&self) -> bool {
        true
    }
}

/// The broker's errors, as the connectors meet them (a broker away, a rebalance, a producer
/// to renew): retried. The permanent ones they know of (a fenced transactional producer) are
/// their own error types.
impl Retriable for rdkafka::error::KafkaError {
    fn is_retriable(&self) -> bool {
        true
    }
}

/// Runs `f` until it succeeds, or fails with an error that is not retriable (returned),
/// sleeping a backoff between attempts. Before each sleep `on_failure(error, attempt, delay)`
/// is called (attempt counts from 1) so the caller logs, counts and reports readiness: no retry
/// is silent.
pub async fn retry<T, E, F, Fut>(
    backoff: &Backoff,
    mut on_failure: impl FnMut(&E, u32, Duration),
    mut f: F,
) -> Result<T, E>
where
    E: Retriable,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_retriable() => return Err(e),
            Err(e) => {
                let delay = backoff.delay(attempt);
                attempt += 1;
                on_failure(&e, attempt, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 0..40 {
            let ceiling = Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60));
            let d = b.delay(attempt);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
        }
    }

    /// A permanent error ends the loop at once; a retriable one is retried, reported first.
    #[tokio::test]
    async fn retry_stops_on_a_permanent_error_and_reports_each_retry() {
        #[derive(Debug, PartialEq)]
        struct E(bool);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "retriable: {}", self.0)
            }
        }
        impl Retriable for E {
            fn is_retriable(&self) -> bool {
                self.0
            }
        }
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let mut answers = vec![Err(E(true)), Err(E(true)), Err(E(false)), Ok(1)].into_iter();
        let mut reported = Vec::new();
        let r = retry(
            &b,
            |e: &E, n, _| reported.push((e.0, n)),
            || {
                let next = answers.next().unwrap();
                async move { next }
            },
        )
        .await;
        assert_eq!(r, Err(E(false)));
        assert_eq!(reported, [(true, 1), (true, 2)]);
        let mut answers = vec![Err(anyhow::anyhow!("away")), Ok(2)].into_iter();
        // A step whose errors are all transient returns only once it succeeded.
        let r = retry(
            &b,
            |_: &anyhow::Error, _, _| {},
            || {
                let next = answers.next().unwrap();
                async move { next }
            },
        )
        .await;
        assert_eq!(r.unwrap(), 2);
    }

    #[test]
    fn durations_parse_with_units_only() {
        assert!(parse_duration("30").unwrap_err().contains("unit"));
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("m").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
    }
}
