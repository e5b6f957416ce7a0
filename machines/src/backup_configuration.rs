//! A BackupConfiguration's readiness: `status.phase` and its `CronJobCreated` condition,
//! decided from what the last reconcile of the configuration found. A user who cannot read
//! the operator's log reads here why no backup will run (a name held by someone else, a
//! schedule the API server refused).
use serde::{Deserialize, Serialize};

/// `status.phase` of a BackupConfiguration (Stash's later API spells the same three).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Phase {
    /// Its ServiceAccount, RBAC and trigger CronJob (when scheduled) are in place.
    Ready,
    /// Something the user must fix keeps the operator from setting it up (a name clash).
    NotReady,
    /// The API server refused what the configuration asks for (e.g. its schedule).
    Invalid,
}

/// The condition type this lifecycle owns.
pub const CRON_JOB_CREATED: &str = "CronJobCreated";

/// What the last reconcile found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything is in place, with the trigger CronJob.
    Scheduled,
    /// Everything is in place; no schedule, so no CronJob (sessions are created by hand).
    ManualOnly,
    /// A ServiceAccount, Role, RoleBinding or CronJob of the configuration's name exists and
    /// is not stash's: nothing was written.
    NameClash(String),
    /// The API server refused the trigger CronJob for good.
    Refused(String),
}

/// The condition as the machine decides it; the runtime adds the times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionFacts {
    /// Always [`CRON_JOB_CREATED`].
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: bool,
    /// A CamelCase reason.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// The phase and condition for `outcome`.
pub fn readiness(outcome: &Outcome) -> (Phase, ConditionFacts) {
    let facts = |status, reason, message: String| ConditionFacts {
        type_: CRON_JOB_CREATED,
        status,
        reason,
        message,
    };
    match outcome {
        Outcome::Scheduled => (
            Phase::Ready,
            facts(
                true,
                "CronJobCreated",
                "the trigger CronJob creates BackupSessions on the schedule".into(),
            ),
        ),
        Outcome::ManualOnly => (
            Phase::Ready,
            facts(
                true,
                "NoSchedule",
                "no schedule: BackupSessions are created by hand only".into(),
            ),
        ),
        Outcome::NameClash(m) => (
            Phase::NotReady,
            facts(false, crate::reasons::NAME_CLASH, m.clone()),
        ),
        Outcome::Refused(m) => (
            Phase::Invalid,
            facts(
                false,
                crate::reasons::INVALID_BACKUP_CONFIGURATION,
                m.clone(),
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_phase_and_reason() {
        let cases = [
            (Outcome::Scheduled, Phase::Ready, true, "CronJobCreated"),
            (Outcome::ManualOnly, Phase::Ready, true, "NoSchedule"),
            (
                Outcome::NameClash("x".into()),
                Phase::NotReady,
                false,
                "NameClash",
            ),
            (
                Outcome::Refused("y".into()),
                Phase::Invalid,
                false,
                "InvalidBackupConfiguration",
            ),
        ];
        for (o, phase, status, reason) in cases {
            let (p, c) = readiness(&o);
            assert_eq!(
                (p, c.status, c.reason, c.type_),
                (phase, status, reason, CRON_JOB_CREATED),
                "{o:?}"
            );
        }
        assert_eq!(
            readiness(&Outcome::NameClash("held by a user".into()))
                .1
                .message,
            "held by a user"
        );
    }
}
