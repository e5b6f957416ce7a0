//! Proc macros that turn one annotated lifecycle spec into everything the operator needs.
//!
//! Each `#[proc_macro_attribute]` below is one line: `parse → analyze → lower → codegen`
//! ([`parse`], [`analyze`], [`lower`], [`codegen`]); errors come back as `compile_error!`
//! tokens with the span of the culprit, never as a panic.
#![deny(missing_docs)]

use proc_macro::TokenStream;

mod analyze;
mod codegen;
mod lower;
mod parse;

/// Declares a lifecycle: phases, events, (guarded) transitions, the initial and terminal phases.
///
/// ```text
/// #[lifecycle(name = "BackupSession", events(Start, Skip, Fail, Complete))]
/// pub enum Phase {
///     /// Waiting for the operator.
///     #[initial]
///     #[on(Start => Running, Skip => Skipped, Fail => Failed)]
///     Pending,
///     #[on(Complete => Succeeded if all_hosts_succeeded, Complete => Failed, Fail => Failed)]
///     Running,
///     #[terminal] Succeeded,
///     #[terminal] Failed,
///     #[terminal] Skipped,
///     #[terminal] #[declared_only] Unknown,
/// }
/// ```
///
/// # Arguments of `#[lifecycle(..)]`
/// * `name = "..."` (required): the lifecycle's name, used in rejections and diagrams.
/// * `events(A, B, ..)` (required): every event; each must be used by at least one transition.
/// * `crates(machines = path)` (optional): where the support crate lives (default
///   `::stash_machines`); generated code reaches `serde`, `schemars` and `statig` through
///   `<machines>::__private`, so the user crate needs no direct dependency on them.
///
/// # Attributes on a phase (variant)
/// * `#[initial]`: the phase a new object starts in (exactly one).
/// * `#[terminal]`: the phase absorbs every event (no outgoing transition allowed).
/// * `#[declared_only]`: the phase is part of the API (accepted in status) but no transition
///   leads to it; without this marker an unreachable phase is a compile error, and with it a
///   reachable phase is one too.
/// * `#[on(Event => Target, Event => Target if guard, ..)]`: outgoing transitions, tried in
///   order for one event; the first whose guard holds (an unguarded one always holds) wins.
///
/// # Compile errors (each spanned on the culprit)
/// Unknown phase or event, unused event, duplicate or shadowed transition, terminal phase with an
/// outgoing edge, non-terminal phase with no way out, unreachable phase, a transition that goes
/// back (cycles are forbidden: phases only move forward), missing or repeated `#[initial]`.
///
/// # What is generated, next to the enum
/// * the enum itself with `Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize,
///   JsonSchema` (serialized as the variant names, the schema a string enum of them), and
///   `Default` (the initial phase);
/// * inherent consts/fns: `ALL`, `INITIAL`, `as_str`, `from_name`, `is_terminal`, `is_initial`,
///   `is_declared_only`, `rank`, `transition(event, guard) -> Result<Self, Rejection<Self>>`;
/// * `enum Event`, `enum Guard` (one variant per guard, `snake_case` → `CamelCase`);
/// * `TRANSITIONS` (the table as data), `MERMAID` and `DOT` (diagrams), `LIFECYCLE` (name);
/// * `impl Lifecycle` (the support crate's trait) so generic checkers can run on it;
/// * `StatigMachine`, a [statig](https://docs.rs/statig) machine whose states are the phases.
#[proc_macro_attribute]
pub fn lifecycle(args: TokenStream, item: TokenStream) -> TokenStream {
    parse::lifecycle(args.into(), item.into())
        .and_then(analyze::analyze)
        .map(lower::lower)
        .map(codegen::lifecycle)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// A status phase enum without a lifecycle (such as the per-host phases).
///
/// Generates the same derives and serde/schema names as [`macro@lifecycle`], plus `ALL`,
/// `as_str`, `from_name` and `Display`. Takes optional `crates(machines = path)`.
#[proc_macro_attribute]
pub fn phase_enum(args: TokenStream, item: TokenStream) -> TokenStream {
    parse::phase_enum(args.into(), item.into())
        .map(codegen::phase_enum)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
