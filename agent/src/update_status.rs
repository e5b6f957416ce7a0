//! `stash update-status` (stash-api.md §7.2, §11.1): the last step of a job-model Task. Reads
//! `<output-dir>/output.json`, upserts the host entries into the BackupSession or
//! RestoreSession status (each write checked against the host lifecycle,
//! [`stash_machines::backup_host::job_outcome`], [`stash_machines::restore_host::job_outcome`]), emits one event per host, updates the Repository status when every
//! host of a backup succeeded, and exits non-zero when any entry carries an error (decision 1:
//! such an entry is `Failed`).
use std::path::PathBuf;

use kube::{Api, Client, Resource};
use stash_crds::{
    BackupSession, Repository, RestoreSession, backup_session::HostBackupStats,
    restore_session::HostRestoreStats,
};
use stash_machines::{backup_host, restore_host};
use stash_runtime::events::{Events, Severity};

use super::report;
use stash_core::jobs::output::Output;

/// Flags of `update-status`.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Namespace of the session and Repository.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The Repository (backups: its status is updated).
    #[arg(long, default_value = "")]
    pub repository: String,
    /// The BackupSession (one of the two sessions is required).
    #[arg(long, default_value = "")]
    pub backup_session: String,
    /// The RestoreSession.
    #[arg(long, default_value = "")]
    pub restore_session: String,
    /// Where `output.json` is.
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Accepted for compatibility: status is always written through the status subresource.
    #[arg(long, default_value = "true")]
    pub enable_status_subresource: String,
}

/// Run `update-status`.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let output = Output::read(&opts.output_dir)
        .map_err(|e| anyhow::anyhow!("{e} (did the previous step run?)"))?;
    let client = Client::try_default().await?;
    let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "update-status".into());
    run_with(client, &opts, &output, &pod).await
}

/// [`run`] with this client, the `output.json` read from `opts.output_dir`, and this pod's
/// name (`$POD_NAME`: the events report as `stash-job-<pod>`).
pub async fn run_with(
    client: Client,
    opts: &Options,
    output: &Output,
    pod: &str,
) -> anyhow::Result<()> {
    let ns = opts.namespace.clone();
    let events = Events::new(client.clone(), &format!("stash-job-{pod}"));
    let mut errors = Vec::new();
    if !opts.backup_session.is_empty() {
        let api = Api::<BackupSession>::namespaced(client.clone(), &ns);
        // Upstream's errored entry has neither hostname nor phase: name it and mark it Failed.
        let entries: Vec<HostBackupStats> = output
            .host_backup_stats
            .iter()
            .cloned()
            .map(|mut h| {
                if h.hostname.as_deref().is_none_or(str::is_empty) {
                    h.hostname = Some("host-0".into());
                }
                if h.is_failed() {
                    h.phase = Some(stash_crds::backup_session::HostPhase::Failed);
                }
                h
            })
            .collect();
        // Each host reports from the phase its lifecycle computes from the session's entries
        // (`Reporting`, or `Reported` for a retried pod): the write is checked against it.
        let before = api.get(&opts.backup_session).await?;
        for h in &entries {
            let reported = before
                .status
                .as_ref()
                .is_some_and(|s| s.stats.iter().any(|e| e.hostname == h.hostname));
            let from = backup_host::job_outcome(reported, h.is_failed())?;
            report::upsert_backup_hosts(&api, &opts.backup_session, from, std::slice::from_ref(h))
                .await?;
        }
        let session = api.get(&opts.backup_session).await?;
        let reference = session.object_ref(&());
        for h in &entries {
            let host = h.hostname.clone().unwrap_or_default();
            match h.error.as_deref().filter(|e| !e.is_empty()) {
                Some(e) => {
                    errors.push(format!("host {host}: {e}"));
                    events
                        .publish(
                            &reference,
                            Severity::Warning,
                            "FailedHostBackup",
                            format!("backup of host {host} failed: {e}"),
                        )
                        .await;
                }
                None => {
                    events
                        .publish(
                            &reference,
                            Severity::Normal,
                            "SuccessfulHostBackup",
                            format!("backup of host {host} succeeded"),
                        )
                        .await;
                }
            }
        }
        report::publish_follow_up_failures(&events, &reference, &output.warnings).await;
        report::publish_removed_locks(&events, &reference, &output.removed_locks).await;
        if entries.is_empty() {
            errors.push("output.json has no backup entry".into());
        }
        if errors.is_empty()
            && !opts.repository.is_empty()
            && let Some(r) = &output.repository
        {
            let report = report::RepositoryReport {
                integrity: r.integrity,
                size: r.size.clone(),
                snapshot_count: r.snapshot_count,
                snapshots_removed: r.snapshots_removed_on_last_cleanup,
            };
            report::record_backup(
                &Api::<Repository>::namespaced(client.clone(), &ns),
                &opts.repository,
                &report,
            )
            .await?;
        }
    } else if !opts.restore_session.is_empty() {
        let api = Api::<RestoreSession>::namespaced(client.clone(), &ns);
        let entries: Vec<HostRestoreStats> = output
            .host_restore_stats
            .iter()
            .cloned()
            .map(|mut h| {
                if h.hostname.as_deref().is_none_or(str::is_empty) {
                    h.hostname = Some("host-0".into());
                }
                if h.is_failed() {
                    h.phase = Some(stash_crds::restore_session::HostPhase::Failed);
                }
                h
            })
            .collect();
        let before = api.get(&opts.restore_session).await?;
        for h in &entries {
            let reported = before
                .status
                .as_ref()
                .is_some_and(|s| s.stats.iter().any(|e| e.hostname == h.hostname));
            let from = restore_host::job_outcome(reported, h.is_failed())?;
            report::report_restore_hosts(
                &api,
                &opts.restore_session,
                from,
                std::slice::from_ref(h),
            )
            .await?;
        }
        let session = api.get(&opts.restore_session).await?;
        let reference = session.object_ref(&());
        for h in &entries {
            let host = h.hostname.clone().unwrap_or_default();
            match h.error.as_deref().filter(|e| !e.is_empty()) {
                Some(e) => {
                    errors.push(format!("host {host}: {e}"));
                    events
                        .publish(
                            &reference,
                            Severity::Warning,
                            "FailedHostRestore",
                            format!("restore of host {host} failed: {e}"),
                        )
                        .await;
                }
                None => {
                    events
                        .publish(
                            &reference,
                            Severity::Normal,
                            "SuccessfulHostRestore",
                            format!("host {host} restored"),
                        )
                        .await;
                }
            }
        }
        report::publish_follow_up_failures(&events, &reference, &output.warnings).await;
        report::publish_removed_locks(&events, &reference, &output.removed_locks).await;
        if entries.is_empty() {
            errors.push("output.json has no restore entry".into());
        }
    } else {
        anyhow::bail!("one of --backup-session and --restore-session is required");
    }
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("; "));
    }
    Ok(())
}
