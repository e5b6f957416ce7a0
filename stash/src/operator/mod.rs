//! The operator (`stash run`): leader election, then the controllers.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use kube::Client;
use stash_machines::{Policy, backup_session::OverlapPolicy};
use stash_runtime::{
    LeaderElection, Metrics,
    events::Events,
    server::{self, Readiness},
};

use crate::inject::InjectConfig;

pub mod backup_configuration;
pub mod backup_session;
pub mod conditions;
pub mod default_backup;
#[cfg(test)]
mod fixtures;
pub mod history;
pub mod rbac;
pub mod repository;
pub mod restore_session;
pub mod stores;
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
    /// Admission webhooks (off unless `--webhook-addr` is given).
    #[command(flatten)]
    pub webhook: crate::admission::Args,
    /// Snapshot API (off unless `--snapshot-api-addr` is given).
    #[command(flatten)]
    pub snapshots: crate::snapshots::Args,
}

fn parse_overlap(s: &str) -> Result<OverlapPolicy, String> {
    match s {
        "skip" => Ok(OverlapPolicy::Skip),
        "wait" => Ok(OverlapPolicy::Wait),
        _ => Err(format!("--overlap must be skip or wait, not {s:?}")),
    }
}

/// Run the operator until it loses leadership or is told to stop.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connect to the Kubernetes API")?;
    let metrics = Metrics::default();
    let ready = Readiness::default();
    let (addr, serving) = server::serve(opts.metrics_addr, metrics.clone(), ready.clone())
        .await
        .with_context(|| format!("bind {}", opts.metrics_addr))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(serving);

    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let election = LeaderElection::new(
        &opts.namespace,
        "stash-operator",
        &identity,
        opts.lease_duration,
    );
    // One watch per kind, shared by the webhooks (every replica) and the controllers (the
    // leader's, which subscribe when it is elected).
    let (stores, mut feeds) = stores::new();
    tokio::spawn({
        let (feeds, client) = (feeds.clone(), client.clone());
        async move { feeds.run(client).await }
    });
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        inject: InjectConfig {
            image: opts.image.clone(),
            pushgateway_url: opts.pushgateway_url.clone(),
        },
        metrics: metrics.clone(),
        events: Events::new(client.clone(), "stash-operator"),
        policy: Policy {
            deadline: opts.session_deadline,
            poll: opts.poll,
        },
        overlap: opts.overlap,
        backup_history_limit: opts.backup_history_limit,
        stores,
    });
    // Webhooks are read-only: every replica serves them, not only the leader.
    let _webhook = match opts.webhook.options(&opts.namespace)? {
        Some(w) => {
            let server =
                crate::admission::start(client.clone(), w, ctx.inject.clone(), ctx.stores.clone())
                    .await
                    .context("admission webhooks")?;
            if opts.webhook.enable_validating_webhook
                && !opts.webhook.bypass_validating_webhook_xray
            {
                // The check goes through the API server and the webhook Service, which routes
                // only to Ready pods: readiness must not wait for it (that deadlocks a fresh
                // install). It runs beside the controllers and reports until it passes.
                tokio::spawn(xray_until_active(client.clone()));
            }
            Some(server)
        }
        None => None,
    };
    // The aggregated Snapshot API, like the webhooks, is served by every replica.
    let snapshots = match opts.snapshots.options(&opts.namespace).map(|mut o| {
        o.catalog.reader_image = Some(opts.image.clone());
        o.available_timeout = Duration::ZERO;
        o
    }) {
        Some(o) => Some(
            crate::snapshots::start(
                client.clone(),
                o,
                ctx.stores.repositories.clone(),
                feeds.repositories.changes(),
            )
            .await
            .context("snapshot API")?,
        ),
        None => None,
    };
    // Ready as a standby too: probes, metrics and webhooks are served by every replica, once
    // the stores the webhooks read have listed (straight from the API server: nothing here
    // goes through a webhook, so a fresh install cannot deadlock on it).
    ctx.stores.ready().await?;
    ready.set(true);
    let mut leadership = election
        .acquire(client.clone())
        .await
        .context("leader election")?;
    metrics.leader.set(1);

    crate::jobs::builtin::ensure(&client, &opts.image)
        .await
        .context("built-in Functions and Tasks")?;
    // The controllers subscribe to the shared watches (a change waits until each subscriber
    // has it, so only what runs subscribes).
    let backup_configurations = backup_configuration::run(ctx.clone(), &mut feeds);
    let backup_sessions = backup_session::run(ctx.clone(), &mut feeds);
    let restore_sessions = restore_session::run(ctx.clone(), &mut feeds);
    let repositories = repository::run(ctx.clone(), &mut feeds);
    let workloads = workload::run_all(ctx.clone(), &mut feeds);
    let controllers = async {
        tokio::join!(
            backup_configurations,
            backup_sessions,
            restore_sessions,
            repositories,
            workloads,
            default_backup::run_pvcs(ctx.clone()),
            default_backup::run_app_bindings(ctx.clone()),
        )
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = controllers => tracing::warn!("controllers ended"),
        _ = leadership.lost() => {
            metrics.leader.set(0);
            anyhow::bail!("lost leadership; exiting so a fresh process can compete again");
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
    }
    leadership.release().await;
    if let Some(s) = snapshots {
        s.stop();
    }
    Ok(())
}

/// Check, through the API server, that the validating webhook is active; log an error every
/// 30 s while it is not (a webhook that is not called admits invalid objects).
async fn xray_until_active(client: Client) {
    loop {
        match crate::admission::xray(&client, Duration::from_secs(30)).await {
            Ok(()) => {
                tracing::info!(
                    "validating webhook active: an invalid Repository was refused through the API server"
                );
                return;
            }
            Err(e) => tracing::error!(error = %e, "the validating webhook is not active yet"),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "stash".into())
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
        o.remove("stats");
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
    Inject(#[from] crate::inject::InjectError),
    /// A user-facing configuration problem (also reported as an event).
    #[error("{0}")]
    Config(String),
    /// An object stash would write is held by someone else (issue 24: never taken over).
    #[error("{0}")]
    Clash(String),
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

impl stash_runtime::MetricLabel for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Status(_) => "status",
            Error::Finalizer(_) => "finalizer",
            Error::Inject(_) => "inject",
            Error::Config(_) => "config",
            Error::Clash(_) => "clash",
            Error::Panicked(_) => "panic",
        }
    }
}
