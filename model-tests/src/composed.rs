//! The operator's BackupSession machine composed with one host machine per host
//! ([`stash_machines::backup_host`]), a repository model, faults and stale observations.
//!
//! The world: two sessions of one sidecar-model configuration (the second created a second
//! later), two hosts, a repository holding snapshots tagged with the session that took them, a
//! clock that is either early or past the deadline, and a `paused` flag the user may flip at any
//! moment. Actions:
//! * the operator reconciles a session on a fresh read, or on its cached (possibly stale) read —
//!   a write based on a stale read is refused by the API (resourceVersion) and changes nothing;
//!   the operator restarting is a fresh read (it keeps nothing else);
//! * a host's agent drives its host lifecycle ([`backup_host::Phase`]) with the step its machine
//!   decides from the session's status and the repository: it starts (`Waiting → LookingUp`, the
//!   session is `Running` and its entry absent), looks the session's tag up and backs up (the
//!   snapshot lands in the repository: `LookingUp → BackingUp → Reporting`) or finds its
//!   snapshot (`LookingUp → Reporting`), or the backup fails (`BackingUp → Reporting`, a `Failed`
//!   entry); it writes its entry only through the `Reporting → Reported` transition check. An
//!   agent crashes at any moment, losing what it held in memory (its phase, a snapshot written
//!   but not yet reported): the next start computes the phase again from the API and restic;
//! * the user pauses or resumes the configuration; the clock passes the deadline.
//!
//! Invariants checked in every reachable state: a terminal phase never changes; every transition
//! of either machine, and every agent write, is in its lifecycle's table; `Succeeded`
//! implies every host's snapshot of the session is in the repository; never two snapshots of
//! one host for one session; a host in `Reporting` has its snapshot in the repository; at most
//! one session `Running`; past the deadline, one fresh
//! reconcile ends every session; and a `Running` session — paused or not — ends `Succeeded` once
//! the agents run without faults and the operator reconciles.

use stash_machines::backup_host::{self, HostDecision, HostObservation, HostStep, Session};
use stash_machines::backup_session::{
    Config, HostPhase, HostReport, Observation, OtherSession, OverlapPolicy, Phase, RepositoryUse,
    TargetModel, decide,
};
use stash_machines::{Effect, Policy};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

/// Sessions in the world.
pub const SESSIONS: usize = 2;
/// Hosts of the workload.
pub const HOSTS: usize = 2;
const DEADLINE: u64 = 100;
const DIR: &str = "/source/data";

/// A host's entry in `status.stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entry {
    /// Reported `Succeeded` with its snapshot.
    Succeeded,
    /// Reported `Failed`.
    Failed,
}

/// A session's persisted status.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Status {
    /// `status.phase`.
    pub phase: Option<Phase>,
    /// `status.totalHosts`.
    pub total_hosts: Option<u32>,
    /// `status.stats`, per host.
    pub stats: [Option<Entry>; HOSTS],
}

/// What an agent holds in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Agent {
    /// Nothing in flight.
    Idle,
    /// It works on `session`, in `phase` of its host lifecycle (`LookingUp`, or `Reporting` once
    /// its snapshot is in the repository and not yet reported).
    Busy {
        /// The session.
        session: usize,
        /// The host's phase.
        phase: backup_host::Phase,
    },
}

/// The whole world.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    /// Persisted statuses.
    pub status: [Status; SESSIONS],
    /// The operator's cached read of each status (`None`: never read).
    pub cache: [Option<Status>; SESSIONS],
    /// Snapshots in the repository per session and host (with the session's tag).
    pub snaps: [[u8; HOSTS]; SESSIONS],
    /// The agents.
    pub agents: [Agent; HOSTS],
    /// `spec.paused`.
    pub paused: bool,
    /// The clock is past the sessions' deadline.
    pub late: bool,
}

/// One action of the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The operator reconciles session `0` on a fresh read.
    Reconcile(usize),
    /// The operator reconciles session `0` on its cached read.
    ReconcileStale(usize),
    /// Host `0`'s agent takes its step for session `1`: starts, or looks the tag up and backs
    /// up (successfully) or finds its snapshot.
    AgentStep(usize, usize),
    /// Host `0`'s backup for session `1` fails (it reports a `Failed` entry).
    AgentFails(usize, usize),
    /// Host `0`'s agent reports the snapshot it holds.
    AgentReports(usize),
    /// Host `0`'s agent crashes.
    AgentCrash(usize),
    /// The user flips `paused`.
    TogglePause,
    /// The clock passes the deadline.
    Tick,
}

/// The host machine under test (the shipped one, or a planted bug).
pub type HostMachine = fn(&HostObservation) -> HostDecision;

/// The initial world.
pub fn init() -> World {
    World {
        status: Default::default(),
        cache: [None, None],
        snaps: [[0; HOSTS]; SESSIONS],
        agents: [Agent::Idle; HOSTS],
        paused: false,
        late: false,
    }
}

fn observation(w: &World, s: usize, view: &Status) -> Observation {
    Observation {
        name: format!("s{s}"),
        created_at: s as u64,
        phase: view.phase,
        total_hosts: view.total_hosts,
        hosts: view
            .stats
            .iter()
            .enumerate()
            .filter_map(|(h, e)| {
                e.map(|e| HostReport {
                    hostname: format!("host-{h}"),
                    phase: Some(match e {
                        Entry::Succeeded => HostPhase::Succeeded,
                        Entry::Failed => HostPhase::Failed,
                    }),
                    error: (e == Entry::Failed).then(|| "backup failed".into()),
                    snapshots: u32::from(e == Entry::Succeeded),
                    duration: Duration::from_secs(1),
                })
            })
            .collect(),
        config: Config::Found {
            paused: w.paused,
            model: TargetModel::Sidecar,
            total_hosts: HOSTS as u32,
            overlap: OverlapPolicy::Skip,
        },
        others: (0..SESSIONS)
            .filter(|&o| o != s)
            .map(|o| OtherSession {
                name: format!("s{o}"),
                phase: w.status[o].phase,
                created_at: o as u64,
            })
            .collect(),
        repository: RepositoryUse::initialized(),
        job: None,
        now: if w.late { DEADLINE + 10 } else { 10 },
        policy: Policy {
            deadline: Duration::from_secs(DEADLINE),
            poll: Duration::from_secs(30),
        },
    }
}

/// The operator's reconcile of session `s` on `view`; the write lands only if `view` is what is
/// persisted (otherwise the API refuses it: 409).
fn reconcile(w: &World, s: usize, view: Status) -> Result<World, String> {
    let mut next = w.clone();
    next.cache[s] = Some(view.clone());
    let d = decide(&observation(w, s, &view));
    if let Some(r) = d.rejection {
        return Err(format!("the machine's event was rejected: {r}"));
    }
    for e in d.effects {
        if let Effect::WriteStatus(p) = e
            && view == w.status[s]
        {
            let st = &mut next.status[s];
            st.phase = Some(p.phase);
            if p.total_hosts.is_some() {
                st.total_hosts = p.total_hosts;
            }
            next.cache[s] = Some(st.clone());
        }
    }
    Ok(next)
}

/// What host `h` observes of session `s`: the persisted status, and, once it has asked restic
/// (`looked_up`), the snapshots tagged with the session.
fn host_observation(w: &World, s: usize, h: usize, looked_up: bool) -> HostObservation {
    let st = &w.status[s];
    HostObservation {
        session: match st.phase {
            Some(Phase::Running) => Session::Running,
            Some(p) if p.is_terminal() => Session::Ended,
            _ => Session::Pending,
        },
        reported: st.stats[h].is_some(),
        directories: vec![DIR.into()],
        tagged: looked_up.then(|| {
            if w.snaps[s][h] > 0 {
                BTreeMap::from([(DIR.to_string(), format!("snap-{s}-{h}"))])
            } else {
                BTreeMap::new()
            }
        }),
    }
}

/// The host machine's decision, a rejected transition being a violation.
fn decide_host(
    w: &World,
    s: usize,
    h: usize,
    looked_up: bool,
    host: HostMachine,
) -> Result<HostDecision, String> {
    let d = host(&host_observation(w, s, h, looked_up));
    match d.rejection {
        Some(r) => Err(format!(
            "host-{h}, s{s}: the host machine's step was rejected: {r}"
        )),
        None => Ok(d),
    }
}

/// Host `h` writes its entry in session `s`: only through its lifecycle's `Report` transition.
fn report(
    next: &mut World,
    s: usize,
    h: usize,
    phase: backup_host::Phase,
    entry: Entry,
) -> Result<(), String> {
    backup_host::fire(phase, backup_host::Event::Report)
        .map_err(|r| format!("host-{h}, s{s}: entry write refused: {r}"))?;
    next.status[s].stats[h] = Some(entry);
    next.agents[h] = Agent::Idle;
    Ok(())
}

/// The actions enabled in `w`.
pub fn actions(w: &World, host: HostMachine) -> Vec<Action> {
    let mut out = Vec::new();
    for s in 0..SESSIONS {
        out.push(Action::Reconcile(s));
        if w.cache[s].is_some() {
            out.push(Action::ReconcileStale(s));
        }
    }
    for h in 0..HOSTS {
        match w.agents[h] {
            Agent::Busy {
                phase: backup_host::Phase::Reporting,
                ..
            } => {
                out.push(Action::AgentReports(h));
                out.push(Action::AgentCrash(h));
            }
            Agent::Busy { session: s, .. } => {
                out.push(Action::AgentStep(h, s));
                if matches!(
                    host(&host_observation(w, s, h, true)).step,
                    HostStep::BackUp { .. }
                ) {
                    out.push(Action::AgentFails(h, s));
                }
                out.push(Action::AgentCrash(h));
            }
            Agent::Idle => {
                for s in 0..SESSIONS {
                    if host(&host_observation(w, s, h, false)).step != HostStep::Idle {
                        out.push(Action::AgentStep(h, s));
                    }
                }
            }
        }
    }
    out.push(Action::TogglePause);
    if !w.late {
        out.push(Action::Tick);
    }
    out
}

/// Applies `a`; checks that a terminal phase never changes.
pub fn step(w: &World, a: &Action, host: HostMachine) -> Result<World, String> {
    let mut next = w.clone();
    match *a {
        Action::Reconcile(s) => next = reconcile(w, s, w.status[s].clone())?,
        Action::ReconcileStale(s) => {
            let view = w.cache[s].clone().ok_or("no cached read")?;
            next = reconcile(w, s, view)?;
        }
        Action::AgentStep(h, s) => {
            let looked_up = w.agents[h] != Agent::Idle;
            let d = decide_host(w, s, h, looked_up, host)?;
            match d.step {
                HostStep::Idle => next.agents[h] = Agent::Idle,
                HostStep::LookUpSnapshots => {
                    next.agents[h] = Agent::Busy {
                        session: s,
                        phase: d.phase,
                    };
                }
                HostStep::BackUp { .. } => {
                    next.snaps[s][h] = next.snaps[s][h].saturating_add(1);
                    let phase = backup_host::after_step(d.phase, true)
                        .map_err(|r| format!("host-{h}, s{s}: {r}"))?;
                    next.agents[h] = Agent::Busy { session: s, phase };
                }
                HostStep::Report { .. } => {
                    next.agents[h] = Agent::Busy {
                        session: s,
                        phase: d.phase,
                    };
                }
            }
        }
        Action::AgentFails(h, s) => {
            let d = decide_host(w, s, h, true, host)?;
            let phase = backup_host::after_step(d.phase, false)
                .map_err(|r| format!("host-{h}, s{s}: {r}"))?;
            report(&mut next, s, h, phase, Entry::Failed)?;
        }
        Action::AgentReports(h) => {
            let Agent::Busy { session: s, phase } = w.agents[h] else {
                return Err("nothing to report".into());
            };
            report(&mut next, s, h, phase, Entry::Succeeded)?;
        }
        Action::AgentCrash(h) => next.agents[h] = Agent::Idle,
        Action::TogglePause => next.paused = !w.paused,
        Action::Tick => next.late = true,
    }
    for s in 0..SESSIONS {
        if let Some(p) = w.status[s].phase
            && p.is_terminal()
            && next.status[s].phase != Some(p)
        {
            return Err(format!("s{s}: terminal {p:?} changed by {a:?}"));
        }
    }
    Ok(next)
}

/// Runs the agents without faults and then one fresh reconcile of `s`, until nothing changes.
fn settle(w: &World, s: usize, host: HostMachine) -> Result<World, String> {
    let mut cur = w.clone();
    for _ in 0..16 {
        let before = cur.clone();
        for h in 0..HOSTS {
            let a = match cur.agents[h] {
                Agent::Busy {
                    phase: backup_host::Phase::Reporting,
                    ..
                } => Action::AgentReports(h),
                Agent::Busy { session, .. } => Action::AgentStep(h, session),
                Agent::Idle
                    if host(&host_observation(&cur, s, h, false)).step != HostStep::Idle =>
                {
                    Action::AgentStep(h, s)
                }
                Agent::Idle => continue,
            };
            cur = step(&cur, &a, host)?;
        }
        cur = step(&cur, &Action::Reconcile(s), host)?;
        if cur == before {
            return Ok(cur);
        }
    }
    Ok(cur)
}

/// The invariants of one state.
pub fn check(w: &World, host: HostMachine) -> Result<(), String> {
    let running = w
        .status
        .iter()
        .filter(|s| s.phase == Some(Phase::Running))
        .count();
    if running > 1 {
        return Err(format!("{running} sessions Running at once"));
    }
    for s in 0..SESSIONS {
        for h in 0..HOSTS {
            if w.snaps[s][h] > 1 {
                return Err(format!("s{s}: {} snapshots of host-{h}", w.snaps[s][h]));
            }
        }
        for h in 0..HOSTS {
            if w.agents[h]
                == (Agent::Busy {
                    session: s,
                    phase: backup_host::Phase::Reporting,
                })
                && w.snaps[s][h] == 0
            {
                return Err(format!("host-{h} Reporting s{s} without its snapshot"));
            }
        }
        if w.status[s].phase == Some(Phase::Succeeded) && w.snaps[s].contains(&0) {
            return Err(format!("s{s} Succeeded without every host's snapshot"));
        }
        // Past the deadline, one fresh reconcile ends the session.
        if w.late {
            let after = step(w, &Action::Reconcile(s), host)?;
            if !after.status[s].phase.is_some_and(Phase::is_terminal) {
                return Err(format!(
                    "s{s} still {:?} after a reconcile past its deadline",
                    after.status[s].phase
                ));
            }
        }
        // A Running session completes once the agents run without faults — paused or not.
        if !w.late
            && w.status[s].phase == Some(Phase::Running)
            && w.status[s].stats == [None; HOSTS]
        {
            let done = settle(w, s, host)?;
            if done.status[s].phase != Some(Phase::Succeeded) {
                return Err(format!(
                    "s{s} Running (paused: {}) did not complete: {:?}",
                    w.paused, done.status[s]
                ));
            }
        }
    }
    Ok(())
}

/// What an exploration covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coverage {
    /// Distinct reachable states.
    pub states: usize,
    /// Transitions taken.
    pub transitions: usize,
    /// Longest shortest path from the initial state.
    pub depth: usize,
}

/// Breadth-first exploration of every reachable world; on a violation, the shortest action
/// sequence that leads to it (breadth first: no shorter one exists).
pub fn explore(host: HostMachine) -> Result<Coverage, (String, Vec<Action>)> {
    let start = init();
    let mut parent: HashMap<World, Option<(World, Action)>> = HashMap::new();
    let mut queue = VecDeque::from([(start.clone(), 0usize)]);
    parent.insert(start, None);
    let mut cov = Coverage {
        states: 0,
        transitions: 0,
        depth: 0,
    };
    let path_to = |parent: &HashMap<World, Option<(World, Action)>>, w: &World| {
        let mut path = Vec::new();
        let mut cur = w.clone();
        while let Some(Some((prev, a))) = parent.get(&cur) {
            path.push(*a);
            cur = prev.clone();
        }
        path.reverse();
        path
    };
    while let Some((w, depth)) = queue.pop_front() {
        cov.states += 1;
        cov.depth = cov.depth.max(depth);
        if let Err(e) = check(&w, host) {
            return Err((e, path_to(&parent, &w)));
        }
        for a in actions(&w, host) {
            cov.transitions += 1;
            let next = match step(&w, &a, host) {
                Ok(n) => n,
                Err(e) => {
                    let mut p = path_to(&parent, &w);
                    p.push(a);
                    return Err((e, p));
                }
            };
            if !parent.contains_key(&next) {
                parent.insert(next.clone(), Some((w.clone(), a)));
                queue.push_back((next, depth + 1));
            }
        }
    }
    Ok(cov)
}

/// The shipped host machine.
pub fn shipped(o: &HostObservation) -> HostDecision {
    backup_host::decide(o)
}
