//! Repository (stash.appscode.com/v1alpha1, also served as v1beta1; stash-api.md §3.1).

use crate::backend::{Backend, BackendKind};
use crate::int_hash::IntHash;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A restic repository in some storage backend.
// kube's `printcolumn(...)` repeats `type_ = ".."` on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stash.appscode.com",
    version = "v1alpha1",
    kind = "Repository",
    plural = "repositories",
    singular = "repository",
    namespaced,
    status = "RepositoryStatus",
    shortname = "repo",
    category = "storage",
    category = "appscode",
    category = "stash",
    label("app", "stash"),
    doc = "A restic repository (stash.appscode.com Repository).",
    derive = "PartialEq",
    printcolumn(name = "Integrity", type_ = "boolean", json_path = ".status.integrity"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.size"),
    printcolumn(
        name = "Snapshot-Count",
        type_ = "integer",
        json_path = ".status.snapshotCount"
    ),
    printcolumn(
        name = "Last-Successful-Backup",
        type_ = "date",
        format = "date-time",
        json_path = ".status.lastBackupTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySpec {
    /// Where the repository lives.
    #[serde(default, skip_serializing_if = "Backend::is_empty")]
    pub backend: Backend,
    /// On deletion, delete the restic data under the bucket/prefix (not for local or b2).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wipe_out: bool,
    /// Which namespaces may use this Repository (later Stash). stash-rs uses a Repository
    /// only from its own namespace, which every policy allows (docs/differences.md §46).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_policy: Option<UsagePolicy>,
}

/// `spec.usagePolicy` of a Repository.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsagePolicy {
    /// The namespaces allowed to use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<AllowedNamespaces>,
}

/// `spec.usagePolicy.allowedNamespaces`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// `Same` (its own namespace; the default), `All`, or `Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<NamespacesFrom>,
    /// With `Selector`: the namespaces' labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

/// How the allowed namespaces are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NamespacesFrom {
    /// Every namespace.
    All,
    /// The namespaces the selector matches.
    Selector,
    /// Only its own.
    Same,
}

/// Why a Repository is rejected by the validating webhook.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RepositoryValidationError {
    /// `wipeOut` with a local backend.
    #[error("wipe out operation is not supported for local backend")]
    WipeOutLocal,
    /// `wipeOut` with a b2 backend.
    #[error("wipe out operation is not supported for B2 backend")]
    WipeOutB2,
}

impl RepositorySpec {
    /// The webhook rule of stash-api.md §3.1: `wipeOut` is rejected for local and b2 backends.
    pub fn validate(&self) -> Result<(), RepositoryValidationError> {
        if self.wipe_out {
            match self.backend.kind() {
                Some(BackendKind::Local(_)) => return Err(RepositoryValidationError::WipeOutLocal),
                Some(BackendKind::B2(_)) => return Err(RepositoryValidationError::WipeOutB2),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Status of a Repository, written after every successful backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryStatus {
    /// Observed generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<IntHash>,
    /// Time of the first successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_backup_time: Option<Time>,
    /// Time of the last successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<Time>,
    /// Result of the last `restic check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<bool>,
    /// Repository size in human form (`"10.123 MiB"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Number of snapshots after the last cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<i32>,
    /// Snapshots removed by the last `forget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots_removed_on_last_cleanup: Option<i32>,
    /// Deprecated (v1alpha1 sidecar): time of the last successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup_time: Option<Time>,
    /// Deprecated (v1alpha1 sidecar): duration of the last backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_duration: Option<String>,
    /// Deprecated (v1alpha1 sidecar): number of backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_count: Option<i64>,
    /// Conditions written by the operator (a stash-rs addition; a list-map keyed by `type`, one
    /// field manager per condition). `SnapshotDeletion`: a Snapshot delete's progress (`True`
    /// while one runs; `False`, reason `Deleted` or `DeleteFailed`). `WipeOut`: status `False`,
    /// reason `WipeOutFailed` and the error while a wipe-out of a deleted Repository keeps
    /// failing (the finalizer stays; see the `stash.appscode.com/abandon-wipe-out` annotation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Type of the Repository condition about the wipe-out of a deleted Repository.
pub const WIPE_OUT_CONDITION: &str = "WipeOut";

impl Repository {
    /// Whether the Repository's status records a backup (first, last or last successful): one
    /// that does not may still have to be created (`restic init`), which two restic processes
    /// must never do at once — the operator starts its first sessions one at a time, and the
    /// hosts of such a session take turns.
    pub fn has_received_backup(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.first_backup_time.is_some()
                || s.last_backup_time.is_some()
                || s.last_successful_backup_time.is_some()
        })
    }

    /// True for legacy Repositories created by the v1alpha1 sidecar (label `restic`).
    pub fn is_legacy(&self) -> bool {
        self.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(crate::consts::LEGACY_RESTIC_LABEL))
    }
}
