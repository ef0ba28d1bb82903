//! The dead-letter topic: poison records (not decodable, unknown schema, invalid) are produced
//! there with their original key and value bytes and the headers Kafka Connect writes, so
//! existing DLQ tooling reads them; then the sink commits past them.

use std::time::Duration;

use plumbing::kafka::RenewableProducer;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;

use crate::decode::DecodeError;

pub struct DeadLetters {
    /// Replaced after a failed send, so the batch's retry starts on a clean producer.
    producer: RenewableProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(producer: RenewableProducer, topic: String) -> Self {
        DeadLetters { producer, topic }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces every poison record and waits until the broker has acknowledged all of them.
    /// A record too large for the dead-letter topic (its headers make it bigger than the
    /// original) is produced again without its value, with a header saying so: it stays
    /// readable at its original offset while the topic's retention keeps it.
    pub async fn send(
        &self,
        poison: &[(&OwnedMessage, &DecodeError)],
    ) -> Result<(), rdkafka::error::KafkaError> {
        self.producer
            .send_with(async |producer| self.send_all(producer, poison).await)
            .await
    }

    async fn send_all(
        &self,
        producer: &FutureProducer,
        poison: &[(&OwnedMessage, &DecodeError)],
    ) -> Result<(), rdkafka::error::KafkaError> {
        let results = futures::future::join_all(
            poison
                .iter()
                .map(|(m, e)| self.send_one(producer, m, e, true)),
        )
        .await;
        let mut dropped = Vec::new();
        for (result, (m, e)) in results.into_iter().zip(poison) {
            match result {
                Ok(()) => {}
                Err(err)
                    if err.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) =>
                {
                    tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(),
                        bytes = m.payload().map_or(0, <[u8]>::len),
                        "Poison record too large for the dead-letter topic: dead-lettered without its value");
                    dropped.push(self.send_one(producer, m, e, false));
                }
                Err(err) => return Err(err),
            }
        }
        for result in futures::future::join_all(dropped).await {
            result?;
        }
        Ok(())
    }

    async fn send_one(
        &self,
        producer: &FutureProducer,
        m: &OwnedMessage,
        error: &DecodeError,
        with_value: bool,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let message = error.to_string();
        let class = format!("sink_connector::decode::DecodeError::{}", error.reason());
        let mut headers = OwnedHeaders::new()
            .insert(h("__connect.errors.topic", m.topic()))
            .insert(h("__connect.errors.partition", &partition))
            .insert(h("__connect.errors.offset", &offset))
            .insert(h(
                "__connect.errors.connector.name",
                "youtube-trending-sink",
            ))
            .insert(h("__connect.errors.task.id", "0"))
            .insert(h("__connect.errors.stage", "VALUE_CONVERTER"))
            .insert(h(
                "__connect.errors.class.name",
                "sink_connector::decode::Decoder",
            ))
            .insert(h("__connect.errors.exception.class.name", &class))
            .insert(h("__connect.errors.exception.message", &message));
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        match m.payload() {
            Some(v) if with_value => record = record.payload(v),
            Some(v) => {
                let why = format!(
                    "the {}-byte value is too large for the dead-letter topic; read it at the \
                     original offset",
                    v.len()
                );
                headers = headers.insert(h(VALUE_DROPPED_HEADER, &why));
            }
            None => {}
        }
        producer
            .send(record.headers(headers), Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// Header of a dead-letter record whose value could not be copied.
pub const VALUE_DROPPED_HEADER: &str = "youtube_trending.dlq.value_dropped";

fn h<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
