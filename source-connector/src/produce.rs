//! Publishing: the schema is registered under `<topic>-value` at start-up, each record is
//! encoded in the Confluent wire format by schema_registry_converter, and a poll's records are
//! sent by an idempotent producer with `acks=all`. [`Publisher::publish`] returns only when
//! every record of the poll is acknowledged by the broker, or fails as a whole: the caller then
//! redoes the poll whole (duplicates are harmless downstream, loss is not).

use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use plumbing::kafka::{KafkaArgs, RenewableProducer};
use plumbing::registry;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureRecord, Producer};
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::avro_common::get_supplied_schema;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use schemas::TrendingVideo;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error(
        "the schema registry refused the TrendingVideo schema for subject `{subject}`: {detail}. \
             The schema in schemas/avro must stay BACKWARD compatible with the registered versions"
    )]
    SchemaRejected { subject: String, detail: String },
    #[error("the schema registry is unreachable or failing: {0}")]
    Registry(String),
    #[error("encoding a record failed: {0}")]
    Encode(String),
    #[error("the broker did not acknowledge every record of the poll: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the broker did not acknowledge every record within {0:?}")]
    Timeout(Duration),
}

impl ProduceError {
    /// Everything but a refused schema may succeed later.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, ProduceError::SchemaRejected { .. })
    }
}

fn registry_error(subject: &str, e: SRCError) -> ProduceError {
    let detail = registry::describe(&e);
    // 409 is the registry's "incompatible"; 422 an invalid schema. Both are permanent.
    if matches!(registry::answered_status(&e), Some(409 | 422)) {
        ProduceError::SchemaRejected {
            subject: subject.to_string(),
            detail,
        }
    } else {
        ProduceError::Registry(detail)
    }
}

pub struct Publisher {
    /// Replaced after a failed publish, so the poll's retry starts on a clean one.
    producer: Arc<RenewableProducer>,
    encoder: AvroEncoder<'static>,
    strategy: SubjectNameStrategy,
    topic: String,
    timeout: Duration,
}

impl Publisher {
    /// The idempotent producer. Creating it does not contact the broker.
    pub fn producer(kafka: &KafkaArgs, timeout: Duration) -> anyhow::Result<RenewableProducer> {
        let timeout_ms = timeout.as_millis().to_string();
        let config = kafka.client_config(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            // A poll's records leave in a few batches rather than one request each.
            ("linger.ms", "20"),
            ("message.timeout.ms", &timeout_ms),
        ])?;
        RenewableProducer::new(config)
    }

    /// Registers the schema under `<topic>-value`; fails with [`ProduceError::SchemaRejected`]
    /// when the registry finds it incompatible with the subject's latest version.
    pub async fn register(
        producer: Arc<RenewableProducer>,
        settings: &SrSettings,
        topic: &str,
        timeout: Duration,
    ) -> Result<(Self, u32), ProduceError> {
        let settings = settings.clone();
        let subject = format!("{topic}-value");
        let supplied = get_supplied_schema(schemas::schema());
        let registered = post_schema(&settings, subject.clone(), supplied.clone())
            .await
            .map_err(|e| registry_error(&subject, e))?;
        let publisher = Publisher {
            producer,
            encoder: AvroEncoder::new(settings),
            strategy: SubjectNameStrategy::TopicNameStrategyWithSchema(
                topic.to_string(),
                false,
                supplied,
            ),
            topic: topic.to_string(),
            timeout,
        };
        Ok((publisher, registered.id))
    }

    /// Encodes and sends every record, keyed by video id, and waits until the broker has
    /// acknowledged all of them.
    pub async fn publish(&self, records: &[TrendingVideo]) -> Result<(), ProduceError> {
        let mut encoded = Vec::with_capacity(records.len());
        for r in records {
            let bytes = self
                .encoder
                .encode_value(r.to_avro(), &self.strategy)
                .await
                .map_err(|e| {
                    // The encoder keeps failures in its cache too, transient ones included: left
                    // there, a registry outage at the first poll would fail every later poll.
                    self.encoder.remove_errors_from_cache();
                    let subject = format!("{}-value", self.topic);
                    match registry_error(&subject, e) {
                        ProduceError::Registry(d) => ProduceError::Encode(d),
                        other => other,
                    }
                })?;
            encoded.push((r.video_id.as_str(), bytes));
        }
        self.producer
            .send_with(async |producer| {
                let sends = encoded.iter().map(|(key, value)| async move {
                    producer
                        .send(
                            FutureRecord::to(&self.topic).key(*key).payload(value),
                            self.timeout,
                        )
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| ProduceError::Kafka(e))
                });
                tokio::time::timeout(self.timeout, try_join_all(sends))
                    .await
                    .map_err(|_| ProduceError::Timeout(self.timeout))?
                    .map(|_| ())
            })
            .await
    }

    /// Waits for anything still queued in the producer, at shutdown.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.get().flush(timeout) {
            tracing::warn!(error = %e, "Producer flush at shutdown did not complete");
        }
    }

    /// The producer the state records are sent with (shared with the charts').
    pub fn renewable_producer(&self) -> &RenewableProducer {
        &self.producer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_409_or_422_answer_is_a_rejected_schema() {
        let conflict = SRCError::non_retryable_with_cause(
            "Schema being registered is incompatible",
            "HTTP request to schema registry failed with status 409 Conflict",
        );
        assert!(!registry_error("t-value", conflict).is_retriable());
        let unreachable = SRCError::non_retryable_with_cause(
            "error sending request for url (http://127.0.0.1:44095/subjects/t-value/versions)",
            "http call to schema registry failed",
        );
        assert!(registry_error("t-value", unreachable).is_retriable());
    }
}
