//! `<outputDir>/output.json` (stash-api.md §7.2): what a backup or restore step hands to
//! `update-status`.
//!
//! Difference from upstream (decision 1): an errored entry carries its hostname and phase
//! `Failed`, not only `error`.
use std::path::Path;

use serde::{Deserialize, Serialize};
use stash_crds::{backup_session::HostBackupStats, restore_session::HostRestoreStats};

/// The file's name inside the output directory.
pub const FILE: &str = "output.json";

/// Repository statistics after a backup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryStats {
    /// `restic check` found no errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<bool>,
    /// Human size (`"10.123 MiB"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Snapshots in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<i32>,
    /// Snapshots removed by the retention policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots_removed_on_last_cleanup: Option<i32>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// Backup entries (one per host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_backup_stats: Vec<HostBackupStats>,
    /// Restore entries (one per host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_restore_stats: Vec<HostRestoreStats>,
    /// Repository statistics (backups only, on success; a figure whose step failed is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<RepositoryStats>,
    /// Follow-up steps (check, forget, stats) that failed after the snapshots were taken: the
    /// host still succeeded, and `update-status` publishes each as a Warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The stale restic locks removed on the way (host, pid, age), each a Warning event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_locks: Vec<String>,
}

impl Output {
    /// Whether any entry carries an error or a `Failed` phase.
    pub fn has_error(&self) -> bool {
        self.host_backup_stats.iter().any(|h| h.is_failed())
            || self.host_restore_stats.iter().any(|h| h.is_failed())
    }

    /// Write to `<dir>/output.json` (creating `dir`).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!("{FILE}.tmp"));
        std::fs::write(&tmp, data)?;
        std::fs::rename(tmp, dir.join(FILE))
    }

    /// Read `<dir>/output.json`.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let path = dir.join(FILE);
        let data = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        serde_json::from_slice(&data).map_err(|e| format!("parse {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stash_crds::backup_session::HostPhase;

    #[test]
    fn round_trip_and_wire_names() {
        let dir = tempfile_dir();
        let o = Output {
            host_backup_stats: vec![HostBackupStats {
                hostname: Some("host-0".into()),
                phase: Some(HostPhase::Failed),
                error: Some("boom".into()),
                ..Default::default()
            }],
            repository: Some(RepositoryStats {
                integrity: Some(true),
                snapshot_count: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        o.write(&dir).expect("write");
        let text = std::fs::read_to_string(dir.join(FILE)).expect("read");
        assert!(
            text.contains("\"hostBackupStats\"") && text.contains("\"snapshotCount\""),
            "{text}"
        );
        assert_eq!(Output::read(&dir).expect("read"), o);
        assert!(o.has_error());
        let upstream: Output =
            serde_json::from_str(r#"{"hostBackupStats":[{"error":"x"}]}"#).expect("upstream form");
        assert!(upstream.has_error());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "stash-output-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
