//! The `stash` executable's library: the operator and its agents.
//!
//! - [`operator`]: `stash run` — the controllers, driven through `stash-runtime`.
//! - [`agent`]: what runs in pods — `create-backupsession` (CronJob), `run-backup` (sidecar).
//! - [`inject`]: the pure sidecar decision, shared by the controller path and the webhook.
//! - [`backup`]: the restic sequence of one host's backup (§7.4).
pub mod admission;
pub mod agent;
pub mod backup;
pub mod inject;
pub mod jobs;
pub mod metrics;
pub mod operator;
pub mod restore;
pub mod runtime_settings;
pub mod snapshots;
pub mod target;

#[cfg(test)]
mod fuzz_tests;
