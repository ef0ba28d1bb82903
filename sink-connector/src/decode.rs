//! Decoding: Confluent wire format → Avro (writer's schema, fetched from the registry by id and
//! cached) → the current TrendingVideo schema → validation. Records written with an older
//! compatible schema version decode too.

use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
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

impl DecodeError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, DecodeError::RegistryUnavailable(_))
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

pub struct Decoder {
    avro: AvroDecoder<'static>,
}

impl Decoder {
    pub fn new(registry_url: &str) -> Self {
        Decoder {
            avro: AvroDecoder::new(SrSettings::new(registry_url.to_string())),
        }
    }

    pub async fn decode(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<TrendingVideo, DecodeError> {
        let value = value.ok_or(DecodeError::Tombstone)?;
        if value.len() < 5 || value[0] != 0 {
            return Err(DecodeError::NotWireFormat);
        }
        let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
        let decoded = match self.avro.decode_with_schema(Some(value)).await {
            Ok(Some(d)) => d,
            Ok(None) => return Err(DecodeError::Tombstone),
            Err(e) => {
                let detail = match &e.cause {
                    Some(c) => format!("{}: {c}", e.error),
                    None => e.error.clone(),
                };
                return Err(if e.retriable {
                    // Errors are cached by the decoder; a transient one must not stick.
                    self.avro.remove_errors_from_cache();
                    DecodeError::RegistryUnavailable(detail)
                } else if detail.contains("transform bytes") {
                    DecodeError::Avro(detail)
                } else {
                    DecodeError::Schema { id, detail }
                });
            }
        };
        // apache-avro 0.21 decodes a truncated body without error (the missing tail reads as
        // nulls), and ignores trailing bytes. Avro's binary encoding is canonical, so the value
        // must re-encode to exactly the body that was read; otherwise the record is corrupt.
        let reencoded = apache_avro::to_avro_datum(&decoded.schema.parsed, decoded.value.clone())
            .map_err(|e| DecodeError::Avro(e.to_string()))?;
        if reencoded.len() != value.len() - 5 {
            return Err(DecodeError::Avro(format!(
                "the body is {} bytes but its value encodes to {}: truncated or followed by garbage",
                value.len() - 5,
                reencoded.len()
            )));
        }
        let video = TrendingVideo::from_avro(decoded.value)?;
        let key = key.ok_or(DecodeError::MissingKey)?;
        let key = std::str::from_utf8(key).map_err(|_| DecodeError::KeyNotUtf8)?;
        if key != video.video_id {
            return Err(DecodeError::KeyMismatch {
                key: key.to_string(),
                video_id: video.video_id,
            });
        }
        Ok(video)
    }
}
