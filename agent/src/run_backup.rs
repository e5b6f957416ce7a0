//! `stash run-backup`: the backup sidecar (stash-api.md §7.1).
//!
//! Watches the BackupSessions of its BackupConfiguration; for each one the operator has set
//! `Running` that has no entry for this host yet, it takes the workload's backup lock (a
//! Lease), takes the snapshots and reports this host's entry in the session status at once;
//! then (still holding the lock) runs the follow-up steps (forget, stats, and `check` on its
//! own schedule, [`host_machine::check_due`]), records what they came to as conditions of its entry,
//! and writes the Repository status and events. A backup failure is recorded as a `Failed` entry
//! with the reason; it never crashes the container. A backup restic could not read completely
//! is a `Failed` entry too, naming what could not be read and listing its snapshots (kept and
//! tagged partial), and runs no follow-up step.
use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use stash_crds::{
    BackupConfiguration, BackupSession, Repository,
    backup_session::{FileStats, HostBackupStats, HostPhase, SnapshotStats},
    consts,
    duration::GoDuration,
};
use stash_machines::backup_host as host_machine;
use stash_runtime::{
    LeaderElection,
    events::{Events, Severity},
};

use stash_core::target::{WorkloadKind, backup_host};

use crate::backup;

/// Flags of `run-backup`.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// The BackupConfiguration this sidecar serves.
    #[arg(long)]
    pub backup_configuration: String,
    /// Where the storage Secret is mounted.
    #[arg(long, default_value = "/etc/stash/repository/secret")]
    pub secret_dir: PathBuf,
    /// Scratch space (restic cache and temp files).
    #[arg(long, default_value = "/tmp")]
    pub scratch_dir: PathBuf,
    /// Use a restic cache under the scratch dir.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_cache: bool,
    /// Backend connections (gcs, azure, b2).
    #[arg(long, default_value_t = 0)]
    pub max_connections: i32,
    /// Push metrics to the pushgateway.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub metrics_enabled: bool,
    /// The pushgateway's URL.
    #[arg(long, default_value = "")]
    pub pushgateway_url: String,
    /// This pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// This pod's name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,
    /// This pod's node.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
}

/// Run the sidecar until it is stopped.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let ns = opts.namespace.clone();
    let bcs = Api::<BackupConfiguration>::namespaced(client.clone(), &ns);
    // A missing BackupConfiguration at start-up is fatal: the container restarts and retries.
    let bc = bcs.get(&opts.backup_configuration).await?;
    let target = bc.spec.target.clone().unwrap_or_default();
    let kind = WorkloadKind::of(&target.target_ref);
    let host_of = |bc: &BackupConfiguration| {
        let alias = bc.spec.target.as_ref().and_then(|t| t.alias.as_deref());
        backup_host(kind, alias, &opts.pod_name, &opts.node_name)
    };
    let mut host = host_of(&bc);
    let workload = target.target_ref.name.clone().unwrap_or_default();
    let lease = stash_core::names::backup_lease(kind, &workload);
    // Pods that are one host elect one of them per session; a StatefulSet's or DaemonSet's
    // pods are hosts of their own and back up side by side, except into a Repository that has
    // never received a backup: restic init by several hosts at once corrupts it ("config or
    // key … is damaged"), so the hosts of a first session take turns.
    let shared = stash_core::target::host_is_shared(kind);
    let lock = LeaderElection::new(&ns, &lease, &opts.pod_name, Duration::from_secs(15));
    let repos = Api::<Repository>::namespaced(client.clone(), &ns);
    let repo_name = bc.spec.repository_name();
    tracing::info!(bc = %opts.backup_configuration, %host, "backup sidecar started");
    // A restic of this pod's previous container (killed: an OOM kill, a crash) may have left
    // its lock: this pod's restic proves it stale and removes it now, not at this host's next
    // exclusive command — another configuration's prune would wait for it until then.
    {
        let (repos, repo_name, settings) =
            (repos.clone(), repo_name.clone(), settings(&opts, None));
        tokio::spawn(async move {
            let Ok(repo) = repos.get(&repo_name).await else {
                return;
            };
            if let Ok(r) = backup::open(&repo, &settings)
                && let Err(e) = r.clear_stale_locks().await
            {
                tracing::debug!(error = %e, "could not clear this pod's stale locks at start-up");
            }
        });
    }

    let sessions = Api::<BackupSession>::namespaced(client.clone(), &ns);
    let selector = format!(
        "{}={}",
        consts::BACKUP_CONFIGURATION_LABEL,
        opts.backup_configuration
    );
    let events = Events::new(client.clone(), &format!("stash-sidecar-{}", opts.pod_name));
    let mut done: BTreeSet<String> = BTreeSet::new();
    let check_interval = backup::check_interval_from_env();
    let mut last_check: Option<std::time::Instant> = None;
    let stream = watcher(
        sessions.clone(),
        watcher::Config::default().labels(&selector),
    )
    .applied_objects();
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        let session = match item {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "watch error; retrying");
                continue;
            }
        };
        if done.contains(&session.name_any()) || needs_backup(&session, &host).is_none() {
            continue;
        }
        // Serialise with the other pods of this host; re-read after locking.
        let take_turns = shared
            || repos
                .get(&repo_name)
                .await
                .map_or(true, |r| !r.has_received_backup());
        let leadership = match take_turns {
            true => Some(lock.acquire(client.clone()).await?),
            false => None,
        };
        // Pausing is the operator's decision, for sessions not yet started: a session it marked
        // Running completes normally (stash_machines::backup_session).
        let fresh = sessions.get(&session.name_any()).await?;
        // The configuration as it is now: an alias written since this sidecar started names
        // this host from now on.
        let bc = bcs.get(&opts.backup_configuration).await?;
        host = host_of(&bc);
        if let Some(phase) = needs_backup(&fresh, &host) {
            let check = |integrity: Option<bool>| {
                host_machine::check_due(integrity, last_check.map(|t| t.elapsed()), check_interval)
            };
            if backup_one(&client, &events, &opts, &bc, &fresh, &host, phase, check).await {
                last_check = Some(std::time::Instant::now());
            }
        }
        done.insert(session.name_any());
        if let Some(l) = leadership {
            l.release().await;
        }
    }
    Ok(())
}

/// The host machine's first question ([`stash_machines::backup_host::decide`], before restic is
/// asked): the operator has started the session and this host has not reported yet. Returns the
/// phase the host is in once it starts (`LookingUp`), or `None` when there is nothing to do.
fn needs_backup(session: &BackupSession, host: &str) -> Option<host_machine::Phase> {
    use stash_machines::backup_host::{HostObservation, HostStep, decide};
    let status = session.status.as_ref();
    let obs = HostObservation {
        session: backup::session_state(status.and_then(|s| s.phase)),
        reported: status
            .is_some_and(|s| s.stats.iter().any(|h| h.hostname.as_deref() == Some(host))),
        directories: vec![],
        tagged: None,
    };
    let d = decide(&obs);
    if let Some(r) = d.rejection {
        tracing::error!(rejection = %r, "BUG: the host machine refused its own step");
    }
    (d.step != HostStep::Idle).then_some(d.phase)
}

/// One host's backup of `session`: the snapshots, the host's report (what the session waits
/// for), then the follow-up steps and the Repository status. `check` decides from the
/// Repository's reported integrity whether this follow-up runs `restic check`; returns whether
/// it did. `phase` is the host's phase (`LookingUp`); the report is written from `Reporting`,
/// reached through the host lifecycle's transitions.
#[allow(clippy::too_many_arguments)]
async fn backup_one(
    client: &Client,
    events: &Events,
    opts: &Options,
    bc: &BackupConfiguration,
    session: &BackupSession,
    host: &str,
    phase: host_machine::Phase,
    check: impl Fn(Option<bool>) -> bool,
) -> bool {
    let ns = opts.namespace.clone();
    let started = std::time::Instant::now();
    let repo_name = bc.spec.repository_name();
    let repos = Api::<Repository>::namespaced(client.clone(), &ns);
    let mut reported_integrity = None;
    let snapshotted = match repos.get(&repo_name).await {
        Ok(repo) => {
            reported_integrity = repo.status.as_ref().and_then(|s| s.integrity);
            let settings = settings(
                opts,
                Some(crate::report::lock_reporter(
                    Api::<BackupSession>::namespaced(client.clone(), &ns),
                    session.name_any(),
                    host.to_string(),
                )),
            );
            backup::run(
                &repo,
                bc,
                host,
                &session.name_any(),
                &session.uid().unwrap_or_default(),
                phase,
                &settings,
            )
            .await
        }
        Err(e) => Err(backup::HostFailure {
            phase,
            message: format!("Repository {repo_name}: {e}"),
        }),
    };
    // Where the host stands before it writes its entry: `Reporting`, through the lifecycle.
    let reporting = match &snapshotted {
        Ok(s) => Ok(s.phase),
        Err(f) => host_machine::after_step(f.phase, false),
    };
    let snapshotted = snapshotted.map_err(|f| f.message);
    let duration = started.elapsed();
    let reference = session.object_ref(&());
    let entry = match &snapshotted {
        // Snapshots that are not all complete: the host fails, and lists them (they are kept).
        Ok(s) => HostBackupStats {
            hostname: Some(host.into()),
            phase: Some(if s.verdict.succeeded {
                HostPhase::Succeeded
            } else {
                HostPhase::Failed
            }),
            duration: Some(GoDuration(duration)),
            error: s.failure.clone(),
            snapshots: s.snapshots.iter().map(snapshot_stats).collect(),
            conditions: vec![],
        },
        Err(e) => HostBackupStats {
            hostname: Some(host.into()),
            phase: Some(HostPhase::Failed),
            duration: Some(GoDuration(duration)),
            error: Some(e.clone()),
            snapshots: vec![],
            conditions: vec![],
        },
    };
    let sessions = Api::<BackupSession>::namespaced(client.clone(), &ns);
    // The report is what the operator waits for: retried for as long as it can still count
    // (report::retried). Should it still fail, a restarted agent finds the tagged snapshot.
    match reporting {
        Ok(from) => {
            let name = session.name_any();
            let written = super::report::retried(
                || {
                    super::report::upsert_backup_hosts(
                        &sessions,
                        &name,
                        from,
                        std::slice::from_ref(&entry),
                    )
                },
                || async {
                    let now = sessions.get(&name).await.ok();
                    backup::session_state(now.and_then(|s| s.status).and_then(|s| s.phase))
                },
                session.creation_timestamp().map(|t| t.0),
            )
            .await;
            if let Err(e) = written {
                tracing::error!(error = %e, "could not record this host's result");
            }
        }
        Err(e) => tracing::error!(?e, "BUG: the host machine refused to reach Reporting"),
    }
    let target = bc.spec.target.clone().unwrap_or_default().target_ref;
    let push = |outcome: Option<backup::BackupOutcome>| async move {
        if opts.metrics_enabled {
            let group = crate::metrics::backup_group(
                &bc.name_any(),
                target.kind.as_deref().unwrap_or_default(),
                target.name.as_deref().unwrap_or_default(),
                host,
                duration,
                outcome.as_ref(),
            );
            crate::metrics::push_logged(&opts.pushgateway_url, &group).await;
        }
    };
    // A host whose snapshots are not all complete failed: no follow-up steps (retention would
    // count a partial snapshot against the last complete one), as for any failed host.
    let snapshotted = snapshotted.and_then(|s| {
        if s.verdict.follow_up {
            Ok(s)
        } else {
            Err(s.failure.clone().unwrap_or_default())
        }
    });
    let checked = match snapshotted {
        Ok(s) => {
            events
                .publish(
                    &reference,
                    Severity::Normal,
                    "SuccessfulHostBackup",
                    format!("backup of host {host} succeeded"),
                )
                .await;
            // After the report: the session's outcome does not depend on these steps.
            let checked = check(reported_integrity);
            let o = backup::follow_up(s, bc, checked).await;
            for w in &o.warnings {
                tracing::warn!(warning = %w, "backup succeeded with a failed follow-up step");
            }
            super::report::publish_follow_up_failures(events, &reference, &o.warnings).await;
            // The host's entry carries what the follow-up steps came to: the same entry
            // again, with its conditions (the host owns it; `Reported` stays `Reported`).
            let mut entry = entry.clone();
            entry.conditions = o.conditions.iter().map(condition).collect();
            if let Err(e) = super::report::upsert_backup_hosts(
                &sessions,
                &session.name_any(),
                host_machine::Phase::Reported,
                std::slice::from_ref(&entry),
            )
            .await
            {
                tracing::warn!(error = %e, "could not record the follow-up steps' conditions");
            }
            let count = |v: Option<u64>| v.map(|v| i32::try_from(v).unwrap_or(i32::MAX));
            let report = super::report::RepositoryReport {
                integrity: o.integrity,
                size: o.repository_size.map(stash_restic::format_size),
                snapshot_count: count(o.snapshot_count),
                snapshots_removed: count(o.snapshots_removed),
            };
            if let Err(e) = super::report::record_backup(&repos, &repo_name, &report).await {
                tracing::warn!(error = %e, "could not update the Repository status");
            }
            push(Some(o)).await;
            checked
        }
        Err(e) => {
            events
                .publish(
                    &reference,
                    Severity::Warning,
                    "FailedHostBackup",
                    format!("backup of host {host} failed: {e}"),
                )
                .await;
            push(None).await;
            false
        }
    };
    // The stale locks restic proved and this agent removed on the way (docs/sessions.md).
    super::report::publish_removed_locks(events, &reference, &stash_restic::take_removed_locks())
        .await;
    checked
}

/// A follow-up step's condition as the API spells it.
pub(crate) fn condition(c: &stash_machines::backup_host::FollowUpCondition) -> Condition {
    Condition {
        type_: c.type_.into(),
        status: if c.ok { "True" } else { "False" }.into(),
        reason: c.reason.into(),
        message: c.message.clone(),
        last_transition_time: Time(jiff::Timestamp::now()),
        observed_generation: None,
    }
}

fn snapshot_stats(s: &backup::SnapshotResult) -> SnapshotStats {
    let count = |n: u64| Some(i32::try_from(n).unwrap_or(i32::MAX));
    SnapshotStats {
        name: Some(s.short_id.clone()),
        directory: Some(s.directory.clone()),
        size: Some(stash_restic::format_size(s.total_bytes)),
        uploaded: Some(stash_restic::format_size(s.data_added)),
        processing_time: Some(stash_restic::format_processing_time(s.duration_secs)),
        file_stats: Some(FileStats {
            total_files: count(s.total_files),
            new_files: count(s.files_new),
            modified_files: count(s.files_changed),
            unmodified_files: count(s.files_unmodified),
        }),
    }
}

/// The agent's restic settings from its options.
fn settings(opts: &Options, lock_reporter: Option<stash_restic::LockReporter>) -> backup::Settings {
    backup::Settings {
        secret_dir: opts.secret_dir.clone(),
        scratch_dir: opts.scratch_dir.clone(),
        enable_cache: opts.enable_cache,
        max_connections: opts.max_connections,
        lock_reporter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stash_crds::backup_session::Phase;

    fn session(phase: Option<Phase>, hosts: &[&str]) -> BackupSession {
        let mut s = BackupSession::new("s", Default::default());
        s.status = Some(stash_crds::backup_session::BackupSessionStatus {
            phase,
            stats: hosts
                .iter()
                .map(|h| HostBackupStats {
                    hostname: Some(h.to_string()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        s
    }

    #[test]
    fn a_host_backs_up_only_running_sessions_it_has_not_reported() {
        let looking = Some(host_machine::Phase::LookingUp);
        assert_eq!(
            needs_backup(&session(Some(Phase::Running), &[]), "host-0"),
            looking
        );
        assert_eq!(
            needs_backup(&session(Some(Phase::Running), &["host-1"]), "host-0"),
            looking
        );
        for s in [
            session(Some(Phase::Running), &["host-0"]),
            session(Some(Phase::Pending), &[]),
            session(None, &[]),
            session(Some(Phase::Skipped), &[]),
            session(Some(Phase::Failed), &[]),
        ] {
            assert_eq!(needs_backup(&s, "host-0"), None, "{:?}", s.status);
        }
    }
}
