//! RestoreSession controller: observe, let the pure machine decide, perform its effects
//! (stash-api.md §5.8, §7.3, decision 2).
use std::sync::Arc;

use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        Controller,
        finalizer::{Event as Finalizer, finalizer},
    },
};
use stash_crds::{RestoreSession, common::Driver, consts, duration::GoDuration};
use stash_machines::{
    EventRecord, JobState, Performed, StatusPatch,
    restore_session::{self as machine, HostReport, Observation, TargetModel},
};
use stash_runtime::{Action, Perform, Reconcile, StatusWriter, status::StatusError};

use super::{Ctx, Error};
use stash_core::target::{Hosts, WorkloadKind};

struct RestoreSessions(Arc<Ctx>);

/// The hosts that will restore (§9.3, [`stash_core::target::hosts`]): numbered ones by name,
/// or why they cannot be taken (too many: [`machine::numbered_hosts`]), or a DaemonSet's
/// nodes by number.
async fn target_hosts(
    ctx: &Ctx,
    rs: &RestoreSession,
    ns: &str,
) -> Result<(TargetModel, Result<Vec<String>, String>, Option<u32>), Error> {
    let target = rs.spec.target.clone().unwrap_or_default();
    let kind = WorkloadKind::of(&target.target_ref);
    if rs.spec.driver() == Driver::VolumeSnapshotter {
        return Ok((TargetModel::VolumeSnapshotter, Ok(vec![]), None));
    }
    let model = if kind.is_some() {
        TargetModel::Workload
    } else {
        TargetModel::Job
    };
    let name = target.target_ref.name.clone().unwrap_or_default();
    let scale = super::workload::scale_of(ctx, kind, ns, &name).await?;
    Ok(
        match stash_core::target::hosts(kind, scale, target.replicas) {
            Hosts::Numbered(n) => {
                // A StatefulSet's pods and a per-ordinal restore's Jobs are numbered hosts;
                // any other target is one host.
                let numbered = match kind {
                    Some(k) => k == WorkloadKind::StatefulSet,
                    None => crate::jobs::restore::ordinals(rs).is_some(),
                };
                let alias = target.alias.as_deref();
                (model, machine::numbered_hosts(n, alias, numbered), None)
            }
            Hosts::Nodes(n) => (model, Ok(vec![]), Some(n)),
        },
    )
}

impl RestoreSessions {
    async fn apply(&self, rs: Arc<RestoreSession>) -> Result<Action, Error> {
        let ctx = &self.0;
        let ns = rs.namespace().unwrap_or_default();
        let status = rs.status.as_ref();
        // Locks its agents reported in their way: judged first (docs/sessions.md "Locks").
        let judge_again = match rs.spec.repository.as_ref() {
            Some(r) if crate::locks::has_undecided(rs.as_ref()) => {
                crate::locks::judge_reported(ctx, rs.as_ref(), &r.name).await?
            }
            _ => false,
        };
        // A finished session never changes again: no observation, no requeue (issue 12). Only
        // an edit of the object (a watch event) brings it back here.
        if status
            .and_then(|s| s.phase)
            .is_some_and(machine::Phase::is_terminal)
        {
            return Ok(if judge_again {
                Action::requeue(crate::locks::JUDGE_AGAIN)
            } else {
                Action::await_change()
            });
        }
        let (model, hosts, node_hosts) = target_hosts(ctx, &rs, &ns).await?;
        let (hosts, hosts_refused) = match hosts {
            Ok(hosts) => (hosts, None),
            Err(reason) => (vec![], Some(reason)),
        };
        let job = match model {
            TargetModel::Job => {
                crate::jobs::restore::observe(&ctx.client, &ctx.stores.jobs, &rs).await
            }
            _ => None,
        };
        let obs = Observation {
            name: rs.name_any(),
            created_at: rs
                .meta()
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| u64::try_from(t.0.as_second()).unwrap_or(0)),
            phase: status.and_then(|s| s.phase),
            total_hosts: status
                .and_then(|s| s.total_hosts)
                .and_then(|t| u32::try_from(t).ok()),
            hosts: status
                .map(|s| s.stats.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|h| HostReport {
                    hostname: h.hostname.clone().unwrap_or_default(),
                    phase: h.phase,
                    error: h.error.clone().filter(|e| !e.is_empty()),
                    duration: h
                        .duration
                        .as_ref()
                        .map(GoDuration::as_std)
                        .unwrap_or_default(),
                })
                .collect(),
            model,
            target_hosts: hosts,
            hosts_refused,
            node_hosts,
            rules: rs
                .spec
                .restore_rules()
                .iter()
                .map(|r| machine::Rule {
                    target_hosts: r.target_hosts.clone(),
                })
                .collect(),
            job,
            now: u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0),
            // The RestoreSession's `timeOut` is its deadline.
            policy: ctx.policy.with_time_out(
                stash_crds::duration::time_out(rs.spec.time_out.as_deref())
                    .ok()
                    .flatten(),
            ),
        };
        let decision = machine::decide(&obs);
        let mut perform = RestoreEffects {
            ctx,
            rs: &rs,
            api: Api::namespaced(ctx.client.clone(), &ns),
            writer: StatusWriter::new(ctx.metrics.clone(), "restoresession"),
            obs,
        };
        stash_runtime::interpret(decision, &mut perform, ctx.policy.poll).await
    }
}

/// The field manager of the operator's RestoreSession status fields (server-side apply).
use stash_core::names::FIELD_MANAGER;

/// How a RestoreSession's effects are done (the order and the refusals are the interpreter's).
struct RestoreEffects<'a> {
    ctx: &'a Ctx,
    rs: &'a RestoreSession,
    api: Api<RestoreSession>,
    writer: StatusWriter,
    obs: Observation,
}

impl Perform<machine::Phase, machine::Action> for RestoreEffects<'_> {
    type Error = Error;

    async fn act(&mut self, action: &machine::Action) -> Result<Performed, Error> {
        match action {
            machine::Action::CreateRestoreJobs => {
                let op = stash_core::jobs::inputs::OperatorInputs {
                    pushgateway_url: self.ctx.inject.pushgateway_url.clone(),
                };
                let created = crate::jobs::restore::ensure_jobs(
                    &self.ctx.client,
                    &self.ctx.inject.image,
                    &op,
                    self.rs,
                )
                .await;
                Ok(crate::jobs::performed(created)?)
            }
        }
    }

    async fn write_status(&mut self, patch: StatusPatch<machine::Phase>) -> Result<(), Error> {
        let to = patch.phase;
        let (owned, unchanged) = super::owned_session_status(self.rs.status.as_ref(), &patch)
            .map_err(StatusError::from)?;
        self.writer
            .apply_phase(
                &self.api,
                self.rs,
                FIELD_MANAGER,
                unchanged,
                owned,
                self.obs.phase,
                to,
            )
            .await?;
        Ok(())
    }

    async fn emit(&mut self, event: EventRecord) {
        let reference = self.rs.object_ref(&());
        self.ctx.events.publish_record(&reference, event).await;
    }

    fn decide_refused(&mut self, _: &machine::Action, message: String) -> machine::Decision {
        // Nothing was created; the machine decides again with the refusal observed.
        self.obs.job = Some(JobState::Rejected { message });
        machine::decide(&self.obs)
    }
}

impl Reconcile<RestoreSession> for RestoreSessions {
    type Error = Error;
    const NAME: &'static str = "restoresession";

    async fn reconcile(&self, rs: Arc<RestoreSession>) -> Result<Action, Error> {
        let api = Api::<RestoreSession>::namespaced(
            self.0.client.clone(),
            &rs.namespace().unwrap_or_default(),
        );
        finalizer(&api, consts::STASH_FINALIZER, rs, |event| async move {
            match event {
                Finalizer::Apply(rs) => self.apply(rs).await,
                // The workload controller sees the deletion and removes `stash-init`.
                Finalizer::Cleanup(_) => Ok(Action::await_change()),
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        })
    }
}

/// Run the RestoreSession controller on the shared RestoreSession watch, woken by its restore
/// Jobs' changes too (subscribed now, driven when the returned future runs).
pub fn run(
    ctx: Arc<Ctx>,
    feeds: &mut stash_index::stores::Feeds,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let trigger = feeds.restores.applies();
    let jobs = feeds.jobs.triggers();
    async move {
        let controller = Controller::for_shared_stream(trigger, ctx.stores.restores.clone())
            .watches_shared_stream(jobs, stash_index::stores::owner::<RestoreSession, _>);
        stash_runtime::drive(
            controller,
            RestoreSessions(ctx.clone()),
            ctx.metrics.clone(),
            ctx.events.clone(),
        )
        .await;
    }
}
