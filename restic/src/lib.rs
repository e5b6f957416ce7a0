//! A typed async wrapper around the restic CLI, as the Stash agents (sidecar, jobs) and the
//! operator (Snapshot API) use it.
//!
//! * [`Location`] derives the repository string for each backend (stash-api.md §9.1);
//! * [`Credentials`] reads the storage Secret (§9.2), as mounted files or as the Secret's data;
//! * [`Repo`] runs restic (`tokio::process`) with a clean environment, in its own process
//!   group, and parses its `--json` output into typed results ([`BackupSummary`],
//!   [`ForgetOutcome`], [`Snapshot`], [`Stats`], …);
//! * failures are typed ([`Error::WrongPassword`], [`Error::RepositoryNotFound`],
//!   [`Error::Unreachable`], …) and their messages never contain secrets.
//!
//! The pinned restic is 0.19.1: exit status 10 = no repository, 11 = locked, 12 = wrong
//! password, 3 = incomplete backup (a snapshot without the files restic could not read:
//! [`Error::Incomplete`]); with `--json`, fatal errors arrive on stderr as a
//! `{"message_type":"exit_error","code":N,"message":…}` line.
//!
//! Where this wrapper deliberately differs from the upstream Stash wrapper:
//! * the password goes through `RESTIC_PASSWORD_FILE` (the Secret file itself), except when
//!   the value has surrounding whitespace, which restic trims from files: then the exact
//!   bytes go through `RESTIC_PASSWORD`, as upstream did, so existing repositories still open;
//! * an empty retention policy runs `forget --keep-last unlimited` (restic 0.19 refuses a
//!   `forget` without policy), so the counts are still reported and nothing is removed;
//! * `forget_ids` fails with [`Error::SnapshotNotFound`] instead of restic's silent
//!   "Ignoring" of unknown ids;
//! * integrity comes from `check --json`'s summary (`num_errors`), not from scraping
//!   "no errors were found";
//! * restic retries an unreachable backend for 15 minutes with no option to shorten it; the
//!   wrapper stops it (process group, SIGTERM then SIGKILL) after a retry budget
//!   ([`RepoBuilder::backend_retry_budget`]) and reports [`Error::Unreachable`] or
//!   [`Error::Backend`].

// Without `process`, the parsers only `Repo` calls are unused.
#![cfg_attr(not(feature = "process"), allow(dead_code))]

mod credentials;
mod error;
mod location;
#[cfg(feature = "process")]
mod repo;
#[cfg(feature = "process")]
mod run;
mod types;

pub use credentials::{
    CA_CERT_DATA, Credentials, GOOGLE_SERVICE_ACCOUNT_JSON_KEY, REST_SERVER_PASSWORD,
    REST_SERVER_USERNAME, RESTIC_PASSWORD,
};
pub use error::{Error, Result};
pub use location::{Location, go_path_clean, object_prefix};
#[cfg(feature = "process")]
pub use repo::{
    DEFAULT_RETRY_BUDGET, DumpOptions, IoNice, LockReporter, RETRY_LOCK, Repo, RepoBuilder,
    RestoreOptions, SnapshotFilter, take_removed_locks,
};
#[cfg(feature = "process")]
pub use run::stopped;
pub use types::{
    BackupSummary, CheckReport, ForgetGroup, ForgetOutcome, LockInfo, RestoreSummary,
    RetentionPolicy, Snapshot, SnapshotSummary, Stats, StatsMode, Unreadable,
    format_processing_time, format_size,
};
