//! The Compose stack hangs together: Debian's docker-compose accepts the file; every variable
//! the connectors read is set in it or listed in `.env.example`; every Prometheus scrape target
//! is a Compose service listening on that port; every Grafana datasource points at a Compose
//! service; every mounted path exists.

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
