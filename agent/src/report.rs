//! How agents report: a session host's own entry (BackupSession and RestoreSession) by
//! server-side apply, one field manager per host; the Repository's backup figures by
//! server-side apply as one field manager of every agent, read-modify-apply retried on
//! conflicts (several agents report into it; the operator owns its conditions).
use std::{fmt::Debug, sync::OnceLock, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;
use stash_crds::{
    BackupSession, Repository, RestoreSession, backup_session::HostBackupStats,
    repository::RepositoryStatus, restore_session::HostRestoreStats,
};
use stash_machines::{backup_host, restore_host};
use stash_runtime::{Lifecycle, Metrics, StatusError, check_transition};

/// The field manager of host `hostname`'s entry in a session's `status.stats`.
pub fn host_manager(hostname: &str) -> String {
    format!("stash-host-{hostname}")
}

/// Write these hosts' entries in a BackupSession's status: each entry by server-side apply,
/// as its own field manager (`stats` is a list-map keyed by `hostname`, so the API server merges
/// the entry in and leaves the other hosts' entries and the operator's fields alone). Conflicts
/// cannot arise between hosts; a transient error is retried a few times.
///
/// `from` is the phase of the hosts' lifecycle ([`backup_host::Phase`]) the writer computed; the
/// write is its `Report` transition, checked first ([`check_host_write`]): a write from any phase
/// but `Reporting` (or a rewrite from `Reported`) is refused and logged, and nothing is sent.
pub async fn upsert_backup_hosts(
    api: &Api<BackupSession>,
    name: &str,
    from: backup_host::Phase,
    entries: &[HostBackupStats],
) -> Result<(), StatusError> {
    check_host_write(from, backup_host::Phase::Reported)?;
    for e in entries {
        let host = e.hostname.clone().unwrap_or_else(|| "host-0".into());
        let mut entry = e.clone();
        entry.hostname = Some(host.clone());
        apply_host_entry(api, name, &host, serde_json::to_value(entry)?).await?;
    }
    Ok(())
}

/// Write these hosts' entries in a RestoreSession's status, each by server-side apply as its
/// host's own field manager (`stats` is a list-map keyed by `hostname`, like BackupSession's):
/// the other hosts' entries and the operator's fields are left to their owners.
pub async fn upsert_restore_hosts(
    api: &Api<RestoreSession>,
    name: &str,
    entries: &[HostRestoreStats],
) -> Result<(), kube::Error> {
    for e in entries {
        let host = e.hostname.clone().unwrap_or_else(|| "host-0".into());
        let mut entry = e.clone();
        entry.hostname = Some(host.clone());
        let entry = serde_json::to_value(entry).map_err(kube::Error::SerdeError)?;
        apply_host_entry(api, name, &host, entry).await?;
    }
    Ok(())
}

/// Write a host's report (`write`), retried as [`backup_host::report_retry`] decides from the
/// session's state (`state`, read between attempts) and age (`created`): for as long as the
/// report can still count. A write the host's lifecycle refuses is not retried.
pub async fn retried<W, WF, R, RF>(
    mut write: W,
    mut state: R,
    created: Option<jiff::Timestamp>,
) -> Result<(), StatusError>
where
    W: FnMut() -> WF,
    WF: Future<Output = Result<(), StatusError>>,
    R: FnMut() -> RF,
    RF: Future<Output = backup_host::Session>,
{
    let deadline = stash_machines::Policy::default().deadline;
    let mut attempt = 0;
    loop {
        let e = match write().await {
            Ok(()) => return Ok(()),
            Err(e @ StatusError::IllegalTransition { .. }) => return Err(e),
            Err(e) => e,
        };
        attempt += 1;
        let age = created
            .map(|c| c.duration_until(jiff::Timestamp::now()))
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        let status = match &e {
            StatusError::Kube(kube::Error::Api(a)) => Some(a.code),
            _ => None,
        };
        if backup_host::report_is_final(status) {
            return Err(e);
        }
        match backup_host::report_retry(attempt, status, state().await, age, deadline) {
            Some(delay) => {
                tracing::warn!(error = %e, attempt, ?delay, "could not write this host's report; retrying");
                tokio::time::sleep(delay).await;
            }
            None => return Err(e),
        }
    }
}

/// Server-side apply of one host's entry of a session's `status.stats` list-map, as the host's
/// own field manager (once: the caller retries, [`stash_machines::backup_host::report_retry`]).
async fn apply_host_entry<K>(
    api: &Api<K>,
    name: &str,
    host: &str,
    entry: serde_json::Value,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name },
        "status": { "stats": [entry] },
    });
    let params = PatchParams::apply(&host_manager(host)).force();
    api.patch_status(name, &params, &Patch::Apply(&patch))
        .await
        .map(|_| ())
}

/// The field manager of host `hostname`'s lock reports (`status.blockingLocks`): not the
/// entry's own, so that neither apply drops the other's fields.
pub fn lock_manager(hostname: &str) -> String {
    format!("stash-host-{hostname}-locks")
}

/// A reporter ([`stash_restic::LockReporter`]) of the locks that stand in host `host`'s way, on
/// session `name` of `api` (`status.blockingLocks`, a list-map keyed by `id`): the locks it is
/// told of replace those it reported before (none: the report is withdrawn, the command has its
/// lock or gave up), by server-side apply as [`lock_manager`], once (a failed write is logged:
/// the command still waits for the lock, and restic's refusal names its holder).
pub fn lock_reporter<K>(api: Api<K>, name: String, host: String) -> stash_restic::LockReporter
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    std::sync::Arc::new(move |locks: Vec<stash_restic::LockInfo>| {
        let entries: Vec<stash_crds::common::BlockingLock> = locks
            .into_iter()
            .map(|l| stash_crds::common::BlockingLock {
                id: l.id,
                hostname: Some(l.hostname),
                pid: Some(l.pid),
                exclusive: Some(l.exclusive),
                time: Some(l.time.to_string()),
            })
            .collect();
        let (api, name, host) = (api.clone(), name.clone(), host.clone());
        Box::pin(async move {
            let patch = serde_json::json!({
                "apiVersion": K::api_version(&()),
                "kind": K::kind(&()),
                "metadata": { "name": name },
                "status": { "blockingLocks": entries },
            });
            let params = PatchParams::apply(&lock_manager(&host)).force();
            if let Err(e) = api
                .patch_status(&name, &params, &Patch::Apply(&patch))
                .await
            {
                tracing::warn!(session = %name, error = %e, "could not report the locks in this host's way");
            }
        })
    })
}

/// The lock reporter of a backup Job's step (host `host`): on the BackupSession its Job names
/// ([`stash_crds::consts::BACKUP_SESSION_ENV`], in `POD_NAMESPACE`); `None` outside a Job or
/// without API access (the step then waits for the lock as restic does).
pub async fn job_lock_reporter(host: &str) -> Option<stash_restic::LockReporter> {
    let session = std::env::var(stash_crds::consts::BACKUP_SESSION_ENV)
        .ok()
        .filter(|s| !s.is_empty())?;
    let ns = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())?;
    let client = kube::Client::try_default().await.ok()?;
    Some(lock_reporter(
        Api::<BackupSession>::namespaced(client, &ns),
        session,
        host.to_string(),
    ))
}

/// What a successful backup tells the Repository (§7.4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepositoryReport {
    /// `restic check` found no errors.
    pub integrity: Option<bool>,
    /// Human size, e.g. `10.123 MiB`.
    pub size: Option<String>,
    /// Snapshots in the repository.
    pub snapshot_count: Option<i32>,
    /// Snapshots the retention policy removed.
    pub snapshots_removed: Option<i32>,
}

/// The field manager of the backup figures in a Repository's status, the agents' fields
/// (every agent of the repository writes them; the operator owns `status.conditions`).
pub const REPOSITORY_FIGURES_MANAGER: &str = "stash-agent";

/// The Repository's backup figures after a successful backup `at`, from its current status
/// and this backup's report: `lastBackupTime` now, `firstBackupTime` once, and each figure
/// whose step failed after the snapshot left as it was. Only the figures are set: the apply
/// that writes them owns them and nothing else.
pub fn backup_figures(
    current: Option<&RepositoryStatus>,
    r: &RepositoryReport,
    at: Time,
) -> RepositoryStatus {
    let current = current.cloned().unwrap_or_default();
    RepositoryStatus {
        integrity: r.integrity.or(current.integrity),
        size: r.size.clone().or(current.size),
        snapshot_count: r.snapshot_count.or(current.snapshot_count),
        snapshots_removed_on_last_cleanup: r
            .snapshots_removed
            .or(current.snapshots_removed_on_last_cleanup),
        first_backup_time: current.first_backup_time.or_else(|| Some(at.clone())),
        last_backup_time: Some(at),
        ..Default::default()
    }
}

/// Record a successful backup in the Repository status ([`backup_figures`]) by server-side
/// apply as [`REPOSITORY_FIGURES_MANAGER`], carrying the resourceVersion read: another agent's
/// write in between is a 409, and the figures are read and applied again (bounded).
pub async fn record_backup(
    api: &Api<Repository>,
    name: &str,
    r: &RepositoryReport,
) -> Result<(), kube::Error> {
    let mut attempt = 0;
    loop {
        let repo = api.get_status(name).await?;
        let now = Time(jiff::Timestamp::now());
        let figures = backup_figures(repo.status.as_ref(), r, now);
        let patch = serde_json::json!({
            "apiVersion": Repository::api_version(&()),
            "kind": Repository::kind(&()),
            "metadata": { "name": name, "resourceVersion": repo.resource_version() },
            "status": figures,
        });
        let pp = PatchParams::apply(REPOSITORY_FIGURES_MANAGER).force();
        match api.patch_status(name, &pp, &Patch::Apply(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The agents' transition check: a host writes its own entry only along an edge of its
/// lifecycle `L` ([`backup_host::Phase`], [`restore_host::Phase`]), `from` the phase it computed
/// `to` the one the write records. Every agent write goes through it, as the operator's go
/// through [`stash_runtime::StatusWriter`]; an illegal write is refused, logged and counted
/// (in the agent's own registry: agents serve no metrics endpoint, the log line is what shows).
pub fn check_host_write<L: Lifecycle>(from: L, to: L) -> Result<(), StatusError> {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    check_transition::<L>(METRICS.get_or_init(Metrics::default), Some(from), to)
}

/// [`upsert_restore_hosts`] after the restore host's `Report` transition is checked
/// ([`check_host_write`]): refused, and nothing written, unless `from` is `Reporting` (or a
/// rewrite from `Reported`).
pub async fn report_restore_hosts(
    api: &Api<RestoreSession>,
    name: &str,
    from: restore_host::Phase,
    entries: &[HostRestoreStats],
) -> Result<(), StatusError> {
    check_host_write(from, restore_host::Phase::Reported)?;
    upsert_restore_hosts(api, name, entries).await?;
    Ok(())
}

#[cfg(test)]
mod host_write_tests {
    use super::*;

    #[test]
    fn a_host_entry_is_written_only_from_reporting() {
        use backup_host::Phase as B;
        use restore_host::Phase as R;
        assert!(check_host_write(B::Reporting, B::Reported).is_ok());
        assert!(check_host_write(B::Reported, B::Reported).is_ok());
        for from in [B::Waiting, B::LookingUp, B::BackingUp, B::Ended] {
            assert!(
                matches!(
                    check_host_write(from, B::Reported),
                    Err(StatusError::IllegalTransition { .. })
                ),
                "{from:?}"
            );
        }
        assert!(check_host_write(R::Reporting, R::Reported).is_ok());
        for from in [R::Waiting, R::Restoring, R::Ended] {
            assert!(check_host_write(from, R::Reported).is_err(), "{from:?}");
        }
    }
}

/// A Warning (`HostBackupFollowUpFailed`) per follow-up step that failed after the snapshot:
/// the sidecar's and the backup Job's (`update-status`) alike.
pub async fn publish_follow_up_failures(
    events: &stash_runtime::events::Events,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    warnings: &[String],
) {
    for w in warnings {
        events
            .publish(
                reference,
                stash_runtime::events::Severity::Warning,
                "HostBackupFollowUpFailed",
                w.clone(),
            )
            .await;
    }
}

/// A Warning (`StaleLockRemoved`) per stale restic lock removed on the way (its host, pid and
/// age): the sidecar's and the backup Job's alike.
pub async fn publish_removed_locks(
    events: &stash_runtime::events::Events,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    locks: &[String],
) {
    for lock in locks {
        events
            .publish(
                reference,
                stash_runtime::events::Severity::Warning,
                "StaleLockRemoved",
                format!("removed a stale restic lock of the repository: {lock}"),
            )
            .await;
    }
}

#[cfg(test)]
mod figures_tests {
    use super::*;

    fn at(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    #[test]
    fn the_figures_keep_what_a_failed_step_did_not_measure_and_the_first_backup_time() {
        let current = RepositoryStatus {
            first_backup_time: Some(at("2026-01-01T00:00:00Z")),
            last_backup_time: Some(at("2026-01-02T00:00:00Z")),
            integrity: Some(true),
            size: Some("1 MiB".into()),
            snapshot_count: Some(4),
            snapshots_removed_on_last_cleanup: Some(1),
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "WipeOut".into(),
                status: "False".into(),
                reason: "WipeOutFailed".into(),
                message: String::new(),
                last_transition_time: at("2026-01-02T00:00:00Z"),
                observed_generation: None,
            }],
            ..Default::default()
        };
        // Retention ran (count, removed), stats and check did not.
        let report = RepositoryReport {
            snapshot_count: Some(3),
            snapshots_removed: Some(2),
            ..Default::default()
        };
        let f = backup_figures(Some(&current), &report, at("2026-01-03T00:00:00Z"));
        assert_eq!(f.first_backup_time, Some(at("2026-01-01T00:00:00Z")));
        assert_eq!(f.last_backup_time, Some(at("2026-01-03T00:00:00Z")));
        assert_eq!(f.integrity, Some(true));
        assert_eq!(f.size.as_deref(), Some("1 MiB"));
        assert_eq!(f.snapshot_count, Some(3));
        assert_eq!(f.snapshots_removed_on_last_cleanup, Some(2));
        // The operator's conditions are not the agents' to write.
        assert!(f.conditions.is_empty());
        let json = serde_json::to_value(&f).expect("json");
        assert!(json.get("conditions").is_none(), "{json}");
    }

    #[test]
    fn the_first_backup_sets_both_times() {
        let f = backup_figures(None, &Default::default(), at("2026-01-03T00:00:00Z"));
        assert_eq!(f.first_backup_time, f.last_backup_time);
        assert_eq!(f.integrity, None);
    }
}
