//! `stash run`: the operator process — the shared watches and probes on every replica, the
//! admission webhooks and the Snapshot API on every replica, the controllers on the leader.
use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use kube::Client;
use stash_core::inject::InjectConfig;
use stash_machines::Policy;
use stash_runtime::{
    LeaderElection, Metrics,
    events::Events,
    server::{self, Readiness},
};

/// The `stash run` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct RunOptions {
    /// The controllers.
    #[command(flatten)]
    pub operator: stash_operator::Options,
    /// Admission webhooks (off unless `--webhook-addr` is given).
    #[command(flatten)]
    pub webhook: stash_admission::Args,
    /// Snapshot API (off unless `--snapshot-api-addr` is given).
    #[command(flatten)]
    pub snapshots: stash_snapshots::Args,
}

/// Run the operator until it loses leadership or is told to stop.
pub async fn run(all: RunOptions) -> anyhow::Result<()> {
    let opts = &all.operator;
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
    let (stores, mut feeds) = stash_index::stores::new();
    tokio::spawn({
        let (feeds, client) = (feeds.clone(), client.clone());
        async move { feeds.run(client).await }
    });
    let ctx = Arc::new(stash_operator::Ctx {
        client: client.clone(),
        inject: InjectConfig {
            image: opts.image.clone(),
            pushgateway_url: opts.pushgateway_url.clone(),
        },
        metrics: metrics.clone(),
        events: Events::new(client.clone(), stash_core::names::FIELD_MANAGER),
        policy: Policy {
            deadline: opts.session_deadline,
            poll: opts.poll,
        },
        overlap: opts.overlap,
        backup_history_limit: opts.backup_history_limit,
        stores,
    });
    // Webhooks are read-only: every replica serves them, not only the leader.
    let _webhook = match all.webhook.options(&opts.namespace)? {
        Some(w) => {
            let server =
                stash_admission::start(client.clone(), w, ctx.inject.clone(), ctx.stores.clone())
                    .await
                    .context("admission webhooks")?;
            if all.webhook.enable_validating_webhook && !all.webhook.bypass_validating_webhook_xray
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
    let snapshots = match all.snapshots.options(&opts.namespace).map(|mut o| {
        o.catalog.reader_image = Some(opts.image.clone());
        o.available_timeout = Duration::ZERO;
        o
    }) {
        Some(o) => Some(
            stash_snapshots::start(
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

    stash_operator::jobs::builtin::ensure(&client, &opts.image)
        .await
        .context("built-in Functions and Tasks")?;
    let controllers = stash_operator::controllers(ctx.clone(), &mut feeds);
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
        match stash_admission::xray(&client, Duration::from_secs(30)).await {
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
