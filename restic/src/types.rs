//! Typed forms of restic's `--json` output (restic 0.19.1) and of the inputs the wrapper takes.
use std::ffi::OsString;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The final `message_type: "summary"` line of `backup --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The new snapshot's full id (64 hex).
    pub snapshot_id: String,
    /// Files seen for the first time.
    pub files_new: u64,
    /// Files changed since the parent snapshot.
    pub files_changed: u64,
    /// Files unchanged since the parent snapshot.
    pub files_unmodified: u64,
    /// Directories seen for the first time.
    #[serde(default)]
    pub dirs_new: u64,
    /// Directories changed.
    #[serde(default)]
    pub dirs_changed: u64,
    /// Directories unchanged.
    #[serde(default)]
    pub dirs_unmodified: u64,
    /// Bytes added to the repository (before compression).
    pub data_added: u64,
    /// Bytes added to the repository after compression (restic ≥ 0.14).
    #[serde(default)]
    pub data_added_packed: u64,
    /// Files processed.
    pub total_files_processed: u64,
    /// Bytes processed (the backed-up data size).
    pub total_bytes_processed: u64,
    /// Seconds the backup took.
    pub total_duration: f64,
}

impl BackupSummary {
    /// The first 8 characters of the snapshot id (restic's `short_id`).
    pub fn short_id(&self) -> &str {
        short(&self.snapshot_id)
    }

    /// Parse the `summary` line out of `backup --json` output (other lines are ignored).
    pub fn from_output(stdout: &str) -> Result<Self> {
        let line = message_lines(stdout)
            .find(|(t, _)| t == "summary")
            .map(|(_, l)| l)
            .ok_or_else(|| Error::parse("backup", "no summary line in the output"))?;
        let s: BackupSummary =
            serde_json::from_str(line).map_err(|e| Error::parse("backup", e.to_string()))?;
        if s.snapshot_id.is_empty() {
            return Err(Error::parse("backup", "the summary has no snapshot id"));
        }
        Ok(s)
    }
}

/// What restic could not read during a backup that still made its snapshot (restic exit status
/// 3, "at least one source file could not be read"): the `item`s of restic's per-file `error`
/// messages of the archival phase (`{"message_type":"error","during":"archival","item":…}` on
/// stderr). The snapshot holds everything else; these items are missing from it (a directory
/// restic could not open is missing with its contents). Scan-phase errors (`"during":"scan"`,
/// restic's size estimate) are not counted: restic reports each item again when it archives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreadable {
    /// The first [`Unreadable::KEPT`] items, in restic's order (secrets scrubbed).
    pub paths: Vec<String>,
    /// How many items restic could not read, listed or not (0 when restic exited 3 without
    /// naming any).
    pub count: usize,
}

impl Unreadable {
    /// How many paths are kept: the count goes on, the list stops (a tree of a million
    /// unreadable files must not be held in memory or written into a status).
    pub const KEPT: usize = 10;

    pub(crate) fn push(&mut self, item: String) {
        self.count += 1;
        if self.paths.len() < Self::KEPT {
            self.paths.push(item);
        }
    }

    /// `1 file`, `3 files`, or `some files` when restic named none.
    pub fn files(&self) -> String {
        match self.count {
            0 => "some files".into(),
            1 => "1 file".into(),
            n => format!("{n} files"),
        }
    }

    /// The first `n` paths joined by `, `, with `, …` when there are more.
    pub fn list(&self, n: usize) -> String {
        let mut s = self
            .paths
            .iter()
            .take(n)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if self.count > n.min(self.paths.len()) {
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push('…');
        }
        s
    }
}

/// One changed snapshot of `tag --json`: restic rewrites a snapshot to change its tags, so its
/// id changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TagChanged {
    pub old_snapshot_id: String,
    pub new_snapshot_id: String,
}

impl TagChanged {
    pub(crate) fn list_from_output(stdout: &str) -> Result<Vec<Self>> {
        message_lines(stdout)
            .filter(|(t, _)| t == "changed")
            .map(|(_, l)| serde_json::from_str(l).map_err(|e| Error::parse("tag", e.to_string())))
            .collect()
    }
}

/// `restore --json` summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSummary {
    /// Files in the (filtered) snapshot.
    #[serde(default)]
    pub total_files: u64,
    /// Files (and directories) written.
    #[serde(default)]
    pub files_restored: u64,
    /// Files skipped (already up to date).
    #[serde(default)]
    pub files_skipped: u64,
    /// Files deleted (`--delete`).
    #[serde(default)]
    pub files_deleted: u64,
    /// Bytes in the (filtered) snapshot.
    #[serde(default)]
    pub total_bytes: u64,
    /// Bytes written.
    #[serde(default)]
    pub bytes_restored: u64,
    /// Bytes skipped.
    #[serde(default)]
    pub bytes_skipped: u64,
}

impl RestoreSummary {
    pub(crate) fn from_output(stdout: &str) -> Result<Self> {
        let line = message_lines(stdout)
            .find(|(t, _)| t == "summary")
            .map(|(_, l)| l)
            .ok_or_else(|| Error::parse("restore", "no summary line in the output"))?;
        serde_json::from_str(line).map_err(|e| Error::parse("restore", e.to_string()))
    }
}

/// `check --json` summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Errors found (0 = the repository is consistent).
    #[serde(default)]
    pub num_errors: u64,
    /// Pack files found damaged.
    #[serde(default)]
    pub broken_packs: Option<Vec<String>>,
    /// restic suggests `repair index`.
    #[serde(default)]
    pub suggest_repair_index: bool,
    /// restic suggests `prune`.
    #[serde(default)]
    pub suggest_prune: bool,
    /// The error messages restic printed (last lines of stderr, scrubbed).
    #[serde(skip)]
    pub errors: Vec<String>,
}

impl CheckReport {
    /// No errors were found.
    pub fn is_ok(&self) -> bool {
        self.num_errors == 0 && self.broken_packs.as_ref().is_none_or(Vec::is_empty)
    }

    pub(crate) fn from_output(stdout: &str) -> Option<Self> {
        message_lines(stdout)
            .find(|(t, _)| t == "summary")
            .and_then(|(_, l)| serde_json::from_str(l).ok())
    }
}

/// The statistics of one snapshot, as stored in it (restic ≥ 0.17).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotSummary {
    /// When the backup started.
    pub backup_start: Option<jiff::Timestamp>,
    /// When the backup ended.
    pub backup_end: Option<jiff::Timestamp>,
    /// See [`BackupSummary`].
    #[serde(default)]
    pub files_new: u64,
    /// See [`BackupSummary`].
    #[serde(default)]
    pub files_changed: u64,
    /// See [`BackupSummary`].
    #[serde(default)]
    pub files_unmodified: u64,
    /// See [`BackupSummary`].
    #[serde(default)]
    pub data_added: u64,
    /// See [`BackupSummary`].
    #[serde(default)]
    pub total_files_processed: u64,
    /// See [`BackupSummary`].
    #[serde(default)]
    pub total_bytes_processed: u64,
}

/// One snapshot, as `snapshots --json` and `forget --json` print it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Full id (64 hex).
    pub id: String,
    /// First 8 hex of the id.
    #[serde(default)]
    pub short_id: String,
    /// When the snapshot was taken.
    pub time: jiff::Timestamp,
    /// Parent snapshot id.
    #[serde(default)]
    pub parent: Option<String>,
    /// Root tree id.
    pub tree: String,
    /// Backed-up paths.
    #[serde(default)]
    pub paths: Vec<String>,
    /// `--host` of the backup.
    #[serde(default)]
    pub hostname: String,
    /// User that ran the backup.
    #[serde(default)]
    pub username: String,
    /// Its uid (omitted by restic when 0).
    #[serde(default)]
    pub uid: u32,
    /// Its gid (omitted by restic when 0).
    #[serde(default)]
    pub gid: u32,
    /// Tags (restic prints `null` or omits them when there are none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
    /// Exclude patterns of the backup.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub excludes: Vec<String>,
    /// restic version that wrote the snapshot.
    #[serde(default)]
    pub program_version: Option<String>,
    /// Backup statistics stored with the snapshot.
    #[serde(default)]
    pub summary: Option<SnapshotSummary>,
}

impl Snapshot {
    /// The 8-character short id (computed when restic did not print one).
    pub fn short(&self) -> &str {
        if self.short_id.is_empty() {
            short(&self.id)
        } else {
            &self.short_id
        }
    }

    pub(crate) fn list_from_output(command: &str, stdout: &str) -> Result<Vec<Self>> {
        let line = json_array_line(stdout)
            .ok_or_else(|| Error::parse(command, "no JSON array in the output"))?;
        serde_json::from_str(line).map_err(|e| Error::parse(command, e.to_string()))
    }
}

/// One group of `forget --json` output: the snapshots of one (host, paths, tags) group
/// that the policy keeps and removes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgetGroup {
    /// The group's host (grouping is by host and paths, restic's default).
    #[serde(default)]
    pub host: String,
    /// The group's paths.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub paths: Vec<String>,
    /// The group's tags (empty unless grouping by tags).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
    /// Snapshots kept.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub keep: Vec<Snapshot>,
    /// Snapshots removed.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub remove: Vec<Snapshot>,
}

/// What `forget` did, counted across groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ForgetOutcome {
    /// Snapshots kept (→ `snapshotCount`).
    pub kept: usize,
    /// Snapshots removed (→ `snapshotsRemovedOnLastCleanup`).
    pub removed: usize,
    /// Per-group detail.
    pub groups: Vec<ForgetGroup>,
}

impl ForgetOutcome {
    /// Parse `forget --json` output. Empty output (nothing to do) is an empty outcome.
    pub fn from_output(stdout: &str) -> Result<Self> {
        let Some(line) = json_array_line(stdout) else {
            if stdout.trim().is_empty() {
                return Ok(Self::default());
            }
            return Err(Error::parse("forget", "no JSON array in the output"));
        };
        let groups: Vec<ForgetGroup> =
            serde_json::from_str(line).map_err(|e| Error::parse("forget", e.to_string()))?;
        Ok(Self {
            kept: groups.iter().map(|g| g.keep.len()).sum(),
            removed: groups.iter().map(|g| g.remove.len()).sum(),
            groups,
        })
    }
}

/// `stats --json` output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Bytes (restore-size mode: the size of restoring every snapshot; raw-data mode: the
    /// size of the stored blobs).
    pub total_size: u64,
    /// Files (restore-size) or blobs (raw-data) counted.
    #[serde(default)]
    pub total_file_count: u64,
    /// Snapshots counted.
    #[serde(default)]
    pub snapshots_count: u64,
    /// raw-data mode: uncompressed blob size.
    #[serde(default)]
    pub total_uncompressed_size: Option<u64>,
}

impl Stats {
    pub(crate) fn from_output(stdout: &str) -> Result<Self> {
        let line = stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with('{'))
            .ok_or_else(|| Error::parse("stats", "no JSON object in the output"))?;
        serde_json::from_str(line).map_err(|e| Error::parse("stats", e.to_string()))
    }
}

/// `stats --mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatsMode {
    /// Size of restoring every snapshot (restic's default; what Stash reports as `size`).
    #[default]
    RestoreSize,
    /// Size of the unique, deduplicated files.
    FilesByContents,
    /// Size of the stored blobs (what the repository occupies before pack overhead).
    RawData,
}

impl StatsMode {
    pub(crate) fn flag(self) -> &'static str {
        match self {
            StatsMode::RestoreSize => "restore-size",
            StatsMode::FilesByContents => "files-by-contents",
            StatsMode::RawData => "raw-data",
        }
    }
}

/// A lock file of the repository (`cat lock <id> --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    /// The lock's id (set by the wrapper).
    #[serde(default)]
    pub id: String,
    /// When the lock was created or last refreshed.
    pub time: jiff::Timestamp,
    /// Exclusive lock (prune, forget, …)?
    #[serde(default)]
    pub exclusive: bool,
    /// Host of the locking process.
    #[serde(default)]
    pub hostname: String,
    /// User of the locking process.
    #[serde(default)]
    pub username: String,
    /// Pid of the locking process.
    #[serde(default)]
    pub pid: i64,
}

impl LockInfo {
    /// restic refreshes live locks every 5 minutes and considers one stale after 30 minutes.
    pub const STALE_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_secs(30 * 60);

    /// Stale if not refreshed for [`LockInfo::STALE_AFTER`] at `now`, or held by a process
    /// of `this_host` that no longer exists.
    pub fn is_stale(&self, now: jiff::Timestamp, this_host: Option<&str>) -> bool {
        if now.duration_since(self.time) > Self::STALE_AFTER {
            return true;
        }
        match this_host {
            Some(h) if h == self.hostname && self.pid > 0 => {
                !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
            }
            _ => false,
        }
    }
}

/// A retention policy (stash-api.md §2.2) → `forget` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// `--keep-last` (only when > 0).
    pub keep_last: i64,
    /// `--keep-hourly`.
    pub keep_hourly: i64,
    /// `--keep-daily`.
    pub keep_daily: i64,
    /// `--keep-weekly`.
    pub keep_weekly: i64,
    /// `--keep-monthly`.
    pub keep_monthly: i64,
    /// `--keep-yearly`.
    pub keep_yearly: i64,
    /// `--keep-tag T`, repeated.
    pub keep_tags: Vec<String>,
    /// `--prune`.
    pub prune: bool,
    /// `--dry-run`.
    pub dry_run: bool,
}

impl RetentionPolicy {
    /// No keep rule is set. restic 0.19 refuses `forget` without a policy, so the wrapper
    /// then passes `--keep-last unlimited` (keep everything), which is what an empty policy
    /// means; the outcome still counts the kept snapshots.
    pub fn is_empty(&self) -> bool {
        [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ]
        .iter()
        .all(|n| *n <= 0)
            && self.keep_tags.iter().all(|t| t.is_empty())
    }

    /// The `forget` flags for this policy (without `--json`/`--quiet`).
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        for (flag, n) in [
            ("--keep-last", self.keep_last),
            ("--keep-hourly", self.keep_hourly),
            ("--keep-daily", self.keep_daily),
            ("--keep-weekly", self.keep_weekly),
            ("--keep-monthly", self.keep_monthly),
            ("--keep-yearly", self.keep_yearly),
        ] {
            if n > 0 {
                a.push(flag.into());
                a.push(n.to_string().into());
            }
        }
        for t in self.keep_tags.iter().filter(|t| !t.is_empty()) {
            a.push("--keep-tag".into());
            a.push(t.into());
        }
        if self.is_empty() {
            a.push("--keep-last".into());
            a.push("unlimited".into());
        }
        if self.prune {
            a.push("--prune".into());
        }
        if self.dry_run {
            a.push("--dry-run".into());
        }
        a
    }
}

/// `%.3f TiB|GiB|MiB|KiB` or `N B`, each unit used only when the size is strictly greater
/// than 1024^n (Stash's `formatBytes`).
pub fn format_size(bytes: u64) -> String {
    const K: u64 = 1 << 10;
    let b = bytes as f64;
    if bytes > K.pow(4) {
        format!("{:.3} TiB", b / K.pow(4) as f64)
    } else if bytes > K.pow(3) {
        format!("{:.3} GiB", b / K.pow(3) as f64)
    } else if bytes > K.pow(2) {
        format!("{:.3} MiB", b / K.pow(2) as f64)
    } else if bytes > K {
        format!("{:.3} KiB", b / K as f64)
    } else {
        format!("{bytes} B")
    }
}

/// `m:ss`, or `h:mm:ss` from one hour on (Stash's `formatSeconds`).
pub fn format_processing_time(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

pub(crate) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `(message_type, line)` for every JSON object line of `stdout`.
pub(crate) fn message_lines(stdout: &str) -> impl Iterator<Item = (String, &str)> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| {
            #[derive(Deserialize)]
            struct M {
                message_type: String,
            }
            serde_json::from_str::<M>(l)
                .ok()
                .map(|m| (m.message_type, l))
        })
}

fn json_array_line(stdout: &str) -> Option<&str> {
    stdout.lines().map(str::trim).find(|l| l.starts_with('['))
}

fn null_as_empty<'de, D, T>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from restic 0.19.1.
    const BACKUP: &str = r#"{"message_type":"error","error":{"message":"open /x: permission denied"},"during":"archival","item":"/x"}
{"message_type":"summary","files_new":1,"files_changed":0,"files_unmodified":2,"dirs_new":0,"dirs_changed":3,"dirs_unmodified":1,"data_blobs":1,"tree_blobs":4,"data_added":2086,"data_added_packed":1390,"total_files_processed":3,"total_bytes_processed":10,"total_duration":0.726453698,"backup_start":"2026-11-24T22:37:30.538765013Z","backup_end":"2026-11-24T22:37:31.26521871Z","snapshot_id":"44b2170f01ffc78978d4ec4c233a0eeb725825074e4a0b937121fa2618cd7c5b"}
"#;
    const SNAPSHOTS: &str = r#"[{"time":"2026-11-24T22:37:29.790875085Z","tree":"5e93b0a71350860ae74182d7cb0c61316855d5e2d18e67c8db27576f979134db","paths":["/tmp/rx/src"],"hostname":"host-0","username":"root","program_version":"restic 0.19.1","summary":{"backup_start":"2026-11-24T22:37:29.790875085Z","backup_end":"2026-11-24T22:37:30.511527113Z","files_new":2,"files_changed":0,"files_unmodified":0,"dirs_new":4,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":2,"tree_blobs":5,"data_added":2100,"data_added_packed":1695,"total_files_processed":2,"total_bytes_processed":6},"id":"ca800e6db8f7f506d03bb0ee34315b7c7c832c9dc5e6f63d02b17fb19c5b18a0","short_id":"ca800e6d"},{"time":"2026-11-25T00:37:30.538765013+02:00","parent":"ca800e6db8f7f506d03bb0ee34315b7c7c832c9dc5e6f63d02b17fb19c5b18a0","tree":"af35bd2c07bebdd47cd75394590e7895710f371930b1090d1b38138cabc41258","paths":["/a","/b"],"hostname":"host-1","username":"app","uid":1000,"gid":2000,"tags":["daily","x"],"program_version":"restic 0.19.1","id":"44b2170f01ffc78978d4ec4c233a0eeb725825074e4a0b937121fa2618cd7c5b","short_id":"44b2170f"}]"#;
    const FORGET: &str = r#"[{"tags":null,"host":"host-0","paths":["/tmp/rx/src"],"keep":[{"time":"2026-11-24T22:37:30.538765013Z","tree":"af35","paths":["/tmp/rx/src"],"hostname":"host-0","username":"root","id":"44b2170f01ffc78978d4ec4c233a0eeb725825074e4a0b937121fa2618cd7c5b","short_id":"44b2170f"}],"remove":[{"time":"2026-11-24T22:37:29.790875085Z","tree":"5e93","paths":["/tmp/rx/src"],"hostname":"host-0","username":"root","id":"ca800e6db8f7f506d03bb0ee34315b7c7c832c9dc5e6f63d02b17fb19c5b18a0","short_id":"ca800e6d"}],"reasons":[]},{"tags":null,"host":"host-1","paths":["/d"],"keep":[{"time":"2026-11-24T22:37:30Z","tree":"af35","paths":["/d"],"hostname":"host-1","id":"aaaa2170f01ffc78978d4ec4c233a0eeb725825074e4a0b937121fa2618cd7c5b"},{"time":"2026-11-24T22:37:31Z","tree":"af36","paths":["/d"],"hostname":"host-1","id":"bbbb2170f01ffc78978d4ec4c233a0eeb725825074e4a0b937121fa2618cd7c5b"}],"remove":null,"reasons":[]}]"#;

    #[test]
    fn parses_backup_summary() {
        let s = BackupSummary::from_output(BACKUP).unwrap();
        assert_eq!(
            s.snapshot_id,
            "44b2170f01ffc78978d4ec4c233a0eeb725825074e4a0b937121fa2618cd7c5b"
        );
        assert_eq!(s.short_id(), "44b2170f");
        assert_eq!(
            (s.files_new, s.files_changed, s.files_unmodified),
            (1, 0, 2)
        );
        assert_eq!(
            (
                s.total_files_processed,
                s.total_bytes_processed,
                s.data_added
            ),
            (3, 10, 2086)
        );
        assert!((s.total_duration - 0.726453698).abs() < 1e-9);
        assert!(BackupSummary::from_output("").is_err());
        assert!(
            BackupSummary::from_output(r#"{"message_type":"status","percent_done":0.5}"#).is_err()
        );
    }

    #[test]
    fn parses_snapshots() {
        let v = Snapshot::list_from_output("snapshots", SNAPSHOTS).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].short(), "ca800e6d");
        assert_eq!((v[0].uid, v[0].gid), (0, 0));
        assert!(v[0].tags.is_empty() && v[0].parent.is_none());
        assert_eq!(v[0].summary.as_ref().unwrap().files_new, 2);
        assert_eq!(v[1].paths, ["/a", "/b"]);
        assert_eq!(
            (
                v[1].hostname.as_str(),
                v[1].username.as_str(),
                v[1].uid,
                v[1].gid
            ),
            ("host-1", "app", 1000, 2000)
        );
        assert_eq!(v[1].tags, ["daily", "x"]);
        assert_eq!(
            v[1].time.to_string(),
            "2026-11-24T22:37:30.538765013Z",
            "offsets are normalised"
        );
        assert!(
            Snapshot::list_from_output("snapshots", "[]")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn parses_forget_groups() {
        let o = ForgetOutcome::from_output(FORGET).unwrap();
        assert_eq!((o.kept, o.removed), (3, 1));
        assert_eq!(o.groups.len(), 2);
        assert_eq!(o.groups[0].remove[0].short(), "ca800e6d");
        assert_eq!(o.groups[1].keep[0].short(), "aaaa2170");
        assert!(o.groups[1].remove.is_empty() && o.groups[0].tags.is_empty());
        assert_eq!(
            ForgetOutcome::from_output("").unwrap(),
            ForgetOutcome::default()
        );
    }

    #[test]
    fn parses_stats_check_restore() {
        let s = Stats::from_output(
            "{\"total_size\":16,\"total_file_count\":13,\"snapshots_count\":2}\n",
        )
        .unwrap();
        assert_eq!(
            (s.total_size, s.total_file_count, s.snapshots_count),
            (16, 13, 2)
        );
        let c = CheckReport::from_output(
            r#"{"message_type":"summary","num_errors":0,"broken_packs":null,"suggest_repair_index":false,"suggest_prune":false}"#,
        )
        .unwrap();
        assert!(c.is_ok());
        let c = CheckReport::from_output(
            r#"{"message_type":"summary","num_errors":2,"broken_packs":["ab"]}"#,
        )
        .unwrap();
        assert!(!c.is_ok());
        let r = RestoreSummary::from_output(
            r#"{"message_type":"summary","total_files":7,"files_restored":7,"total_bytes":10,"bytes_restored":10}"#,
        )
        .unwrap();
        assert_eq!(
            (
                r.total_files,
                r.files_restored,
                r.total_bytes,
                r.bytes_restored
            ),
            (7, 7, 10, 10)
        );
        let l: LockInfo = serde_json::from_str(
            "{\n  \"time\": \"2026-11-24T22:49:19.421895501Z\",\n  \"exclusive\": false,\n  \"hostname\": \"vm\",\n  \"username\": \"root\",\n  \"pid\": 25199\n}",
        )
        .unwrap();
        let t = l.time;
        assert!(!l.is_stale(t + jiff::SignedDuration::from_secs(60), None));
        assert!(l.is_stale(t + jiff::SignedDuration::from_secs(31 * 60), None));
    }

    #[test]
    fn forget_flags() {
        let p = RetentionPolicy {
            keep_last: 5,
            keep_hourly: 0,
            keep_daily: 7,
            keep_weekly: -1,
            keep_monthly: 12,
            keep_yearly: 1,
            keep_tags: vec!["a".into(), "".into(), "b".into()],
            prune: true,
            dry_run: true,
        };
        let args: Vec<String> = p
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--keep-last",
                "5",
                "--keep-daily",
                "7",
                "--keep-monthly",
                "12",
                "--keep-yearly",
                "1",
                "--keep-tag",
                "a",
                "--keep-tag",
                "b",
                "--prune",
                "--dry-run"
            ]
        );
        let only_tag = RetentionPolicy {
            keep_tags: vec!["t".into()],
            ..Default::default()
        };
        assert!(!only_tag.is_empty());
        assert_eq!(only_tag.args(), ["--keep-tag", "t"]);
        let empty = RetentionPolicy {
            prune: true,
            ..Default::default()
        };
        assert!(empty.is_empty());
        assert_eq!(empty.args(), ["--keep-last", "unlimited", "--prune"]);
    }

    #[test]
    fn size_formatting_boundaries() {
        let k: u64 = 1024;
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1024), "1024 B");
        assert_eq!(format_size(1025), "1.001 KiB");
        assert_eq!(format_size(1536), "1.500 KiB");
        assert_eq!(format_size(k * k), "1024.000 KiB");
        assert_eq!(format_size(k * k + 1), "1.000 MiB");
        assert_eq!(format_size(k.pow(3)), "1024.000 MiB");
        assert_eq!(format_size(k.pow(3) + 1), "1.000 GiB");
        assert_eq!(format_size(5 * k.pow(3) / 2), "2.500 GiB");
        assert_eq!(format_size(k.pow(4)), "1024.000 GiB");
        assert_eq!(format_size(k.pow(4) + 1), "1.000 TiB");
        assert_eq!(format_size(3 * k.pow(5)), "3072.000 TiB");
        assert_eq!(format_size(u64::MAX), "16777216.000 TiB");
    }

    #[test]
    fn processing_time_formatting() {
        assert_eq!(format_processing_time(0), "0:00");
        assert_eq!(format_processing_time(7), "0:07");
        assert_eq!(format_processing_time(59), "0:59");
        assert_eq!(format_processing_time(60), "1:00");
        assert_eq!(format_processing_time(3599), "59:59");
        assert_eq!(format_processing_time(3600), "1:00:00");
        assert_eq!(format_processing_time(3 * 3600 + 5 * 60 + 9), "3:05:09");
        assert_eq!(format_processing_time(100 * 3600), "100:00:00");
    }
}
