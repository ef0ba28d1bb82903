//! The harness integration tests use to reach the local stack started by `scripts/stack.sh`.
//!
//! Every test gets its own topic, consumer group and database, so tests run in parallel and in
//! any order. Endpoints come from the environment, with the local stack's ports as defaults:
//!
//! | variable | default |
//! | --- | --- |
//! | `TEST_KAFKA_BOOTSTRAP` | `127.0.0.1:19092` |
//! | `TEST_SCHEMA_REGISTRY_URL` | `http://127.0.0.1:18081/apis/ccompat/v7` |
//! | `TEST_DATABASE_URL` | read from `.stack/test.env`, written by `scripts/stack.sh up` |
//! | `TEST_DATABASE_CA` | the same: the CA of the stack PostgreSQL's TLS certificate |

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::kafka::{ensure_topics, TopicSpec};

/// The local stack's endpoints.
#[derive(Debug, Clone)]
pub struct Stack {
    pub kafka_bootstrap: String,
    pub registry_url: String,
    /// A role that may create databases, connected to its own database.
    pub database_url: String,
    /// PEM file of the CA that signed the stack PostgreSQL's certificate (localhost, 127.0.0.1).
    pub database_ca: String,
}

/// A fresh, empty database for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

/// A name no other test uses: `prefix` plus 12 random hex digits.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &id[..12])
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("plumbing sits in the workspace")
        .to_path_buf()
}

fn from_stack_env_file(key: &str) -> Option<String> {
    let text = std::fs::read_to_string(workspace_root().join(".stack/test.env")).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
}

fn setting(key: &str, default: Option<&str>) -> anyhow::Result<String> {
    std::env::var(key)
        .ok()
        .or_else(|| from_stack_env_file(key))
        .or_else(|| default.map(str::to_string))
        .with_context(|| {
            format!("{key} is not set and .stack/test.env has none: run `make up` first")
        })
}

impl Stack {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Stack {
            kafka_bootstrap: setting("TEST_KAFKA_BOOTSTRAP", Some("127.0.0.1:19092"))?,
            registry_url: setting(
                "TEST_SCHEMA_REGISTRY_URL",
                Some("http://127.0.0.1:18081/apis/ccompat/v7"),
            )?,
            database_url: setting("TEST_DATABASE_URL", None)?,
            database_ca: setting("TEST_DATABASE_CA", None)?,
        })
    }

    /// Client config for this stack's broker with `extra` on top.
    pub fn kafka_config(&self, extra: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.kafka_bootstrap);
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c
    }

    /// A producer as the source's records are produced (idempotent, `acks=all`), `extra` on
    /// top.
    pub fn producer(&self, extra: &[(&str, &str)]) -> rdkafka::producer::FutureProducer {
        let mut config = self.kafka_config(&[("enable.idempotence", "true"), ("acks", "all")]);
        for (k, v) in extra {
            config.set(*k, *v);
        }
        config.create().expect("a producer for the stack's broker")
    }

    /// Creates a topic with a unique name and returns the name.
    pub async fn create_topic(&self, partitions: i32) -> anyhow::Result<String> {
        let name = unique("test-");
        self.create_named_topic(&name, partitions, HashMap::new())
            .await?;
        Ok(name)
    }

    pub async fn create_named_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: HashMap<&str, &str>,
    ) -> anyhow::Result<()> {
        let spec = TopicSpec {
            name,
            partitions,
            replication: 1,
            configs,
        };
        ensure_topics(&self.kafka_config(&[]), &[spec]).await
    }

    /// Creates an empty database with a unique name, owned by the stack's role.
    pub async fn create_database(&self) -> anyhow::Result<TestDatabase> {
        let name = unique("test_");
        let (client, conn) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
            .await
            .context("connecting to the stack's PostgreSQL (is `make up` done?)")?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(TestDatabase {
            url: with_database(&self.database_url, &name),
            name,
        })
    }
}

/// `url` with its database path replaced by `db`, keeping credentials and query parameters.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The value of one sample in a Prometheus text exposition, matching `name` exactly and every
/// `labels` pair in any order.
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name
            || !labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            return None;
        }
        value.parse().ok()
    })
}

/// Every record of every partition of `topic`, read to each partition's end as it stands when
/// the read reaches it: "nothing there" is then a fact, not a spell of quiet. `config` names the
/// broker and, if wanted, `isolation.level` (librdkafka reads `read_committed` by default; its
/// end is the last stable offset, after any transaction marker). A topic that does not exist
/// holds none. Fails the test after 60 s.
pub fn read_to_end(mut config: ClientConfig, topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = config
        .set("group.id", unique("reader-"))
        .set("enable.auto.commit", "false")
        // Told when a partition's end is reached, also when its last offset is a marker that
        // is never delivered.
        .set("enable.partition.eof", "true")
        .create()
        .expect("a reader of the topic");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("the topic's metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    drop(metadata);
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("a partition to read");
    }
    consumer.assign(&tpl).expect("the partitions assigned");
    drop(tpl);
    let mut unread: HashSet<i32> = partitions.into_iter().collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !unread.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{topic}: partitions {unread:?} not read to their end within 60 s ({} records read)",
            out.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                unread.remove(&p);
            }
            Some(m) => out.push(m.expect("a record").detach()),
        }
    }
    out
}

/// A binary of the workspace built beside the running test (`target/<profile>/<name>`): how a
/// test of one crate runs the other crate's connector. `cargo test --workspace` builds both.
pub fn workspace_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the test runs from target/<profile>/deps")
        .join(name);
    assert!(
        bin.exists(),
        "{} missing: run `cargo test --workspace` (make test)",
        bin.display()
    );
    bin
}

/// A program a test runs (a connector, a broker): only the environment it is given (and
/// `PATH`), its stderr and stdout in a log file of its own, killed when dropped.
pub struct Process {
    pub child: tokio::process::Child,
    pub log: PathBuf,
    /// What it is, for failure messages.
    pub name: String,
}

impl Process {
    /// Runs `bin` with only `env` (and `PATH`), its log in a new temporary file.
    pub fn spawn(bin: &std::path::Path, env: &[(&str, &str)]) -> Process {
        Self::start(bin, env, None)
    }

    /// As [`Process::spawn`], its log appended to `log`.
    pub fn spawn_logged(
        bin: &std::path::Path,
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Process {
        Self::start(bin, env, Some(log.to_path_buf()))
    }

    fn start(bin: &std::path::Path, env: &[(&str, &str)], log: Option<PathBuf>) -> Process {
        let mut command = tokio::process::Command::new(bin);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied());
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::run(command, &name, log)
    }

    /// Runs `command` as set up by the caller; its output goes to `log` (appended, so that a
    /// process restarted on the same log keeps the earlier lines), or to a new file.
    pub fn run(mut command: tokio::process::Command, name: &str, log: Option<PathBuf>) -> Process {
        let log = log.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("{}.log", unique(&format!("{name}-"))))
        });
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("the process's log file");
        let child = command
            .stdout(file.try_clone().expect("the log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            child,
            log,
            name: name.to_string(),
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`, ...).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the process is running").to_string();
        std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .expect("kill(1)");
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    pub fn sigkill(&self) {
        self.signal("KILL");
    }

    /// Waits for the process to exit, failing the test with its logs after `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("the process's exit status"),
            Err(_) => panic!(
                "{} did not exit within {timeout:?}; logs:\n{}",
                self.name,
                self.logs()
            ),
        }
    }

    /// Waits until `needle` is in the logs, failing the test with them after `timeout`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.logs().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no `{needle}` in the logs of {} within {timeout:?}:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The HTTP address a connector logged at start-up (`"addr"` of its JSON log; tests bind
    /// port 0).
    pub async fn http_addr(&self) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let found = self
                .logs()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|l| l["addr"].as_str().map(str::to_string));
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} logged no HTTP address within 30 s:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What a run of schemathesis against a connector's control API found.
#[derive(Debug)]
pub struct Fuzzed {
    /// Whether schemathesis passed every check.
    pub passed: bool,
    /// Test cases generated (each one call or more).
    pub cases: u64,
    /// Its summary, for the test's failure message and the figures.
    pub output: String,
}

/// Runs schemathesis (installed in `.stack/venv` by `make up`) against the API at `base_url`,
/// generating calls from the OpenAPI document `spec` (a path from the workspace root), with
/// `token` as the bearer token so that mutating calls are reached too. Checks: no 5xx, and
/// every answer's status, content type and body as the document says.
pub fn fuzz_api(spec: &str, base_url: &str, token: &str, max_examples: u32) -> Fuzzed {
    let root = workspace_root();
    let bin = root.join(".stack/venv/bin/schemathesis");
    let out = std::process::Command::new(&bin)
        .current_dir(std::env::temp_dir())
        .args(["run", &root.join(spec).to_string_lossy(), "--url", base_url])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", &max_examples.to_string(), "--seed", "1"])
        .args(["--workers", "1", "--no-color", "--generation-database", "none"])
        .output()
        .unwrap_or_else(|e| panic!("running {} (did `make up` install it?): {e}", bin.display()));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // "153 generated, 153 passed" in the summary.
    let cases = output
        .lines()
        .find_map(|l| l.trim().split_once(" generated")?.0.parse().ok())
        .unwrap_or(0);
    Fuzzed {
        passed: out.status.success(),
        cases,
        output,
    }
}

/// A TCP proxy in front of a real service (e.g. the schema registry) that can be switched
/// "down": then it closes every open connection and refuses new ones, as a service that died
/// would; or "failing": then it answers every HTTP request with a 500, as a service whose
/// backend broke would. Switched up again, it forwards to the same service. The service itself
/// is real; only what reaches it changes.
pub struct Outage {
    /// `host:port` to give the client instead of the service's.
    pub addr: String,
    /// When set, the `Authorization` header a request must carry (checked on the first request
    /// of each connection), else it is answered 401, as a registry with basic auth would.
    required_auth: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// The target URL's path (`/apis/ccompat/v7` for the stack's registry), kept in [`Outage::url`].
    path: String,
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

const UP: u8 = 0;
const DOWN: u8 = 1;
const FAILING: u8 = 2;

impl Outage {
    /// Starts forwarding to `target` (`host:port`, or a URL whose host and port are used and
    /// whose path [`Outage::url`] keeps).
    pub async fn start(target: &str) -> Outage {
        use std::sync::atomic::Ordering;
        let target = target.trim_start_matches("http://").trim_end_matches('/');
        let (target, path) = match target.find('/') {
            Some(i) => (target[..i].to_string(), target[i..].to_string()),
            None => (target.to_string(), String::new()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the outage proxy");
        let addr = listener.local_addr().expect("local addr").to_string();
        let mode = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(UP));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let required_auth = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let (m, c, a) = (mode.clone(), connections.clone(), required_auth.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = target.clone();
                let task = match m.load(Ordering::SeqCst) {
                    DOWN => {
                        drop(inbound);
                        continue;
                    }
                    FAILING => tokio::spawn(answer(
                        inbound,
                        "500 Internal Server Error",
                        r#"{"error_code":50001,"message":"Error in the backend datastore"}"#,
                    )),
                    _ => {
                        let required = a.lock().expect("auth").clone();
                        tokio::spawn(forward(inbound, target, required))
                    }
                };
                c.lock().expect("connections").push(task.abort_handle());
            }
        });
        Outage {
            addr,
            required_auth,
            path,
            mode,
            connections,
        }
    }

    /// `http://` + [`Outage::addr`] + the target's path: the URL to give the client.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }

    /// From now on, new connections must send HTTP basic authentication with `user` and
    /// `password` in their first request, else they are answered 401.
    pub fn require_basic_auth(&self, user: &str, password: &str) {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        *self.required_auth.lock().expect("auth") = Some(format!("Basic {token}"));
    }

    pub fn set_down(&self, down: bool) {
        self.set_mode(if down { DOWN } else { UP });
    }

    /// Every request answered with a 500 (`true`), or forwarded again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.set_mode(if failing { FAILING } else { UP });
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, std::sync::atomic::Ordering::SeqCst);
        if mode != UP {
            // Kept-alive connections would go on reaching the service.
            for c in self.connections.lock().expect("connections").drain(..) {
                c.abort();
            }
        }
    }
}

/// Reads the request (what fits in one read) and answers `status` with a JSON `body`, closing
/// the connection, as a failing registry would.
async fn answer(mut inbound: tokio::net::TcpStream, status: &str, body: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = [0u8; 4096];
    let _ = inbound.read(&mut request).await;
    let _ = inbound
        .write_all(json_response(status, body).as_bytes())
        .await;
}

fn json_response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Forwards the connection to `target`; with `required` set, only if its first request carries
/// that `Authorization` header, else it is answered 401.
async fn forward(mut inbound: tokio::net::TcpStream, target: String, required: Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = vec![0u8; 16 * 1024];
    let mut n = 0;
    if let Some(expected) = required {
        n = inbound.read(&mut head).await.unwrap_or(0);
        let text = String::from_utf8_lossy(&head[..n]).to_lowercase();
        if !text.contains(&format!("authorization: {}", expected.to_lowercase())) {
            let body = r#"{"error_code":401,"message":"Unauthorized"}"#;
            let _ = inbound
                .write_all(json_response("401 Unauthorized", body).as_bytes())
                .await;
            return;
        }
    }
    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
        return;
    };
    if outbound.write_all(&head[..n]).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_swapped_in_urls() {
        assert_eq!(
            with_database(
                "postgres://u:p@127.0.0.1:5432/trending?sslmode=disable",
                "t1"
            ),
            "postgres://u:p@127.0.0.1:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t2"), "postgres://h/t2");
    }
}
