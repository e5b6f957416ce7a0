//! The operator's BackupSession machine composed with one host machine per host, a repository
//! model, agent crashes, operator restarts and stale reads ([`stash_model_tests::composed`]),
//! explored exhaustively; and a planted bug in the host machine, caught with the shortest
//! sequence that shows it.

use stash_machines::backup_host::{HostObservation, HostStep, decide};
use stash_model_tests::composed::{self, Action, Coverage};
use std::time::Instant;

#[test]
fn the_composed_world_keeps_every_invariant() {
    let start = Instant::now();
    let cov = composed::explore(composed::shipped)
        .unwrap_or_else(|(e, path)| panic!("violation: {e}\nshortest path: {path:#?}"));
    stash_model_tests::report(&format!(
        "[model] composed (operator + {} host machines, {} sessions, crashes, stale reads, pause, deadline): \
         {} states, {} transitions, depth {}, in {:.2?}",
        composed::HOSTS,
        composed::SESSIONS,
        cov.states,
        cov.transitions,
        cov.depth,
        start.elapsed()
    ));
    // The exact figures: a change to either machine or to the world shows here.
    assert_eq!(
        cov,
        Coverage {
            states: 2120,
            transitions: 13738,
            depth: 15
        }
    );
}

/// A host machine that forgets the session's tag: after a crash between snapshot and report it
/// backs up again.
fn forgets_the_tag(o: &HostObservation) -> HostStep {
    match decide(o) {
        HostStep::Report { snapshots } => HostStep::BackUp {
            back_up: snapshots.into_keys().collect(),
            reuse: Default::default(),
        },
        HostStep::BackUp { back_up, reuse } => HostStep::BackUp {
            back_up: back_up.into_iter().chain(reuse.into_keys()).collect(),
            reuse: Default::default(),
        },
        other => other,
    }
}

#[test]
fn a_host_machine_that_ignores_its_own_snapshot_is_caught() {
    let (err, path) = composed::explore(forgets_the_tag).expect_err("the planted bug is caught");
    stash_model_tests::report(&format!(
        "[model] planted host bug caught: {err}; shortest sequence: {} actions {path:?}",
        path.len()
    ));
    assert!(err.contains("2 snapshots of host-"), "{err}");
    // Start the session, back up, crash before the report, back up again.
    assert_eq!(
        path,
        [
            Action::Reconcile(0),
            Action::AgentStep(0, 0),
            Action::AgentCrash(0),
            Action::AgentStep(0, 0),
        ]
    );
}
