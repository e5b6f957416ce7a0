//! What an agent does when restic refuses it a lock.
//!
//! restic's own rule (0.19.1): any lock of another process refuses an exclusive command, and a
//! leftover exclusive lock refuses every command that locks; `--retry-lock` waits for it,
//! bounded. Only `restic unlock` removes a lock, and only one restic can prove stale: older than
//! 30 minutes (a live restic refreshes its locks every 5), or of a pid that no longer runs on
//! the *same* hostname. In a cluster each agent's hostname is its pod's name.
//!
//! Before an exclusive command the agent clears what restic proves stale
//! ([`clear_stale_first`]). When a command is refused after waiting:
//! * a lock **of this pod** (an agent restarted in the same pod, or a restic it interrupted) or
//!   **older than restic's stale age** is one `restic unlock` (without `--remove-all`) removes
//!   if, and only if, restic proves it stale: the agent runs `unlock` once and retries the
//!   command once, and names the removed lock (host, pid, age) in its log and report;
//! * any other lock (another pod's, younger) may belong to a live agent: it is never removed,
//!   and the command fails as restic said (the session's failure names the holder).
//!
//! A lock of **another pod** that stands in a command's way ([`blocks`]) is reported to the
//! operator on the agent's session (`status.blockingLocks`), and the command waits for it
//! (`--retry-lock`). The operator judges each reported lock ([`judge`]): when no pod of the
//! lock's hostname exists any more and the hostname is one of the repository's agents', the
//! holder is dead, and the operator runs `restic unlock` in a Pod that carries the dead pod's
//! hostname — restic itself then proves the lock stale (its hostname, a pid that does not run
//! there) and removes it, and the waiting command goes on. A live holder's lock, or one of a
//! process stash-rs does not know, is kept: it goes only when restic calls it stale (30 minutes
//! after its last refresh).
use std::time::Duration;

/// restic's stale age: a lock older than this is stale whoever holds it.
pub const STALE_AGE: Duration = Duration::from_secs(30 * 60);

/// The holder of a lock that refused a command, as restic names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Whether the lock is exclusive (a prune, a check).
    pub exclusive: bool,
    /// The holder's pid, on its host.
    pub pid: u32,
    /// The holder's hostname (an agent's pod name).
    pub host: String,
    /// How old the lock was when restic looked.
    pub age: Duration,
    /// The head of the lock file's id (`storage ID …`), empty when restic named none.
    pub id: String,
}

impl Holder {
    /// The holder from restic's refusal, e.g. `repository is already locked exclusively by PID
    /// 80 on app-7d9f-x2 by root (UID 0, GID 0)\nlock was created at … (3m2.5s ago)`.
    pub fn parse(message: &str) -> Option<Holder> {
        let (_, rest) = message.split_once("repository is already locked ")?;
        let exclusive = rest.starts_with("exclusively ");
        let (_, rest) = rest.split_once("by PID ")?;
        let (pid, rest) = rest.split_once(" on ")?;
        let pid = pid.trim().parse().ok()?;
        let host = rest.split(" by ").next()?.trim().to_string();
        if host.is_empty() {
            return None;
        }
        let age = message
            .rsplit_once(" ago)")
            .and_then(|(before, _)| before.rsplit_once('('))
            .and_then(|(_, d)| go_duration(d))
            .unwrap_or_default();
        let id = message
            .split_once("storage ID ")
            .map(|(_, r)| {
                r.chars()
                    .take_while(char::is_ascii_hexdigit)
                    .collect::<String>()
            })
            .unwrap_or_default();
        Some(Holder {
            exclusive,
            pid,
            host,
            age,
            id,
        })
    }

    /// `host`, `pid`, age and kind, for a log line or a report.
    pub fn describe(&self) -> String {
        format!(
            "{} lock of PID {} on {} ({}s old)",
            if self.exclusive {
                "exclusive"
            } else {
                "shared"
            },
            self.pid,
            self.host,
            self.age.as_secs()
        )
    }
}

/// Go's `time.Duration` text (`1h2m3.5s`, `250ms`, `4.9s`).
fn go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() || n == 'µ' {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        total += v * match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        any = true;
    }
    (any && num.is_empty()).then(|| Duration::from_secs_f64(total))
}

/// Whether to clear the locks restic proves stale (`restic unlock`, never `--remove-all`)
/// *before* a command: before every exclusive one (`forget`, `prune`, `check`), which any
/// leftover lock refuses — a restic killed in this pod is then no obstacle at all, instead of
/// one found after `--retry-lock` has waited. Shared commands (a backup) are refused only by
/// an exclusive lock, and are decided on when refused ([`on_refusal`]).
pub fn clear_stale_first(exclusive: bool) -> bool {
    exclusive
}

/// What to do about a refused lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnRefusal {
    /// Run `restic unlock` (stale locks only), then the command once more.
    UnlockStaleAndRetry,
    /// Fail as restic said: the holder may be alive (or this was the retry).
    Fail,
}

/// The decision for a command refused by `holder` (`None`: restic's message named none), for
/// an agent on host `me`, on attempt `attempt` (0: the first run).
pub fn on_refusal(holder: Option<&Holder>, me: &str, attempt: u32) -> OnRefusal {
    match holder {
        Some(h) if attempt == 0 && (h.host == me || h.age >= STALE_AGE) => {
            OnRefusal::UnlockStaleAndRetry
        }
        _ => OnRefusal::Fail,
    }
}

/// Whether a lock stands in the way of a command of host `me`: another host's lock that restic
/// does not call stale yet, and that refuses the command — any lock refuses an exclusive
/// command, an exclusive lock refuses every command. (A lock of `me` or an old one is
/// restic's own to prove stale: [`clear_stale_first`], [`on_refusal`].)
pub fn blocks(
    command_exclusive: bool,
    lock_exclusive: bool,
    lock_host: &str,
    age: Duration,
    me: &str,
) -> bool {
    lock_host != me && age < STALE_AGE && (command_exclusive || lock_exclusive)
}

/// The longest hostname a pod has: the kubelet cuts a longer pod name to 63 characters, so a
/// hostname of this length may belong to a pod with a longer name.
pub const HOSTNAME_MAX: usize = 63;

/// What the operator knows of a reported lock's holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HolderFacts {
    /// A pod of that name exists (in any namespace), read from the API server itself.
    pub pod_exists: bool,
    /// The hostname is one of this repository's agents' (see [`is_agent_host`]).
    pub agent_host: bool,
}

/// Why a reported lock is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// A pod of the lock's hostname exists: its agent may be alive.
    HolderRunning,
    /// The hostname is no agent's of this repository (a user's own restic, a laptop).
    UnknownHolder,
    /// The hostname is 63 characters long: the pod's name may be longer, its existence unknown.
    HostnameTruncated,
    /// `restic unlock`, run under the holder's hostname, left it (its pid runs there).
    NotProvenStale,
}

impl Kept {
    /// The reason's name (a `LockDecision`'s `reason`, an Event's text).
    pub fn name(self) -> &'static str {
        match self {
            Kept::HolderRunning => "HolderRunning",
            Kept::UnknownHolder => "UnknownHolder",
            Kept::HostnameTruncated => "HostnameTruncated",
            Kept::NotProvenStale => "NotProvenStale",
        }
    }
}

/// The operator's judgement of a reported lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The holder is dead: run `restic unlock` under its hostname.
    Remove,
    /// Leave it.
    Keep(Kept),
}

/// Judge a lock of `host` that stands in an agent's way.
pub fn judge(host: &str, facts: HolderFacts) -> Verdict {
    if host.len() >= HOSTNAME_MAX {
        Verdict::Keep(Kept::HostnameTruncated)
    } else if facts.pod_exists {
        Verdict::Keep(Kept::HolderRunning)
    } else if !facts.agent_host {
        Verdict::Keep(Kept::UnknownHolder)
    } else {
        Verdict::Remove
    }
}

/// Whether `host` is the hostname of one of a repository's agents: a pod of one of its
/// `workloads` (`<workload>-…`: a Deployment's, ReplicaSet's, DaemonSet's or StatefulSet's
/// pods) or one of the Pods stash-rs runs for it (`stash-…`: backup and restore Jobs, reader
/// and unlock Pods).
pub fn is_agent_host(host: &str, workloads: &[String]) -> bool {
    host.starts_with("stash-")
        || workloads.iter().any(|w| {
            !w.is_empty()
                && host.len() > w.len() + 1
                && host.starts_with(w.as_str())
                && host.as_bytes()[w.len()] == b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    // restic 0.19.1's own words (a backup SIGKILLed, then a prune).
    const SHARED: &str = "unable to create lock in backend: repository is already locked by PID 10103 on vm by root (UID 0, GID 0)\nlock was created at 2026-12-07 09:45:55 (3.485876117s ago)\nstorage ID 182157de\nthe `unlock` command can be used to remove stale locks";
    const EXCLUSIVE: &str = "repository is already locked exclusively by PID 80 on app-6d4cf56db6-x2lqn by root (UID 0, GID 0)\nlock was created at 2026-12-07 09:45:55 (1h2m3.5s ago)\nstorage ID 0a1b2c3d";

    #[test]
    fn restic_s_refusals_name_the_holder() {
        assert_eq!(
            Holder::parse(SHARED),
            Some(Holder {
                exclusive: false,
                pid: 10103,
                host: "vm".into(),
                age: Duration::from_secs_f64(3.485876117),
                id: "182157de".into(),
            })
        );
        let h = Holder::parse(EXCLUSIVE).expect("holder");
        assert!(h.exclusive);
        assert_eq!((h.pid, h.host.as_str()), (80, "app-6d4cf56db6-x2lqn"));
        assert_eq!(
            h.age,
            Duration::from_secs(3723) + Duration::from_millis(500)
        );
        assert_eq!(
            h.describe(),
            "exclusive lock of PID 80 on app-6d4cf56db6-x2lqn (3723s old)"
        );
        assert_eq!(Holder::parse("Fatal: wrong password"), None);
        assert_eq!(go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(go_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(go_duration("x"), None);
    }

    #[test]
    fn only_locks_restic_can_prove_stale_are_unlocked_and_only_once() {
        let mine = Holder::parse(EXCLUSIVE).expect("holder");
        let young_other = Holder {
            host: "other-pod".into(),
            age: Duration::from_secs(60),
            ..mine.clone()
        };
        let old_other = Holder {
            age: STALE_AGE,
            ..young_other.clone()
        };
        let young_mine = Holder {
            age: Duration::from_secs(5),
            ..mine.clone()
        };
        let me = "app-6d4cf56db6-x2lqn";
        assert_eq!(
            on_refusal(Some(&young_mine), me, 0),
            OnRefusal::UnlockStaleAndRetry
        );
        assert_eq!(
            on_refusal(Some(&old_other), me, 0),
            OnRefusal::UnlockStaleAndRetry
        );
        // Another pod's young lock may be a live agent's: never removed.
        assert_eq!(on_refusal(Some(&young_other), me, 0), OnRefusal::Fail);
        // One retry, never a loop.
        assert_eq!(on_refusal(Some(&young_mine), me, 1), OnRefusal::Fail);
        assert_eq!(on_refusal(None, me, 0), OnRefusal::Fail);
    }

    #[test]
    fn another_pod_s_lock_blocks_as_restic_would_refuse() {
        let young = Duration::from_secs(60);
        // Any lock refuses an exclusive command; only an exclusive lock refuses a shared one.
        assert!(blocks(true, false, "app-x", young, "app-y"));
        assert!(blocks(false, true, "app-x", young, "app-y"));
        assert!(!blocks(false, false, "app-x", young, "app-y"));
        // Our own or an old lock is restic's to prove stale.
        assert!(!blocks(true, true, "app-y", young, "app-y"));
        assert!(!blocks(true, true, "app-x", STALE_AGE, "app-y"));
    }

    #[test]
    fn only_a_dead_agent_s_lock_is_removed() {
        let dead = HolderFacts {
            pod_exists: false,
            agent_host: true,
        };
        assert_eq!(judge("app-6d4cf56db6-x2lqn", dead), Verdict::Remove);
        assert_eq!(
            judge(
                "app-6d4cf56db6-x2lqn",
                HolderFacts {
                    pod_exists: true,
                    ..dead
                }
            ),
            Verdict::Keep(Kept::HolderRunning)
        );
        assert_eq!(
            judge(
                "laptop",
                HolderFacts {
                    agent_host: false,
                    ..dead
                }
            ),
            Verdict::Keep(Kept::UnknownHolder)
        );
        let long = "a".repeat(HOSTNAME_MAX);
        assert_eq!(judge(&long, dead), Verdict::Keep(Kept::HostnameTruncated));
        let w = vec!["app".to_string(), String::new()];
        assert!(is_agent_host("app-6d4cf56db6-x2lqn", &w));
        assert!(is_agent_host("app-0", &w));
        assert!(is_agent_host("stash-backup-nightly-x", &w));
        assert!(!is_agent_host("application-0", &w));
        assert!(!is_agent_host("app", &w));
        assert!(!is_agent_host("laptop", &w));
    }
}
