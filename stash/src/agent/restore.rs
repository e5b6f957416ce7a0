//! `stash restore`: the restore init-container (and the restore Job without a Task),
//! stash-api.md §7.3.
//!
//! Restores this host's data before the application starts, records the outcome in the
//! RestoreSession status and events. A host that already reported (a restarted pod) skips.
//! A failure is recorded and the process exits non-zero, so the pod does not start with
//! missing data.
use std::{path::PathBuf, time::Duration};

use kube::{Api, Client, Resource};
use stash_crds::{
    Repository, RestoreSession,
    duration::GoDuration,
    restore_session::{HostPhase, HostRestoreStats, Phase},
};
use stash_runtime::{
    LeaderElection,
    events::{Events, Severity},
};

use crate::{
    backup::Settings,
    restore,
    target::{WorkloadKind, backup_host},
};

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
    let client = Client::try_default().await?;
    let ns = opts.namespace.clone();
    let sessions = Api::<RestoreSession>::namespaced(client.clone(), &ns);
    let rs = sessions.get(&opts.restore_session).await?;
    let target = rs.spec.target.clone().unwrap_or_default();
    let kind = WorkloadKind::of(&target.target_ref);
    let host = match opts.pod_ordinal {
        Some(o) => format!("host-{o}"),
        None => backup_host(kind, &opts.pod_name, &opts.node_name),
    };
    let workload = target.target_ref.name.clone().unwrap_or_default();

    // Wait (a watch, not a poll) for the operator to start the session; a terminal session
    // or a host that already reported means there is nothing to do (a restarted pod).
    let decided = |rs: Option<&RestoreSession>| match rs {
        None => true,
        Some(rs) => {
            let status = rs.status.clone().unwrap_or_default();
            status
                .stats
                .iter()
                .any(|s| s.hostname.as_deref() == Some(host.as_str()))
                || matches!(
                    status.phase,
                    Some(Phase::Running | Phase::Succeeded | Phase::Failed | Phase::Unknown)
                )
        }
    };
    let rs = if decided(Some(&rs)) {
        rs
    } else {
        kube::runtime::wait::await_condition(sessions.clone(), &opts.restore_session, decided)
            .await?
            .ok_or_else(|| anyhow::anyhow!("RestoreSession {} was deleted", opts.restore_session))?
    };
    let status = rs.status.clone().unwrap_or_default();
    if status
        .stats
        .iter()
        .any(|s| s.hostname.as_deref() == Some(host.as_str()))
    {
        tracing::info!(%host, "this host already restored; nothing to do");
        return Ok(());
    }
    if status.phase != Some(Phase::Running) {
        tracing::info!(phase = ?status.phase, "the RestoreSession has ended; nothing to do");
        return Ok(());
    }
    let lock = (opts.restore_model != "job").then(|| {
        let name = format!(
            "lock-{}-{workload}-restore",
            kind.map_or("unknown", |k| k.kind()).to_lowercase()
        );
        LeaderElection::new(&ns, &name, &opts.pod_name, Duration::from_secs(15))
    });
    let leadership = match &lock {
        Some(l) => Some(l.acquire(client.clone()).await?),
        None => None,
    };
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
        };
        restore::run(&repo, &plan, &settings, &opts.target_dir).await
    }
    .await;
    if opts.metrics_enabled {
        let group = crate::metrics::restore_group(
            &opts.restore_session,
            &host,
            started.elapsed(),
            result.is_ok(),
        );
        crate::metrics::push_logged(&opts.pushgateway_url, &group).await;
    }
    let entry = HostRestoreStats {
        hostname: Some(host.clone()),
        phase: Some(if result.is_ok() {
            HostPhase::Succeeded
        } else {
            HostPhase::Failed
        }),
        duration: Some(GoDuration(started.elapsed())),
        error: result.as_ref().err().cloned(),
    };
    super::report::upsert_restore_hosts(&sessions, &opts.restore_session, &[entry]).await?;
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
