//! Decoding: Confluent wire format → Avro (writer's schema, fetched from the registry by id and
//! cached) → the current TrendingVideo schema → validation. Records written with an older
//! compatible schema version decode too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::collections::HashSet;

use plumbing::registry::{self, RegistryArgs};
use schema_registry_converter::async_impl::schema_registry::{
    get_all_subjects, get_all_versions, get_schema_by_id, perform_sr_call, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::SrCall;
use schemas::{RecordError, TrendingVideo};

/// Why a record could not be turned into a [`TrendingVideo`]. All but
/// [`DecodeError::RegistryUnavailable`] are permanent: the record is poison.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the record has no value (tombstone)")]
    Tombstone,
    #[error("the record has no key")]
    MissingKey,
    #[error("the key is not UTF-8")]
    KeyNotUtf8,
    #[error("the key `{key}` is not the record's video id `{video_id}`")]
    KeyMismatch { key: String, video_id: String },
    #[error("not in the Confluent wire format (magic byte 0, 4-byte schema id, Avro body)")]
    NotWireFormat,
    #[error("schema id {id} could not be used: {detail}")]
    Schema { id: u32, detail: String },
    #[error("the Avro body does not decode with its schema: {0}")]
    Avro(String),
    #[error("the value is not a valid TrendingVideo: {0}")]
    Invalid(#[from] RecordError),
    #[error("the schema registry is unavailable: {0}")]
    RegistryUnavailable(String),
}

/// The most of an error's text that leaves the sink (a dead letter's header, a log line):
/// errors can quote their input (a key, a value apache-avro prints), and a record of almost a
/// megabyte must not become a dead letter the broker refuses or a log line of that size.
pub const MAX_ERROR_TEXT: usize = 2048;

/// `text`, cut to at most `max` bytes on a character boundary and marked as cut.
pub fn excerpt(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [cut: {} more bytes]", &text[..end], text.len() - end).into()
}

impl plumbing::backoff::Retriable for DecodeError {
    /// The registry unavailable; every other error is the record's (poison).
    fn is_retriable(&self) -> bool {
        matches!(self, DecodeError::RegistryUnavailable(_))
    }
}

impl DecodeError {
    /// The error's text, bounded by [`MAX_ERROR_TEXT`]: what dead letters and logs carry.
    pub fn message(&self) -> String {
        excerpt(&self.to_string(), MAX_ERROR_TEXT).into_owned()
    }

    /// Bounded label for metrics, and the exception class name of the DLQ headers.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Tombstone => "tombstone",
            DecodeError::MissingKey => "missing_key",
            DecodeError::KeyNotUtf8 => "key_not_utf8",
            DecodeError::KeyMismatch { .. } => "key_mismatch",
            DecodeError::NotWireFormat => "not_wire_format",
            DecodeError::Schema { .. } => "unknown_schema",
            DecodeError::Avro(_) => "avro",
            DecodeError::Invalid(_) => "invalid",
            DecodeError::RegistryUnavailable(_) => "registry_unavailable",
        }
    }
}

/// A writer's schema, as fetched once per schema id.
struct WriterSchema {
    parsed: apache_avro::Schema,
    /// Equal to the current schema: values need no resolution.
    is_current: bool,
}

pub struct Decoder {
    settings: SrSettings,
    /// Writer's schemas by id, so the registry is asked only for the first record of each id.
    schemas: Mutex<HashMap<u32, Arc<WriterSchema>>>,
    /// The subjects whose schemas may be decoded, and the ids found under them so far.
    subjects: Vec<String>,
    allowed: Mutex<AllowedIds>,
}

#[derive(Default)]
struct AllowedIds {
    ids: HashSet<u32>,
    /// (subject, version) already looked up.
    versions: HashSet<(String, u32)>,
}

/// How far in the future a record's `fetched_at` may be (clocks differ a little between hosts);
/// beyond, the record is invalid: it would stay "latest" in `videos` for that long.
pub const MAX_CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

impl Decoder {
    /// The newest `fetched_at` a record may carry now.
    pub fn latest_fetched_at() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + MAX_CLOCK_SKEW
    }

    /// Whether the registry answers (its subject list), checked at start-up: without it no
    /// record of a schema the sink has not seen yet can be read, so the sink is not ready.
    pub async fn check_registry(&self) -> Result<(), DecodeError> {
        get_all_subjects(&self.settings)
            .await
            .map(|_| ())
            .map_err(|e| DecodeError::RegistryUnavailable(registry::describe(&e)))
    }

    /// A decoder of the schemas registered under `subjects`. `max_length` bounds every string,
    /// bytes and array length a record announces: apache-avro allocates what a length prefix
    /// says before reading it, so a corrupt prefix would otherwise reserve gigabytes and abort
    /// the process, again after every restart. (apache-avro keeps the bound process-wide, set
    /// once: the first decoder's stands.)
    pub fn new(
        registry: &RegistryArgs,
        subjects: Vec<String>,
        max_length: usize,
    ) -> anyhow::Result<Self> {
        apache_avro::util::max_allocation_bytes(max_length);
        Ok(Decoder {
            settings: registry.settings()?,
            schemas: Mutex::new(HashMap::new()),
            subjects,
            allowed: Mutex::new(AllowedIds::default()),
        })
    }

    /// Decodes and validates one record; a `fetched_at` after `latest` (see
    /// [`Decoder::latest_fetched_at`], read once per batch) makes it invalid.
    pub async fn decode(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        latest: chrono::DateTime<chrono::Utc>,
    ) -> Result<TrendingVideo, DecodeError> {
        let value = value.ok_or(DecodeError::Tombstone)?;
        if value.len() < 5 || value[0] != 0 {
            return Err(DecodeError::NotWireFormat);
        }
        let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
        let writer = self.writer_schema(id).await?;
        let mut body = Body {
            rest: &value[5..],
            overrun: false,
        };
        let decoded = apache_avro::from_avro_datum(&writer.parsed, &mut body, None)
            .map_err(|e| DecodeError::Avro(e.to_string()))?;
        // apache-avro 0.21 reads a missing tail as nulls instead of failing, and ignores trailing
        // bytes: a record is whole only if decoding used exactly its body.
        if body.overrun || !body.rest.is_empty() {
            return Err(DecodeError::Avro(format!(
                "the {}-byte body does not match its schema: truncated or followed by garbage",
                value.len() - 5
            )));
        }
        let video = if writer.is_current {
            TrendingVideo::from_current(decoded)?
        } else {
            TrendingVideo::from_avro(decoded)?
        };
        if video.fetched_at.timestamp_millis() < 0 {
            // Avro's timestamp counts from 1970: before it is a corrupt or hand-made value, and
            // its month's partition could not be named.
            return Err(DecodeError::Invalid(schemas::RecordError::Invalid {
                field: "fetched_at",
                reason: format!("{} is before 1970", video.fetched_at.to_rfc3339()),
            }));
        }
        if video.fetched_at > latest {
            return Err(DecodeError::Invalid(schemas::RecordError::Invalid {
                field: "fetched_at",
                reason: format!(
                    "{} is in the future (more than {} min ahead of this host's clock)",
                    video.fetched_at.to_rfc3339(),
                    MAX_CLOCK_SKEW.num_minutes()
                ),
            }));
        }
        let key = key.ok_or(DecodeError::MissingKey)?;
        let key = std::str::from_utf8(key).map_err(|_| DecodeError::KeyNotUtf8)?;
        if key != video.video_id {
            // Video ids are 11 characters: the start of a wrong key says enough.
            return Err(DecodeError::KeyMismatch {
                key: excerpt(key, 64).into_owned(),
                video_id: excerpt(&video.video_id, 64).into_owned(),
            });
        }
        Ok(video)
    }

    /// The writer's schema of `id`, from the cache or the registry (for the first record that
    /// uses it). Only ids registered under the configured subjects are fetched at all, and a
    /// recursive schema is refused: apache-avro decodes without a depth limit, so a schema
    /// that refers to itself and a few KB of body could overflow the stack and abort the
    /// process, again at the same offset after every restart.
    async fn writer_schema(&self, id: u32) -> Result<Arc<WriterSchema>, DecodeError> {
        if let Some(s) = self.schemas.lock().expect("schema cache lock").get(&id) {
            return Ok(s.clone());
        }
        if !self.is_allowed(id).await? {
            return Err(DecodeError::Schema {
                id,
                detail: format!("not registered under {}", self.subjects.join(", ")),
            });
        }
        let registered = get_schema_by_id(id, &self.settings)
            .await
            .map_err(|e| registry_error(id, e))?;
        let parsed = apache_avro::Schema::parse_str(&registered.schema).map_err(|e| {
            DecodeError::Schema {
                id,
                detail: format!("not a readable Avro schema: {e}"),
            }
        })?;
        if is_recursive(&parsed, &mut Vec::new()) {
            return Err(DecodeError::Schema {
                id,
                detail: "a recursive schema (a record that contains itself)".into(),
            });
        }
        let writer = Arc::new(WriterSchema {
            is_current: parsed.canonical_form() == schemas::schema().canonical_form(),
            parsed,
        });
        self.schemas
            .lock()
            .expect("schema cache lock")
            .insert(id, writer.clone());
        Ok(writer)
    }

    /// Whether `id` is registered under one of the subjects. Ids found are kept; an unknown id
    /// lists the subjects' versions again (a new version may have been registered since) and
    /// looks up only the versions not seen yet.
    async fn is_allowed(&self, id: u32) -> Result<bool, DecodeError> {
        if self.allowed.lock().expect("allowed lock").ids.contains(&id) {
            return Ok(true);
        }
        for subject in &self.subjects {
            let versions = match get_all_versions(&self.settings, subject.clone()).await {
                Ok(v) => v,
                // No such subject (yet): nothing registered under it.
                Err(e) if registry::answered_status(&e) == Some(404) => continue,
                Err(e) => return Err(registry_error(id, e)),
            };
            for version in versions {
                let key = (subject.clone(), version);
                if self
                    .allowed
                    .lock()
                    .expect("allowed lock")
                    .versions
                    .contains(&key)
                {
                    continue;
                }
                let raw = perform_sr_call(
                    &self.settings,
                    SrCall::GetBySubjectAndVersion(subject, version),
                )
                .await
                .map_err(|e| registry_error(id, e))?;
                let mut allowed = self.allowed.lock().expect("allowed lock");
                allowed.ids.extend(raw.id);
                allowed.versions.insert(key);
            }
        }
        Ok(self.allowed.lock().expect("allowed lock").ids.contains(&id))
    }
}

/// What a failed registry call says about the record. Only "no such id" (404) or an answer that
/// cannot be read makes the record poison. Every other answer is about the registry, not the
/// record: the client calls only 502 and 503 retriable, but a 500, a 504, a 429 or a 401 after
/// a credentials change would otherwise dead-letter valid records.
fn registry_error(id: u32, e: SRCError) -> DecodeError {
    let detail = registry::describe(&e);
    let status = registry::answered_status(&e);
    if e.retriable || status.is_some_and(|s| s != 404) {
        DecodeError::RegistryUnavailable(detail)
    } else {
        DecodeError::Schema { id, detail }
    }
}

/// Whether a record type of `schema` contains itself, directly or through arrays, maps and
/// unions. `path` holds the records being walked: Avro defines a name before it is used, so a
/// reference to a record on the path is the only way to a cycle.
fn is_recursive(schema: &apache_avro::Schema, path: &mut Vec<apache_avro::schema::Name>) -> bool {
    use apache_avro::Schema;
    match schema {
        Schema::Ref { name } => path.contains(name),
        Schema::Record(r) => {
            path.push(r.name.clone());
            let found = r.fields.iter().any(|f| is_recursive(&f.schema, path));
            path.pop();
            found
        }
        Schema::Array(a) => is_recursive(&a.items, path),
        Schema::Map(m) => is_recursive(&m.types, path),
        Schema::Union(u) => u.variants().iter().any(|v| is_recursive(v, path)),
        _ => false,
    }
}

/// An Avro body being read, remembering whether a read asked for more bytes than were left.
struct Body<'a> {
    rest: &'a [u8],
    overrun: bool,
}

impl std::io::Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.len() > self.rest.len() {
            self.overrun = true;
        }
        self.rest.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumbing::backoff::Retriable;

    #[test]
    fn error_text_is_cut_on_a_character_boundary_and_says_so() {
        assert_eq!(excerpt("short", 10), "short");
        let cut = excerpt("ééééé", 5); // 10 bytes; byte 5 is inside the third é
        assert_eq!(cut, "éé... [cut: 6 more bytes]");
        let key = "k".repeat(900_000);
        let e = DecodeError::KeyMismatch {
            key: key.clone(),
            video_id: "abc".into(),
        };
        assert!(
            e.message().len() < MAX_ERROR_TEXT + 64,
            "{}",
            e.message().len()
        );
        assert!(e.message().ends_with("more bytes]"));
    }

    fn answer(status: &str) -> SRCError {
        SRCError::non_retryable_with_cause(
            "{}",
            &format!("HTTP request to schema registry failed with status {status}"),
        )
    }

    #[test]
    fn only_a_404_makes_a_record_poison_any_other_answer_means_the_registry_is_unavailable() {
        assert!(matches!(
            registry_error(7, answer("404 Not Found")),
            DecodeError::Schema { id: 7, .. }
        ));
        for status in [
            "500 Internal Server Error",
            "504 Gateway Timeout",
            "429 Too Many Requests",
            "401 Unauthorized",
        ] {
            let e = registry_error(7, answer(status));
            assert!(e.is_retriable(), "{status}: {e}");
        }
        let unreachable = SRCError::retryable_with_cause("connection refused", "http call failed");
        assert!(registry_error(7, unreachable).is_retriable());
    }

    #[test]
    fn a_record_that_contains_itself_is_recursive_a_reused_type_is_not() {
        let parse = |s: &str| apache_avro::Schema::parse_str(s).unwrap();
        let direct = parse(
            r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#,
        );
        let through_array = parse(
            r#"{"type":"record","name":"Tree","fields":[
                {"name":"children","type":{"type":"array","items":"Tree"}}]}"#,
        );
        let mutual = parse(
            r#"{"type":"record","name":"A","fields":[{"name":"b","type":
                {"type":"record","name":"B","fields":[{"name":"a","type":["null","A"]}]}}]}"#,
        );
        let reused = parse(
            r#"{"type":"record","name":"P","fields":[
                {"name":"x","type":{"type":"record","name":"Q","fields":[{"name":"v","type":"long"}]}},
                {"name":"y","type":"Q"}]}"#,
        );
        for (schema, recursive) in [
            (&direct, true),
            (&through_array, true),
            (&mutual, true),
            (&reused, false),
            (schemas::schema(), false),
        ] {
            assert_eq!(
                is_recursive(schema, &mut Vec::new()),
                recursive,
                "{schema:?}"
            );
        }
    }
}
