//! Our sink against the standard way, side by side in one run (`make bench-peers`): Kafka
//! Connect (standalone worker) with Debezium's JDBC sink, on the same topic, machine and
//! PostgreSQL. Prints a table and writes `target/bench/peers.json`.
//!
//! 1. N records of our schema (`PEERS_RECORDS`, 500,000) produced to a 6-partition topic as the
//!    source writes them; the snapshot rows they make copied into a database of their own and
//!    summed (count and checksum over every column);
//! 2. each contender alone, with a fresh consumer group and a fresh database holding our tables,
//!    timed from its start to the last offset committed in its group, peak RSS and CPU seconds of
//!    its processes (the JVM's whole process for Connect) sampled from /proc;
//!    - our sink binary, batch 5000, one instance and two sharing the group; it does its whole
//!      job (`videos` and `video_snapshots`);
//!    - Debezium's JDBC sink, `insert.mode=upsert` on (region_code, fetched_at, video_id) into
//!      `video_snapshots` (a `ReplaceField` transform keeps the table's columns), `tasks.max` 1
//!      and 2, `batch.size` 500 (its default) and 5000;
//! 3. each drain's `video_snapshots` must equal the records produced, or the run fails;
//! 4. the ratios ours / the peer's best: rows/s, and peak RSS against the peer's smallest.
//!
//! The peer is installed by `scripts/peers/connect.sh install` (Maven Central, pinned) and run
//! by `scripts/peers/connect.sh worker`; its settings are [`worker_properties`] and
//! [`connector_properties`], its logs `.stack/logs/connect-<run>.log`.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bench::{
    drain, ensure_release_bins, env_usize, expected_tables, mib, our_sink, produce, records,
    workspace_root, Drain, Expected, Filled, SinkRun,
};
use chrono::Utc;
use plumbing::testing::{unique, Stack, TestDatabase};

/// The targets: ours at least 10 times the peer's rows/s, at most a quarter of its memory.
const MIN_RATE_RATIO: f64 = 10.0;
const MAX_RSS_RATIO: f64 = 0.25;

/// The Connect worker's settings. Everything not set here is Kafka Connect's default.
fn worker_properties(stack: &Stack, run_dir: &Path, batch: usize) -> String {
    // The registry's own API (the converter does not speak Confluent's); the stack's URL names
    // the Confluent-compatible one under the same server.
    let registry = stack
        .registry_url
        .split("/apis/")
        .next()
        .unwrap_or(&stack.registry_url);
    let port = std::env::var("PEERS_CONNECT_PORT").unwrap_or_else(|_| "18083".into());
    format!(
        "bootstrap.servers={bootstrap}
listeners=http://127.0.0.1:{port}
plugin.path={plugins}
offset.storage.file.filename={offsets}
key.converter=org.apache.kafka.connect.storage.StringConverter
# Confluent's wire format (magic byte, 4-byte id); the ids the registry's Confluent API hands
# out are content ids.
value.converter=io.apicurio.registry.utils.converter.AvroConverter
value.converter.apicurio.registry.url={registry}/apis/registry/v2
value.converter.apicurio.registry.as-confluent=true
value.converter.apicurio.registry.use-id=contentId
# A sink task commits its offsets every offset.flush.interval.ms (60 s by default): 1 s so that
# the peer's clock stops as soon as it has written, as ours commits after each batch.
offset.flush.interval.ms=1000
# A task is handed at most max.poll.records per put(): Debezium's docs ask for it to match
# batch.size, or a batch is never larger than 500.
consumer.max.poll.records={batch}
# The database password comes from a file, never from these properties.
config.providers=file
config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider
",
        bootstrap = stack.kafka_bootstrap,
        plugins = workspace_root().join(".stack/connect/plugins").display(),
        offsets = run_dir.join("offsets").display(),
    )
}

/// Debezium JDBC sink's settings for one run, as its documentation advises for throughput.
fn connector_properties(
    name: &str,
    topic: &str,
    db: &TestDatabase,
    url: &tokio_postgres::Config,
    secret_file: &Path,
    tasks: usize,
    batch: usize,
) -> String {
    let host = match url.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = url.get_ports().first().copied().unwrap_or(5432);
    format!(
        "name={name}
connector.class=io.debezium.connector.jdbc.JdbcSinkConnector
tasks.max={tasks}
topics={topic}
connection.url=jdbc:postgresql://{host}:{port}/{dbname}
connection.username={user}
connection.password=${{file:{secret}:password}}
# The same idempotent write as ours: upsert on the snapshot's key, into the table our migrations
# made (no schema evolution).
insert.mode=upsert
primary.key.mode=record_value
primary.key.fields=region_code,fetched_at,video_id
table.name.format=video_snapshots
schema.evolution=none
batch.size={batch}
use.reduction.buffer=true
# video_snapshots' columns; the others (titles, tags...) go to our videos table, which the peer
# does not keep.
transforms=snapshot
transforms.snapshot.type=org.apache.kafka.connect.transforms.ReplaceField$Value
transforms.snapshot.include=region_code,fetched_at,video_id,rank,view_count,like_count,comment_count,favorite_count
",
        dbname = db.name,
        user = url.get_user().unwrap_or("trending"),
        secret = secret_file.display(),
    )
}

/// A Connect worker running Debezium's JDBC sink: a contender for [`drain`].
fn peer(
    stack: &Stack,
    topic: &str,
    tasks: usize,
    batch: usize,
    heap: &str,
) -> impl FnOnce(&TestDatabase) -> anyhow::Result<(Vec<Child>, String)> {
    let stack = stack.clone();
    let heap = heap.to_string();
    let topic = topic.to_string();
    move |db| {
        let name = unique("peer-jdbc-");
        let root = workspace_root();
        let run_dir = root.join(".stack/connect/runs").join(&name);
        fs::create_dir_all(&run_dir)?;
        let url = tokio_postgres::Config::from_str(&db.url)?;
        let password = url
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let secret = run_dir.join("secret.properties");
        write_private(&secret, &format!("password={password}\n"))?;
        let worker = run_dir.join("worker.properties");
        fs::write(&worker, worker_properties(&stack, &run_dir, batch))?;
        let connector = run_dir.join("connector.properties");
        fs::write(
            &connector,
            connector_properties(&name, &topic, db, &url, &secret, tasks, batch),
        )?;
        let log_path = root.join(format!(".stack/logs/connect-{name}.log"));
        let log = fs::File::create(&log_path)?;
        let child = Command::new(root.join("scripts/peers/connect.sh"))
            .arg("worker")
            .env("CONNECT_HEAP", &heap)
            .arg(&worker)
            .arg(&connector)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting scripts/peers/connect.sh worker")?;
        eprintln!("bench: peer {name}: log {}", log_path.display());
        // Kafka Connect names a sink connector's group after it.
        Ok((vec![child], format!("connect-{name}")))
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

struct Run {
    who: &'static str,
    setting: String,
    tasks: usize,
    batch: usize,
    drain: Drain,
}

const PEER: &str = "Debezium JDBC sink (Kafka Connect)";
/// connect-standalone.sh's own -Xmx, what a user of Kafka Connect gets by default.
const DEFAULT_HEAP: &str = "2g";
const SMALL_HEAP: &str = "512m";

fn best_peer(runs: &[Run]) -> &Run {
    runs.iter()
        .filter(|r| r.who == PEER)
        .max_by(|a, b| a.drain.rows_per_sec.total_cmp(&b.drain.rows_per_sec))
        .expect("peer runs")
}

/// Each contender drains the topic alone: ours with 1 and 2 instances, then the peer in each
/// setting, and its best setting again in a smaller heap.
async fn contest(
    stack: &Stack,
    filled: &Filled,
    expected: &Expected,
    timeout: Duration,
) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for instances in [1, 2] {
        let label = format!("ours, batch 5000, {instances} instance(s)");
        let run = SinkRun {
            instances,
            ..SinkRun::default()
        };
        let sinks = our_sink(stack, &filled.topic, 5000, run);
        let d = drain(stack, filled, expected, true, &label, timeout, sinks).await?;
        runs.push(Run {
            who: "ours",
            setting: format!("batch 5000, {instances} instance(s)"),
            tasks: instances,
            batch: 5000,
            drain: d,
        });
    }
    let mut settings: Vec<(usize, usize, &str)> = vec![];
    for tasks in [1, 2] {
        for batch in [500, 5000] {
            settings.push((tasks, batch, DEFAULT_HEAP));
        }
    }
    let peer_run = |tasks: usize, batch: usize, heap: &'static str| async move {
        let setting = format!("batch.size {batch}, tasks.max {tasks}, heap {heap}");
        let label = format!("Debezium JDBC sink, {setting}");
        let contender = peer(stack, &filled.topic, tasks, batch, heap);
        let drain = drain(stack, filled, expected, false, &label, timeout, contender).await?;
        anyhow::Ok(Run {
            who: PEER,
            setting,
            tasks,
            batch,
            drain,
        })
    };
    for (tasks, batch, heap) in settings {
        runs.push(peer_run(tasks, batch, heap).await?);
    }
    // Its best setting again in a smaller heap: what it needs, not what the default lets it take.
    let (tasks, batch) = {
        let best = best_peer(&runs);
        (best.tasks, best.batch)
    };
    runs.push(peer_run(tasks, batch, SMALL_HEAP).await?);

    Ok(runs)
}

/// Prints the table and writes `target/bench/peers.json`; returns the ratios ours / peer's
/// (rows/s against its best, peak RSS against its smallest).
fn write_figures(n: usize, runs: &[Run], begun: Instant) -> anyhow::Result<(f64, f64)> {
    let ours = &runs[0].drain;
    let best = best_peer(runs);
    let smallest_rss = runs
        .iter()
        .filter(|r| r.who == PEER)
        .map(|r| r.drain.usage.max_rss())
        .min()
        .unwrap_or(0);
    let rate_ratio = ours.rows_per_sec / best.drain.rows_per_sec;
    let rss_ratio = ours.usage.max_rss() as f64 / smallest_rss.max(1) as f64;

    println!("| contender | setting | rows/s | rows/s after first commit | wall (s) | first commit (s) | CPU (s) | peak RSS (MiB) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in runs {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} |",
            r.who,
            r.setting,
            r.drain.rows_per_sec,
            r.drain.steady_rows_per_sec,
            r.drain.secs,
            r.drain.first_commit_secs,
            r.drain.usage.total_cpu(),
            mib(r.drain.usage.max_rss())
        );
    }
    println!();
    println!(
        "ours / peer's best ({}): rows/s x{rate_ratio:.1}; peak RSS ours / peer's smallest: {:.2} ({} records, {:.0} s in all)",
        best.setting,
        rss_ratio,
        n,
        begun.elapsed().as_secs_f64()
    );

    let json = serde_json::json!({
        "records": n,
        "runs": runs.iter().map(|r| serde_json::json!({
            "contender": r.who, "setting": r.setting,
            "rows_per_sec": r.drain.rows_per_sec,
            "rows_per_sec_after_first_commit": r.drain.steady_rows_per_sec,
            "seconds": r.drain.secs,
            "first_commit_seconds": r.drain.first_commit_secs,
            "cpu_seconds": r.drain.usage.total_cpu(), "peak_rss_bytes": r.drain.usage.max_rss(),
        })).collect::<Vec<_>>(),
        "rows_per_sec_ours_over_peer_best": rate_ratio,
        "peak_rss_ours_over_peer_smallest": rss_ratio,
        "duration_seconds": begun.elapsed().as_secs_f64(),
        "measured_at": Utc::now().to_rfc3339(),
    });
    fs::create_dir_all("target/bench")?;
    fs::write(
        "target/bench/peers.json",
        serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!("bench: figures written to target/bench/peers.json");
    Ok((rate_ratio, rss_ratio))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_usize("PEERS_RECORDS", 500_000);
    let timeout = Duration::from_secs(env_usize("PEERS_DRAIN_TIMEOUT_SECS", 900) as u64);
    let stack = Stack::from_env()?;
    ensure_release_bins(&["sink-connector"])?;
    ensure!(
        workspace_root().join(".stack/connect/libs").is_dir(),
        ".stack/connect is missing: run `make bench-peers`, which installs the peer"
    );
    // Each run's directory holds a copy of the database password: none is kept past the run.
    let runs_dir = workspace_root().join(".stack/connect/runs");
    let _ = fs::remove_dir_all(&runs_dir);
    let begun = Instant::now();
    let data = records(n);
    let filled = produce(&stack, &data).await?;
    let expected = expected_tables(&stack, &data).await?;
    drop(data);
    eprintln!("bench: produced {n} records to {}", filled.topic);

    let runs = contest(&stack, &filled, &expected, timeout).await?;
    fs::remove_dir_all(&runs_dir)?;
    let (rate_ratio, rss_ratio) = write_figures(n, &runs, begun)?;
    // The memory target is met and shown so in the README: a run that misses it fails. The rows/s
    // target (x10) is not met on this machine (README, "Compared with Kafka Connect"): reported.
    if rate_ratio < MIN_RATE_RATIO {
        eprintln!("bench: rows/s target x{MIN_RATE_RATIO} not met: x{rate_ratio:.1}");
    }
    ensure!(
        rss_ratio <= MAX_RSS_RATIO,
        "target missed: peak RSS ours / peer's {rss_ratio:.2} > {MAX_RSS_RATIO}"
    );
    Ok(())
}
