//! Event reasons, as named constants (upstream's names where upstream had one).

/// The session started running (upstream's name, also used for the sidecar model).
pub const BACKUP_SESSION_RUNNING: &str = "BackupSessionJobCreated";
/// The session was skipped (paused configuration, overlap, or started too late).
pub const BACKUP_SESSION_SKIPPED: &str = "BackupSessionSkipped";
/// The session failed.
pub const BACKUP_SESSION_FAILED: &str = "BackupSessionFailedToExecute";
/// Every host backed up with a snapshot.
pub const BACKUP_SESSION_SUCCEEDED: &str = "SuccessfulBackup";
/// The restore started running.
pub const RESTORE_SESSION_RUNNING: &str = "RestoreSessionRunning";
/// The restore failed.
pub const RESTORE_SESSION_FAILED: &str = "RestoreSessionFailedToExecute";
/// Every host restored.
pub const RESTORE_SESSION_SUCCEEDED: &str = "RestoreSessionSucceeded";
/// Some host's outcome is unknown.
pub const RESTORE_SESSION_UNKNOWN: &str = "RestoreSessionUnknown";
/// An object stash would create or update holds the name already and is not stash's.
pub const NAME_CLASH: &str = "NameClash";
/// The API server refused for good what a BackupConfiguration asks for.
pub const INVALID_BACKUP_CONFIGURATION: &str = "InvalidBackupConfiguration";
/// A failed session will be followed by a new one (`retryConfig`).
pub const BACKUP_SESSION_RETRY_SCHEDULED: &str = "BackupSessionRetryScheduled";
/// The session that follows a failed one was created.
pub const BACKUP_SESSION_RETRIED: &str = "BackupSessionRetried";
/// A failed session with retries left is not followed (its configuration paused or gone).
pub const BACKUP_SESSION_NOT_RETRIED: &str = "BackupSessionNotRetried";
