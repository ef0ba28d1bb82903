//! Writing: one transaction per batch, three set-based statements whose parameter count does not
//! grow with the batch (each column is one array parameter, expanded by `UNNEST`):
//!
//! 1. upsert `videos`, guarded so that an older record never overwrites a newer one
//!    (`(last_fetched_at, region_code)` compared as a pair, so ties resolve the same way in any
//!    order); `first_seen_at` keeps the earliest value;
//! 2. lower `first_seen_at` of rows the guard kept (an older record arriving late);
//! 3. upsert `video_snapshots` (insert new rows, rewrite stored ones; its monthly partitions
//!    are created first, see [`crate::history`]) and, in the same statement, add the snapshots
//!    it inserted to their chart's `videos_written` in `charts` (one row per region and
//!    `fetched_at`; a chart's records are spread over the partitions, so several batches, or
//!    instances, add to one row in turn). `complete` (generated: `videos_written >=
//!    chart_size`) turns true in the transaction that commits the chart's last video.
//!
//! Replaying the topic from any offset, in any order, converges to the same tables.
//!
//! Each statement is built from its row source, so `make bench` measures another way in (binary
//! `COPY` into staging tables, then the same statements from them) against this one.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use plumbing::backoff::Retriable;
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::batch::Deduped;
use crate::history::{Month, Partitions, Retention};

/// The guarded upsert of `videos` from `rows`: a FROM item named `u` with the columns of
/// `videos` (`tags` as a JSON array in text: UNNEST cannot take an array of arrays).
pub fn upsert_videos(rows: &str) -> String {
    format!(
        "
INSERT INTO videos (video_id, region_code, rank, title, description, channel_id, channel_title,
    category_id, category_name, tags, published_at, default_language, default_audio_language,
    live_broadcast_content, thumbnail_url, duration_seconds, definition, dimension, caption,
    licensed_content, view_count, like_count, comment_count, favorite_count, first_seen_at,
    last_fetched_at)
SELECT u.video_id, u.region_code, u.rank, u.title, u.description, u.channel_id, u.channel_title,
    u.category_id, u.category_name,
    CASE WHEN u.tags IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)) END,
    u.published_at, u.default_language, u.default_audio_language, u.live_broadcast_content,
    u.thumbnail_url, u.duration_seconds, u.definition, u.dimension, u.caption,
    u.licensed_content, u.view_count, u.like_count, u.comment_count, u.favorite_count,
    u.first_seen_at, u.last_fetched_at
FROM {rows}
ON CONFLICT (video_id) DO UPDATE SET
    region_code = EXCLUDED.region_code, rank = EXCLUDED.rank, title = EXCLUDED.title,
    description = EXCLUDED.description, channel_id = EXCLUDED.channel_id,
    channel_title = EXCLUDED.channel_title, category_id = EXCLUDED.category_id,
    category_name = EXCLUDED.category_name, tags = EXCLUDED.tags,
    published_at = EXCLUDED.published_at, default_language = EXCLUDED.default_language,
    default_audio_language = EXCLUDED.default_audio_language,
    live_broadcast_content = EXCLUDED.live_broadcast_content,
    thumbnail_url = EXCLUDED.thumbnail_url, duration_seconds = EXCLUDED.duration_seconds,
    definition = EXCLUDED.definition, dimension = EXCLUDED.dimension,
    caption = EXCLUDED.caption, licensed_content = EXCLUDED.licensed_content,
    view_count = EXCLUDED.view_count, like_count = EXCLUDED.like_count,
    comment_count = EXCLUDED.comment_count, favorite_count = EXCLUDED.favorite_count,
    first_seen_at = LEAST(videos.first_seen_at, EXCLUDED.first_seen_at),
    last_fetched_at = EXCLUDED.last_fetched_at
WHERE (videos.last_fetched_at, videos.region_code) <= (EXCLUDED.last_fetched_at, EXCLUDED.region_code)"
    )
}

/// Lowers `first_seen_at` of the rows the guard kept, from `rows` (a FROM item named `u` with
/// `video_id` and `first_seen_at`).
pub fn lower_first_seen(rows: &str) -> String {
    format!(
        "
UPDATE videos SET first_seen_at = u.first_seen_at
FROM {rows}
WHERE videos.video_id = u.video_id AND u.first_seen_at < videos.first_seen_at"
    )
}

/// Upserts the snapshots of `snapshots` (a FROM item named `s` with the columns of
/// `video_snapshots`) and, in the same statement, adds to each chart's `videos_written` the
/// snapshots it inserted; `rows` is an expression of how many rows `snapshots` has, and
/// `chart_sizes` (a FROM item named `c`: region_code, fetched_at, chart_size) gives each
/// chart's size. Returns the snapshots written.
///
/// Inserted and rewritten rows are told apart by two steps rather than one upsert (a
/// partitioned table cannot return `xmax`): new rows are inserted, and the rows stored before
/// this statement (a replayed record) are rewritten by the UPDATE, which sees the table as it was
/// when the statement started, so never the rows just inserted. A row a concurrent transaction
/// inserts meanwhile is counted by that transaction only (and keeps its values: the same record
/// gives the same values). The charts' rows are locked in key
/// order, so two instances writing parts of one chart add up in turn and never wait for each
/// other in a cycle; a size learnt from newer records is kept.
pub fn upsert_snapshots_and_charts(snapshots: &str, rows: &str, chart_sizes: &str) -> String {
    format!(
        "
WITH inserted AS (
    INSERT INTO video_snapshots (region_code, fetched_at, video_id, rank, view_count,
        like_count, comment_count, favorite_count)
    SELECT s.region_code, s.fetched_at, s.video_id, s.rank, s.view_count, s.like_count,
        s.comment_count, s.favorite_count
    FROM {snapshots}
    ON CONFLICT (region_code, fetched_at, video_id) DO NOTHING
    RETURNING region_code, fetched_at, video_id
), rewritten AS (
    UPDATE video_snapshots v SET
        rank = s.rank, view_count = s.view_count, like_count = s.like_count,
        comment_count = s.comment_count, favorite_count = s.favorite_count
    FROM {snapshots}
    WHERE v.region_code = s.region_code AND v.fetched_at = s.fetched_at
        AND v.video_id = s.video_id
        -- Evaluated once: when every row was new (no replay), nothing is looked up again.
        AND (SELECT count(*) FROM inserted) < {rows}
    RETURNING 1
), charts_counted AS (
    INSERT INTO charts (region_code, fetched_at, chart_size, videos_written)
    SELECT c.region_code, c.fetched_at, c.chart_size, coalesce(w.added, 0)
    FROM {chart_sizes}
    LEFT JOIN (SELECT region_code, fetched_at, count(*) AS added
               FROM inserted GROUP BY region_code, fetched_at) w
        ON w.region_code = c.region_code AND w.fetched_at = c.fetched_at
    ORDER BY c.region_code, c.fetched_at
    ON CONFLICT (region_code, fetched_at) DO UPDATE SET
        videos_written = charts.videos_written + EXCLUDED.videos_written,
        chart_size = COALESCE(EXCLUDED.chart_size, charts.chart_size)
)
-- PostgreSQL runs a data-modifying WITH whole whether or not the query reads it.
SELECT (SELECT count(*) FROM inserted) + (SELECT count(*) FROM rewritten)"
    )
}

/// A batch's `videos` rows, one array per column of `videos`, in the order of
/// [`UPSERT_VIDEOS`]'s parameters (`tags` as JSON text: UNNEST cannot take an array of arrays).
struct VideoColumns<'a> {
    video_id: Vec<&'a str>,
    region_code: Vec<&'a str>,
    rank: Vec<i32>,
    title: Vec<Option<&'a str>>,
    description: Vec<Option<&'a str>>,
    channel_id: Vec<Option<&'a str>>,
    channel_title: Vec<Option<&'a str>>,
    category_id: Vec<Option<&'a str>>,
    category_name: Vec<Option<&'a str>>,
    tags: Vec<Option<String>>,
    published_at: Vec<Option<DateTime<Utc>>>,
    default_language: Vec<Option<&'a str>>,
    default_audio_language: Vec<Option<&'a str>>,
    live_broadcast_content: Vec<Option<&'a str>>,
    thumbnail_url: Vec<Option<&'a str>>,
    duration_seconds: Vec<Option<i64>>,
    definition: Vec<Option<&'a str>>,
    dimension: Vec<Option<&'a str>>,
    caption: Vec<Option<bool>>,
    licensed_content: Vec<Option<bool>>,
    view_count: Vec<Option<i64>>,
    like_count: Vec<Option<i64>>,
    comment_count: Vec<Option<i64>>,
    favorite_count: Vec<Option<i64>>,
    first_seen_at: Vec<DateTime<Utc>>,
    last_fetched_at: Vec<DateTime<Utc>>,
}

impl<'a> VideoColumns<'a> {
    fn of(batch: &Deduped<'a>) -> Self {
        let v = &batch.videos;
        VideoColumns {
            video_id: v.iter().map(|(r, _)| r.video_id.as_str()).collect(),
            region_code: v.iter().map(|(r, _)| r.region_code.as_str()).collect(),
            rank: v.iter().map(|(r, _)| r.rank).collect(),
            title: v.iter().map(|(r, _)| r.title.as_deref()).collect(),
            description: v.iter().map(|(r, _)| r.description.as_deref()).collect(),
            channel_id: v.iter().map(|(r, _)| r.channel_id.as_deref()).collect(),
            channel_title: v.iter().map(|(r, _)| r.channel_title.as_deref()).collect(),
            category_id: v.iter().map(|(r, _)| r.category_id.as_deref()).collect(),
            category_name: v.iter().map(|(r, _)| r.category_name.as_deref()).collect(),
            tags: v
                .iter()
                .map(|(r, _)| {
                    r.tags
                        .as_ref()
                        .map(|t| serde_json::to_string(t).expect("strings serialise"))
                })
                .collect(),
            published_at: v.iter().map(|(r, _)| r.published_at).collect(),
            default_language: v
                .iter()
                .map(|(r, _)| r.default_language.as_deref())
                .collect(),
            default_audio_language: v
                .iter()
                .map(|(r, _)| r.default_audio_language.as_deref())
                .collect(),
            live_broadcast_content: v
                .iter()
                .map(|(r, _)| r.live_broadcast_content.as_deref())
                .collect(),
            thumbnail_url: v.iter().map(|(r, _)| r.thumbnail_url.as_deref()).collect(),
            duration_seconds: v.iter().map(|(r, _)| r.duration_seconds).collect(),
            definition: v.iter().map(|(r, _)| r.definition.as_deref()).collect(),
            dimension: v.iter().map(|(r, _)| r.dimension.as_deref()).collect(),
            caption: v.iter().map(|(r, _)| r.caption).collect(),
            licensed_content: v.iter().map(|(r, _)| r.licensed_content).collect(),
            view_count: v.iter().map(|(r, _)| r.view_count).collect(),
            like_count: v.iter().map(|(r, _)| r.like_count).collect(),
            comment_count: v.iter().map(|(r, _)| r.comment_count).collect(),
            favorite_count: v.iter().map(|(r, _)| r.favorite_count).collect(),
            first_seen_at: v.iter().map(|(_, first)| *first).collect(),
            last_fetched_at: v.iter().map(|(r, _)| r.fetched_at).collect(),
        }
    }

    /// `$1` to `$26` of [`UPSERT_VIDEOS`].
    fn params(&self) -> [&(dyn ToSql + Sync); 26] {
        [
            &self.video_id,
            &self.region_code,
            &self.rank,
            &self.title,
            &self.description,
            &self.channel_id,
            &self.channel_title,
            &self.category_id,
            &self.category_name,
            &self.tags,
            &self.published_at,
            &self.default_language,
            &self.default_audio_language,
            &self.live_broadcast_content,
            &self.thumbnail_url,
            &self.duration_seconds,
            &self.definition,
            &self.dimension,
            &self.caption,
            &self.licensed_content,
            &self.view_count,
            &self.like_count,
            &self.comment_count,
            &self.favorite_count,
            &self.first_seen_at,
            &self.last_fetched_at,
        ]
    }
}

/// A batch's snapshots, one array per column of `video_snapshots`, and its charts (one entry
/// per chart, in key order: the largest size its records give): [`UPSERT_SNAPSHOTS_AND_CHARTS`]'s
/// parameters.
struct SnapshotColumns<'a> {
    region_code: Vec<&'a str>,
    fetched_at: Vec<DateTime<Utc>>,
    video_id: Vec<&'a str>,
    rank: Vec<i32>,
    view_count: Vec<Option<i64>>,
    like_count: Vec<Option<i64>>,
    comment_count: Vec<Option<i64>>,
    favorite_count: Vec<Option<i64>>,
    chart_region_code: Vec<&'a str>,
    chart_fetched_at: Vec<DateTime<Utc>>,
    chart_size: Vec<Option<i32>>,
}

impl<'a> SnapshotColumns<'a> {
    fn of(batch: &Deduped<'a>) -> Self {
        let s = &batch.snapshots;
        let mut charts: std::collections::BTreeMap<(&str, DateTime<Utc>), Option<i32>> =
            Default::default();
        for r in s {
            let size = charts
                .entry((r.region_code.as_str(), r.fetched_at))
                .or_default();
            *size = (*size).max(r.chart_size);
        }
        SnapshotColumns {
            region_code: s.iter().map(|r| r.region_code.as_str()).collect(),
            fetched_at: s.iter().map(|r| r.fetched_at).collect(),
            video_id: s.iter().map(|r| r.video_id.as_str()).collect(),
            rank: s.iter().map(|r| r.rank).collect(),
            view_count: s.iter().map(|r| r.view_count).collect(),
            like_count: s.iter().map(|r| r.like_count).collect(),
            comment_count: s.iter().map(|r| r.comment_count).collect(),
            favorite_count: s.iter().map(|r| r.favorite_count).collect(),
            chart_region_code: charts.keys().map(|(r, _)| *r).collect(),
            chart_fetched_at: charts.keys().map(|(_, at)| *at).collect(),
            chart_size: charts.values().copied().collect(),
        }
    }

    /// `$1` to `$11` of [`UPSERT_SNAPSHOTS_AND_CHARTS`].
    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.region_code,
            &self.fetched_at,
            &self.video_id,
            &self.rank,
            &self.view_count,
            &self.like_count,
            &self.comment_count,
            &self.favorite_count,
            &self.chart_region_code,
            &self.chart_fetched_at,
            &self.chart_size,
        ]
    }
}

// The sink's statements: each column one array parameter, expanded by UNNEST.
static UPSERT_VIDEOS: LazyLock<String> = LazyLock::new(|| {
    upsert_videos(
        "UNNEST($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::text[],
    $13::text[], $14::text[], $15::text[], $16::int8[], $17::text[], $18::text[], $19::bool[],
    $20::bool[], $21::int8[], $22::int8[], $23::int8[], $24::int8[], $25::timestamptz[],
    $26::timestamptz[])
  AS u(video_id, region_code, rank, title, description, channel_id, channel_title, category_id,
    category_name, tags, published_at, default_language, default_audio_language,
    live_broadcast_content, thumbnail_url, duration_seconds, definition, dimension, caption,
    licensed_content, view_count, like_count, comment_count, favorite_count, first_seen_at,
    last_fetched_at)",
    )
});

static LOWER_FIRST_SEEN: LazyLock<String> = LazyLock::new(|| {
    lower_first_seen("UNNEST($1::text[], $2::timestamptz[]) AS u(video_id, first_seen_at)")
});

static UPSERT_SNAPSHOTS_AND_CHARTS: LazyLock<String> = LazyLock::new(|| {
    upsert_snapshots_and_charts(
        "UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::int4[], $5::int8[], $6::int8[],
        $7::int8[], $8::int8[])
      AS s(region_code, fetched_at, video_id, rank, view_count, like_count, comment_count,
        favorite_count)",
        "cardinality($1::text[])",
        "UNNEST($9::text[], $10::timestamptz[], $11::int4[]) AS c(region_code, fetched_at, chart_size)",
    )
});

/// Charts with fewer videos stored than their size, `fetched_at` older than `$1` seconds.
const INCOMPLETE_CHARTS: &str = "
SELECT count(*) FROM charts
WHERE NOT complete AND fetched_at < now() - make_interval(secs => $1)";

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no database connection: {0}")]
    Pool(String),
    #[error("the batch's transaction took longer than {0:?} (SINK_WRITE_TIMEOUT); the connection was dropped")]
    Timeout(std::time::Duration),
    #[error(
        "TLS to PostgreSQL failed: {0}. Check sslmode and sslrootcert in DATABASE_URL: sslrootcert \
         must name the CA that signed the server's certificate, and with verify-full the host in \
         DATABASE_URL must be a name the certificate holds (sslmode=require encrypts without \
         these checks)"
    )]
    Tls(String),
    #[error("database error ({kind}): {message}")]
    Db {
        kind: &'static str,
        message: String,
        retriable: bool,
    },
    /// PostgreSQL refused the batch's data (SQLSTATE class 22, data exception, or 23, integrity
    /// constraint violation, such as a `CHECK` an operator added): some record of the batch is
    /// at fault, not the database. The sink finds it by bisecting the batch.
    #[error("PostgreSQL refused the data: {message}")]
    Refused { sqlstate: String, message: String },
}

impl Retriable for WriteError {
    /// A TLS handshake refused is retried while running (a certificate may be replaced under
    /// a running sink); at start it stops the sink (see [`WriteError::is_tls`]).
    fn is_retriable(&self) -> bool {
        match self {
            WriteError::Pool(_) | WriteError::Timeout(_) | WriteError::Tls(_) => true,
            WriteError::Db { retriable, .. } => *retriable,
            WriteError::Refused { .. } => false,
        }
    }
}

impl WriteError {
    /// The TLS handshake failed: at start, DATABASE_URL's TLS settings are wrong for this
    /// server, and retrying cannot help until they change.
    pub fn is_tls(&self) -> bool {
        matches!(self, WriteError::Tls(_))
    }

    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            WriteError::Tls(_) => "tls",
            WriteError::Pool(_) => "connection",
            WriteError::Timeout(_) => "timeout",
            WriteError::Db { kind, .. } => kind,
            WriteError::Refused { .. } => "data",
        }
    }

    /// What an operator can do about a permanent error that is not the data's, if we know.
    pub fn hint(&self) -> Option<&'static str> {
        let WriteError::Db {
            message,
            retriable: false,
            ..
        } = self
        else {
            return None;
        };
        let code = message.split(':').next().unwrap_or_default();
        Some(match code {
            "25006" => {
                "the database is read-only (a standby, or default_transaction_read_only): point \
                 DATABASE_URL at the primary"
            }
            "42P01" | "42703" => {
                "a table or column the sink writes is missing: let the sink run its migrations \
                 (unset SINK_SKIP_MIGRATIONS) or apply migrations/ by hand"
            }
            "42501" => {
                "the sink's database user lacks a privilege on its tables: grant it (see \
                 postgres/init-roles.sh)"
            }
            c if c.starts_with("28") => {
                "PostgreSQL refused the sink's credentials: check DATABASE_URL"
            }
            _ => return None,
        })
    }
}

/// The reason of a failed TLS set-up: a handshake OpenSSL refused, or tokio-postgres' own
/// ("server does not support TLS" under `require`). Its errors say so only in their text.
fn tls_failure(e: &tokio_postgres::Error) -> Option<String> {
    e.to_string()
        .starts_with("error performing TLS handshake")
        .then(|| {
            std::error::Error::source(e)
                .map(|cause| cause.to_string())
                .unwrap_or_default()
        })
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(tls) = tls_failure(&e) {
            return WriteError::Tls(tls);
        }
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        let (kind, retriable) = match e.code() {
            None => ("connection", true), // I/O, closed connection, timeout
            Some(c) if c.code().starts_with("08") => ("connection", true),
            Some(c)
                if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                ("conflict", true)
            }
            Some(c) if c.code().starts_with("53") || c.code().starts_with("57") => {
                ("unavailable", true)
            }
            // A lock waited for longer than the history's lock timeout allows.
            Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE => ("conflict", true),
            // A record's month has no partition: dropped by another instance meanwhile.
            Some(c)
                if *c == SqlState::CHECK_VIOLATION
                    && e.as_db_error().is_some_and(|db| {
                        db.message().starts_with("no partition of relation")
                            || (db.table() == Some("video_snapshots") && db.constraint().is_none())
                    }) =>
            {
                ("no_partition", true)
            }
            Some(c) if c.code().starts_with("22") || c.code().starts_with("23") => {
                return WriteError::Refused {
                    sqlstate: c.code().to_string(),
                    message: crate::decode::excerpt(&message, crate::decode::MAX_ERROR_TEXT)
                        .into_owned(),
                };
            }
            Some(_) => ("permanent", false),
        };
        WriteError::Db {
            kind,
            message,
            retriable,
        }
    }
}

/// Rows touched by one batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    /// Rows of `videos` inserted or updated (rows kept by the guard are not counted).
    pub videos: u64,
    pub snapshots: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Written) {
        self.videos += other.videos;
        self.snapshots += other.snapshots;
    }
}

#[derive(Clone)]
pub struct Writer {
    pool: Pool,
    write_timeout: Duration,
    partitions: Partitions,
}

impl Writer {
    /// A pool of connections; none is opened until first used. `write_timeout` bounds each
    /// batch's transaction. A half-open connection or a frozen server would otherwise hang a
    /// write until TCP gives up (hours) with /readyz still green; past it the connection is
    /// dropped and the batch retried. PostgreSQL cancels a statement that runs that long too
    /// (`statement_timeout`), and the kernel drops a connection whose data stays unacknowledged
    /// that long (`tcp_user_timeout`).
    pub fn new(url: &SecretString, size: usize, write_timeout: Duration) -> anyhow::Result<Self> {
        let crate::tls::Connection {
            mut config, tls, ..
        } = crate::tls::parse(url.expose_secret())?;
        let statement_timeout = format!("-c statement_timeout={}", write_timeout.as_millis());
        let options = match config.get_options() {
            Some(user) => format!("{user} {statement_timeout}"),
            None => statement_timeout,
        };
        config
            .options(options)
            .tcp_user_timeout(write_timeout)
            .connect_timeout(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("youtube-trending-sink");
        }
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()?;
        Ok(Writer {
            pool,
            write_timeout,
            partitions: Partitions::default(),
        })
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Client, WriteError> {
        // Connecting failed: retried whatever PostgreSQL said (a password being rotated, a
        // database not created yet), but a TLS failure says so.
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => match tls_failure(&e) {
                Some(tls) => WriteError::Tls(tls),
                None => WriteError::Pool(e.to_string()),
            },
            e => WriteError::Pool(e.to_string()),
        })
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<(), WriteError> {
        let client = self.client().await?;
        match tokio::time::timeout(self.write_timeout, client.query_one("SELECT 1", &[])).await {
            Ok(answered) => answered.map(|_| ()).map_err(WriteError::from),
            Err(_) => {
                drop(deadpool_postgres::Object::take(client));
                Err(WriteError::Timeout(self.write_timeout))
            }
        }
    }

    /// Writes one deduplicated batch in one transaction, within the write timeout, after
    /// creating the partitions of the history its snapshots need.
    pub async fn write(&self, batch: &Deduped<'_>) -> Result<Written, WriteError> {
        let mut client = self.client().await?;
        let months: std::collections::BTreeSet<Month> = batch
            .snapshots
            .iter()
            .map(|r| Month::of(r.fetched_at))
            .collect();
        let writing = async {
            self.partitions.ensure(&mut client, months).await?;
            Self::write_in(&mut client, batch).await
        };
        match tokio::time::timeout(self.write_timeout, writing).await {
            Ok(Err(e)) if e.kind() == "no_partition" => {
                // Dropped by another instance: checked again at the retry.
                self.partitions.forget();
                Err(e)
            }
            Ok(written) => written,
            Err(_) => {
                // Out of the pool and closed: its transaction is in an unknown state (the
                // server rolls it back when it notices the connection gone).
                drop(deadpool_postgres::Object::take(client));
                Err(WriteError::Timeout(self.write_timeout))
            }
        }
    }

    async fn write_in(
        client: &mut deadpool_postgres::Client,
        batch: &Deduped<'_>,
    ) -> Result<Written, WriteError> {
        let (videos, snapshots) = (VideoColumns::of(batch), SnapshotColumns::of(batch));
        let tx = client.transaction().await?;
        let upsert = tx.prepare_cached(&UPSERT_VIDEOS).await?;
        let written_videos = tx.execute(&upsert, &videos.params()).await?;
        let lower = tx.prepare_cached(&LOWER_FIRST_SEEN).await?;
        tx.execute(&lower, &[&videos.video_id, &videos.first_seen_at])
            .await?;
        let upsert = tx.prepare_cached(&UPSERT_SNAPSHOTS_AND_CHARTS).await?;
        let row = tx.query_one(&upsert, &snapshots.params()).await?;
        let written_snapshots = row.get::<_, i64>(0) as u64;
        tx.commit().await?;
        Ok(Written {
            videos: written_videos,
            snapshots: written_snapshots,
        })
    }

    /// This month's and next month's partitions of the history, created if missing.
    pub async fn prepare_history(&self) -> Result<(), WriteError> {
        let mut client = self.client().await?;
        Ok(self
            .partitions
            .ensure_ahead(&mut client, chrono::Utc::now())
            .await?)
    }

    /// One round of the history's upkeep: partitions created ahead, the history older than the
    /// retention deleted.
    pub async fn keep_history(&self, retention: Retention) -> Result<(), WriteError> {
        let mut client = self.client().await?;
        let now = chrono::Utc::now();
        Ok(self.partitions.round(&mut client, retention, now).await?)
    }

    /// How many charts older than `grace` still miss videos.
    pub async fn incomplete_charts(&self, grace: Duration) -> Result<i64, WriteError> {
        let client = self.client().await?;
        let row = client
            .query_one(INCOMPLETE_CHARTS, &[&grace.as_secs_f64()])
            .await?;
        Ok(row.get(0))
    }
}
