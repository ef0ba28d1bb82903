//! Crash chaos: the sink is SIGKILLed at random points while it drains a backlog that keeps
//! growing, PostgreSQL is restarted under it now and then, poison records are mixed in; at the
//! end the tables must be exactly what the topic implies and the offsets committed to the end.
//!
//! CI runs a short version (6 cycles). `make chaos` runs `CHAOS_CYCLES=50`; `CHAOS_SEED`
//! replays a run (the seed is printed), `CHAOS_PG_RESTART_EVERY` (3) sets how many cycles pass
//! between PostgreSQL restarts (0: never), `CHAOS_RATE` (records/s produced meanwhile, 600) and
//! `CHAOS_BACKLOG` (records produced before the first start, 20,000). It prints a figures table
//! and fails on any loss or mismatch. Its own test binary: it restarts the stack's PostgreSQL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use plumbing::testing::{unique, Stack};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use schemas::TrendingVideo;
use sink_connector::testing::{
    at, committed, header, pg_ctl, read_all, register, stored_snapshots, stored_videos, wire, Sink,
    Snapshot,
};
use tokio_util::sync::CancellationToken;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const PARTITIONS: i32 = 4;
const REGIONS: [&str; 4] = ["FR", "US", "JP", "DE"];

/// What was produced: valid records, poison positions, end offsets.
#[derive(Default)]
struct Produced {
    valid: Vec<TrendingVideo>,
    /// Partition and offset of each valid record.
    positions: Vec<(i32, i64)>,
    /// Each poison record's reason to be dead-lettered, key and value, by position.
    poison: HashMap<(i32, i64), Poison>,
    ends: HashMap<i32, i64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Poison {
    reason: &'static str,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Produces whole charts: 4 regions x 200 videos per poll, ids shared across regions and
/// polls; 1 record in 150 is replaced by a poison record.
struct Charts {
    producer: FutureProducer,
    topic: String,
    schema_id: u32,
    /// Records/s when producing until stopped.
    rate: u64,
    next_poll: i64,
    rng: fastrand::Rng,
}

impl Charts {
    /// Produces `limit` records at full speed, or without a limit at `rate` until `stop`.
    async fn produce(
        &mut self,
        limit: Option<usize>,
        stop: &CancellationToken,
        out: &mut Produced,
    ) {
        let (producer, topic, schema_id, rng) = (
            &self.producer,
            self.topic.as_str(),
            self.schema_id,
            &mut self.rng,
        );
        let mut sent = 0;
        loop {
            let poll = self.next_poll;
            self.next_poll += 1;
            let fetched: DateTime<Utc> = at(1_700_000_000 + poll * 1800);
            for (r, region) in REGIONS.iter().enumerate() {
                if stop.is_cancelled() || limit.is_some_and(|l| sent >= l) {
                    return;
                }
                let started = tokio::time::Instant::now();
                let mut sends = Vec::new();
                for rank in 0..200i64 {
                    let id = format!("C{:05}", (rank + poll * 37 + r as i64 * 150) % 600);
                    let mut v = schemas::sample(&id, region, rank as i32 + 1, fetched);
                    // Values that differ from poll to poll in every kind of column, so that a
                    // row written from the wrong record shows.
                    v.view_count = Some(poll * 1000 + rank);
                    v.title = Some(format!("{region} poll {poll} rank {rank}"));
                    v.like_count = ((rank + poll) % 5 != 0).then_some(poll + rank);
                    v.tags = ((rank + poll) % 4 != 0).then(|| vec![format!("p{poll}")]);
                    v.caption = Some((rank + poll) % 2 == 0);
                    v.published_at = Some(fetched - chrono::Duration::hours(rank % 48));
                    let poison = rng.u32(0..150) == 0;
                    let kind = if poison { rng.u8(0..3) } else { 3 };
                    if kind == 1 {
                        v.view_count = Some(-1);
                    }
                    let body = apache_avro::to_avro_datum(schemas::schema(), v.to_avro()).unwrap();
                    let value = match kind {
                        0 => b"\xffgarbage".to_vec(),
                        2 => wire(schema_id, &body[..body.len() / 2]),
                        _ => wire(schema_id, &body),
                    };
                    let key = id.into_bytes();
                    let poison = poison.then(|| Poison {
                        reason: ["not_wire_format", "invalid", "avro"][kind as usize],
                        key: key.clone(),
                        value: value.clone(),
                    });
                    sends.push((
                        poison,
                        v,
                        producer
                            .send_result(
                                FutureRecord::<[u8], [u8]>::to(topic)
                                    .key(&key)
                                    .payload(&value),
                            )
                            .map_err(|(e, _)| e)
                            .expect("enqueue"),
                    ));
                }
                for (poison, v, send) in sends {
                    let d = send
                        .await
                        .expect("delivery report")
                        .map_err(|(e, _)| e)
                        .expect("produce");
                    let (partition, offset) = (d.partition, d.offset);
                    let end = out.ends.entry(partition).or_insert(0);
                    *end = (*end).max(offset + 1);
                    if let Some(poison) = poison {
                        out.poison.insert((partition, offset), poison);
                    } else {
                        out.valid.push(v);
                        out.positions.push((partition, offset));
                    }
                }
                sent += 200;
                if limit.is_none() {
                    let pace = Duration::from_secs_f64(200.0 / self.rate as f64);
                    tokio::time::sleep_until(started + pace).await;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_sink_killed_at_random_and_postgres_restarted_loses_nothing_and_adds_nothing() {
    let seed = env_num(
        "CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    let cycles = env_num("CHAOS_CYCLES", 6) as usize;
    let pg_every = env_num("CHAOS_PG_RESTART_EVERY", 3) as usize;
    let rate = env_num("CHAOS_RATE", 600);
    let backlog = env_num("CHAOS_BACKLOG", 20_000) as usize;
    println!("chaos: seed {seed} (CHAOS_SEED={seed} replays this run), {cycles} cycles");
    let mut rng = fastrand::Rng::with_seed(seed);

    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(PARTITIONS).await.unwrap();
    let group = unique("chaos-");
    let db = stack.create_database().await.unwrap();
    let mut charts = Charts {
        // Batched, as the source produces: a sink killed after committing part of a batch
        // resumes in its middle.
        producer: stack.producer(&[]),
        topic: topic.clone(),
        schema_id: register(&stack, &format!("{topic}-value"), schemas::schema()).await,
        rate,
        next_poll: 0,
        rng: fastrand::Rng::with_seed(seed ^ 0x5eed),
    };

    // A backlog first, then records keep coming while the sink is killed again and again.
    let mut produced = Produced::default();
    charts
        .produce(Some(backlog), &CancellationToken::new(), &mut produced)
        .await;
    let stop = CancellationToken::new();
    let stop2 = stop.clone();
    let background = tokio::spawn(async move {
        let mut more = Produced::default();
        charts.produce(None, &stop2, &mut more).await;
        more
    });

    // The shortest session the broker allows (group.min.session.timeout.ms, 6 s by default): a
    // member killed without leaving stays in the group until it expires, and the next sink's
    // rebalance waits for it that long.
    let session = [(
        "KAFKA_PROPERTIES",
        "session.timeout.ms=6000,heartbeat.interval.ms=1000",
    )];
    let (mut kills, mut pg_restarts) = (0, 0);
    for cycle in 0..cycles {
        let batch = [20, 100, 500][rng.usize(0..3)].to_string();
        let before = committed(&stack, &topic, &group, PARTITIONS);
        let mut sink = Sink::spawn(
            &stack,
            &db,
            &topic,
            &group,
            &[session[0], ("SINK_BATCH_MAX_RECORDS", &batch)],
        );
        // Killed while draining: after its first commit, at a random point.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while committed(&stack, &topic, &group, PARTITIONS) == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "cycle {cycle}: the sink committed nothing in 30 s:\n{}",
                sink.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let life = Duration::from_millis(rng.u64(0..1500));
        tokio::time::sleep(life / 2).await;
        if pg_every > 0 && cycle % pg_every == pg_every - 1 {
            pg_ctl("restart");
            pg_restarts += 1;
        }
        tokio::time::sleep(life / 2).await;
        if let Some(status) = sink.child.try_wait().unwrap() {
            panic!(
                "cycle {cycle}: the sink exited by itself ({status}):\n{}",
                sink.logs()
            );
        }
        sink.sigkill();
        sink.child.wait().await.unwrap();
        kills += 1;
    }
    stop.cancel();
    let more = background.await.unwrap();
    produced.valid.extend(more.valid);
    produced.positions.extend(more.positions);
    produced.poison.extend(more.poison);
    for (p, end) in more.ends {
        let e = produced.ends.entry(p).or_insert(0);
        *e = (*e).max(end);
    }

    // A last sink drains what is left; offsets must reach the end.
    let sink = Sink::spawn(&stack, &db, &topic, &group, &session);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let c = committed(&stack, &topic, &group, PARTITIONS);
        if produced.ends.iter().all(|(p, end)| c.get(p) == Some(end)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "offsets {c:?} never reached {:?}:\n{}",
            produced.ends,
            sink.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sink.stop().await;

    // What the topic implies: per snapshot key its record's values, per video its newest record
    // (by fetched_at, then region code) and its earliest fetched_at.
    type SnapshotKey = (String, i64, String);
    let mut snapshots: HashMap<SnapshotKey, Snapshot> = HashMap::new();
    let mut videos: HashMap<String, (TrendingVideo, DateTime<Utc>)> = HashMap::new();
    for v in &produced.valid {
        let t = v.fetched_at.timestamp_millis();
        snapshots.insert(
            (v.region_code.clone(), t, v.video_id.clone()),
            Snapshot::of(v),
        );
        videos
            .entry(v.video_id.clone())
            .and_modify(|(best, first)| {
                if (v.fetched_at, &v.region_code) > (best.fetched_at, &best.region_code) {
                    *best = v.clone();
                }
                *first = (*first).min(v.fetched_at);
            })
            .or_insert((v.clone(), v.fetched_at));
    }
    // `videos` keeps no chart size.
    for (best, _) in videos.values_mut() {
        best.chart_size = None;
    }

    // What the tables hold, every column.
    let found_snapshots = stored_snapshots(&db).await;
    let found_videos = stored_videos(&db).await;
    let missing = snapshots
        .keys()
        .filter(|k| !found_snapshots.contains_key(*k))
        .count()
        + videos
            .keys()
            .filter(|k| !found_videos.contains_key(*k))
            .count();
    let extra = found_snapshots
        .keys()
        .filter(|k| !snapshots.contains_key(*k))
        .count()
        + found_videos
            .keys()
            .filter(|k| !videos.contains_key(*k))
            .count();
    let mut where_missing: Vec<(i32, i64)> = produced
        .valid
        .iter()
        .zip(&produced.positions)
        .filter(|(v, _)| {
            !found_snapshots.contains_key(&(
                v.region_code.clone(),
                v.fetched_at.timestamp_millis(),
                v.video_id.clone(),
            ))
        })
        .map(|(_, p)| *p)
        .collect();
    where_missing.sort();
    let mut mismatched: Vec<String> = snapshots
        .iter()
        .filter(|(k, v)| found_snapshots.get(*k).is_some_and(|f| f != *v))
        .map(|(k, v)| format!("snapshot {k:?}: {:?}, expected {v:?}", found_snapshots[k]))
        .collect();
    mismatched.extend(
        videos
            .iter()
            .filter(|(id, v)| found_videos.get(*id).is_some_and(|f| f != *v))
            .map(|(id, v)| format!("video {id}: {:?}, expected {v:?}", found_videos[id])),
    );

    // Dead letters: every poison record at least once (a kill between the dead-letter produce
    // and the commit sends it again), nothing else.
    let dlq = read_all(&stack, &format!("{topic}.dlq"));
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut dead: HashSet<(i32, i64)> = HashSet::new();
    for m in &dlq {
        let at: (i32, i64) = (
            header(m, "__connect.errors.partition").parse().unwrap(),
            header(m, "__connect.errors.offset").parse().unwrap(),
        );
        let class = header(m, "__connect.errors.exception.class.name");
        let reason = class.rsplit("::").next().unwrap().to_string();
        // Each copy says why, and carries the record as it was produced.
        if let Some(poison) = produced.poison.get(&at) {
            assert_eq!(reason, poison.reason, "dead letter of {at:?}");
            assert_eq!(m.key(), Some(poison.key.as_slice()), "key of {at:?}");
            assert_eq!(
                m.payload(),
                Some(poison.value.as_slice()),
                "value of {at:?}"
            );
        }
        if dead.insert(at) {
            *by_reason.entry(reason).or_default() += 1;
        }
    }
    let poison: HashSet<(i32, i64)> = produced.poison.keys().copied().collect();
    let dlq_missing = poison.difference(&dead).count();
    let dlq_extra = dead.difference(&poison).count();

    let records: i64 = produced.ends.values().sum();
    println!("| figure | value |");
    println!("| --- | --- |");
    println!("| seed | {seed} |");
    println!("| cycles run (sink SIGKILLed) | {kills} |");
    println!("| PostgreSQL restarts survived | {pg_restarts} |");
    println!(
        "| records produced | {records} ({} valid, {} poison) |",
        produced.valid.len(),
        produced.poison.len()
    );
    println!(
        "| rows expected (videos + snapshots) | {} + {} |",
        videos.len(),
        snapshots.len()
    );
    println!(
        "| rows found (videos + snapshots) | {} + {} |",
        found_videos.len(),
        found_snapshots.len()
    );
    println!("| missing | {missing} |");
    println!("| extra | {extra} |");
    println!("| rows with other values | {} |", mismatched.len());
    println!("| DLQ records (distinct) by reason | {by_reason:?} |");
    println!(
        "| DLQ copies beyond the first (at least once) | {} |",
        dlq.len() - dead.len()
    );
    println!("| poison records not dead-lettered | {dlq_missing} |");
    println!(
        "| committed offsets | at the end offsets {:?} |",
        produced.ends
    );

    assert_eq!(
        missing, 0,
        "rows missing; snapshots of records at (partition, offset) {where_missing:?}"
    );
    assert_eq!(extra, 0, "rows that no record implies");
    assert!(
        mismatched.is_empty(),
        "{} rows with other values than their record's, first ones: {:#?}",
        mismatched.len(),
        &mismatched[..mismatched.len().min(3)]
    );
    assert_eq!(dlq_missing, 0, "poison records not dead-lettered");
    // Every kind of poison record was produced (1 in 3 each, of 1 in 150 records: certain at
    // the default backlog), so every reason was checked.
    if produced.poison.len() >= 30 {
        assert_eq!(
            by_reason.keys().collect::<Vec<_>>(),
            ["avro", "invalid", "not_wire_format"],
            "reasons dead-lettered"
        );
    }

    assert_eq!(dlq_extra, 0, "dead letters of valid records");
    assert_eq!(
        records as usize,
        produced.valid.len() + produced.poison.len()
    );
}
