//! What both session machines return: the effects to perform, as values.

use std::time::Duration;

/// Kubernetes event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `Normal`.
    Normal,
    /// `Warning`.
    Warning,
}

/// A Kubernetes Event to emit on the session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventRecord {
    /// `Normal` or `Warning`.
    pub kind: EventKind,
    /// The reason (one of the constants in [`crate::reasons`]).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

/// The status to write (through the status subresource), as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StatusPatch<P> {
    /// `status.phase`.
    pub phase: P,
    /// `status.totalHosts` (set when the session starts running; kept afterwards).
    pub total_hosts: Option<u32>,
    /// `status.sessionDuration`: the sum of the host durations, set on success.
    pub session_duration: Option<Duration>,
    /// Why the session ended as it did, for every outcome other than success.
    pub reason: Option<String>,
}

/// One effect for the runtime to perform, in the order given. `A` is the lifecycle's own
/// actions (each lifecycle has its `Effect` alias over its `Action` enum, so a BackupSession
/// decision cannot ask for a restore Job); the rest is common to every session lifecycle.
///
/// Actions come before the status write, so a crash between the two is repaired by the next
/// reconcile (which decides the same again; every action must be idempotent).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Effect<P, A> {
    /// Perform this lifecycle-specific action. An action the API refuses for good is observed
    /// and decided again (see [`Performed`]).
    Act(A),
    /// Write this status.
    WriteStatus(StatusPatch<P>),
    /// Emit this Event.
    Emit(EventRecord),
    /// Reconcile again after this long even if nothing changes (deadlines, waiting).
    RequeueAfter(Duration),
}

/// The one host-outcome rule of every session entry, backup or restore, written by an agent
/// or a Job (stash-rs decision 1): an entry that carries an error is failed whatever its phase
/// says, and so is one whose phase is `Failed`.
pub fn entry_failed(phase_failed: bool, error: Option<&str>) -> bool {
    phase_failed || error.is_some_and(|e| !e.is_empty())
}

/// How an action went, as the runtime reports it back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Performed {
    /// Done (or already done).
    Done,
    /// Refused for good, in the API's (or the resolver's) words: retrying cannot succeed.
    Refused(String),
}

/// The decision of one step: the phase after it and the effects to perform.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decision<P: crate::lifecycle::Lifecycle, A> {
    /// The phase after this step (the recorded one when nothing changes).
    pub phase: P,
    /// What to do, in order.
    pub effects: Vec<Effect<P, A>>,
    /// Set when the lifecycle refused the event the machine chose (a bug in a lifecycle spec;
    /// never set for the shipped lifecycles, which the model tests check).
    pub rejection: Option<crate::lifecycle::Rejection<P>>,
}

impl<P: crate::lifecycle::Lifecycle, A> Decision<P, A> {
    /// A decision that changes nothing: stay in `phase`, look again after `requeue`.
    pub fn quiet(phase: P, requeue: Duration) -> Self {
        Decision {
            phase,
            effects: vec![Effect::RequeueAfter(requeue)],
            rejection: None,
        }
    }

    /// The status write, if any.
    pub fn status(&self) -> Option<&StatusPatch<P>> {
        self.effects.iter().find_map(|e| match e {
            Effect::WriteStatus(s) => Some(s),
            _ => None,
        })
    }

    /// The lifecycle-specific actions, in order.
    pub fn actions(&self) -> impl Iterator<Item = &A> {
        self.effects.iter().filter_map(|e| match e {
            Effect::Act(a) => Some(a),
            _ => None,
        })
    }

    /// Whether the decision changes nothing in the world (a requeue at most): what a replayed
    /// observation must yield.
    pub fn is_quiet(&self) -> bool {
        self.effects
            .iter()
            .all(|e| matches!(e, Effect::RequeueAfter(_)))
    }
}

/// The job of a job-model session, as observed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Running or waiting to run.
    Active,
    /// Completed successfully.
    Succeeded,
    /// Failed for good (backoff limit reached).
    Failed {
        /// The Job's failure message.
        message: String,
    },
    /// The Job cannot be created: the API refused it for good ([`api_error_is_permanent`]) or
    /// its inputs cannot be resolved (a missing Task, Function or variable).
    Rejected {
        /// Why, in the API's (or the resolver's) words.
        message: String,
    },
}

/// Whether an API error with this HTTP status is permanent: retrying the same request cannot
/// succeed (invalid object, a name over the limit, forbidden, too large). Conflicts, throttling,
/// server errors and timeouts are transient and retried with back-off.
pub fn api_error_is_permanent(code: u16) -> bool {
    matches!(code, 400 | 403 | 405 | 413 | 415 | 422)
}

/// Operator-level settings of the machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    /// How long a session may take, from its creation, before it ends (`Failed`, or `Skipped`
    /// if it never started).
    pub deadline: Duration,
    /// How often to look again while waiting.
    pub poll: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            deadline: Duration::from_secs(6 * 3600),
            poll: Duration::from_secs(60),
        }
    }
}

impl Policy {
    /// This policy for a session whose configuration (or RestoreSession) says `timeOut`: the
    /// deadline is `time_out` instead of the operator's; absent or zero, the operator's.
    pub fn with_time_out(self, time_out: Option<Duration>) -> Self {
        match time_out {
            Some(t) if !t.is_zero() => Policy {
                deadline: t,
                ..self
            },
            _ => self,
        }
    }

    /// The requeue for a session that is still waiting: the next poll or the deadline, whichever
    /// comes first (never zero).
    pub(crate) fn requeue(&self, created_at: u64, now: u64) -> Duration {
        let deadline = created_at.saturating_add(self.deadline.as_secs());
        let left = Duration::from_secs(deadline.saturating_sub(now).max(1));
        left.min(self.poll)
    }

    /// Whether the deadline has passed.
    pub(crate) fn expired(&self, created_at: u64, now: u64) -> bool {
        now >= created_at.saturating_add(self.deadline.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::entry_failed;

    #[test]
    fn a_time_out_replaces_the_operators_deadline() {
        use super::Policy;
        use std::time::Duration;
        let operator = Policy::default();
        let short = operator.with_time_out(Some(Duration::from_secs(90)));
        assert_eq!(short.deadline, Duration::from_secs(90));
        assert_eq!(short.poll, operator.poll);
        assert!(!short.expired(1000, 1089));
        assert!(short.expired(1000, 1090));
        assert_eq!(short.requeue(1000, 1080), Duration::from_secs(10));
        assert_eq!(operator.with_time_out(None), operator);
        assert_eq!(operator.with_time_out(Some(Duration::ZERO)), operator);
    }

    #[test]
    fn an_entry_with_an_error_is_failed_whatever_its_phase_says() {
        assert!(entry_failed(false, Some("restic: exit 1")));
        assert!(entry_failed(true, None));
        assert!(entry_failed(true, Some("")));
        assert!(!entry_failed(false, Some("")));
        assert!(!entry_failed(false, None));
    }
}
