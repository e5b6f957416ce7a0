//! The RestoreSession model: world, environment actions, reference model, invariants.

use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest_state_machine::ReferenceStateMachine;
use stash_machines::restore_session::{
    HostPhase, HostReport, Observation, Phase, Rule, TargetModel, decide,
};
use stash_machines::{Effect, JobState, Policy};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What a host writes into `status.stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Report {
    /// `Succeeded`.
    Good,
    /// `Failed` with an error.
    Failed,
    /// `Unknown`.
    Unknown,
    /// `Succeeded` *and* an error.
    SucceededWithError,
    /// No phase, no error.
    Empty,
}

/// One step of the environment (or of the controller).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The controller reconciles and performs every effect.
    Reconcile,
    /// The controller reconciles, performs the creation effects and crashes before the status.
    CrashAfterCreate,
    /// Host `host-N` reports (only while running, once).
    Report(u8, Report),
    /// The restore Job ends.
    JobEnds(bool),
    /// Time passes.
    Tick(u64),
}

/// The world of one RestoreSession; `phase` is the machine's or the reference's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    /// `status.phase`.
    pub phase: Option<Phase>,
    /// `status.totalHosts`.
    pub total_hosts: Option<u32>,
    /// `status.stats`.
    pub hosts: Vec<HostReport>,
    /// How the target restores.
    pub model: TargetModel,
    /// The target's hosts.
    pub target_hosts: Vec<String>,
    /// `spec.rules`.
    pub rules: Vec<Rule>,
    /// The restore Job.
    pub job: Option<JobState>,
    /// Now (the session was created at 0).
    pub now: u64,
    /// Deadlines.
    pub policy: Policy,
}

impl World {
    /// A pending session.
    pub fn new(model: TargetModel, hosts: u8, rules: Vec<Rule>, deadline: u64) -> Self {
        World {
            phase: None,
            total_hosts: None,
            hosts: vec![],
            model,
            target_hosts: (0..hosts).map(|h| format!("host-{h}")).collect(),
            rules,
            job: None,
            now: 0,
            policy: Policy {
                deadline: Duration::from_secs(deadline),
                poll: Duration::from_secs(30),
            },
        }
    }

    fn current(&self) -> Phase {
        self.phase.unwrap_or(Phase::Pending)
    }

    fn expired(&self) -> bool {
        self.now >= self.policy.deadline.as_secs()
    }

    fn apply_env(&mut self, action: &Action) -> bool {
        match *action {
            Action::Tick(dt) => self.now += dt,
            Action::JobEnds(ok) => {
                if self.job == Some(JobState::Active) {
                    self.job = Some(if ok {
                        JobState::Succeeded
                    } else {
                        JobState::Failed {
                            message: "BackoffLimitExceeded".into(),
                        }
                    });
                }
            }
            Action::Report(host, report) => {
                let hostname = format!("host-{host}");
                if self.current() == Phase::Running
                    && u32::from(host) < self.total_hosts.unwrap_or(0)
                    && !self.hosts.iter().any(|h| h.hostname == hostname)
                {
                    let (phase, error) = match report {
                        Report::Good => (Some(HostPhase::Succeeded), None),
                        Report::Failed => {
                            (Some(HostPhase::Failed), Some("restic: exit 1".to_string()))
                        }
                        Report::Unknown => (Some(HostPhase::Unknown), None),
                        Report::SucceededWithError => {
                            (Some(HostPhase::Succeeded), Some("partial".to_string()))
                        }
                        Report::Empty => (None, None),
                    };
                    self.hosts.push(HostReport {
                        hostname,
                        phase,
                        error,
                        duration: Duration::from_secs(2),
                    });
                }
            }
            Action::Reconcile | Action::CrashAfterCreate => return false,
        }
        true
    }

    /// What the controller observes.
    pub fn observe(&self) -> Observation {
        Observation {
            name: "restore".into(),
            created_at: 0,
            phase: self.phase,
            total_hosts: self.total_hosts,
            hosts: self.hosts.clone(),
            model: self.model,
            target_hosts: self.target_hosts.clone(),
            hosts_refused: None,
            node_hosts: None,
            rules: self.rules.clone(),
            job: self.job.clone(),
            now: self.now,
            policy: self.policy,
        }
    }
}

/// The reference model: the phase after a reconcile, from the rules as written (stash-api.md
/// §3.4, §5.8, §7.3, decision 2).
pub fn reference(w: &World) -> Phase {
    let matched = |host: &String| {
        w.rules.iter().any(|r| r.target_hosts.contains(host))
            || w.rules.iter().any(|r| r.target_hosts.is_empty())
    };
    match w.current() {
        Phase::Pending => {
            if w.expired()
                || matches!(w.job, Some(JobState::Failed { .. } | JobState::Succeeded))
                || w.model == TargetModel::VolumeSnapshotter
                || w.target_hosts.is_empty()
                || !w.target_hosts.iter().all(matched)
            {
                Phase::Failed
            } else {
                Phase::Running
            }
        }
        Phase::Running => {
            let total = w.total_hosts.unwrap_or(0) as usize;
            let reported: BTreeSet<&str> = w.hosts.iter().map(|h| h.hostname.as_str()).collect();
            if total > 0 && reported.len() >= total {
                let failed =
                    |h: &HostReport| h.error.is_some() || h.phase == Some(HostPhase::Failed);
                if w.hosts.iter().any(failed) {
                    Phase::Failed
                } else if w
                    .hosts
                    .iter()
                    .all(|h| h.phase == Some(HostPhase::Succeeded))
                {
                    Phase::Succeeded
                } else {
                    Phase::Unknown
                }
            } else if matches!(w.job, Some(JobState::Failed { .. } | JobState::Succeeded))
                || w.expired()
            {
                Phase::Failed
            } else {
                Phase::Running
            }
        }
        done => done,
    }
}

/// The reference's reconcile.
pub fn apply_reference(w: &mut World, action: &Action) {
    if w.apply_env(action) {
        return;
    }
    let next = reference(w);
    let starting = w.current() == Phase::Pending && next == Phase::Running;
    if starting && w.model == TargetModel::Job {
        w.job.get_or_insert(JobState::Active);
    }
    if *action == Action::CrashAfterCreate {
        return;
    }
    if starting {
        w.total_hosts = Some(w.target_hosts.len() as u32);
    }
    w.phase = Some(next);
}

/// Applies one action to the machine's world and checks every invariant on the way.
pub fn step(w: &World, action: &Action) -> Result<World, String> {
    let mut next = w.clone();
    if !next.apply_env(action) {
        let crash = *action == Action::CrashAfterCreate;
        let obs = next.observe();
        let d = decide(&obs);
        if let Some(r) = &d.rejection {
            return Err(format!("the lifecycle rejected the machine's event: {r}"));
        }
        if decide(&obs) != d {
            return Err("the same observation gave two different decisions".into());
        }
        for e in &d.effects {
            match e {
                Effect::Act(stash_machines::restore_session::Action::CreateRestoreJobs) => {
                    next.job.get_or_insert(JobState::Active);
                }
                Effect::WriteStatus(s) if !crash => {
                    next.phase = Some(s.phase);
                    next.total_hosts = s.total_hosts.or(next.total_hosts);
                }
                _ => {}
            }
        }
        if !crash {
            let again = decide(&next.observe());
            if !again.is_quiet() {
                return Err(format!(
                    "replaying the observation after applying it changed something: {:?}",
                    again.effects
                ));
            }
            if next.expired() && !next.current().is_terminal() {
                return Err(format!(
                    "{} past the deadline after a reconcile",
                    next.current()
                ));
            }
        }
    }
    invariants(w, &next)?;
    Ok(next)
}

/// The invariants between two consecutive worlds.
pub fn invariants(before: &World, after: &World) -> Result<(), String> {
    let (was, now) = (before.current(), after.current());
    if was.is_terminal() && was != now {
        return Err(format!("terminal phase {was} did not absorb: now {now}"));
    }
    if now.rank() < was.rank() {
        return Err(format!("went back from {was} to {now}"));
    }
    if now == Phase::Succeeded {
        let total = after.total_hosts.unwrap_or(0) as usize;
        let reported: BTreeSet<&str> = after.hosts.iter().map(|h| h.hostname.as_str()).collect();
        let all_ok = after
            .hosts
            .iter()
            .all(|h| h.phase == Some(HostPhase::Succeeded) && h.error.is_none());
        let all_matched = after.target_hosts.iter().all(|h| {
            stash_machines::restore_session::resolve_rule(h, &after.rules)
                != stash_machines::restore_session::RuleMatch::NoRuleMatched
        });
        if total == 0 || reported.len() < total || !all_ok || !all_matched {
            return Err(format!(
                "Succeeded but not every host restored: total {total}, hosts {:?}, rules {:?}",
                after.hosts, after.rules
            ));
        }
    }
    Ok(())
}

/// Once the deadline has passed, one reconcile ends the session.
pub fn drain(w: &World) -> Result<(), String> {
    let mut w = w.clone();
    w.now = w.now.max(w.policy.deadline.as_secs());
    let w = step(&w, &Action::Reconcile)?;
    if w.current().is_terminal() {
        Ok(())
    } else {
        Err(format!("still {} after the deadline", w.current()))
    }
}

/// Replays `actions` against the reference and the machine.
pub fn run(init: &World, actions: &[Action], seen: Option<&AtomicUsize>) -> Result<usize, String> {
    let mut reference = init.clone();
    let mut sut = init.clone();
    for (k, action) in actions.iter().enumerate() {
        if let Some(seen) = seen {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        apply_reference(&mut reference, action);
        sut = step(&sut, action).map_err(|e| format!("step {k} ({action:?}): {e}"))?;
        if reference.current() != sut.current() {
            return Err(format!(
                "step {k} ({action:?}): {} but the reference says {}",
                sut.current(),
                reference.current()
            ));
        }
    }
    drain(&sut).map_err(|e| format!("after the sequence: {e}"))?;
    Ok(actions.len())
}

/// The rule sets used: every host, one named host, a named host plus a catch-all, none.
pub fn rule_sets() -> Vec<Vec<Rule>> {
    let named = |h: &str| Rule {
        target_hosts: vec![h.to_string()],
    };
    vec![
        vec![Rule::default()],
        vec![named("host-0")],
        vec![named("host-1"), Rule::default()],
        vec![named("host-0"), named("host-1")],
        vec![],
    ]
}

/// proptest-state-machine's view.
pub struct RestoreModel;

impl ReferenceStateMachine for RestoreModel {
    type State = World;
    type Transition = Action;

    fn init_state() -> BoxedStrategy<World> {
        let model = prop_oneof![5 => Just(TargetModel::Workload), 5 => Just(TargetModel::Job), 1 => Just(TargetModel::VolumeSnapshotter)];
        let hosts = prop_oneof![1 => Just(0u8), 8 => 1..=3u8];
        (
            model,
            hosts,
            prop::sample::select(rule_sets()),
            100..1000u64,
        )
            .prop_map(|(m, h, r, d)| World::new(m, h, r, d))
            .boxed()
    }

    fn transitions(_: &World) -> BoxedStrategy<Action> {
        let report = prop_oneof![
            6 => Just(Report::Good),
            1 => Just(Report::Failed),
            1 => Just(Report::Unknown),
            1 => Just(Report::SucceededWithError),
            1 => Just(Report::Empty),
        ];
        prop_oneof![
            6 => Just(Action::Reconcile),
            1 => Just(Action::CrashAfterCreate),
            8 => (0..3u8, report).prop_map(|(h, r)| Action::Report(h, r)),
            1 => any::<bool>().prop_map(Action::JobEnds),
            2 => (1..400u64).prop_map(Action::Tick),
        ]
        .boxed()
    }

    fn apply(mut state: World, transition: &Action) -> World {
        apply_reference(&mut state, transition);
        state
    }
}

/// The bounded state space: up to 2 hosts, every rule set and model, every report, the clock at
/// 0 or past the deadline.
pub mod bounded {
    use super::*;

    /// The deadline used.
    pub const DEADLINE: u64 = 100;

    /// Every initial world.
    pub fn inits() -> Vec<World> {
        let mut out = vec![];
        for model in [
            TargetModel::Workload,
            TargetModel::Job,
            TargetModel::VolumeSnapshotter,
        ] {
            for hosts in 0..=2 {
                for rules in rule_sets() {
                    out.push(World::new(model, hosts, rules, DEADLINE));
                }
            }
        }
        out
    }

    /// Every action enabled in a world.
    pub fn actions(w: &World) -> Vec<Action> {
        let mut out = vec![Action::Reconcile, Action::CrashAfterCreate];
        if w.now == 0 {
            out.push(Action::Tick(DEADLINE));
        }
        if w.job == Some(JobState::Active) {
            out.extend([Action::JobEnds(true), Action::JobEnds(false)]);
        }
        if w.current() == Phase::Running {
            for h in 0..w.total_hosts.unwrap_or(0).min(2) as u8 {
                if !w.hosts.iter().any(|x| x.hostname == format!("host-{h}")) {
                    for r in [
                        Report::Good,
                        Report::Failed,
                        Report::Unknown,
                        Report::SucceededWithError,
                        Report::Empty,
                    ] {
                        out.push(Action::Report(h, r));
                    }
                }
            }
        }
        out
    }

    /// One checked step, compared with the reference on reconciles.
    pub fn step(w: &World, action: &Action) -> Result<World, String> {
        let next = super::step(w, action)?;
        if *action == Action::Reconcile {
            let mut reference = w.clone();
            apply_reference(&mut reference, action);
            if reference.current() != next.current() {
                return Err(format!(
                    "{} but the reference says {}",
                    next.current(),
                    reference.current()
                ));
            }
        }
        Ok(next)
    }
}
