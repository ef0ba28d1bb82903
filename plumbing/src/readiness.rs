//! Readiness: each dependency a connector needs reports whether it currently answers, and
//! `/readyz` is ready only while all of them do. Also exported as the `<service>_ready` gauge so
//! dashboards and alerts see the same thing as the orchestrator.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared, cheap to clone. Stages call [`Readiness::set`] as their dependency comes and goes.
#[derive(Clone, Debug)]
pub struct Readiness {
    service: &'static str,
    checks: Arc<Mutex<BTreeMap<&'static str, Result<(), String>>>>,
}

impl Readiness {
    /// `checks` are the names of the dependencies, all not ready until first reported.
    pub fn new(service: &'static str, checks: &[&'static str]) -> Self {
        let checks = checks
            .iter()
            .map(|c| (*c, Err("not checked yet".to_string())))
            .collect();
        let r = Readiness {
            service,
            checks: Arc::new(Mutex::new(checks)),
        };
        r.export();
        r
    }

    /// Records the state of one dependency. `reason` must not contain secrets (it is served).
    pub fn set(&self, check: &'static str, state: Result<(), String>) {
        self.checks
            .lock()
            .expect("readiness lock poisoned")
            .insert(check, state);
        self.export();
    }

    pub fn set_ready(&self, check: &'static str) {
        self.set(check, Ok(()));
    }

    pub fn set_not_ready(&self, check: &'static str, reason: impl Into<String>) {
        self.set(check, Err(reason.into()));
    }

    /// `Ok` when every check passes, else the list of failing checks and why.
    pub fn status(&self) -> Result<(), Vec<(String, String)>> {
        let checks = self.checks.lock().expect("readiness lock poisoned");
        let failing: Vec<_> = checks
            .iter()
            .filter_map(|(name, s)| s.as_ref().err().map(|e| (name.to_string(), e.clone())))
            .collect();
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing)
        }
    }

    fn export(&self) {
        let ready = if self.status().is_ok() { 1.0 } else { 0.0 };
        metrics::gauge!(format!("{}_ready", self.service)).set(ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let r = Readiness::new("test", &["kafka", "postgres"]);
        assert!(r.status().is_err());
        r.set_ready("kafka");
        let failing = r.status().unwrap_err();
        assert_eq!(failing, vec![("postgres".into(), "not checked yet".into())]);
        r.set_ready("postgres");
        assert!(r.status().is_ok());
        r.set_not_ready("kafka", "broker unreachable");
        assert_eq!(r.status().unwrap_err()[0].1, "broker unreachable");
    }
}
