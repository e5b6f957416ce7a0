//! Bounded BackupSession history (issue 12): which finished sessions of a configuration are
//! past its `spec.backupHistoryLimit`.
//!
//! State only, no I/O (the kubert `index` shape): [`History::apply`], [`History::delete`] and
//! [`History::reset`] are fed from a BackupSession watch, [`History::set_limit`] by the
//! BackupConfiguration controller, and [`History::excess`] says what to delete. Plain `#[test]`s
//! drive it directly.
use std::collections::{BTreeSet, HashMap};

use kube::ResourceExt;
use stash_crds::BackupSession;
use stash_machines::backup_session::Phase;

/// A configuration: namespace and name.
pub type ConfigKey = (String, String);

/// What the history needs of one BackupSession.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionFacts {
    /// Namespace.
    pub namespace: String,
    /// Session name.
    pub name: String,
    /// `spec.backupConfiguration.name`.
    pub config: String,
    /// `metadata.creationTimestamp`, in seconds.
    pub created: i64,
    /// Whether the session is in a terminal phase (only those are pruned).
    pub finished: bool,
}

impl SessionFacts {
    /// The facts of `bs` (`None`: it names no configuration, so it has no history).
    pub fn of(bs: &BackupSession) -> Option<Self> {
        let config = bs.spec.backup_configuration.as_ref()?.name.clone();
        Some(Self {
            namespace: bs.namespace().unwrap_or_default(),
            name: bs.name_any(),
            config,
            created: bs.creation_timestamp().map_or(0, |t| t.0.as_second()),
            finished: finished(bs),
        })
    }
}

/// Whether `bs` is in a terminal phase, has no reported lock left to judge (an agent's
/// follow-up may report one after the session ended: the lock janitor, which the BackupSession
/// controller runs, must see it) and no retry left to decide
/// ([`stash_machines::backup_session::retry::pending`]): only the history keeps it
/// ([`super::stores`]).
pub fn finished(bs: &BackupSession) -> bool {
    use stash_crds::common::ReportsLocks as _;
    bs.status.as_ref().is_some_and(|s| {
        s.phase.is_some_and(Phase::is_terminal)
            && s.undecided_locks().is_empty()
            && !stash_machines::backup_session::retry::pending(
                s.phase == Some(Phase::Failed),
                bs.spec.retry_left(),
                s.retried,
            )
    })
}

/// Finished sessions per configuration, ordered by creation, and each configuration's limit.
/// A session is its creation and name under its configuration, nothing more: the history
/// holds every finished session of the cluster (the store does not, [`super::stores`]).
#[derive(Debug, Default)]
pub struct History {
    /// Finished sessions of each configuration: (created, name), oldest first.
    finished: HashMap<ConfigKey, BTreeSet<(i64, Box<str>)>>,
    /// The limit of each configuration the controller has seen.
    limits: HashMap<ConfigKey, u32>,
}

// === impl History ===

impl History {
    /// Record `s` (created, updated or finished: only a finished session is kept).
    pub fn apply(&mut self, s: SessionFacts) {
        let entry = (s.created, s.name.into_boxed_str());
        let key = (s.namespace, s.config);
        if s.finished {
            self.finished.entry(key).or_default().insert(entry);
        } else {
            self.remove(&key, |e| *e == entry);
        }
    }

    /// Forget session `name` of configuration `config` in `namespace` (deleted).
    pub fn delete(&mut self, namespace: &str, config: &str, name: &str) {
        let key = (namespace.to_string(), config.to_string());
        self.remove(&key, |(_, n)| &**n == name);
    }

    /// Replace every session (a fresh list); limits are kept.
    pub fn reset(&mut self, all: impl IntoIterator<Item = SessionFacts>) {
        self.finished.clear();
        for s in all {
            self.apply(s);
        }
    }

    /// Set the limit of a configuration (`None`: the configuration is gone).
    pub fn set_limit(&mut self, namespace: &str, config: &str, limit: Option<u32>) {
        let key = (namespace.to_string(), config.to_string());
        match limit {
            Some(l) => {
                self.limits.insert(key, l);
            }
            None => {
                self.limits.remove(&key);
            }
        }
    }

    /// The finished sessions of `config` beyond its limit, oldest first (none while the limit
    /// is unknown).
    pub fn excess(&self, namespace: &str, config: &str) -> Vec<String> {
        let key = (namespace.to_string(), config.to_string());
        let Some(&limit) = self.limits.get(&key) else {
            return vec![];
        };
        let Some(done) = self.finished.get(&key) else {
            return vec![];
        };
        let over = done.len().saturating_sub(limit as usize);
        done.iter().take(over).map(|(_, n)| n.to_string()).collect()
    }

    /// Every configuration with finished sessions beyond its limit.
    pub fn over_limit(&self) -> Vec<ConfigKey> {
        self.finished
            .iter()
            .filter(|(k, done)| {
                self.limits
                    .get(*k)
                    .is_some_and(|&l| done.len() > l as usize)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The newest finished session of `config`, if any.
    pub fn newest(&self, namespace: &str, config: &str) -> Option<String> {
        let key = (namespace.to_string(), config.to_string());
        let (_, name) = self.finished.get(&key)?.last()?;
        Some(name.to_string())
    }

    /// How many finished sessions are recorded (all configurations).
    pub fn len(&self) -> usize {
        self.finished.values().map(BTreeSet::len).sum()
    }

    /// Whether no finished session is recorded.
    pub fn is_empty(&self) -> bool {
        self.finished.is_empty()
    }

    /// Remove the sessions of `key` that `which` picks (a configuration holds a handful).
    fn remove(&mut self, key: &ConfigKey, which: impl Fn(&(i64, Box<str>)) -> bool) {
        if let Some(done) = self.finished.get_mut(key) {
            done.retain(|e| !which(e));
            if done.is_empty() {
                self.finished.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, config: &str, created: i64, finished: bool) -> SessionFacts {
        SessionFacts {
            namespace: "ns".into(),
            name: name.into(),
            config: config.into(),
            created,
            finished,
        }
    }

    #[test]
    fn only_finished_sessions_past_the_limit_are_excess_oldest_first() {
        let mut h = History::default();
        h.set_limit("ns", "bc", Some(2));
        for i in 0..5 {
            h.apply(s(&format!("bc-{i}"), "bc", i, true));
        }
        h.apply(s("bc-running", "bc", 0, false));
        h.apply(s("other-0", "other", 0, true));
        assert_eq!(h.excess("ns", "bc"), vec!["bc-0", "bc-1", "bc-2"]);
        assert_eq!(h.over_limit(), vec![("ns".to_string(), "bc".to_string())]);
        // The other configuration's limit is not known yet: nothing of it is deleted.
        assert!(h.excess("ns", "other").is_empty());
    }

    #[test]
    fn the_newest_finished_session_is_the_latest_created_of_its_configuration() {
        let mut h = History::default();
        assert_eq!(h.newest("ns", "bc"), None);
        h.apply(s("bc-b", "bc", 20, true));
        h.apply(s("bc-a", "bc", 10, true));
        h.apply(s("bc-c", "bc", 30, false));
        h.apply(s("other-z", "other", 40, true));
        assert_eq!(h.newest("ns", "bc").as_deref(), Some("bc-b"));
        h.delete("ns", "bc", "bc-b");
        assert_eq!(h.newest("ns", "bc").as_deref(), Some("bc-a"));
    }

    #[test]
    fn a_deleted_session_leaves_the_history() {
        let mut h = History::default();
        h.set_limit("ns", "bc", Some(1));
        h.apply(s("a", "bc", 1, true));
        h.apply(s("b", "bc", 2, true));
        assert_eq!(h.excess("ns", "bc"), vec!["a"]);
        h.delete("ns", "bc", "a");
        assert!(h.excess("ns", "bc").is_empty());
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn a_session_counts_once_it_finishes_and_reset_replaces_everything() {
        let mut h = History::default();
        h.set_limit("ns", "bc", Some(0));
        h.apply(s("a", "bc", 1, false));
        assert!(h.excess("ns", "bc").is_empty());
        h.apply(s("a", "bc", 1, true));
        assert_eq!(h.excess("ns", "bc"), vec!["a"]);
        h.reset([s("b", "bc", 2, true)]);
        assert_eq!(h.excess("ns", "bc"), vec!["b"]);
        h.set_limit("ns", "bc", None);
        assert!(h.excess("ns", "bc").is_empty());
        assert!(!h.is_empty());
    }
}
