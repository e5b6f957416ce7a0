//! RestoreSession: the generated machine against the reference model, on random sequences and
//! exhaustively up to a bound.

use proptest_state_machine::ReferenceStateMachine;
use stash_model_tests::restore::{self, RestoreModel, bounded};
use stash_model_tests::{cases, check_sequences, explore::explore};
use std::time::Instant;

#[test]
fn generated_restore_machine_agrees_with_the_reference_on_random_sequences() {
    let start = Instant::now();
    match check_sequences(
        RestoreModel::sequential_strategy(1..30),
        cases(),
        restore::run,
    ) {
        Ok((cases, steps)) => stash_model_tests::report(&format!(
            "[model] RestoreSession (generated): {cases} random cases, {steps} steps checked against the reference in {:.2?}",
            start.elapsed()
        )),
        Err(c) => panic!(
            "counterexample: {}\ninit: {:?}\nactions: {:#?}",
            c.reason, c.init, c.actions
        ),
    }
}

#[test]
fn generated_restore_machine_keeps_every_invariant_in_the_bounded_state_space() {
    let start = Instant::now();
    let coverage = explore(
        bounded::inits(),
        bounded::actions,
        bounded::step,
        restore::drain,
    )
    .unwrap();
    stash_model_tests::report(&format!(
        "[model] RestoreSession (generated) exhaustive (<=2 hosts, 5 rule sets, 3 models, clock 0|deadline): \
         {} states, {} transitions, depth {}, in {:.2?}",
        coverage.states,
        coverage.transitions,
        coverage.depth,
        start.elapsed()
    ));
    // The exact figures: a change to the machine or to the bound shows here.
    assert_eq!(
        (coverage.states, coverage.transitions, coverage.depth),
        (3_481, 11_879, 6)
    );
}
