//! What follows a failed BackupSession (`retryConfig`, later Stash): a new session of its
//! own, `delay` after the failure, while the failed one has retries left. The failed session
//! records the decision in its status (`nextRetry`, then `retried`), so each step is taken
//! once: a restarted operator reads where it was.

use std::time::Duration;

/// What the runtime knows of a finished session and its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The session ended `Failed` (a skipped or succeeded one is never retried).
    pub failed: bool,
    /// `spec.retryLeft`.
    pub retry_left: u32,
    /// `status.retried`: decided already.
    pub retried: Option<bool>,
    /// `status.nextRetry`, seconds since the epoch.
    pub next_retry: Option<u64>,
    /// The configuration exists and is not paused.
    pub config_usable: bool,
    /// Its `retryConfig.delay` (zero when absent).
    pub delay: Duration,
    /// Now, seconds since the epoch.
    pub now: u64,
}

/// The next retry step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do (not failed, no retries left, or decided).
    Nothing,
    /// Record when the next session is created (`status.nextRetry`).
    Schedule {
        /// Seconds since the epoch.
        at: u64,
    },
    /// Look again then.
    Wait(Duration),
    /// Create the next session (idempotent: its name is fixed) with this many retries left,
    /// then record `retried: true`.
    Create {
        /// Its `spec.retryLeft`.
        retry_left: u32,
    },
    /// Record `retried: false`: the configuration was paused or deleted since.
    GiveUp(String),
}

/// Whether `facts` leave a decision to make: the session must stay where the controller sees
/// it until it is made.
pub fn pending(failed: bool, retry_left: u32, retried: Option<bool>) -> bool {
    failed && retry_left > 0 && retried.is_none()
}

/// The next step for a finished session.
pub fn step(f: &Facts) -> Step {
    if !pending(f.failed, f.retry_left, f.retried) {
        return Step::Nothing;
    }
    if !f.config_usable {
        return Step::GiveUp("its BackupConfiguration is paused or gone: no retry".to_string());
    }
    match f.next_retry {
        None => Step::Schedule {
            at: f.now.saturating_add(f.delay.as_secs()),
        },
        Some(at) if at > f.now => Step::Wait(Duration::from_secs(at - f.now)),
        Some(_) => Step::Create {
            retry_left: f.retry_left - 1,
        },
    }
}

/// The name of the session that retries `failed`: `<first>-retry-<n>`, where `<first>` is the
/// session the retries began with and `n` counts them, cut to the 253 characters of a name.
pub fn next_name(failed: &str) -> String {
    let (first, n) = match failed.rsplit_once("-retry-") {
        Some((first, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (first, n.parse::<u64>().unwrap_or(0))
        }
        _ => (failed, 0),
    };
    let suffix = format!("-retry-{}", n + 1);
    let keep = 253usize.saturating_sub(suffix.len()).min(first.len());
    let mut base = first[..keep].to_string();
    // A cut name must still end in an alphanumeric character.
    while base.ends_with(['-', '.']) {
        base.pop();
    }
    format!("{base}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            failed: true,
            retry_left: 2,
            retried: None,
            next_retry: None,
            config_usable: true,
            delay: Duration::from_secs(10),
            now: 1000,
        }
    }

    #[test]
    fn a_failed_session_is_followed_once_after_its_delay() {
        assert_eq!(step(&facts()), Step::Schedule { at: 1010 });
        let scheduled = Facts {
            next_retry: Some(1010),
            ..facts()
        };
        assert_eq!(step(&scheduled), Step::Wait(Duration::from_secs(10)));
        let due = Facts {
            now: 1010,
            ..scheduled.clone()
        };
        assert_eq!(step(&due), Step::Create { retry_left: 1 });
        let done = Facts {
            retried: Some(true),
            ..due
        };
        assert_eq!(step(&done), Step::Nothing);
    }

    #[test]
    fn nothing_follows_a_success_a_skip_the_last_retry_or_a_paused_configuration() {
        for f in [
            Facts {
                failed: false,
                ..facts()
            },
            Facts {
                retry_left: 0,
                ..facts()
            },
            Facts {
                retried: Some(false),
                ..facts()
            },
        ] {
            assert_eq!(step(&f), Step::Nothing, "{f:?}");
            assert!(!pending(f.failed, f.retry_left, f.retried));
        }
        let paused = Facts {
            config_usable: false,
            ..facts()
        };
        assert!(matches!(step(&paused), Step::GiveUp(_)));
    }

    #[test]
    fn retries_are_numbered_from_the_first_session() {
        assert_eq!(next_name("app-backup-1700"), "app-backup-1700-retry-1");
        assert_eq!(
            next_name("app-backup-1700-retry-1"),
            "app-backup-1700-retry-2"
        );
        assert_eq!(next_name("x-retry-"), "x-retry-retry-1");
        let long = "a".repeat(253);
        let next = next_name(&long);
        assert_eq!(next.len(), 253);
        assert!(next.ends_with("-retry-1"));
        assert_eq!(next_name(&next).len(), 253);
        assert!(next_name(&next).ends_with("-retry-2"));
    }
}
