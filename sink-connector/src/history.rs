//! The chart history, kept a month at a time: `video_snapshots` is partitioned by UTC month of
//! `fetched_at` (migration V3), one partition per month named `video_snapshots_pYYYY_MM`.
//!
//! - The writer creates a month's partition before the first batch that needs it, and the sink
//!   creates this month's and next month's ahead of time, at start and every hour, so that the
//!   write path rarely does it.
//! - With `SNAPSHOT_RETENTION` the history older than `now - retention` (the
//!   [`Retention::horizon`]) is deleted at each round: first the partitions of the months wholly
//!   before the horizon are dropped, in one short transaction (no row-by-row delete, no bloat,
//!   however large they are); then, in short transactions that lock rows only, the charts
//!   before it with their snapshots (the older part of the month the horizon falls in: an
//!   hour's polls a round once caught up), and the `videos` rows last fetched before it (videos
//!   no chart has shown since). Records older than the horizon are not written at all, so a
//!   replay from an old offset does not bring expired data back.
//!
//! Creating and dropping partitions is serialised between instances by an advisory lock, and
//! waits at most [`LOCK_TIMEOUT`] for its locks: dropping a partition locks the whole table,
//! and a queued lock would stall every reader and writer behind a long query. A round that
//! times out is tried again an hour later.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, Utc};
use tokio_postgres::Client;

use crate::events::{HistoryExpired, PartitionDropped, PartitionsCreated};

/// How often the sink creates partitions ahead and drops expired ones.
pub const ROUND_EVERY: Duration = Duration::from_secs(3600);

/// Longest a partition's creation or drop waits for the table's lock.
pub const LOCK_TIMEOUT: &str = "5s";

/// Key of the advisory lock serialising partition changes between instances ("yttrend2").
const PARTITION_LOCK_KEY: i64 = 0x7974_7472_656e_6432;

const PREFIX: &str = "video_snapshots_p";

/// A UTC month, by its first day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(NaiveDate);

impl Month {
    pub fn of(t: DateTime<Utc>) -> Month {
        Month(NaiveDate::from_ymd_opt(t.year(), t.month(), 1).expect("every month has a day 1"))
    }

    pub fn next(self) -> Month {
        Month(
            self.0
                .checked_add_months(Months::new(1))
                .unwrap_or(NaiveDate::MAX),
        )
    }

    pub fn start(self) -> DateTime<Utc> {
        self.0.and_time(NaiveTime::MIN).and_utc()
    }

    /// The first instant after the month.
    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }

    /// The name of its partition of `video_snapshots`.
    pub fn partition(self) -> String {
        format!("{PREFIX}{:04}_{:02}", self.0.year(), self.0.month())
    }

    /// The month of a partition named by [`Month::partition`]; other tables are not ours.
    pub fn of_partition(name: &str) -> Option<Month> {
        let (year, month) = name.strip_prefix(PREFIX)?.split_once('_')?;
        if year.len() != 4 || month.len() != 2 {
            return None;
        }
        NaiveDate::from_ymd_opt(year.parse().ok()?, month.parse().ok()?, 1).map(Month)
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.0.year(), self.0.month())
    }
}

/// How long the chart history is kept (`SNAPSHOT_RETENTION`): forever, or at least this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention(Option<Duration>);

impl Retention {
    pub const FOREVER: Retention = Retention(None);

    /// `0` keeps the history forever; otherwise a duration such as `400d`.
    pub fn parse(s: &str) -> Result<Retention, String> {
        if s.trim() == "0" {
            return Ok(Retention::FOREVER);
        }
        let d = plumbing::backoff::parse_duration(s)?;
        Ok(Retention((!d.is_zero()).then_some(d)))
    }

    /// The first instant of the history kept at `now` (`now - retention`); None when the
    /// history is kept forever.
    pub fn horizon(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let keep = chrono::Duration::from_std(self.0?).ok()?;
        now.checked_sub_signed(keep)
    }

    /// Whether all of `month` is past the retention at `now` (its partition can be dropped).
    pub fn expired(self, month: Month, now: DateTime<Utc>) -> bool {
        self.horizon(now).is_some_and(|h| month.end() <= h)
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("forever"),
            Some(d) => match d.as_secs() {
                s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
                s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
                s => write!(f, "{s}s"),
            },
        }
    }
}

/// The months whose partitions exist, as far as this process knows; shared by the writer's
/// connections so that a batch checks the catalogue only for a month it has not seen.
#[derive(Debug, Clone, Default)]
pub struct Partitions {
    known: Arc<Mutex<BTreeSet<Month>>>,
}

impl Partitions {
    /// Creates the partitions of `months` that do not exist yet.
    pub async fn ensure(
        &self,
        client: &mut Client,
        months: impl IntoIterator<Item = Month>,
    ) -> Result<(), tokio_postgres::Error> {
        let missing: BTreeSet<Month> = {
            let known = self.known.lock().expect("partitions lock");
            months.into_iter().filter(|m| !known.contains(m)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let tx = client.transaction().await?;
        lock(&tx).await?;
        let existing = attached(&tx).await?;
        let mut created = Vec::new();
        for m in missing.iter().filter(|m| !existing.contains(m)) {
            let (name, start, end) = (m.partition(), bound(m.start()), bound(m.end()));
            // Created apart, then attached: attaching locks the table less than
            // CREATE TABLE ... PARTITION OF (readers and writers go on meanwhile).
            tx.batch_execute(&format!(
                "CREATE TABLE \"{name}\" (LIKE video_snapshots INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
                 ALTER TABLE video_snapshots ATTACH PARTITION \"{name}\"
                     FOR VALUES FROM ('{start}') TO ('{end}')"
            ))
            .await?;
            created.push(name);
        }
        tx.commit().await?;
        let mut known = self.known.lock().expect("partitions lock");
        known.extend(existing);
        known.extend(missing);
        drop(known);
        if !created.is_empty() {
            PartitionsCreated { names: &created }.emit();
        }
        Ok(())
    }

    /// Forgets what it knew: a partition may have been dropped by another instance.
    pub fn forget(&self) {
        self.known.lock().expect("partitions lock").clear();
    }

    /// Creates this month's and next month's partitions, ahead of the records.
    pub async fn ensure_ahead(
        &self,
        client: &mut Client,
        now: DateTime<Utc>,
    ) -> Result<(), tokio_postgres::Error> {
        let this = Month::of(now);
        self.ensure(client, [this, this.next()]).await
    }

    /// Drops the partitions of the months wholly before the horizon at `now`, in one short
    /// transaction (dropping a partition locks the whole table until it commits); returns the
    /// months dropped.
    pub async fn drop_expired(
        &self,
        client: &mut Client,
        retention: Retention,
        now: DateTime<Utc>,
    ) -> Result<Vec<Month>, tokio_postgres::Error> {
        if retention.horizon(now).is_none() {
            return Ok(Vec::new());
        }
        let tx = client.transaction().await?;
        lock(&tx).await?;
        let expired: Vec<Month> = attached(&tx)
            .await?
            .into_iter()
            .filter(|m| retention.expired(*m, now))
            .collect();
        let mut dropped = Vec::new();
        // Counted first: the table is locked from the first DROP to the commit.
        for m in &expired {
            let name = m.partition();
            let snapshots: i64 = tx
                .query_one(&format!("SELECT count(*) FROM \"{name}\""), &[])
                .await?
                .get(0);
            dropped.push(PartitionDropped {
                month: *m,
                partition: name,
                snapshots: snapshots as u64,
                retention,
            });
        }
        for d in &dropped {
            tx.batch_execute(&format!("DROP TABLE \"{}\"", d.partition))
                .await?;
        }
        tx.commit().await?;
        let mut known = self.known.lock().expect("partitions lock");
        for m in &expired {
            known.remove(m);
        }
        drop(known);
        for d in &dropped {
            d.emit();
        }
        Ok(expired)
    }

    /// One round: partitions created ahead, expired months dropped, then the rest of the
    /// history before the horizon deleted row by row.
    pub async fn round(
        &self,
        client: &mut Client,
        retention: Retention,
        now: DateTime<Utc>,
    ) -> Result<(), tokio_postgres::Error> {
        self.ensure_ahead(client, now).await?;
        self.drop_expired(client, retention, now).await?;
        if let Some(horizon) = retention.horizon(now) {
            delete_before(client, horizon).await?;
        }
        Ok(())
    }
}

/// Charts deleted per transaction, with their snapshots (about 200 each), by the row-by-row part
/// of the retention.
const CHARTS_PER_DELETE: i64 = 100;

/// Videos deleted per transaction.
const VIDEOS_PER_DELETE: i64 = 10_000;

/// Deletes, in short transactions that lock rows only, the charts before `horizon` with their
/// snapshots (by the snapshots' key: the part of a month left after its partition's drop, or
/// every month when the partitions were made by hand), then the videos last fetched before it.
async fn delete_before(
    client: &mut Client,
    horizon: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    let mut expired = HistoryExpired {
        horizon,
        snapshots: 0,
        charts: 0,
        videos: 0,
    };
    let charts = client
        .prepare(
            "WITH c AS (
                DELETE FROM charts WHERE (region_code, fetched_at) IN (
                    SELECT region_code, fetched_at FROM charts WHERE fetched_at < $1
                    ORDER BY fetched_at LIMIT $2)
                RETURNING region_code, fetched_at
            ), s AS (
                DELETE FROM video_snapshots v USING c
                WHERE v.region_code = c.region_code AND v.fetched_at = c.fetched_at
                    AND v.fetched_at < $1
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM c), (SELECT count(*) FROM s)",
        )
        .await?;
    loop {
        let row = client
            .query_one(&charts, &[&horizon, &CHARTS_PER_DELETE])
            .await?;
        let (c, s): (i64, i64) = (row.get(0), row.get(1));
        expired.charts += c as u64;
        expired.snapshots += s as u64;
        if c < CHARTS_PER_DELETE {
            break;
        }
    }
    let videos = client
        .prepare(
            // The outer condition again: under READ COMMITTED a row a batch refreshed while
            // this statement waited on its lock is re-checked against that condition only,
            // so without it the fresh row would be deleted with its `first_seen_at`.
            "DELETE FROM videos WHERE last_fetched_at < $1 AND video_id IN (
                SELECT video_id FROM videos WHERE last_fetched_at < $1 LIMIT $2)",
        )
        .await?;
    loop {
        let n = client
            .execute(&videos, &[&horizon, &VIDEOS_PER_DELETE])
            .await?;
        expired.videos += n;
        if n < VIDEOS_PER_DELETE as u64 {
            break;
        }
    }
    expired.emit();
    Ok(())
}

/// Serialises partition changes between instances, and bounds the wait for the table's lock.
async fn lock(tx: &tokio_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';
         SELECT pg_advisory_xact_lock({PARTITION_LOCK_KEY})"
    ))
    .await
}

/// The months of the partitions attached to `video_snapshots` and named as ours.
async fn attached(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<BTreeSet<Month>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'video_snapshots'::regclass",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Month::of_partition(r.get(0)))
        .collect())
}

/// A partition bound in SQL: the instant in UTC.
fn bound(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S+00").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    #[test]
    fn months_and_their_partitions() {
        let m = Month::of(utc(2026, 12, 31, 23));
        assert_eq!(m.start(), utc(2026, 12, 1, 0));
        assert_eq!(m.end(), utc(2027, 1, 1, 0), "the year turns");
        assert_eq!(m.partition(), "video_snapshots_p2026_12");
        assert_eq!(Month::of_partition("video_snapshots_p2026_12"), Some(m));
        assert_eq!(Month::of(utc(2026, 11, 1, 0)).to_string(), "2026-11");
        for other in [
            "video_snapshots",
            "video_snapshots_p2026_13",
            "video_snapshots_p26_12",
            "video_snapshots_p2026_12_old",
        ] {
            assert_eq!(Month::of_partition(other), None, "{other}");
        }
        assert_eq!(bound(m.start()), "2026-12-01 00:00:00+00");
    }

    #[test]
    fn a_month_expires_once_its_last_instant_is_older_than_the_retention() {
        let october = Month::of(utc(2026, 10, 15, 0));
        let keep = Retention::parse("30d").unwrap();
        // October ends at 2026-11-01 00:00: 30 days later it expires, not an hour before.
        assert!(!keep.expired(october, utc(2026, 11, 30, 23)));
        assert!(keep.expired(october, utc(2026, 12, 1, 0)));
        assert!(!keep.expired(Month::of(utc(2026, 11, 1, 0)), utc(2026, 12, 15, 0)));
        assert!(!Retention::FOREVER.expired(october, utc(2126, 1, 1, 0)));
        // Records before the horizon are expired, to the second.
        assert_eq!(
            keep.horizon(utc(2026, 11, 30, 23)),
            Some(utc(2026, 10, 31, 23))
        );
        assert_eq!(Retention::FOREVER.horizon(utc(2026, 12, 1, 0)), None);
    }

    #[test]
    fn retention_parses_zero_as_forever() {
        assert_eq!(Retention::parse("0").unwrap(), Retention::FOREVER);
        assert_eq!(Retention::parse("0d").unwrap(), Retention::FOREVER);
        assert_eq!(
            Retention::parse("400d").unwrap(),
            Retention(Some(Duration::from_secs(400 * 86_400)))
        );
        assert!(Retention::parse("13 months").is_err());
        assert_eq!(Retention::parse("400d").unwrap().to_string(), "400d");
        assert_eq!(Retention::FOREVER.to_string(), "forever");
    }
}
