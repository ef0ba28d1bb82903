//! The bad-input corpus: records a topic may hold that are not valid TrendingVideo records, and
//! a few awkward valid ones, each with what the sink must do with it. Bodies are built byte by
//! byte where the point is a malformed encoding, so each case says exactly what is wrong.

use chrono::{TimeZone, Utc};
use schemas::TrendingVideo;

use sink_connector::testing::wire;

/// What the sink must do with a case.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Dead-lettered with this reason (the end of `__connect.errors.exception.class.name`).
    Dlq(&'static str),
    /// Dead-lettered with this reason, without its value (too large for the dead-letter topic).
    DlqWithoutValue(&'static str),
    /// Dead-lettered with this reason, without its key or value (the key alone is too large).
    DlqWithoutKeyOrValue(&'static str),
    /// Written: the video is in `videos` and `snapshots` more rows are in `video_snapshots`.
    Written { video_id: String, snapshots: usize },
}

/// Key and value bytes, each possibly absent.
pub type Record = (Option<Vec<u8>>, Option<Vec<u8>>);

pub struct Case {
    pub name: &'static str,
    /// Key and value, each possibly absent; several records for one case are produced in a row.
    pub records: Vec<Record>,
    pub expect: Expect,
}

/// Zigzag varint, Avro's `int` and `long`.
fn long(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return out;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = long(s.len() as i64);
    out.extend_from_slice(s);
    out
}

/// The four required fields, then `nulls` null unions (22 make the rest of a record).
fn body(video_id: &[u8], region: &[u8], fetched_at_ms: i64, rank: i64, nulls: usize) -> Vec<u8> {
    let mut b = string(video_id);
    b.extend(string(region));
    b.extend(long(fetched_at_ms));
    b.extend(long(rank));
    b.extend(std::iter::repeat_n(0u8, nulls));
    b
}

const OPTIONAL_FIELDS: usize = 22;

/// A change made to a valid record.
type Change = fn(&mut TrendingVideo);

/// The rank of the corpus's record that the test's CHECK constraint (`rank < 1000` on
/// `video_snapshots`) refuses.
pub const CHECKED_RANK: i32 = 4242;

/// The constraint the test adds to `video_snapshots` once the tables exist.
pub const CHECK_CONSTRAINT: &str =
    "ALTER TABLE video_snapshots ADD CONSTRAINT corpus_rank_below_1000 CHECK (rank < 1000)";

fn avro(v: &TrendingVideo) -> Vec<u8> {
    apache_avro::to_avro_datum(schemas::schema(), v.to_avro()).unwrap()
}

fn k(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

/// Every case. `id` is the registered id of the TrendingVideo schema, `other_id` that of an
/// unrelated record schema `{"x": long}`; `fetched_ms` a plausible `fetched_at`.
/// `recursive_id` that of a record schema containing itself (`Node { next: null | Node }`).
pub fn cases(id: u32, other_id: u32, recursive_id: u32, fetched_ms: i64) -> Vec<Case> {
    use Expect::{Dlq, DlqWithoutKeyOrValue, DlqWithoutValue, Written};
    let at = Utc.timestamp_millis_opt(fetched_ms).unwrap();
    let video = |vid: &str| schemas::sample(vid, "FR", 1, at);
    let valid = wire(id, &avro(&video("BADVALID001")));
    let dlq = |name, key: Option<Vec<u8>>, value: Option<Vec<u8>>, reason| Case {
        name,
        records: vec![(key, value)],
        expect: Dlq(reason),
    };
    let changed = |vid: &str, f: &dyn Fn(&mut TrendingVideo)| {
        let mut v = video(vid);
        f(&mut v);
        (k(vid), Some(wire(id, &avro(&v))))
    };
    let mut cases = vec![
        dlq("empty value", k("E1"), Some(vec![]), "not_wire_format"),
        dlq(
            "garbage bytes",
            k("E2"),
            Some(b"\xff\x00garbage \x01\x02".to_vec()),
            "not_wire_format",
        ),
        dlq(
            "wrong magic byte",
            k("BADVALID001"),
            Some({
                let mut v = valid.clone();
                v[0] = 1;
                v
            }),
            "not_wire_format",
        ),
        dlq(
            "header shorter than 5 bytes",
            k("E4"),
            Some(vec![0, 0, 0]),
            "not_wire_format",
        ),
        dlq(
            "header without a body",
            k("E5"),
            Some(wire(id, &[])),
            "avro",
        ),
        dlq(
            "unknown schema id",
            k("BADVALID001"),
            Some({
                let mut v = valid.clone();
                v[1..5].copy_from_slice(&987_654u32.to_be_bytes());
                v
            }),
            "unknown_schema",
        ),
        dlq(
            "truncated Avro body",
            k("BADVALID001"),
            Some(valid[..valid.len() / 2].to_vec()),
            "avro",
        ),
        dlq(
            "body followed by garbage",
            k("BADVALID001"),
            Some([valid.as_slice(), b"\x00\x01tail"].concat()),
            "avro",
        ),
        // Ids registered under another subject are never decoded.
        dlq(
            "Avro of another schema",
            k("E9"),
            Some(wire(other_id, &long(42))),
            "unknown_schema",
        ),
        // 200,000 nested records in 200 KB: decoded, it would overflow the sink's stack.
        dlq(
            "a recursive schema of another subject, nested 200,000 deep",
            k("E9R"),
            Some(wire(
                recursive_id,
                &[vec![2u8; 200_000], vec![0u8]].concat(),
            )),
            "unknown_schema",
        ),
        dlq("tombstone (null value)", k("E10"), None, "tombstone"),
        dlq(
            "key not UTF-8",
            Some(b"\xff\xfe\xfd".to_vec()),
            Some(valid.clone()),
            "key_not_utf8",
        ),
        dlq("missing key", None, Some(valid.clone()), "missing_key"),
        dlq(
            "key is not the video id",
            k("SOMEOTHERID"),
            Some(valid.clone()),
            "key_mismatch",
        ),
        {
            let (key, value) = changed("E14", &|v| v.view_count = Some(-5));
            dlq("negative view count", key, value, "invalid")
        },
        {
            let (key, value) = changed("E15", &|v| v.rank = 0);
            dlq("rank 0", key, value, "invalid")
        },
        {
            let (key, value) = changed("E16", &|v| {
                v.fetched_at = Utc::now() + chrono::TimeDelta::days(2)
            });
            dlq("fetched_at two days in the future", key, value, "invalid")
        },
        {
            let (key, value) = changed("E16B", &|v| {
                v.fetched_at = Utc.with_ymd_and_hms(1969, 12, 31, 23, 0, 0).unwrap()
            });
            dlq("fetched_at before 1970", key, value, "invalid")
        },
        {
            let (key, value) = changed("E17", &|v| v.region_code = "fr".into());
            dlq("lower-case region code", key, value, "invalid")
        },
        {
            let (key, value) = changed("", &|_| {});
            dlq("empty video id", key, value, "invalid")
        },
        {
            let (key, value) = changed("E19", &|v| v.duration_seconds = Some(-1));
            dlq("negative duration", key, value, "invalid")
        },
        dlq(
            "fetched_at beyond any calendar",
            k("E20"),
            Some(wire(id, &body(b"E20", b"FR", i64::MAX, 1, OPTIONAL_FIELDS))),
            "invalid",
        ),
        dlq(
            "union branch that does not exist",
            k("E21"),
            Some(wire(id, &{
                let mut b = body(b"E21", b"FR", fetched_ms, 1, 0);
                b.extend(long(4)); // title: branch 4 of a 2-branch union
                b.extend(std::iter::repeat_n(0u8, OPTIONAL_FIELDS - 1));
                b
            })),
            "avro",
        ),
        dlq(
            "string that is not UTF-8",
            k("E22"),
            Some(wire(
                id,
                &body(b"E2\xff\xfe", b"FR", fetched_ms, 1, OPTIONAL_FIELDS),
            )),
            "avro",
        ),
        dlq(
            "negative string length",
            k("E23"),
            Some(wire(id, &[long(-7), b"E23".to_vec()].concat())),
            "avro",
        ),
        dlq(
            "string length of 2 GB announced, 3 bytes present",
            k("E24"),
            Some(wire(id, &[long(2_000_000_000), b"E24".to_vec()].concat())),
            "avro",
        ),
        dlq(
            "array of 500 million tags announced, none present",
            k("E25"),
            Some(wire(id, &{
                let mut b = body(b"E25", b"FR", fetched_ms, 1, 6);
                b.extend(long(1)); // tags: the array branch
                b.extend(long(500_000_000));
                b
            })),
            "avro",
        ),
        dlq(
            "boolean byte other than 0 or 1",
            k("E26"),
            Some(wire(id, &{
                let mut b = body(b"E26", b"FR", fetched_ms, 1, 15);
                b.extend(long(1)); // caption: the boolean branch
                b.push(7);
                b.extend(std::iter::repeat_n(0u8, OPTIONAL_FIELDS - 16));
                b
            })),
            "avro",
        ),
        Case {
            name: "poison record of 1.5 MB",
            records: vec![(k("E27"), Some(vec![0xee; 1_500_000]))],
            expect: DlqWithoutValue("not_wire_format"),
        },
        // The error quotes the key: its text must be cut, or the dead letter (key + value +
        // headers) would be twice the key and refused, and the sink would retry for ever.
        dlq(
            "valid value under a 900 KB key",
            Some(vec![b'k'; 900_000]),
            Some(valid.clone()),
            "key_mismatch",
        ),
        Case {
            name: "valid value under a 1.2 MB key",
            records: vec![(Some(vec![b'K'; 1_200_000]), Some(valid.clone()))],
            expect: DlqWithoutKeyOrValue("key_mismatch"),
        },
    ];

    // Text and times PostgreSQL cannot store: refused by validation, with the field named.
    let nul: [(&str, &str, Change); 4] = [
        ("NUL in the title", "N1", |v| {
            v.title = Some("Clip\0officiel".into())
        }),
        ("NUL in a tag", "N2", |v| {
            v.tags = Some(vec!["ok".into(), "t\0ag".into()])
        }),
        ("NUL in the description", "N3", |v| {
            v.description = Some("\0".into())
        }),
        ("NUL in the channel title", "N4", |v| {
            v.channel_title = Some("Cha\0ne".into())
        }),
    ];
    for (name, vid, change) in nul {
        let (key, value) = changed(vid, &change);
        cases.push(dlq(name, key, value, "invalid"));
    }
    let (key, value) = changed("N5", &|v| {
        v.published_at = Some(Utc.with_ymd_and_hms(-4713, 11, 23, 23, 59, 59).unwrap())
    });
    cases.push(dlq(
        "published_at before PostgreSQL's first day (4714-11-24 BC)",
        key,
        value,
        "invalid",
    ));
    cases.push(dlq(
        "published_at after PostgreSQL's last day (294276 AD)",
        k("N6"),
        Some(wire(id, &{
            let mut b = body(b"N6", b"FR", fetched_ms, 1, 7);
            b.extend(long(1)); // published_at: the timestamp branch
            b.extend(long(9_404_000_000_000_000)); // year 300,000
            b.extend(std::iter::repeat_n(0u8, OPTIONAL_FIELDS - 8));
            b
        })),
        "invalid",
    ));
    // Valid, but refused by the CHECK the test adds to video_snapshots (rank below 1000):
    // PostgreSQL's refusal is found by bisecting the batch and dead-lettered alone.
    let (key, value) = changed("C1", &|v| v.rank = CHECKED_RANK);
    cases.push(dlq(
        "a record a CHECK constraint of the operator refuses",
        key,
        value,
        "rejected",
    ));

    // Awkward but valid.
    let mut big = video("W1");
    big.description = Some("é".repeat(200_000)); // 400 KB
    big.tags = Some((0..2000).map(|i| format!("tag{i}")).collect());
    cases.push(Case {
        name: "valid record of 400 KB",
        records: vec![(k("W1"), Some(wire(id, &avro(&big))))],
        expect: Written {
            video_id: "W1".into(),
            snapshots: 1,
        },
    });
    let twice = (k("W2"), Some(wire(id, &avro(&video("W2")))));
    cases.push(Case {
        name: "the same record twice in a row",
        records: vec![twice.clone(), twice],
        expect: Written {
            video_id: "W2".into(),
            snapshots: 1,
        },
    });
    cases.push(Case {
        name: "every optional field null",
        records: vec![(
            k("W3"),
            Some(wire(
                id,
                &body(b"W3", b"FR", fetched_ms, 7, OPTIONAL_FIELDS),
            )),
        )],
        expect: Written {
            video_id: "W3".into(),
            snapshots: 1,
        },
    });
    // The future bound (10 minutes of clock skew between hosts) from both sides.
    let (key, value) = changed("W4", &|v| {
        v.fetched_at = Utc::now() + chrono::TimeDelta::minutes(5)
    });
    cases.push(Case {
        name: "fetched_at 5 minutes in the future (within the clock skew allowed)",
        records: vec![(key, value)],
        expect: Written {
            video_id: "W4".into(),
            snapshots: 1,
        },
    });
    let (key, value) = changed("E27", &|v| {
        v.fetched_at = Utc::now() + chrono::TimeDelta::minutes(11)
    });
    cases.push(dlq(
        "fetched_at 11 minutes in the future (past the clock skew allowed)",
        key,
        value,
        "invalid",
    ));
    cases
}
