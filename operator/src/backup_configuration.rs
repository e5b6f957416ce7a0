//! BackupConfiguration controller (stash-api.md §5.1, §5.2): finalizer, the trigger CronJob,
//! its ServiceAccount and RoleBinding. Sidecars are the workload controller's business (it
//! watches BackupConfigurations too).
//!
//! It also bounds the history (issue 12): of each configuration, the newest
//! `spec.backupHistoryLimit` (else `--backup-history-limit`) finished BackupSessions are kept;
//! older ones are deleted in the background, which takes their Jobs and Pods (owned by the
//! session) with them. The sessions are read from a [`History`] index fed by one watch, never
//! listed per reconcile; a session that finishes prunes its configuration at once. Both
//! watches are the shared ones ([`stash_index::stores`]).
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{Stream, StreamExt};

use k8s_openapi::api::{
    batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec},
    core::v1::{Container, PodSpec, PodTemplateSpec, ServiceAccount},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams},
    runtime::{
        Controller,
        finalizer::{Event as Finalizer, finalizer},
        watcher,
    },
};
use stash_core::names::offshoot_labels;
use stash_crds::{
    BackupConfiguration, BackupSession, backup_configuration::BackupConfigurationStatus, consts,
};
use stash_machines::backup_configuration::{Outcome, readiness};
use stash_runtime::{Action, Reconcile, status::StatusWriter};

use super::{
    Ctx, Error, conditions,
    history::SessionFacts,
    rbac,
    stores::{Change, Feeds},
};

use stash_core::names::FIELD_MANAGER;

/// Event reason of a configuration whose trigger CronJob the API server refused.
const INVALID: &str = stash_machines::reasons::INVALID_BACKUP_CONFIGURATION;

/// The trigger CronJob of `bc` (§5.2).
pub fn cron_job(
    bc: &BackupConfiguration,
    schedule: &str,
    image: &str,
    service_account: &str,
    pushgateway_url: &str,
) -> CronJob {
    let labels = offshoot_labels(bc, consts::COMPONENT_BACKUP);
    let mut job_labels = labels.clone();
    job_labels.insert(consts::DELETE_JOB_ON_COMPLETION_LABEL.into(), "true".into());
    let ns = bc.namespace().unwrap_or_default();
    let zone_and_schedule = stash_core::cron::split_time_zone(schedule);
    CronJob {
        metadata: ObjectMeta {
            name: Some(bc.name_any()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            owner_references: bc.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: CronJobSpec {
            schedule: zone_and_schedule.1.into(),
            time_zone: zone_and_schedule.0.map(str::to_string),
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(1),
            failed_jobs_history_limit: Some(1),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(job_labels.clone()),
                    ..Default::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(2),
                    ttl_seconds_after_finished: Some(300),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(job_labels),
                            ..Default::default()
                        }),
                        spec: Some(PodSpec {
                            containers: vec![Container {
                                name: "stash".into(),
                                image: Some(image.into()),
                                image_pull_policy: Some("IfNotPresent".into()),
                                command: stash_core::names::agent_command(),
                                args: Some(vec![
                                    "create-backupsession".into(),
                                    format!("--backupsession.name={}", bc.name_any()),
                                    format!("--backupsession.namespace={ns}"),
                                    format!("--pushgateway-url={pushgateway_url}"),
                                ]),
                                ..Default::default()
                            }],
                            restart_policy: Some("Never".into()),
                            service_account_name: Some(service_account.into()),
                            ..Default::default()
                        }),
                    },
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

pub(crate) struct BackupConfigurations {
    pub(crate) ctx: Arc<Ctx>,
}

/// The history limit of `bc`: its own, else the operator's.
pub fn history_limit(bc: &BackupConfiguration, default: u32) -> u32 {
    bc.spec
        .backup_history_limit
        .map_or(default, |l| u32::try_from(l).unwrap_or(0))
}

/// Delete the finished sessions of `ns`/`config` beyond its limit (background propagation:
/// their Jobs and Pods follow). A session already gone counts as deleted.
async fn prune(ctx: &Ctx, ns: &str, config: &str) -> Result<(), Error> {
    let history = &ctx.stores.history;
    let excess = history.lock().expect("history lock").excess(ns, config);
    if excess.is_empty() {
        return Ok(());
    }
    let api = Api::<BackupSession>::namespaced(ctx.client.clone(), ns);
    for name in excess {
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        history
            .lock()
            .expect("history lock")
            .delete(ns, config, &name);
        tracing::debug!(namespace = ns, config, session = %name, "pruned a finished BackupSession");
    }
    Ok(())
}

/// How many configurations are pruned at a time: deletes one after another fall behind a burst
/// of finished sessions, and every session not yet deleted is held in the store.
const PRUNE_CONCURRENCY: usize = 8;

/// Prune a configuration whenever one of its sessions finishes (and every configuration over
/// its limit after each full list). The history itself is kept by the shared BackupSession
/// feed ([`stash_index::stores::Stores::history`]), before its subscribers are told.
///
/// The deletes run beside the changes, [`PRUNE_CONCURRENCY`] configurations at a time from a
/// set of those due: the shared watch waits for every subscriber, so a subscriber awaiting API
/// calls per change would hold up the BackupSession controller too.
pub(crate) async fn follow_sessions(
    ctx: Arc<Ctx>,
    changes: impl Stream<Item = Change<BackupSession>> + Send,
) {
    let history = &ctx.stores.history;
    let due: Mutex<BTreeSet<(String, String)>> = Mutex::default();
    let wake = tokio::sync::Notify::new();
    let follow = async {
        let mut changes = std::pin::pin!(changes);
        while let Some(change) = changes.next().await {
            let touched: Vec<(String, String)> = match change {
                Change::Listed(_) => history.lock().expect("history lock").over_limit(),
                Change::Applied(bs) => SessionFacts::of(&bs)
                    .filter(|f| f.finished)
                    .map(|f| (f.namespace, f.config))
                    .into_iter()
                    .collect(),
                Change::Deleted(_) => vec![],
            };
            if !touched.is_empty() {
                due.lock().expect("due lock").extend(touched);
                wake.notify_one();
            }
        }
    };
    let prune_due = async {
        loop {
            wake.notified().await;
            loop {
                let batch = std::mem::take(&mut *due.lock().expect("due lock"));
                if batch.is_empty() {
                    break;
                }
                futures::stream::iter(batch)
                    .for_each_concurrent(PRUNE_CONCURRENCY, |(ns, config)| {
                        let ctx = &ctx;
                        async move {
                            if let Err(e) = prune(ctx, &ns, &config).await {
                                tracing::warn!(error = %e, namespace = %ns, config = %config, "pruning BackupSessions");
                            }
                        }
                    })
                    .await;
            }
        }
    };
    // The changes end only with the watch (tests); the pruning never does.
    tokio::select! {
        () = follow => {}
        () = prune_due => {}
    }
}

impl BackupConfigurations {
    /// Write `outcome`'s phase and condition (server-side apply, field manager
    /// `stash-operator`, the only writer of this status). Best effort: the event and the
    /// retry do not depend on it.
    async fn write_status(
        &self,
        api: &Api<BackupConfiguration>,
        bc: &BackupConfiguration,
        outcome: &Outcome,
    ) {
        let (phase, facts) = readiness(outcome);
        let current = bc.status.clone().unwrap_or_default();
        let c = conditions::condition(
            &current.conditions,
            facts.type_,
            facts.status,
            facts.reason,
            facts.message,
            bc.metadata.generation,
        );
        let desired = BackupConfigurationStatus {
            phase: Some(phase),
            observed_generation: bc.metadata.generation,
            conditions: conditions::replace(&current.conditions, c),
        };
        let unchanged = bc.status.as_ref() == Some(&desired);
        let owned = match serde_json::to_value(&desired) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(configuration = %bc.name_any(), "status not serialisable: {e}");
                return;
            }
        };
        let writer = StatusWriter::new(self.ctx.metrics.clone(), "backupconfiguration");
        if let Err(e) = writer.apply(api, bc, FIELD_MANAGER, unchanged, owned).await {
            tracing::debug!(configuration = %bc.name_any(), "status not written: {e}");
        }
    }

    async fn apply(&self, bc: Arc<BackupConfiguration>) -> Result<Action, Error> {
        let ctx = &self.ctx;
        let ns = bc.namespace().unwrap_or_default();
        // History is bounded for paused configurations too.
        let limit = history_limit(&bc, ctx.backup_history_limit);
        ctx.stores.history.lock().expect("history lock").set_limit(
            &ns,
            &bc.name_any(),
            Some(limit),
        );
        prune(ctx, &ns, &bc.name_any()).await?;
        if bc.spec.paused {
            // Paused: nothing is reconciled; create-backupsession refuses to create sessions.
            return Ok(Action::requeue(Duration::from_secs(600)));
        }
        let name = bc.name_any();
        let owner = bc.controller_owner_ref(&());
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        // Every object named after the configuration is claimed first: a user's object of
        // that name is never modified, owned or deleted (rbac::claim).
        let sa = match bc
            .spec
            .runtime_settings
            .as_ref()
            .and_then(|r| r.pod.as_ref())
            .and_then(|p| p.service_account_name.clone())
        {
            Some(sa) => sa,
            None => {
                let sas = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns);
                rbac::claim(&sas, &name, owner.as_ref()).await?;
                let sa = ServiceAccount {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(ns.clone()),
                        owner_references: owner.clone().map(|o| vec![o]),
                        labels: Some(offshoot_labels(&bc, consts::COMPONENT_BACKUP)),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                sas.patch(&name, &pp, &Patch::Apply(&sa)).await?;
                name.clone()
            }
        };
        rbac::grant(
            &ctx.client,
            &ns,
            &name,
            &sa,
            rbac::cron_job_rules(&name),
            owner.clone(),
        )
        .await?;
        let cronjobs = Api::<CronJob>::namespaced(ctx.client.clone(), &ns);
        let existing = rbac::claim(&cronjobs, &name, owner.as_ref()).await?;
        match bc.spec.schedule.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(schedule) => {
                let cj = cron_job(
                    &bc,
                    schedule,
                    &ctx.inject.image,
                    &sa,
                    &ctx.inject.pushgateway_url,
                );
                match cronjobs.patch(&name, &pp, &Patch::Apply(&cj)).await {
                    Ok(_) => {}
                    // Refused for good (a zone the API server does not know, …): said on the
                    // configuration, not only in the operator's log.
                    Err(kube::Error::Api(e)) if stash_machines::api_error_is_permanent(e.code) => {
                        return Err(Error::Config(format!(
                            "the API server refused the trigger CronJob {ns}/{name}: {}",
                            e.message
                        )));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None if existing.is_some() => {
                // No schedule: manual sessions only.
                cronjobs.delete(&name, &Default::default()).await?;
            }
            None => {}
        }
        Ok(Action::requeue(Duration::from_secs(600)))
    }
}

impl Reconcile<BackupConfiguration> for BackupConfigurations {
    type Error = Error;
    const NAME: &'static str = "backupconfiguration";

    async fn reconcile(&self, bc: Arc<BackupConfiguration>) -> Result<Action, Error> {
        let api = Api::<BackupConfiguration>::namespaced(
            self.ctx.client.clone(),
            &bc.namespace().unwrap_or_default(),
        );
        // Whether `apply` ran (not only the finalizer's first write).
        let applied = std::sync::atomic::AtomicBool::new(false);
        let result = finalizer(&api, consts::STASH_FINALIZER, bc.clone(), |event| async {
            match event {
                Finalizer::Apply(bc) => {
                    applied.store(true, std::sync::atomic::Ordering::Relaxed);
                    self.apply(bc).await
                }
                // Owned objects (CronJob, ServiceAccount, RoleBinding, sessions) are garbage
                // collected; the workload controller sees the deletion and removes the sidecar.
                Finalizer::Cleanup(bc) => {
                    self.ctx
                        .stores
                        .history
                        .lock()
                        .expect("history lock")
                        .set_limit(&bc.namespace().unwrap_or_default(), &bc.name_any(), None);
                    Ok(Action::await_change())
                }
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        });
        // What the user must fix is said on the configuration, not only in the operator's log.
        let reason = match &result {
            Err(Error::Clash(_)) => Some(rbac::NAME_CLASH),
            Err(Error::Config(_)) => Some(INVALID),
            _ => None,
        };
        if let (Some(reason), Err(e)) = (reason, &result) {
            self.ctx
                .events
                .publish(
                    &bc.object_ref(&()),
                    stash_runtime::events::Severity::Warning,
                    reason,
                    e.to_string(),
                )
                .await;
        }
        // And in its status: the phase and the `CronJobCreated` condition (the machine's
        // readiness). A transient error, a paused or deleted configuration leave it as it is.
        let outcome = match &result {
            Ok(_) if !applied.load(std::sync::atomic::Ordering::Relaxed) || bc.spec.paused => None,
            Ok(_)
                if bc
                    .spec
                    .schedule
                    .as_deref()
                    .is_some_and(|s| !s.trim().is_empty()) =>
            {
                Some(Outcome::Scheduled)
            }
            Ok(_) => Some(Outcome::ManualOnly),
            Err(Error::Clash(m)) => Some(Outcome::NameClash(m.clone())),
            Err(Error::Config(m)) => Some(Outcome::Refused(m.clone())),
            Err(_) => None,
        };
        if let Some(outcome) = outcome {
            self.write_status(&api, &bc, &outcome).await;
        }
        result
    }

    /// A name held by someone else, or a CronJob the API server refused: retried less often
    /// (the user must act; the reconcile published a Warning Event saying what to do).
    fn error_policy(&self, _bc: Arc<BackupConfiguration>, error: &Error) -> Action {
        match error {
            Error::Clash(_) | Error::Config(_) => Action::requeue(Duration::from_secs(60)),
            _ => Action::requeue(Duration::from_secs(5)),
        }
    }
}

/// Run the BackupConfiguration controller on the shared BackupConfiguration watch, and its
/// history on the shared BackupSession watch (subscribed now, driven when the returned future
/// runs).
pub fn run(
    ctx: Arc<Ctx>,
    feeds: &mut Feeds,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let trigger = feeds.configurations.applies();
    let sessions = feeds.sessions.changes();
    async move {
        let controller = Controller::for_shared_stream(trigger, ctx.stores.configurations.clone())
            .owns(
                Api::<CronJob>::all(ctx.client.clone()),
                watcher::Config::default(),
            );
        tokio::join!(
            stash_runtime::drive(
                controller,
                BackupConfigurations { ctx: ctx.clone() },
                ctx.metrics.clone(),
                ctx.events.clone(),
            ),
            follow_sessions(ctx.clone(), sessions),
        );
    }
}
