//! The shared, watch-fed index every reader of the cluster uses: the webhooks on every
//! replica, the Snapshot API and the leader's controllers.
//!
//! - [`stores`]: one watch per kind, its reflector store, the change fan-out to every
//!   controller, and the referrer lookups (sessions of a configuration, configurations
//!   targeting a workload);
//! - [`history`]: what is kept of a finished BackupSession (a few facts, bounded).
//!
//! May not: write to the API server (it only lists and watches), or decide a lifecycle step.
pub mod history;
pub mod stores;
