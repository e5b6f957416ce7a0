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
#[cfg(feature = "server")]
pub mod admission;
#[cfg(feature = "server")]
pub mod aggregated;
#[cfg(feature = "server")]
pub mod certs;
pub mod controller;
pub mod effects;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod pods;
#[cfg(feature = "server")]
pub mod server;
pub mod status;

pub use controller::{MetricLabel, Reconcile, drive};
pub use effects::{Perform, interpret};
pub use kube::runtime::controller::Action;
pub use leader::LeaderElection;
pub use metrics::Metrics;
pub use status::{Lifecycle, StatusError, StatusWriter, check_transition, permits};

/// What every stash-rs process does first: the TLS crypto provider (ring) for kube's client
/// and servers, and logs to stderr filtered by `RUST_LOG` (default `info`).
pub fn init_process() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
