//! The BackupSession lifecycle and its stepper.
//!
//! Rules (stash-api.md §5.4, §7.1, §7.2 and decisions 1 and 3):
//! * a session starts only when no other session of its BackupConfiguration is `Running` and no
//!   older one is still `Pending`; otherwise it is `Skipped` (overlap policy `Skip`) or waits
//!   (`Wait`), always with a reason;
//! * a backup Job that ended while the session was still `Pending` (the operator crashed between
//!   creating it and writing `Running`) fails it;
//! * until a Repository has received its first backup, sessions of all the configurations that
//!   share it start one at a time (two first backups would both `restic init` it);
//! * a paused configuration skips a pending session (a running one completes normally); a
//!   missing configuration, a `VolumeSnapshotter` driver or zero hosts fail it;
//! * a running session completes once every host (`totalHosts`) has reported; it is `Succeeded`
//!   only if every host entry is `Succeeded`, carries no error and has at least one snapshot;
//! * deadlines: past [`Policy::deadline`] (from creation) a pending session is `Skipped` and a
//!   running one `Failed`, naming the hosts that never reported; a failed backup Job fails the
//!   session at once, and a Job that finished without every host reporting fails it too.

use crate::common::{EventKind, EventRecord, JobState, Policy, StatusPatch};
use crate::lifecycle::Lifecycle;
use crate::reasons;
use stash_macros::{lifecycle, phase_enum};
use std::collections::BTreeMap;
use std::time::Duration;

pub mod claim;
pub mod retry;
pub mod twin;

/// The phase of a BackupSession (`status.phase`).
#[lifecycle(name = "BackupSession", events(Start, Skip, Fail, Timeout, Complete))]
pub enum Phase {
    /// Created; waiting for the operator (or for an older session of the same configuration).
    #[initial]
    #[on(Start => Running, Skip => Skipped, Fail => Failed)]
    Pending,
    /// Backing up; hosts report into `status.stats`.
    #[on(
        Complete => Succeeded if all_hosts_succeeded,
        Complete => Failed,
        Fail => Failed,
        Timeout => Failed
    )]
    Running,
    /// Every host backed up with a snapshot.
    #[terminal]
    Succeeded,
    /// Some host failed or never reported, or the session could not start.
    #[terminal]
    Failed,
    /// Never ran: paused configuration, another session running, or started too late.
    #[terminal]
    Skipped,
    /// Declared by the API, never set for backups.
    #[terminal]
    #[declared_only]
    Unknown,
}

/// The phase of one host of a BackupSession (`status.stats[].phase`).
#[phase_enum]
pub enum HostPhase {
    /// The host backed up.
    Succeeded,
    /// The host failed.
    Failed,
}

/// What the BackupSession stepper needs from a lifecycle beyond [`Lifecycle`]: the names of the
/// phases, events and guard it drives. Implemented by the generated [`Phase`], by the
/// hand-written [`twin::Phase`], and by test-only broken lifecycles.
pub trait BackupLifecycle: Lifecycle {
    /// `Running`.
    const RUNNING: Self;
    /// `Succeeded`.
    const SUCCEEDED: Self;
    /// `Failed`.
    const FAILED: Self;
    /// `Skipped`.
    const SKIPPED: Self;
    /// Start running.
    const START: Self::Event;
    /// Skip without running.
    const SKIP: Self::Event;
    /// Fail (could not start, or the Job failed).
    const FAIL: Self::Event;
    /// The deadline passed while running.
    const TIMEOUT: Self::Event;
    /// Every host reported.
    const COMPLETE: Self::Event;
    /// Every host succeeded with a snapshot.
    const ALL_HOSTS_SUCCEEDED: Self::Guard;
}

impl BackupLifecycle for Phase {
    const RUNNING: Self = Phase::Running;
    const SUCCEEDED: Self = Phase::Succeeded;
    const FAILED: Self = Phase::Failed;
    const SKIPPED: Self = Phase::Skipped;
    const START: Event = Event::Start;
    const SKIP: Event = Event::Skip;
    const FAIL: Event = Event::Fail;
    const TIMEOUT: Event = Event::Timeout;
    const COMPLETE: Event = Event::Complete;
    const ALL_HOSTS_SUCCEEDED: Guard = Guard::AllHostsSucceeded;
}

/// What only a BackupSession decision asks for (besides status, events and requeues).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Create the session's backup Job (job model), if absent.
    CreateBackupJob,
    /// Let the workload's sidecars read and report on this session (sidecar model): done before
    /// the session is marked `Running`, which is what the sidecars wait for.
    GrantSidecars,
    /// Claim the first backup of a Repository that has none yet (its `restic init`), before
    /// starting: refused while another live session holds the claim.
    ClaimRepository,
}

/// A BackupSession effect.
pub type Effect<P = Phase> = crate::common::Effect<P, Action>;

/// A BackupSession decision.
pub type Decision<P = Phase> = crate::common::Decision<P, Action>;

/// How the target is backed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetModel {
    /// A sidecar in the workload backs up (the operator only sets `Running`).
    Sidecar,
    /// The operator creates a backup Job.
    Job,
    /// CSI volume snapshots: out of scope, fails with a clear reason.
    VolumeSnapshotter,
}

/// What to do with a session created while another of the same configuration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OverlapPolicy {
    /// Mark it `Skipped` with a reason (the default, like the legacy sidecar's cron skip).
    #[default]
    Skip,
    /// Keep it `Pending` until the other ends (or its own deadline passes).
    Wait,
}

/// The BackupConfiguration, as observed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Config {
    /// Not found.
    Missing,
    /// Found.
    Found {
        /// `spec.paused`.
        paused: bool,
        /// How the target is backed up.
        model: TargetModel,
        /// The hosts that will report (stash-api.md §9.3), computed by the runtime now.
        total_hosts: u32,
        /// What to do on overlap.
        overlap: OverlapPolicy,
    },
}

/// One `status.stats[]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostReport {
    /// `hostname`.
    pub hostname: String,
    /// `phase` (empty in upstream's errored job-model entries).
    pub phase: Option<HostPhase>,
    /// `error`, if not empty.
    pub error: Option<String>,
    /// How many snapshots the entry lists.
    pub snapshots: u32,
    /// `duration`, parsed.
    pub duration: Duration,
}

/// Another BackupSession of the same BackupConfiguration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OtherSession<P = Phase> {
    /// Its name.
    pub name: String,
    /// Its recorded phase (`None`: not yet set, i.e. pending).
    pub phase: Option<P>,
    /// Its creation time, seconds since the epoch.
    pub created_at: u64,
}

/// The session's Repository, as far as starting a session is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepositoryUse<P = Phase> {
    /// A backup has succeeded into it (`status.firstBackupTime` or `lastBackupTime` set), so it
    /// exists and nothing will `restic init` it again.
    pub initialized: bool,
    /// While it is not: the sessions of *other* BackupConfigurations that back up into it
    /// (empty once it is initialised; the runtime need not look).
    pub others: Vec<OtherSession<P>>,
    /// While it is not: the session that holds the claim on its first backup
    /// ([`Action::ClaimRepository`] was refused, naming it). The caches the others are read
    /// from may lag; the claim is what makes "one at a time" hold.
    pub claimed_by: Option<String>,
}

impl<P> RepositoryUse<P> {
    /// A Repository that already holds a backup.
    pub fn initialized() -> Self {
        Self {
            initialized: true,
            others: Vec::new(),
            claimed_by: None,
        }
    }
}

/// Everything the stepper looks at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Observation<P = Phase> {
    /// The session's name.
    pub name: String,
    /// Its creation time, seconds since the epoch.
    pub created_at: u64,
    /// `status.phase` (`None`: empty).
    pub phase: Option<P>,
    /// `status.totalHosts`.
    pub total_hosts: Option<u32>,
    /// `status.stats`.
    pub hosts: Vec<HostReport>,
    /// The BackupConfiguration.
    pub config: Config,
    /// The other sessions of the same configuration.
    pub others: Vec<OtherSession<P>>,
    /// The Repository it backs up into.
    pub repository: RepositoryUse<P>,
    /// The backup Job, if the runtime found one.
    pub job: Option<JobState>,
    /// Now, seconds since the epoch.
    pub now: u64,
    /// Deadlines and polling.
    pub policy: Policy,
}

/// The outcome of one host entry under decision 1.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostOutcome {
    /// `Succeeded`, no error, at least one snapshot.
    Succeeded,
    /// Anything else, with why.
    Failed(String),
}

/// Classifies one host entry: an entry that carries an error is failed, and so is one without a
/// snapshot or without a `Succeeded` phase (decision 1).
pub fn host_outcome(report: &HostReport) -> HostOutcome {
    if crate::entry_failed(
        report.phase == Some(HostPhase::Failed),
        report.error.as_deref(),
    ) {
        let why = report.error.clone().filter(|e| !e.is_empty());
        return HostOutcome::Failed(why.unwrap_or_else(|| "host reported Failed".into()));
    }
    match report.phase {
        None => HostOutcome::Failed("host entry has no phase".into()),
        Some(_) if report.snapshots == 0 => HostOutcome::Failed("no snapshot was taken".into()),
        Some(_) => HostOutcome::Succeeded,
    }
}

/// Per hostname: the outcome (an entry repeated for one host fails if any copy fails).
pub fn host_outcomes(hosts: &[HostReport]) -> BTreeMap<&str, HostOutcome> {
    let mut out: BTreeMap<&str, HostOutcome> = BTreeMap::new();
    for h in hosts {
        let o = host_outcome(h);
        match out.get(h.hostname.as_str()) {
            Some(HostOutcome::Failed(_)) => {}
            _ => {
                out.insert(&h.hostname, o);
            }
        }
    }
    out
}

/// The stepper with the generated lifecycle: what the runtime calls.
pub fn decide(obs: &Observation) -> Decision<Phase> {
    decide_with(obs)
}

/// The stepper over any [`BackupLifecycle`] (the generated one, the twin, or a test's).
pub fn decide_with<L: BackupLifecycle>(obs: &Observation<L>) -> Decision<L> {
    let current = obs.phase.unwrap_or(L::INITIAL);
    if current.is_terminal() {
        return Decision {
            phase: current,
            effects: vec![],
            rejection: None,
        };
    }
    if current == L::INITIAL {
        pending(obs, current)
    } else {
        running(obs, current)
    }
}

fn quiet<L: Lifecycle>(phase: L, requeue: Duration) -> Decision<L> {
    Decision::quiet(phase, requeue)
}

/// Fires `event` and turns the result into a decision.
fn fire<L: BackupLifecycle>(
    obs: &Observation<L>,
    current: L,
    event: L::Event,
    all_ok: bool,
    before: Vec<Effect<L>>,
    total_hosts: Option<u32>,
    reason: String,
) -> Decision<L> {
    let next = match current.transition(event, &|g| g == L::ALL_HOSTS_SUCCEEDED && all_ok) {
        Ok(next) => next,
        Err(rejection) => {
            return Decision {
                phase: current,
                effects: vec![],
                rejection: Some(rejection),
            };
        }
    };
    let mut effects = before;
    let mut status = StatusPatch {
        phase: next,
        total_hosts,
        session_duration: None,
        reason: None,
    };
    let (kind, ev_reason, message) = if next == L::SUCCEEDED {
        let total: Duration = obs.hosts.iter().map(|h| h.duration).sum();
        status.session_duration = Some(total);
        (
            EventKind::Normal,
            reasons::BACKUP_SESSION_SUCCEEDED,
            "backup succeeded for every host".to_string(),
        )
    } else if next == L::RUNNING {
        (EventKind::Normal, reasons::BACKUP_SESSION_RUNNING, reason)
    } else if next == L::SKIPPED {
        status.reason = Some(reason.clone());
        (EventKind::Warning, reasons::BACKUP_SESSION_SKIPPED, reason)
    } else {
        status.reason = Some(reason.clone());
        (EventKind::Warning, reasons::BACKUP_SESSION_FAILED, reason)
    };
    effects.push(Effect::WriteStatus(status));
    effects.push(Effect::Emit(EventRecord {
        kind,
        reason: ev_reason,
        message,
    }));
    if !next.is_terminal() {
        effects.push(Effect::RequeueAfter(
            obs.policy.requeue(obs.created_at, obs.now),
        ));
    }
    Decision {
        phase: next,
        effects,
        rejection: None,
    }
}

fn pending<L: BackupLifecycle>(obs: &Observation<L>, current: L) -> Decision<L> {
    let fail = |event, reason: String| fire(obs, current, event, false, vec![], None, reason);
    let (paused, model, total, overlap) = match &obs.config {
        Config::Missing => return fail(L::FAIL, "BackupConfiguration not found".into()),
        Config::Found {
            paused,
            model,
            total_hosts,
            overlap,
        } => (*paused, *model, *total_hosts, *overlap),
    };
    // A Job that already ended while the status still says Pending: the operator crashed
    // between creating it and writing `Running`. Starting now would only fail on the next step.
    // A permanent refusal (an invalid Job, a name over the limit, a missing Task): retrying
    // cannot help, and a session that stays Pending blocks every newer one of its configuration.
    if let Some(JobState::Rejected { message }) = &obs.job {
        return fail(
            L::FAIL,
            format!("could not create the backup Job: {message}"),
        );
    }
    if let Some(JobState::Failed { .. } | JobState::Succeeded) = &obs.job {
        return fail(
            L::FAIL,
            "the backup Job ended before the session was marked Running".into(),
        );
    }
    if paused {
        return fail(L::SKIP, "BackupConfiguration is paused".into());
    }
    if obs.policy.expired(obs.created_at, obs.now) {
        return fail(
            L::SKIP,
            format!(
                "deadline of {}s passed before the session could start",
                obs.policy.deadline.as_secs()
            ),
        );
    }
    if model == TargetModel::VolumeSnapshotter {
        return fail(
            L::FAIL,
            "the VolumeSnapshotter driver is not supported".into(),
        );
    }
    if total == 0 {
        return fail(L::FAIL, "no hosts to back up (totalHosts is 0)".into());
    }
    // Decision 3: one session of a configuration at a time. A running one blocks; an older
    // pending one goes first (it is decided on its own next reconcile).
    let key = |created_at: u64, name: &str| (created_at, name.to_string());
    let me = key(obs.created_at, &obs.name);
    let running = obs.others.iter().find(|o| o.phase == Some(L::RUNNING));
    let older_pending = obs
        .others
        .iter()
        .filter(|o| o.phase.is_none_or(|p| p == L::INITIAL) && key(o.created_at, &o.name) < me)
        .min_by_key(|o| key(o.created_at, &o.name));
    if let Some(other) = running {
        return match overlap {
            OverlapPolicy::Skip => fail(
                L::SKIP,
                format!(
                    "BackupSession {} of the same BackupConfiguration is running",
                    other.name
                ),
            ),
            OverlapPolicy::Wait => quiet(current, obs.policy.requeue(obs.created_at, obs.now)),
        };
    }
    if older_pending.is_some() {
        // The older one is decided on its own reconcile, in a moment: look again soon, so
        // this one sees it Running (and is skipped or waits) rather than finished.
        let soon = Duration::from_secs(1);
        return quiet(
            current,
            obs.policy.requeue(obs.created_at, obs.now).min(soon),
        );
    }
    // A Repository that has never received a backup is created (`restic init`) by the first
    // session's host. Two of them initialising one repository at once corrupt it, so until one
    // backup has succeeded, the sessions of every configuration sharing it start one at a time,
    // oldest first.
    if !obs.repository.initialized {
        let busy = obs.repository.others.iter().any(|o| {
            o.phase == Some(L::RUNNING)
                || (o.phase.is_none_or(|p| p == L::INITIAL) && key(o.created_at, &o.name) < me)
        });
        if busy {
            return quiet(current, obs.policy.requeue(obs.created_at, obs.now));
        }
        // Another session holds the claim (it started, or is starting, on a view that did not
        // show this one yet): look again soon.
        if obs.repository.claimed_by.is_some() {
            let soon = Duration::from_secs(1);
            return quiet(
                current,
                obs.policy.requeue(obs.created_at, obs.now).min(soon),
            );
        }
    }
    // The claim is the last step before the one that starts the backup: a session that
    // claims and then waits (for its sidecars' grant) would hold the claim while an older
    // session waits for it, and the older one would keep this one waiting in turn.
    let mut before = Vec::new();
    if model != TargetModel::Job {
        before.push(Effect::Act(Action::GrantSidecars));
    }
    if !obs.repository.initialized {
        before.push(Effect::Act(Action::ClaimRepository));
    }
    if model == TargetModel::Job {
        before.push(Effect::Act(Action::CreateBackupJob));
    }
    let how = if model == TargetModel::Job {
        "backup Job created"
    } else {
        "sidecars will back up"
    };
    fire(
        obs,
        current,
        L::START,
        false,
        before,
        Some(total),
        format!("backup of {total} host(s) started: {how}"),
    )
}

fn running<L: BackupLifecycle>(obs: &Observation<L>, current: L) -> Decision<L> {
    let total = obs
        .total_hosts
        .or(match &obs.config {
            Config::Found { total_hosts, .. } => Some(*total_hosts),
            Config::Missing => None,
        })
        .unwrap_or(0);
    let outcomes = host_outcomes(&obs.hosts);
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(h, o)| match o {
            HostOutcome::Failed(e) => Some(format!("{h} ({e})")),
            HostOutcome::Succeeded => None,
        })
        .collect();
    let fire =
        |event, all_ok, reason| fire(obs, current, event, all_ok, vec![], obs.total_hosts, reason);
    if total > 0 && outcomes.len() >= total as usize {
        let all_ok = failed.is_empty();
        let reason = format!("backup failed for host(s): {}", failed.join(", "));
        return fire(L::COMPLETE, all_ok, reason);
    }
    let missing = if total == 0 {
        "totalHosts is unknown".to_string()
    } else {
        format!(
            "{} of {total} host(s) never reported",
            total as usize - outcomes.len()
        )
    };
    match &obs.job {
        Some(JobState::Failed { message }) => {
            return fire(
                L::FAIL,
                false,
                format!("backup Job failed: {message}; {missing}"),
            );
        }
        Some(JobState::Succeeded) => {
            return fire(L::FAIL, false, format!("backup Job finished but {missing}"));
        }
        _ => {}
    }
    if obs.policy.expired(obs.created_at, obs.now) {
        return fire(
            L::TIMEOUT,
            false,
            format!(
                "deadline of {}s exceeded: {missing}",
                obs.policy.deadline.as_secs()
            ),
        );
    }
    quiet(current, obs.policy.requeue(obs.created_at, obs.now))
}
