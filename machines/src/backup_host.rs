//! What one host's agent (a sidecar, or a backup Job's pod) does for a BackupSession: the
//! [`Phase`] lifecycle, and its stepper [`decide`], which works from what the API and restic
//! say, never from the agent's memory:
//!
//! * nothing until the operator has marked the session `Running` ([`Phase::Waiting`]), nothing
//!   once this host's entry is in `status.stats` ([`Phase::Reported`]), and nothing for a
//!   session that ended before this host started ([`Phase::Ended`]);
//! * a paused configuration does not stop a session already `Running` (the operator decides
//!   pausing, for sessions not yet started);
//! * every snapshot carries the session's identity as a restic tag ([`session_tag`]); an agent
//!   that restarts between writing a snapshot and reporting it finds that snapshot by the tag
//!   ([`Phase::LookingUp`]) and reports it ([`Phase::Reporting`]) instead of backing the
//!   directory up again ([`Phase::BackingUp`]);
//! * the host's entry is written only from [`Phase::Reporting`] (the agents check the write
//!   against this lifecycle's table before they make it);
//! * what comes after the snapshots (`check`, `forget`, `stats`) never decides the host's
//!   outcome: a failure there is reported beside the snapshots ([`after_snapshot`]);
//! * an incomplete snapshot (restic could not read some files) is not a success: it is kept,
//!   tagged [`PARTIAL_TAG`], and the host fails without applying retention ([`verdict`]).
//!
//! The phase is never stored: each observation is classified into the phase the host is in, and
//! the step it decides is taken as a transition of the generated table ([`Phase::transition`]);
//! a step the table does not allow is returned as a [`Rejection`], never taken.

use crate::lifecycle::Rejection;
use stash_macros::lifecycle;
use std::collections::BTreeMap;

/// The phase of one host's work for one BackupSession (computed, never persisted).
#[lifecycle(
    name = "BackupHost",
    events(Start, Found, Missing, Snapshot, Fail, Report, End)
)]
pub enum Phase {
    /// The session is not `Running` yet.
    #[initial]
    #[on(Start => LookingUp, End => Ended)]
    Waiting,
    /// Asking restic which snapshots carry the session's tag (the repository is opened, and
    /// initialised when there is none).
    #[on(Found => Reporting, Missing => BackingUp, Fail => Reporting)]
    LookingUp,
    /// Backing up the directories that have no snapshot of the session yet.
    #[on(Snapshot => Reporting, Fail => Reporting)]
    BackingUp,
    /// Writing this host's entry: its snapshots, or why it failed.
    #[on(Report => Reported)]
    Reporting,
    /// This host's entry is in `status.stats`.
    #[terminal]
    Reported,
    /// The session ended before this host started: nothing to do.
    #[terminal]
    Ended,
}

/// Takes `event` in `phase` through the generated transition function (the host lifecycle has
/// no guards).
pub fn fire(phase: Phase, event: Event) -> Result<Phase, Rejection<Phase>> {
    phase.transition(event, |g| match g {})
}

/// The restic tag that names the session that took a snapshot (for people: `restic snapshots
/// --tag stash-session=<name>`).
pub fn session_tag(session: &str) -> String {
    format!("stash-session={session}")
}

/// The restic tag that ties a snapshot to the one session that took it, by the session's uid:
/// the host looks its session's snapshots up by this tag, never by the name — a session of the
/// same name in another namespace sharing the repository, or one deleted and created again,
/// is another session and backs up (found by `two_repository_objects_on_one_prefix_initialise_it_once`:
/// the second namespace's `first` reported the first namespace's snapshot as its own).
pub fn session_uid_tag(uid: &str) -> String {
    format!("stash-session-uid={uid}")
}

/// The session, as far as one host is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Session {
    /// Not started yet (`status.phase` empty or `Pending`).
    Pending,
    /// `status.phase` is `Running`.
    Running,
    /// `status.phase` is terminal.
    Ended,
}

/// What the agent observed for one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostObservation {
    /// The session's phase.
    pub session: Session,
    /// This host's entry is already in `status.stats`.
    pub reported: bool,
    /// The directories this host backs up.
    pub directories: Vec<String>,
    /// The snapshots restic holds for this host with the session's tag: path → snapshot id.
    /// `None` when restic has not been asked yet.
    pub tagged: Option<BTreeMap<String, String>>,
}

/// The next step of the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostStep {
    /// Nothing to do for this session (not running yet, ended, or already reported).
    Idle,
    /// Ask restic which snapshots carry the session's tag (fills `tagged`).
    LookUpSnapshots,
    /// Back up `back_up` (tagged with the session); `reuse` are directories whose snapshot
    /// already exists (path → id) and are reported as they are.
    BackUp {
        /// Directories to back up.
        back_up: Vec<String>,
        /// Directories already in the repository for this session.
        reuse: BTreeMap<String, String>,
    },
    /// Every directory already has its snapshot: report them, take none.
    Report {
        /// path → snapshot id.
        snapshots: BTreeMap<String, String>,
    },
}

/// What [`decide`] returns: the phase the host is in once it takes `step`, and the step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDecision {
    /// The host's phase after the transition the step stands for (unchanged if rejected).
    pub phase: Phase,
    /// The next step (`Idle` when the transition was rejected).
    pub step: HostStep,
    /// Set when the table did not allow the transition: a bug, and nothing is done.
    pub rejection: Option<Rejection<Phase>>,
}

impl HostDecision {
    fn stay(phase: Phase) -> Self {
        Self {
            phase,
            step: HostStep::Idle,
            rejection: None,
        }
    }

    fn fire(from: Phase, event: Event, step: HostStep) -> Self {
        match fire(from, event) {
            Ok(phase) => Self {
                phase,
                step,
                rejection: None,
            },
            Err(r) => Self {
                phase: from,
                step: HostStep::Idle,
                rejection: Some(r),
            },
        }
    }
}

/// The stepper: classifies the observation into the phase the host is in and takes the
/// transition of the step it decides.
///
/// * own entry present: `Reported`, nothing to do;
/// * session pending: `Waiting`; session ended: `Waiting --End--> Ended`;
/// * running, restic not asked: `Waiting --Start--> LookingUp`, look the tag up;
/// * running, some directory without a tagged snapshot: `LookingUp --Missing--> BackingUp`;
/// * running, every directory has one: `LookingUp --Found--> Reporting`.
pub fn decide(obs: &HostObservation) -> HostDecision {
    if obs.reported {
        return HostDecision::stay(Phase::Reported);
    }
    match obs.session {
        Session::Pending => return HostDecision::stay(Phase::Waiting),
        Session::Ended => return HostDecision::fire(Phase::Waiting, Event::End, HostStep::Idle),
        Session::Running => {}
    }
    let Some(tagged) = &obs.tagged else {
        return HostDecision::fire(Phase::Waiting, Event::Start, HostStep::LookUpSnapshots);
    };
    let mut reuse = BTreeMap::new();
    let mut back_up = Vec::new();
    for d in &obs.directories {
        match tagged.get(d) {
            Some(id) => {
                reuse.insert(d.clone(), id.clone());
            }
            None if !back_up.contains(d) => back_up.push(d.clone()),
            None => {}
        }
    }
    if back_up.is_empty() {
        HostDecision::fire(
            Phase::LookingUp,
            Event::Found,
            HostStep::Report { snapshots: reuse },
        )
    } else {
        HostDecision::fire(
            Phase::LookingUp,
            Event::Missing,
            HostStep::BackUp { back_up, reuse },
        )
    }
}

/// Where a host that just ran its step stands: `Reporting` after the snapshots (`Snapshot`) or
/// a failure (`Fail`) in `phase` (`LookingUp` or `BackingUp`).
pub fn after_step(phase: Phase, ok: bool) -> Result<Phase, Rejection<Phase>> {
    fire(phase, if ok { Event::Snapshot } else { Event::Fail })
}

/// The host of a backup Job writing the outcome its backup step left (`output.json`): the
/// operator created the Job when it started the session, so the host has started, and it
/// reports from `Reporting` (its snapshots were found or taken, or it failed). A host whose
/// entry is already there (a retried pod) is `Reported` and rewrites it.
pub fn job_outcome(reported: bool, failed: bool) -> Result<Phase, Rejection<Phase>> {
    if reported {
        return Ok(Phase::Reported);
    }
    let looking = fire(Phase::Waiting, Event::Start)?;
    fire(looking, if failed { Event::Fail } else { Event::Found })
}

/// The restic tag a host adds to a snapshot restic made without reading every file (restic exit
/// status 3): the snapshot is kept, marked, and the host fails.
pub const PARTIAL_TAG: &str = "partial";

/// How one directory's snapshot of the session came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnapshotOutcome {
    /// restic read everything (or a restarted host found the session's snapshot untagged).
    Complete,
    /// restic made the snapshot but could not read some files (exit status 3), or a restarted
    /// host found the session's snapshot tagged [`PARTIAL_TAG`].
    Partial,
}

/// What a host's snapshots come to, once every directory has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The host's entry is `Succeeded`; otherwise it is `Failed`, naming what could not be
    /// read, and still lists every snapshot (a partial snapshot is kept, never forgotten here).
    pub succeeded: bool,
    /// The steps after the snapshots run (`check`, `forget` with the retention policy, `stats`,
    /// the Repository's figures): only when every snapshot is complete. `forget` counts a
    /// partial snapshot like any other, so with `keepLast: 1` it would forget the last complete
    /// one and leave the partial one as the only copy; a failed host therefore applies no
    /// retention and records no backup time, as when its backup failed outright. A later
    /// successful backup's `forget` treats the partial snapshot as one of the group's.
    pub follow_up: bool,
}

/// The host's verdict over its directories' snapshots: an incomplete snapshot is not a success.
/// One partial snapshot fails the host; the other directories are still backed up (a partial
/// snapshot is a snapshot, the host goes on), and every snapshot is reported.
pub fn verdict(snapshots: &[SnapshotOutcome]) -> Verdict {
    let complete = snapshots.iter().all(|s| *s == SnapshotOutcome::Complete);
    Verdict {
        succeeded: complete,
        follow_up: complete,
    }
}

/// A snapshot's outcome from its tags (what a restarted host finds in restic).
pub fn outcome_from_tags<S: AsRef<str>>(tags: &[S]) -> SnapshotOutcome {
    if tags.iter().any(|t| t.as_ref() == PARTIAL_TAG) {
        SnapshotOutcome::Partial
    } else {
        SnapshotOutcome::Complete
    }
}

/// One step after the snapshots and how it went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterSnapshot {
    /// It worked.
    Done,
    /// It failed with this message.
    Failed(String),
}

/// The steps after the snapshots, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FollowUpStep {
    /// `restic check` (on its own schedule, not after every backup).
    Check,
    /// `restic forget` with the retention policy.
    Forget,
    /// `restic stats` (the repository's size).
    Stats,
    /// Counting the repository's snapshots.
    Count,
}

impl FollowUpStep {
    /// The step's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            FollowUpStep::Check => "check",
            FollowUpStep::Forget => "forget",
            FollowUpStep::Stats => "stats",
            FollowUpStep::Count => "snapshots",
        }
    }

    /// The condition of the host's entry that reports the step (Stash's names where Stash has
    /// one), and its reasons when the step worked and when it failed.
    pub fn condition(self) -> (&'static str, &'static str, &'static str) {
        match self {
            FollowUpStep::Check => (
                "RepositoryIntegrityVerified",
                "IntegrityVerified",
                "IntegrityCheckFailed",
            ),
            FollowUpStep::Forget => (
                "RetentionPolicyApplied",
                "RetentionPolicyApplied",
                "RetentionPolicyFailed",
            ),
            FollowUpStep::Stats | FollowUpStep::Count => (
                "RepositoryStatsUpdated",
                "RepositoryStatsUpdated",
                "RepositoryStatsFailed",
            ),
        }
    }
}

/// A condition of the host's entry, from the steps after its snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowUpCondition {
    /// The condition type ([`FollowUpStep::condition`]).
    pub type_: &'static str,
    /// Whether every step it reports worked.
    pub ok: bool,
    /// Why (a named reason).
    pub reason: &'static str,
    /// What happened, in words.
    pub message: String,
}

/// What the steps after the snapshots come to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowUps {
    /// One warning per failed step, in step order (an Event and a log line each).
    pub warnings: Vec<String>,
    /// One condition per condition type, in the order of first use: the host's entry carries
    /// them, so what failed after the snapshot stays readable on the session.
    pub conditions: Vec<FollowUpCondition>,
}

/// The host's outcome once its snapshots exist: always `Succeeded` with every snapshot
/// recorded; each failed follow-up step becomes a warning and a `False` condition of the host's
/// entry, never a lost snapshot.
pub fn after_snapshot(steps: &[(FollowUpStep, AfterSnapshot)]) -> FollowUps {
    let mut out = FollowUps::default();
    for (step, how) in steps {
        let (type_, ok_reason, failed_reason) = step.condition();
        let failure = match how {
            AfterSnapshot::Done => None,
            AfterSnapshot::Failed(e) => {
                let w = format!("{} failed after the snapshot: {e}", step.name());
                out.warnings.push(w.clone());
                Some(w)
            }
        };
        match out.conditions.iter_mut().find(|c| c.type_ == type_) {
            // A second step of the same condition: a failure wins, messages add up.
            Some(c) => {
                if let Some(w) = failure {
                    if c.ok {
                        c.message = w;
                    } else {
                        c.message = format!("{}; {w}", c.message);
                    }
                    c.ok = false;
                    c.reason = failed_reason;
                }
            }
            None => out.conditions.push(FollowUpCondition {
                type_,
                ok: failure.is_none(),
                reason: if failure.is_none() {
                    ok_reason
                } else {
                    failed_reason
                },
                message: failure.unwrap_or_else(|| format!("{} succeeded", step.name())),
            }),
        }
    }
    out
}

/// Whether the API server's answer `status` to a host's report (`None`: none, a transport
/// error) is final: an invalid write or a session that is gone ([`report_retry`]).
pub fn report_is_final(status: Option<u16>) -> bool {
    status.is_some_and(|c| matches!(c, 400 | 404 | 405 | 413 | 415 | 422))
}

/// How long a host waits before writing its report again after a failed write (`attempt`
/// failures so far), or `None`: give up. The report is what the session waits for, so it is
/// retried for as long as it can still count — while the session runs and its deadline
/// (`deadline` after its creation; the session is `age` old) has not passed — backing off from
/// 1 s, doubling, at most 30 s. The operator ends a session at its own deadline, which the
/// agent sees as `Ended`; `deadline` bounds the retries where the operator does not. A
/// restarted agent finds its tagged snapshot and reports again.
///
/// `status` is the API server's answer to the failed write (`None`: no answer, a transport
/// error). An invalid write or a session that is gone (400, 404, 405, 413, 415, 422) is not
/// written again; a 403 is, within the same bounds: the agent's Role names a session as soon
/// as its one writer has seen it, which may be a moment after the session starts.
pub fn report_retry(
    attempt: u32,
    status: Option<u16>,
    session: Session,
    age: std::time::Duration,
    deadline: std::time::Duration,
) -> Option<std::time::Duration> {
    use std::time::Duration;
    if report_is_final(status) || session == Session::Ended || attempt == 0 {
        return None;
    }
    let delay = Duration::from_secs(1u64 << (attempt - 1).min(5)).min(Duration::from_secs(30));
    (age + delay < deadline).then_some(delay)
}

/// Whether this backup's follow-up runs `restic check`: when the Repository reports no
/// integrity yet or a failed one (so a repaired repository is noticed at the next backup),
/// when this agent has not checked since it started, or when its last check is `interval`
/// old or older.
pub fn check_due(
    reported_integrity: Option<bool>,
    since_last_check: Option<std::time::Duration>,
    interval: std::time::Duration,
) -> bool {
    reported_integrity != Some(true) || since_last_check.is_none_or(|d| d >= interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_retried_while_it_can_still_count() {
        use std::time::Duration;
        let s = Duration::from_secs;
        let day = s(86_400);
        let running =
            |attempt, status, age| report_retry(attempt, status, Session::Running, age, day);
        let delays: Vec<_> = (1..=8).map(|a| running(a, Some(503), s(60))).collect();
        let want = [1, 2, 4, 8, 16, 30, 30, 30].map(|d| Some(s(d)));
        assert_eq!(delays, want);
        // Not granted yet, or no answer at all: again.
        assert_eq!(running(1, Some(403), s(60)), Some(s(1)));
        assert_eq!(running(1, None, s(60)), Some(s(1)));
        // An invalid write, or the session is gone: never again.
        for code in [400, 404, 422] {
            assert_eq!(running(1, Some(code), s(60)), None);
        }
        // The session ended (the operator's deadline, or every host reported): no more.
        assert_eq!(report_retry(1, Some(503), Session::Ended, s(60), day), None);
        // The wait would end past the deadline: no more.
        assert_eq!(running(3, None, day - s(4)), None);
        assert_eq!(running(3, None, day - s(5)), Some(s(4)));
    }

    #[test]
    fn the_check_runs_on_its_own_schedule() {
        use std::time::Duration;
        let day = Duration::from_secs(86_400);
        // Unknown or failed integrity, or no check since the agent started: check now.
        assert!(check_due(None, Some(Duration::ZERO), day));
        assert!(check_due(Some(false), Some(Duration::ZERO), day));
        assert!(check_due(Some(true), None, day));
        // A recent good check: not again until the interval has passed.
        assert!(!check_due(Some(true), Some(Duration::from_secs(60)), day));
        assert!(check_due(Some(true), Some(day), day));
        // Interval 0: after every backup.
        assert!(check_due(Some(true), Some(Duration::ZERO), Duration::ZERO));
    }
    use crate::lifecycle::RejectionKind;

    fn obs(session: Session, reported: bool, tagged: Option<&[(&str, &str)]>) -> HostObservation {
        HostObservation {
            session,
            reported,
            directories: vec!["/data".into(), "/logs".into()],
            tagged: tagged.map(|t| {
                t.iter()
                    .map(|(p, id)| ((*p).to_string(), (*id).to_string()))
                    .collect()
            }),
        }
    }

    fn step(o: &HostObservation) -> (Phase, HostStep) {
        let d = decide(o);
        assert_eq!(d.rejection, None);
        (d.phase, d.step)
    }

    #[test]
    fn a_host_waits_for_running_and_stops_once_reported() {
        use Session::*;
        assert_eq!(
            step(&obs(Pending, false, None)),
            (Phase::Waiting, HostStep::Idle)
        );
        assert_eq!(
            step(&obs(Running, true, Some(&[]))),
            (Phase::Reported, HostStep::Idle)
        );
        assert_eq!(
            step(&obs(Ended, true, None)),
            (Phase::Reported, HostStep::Idle)
        );
        assert_eq!(
            step(&obs(Ended, false, None)),
            (Phase::Ended, HostStep::Idle)
        );
        assert_eq!(
            step(&obs(Running, false, None)),
            (Phase::LookingUp, HostStep::LookUpSnapshots)
        );
    }

    #[test]
    fn a_restarted_host_reports_its_snapshots_instead_of_taking_new_ones() {
        let running = |t| step(&obs(Session::Running, false, t));
        assert_eq!(
            running(Some(&[])),
            (
                Phase::BackingUp,
                HostStep::BackUp {
                    back_up: vec!["/data".into(), "/logs".into()],
                    reuse: BTreeMap::new(),
                }
            )
        );
        assert_eq!(
            running(Some(&[("/data", "aaaa")])),
            (
                Phase::BackingUp,
                HostStep::BackUp {
                    back_up: vec!["/logs".into()],
                    reuse: [("/data".to_string(), "aaaa".to_string())].into(),
                }
            )
        );
        let both = [("/data", "aaaa"), ("/logs", "bbbb")];
        assert_eq!(
            running(Some(&both)),
            (
                Phase::Reporting,
                HostStep::Report {
                    snapshots: [
                        ("/data".to_string(), "aaaa".to_string()),
                        ("/logs".to_string(), "bbbb".to_string())
                    ]
                    .into()
                }
            )
        );
    }

    #[test]
    fn a_host_reports_only_from_reporting() {
        assert_eq!(after_step(Phase::BackingUp, true), Ok(Phase::Reporting));
        assert_eq!(after_step(Phase::BackingUp, false), Ok(Phase::Reporting));
        assert_eq!(after_step(Phase::LookingUp, false), Ok(Phase::Reporting));
        assert_eq!(fire(Phase::Reporting, Event::Report), Ok(Phase::Reported));
        for p in [Phase::Waiting, Phase::LookingUp, Phase::BackingUp] {
            let r = fire(p, Event::Report).unwrap_err();
            assert_eq!(r.kind, RejectionKind::NoTransition, "{p:?}");
        }
        for p in [Phase::Reported, Phase::Ended] {
            assert_eq!(
                fire(p, Event::Report).unwrap_err().kind,
                RejectionKind::Terminal
            );
        }
    }

    #[test]
    fn a_backup_job_reports_what_its_backup_step_left() {
        assert_eq!(job_outcome(false, false), Ok(Phase::Reporting));
        assert_eq!(job_outcome(false, true), Ok(Phase::Reporting));
        assert_eq!(job_outcome(true, false), Ok(Phase::Reported));
    }

    #[test]
    fn follow_up_failures_are_warnings_and_false_conditions_in_order() {
        use FollowUpStep::*;
        let f = after_snapshot(&[
            (Check, AfterSnapshot::Failed("pack 1 damaged".into())),
            (Forget, AfterSnapshot::Done),
            (Stats, AfterSnapshot::Failed("timeout".into())),
            (Count, AfterSnapshot::Done),
        ]);
        assert_eq!(
            f.warnings,
            [
                "check failed after the snapshot: pack 1 damaged",
                "stats failed after the snapshot: timeout"
            ]
        );
        let c: Vec<_> = f
            .conditions
            .iter()
            .map(|c| (c.type_, c.ok, c.reason))
            .collect();
        assert_eq!(
            c,
            [
                ("RepositoryIntegrityVerified", false, "IntegrityCheckFailed"),
                ("RetentionPolicyApplied", true, "RetentionPolicyApplied"),
                ("RepositoryStatsUpdated", false, "RepositoryStatsFailed"),
            ]
        );
        assert_eq!(
            f.conditions[2].message,
            "stats failed after the snapshot: timeout"
        );
        let ok = after_snapshot(&[(Forget, AfterSnapshot::Done)]);
        assert!(ok.warnings.is_empty());
        assert_eq!(ok.conditions[0].message, "forget succeeded");
        // Both steps of one condition failing: one condition naming both.
        let both = after_snapshot(&[
            (Stats, AfterSnapshot::Failed("a".into())),
            (Count, AfterSnapshot::Failed("b".into())),
        ]);
        assert_eq!(both.conditions.len(), 1);
        assert_eq!(
            both.conditions[0].message,
            "stats failed after the snapshot: a; snapshots failed after the snapshot: b"
        );
    }

    #[test]
    fn an_incomplete_snapshot_fails_the_host_and_keeps_retention_away() {
        use SnapshotOutcome::*;
        let ok = Verdict {
            succeeded: true,
            follow_up: true,
        };
        let failed = Verdict {
            succeeded: false,
            follow_up: false,
        };
        assert_eq!(verdict(&[Complete]), ok);
        assert_eq!(verdict(&[Complete, Complete]), ok);
        assert_eq!(verdict(&[Partial]), failed);
        assert_eq!(verdict(&[Complete, Partial]), failed);
        // The host reaches Reporting through `Fail`, and reports from there.
        assert_eq!(
            after_step(Phase::BackingUp, verdict(&[Partial]).succeeded),
            Ok(Phase::Reporting)
        );
        // A restarted host knows a partial snapshot by its tag.
        assert_eq!(
            outcome_from_tags(&["stash-session=s", PARTIAL_TAG]),
            Partial
        );
        assert_eq!(outcome_from_tags(&["stash-session=s"]), Complete);
        assert_eq!(outcome_from_tags::<&str>(&[]), Complete);
    }

    #[test]
    fn the_tag_names_the_session() {
        assert_eq!(session_tag("daily-1"), "stash-session=daily-1");
        assert_eq!(session_uid_tag("0f1e"), "stash-session-uid=0f1e");
    }
}
