//! The record both connectors agree on: one video in one region's chart at one poll.
//!
//! `avro/trending_video.avsc` is the contract; this crate embeds it, parses it once, and maps
//! [`TrendingVideo`] to and from Avro values. Decoding always resolves the writer's value against
//! the current schema first, so records written with an older, BACKWARD-compatible version of the
//! schema decode too (missing nullable fields become `None`).

use std::sync::LazyLock;

use apache_avro::types::Value;
use apache_avro::Schema;
use chrono::{DateTime, TimeZone, Utc};

/// The Avro schema text, exactly as registered in the schema registry.
pub const SCHEMA_JSON: &str = include_str!("../avro/trending_video.avsc");

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema::parse_str(SCHEMA_JSON)
        .expect("avro/trending_video.avsc is valid Avro (checked by tests)")
});

/// The parsed current schema.
pub fn schema() -> &'static Schema {
    &SCHEMA
}

/// One video as it stood in one region's most-popular chart at one poll.
///
/// `None` means the API did not send the field (hidden likes, disabled comments, no tags...),
/// never zero or empty.
#[derive(Debug, Clone, PartialEq)]
pub struct TrendingVideo {
    pub video_id: String,
    pub region_code: String,
    pub fetched_at: DateTime<Utc>,
    pub rank: i32,
    pub title: Option<String>,
    pub description: Option<String>,
    pub channel_id: Option<String>,
    pub channel_title: Option<String>,
    pub category_id: Option<String>,
    pub category_name: Option<String>,
    pub tags: Option<Vec<String>>,
    pub published_at: Option<DateTime<Utc>>,
    pub default_language: Option<String>,
    pub default_audio_language: Option<String>,
    pub live_broadcast_content: Option<String>,
    pub thumbnail_url: Option<String>,
    pub duration_seconds: Option<i64>,
    pub definition: Option<String>,
    pub dimension: Option<String>,
    pub caption: Option<bool>,
    pub licensed_content: Option<bool>,
    pub view_count: Option<i64>,
    pub like_count: Option<i64>,
    pub comment_count: Option<i64>,
    pub favorite_count: Option<i64>,
    /// Videos in this poll's chart; `None` in records written before the field existed.
    pub chart_size: Option<i32>,
}

/// Why an Avro value is not a valid [`TrendingVideo`]. All of these are permanent: the same
/// bytes will fail the same way, so the sink dead-letters them.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("value does not match the TrendingVideo schema: {0}")]
    Schema(String),
    #[error("field `{field}` is missing or has the wrong type")]
    Field { field: &'static str },
    #[error("field `{field}` is out of range: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl TrendingVideo {
    /// The Avro value of this record, in schema field order.
    pub fn to_avro(&self) -> Value {
        fn opt<T>(v: &Option<T>, f: impl Fn(&T) -> Value) -> Value {
            match v {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(x) => Value::Union(1, Box::new(f(x))),
            }
        }
        let s = |x: &String| Value::String(x.clone());
        let l = |x: &i64| Value::Long(*x);
        let b = |x: &bool| Value::Boolean(*x);
        let ts = |x: &DateTime<Utc>| Value::TimestampMillis(x.timestamp_millis());
        Value::Record(vec![
            ("video_id".into(), Value::String(self.video_id.clone())),
            (
                "region_code".into(),
                Value::String(self.region_code.clone()),
            ),
            ("fetched_at".into(), ts(&self.fetched_at)),
            ("rank".into(), Value::Int(self.rank)),
            ("title".into(), opt(&self.title, s)),
            ("description".into(), opt(&self.description, s)),
            ("channel_id".into(), opt(&self.channel_id, s)),
            ("channel_title".into(), opt(&self.channel_title, s)),
            ("category_id".into(), opt(&self.category_id, s)),
            ("category_name".into(), opt(&self.category_name, s)),
            (
                "tags".into(),
                opt(&self.tags, |t| Value::Array(t.iter().map(s).collect())),
            ),
            ("published_at".into(), opt(&self.published_at, ts)),
            ("default_language".into(), opt(&self.default_language, s)),
            (
                "default_audio_language".into(),
                opt(&self.default_audio_language, s),
            ),
            (
                "live_broadcast_content".into(),
                opt(&self.live_broadcast_content, s),
            ),
            ("thumbnail_url".into(), opt(&self.thumbnail_url, s)),
            ("duration_seconds".into(), opt(&self.duration_seconds, l)),
            ("definition".into(), opt(&self.definition, s)),
            ("dimension".into(), opt(&self.dimension, s)),
            ("caption".into(), opt(&self.caption, b)),
            ("licensed_content".into(), opt(&self.licensed_content, b)),
            ("view_count".into(), opt(&self.view_count, l)),
            ("like_count".into(), opt(&self.like_count, l)),
            ("comment_count".into(), opt(&self.comment_count, l)),
            ("favorite_count".into(), opt(&self.favorite_count, l)),
            (
                "chart_size".into(),
                opt(&self.chart_size, |x: &i32| Value::Int(*x)),
            ),
        ])
    }

    /// Reads a value decoded with the writer's schema: resolves it against the current schema
    /// (so older compatible versions decode), maps it, and validates it.
    pub fn from_avro(value: Value) -> Result<Self, RecordError> {
        let resolved = value
            .resolve(schema())
            .map_err(|e| RecordError::Schema(e.to_string()))?;
        Self::from_current(resolved)
    }

    /// Like [`TrendingVideo::from_avro`] for a value already in the current schema's shape
    /// (decoded with a writer's schema equal to the current one), skipping the resolution.
    pub fn from_current(value: Value) -> Result<Self, RecordError> {
        let Value::Record(fields) = value else {
            return Err(RecordError::Schema("not a record".into()));
        };
        let mut f = Fields { fields, next: 0 };
        let video = TrendingVideo {
            video_id: req_string(&mut f, "video_id")?,
            region_code: req_string(&mut f, "region_code")?,
            fetched_at: req_timestamp(&mut f, "fetched_at")?,
            rank: req(&mut f, "rank", |v| match v {
                Value::Int(i) => Some(i),
                _ => None,
            })?,
            title: opt(&mut f, "title", string)?,
            description: opt(&mut f, "description", string)?,
            channel_id: opt(&mut f, "channel_id", string)?,
            channel_title: opt(&mut f, "channel_title", string)?,
            category_id: opt(&mut f, "category_id", string)?,
            category_name: opt(&mut f, "category_name", string)?,
            tags: opt(&mut f, "tags", |v| match v {
                Value::Array(items) => items.into_iter().map(string).collect(),
                _ => None,
            })?,
            published_at: opt_timestamp(&mut f, "published_at")?,
            default_language: opt(&mut f, "default_language", string)?,
            default_audio_language: opt(&mut f, "default_audio_language", string)?,
            live_broadcast_content: opt(&mut f, "live_broadcast_content", string)?,
            thumbnail_url: opt(&mut f, "thumbnail_url", string)?,
            duration_seconds: opt(&mut f, "duration_seconds", long)?,
            definition: opt(&mut f, "definition", string)?,
            dimension: opt(&mut f, "dimension", string)?,
            caption: opt(&mut f, "caption", boolean)?,
            licensed_content: opt(&mut f, "licensed_content", boolean)?,
            view_count: opt(&mut f, "view_count", long)?,
            like_count: opt(&mut f, "like_count", long)?,
            comment_count: opt(&mut f, "comment_count", long)?,
            favorite_count: opt(&mut f, "favorite_count", long)?,
            chart_size: opt(&mut f, "chart_size", |v| match v {
                Value::Int(i) => Some(i),
                _ => None,
            })?,
        };
        video.validate()?;
        Ok(video)
    }

    /// Checks what the schema cannot: identity fields present, rank and counts in range, and
    /// what PostgreSQL would refuse: text holding NUL (U+0000, which PostgreSQL's text cannot
    /// store) and timestamps before its first day (4714-11-24 BC).
    pub fn validate(&self) -> Result<(), RecordError> {
        let invalid = |field, reason: &str| {
            Err(RecordError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        if self.video_id.is_empty() {
            return invalid("video_id", "empty");
        }
        if self.region_code.len() != 2 || !self.region_code.bytes().all(|b| b.is_ascii_uppercase())
        {
            return invalid("region_code", "not an ISO 3166-1 alpha-2 code");
        }
        if self.rank < 1 {
            return invalid("rank", "must be 1 or more");
        }
        for (field, value) in [
            ("duration_seconds", self.duration_seconds),
            ("view_count", self.view_count),
            ("like_count", self.like_count),
            ("comment_count", self.comment_count),
            ("favorite_count", self.favorite_count),
        ] {
            if value.is_some_and(|v| v < 0) {
                return invalid(field, "negative");
            }
        }
        if self.chart_size.is_some_and(|n| n < self.rank) {
            return invalid("chart_size", "smaller than the record's rank");
        }
        for (field, value) in self.texts() {
            if value.contains('\0') {
                return invalid(
                    field,
                    "holds a NUL character (U+0000), which PostgreSQL cannot store",
                );
            }
        }
        for (field, value) in [
            ("fetched_at", Some(self.fetched_at)),
            ("published_at", self.published_at),
        ] {
            if value.is_some_and(|t| t.timestamp_millis() < POSTGRES_FIRST_MILLIS) {
                return invalid(field, OUT_OF_POSTGRES_RANGE);
            }
        }
        Ok(())
    }

    /// Every text of the record, by field name (each tag under `tags`).
    fn texts(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let required = [
            ("video_id", &self.video_id),
            ("region_code", &self.region_code),
        ];
        let optional = [
            ("title", &self.title),
            ("description", &self.description),
            ("channel_id", &self.channel_id),
            ("channel_title", &self.channel_title),
            ("category_id", &self.category_id),
            ("category_name", &self.category_name),
            ("default_language", &self.default_language),
            ("default_audio_language", &self.default_audio_language),
            ("live_broadcast_content", &self.live_broadcast_content),
            ("thumbnail_url", &self.thumbnail_url),
            ("definition", &self.definition),
            ("dimension", &self.dimension),
        ];
        let tags = self.tags.iter().flatten().map(|t| ("tags", t.as_str()));
        required
            .into_iter()
            .map(|(f, v)| (f, v.as_str()))
            .chain(
                optional
                    .into_iter()
                    .filter_map(|(f, v)| Some((f, v.as_deref()?))),
            )
            .chain(tags)
    }
}

/// The first instant PostgreSQL's `timestamptz` holds, 4714-11-24 00:00 BC (UTC), in Unix
/// milliseconds. Its last (294276 AD) lies beyond any date chrono represents, so a value past it
/// fails as "not a calendar date".
pub const POSTGRES_FIRST_MILLIS: i64 = -210_866_803_200_000;

const OUT_OF_POSTGRES_RANGE: &str =
    "outside the range PostgreSQL stores (4714-11-24 BC to 294276 AD)";

fn string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        _ => None,
    }
}

fn long(v: Value) -> Option<i64> {
    match v {
        Value::Long(l) => Some(l),
        _ => None,
    }
}

fn boolean(v: Value) -> Option<bool> {
    match v {
        Value::Boolean(b) => Some(b),
        _ => None,
    }
}

fn millis(v: Value) -> Option<i64> {
    match v {
        Value::TimestampMillis(ms) | Value::Long(ms) => Some(ms),
        _ => None,
    }
}

/// A `timestamp-millis` as a date: one beyond any calendar is out of PostgreSQL's range too.
fn calendar(field: &'static str, ms: i64) -> Result<DateTime<Utc>, RecordError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or(RecordError::Invalid {
            field,
            reason: OUT_OF_POSTGRES_RANGE.to_string(),
        })
}

fn req_timestamp(f: &mut Fields, field: &'static str) -> Result<DateTime<Utc>, RecordError> {
    calendar(field, req(f, field, millis)?)
}

fn opt_timestamp(
    f: &mut Fields,
    field: &'static str,
) -> Result<Option<DateTime<Utc>>, RecordError> {
    opt(f, field, millis)?
        .map(|ms| calendar(field, ms))
        .transpose()
}

/// The fields of a record, taken by name. They come in schema order, so each lookup starts where
/// the previous one stopped and usually succeeds at once.
struct Fields {
    fields: Vec<(String, Value)>,
    next: usize,
}

impl Fields {
    fn remove(&mut self, name: &str) -> Option<Value> {
        let n = self.fields.len();
        let at = (0..n)
            .map(|i| (self.next + i) % n)
            .find(|&i| self.fields[i].0 == name)?;
        self.next = at + 1;
        Some(std::mem::replace(&mut self.fields[at].1, Value::Null))
    }
}

fn req<T>(
    f: &mut Fields,
    field: &'static str,
    map: impl FnOnce(Value) -> Option<T>,
) -> Result<T, RecordError> {
    f.remove(field)
        .and_then(map)
        .ok_or(RecordError::Field { field })
}

fn req_string(f: &mut Fields, field: &'static str) -> Result<String, RecordError> {
    req(f, field, string)
}

fn opt<T>(
    f: &mut Fields,
    field: &'static str,
    map: impl FnOnce(Value) -> Option<T>,
) -> Result<Option<T>, RecordError> {
    match f.remove(field) {
        None => Ok(None),
        Some(Value::Union(_, inner)) => match *inner {
            Value::Null => Ok(None),
            v => map(v).map(Some).ok_or(RecordError::Field { field }),
        },
        Some(Value::Null) => Ok(None),
        Some(v) => map(v).map(Some).ok_or(RecordError::Field { field }),
    }
}

/// A fully populated record, for tests and benchmarks of both connectors.
pub fn sample(
    video_id: &str,
    region_code: &str,
    rank: i32,
    fetched_at: DateTime<Utc>,
) -> TrendingVideo {
    TrendingVideo {
        video_id: video_id.to_string(),
        region_code: region_code.to_string(),
        fetched_at,
        rank,
        title: Some(format!("Vidéo n°{rank} — l'été 🎉")),
        description: Some("Une description assez longue, avec des accents: é è à ç ù.".repeat(4)),
        channel_id: Some("UC_x5XG1OV2P6uZZ5FSM9Ttw".into()),
        channel_title: Some("Chaîne de test".into()),
        category_id: Some("10".into()),
        category_name: Some("Music".into()),
        tags: Some(vec!["musique".into(), "clip officiel".into()]),
        published_at: Some(fetched_at - chrono::Duration::days(2)),
        default_language: Some("fr".into()),
        default_audio_language: Some("fr-FR".into()),
        live_broadcast_content: Some("none".into()),
        thumbnail_url: Some(format!(
            "https://i.ytimg.com/vi/{video_id}/maxresdefault.jpg"
        )),
        duration_seconds: Some(253),
        definition: Some("hd".into()),
        dimension: Some("2d".into()),
        caption: Some(false),
        licensed_content: Some(true),
        view_count: Some(1_234_567),
        like_count: Some(45_678),
        comment_count: Some(3_210),
        favorite_count: Some(0),
        chart_size: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::{from_avro_datum, to_avro_datum};

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).unwrap()
    }

    #[test]
    fn round_trips_through_avro_binary() {
        let v = sample("dQw4w9WgXcQ", "FR", 1, at(1_764_000_000_000));
        let bytes = to_avro_datum(schema(), v.to_avro()).unwrap();
        let back = from_avro_datum(schema(), &mut &bytes[..], None).unwrap();
        assert_eq!(TrendingVideo::from_avro(back).unwrap(), v);
    }

    #[test]
    fn absent_fields_round_trip_as_none() {
        let mut v = sample("abc", "US", 7, at(1_764_000_000_000));
        v.like_count = None;
        v.comment_count = None;
        v.tags = None;
        v.default_language = None;
        let bytes = to_avro_datum(schema(), v.to_avro()).unwrap();
        let back = from_avro_datum(schema(), &mut &bytes[..], None).unwrap();
        let back = TrendingVideo::from_avro(back).unwrap();
        assert_eq!(back.like_count, None);
        assert_eq!(back.tags, None);
        assert_eq!(back, v);
    }

    #[test]
    fn older_schema_version_decodes_with_nulls() {
        // A first version of the schema had only the identity fields and the title.
        let v1 = Schema::parse_str(
            r#"{"type":"record","name":"TrendingVideo","namespace":"io.youtube_trending","fields":[
              {"name":"video_id","type":"string"},{"name":"region_code","type":"string"},
              {"name":"fetched_at","type":{"type":"long","logicalType":"timestamp-millis"}},
              {"name":"rank","type":"int"},{"name":"title","type":["null","string"],"default":null}]}"#,
        )
        .unwrap();
        let value = Value::Record(vec![
            ("video_id".into(), Value::String("old".into())),
            ("region_code".into(), Value::String("JP".into())),
            ("fetched_at".into(), Value::TimestampMillis(1_000)),
            ("rank".into(), Value::Int(3)),
            (
                "title".into(),
                Value::Union(1, Box::new(Value::String("t".into()))),
            ),
        ]);
        let bytes = to_avro_datum(&v1, value).unwrap();
        let written = from_avro_datum(&v1, &mut &bytes[..], None).unwrap();
        let v = TrendingVideo::from_avro(written).unwrap();
        assert_eq!(v.video_id, "old");
        assert_eq!(v.title.as_deref(), Some("t"));
        assert_eq!(v.view_count, None);
        assert_eq!(v.fetched_at, at(1_000));
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let mut v = sample("x", "FR", 1, at(0));
        v.view_count = Some(-1);
        assert!(matches!(
            TrendingVideo::from_avro(v.to_avro()),
            Err(RecordError::Invalid {
                field: "view_count",
                ..
            })
        ));
        let mut v = sample("x", "FR", 0, at(0));
        v.rank = 0;
        assert!(v.validate().is_err());
        let v = sample("x", "france", 1, at(0));
        assert!(v.validate().is_err());
    }

    #[test]
    fn text_postgresql_cannot_store_is_rejected_with_its_field() {
        type Change = fn(&mut TrendingVideo);
        let cases: [(&str, Change); 5] = [
            ("title", |v| v.title = Some("a\0b".into())),
            ("description", |v| v.description = Some("\0".into())),
            ("channel_title", |v| v.channel_title = Some("x\0".into())),
            ("tags", |v| v.tags = Some(vec!["ok".into(), "n\0".into()])),
            ("video_id", |v| v.video_id = "a\0".into()),
        ];
        for (field, change) in cases {
            let mut v = sample("x", "FR", 1, at(0));
            change(&mut v);
            match TrendingVideo::from_avro(v.to_avro()) {
                Err(RecordError::Invalid { field: f, reason }) => {
                    assert_eq!(f, field);
                    assert!(reason.contains("NUL"), "{reason}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn timestamps_outside_postgresql_range_are_rejected() {
        let mut v = sample("x", "FR", 1, at(0));
        v.published_at = Some(at(POSTGRES_FIRST_MILLIS));
        assert!(v.validate().is_ok(), "PostgreSQL's first day is stored");
        v.published_at = Some(at(POSTGRES_FIRST_MILLIS - 1));
        assert!(matches!(
            TrendingVideo::from_avro(v.to_avro()),
            Err(RecordError::Invalid {
                field: "published_at",
                ..
            })
        ));
        // Year 300,000: past PostgreSQL's last day, and chrono's.
        let mut value = sample("x", "FR", 1, at(0)).to_avro();
        if let Value::Record(fields) = &mut value {
            for (name, v) in fields.iter_mut() {
                if name == "published_at" {
                    *v = Value::Union(1, Box::new(Value::TimestampMillis(9_404_000_000_000_000)));
                }
            }
        }
        assert!(matches!(
            TrendingVideo::from_avro(value),
            Err(RecordError::Invalid {
                field: "published_at",
                ..
            })
        ));
    }

    #[test]
    fn a_record_of_another_schema_is_rejected() {
        let other = Value::Record(vec![("something".into(), Value::Int(1))]);
        assert!(TrendingVideo::from_avro(other).is_err());
    }
}

#[cfg(test)]
mod truncation {
    use super::*;
    use apache_avro::{from_avro_datum, to_avro_datum};

    /// Pins a hazard of apache-avro 0.21 that the sink guards against (see its `decode`, which
    /// checks that decoding consumed exactly the body): a body cut in half still decodes, the
    /// missing fields reading as defaults. The day apache-avro refuses it, this fails and the
    /// guard can be revisited.
    #[test]
    fn apache_avro_decodes_a_truncated_body_without_error() {
        let v = sample(
            "dQw4w9WgXcQ",
            "FR",
            1,
            Utc.timestamp_millis_opt(1_764_000_000_000).unwrap(),
        );
        let bytes = to_avro_datum(schema(), v.to_avro()).unwrap();
        let half = from_avro_datum(schema(), &mut &bytes[..bytes.len() / 2], None)
            .expect("apache-avro 0.21 decodes a truncated body without error");
        let whole = from_avro_datum(schema(), &mut &bytes[..], None).unwrap();
        assert_ne!(half, whole, "the truncated body decodes to another value");
    }
}
