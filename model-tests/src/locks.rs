//! Agents that die holding restic locks, composed with the lock decisions of
//! [`stash_machines::locks`] (what an agent reports, what the operator's janitor judges, what
//! restic itself proves stale), explored exhaustively.
//!
//! The world: two agents sharing one repository, each in a pod of its own; every command is a
//! backup (a shared lock) or a prune (an exclusive one). Actions, at every step:
//! * an agent starts a command: it clears what restic proves stale (its own pod's locks of a
//!   dead process, before an exclusive command), then reports every lock in its way
//!   ([`locks::blocks`]) and waits;
//! * a waiting agent takes its lock once nothing refuses it, and later finishes and removes it;
//!   refused by a lock taken after it looked, it reports again and waits once more;
//! * an agent's container is killed (its restic dies holding its lock; the kubelet restarts it
//!   in the same pod, whose agent first clears its pod's stale locks: `restic unlock`), or its
//!   pod is deleted at once (the lock stays; the workload's new pod has a new name) — at any
//!   step, once each;
//! * the janitor judges a reported lock ([`locks::judge`]: does a pod of its hostname exist?),
//!   again and again while it is reported and kept (its holder may die meanwhile), and for a
//!   dead holder runs `restic unlock` under its hostname, which removes that hostname's locks
//!   only when all of them are reported (`unlock-dead --only`); an agent withdraws its report
//!   once its command has its lock or gives up;
//! * a waiting agent gives up (`--retry-lock` ran out): the model lets it only when the janitor,
//!   judging now, would remove none of the locks in its way and every restarted agent has
//!   cleared its pod's locks (the wait, 120 s, is far longer than either).
//!
//! Invariants: a live restic's lock is never removed; and no agent gives up because of a lock
//! whose holder is dead.

use std::collections::BTreeSet;
use std::time::Duration;

use stash_machines::locks::{self, HolderFacts, Verdict};

use crate::explore::{Coverage, explore as walk};

/// Agents in the world.
pub const AGENTS: usize = 2;
/// Commands each agent runs at most.
const COMMANDS: u8 = 2;

/// A lock file: its holder's pod name, the holder process's incarnation, and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lock {
    /// The pod name (agent and generation: `10 * agent + generation`).
    pub host: u8,
    /// The restic process (the agent's container incarnation).
    pub pid: u8,
    /// Exclusive (a prune).
    pub exclusive: bool,
}

/// What an agent does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Nothing in flight.
    Idle,
    /// Its command waits for the locks in its way.
    Waiting {
        /// Exclusive command.
        exclusive: bool,
    },
    /// Its restic holds its lock.
    Holding {
        /// Exclusive command.
        exclusive: bool,
    },
    /// Restarted in its pod: it clears its pod's stale locks before anything else.
    Restarted,
}

/// One agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Agent {
    /// Its pod's generation (a deleted pod is replaced by one of a new name).
    pub generation: u8,
    /// Its container's incarnation in that pod.
    pub incarnation: u8,
    /// What it does.
    pub phase: Phase,
    /// Commands started.
    pub started: u8,
    /// Whether it was killed once already (container or pod): bounded faults.
    pub faulted: bool,
    /// Commands that gave up.
    pub gave_up: u8,
}

impl Agent {
    fn host(&self, i: usize) -> u8 {
        10 * i as u8 + self.generation
    }
}

/// The world.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    /// The agents.
    pub agents: [Agent; AGENTS],
    /// The repository's lock files.
    pub locks: BTreeSet<Lock>,
    /// The locks the waiting agents report (each agent's own report).
    pub reported: [BTreeSet<Lock>; AGENTS],
}

impl World {
    fn all_reported(&self) -> BTreeSet<Lock> {
        self.reported.iter().flatten().copied().collect()
    }
}

/// What happens next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Agent starts a command (exclusive or not).
    Start(usize, bool),
    /// Agent takes its lock.
    Acquire(usize),
    /// Agent finishes and removes its lock.
    Finish(usize),
    /// Agent's container is killed (restarted in the same pod).
    KillContainer(usize),
    /// Agent's pod is deleted at once (replaced by a pod of a new name).
    DeletePod(usize),
    /// A restarted agent clears its pod's stale locks.
    ClearOwn(usize),
    /// A refused agent reports the locks in its way again.
    Report(usize),
    /// The janitor removes a reported lock it judges dead.
    Judge(Lock),
    /// A waiting agent gives up.
    GiveUp(usize),
}

/// The lock janitor's decision on a reported lock, given the world (the shipped one:
/// [`locks::judge`] from whether a pod of the lock's hostname exists).
pub type Janitor = fn(&World, &Lock) -> Verdict;

/// The shipped janitor.
pub fn shipped(w: &World, l: &Lock) -> Verdict {
    let pod_exists = w
        .agents
        .iter()
        .enumerate()
        .any(|(i, a)| a.host(i) == l.host);
    locks::judge(
        &format!("app-{}", l.host),
        HolderFacts {
            pod_exists,
            agent_host: true,
        },
    )
}

/// A lock restic would call in the way of a command of `me` (young: the model has no clock).
fn in_way(l: &Lock, exclusive: bool, me: u8) -> bool {
    locks::blocks(
        exclusive,
        l.exclusive,
        &format!("app-{}", l.host),
        Duration::ZERO,
        &format!("app-{me}"),
    )
}

/// Whether `l` is held by a live restic.
fn live(w: &World, l: &Lock) -> bool {
    w.agents.iter().enumerate().any(|(i, a)| {
        a.host(i) == l.host
            && a.incarnation == l.pid
            && matches!(a.phase, Phase::Holding { exclusive } if exclusive == l.exclusive)
    })
}

/// The locks in the way of agent `i`'s command.
fn blocking(w: &World, i: usize, exclusive: bool) -> Vec<Lock> {
    let me = w.agents[i].host(i);
    w.locks
        .iter()
        .filter(|l| in_way(l, exclusive, me))
        .copied()
        .collect()
}

/// The locks that refuse agent `i`'s command (any other process's, as restic decides).
fn refusing(w: &World, i: usize, exclusive: bool) -> Vec<Lock> {
    let a = &w.agents[i];
    let me = a.host(i);
    w.locks
        .iter()
        .filter(|l| (l.host != me || l.pid != a.incarnation) && (exclusive || l.exclusive))
        .copied()
        .collect()
}

fn actions(w: &World, janitor: Janitor) -> Vec<Action> {
    let mut out = Vec::new();
    let restarting = w.agents.iter().any(|a| a.phase == Phase::Restarted);
    for (i, a) in w.agents.iter().enumerate() {
        match a.phase {
            Phase::Idle if a.started < COMMANDS => {
                out.push(Action::Start(i, false));
                out.push(Action::Start(i, true));
            }
            Phase::Waiting { exclusive } => {
                let refused = refusing(w, i, exclusive);
                if refused.is_empty() {
                    out.push(Action::Acquire(i));
                } else if refused
                    .iter()
                    .any(|l| !w.reported[i].contains(l) && in_way(l, exclusive, a.host(i)))
                {
                    // Refused by a lock taken after it looked: reported, waited for once more.
                    out.push(Action::Report(i));
                } else if !restarting && refused.iter().all(|l| janitor(w, l) != Verdict::Remove) {
                    out.push(Action::GiveUp(i));
                }
            }
            Phase::Holding { .. } => out.push(Action::Finish(i)),
            Phase::Restarted => out.push(Action::ClearOwn(i)),
            Phase::Idle => {}
        }
        if !a.faulted && a.phase != Phase::Restarted {
            out.push(Action::KillContainer(i));
            out.push(Action::DeletePod(i));
        }
    }
    for l in w.all_reported() {
        if janitor(w, &l) == Verdict::Remove {
            out.push(Action::Judge(l));
        }
    }
    out
}

fn step(w: &World, action: &Action) -> Result<World, String> {
    let mut n = w.clone();
    match *action {
        Action::Start(i, exclusive) => {
            let a = &mut n.agents[i];
            a.started += 1;
            a.phase = Phase::Waiting { exclusive };
            let me = a.host(i);
            let inc = a.incarnation;
            if locks::clear_stale_first(exclusive) {
                // restic unlock: this pod's locks of a process that no longer runs.
                n.locks.retain(|l| !(l.host == me && l.pid != inc));
            }
            n.reported[i] = blocking(&n, i, exclusive).into_iter().collect();
        }
        Action::Acquire(i) => {
            let a = &mut n.agents[i];
            let Phase::Waiting { exclusive } = a.phase else {
                return Err("acquire while not waiting".into());
            };
            a.phase = Phase::Holding { exclusive };
            n.reported[i].clear();
            n.locks.insert(Lock {
                host: a.host(i),
                pid: a.incarnation,
                exclusive,
            });
        }
        Action::Finish(i) => {
            let a = &mut n.agents[i];
            let Phase::Holding { exclusive } = a.phase else {
                return Err("finish while not holding".into());
            };
            n.locks.remove(&Lock {
                host: a.host(i),
                pid: a.incarnation,
                exclusive,
            });
            a.phase = Phase::Idle;
        }
        Action::KillContainer(i) => {
            let a = &mut n.agents[i];
            a.faulted = true;
            a.incarnation += 1;
            a.phase = Phase::Restarted;
            n.reported[i].clear();
        }
        Action::DeletePod(i) => {
            let a = &mut n.agents[i];
            a.faulted = true;
            a.generation += 1;
            a.incarnation = 0;
            a.phase = Phase::Idle;
            n.reported[i].clear();
        }
        Action::ClearOwn(i) => {
            let a = &mut n.agents[i];
            let (me, inc) = (a.host(i), a.incarnation);
            a.phase = Phase::Idle;
            n.locks.retain(|l| !(l.host == me && l.pid != inc));
        }
        Action::Report(i) => {
            let Phase::Waiting { exclusive } = n.agents[i].phase else {
                return Err("report while not waiting".into());
            };
            n.reported[i] = blocking(&n, i, exclusive).into_iter().collect();
        }
        Action::Judge(l) => {
            // unlock-dead --only: nothing goes if the hostname holds a lock not reported.
            let reported = w.all_reported();
            let of_host: Vec<Lock> = n
                .locks
                .iter()
                .filter(|x| x.host == l.host)
                .copied()
                .collect();
            if of_host.iter().all(|x| reported.contains(x)) {
                for x in of_host {
                    if live(w, &x) {
                        return Err(format!("the live lock {x:?} was removed"));
                    }
                    n.locks.remove(&x);
                }
            }
        }
        Action::GiveUp(i) => {
            let a = &mut n.agents[i];
            let Phase::Waiting { exclusive } = a.phase else {
                return Err("give up while not waiting".into());
            };
            let me = a.host(i);
            let inc = a.incarnation;
            a.phase = Phase::Idle;
            a.gave_up += 1;
            n.reported[i].clear();
            let dead: Vec<Lock> = w
                .locks
                .iter()
                .filter(|l| (l.host != me || l.pid != inc) && (exclusive || l.exclusive))
                .filter(|l| !live(w, l))
                .copied()
                .collect();
            if !dead.is_empty() {
                return Err(format!(
                    "agent {i} gave up because of the lock(s) {dead:?} whose holder is dead"
                ));
            }
        }
    }
    Ok(n)
}

fn check(w: &World) -> Result<(), String> {
    for (i, a) in w.agents.iter().enumerate() {
        if let Phase::Holding { exclusive } = a.phase {
            let own = Lock {
                host: a.host(i),
                pid: a.incarnation,
                exclusive,
            };
            if !w.locks.contains(&own) {
                return Err(format!("agent {i} holds a lock that is gone: {own:?}"));
            }
        }
    }
    Ok(())
}

/// The world at the start: idle agents, no locks.
pub fn initial() -> World {
    let a = Agent {
        generation: 0,
        incarnation: 0,
        phase: Phase::Idle,
        started: 0,
        faulted: false,
        gave_up: 0,
    };
    World {
        agents: [a; AGENTS],
        locks: BTreeSet::new(),
        reported: [BTreeSet::new(), BTreeSet::new()],
    }
}

/// Explore every reachable world with `janitor`; the first violation with its path.
pub fn explore(janitor: Janitor) -> Result<Coverage, String> {
    walk(vec![initial()], |w| actions(w, janitor), step, check)
}
