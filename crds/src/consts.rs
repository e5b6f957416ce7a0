//! Well-known API groups, labels, annotations and finalizers (stash-api.md §3, §5.5, §5.6, §8.1, §12).

/// API group of the Stash kinds.
pub const GROUP: &str = "stash.appscode.com";
/// API group of AppBinding.
pub const APPCATALOG_GROUP: &str = "appcatalog.appscode.com";
/// API group of the aggregated Snapshot API.
pub const SNAPSHOT_GROUP: &str = "repositories.stash.appscode.com";

/// Label every Stash CRD carries in its metadata (`app: stash`).
pub const CRD_APP_LABEL: &str = "app";
/// Value of [`CRD_APP_LABEL`] on the Stash CRDs.
pub const CRD_APP_STASH: &str = "stash";
/// Value of [`CRD_APP_LABEL`] on the AppBinding CRD.
pub const CRD_APP_CATALOG: &str = "catalog";

/// Label a BackupSession carries naming its BackupConfiguration.
pub const BACKUP_CONFIGURATION_LABEL: &str = "stash.appscode.com/backup-configuration";
/// The pre-May-2019 spelling of [`BACKUP_CONFIGURATION_LABEL`] (used by the concept docs; ignored by the code).
pub const LEGACY_BACKUP_CONFIGURATION_LABEL: &str = "backup-configuration";
/// Offshoot label naming the component that generated an object.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// [`COMPONENT_LABEL`] value for BackupConfiguration-derived objects.
pub const COMPONENT_BACKUP: &str = "stash-backup";
/// [`COMPONENT_LABEL`] value for RestoreSession-derived objects.
pub const COMPONENT_RESTORE: &str = "stash-restore";
/// Offshoot label naming the manager.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// [`MANAGED_BY_LABEL`] value.
pub const MANAGED_BY_STASH: &str = "stash.appscode.com";
/// Label on Jobs: `"true"` = delete the Job once it succeeded, `"false"` = keep it.
pub const DELETE_JOB_ON_COMPLETION_LABEL: &str = "stash.appscode.com/delete-job-on-completion";
/// Label the Snapshot API puts on every Snapshot, naming its Repository.
pub const SNAPSHOT_REPOSITORY_LABEL: &str = "repository";
/// Label marking a legacy (v1alpha1 sidecar-created) Repository.
pub const LEGACY_RESTIC_LABEL: &str = "restic";
/// Label on legacy Repositories: workload kind.
pub const LEGACY_WORKLOAD_KIND_LABEL: &str = "workload-kind";
/// Label on legacy Repositories: workload name.
pub const LEGACY_WORKLOAD_NAME_LABEL: &str = "workload-name";
/// Label on legacy StatefulSet Repositories: pod name.
pub const LEGACY_POD_NAME_LABEL: &str = "pod-name";
/// Label on legacy DaemonSet Repositories: node name.
pub const LEGACY_NODE_NAME_LABEL: &str = "node-name";

/// Workload annotation: JSON of the last applied BackupConfiguration.
pub const LAST_APPLIED_BACKUP_CONFIGURATION_ANNOTATION: &str =
    "stash.appscode.com/last-applied-backupconfiguration";
/// Workload annotation: JSON of the last applied RestoreSession.
pub const LAST_APPLIED_RESTORE_SESSION_ANNOTATION: &str =
    "stash.appscode.com/last-applied-restoresession";
/// Pod-template annotation: FNV-64a hash (decimal) of the applied BackupConfiguration spec.
pub const LAST_APPLIED_BACKUP_CONFIGURATION_HASH_ANNOTATION: &str =
    "stash.appscode.com/last-applied-backupconfiguration-hash";
/// Pod-template annotation: FNV-64a hash (decimal) of the applied RestoreSession spec.
pub const LAST_APPLIED_RESTORE_SESSION_HASH_ANNOTATION: &str =
    "stash.appscode.com/last-applied-restoresession-hash";
/// Legacy workload annotation: JSON of the last applied Restic.
pub const LEGACY_LAST_APPLIED_CONFIGURATION_ANNOTATION: &str =
    "restic.appscode.com/last-applied-configuration";
/// Legacy pod-template annotation: hash of the applied Restic.
pub const LEGACY_RESOURCE_HASH_ANNOTATION: &str = "restic.appscode.com/resource-hash";
/// Legacy workload annotation: operator image tag.
pub const LEGACY_TAG_ANNOTATION: &str = "stash.appscode.com/tag";

/// Default-backup annotation: name of the BackupConfigurationTemplate.
pub const BACKUP_TEMPLATE_ANNOTATION: &str = "stash.appscode.com/backup-template";
/// Later Stash: the BackupBlueprint of a default backup (instead of a template).
pub const BACKUP_BLUEPRINT_ANNOTATION: &str = "stash.appscode.com/backup-blueprint";
/// Later Stash: the directories to back up (the later name of `target-directories`).
pub const TARGET_PATHS_ANNOTATION: &str = "stash.appscode.com/target-paths";
/// Later Stash: this target's schedule, over the blueprint's.
pub const SCHEDULE_ANNOTATION: &str = "stash.appscode.com/schedule";
/// Later Stash: `params.stash.appscode.com/<name>: <value>` sets a parameter of the Task.
pub const PARAMS_ANNOTATION_PREFIX: &str = "params.stash.appscode.com/";
/// Default-backup annotation: comma-separated directories to back up.
pub const TARGET_DIRECTORIES_ANNOTATION: &str = "stash.appscode.com/target-directories";
/// Default-backup annotation (workloads): `vol1:/a,vol2:/b`.
pub const VOLUME_MOUNTS_ANNOTATION: &str = "stash.appscode.com/volume-mounts";
/// Default-backup annotation (PVCs): the mount path of the PVC.
pub const MOUNT_PATH_ANNOTATION: &str = "stash.appscode.com/mountpath";

/// Finalizer on BackupConfigurations and RestoreSessions.
pub const STASH_FINALIZER: &str = "stash.appscode.com";
/// Finalizer on Repositories.
pub const REPOSITORY_FINALIZER: &str = "stash";

/// The environment variable that names, in every container of a backup Job, the BackupSession
/// its steps work for (a stash-rs addition: a step reports the locks in its way there).
pub const BACKUP_SESSION_ENV: &str = "STASH_BACKUP_SESSION";
