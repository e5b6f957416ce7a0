//! BackupConfiguration (stash.appscode.com/v1beta1; stash-api.md §3.2).

use crate::common::{BackupTarget, Driver, EmptyDirSettings, RetentionPolicy, TaskRef};
use crate::runtime::RuntimeSettings;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use stash_machines::backup_configuration::Phase;

/// What to back up, where to, and when. Its status (Stash's later API) says whether the
/// operator could set it up: `phase` and the `CronJobCreated` condition.
// kube's `printcolumn(...)` repeats `type_ = ".."` on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stash.appscode.com",
    version = "v1beta1",
    kind = "BackupConfiguration",
    plural = "backupconfigurations",
    singular = "backupconfiguration",
    namespaced,
    shortname = "bc",
    category = "stash",
    category = "appscode",
    category = "backup",
    label("app", "stash"),
    doc = "A scheduled backup of a target into a Repository (stash.appscode.com BackupConfiguration).",
    derive = "PartialEq",
    status = "BackupConfigurationStatus",
    printcolumn(name = "Task", type_ = "string", json_path = ".spec.task.name"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupConfigurationSpec {
    /// Cron schedule, copied verbatim into the trigger CronJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Backup driver; absent means `Restic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    /// The Repository (its namespace: this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<crate::common::RepositoryRef>,
    /// The Task; required for non-workload targets, ignored for workload (sidecar) targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRef>,
    /// The target; absent means a cluster/custom backup (host `host-0`, job model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<BackupTarget>,
    /// Retention policy applied after each backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policy: Option<RetentionPolicy>,
    /// Stop creating BackupSessions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Runtime settings of the backup pod/containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_settings: Option<RuntimeSettings>,
    /// The `tmp-dir` volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_dir: Option<EmptyDirSettings>,
    /// How many finished BackupSessions of this configuration are kept; older ones are deleted
    /// with their Jobs and Pods. Absent: the operator's `--backup-history-limit` (the later
    /// Stash spelling, accepted here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub backup_history_limit: Option<i32>,
    /// How long each of its sessions may take from its creation (later Stash, e.g. `2h`): it
    /// replaces the operator's `--session-deadline` for this configuration's sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_out: Option<String>,
    /// Retry a failed session (later Stash): a failed session is followed by a new one, at
    /// most `maxRetry` times, each `delay` after the one before failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_config: Option<crate::common::RetryConfig>,
    /// Later fields stash-rs keeps but does not act on yet (`hooks`, `interimVolumeTemplate`).
    #[serde(flatten)]
    pub not_yet: crate::common::NotYet,
}

/// Written by the operator alone (field manager `stash-operator`, server-side apply).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupConfigurationStatus {
    /// `Ready`, `NotReady` (a name held by an object stash did not create) or `Invalid` (the
    /// API server refused the trigger CronJob).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The generation the phase and conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `CronJobCreated`: `True` (reason `CronJobCreated` or `NoSchedule`) or `False` (reason
    /// `NameClash` or `InvalidBackupConfiguration`, the message says what to fix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl BackupConfigurationSpec {
    /// The name of the Repository it backs up into (empty when none is named).
    pub fn repository_name(&self) -> String {
        self.repository
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default()
    }

    /// The driver, `Restic` when absent.
    pub fn driver(&self) -> Driver {
        self.driver.unwrap_or_default()
    }
}
