//! The dead-letter topic: poison records (not decodable, unknown schema, invalid) are produced
//! there with their original key and value bytes and the headers Kafka Connect writes, so
//! existing DLQ tooling reads them; then the sink commits past them.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use crate::decode::DecodeError;

pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: String) -> Self {
        DeadLetters { producer, topic }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces every poison record and waits until the broker has acknowledged all of them.
    pub async fn send(
        &self,
        poison: &[(&OwnedMessage, &DecodeError)],
    ) -> Result<(), rdkafka::error::KafkaError> {
        let sends = poison.iter().map(|(m, error)| {
            let partition = m.partition().to_string();
            let offset = m.offset().to_string();
            let message = error.to_string();
            let class = format!("sink_connector::decode::DecodeError::{}", error.reason());
            let headers = OwnedHeaders::new()
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
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(v) = m.payload() {
                record = record.payload(v);
            }
            self.producer.send(record, Duration::from_secs(30))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}

fn h<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
