//! The operator's BackupSession machine composed with one host machine per host, a repository
//! model, agent crashes, operator restarts and stale reads ([`stash_model_tests::composed`]),
//! explored exhaustively; and a planted bug in the host machine, caught with the shortest
//! sequence that shows it.

use stash_machines::backup_host::{HostDecision, HostObservation, decide};
use stash_model_tests::composed::{self, Action, Coverage};
use std::collections::BTreeMap;
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
            states: 3592,
            transitions: 25522,
            depth: 20
        }
    );
}

/// A host machine that forgets the session's tag: it sees none of its own snapshots, so after a
/// crash between snapshot and report it backs up again.
fn forgets_the_tag(o: &HostObservation) -> HostDecision {
    decide(&HostObservation {
        tagged: o.tagged.as_ref().map(|_| BTreeMap::new()),
        ..o.clone()
    })
}

#[test]
fn a_host_machine_that_ignores_its_own_snapshot_is_caught() {
    let (err, path) = composed::explore(forgets_the_tag).expect_err("the planted bug is caught");
    stash_model_tests::report(&format!(
        "[model] planted host bug caught: {err}; shortest sequence: {} actions {path:?}",
        path.len()
    ));
    assert!(err.contains("2 snapshots of host-"), "{err}");
    // Start the session; the host starts, backs up, crashes before the report, starts again and
    // backs up again.
    assert_eq!(
        path,
        [
            Action::Reconcile(0),
            Action::AgentStep(0, 0),
            Action::AgentStep(0, 0),
            Action::AgentCrash(0),
            Action::AgentStep(0, 0),
            Action::AgentStep(0, 0),
        ]
    );
}
