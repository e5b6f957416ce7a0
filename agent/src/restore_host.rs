//! `stash restore`: the restore init-container (and the restore Job without a Task),
//! stash-api.md §7.3.
//!
//! Restores this host's data before the application starts, records the outcome in the
//! RestoreSession status and events. What it does is the restore host machine's decision
//! ([`stash_machines::restore_host`]), from the session alone: a host that already reported (a
//! restarted pod) skips, and its entry is written only from `Reporting`, checked.
//! A failure is recorded and the process exits non-zero, so the pod does not start with
//! missing data.
use std::{path::PathBuf, time::Duration};

use kube::{Api, Client, Resource, ResourceExt};
use stash_crds::{
    Repository, RestoreSession,
    duration::GoDuration,
    restore_session::{HostPhase, HostRestoreStats},
};
use stash_machines::restore_host::{self, RestoreStep};
use stash_runtime::{
    LeaderElection,
    events::{Events, Severity},
};

use stash_core::target::{Host, WorkloadKind, backup_host, host_name};

use crate::{backup::Settings, restore};

/// Flags of `restore`.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// The RestoreSession.
    #[arg(long)]
    pub restore_session: String,
    /// `init-container` (default) or `job`.
    #[arg(long, default_value = "init-container")]
    pub restore_model: String,
    /// Where the storage Secret is mounted.
    #[arg(long, default_value = "/etc/stash/repository/secret")]
    pub secret_dir: PathBuf,
    /// Scratch space.
    #[arg(long, default_value = "/tmp")]
    pub scratch_dir: PathBuf,
    /// Use a restic cache.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_cache: bool,
    /// Backend connections.
    #[arg(long, default_value_t = 0)]
    pub max_connections: i32,
    /// Push metrics.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub metrics_enabled: bool,
    /// The pushgateway's URL.
    #[arg(long, default_value = "")]
    pub pushgateway_url: String,
    /// Where to restore to (the root of the pod's mount namespace).
    #[arg(long, default_value = "/")]
    pub target_dir: PathBuf,
    /// This pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// This pod's name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,
    /// This pod's node.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    /// The ordinal of a restore Job with volumeClaimTemplates.
    #[arg(long, env = "POD_ORDINAL")]
    pub pod_ordinal: Option<u32>,
}

/// Run one host's restore.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    run_with(Client::try_default().await?, opts).await
}

/// [`run`] with this client.
pub async fn run_with(client: Client, opts: Options) -> anyhow::Result<()> {
    let ns = opts.namespace.clone();
    let sessions = Api::<RestoreSession>::namespaced(client.clone(), &ns);
    let rs = sessions.get(&opts.restore_session).await?;
    let target = rs.spec.target.clone().unwrap_or_default();
    let kind = WorkloadKind::of(&target.target_ref);
    let alias = target.alias.as_deref();
    let host = match opts.pod_ordinal {
        Some(o) => host_name(alias, Host::Ordinal(u64::from(o))),
        None => backup_host(kind, alias, &opts.pod_name, &opts.node_name),
    };
    let workload = target.target_ref.name.clone().unwrap_or_default();

    // The host machine decides (stash_machines::restore_host) from the session alone: wait (a
    // watch, not a poll) until the operator starts it; a host that already reported (a
    // restarted pod) or a session that ended means there is nothing to do.
    let decided = |rs: Option<&RestoreSession>| {
        rs.is_none_or(|rs| {
            restore_host::decide(&restore::host_observation(rs, &host)).step != RestoreStep::Wait
        })
    };
    let rs = if decided(Some(&rs)) {
        rs
    } else {
        kube::runtime::wait::await_condition(sessions.clone(), &opts.restore_session, decided)
            .await?
            .ok_or_else(|| anyhow::anyhow!("RestoreSession {} was deleted", opts.restore_session))?
    };
    let decision = restore_host::decide(&restore::host_observation(&rs, &host));
    if let Some(r) = decision.rejection {
        anyhow::bail!("BUG: the restore host machine refused its own step: {r}");
    }
    match (decision.step, decision.phase) {
        (RestoreStep::Restore, _) => {}
        (_, restore_host::Phase::Reported) => {
            tracing::info!(%host, "this host already restored; nothing to do");
            return Ok(());
        }
        (_, phase) => {
            let session = rs.status.as_ref().and_then(|s| s.phase);
            tracing::info!(
                ?session,
                ?phase,
                "the RestoreSession has ended; nothing to do"
            );
            return Ok(());
        }
    }
    // The pods of one host take turns (a StatefulSet's or DaemonSet's pods are hosts of their
    // own and restore side by side; a restore Job's pod is its ordinal's only pod).
    let lock =
        (opts.restore_model != "job" && stash_core::target::host_is_shared(kind)).then(|| {
            let name = stash_core::names::restore_lease(kind, &workload);
            LeaderElection::new(&ns, &name, &opts.pod_name, Duration::from_secs(15))
        });
    let leadership = match &lock {
        Some(l) => Some(l.acquire(client.clone()).await?),
        None => None,
    };
    // Decided again under the Lease, from the session as it is now: every pod of a
    // Deployment, ReplicaSet or ReplicationController is the same host, and the pods started
    // together (`Recreate`, a surge, the pods the operator replaced) wait here for the first
    // one; once it has reported, the others find its entry and restore nothing over data its
    // application may already be using.
    let rs = if leadership.is_some() {
        sessions.get(&opts.restore_session).await?
    } else {
        rs
    };
    let decision = restore_host::decide(&restore::host_observation(&rs, &host));
    if decision.step != RestoreStep::Restore {
        if let Some(l) = leadership {
            l.release().await;
        }
        tracing::info!(%host, phase = ?decision.phase, "restored by another pod of this host, or ended; nothing to do");
        return Ok(());
    }
    let started = std::time::Instant::now();
    let result = async {
        let plan = restore::plan(&rs, &host, &[])?;
        let repo_name = rs
            .spec
            .repository
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default();
        let repo = Api::<Repository>::namespaced(client.clone(), &ns)
            .get(&repo_name)
            .await
            .map_err(|e| format!("Repository {repo_name}: {e}"))?;
        let settings = Settings {
            secret_dir: opts.secret_dir.clone(),
            scratch_dir: opts.scratch_dir.clone(),
            enable_cache: opts.enable_cache,
            max_connections: opts.max_connections,
            // A restore's shared lock is refused only by an exclusive one: a dead agent's
            // prune is reported on the session (docs/sessions.md "Locks").
            lock_reporter: Some(crate::report::lock_reporter(
                Api::<RestoreSession>::namespaced(client.clone(), &ns),
                opts.restore_session.clone(),
                host.clone(),
            )),
        };
        let mounts: Vec<String> = target
            .volume_mounts
            .iter()
            .map(|m| m.mount_path.clone())
            .collect();
        let filters = restore::filters(&rs, &host);
        restore::run(&repo, &plan, &filters, &settings, &opts.target_dir, &mounts).await
    }
    .await;
    let took = started.elapsed();
    let entry = HostRestoreStats {
        hostname: Some(host.clone()),
        phase: Some(if result.is_ok() {
            HostPhase::Succeeded
        } else {
            HostPhase::Failed
        }),
        duration: Some(GoDuration(took)),
        error: result.as_ref().err().cloned(),
    };
    // `Restoring --Restored|Fail--> Reporting`, then the checked `Report` write.
    let reporting = restore_host::after_restore(decision.phase, result.is_ok())?;
    // What the session waits for: retried for as long as it can still count.
    let state = || async {
        let phase = sessions
            .get(&opts.restore_session)
            .await
            .ok()
            .and_then(|s| s.status)
            .and_then(|s| s.phase);
        match phase {
            Some(p) if p.is_terminal() => stash_machines::backup_host::Session::Ended,
            Some(stash_crds::restore_session::Phase::Running) => {
                stash_machines::backup_host::Session::Running
            }
            _ => stash_machines::backup_host::Session::Pending,
        }
    };
    super::report::retried(
        || {
            super::report::report_restore_hosts(
                &sessions,
                &opts.restore_session,
                reporting,
                std::slice::from_ref(&entry),
            )
        },
        state,
        rs.creation_timestamp().map(|t| t.0),
    )
    .await?;
    // The metrics after the report: the session does not wait for the pushgateway.
    if opts.metrics_enabled {
        let group =
            crate::metrics::restore_group(&opts.restore_session, &host, took, result.is_ok());
        crate::metrics::push_logged(&opts.pushgateway_url, &group).await;
    }
    let events = Events::new(client.clone(), &format!("stash-restore-{}", opts.pod_name));
    let reference = rs.object_ref(&());
    if let Some(l) = leadership {
        l.release().await;
    }
    match result {
        Ok(()) => {
            events
                .publish(
                    &reference,
                    Severity::Normal,
                    "SuccessfulHostRestore",
                    format!("host {host} restored"),
                )
                .await;
            Ok(())
        }
        Err(e) => {
            events
                .publish(
                    &reference,
                    Severity::Warning,
                    "FailedHostRestore",
                    format!("host {host}: {e}"),
                )
                .await;
            anyhow::bail!("restore of host {host} failed: {e}")
        }
    }
}
