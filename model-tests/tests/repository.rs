//! The Repository deletion machine ([`stash_machines::repository`]) in a world that deletes,
//! annotates, loses its Secret with its namespace and fails wipe-outs, explored exhaustively:
//! the finalizer goes only in a terminal phase, data is deleted only when a wipe-out was asked
//! of a backend that can be wiped, it is never left behind silently, and a release is always
//! announced unless the user asked to keep the data.

use stash_machines::repository::{
    Observation, Phase, RepositoryDecision, Step, WipeOutcome, after_wipe, decide,
};
use stash_model_tests::explore::{Coverage, explore};

/// The world: the Repository as the API server has it, its data, and what was announced.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    /// `spec.wipeOut` (fixed per world).
    wipe_out: bool,
    /// S3, GCS or Azure (fixed per world).
    wipeable: bool,
    deleting: bool,
    abandoned: bool,
    /// The storage Secret is gone with its namespace.
    secret_gone: bool,
    /// The `WipeOut` condition says an attempt failed.
    failing: bool,
    /// Attempts that may still fail (the environment's budget, so the space is finite).
    failures_left: u8,
    finalizer: bool,
    /// The restic data.
    data: bool,
    /// The phase the last reconcile decided.
    phase: Phase,
    /// Warning or Normal events published, by reason.
    announced: Vec<&'static str>,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    /// The user deletes the Repository.
    Delete,
    /// The user annotates it abandon-wipe-out=true.
    Abandon,
    /// The namespace is deleted and the Secret goes with it.
    LoseSecret,
    /// The controller reconciles; a wipe-out attempt fails (if the world still may).
    ReconcileFailing,
    /// The controller reconciles; a wipe-out attempt succeeds (unless the Secret is gone).
    Reconcile,
}

fn actions(w: &World) -> Vec<Action> {
    if !w.finalizer {
        return vec![Action::Reconcile];
    }
    let mut a = vec![Action::Reconcile];
    if !w.deleting {
        a.push(Action::Delete);
    } else {
        if !w.abandoned {
            a.push(Action::Abandon);
        }
        if !w.secret_gone {
            a.push(Action::LoseSecret);
        }
    }
    if w.failures_left > 0 {
        a.push(Action::ReconcileFailing);
    }
    a
}

/// The machine's answer to a wipe-out attempt (the shipped [`after_wipe`], or a planted bug).
type AfterWipe = fn(Phase, WipeOutcome) -> RepositoryDecision;

fn step(w: &World, a: &Action, after_wipe: AfterWipe) -> Result<World, String> {
    let mut n = w.clone();
    match a {
        Action::Delete => n.deleting = true,
        Action::Abandon => n.abandoned = true,
        Action::LoseSecret => n.secret_gone = true,
        Action::Reconcile | Action::ReconcileFailing => {
            if !w.finalizer {
                // Deleted: nothing reconciles it any more.
                return Ok(n);
            }
            let d = decide(&Observation {
                deleting: w.deleting,
                wipe_out: w.wipe_out,
                wipeable: w.wipeable,
                abandoned: w.abandoned,
                failing: w.failing,
            });
            if let Some(r) = d.rejection {
                return Err(format!("decide rejected: {r:?}"));
            }
            let d = if d.step == Step::Wipe {
                let outcome = if w.secret_gone {
                    WipeOutcome::SecretGoneWithNamespace
                } else if matches!(a, Action::ReconcileFailing) {
                    n.failures_left -= 1;
                    WipeOutcome::Failed
                } else {
                    n.data = false;
                    WipeOutcome::Wiped
                };
                let after = after_wipe(d.phase, outcome);
                if let Some(r) = after.rejection {
                    return Err(format!("after_wipe rejected: {r:?}"));
                }
                after
            } else {
                d
            };
            n.phase = d.phase;
            match d.step {
                Step::Keep => n.finalizer = true,
                Step::Wipe => return Err("a second Wipe without an outcome".into()),
                Step::Release { notice } => {
                    if let Some(x) = notice {
                        n.announced.push(x.reason);
                    }
                    n.finalizer = false;
                }
                Step::Retry { notice } => {
                    n.announced.push(notice.reason);
                    n.failing = true;
                }
            }
        }
    }
    // Keep the announcements a set in arrival order (repeats do not make new states).
    let mut seen = Vec::new();
    for r in n.announced.drain(..) {
        if !seen.contains(&r) {
            seen.push(r);
        }
    }
    n.announced = seen;
    Ok(n)
}

fn check(w: &World) -> Result<(), String> {
    let terminal = matches!(
        w.phase,
        Phase::WipedOut | Phase::Abandoned | Phase::Unsupported | Phase::Kept
    );
    if !w.finalizer && !terminal {
        return Err(format!("finalizer removed in {:?}", w.phase));
    }
    let wipe_asked = w.wipe_out && w.wipeable && w.deleting;
    if !w.data && !wipe_asked {
        return Err("data deleted without a wipe-out asked of a wipeable backend".into());
    }
    if !w.data && w.phase != Phase::WipedOut && !w.finalizer {
        return Err(format!(
            "data deleted but the Repository ended {:?}",
            w.phase
        ));
    }
    if !w.finalizer && w.data && w.wipe_out {
        // Left in place although asked to wipe: only with an announcement saying so.
        let said = w
            .announced
            .iter()
            .any(|r| *r == "WipeOutAbandoned" || *r == "WipeOutNotSupported");
        if !said {
            return Err(format!("wipe-out silently skipped ({:?})", w.phase));
        }
        if w.wipeable && !w.abandoned && !w.secret_gone {
            return Err("a wipeable Repository was released with its data, unasked".into());
        }
    }
    if !w.finalizer && !w.wipe_out && !w.announced.is_empty() {
        return Err(format!("a plain deletion announced {:?}", w.announced));
    }
    if w.phase == Phase::WipedOut && w.data {
        return Err("WipedOut with the data still there".into());
    }
    Ok(())
}

fn world(wipe_out: bool, wipeable: bool) -> World {
    World {
        wipe_out,
        wipeable,
        deleting: false,
        abandoned: false,
        secret_gone: false,
        failing: false,
        failures_left: 2,
        finalizer: true,
        data: true,
        phase: Phase::Live,
        announced: Vec::new(),
    }
}

#[test]
fn the_repository_deletion_keeps_every_invariant() {
    let inits = vec![
        world(false, false),
        world(false, true),
        world(true, false),
        world(true, true),
    ];
    let cov = explore(inits, actions, |w, a| step(w, a, after_wipe), check)
        .unwrap_or_else(|e| panic!("violation: {e}"));
    stash_model_tests::report(&format!(
        "[model] repository deletion (wipeOut × backend, abandon, Secret lost with the namespace, 2 failed attempts): \
         {} states, {} transitions, depth {}",
        cov.states, cov.transitions, cov.depth
    ));
    // The exact figures: a change to the machine or to the world shows here.
    assert_eq!(
        cov,
        Coverage {
            states: 52,
            transitions: 104,
            depth: 6
        }
    );
}

/// A machine that gives up on a failed attempt (releases the Repository as if wiped): the
/// exploration must catch it.
fn gives_up_on_failure(from: Phase, outcome: WipeOutcome) -> RepositoryDecision {
    match outcome {
        WipeOutcome::Failed => after_wipe(from, WipeOutcome::Wiped),
        o => after_wipe(from, o),
    }
}

#[test]
fn a_machine_that_gives_up_on_a_failed_wipe_out_is_caught() {
    let err = explore(
        vec![world(true, true)],
        actions,
        |w, a| step(w, a, gives_up_on_failure),
        check,
    )
    .expect_err("the planted bug is caught");
    stash_model_tests::report(&format!("[model] planted repository bug caught: {err}"));
    assert_eq!(err, "at depth 2: wipe-out silently skipped (WipedOut)");
}

#[test]
fn every_terminal_phase_is_reached() {
    let mut reached = std::collections::HashSet::new();
    let inits = vec![
        world(false, false),
        world(false, true),
        world(true, false),
        world(true, true),
    ];
    // The same exploration, collecting phases in the check.
    let cell = std::cell::RefCell::new(&mut reached);
    explore(
        inits,
        actions,
        |w, a| step(w, a, after_wipe),
        |w| {
            cell.borrow_mut().insert(w.phase);
            Ok(())
        },
    )
    .expect("explore");
    // `Deleting` is decided and left within one reconcile: never where a world rests.
    for p in [
        Phase::Live,
        Phase::Failing,
        Phase::WipedOut,
        Phase::Abandoned,
        Phase::Unsupported,
        Phase::Kept,
    ] {
        assert!(reached.contains(&p), "{p:?} is never reached");
    }
}
