//! The Compose stack hangs together: Debian's docker-compose accepts the file; every variable
//! the connectors read is set in it or listed in `.env.example`; every Prometheus scrape target
//! is a Compose service listening on that port; every Grafana datasource points at a Compose
//! service; every mounted path exists; the Dockerfile's dependency layer is a workspace cargo
//! accepts.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn docker_compose_accepts_the_file() {
    // Every variable of .env.example with a placeholder value, as a user's .env would be.
    let env: String = read(".env.example")
        .lines()
        .map(|l| {
            if l.ends_with('=') {
                format!("{l}placeholder\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let env_file = std::env::temp_dir().join(format!("compose-{}.env", std::process::id()));
    std::fs::write(&env_file, env).unwrap();
    let out = Command::new("docker-compose")
        .arg("--env-file")
        .arg(&env_file)
        .args(["config", "-q"])
        .current_dir(root())
        .output()
        .expect("docker-compose (Debian's, installed by `make up`)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `env = "NAME"` of the connectors' configs, plus the secrets read outside clap.
fn connector_variables() -> Vec<String> {
    let mut vars = vec![
        "YOUTUBE_API_KEY".to_string(),
        "DATABASE_URL".to_string(),
        "KAFKA_SASL_PASSWORD".to_string(),
        "SCHEMA_REGISTRY_PASSWORD".to_string(),
    ];
    for file in [
        "source-connector/src/config.rs",
        "sink-connector/src/config.rs",
        "plumbing/src/kafka.rs",
        "plumbing/src/registry.rs",
        "plumbing/src/telemetry.rs",
    ] {
        for part in read(file).split("env = \"").skip(1) {
            vars.push(part.split('"').next().unwrap().to_string());
        }
    }
    vars.sort();
    vars.dedup();
    vars
}

#[test]
fn every_connector_variable_is_set_in_compose_or_listed_in_env_example() {
    let compose = read("docker-compose.yml");
    let env = read(".env.example");
    let vars = connector_variables();
    assert!(vars.len() > 30, "found only {vars:?}");
    let missing: Vec<_> = vars
        .iter()
        .filter(|v| !compose.contains(&format!("{v}:")) && !env.contains(&format!("{v}=")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docker-compose.yml nor .env.example: {missing:?}"
    );
}

fn compose_services(compose: &str) -> Vec<String> {
    let services = compose.split("\nservices:\n").nth(1).unwrap();
    let services = services.split("\nvolumes:\n").next().unwrap();
    services
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.trim_end().ends_with(':'))
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.trim().trim_end_matches(':').to_string())
        .collect()
}

/// The lines of one service in docker-compose.yml (up to the next two-space-indented key).
fn service_block(compose: &str, service: &str) -> String {
    compose
        .lines()
        .skip_while(|l| *l != format!("  {service}:"))
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("   "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_scrape_target_is_a_compose_service_serving_metrics_on_that_port() {
    let compose = read("docker-compose.yml");
    let services = compose_services(&compose);
    let prometheus = read("prometheus/prometheus.yml");
    let targets: Vec<&str> = prometheus
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- targets: [\""))
        .map(|t| t.trim_end_matches("\"]"))
        .collect();
    assert!(targets.len() >= 3);
    for target in targets {
        let (host, port) = target.split_once(':').unwrap();
        if host == "localhost" {
            continue; // Prometheus itself
        }
        assert!(
            services.contains(&host.to_string()),
            "scrape target {target} is not a service"
        );
        let block = service_block(&compose, host);
        assert!(
            block.contains(&format!("HTTP_ADDR: 0.0.0.0:{port}")),
            "{host} does not serve on {port}"
        );
    }
}

#[test]
fn grafana_datasources_point_at_compose_services_and_mounts_exist() {
    let compose = read("docker-compose.yml");
    let services = compose_services(&compose);
    for line in read("grafana/provisioning/datasources/datasources.yml").lines() {
        if let Some(url) = line.trim().strip_prefix("url: ") {
            let host = url.trim_start_matches("http://").split(':').next().unwrap();
            assert!(
                services.contains(&host.to_string()),
                "datasource {url} is not a service"
            );
        }
    }
    for line in compose.lines() {
        if let Some(mount) = line.trim().strip_prefix("- ./") {
            let path = mount.split(':').next().unwrap();
            assert!(
                root().join(path).exists(),
                "mounted path ./{path} does not exist"
            );
        }
    }
}

/// The images are not built here (no Docker engine), but their first cargo step can be checked:
/// the manifests the Dockerfile copies, plus the empty crates its skeleton step makes, must load
/// as a workspace, or `docker compose build` fails (a `[[bin]]` without its file once did).
#[test]
fn the_dockerfiles_dependency_layer_is_a_workspace_cargo_accepts() {
    let dockerfile = read("Dockerfile").replace("\\\n", " ");
    let dir = std::env::temp_dir().join(format!("docker-skeleton-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut skeleton = None;
    for line in dockerfile.lines() {
        if let Some(args) = line.strip_prefix("COPY ") {
            let args: Vec<&str> = args.split_whitespace().collect();
            let (dest, sources) = args.split_last().unwrap();
            if !sources
                .iter()
                .all(|s| s.ends_with("Cargo.toml") || s.ends_with("Cargo.lock"))
            {
                break; // the sources themselves: past the dependency layer
            }
            for source in sources {
                let to = match dest.ends_with('/') {
                    true => dir
                        .join(dest)
                        .join(PathBuf::from(source).file_name().unwrap()),
                    false => dir.join(dest),
                };
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(root().join(source), &to).unwrap();
            }
        } else if let Some(run) = line
            .strip_prefix("RUN ")
            .filter(|r| r.contains("src/main.rs"))
        {
            skeleton = Some(run.to_string());
        }
    }
    let skeleton = skeleton.expect("a RUN step writing the empty crates (src/main.rs)");
    let made = Command::new("bash")
        .args(["-c", &skeleton])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(made.success(), "the skeleton step failed: {skeleton}");
    let out = Command::new(env!("CARGO"))
        // --no-deps: the workspace's own manifests and targets are what the step makes; the
        // dependency graph would need every platform's crates in the local cache.
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "cargo refuses the Dockerfile's dependency layer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Compose stack's hardening holds: UIs published on loopback only, images pinned to a
/// version, no secret in an environment variable (only `*_FILE` paths to Compose secrets, each
/// documented in secrets/README.md), every service without privilege escalation and with a
/// memory limit, the connectors read-only and without capabilities.
#[test]
fn the_compose_stack_is_hardened() {
    let compose = read("docker-compose.yml");
    let secrets_doc = read("secrets/README.md");
    for line in compose.lines().map(str::trim) {
        // Port mappings are the only quoted list items of the file.
        if let Some(port) = line.strip_prefix("- \"").filter(|p| p.contains(':')) {
            assert!(
                port.starts_with("127.0.0.1:"),
                "published on every interface: {line}"
            );
        }
        if let Some(image) = line.strip_prefix("image: ") {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            let ours = image.starts_with("youtube-trending/");
            assert!(
                ours || (tag.contains('.') && tag != "latest"),
                "image not pinned to a version: {image}"
            );
        }
        let upper = line.to_ascii_uppercase();
        let entry = line
            .split_once(": ")
            .filter(|(key, _)| !matches!(*key, "secrets" | "file") && !key.starts_with(['-', '#']));
        if let Some((key, value)) = entry.filter(|_| {
            upper.contains("PASSWORD") || upper.contains("API_KEY") || upper.contains("SECRET")
        }) {
            assert!(
                key.ends_with("_FILE") && value.starts_with("/run/secrets/"),
                "a secret in the environment: {line}"
            );
        }
        if let Some(file) = line.strip_prefix("file: ./secrets/") {
            assert!(
                secrets_doc.contains(&format!("`{file}`")),
                "secret {file} is not documented in secrets/README.md"
            );
        }
    }
    for service in compose_services(&compose) {
        let block = service_block(&compose, &service);
        assert!(
            block.contains("<<: *hardened"),
            "{service}: no-new-privileges and the pids limit missing"
        );
        assert!(block.contains("mem_limit:"), "{service}: no memory limit");
        if service.ends_with("-connector") {
            assert!(
                block.contains("read_only: true"),
                "{service}: writable root"
            );
            assert!(
                block.contains("cap_drop: [ALL]"),
                "{service}: capabilities kept"
            );
        }
    }
    let hardened = compose.split("x-hardened: &hardened").nth(1).unwrap();
    assert!(hardened.contains("no-new-privileges:true") && hardened.contains("pids_limit:"));
}
