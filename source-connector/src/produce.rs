//! Publishing: the schema is registered under `<topic>-value` at start-up, each record is
//! encoded in the Confluent wire format by schema_registry_converter, and a poll's records and
//! its state record are sent in one Kafka [`transaction`](crate::transaction).
//! [`Publisher::publish`] returns only when that transaction is committed, or fails as a whole
//! with nothing of the poll visible to `read_committed` readers: the caller then redoes the poll
//! whole.

use std::time::Duration;

use futures::future::try_join_all;
use plumbing::registry;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::avro_common::get_supplied_schema;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use schemas::TrendingVideo;

use crate::state::{self, RegionState};
use crate::transaction::{TransactionError, Transactions};

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
    #[error("saving the schedule state failed: {0:#}")]
    State(anyhow::Error),
    #[error(transparent)]
    Transaction(#[from] TransactionError),
}

impl plumbing::backoff::Retriable for ProduceError {
    /// Everything but a refused schema or a fenced source may succeed later.
    fn is_retriable(&self) -> bool {
        !matches!(
            self,
            ProduceError::SchemaRejected { .. }
                | ProduceError::Transaction(TransactionError::Fenced(_))
        )
    }
}

impl ProduceError {
    /// Another source took over this one's transactional id: the whole source stops.
    pub fn is_fenced(&self) -> bool {
        matches!(self, ProduceError::Transaction(TransactionError::Fenced(_)))
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
    transactions: Transactions,
    encoder: AvroEncoder<'static>,
    strategy: SubjectNameStrategy,
    topic: String,
    state_topic: String,
    /// This source's target-state key in `state_topic`.
    target_key: state::TargetKey,
    timeout: Duration,
}

impl Publisher {
    /// Registers the schema under `<topic>-value`; fails with [`ProduceError::SchemaRejected`]
    /// when the registry finds it incompatible with the subject's latest version.
    pub async fn register(
        settings: &SrSettings,
        topic: &str,
    ) -> Result<(SubjectNameStrategy, u32), ProduceError> {
        let settings = settings.clone();
        let subject = format!("{topic}-value");
        let supplied = get_supplied_schema(schemas::schema());
        let registered = post_schema(&settings, subject.clone(), supplied.clone())
            .await
            .map_err(|e| registry_error(&subject, e))?;
        let strategy =
            SubjectNameStrategy::TopicNameStrategyWithSchema(topic.to_string(), false, supplied);
        Ok((strategy, registered.id))
    }

    /// Publishes to `topic` with the registered schema (`strategy`), the state records to
    /// `state_topic` (its target state under `target_key`), in the transactions of
    /// `transactions`.
    pub fn new(
        transactions: Transactions,
        settings: &SrSettings,
        strategy: SubjectNameStrategy,
        topic: &str,
        (state_topic, target_key): (&str, state::TargetKey),
        timeout: Duration,
    ) -> Self {
        Publisher {
            transactions,
            encoder: AvroEncoder::new(settings.clone()),
            strategy,
            topic: topic.to_string(),
            state_topic: state_topic.to_string(),
            target_key,
            timeout,
        }
    }

    /// Encodes every record, then sends them, keyed by video id, and the poll's state record
    /// in one transaction, and returns once it is committed.
    pub async fn publish(
        &self,
        records: &[TrendingVideo],
        state: &RegionState,
    ) -> Result<(), ProduceError> {
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
        self.transactions
            .run(async |producer| {
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
                // Bounded as a whole by the transaction (PRODUCE_TIMEOUT).
                try_join_all(sends).await?;
                state::save(producer, &self.state_topic, state, self.timeout)
                    .await
                    .map_err(ProduceError::State)
            })
            .await
    }

    /// Records what an operator asked the source to be, in a transaction of its own.
    pub async fn save_target(&self, target: state::TargetState) -> Result<(), ProduceError> {
        self.transactions
            .run(async |producer| {
                state::save_target(
                    producer,
                    &self.state_topic,
                    &self.target_key,
                    target,
                    self.timeout,
                )
                .await
                .map_err(ProduceError::State)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumbing::backoff::Retriable;

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
