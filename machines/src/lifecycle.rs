//! The support types every `#[lifecycle]` expansion (and the hand-written twin) builds on.
//!
//! [`Lifecycle`] is implemented by a phase type; it exposes the transition function, the table
//! as data and the diagrams, so checkers can be written once for every lifecycle.

use std::fmt::{self, Debug, Display};
use std::hash::Hash;

/// A lifecycle, implemented by its phase type.
pub trait Lifecycle: Copy + Eq + Hash + Debug + Send + Sync + 'static {
    /// What can happen to an object.
    type Event: Copy + Eq + Hash + Debug + Send + Sync + 'static;
    /// Questions the caller answers when a guarded transition is tried.
    type Guard: Copy + Eq + Hash + Debug + Send + Sync + 'static;
    /// The lifecycle's name (the kind).
    const NAME: &'static str;
    /// The phase a new object starts in.
    const INITIAL: Self;
    /// Every phase, in declaration order.
    const PHASES: &'static [Self];
    /// Every event, in declaration order.
    const EVENTS: &'static [Self::Event];
    /// Every guard, in order of first use.
    const GUARDS: &'static [Self::Guard];
    /// The transition relation as data, in declaration order.
    const TRANSITIONS: &'static [Transition<Self>];
    /// The diagram as Mermaid.
    const MERMAID: &'static str;
    /// The diagram as Graphviz DOT.
    const DOT: &'static str;
    /// The phase's name, as serialized.
    fn name(self) -> &'static str;
    /// The event's name.
    fn event_name(event: Self::Event) -> &'static str;
    /// The guard's name.
    fn guard_name(guard: Self::Guard) -> &'static str;
    /// Whether the phase absorbs every event.
    fn is_terminal(self) -> bool;
    /// Whether the phase is in the API but never set.
    fn is_declared_only(self) -> bool;
    /// Longest path from the initial phase; every transition strictly increases it.
    fn rank(self) -> u8;
    /// The transition function.
    fn transition(
        self,
        event: Self::Event,
        guard: &dyn Fn(Self::Guard) -> bool,
    ) -> Result<Self, Rejection<Self>>;
}

/// One row of a transition table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transition<L: Lifecycle> {
    /// Source phase.
    pub from: L,
    /// The event.
    pub event: L::Event,
    /// The guard that must hold, if any.
    pub guard: Option<L::Guard>,
    /// Target phase.
    pub to: L,
}

/// Why an event was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// The phase is terminal: it absorbs every event.
    Terminal,
    /// The phase has no transition on this event.
    NoTransition,
    /// The phase has transitions on this event, but none of their guards held.
    GuardsFailed,
}

/// A typed rejection: the phase and the event that did not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rejection<L: Lifecycle> {
    /// The phase the object was in.
    pub phase: L,
    /// The event that was rejected.
    pub event: L::Event,
    /// Why.
    pub kind: RejectionKind,
}

impl<L: Lifecycle> Display for Rejection<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.kind {
            RejectionKind::Terminal => "the phase is terminal",
            RejectionKind::NoTransition => "no transition on this event",
            RejectionKind::GuardsFailed => "no guard held",
        };
        write!(
            f,
            "{}: event `{}` rejected in phase `{}`: {why}",
            L::NAME,
            L::event_name(self.event),
            self.phase.name()
        )
    }
}

impl<L: Lifecycle> std::error::Error for Rejection<L> {}

/// Interprets [`Lifecycle::TRANSITIONS`] directly: the reference the generated `match` must
/// agree with.
pub fn transition_by_table<L: Lifecycle>(
    phase: L,
    event: L::Event,
    guard: &dyn Fn(L::Guard) -> bool,
) -> Result<L, Rejection<L>> {
    let mut candidates = L::TRANSITIONS
        .iter()
        .filter(|t| t.from == phase && t.event == event)
        .peekable();
    let kind = if phase.is_terminal() {
        RejectionKind::Terminal
    } else if candidates.peek().is_none() {
        RejectionKind::NoTransition
    } else {
        RejectionKind::GuardsFailed
    };
    candidates
        .find(|t| t.guard.is_none_or(guard))
        .map(|t| t.to)
        .ok_or(Rejection { phase, event, kind })
}
