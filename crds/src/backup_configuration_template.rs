//! BackupConfigurationTemplate (stash.appscode.com/v1beta1, cluster-scoped; stash-api.md §3.7).

use crate::common::{EmptyDirSettings, RetentionPolicy, TaskRef};
use crate::repository::RepositorySpec;
use crate::runtime::RuntimeSettings;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Template of a Repository and a BackupConfiguration for default backups.
// kube's `printcolumn(...)` repeats `type_ = ".."` on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stash.appscode.com",
    version = "v1beta1",
    kind = "BackupConfigurationTemplate",
    plural = "backupconfigurationtemplates",
    singular = "backupconfigurationtemplate",
    shortname = "btpl",
    category = "stash",
    category = "appscode",
    category = "backup",
    label("app", "stash"),
    doc = "Template for default backups (stash.appscode.com BackupConfigurationTemplate).",
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
pub struct BackupConfigurationTemplateSpec {
    /// Repository template (`backend`, `wipeOut`), inlined.
    #[serde(flatten)]
    pub repository: RepositorySpec,
    /// Cron schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The Task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRef>,
    /// Retention policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policy: Option<RetentionPolicy>,
    /// Runtime settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_settings: Option<RuntimeSettings>,
    /// The `tmp-dir` volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_dir: Option<EmptyDirSettings>,
    /// How many finished BackupSessions each generated configuration keeps (later Stash's
    /// BackupBlueprint field; copied into the BackupConfiguration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub backup_history_limit: Option<i32>,
    /// The deadline of each generated configuration's sessions (later Stash's BackupBlueprint
    /// field; copied into the BackupConfiguration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_out: Option<String>,
}
