//! BackupSession controller: observe, let the pure machine decide, perform its effects.
//!
//! The machine ([`stash_machines::backup_session::decide`]) holds every rule of the lifecycle
//! (§5.4, §7, decisions 1 and 3); this file only gathers the observation and carries out the
//! effects. The status write goes through [`stash_runtime::StatusWriter`], which refuses any
//! phase change outside the generated transition table.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::{
    Api, Resource, ResourceExt,
    runtime::{Controller, reflector::ObjectRef},
};
use stash_crds::{
    BackupConfiguration, BackupSession,
    backup_session::{BackupSessionStatus, HostPhase},
    common::Driver,
    duration::GoDuration,
};
use stash_machines::{
    EventRecord, JobState, Performed, StatusPatch,
    backup_session::{
        self as machine, Config, HostReport, Observation, OtherSession, Phase, RepositoryUse,
        TargetModel, claim,
    },
};
use stash_runtime::{Action, Perform, Reconcile, StatusWriter, status::StatusError};

/// The field manager of the operator's BackupSession status fields (server-side apply).
use stash_core::names::FIELD_MANAGER;

use super::{
    Ctx, Error,
    stores::{self, Feeds, sessions_of},
};
use stash_core::target::WorkloadKind;

fn created_at<K: Resource>(obj: &K) -> u64 {
    obj.meta()
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| u64::try_from(t.0.as_second()).unwrap_or(0))
}

/// The sessions of the other BackupConfigurations backing up into `bc`'s Repository, while
/// that Repository has never received a backup (afterwards nothing is looked at). The
/// Repository (fetched if its store does not have it yet), the configurations and their
/// sessions are read from the shared stores.
async fn observe_repository(
    ctx: &Ctx,
    ns: &str,
    bc: Option<&BackupConfiguration>,
) -> Result<RepositoryUse, Error> {
    let stores = &ctx.stores;
    let Some(repo_name) = bc.and_then(|b| b.spec.repository.as_ref()).map(|r| &r.name) else {
        return Ok(RepositoryUse::initialized());
    };
    let repo = stores::get_or_fetch(&stores.repositories, &ctx.client, ns, repo_name).await?;
    let initialized = repo.as_ref().is_some_and(|r| r.has_received_backup());
    if initialized {
        return Ok(RepositoryUse::initialized());
    }
    let own = bc.map(ResourceExt::name_any).unwrap_or_default();
    let others = stores::configurations_sharing(&stores.configurations, ns, repo_name, &own)
        .iter()
        .flat_map(|name| sessions_of(stores, ns, name))
        .map(|o| other_session(&o))
        .collect();
    Ok(RepositoryUse {
        initialized: false,
        others,
        claimed_by: None,
    })
}

fn other_session(o: &BackupSession) -> OtherSession {
    OtherSession {
        name: o.name_any(),
        phase: o.status.as_ref().and_then(|s| s.phase),
        created_at: created_at(o),
    }
}

/// The configuration this session runs, as the machine needs it. The number of hosts of a
/// StatefulSet or DaemonSet is a GET: the operator keeps no store of those kinds here (the
/// workload controllers' own caches are private to them).
async fn observe_config(
    ctx: &Ctx,
    ns: &str,
    bc: Option<&BackupConfiguration>,
    overlap: machine::OverlapPolicy,
) -> Result<Config, Error> {
    let Some(bc) = bc else {
        return Ok(Config::Missing);
    };
    let target = bc.spec.target.as_ref();
    let kind = target.and_then(|t| WorkloadKind::of(&t.target_ref));
    let model = match (bc.spec.driver(), kind) {
        (Driver::VolumeSnapshotter, _) => TargetModel::VolumeSnapshotter,
        (Driver::Restic, Some(_)) => TargetModel::Sidecar,
        (Driver::Restic, None) => TargetModel::Job,
    };
    let name = target
        .and_then(|t| t.target_ref.name.clone())
        .unwrap_or_default();
    // The one host-set rule (a DaemonSet's nodes as it is now, not the pods ready at this
    // moment: a host that is restarting still has to report); at least one.
    let scale = super::workload::scale_of(ctx, kind, ns, &name).await?;
    let total_hosts = stash_core::target::hosts(kind, scale, None).count();
    Ok(Config::Found {
        paused: bc.spec.paused,
        model,
        total_hosts: u32::try_from(total_hosts.max(1)).unwrap_or(u32::MAX),
        overlap,
    })
}

fn host_reports(status: Option<&BackupSessionStatus>) -> Vec<HostReport> {
    status
        .map(|s| s.stats.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|h| HostReport {
            hostname: h.hostname.clone().unwrap_or_default(),
            phase: h.phase,
            error: h.error.clone().filter(|e| !e.is_empty()),
            snapshots: u32::try_from(h.snapshots.len()).unwrap_or(u32::MAX),
            duration: h
                .duration
                .as_ref()
                .map(GoDuration::as_std)
                .unwrap_or_default(),
        })
        .collect()
}

struct BackupSessions(Arc<Ctx>, Claims);

/// Who claimed the first backup of each storage location that has none yet, by the location
/// ([`stash_core::location::backend_key`]: two Repository objects on one bucket and prefix
/// are one key): the session's (namespace, uid, name) and when. The leader is the only
/// decider, so an in-process record makes "one first backup at a time" hold even where the
/// stores lag behind each other; a new leader finds the running sessions instead.
type Claims = Arc<Mutex<HashMap<String, (String, String, String, Instant)>>>;

impl Reconcile<BackupSession> for BackupSessions {
    type Error = Error;
    const NAME: &'static str = "backupsession";

    async fn reconcile(&self, bs: Arc<BackupSession>) -> Result<Action, Error> {
        let ctx = &self.0;
        // The other sessions and configurations are read from the shared stores: only once
        // they listed (an older session not listed yet would let a newer one start first).
        ctx.stores.ready().await?;
        let ns = bs.namespace().unwrap_or_default();
        let bc_name = bs.spec.configuration_name();
        // Locks an agent of this session reported in its way: judged first, also once the
        // session ended (its follow-up `forget` runs after the report) — a dead agent's are
        // removed while the agent's command waits for them.
        let judge_again = if crate::locks::has_undecided(bs.as_ref()) {
            let bc_name = bs.spec.configuration_name();
            let bc = stores::get_or_fetch(&ctx.stores.configurations, &ctx.client, &ns, &bc_name)
                .await?
                .ok_or_else(|| Error::Waiting(format!("BackupConfiguration {bc_name}")))?;
            crate::locks::judge_reported(ctx, bs.as_ref(), &bc.spec.repository_name()).await?
        } else {
            false
        };
        let status = bs.status.as_ref();
        if status
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_terminal())
        {
            // A failed session with retries left is followed by a new one (`retryConfig`).
            let retry = if machine::retry::pending(
                status.and_then(|s| s.phase) == Some(Phase::Failed),
                bs.spec.retry_left(),
                status.and_then(|s| s.retried),
            ) {
                let bc =
                    stores::get_or_fetch(&ctx.stores.configurations, &ctx.client, &ns, &bc_name)
                        .await?;
                crate::retry::follow(ctx, &bs, bc.as_deref()).await?
            } else {
                None
            };
            let judge = judge_again.then_some(crate::locks::JUDGE_AGAIN);
            return Ok(match (retry, judge) {
                (Some(a), Some(b)) => Action::requeue(a.min(b)),
                (Some(a), None) | (None, Some(a)) => Action::requeue(a),
                (None, None) => Action::await_change(),
            });
        }
        let bc =
            stores::get_or_fetch(&ctx.stores.configurations, &ctx.client, &ns, &bc_name).await?;
        let bc = bc.as_deref();
        let config = observe_config(ctx, &ns, bc, ctx.overlap).await?;
        // Only a session that could start needs the Repository's other users (a paused
        // configuration's sessions cannot start).
        let could_start = status
            .and_then(|s| s.phase)
            .is_none_or(|p| p == Phase::Pending)
            && matches!(config, Config::Found { paused: false, .. });
        let repository = if could_start {
            observe_repository(ctx, &ns, bc).await?
        } else {
            RepositoryUse::initialized()
        };
        let others = sessions_of(&ctx.stores, &ns, &bc_name)
            .iter()
            .filter(|o| o.uid() != bs.uid())
            .map(|o| other_session(o))
            .collect();
        let job = match &config {
            Config::Found {
                model: TargetModel::Job,
                ..
            } => crate::jobs::backup::observe(&ctx.client, &ctx.stores.jobs, &bs).await,
            _ => None,
        };
        let obs = Observation {
            name: bs.name_any(),
            created_at: created_at(bs.as_ref()),
            phase: status.and_then(|s| s.phase),
            total_hosts: status
                .and_then(|s| s.total_hosts)
                .and_then(|t| u32::try_from(t).ok()),
            hosts: host_reports(status),
            config,
            others,
            repository,
            job,
            now: u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0),
            // The configuration's `timeOut` is its sessions' deadline.
            // (One that does not parse, which admission refuses, counts as absent.)
            policy: ctx.policy.with_time_out(
                stash_crds::duration::time_out(bc.and_then(|b| b.spec.time_out.as_deref()))
                    .ok()
                    .flatten(),
            ),
        };
        let decision = machine::decide(&obs);
        let mut perform = BackupEffects {
            ctx,
            claims: &self.1,
            bs: &bs,
            bc,
            api: Api::namespaced(ctx.client.clone(), &ns),
            writer: StatusWriter::new(ctx.metrics.clone(), Self::NAME),
            obs,
        };
        stash_runtime::interpret(decision, &mut perform, ctx.policy.poll).await
    }
}

/// How a BackupSession's effects are done (the order and the refusals are the interpreter's).
struct BackupEffects<'a> {
    ctx: &'a Ctx,
    claims: &'a Claims,
    bs: &'a BackupSession,
    bc: Option<&'a BackupConfiguration>,
    api: Api<BackupSession>,
    writer: StatusWriter,
    obs: Observation,
}

impl Perform<Phase, machine::Action> for BackupEffects<'_> {
    type Error = Error;

    async fn act(&mut self, action: &machine::Action) -> Result<Performed, Error> {
        match action {
            machine::Action::GrantSidecars => {
                // The workload controller writes the Role (a new session triggers it); the
                // session starts once the shared store shows the grant (its change triggers
                // this controller again).
                let session = self.bs.name_any();
                match self.bc {
                    Some(bc) if !super::workload::sidecar_may_report(self.ctx, bc, &session) => {
                        Err(Error::Waiting(format!(
                            "the sidecar's Role does not name BackupSession {session} yet"
                        )))
                    }
                    _ => Ok(Performed::Done),
                }
            }
            machine::Action::ClaimRepository => self.claim_repository().await,
            machine::Action::CreateBackupJob => {
                let op = stash_core::jobs::inputs::OperatorInputs {
                    pushgateway_url: self.ctx.inject.pushgateway_url.clone(),
                };
                let created = crate::jobs::backup::ensure_job(&self.ctx.client, &op, self.bs).await;
                Ok(crate::jobs::performed(created)?)
            }
        }
    }

    async fn write_status(&mut self, patch: StatusPatch<Phase>) -> Result<(), Error> {
        let to = patch.phase;
        let (owned, unchanged) = super::owned_session_status(self.bs.status.as_ref(), &patch)
            .map_err(StatusError::from)?;
        self.writer
            .apply_phase(
                &self.api,
                self.bs,
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
        let reference = self.bs.object_ref(&());
        self.ctx.events.publish_record(&reference, event).await;
    }

    fn decide_refused(&mut self, action: &machine::Action, message: String) -> machine::Decision {
        // Nothing was done; the machine decides again with the refusal observed.
        match action {
            machine::Action::ClaimRepository => self.obs.repository.claimed_by = Some(message),
            _ => self.obs.job = Some(JobState::Rejected { message }),
        }
        machine::decide(&self.obs)
    }
}

impl BackupEffects<'_> {
    /// Claim the first backup of this session's storage location; refused, naming the holder,
    /// while another session's claim stands ([`claim::stands`]) — the one recorded here, or
    /// that of a session running on the same location, of any Repository object in any
    /// namespace (what a new leader, with no record, still sees).
    async fn claim_repository(&self) -> Result<Performed, Error> {
        let ns = self.bs.namespace().unwrap_or_default();
        let repo = self
            .bc
            .map(|b| b.spec.repository_name())
            .unwrap_or_default();
        let stores = &self.ctx.stores;
        let key = stores::get_or_fetch(&stores.repositories, &self.ctx.client, &ns, &repo)
            .await?
            .and_then(|r| stash_core::location::backend_key(&r, &ns))
            .unwrap_or_else(|| format!("repository:{ns}/{repo}"));
        let uid = self.bs.uid().unwrap_or_default();
        let me = queue_key(self.bs);
        let holder_of = |s: &BackupSession, claimed_for| claim::Holder {
            live: true,
            started: s.status.as_ref().and_then(|st| st.phase) == Some(Phase::Running),
            key: queue_key(s),
            claimed_for,
        };
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let recorded = claims
            .get(&key)
            .and_then(|(holder_ns, holder_uid, name, at)| {
                if *holder_uid == uid {
                    return None;
                }
                let holder = match stores::get(&stores.sessions, holder_ns, name) {
                    Some(s) if s.uid().as_deref() == Some(holder_uid.as_str()) => {
                        holder_of(&s, at.elapsed())
                    }
                    _ => return None,
                };
                claim::stands(&holder, &me).then(|| (holder_ns.clone(), name.clone()))
            });
        let running = || {
            stores.sessions.state().into_iter().find_map(|s| {
                let holder = holder_of(&s, Duration::ZERO);
                if s.uid().as_deref() == Some(uid.as_str()) || !holder.started {
                    return None;
                }
                let s_ns = s.namespace().unwrap_or_default();
                let bc = stores::get(&stores.configurations, &s_ns, &s.spec.configuration_name())?;
                let r = stores::get(&stores.repositories, &s_ns, &bc.spec.repository_name())?;
                let same = !r.has_received_backup()
                    && stash_core::location::backend_key(&r, &s_ns).as_deref() == Some(&key);
                (same && claim::stands(&holder, &me)).then(|| (s_ns, s.name_any()))
            })
        };
        Ok(match recorded.or_else(running) {
            Some((holder_ns, name)) => {
                let whose = if holder_ns == ns {
                    String::new()
                } else {
                    format!(" of namespace {holder_ns}")
                };
                Performed::Refused(format!(
                    "BackupSession {name}{whose} holds the first backup of this storage location"
                ))
            }
            None => {
                claims.insert(key, (ns, uid, self.bs.name_any(), Instant::now()));
                Performed::Done
            }
        })
    }
}

/// A session's place in the first-backup queue.
fn queue_key(s: &BackupSession) -> claim::QueueKey {
    claim::QueueKey {
        created_at: created_at(s),
        namespace: s.namespace().unwrap_or_default(),
        name: s.name_any(),
    }
}

/// Whether a host entry succeeded (used by tests and the CLI).
pub fn host_succeeded(phase: Option<HostPhase>, error: Option<&str>) -> bool {
    phase == Some(HostPhase::Succeeded) && error.is_none_or(str::is_empty)
}

/// Run the BackupSession controller on the shared BackupSession watch, woken by its backup
/// Job's changes too (subscribed now, driven when the returned future runs). Its configuration,
/// Repository, sibling sessions and Job are read from the shared stores, never listed per
/// reconcile.
pub fn run(
    ctx: Arc<Ctx>,
    feeds: &mut Feeds,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let trigger = feeds.sessions.applies();
    let jobs = feeds.jobs.triggers();
    let roles = feeds.roles.triggers();
    async move {
        let controller = Controller::for_shared_stream(trigger, ctx.stores.sessions.clone())
            .watches_shared_stream(jobs, stores::owner::<BackupSession, _>)
            // A sidecar's Role naming a session: the session may start (GrantSidecars).
            .watches_shared_stream(roles, |role| {
                let ns = role.namespace();
                stores::sessions_named(&role)
                    .filter_map(|s| Some(ObjectRef::new(s).within(ns.as_deref()?)))
                    .collect::<Vec<_>>()
            });
        stash_runtime::drive(
            controller,
            BackupSessions(ctx.clone(), Claims::default()),
            ctx.metrics.clone(),
            ctx.events.clone(),
        )
        .await;
    }
}
