//! The BackupSession model: world, environment actions, reference model, invariants.

use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest_state_machine::ReferenceStateMachine;
use stash_machines::backup_session::{
    BackupLifecycle, Config, HostPhase, HostReport, Observation, OtherSession, OverlapPolicy,
    RepositoryUse, TargetModel, decide_with,
};
use stash_machines::{Effect, JobState, Lifecycle, Policy};
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// At most this many sessions of the one BackupConfiguration.
pub const MAX_SESSIONS: usize = 3;

/// A phase with a name: the machines' phases and the reference's.
pub trait Named: Copy + Eq + Hash + Debug {
    /// The phase's name as serialized.
    fn phase_name(self) -> &'static str;
}

impl<L: Lifecycle> Named for L {
    fn phase_name(self) -> &'static str {
        self.name()
    }
}

/// The reference model's phases: plain names, nothing generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum RefPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl Named for RefPhase {
    fn phase_name(self) -> &'static str {
        match self {
            RefPhase::Pending => "Pending",
            RefPhase::Running => "Running",
            RefPhase::Succeeded => "Succeeded",
            RefPhase::Failed => "Failed",
            RefPhase::Skipped => "Skipped",
        }
    }
}

/// What a host writes into `status.stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Report {
    /// `Succeeded` with one snapshot.
    Good,
    /// `Succeeded` but no snapshot.
    NoSnapshot,
    /// Upstream's job-model quirk: an error and no phase.
    ErrorNoPhase,
    /// `Failed` with an error.
    Failed,
    /// `Succeeded` *and* an error.
    SucceededWithError,
}

/// One step of the environment (or of the controller).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The CronJob creates a session.
    Create,
    /// The controller reconciles session `i` and performs every effect.
    Reconcile(usize),
    /// The controller reconciles session `i`, performs the creation effects, and crashes
    /// before writing status.
    CrashAfterCreate(usize),
    /// A host of a running session reports (sidecars and Jobs report only while running, and
    /// only once per host).
    Report {
        /// Session index.
        session: usize,
        /// Host index (`host-N`).
        host: u8,
        /// What it reports.
        report: Report,
    },
    /// The backup Job of session `i` ends.
    JobEnds {
        /// Session index.
        session: usize,
        /// Whether it succeeded.
        ok: bool,
    },
    /// Time passes.
    Tick(u64),
    /// `spec.paused` is set.
    Pause(bool),
}

/// One session as stored.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Session<P> {
    /// Name.
    pub name: String,
    /// Creation time.
    pub created_at: u64,
    /// `status.phase`.
    pub phase: Option<P>,
    /// `status.totalHosts`.
    pub total_hosts: Option<u32>,
    /// `status.stats`.
    pub hosts: Vec<HostReport>,
    /// The backup Job.
    pub job: Option<JobState>,
}

/// Sessions of one BackupConfiguration, its Jobs and the clock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World<P> {
    /// The BackupConfiguration.
    pub config: Config,
    /// Deadlines.
    pub policy: Policy,
    /// Now.
    pub now: u64,
    /// The sessions.
    pub sessions: Vec<Session<P>>,
}

impl<P: Named> World<P> {
    /// One pending session `s0` at time 0.
    pub fn new(config: Config, deadline: u64) -> Self {
        let policy = Policy {
            deadline: Duration::from_secs(deadline),
            poll: Duration::from_secs(30),
        };
        let mut w = World {
            config,
            policy,
            now: 0,
            sessions: vec![],
        };
        w.create();
        w
    }

    /// Same world, other phase type.
    pub fn map<Q>(&self, f: impl Fn(P) -> Q) -> World<Q> {
        World {
            config: self.config.clone(),
            policy: self.policy,
            now: self.now,
            sessions: self
                .sessions
                .iter()
                .map(|s| Session {
                    name: s.name.clone(),
                    created_at: s.created_at,
                    phase: s.phase.map(&f),
                    total_hosts: s.total_hosts,
                    hosts: s.hosts.clone(),
                    job: s.job.clone(),
                })
                .collect(),
        }
    }

    fn create(&mut self) {
        if self.sessions.len() < MAX_SESSIONS {
            let name = format!("s{}", self.sessions.len());
            self.sessions.push(Session {
                name,
                created_at: self.now,
                phase: None,
                total_hosts: None,
                hosts: vec![],
                job: None,
            });
        }
    }

    /// The phase name of session `i` (`Pending` when empty).
    pub fn phase_name(&self, i: usize) -> &'static str {
        self.sessions[i].phase.map_or("Pending", P::phase_name)
    }

    /// Whether session `i`'s deadline has passed.
    pub fn expired(&self, i: usize) -> bool {
        self.now >= self.sessions[i].created_at + self.policy.deadline.as_secs()
    }

    /// Applies an environment action (not the reconciles); returns false for a reconcile.
    pub fn apply_env(&mut self, action: &Action) -> bool {
        match *action {
            Action::Create => self.create(),
            Action::Tick(dt) => self.now += dt,
            Action::Pause(p) => {
                if let Config::Found { paused, .. } = &mut self.config {
                    *paused = p;
                }
            }
            Action::JobEnds { session, ok } => {
                if let Some(s) = self.sessions.get_mut(session)
                    && s.job == Some(JobState::Active)
                {
                    s.job = Some(if ok {
                        JobState::Succeeded
                    } else {
                        JobState::Failed {
                            message: "BackoffLimitExceeded".into(),
                        }
                    });
                }
            }
            Action::Report {
                session,
                host,
                report,
            } => {
                if session < self.sessions.len() && self.phase_name(session) == "Running" {
                    let s = &mut self.sessions[session];
                    let hostname = format!("host-{host}");
                    if u32::from(host) < s.total_hosts.unwrap_or(0)
                        && !s.hosts.iter().any(|h| h.hostname == hostname)
                    {
                        let (phase, error, snapshots) = match report {
                            Report::Good => (Some(HostPhase::Succeeded), None, 1),
                            Report::NoSnapshot => (Some(HostPhase::Succeeded), None, 0),
                            Report::ErrorNoPhase => {
                                (None, Some("restic: repository locked".to_string()), 0)
                            }
                            Report::Failed => (
                                Some(HostPhase::Failed),
                                Some("restic: exit 1".to_string()),
                                0,
                            ),
                            Report::SucceededWithError => (
                                Some(HostPhase::Succeeded),
                                Some("check failed".to_string()),
                                1,
                            ),
                        };
                        s.hosts.push(HostReport {
                            hostname,
                            phase,
                            error,
                            snapshots,
                            duration: Duration::from_secs(3),
                        });
                    }
                }
            }
            Action::Reconcile(_) | Action::CrashAfterCreate(_) => return false,
        }
        true
    }

    /// What the controller observes for session `i`.
    pub fn observe(&self, i: usize) -> Observation<P> {
        let s = &self.sessions[i];
        Observation {
            name: s.name.clone(),
            created_at: s.created_at,
            phase: s.phase,
            total_hosts: s.total_hosts,
            hosts: s.hosts.clone(),
            config: self.config.clone(),
            others: self
                .sessions
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, o)| OtherSession {
                    name: o.name.clone(),
                    phase: o.phase,
                    created_at: o.created_at,
                })
                .collect(),
            repository: RepositoryUse::initialized(),
            job: s.job.clone(),
            now: self.now,
            policy: self.policy,
        }
    }
}

/// The reference model: the phase session `i` must be in after a reconcile, from the rules as
/// written in the spec (stash-api.md §5.4, §7.1, §7.2, decisions 1 and 3), without the lifecycle.
pub fn reference(w: &World<RefPhase>, i: usize) -> RefPhase {
    use RefPhase::*;
    let s = &w.sessions[i];
    match s.phase.unwrap_or(Pending) {
        Pending => match &w.config {
            Config::Missing => Failed,
            _ if matches!(s.job, Some(JobState::Failed { .. } | JobState::Succeeded)) => Failed,
            Config::Found { paused: true, .. } => Skipped,
            _ if w.expired(i) => Skipped,
            Config::Found {
                model: TargetModel::VolumeSnapshotter,
                ..
            } => Failed,
            Config::Found { total_hosts: 0, .. } => Failed,
            Config::Found { overlap, .. } => {
                let others = || {
                    w.sessions
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, o)| o)
                };
                if others().any(|o| o.phase == Some(Running)) {
                    if *overlap == OverlapPolicy::Skip {
                        Skipped
                    } else {
                        Pending
                    }
                } else if others().any(|o| {
                    o.phase.unwrap_or(Pending) == Pending
                        && (o.created_at, &o.name) < (s.created_at, &s.name)
                }) {
                    Pending
                } else {
                    Running
                }
            }
        },
        Running => {
            let total = s.total_hosts.unwrap_or(0) as usize;
            let reported: BTreeSet<&str> = s.hosts.iter().map(|h| h.hostname.as_str()).collect();
            if total > 0 && reported.len() >= total {
                let good = |h: &HostReport| {
                    h.phase == Some(HostPhase::Succeeded) && h.error.is_none() && h.snapshots > 0
                };
                if s.hosts.iter().all(good) {
                    Succeeded
                } else {
                    Failed
                }
            } else if matches!(s.job, Some(JobState::Failed { .. } | JobState::Succeeded))
                || w.expired(i)
            {
                Failed
            } else {
                Running
            }
        }
        done => done,
    }
}

/// The reference world's reconcile.
fn reference_reconcile(w: &mut World<RefPhase>, i: usize, crash: bool) {
    let next = reference(w, i);
    let s = &w.sessions[i];
    let starting =
        s.phase.unwrap_or(RefPhase::Pending) == RefPhase::Pending && next == RefPhase::Running;
    if starting
        && let Config::Found {
            model: TargetModel::Job,
            ..
        } = w.config
    {
        w.sessions[i].job.get_or_insert(JobState::Active);
    }
    if crash {
        return;
    }
    if starting && let Config::Found { total_hosts, .. } = w.config {
        w.sessions[i].total_hosts = Some(total_hosts);
    }
    w.sessions[i].phase = Some(next);
}

impl World<RefPhase> {
    /// Applies any action with the reference semantics.
    pub fn apply_reference(&mut self, action: &Action) {
        if !self.apply_env(action) {
            match *action {
                Action::Reconcile(i) if i < self.sessions.len() => {
                    reference_reconcile(self, i, false)
                }
                Action::CrashAfterCreate(i) if i < self.sessions.len() => {
                    reference_reconcile(self, i, true)
                }
                _ => {}
            }
        }
    }
}

/// Performs the effects of a decision on the world (a crash stops before the status write).
fn perform<L: BackupLifecycle>(
    w: &mut World<L>,
    i: usize,
    effects: &[stash_machines::backup_session::Effect<L>],
    crash: bool,
) {
    for e in effects {
        match e {
            Effect::Act(stash_machines::backup_session::Action::CreateBackupJob) => {
                w.sessions[i].job.get_or_insert(JobState::Active);
            }
            Effect::WriteStatus(s) if !crash => {
                let session = &mut w.sessions[i];
                session.phase = Some(s.phase);
                session.total_hosts = s.total_hosts.or(session.total_hosts);
            }
            _ => {}
        }
    }
}

/// Applies one action to a machine's world and checks every invariant on the way.
pub fn step<L: BackupLifecycle>(w: &World<L>, action: &Action) -> Result<World<L>, String> {
    let mut next = w.clone();
    if !next.apply_env(action) {
        let (i, crash) = match *action {
            Action::Reconcile(i) => (i, false),
            Action::CrashAfterCreate(i) => (i, true),
            _ => unreachable!(),
        };
        if i >= next.sessions.len() {
            return Ok(next);
        }
        let obs = next.observe(i);
        let d = decide_with::<L>(&obs);
        if let Some(r) = &d.rejection {
            return Err(format!("the lifecycle rejected the machine's event: {r}"));
        }
        if decide_with::<L>(&obs) != d {
            return Err("the same observation gave two different decisions".into());
        }
        perform(&mut next, i, &d.effects, crash);
        if !crash {
            let again = decide_with::<L>(&next.observe(i));
            if !again.is_quiet() {
                return Err(format!(
                    "replaying the observation after applying it changed something: {:?} (session {} now {})",
                    again.effects,
                    i,
                    next.phase_name(i)
                ));
            }
            if next.expired(i) && !next.sessions[i].phase.is_some_and(|p| p.is_terminal()) {
                return Err(format!(
                    "session {i} is {} past its deadline after a reconcile",
                    next.phase_name(i)
                ));
            }
        }
    }
    invariants(w, &next)?;
    Ok(next)
}

/// The invariants between two consecutive worlds.
pub fn invariants<L: BackupLifecycle>(before: &World<L>, after: &World<L>) -> Result<(), String> {
    for (i, s) in after.sessions.iter().enumerate() {
        let was = before
            .sessions
            .get(i)
            .and_then(|b| b.phase)
            .unwrap_or(L::INITIAL);
        let now = s.phase.unwrap_or(L::INITIAL);
        if was.is_terminal() && was != now {
            return Err(format!(
                "terminal phase {} of session {i} did not absorb: now {}",
                was.name(),
                now.name()
            ));
        }
        if now.rank() < was.rank() {
            return Err(format!(
                "session {i} went back from {} to {}",
                was.name(),
                now.name()
            ));
        }
        if now.is_declared_only() {
            return Err(format!(
                "session {i} reached the declared-only phase {}",
                now.name()
            ));
        }
        if now == L::SUCCEEDED {
            let total = s.total_hosts.unwrap_or(0) as usize;
            let reported: BTreeSet<&str> = s.hosts.iter().map(|h| h.hostname.as_str()).collect();
            let bad = s.hosts.iter().find(|h| {
                h.phase != Some(HostPhase::Succeeded) || h.error.is_some() || h.snapshots == 0
            });
            if total == 0 || reported.len() < total || bad.is_some() {
                return Err(format!(
                    "session {i} is Succeeded but not every host succeeded with a snapshot: total {total}, hosts {:?}",
                    s.hosts
                ));
            }
        }
    }
    let running = after
        .sessions
        .iter()
        .filter(|s| s.phase == Some(L::RUNNING))
        .count();
    if running > 1 {
        return Err(format!(
            "{running} sessions of one BackupConfiguration are Running"
        ));
    }
    Ok(())
}

/// After any history: once every deadline has passed, one reconcile of each session ends it.
pub fn drain<L: BackupLifecycle>(w: &World<L>) -> Result<(), String> {
    let mut w = w.clone();
    let last = w.sessions.iter().map(|s| s.created_at).max().unwrap_or(0);
    w.now = w.now.max(last + w.policy.deadline.as_secs());
    for i in 0..w.sessions.len() {
        w = step(&w, &Action::Reconcile(i))?;
    }
    match w
        .sessions
        .iter()
        .position(|s| !s.phase.is_some_and(|p| p.is_terminal()))
    {
        Some(i) => Err(format!(
            "session {i} is still {} after its deadline",
            w.phase_name(i)
        )),
        None => Ok(()),
    }
}

/// Replays `actions` from `init` against the reference and the machine `L`; returns the number
/// of steps or the first violation.
pub fn run<L: BackupLifecycle>(
    init: &World<RefPhase>,
    actions: &[Action],
    seen: Option<&AtomicUsize>,
) -> Result<usize, String> {
    let mut reference = init.clone();
    let mut sut: World<L> = World::new(init.config.clone(), init.policy.deadline.as_secs());
    for (k, action) in actions.iter().enumerate() {
        if let Some(seen) = seen {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        reference.apply_reference(action);
        sut = step(&sut, action).map_err(|e| format!("step {k} ({action:?}): {e}"))?;
        for i in 0..sut.sessions.len() {
            let (want, got) = (reference.phase_name(i), sut.phase_name(i));
            if want != got {
                return Err(format!(
                    "step {k} ({action:?}): session {i} is {got}, the reference says {want}"
                ));
            }
        }
    }
    drain(&sut).map_err(|e| format!("after the sequence: {e}"))?;
    Ok(actions.len())
}

/// proptest-state-machine's view: generates and shrinks action sequences with the reference
/// world as its state.
pub struct BackupModel;

fn config() -> impl Strategy<Value = Config> {
    let found = (
        prop::bool::weighted(0.1),
        prop_oneof![5 => Just(TargetModel::Sidecar), 5 => Just(TargetModel::Job), 1 => Just(TargetModel::VolumeSnapshotter)],
        prop_oneof![1 => Just(0u32), 6 => 1..=3u32],
        prop_oneof![Just(OverlapPolicy::Skip), Just(OverlapPolicy::Wait)],
    )
        .prop_map(|(paused, model, total_hosts, overlap)| Config::Found { paused, model, total_hosts, overlap });
    prop_oneof![1 => Just(Config::Missing), 20 => found]
}

impl ReferenceStateMachine for BackupModel {
    type State = World<RefPhase>;
    type Transition = Action;

    fn init_state() -> BoxedStrategy<Self::State> {
        (config(), 100..1000u64)
            .prop_map(|(c, d)| World::new(c, d))
            .boxed()
    }

    fn transitions(state: &Self::State) -> BoxedStrategy<Action> {
        let n = state.sessions.len();
        let report = prop_oneof![
            6 => Just(Report::Good),
            1 => Just(Report::NoSnapshot),
            1 => Just(Report::ErrorNoPhase),
            1 => Just(Report::Failed),
            1 => Just(Report::SucceededWithError),
        ];
        prop_oneof![
            2 => Just(Action::Create),
            8 => (0..n).prop_map(Action::Reconcile),
            1 => (0..n).prop_map(Action::CrashAfterCreate),
            8 => (0..n, 0..3u8, report).prop_map(|(session, host, report)| Action::Report { session, host, report }),
            1 => (0..n, any::<bool>()).prop_map(|(session, ok)| Action::JobEnds { session, ok }),
            2 => (1..400u64).prop_map(Action::Tick),
            1 => prop::bool::weighted(0.3).prop_map(Action::Pause),
        ]
        .boxed()
    }

    fn apply(mut state: Self::State, transition: &Action) -> Self::State {
        state.apply_reference(transition);
        state
    }
}

/// The bounded state space explored exhaustively: configurations with up to 2 hosts and up to
/// 2 sessions created at time 0, three kinds of report, one jump of the clock to the deadline.
pub mod bounded {
    use super::*;

    /// The deadline used.
    pub const DEADLINE: u64 = 100;

    /// Every initial world.
    pub fn inits<L: BackupLifecycle>() -> Vec<World<L>> {
        let mut out = vec![World::new(Config::Missing, DEADLINE)];
        for paused in [false, true] {
            for model in [
                TargetModel::Sidecar,
                TargetModel::Job,
                TargetModel::VolumeSnapshotter,
            ] {
                for total_hosts in 0..=2 {
                    for overlap in [OverlapPolicy::Skip, OverlapPolicy::Wait] {
                        out.push(World::new(
                            Config::Found {
                                paused,
                                model,
                                total_hosts,
                                overlap,
                            },
                            DEADLINE,
                        ));
                    }
                }
            }
        }
        out
    }

    /// Every action enabled in a world.
    pub fn actions<L: BackupLifecycle>(w: &World<L>) -> Vec<Action> {
        let mut out = vec![];
        if w.sessions.len() < 2 && w.now == 0 {
            out.push(Action::Create);
        }
        if w.now == 0 {
            out.push(Action::Tick(DEADLINE));
        }
        if let Config::Found { paused, .. } = w.config {
            out.push(Action::Pause(!paused));
        }
        for i in 0..w.sessions.len() {
            out.push(Action::Reconcile(i));
            out.push(Action::CrashAfterCreate(i));
            if w.sessions[i].job == Some(JobState::Active) {
                out.push(Action::JobEnds {
                    session: i,
                    ok: true,
                });
                out.push(Action::JobEnds {
                    session: i,
                    ok: false,
                });
            }
            if w.phase_name(i) == "Running" {
                for host in 0..w.sessions[i].total_hosts.unwrap_or(0).min(2) as u8 {
                    if !w.sessions[i]
                        .hosts
                        .iter()
                        .any(|h| h.hostname == format!("host-{host}"))
                    {
                        for report in [Report::Good, Report::NoSnapshot, Report::ErrorNoPhase] {
                            out.push(Action::Report {
                                session: i,
                                host,
                                report,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// One checked step, compared with the reference on reconciles.
    pub fn step<L: BackupLifecycle>(w: &World<L>, action: &Action) -> Result<World<L>, String> {
        let next = super::step(w, action)?;
        if let Action::Reconcile(i) = *action {
            let mut reference = w.map(to_ref);
            reference.apply_reference(action);
            if reference.phase_name(i) != next.phase_name(i) {
                return Err(format!(
                    "session {i} is {}, the reference says {}",
                    next.phase_name(i),
                    reference.phase_name(i)
                ));
            }
        }
        Ok(next)
    }

    fn to_ref<L: Lifecycle>(p: L) -> RefPhase {
        match p.name() {
            "Pending" => RefPhase::Pending,
            "Running" => RefPhase::Running,
            "Succeeded" => RefPhase::Succeeded,
            "Failed" => RefPhase::Failed,
            "Skipped" => RefPhase::Skipped,
            other => panic!("no reference phase for {other}"),
        }
    }
}
