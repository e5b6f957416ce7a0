//! Exhaustive exploration of a reachable state space (breadth first, every state once).

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

/// What an exploration covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coverage {
    /// Distinct reachable states.
    pub states: usize,
    /// Transitions taken (edges, including ones that lead to an already seen state).
    pub transitions: usize,
    /// Longest shortest path from an initial state.
    pub depth: usize,
}

/// Visits every state reachable from `inits` through `actions`/`step`, calling `check` on each;
/// stops at the first violation, with the path that led to it.
pub fn explore<S, A>(
    inits: Vec<S>,
    actions: impl Fn(&S) -> Vec<A>,
    step: impl Fn(&S, &A) -> Result<S, String>,
    check: impl Fn(&S) -> Result<(), String>,
) -> Result<Coverage, String>
where
    S: Clone + Eq + Hash,
    A: std::fmt::Debug,
{
    let mut seen: HashSet<S> = HashSet::new();
    let mut queue: VecDeque<(S, usize)> = VecDeque::new();
    for s in inits {
        if seen.insert(s.clone()) {
            queue.push_back((s, 0));
        }
    }
    let mut coverage = Coverage {
        states: 0,
        transitions: 0,
        depth: 0,
    };
    while let Some((s, depth)) = queue.pop_front() {
        coverage.states += 1;
        coverage.depth = coverage.depth.max(depth);
        check(&s).map_err(|e| format!("at depth {depth}: {e}"))?;
        for a in actions(&s) {
            coverage.transitions += 1;
            let next = step(&s, &a).map_err(|e| format!("at depth {depth}, {a:?}: {e}"))?;
            if !seen.contains(&next) {
                seen.insert(next.clone());
                queue.push_back((next, depth + 1));
            }
        }
    }
    Ok(coverage)
}
