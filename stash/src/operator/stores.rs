//! One watch per kind, shared (issue 12): BackupConfigurations, BackupSessions,
//! RestoreSessions and Repositories are each watched once; the watch feeds one reflector store,
//! which every reconcile reads ([`Stores`], in the [`super::Ctx`]), and fans its changes out to
//! every controller that is triggered by that kind ([`Feed::applies`], [`Feed::triggers`],
//! [`Feed::changes`]; the controllers take them through kube's `Controller::for_shared_stream`
//! and `watches_shared_stream`).
//!
//! Every object has `metadata.managedFields` and the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation removed before it enters a
//! store: nothing here reads them, and they are often the larger part of a small object. (No
//! object of these kinds is ever written back whole from the store: finalizers are JSON
//! patches, statuses server-side applies.)
//!
//! Why not kube's own fan-out (`reflect_shared`, `Writer::subscribe`): a subscriber there is
//! sent an object *reference* and looks the object up in the store when it is polled; an
//! object deleted in between (a finalizer removed, then the Delete event — the normal end of
//! every BackupConfiguration, RestoreSession and Repository, and of every pruned BackupSession)
//! is then not found, and the subscriber answers `Pending` without having registered a waker
//! (kube-runtime 5.0.0 `ReflectHandle::poll_next`): it is never polled again, its buffer
//! fills, and the backpressure stops the root watch and every other subscriber with it. Here
//! a subscriber is sent the object itself (an `Arc` shared with the store), and deletions too
//! (kube-rs/kube#1590).
//!
//! Backpressure: the root watch waits for every subscriber to take each change (a bounded
//! channel each), so every subscription must be polled; they are created before the watch
//! starts ([`Feed::run`] consumes the feed), and everything starts once leadership is held
//! ([`super::run`]). A dropped subscription is skipped.
//!
//! Referent → referrers ([`configurations_targeting`], [`sessions_of`],
//! [`restores_targeting`], [`configurations_sharing`]) are scans of a store (the kopiur
//! `watch.rs` shape), never an `Api::list`; a referent by name is a store lookup
//! ([`get_or_fetch`]: a GET only when the store does not have it yet).
use std::sync::Arc;

use futures::{SinkExt, Stream, StreamExt, channel::mpsc, stream::BoxStream};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use stash_crds::{
    BackupConfiguration, BackupSession, Repository, RestoreSession, common::Driver, consts,
};

use crate::target::WorkloadKind;

/// The annotation `kubectl apply` keeps (a copy of the whole object): dropped from the stores.
pub const LAST_APPLIED_CONFIGURATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// How many changes a subscriber may be behind before the root watch waits for it.
const BUFFER: usize = 1024;

/// Remove what no reconcile reads and what makes cached objects large.
pub fn strip<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED_CONFIGURATION);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// What a subscriber is told.
#[derive(Debug)]
pub enum Change<K> {
    /// Created or changed (a deletion in progress, with its `deletionTimestamp`, is a change).
    Applied(Arc<K>),
    /// Gone.
    Deleted(Arc<K>),
    /// A full (re)list has replaced the store: every object now in it.
    Listed(Arc<[Arc<K>]>),
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied(o) => Change::Applied(o.clone()),
            Change::Deleted(o) => Change::Deleted(o.clone()),
            Change::Listed(all) => Change::Listed(all.clone()),
        }
    }
}

/// The reading side of the shared watches: one store per kind.
#[derive(Clone)]
pub struct Stores {
    /// Every BackupConfiguration.
    pub configurations: Store<BackupConfiguration>,
    /// Every BackupSession.
    pub sessions: Store<BackupSession>,
    /// Every RestoreSession.
    pub restores: Store<RestoreSession>,
    /// Every Repository.
    pub repositories: Store<Repository>,
    /// Each feed's "listed once" flag (our own: kube's `Store::wait_until_ready` keeps one
    /// waker, so concurrent waiters lose their wake-up and hang).
    listed: Vec<tokio::sync::watch::Receiver<bool>>,
}

impl Stores {
    /// Wait until every shared store has been listed once. A reconcile triggered by one kind
    /// that scans another kind's store must not take "not listed yet" for "none": on a new
    /// leader, a workload reconciled before the BackupSessions were listed would rewrite its
    /// sidecar's Role without the running session (the sidecar's report is then refused and
    /// the session hangs), and one reconciled before the BackupConfigurations were listed
    /// would lose its sidecar. Free once the stores are ready.
    pub async fn ready(&self) -> Result<(), super::Error> {
        for listed in &self.listed {
            let mut listed = listed.clone();
            listed
                .wait_for(|l| *l)
                .await
                .map_err(|_| super::Error::Config("the shared watches stopped".into()))?;
        }
        Ok(())
    }
}

/// The feeding side of the shared watches: subscribe, then [`Feeds::run`].
pub struct Feeds {
    /// BackupConfigurations.
    pub configurations: Feed<BackupConfiguration>,
    /// BackupSessions.
    pub sessions: Feed<BackupSession>,
    /// RestoreSessions.
    pub restores: Feed<RestoreSession>,
    /// Repositories.
    pub repositories: Feed<Repository>,
}

/// The stores and their (not yet started) feeds.
pub fn new() -> (Stores, Feeds) {
    let feeds = Feeds {
        configurations: Feed::default(),
        sessions: Feed::default(),
        restores: Feed::default(),
        repositories: Feed::default(),
    };
    let stores = Stores {
        configurations: feeds.configurations.reader(),
        sessions: feeds.sessions.reader(),
        restores: feeds.restores.reader(),
        repositories: feeds.repositories.reader(),
        listed: vec![
            feeds.configurations.listed(),
            feeds.sessions.listed(),
            feeds.restores.listed(),
            feeds.repositories.listed(),
        ],
    };
    (stores, feeds)
}

// === impl Feeds ===

impl Feeds {
    /// Run the four watches (cluster-wide) until the process ends.
    pub async fn run(self, client: Client) {
        tokio::join!(
            self.configurations.run(Api::all(client.clone())),
            self.sessions.run(Api::all(client.clone())),
            self.restores.run(Api::all(client.clone())),
            self.repositories.run(Api::all(client)),
        );
    }
}

/// One kind's watch, its store and its subscribers.
pub struct Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    writer: Writer<K>,
    subscribers: Vec<mpsc::Sender<Change<K>>>,
    listed: tokio::sync::watch::Sender<bool>,
}

impl<K> Default for Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn default() -> Self {
        Self {
            writer: Writer::default(),
            subscribers: Vec::new(),
            listed: tokio::sync::watch::Sender::new(false),
        }
    }
}

// === impl Feed ===

impl<K> Feed<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// A reader of the store this feed fills.
    pub fn reader(&self) -> Store<K> {
        self.writer.as_reader()
    }

    /// Whether the store has been listed once (true from then on).
    pub fn listed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.listed.subscribe()
    }

    /// Every change, as it is applied to the store.
    pub fn changes(&mut self) -> impl Stream<Item = Change<K>> + Send + 'static + use<K> {
        let (tx, rx) = mpsc::channel(BUFFER);
        self.subscribers.push(tx);
        rx
    }

    /// The objects created or changed, and every object after a (re)list: what a controller of
    /// this kind reconciles (`Controller::for_shared_stream`).
    pub fn applies(&mut self) -> BoxStream<'static, Arc<K>> {
        self.changes()
            .flat_map(|c| {
                futures::stream::iter(match c {
                    Change::Applied(o) => vec![o],
                    Change::Deleted(_) => vec![],
                    Change::Listed(all) => all.to_vec(),
                })
            })
            .boxed()
    }

    /// As [`Feed::applies`], and the objects deleted: what triggers the reconcile of another
    /// kind that refers to them (`Controller::watches_shared_stream`).
    pub fn triggers(&mut self) -> BoxStream<'static, Arc<K>> {
        self.changes()
            .flat_map(|c| {
                futures::stream::iter(match c {
                    Change::Applied(o) | Change::Deleted(o) => vec![o],
                    Change::Listed(all) => all.to_vec(),
                })
            })
            .boxed()
    }

    /// Fill the store with `objects` as a completed list (tests: a store no watch feeds).
    #[cfg(test)]
    pub fn seed(&mut self, objects: impl IntoIterator<Item = K>) {
        self.writer.apply_watcher_event(&watcher::Event::Init);
        for o in objects {
            let mut o = o;
            strip(&mut o);
            self.writer
                .apply_watcher_event(&watcher::Event::InitApply(o));
        }
        self.writer.apply_watcher_event(&watcher::Event::InitDone);
        self.listed.send_replace(true);
    }

    /// Watch `api`, keep the store, and hand every change to every subscriber (waiting for
    /// each: backpressure), until the watch ends.
    pub async fn run(mut self, api: Api<K>) {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(strip)
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(e) => self.step(e).await,
                Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "shared watch"),
            }
        }
    }

    /// Apply one watch event to the store, then hand the change to every subscriber.
    async fn step(&mut self, event: watcher::Event<K>) {
        self.writer.apply_watcher_event(&event);
        if matches!(event, watcher::Event::InitDone) {
            self.listed.send_replace(true);
        }
        let reader = self.writer.as_reader();
        let change = match event {
            watcher::Event::Apply(o) => reader.get(&ObjectRef::from_obj(&o)).map(Change::Applied),
            watcher::Event::Delete(o) => Some(Change::Deleted(Arc::new(o))),
            watcher::Event::InitDone => Some(Change::Listed(reader.state().into())),
            watcher::Event::Init | watcher::Event::InitApply(_) => None,
        };
        let Some(change) = change else { return };
        let mut gone = Vec::new();
        for (i, s) in self.subscribers.iter_mut().enumerate() {
            if s.send(change.clone()).await.is_err() {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            self.subscribers.swap_remove(i);
        }
    }
}

// === referent → referrers ===

/// The live restic BackupConfigurations of namespace `ns` that target workload `kind`/`name`,
/// by name.
pub fn configurations_targeting(
    store: &Store<BackupConfiguration>,
    kind: WorkloadKind,
    ns: &str,
    name: &str,
) -> Vec<Arc<BackupConfiguration>> {
    let mut found: Vec<_> = store
        .state()
        .into_iter()
        .filter(|bc| {
            bc.namespace().as_deref() == Some(ns)
                && bc.meta().deletion_timestamp.is_none()
                && bc.spec.driver() == Driver::Restic
                && bc
                    .spec
                    .target
                    .as_ref()
                    .is_some_and(|t| kind.matches(&t.target_ref, name))
        })
        .collect();
    found.sort_by_key(|bc| bc.name_any());
    found
}

/// The RestoreSessions of namespace `ns` that target workload `kind`/`name` (deleted ones
/// included: [`crate::inject::applicable_restore`] decides).
pub fn restores_targeting(
    store: &Store<RestoreSession>,
    kind: WorkloadKind,
    ns: &str,
    name: &str,
) -> Vec<RestoreSession> {
    store
        .state()
        .into_iter()
        .filter(|rs| {
            rs.namespace().as_deref() == Some(ns)
                && rs
                    .spec
                    .target
                    .as_ref()
                    .is_some_and(|t| kind.matches(&t.target_ref, name))
        })
        .map(|rs| (*rs).clone())
        .collect()
}

/// The sessions of configuration `bc` in `ns` (by the configuration label). The store applies
/// the watch's events in order, so every session created before one being reconciled is in it.
pub fn sessions_of(store: &Store<BackupSession>, ns: &str, bc: &str) -> Vec<Arc<BackupSession>> {
    store
        .state()
        .into_iter()
        .filter(|o| {
            o.namespace().as_deref() == Some(ns)
                && o.labels()
                    .get(consts::BACKUP_CONFIGURATION_LABEL)
                    .map(String::as_str)
                    == Some(bc)
        })
        .collect()
}

/// The other BackupConfigurations of `ns` that back up into Repository `repo`.
pub fn configurations_sharing(
    store: &Store<BackupConfiguration>,
    ns: &str,
    repo: &str,
    own: &str,
) -> Vec<String> {
    let mut names: Vec<String> = store
        .state()
        .into_iter()
        .filter(|b| {
            b.namespace().as_deref() == Some(ns)
                && b.name_any() != own
                && b.spec.repository.as_ref().map(|r| r.name.as_str()) == Some(repo)
        })
        .map(|b| b.name_any())
        .collect();
    names.sort();
    names
}

/// Object `name` of namespace `ns` in `store`.
pub fn get<K>(store: &Store<K>, ns: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(ns))
}

/// Object `name` of namespace `ns` from `store`, or, when the store does not have it, one GET
/// (never a LIST). The watches of different kinds are not ordered with each other: a
/// BackupConfiguration created just before its first BackupSession, or a Repository applied
/// with its BackupConfiguration, may not be in its store yet when the other is reconciled, and
/// "not found" would then be a wrong decision (a failed session, a spurious warning). An
/// object that really is missing costs that GET each time.
pub async fn get_or_fetch<K>(
    store: &Store<K>,
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<Arc<K>>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + 'static,
{
    if let Some(o) = get(store, ns, name) {
        return Ok(Some(o));
    }
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .map(|mut o| {
            strip(&mut o);
            Arc::new(o)
        }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bc(name: &str, ns: &str, target: &str, deleting: bool) -> BackupConfiguration {
        let mut meta = json!({"name": name, "namespace": ns,
            "managedFields": [{"manager": "kubectl", "operation": "Update"}],
            "annotations": {LAST_APPLIED_CONFIGURATION: "{}", "keep": "me"}});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
            "metadata": meta,
            "spec": {"repository": {"name": "repo"},
                     "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}}},
        }))
        .expect("bc")
    }

    #[tokio::test]
    async fn many_reconciles_waiting_for_the_stores_are_all_woken() {
        // kube's `Store::wait_until_ready` keeps one waker: with several waiters, all but the
        // last hang. Ours wakes every one.
        let (stores, mut feeds) = new();
        let stores = Arc::new(stores);
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let s = stores.clone();
                tokio::spawn(async move { s.ready().await.is_ok() })
            })
            .collect();
        tokio::task::yield_now().await;
        feeds.configurations.seed([]);
        feeds.sessions.seed([]);
        feeds.restores.seed([]);
        feeds.repositories.seed([]);
        for w in waiters {
            let woke = tokio::time::timeout(std::time::Duration::from_secs(5), w)
                .await
                .expect("a waiter was never woken")
                .expect("join");
            assert!(woke);
        }
    }

    #[test]
    fn reconciles_wait_until_every_store_has_listed() {
        use futures::FutureExt;
        let (stores, mut feeds) = new();
        feeds.configurations.seed([bc("a", "n", "app", false)]);
        feeds.restores.seed([]);
        feeds.repositories.seed([]);
        // The BackupSessions have not listed yet: a reconcile must not read "none" from them.
        assert!(
            stores.ready().now_or_never().is_none(),
            "ready before the sessions listed"
        );
        feeds.sessions.seed([]);
        assert!(matches!(stores.ready().now_or_never(), Some(Ok(()))));
    }

    #[test]
    fn cached_objects_lose_managed_fields_and_the_last_applied_annotation_only() {
        let mut feed = Feed::<BackupConfiguration>::default();
        feed.seed([bc("a", "n", "app", false)]);
        let cached = get(&feed.reader(), "n", "a").expect("cached");
        assert_eq!(cached.metadata.managed_fields, None);
        let annotations = cached.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["keep"]);
    }

    #[test]
    fn configurations_targeting_a_workload_are_the_live_ones_of_its_namespace_by_name() {
        let mut feed = Feed::<BackupConfiguration>::default();
        feed.seed([
            bc("b", "n", "app", false),
            bc("a", "n", "app", false),
            bc("gone", "n", "app", true),
            bc("other", "n", "web", false),
            bc("elsewhere", "m", "app", false),
        ]);
        let names: Vec<String> =
            configurations_targeting(&feed.reader(), WorkloadKind::Deployment, "n", "app")
                .iter()
                .map(|b| b.name_any())
                .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(
            configurations_targeting(&feed.reader(), WorkloadKind::StatefulSet, "n", "app")
                .is_empty()
        );
        assert_eq!(
            configurations_sharing(&feed.reader(), "n", "repo", "a"),
            ["b", "gone", "other"]
        );
    }

    #[tokio::test]
    async fn a_subscriber_gets_deleted_objects_and_every_object_after_a_list() {
        let mut feed = Feed::<BackupConfiguration>::default();
        let mut triggers = feed.triggers();
        let mut applies = feed.applies();
        let a = bc("a", "n", "app", false);
        let mut gone = bc("a", "n", "app", true);
        gone.metadata.finalizers = None;
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(a.clone()),
            watcher::Event::InitDone,
            watcher::Event::Apply(gone.clone()),
            watcher::Event::Delete(gone),
        ] {
            feed.step(event).await;
        }
        assert!(
            get(&feed.reader(), "n", "a").is_none(),
            "deleted from the store"
        );
        drop(feed);
        let names = |v: Vec<Arc<BackupConfiguration>>| -> Vec<String> {
            v.iter().map(|b| b.name_any()).collect()
        };
        // The listed object, its deletion in progress, then its deletion: though the object was
        // gone from the store before anyone read the change, each subscriber gets it.
        assert_eq!(names(triggers.by_ref().collect().await), ["a", "a", "a"]);
        assert_eq!(names(applies.by_ref().collect().await), ["a", "a"]);
    }
}
