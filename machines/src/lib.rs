//! The BackupSession and RestoreSession lifecycles as pure state machines.
//!
//! Each lifecycle is declared once with `#[lifecycle]` (see [`backup_session::Phase`] and
//! [`restore_session::Phase`]); the macro generates the phase type the CRDs use, the transition
//! function and table, a statig machine and the diagrams (committed under `docs/lifecycles/`).
//!
//! The steppers [`backup_session::decide`] and [`restore_session::decide`] take what the
//! controller observes and return a [`Decision`]: the next phase and the [`Effect`]s to perform,
//! as values. Each lifecycle has its own actions ([`backup_session::Action`],
//! [`restore_session::Action`]); the runtime carries out every lifecycle's decisions with one
//! generic interpreter. They never do I/O: no kube, no tokio, no clock (the clock is an input).
#![deny(missing_docs)]

extern crate self as stash_machines;

pub mod backup_configuration;
pub mod backup_host;
pub mod backup_session;
mod common;
pub mod lifecycle;
pub mod locks;
pub mod names;
pub mod paths;
pub mod reasons;
pub mod repository;
pub mod restore_host;
pub mod restore_session;
pub mod snapshots;

pub use common::{
    Decision, Effect, EventKind, EventRecord, JobState, Performed, Policy, StatusPatch,
    api_error_is_permanent, entry_failed,
};
pub use lifecycle::{Lifecycle, Rejection, RejectionKind, Transition};

/// What generated code reaches through `<machines>::__private`; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use schemars;
    pub use serde;
    pub use serde_json;
    pub use statig;
}
