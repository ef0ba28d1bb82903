//! The offset tool: `describe-group` shows a group's members, committed offsets and lag;
//! `reset-offsets` moves a group's committed offsets (to earliest, latest, a date-time, a shift
//! or an offset), as `kafka-consumer-groups --reset-offsets` does, with a dry run by default.
//!
//! Replaying is harmless here: the sink's writes are idempotent and guarded, so re-reading old
//! records converges to the same tables. The tool refuses to move the offsets of a group that
//! is not empty, deciding from the group's state and not only its member list (a group in the
//! middle of a rebalance can list no member and still be live).
//!
//! `--to-datetime` asks the broker, per partition, for the first offset whose timestamp is at
//! or after the time (ListOffsets by timestamp), as `kafka-consumer-groups` does.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args};
use plumbing::kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where to move the offsets: exactly one of the `--to-*` / `--shift-by` options.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("target").required(true).multiple(false)))]
pub struct ResetArgs {
    /// To the first offset still in each partition.
    #[arg(long, group = "target")]
    pub to_earliest: bool,
    /// To the end of each partition (skip everything not yet read).
    #[arg(long, group = "target")]
    pub to_latest: bool,
    /// To the first record at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long, group = "target")]
    pub to_datetime: Option<DateTime<Utc>>,
    /// By this many records from the current committed offset (negative replays).
    #[arg(long, group = "target", allow_negative_numbers = true)]
    pub shift_by: Option<i64>,
    /// To this offset in every chosen partition.
    #[arg(long, group = "target")]
    pub to_offset: Option<i64>,
    /// Only these partitions (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    pub partitions: Vec<i32>,
    /// Apply the change. Without it, only show what would change (dry run).
    #[arg(long)]
    pub execute: bool,
}

/// Where the offsets go, from the one `--to-*` / `--shift-by` option given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Earliest,
    Latest,
    Datetime(DateTime<Utc>),
    ShiftBy(i64),
    Offset(i64),
}

impl ResetArgs {
    pub fn target(&self) -> anyhow::Result<Target> {
        Ok(match self {
            ResetArgs {
                to_earliest: true, ..
            } => Target::Earliest,
            ResetArgs {
                to_latest: true, ..
            } => Target::Latest,
            ResetArgs {
                to_datetime: Some(at),
                ..
            } => Target::Datetime(*at),
            ResetArgs {
                shift_by: Some(n), ..
            } => Target::ShiftBy(*n),
            ResetArgs {
                to_offset: Some(o), ..
            } => Target::Offset(*o),
            _ => bail!(
                "say where to: --to-earliest, --to-latest, --to-datetime, --shift-by or --to-offset"
            ),
        })
    }
}

/// One partition's line of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    pub current: Option<i64>,
    pub new: i64,
}

impl PartitionPlan {
    /// Records that will be read again (positive) or skipped (negative) compared with the
    /// current committed offset (or with the start, for a group that never committed).
    pub fn change(&self) -> i64 {
        self.current.unwrap_or(self.low) - self.new
    }
}

pub(crate) fn consumer(kafka: &KafkaArgs, group: &str) -> anyhow::Result<BaseConsumer> {
    kafka
        .client_config(&[("group.id", group), ("enable.auto.commit", "false")])?
        .create()
        .map_err(plumbing::kafka::config_error)
}

pub(crate) fn partitions_of(
    c: &BaseConsumer,
    topic: &str,
    only: &[i32],
) -> anyhow::Result<Vec<i32>> {
    let metadata = c
        .fetch_metadata(Some(topic), TIMEOUT)
        .context("reading the topic's metadata (is KAFKA_BOOTSTRAP_SERVERS right?)")?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .with_context(|| format!("topic `{topic}` does not exist"))?;
    let mut all: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    all.sort_unstable();
    if let Some(p) = only.iter().find(|p| !all.contains(p)) {
        bail!("topic `{topic}` has no partition {p} (it has {all:?})");
    }
    Ok(if only.is_empty() {
        all
    } else {
        all.into_iter().filter(|p| only.contains(p)).collect()
    })
}

pub(crate) fn committed(
    c: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<Vec<Option<i64>>> {
    let mut ask = TopicPartitionList::new();
    for p in partitions {
        ask.add_partition(topic, *p);
    }
    let list = c
        .committed_offsets(ask, TIMEOUT)
        .context("reading the group's committed offsets")?;
    let out = partitions
        .iter()
        .map(
            |p| match list.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        )
        .collect();
    drop(list); // lists from a consumer must not outlive it
    Ok(out)
}

/// The group's state and members, as the broker reports them.
pub struct GroupState {
    pub state: String,
    pub members: Vec<Member>,
}

/// A consumer in the group.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub client_id: String,
    pub host: String,
}

fn group_state(c: &BaseConsumer, group: &str) -> anyhow::Result<GroupState> {
    let list = c
        .fetch_group_list(Some(group), TIMEOUT)
        .context("describing the consumer group")?;
    let g = list.groups().iter().find(|g| g.name() == group);
    Ok(match g {
        None => GroupState {
            state: "Dead".into(),
            members: vec![],
        },
        Some(g) => GroupState {
            state: g.state().to_string(),
            members: g
                .members()
                .iter()
                .map(|m| Member {
                    id: m.id().to_string(),
                    client_id: m.client_id().to_string(),
                    host: m.client_host().to_string(),
                })
                .collect(),
        },
    })
}

/// A group may be reset only when no consumer is in it.
fn is_inactive(g: &GroupState) -> bool {
    g.members.is_empty() && matches!(g.state.as_str(), "Empty" | "Dead" | "")
}

/// The first offset whose record timestamp is at or after `at` (ListOffsets by timestamp, as
/// `kafka-consumer-groups --to-datetime` asks); `high` when no record is that recent.
fn first_offset_at(
    c: &BaseConsumer,
    topic: &str,
    partition: i32,
    high: i64,
    at: DateTime<Utc>,
) -> anyhow::Result<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(at.timestamp_millis()))?;
    let found = c
        .offsets_for_times(tpl, TIMEOUT)
        .with_context(|| format!("looking up the offset at {at} in partition {partition}"))?;
    let offset = found
        .find_partition(topic, partition)
        .map(|e| e.offset())
        .with_context(|| format!("the broker answered nothing for partition {partition}"))?;
    Ok(match offset {
        Offset::Offset(o) => o,
        // Kafka answers -1 (end) when every record is older than the time.
        _ => high,
    })
}

/// Computes the new offset of every chosen partition.
pub fn plan(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    args: &ResetArgs,
) -> anyhow::Result<(Vec<PartitionPlan>, GroupState)> {
    let target = args.target()?;
    let c = consumer(kafka, group)?;
    let partitions = partitions_of(&c, topic, &args.partitions)?;
    let wanted: Vec<(i32, Target)> = partitions.into_iter().map(|p| (p, target)).collect();
    let plans = plan_with(&c, topic, &wanted)?;
    Ok((plans, group_state(&c, group)?))
}

/// Computes the new offset of each partition named, each with its own target (the control
/// API's `PATCH /offsets`).
pub fn plan_each(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    wanted: &[(i32, Target)],
) -> anyhow::Result<Vec<PartitionPlan>> {
    let c = consumer(kafka, group)?;
    let named: Vec<i32> = wanted.iter().map(|(p, _)| *p).collect();
    partitions_of(&c, topic, &named)?;
    plan_with(&c, topic, wanted)
}

fn plan_with(
    c: &BaseConsumer,
    topic: &str,
    wanted: &[(i32, Target)],
) -> anyhow::Result<Vec<PartitionPlan>> {
    let partitions: Vec<i32> = wanted.iter().map(|(p, _)| *p).collect();
    let current = committed(c, topic, &partitions)?;
    let mut plans = Vec::new();
    for ((p, target), current) in wanted.iter().copied().zip(current) {
        let (low, high) = c
            .fetch_watermarks(topic, p, TIMEOUT)
            .with_context(|| format!("reading the watermarks of partition {p}"))?;
        let new = match target {
            Target::Earliest => low,
            Target::Latest => high,
            Target::Datetime(at) => first_offset_at(c, topic, p, high, at)?,
            Target::ShiftBy(n) => current.unwrap_or(low).saturating_add(n),
            Target::Offset(o) => o,
        };
        plans.push(PartitionPlan {
            partition: p,
            low,
            high,
            current,
            new: new.clamp(low, high),
        });
    }
    Ok(plans)
}

/// The group's committed offset of each partition that has one, read with `c`, a client of
/// the group.
pub fn group_offsets(c: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    let partitions = partitions_of(c, topic, &[])?;
    let current = committed(c, topic, &partitions)?;
    Ok(partitions
        .into_iter()
        .zip(current)
        .filter_map(|(p, o)| Some((p, o?)))
        .collect())
}

/// How many consumers are in the group now.
pub fn member_count(kafka: &KafkaArgs, group: &str) -> anyhow::Result<usize> {
    let c = consumer(kafka, group)?;
    Ok(group_state(&c, group)?.members.len())
}

/// The topic's partitions.
pub fn topic_partitions(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<Vec<i32>> {
    let c = consumer(kafka, "unused")?;
    partitions_of(&c, topic, &[])
}

/// The table shown to the operator.
pub fn render(topic: &str, group: &str, plans: &[PartitionPlan], execute: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} offsets of group `{group}` on topic `{topic}`:",
        if execute {
            "Resetting"
        } else {
            "Dry run: would reset"
        }
    );
    let _ = writeln!(
        out,
        "{:>9}  {:>12}  {:>12}  {:>12}  {:>12}  CHANGE",
        "PARTITION", "LOW", "HIGH", "CURRENT", "NEW"
    );
    let (mut replay, mut skip) = (0, 0);
    for p in plans {
        let current = p
            .current
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none".into());
        let change = p.change();
        let what = match change {
            0 => "unchanged".to_string(),
            n if n > 0 => {
                replay += n;
                format!("replays {n}")
            }
            n => {
                skip += -n;
                format!("skips {}", -n)
            }
        };
        let _ = writeln!(
            out,
            "{:>9}  {:>12}  {:>12}  {:>12}  {:>12}  {what}",
            p.partition, p.low, p.high, current, p.new
        );
    }
    let _ = writeln!(
        out,
        "Total: replays {replay} records, skips {skip} records."
    );
    if !execute {
        let _ = writeln!(out, "Nothing changed. Add --execute to apply.");
    }
    out
}

/// `reset-offsets`: plans, prints, and with `--execute` commits the new offsets.
pub fn reset(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    args: &ResetArgs,
) -> anyhow::Result<String> {
    let (plans, state) = plan(kafka, group, topic, args)?;
    if !is_inactive(&state) {
        bail!(
            "group `{group}` is not empty (state {}, {} member(s)): stop every sink instance of \
             the group first, then run this again. See who is in it with \
             `sink-connector --group-id {group} --topic {topic} describe-group`",
            state.state,
            state.members.len()
        );
    }
    let mut out = render(topic, group, &plans, args.execute);
    if args.execute {
        let c = consumer(kafka, group)?;
        let mut tpl = TopicPartitionList::new();
        for p in &plans {
            tpl.add_partition_offset(topic, p.partition, Offset::Offset(p.new))?;
        }
        c.commit(&tpl, CommitMode::Sync)
            .context("committing the new offsets")?;
        drop(tpl);
        let partitions: Vec<i32> = plans.iter().map(|p| p.partition).collect();
        let now = committed(&c, topic, &partitions)?;
        let expected: Vec<Option<i64>> = plans.iter().map(|p| Some(p.new)).collect();
        if now != expected {
            bail!("the broker did not keep the new offsets: it reports {now:?}");
        }
        let _ = writeln!(
            out,
            "Done. Start the sink to replay; watch sink_consumer_lag_records fall to 0."
        );
    }
    Ok(out)
}

/// `describe-group`: state, members, and per partition committed offset, end and lag.
pub fn describe(kafka: &KafkaArgs, group: &str, topic: &str) -> anyhow::Result<String> {
    let c = consumer(kafka, group)?;
    let partitions = partitions_of(&c, topic, &[])?;
    let current = committed(&c, topic, &partitions)?;
    let state = group_state(&c, group)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Group `{group}`: state {}, {} member(s)",
        state.state,
        state.members.len()
    );
    for m in &state.members {
        let _ = writeln!(
            out,
            "  member {} (client {}, host {})",
            m.id, m.client_id, m.host
        );
    }
    let _ = writeln!(
        out,
        "{:>9}  {:>12}  {:>12}  {:>12}",
        "PARTITION", "COMMITTED", "END", "LAG"
    );
    for (p, committed) in partitions.iter().zip(current) {
        let (low, high) = c.fetch_watermarks(topic, *p, TIMEOUT)?;
        let lag = high - committed.unwrap_or(low);
        let committed = committed
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none".into());
        let _ = writeln!(out, "{p:>9}  {committed:>12}  {high:>12}  {lag:>12}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_what_changes() {
        let plans = vec![
            PartitionPlan {
                partition: 0,
                low: 0,
                high: 100,
                current: Some(80),
                new: 0,
            },
            PartitionPlan {
                partition: 1,
                low: 10,
                high: 50,
                current: None,
                new: 50,
            },
            PartitionPlan {
                partition: 2,
                low: 0,
                high: 7,
                current: Some(7),
                new: 7,
            },
        ];
        let t = render("t", "g", &plans, false);
        assert!(t.contains("PARTITION") && t.contains("CURRENT") && t.contains("NEW"));
        assert!(t.contains("replays 80"), "{t}");
        assert!(t.contains("skips 40"), "{t}");
        assert!(t.contains("unchanged"));
        assert!(t.contains("none"));
        assert!(t.contains("Total: replays 80 records, skips 40 records."));
        assert!(t.contains("--execute"));
    }

    #[test]
    fn only_an_empty_group_is_inactive() {
        let g = |state: &str, members: usize| GroupState {
            state: state.into(),
            members: vec![
                Member {
                    id: "m".into(),
                    client_id: "c".into(),
                    host: "h".into(),
                };
                members
            ],
        };
        assert!(is_inactive(&g("Empty", 0)));
        assert!(is_inactive(&g("Dead", 0)));
        assert!(!is_inactive(&g("Stable", 0)));
        assert!(!is_inactive(&g("PreparingRebalance", 0)));
        assert!(!is_inactive(&g("Empty", 1)));
    }
}
