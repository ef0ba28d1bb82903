//! Running both connectors' binaries in one test (the end-to-end tests).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

/// The sink's binary, built by `cargo test --workspace` beside this test's.
pub fn sink_binary() -> PathBuf {
    // target/debug/deps/<this test> → target/debug/sink-connector
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("sink-connector");
    assert!(
        bin.exists(),
        "{} missing: run `cargo test --workspace` (make test)",
        bin.display()
    );
    bin
}

/// Runs `bin` with only `env` (and PATH), its logs in `log`; killed when dropped.
pub fn spawn(bin: &Path, env: &[(&str, &str)], log: &Path) -> Child {
    Command::new(bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}
