//! Smoke tests of the local stack's schema registry (Apicurio, Confluent API) through
//! schema_registry_converter: register, encode in the Confluent wire format, decode by id, and
//! refuse an incompatible schema.

use apache_avro::Schema;
use chrono::{TimeZone, Utc};
use plumbing::testing::{unique, Stack};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::avro_common::get_supplied_schema;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use schemas::TrendingVideo;

fn settings(stack: &Stack) -> SrSettings {
    SrSettings::new(stack.registry_url.clone())
}

#[tokio::test]
async fn a_record_round_trips_in_the_confluent_wire_format() {
    let stack = Stack::from_env().unwrap();
    let topic = unique("test-");
    let video = schemas::sample(
        "dQw4w9WgXcQ",
        "FR",
        1,
        Utc.timestamp_millis_opt(1_764_000_000_000).unwrap(),
    );

    let encoder = AvroEncoder::new(settings(&stack));
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic.clone(),
        false,
        get_supplied_schema(schemas::schema()),
    );
    let bytes = encoder
        .encode_value(video.to_avro(), &strategy)
        .await
        .unwrap();
    assert_eq!(bytes[0], 0, "magic byte");
    let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());

    // Registering the same schema again under the subject gives the same id.
    let again = post_schema(
        &settings(&stack),
        format!("{topic}-value"),
        get_supplied_schema(schemas::schema()),
    )
    .await
    .unwrap();
    assert_eq!(again.id, id);

    // A decoder that knows only the registry URL gets the record back.
    let decoder = AvroDecoder::new(settings(&stack));
    let decoded = decoder.decode(Some(&bytes)).await.unwrap();
    assert_eq!(TrendingVideo::from_avro(decoded.value).unwrap(), video);

    // The body after the 5-byte header is plain Avro binary of our schema.
    let body = apache_avro::from_avro_datum(schemas::schema(), &mut &bytes[5..], None).unwrap();
    assert_eq!(TrendingVideo::from_avro(body).unwrap(), video);
}

#[tokio::test]
async fn an_incompatible_schema_is_refused() {
    let stack = Stack::from_env().unwrap();
    let subject = format!("{}-value", unique("test-"));
    post_schema(
        &settings(&stack),
        subject.clone(),
        get_supplied_schema(schemas::schema()),
    )
    .await
    .unwrap();

    // A new required field without a default breaks BACKWARD compatibility.
    let mut json: serde_json::Value = serde_json::from_str(schemas::SCHEMA_JSON).unwrap();
    json["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "mandatory", "type": "string"}));
    let incompatible = Schema::parse(&json).unwrap();
    let refused = post_schema(
        &settings(&stack),
        subject.clone(),
        get_supplied_schema(&incompatible),
    )
    .await;
    let err = refused.expect_err("the registry must refuse an incompatible schema");
    assert!(
        !err.retriable,
        "a refused schema is not worth retrying: {err:?}"
    );
}

fn with_optional_field(schema_json: &str) -> Schema {
    let mut json: serde_json::Value = serde_json::from_str(schema_json).unwrap();
    json["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "optional", "type": ["null", "string"], "default": null}));
    Schema::parse(&json).unwrap()
}

/// A BACKWARD-compatible change (a new nullable field with a default) gets a new id.
#[tokio::test]
async fn a_compatible_schema_change_is_accepted() {
    let stack = Stack::from_env().unwrap();
    let subject = format!("{}-value", unique("test-"));
    let v1 = r#"{"type":"record","name":"R","fields":[{"name":"id","type":"string"},
                {"name":"views","type":["null","long"],"default":null}]}"#;
    let first = post_schema(
        &settings(&stack),
        subject.clone(),
        get_supplied_schema(&Schema::parse_str(v1).unwrap()),
    )
    .await
    .unwrap();
    let second = post_schema(
        &settings(&stack),
        subject,
        get_supplied_schema(&with_optional_field(v1)),
    )
    .await
    .unwrap();
    assert_ne!(first.id, second.id);
}

/// The same for the TrendingVideo schema itself, whose `timestamp-millis` fields must not make
/// a compatible change look incompatible.
#[tokio::test]
async fn a_compatible_change_of_the_trending_schema_is_accepted() {
    let stack = Stack::from_env().unwrap();
    let subject = format!("{}-value", unique("test-"));
    post_schema(
        &settings(&stack),
        subject.clone(),
        get_supplied_schema(schemas::schema()),
    )
    .await
    .unwrap();
    post_schema(
        &settings(&stack),
        subject,
        get_supplied_schema(&with_optional_field(schemas::SCHEMA_JSON)),
    )
    .await
    .unwrap();
}
