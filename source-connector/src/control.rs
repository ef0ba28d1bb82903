//! The source's control API, on the HTTP port beside `/metrics` (shapes after Kafka Connect's
//! REST API and KIP-875; written down in `openapi.yaml`):
//!
//! - `GET /status`: state (`UNASSIGNED` while starting, `RUNNING`, `PAUSED`) and each region's
//!   state, last success, next poll, last error and quota units spent today;
//! - `PUT /pause`, `PUT /resume`: no poll starts while paused (a poll in flight finishes). The
//!   target state is kept in the state topic: a restarted source stays paused;
//! - `POST /regions/{code}/poll`: poll that region now, unless the quota, a pause, a poll in
//!   flight or a parked region forbids it (409 with the reason);
//! - `GET /offsets`: each region's last successful poll, as the state topic keeps it.
//!
//! Mutating calls need the admin token (see `plumbing::control`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use plumbing::control::{require_token, Admin, ApiError, ConnectorState, Failing, StateChange};
use plumbing::readiness::Readiness;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::quota::QuotaMeter;
use crate::state::{RegionState, TargetState};

/// Where a region's loop stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RegionPhase {
    /// Starting: the schedule is not known yet.
    Unassigned,
    /// Waiting for its next poll.
    Scheduled,
    Polling,
    /// The source is paused: no poll starts.
    Paused,
    /// The day's quota is spent: waiting for the reset.
    WaitingForQuota,
    /// Stopped for good (a rejected key, a region without a chart): see `last_error`.
    Parked,
    Stopped,
}

/// Where one region stands, as the region loop reports it.
#[derive(Debug, Clone, Serialize)]
pub struct RegionStatus {
    pub region: String,
    pub state: RegionPhase,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_success_videos: Option<usize>,
    pub next_poll_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// A region in `/status`: its status and the quota units it spent today (counted by the API
/// client's meter, read at each call).
#[derive(Serialize)]
struct RegionView {
    #[serde(flatten)]
    status: RegionStatus,
    quota_units_today: u64,
}

/// What the routes and the region loops share.
pub struct Control {
    worker_id: String,
    readiness: Readiness,
    quota: Arc<QuotaMeter>,
    daily_quota: u64,
    started: std::sync::atomic::AtomicBool,
    target: watch::Sender<TargetState>,
    regions: Mutex<BTreeMap<String, RegionStatus>>,
    poll_now: BTreeMap<String, Arc<Notify>>,
}

impl Control {
    pub fn new(
        config: &crate::config::Config,
        readiness: Readiness,
        quota: Arc<QuotaMeter>,
    ) -> Arc<Control> {
        let regions = config
            .regions
            .iter()
            .map(|r| {
                (
                    r.clone(),
                    RegionStatus {
                        region: r.clone(),
                        state: RegionPhase::Unassigned,
                        last_success_at: None,
                        last_success_videos: None,
                        next_poll_at: None,
                        last_error: None,
                    },
                )
            })
            .collect();
        Arc::new(Control {
            worker_id: config.http_addr.to_string(),
            readiness,
            quota,
            daily_quota: config.daily_quota,
            started: Default::default(),
            target: watch::Sender::new(TargetState::Started),
            regions: Mutex::new(regions),
            poll_now: config
                .regions
                .iter()
                .map(|r| (r.clone(), Arc::new(Notify::new())))
                .collect(),
        })
    }

    /// The control routes, mutating ones behind the admin token.
    pub fn router(self: &Arc<Self>, admin: Admin) -> Router {
        Router::new()
            .route("/status", get(status))
            .route("/pause", put(pause))
            .route("/resume", put(resume))
            .route("/regions/{code}/poll", post(poll_now))
            .route("/offsets", get(offsets))
            .route_layer(axum::middleware::from_fn_with_state(admin, require_token))
            .with_state(self.clone())
    }

    /// At start: the target state and each region's last success, from the state topic.
    pub fn started(
        &self,
        target: TargetState,
        last: &std::collections::HashMap<String, RegionState>,
    ) {
        self.target.send_replace(target);
        let mut regions = self.regions.lock().expect("regions lock");
        for (code, s) in regions.iter_mut() {
            if let Some(l) = last.get(code) {
                s.last_success_at = Some(l.last_success_at);
                s.last_success_videos = Some(l.videos);
            }
        }
        self.started
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// An operator's pause or resume. Refused while starting: the state topic's target state is
    /// not read yet, and would overwrite it.
    fn set_target(&self, target: TargetState) -> Result<(), ApiError> {
        if !self.started.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApiError::conflict(
                "the source is still starting: try again once GET /status says RUNNING or PAUSED",
            ));
        }
        self.target.send_if_modified(|t| {
            let changed = *t != target;
            *t = target;
            changed
        });
        Ok(())
    }

    /// Changes to the target state, for the task that records them and for the region loops.
    pub fn watch_target(&self) -> watch::Receiver<TargetState> {
        self.target.subscribe()
    }

    /// Wakes when someone asks for a poll of `region` now.
    pub fn poll_requests(&self, region: &str) -> Arc<Notify> {
        self.poll_now[region].clone()
    }

    /// Updates a region's status.
    pub fn region(&self, region: &str, update: impl FnOnce(&mut RegionStatus)) {
        if let Some(s) = self.regions.lock().expect("regions lock").get_mut(region) {
            update(s);
        }
    }
}

#[derive(Serialize)]
struct Status {
    name: &'static str,
    r#type: &'static str,
    connector: ConnectorState,
    /// The target state is kept in the state topic.
    pause_survives_restart: bool,
    failing: Vec<Failing>,
    quota: Quota,
    regions: Vec<RegionView>,
}

#[derive(Serialize)]
struct Quota {
    daily_units: u64,
    units_spent_today: u64,
}

async fn status(State(control): State<Arc<Control>>) -> Json<Status> {
    let state = if !control.started.load(std::sync::atomic::Ordering::SeqCst) {
        "UNASSIGNED"
    } else if *control.target.borrow() == TargetState::Paused {
        "PAUSED"
    } else {
        "RUNNING"
    };
    let now = Utc::now();
    let regions = control
        .regions
        .lock()
        .expect("regions lock")
        .values()
        .map(|s| RegionView {
            quota_units_today: control.quota.spent(&s.region, now),
            status: s.clone(),
        })
        .collect();
    let (connector, failing) = ConnectorState::new(state, &control.worker_id, &control.readiness);
    Json(Status {
        name: "source-connector",
        r#type: "source",
        connector,
        pause_survives_restart: true,
        failing,
        quota: Quota {
            daily_units: control.daily_quota,
            units_spent_today: control.quota.spent_by_all(now),
        },
        regions,
    })
}

async fn pause(
    State(control): State<Arc<Control>>,
) -> Result<(StatusCode, Json<StateChange>), ApiError> {
    control.set_target(TargetState::Paused)?;
    Ok((StatusCode::ACCEPTED, Json(StateChange { state: "PAUSED" })))
}

async fn resume(
    State(control): State<Arc<Control>>,
) -> Result<(StatusCode, Json<StateChange>), ApiError> {
    control.set_target(TargetState::Started)?;
    Ok((StatusCode::ACCEPTED, Json(StateChange { state: "RUNNING" })))
}

#[derive(Serialize)]
struct PollAccepted {
    region: String,
    state: RegionPhase,
}

/// Units one poll may cost: its chart's pages and a categories call.
const POLL_UNITS: u64 = crate::quota::PAGES_PER_POLL + 1;

async fn poll_now(
    State(control): State<Arc<Control>>,
    code: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<PollAccepted>), ApiError> {
    let Path(code) = code?;
    let Some(notify) = control.poll_now.get(&code) else {
        let known: Vec<&String> = control.poll_now.keys().collect();
        return Err(ApiError::not_found(format!(
            "no region `{code}` here: this source polls {known:?} (YOUTUBE_REGIONS)"
        )));
    };
    if !control.started.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::conflict(
            "the source is still starting: try again once GET /status says RUNNING",
        ));
    }
    if *control.target.borrow() == TargetState::Paused {
        return Err(ApiError::conflict(
            "the source is paused: PUT /resume first",
        ));
    }
    let spent = control.quota.spent_by_all(Utc::now());
    if spent + POLL_UNITS > control.daily_quota {
        return Err(ApiError::conflict(format!(
            "the day's quota is spent: {spent} of {} units (YOUTUBE_DAILY_QUOTA); polls resume \
             after midnight America/Los_Angeles",
            control.daily_quota
        )));
    }
    let phase = {
        let regions = control.regions.lock().expect("regions lock");
        let s = &regions[&code];
        match s.state {
            RegionPhase::Scheduled => Ok(()),
            RegionPhase::Polling => Err(format!("a poll of {code} is under way")),
            RegionPhase::WaitingForQuota => Err(format!(
                "the API said the quota is spent; {code} waits for the reset at {}",
                s.next_poll_at.map(|t| t.to_rfc3339()).unwrap_or_default()
            )),
            RegionPhase::Parked => Err(format!(
                "{code} is not polled any more: {}",
                s.last_error.as_deref().unwrap_or("see the logs")
            )),
            other => Err(format!("{code} cannot be polled now ({other:?})")),
        }
    };
    phase.map_err(ApiError::conflict)?;
    notify.notify_one();
    tracing::info!(region = %code, "Poll asked through the control API");
    Ok((
        StatusCode::ACCEPTED,
        Json(PollAccepted {
            region: code,
            state: RegionPhase::Polling,
        }),
    ))
}

/// KIP-875's shape for a source connector's offsets: the region as the partition, its last
/// successful poll as the offset.
#[derive(Serialize)]
struct Offsets {
    offsets: Vec<RegionOffset>,
}

#[derive(Serialize)]
struct RegionOffset {
    partition: RegionPartition,
    offset: RegionLastSuccess,
}

#[derive(Serialize)]
struct RegionPartition {
    region: String,
}

#[derive(Serialize)]
struct RegionLastSuccess {
    last_success_at: DateTime<Utc>,
    videos: usize,
}

async fn offsets(State(control): State<Arc<Control>>) -> Json<Offsets> {
    let regions = control.regions.lock().expect("regions lock");
    Json(Offsets {
        offsets: regions
            .values()
            .filter_map(|s| {
                Some(RegionOffset {
                    partition: RegionPartition {
                        region: s.region.clone(),
                    },
                    offset: RegionLastSuccess {
                        last_success_at: s.last_success_at?,
                        videos: s.last_success_videos.unwrap_or(0),
                    },
                })
            })
            .collect(),
    })
}
