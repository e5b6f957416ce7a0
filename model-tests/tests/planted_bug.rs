//! A deliberately broken BackupSession lifecycle (test-only): its guard is inverted, so a
//! session whose host failed is reported `Succeeded`. The checker must catch it and shrink the
//! failure to a minimal sequence.

use proptest_state_machine::ReferenceStateMachine;
use stash_machines::backup_session::BackupLifecycle;
use stash_macros::lifecycle;
use stash_model_tests::backup::{self, Action, BackupModel};
use stash_model_tests::check_sequences;
use std::time::Instant;

mod broken {
    use super::*;

    /// BackupSession with the `Complete` outcomes swapped.
    #[lifecycle(
        name = "BrokenBackupSession",
        events(Start, Skip, Fail, Timeout, Complete)
    )]
    pub enum Phase {
        #[initial]
        #[on(Start => Running, Skip => Skipped, Fail => Failed)]
        Pending,
        #[on(Complete => Failed if all_hosts_succeeded, Complete => Succeeded, Fail => Failed, Timeout => Failed)]
        Running,
        #[terminal]
        Succeeded,
        #[terminal]
        Failed,
        #[terminal]
        Skipped,
        #[terminal]
        #[declared_only]
        Unknown,
    }

    impl BackupLifecycle for Phase {
        const RUNNING: Self = Phase::Running;
        const SUCCEEDED: Self = Phase::Succeeded;
        const FAILED: Self = Phase::Failed;
        const SKIPPED: Self = Phase::Skipped;
        const START: Event = Event::Start;
        const SKIP: Event = Event::Skip;
        const FAIL: Event = Event::Fail;
        const TIMEOUT: Event = Event::Timeout;
        const COMPLETE: Event = Event::Complete;
        const ALL_HOSTS_SUCCEEDED: Guard = Guard::AllHostsSucceeded;
    }
}

#[test]
fn the_checker_catches_a_planted_bug_and_shrinks_it_to_a_minimal_counterexample() {
    let start = Instant::now();
    let result = check_sequences(
        BackupModel::sequential_strategy(1..40),
        10_000,
        backup::run::<broken::Phase>,
    );
    let c = result.expect_err("the planted bug must be caught");
    stash_model_tests::report(&format!(
        "[model] planted bug caught and shrunk in {:.2?}: {}\n  init: {:?}\n  actions: {:?}",
        start.elapsed(),
        c.reason,
        c.init.config,
        c.actions
    ));
    // Minimal: no single action can be dropped, and the sequence is tiny (the smallest possible
    // is: start the session, one host reports, reconcile again).
    assert!(c.actions.len() <= 4, "not minimal: {:?}", c.actions);
    for k in 0..c.actions.len() {
        let mut fewer = c.actions.clone();
        fewer.remove(k);
        assert!(
            backup::run::<broken::Phase>(&c.init, &fewer, None).is_ok(),
            "action {k} is not needed"
        );
    }
    assert!(
        c.actions.iter().any(|a| matches!(a, Action::Report { .. })),
        "{:?}",
        c.actions
    );
}
