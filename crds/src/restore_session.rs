//! RestoreSession (stash.appscode.com/v1beta1; stash-api.md §3.4).

use crate::common::{Driver, EmptyDirSettings, RestoreTarget, TaskRef};
use crate::duration::GoDuration;
use crate::int_hash::IntHash;
use crate::runtime::RuntimeSettings;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use stash_machines::restore_session::{HostPhase, Phase};

/// A restore from a Repository into a target.
// kube's `printcolumn(...)` repeats `type_ = ".."` on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stash.appscode.com",
    version = "v1beta1",
    kind = "RestoreSession",
    plural = "restoresessions",
    singular = "restoresession",
    namespaced,
    status = "RestoreSessionStatus",
    shortname = "restore",
    category = "stash",
    category = "appscode",
    category = "restore",
    label("app", "stash"),
    doc = "A restore from a Repository into a target (stash.appscode.com RestoreSession).",
    derive = "PartialEq",
    printcolumn(
        name = "Repository-Name",
        type_ = "string",
        json_path = ".spec.repository.name"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSessionSpec {
    /// Restore driver; absent means `Restic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    /// The Repository (its namespace: this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<crate::common::RepositoryRef>,
    /// The Task (job model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRef>,
    /// The target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RestoreTarget>,
    /// What each host restores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Runtime settings of the restore pod/containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_settings: Option<RuntimeSettings>,
    /// The `tmp-dir` volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_dir: Option<EmptyDirSettings>,
    /// How long the restore may take from its creation (later Stash, e.g. `30m`): it replaces
    /// the operator's `--session-deadline` for this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_out: Option<String>,
    /// Later fields stash-rs keeps but does not act on yet (`hooks`, `interimVolumeTemplate`).
    #[serde(flatten)]
    pub not_yet: crate::common::NotYet,
}

impl RestoreSessionSpec {
    /// The driver, `Restic` when absent.
    pub fn driver(&self) -> Driver {
        self.driver.unwrap_or_default()
    }

    /// The restore rules, wherever the manifest put them: `spec.rules` (mid-2019) or
    /// `spec.target.rules` (later). Admission refuses a manifest whose two lists differ.
    pub fn restore_rules(&self) -> &[Rule] {
        match &self.target {
            Some(t) if self.rules.is_empty() => &t.rules,
            _ => &self.rules,
        }
    }

    /// Where the rules are, for messages: `spec.rules` or `spec.target.rules`.
    pub fn rules_field(&self) -> &'static str {
        match &self.target {
            Some(t) if self.rules.is_empty() && !t.rules.is_empty() => "spec.target.rules",
            _ => "spec.rules",
        }
    }

    /// The rule for `host` (stash-api.md §3.4): the first rule whose `targetHosts` contains it,
    /// otherwise the rule with empty `targetHosts`, otherwise none.
    pub fn rule_for_host(&self, host: &str) -> Option<&Rule> {
        let rules = self.restore_rules();
        rules
            .iter()
            .find(|r| r.target_hosts.iter().any(|h| h == host))
            .or_else(|| rules.iter().find(|r| r.target_hosts.is_empty()))
    }
}

/// A restore rule (`spec.rules[]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Hosts this rule applies to; empty matches every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_hosts: Vec<String>,
    /// Host whose data is restored; empty means the restoring host itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_host: Option<String>,
    /// Snapshots to restore (exclusive with `paths`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
    /// Paths to restore from the latest snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Patterns of the files to restore (restic `--include`; later Stash).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Patterns of the files not to restore (restic `--exclude`; later Stash).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// Status of a RestoreSession.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSessionStatus {
    /// Observed generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<IntHash>,
    /// Phase of the session; absent means not yet picked up (treated as `Pending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Number of hosts expected to report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_hosts: Option<i32>,
    /// Sum of host durations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_duration: Option<GoDuration>,
    /// Why the session ended as it did, for every outcome but success (a stash-rs addition:
    /// upstream left failed and skipped sessions without a reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// One entry per host that reported. A list-map keyed by `hostname`: each host's agent
    /// owns its own entry (server-side apply), the operator owns the other status fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["hostname"]))]
    pub stats: Vec<HostRestoreStats>,
    /// Locks of other hosts that stood in an agent's way, reported by the agents (a stash-rs
    /// addition; each agent owns the entries it applied; as for BackupSession).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub blocking_locks: Vec<crate::common::BlockingLock>,
    /// The operator's decision on each reported lock (a stash-rs addition; the operator's lock
    /// field manager owns it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub lock_decisions: Vec<crate::common::LockDecision>,
}

impl crate::common::ReportsLocks for RestoreSessionStatus {
    fn blocking_locks(&self) -> &[crate::common::BlockingLock] {
        &self.blocking_locks
    }
    fn lock_decisions(&self) -> &[crate::common::LockDecision] {
        &self.lock_decisions
    }
}

/// Restore result of one host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostRestoreStats {
    /// Host name (`host-0`, `host-<ordinal>`, node name); `host-0` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", extend("default" = "host-0"))]
    pub hostname: Option<String>,
    /// Result of the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<HostPhase>,
    /// Time the host took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<GoDuration>,
    /// Error, if the host failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HostRestoreStats {
    /// Whether this host failed: phase `Failed` or a non-empty error
    /// ([`stash_machines::entry_failed`], the same rule as a backup host's).
    pub fn is_failed(&self) -> bool {
        stash_machines::entry_failed(self.phase == Some(HostPhase::Failed), self.error.as_deref())
    }
}
