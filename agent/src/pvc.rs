//! `stash backup-pvc` and `stash restore-pvc` (stash-api.md §11.1, §7.2): the first step of the
//! `pvc-backup` / `pvc-restore` Tasks. They talk to restic only (no Kubernetes API) and hand
//! their outcome to `update-status` through `<output-dir>/output.json`; a failure is written
//! there as a `Failed` entry with the error and the command exits 0 so `update-status` runs.
use std::{path::PathBuf, time::Instant};

use stash_crds::{
    backup_session::{FileStats, HostBackupStats, HostPhase, SnapshotStats},
    duration::GoDuration,
    restore_session::{HostPhase as RestorePhase, HostRestoreStats},
};
use stash_restic as restic;

use stash_core::jobs::output::{Output, RepositoryStats};

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("not a boolean: {s:?}")),
    }
}

/// The repository flags every job-model command shares.
#[derive(Clone, Debug, clap::Args)]
pub struct RepoArgs {
    /// `local`, `s3`, `gcs`, `azure`, `swift`, `b2` or `rest`.
    #[arg(long)]
    pub provider: String,
    /// Bucket or container.
    #[arg(long, default_value = "")]
    pub bucket: String,
    /// S3 endpoint.
    #[arg(long, default_value = "")]
    pub endpoint: String,
    /// S3 region (empty: restic asks the endpoint).
    #[arg(long, default_value = "")]
    pub region: String,
    /// REST server URL.
    #[arg(long, default_value = "")]
    pub rest_server_url: String,
    /// Prefix inside the bucket; for `local`, the repository directory.
    #[arg(long, default_value = "")]
    pub path: String,
    /// Where the storage Secret is mounted.
    #[arg(long)]
    pub secret_dir: PathBuf,
    /// Scratch space.
    #[arg(long, default_value = "/tmp")]
    pub scratch_dir: PathBuf,
    /// Use a restic cache.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_cache: bool,
    /// Backend connections (gcs, azure, b2).
    #[arg(long, default_value_t = 0)]
    pub max_connections: i32,
    /// The restic host.
    #[arg(long, default_value = "host-0")]
    pub hostname: String,
    /// Where `output.json` goes.
    #[arg(long, default_value = "")]
    pub output_dir: PathBuf,
    /// Push metrics (accepted; metrics are pushed by `update-status`'s session owner).
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub metrics_enabled: bool,
    /// Pushgateway URL.
    #[arg(long, default_value = "")]
    pub metrics_pushgateway_url: String,
    /// Directory of a `metric.prom` text file (accepted).
    #[arg(long, default_value = "")]
    pub metrics_dir: String,
    /// Extra metric labels `k=v,…` (accepted).
    #[arg(long, default_value = "")]
    pub metrics_labels: String,
}

impl RepoArgs {
    /// The restic location.
    pub fn location(&self) -> Result<restic::Location, String> {
        let conns = u32::try_from(self.max_connections).ok().filter(|n| *n > 0);
        let (b, p) = (self.bucket.clone(), self.path.clone());
        Ok(match self.provider.as_str() {
            "local" => restic::Location::local(&self.path, ""),
            "s3" => restic::Location::S3 {
                endpoint: self.endpoint.clone(),
                bucket: b,
                prefix: p,
                region: Some(self.region.clone()).filter(|r| !r.is_empty()),
            },
            "gcs" => restic::Location::Gcs {
                bucket: b,
                prefix: p,
                max_connections: conns,
            },
            "azure" => restic::Location::Azure {
                container: b,
                prefix: p,
                max_connections: conns,
            },
            "swift" => restic::Location::Swift {
                container: b,
                prefix: p,
            },
            "b2" => restic::Location::B2 {
                bucket: b,
                prefix: p,
                max_connections: conns,
            },
            "rest" => restic::Location::Rest {
                url: self.rest_server_url.clone(),
            },
            other => return Err(format!("unknown backend provider {other:?}")),
        })
    }

    /// A restic handle.
    pub fn open(&self) -> Result<restic::Repo, String> {
        let credentials =
            restic::Credentials::from_secret_dir(&self.secret_dir).map_err(|e| e.to_string())?;
        restic::Repo::builder(self.location()?, credentials)
            .scratch_dir(self.scratch_dir.clone())
            .cache(self.enable_cache)
            .niceness_from_env()
            .build()
            .map_err(|e| e.to_string())
    }

    /// The host entry's name for a restore: the restoring host (`host-<POD_ORDINAL>`).
    pub fn restoring_host() -> String {
        match std::env::var("POD_ORDINAL") {
            Ok(o) if !o.is_empty() => format!("host-{o}"),
            _ => "host-0".into(),
        }
    }

    /// Write `out` with the stale locks restic removed on the way, or fail the command when
    /// even that is impossible.
    pub fn write(&self, out: &Output) -> anyhow::Result<()> {
        if self.output_dir.as_os_str().is_empty() {
            anyhow::bail!("--output-dir is required");
        }
        let mut out = out.clone();
        out.removed_locks.extend(restic::take_removed_locks());
        out.write(&self.output_dir)?;
        Ok(())
    }
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Flags of `backup-pvc`.
#[derive(Clone, Debug, clap::Args)]
pub struct BackupOptions {
    /// Repository flags.
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The directories to back up, comma-separated (one snapshot each).
    #[arg(long, required = true)]
    pub backup_dirs: String,
    /// Patterns of files not to back up, comma-separated (restic `--exclude`).
    #[arg(long, default_value = "")]
    pub exclude: String,
    /// The target's extra `restic backup` arguments, a JSON list (`target.args`).
    #[arg(long, default_value = "")]
    pub restic_args: String,
    /// Retention policy.
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// The retention flags.
#[derive(Clone, Debug, clap::Args)]
pub struct RetentionArgs {
    /// `--keep-last`.
    #[arg(long, default_value_t = 0)]
    pub retention_keep_last: i64,
    /// `--keep-hourly`.
    #[arg(long, default_value_t = 0)]
    pub retention_keep_hourly: i64,
    /// `--keep-daily`.
    #[arg(long, default_value_t = 0)]
    pub retention_keep_daily: i64,
    /// `--keep-weekly`.
    #[arg(long, default_value_t = 0)]
    pub retention_keep_weekly: i64,
    /// `--keep-monthly`.
    #[arg(long, default_value_t = 0)]
    pub retention_keep_monthly: i64,
    /// `--keep-yearly`.
    #[arg(long, default_value_t = 0)]
    pub retention_keep_yearly: i64,
    /// `--keep-tag`, comma-separated.
    #[arg(long, default_value = "")]
    pub retention_keep_tags: String,
    /// `--prune`.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub retention_prune: bool,
    /// `--dry-run`.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub retention_dry_run: bool,
}

impl RetentionArgs {
    /// The policy in the wrapper's terms.
    pub fn policy(&self) -> restic::RetentionPolicy {
        restic::RetentionPolicy {
            keep_last: self.retention_keep_last,
            keep_hourly: self.retention_keep_hourly,
            keep_daily: self.retention_keep_daily,
            keep_weekly: self.retention_keep_weekly,
            keep_monthly: self.retention_keep_monthly,
            keep_yearly: self.retention_keep_yearly,
            keep_tags: split(&self.retention_keep_tags),
            prune: self.retention_prune,
            dry_run: self.retention_dry_run,
        }
    }
}

/// One snapshot's stats entry.
pub fn snapshot_stats(directory: &str, s: &restic::BackupSummary) -> SnapshotStats {
    let count = |n: u64| Some(i32::try_from(n).unwrap_or(i32::MAX));
    SnapshotStats {
        name: Some(s.short_id().to_string()),
        directory: Some(directory.to_string()),
        size: Some(restic::format_size(s.total_bytes_processed)),
        uploaded: Some(restic::format_size(s.data_added)),
        processing_time: Some(restic::format_processing_time(
            s.total_duration.round() as u64
        )),
        file_stats: Some(FileStats {
            total_files: count(s.total_files_processed),
            new_files: count(s.files_new),
            modified_files: count(s.files_changed),
            unmodified_files: count(s.files_unmodified),
        }),
    }
}

/// After the snapshots: check, forget, stats, as the sidecar runs them
/// ([`crate::backup::after_snapshots`]): a failed step is the host entry's condition and a
/// warning, its figure absent; the host keeps its snapshot and succeeds (docs/sessions.md).
pub async fn after_backup(r: &restic::Repo, policy: &restic::RetentionPolicy) -> FollowedUp {
    let o = crate::backup::after_snapshots(r, policy, true).await;
    let count = |v: Option<u64>| v.map(|v| i32::try_from(v).unwrap_or(i32::MAX));
    FollowedUp {
        repository: RepositoryStats {
            integrity: o.integrity,
            size: o.repository_size.map(restic::format_size),
            snapshot_count: count(o.snapshot_count),
            snapshots_removed_on_last_cleanup: count(o.snapshots_removed),
        },
        conditions: o
            .conditions
            .iter()
            .map(crate::run_backup::condition)
            .collect(),
        warnings: o.warnings,
    }
}

/// What the follow-up steps of a job-model backup came to.
#[derive(Clone, Debug, PartialEq)]
pub struct FollowedUp {
    /// The Repository's figures (a failed step's absent).
    pub repository: RepositoryStats,
    /// One condition per step, for the host's entry.
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// The failed steps, each a Warning event.
    pub warnings: Vec<String>,
}

/// The output of a backup that produced `result`.
pub fn backup_output(
    host: &str,
    started: Instant,
    result: Result<(Vec<SnapshotStats>, FollowedUp), String>,
) -> Output {
    let duration = Some(GoDuration(started.elapsed()));
    match result {
        Ok((snapshots, followed)) => Output {
            host_backup_stats: vec![HostBackupStats {
                hostname: Some(host.into()),
                phase: Some(HostPhase::Succeeded),
                duration,
                error: None,
                snapshots,
                conditions: followed.conditions,
            }],
            repository: Some(followed.repository),
            warnings: followed.warnings,
            ..Default::default()
        },
        Err(e) => Output {
            host_backup_stats: vec![HostBackupStats {
                hostname: Some(host.into()),
                phase: Some(HostPhase::Failed),
                duration,
                error: Some(e),
                snapshots: vec![],
                ..Default::default()
            }],
            ..Default::default()
        },
    }
}

/// The output of a restore that produced `result`.
pub fn restore_output(host: &str, started: Instant, result: Result<(), String>) -> Output {
    Output {
        host_restore_stats: vec![HostRestoreStats {
            hostname: Some(host.into()),
            phase: Some(if result.is_ok() {
                RestorePhase::Succeeded
            } else {
                RestorePhase::Failed
            }),
            duration: Some(GoDuration(started.elapsed())),
            error: result.err(),
        }],
        ..Default::default()
    }
}

/// `backup-pvc`.
pub async fn backup(opts: BackupOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let host = opts.repo.hostname.clone();
    // The snapshots a failed host still lists: those of an incomplete backup (kept, tagged
    // partial; `stash_machines::backup_host::verdict`).
    let mut kept = Vec::new();
    let result = async {
        use stash_machines::backup_host::{SnapshotOutcome, verdict};
        let dirs = split(&opts.backup_dirs);
        if dirs.is_empty() {
            return Err("--backup-dirs names no directory".to_string());
        }
        let extra = restic_args(stash_core::args::Command::Backup, &opts.restic_args)?;
        let mut r = opts.repo.open()?;
        if let Some(reporter) = crate::report::job_lock_reporter(&host).await {
            r.set_lock_reporter(reporter);
        }
        r.ensure_initialized().await.map_err(|e| e.to_string())?;
        let mut snaps = Vec::new();
        let mut outcomes = Vec::new();
        let mut failures = Vec::new();
        for d in &dirs {
            if !std::path::Path::new(d).is_dir() {
                return Err(format!("backup of {d}: no such directory"));
            }
            match r
                .backup_excluding(
                    std::path::Path::new(d),
                    &host,
                    &[],
                    &split(&opts.exclude),
                    &extra,
                )
                .await
            {
                Ok(s) => {
                    snaps.push(snapshot_stats(d, &s));
                    outcomes.push(SnapshotOutcome::Complete);
                }
                // A partial snapshot is a snapshot: kept, tagged, and the host goes on.
                Err(restic::Error::Incomplete {
                    summary,
                    unreadable,
                }) => {
                    let (s, text) = crate::backup::keep_partial(&r, d, &summary, &unreadable).await;
                    snaps.push(snapshot_stats(d, &s));
                    outcomes.push(SnapshotOutcome::Partial);
                    failures.push(text);
                }
                Err(e) => return Err(format!("backup of {d}: {e}")),
            }
        }
        // Not every snapshot complete: the host fails, without retention or the Repository's
        // figures.
        if !verdict(&outcomes).follow_up {
            kept = snaps;
            return Err(failures.join("; "));
        }
        let followed = after_backup(&r, &opts.retention.policy()).await;
        Ok((snaps, followed))
    }
    .await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "backup failed");
    }
    let mut output = backup_output(&host, started, result);
    if let Some(h) = output.host_backup_stats.first_mut()
        && h.snapshots.is_empty()
    {
        h.snapshots = kept;
    }
    opts.repo.write(&output)
}

/// Flags of `restore-pvc`.
#[derive(Clone, Debug, clap::Args)]
pub struct RestoreOptions {
    /// Repository flags (`--hostname` is the source host).
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The directories to restore (latest snapshot of the source host with each path).
    #[arg(long, required = true)]
    pub restore_dirs: String,
    /// Snapshots to restore whole instead, comma-separated.
    #[arg(long, default_value = "")]
    pub snapshots: String,
    /// Where to restore to.
    #[arg(long, default_value = "/")]
    pub target_dir: PathBuf,
    /// The target's volume mounts, comma-separated: a snapshot of `--snapshots` is restored
    /// only when every path it holds lies under one of them.
    #[arg(long, default_value = "")]
    pub target_mounts: String,
    /// Patterns of the files to restore, comma-separated (restic `--include`).
    #[arg(long, default_value = "")]
    pub include: String,
    /// Patterns of the files not to restore, comma-separated (restic `--exclude`).
    #[arg(long, default_value = "")]
    pub exclude: String,
    /// The target's extra `restic restore` arguments, a JSON list (`target.args`).
    #[arg(long, default_value = "")]
    pub restic_args: String,
}

/// `restore-pvc`.
pub async fn restore(opts: RestoreOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let filtered = |mut o: restic::RestoreOptions, extra: &[String]| {
        o.includes = split(&opts.include);
        o.excludes = split(&opts.exclude);
        o.extra = extra.to_vec();
        o
    };
    let result = async {
        let extra = restic_args(stash_core::args::Command::Restore, &opts.restic_args)?;
        let r = opts.repo.open()?;
        let snapshots = split(&opts.snapshots);
        if !snapshots.is_empty() {
            let mounts = split(&opts.target_mounts);
            let ids =
                crate::restore::resolve_snapshots(&r, &snapshots, &opts.repo.hostname, &mounts)
                    .await?;
            for id in ids {
                let o = filtered(
                    restic::RestoreOptions::new(id.as_str(), &opts.target_dir),
                    &extra,
                );
                r.restore(&o)
                    .await
                    .map_err(|e| format!("restore of snapshot {id}: {e}"))?;
            }
            return Ok(());
        }
        let dirs = split(&opts.restore_dirs);
        if dirs.is_empty() {
            return Err(
                "neither --restore-dirs nor --snapshots names anything to restore".to_string(),
            );
        }
        for d in &dirs {
            let mut o = filtered(
                restic::RestoreOptions::new("latest", &opts.target_dir),
                &extra,
            );
            o.host = Some(opts.repo.hostname.clone());
            o.paths = vec![d.clone()];
            r.restore(&o)
                .await
                .map_err(|e| format!("restore of {d} from host {}: {e}", opts.repo.hostname))?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "restore failed");
    }
    opts.repo.write(&restore_output(
        &RepoArgs::restoring_host(),
        started,
        result,
    ))
}

/// `--restic-args` (a JSON list; empty: none), checked against the allow-list: one that got
/// past admission fails the host, named.
fn restic_args(command: stash_core::args::Command, json: &str) -> Result<Vec<String>, String> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let args: Vec<String> = serde_json::from_str(json)
        .map_err(|e| format!("--restic-args is not a JSON list of strings: {e}"))?;
    stash_core::args::check(command, &args)
        .map_err(|errs| crate::backup::refused_args("spec.target.args", &errs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        BackupPvc(BackupOptions),
        RestorePvc(RestoreOptions),
    }

    #[test]
    fn the_builtin_function_args_parse() {
        let f = &stash_core::jobs::builtin::functions("img")[1];
        let inputs: stash_core::jobs::envsubst::Inputs = [
            ("REPOSITORY_PROVIDER", "local"),
            ("REPOSITORY_PREFIX", "/repo"),
            ("TARGET_DIRECTORIES", "/a,/b"),
            ("HOSTNAME", "host-0"),
            ("outputDir", "/tmp/output"),
            ("RETENTION_KEEP_LAST", "5"),
            ("RETENTION_PRUNE", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let args: Vec<String> = f
            .spec
            .args
            .iter()
            .map(|a| stash_core::jobs::envsubst::subst(a, &inputs).expect("subst"))
            .collect();
        let cli =
            Cli::try_parse_from(std::iter::once("stash".to_string()).chain(args)).expect("parse");
        let Cmd::BackupPvc(o) = cli.cmd else {
            panic!("backup-pvc")
        };
        assert_eq!(o.repo.location(), Ok(restic::Location::local("/repo", "")));
        assert!(o.repo.enable_cache);
        let p = o.retention.policy();
        assert_eq!((p.keep_last, p.prune), (5, true));
        assert_eq!(split(&o.backup_dirs), ["/a", "/b"]);
        assert_eq!(split(&o.exclude), Vec::<String>::new());
        let f = &stash_core::jobs::builtin::functions("img")[2];
        let mut inputs = inputs;
        inputs.insert("RESTORE_DIRECTORIES".into(), "/a".into());
        let args: Vec<String> = f
            .spec
            .args
            .iter()
            .map(|a| stash_core::jobs::envsubst::subst(a, &inputs).expect("subst"))
            .collect();
        let cli =
            Cli::try_parse_from(std::iter::once("stash".to_string()).chain(args)).expect("parse");
        assert!(matches!(cli.cmd, Cmd::RestorePvc(_)));
    }
}
