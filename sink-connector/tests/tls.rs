//! TLS to PostgreSQL against the stack's server, which serves a certificate for localhost and
//! 127.0.0.1 signed by the stack's own CA (`.stack/tls/ca.crt`, made by `scripts/stack.sh`).
//! What a user checks: rows written, the connection encrypted (`pg_stat_ssl`) or not, and a sink
//! that stops at start with the setting to change when the certificate does not fit.

use std::str::FromStr;
use std::time::Duration;

use plumbing::testing::{unique, Stack, TestDatabase};
use sink_connector::testing::{
    at, chart, connect, encode, produce_raw, stored_snapshots, wait_committed, Sink,
};

/// The test database's URL to `host` with `query` (libpq's parameters).
fn url(db: &TestDatabase, host: &str, query: &str) -> String {
    let c = tokio_postgres::Config::from_str(&db.url).unwrap();
    let password = String::from_utf8(c.get_password().unwrap().to_vec()).unwrap();
    format!(
        "postgres://{}:{password}@{host}:{}/{}?{query}",
        c.get_user().unwrap(),
        c.get_ports()[0],
        db.name
    )
}

/// Runs a sink with `database_url` over a chart of 20 and returns, once every offset is
/// committed, whether its connections to PostgreSQL are encrypted.
async fn drain_with(stack: &Stack, database_url: &str) -> bool {
    let topic = stack.create_topic(1).await.unwrap();
    let group = unique("tls-");
    let db = stack.create_database().await.unwrap();
    let database_url = database_url.replace("{db}", &db.name);
    let ends = produce_raw(
        &stack.producer(&[]),
        &topic,
        encode(stack, &topic, &chart("FR", 20, at(1_000), 1)).await,
    )
    .await;
    let sink = Sink::spawn(
        stack,
        &db,
        &topic,
        &group,
        &[("DATABASE_URL", &database_url)],
    );
    wait_committed(stack, &topic, &group, 1, &ends, &sink).await;
    assert_eq!(stored_snapshots(&db).await.len(), 20);
    let row = connect(&db)
        .await
        .query_one(
            "SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_ssl s
             JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = current_database() AND a.application_name = 'youtube-trending-sink'",
            &[],
        )
        .await
        .unwrap();
    let (connections, encrypted): (i64, bool) = (row.get(0), row.get(1));
    assert!(connections > 0, "the sink keeps a connection open");
    sink.stop().await;
    encrypted
}

/// A URL template: `{db}` stands for the database `drain_with` makes.
fn template(stack: &Stack, host: &str, query: &str) -> String {
    let any = TestDatabase {
        name: "{db}".into(),
        url: stack.database_url.clone(),
    };
    url(&any, host, query)
}

#[tokio::test]
async fn verify_full_connects_encrypted_by_name_and_by_address() {
    let stack = Stack::from_env().unwrap();
    let query = format!("sslmode=verify-full&sslrootcert={}", stack.database_ca);
    for host in ["localhost", "127.0.0.1"] {
        assert!(
            drain_with(&stack, &template(&stack, host, &query)).await,
            "verify-full to {host}: the connection is encrypted"
        );
    }
}

#[tokio::test]
async fn disable_stays_plain_and_prefer_encrypts_when_the_server_offers_it() {
    let stack = Stack::from_env().unwrap();
    let plain = template(&stack, "127.0.0.1", "sslmode=disable");
    assert!(!drain_with(&stack, &plain).await, "sslmode=disable");
    // No sslmode at all is libpq's default, prefer; the stack's server offers TLS.
    let default = template(
        &stack,
        "127.0.0.1",
        "application_name=youtube-trending-sink",
    );
    assert!(drain_with(&stack, &default).await, "no sslmode (prefer)");
    // verify-ca checks the CA, not the name: a name the certificate lacks is accepted.
    let other_name = template(
        &stack,
        "pg.example.invalid",
        &format!(
            "hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={}",
            stack.database_ca
        ),
    );
    assert!(drain_with(&stack, &other_name).await, "verify-ca");
    // require encrypts without checking: a CA the system does not trust is accepted.
    let require = template(&stack, "localhost", "sslmode=require");
    assert!(drain_with(&stack, &require).await, "require");
}

#[tokio::test]
async fn the_key_value_form_carries_the_same_settings() {
    let stack = Stack::from_env().unwrap();
    let c = tokio_postgres::Config::from_str(&stack.database_url).unwrap();
    let password = String::from_utf8(c.get_password().unwrap().to_vec()).unwrap();
    let url = format!(
        "host=localhost port={} user={} password={password} dbname={{db}} sslmode=verify-full sslrootcert={}",
        c.get_ports()[0],
        c.get_user().unwrap(),
        stack.database_ca
    );
    assert!(drain_with(&stack, &url).await);
}

/// Starts a sink with `database_url` and requires it to stop at start, exit code 1, saying
/// what to change; the password in no log line.
async fn refused(stack: &Stack, database_url: &str, needles: &[&str]) {
    let topic = stack.create_topic(1).await.unwrap();
    let db = stack.create_database().await.unwrap();
    let database_url = database_url.replace("{db}", &db.name);
    let mut sink = Sink::spawn(
        stack,
        &db,
        &topic,
        &unique("tls-"),
        &[("DATABASE_URL", &database_url)],
    );
    let status = sink.wait(Duration::from_secs(60)).await;
    let logs = sink.logs();
    assert_eq!(status.code(), Some(1), "{logs}");
    for needle in needles {
        assert!(logs.contains(needle), "`{needle}` not in:\n{logs}");
    }
    sink.assert_secret_not_logged();
}

#[tokio::test]
async fn a_wrong_ca_or_host_name_stops_the_sink_naming_the_setting_to_change() {
    let stack = Stack::from_env().unwrap();
    // A CA that signed nothing the server holds.
    let dir = std::env::temp_dir().join(unique("other-ca-"));
    std::fs::create_dir_all(&dir).unwrap();
    let other_ca = dir.join("ca.crt");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=another CA", "-keyout"])
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let wrong_ca = template(
        &stack,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
    );
    refused(
        &stack,
        &wrong_ca,
        &["TLS to PostgreSQL failed", "sslrootcert"],
    )
    .await;
    // require with a CA file checks against it, as libpq does.
    let require_wrong_ca = template(
        &stack,
        "localhost",
        &format!("sslmode=require&sslrootcert={}", other_ca.display()),
    );
    refused(&stack, &require_wrong_ca, &["TLS to PostgreSQL failed"]).await;

    // The right CA, a name the certificate does not hold.
    let wrong_name = template(
        &stack,
        "pg.example.invalid",
        &format!(
            "hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
            stack.database_ca
        ),
    );
    refused(
        &stack,
        &wrong_name,
        &["TLS to PostgreSQL failed", "verify-full"],
    )
    .await;

    // A file that is not there: named, before any connection.
    let missing = template(
        &stack,
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
    );
    refused(&stack, &missing, &["sslrootcert=/nonexistent/ca.crt"]).await;
}
