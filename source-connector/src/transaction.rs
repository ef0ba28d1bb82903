//! Kafka transactions: each poll's chart records and its state record are written in one
//! transaction, so a reader in `read_committed` mode (the sink) sees a poll whole or not at all,
//! as Kafka Connect's exactly-once sources do (KIP-618, the state topic playing the source
//! offsets' part).
//!
//! One transaction at a time: the regions' polls fetch in parallel and take turns to publish.
//! The `transactional.id` is stable (`KAFKA_TRANSACTIONAL_ID`): a second source started with the
//! same id fences this one, which then stops with [`TransactionError::Fenced`] rather than
//! doubling the quota spent and the charts.

use std::time::Duration;

use plumbing::kafka::KafkaArgs;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::ClientConfig;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error(
        "another source connector took over the transactional id `{0}` (this one is fenced): \
         two sources must not poll the same charts. Stop one, or give each its own \
         KAFKA_TRANSACTIONAL_ID. (A transaction of this source left open longer than 3 x \
         PRODUCE_TIMEOUT, the process frozen meanwhile, reads the same.)"
    )]
    Fenced(String),
    #[error("the Kafka transaction failed: {0}")]
    Kafka(String),
}

impl plumbing::backoff::Retriable for TransactionError {
    /// Being fenced is for good: another source holds the transactional id.
    fn is_retriable(&self) -> bool {
        !matches!(self, TransactionError::Fenced(_))
    }
}

/// A transactional producer, created (and its transactions initialised) when first needed and
/// replaced after a failure it cannot recover from.
pub struct Transactions {
    config: ClientConfig,
    id: String,
    timeout: Duration,
    /// The lock is held for a whole transaction.
    state: Mutex<State>,
}

enum State {
    /// No producer yet, or the last one failed beyond repair: the next transaction starts one.
    Idle,
    Ready(FutureProducer),
    /// For good: starting a new producer would fence the source that took over.
    Fenced,
}

impl Transactions {
    /// The producer's settings; nothing is contacted until the first transaction.
    pub fn new(kafka: &KafkaArgs, id: &str, timeout: Duration) -> anyhow::Result<Self> {
        let timeout_ms = timeout.as_millis().to_string();
        let config = kafka.client_config(&[
            ("transactional.id", id),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            // A poll's records leave in a few batches rather than one request each.
            ("linger.ms", "20"),
            ("message.timeout.ms", &timeout_ms),
            // The broker aborts a transaction left open this long (a source frozen or killed
            // mid-poll). A transaction's send and commit take at most twice the timeout; the
            // broker refuses more than 15 minutes (`transaction.max.timeout.ms`'s default).
            (
                "transaction.timeout.ms",
                &transaction_timeout_ms(timeout).to_string(),
            ),
        ])?;
        Ok(Transactions {
            config,
            id: id.to_string(),
            timeout,
            state: Mutex::new(State::Idle),
        })
    }

    /// Initialises transactions at start-up, so that a source already running with the same
    /// id is fenced now, and a broker without transactions is reported before the first poll.
    pub async fn init(&self) -> Result<(), TransactionError> {
        let mut state = self.state.lock().await;
        let producer = self.take(&mut state).await?;
        *state = State::Ready(producer);
        Ok(())
    }

    /// Runs `send` in a transaction and commits it; on any failure the transaction is aborted
    /// (nothing of it becomes visible) and the error returned: `send`'s own, unless the
    /// failure turned out to be a fence.
    pub async fn run<T, E>(
        &self,
        send: impl AsyncFnOnce(&FutureProducer) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: std::fmt::Display + From<TransactionError>,
    {
        let mut state = self.state.lock().await;
        let producer = self.take(&mut state).await?;
        if let Err(e) = producer.begin_transaction() {
            return Err(self
                .failed(&mut state, producer, e.to_string())
                .await
                .into());
        }
        // The whole send within the timeout, so that a transaction never stays open long
        // enough for the broker to abort it (which would read as a fence).
        let sent = match tokio::time::timeout(self.timeout, send(&producer)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                return Err(
                    match self.failed(&mut state, producer, e.to_string()).await {
                        fenced @ TransactionError::Fenced(_) => fenced.into(),
                        TransactionError::Kafka(_) => e,
                    },
                )
            }
            Err(_) => {
                let e = format!("the poll's records were not sent within {:?}", self.timeout);
                return Err(self.failed(&mut state, producer, e).await.into());
            }
        };
        match self.commit(&producer).await {
            Ok(()) => {
                *state = State::Ready(producer);
                Ok(sent)
            }
            Err(e) => Err(self
                .failed(&mut state, producer, e.to_string())
                .await
                .into()),
        }
    }

    /// Commits, retrying while librdkafka says the commit may still succeed: its outcome is
    /// unknown then (the broker may have committed already), and an abort would be refused, or
    /// a new producer would find the transaction committed and the poll, redone, would be
    /// published twice.
    /// All attempts together within the timeout, keeping the transaction's life under the
    /// broker's limit.
    async fn commit(&self, producer: &FutureProducer) -> Result<(), KafkaError> {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            let committing = producer.clone();
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match blocking(move || committing.commit_transaction(left)).await {
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && std::time::Instant::now() < deadline =>
                {
                    tracing::warn!(error = %e, "Committing the transaction: retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// The ready producer, or a new one; never one after this source was fenced.
    async fn take(&self, state: &mut State) -> Result<FutureProducer, TransactionError> {
        match std::mem::replace(state, State::Idle) {
            State::Ready(p) => Ok(p),
            State::Fenced => {
                *state = State::Fenced;
                Err(TransactionError::Fenced(self.id.clone()))
            }
            State::Idle => {
                let started = self.start().await;
                if let Err(TransactionError::Fenced(_)) = &started {
                    *state = State::Fenced;
                }
                started
            }
        }
    }

    /// A new producer with its transactions initialised (which fences any older producer with
    /// the same id, and completes or aborts what it left open).
    async fn start(&self) -> Result<FutureProducer, TransactionError> {
        let producer: FutureProducer = self
            .config
            .create()
            .map_err(|e| TransactionError::Kafka(plumbing::kafka::config_error(e).to_string()))?;
        let initialising = producer.clone();
        let timeout = self.timeout;
        match blocking(move || initialising.init_transactions(timeout)).await {
            Ok(()) => Ok(producer),
            Err(e) => {
                let error = self.classify(&producer, e.to_string());
                retire(producer);
                Err(error)
            }
        }
    }

    /// After a failed step: aborts the transaction and leaves the producer to be replaced at the
    /// next transaction, whether the abort worked or not. An abort that works proves the
    /// coordinator answers, not that sends do: after a broker frozen for 15 s, a kept producer
    /// timed out on every send for minutes while its aborts succeeded (librdkafka kept a
    /// broker connection it had lost); a new one bootstraps afresh, and its
    /// `init_transactions` completes whatever the old one left open.
    async fn failed(
        &self,
        state: &mut State,
        producer: FutureProducer,
        error: String,
    ) -> TransactionError {
        let aborting = producer.clone();
        let timeout = self.timeout;
        let aborted = blocking(move || aborting.abort_transaction(timeout)).await;
        let error = self.classify(&producer, error);
        if let TransactionError::Fenced(_) = error {
            *state = State::Fenced;
        } else if let Err(e) = aborted {
            tracing::warn!(error = %e,
                "Aborting the transaction failed: the producer is replaced, which aborts it");
        }
        retire(producer);
        error
    }

    /// Fenced (another producer took the id) or another failure.
    fn classify(&self, producer: &FutureProducer, error: String) -> TransactionError {
        match producer.client().fatal_error() {
            Some((
                RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch,
                _,
            )) => TransactionError::Fenced(self.id.clone()),
            _ => TransactionError::Kafka(error),
        }
    }
}

/// Three times the produce timeout, at most 15 minutes.
fn transaction_timeout_ms(timeout: Duration) -> u128 {
    (timeout.as_millis() * 3).min(900_000)
}

/// Drops a producer off the async workers: the last handle's drop purges, flushes and joins
/// librdkafka's threads.
fn retire(producer: FutureProducer) {
    tokio::task::spawn_blocking(move || drop(producer));
}

/// Runs one of librdkafka's blocking transaction calls off the async workers.
async fn blocking(
    call: impl FnOnce() -> Result<(), KafkaError> + Send + 'static,
) -> Result<(), KafkaError> {
    tokio::task::spawn_blocking(call)
        .await
        .expect("a librdkafka transaction call panicked")
}
