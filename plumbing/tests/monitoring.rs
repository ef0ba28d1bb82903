//! The Prometheus configuration and alert rules shipped in `prometheus/` are valid, every alert
//! tells the operator what to do, and the rules' unit tests (firing and resolving on synthetic
//! series) pass, with Debian's promtool.

use std::path::PathBuf;
use std::process::Command;

fn prometheus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("promtool (installed by `make up` with Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn both_prometheus_configs_are_valid() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "config", "local.yml"]);
}

#[test]
fn alert_rules_are_valid_and_each_has_a_summary_and_a_description() {
    let out = promtool(&["check", "rules", "alerts.yml"]);
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let rules = std::fs::read_to_string(prometheus_dir().join("alerts.yml")).unwrap();
    let alerts = rules.matches("- alert:").count();
    assert_eq!(rules.matches("summary:").count(), alerts);
    assert_eq!(rules.matches("description:").count(), alerts);
    let tests = std::fs::read_to_string(prometheus_dir().join("alerts_test.yml")).unwrap();
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname=\"{name}\"")),
            "no unit test for {name}"
        );
    }
}

#[test]
fn alert_rules_fire_and_resolve_as_their_unit_tests_say() {
    let out = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_dashboard_panel_has_a_unit_and_a_datasource_variable() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../grafana/dashboards");
    for name in ["pipeline.json", "trending.json"] {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap();
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(vars.contains(&"region"), "{name}: no region variable");
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap();
            assert!(
                p["fieldConfig"]["defaults"]["unit"].is_string(),
                "{name}: `{title}` has no unit"
            );
            let uid = p["datasource"]["uid"].as_str().unwrap();
            assert!(
                uid.starts_with("${") && vars.contains(&&uid[2..uid.len() - 1]),
                "{name}: `{title}` does not use a datasource variable"
            );
        }
    }
}
