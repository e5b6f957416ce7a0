//! The operator: the controllers the leader runs, the job model ([`jobs`]), the RBAC it
//! grants agents ([`rbac`]) and the wipe-out of deleted Repositories ([`wipe`]). The `stash`
//! binary wires it with the webhooks and the Snapshot API (`stash run`).
//!
//! May not: decide a lifecycle step itself (it asks `stash-machines` and carries the
//! decision out through `stash-runtime`), or read the cluster other than through the shared
//! stores of `stash-index` (a GET only for what they do not hold).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use kube::Client;
use stash_machines::{Policy, backup_session::OverlapPolicy};
use stash_runtime::{Metrics, events::Events};

use stash_core::inject::InjectConfig;
use stash_index::stores::Feeds;
// The shared index the controllers read (`crate::stores` in every controller); users of the
// index depend on stash-index themselves.
use stash_index::{history, stores};

pub mod backup_configuration;
pub mod backup_session;
pub mod conditions;
pub mod default_backup;
#[cfg(test)]
mod fixtures;
pub mod jobs;
pub mod locks;
pub mod rbac;
pub mod repository;
pub mod restore_session;
pub mod retry;
pub mod wipe;
pub mod workload;

/// What every controller shares.
#[derive(Clone)]
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// Settings of injected containers and created pods.
    pub inject: InjectConfig,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Event publisher.
    pub events: Events,
    /// Session deadlines and polling.
    pub policy: Policy,
    /// What to do with a session created while another of the same configuration runs.
    pub overlap: OverlapPolicy,
    /// Finished BackupSessions kept per configuration without `spec.backupHistoryLimit`.
    pub backup_history_limit: u32,
    /// The shared watch-fed stores every reconcile reads ([`stores`]).
    pub stores: stores::Stores,
}

/// Operator settings (the `stash run` flags).
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Image of the containers the operator injects and creates (sidecar, jobs, cron jobs).
    #[arg(long, default_value = concat!("stash-rs/stash:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Where agents push metrics (empty: off).
    #[arg(long, default_value = "")]
    pub pushgateway_url: String,
    /// Lease duration of leader election.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How long a BackupSession may take from its creation before it fails.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    pub session_deadline: Duration,
    /// How often waiting sessions are looked at again.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// A session created while another of its configuration runs: `skip` or `wait`.
    #[arg(long, default_value = "skip", value_parser = parse_overlap)]
    pub overlap: OverlapPolicy,
    /// Finished BackupSessions kept per BackupConfiguration unless its
    /// `spec.backupHistoryLimit` says otherwise; older ones are deleted with their Jobs and Pods.
    #[arg(long, default_value_t = 5)]
    pub backup_history_limit: u32,
}

fn parse_overlap(s: &str) -> Result<OverlapPolicy, String> {
    match s {
        "skip" => Ok(OverlapPolicy::Skip),
        "wait" => Ok(OverlapPolicy::Wait),
        _ => Err(format!("--overlap must be skip or wait, not {s:?}")),
    }
}

/// Every controller, on the leader, until one ends. The controllers subscribe to the
/// shared watches (a change waits until each subscriber has it, so only what runs subscribes).
pub async fn controllers(ctx: Arc<Ctx>, feeds: &mut Feeds) {
    let backup_configurations = backup_configuration::run(ctx.clone(), feeds);
    let backup_sessions = backup_session::run(ctx.clone(), feeds);
    let restore_sessions = restore_session::run(ctx.clone(), feeds);
    let repositories = repository::run(ctx.clone(), feeds);
    let workloads = workload::run_all(ctx.clone(), feeds);
    tokio::join!(
        backup_configurations,
        backup_sessions,
        restore_sessions,
        repositories,
        workloads,
        default_backup::run_pvcs(ctx.clone()),
        default_backup::run_app_bindings(ctx.clone()),
    );
}

/// The status fields the operator owns on a session (phase, totalHosts, sessionDuration,
/// reason — the same names on BackupSession and RestoreSession), as `current` with `patch`
/// applied, without the hosts' entries (`stats`, a list-map each host's agent applies its own
/// entry of). Also whether that changes nothing.
pub(crate) fn owned_session_status<S, P>(
    current: Option<&S>,
    patch: &stash_machines::StatusPatch<P>,
) -> Result<(serde_json::Value, bool), serde_json::Error>
where
    S: serde::Serialize,
    P: serde::Serialize,
{
    let before = match current {
        Some(s) => Some(serde_json::to_value(s)?),
        None => None,
    };
    let mut desired = before.clone().unwrap_or_else(|| serde_json::json!({}));
    if let Some(o) = desired.as_object_mut() {
        o.insert("phase".into(), serde_json::to_value(&patch.phase)?);
        if let Some(t) = patch.total_hosts {
            o.insert(
                "totalHosts".into(),
                i32::try_from(t).unwrap_or(i32::MAX).into(),
            );
        }
        if let Some(d) = patch.session_duration {
            let d = stash_crds::duration::GoDuration(d);
            o.insert("sessionDuration".into(), serde_json::to_value(d)?);
        }
        if let Some(r) = &patch.reason {
            o.insert("reason".into(), r.clone().into());
        }
    }
    let unchanged = before.as_ref() == Some(&desired);
    if let Some(o) = desired.as_object_mut() {
        // The agents' (stats, blockingLocks) and the lock janitor's (lockDecisions): one owner
        // per field (docs/sessions.md "Status ownership").
        for other in ["stats", "blockingLocks", "lockDecisions"] {
            o.remove(other);
        }
    }
    Ok((desired, unchanged))
}

/// Operator errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A status write failed or was refused.
    #[error(transparent)]
    Status(#[from] stash_runtime::StatusError),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The sidecar could not be built.
    #[error(transparent)]
    Inject(#[from] stash_core::inject::InjectError),
    /// A user-facing configuration problem (also reported as an event).
    #[error("{0}")]
    Config(String),
    /// An object stash would write is held by someone else (issue 24: never taken over).
    #[error("{0}")]
    Clash(String),
    /// Waiting for another controller's write to reach the shared stores (retried when it does).
    #[error("waiting: {0}")]
    Waiting(String),
    /// The reconcile panicked (caught by the runtime; an event names it).
    #[error(transparent)]
    Panicked(#[from] stash_runtime::controller::Panicked),
}

impl From<rbac::WriteError> for Error {
    fn from(e: rbac::WriteError) -> Self {
        match e {
            rbac::WriteError::Kube(e) => Error::Kube(e),
            rbac::WriteError::Clash(m) => Error::Clash(m),
        }
    }
}

impl From<stores::Stopped> for Error {
    fn from(e: stores::Stopped) -> Self {
        Error::Config(e.to_string())
    }
}

impl stash_runtime::MetricLabel for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Status(_) => "status",
            Error::Finalizer(_) => "finalizer",
            Error::Inject(_) => "inject",
            Error::Config(_) => "config",
            Error::Clash(_) => "clash",
            Error::Waiting(_) => "waiting",
            Error::Panicked(_) => "panic",
        }
    }
}
