//! A Repository's deletion (stash-api.md §3.1): what happens to its restic data, decided from
//! what the controller observes of the Repository, never from the controller's memory.
//!
//! A live Repository carries the finalizer. Deleted:
//!
//! * without `wipeOut` the data stays as the user asked ([`Phase::Kept`]);
//! * with `wipeOut` on a backend stash-rs cannot wipe (Swift, B2, REST; local backends are
//!   refused at admission) the data stays and a Warning says so ([`Phase::Unsupported`]);
//! * with the abandon annotation the data stays and a Warning says so ([`Phase::Abandoned`]);
//! * otherwise its restic objects are deleted ([`Phase::WipedOut`]); a failed attempt is
//!   [`Phase::Failing`]: a Warning, the `WipeOut` condition (refreshed at most every
//!   [`CONDITION_REFRESH`]), the finalizer kept, a retry. A storage Secret that is gone while
//!   its namespace is being deleted can never come back: the wipe-out is given up
//!   ([`Phase::Abandoned`]) rather than keeping the namespace Terminating forever.
//!
//! The finalizer goes only in a terminal phase, and every terminal phase but [`Phase::Kept`]
//! (what the user asked for) is announced by an Event naming what happened to the data.
use std::time::Duration;

use crate::lifecycle::Rejection;
use stash_macros::lifecycle;

/// The phase of a Repository's deletion (computed from each observation, never persisted).
#[lifecycle(
    name = "Repository",
    events(Delete, Release, NotSupported, Abandon, Wiped, Fail)
)]
pub enum Phase {
    /// Not being deleted: the finalizer stays.
    #[initial]
    #[on(Delete => Deleting)]
    Live,
    /// Being deleted: deciding what happens to the data.
    #[on(
        Release => Kept,
        NotSupported => Unsupported,
        Abandon => Abandoned,
        Wiped => WipedOut,
        Fail => Failing
    )]
    Deleting,
    /// A wipe-out attempt failed (the `WipeOut` condition says so): retried until it succeeds,
    /// or the user abandons it, or its Secret goes with its namespace.
    #[on(Abandon => Abandoned, Wiped => WipedOut)]
    Failing,
    /// Its restic objects were deleted.
    #[terminal]
    WipedOut,
    /// The wipe-out was given up (annotation, or the Secret gone with the namespace): the data
    /// stays.
    #[terminal]
    Abandoned,
    /// The backend cannot be wiped: the data stays.
    #[terminal]
    Unsupported,
    /// No wipe-out was asked for: the data stays.
    #[terminal]
    Kept,
}

/// Takes `event` in `phase` through the generated transition function (no guards).
pub fn fire(phase: Phase, event: Event) -> Result<Phase, Rejection<Phase>> {
    phase.transition(event, |g| match g {})
}

/// How often a wipe-out that keeps failing rewrites its condition. A status write is a change
/// the controller watches: rewriting the condition on every attempt (its message carries
/// timings) would retry in a tight loop instead of at the error policy's pace.
pub const CONDITION_REFRESH: Duration = Duration::from_secs(60);

/// Event reasons of this lifecycle.
pub mod reasons {
    /// The restic data was deleted.
    pub const WIPED_OUT: &str = "WipedOut";
    /// A wipe-out attempt failed (retried).
    pub const WIPE_OUT_FAILED: &str = "WipeOutFailed";
    /// The wipe-out was given up: the data stays.
    pub const WIPE_OUT_ABANDONED: &str = "WipeOutAbandoned";
    /// The backend cannot be wiped: the data stays.
    pub const WIPE_OUT_NOT_SUPPORTED: &str = "WipeOutNotSupported";
}

/// What the controller observed of the Repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Observation {
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `spec.wipeOut`.
    pub wipe_out: bool,
    /// The backend is one stash-rs wipes (S3, GCS, Azure).
    pub wipeable: bool,
    /// The abandon annotation is `"true"`.
    pub abandoned: bool,
    /// The `WipeOut` condition says an earlier attempt failed.
    pub failing: bool,
}

/// How a wipe-out attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WipeOutcome {
    /// Every restic object is deleted.
    Wiped,
    /// The storage Secret is gone and its namespace is being deleted: it cannot come back.
    SecretGoneWithNamespace,
    /// Anything else (unreachable, refused, the Secret missing in a live namespace).
    Failed,
}

/// An Event to publish: its severity and reason (the runtime writes the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Notice {
    /// Warning (else Normal).
    pub warning: bool,
    /// One of [`reasons`].
    pub reason: &'static str,
}

/// The next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Live: keep (or add) the finalizer.
    Keep,
    /// Try to delete the restic data, then ask [`after_wipe`].
    Wipe,
    /// Remove the finalizer (the deletion finishes), after publishing `notice`.
    Release {
        /// What to announce first.
        notice: Option<Notice>,
    },
    /// Keep the finalizer and try again later, after publishing `notice` and (when
    /// [`condition_due`] says so) writing the `WipeOut` condition.
    Retry {
        /// What to announce.
        notice: Notice,
    },
}

/// What [`decide`] and [`after_wipe`] return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepositoryDecision {
    /// The phase after the step's transition (unchanged if rejected).
    pub phase: Phase,
    /// The step.
    pub step: Step,
    /// Set when the table did not allow the transition: a bug, and nothing is done (the
    /// finalizer stays).
    pub rejection: Option<Rejection<Phase>>,
}

fn take(from: Phase, event: Event, step: Step) -> RepositoryDecision {
    match fire(from, event) {
        Ok(phase) => RepositoryDecision {
            phase,
            step,
            rejection: None,
        },
        Err(r) => RepositoryDecision {
            phase: from,
            step: Step::Keep,
            rejection: Some(r),
        },
    }
}

fn warn(reason: &'static str) -> Notice {
    Notice {
        warning: true,
        reason,
    }
}

/// The stepper: live: keep; deleting: release without wiping (not asked, not supported,
/// abandoned), or wipe.
pub fn decide(obs: &Observation) -> RepositoryDecision {
    if !obs.deleting {
        return RepositoryDecision {
            phase: Phase::Live,
            step: Step::Keep,
            rejection: None,
        };
    }
    let from = if obs.failing && obs.wipe_out && obs.wipeable {
        Phase::Failing
    } else {
        Phase::Deleting
    };
    if !obs.wipe_out {
        take(from, Event::Release, Step::Release { notice: None })
    } else if !obs.wipeable {
        let notice = Some(warn(reasons::WIPE_OUT_NOT_SUPPORTED));
        take(from, Event::NotSupported, Step::Release { notice })
    } else if obs.abandoned {
        let notice = Some(warn(reasons::WIPE_OUT_ABANDONED));
        take(from, Event::Abandon, Step::Release { notice })
    } else {
        RepositoryDecision {
            phase: from,
            step: Step::Wipe,
            rejection: None,
        }
    }
}

/// Where a wipe-out attempt made from `from` (what [`decide`] returned with [`Step::Wipe`])
/// leads.
pub fn after_wipe(from: Phase, outcome: WipeOutcome) -> RepositoryDecision {
    match outcome {
        WipeOutcome::Wiped => {
            let notice = Some(Notice {
                warning: false,
                reason: reasons::WIPED_OUT,
            });
            take(from, Event::Wiped, Step::Release { notice })
        }
        WipeOutcome::SecretGoneWithNamespace => {
            let notice = Some(warn(reasons::WIPE_OUT_ABANDONED));
            take(from, Event::Abandon, Step::Release { notice })
        }
        WipeOutcome::Failed if from == Phase::Failing => RepositoryDecision {
            phase: Phase::Failing,
            step: Step::Retry {
                notice: warn(reasons::WIPE_OUT_FAILED),
            },
            rejection: None,
        },
        WipeOutcome::Failed => take(
            from,
            Event::Fail,
            Step::Retry {
                notice: warn(reasons::WIPE_OUT_FAILED),
            },
        ),
    }
}

/// Whether a failed attempt writes the `WipeOut` condition now: always for the first failure,
/// then at most every [`CONDITION_REFRESH`] (`since_last_write`: how long ago this process
/// wrote it, `None` when it has not).
pub fn condition_due(already_failing: bool, since_last_write: Option<Duration>) -> bool {
    !already_failing || since_last_write.is_none_or(|d| d >= CONDITION_REFRESH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(deleting: bool, wipe_out: bool, wipeable: bool, abandoned: bool) -> Observation {
        Observation {
            deleting,
            wipe_out,
            wipeable,
            abandoned,
            failing: false,
        }
    }

    #[test]
    fn a_live_repository_keeps_its_finalizer() {
        for w in [false, true] {
            let d = decide(&obs(false, w, w, w));
            assert_eq!((d.phase, d.step), (Phase::Live, Step::Keep));
        }
    }

    #[test]
    fn a_deletion_without_wipe_out_keeps_the_data_quietly() {
        let d = decide(&obs(true, false, true, false));
        assert_eq!(
            (d.phase, d.step),
            (Phase::Kept, Step::Release { notice: None })
        );
    }

    #[test]
    fn unsupported_and_abandoned_wipe_outs_are_announced() {
        let d = decide(&obs(true, true, false, false));
        assert_eq!(d.phase, Phase::Unsupported);
        assert_eq!(
            d.step,
            Step::Release {
                notice: Some(warn(reasons::WIPE_OUT_NOT_SUPPORTED))
            }
        );
        let d = decide(&obs(true, true, true, true));
        assert_eq!(d.phase, Phase::Abandoned);
        assert_eq!(
            d.step,
            Step::Release {
                notice: Some(warn(reasons::WIPE_OUT_ABANDONED))
            }
        );
    }

    #[test]
    fn a_wipe_out_is_retried_until_it_succeeds_or_is_given_up() {
        let d = decide(&obs(true, true, true, false));
        assert_eq!((d.phase, d.step), (Phase::Deleting, Step::Wipe));
        let failed = after_wipe(d.phase, WipeOutcome::Failed);
        assert_eq!(failed.phase, Phase::Failing);
        assert!(matches!(failed.step, Step::Retry { .. }));
        // The next reconcile sees the condition: it starts from Failing and tries again.
        let again = decide(&Observation {
            failing: true,
            ..obs(true, true, true, false)
        });
        assert_eq!((again.phase, again.step), (Phase::Failing, Step::Wipe));
        assert_eq!(
            after_wipe(Phase::Failing, WipeOutcome::Failed).phase,
            Phase::Failing
        );
        let wiped = after_wipe(Phase::Failing, WipeOutcome::Wiped);
        assert_eq!(wiped.phase, Phase::WipedOut);
        assert!(matches!(wiped.step, Step::Release { notice: Some(n) } if !n.warning));
        let gone = after_wipe(Phase::Deleting, WipeOutcome::SecretGoneWithNamespace);
        assert_eq!(gone.phase, Phase::Abandoned);
    }

    #[test]
    fn the_condition_is_refreshed_at_most_every_minute() {
        assert!(condition_due(false, Some(Duration::from_secs(1))));
        assert!(condition_due(true, None));
        assert!(!condition_due(true, Some(Duration::from_secs(59))));
        assert!(condition_due(true, Some(CONDITION_REFRESH)));
    }

    #[test]
    fn a_terminal_phase_takes_no_step_of_the_table() {
        for p in [
            Phase::WipedOut,
            Phase::Abandoned,
            Phase::Unsupported,
            Phase::Kept,
        ] {
            let d = after_wipe(p, WipeOutcome::Wiped);
            assert!(d.rejection.is_some(), "{p:?}");
            assert_eq!(d.step, Step::Keep);
        }
    }
}
