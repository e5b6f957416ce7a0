//! The generic runtime that drives the pure lifecycle machines against Kubernetes.
//!
//! - [`controller`]: runs a [`controller::Reconcile`] through a kube-runtime `Controller`,
//!   counting reconciles, failures and durations.
//! - [`effects`]: the one interpreter of every lifecycle's decisions (generic over the
//!   lifecycle and its actions).
//! - [`status`]: the one place status is written — no-op writes skipped, conflict-safe,
//!   every phase change checked against the lifecycle's transition table.
//! - [`leader`]: leader election on a `coordination.k8s.io` Lease; only the leader writes.
//! - [`metrics`] and [`server`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`certs`]: serving certificates (generated, kept in a Secret, rotated) and client
//!   certificate names.
//! - [`events`]: Kubernetes Events, repeats folded into a bounded series cache.
pub mod admission;
pub mod aggregated;
pub mod certs;
pub mod controller;
pub mod effects;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod server;
pub mod status;

pub use controller::{MetricLabel, Reconcile, drive};
pub use effects::{Perform, interpret};
pub use kube::runtime::controller::Action;
pub use leader::LeaderElection;
pub use metrics::Metrics;
pub use status::{Lifecycle, StatusError, StatusWriter, check_transition, permits};
