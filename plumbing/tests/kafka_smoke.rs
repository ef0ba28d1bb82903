//! Smoke tests of the local stack's Apache Kafka broker through rdkafka: the
//! behaviours both connectors and the replay tool rely on. Each test uses its own topic and group.

use std::collections::HashSet;
use std::time::Duration;

use plumbing::testing::{unique, Stack};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(20);

fn producer(stack: &Stack) -> FutureProducer {
    stack
        .kafka_config(&[("enable.idempotence", "true"), ("acks", "all")])
        .create()
        .expect("producer")
}

fn consumer(stack: &Stack, group: &str) -> StreamConsumer {
    stack
        .kafka_config(&[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
        ])
        .create()
        .expect("consumer")
}

/// Produces `n` records to `partition` with keys `k0..`, timestamps `ts0 + i` ms.
async fn produce(p: &FutureProducer, topic: &str, partition: i32, n: usize, ts0: i64) {
    for i in 0..n {
        let key = format!("k{i}");
        let payload = format!("v{i}");
        p.send(
            FutureRecord::to(topic)
                .partition(partition)
                .key(&key)
                .payload(&payload)
                .timestamp(ts0 + i as i64),
            TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .expect("acknowledged");
    }
}

async fn recv(c: &StreamConsumer) -> (i32, i64) {
    let m = tokio::time::timeout(TIMEOUT, c.recv())
        .await
        .expect("a record within the timeout")
        .expect("no consumer error");
    (m.partition(), m.offset())
}

#[tokio::test]
async fn committed_offset_is_where_the_next_member_resumes() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("group-");
    produce(&producer(&stack), &topic, 0, 10, 1_000).await;

    let first = consumer(&stack, &group);
    first.subscribe(&[&topic]).unwrap();
    for expected in 0..5 {
        assert_eq!(recv(&first).await, (0, expected));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(5))
        .unwrap();
    first.commit(&tpl, CommitMode::Sync).unwrap();
    assert_eq!(committed_offset(&first, &topic, 0), Offset::Offset(5));
    leave(first).await;

    let second = consumer(&stack, &group);
    second.subscribe(&[&topic]).unwrap();
    assert_eq!(
        recv(&second).await,
        (0, 5),
        "resumes at the committed offset"
    );
}

/// The group's committed offset of one partition.
///
/// The list `committed()` returns holds references into the consumer (librdkafka's toppar
/// handles): a consumer dropped while such a list is alive never finishes closing. So the list
/// never outlives this function.
fn committed_offset(c: &StreamConsumer, topic: &str, partition: i32) -> Offset {
    let list = c.committed(TIMEOUT).unwrap();
    let offset = list.find_partition(topic, partition).unwrap().offset();
    offset
}

/// Leaves the group before the consumer is dropped, so the partitions move at once.
async fn leave(c: StreamConsumer) {
    c.unsubscribe();
    let _ = tokio::time::timeout(Duration::from_secs(1), c.recv()).await;
    drop(c);
}

fn assigned(c: &StreamConsumer, topic: &str) -> HashSet<i32> {
    c.assignment()
        .unwrap()
        .elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// Polls both consumers (which drives the rebalance protocol) until `done` holds.
async fn poll_until(consumers: &[&StreamConsumer], what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        for c in consumers {
            let _ = tokio::time::timeout(Duration::from_millis(200), c.recv()).await;
        }
    }
}

#[tokio::test]
async fn two_members_split_the_partitions_and_one_takes_all_when_the_other_leaves() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(4).await.unwrap();
    let group = unique("group-");

    let a = consumer(&stack, &group);
    let b = consumer(&stack, &group);
    a.subscribe(&[&topic]).unwrap();
    b.subscribe(&[&topic]).unwrap();
    poll_until(&[&a, &b], "both members have partitions", || {
        let (pa, pb) = (assigned(&a, &topic), assigned(&b, &topic));
        !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 4 && pa.is_disjoint(&pb)
    })
    .await;

    leave(b).await;
    poll_until(
        &[&a],
        "the remaining member has all four partitions",
        || assigned(&a, &topic).len() == 4,
    )
    .await;

    // And it really consumes from every partition.
    let p = producer(&stack);
    for partition in 0..4 {
        produce(&p, &topic, partition, 1, 5_000).await;
    }
    let mut seen = HashSet::new();
    while seen.len() < 4 {
        seen.insert(recv(&a).await.0);
    }
}

/// `offsets_for_times` as Apache Kafka answers it: the earliest offset whose timestamp is at or
/// after the one asked (what `reset-offsets --to-datetime` relies on).
#[tokio::test]
async fn offsets_for_times_finds_the_first_record_at_or_after_a_time() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(2).await.unwrap();
    let p = producer(&stack);
    produce(&p, &topic, 0, 10, 10_000).await;
    produce(&p, &topic, 1, 10, 20_000).await;

    let tool = consumer(&stack, &unique("group-"));
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset(&topic, 0, Offset::Offset(10_004))
        .unwrap();
    query
        .add_partition_offset(&topic, 1, Offset::Offset(20_007))
        .unwrap();
    let found = tool.offsets_for_times(query, TIMEOUT).unwrap();
    assert_eq!(
        found.find_partition(&topic, 0).unwrap().offset(),
        Offset::Offset(4)
    );
    assert_eq!(
        found.find_partition(&topic, 1).unwrap().offset(),
        Offset::Offset(7)
    );
}

/// What the replay tool does: commit chosen offsets for a group that has no live member, read
/// them back, and read the partitions' watermarks.
#[tokio::test]
async fn offsets_can_be_committed_for_a_group_without_members() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(2).await.unwrap();
    let p = producer(&stack);
    produce(&p, &topic, 0, 10, 10_000).await;
    produce(&p, &topic, 1, 10, 20_000).await;

    let group = unique("group-");
    let tool = consumer(&stack, &group); // never subscribes: the group has no members
    let mut reset = TopicPartitionList::new();
    reset
        .add_partition_offset(&topic, 0, Offset::Offset(4))
        .unwrap();
    reset
        .add_partition_offset(&topic, 1, Offset::Offset(7))
        .unwrap();
    tool.commit(&reset, CommitMode::Sync).unwrap();
    drop(reset);

    let mut ask = TopicPartitionList::new();
    ask.add_partition(&topic, 0);
    ask.add_partition(&topic, 1);
    let committed = tool.committed_offsets(ask, TIMEOUT).unwrap();
    assert_eq!(
        committed.find_partition(&topic, 0).unwrap().offset(),
        Offset::Offset(4)
    );
    assert_eq!(
        committed.find_partition(&topic, 1).unwrap().offset(),
        Offset::Offset(7)
    );
    drop(committed);

    assert_eq!(tool.fetch_watermarks(&topic, 1, TIMEOUT).unwrap(), (0, 10));

    // A member joining the group starts from the committed offsets.
    let member = consumer(&stack, &group);
    member.subscribe(&[&topic]).unwrap();
    let mut firsts = std::collections::HashMap::new();
    while firsts.len() < 2 {
        let (partition, offset) = recv(&member).await;
        firsts.entry(partition).or_insert(offset);
    }
    assert_eq!(firsts[&0], 4);
    assert_eq!(firsts[&1], 7);
}

/// A consumer that starts (or resumes after a restart, a rebalance or a pause) in the middle of
/// a record batch must get the rest of that batch: this is how a sink that committed after
/// record 20 of a 50-record producer batch goes on.
#[tokio::test]
async fn fetching_from_the_middle_of_a_record_batch_returns_the_rest_of_it() {
    let stack = Stack::from_env().unwrap();
    let topic = stack.create_topic(1).await.unwrap();
    let p: FutureProducer = stack
        .kafka_config(&[("linger.ms", "100"), ("acks", "all")])
        .create()
        .unwrap();
    // Sent together, so librdkafka puts them in one batch.
    let sends: Vec<_> = (0..50)
        .map(|i| {
            p.send_result(FutureRecord::<str, str>::to(&topic).payload(&format!("r{i}")))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    for s in sends {
        s.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    let c = consumer(&stack, &unique("mid-"));
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(20))
        .unwrap();
    c.assign(&tpl).unwrap();
    drop(tpl);
    // A record in a batch of its own after them, so a broker that skips the batch's tail
    // returns this one instead of nothing.
    p.send(
        FutureRecord::<str, str>::to(&topic).payload("after"),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
    let first = tokio::time::timeout(TIMEOUT, c.recv())
        .await
        .expect("a record within the timeout")
        .unwrap()
        .offset();
    assert_eq!(first, 20, "the first record after assigning offset 20");
}
