//! Model tests of the lifecycles.
//!
//! * [`backup`] and [`restore`]: a world (sessions, hosts, Jobs, clock, configuration), the
//!   actions of its environment, a reference model of the expected phases written independently
//!   of the machines, and [`backup::run`]/[`restore::run`], which replay one action sequence
//!   against the reference and a machine and check the invariants after every step.
//! * proptest-state-machine generates and shrinks the sequences (`tests/proptest_*.rs`);
//!   [`explore`] walks the reachable state space exhaustively up to a bound.
//!
//! `STASH_MODEL_CASES` sets the proptest cases per machine (default 10,000); runs use a fixed
//! seed unless `STASH_MODEL_RANDOM=1`.
#![deny(missing_docs)]

pub mod backup;
pub mod composed;
pub mod explore;
pub mod locks;
pub mod restore;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use std::fmt::Debug;

/// Prints a count line so it shows in a plain `cargo test` too: it is written to the stderr
/// handle directly, which the test harness does not capture.
pub fn report(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Cases per machine: `STASH_MODEL_CASES` or 10,000.
pub fn cases() -> u32 {
    std::env::var("STASH_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// A failing case after shrinking.
#[derive(Debug)]
pub struct Counterexample<S, T> {
    /// The initial state.
    pub init: S,
    /// The (shrunk) actions.
    pub actions: Vec<T>,
    /// What broke.
    pub reason: String,
}

/// Runs `cases` random sequences of `strategy` through `check`; returns the number of cases run
/// and actions applied, or the shrunk counterexample.
pub fn check_sequences<S, T, St>(
    strategy: St,
    cases: u32,
    check: impl Fn(&S, &[T], Option<&std::sync::atomic::AtomicUsize>) -> Result<usize, String>,
) -> Result<(u32, usize), Box<Counterexample<S, T>>>
where
    S: Clone + Debug,
    T: Clone + Debug,
    St: Strategy<
        Value = (
            S,
            Vec<T>,
            Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
        ),
    >,
{
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    // Reproducible by default (the same sequences on every run and machine);
    // `STASH_MODEL_RANDOM=1` draws a fresh seed.
    let mut runner = if std::env::var_os("STASH_MODEL_RANDOM").is_some_and(|v| v == "1") {
        TestRunner::new(config)
    } else {
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
    };
    let steps = std::cell::Cell::new(0usize);
    let result = runner.run(&strategy, |(init, actions, seen)| {
        let n = check(&init, &actions, seen.as_deref())
            .map_err(proptest::test_runner::TestCaseError::fail)?;
        steps.set(steps.get() + n);
        Ok(())
    });
    match result {
        Ok(()) => Ok((cases, steps.get())),
        Err(TestError::Fail(reason, (init, mut actions, _))) => {
            // proptest shrinks by deleting and simplifying transitions but may keep a step that
            // has no effect; finish with a greedy pass so the result is 1-minimal (removing any
            // single remaining action makes the failure disappear).
            let mut reason = reason.message().to_string();
            let mut k = 0;
            while k < actions.len() {
                let mut fewer = actions.clone();
                fewer.remove(k);
                match check(&init, &fewer, None) {
                    Err(r) => {
                        actions = fewer;
                        reason = r;
                        k = 0;
                    }
                    Ok(_) => k += 1,
                }
            }
            Err(Box::new(Counterexample {
                init,
                actions,
                reason,
            }))
        }
        Err(TestError::Abort(reason)) => panic!("proptest aborted: {reason}"),
    }
}
