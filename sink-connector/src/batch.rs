//! Batch preparation: PostgreSQL refuses to update one row twice in one statement, so a batch
//! is deduplicated before it is written. For `videos` the newest record per video wins (by
//! `fetched_at`, then region code, the same order the database guard uses), and the earliest
//! `fetched_at` of the video in the batch is its `first_seen_at` candidate. For
//! `video_snapshots` one record per (region, fetched_at, video) is kept.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemas::TrendingVideo;

/// What one batch writes.
pub struct Deduped<'a> {
    /// Newest record per video id, with the earliest `fetched_at` seen for it in the batch.
    pub videos: Vec<(&'a TrendingVideo, DateTime<Utc>)>,
    /// One record per snapshot key.
    pub snapshots: Vec<&'a TrendingVideo>,
}

impl Deduped<'_> {
    /// Records that were dropped as duplicates of another in the batch (for `videos`).
    pub fn duplicates(&self, records: usize) -> usize {
        records - self.videos.len()
    }
}

pub fn dedup<'a>(records: impl IntoIterator<Item = &'a TrendingVideo>) -> Deduped<'a> {
    let mut videos: HashMap<&str, (&TrendingVideo, DateTime<Utc>)> = HashMap::new();
    let mut snapshots: HashMap<(&str, DateTime<Utc>, &str), &TrendingVideo> = HashMap::new();
    for r in records {
        videos
            .entry(r.video_id.as_str())
            .and_modify(|(best, first)| {
                if (r.fetched_at, &r.region_code) >= (best.fetched_at, &best.region_code) {
                    *best = r;
                }
                *first = (*first).min(r.fetched_at);
            })
            .or_insert((r, r.fetched_at));
        snapshots.insert(
            (r.region_code.as_str(), r.fetched_at, r.video_id.as_str()),
            r,
        );
    }
    Deduped {
        videos: videos.into_values().collect(),
        snapshots: snapshots.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(s, 0).unwrap()
    }

    #[test]
    fn newest_wins_and_first_seen_is_the_earliest() {
        let mut old = schemas::sample("v1", "FR", 3, at(100));
        old.view_count = Some(1);
        let mut new = schemas::sample("v1", "FR", 1, at(200));
        new.view_count = Some(2);
        let other = schemas::sample("v2", "FR", 2, at(200));
        let records = vec![new.clone(), old.clone(), other];
        let d = dedup(&records);
        assert_eq!(d.videos.len(), 2);
        assert_eq!(d.duplicates(records.len()), 1);
        let (v1, first) = d.videos.iter().find(|(v, _)| v.video_id == "v1").unwrap();
        assert_eq!(v1.view_count, Some(2));
        assert_eq!(*first, at(100));
        assert_eq!(d.snapshots.len(), 3, "both polls of v1 are history");
    }

    #[test]
    fn equal_times_break_ties_by_region_whatever_the_order() {
        let fr = schemas::sample("v", "FR", 1, at(100));
        let us = schemas::sample("v", "US", 9, at(100));
        for records in [vec![fr.clone(), us.clone()], vec![us.clone(), fr.clone()]] {
            let d = dedup(&records);
            assert_eq!(d.videos[0].0.region_code, "US");
        }
        let twice = vec![fr.clone(), fr.clone()];
        assert_eq!(dedup(&twice).snapshots.len(), 1);
    }
}
