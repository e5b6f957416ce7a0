//! BackupSession: the generated machine and its hand-written twin against the reference model,
//! on random sequences (proptest-state-machine) and exhaustively up to a bound.

use proptest_state_machine::ReferenceStateMachine;
use stash_machines::backup_session::{self, BackupLifecycle};
use stash_model_tests::backup::{self, BackupModel, bounded};
use stash_model_tests::{cases, check_sequences, explore::explore};
use std::time::Instant;

fn random_sequences<L: BackupLifecycle>(label: &str) {
    let start = Instant::now();
    let result = check_sequences(
        BackupModel::sequential_strategy(1..40),
        cases(),
        |init, actions, seen| backup::run::<L>(init, actions, seen),
    );
    match result {
        Ok((cases, steps)) => stash_model_tests::report(&format!(
            "[model] BackupSession ({label}): {cases} random cases, {steps} steps checked against the reference in {:.2?}",
            start.elapsed()
        )),
        Err(c) => panic!(
            "counterexample: {}\ninit: {:?}\nactions: {:#?}",
            c.reason, c.init, c.actions
        ),
    }
}

fn exhaustive<L: BackupLifecycle>(label: &str) {
    let start = Instant::now();
    let coverage = explore(
        bounded::inits::<L>(),
        bounded::actions,
        bounded::step,
        backup::drain,
    )
    .unwrap();
    stash_model_tests::report(&format!(
        "[model] BackupSession ({label}) exhaustive (<=2 sessions, <=2 hosts, 37 configurations, clock 0|deadline): \
         {} states, {} transitions, depth {}, in {:.2?}",
        coverage.states,
        coverage.transitions,
        coverage.depth,
        start.elapsed()
    ));
    // The exact figures: a change to the machine or to the bound shows here.
    assert_eq!(
        (coverage.states, coverage.transitions, coverage.depth),
        (109_500, 759_564, 13),
        "the bound explores the state space it did"
    );
}

#[test]
fn generated_backup_machine_agrees_with_the_reference_on_random_sequences() {
    random_sequences::<backup_session::Phase>("generated");
}

#[test]
fn hand_written_twin_agrees_with_the_reference_on_random_sequences() {
    random_sequences::<backup_session::twin::Phase>("twin");
}

#[test]
fn generated_backup_machine_keeps_every_invariant_in_the_bounded_state_space() {
    exhaustive::<backup_session::Phase>("generated");
}

#[test]
fn hand_written_twin_keeps_every_invariant_in_the_bounded_state_space() {
    exhaustive::<backup_session::twin::Phase>("twin");
}
