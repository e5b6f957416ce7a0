//! How agents report: a session host's own entry (BackupSession and RestoreSession) by
//! server-side apply, one field manager per host; the Repository status through the status
//! subresource with read-modify-write retried on conflicts (several agents report into it).
use std::{fmt::Debug, sync::OnceLock, time::Duration};

use kube::{
    Api, Resource,
    api::{Patch, PatchParams, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};
use stash_crds::{
    BackupSession, Repository, RestoreSession, backup_session::HostBackupStats,
    restore_session::HostRestoreStats,
};
use stash_machines::{backup_host, restore_host};
use stash_runtime::{Lifecycle, Metrics, StatusError, check_transition};

/// Apply `change` to the freshly read object and write its status; on a conflict, read
/// again and retry (bounded).
pub async fn update_status<K>(
    api: &Api<K>,
    name: &str,
    change: impl Fn(&mut K),
) -> Result<(), kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let mut attempt = 0;
    loop {
        let mut obj = api.get_status(name).await?;
        change(&mut obj);
        match api.replace_status(name, &PostParams::default(), &obj).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

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

/// Server-side apply of one host's entry of a session's `status.stats` list-map, as the host's
/// own field manager; transient server errors are retried a few times.
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
    let mut attempt = 0;
    loop {
        match api.patch_status(name, &params, &Patch::Apply(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(err)) if err.code >= 500 && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(err) => return Err(err),
        }
    }
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

/// Record a successful backup in the Repository status (`lastBackupTime` now,
/// `firstBackupTime` once).
pub async fn record_backup(
    api: &Api<Repository>,
    name: &str,
    r: &RepositoryReport,
) -> Result<(), kube::Error> {
    update_status(api, name, |repo| {
        let status = repo.status.get_or_insert_with(Default::default);
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
        // A figure whose step failed after the snapshot is left as it was.
        if r.integrity.is_some() {
            status.integrity = r.integrity;
        }
        if r.size.is_some() {
            status.size = r.size.clone();
        }
        if r.snapshot_count.is_some() {
            status.snapshot_count = r.snapshot_count;
        }
        if r.snapshots_removed.is_some() {
            status.snapshots_removed_on_last_cleanup = r.snapshots_removed;
        }
        status.last_backup_time = Some(now.clone());
        if status.first_backup_time.is_none() {
            status.first_backup_time = Some(now);
        }
    })
    .await
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
