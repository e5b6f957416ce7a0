//! The RestoreSession lifecycle and its stepper.
//!
//! Rules (stash-api.md §3.4, §5.8, §7.3 and decision 2):
//! * before starting, every host is resolved to a rule ([`resolve_rule`]); a host that no rule
//!   matches fails the session at once with a reason naming it (upstream reported it
//!   `Succeeded` with nothing restored);
//! * a running session completes once every host has reported: `Succeeded` only if every host
//!   entry is `Succeeded` without an error, else `Failed` if any host failed, else `Unknown`;
//! * a restore Job that ended while the session was still `Pending` fails it;
//! * deadlines and Jobs as for BackupSession: past [`Policy::deadline`] the session is `Failed`.

use crate::common::{EventKind, EventRecord, JobState, Policy, StatusPatch};
use crate::reasons;
use stash_macros::{lifecycle, phase_enum};
use std::collections::BTreeMap;
use std::time::Duration;

/// The phase of a RestoreSession (`status.phase`).
#[lifecycle(name = "RestoreSession", events(Start, Fail, Timeout, Complete))]
pub enum Phase {
    /// Created; waiting for the operator.
    #[initial]
    #[on(Start => Running, Fail => Failed)]
    Pending,
    /// Restoring; hosts report into `status.stats`.
    #[on(
        Complete => Succeeded if all_hosts_succeeded,
        Complete => Failed if any_host_failed,
        Complete => Unknown,
        Fail => Failed,
        Timeout => Failed
    )]
    Running,
    /// Every host restored.
    #[terminal]
    Succeeded,
    /// Some host failed, no rule matched a host, or the deadline passed.
    #[terminal]
    Failed,
    /// No host failed, but some host's outcome is unknown.
    #[terminal]
    Unknown,
}

/// The phase of one host of a RestoreSession (`status.stats[].phase`).
#[phase_enum]
pub enum HostPhase {
    /// The host restored.
    Succeeded,
    /// The host failed.
    Failed,
    /// The host's outcome is unknown.
    Unknown,
}

/// What only a RestoreSession decision asks for (besides status, events and requeues).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Create the session's restore Jobs (job model), if absent.
    CreateRestoreJobs,
}

/// A RestoreSession effect.
pub type Effect = crate::common::Effect<Phase, Action>;

/// A RestoreSession decision.
pub type Decision = crate::common::Decision<Phase, Action>;

/// How the target is restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetModel {
    /// A workload: the workload controller, which watches RestoreSessions, injects `stash-init`.
    Workload,
    /// The operator creates restore Job(s).
    Job,
    /// CSI volume snapshots: out of scope, fails with a clear reason.
    VolumeSnapshotter,
}

/// The most hosts one RestoreSession restores: Kubernetes' largest supported cluster (5,000
/// nodes). A target asking for more (`spec.target.replicas`, a StatefulSet's replicas) fails
/// the session with the reason before a single host name is built: a namespace user's
/// `replicas: 2147483647` must not make the operator allocate two billion names.
pub const MAX_HOSTS: u32 = 5000;

/// The names of the hosts of a target with `replicas` hosts (at least one), or, past
/// [`MAX_HOSTS`], why not: `host-0` … `host-<n-1>` (`<alias>-<i>`) when they are `numbered`
/// (a StatefulSet's pods, a per-ordinal restore), else the one host `host-0` (`<alias>`)
/// ([`crate::names::host_name`]).
pub fn numbered_hosts(
    replicas: i64,
    alias: Option<&str>,
    numbered: bool,
) -> Result<Vec<String>, String> {
    use crate::names::{Host, host_name};
    let n = replicas.max(1);
    if n > i64::from(MAX_HOSTS) {
        return Err(format!(
            "{replicas} replicas to restore: at most {MAX_HOSTS} hosts restore in one session"
        ));
    }
    if !numbered && n == 1 {
        return Ok(vec![host_name(alias, Host::Only)]);
    }
    Ok((0..n)
        .map(|i| host_name(alias, Host::Ordinal(u64::try_from(i).unwrap_or(0))))
        .collect())
}

/// One `spec.rules[]` entry, as far as resolution needs it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Rule {
    /// `targetHosts` (empty: every host).
    pub target_hosts: Vec<String>,
}

/// The rule a host restores with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleMatch {
    /// `spec.rules[i]`.
    Rule(usize),
    /// No rule matches this host (decision 2: reported, never a silent success).
    NoRuleMatched,
}

/// Rule resolution for one host: the first rule whose `targetHosts` names the host, otherwise
/// the first rule with empty `targetHosts`, otherwise none.
pub fn resolve_rule(host: &str, rules: &[Rule]) -> RuleMatch {
    rules
        .iter()
        .position(|r| r.target_hosts.iter().any(|h| h == host))
        .or_else(|| rules.iter().position(|r| r.target_hosts.is_empty()))
        .map_or(RuleMatch::NoRuleMatched, RuleMatch::Rule)
}

/// Rule resolution for every host, in order.
pub fn resolve_rules<'h>(hosts: &'h [String], rules: &[Rule]) -> Vec<(&'h str, RuleMatch)> {
    hosts
        .iter()
        .map(|h| (h.as_str(), resolve_rule(h, rules)))
        .collect()
}

/// One `status.stats[]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostReport {
    /// `hostname`.
    pub hostname: String,
    /// `phase`.
    pub phase: Option<HostPhase>,
    /// `error`, if not empty.
    pub error: Option<String>,
    /// `duration`, parsed.
    pub duration: Duration,
}

/// Everything the stepper looks at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Observation {
    /// The session's name.
    pub name: String,
    /// Its creation time, seconds since the epoch.
    pub created_at: u64,
    /// `status.phase` (`None`: empty).
    pub phase: Option<Phase>,
    /// `status.totalHosts`.
    pub total_hosts: Option<u32>,
    /// `status.stats`.
    pub hosts: Vec<HostReport>,
    /// How the target is restored.
    pub model: TargetModel,
    /// The hosts that will restore (stash-api.md §9.3), computed by the runtime.
    pub target_hosts: Vec<String>,
    /// Why the hosts could not be taken (e.g. more than [`MAX_HOSTS`]); the session fails.
    pub hosts_refused: Option<String>,
    /// The hosts are a DaemonSet's nodes, known by number only (`target_hosts` is empty): each
    /// is named when it reports and resolves its own rule. `Some(0)`: it runs on no node (or
    /// does not exist): nothing to restore.
    pub node_hosts: Option<u32>,
    /// `spec.rules`.
    pub rules: Vec<Rule>,
    /// The restore Job, if the runtime found one.
    pub job: Option<JobState>,
    /// Now, seconds since the epoch.
    pub now: u64,
    /// Deadlines and polling.
    pub policy: Policy,
}

/// Classifies one host entry: an entry with an error is failed; an entry without a phase is
/// unknown.
pub fn host_outcome(report: &HostReport) -> HostPhase {
    if crate::entry_failed(
        report.phase == Some(HostPhase::Failed),
        report.error.as_deref(),
    ) {
        return HostPhase::Failed;
    }
    report.phase.unwrap_or(HostPhase::Unknown)
}

/// Per hostname: the worst outcome among its entries (Failed, then Unknown, then Succeeded).
pub fn host_outcomes(hosts: &[HostReport]) -> BTreeMap<&str, HostPhase> {
    let severity = |p: HostPhase| match p {
        HostPhase::Failed => 2,
        HostPhase::Unknown => 1,
        HostPhase::Succeeded => 0,
    };
    let mut out: BTreeMap<&str, HostPhase> = BTreeMap::new();
    for h in hosts {
        let o = host_outcome(h);
        let e = out.entry(&h.hostname).or_insert(o);
        if severity(o) > severity(*e) {
            *e = o;
        }
    }
    out
}

/// The stepper.
pub fn decide(obs: &Observation) -> Decision {
    let current = obs.phase.unwrap_or(Phase::INITIAL);
    match current {
        Phase::Pending => pending(obs),
        Phase::Running => running(obs),
        terminal => Decision {
            phase: terminal,
            effects: vec![],
            rejection: None,
        },
    }
}

fn fire(
    obs: &Observation,
    current: Phase,
    event: Event,
    guards: (bool, bool),
    before: Vec<Effect>,
    total_hosts: Option<u32>,
    reason: String,
) -> Decision {
    let (all_ok, any_failed) = guards;
    let next = match current.transition(event, |g| match g {
        Guard::AllHostsSucceeded => all_ok,
        Guard::AnyHostFailed => any_failed,
    }) {
        Ok(next) => next,
        Err(rejection) => {
            return Decision {
                phase: current,
                effects: vec![],
                rejection: Some(rejection),
            };
        }
    };
    let mut status = StatusPatch {
        phase: next,
        total_hosts,
        session_duration: None,
        reason: None,
    };
    let (kind, ev_reason, message) = match next {
        Phase::Succeeded => {
            status.session_duration = Some(obs.hosts.iter().map(|h| h.duration).sum());
            (
                EventKind::Normal,
                reasons::RESTORE_SESSION_SUCCEEDED,
                "restore succeeded for every host".to_string(),
            )
        }
        Phase::Running => (EventKind::Normal, reasons::RESTORE_SESSION_RUNNING, reason),
        Phase::Unknown => {
            status.reason = Some(reason.clone());
            (EventKind::Warning, reasons::RESTORE_SESSION_UNKNOWN, reason)
        }
        _ => {
            status.reason = Some(reason.clone());
            (EventKind::Warning, reasons::RESTORE_SESSION_FAILED, reason)
        }
    };
    let mut effects = before;
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

fn pending(obs: &Observation) -> Decision {
    let fail = |reason: String| {
        fire(
            obs,
            Phase::Pending,
            Event::Fail,
            (false, true),
            vec![],
            None,
            reason,
        )
    };
    if obs.policy.expired(obs.created_at, obs.now) {
        return fail(format!(
            "deadline of {}s passed before the restore could start",
            obs.policy.deadline.as_secs()
        ));
    }
    // The API refused the Job for good: retrying cannot help.
    if let Some(JobState::Rejected { message }) = &obs.job {
        return fail(format!("could not create the restore Job: {message}"));
    }
    // The operator crashed between creating the Job and writing `Running`, and the Job ended.
    if let Some(JobState::Failed { .. } | JobState::Succeeded) = &obs.job {
        return fail("the restore Job ended before the session was marked Running".into());
    }
    if obs.model == TargetModel::VolumeSnapshotter {
        return fail("the VolumeSnapshotter driver is not supported".into());
    }
    if let Some(reason) = &obs.hosts_refused {
        return fail(reason.clone());
    }
    if obs.node_hosts.unwrap_or(obs.target_hosts.len() as u32) == 0 {
        return fail("no hosts to restore".into());
    }
    let unmatched: Vec<&str> = resolve_rules(&obs.target_hosts, &obs.rules)
        .into_iter()
        .filter(|(_, m)| *m == RuleMatch::NoRuleMatched)
        .map(|(h, _)| h)
        .collect();
    if !unmatched.is_empty() {
        return fail(format!(
            "no restore rule matches host(s): {}",
            unmatched.join(", ")
        ));
    }
    let total = obs.node_hosts.unwrap_or(obs.target_hosts.len() as u32);
    // A workload target needs no action: the workload controller watches RestoreSessions and
    // injects `stash-init` into the workload's pods.
    let before = match obs.model {
        TargetModel::Job => vec![Effect::Act(Action::CreateRestoreJobs)],
        _ => vec![],
    };
    fire(
        obs,
        Phase::Pending,
        Event::Start,
        (false, false),
        before,
        Some(total),
        format!("restore of {total} host(s) started"),
    )
}

fn running(obs: &Observation) -> Decision {
    let known = obs.node_hosts.unwrap_or(obs.target_hosts.len() as u32);
    let total = obs.total_hosts.unwrap_or(known);
    let outcomes = host_outcomes(&obs.hosts);
    let fire = |event, guards, reason| {
        fire(
            obs,
            Phase::Running,
            event,
            guards,
            vec![],
            obs.total_hosts,
            reason,
        )
    };
    if total > 0 && outcomes.len() >= total as usize {
        let all_ok = outcomes.values().all(|p| *p == HostPhase::Succeeded);
        let bad: Vec<String> = outcomes
            .iter()
            .filter(|(_, p)| **p != HostPhase::Succeeded)
            .map(|(h, p)| {
                let err = obs
                    .hosts
                    .iter()
                    .find(|r| r.hostname == *h)
                    .and_then(|r| r.error.clone());
                match err {
                    Some(e) if !e.is_empty() => format!("{h} ({p}: {e})"),
                    _ => format!("{h} ({p})"),
                }
            })
            .collect();
        let any_failed = outcomes.values().any(|p| *p == HostPhase::Failed);
        return fire(
            Event::Complete,
            (all_ok, any_failed),
            format!("restore did not succeed for host(s): {}", bad.join(", ")),
        );
    }
    let missing = format!(
        "{} of {total} host(s) never reported",
        (total as usize).saturating_sub(outcomes.len())
    );
    match &obs.job {
        Some(JobState::Failed { message }) => {
            return fire(
                Event::Fail,
                (false, true),
                format!("restore Job failed: {message}; {missing}"),
            );
        }
        Some(JobState::Succeeded) => {
            return fire(
                Event::Fail,
                (false, true),
                format!("restore Job finished but {missing}"),
            );
        }
        _ => {}
    }
    if obs.policy.expired(obs.created_at, obs.now) {
        return fire(
            Event::Timeout,
            (false, true),
            format!(
                "deadline of {}s exceeded: {missing}",
                obs.policy.deadline.as_secs()
            ),
        );
    }
    Decision {
        phase: Phase::Running,
        effects: vec![Effect::RequeueAfter(
            obs.policy.requeue(obs.created_at, obs.now),
        )],
        rejection: None,
    }
}
