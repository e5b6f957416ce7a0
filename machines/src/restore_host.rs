//! What one host's restore agent (the `stash-init` init-container, or a restore Job's pod) does
//! for a RestoreSession: the [`Phase`] lifecycle and its stepper [`decide`], decided from the
//! API (the session's phase and this host's own entry in `status.stats`), never from the
//! agent's memory:
//!
//! * it waits until the operator has marked the session `Running` ([`Phase::Waiting`]);
//! * a host whose entry is already there has restored ([`Phase::Reported`]): a restarted
//!   init-container (the pod restarted, the node rebooted) must not restore twice over data
//!   the application may already have changed;
//! * a session that ended before this host started has nothing for it ([`Phase::Ended`]);
//! * the entry is written only from [`Phase::Reporting`], after the restore succeeded or failed
//!   (the agent checks the write against this lifecycle's table before it makes it).
//!
//! As for [`crate::backup_host`], the phase is computed from each observation and every step is
//! taken as a transition of the generated table ([`Phase::transition`]).

use crate::lifecycle::Rejection;
use stash_macros::lifecycle;

pub use crate::backup_host::Session;

/// The phase of one host's restore for one RestoreSession (computed, never persisted).
#[lifecycle(name = "RestoreHost", events(Start, Restored, Fail, Report, End))]
pub enum Phase {
    /// The session is not `Running` yet.
    #[initial]
    #[on(Start => Restoring, End => Ended)]
    Waiting,
    /// Restoring this host's data.
    #[on(Restored => Reporting, Fail => Reporting)]
    Restoring,
    /// Writing this host's entry: restored, or why not.
    #[on(Report => Reported)]
    Reporting,
    /// This host's entry is in `status.stats`: it has restored (or failed to) already.
    #[terminal]
    Reported,
    /// The session ended before this host started: nothing to do.
    #[terminal]
    Ended,
}

/// Takes `event` in `phase` through the generated transition function (no guards).
pub fn fire(phase: Phase, event: Event) -> Result<Phase, Rejection<Phase>> {
    phase.transition(event, |g| match g {})
}

/// What the restore agent observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RestoreHostObservation {
    /// The session's phase.
    pub session: Session,
    /// This host's entry is already in `status.stats`.
    pub reported: bool,
}

/// The next step of the restore host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RestoreStep {
    /// Keep watching the session.
    Wait,
    /// Restore this host's data, then report.
    Restore,
    /// Nothing to do, now or later (already reported, or the session ended).
    Done,
}

/// What [`decide`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreHostDecision {
    /// The host's phase after the transition the step stands for (unchanged if rejected).
    pub phase: Phase,
    /// The next step (`Done` when the transition was rejected).
    pub step: RestoreStep,
    /// Set when the table did not allow the transition: a bug, and nothing is done.
    pub rejection: Option<Rejection<Phase>>,
}

/// The stepper: own entry present: `Reported`, done; session pending: `Waiting`, wait; session
/// ended: `Waiting --End--> Ended`, done; running: `Waiting --Start--> Restoring`, restore.
pub fn decide(obs: &RestoreHostObservation) -> RestoreHostDecision {
    let stay = |phase, step| RestoreHostDecision {
        phase,
        step,
        rejection: None,
    };
    if obs.reported {
        return stay(Phase::Reported, RestoreStep::Done);
    }
    let (event, step) = match obs.session {
        Session::Pending => return stay(Phase::Waiting, RestoreStep::Wait),
        Session::Ended => (Event::End, RestoreStep::Done),
        Session::Running => (Event::Start, RestoreStep::Restore),
    };
    match fire(Phase::Waiting, event) {
        Ok(phase) => stay(phase, step),
        Err(r) => RestoreHostDecision {
            phase: Phase::Waiting,
            step: RestoreStep::Done,
            rejection: Some(r),
        },
    }
}

/// Where a host that restored stands: `Restoring --Restored|Fail--> Reporting`.
pub fn after_restore(phase: Phase, ok: bool) -> Result<Phase, Rejection<Phase>> {
    fire(phase, if ok { Event::Restored } else { Event::Fail })
}

/// The host of a restore Job writing the outcome its restore step left (`output.json`): the
/// operator created the Job when it started the session, so the host has restored (or failed
/// to) and reports from `Reporting`. A host whose entry is already there (a retried pod) is
/// `Reported` and rewrites it.
pub fn job_outcome(reported: bool, failed: bool) -> Result<Phase, Rejection<Phase>> {
    if reported {
        return Ok(Phase::Reported);
    }
    after_restore(fire(Phase::Waiting, Event::Start)?, !failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::RejectionKind;

    fn decide_for(session: Session, reported: bool) -> (Phase, RestoreStep) {
        let d = decide(&RestoreHostObservation { session, reported });
        assert_eq!(d.rejection, None);
        (d.phase, d.step)
    }

    #[test]
    fn a_restore_host_waits_for_running_then_restores() {
        assert_eq!(
            decide_for(Session::Pending, false),
            (Phase::Waiting, RestoreStep::Wait)
        );
        assert_eq!(
            decide_for(Session::Running, false),
            (Phase::Restoring, RestoreStep::Restore)
        );
        assert_eq!(
            decide_for(Session::Ended, false),
            (Phase::Ended, RestoreStep::Done)
        );
    }

    #[test]
    fn a_restarted_init_container_does_not_restore_twice() {
        for s in [Session::Pending, Session::Running, Session::Ended] {
            assert_eq!(decide_for(s, true), (Phase::Reported, RestoreStep::Done));
        }
    }

    #[test]
    fn a_restore_job_reports_what_its_restore_step_left() {
        assert_eq!(job_outcome(false, false), Ok(Phase::Reporting));
        assert_eq!(job_outcome(false, true), Ok(Phase::Reporting));
        assert_eq!(job_outcome(true, true), Ok(Phase::Reported));
    }

    #[test]
    fn a_restore_host_reports_only_after_restoring() {
        assert_eq!(after_restore(Phase::Restoring, true), Ok(Phase::Reporting));
        assert_eq!(after_restore(Phase::Restoring, false), Ok(Phase::Reporting));
        assert_eq!(fire(Phase::Reporting, Event::Report), Ok(Phase::Reported));
        for p in [Phase::Waiting, Phase::Restoring] {
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
}
