//! The operator's own Prometheus metrics (served at `/metrics`).
use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of per-controller metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller, e.g. `backupsession`.
    pub controller: String,
}

/// Labels of an error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: String,
    /// A short error class (`Error::metric_label`).
    pub error: String,
}

/// Labels of a rejected phase change.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The lifecycle, e.g. `BackupSession`.
    pub lifecycle: String,
    /// The phase before.
    pub from: String,
    /// The phase that was asked for.
    pub to: String,
}

/// Every metric the runtime records.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// Reconciles run, per controller.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Reconciles that failed, per controller and error class.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile durations in seconds.
    pub durations: Family<ControllerLabels, Histogram>,
    /// Status writes actually sent (no-op writes are skipped and not counted).
    pub status_writes: Family<ControllerLabels, Counter>,
    /// Phase changes outside the machine's transition table: always a bug.
    pub illegal_transitions: Family<TransitionLabels, Counter>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("stash_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let durations = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0])
        });
        let status_writes = Family::<ControllerLabels, Counter>::default();
        let illegal_transitions = Family::<TransitionLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            durations.clone(),
        );
        registry.register("status_writes", "Status writes sent", status_writes.clone());
        registry.register(
            "illegal_transitions",
            "Phase changes outside the lifecycle's transition table (a bug)",
            illegal_transitions.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader",
            leader.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            reconciles,
            failures,
            durations,
            status_writes,
            illegal_transitions,
            leader,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }

    /// Labels for `controller`.
    pub fn controller(controller: &str) -> ControllerLabels {
        ControllerLabels {
            controller: controller.to_string(),
        }
    }
}
