//! The pure core of stash-rs: every decision about *what* to write that needs no API server
//! and no runtime. The operator, the admission webhooks, the Snapshot API, the agents and
//! `kubectl-stash` share it.
//!
//! May not: call the API server, spawn processes, read the clock or the environment, or link
//! kube's client or tokio (`tests/pure.rs` fails when either appears in its dependency tree).
//!
//! - [`target`]: the kinds a BackupConfiguration or RestoreSession can target, and host names;
//! - [`identity`]: who the agents run as, and what a namespace's PodSecurity level allows;
//! - [`inject`]: the sidecar and restore init-container (one decision for webhook and controller);
//! - [`runtime_settings`]: user runtime settings applied to a container;
//! - [`jobs`]: the job model's templates (variable substitution, Task resolution, inputs,
//!   the built-in Functions and Tasks, `output.json`);
//! - [`cron`]: schedules (`CRON_TZ=`, validation);
//! - [`location`]: where a Repository's restic repository is;
//! - [`names`]: names and labels of derived objects.
pub mod args;
pub mod cron;
pub mod identity;
pub mod inject;
pub mod jobs;
pub mod location;
pub mod names;
pub mod runtime_settings;
pub mod target;
