//! The sink's control API, on the HTTP port beside `/metrics` (shapes after Kafka Connect's REST
//! API and KIP-875; written down in `openapi.yaml`):
//!
//! - `GET /status`: state (`UNASSIGNED` while starting, `RUNNING`, `PAUSED`), the failing
//!   dependencies, and each assigned partition (committed offset, lag, paused);
//! - `PUT /pause`, `PUT /resume`: fetching stops (the batch in flight is written and committed)
//!   or starts again. A pause lives as long as the process: a restarted sink runs;
//! - `GET /offsets`: the group's committed offsets;
//! - `PATCH /offsets`, `DELETE /offsets`: new committed offsets (or back to each partition's
//!   start), through the same planner as `reset-offsets` (clamped to what the partition holds).
//!   Only while this sink is paused and alone in its group (409 otherwise); applied by the
//!   pipeline itself between batches, so no batch in flight commits over them.
//!
//! Mutating calls need the admin token (see `plumbing::control`).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use plumbing::control::{require_token, Admin, ApiError, ConnectorState, Failing, StateChange};
use plumbing::kafka::KafkaArgs;
use plumbing::readiness::Readiness;
use rdkafka::consumer::Consumer;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::consume::{LagReporter, PauseGate, SinkConsumer};
use crate::replay::{self, PartitionPlan, Target};

/// How long a `PATCH`/`DELETE /offsets` waits for the pipeline to be between batches.
const APPLY_WAIT: Duration = Duration::from_secs(30);

/// How long a `GET /offsets` answer is reused: a monitoring loop or many callers at once cost
/// one broker round trip a second.
const OFFSETS_FRESH: Duration = Duration::from_secs(1);

/// How long a `GET /offsets` waits for the read another request started.
const OFFSETS_WAIT: Duration = Duration::from_secs(25);

/// What `GET /offsets` reads the group's committed offsets with: one client for the process's
/// life, one read at a time, its last answer.
#[derive(Default)]
struct OffsetsReader {
    client: Option<Arc<rdkafka::consumer::BaseConsumer>>,
    last: Option<(std::time::Instant, Vec<(i32, i64)>)>,
}

/// What the routes and the pipeline share.
pub struct Control {
    worker_id: String,
    kafka: KafkaArgs,
    topic: String,
    group: String,
    readiness: Readiness,
    paused: watch::Sender<bool>,
    /// Set once the sink has started.
    live: OnceLock<Live>,
    /// An offsets change waiting for the pipeline's next quiet moment.
    change: Mutex<Option<OffsetsChange>>,
    next_change: std::sync::atomic::AtomicU64,
    /// The last failure a stage retried.
    last_error: Mutex<Option<LastError>>,
    offsets_reader: Arc<tokio::sync::Mutex<OffsetsReader>>,
}

/// The last failure a stage retried: which dependency, what kind, when. Its text stays in the
/// logs (it can quote a record or a URL).
#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub dependency: &'static str,
    pub kind: &'static str,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The running sink's parts `/status` reads.
pub struct Live {
    pub consumer: Arc<SinkConsumer>,
    pub lag: Arc<LagReporter>,
    pub pause: Arc<PauseGate>,
}

/// New offsets for some partitions, and where to answer.
pub struct OffsetsChange {
    id: u64,
    wanted: Vec<(i32, Target)>,
    reply: oneshot::Sender<Result<Vec<PartitionPlan>, ApiError>>,
}

impl Control {
    pub fn new(config: &crate::config::Config, readiness: Readiness) -> Arc<Control> {
        Arc::new(Control {
            worker_id: config.http_addr.to_string(),
            kafka: config.kafka.clone(),
            topic: config.topic.clone(),
            group: config.group_id.clone(),
            readiness,
            paused: watch::Sender::new(false),
            live: OnceLock::new(),
            change: Mutex::new(None),
            next_change: Default::default(),
            last_error: Mutex::new(None),
            offsets_reader: Default::default(),
        })
    }

    /// The control routes, mutating ones behind the admin token.
    pub fn router(self: &Arc<Self>, admin: Admin) -> Router {
        Router::new()
            .route("/status", get(status))
            .route("/pause", put(pause))
            .route("/resume", put(resume))
            .route(
                "/offsets",
                get(offsets).patch(alter_offsets).delete(reset_offsets),
            )
            .route_layer(axum::middleware::from_fn_with_state(admin, require_token))
            .with_state(self.clone())
    }

    /// A stage failed on `dependency` and retries.
    pub fn failed(&self, dependency: &'static str, kind: &'static str) {
        *self.last_error.lock().expect("last error lock") = Some(LastError {
            dependency,
            kind,
            at: chrono::Utc::now(),
        });
    }

    pub fn attach(&self, live: Live) {
        let _ = self.live.set(live);
    }

    /// Whether an operator paused the sink; changes are seen through [`Self::watch_paused`].
    pub fn watch_paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    /// The group's committed offsets, read by [`OffsetsReader`]. The read runs off the async
    /// workers and holds the reader until it ends, even when its caller has left: however many
    /// callers, at most one broker round trip is under way.
    async fn committed_offsets(&self) -> Result<Vec<(i32, i64)>, ApiError> {
        let mut reader =
            tokio::time::timeout(OFFSETS_WAIT, self.offsets_reader.clone().lock_owned())
                .await
                .map_err(|_| {
                    unavailable(
                        "the committed offsets are being read for another request, \
                         and the broker is slow to answer: try again"
                            .into(),
                    )
                })?;
        if let Some((at, offsets)) = &reader.last {
            if at.elapsed() < OFFSETS_FRESH {
                return Ok(offsets.clone());
            }
        }
        let client = match &reader.client {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(
                    replay::consumer(&self.kafka, &self.group)
                        .map_err(|e| unavailable(format!("{e:#}")))?,
                );
                plumbing::kafka::keep_bootstrapped(
                    Arc::downgrade(&c),
                    &self.kafka.kafka_bootstrap_servers,
                    &self.topic,
                );
                reader.client = Some(c.clone());
                c
            }
        };
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let offsets = replay::group_offsets(&client, &topic)?;
            reader.last = Some((std::time::Instant::now(), offsets.clone()));
            Ok(offsets)
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .map_err(|e: anyhow::Error| unavailable(format!("{e:#}")))
    }

    /// The offsets change waiting, if any: taken by the pipeline when no batch is in flight.
    pub fn take_change(&self) -> Option<OffsetsChange> {
        self.change.lock().expect("change lock").take()
    }
}

impl OffsetsChange {
    /// Plans the change and applies it with the sink's own consumer (it owns every partition:
    /// it is alone in the group): commits the new offsets, and moves the fetch positions there
    /// so that resuming reads from them.
    pub fn apply(self, control: &Control, consumer: &SinkConsumer, lag: &LagReporter) {
        // Asked by a client that gave up waiting, or the sink was resumed meanwhile: the
        // conditions checked then no longer hold.
        if self.reply.is_closed() || !*control.paused.borrow() {
            tracing::info!("Offsets change dropped: its caller left or the sink was resumed");
            return;
        }
        let result = (|| {
            let assigned: Vec<i32> = consumer
                .assignment()
                .map_err(|e| unavailable(e.to_string()))?
                .elements()
                .iter()
                .filter(|e| e.topic() == control.topic)
                .map(|e| e.partition())
                .collect();
            let plans =
                replay::plan_each(&control.kafka, &control.group, &control.topic, &self.wanted)
                    .map_err(|e| {
                        let text = format!("{e:#}");
                        if text.contains("has no partition") {
                            ApiError::bad_request(text)
                        } else {
                            unavailable(text)
                        }
                    })?;
            if let Some(p) = plans.iter().find(|p| !assigned.contains(&p.partition)) {
                return Err(ApiError::conflict(format!(
                    "partition {} is not assigned to this sink (yet): try again in a moment",
                    p.partition
                )));
            }
            // The fetch positions first: a position left behind would be committed back by
            // the next idle commit, undoing the change. Where each was, to put it back if a
            // later step fails: resumed from a moved position, the sink could commit past
            // records it never wrote.
            let before = positions(consumer, &control.topic, &plans);
            let mut moved: Vec<(i32, rdkafka::Offset)> = Vec::new();
            for (p, previous) in plans.iter().zip(&before) {
                let seek = (|| {
                    fail::fail_point!("offsets_seek", moved.len() == 1, |_| Err(
                        rdkafka::error::KafkaError::Seek("failpoint offsets_seek".into())
                    ));
                    consumer.seek(
                        &control.topic,
                        p.partition,
                        rdkafka::Offset::Offset(p.new),
                        Duration::from_secs(5),
                    )
                })();
                if let Err(e) = seek {
                    return Err(unavailable(format!(
                        "moving the fetch position of partition {}: {e}; nothing committed, {}",
                        p.partition,
                        put_back(consumer, &control.topic, &moved)
                    )));
                }
                moved.push((p.partition, *previous));
            }
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in &plans {
                tpl.add_partition_offset(
                    &control.topic,
                    p.partition,
                    rdkafka::Offset::Offset(p.new),
                )
                .map_err(|e| unavailable(e.to_string()))?;
            }
            let commit = (|| {
                fail::fail_point!("offsets_commit", |_| Err(
                    rdkafka::error::KafkaError::ConsumerCommit(
                        rdkafka::types::RDKafkaErrorCode::RebalanceInProgress
                    )
                ));
                consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            })();
            if let Err(e) = commit {
                return Err(unavailable(format!(
                    "committing the new offsets: {e}; nothing committed, {}",
                    put_back(consumer, &control.topic, &moved)
                )));
            }
            drop(tpl);
            let committed: Vec<(String, i32, i64)> = plans
                .iter()
                .map(|p| (control.topic.clone(), p.partition, p.new))
                .collect();
            lag.committed(&committed);
            tracing::info!(offsets = ?committed, "Offsets changed through the control API");
            Ok(plans)
        })();
        let _ = self.reply.send(result);
    }
}

/// Each planned partition's fetch position now; where none is known yet (nothing fetched since
/// the assignment), the committed offset the fetch would start from.
fn positions(
    consumer: &SinkConsumer,
    topic: &str,
    plans: &[PartitionPlan],
) -> Vec<rdkafka::Offset> {
    let now = consumer.position().ok();
    plans
        .iter()
        .map(|p| {
            let position = now
                .as_ref()
                .and_then(|tpl| tpl.find_partition(topic, p.partition))
                .map(|e| e.offset());
            match (position, p.current) {
                (Some(o @ rdkafka::Offset::Offset(_)), _) => o,
                (_, Some(committed)) => rdkafka::Offset::Offset(committed),
                _ => rdkafka::Offset::Beginning,
            }
        })
        .collect()
}

/// Moves the fetch positions in `moved` back where they were; says what it did, for the answer.
fn put_back(consumer: &SinkConsumer, topic: &str, moved: &[(i32, rdkafka::Offset)]) -> String {
    let stuck: Vec<i32> = moved
        .iter()
        .filter(|(partition, previous)| {
            consumer
                .seek(topic, *partition, *previous, Duration::from_secs(5))
                .is_err()
        })
        .map(|(partition, _)| *partition)
        .collect();
    if stuck.is_empty() {
        "every fetch position left or put back where it was".to_string()
    } else {
        format!(
            "but the fetch positions of partitions {stuck:?} moved and could not be put back: \
             restart the sink before resuming it (it then reads from the committed offsets)"
        )
    }
}

fn unavailable(message: String) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("Kafka did not do what was asked: {message}"),
    )
}

#[derive(Serialize)]
struct Status {
    name: &'static str,
    r#type: &'static str,
    connector: ConnectorState,
    topic: String,
    group: String,
    /// Pausing lasts as long as the process.
    pause_survives_restart: bool,
    failing: Vec<Failing>,
    /// The last failure a stage retried, gone or not.
    last_error: Option<LastError>,
    partitions: Vec<PartitionStatus>,
}

#[derive(Serialize)]
struct PartitionStatus {
    partition: i32,
    committed_offset: Option<i64>,
    lag: Option<i64>,
    paused: bool,
}

async fn status(State(control): State<Arc<Control>>) -> Json<Status> {
    let paused = *control.paused.borrow();
    let (state, partitions) = match control.live.get() {
        None => ("UNASSIGNED", Vec::new()),
        Some(live) => {
            let held = live.pause.is_held();
            let mut partitions: Vec<PartitionStatus> = live
                .consumer
                .assignment()
                .map(|a| {
                    a.elements()
                        .iter()
                        .map(|e| PartitionStatus {
                            partition: e.partition(),
                            committed_offset: live.lag.last_committed(e.topic(), e.partition()),
                            lag: live.lag.last_lag(e.partition()),
                            paused: held,
                        })
                        .collect()
                })
                .unwrap_or_default();
            partitions.sort_by_key(|p| p.partition);
            (if paused { "PAUSED" } else { "RUNNING" }, partitions)
        }
    };
    let (connector, failing) = ConnectorState::new(state, &control.worker_id, &control.readiness);
    Json(Status {
        name: "sink-connector",
        r#type: "sink",
        connector,
        topic: control.topic.clone(),
        group: control.group.clone(),
        pause_survives_restart: false,
        failing,
        last_error: control.last_error.lock().expect("last error lock").clone(),
        partitions,
    })
}

async fn pause(State(control): State<Arc<Control>>) -> (StatusCode, Json<StateChange>) {
    if !control.paused.send_replace(true) {
        tracing::info!(
            "Paused through the control API: fetching stops once the batch in flight is committed"
        );
    }
    (StatusCode::ACCEPTED, Json(StateChange { state: "PAUSED" }))
}

async fn resume(State(control): State<Arc<Control>>) -> (StatusCode, Json<StateChange>) {
    if control.paused.send_replace(false) {
        tracing::info!("Resumed through the control API");
    }
    (StatusCode::ACCEPTED, Json(StateChange { state: "RUNNING" }))
}

/// KIP-875's shape for a sink connector's offsets.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Offsets {
    offsets: Vec<PartitionOffset>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionOffset {
    partition: KafkaPartition,
    /// `null` in a PATCH: back to the partition's start. Required (a missing field is a 400,
    /// not a reset).
    #[serde(deserialize_with = "Option::deserialize")]
    offset: Option<KafkaOffset>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaPartition {
    kafka_topic: String,
    kafka_partition: i32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaOffset {
    kafka_offset: i64,
}

async fn offsets(State(control): State<Arc<Control>>) -> Result<Json<Offsets>, ApiError> {
    let committed = control.committed_offsets().await?;
    Ok(Json(Offsets {
        offsets: committed
            .into_iter()
            .map(|(partition, offset)| PartitionOffset {
                partition: KafkaPartition {
                    kafka_topic: control.topic.clone(),
                    kafka_partition: partition,
                },
                offset: Some(KafkaOffset {
                    kafka_offset: offset,
                }),
            })
            .collect(),
    }))
}

#[derive(Serialize)]
struct Altered {
    message: String,
    partitions: Vec<PlannedPartition>,
}

#[derive(Serialize)]
struct PlannedPartition {
    partition: i32,
    previous_offset: Option<i64>,
    offset: i64,
    low: i64,
    high: i64,
}

async fn alter_offsets(
    State(control): State<Arc<Control>>,
    body: Result<Json<Offsets>, JsonRejection>,
) -> Result<Json<Altered>, ApiError> {
    let Json(body) = body?;
    if body.offsets.is_empty() {
        return Err(ApiError::bad_request(
            "no offsets given: {\"offsets\": [{\"partition\": {\"kafka_topic\": ..., \"kafka_partition\": 0}, \"offset\": {\"kafka_offset\": 0}}]}",
        ));
    }
    let mut wanted = Vec::new();
    for o in &body.offsets {
        if o.partition.kafka_topic != control.topic {
            return Err(ApiError::bad_request(format!(
                "this sink reads `{}`, not `{}`",
                control.topic, o.partition.kafka_topic
            )));
        }
        let target = match &o.offset {
            None => Target::Earliest,
            Some(KafkaOffset { kafka_offset }) if *kafka_offset < 0 => {
                return Err(ApiError::bad_request(format!(
                    "offset {kafka_offset} for partition {}: offsets are 0 or more",
                    o.partition.kafka_partition
                )))
            }
            Some(KafkaOffset { kafka_offset }) => Target::Offset(*kafka_offset),
        };
        if wanted
            .iter()
            .any(|(p, _)| *p == o.partition.kafka_partition)
        {
            return Err(ApiError::bad_request(format!(
                "partition {} is given twice",
                o.partition.kafka_partition
            )));
        }
        wanted.push((o.partition.kafka_partition, target));
    }
    change_offsets(&control, wanted).await
}

async fn reset_offsets(State(control): State<Arc<Control>>) -> Result<Json<Altered>, ApiError> {
    change_offsets(&control, Vec::new()).await
}

/// 409 unless the sink runs, is paused and is alone in its group.
async fn may_change_offsets(control: &Arc<Control>) -> Result<(), ApiError> {
    if control.live.get().is_none() {
        return Err(ApiError::conflict(
            "the sink is still starting: try again once GET /status says PAUSED",
        ));
    }
    if !*control.paused.borrow() {
        return Err(ApiError::conflict(
            "the sink is running: pause it first (PUT /pause), change the offsets, then PUT /resume",
        ));
    }
    let c = control.clone();
    let members = tokio::task::spawn_blocking(move || replay::member_count(&c.kafka, &c.group))
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .map_err(|e| unavailable(format!("{e:#}")))?;
    if members > 1 {
        return Err(ApiError::conflict(format!(
            "group `{}` has {members} members: stop the other sink instances (see \
             `sink-connector describe-group`), then try again",
            control.group
        )));
    }
    Ok(())
}

/// Puts the change where the pipeline takes it between batches, and waits for its outcome; a
/// change not taken within [`APPLY_WAIT`] is withdrawn.
async fn hand_over(
    control: &Control,
    wanted: Vec<(i32, Target)>,
) -> Result<Vec<PartitionPlan>, ApiError> {
    let (reply, mut answer) = oneshot::channel();
    let id = control
        .next_change
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    {
        let mut slot = control.change.lock().expect("change lock");
        if slot.is_some() {
            return Err(ApiError::conflict("another offsets change is under way"));
        }
        *slot = Some(OffsetsChange { id, wanted, reply });
    }
    let plans = match tokio::time::timeout(APPLY_WAIT, &mut answer).await {
        Ok(Ok(result)) => result?,
        Ok(Err(_)) => {
            return Err(ApiError::conflict(
                "the sink was resumed before it applied the change: nothing changed",
            ))
        }
        Err(_) => {
            let withdrawn = {
                let mut slot = control.change.lock().expect("change lock");
                let ours = slot.as_ref().is_some_and(|c| c.id == id);
                if ours {
                    slot.take();
                }
                ours
            };
            if withdrawn {
                return Err(ApiError::conflict(
                    "the sink did not reach a quiet moment between batches in 30 s: nothing \
                     changed, try again",
                ));
            }
            // Taken by the pipeline: being applied now; its outcome is the answer.
            match answer.await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(ApiError::conflict(
                        "the sink was resumed before it applied the change: nothing changed",
                    ))
                }
            }
        }
    };
    Ok(plans)
}

/// Hands the change to the pipeline once the conditions hold, and waits for its outcome.
/// `wanted` empty: every partition back to its start.
async fn change_offsets(
    control: &Arc<Control>,
    mut wanted: Vec<(i32, Target)>,
) -> Result<Json<Altered>, ApiError> {
    may_change_offsets(control).await?;
    if wanted.is_empty() {
        let c = control.clone();
        let all = tokio::task::spawn_blocking(move || replay::topic_partitions(&c.kafka, &c.topic))
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|e| unavailable(format!("{e:#}")))?;
        wanted = all.into_iter().map(|p| (p, Target::Earliest)).collect();
    }
    let plans = hand_over(control, wanted).await?;
    Ok(Json(Altered {
        message: "The offsets for this connector have been altered successfully; PUT /resume \
                  to read from them"
            .into(),
        partitions: plans
            .into_iter()
            .map(|p| PlannedPartition {
                partition: p.partition,
                previous_offset: p.current,
                offset: p.new,
                low: p.low,
                high: p.high,
            })
            .collect(),
    }))
}
