//! BackupSession (stash.appscode.com/v1beta1; stash-api.md §3.3).

use crate::duration::GoDuration;
use crate::int_hash::IntHash;
use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use stash_machines::backup_session::{HostPhase, Phase};

/// One run of a BackupConfiguration.
// kube's `printcolumn(...)` repeats `type_ = ".."` on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stash.appscode.com",
    version = "v1beta1",
    kind = "BackupSession",
    plural = "backupsessions",
    singular = "backupsession",
    namespaced,
    status = "BackupSessionStatus",
    shortname = "bs",
    category = "stash",
    category = "backup",
    category = "appscode",
    label("app", "stash"),
    doc = "One run of a BackupConfiguration (stash.appscode.com BackupSession).",
    derive = "PartialEq",
    printcolumn(
        name = "BackupConfiguration",
        type_ = "string",
        json_path = ".spec.backupConfiguration.name"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSessionSpec {
    /// The BackupConfiguration this session runs (the mid-2019 spelling; see `invoker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_configuration: Option<LocalObjectReference>,
    /// What invoked this session: the later spelling of `backupConfiguration` (kind
    /// `BackupConfiguration`). Both are one reference to stash-rs
    /// ([`BackupSessionSpec::configuration_name`]); writing both with different names, or
    /// another kind, is refused at admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoker: Option<Invoker>,
    /// How many more sessions follow this one if it fails (later Stash): set from the
    /// configuration's `retryConfig.maxRetry` when the session is created, one less on each
    /// retry. Absent or 0: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub retry_left: Option<i32>,
}

/// The object that invoked a session (`spec.invoker`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Invoker {
    /// API group (`stash.appscode.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// Kind (`BackupConfiguration`; later Stash also `BackupBatch`, which stash-rs does not serve).
    pub kind: String,
    /// Name.
    pub name: String,
}

impl BackupSessionSpec {
    /// The BackupConfiguration's name, in whichever spelling the manifest used (empty when
    /// absent).
    pub fn configuration_name(&self) -> String {
        self.backup_configuration
            .as_ref()
            .map(|r| r.name.clone())
            .or_else(|| {
                self.invoker
                    .as_ref()
                    .filter(|i| i.kind == "BackupConfiguration")
                    .map(|i| i.name.clone())
            })
            .unwrap_or_default()
    }

    /// `retryLeft`, 0 when absent or negative.
    pub fn retry_left(&self) -> u32 {
        self.retry_left
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0)
    }
}

/// Status of a BackupSession.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSessionStatus {
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
    pub stats: Vec<HostBackupStats>,
    /// Locks of other hosts that stood in an agent's way, reported by the agents (a stash-rs
    /// addition; each agent owns the entries it applied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub blocking_locks: Vec<crate::common::BlockingLock>,
    /// The operator's decision on each reported lock (a stash-rs addition; the operator's lock
    /// field manager owns it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub lock_decisions: Vec<crate::common::LockDecision>,
    /// When the session that follows this failed one is created (later Stash; field manager
    /// `stash-rs-retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Whether a session followed this failed one (`true`, set once it exists) or none will
    /// (`false`: its configuration was paused or deleted meanwhile); absent while undecided
    /// (later Stash; field manager `stash-rs-retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried: Option<bool>,
}

impl crate::common::ReportsLocks for BackupSessionStatus {
    fn blocking_locks(&self) -> &[crate::common::BlockingLock] {
        &self.blocking_locks
    }
    fn lock_decisions(&self) -> &[crate::common::LockDecision] {
        &self.lock_decisions
    }
}

/// Backup result of one host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostBackupStats {
    /// Host name (`host-0`, `host-<ordinal>`, node name); `host-0` when absent (upstream's
    /// errored job-model entry has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", extend("default" = "host-0"))]
    pub hostname: Option<String>,
    /// Result of the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<HostPhase>,
    /// Time the host took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<GoDuration>,
    /// Error, if the host failed. A non-empty error means failed whatever `phase` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// One entry per backed-up directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotStats>,
    /// What the steps after the snapshots came to (a stash-rs addition), written by the host's
    /// agent once they ran: `RetentionPolicyApplied`, `RepositoryStatsUpdated` and, when
    /// `restic check` ran, `RepositoryIntegrityVerified`. A `False` one never fails the host:
    /// its snapshots exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl HostBackupStats {
    /// Whether this host failed: phase `Failed` or a non-empty error (stash-rs deviation, see README).
    pub fn is_failed(&self) -> bool {
        stash_machines::entry_failed(self.phase == Some(HostPhase::Failed), self.error.as_deref())
    }
}

/// Statistics of one snapshot taken by a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStats {
    /// restic short snapshot id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Backed-up directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// Size processed, e.g. `"30 B"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Size uploaded, e.g. `"0 B"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<String>,
    /// Processing time (`"m:ss"`, `"h:mm:ss"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time: Option<String>,
    /// File counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_stats: Option<FileStats>,
}

/// File counts of a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileStats {
    /// Total files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_files: Option<i32>,
    /// New files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_files: Option<i32>,
    /// Modified files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_files: Option<i32>,
    /// Unmodified files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmodified_files: Option<i32>,
}
