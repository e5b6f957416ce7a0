//! The stash-rs agents: what runs in pods, one command each (`stash <command>`).
//!
//! - [`run_backup`]: the backup sidecar (a workload's pods);
//! - [`restore_host`]: the restore init-container, or a restore Job without a Task;
//! - [`create_backupsession`]: what the trigger CronJob runs;
//! - [`pvc`], [`postgres`], [`update_status`]: the job model's steps;
//! - [`backup`] / [`restore`]: restic's sequence of one host's backup (§7.4) and restore;
//! - [`report`]: a host's entry in its session's status; [`metrics`]: the pushgateway.
//!
//! May not: decide a lifecycle step (the machines in `stash-machines` do), serve HTTP, or
//! write anything but its own host's entry, its events and the objects its Role allows.
pub mod backup;
pub mod create_backupsession;
pub mod metrics;
pub mod postgres;
pub mod pvc;
pub mod report;
pub mod restore;
pub mod restore_host;
pub mod run_backup;
#[cfg(test)]
mod scripted_tests;
pub mod unlock;
pub mod update_status;
