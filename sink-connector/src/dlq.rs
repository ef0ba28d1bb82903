//! The dead-letter topic: poison records (not decodable, unknown schema, invalid, or refused by
//! PostgreSQL as data) are produced there with their original key and value bytes and the
//! headers Kafka Connect writes, so existing DLQ tooling reads them; then the sink commits past
//! them.

use std::time::Duration;

use plumbing::kafka::RenewableProducer;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;

use crate::decode::DecodeError;
use crate::events::DeadLetterTrimmed;

/// Why a record goes to the dead-letter topic.
#[derive(Debug)]
pub enum Fault {
    /// Not decodable, or not a valid record: Kafka Connect's stage `VALUE_CONVERTER`.
    Undecodable(DecodeError),
    /// Refused by PostgreSQL as data when written alone (a NUL in text, a timestamp out of
    /// range, a constraint): Kafka Connect's stage `TASK_PUT`.
    Refused { sqlstate: String, message: String },
}

impl Fault {
    /// Bounded label for metrics, and the last part of the DLQ's exception class name.
    pub fn reason(&self) -> &'static str {
        match self {
            Fault::Undecodable(e) => e.reason(),
            Fault::Refused { .. } => "rejected",
        }
    }

    /// The error's text, bounded by [`crate::decode::MAX_ERROR_TEXT`].
    pub fn message(&self) -> String {
        match self {
            Fault::Undecodable(e) => e.message(),
            Fault::Refused { message, .. } => message.clone(),
        }
    }

    /// Kafka Connect's names: the stage, the class that failed and the exception's class.
    fn names(&self) -> (&'static str, &'static str, String) {
        match self {
            Fault::Undecodable(e) => (
                "VALUE_CONVERTER",
                "sink_connector::decode::Decoder",
                format!("sink_connector::decode::DecodeError::{}", e.reason()),
            ),
            Fault::Refused { .. } => (
                "TASK_PUT",
                "sink_connector::write::Writer",
                format!("sink_connector::write::WriteError::{}", self.reason()),
            ),
        }
    }
}

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
    /// A dead letter too large for the topic is produced again without the original's value,
    /// then without its key too, with a header saying so: no record can stall the sink, and
    /// the original stays readable at the offset the headers name while the source topic's
    /// retention keeps it.
    pub async fn send(
        &self,
        poison: &[(&OwnedMessage, &Fault)],
    ) -> Result<(), rdkafka::error::KafkaError> {
        self.producer
            .send_with(async |producer| self.send_all(producer, poison).await)
            .await
    }

    async fn send_all(
        &self,
        producer: &FutureProducer,
        poison: &[(&OwnedMessage, &Fault)],
    ) -> Result<(), rdkafka::error::KafkaError> {
        let sends = poison
            .iter()
            .map(|(m, e)| self.send_fitting(producer, m, e));
        for result in futures::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }

    /// Sends the most of `m` the topic accepts: whole, then without value, then without key.
    async fn send_fitting(
        &self,
        producer: &FutureProducer,
        m: &OwnedMessage,
        error: &Fault,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let mut copy = Copied::Whole;
        loop {
            match self.send_one(producer, m, error, copy).await {
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                    copy = match copy {
                        Copied::Whole if m.payload().is_some() => Copied::WithoutValue,
                        Copied::Whole | Copied::WithoutValue if m.key().is_some() => {
                            Copied::WithoutKeyOrValue
                        }
                        // Only the headers are left, and they are bounded: not a size issue.
                        _ => return Err(e),
                    };
                    DeadLetterTrimmed {
                        partition: m.partition(),
                        offset: m.offset(),
                        key_bytes: m.key().map_or(0, <[u8]>::len),
                        value_bytes: m.payload().map_or(0, <[u8]>::len),
                        dropped: copy.dropped(),
                    }
                    .emit();
                }
                other => return other,
            }
        }
    }

    async fn send_one(
        &self,
        producer: &FutureProducer,
        m: &OwnedMessage,
        error: &Fault,
        copy: Copied,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let message = error.message();
        let (stage, class_name, class) = error.names();
        let mut headers = OwnedHeaders::new()
            .insert(h("__connect.errors.topic", m.topic()))
            .insert(h("__connect.errors.partition", &partition))
            .insert(h("__connect.errors.offset", &offset))
            .insert(h(
                "__connect.errors.connector.name",
                "youtube-trending-sink",
            ))
            .insert(h("__connect.errors.task.id", "0"))
            .insert(h("__connect.errors.stage", stage))
            .insert(h("__connect.errors.class.name", class_name))
            .insert(h("__connect.errors.exception.class.name", &class))
            .insert(h("__connect.errors.exception.message", &message));
        if let Fault::Refused { sqlstate, .. } = error {
            headers = headers.insert(h(SQLSTATE_HEADER, sqlstate));
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic);
        let too_large = |what: &str, bytes: usize| {
            format!(
                "the {bytes}-byte {what} is too large for the dead-letter topic; read it at the \
                 original offset"
            )
        };
        match m.key() {
            Some(k) if copy != Copied::WithoutKeyOrValue => record = record.key(k),
            Some(k) => headers = headers.insert(h(KEY_DROPPED_HEADER, &too_large("key", k.len()))),
            None => {}
        }
        match m.payload() {
            Some(v) if copy == Copied::Whole => record = record.payload(v),
            Some(v) => {
                headers = headers.insert(h(VALUE_DROPPED_HEADER, &too_large("value", v.len())))
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

/// How much of the original record a dead letter carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copied {
    Whole,
    WithoutValue,
    WithoutKeyOrValue,
}

impl Copied {
    fn dropped(self) -> &'static str {
        match self {
            Copied::Whole => "nothing",
            Copied::WithoutValue => "value",
            Copied::WithoutKeyOrValue => "key_and_value",
        }
    }
}

/// Header of a dead letter PostgreSQL refused: the SQLSTATE of its error (e.g. `23514`).
pub const SQLSTATE_HEADER: &str = "youtube_trending.dlq.sqlstate";
/// Header of a dead-letter record whose value could not be copied.
pub const VALUE_DROPPED_HEADER: &str = "youtube_trending.dlq.value_dropped";
/// Header of a dead-letter record whose key could not be copied either.
pub const KEY_DROPPED_HEADER: &str = "youtube_trending.dlq.key_dropped";

fn h<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
