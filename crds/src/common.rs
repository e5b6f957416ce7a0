//! Field types shared by several kinds (stash-api.md §2.2–§2.5).

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a backup or restore is performed (`spec.driver`); absent means `Restic`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Driver {
    /// Back up files with restic (sidecar, init-container or Job).
    #[default]
    Restic,
    /// Take CSI VolumeSnapshots (not supported by stash-rs; a session asking for it fails).
    VolumeSnapshotter,
}

/// Reference to a target object (`spec.target.ref`). Matching compares all three fields exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// API version of the target, e.g. `apps/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind of the target, e.g. `Deployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the target (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace of the target (later Stash): the object's own namespace, or absent. A target
    /// in another namespace is refused at admission (docs/differences.md §46).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl TargetRef {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.api_version.is_none()
            && self.kind.is_none()
            && self.name.is_none()
            && self.namespace.is_none()
    }
}

/// Reference to a Repository (`spec.repository`): its name and, in later Stash's spelling,
/// its namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct RepositoryRef {
    /// Name of the Repository.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Namespace of the Repository (later Stash): the object's own namespace, or absent. A
    /// Repository in another namespace is refused at admission (docs/differences.md §46).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Later Stash fields stash-rs keeps but does not act on yet (hooks, an interim volume): an
/// object in the schema, so nothing is pruned; admission refuses one that is set, with the
/// reason (docs/differences.md §46).
pub type Unsupported = Option<serde_json::Value>;

/// The later fields of a BackupConfiguration, RestoreSession and BackupBlueprint that stash-rs
/// keeps but does not act on everywhere yet: hooks never (refused), an interim volume for the
/// job model only (the Job's `/tmp`; refused elsewhere).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotYet {
    /// Hooks (actions before and after a backup or restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::common::any_object")]
    pub hooks: Unsupported,
    /// A volume template for the data on its way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::common::any_object")]
    pub interim_volume_template: Unsupported,
}

impl NotYet {
    /// `interimVolumeTemplate` as the claim it describes (`None`: not set, or not a claim —
    /// admission refuses that).
    pub fn interim_volume(&self) -> Option<k8s_openapi::api::core::v1::PersistentVolumeClaim> {
        self.interim_volume_template
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
    }
}

/// `x-kubernetes-preserve-unknown-fields` object schema for [`Unsupported`] fields.
pub fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// What a BackupConfiguration backs up (`spec.target`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTarget {
    /// The target object.
    #[serde(rename = "ref", default, skip_serializing_if = "TargetRef::is_empty")]
    pub target_ref: TargetRef,
    /// Directories to back up (the mid-2019 spelling; see `paths`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<String>,
    /// Paths to back up: the later spelling of `directories` (Stash v0.9.0 on). Both are one
    /// list to stash-rs (`BackupTarget::backup_paths`); writing both with different values is
    /// refused at admission.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Patterns of files not to back up (restic `--exclude`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// The name the target's data is stored under in the repository (later Stash): the host
    /// name itself, or the prefix of a StatefulSet's `<alias>-<ordinal>` and a DaemonSet's
    /// `<alias>-<node>` ([`stash_machines::names::host_name`]). Lets several targets share
    /// one repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Extra arguments to `restic backup` (later Stash), from an allow-list
    /// (`stash_core::args`): e.g. `--one-file-system`, `--exclude-larger-than=1G`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Volumes of the target to mount into the backup container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<core::VolumeMount>,
    /// Number of replicas (VolumeSnapshotter driver only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// VolumeSnapshotClass name (VolumeSnapshotter driver only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_class_name: Option<String>,
}

impl BackupTarget {
    /// The paths to back up, in whichever spelling the manifest used: `directories` (mid-2019)
    /// or `paths` (later). Admission refuses a manifest whose two lists differ.
    pub fn backup_paths(&self) -> &[String] {
        if self.directories.is_empty() {
            &self.paths
        } else {
            &self.directories
        }
    }
}

/// Where a RestoreSession restores to (`spec.target`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTarget {
    /// The target object.
    #[serde(rename = "ref", default, skip_serializing_if = "TargetRef::is_empty")]
    pub target_ref: TargetRef,
    /// The name the target's hosts restore as (later Stash; as on a BackupTarget): the
    /// default `sourceHost` and the names `targetHosts` match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Extra arguments to `restic restore` (later Stash), from an allow-list
    /// (`stash_core::args`): e.g. `--verify`, `--overwrite=if-changed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Volumes of the target to mount into the restore container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<core::VolumeMount>,
    /// Number of hosts to restore (with `volumeClaimTemplates`: one Job per ordinal); default 1;
    /// at most 5,000 (`stash_machines::restore_session::MAX_HOSTS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 5000))]
    pub replicas: Option<i32>,
    /// PVCs to create and restore into; `${POD_ORDINAL}` is substituted per ordinal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::claim_templates")]
    pub volume_claim_templates: Vec<core::PersistentVolumeClaim>,
    /// What each host restores: the later place of `spec.rules` (Stash v0.9.0 on). Both are one
    /// list to stash-rs (`RestoreSessionSpec::restore_rules`); writing both with different
    /// values is refused at admission.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<crate::restore_session::Rule>,
}

/// How failed sessions are retried (`spec.retryConfig`, later Stash).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryConfig {
    /// How many times a failed session is followed by a new one; absent means 1. At most
    /// [`RetryConfig::MAX_RETRY`] (refused at admission above that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_retry: Option<i32>,
    /// How long after a failure the next session is created (`30s`, `2m`, `1h`); absent:
    /// at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
}

impl RetryConfig {
    /// The most retries a configuration may ask for: each retry is a session of its own, and a
    /// failing target is not helped by a hundred more.
    pub const MAX_RETRY: i32 = 100;

    /// `maxRetry`, 1 when absent.
    pub fn max_retry(&self) -> i32 {
        self.max_retry.unwrap_or(1)
    }
}

/// A named parameter (`params[]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Param {
    /// Variable name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// Reference to a Task with parameters (`spec.task`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskRef {
    /// Name of the (cluster-scoped) Task.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Parameters overriding the Task steps' params.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
}

/// One step of a Task: a Function with parameters (`spec.steps[]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FunctionRef {
    /// Name of the (cluster-scoped) Function.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Step parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
}

/// The `tmp-dir` emptyDir of every Stash container (`spec.tempDir`).
///
/// The concept docs write `size`/`disableCache`; those are not the field names and are dropped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirSettings {
    /// Storage medium (`""` or `Memory`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    /// Size limit of the emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
    /// Disable the restic cache (`--no-cache`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_caching: bool,
}

impl EmptyDirSettings {
    /// Whether the restic cache is enabled (`ENABLE_CACHE`).
    pub fn enable_cache(&self) -> bool {
        !self.disable_caching
    }

    /// The `tmp-dir` emptyDir volume source.
    pub fn to_empty_dir(&self) -> core::EmptyDirVolumeSource {
        core::EmptyDirVolumeSource {
            medium: self.medium.clone(),
            size_limit: self.size_limit.clone(),
        }
    }
}

/// Which snapshots restic `forget` keeps (`spec.retentionPolicy`). Counts ≤ 0 mean unset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    /// Name of the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `--keep-last N`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_last: Option<i32>,
    /// `--keep-hourly N`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_hourly: Option<i32>,
    /// `--keep-daily N`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_daily: Option<i32>,
    /// `--keep-weekly N`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_weekly: Option<i32>,
    /// `--keep-monthly N`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_monthly: Option<i32>,
    /// `--keep-yearly N`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_yearly: Option<i32>,
    /// `--keep-tag T` (repeated)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<String>,
    /// `--prune`
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prune: bool,
    /// `--dry-run`
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl RetentionPolicy {
    /// The restic `forget` flags of this policy, each flag and value a separate argument:
    /// `--keep-last/-hourly/-daily/-weekly/-monthly/-yearly N` (only when > 0), `--keep-tag T`
    /// per tag, `--prune`, `--dry-run`.
    pub fn forget_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (flag, n) in [
            ("--keep-last", self.keep_last),
            ("--keep-hourly", self.keep_hourly),
            ("--keep-daily", self.keep_daily),
            ("--keep-weekly", self.keep_weekly),
            ("--keep-monthly", self.keep_monthly),
            ("--keep-yearly", self.keep_yearly),
        ] {
            if let Some(n) = n.filter(|n| *n > 0) {
                args.push(flag.to_owned());
                args.push(n.to_string());
            }
        }
        for tag in &self.keep_tags {
            args.push("--keep-tag".to_owned());
            args.push(tag.clone());
        }
        if self.prune {
            args.push("--prune".to_owned());
        }
        if self.dry_run {
            args.push("--dry-run".to_owned());
        }
        args
    }

    /// True when no keep rule is set (restic `forget` would then keep nothing).
    pub fn keeps_nothing(&self) -> bool {
        self.forget_args().iter().all(|a| !a.starts_with("--keep"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forget_args_map_one_to_one() {
        let p = RetentionPolicy {
            name: Some("keep-last-5".into()),
            keep_last: Some(5),
            keep_hourly: Some(0),
            keep_daily: Some(7),
            keep_weekly: None,
            keep_monthly: Some(-1),
            keep_yearly: Some(2),
            keep_tags: vec!["a".into(), "b".into()],
            prune: true,
            dry_run: true,
        };
        assert_eq!(
            p.forget_args(),
            [
                "--keep-last",
                "5",
                "--keep-daily",
                "7",
                "--keep-yearly",
                "2",
                "--keep-tag",
                "a",
                "--keep-tag",
                "b",
                "--prune",
                "--dry-run"
            ]
        );
        assert!(!p.keeps_nothing());
        assert!(RetentionPolicy::default().forget_args().is_empty());
        assert!(
            RetentionPolicy {
                prune: true,
                ..Default::default()
            }
            .keeps_nothing()
        );
    }

    #[test]
    fn driver_and_temp_dir_wire_forms() {
        assert_eq!(
            serde_json::to_string(&Driver::VolumeSnapshotter).unwrap(),
            "\"VolumeSnapshotter\""
        );
        let t: EmptyDirSettings = serde_json::from_str(
            r#"{"medium":"Memory","sizeLimit":"2Gi","size":"1Gi","disableCache":true}"#,
        )
        .unwrap();
        assert_eq!(t.size_limit, Some(Quantity("2Gi".into())));
        assert!(t.enable_cache());
        assert_eq!(t.to_empty_dir().medium.as_deref(), Some("Memory"));
    }
}

/// A lock of another host that stood in an agent's way (a stash-rs addition): reported by the
/// agent on its session (`status.blockingLocks`, its own field), judged by the operator
/// (`status.lockDecisions`). See docs/sessions.md "Locks".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockingLock {
    /// restic's id of the lock file.
    pub id: String,
    /// The hostname restic wrote into the lock (an agent's pod name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The holder's pid on that host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// Whether the lock is exclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive: Option<bool>,
    /// When the lock was created or last refreshed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// The reason of a lock kept because a pod of its hostname exists (judged again while it is
/// reported: the pod may go).
pub const HOLDER_RUNNING: &str = "HolderRunning";

/// The operator's decision on a reported lock (a stash-rs addition).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockDecision {
    /// The lock's id (as reported).
    pub id: String,
    /// `Removed` (its holder was dead) or `Kept`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Why it was kept (`HolderRunning`, `UnknownHolder`, `HostnameTruncated`,
    /// `NotProvenStale`), or what was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A session status whose agents report the locks in their way (`blockingLocks`) and whose
/// operator decides on them (`lockDecisions`).
pub trait ReportsLocks {
    /// The locks the agents report.
    fn blocking_locks(&self) -> &[BlockingLock];
    /// The operator's decisions.
    fn lock_decisions(&self) -> &[LockDecision];

    /// The reported locks the operator is still to judge: those it has not decided on, and
    /// those it kept because their holder's pod lived (it may die while the agent waits).
    fn undecided_locks(&self) -> Vec<&BlockingLock> {
        self.blocking_locks()
            .iter()
            .filter(|l| {
                !l.id.is_empty()
                    && !self
                        .lock_decisions()
                        .iter()
                        .any(|d| d.id == l.id && d.reason.as_deref() != Some(HOLDER_RUNNING))
            })
            .collect()
    }
}
