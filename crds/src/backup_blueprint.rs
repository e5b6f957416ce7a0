//! BackupBlueprint (stash.appscode.com/v1beta1, cluster-scoped): later Stash's name for the
//! template of default backups ("auto-backup"), named by the annotation
//! `stash.appscode.com/backup-blueprint` on a workload, PVC or AppBinding. Everything a
//! [`BackupConfigurationTemplate`](crate::BackupConfigurationTemplate) says, plus the later
//! fields.

use crate::backup_configuration_template::BackupConfigurationTemplateSpec;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Template of a Repository and a BackupConfiguration for default backups (later spelling).
// kube's `printcolumn(...)` repeats `type_ = ".."` on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stash.appscode.com",
    version = "v1beta1",
    kind = "BackupBlueprint",
    plural = "backupblueprints",
    singular = "backupblueprint",
    shortname = "bb",
    category = "stash",
    category = "appscode",
    category = "backup",
    label("app", "stash"),
    doc = "Blueprint of default backups (stash.appscode.com BackupBlueprint).",
    derive = "PartialEq",
    printcolumn(name = "Task", type_ = "string", json_path = ".spec.task.name"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupBlueprintSpec {
    /// What a BackupConfigurationTemplate says: the Repository's `backend` (and `wipeOut`,
    /// never copied), schedule, Task, retention, runtime settings, tempDir,
    /// backupHistoryLimit, timeOut.
    #[serde(flatten)]
    pub template: BackupConfigurationTemplateSpec,
    /// Retry a failed session (copied into each BackupConfiguration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_config: Option<crate::common::RetryConfig>,
    /// Where the BackupConfigurations are made (later Stash): kept, and refused at admission
    /// while stash-rs makes them in the target's namespace (docs/differences.md §46).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_namespace: Option<String>,
    /// Where the Repositories are made (later Stash): as `backupNamespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_namespace: Option<String>,
    /// Later fields stash-rs keeps but does not act on yet (`hooks`, `interimVolumeTemplate`).
    #[serde(flatten)]
    pub not_yet: crate::common::NotYet,
}
