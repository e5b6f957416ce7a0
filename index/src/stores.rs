//! One watch per kind, shared (issue 12): BackupConfigurations, BackupSessions,
//! RestoreSessions and Repositories are each watched once; the watch feeds one reflector store,
//! which every reconcile reads ([`Stores`], in the the operator's `Ctx`), and fans its changes out to
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
//! A finished BackupSession leaves the store: what is still read of it (its configuration,
//! creation and name, for the bounded history) is kept as [`SessionFacts`] in the
//! [`History`] the feed keeps beside the store ([`Stores::history`]), a few dozen bytes where
//! the object took well over a kilobyte; its subscribers are still told of it
//! ([`Change::Applied`]). So the store and the BackupSession
//! controller hold only sessions still to decide or running, and a finished session is never
//! reconciled again (not on a relist either).
//!
//! The watches run on every replica from the start: the webhooks read the stores too
//! (readiness waits until they have listed). The controllers of the leader subscribe when it
//! is elected; a late subscription starts with everything the store holds.
//!
//! Backpressure: the root watch waits for every subscriber to take each change (a bounded
//! channel each), so every subscription must be polled: only controllers that run subscribe.
//! A dropped subscription is skipped and forgotten.
//!
//! Referent → referrers are never an `Api::list`: the sessions of a configuration
//! ([`sessions_of`], read on every BackupSession reconcile, so it must not grow with the
//! history of every other configuration) come from an [`Index`] the feed keeps beside the
//! store; the rarer ones ([`configurations_targeting`], [`restores_targeting`],
//! [`configurations_sharing`]) are scans of a store (the kopiur `watch.rs` shape). A referent
//! by name is a store lookup ([`get_or_fetch`]: a GET only when the store does not have it
//! yet).
use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, RwLock},
};

use futures::{SinkExt, Stream, StreamExt, channel::mpsc, stream::BoxStream};
use k8s_openapi::api::{batch::v1::Job, core::v1::Namespace, rbac::v1::Role};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use stash_crds::{BackupConfiguration, BackupSession, Repository, RestoreSession, consts};

use crate::history::{self, History, SessionFacts};
use stash_core::target::WorkloadKind;

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

/// [`strip`], and a Job's pod template: a Job is read for its state (status, labels, owner).
pub fn strip_job(job: &mut Job) {
    strip(job);
    if let Some(spec) = job.spec.as_mut() {
        spec.template = Default::default();
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
    /// Every BackupSession not finished yet.
    pub sessions: Store<BackupSession>,
    /// The BackupSessions of each configuration ([`sessions_of`]).
    pub sessions_by_configuration: Index<BackupSession>,
    /// The finished BackupSessions (which are not in [`Stores::sessions`]), as facts.
    pub history: Arc<Mutex<History>>,
    /// Every RestoreSession.
    pub restores: Store<RestoreSession>,
    /// Every Repository.
    pub repositories: Store<Repository>,
    /// The Jobs stash-rs created (label `app.kubernetes.io/managed-by=stash.appscode.com`),
    /// without their pod template ([`strip_job`]): their state is what is read.
    pub jobs: Store<Job>,
    /// Every Namespace (their labels say which PodSecurity level they enforce).
    pub namespaces: Store<Namespace>,
    /// The agents' Roles stash-rs wrote (label `app.kubernetes.io/managed-by`): which sessions
    /// a sidecar may report to is read here ([`role_names_session`]).
    pub roles: Store<Role>,
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
    pub async fn ready(&self) -> Result<(), Stopped> {
        for listed in &self.listed {
            let mut listed = listed.clone();
            listed.wait_for(|l| *l).await.map_err(|_| Stopped)?;
        }
        Ok(())
    }
}

/// The shared watches stopped before every store was listed.
#[derive(Debug, thiserror::Error)]
#[error("the shared watches stopped")]
pub struct Stopped;

/// The feeding side of the shared watches: [`Feeds::run`] them, and subscribe to their changes
/// (before or after they start).
#[derive(Clone)]
pub struct Feeds {
    /// BackupConfigurations.
    pub configurations: Feed<BackupConfiguration>,
    /// BackupSessions.
    pub sessions: Feed<BackupSession>,
    /// RestoreSessions.
    pub restores: Feed<RestoreSession>,
    /// Repositories.
    pub repositories: Feed<Repository>,
    /// stash-rs's Jobs.
    pub jobs: Feed<Job>,
    /// Namespaces.
    pub namespaces: Feed<Namespace>,
    /// stash-rs's Roles.
    pub roles: Feed<Role>,
}

/// The stores and their (not yet started) feeds.
pub fn new() -> (Stores, Feeds) {
    let history = Arc::<Mutex<History>>::default();
    let feeds = Feeds {
        configurations: Feed::default(),
        sessions: Feed::default()
            .indexed(Index::new(configuration_of))
            .with_history(history.clone(), history::finished, SessionFacts::of),
        restores: Feed::default(),
        repositories: Feed::default(),
        jobs: Feed::default(),
        namespaces: Feed::default(),
        roles: Feed::default(),
    };
    let stores = Stores {
        configurations: feeds.configurations.reader(),
        sessions: feeds.sessions.reader(),
        sessions_by_configuration: feeds
            .sessions
            .index
            .clone()
            .expect("the sessions feed is indexed"),
        history,
        restores: feeds.restores.reader(),
        repositories: feeds.repositories.reader(),
        jobs: feeds.jobs.reader(),
        namespaces: feeds.namespaces.reader(),
        roles: feeds.roles.reader(),
        listed: vec![
            feeds.configurations.listed(),
            feeds.sessions.listed(),
            feeds.restores.listed(),
            feeds.repositories.listed(),
            feeds.jobs.listed(),
            feeds.namespaces.listed(),
            feeds.roles.listed(),
        ],
    };
    (stores, feeds)
}

// === impl Feeds ===

impl Feeds {
    /// Run the seven watches (cluster-wide) until the process ends.
    pub async fn run(&self, client: Client) {
        let all = watcher::Config::default;
        let ours = format!("{}={}", consts::MANAGED_BY_LABEL, consts::MANAGED_BY_STASH);
        tokio::join!(
            self.configurations
                .clone()
                .run(Api::all(client.clone()), all(), strip),
            self.sessions
                .clone()
                .run(Api::all(client.clone()), all(), strip),
            self.restores
                .clone()
                .run(Api::all(client.clone()), all(), strip),
            self.repositories
                .clone()
                .run(Api::all(client.clone()), all(), strip),
            self.jobs
                .clone()
                .run(Api::all(client.clone()), all().labels(&ours), strip_job),
            self.namespaces
                .clone()
                .run(Api::all(client.clone()), all(), strip),
            self.roles
                .clone()
                .run(Api::all(client), all().labels(&ours), strip),
        );
    }
}

/// One kind's watch, its store and its subscribers. Clones share them.
pub struct Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// Only [`Feed::step`] writes, one event at a time (never held across an await).
    writer: Arc<Mutex<Writer<K>>>,
    reader: Store<K>,
    subscribers: Arc<Mutex<Vec<mpsc::Sender<Change<K>>>>>,
    listed: Arc<tokio::sync::watch::Sender<bool>>,
    index: Option<Index<K>>,
    past: Option<Past<K>>,
}

/// Which objects a feed does not keep in its store (finished ones), and the history that
/// records them instead.
#[derive(Clone)]
struct Past<K> {
    finished: fn(&K) -> bool,
    facts: fn(&K) -> Option<SessionFacts>,
    history: Arc<Mutex<History>>,
}

impl<K: Resource> Past<K> {
    /// Record `event` in the history (every object: one that was finished and is deleted, or
    /// one that changed, leaves it).
    fn record(&self, event: &watcher::Event<K>) {
        let mut history = locked(&self.history);
        match event {
            watcher::Event::Init => history.reset([]),
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                if let Some(facts) = (self.facts)(o) {
                    history.apply(facts);
                }
            }
            watcher::Event::Delete(o) => {
                if let Some(f) = (self.facts)(o) {
                    history.delete(&f.namespace, &f.config, &f.name);
                }
            }
            watcher::Event::InitDone => {}
        }
    }
}

impl<K> Clone for Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn clone(&self) -> Self {
        Self {
            writer: self.writer.clone(),
            reader: self.reader.clone(),
            subscribers: self.subscribers.clone(),
            listed: self.listed.clone(),
            index: self.index.clone(),
            past: self.past.clone(),
        }
    }
}

impl<K> Default for Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn default() -> Self {
        let writer = Writer::default();
        Self {
            reader: writer.as_reader(),
            writer: Arc::new(Mutex::new(writer)),
            subscribers: Arc::default(),
            listed: Arc::new(tokio::sync::watch::Sender::new(false)),
            index: None,
            past: None,
        }
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    /// Keep `index` beside the store.
    fn indexed(mut self, index: Index<K>) -> Self {
        self.index = Some(index);
        self
    }

    /// Keep the objects `finished` says are in `history` (as their `facts`), not in the store.
    fn with_history(
        mut self,
        history: Arc<Mutex<History>>,
        finished: fn(&K) -> bool,
        facts: fn(&K) -> Option<SessionFacts>,
    ) -> Self {
        self.past = Some(Past {
            finished,
            facts,
            history,
        });
        self
    }

    /// Whether `obj` is one this feed's store does not keep.
    fn finished(&self, obj: &K) -> bool {
        self.past.as_ref().is_some_and(|p| (p.finished)(obj))
    }

    /// A reader of the store this feed fills.
    pub fn reader(&self) -> Store<K> {
        self.reader.clone()
    }

    /// Whether the store has been listed once (true from then on).
    pub fn listed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.listed.subscribe()
    }

    /// Every change, as it is applied to the store. A subscription taken once the store has
    /// been listed starts with [`Change::Listed`] of what it holds (the controllers of a new
    /// leader subscribe to watches that have run since the process started).
    pub fn changes(&mut self) -> impl Stream<Item = Change<K>> + Send + 'static + use<K> {
        let (mut tx, rx) = mpsc::channel(BUFFER);
        // Under the subscribers' lock: [`Feed::step`] applies a change to the store before it
        // takes the list of subscribers, so a change is either in this snapshot or sent to
        // this subscriber (or both, which a reconcile does not mind).
        let mut subscribers = locked(&self.subscribers);
        if *self.listed.borrow() {
            let all: Arc<[Arc<K>]> = self.reader.state().into();
            tx.try_send(Change::Listed(all))
                .expect("a new channel has room for one change");
        }
        subscribers.push(tx);
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
    #[cfg(any(test, feature = "test-support"))]
    pub fn seed(&mut self, objects: impl IntoIterator<Item = K>) {
        let mut writer = locked(&self.writer);
        let list = std::iter::once(watcher::Event::Init).chain(objects.into_iter().map(|mut o| {
            strip(&mut o);
            watcher::Event::InitApply(o)
        }));
        for event in list {
            if let Some((event, _)) = self.route(event) {
                writer.apply_watcher_event(&event);
            }
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        if let Some(index) = &self.index {
            index.rebuild(&self.reader.state());
        }
        self.listed.send_replace(true);
    }

    /// Watch `api` (`config`), keep the store (objects trimmed by `trim`), and hand every
    /// change to every subscriber (waiting for each: backpressure), until the watch ends.
    pub async fn run(self, api: Api<K>, config: watcher::Config, trim: fn(&mut K)) {
        let mut events = watcher(api, config).default_backoff().modify(trim).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(e) => self.step(e).await,
                Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "shared watch"),
            }
        }
    }

    /// Record `event` in the history, if this feed keeps one, and say what the store takes of
    /// it: nothing for a finished object in a list, a Delete (`true`: a finished object
    /// leaves the store) for one that has just finished, else the event as it is.
    fn route(&self, event: watcher::Event<K>) -> Option<(watcher::Event<K>, bool)> {
        if let Some(past) = &self.past {
            past.record(&event);
        }
        match event {
            watcher::Event::InitApply(o) if self.finished(&o) => None,
            watcher::Event::Apply(o) if self.finished(&o) => {
                Some((watcher::Event::Delete(o), true))
            }
            e => Some((e, false)),
        }
    }

    /// Apply one watch event to the store, then hand the change to every subscriber.
    async fn step(&self, event: watcher::Event<K>) {
        let reader = &self.reader;
        let Some((event, finished)) = self.route(event) else {
            return;
        };
        {
            let mut writer = locked(&self.writer);
            if let Some(index) = &self.index {
                // What the store holds now leaves the index before the store changes.
                if let watcher::Event::Apply(o) | watcher::Event::Delete(o) = &event
                    && let Some(old) = reader.get(&ObjectRef::from_obj(o))
                {
                    index.remove(&old);
                }
            }
            writer.apply_watcher_event(&event);
            if let Some(index) = &self.index {
                match &event {
                    watcher::Event::Apply(o) => index.insert(o),
                    watcher::Event::InitDone => index.rebuild(&reader.state()),
                    _ => {}
                }
            }
        }
        if matches!(event, watcher::Event::InitDone) {
            self.listed.send_replace(true);
        }
        let change = match event {
            watcher::Event::Apply(o) => reader.get(&ObjectRef::from_obj(&o)).map(Change::Applied),
            watcher::Event::Delete(o) if finished => Some(Change::Applied(Arc::new(o))),
            watcher::Event::Delete(o) => Some(Change::Deleted(Arc::new(o))),
            watcher::Event::InitDone => Some(Change::Listed(reader.state().into())),
            watcher::Event::Init | watcher::Event::InitApply(_) => None,
        };
        let Some(change) = change else { return };
        let mut subscribers = locked(&self.subscribers).clone();
        let mut gone = false;
        for s in &mut subscribers {
            gone |= s.send(change.clone()).await.is_err();
        }
        if gone {
            locked(&self.subscribers).retain(|s| !s.is_closed());
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
            bc.namespace().as_deref() == Some(ns) && stash_core::inject::selects(bc, kind, name)
        })
        .collect();
    found.sort_by_key(|bc| bc.name_any());
    found
}

/// The RestoreSessions of namespace `ns` that target workload `kind`/`name` (deleted ones
/// included: [`stash_core::inject::applicable_restore`] decides).
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

/// The RestoreSession whose init-container workload `kind`/`name` of `ns` gets
/// ([`stash_core::inject::applicable_restore`] over [`restores_targeting`]): what the webhook
/// and the workload controller both inject.
pub fn restore_for(
    store: &Store<RestoreSession>,
    kind: WorkloadKind,
    ns: &str,
    name: &str,
) -> Option<RestoreSession> {
    let sessions = restores_targeting(store, kind, ns, name);
    stash_core::inject::applicable_restore(kind, name, &sessions).cloned()
}

/// The unfinished sessions of configuration `bc` in `ns`, from the index. The store applies
/// the watch's events in order, so every session created before one being reconciled is in
/// it (unless it has finished).
pub fn sessions_of(stores: &Stores, ns: &str, bc: &str) -> Vec<Arc<BackupSession>> {
    stores
        .sessions_by_configuration
        .lookup(&stores.sessions, ns, bc)
}

/// The sessions a sidecar may report to, as its Role names them: the configuration's
/// unfinished ones (new, Pending, Running: a session is named from its creation, so the Role
/// names it before the BackupSession controller starts it) and its newest finished one (the
/// agents record the follow-up steps' conditions after the session ended). One rule for the
/// Role's only writer, the workload controller.
pub fn sidecar_sessions(stores: &Stores, ns: &str, bc: &str) -> Vec<String> {
    // The store holds only unfinished sessions; the history the finished ones.
    let mut names: Vec<String> = sessions_of(stores, ns, bc)
        .iter()
        .map(|s| s.name_any())
        .collect();
    let newest = stores.history.lock().expect("history lock").newest(ns, bc);
    names.extend(newest);
    names.sort();
    names.dedup();
    names
}

/// Whether Role `role` in `ns`, as the store holds it, lets its agent write the status of
/// BackupSession `session` (`None`: no such Role of stash-rs's).
pub fn role_names_session(stores: &Stores, ns: &str, role: &str, session: &str) -> Option<bool> {
    let role = get(&stores.roles, ns, role)?;
    Some(sessions_named(&role).any(|s| s == session))
}

/// The BackupSessions whose status Role `role` lets its agent write.
pub fn sessions_named(role: &Role) -> impl Iterator<Item = &str> {
    role.rules
        .iter()
        .flatten()
        .filter(|r| {
            r.resources
                .iter()
                .flatten()
                .any(|res| res == "backupsessions/status")
        })
        .flat_map(|r| r.resource_names.iter().flatten())
        .map(String::as_str)
}

/// The key of a BackupSession in [`Stores::sessions_by_configuration`]: the configuration it
/// runs (`spec`, as the history and the machine read it; the label is only a convention).
fn configuration_of(bs: &BackupSession) -> Option<String> {
    Some(bs.spec.backup_configuration.as_ref()?.name.clone())
}

/// (namespace, key) → names.
type IndexMap = HashMap<(String, String), BTreeSet<String>>;

/// Objects of one namespace grouped by a key of theirs (a referent's name), kept by the feed
/// beside the store: a lookup costs the objects found, not the objects stored.
pub struct Index<K> {
    key: fn(&K) -> Option<String>,
    map: Arc<RwLock<IndexMap>>,
}

impl<K> Clone for Index<K> {
    fn clone(&self) -> Self {
        Self {
            key: self.key,
            map: self.map.clone(),
        }
    }
}

// === impl Index ===

impl<K> Index<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn new(key: fn(&K) -> Option<String>) -> Self {
        Self {
            key,
            map: Arc::default(),
        }
    }

    fn entry(&self, obj: &K) -> Option<((String, String), String)> {
        Some(((obj.namespace()?, (self.key)(obj)?), obj.name_any()))
    }

    fn insert(&self, obj: &K) {
        if let Some((k, name)) = self.entry(obj) {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            map.entry(k).or_default().insert(name);
        }
    }

    fn remove(&self, obj: &K) {
        if let Some((k, name)) = self.entry(obj) {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            if let Some(names) = map.get_mut(&k) {
                names.remove(&name);
                if names.is_empty() {
                    map.remove(&k);
                }
            }
        }
    }

    fn rebuild(&self, all: &[Arc<K>]) {
        let mut fresh = IndexMap::new();
        for o in all {
            if let Some((k, name)) = self.entry(o) {
                fresh.entry(k).or_default().insert(name);
            }
        }
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    /// The objects of `store` in `ns` whose key is `key`, by name.
    pub fn lookup(&self, store: &Store<K>, ns: &str, key: &str) -> Vec<Arc<K>> {
        let names: Vec<String> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_string(), key.to_string()))
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        names
            .iter()
            .filter_map(|n| get(store, ns, n))
            .filter(|o| (self.key)(o).as_deref() == Some(key))
            .collect()
    }
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

/// The owner of kind `O` of `obj` (a Job's session), to reconcile when `obj` changes.
pub fn owner<O, K>(obj: Arc<K>) -> Option<ObjectRef<O>>
where
    O: Resource<DynamicType = ()>,
    K: Resource,
{
    let kind = O::kind(&());
    let o = obj.owner_references().iter().find(|o| o.kind == kind)?;
    Some(ObjectRef::new(&o.name).within(&obj.namespace()?))
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

/// The PodSecurity level namespace `ns` enforces ([`stash_core::identity::Level`]), from the
/// shared store (a namespace not in it enforces none).
pub fn pod_security_level(store: &Store<Namespace>, ns: &str) -> stash_core::identity::Level {
    let namespace = store.get(&ObjectRef::new(ns));
    stash_core::identity::Level::of(namespace.as_ref().and_then(|n| n.metadata.labels.as_ref()))
}

/// [`pod_security_level`] read straight from the API server, for admission: a namespace
/// labelled a moment ago must not be judged by a watch that has not caught up yet.
pub async fn pod_security_level_now(
    client: &Client,
    ns: &str,
) -> Result<stash_core::identity::Level, kube::Error> {
    let labels = Api::<Namespace>::all(client.clone())
        .get_metadata_opt(ns)
        .await?
        .and_then(|n| n.metadata.labels);
    Ok(stash_core::identity::Level::of(labels.as_ref()))
}

/// The pod template's spec of workload `kind`/`name`, straight from the API server.
pub async fn workload_pod(
    client: &Client,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
) -> Result<Option<k8s_openapi::api::core::v1::PodSpec>, kube::Error> {
    let (group, version) = kind
        .api_version()
        .rsplit_once('/')
        .unwrap_or(("", kind.api_version()));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind.kind());
    let ar = kube::api::ApiResource::from_gvk(&gvk);
    Ok(
        Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &ar)
            .get_opt(name)
            .await?
            .and_then(|w| w.data.pointer("/spec/template/spec").cloned())
            .and_then(|p| serde_json::from_value(p).ok()),
    )
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
        feeds.jobs.seed([]);
        feeds.namespaces.seed([]);
        feeds.roles.seed([]);
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
        feeds.jobs.seed([]);
        feeds.namespaces.seed([]);
        feeds.roles.seed([]);
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

    fn bs(name: &str, ns: &str, config: &str) -> BackupSession {
        serde_json::from_value(json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {consts::BACKUP_CONFIGURATION_LABEL: config}},
            "spec": {"backupConfiguration": {"name": config}},
        }))
        .expect("bs")
    }

    fn names(found: Vec<Arc<BackupSession>>) -> Vec<String> {
        found.iter().map(|o| o.name_any()).collect()
    }

    #[tokio::test]
    async fn a_subscription_taken_after_the_list_starts_with_everything_stored() {
        // The watches run from the start on every replica; a new leader's controllers
        // subscribe later and must see every object, then every change.
        let mut feed = Feed::<BackupConfiguration>::default();
        let mut early = feed.changes();
        feed.seed([bc("a", "n", "app", false)]);
        feed.step(watcher::Event::Apply(bc("b", "n", "app", false)))
            .await;
        let mut late = feed.changes();
        let Some(Change::Listed(all)) = late.next().await else {
            panic!("a late subscription starts with the stored objects");
        };
        let mut names: Vec<String> = all.iter().map(|o| o.name_any()).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        feed.step(watcher::Event::Apply(bc("c", "n", "app", false)))
            .await;
        let Some(Change::Applied(c)) = late.next().await else {
            panic!("then the changes");
        };
        assert_eq!(c.name_any(), "c");
        // The early one saw the same, in its own order; a dropped one is forgotten.
        assert!(matches!(early.next().await, Some(Change::Applied(b)) if b.name_any() == "b"));
        drop(early);
        drop(late);
        feed.step(watcher::Event::Apply(bc("d", "n", "app", false)))
            .await;
        assert_eq!(locked(&feed.subscribers).len(), 0);
    }

    #[tokio::test]
    async fn the_sessions_of_a_configuration_follow_the_watch() {
        let (stores, mut feeds) = new();
        feeds.sessions.seed([
            bs("a-1", "n", "a"),
            bs("b-1", "n", "b"),
            bs("a-1", "m", "a"),
        ]);
        assert_eq!(names(sessions_of(&stores, "n", "a")), ["a-1"]);
        let feed = &mut feeds.sessions;
        feed.step(watcher::Event::Apply(bs("a-2", "n", "a"))).await;
        feed.step(watcher::Event::Apply(bs("a-0", "n", "a"))).await;
        assert_eq!(names(sessions_of(&stores, "n", "a")), ["a-0", "a-1", "a-2"]);
        feed.step(watcher::Event::Delete(bs("a-1", "n", "a"))).await;
        assert_eq!(names(sessions_of(&stores, "n", "a")), ["a-0", "a-2"]);
        assert_eq!(names(sessions_of(&stores, "m", "a")), ["a-1"]);
        // A relist replaces the index with what the store now holds.
        feed.step(watcher::Event::Init).await;
        feed.step(watcher::Event::InitApply(bs("b-9", "n", "b")))
            .await;
        assert_eq!(
            names(sessions_of(&stores, "n", "a")),
            ["a-0", "a-2"],
            "before InitDone"
        );
        feed.step(watcher::Event::InitDone).await;
        assert_eq!(names(sessions_of(&stores, "n", "a")), Vec::<String>::new());
        assert_eq!(names(sessions_of(&stores, "n", "b")), ["b-9"]);
    }

    #[test]
    fn a_finished_session_is_history_not_an_object_in_the_store() {
        let (stores, mut feeds) = new();
        let session = |name: &str, phase: &str| {
            let mut o = serde_json::to_value(bs(name, "n", "a")).expect("json");
            o["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            o["status"] = json!({"phase": phase});
            serde_json::from_value::<BackupSession>(o).expect("bs")
        };
        feeds
            .sessions
            .seed([session("a-1", "Succeeded"), session("a-2", "Running")]);
        let names = |v: Vec<Arc<BackupSession>>| v.iter().map(|s| s.name_any()).collect::<Vec<_>>();
        assert_eq!(names(stores.sessions.state()), ["a-2"]);
        assert_eq!(names(sessions_of(&stores, "n", "a")), ["a-2"]);
        let mut history = stores.history.lock().expect("history");
        assert_eq!(history.len(), 1);
        history.set_limit("n", "a", Some(0));
        assert_eq!(history.excess("n", "a"), ["a-1"]);
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
