//! The source connector: YouTube Data API v3 `videos.list?chart=mostPopular` → Avro → Kafka.
//!
//! Stages, one module each, in data-flow order:
//! [`config`] → [`youtube`] (API client and response types) → [`record`] (mapping to the
//! TrendingVideo record) → [`produce`] (registry, and one Kafka [`transaction`] per poll holding
//! its records and its [`state`] record: the last successful poll per region), driven by
//! [`schedule`] (one loop per region). [`events`] is what it tells operators (logs and metrics
//! together); [`control`] is its control API (status, pause, resume, poll now).

pub mod config;
pub mod control;
pub mod events;
pub mod produce;
pub mod quota;
pub mod record;
pub mod schedule;
#[cfg(feature = "standin")]
pub mod standin;
pub mod state;
pub mod transaction;
pub mod youtube;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use plumbing::backoff::Backoff;
use plumbing::kafka::{ensure_topics, TopicSpec};
use plumbing::readiness::Readiness;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::Control;
use crate::events::{BootRetrying, QuotaPlanned};
use crate::produce::Publisher;
use crate::schedule::{first_due, Poller, RegionEnd, RegionLoop};
use crate::transaction::{TransactionError, Transactions};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;

/// The dependencies `/readyz` reports on.
pub const READINESS_CHECKS: &[&str] = &["kafka", "schema_registry", "youtube_api"];

/// How long a fenced source keeps serving a failing `/readyz` before it exits.
pub const FENCED_LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the connector until `shutdown` (or, with `--once`, until every region was polled).
/// Returns whether every region succeeded (meaningful with `--once`).
pub async fn run(
    config: Config,
    control: Arc<Control>,
    quota: Arc<quota::QuotaMeter>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<bool> {
    let key = config.api_key()?;
    let client = youtube::Client::new(config.api_settings(), key, quota)
        .context("building the HTTP client")?;
    let transactions = Transactions::new(
        &config.kafka,
        &config.transactional_id(),
        config.produce_timeout,
    )?;
    let backoff = Backoff::new(config.retry_initial_backoff, config.retry_max_backoff);
    let interval = planned_interval(&config);
    // Built once, before the retried steps: a wrong credential setting is not worth retrying.
    let registry_settings = config.registry.settings()?;
    let booted = tokio::select! {
        b = boot(&config, &transactions, &registry_settings, &backoff, &readiness) => b?,
        _ = shutdown.cancelled() => return Ok(true),
    };
    readiness.set_ready("kafka");
    readiness.set_ready("schema_registry");
    tracing::info!(topic = %config.topic, schema_id = booted.schema_id, regions = ?config.regions,
        interval_s = interval.as_secs(), "Source connector started");

    let dues = first_dues(&config, &booted.last, interval, &readiness);
    let publisher = Publisher::new(
        transactions,
        &registry_settings,
        booted.strategy,
        &config.topic,
        (&config.state_topic(), config.target_key()),
        config.produce_timeout,
    );
    let poller = Arc::new(Poller::new(client, publisher, readiness.clone()));
    let target = booted.last.target;
    control.started(target, &booted.last.regions);
    if target == state::TargetState::Paused {
        if config.once {
            // A one-off run (from cron, say) honours the operator's pause too.
            tracing::warn!(
                "Paused (the state topic says so): --once polls nothing; resume the source \
                 (PUT /resume on a running one) to poll again"
            );
            return Ok(true);
        }
        tracing::warn!("Paused (the state topic says so): no poll starts until PUT /resume");
    }
    // Kept until the end: a source whose regions are all parked still serves the API.
    let _recorder = AbortOnDrop(tokio::spawn(record_target_state(
        poller.clone(),
        control.clone(),
        target,
        backoff,
    )));
    let regions = RegionLoops {
        interval,
        backoff,
        once: config.once,
        shutdown_grace: config.shutdown_grace,
    };
    let ended = regions.run(dues, &poller, &control, &shutdown).await?;
    ended.outcome(&config, &readiness, &shutdown).await
}

/// The poll interval the quota plan allows (logged and exported).
fn planned_interval(config: &Config) -> std::time::Duration {
    match config.quota_plan() {
        Ok(plan) => {
            QuotaPlanned { plan: &plan }.emit();
            plan.interval
        }
        // Only with --once (the configuration refused any other plan over the quota): each
        // region is polled once, the interval only dates the state records.
        Err(e) => {
            tracing::warn!(error = %e, "The quota plan does not fit; polling once only");
            std::time::Duration::from_secs(1800)
        }
    }
}

/// What start-up established: the registered schema and the state topic's contents.
struct Booted {
    strategy: SubjectNameStrategy,
    schema_id: u32,
    last: state::Loaded,
}

/// Start-up: each step is retried while its dependency is away (the connector serves /healthz
/// meanwhile and /readyz says what is missing); a refused schema or a fence is fatal.
async fn boot(
    config: &Config,
    transactions: &Transactions,
    registry_settings: &SrSettings,
    backoff: &Backoff,
    readiness: &Readiness,
) -> anyhow::Result<Booted> {
    let state_topic = config.state_topic();
    let topics = [
        TopicSpec {
            name: &config.topic,
            partitions: config.kafka.kafka_topic_partitions,
            replication: config.kafka.kafka_topic_replication,
            configs: HashMap::new(),
        },
        TopicSpec {
            name: &state_topic,
            partitions: 1,
            replication: config.kafka.kafka_topic_replication,
            configs: HashMap::from([("cleanup.policy", "compact")]),
        },
    ];
    let kafka_config = config.kafka.client_config(&[])?;
    retry_boot("create_topics", backoff, readiness, "kafka", || {
        ensure_topics(&kafka_config, &topics)
    })
    .await?;
    let (strategy, schema_id) = retry_boot(
        "register_schema",
        backoff,
        readiness,
        "schema_registry",
        || Publisher::register(registry_settings, &config.topic),
    )
    .await?;
    // Fences a source already running with the same transactional id, now rather than at its
    // next poll.
    retry_boot("init_transactions", backoff, readiness, "kafka", || {
        transactions.init()
    })
    .await?;
    let target_key = config.target_key();
    let last = retry_boot("load_state", backoff, readiness, "kafka", || {
        state::load(&config.kafka, &state_topic, &target_key)
    })
    .await?;
    Ok(Booted {
        strategy,
        schema_id,
        last,
    })
}

/// When each region is first due: now with `--once`, else one interval after its last success.
fn first_dues<'a>(
    config: &'a Config,
    last: &state::Loaded,
    interval: std::time::Duration,
    readiness: &Readiness,
) -> Vec<(&'a String, chrono::DateTime<Utc>)> {
    let now = Utc::now();
    let dues: Vec<_> = config
        .regions
        .iter()
        .map(|region| {
            let due = if config.once {
                now
            } else {
                first_due(last.regions.get(region), interval, now)
            };
            (region, due)
        })
        .collect();
    if dues.iter().any(|(_, due)| *due > now) {
        // Restarted within the interval: the API answered a poll of less than an interval ago
        // (the state topic says so), and the next one may be half an hour away. Held at "not
        // checked yet" until then, the source would be unready all that time.
        readiness.set_ready("youtube_api");
    }
    dues
}

/// One loop per region, with what they share.
struct RegionLoops {
    interval: std::time::Duration,
    backoff: Backoff,
    once: bool,
    shutdown_grace: std::time::Duration,
}

/// How the region loops ended.
struct Ended {
    all_ok: bool,
    fenced: bool,
}

impl Ended {
    /// What the run returns once the loops ended: a fence is an error, `--once` says whether
    /// every region succeeded; loops that ended otherwise (every region parked) leave the
    /// process serving /metrics and a failing /readyz until shutdown, so the operator sees why.
    async fn outcome(
        self,
        config: &Config,
        readiness: &Readiness,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        if self.fenced {
            // Failing /readyz for a moment before exiting, so that a probe or a scrape sees why
            // the process is gone; the error itself is logged once, as the connector stops on
            // it.
            let e = TransactionError::Fenced(config.transactional_id());
            readiness.set_not_ready("kafka", e.to_string());
            tokio::select! {
                _ = tokio::time::sleep(FENCED_LINGER) => {}
                _ = shutdown.cancelled() => {}
            }
            return Err(e.into());
        }
        if config.once {
            return Ok(self.all_ok);
        }
        if !shutdown.is_cancelled() {
            tracing::error!("No region is being polled any more; waiting for shutdown");
            shutdown.cancelled().await;
        }
        Ok(true)
    }
}

impl RegionLoops {
    /// Runs every region's loop until each ends; a fence stops them all.
    async fn run(
        &self,
        dues: Vec<(&String, chrono::DateTime<Utc>)>,
        poller: &Arc<Poller>,
        control: &Arc<Control>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Ended> {
        // Cancelled at shutdown, or when the source is fenced (every region stops).
        let stop = shutdown.child_token();
        let mut tasks = JoinSet::new();
        for (region, due) in dues {
            let region_loop = RegionLoop {
                region: region.clone(),
                interval: self.interval,
                backoff: self.backoff,
                once: self.once,
                shutdown_grace: self.shutdown_grace,
            };
            tasks.spawn(region_loop.run(poller.clone(), control.clone(), due, stop.clone()));
        }
        let mut ended = Ended {
            all_ok: true,
            fenced: false,
        };
        while let Some(end) = tasks.join_next().await {
            let end = end.context("a region loop panicked")?;
            if end == RegionEnd::Fenced && !ended.fenced {
                ended.fenced = true;
                stop.cancel();
            }
            ended.all_ok &= end == RegionEnd::Done;
        }
        Ok(ended)
    }
}

/// A task that stops with its handle.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records each change of the target state (`PUT /pause`, `PUT /resume`) in the state topic, so
/// that a restarted source keeps it; retried until recorded or superseded by the next change.
async fn record_target_state(
    poller: Arc<Poller>,
    control: Arc<Control>,
    mut recorded: state::TargetState,
    backoff: Backoff,
) {
    let mut wanted = control.watch_target();
    let mut attempt = 0;
    loop {
        let target = *wanted.borrow_and_update();
        if target == recorded {
            attempt = 0;
            if wanted.changed().await.is_err() {
                return;
            }
            continue;
        }
        match poller.publisher.save_target(target).await {
            Ok(()) => {
                tracing::info!(state = ?target, "Target state recorded in the state topic");
                recorded = target;
            }
            Err(e) => {
                let delay = backoff.delay(attempt);
                attempt += 1;
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                    "Recording the target state failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = wanted.changed() => {}
                }
            }
        }
    }
}

/// Retries a start-up step until it succeeds or fails for good, with backoff, reporting
/// `check` not ready meanwhile.
async fn retry_boot<T, E, F, Fut>(
    step: &'static str,
    backoff: &Backoff,
    readiness: &Readiness,
    check: &'static str,
    f: F,
) -> Result<T, E>
where
    E: plumbing::backoff::Retriable,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let on_failure = |e: &E, _attempt, delay| {
        let shown = format!("{e:#}");
        readiness.set_not_ready(check, shown.clone());
        BootRetrying {
            step,
            error: &shown,
            delay,
        }
        .emit();
    };
    plumbing::backoff::retry(backoff, on_failure, f).await
}
