//! Who may run the first backup of a storage location: one session at a time, across every
//! Repository object that names the location (two of them `restic init` it together and
//! corrupt it). The runtime records who claimed; whether that claim still stands against
//! another session is decided here.

use std::time::Duration;

/// A session's place in the first-backup queue: oldest first; its namespace and name break
/// ties (two sessions named alike, created in the same second, in two namespaces).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// How long a claim stands for a session that has not started: it claims as the last step
/// before it starts, so it starts within moments unless a write failed and, on its next
/// reconcile, it saw an older session to wait for. Such a claim lapses then, and the older
/// session does not wait for it forever.
pub const START_GRACE: Duration = Duration::from_secs(30);

/// The holder of a location's claim (recorded, or a session running on that location).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Still in the store with the same uid and not finished.
    pub live: bool,
    /// Its phase is Running.
    pub started: bool,
    /// Its place in the queue.
    pub key: QueueKey,
    /// How long ago it claimed (a running session found on the location: zero).
    pub claimed_for: Duration,
}

/// Whether `holder`'s claim keeps the session `me` from starting. A finished (or replaced)
/// holder's never does; a started one's always does; one that has not started yet holds it
/// for [`START_GRACE`] — the store may not show it Running yet, and it may already have
/// created its Job — and after that only if it is older than `me`.
pub fn stands(holder: &Holder, me: &QueueKey) -> bool {
    holder.live && (holder.started || holder.claimed_for < START_GRACE || holder.key < *me)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(created_at: u64, namespace: &str) -> QueueKey {
        QueueKey {
            created_at,
            namespace: namespace.into(),
            name: "first".into(),
        }
    }

    fn holder(started: bool, k: QueueKey, secs: u64) -> Holder {
        Holder {
            live: true,
            started,
            key: k,
            claimed_for: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_fresh_claim_stands_against_an_older_session_that_came_late() {
        // Same second, same name, two namespaces: the namespace orders them, and the
        // newer one's fresh claim still stands (it may be creating its Job right now).
        let me = key(100, "a");
        assert!(stands(&holder(false, key(100, "b"), 0), &me));
        assert!(stands(&holder(false, key(100, "b"), 29), &me));
    }

    #[test]
    fn a_lapsed_claim_of_a_newer_session_that_never_started_yields() {
        let me = key(100, "a");
        assert!(!stands(&holder(false, key(100, "b"), 30), &me));
        assert!(
            stands(&holder(false, key(99, "z"), 30), &me),
            "an older one"
        );
        assert!(stands(&holder(true, key(101, "b"), 3600), &me), "started");
    }

    #[test]
    fn a_finished_holder_holds_nothing() {
        let mut h = holder(true, key(1, "b"), 0);
        h.live = false;
        assert!(!stands(&h, &key(100, "a")));
    }
}
