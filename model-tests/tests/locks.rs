//! Agents dying with restic locks, composed with the lock decisions (stash_machines::locks and
//! the operator's janitor), explored exhaustively; and two planted janitor bugs, caught.

use stash_machines::locks::{Kept, Verdict};
use stash_model_tests::explore::Coverage;
use stash_model_tests::locks::{self, Lock, World};
use std::time::Instant;

#[test]
fn no_agent_gives_up_because_of_a_dead_holder_s_lock_and_no_live_lock_is_removed() {
    let start = Instant::now();
    let cov = locks::explore(locks::shipped).unwrap_or_else(|e| panic!("violation: {e}"));
    stash_model_tests::report(&format!(
        "[model] locks ({} agents, lock files, container kills and pod deletions at every step, the janitor): \
         {} states, {} transitions, depth {}, in {:.2?}",
        locks::AGENTS,
        cov.states,
        cov.transitions,
        cov.depth,
        start.elapsed()
    ));
    // The exact figures: a change to the decisions or to the world shows here.
    assert_eq!(
        cov,
        Coverage {
            states: 7133,
            transitions: 21360,
            depth: 12
        }
    );
}

/// A janitor that keeps every lock (the operator before issue 25): an agent gives up because
/// of a lock whose pod is gone.
fn keeps_everything(_: &World, _: &Lock) -> Verdict {
    Verdict::Keep(Kept::HolderRunning)
}

/// A janitor that does not ask whether the holder's pod exists.
fn removes_everything(_: &World, _: &Lock) -> Verdict {
    Verdict::Remove
}

#[test]
fn planted_janitor_bugs_are_caught() {
    let e = locks::explore(keeps_everything).expect_err("a janitor that keeps every lock");
    stash_model_tests::report(&format!("[model] planted janitor bug caught: {e}"));
    assert!(e.contains("whose holder is dead"), "{e}");
    let e = locks::explore(removes_everything).expect_err("a janitor that removes every lock");
    stash_model_tests::report(&format!("[model] planted janitor bug caught: {e}"));
    assert!(e.contains("live lock"), "{e}");
}
