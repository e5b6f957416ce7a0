//! Kubernetes Events (`events.k8s.io/v1`), with repeats folded into a series.
//!
//! Not kube's `Recorder`: it keeps every event it published (the whole object) for six minutes
//! and scans them all on every publish, which at thousands of sessions is megabytes and a
//! quadratic cost. Here the series cache is bounded ([`SERIES_CACHE`] keys, each a name, a
//! count and a time) and an event that repeats within [`SERIES_TTL`] is a patch of its series.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event, events::v1::EventSeries},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};

/// How many distinct events are remembered for folding repeats.
pub const SERIES_CACHE: usize = 1024;
/// How long an event is remembered for folding repeats (the API server's own horizon).
pub const SERIES_TTL: jiff::SignedDuration = jiff::SignedDuration::from_mins(6);

/// Publishes events as one named controller.
#[derive(Clone)]
pub struct Events {
    client: Client,
    controller: String,
    instance: String,
    series: Arc<Mutex<HashMap<Key, Seen>>>,
}

/// What makes two events the same: the object, the reason, the severity and the note.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    kind: String,
    name: String,
    uid: String,
    reason: String,
    warning: bool,
    note: String,
}

/// A published event: its name, how often it happened, when last.
#[derive(Clone, Debug)]
struct Seen {
    name: String,
    count: i32,
    last: jiff::Timestamp,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("controller", &self.controller)
            .finish_non_exhaustive()
    }
}

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Things went as expected.
    Normal,
    /// Something needs attention.
    Warning,
}

impl From<stash_machines::EventKind> for Severity {
    fn from(kind: stash_machines::EventKind) -> Self {
        match kind {
            stash_machines::EventKind::Normal => Severity::Normal,
            stash_machines::EventKind::Warning => Severity::Warning,
        }
    }
}

impl Events {
    /// Publish an event a machine decided on.
    pub async fn publish_record(&self, object: &ObjectReference, ev: stash_machines::EventRecord) {
        self.publish(object, ev.kind.into(), ev.reason, ev.message)
            .await;
    }

    /// A publisher reporting as `controller` (e.g. `stash-operator`), instance `$POD_NAME`.
    pub fn new(client: Client, controller: &str) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| controller.into()),
            series: Arc::default(),
        }
    }

    /// Publish an event about `object`. Failures are logged, never fatal: an event is
    /// information, not state.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        severity: Severity,
        reason: &str,
        note: String,
    ) {
        if let Err(e) = self.try_publish(object, severity, reason, note).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }

    async fn try_publish(
        &self,
        object: &ObjectReference,
        severity: Severity,
        reason: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let now = jiff::Timestamp::now();
        let ns = object.namespace.clone().unwrap_or_else(|| "default".into());
        let key = Key {
            namespace: ns.clone(),
            kind: object.kind.clone().unwrap_or_default(),
            name: object.name.clone().unwrap_or_default(),
            uid: object.uid.clone().unwrap_or_default(),
            reason: reason.into(),
            warning: severity == Severity::Warning,
            note: note.clone(),
        };
        let api = Api::<Event>::namespaced(self.client.clone(), &ns);
        let repeat = self.repeat(&key, now);
        if let Some(seen) = repeat {
            let series = serde_json::json!({"series": EventSeries {
                count: seen.count,
                last_observed_time: MicroTime(now),
            }});
            match api
                .patch(&seen.name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => return Ok(()),
                // Gone (expired on the server): publish it anew.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let name = format!(
            "{}.{:x}",
            object.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let event = Event {
            action: Some(reason.into()),
            reason: Some(reason.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(object.clone()),
            note: Some(note),
            metadata: ObjectMeta {
                namespace: Some(ns),
                name: Some(name.clone()),
                ..Default::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(match severity {
                Severity::Normal => "Normal".into(),
                Severity::Warning => "Warning".into(),
            }),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        self.remember(key, name, now);
        Ok(())
    }

    /// The event `key` published within [`SERIES_TTL`], with its count raised (`None`: new).
    fn repeat(&self, key: &Key, now: jiff::Timestamp) -> Option<Seen> {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let seen = series.get_mut(key)?;
        if seen.last + SERIES_TTL <= now {
            series.remove(key);
            return None;
        }
        seen.count = seen.count.saturating_add(1).max(2);
        seen.last = now;
        Some(seen.clone())
    }

    /// Remember a new event, making room in the bounded cache: expired ones first, else the
    /// least recent.
    fn remember(&self, key: Key, name: String, now: jiff::Timestamp) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if series.len() >= SERIES_CACHE {
            series.retain(|_, s| s.last + SERIES_TTL > now);
        }
        if series.len() >= SERIES_CACHE
            && let Some(oldest) = series
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone())
        {
            series.remove(&oldest);
        }
        series.insert(
            key,
            Seen {
                name,
                count: 1,
                last: now,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Events {
        let offline = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        Events::new(Client::try_from(offline).expect("client"), "stash-operator")
    }

    fn key(name: &str) -> Key {
        Key {
            namespace: "n".into(),
            kind: "BackupSession".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            reason: "BackupSessionSkipped".into(),
            warning: true,
            note: "paused".into(),
        }
    }

    #[tokio::test]
    async fn a_repeat_within_the_ttl_is_the_same_event_counted_and_later_a_new_one() {
        let ev = events();
        let t0 = jiff::Timestamp::now();
        assert!(ev.repeat(&key("a"), t0).is_none());
        ev.remember(key("a"), "a.1".into(), t0);
        let again = ev.repeat(&key("a"), t0 + jiff::SignedDuration::from_secs(10));
        let again = again.expect("a repeat");
        assert_eq!((again.name.as_str(), again.count), ("a.1", 2));
        let third = ev.repeat(&key("a"), t0 + jiff::SignedDuration::from_secs(20));
        assert_eq!(third.expect("a repeat").count, 3);
        // Past the TTL since the last one: a new event.
        let late = t0 + jiff::SignedDuration::from_secs(20) + SERIES_TTL;
        assert!(ev.repeat(&key("a"), late).is_none());
    }

    #[tokio::test]
    async fn the_series_cache_stays_bounded_and_keeps_the_recent_events() {
        let ev = events();
        let t0 = jiff::Timestamp::now();
        let n = i64::try_from(SERIES_CACHE).expect("size") + 100;
        for i in 0..n {
            let at = t0 + jiff::SignedDuration::from_millis(i);
            ev.remember(key(&format!("s{i}")), format!("s{i}.1"), at);
        }
        assert_eq!(ev.series.lock().expect("lock").len(), SERIES_CACHE);
        let now = t0 + jiff::SignedDuration::from_secs(1);
        assert!(ev.repeat(&key("s0"), now).is_none(), "the oldest made room");
        let last = format!("s{}", n - 1);
        assert!(ev.repeat(&key(&last), now).is_some(), "the newest is kept");
    }
}
