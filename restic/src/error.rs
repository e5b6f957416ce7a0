//! The error type. Every message that carries restic output has been scrubbed of the
//! repository's secrets (password, provider keys, URL userinfo) before it is stored here.
use std::time::Duration;

use crate::{BackupSummary, Unreadable};

/// What can go wrong running restic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A required key of the storage Secret is missing or empty.
    #[error("storage secret: key {key} is missing or empty")]
    MissingKey {
        /// The key, e.g. `RESTIC_PASSWORD`.
        key: &'static str,
    },
    /// A key of the storage Secret has a value restic cannot use (e.g. not UTF-8).
    #[error("storage secret: key {key}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why (never the value).
        reason: String,
    },
    /// The wrapper was configured inconsistently.
    #[error("invalid restic configuration: {0}")]
    Config(String),
    /// There is no restic repository at the location (restic exit status 10).
    #[error("repository does not exist, reason: {reason}")]
    RepositoryNotFound {
        /// The last line restic printed.
        reason: String,
    },
    /// The password does not open any key of the repository (restic exit status 12).
    #[error("wrong password for repository, reason: {reason}")]
    WrongPassword {
        /// The last line restic printed.
        reason: String,
    },
    /// The repository is locked by another process (restic exit status 11).
    #[error("repository is already locked, reason: {reason}")]
    Locked {
        /// The last line restic printed.
        reason: String,
    },
    /// The backend could not be reached (connection refused, DNS, network timeouts), either
    /// reported by restic or detected by the wrapper while restic kept retrying.
    #[error("backend unreachable, reason: {reason}")]
    Unreachable {
        /// The last line restic printed.
        reason: String,
    },
    /// The backend kept failing (restic retried for longer than the wrapper's retry budget)
    /// for a reason other than reachability, e.g. a TLS certificate restic does not trust.
    #[error("backend error, reason: {reason}")]
    Backend {
        /// The last line restic printed.
        reason: String,
    },
    /// One or more requested snapshots do not exist.
    #[error("snapshot {id} not found")]
    SnapshotNotFound {
        /// The id (or prefix) that matched nothing.
        id: String,
    },
    /// restic ran longer than the configured timeout and was killed (with its process group).
    #[error("restic {command} timed out after {after:?} and was killed, last output: {reason}")]
    Timeout {
        /// The restic sub-command.
        command: String,
        /// The timeout.
        after: Duration,
        /// The last line restic printed.
        reason: String,
    },
    /// Any other failure of restic: `"<exit status>, reason: <last stderr line>"`.
    #[error("{status}, reason: {reason}")]
    Failed {
        /// Like Go's `exec.ExitError`: `exit status N` or `signal: N`.
        status: String,
        /// The numeric exit code, if restic exited normally.
        code: Option<i32>,
        /// The last line restic printed on stderr.
        reason: String,
    },
    /// The backup made its snapshot, but restic could not read some files (exit status 3,
    /// "at least one source file could not be read"): the snapshot exists, without them. Not a
    /// success — a caller that does not look at this variant treats the backup as failed — but
    /// the snapshot is there: `summary` names it (`snapshot_id`) and `unreadable` what is
    /// missing from it.
    #[error(
        "{} could not be read (snapshot {} kept): {}",
        .unreadable.files(),
        .summary.short_id(),
        .unreadable.list(Unreadable::KEPT)
    )]
    Incomplete {
        /// restic's summary of the backup (its snapshot and figures).
        summary: Box<BackupSummary>,
        /// What restic could not read.
        unreadable: Unreadable,
    },
    /// restic could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program that was executed.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// restic's JSON output did not have the expected shape.
    #[error("cannot parse restic {command} output: {reason}")]
    Parse {
        /// The restic sub-command.
        command: String,
        /// What was wrong.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The restic exit code when restic ran and failed with one.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Error::RepositoryNotFound { .. } => Some(10),
            Error::Locked { .. } => Some(11),
            Error::WrongPassword { .. } => Some(12),
            Error::Incomplete { .. } => Some(3),
            Error::Failed { code, .. } => *code,
            _ => None,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn parse(command: &str, reason: impl Into<String>) -> Self {
        Error::Parse {
            command: command.into(),
            reason: reason.into(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Replaces every secret in `text` by `***` and masks URL userinfo (`scheme://user:pw@` →
/// `scheme://***@`). Secrets are replaced longest first so that one secret containing
/// another is fully masked.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = mask_userinfo(text);
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| !s.trim().is_empty()).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', whitespace or quote.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_secrets_and_userinfo() {
        let secrets = vec![
            "hunter2".to_string(),
            "AKIA-SECRET".to_string(),
            "  ".to_string(),
        ];
        let s = scrub(
            "Fatal: rest:http://alice:p%40ss@host:8000/repo failed with hunter2 and AKIA-SECRET; s3:https://h/b ok",
            &secrets,
        );
        assert_eq!(
            s,
            "Fatal: rest:http://***@host:8000/repo failed with *** and ***; s3:https://h/b ok"
        );
        assert!(!s.contains("alice") && !s.contains("hunter2"));
    }

    #[test]
    fn longest_secret_first() {
        let secrets = vec!["abc".to_string(), "abcdef".to_string()];
        assert_eq!(scrub("x abcdef y abc", &secrets), "x *** y ***");
    }

    #[test]
    fn failed_display_matches_stash() {
        let e = Error::Failed {
            status: "exit status 1".into(),
            code: Some(1),
            reason: "Fatal: boom".into(),
        };
        assert_eq!(e.to_string(), "exit status 1, reason: Fatal: boom");
        assert_eq!(e.exit_code(), Some(1));
    }
}
