//! The bad-input corpus (`tests/corpus`) through the real sink: every poison record lands in the
//! dead-letter topic with Kafka Connect's headers and its original bytes, the awkward valid
//! records are written, and so is every valid record around them.

mod corpus;

use std::collections::HashMap;
use std::time::Duration;

use corpus::{cases, Expect};
use plumbing::testing::{unique, Stack};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use sink_connector::testing::{
    at, connect, encode_by_hand, header, produce_raw, read_all, register, wait_committed, Sink,
};

#[tokio::test]
async fn every_kind_of_bad_input_is_dead_lettered_and_the_records_around_it_are_written() {
    let stack = Stack::from_env().unwrap();
    // Room for the 1.5 MB case: Kafka refuses records over 1 MB by default (the sink's
    // dead-letter topic keeps that default, so the case is dead-lettered without its value).
    let topic = unique("test-");
    stack
        .create_named_topic(&topic, 1, HashMap::from([("max.message.bytes", "4000000")]))
        .await
        .unwrap();
    let group = unique("sink-");
    let db = stack.create_database().await.unwrap();
    // The tables first (the sink's own migrations then find nothing to do), and an operator's
    // CHECK on them, which one valid record of the corpus breaks.
    let mut c = connect(&db).await;
    sink_connector::migrate::run(&mut c).await.unwrap();
    c.batch_execute(corpus::CHECK_CONSTRAINT).await.unwrap();
    let id = register(&stack, &format!("{topic}-value"), schemas::schema()).await;
    let other = apache_avro::Schema::parse_str(
        r#"{"type":"record","name":"Other","namespace":"corpus","fields":[{"name":"x","type":"long"}]}"#,
    )
    .unwrap();
    let other_id = register(&stack, &format!("{topic}-other"), &other).await;
    let recursive = apache_avro::Schema::parse_str(
        r#"{"type":"record","name":"Node","namespace":"corpus","fields":[{"name":"next","type":["null","Node"]}]}"#,
    )
    .unwrap();
    let recursive_id = register(&stack, &format!("{topic}-recursive"), &recursive).await;
    let fetched = at(1_764_000_000);
    let cases = cases(id, other_id, recursive_id, fetched.timestamp_millis());
    assert!(cases.len() >= 20, "the corpus has {} cases", cases.len());

    // A valid record before every case and one after the last, all on one partition.
    let valid = |i: usize| schemas::sample(&format!("V{i:03}"), "FR", i as i32 + 1, fetched);
    let producer = stack.producer(&[("message.max.bytes", "4000000")]);
    let mut offsets_of_case: HashMap<i64, usize> = HashMap::new();
    let mut end = 0;
    for (i, case) in cases.iter().enumerate() {
        let v = encode_by_hand(&stack, &topic, &[valid(i)]).await;
        let records = v.into_iter().chain(case.records.iter().cloned());
        for (n, (key, value)) in records.enumerate() {
            let mut r = FutureRecord::<[u8], [u8]>::to(&topic);
            if let Some(k) = &key {
                r = r.key(k);
            }
            if let Some(v) = &value {
                r = r.payload(v);
            }
            let d = producer
                .send(r, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap_or_else(|e| panic!("producing case `{}`: {e}", case.name));
            if n > 0 {
                offsets_of_case.insert(d.offset, i);
            }
            end = d.offset + 1;
        }
    }
    let last = encode_by_hand(&stack, &topic, &[valid(cases.len())]).await;
    let ends = produce_raw(&producer, &topic, last).await;
    assert_eq!(ends[&0], end + 1);

    let mut sink = Sink::spawn(&stack, &db, &topic, &group, &[]);
    wait_committed(&stack, &topic, &group, 1, &ends, &sink).await;
    assert!(
        sink.child.try_wait().unwrap().is_none(),
        "the sink died on bad input:\n{}",
        sink.logs()
    );

    // Dead letters: one per poison case, at its offset, with its reason and original bytes.
    let dlq = read_all(&stack, &format!("{topic}.dlq"));
    let mut seen = vec![0; cases.len()];
    for m in &dlq {
        let offset: i64 = header(m, "__connect.errors.offset").parse().unwrap();
        let i = *offsets_of_case
            .get(&offset)
            .unwrap_or_else(|| panic!("dead letter for offset {offset}, which is no bad case"));
        let case = &cases[i];
        seen[i] += 1;
        let reason = header(m, "__connect.errors.exception.class.name");
        let (expected, with_value, with_key) = match &case.expect {
            Expect::Dlq(r) => (*r, true, true),
            Expect::DlqWithoutValue(r) => (*r, false, true),
            Expect::DlqWithoutKeyOrValue(r) => (*r, false, false),
            Expect::Written { .. } => panic!("`{}` was dead-lettered ({reason})", case.name),
        };
        assert!(
            reason.ends_with(&format!("::{expected}")),
            "`{}`: reason {reason}, expected {expected}; message: {}",
            case.name,
            header(m, "__connect.errors.exception.message")
        );
        assert_eq!(header(m, "__connect.errors.topic"), topic);
        assert_eq!(header(m, "__connect.errors.partition"), "0");
        if expected == "rejected" {
            // Refused by PostgreSQL when written: Kafka Connect's stage of a sink's put.
            assert_eq!(header(m, "__connect.errors.stage"), "TASK_PUT");
            assert_eq!(header(m, sink_connector::dlq::SQLSTATE_HEADER), "23514");
            assert!(
                header(m, "__connect.errors.exception.message").contains("corpus_rank_below_1000"),
                "the constraint named"
            );
        } else {
            assert_eq!(header(m, "__connect.errors.stage"), "VALUE_CONVERTER");
        }
        let message = header(m, "__connect.errors.exception.message");
        assert!(
            message.len() <= sink_connector::decode::MAX_ERROR_TEXT + 64,
            "`{}`: an error text of {} bytes",
            case.name,
            message.len()
        );
        let (key, value) = &case.records[0];
        if with_key {
            assert_eq!(
                m.key(),
                key.as_deref(),
                "`{}`: original key kept",
                case.name
            );
        } else {
            assert_eq!(m.key(), None, "`{}`", case.name);
            assert!(header(m, sink_connector::dlq::KEY_DROPPED_HEADER).contains("too large"));
        }
        if with_value {
            assert_eq!(
                m.payload(),
                value.as_deref(),
                "`{}`: original value kept",
                case.name
            );
        } else {
            assert_eq!(m.payload(), None, "`{}`", case.name);
            assert!(header(m, sink_connector::dlq::VALUE_DROPPED_HEADER).contains("too large"));
        }
    }
    for (case, n) in cases.iter().zip(&seen) {
        let expected = usize::from(!matches!(case.expect, Expect::Written { .. }));
        assert_eq!(*n, expected, "`{}` dead-lettered {n} times", case.name);
    }

    assert_eq!(
        sink_connector::testing::reqwest_status(&sink.http_addr().await, "/readyz").await,
        200,
        "the sink stays ready"
    );
    let metrics = sink_connector::testing::scrape(&sink.http_addr().await).await;
    assert_eq!(
        plumbing::testing::metric_sample(
            &metrics,
            "sink_records_dead_lettered_total",
            &[("reason", "rejected")]
        ),
        Some(1.0),
        "one record refused by PostgreSQL"
    );
    assert!(
        plumbing::testing::metric_sample(&metrics, "sink_batches_bisected_total", &[])
            .is_some_and(|n| n >= 1.0),
        "the batch holding it was bisected"
    );

    // Tables: every valid record, and the awkward valid cases.
    for i in 0..=cases.len() {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM video_snapshots WHERE video_id = $1",
                &[&format!("V{i:03}")],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "valid record V{i:03} written once");
    }
    let mut written = 0;
    for case in &cases {
        if let Expect::Written {
            video_id,
            snapshots,
        } = &case.expect
        {
            written += 1;
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM video_snapshots WHERE video_id = $1",
                    &[video_id],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(n as usize, *snapshots, "`{}`", case.name);
        }
    }
    let videos: i64 = c
        .query_one("SELECT count(*) FROM videos", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        videos as usize,
        cases.len() + 1 + written,
        "nothing else was written"
    );
    let big: i64 = c
        .query_one(
            "SELECT length(description) FROM videos WHERE video_id = 'W1'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i32>(0)
        .into();
    assert_eq!(big, 200_000, "the 400 KB description is whole");
    sink.stop().await;
}
