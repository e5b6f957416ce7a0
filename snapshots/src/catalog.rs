//! The snapshot catalog: every Repository's restic snapshots, read when asked and kept for the
//! next request, so that most Snapshot lists never run restic on the request path (issue 12).
//!
//! * Repositories are read from the operator's shared store, whose changes the catalog follows
//!   ([`stash_index::stores`]: one Repository watch per process); Namespaces are mirrored by
//!   a reflector of their own; nothing else is watched.
//! * Entries are keyed by the Repository's UID: a Repository deleted and created again under
//!   the same name never answers with the old one's list.
//! * Nothing is read on a timer. A request reads a repository this replica never read, or
//!   whose entry is stale: older than [`CatalogOptions::refresh`], read for another generation,
//!   [`Catalog::invalidate`]d, or read before the Repository's last backup
//!   (`status.lastBackupTime`) or last snapshot deletion ([`SNAPSHOTS_CHANGED_ANNOTATION`]).
//!   A backup's completion (that status change) also re-reads, in the background, a
//!   repository this replica has already been asked for; an idle replica runs no restic.
//! * At most [`CatalogOptions::concurrency`] restic runs at a time, requests and background
//!   together; refreshes of one repository are serialised, and a refresh that finished after
//!   the request began is reused.
//! * A repository that cannot be read (wrong password, unreachable, missing Secret) is an
//!   error ([`FetchError`]), never an empty list; a backend without a restic repository yet
//!   lists no snapshots.
//!
//! Backends: everything restic reaches over the network, plus `local` backends: with
//! [`CatalogOptions::reader_image`] (the operator) through a short-lived Pod that mounts the
//! backend's volume ([`super::reader`]); without it, a `hostPath` volume is read on the host
//! the catalog runs on (tests, benchmarks) and other local volumes list no snapshots (one log
//! line says why). Credentials come from the storage Secret, are written to a private temp dir
//! only for the duration of one restic run and never appear in logs.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use stash_crds::{BackendKind, Repository};
use stash_restic as restic;
use tokio::sync::{Notify, Semaphore};

use stash_index::stores::Change;

/// Set on a Repository when a snapshot was deleted through the Snapshot API (the time).
pub const SNAPSHOTS_CHANGED_ANNOTATION: &str = "stash.appscode.com/snapshots-changed-at";

/// `(namespace, repository name)`.
pub type Key = (String, String);

/// What the catalog knows about one repository.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The snapshots, oldest first (restic's order); empty when the read failed.
    pub snapshots: Arc<Vec<restic::Snapshot>>,
    /// When they were read.
    pub fetched_at: Instant,
    /// The Repository generation they were read for.
    pub generation: Option<i64>,
    /// The Repository's last backup and last snapshot deletion when they were read.
    pub changes: Changes,
    /// The read's error: the entry then answers with it, not with a list.
    pub error: Option<String>,
}

/// What, in a Repository, says its snapshots changed: `status.lastBackupTime` and the
/// [`SNAPSHOTS_CHANGED_ANNOTATION`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    last_backup: Option<String>,
    forgotten: Option<String>,
}

impl Changes {
    /// The markers of `repo`.
    pub fn of(repo: &Repository) -> Self {
        Self {
            last_backup: repo
                .status
                .as_ref()
                .and_then(|s| s.last_backup_time.as_ref())
                .map(|t| t.0.to_string()),
            forgotten: repo
                .annotations()
                .get(SNAPSHOTS_CHANGED_ANNOTATION)
                .cloned(),
        }
    }
}

/// Catalog settings.
#[derive(Clone, Debug)]
pub struct CatalogOptions {
    /// How old a repository's list may get before a request reads it again.
    pub refresh: Duration,
    /// At most this many restic runs at a time.
    pub concurrency: usize,
    /// The restic binary.
    pub restic: PathBuf,
    /// Where restic's temporary files and credential dirs go (default: the system temp dir).
    pub scratch_dir: Option<PathBuf>,
    /// Give up a restic run after this long.
    pub timeout: Duration,
    /// Read `local` backends through a short-lived Pod of this image ([`super::reader`])
    /// instead of the operator's own filesystem (the operator sets its `--image`).
    pub reader_image: Option<String>,
}

impl Default for CatalogOptions {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(30),
            concurrency: 4,
            restic: PathBuf::from("restic"),
            scratch_dir: None,
            timeout: Duration::from_secs(120),
            reader_image: None,
        }
    }
}

/// The Repository condition a Snapshot delete keeps ([`Catalog::delete_in_background`]).
pub const DELETION_CONDITION: &str = "SnapshotDeletion";

/// How long a delete's prune may run in a reader Pod (background work, not a request).
const FORGET_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The field manager of [`DELETION_CONDITION`].
const DELETION_MANAGER: &str = "stash-rs-snapshots";

/// The snapshot catalog (cheap to clone).
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field(
                "repositories",
                &self.inner.entries.read().map(|e| e.len()).unwrap_or(0),
            )
            .finish()
    }
}

struct Inner {
    client: Client,
    opts: CatalogOptions,
    repos: reflector::Store<Repository>,
    namespaces: reflector::Store<Namespace>,
    /// By Repository UID.
    entries: RwLock<HashMap<String, Entry>>,
    /// By Repository UID.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Invalidated repositories, by UID.
    dirty: Mutex<HashSet<String>>,
    restic_runs: Semaphore,
    unsupported_logged: Mutex<HashSet<Key>>,
    /// One Snapshot delete at a time per Repository, by UID ([`Catalog::delete_in_background`]).
    deletes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    wake: Notify,
    refreshes: std::sync::atomic::AtomicU64,
}

/// Why a repository could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The Repository is not in the cluster.
    #[error("repository not found")]
    NoRepository,
    /// restic or the Secret failed; the message names no secret.
    #[error("{0}")]
    Failed(String),
    /// The read did not finish within the request's budget; it goes on in the background
    /// and the next request finds its result.
    #[error("restic has not answered within {0:?}; the read goes on, ask again")]
    Slow(Duration),
}

/// The UID of `repo` (its name for an object that has none: tests).
fn uid_of(repo: &Repository) -> String {
    repo.uid().unwrap_or_else(|| {
        let (ns, name) = key_of(repo);
        format!("{ns}/{name}")
    })
}

impl Catalog {
    /// Start the Namespace reflector, the follower of `changes` (the Repositories of `repos`)
    /// and the background re-reader on the current runtime.
    /// Returns the catalog and the background tasks (abort them to stop).
    pub async fn start(
        client: Client,
        opts: CatalogOptions,
        repos: reflector::Store<Repository>,
        changes: impl Stream<Item = Change<Repository>> + Send + 'static,
    ) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let (namespaces, ns_writer) = reflector::store::<Namespace>();
        let permits = opts.concurrency.max(1);
        let catalog = Catalog {
            inner: Arc::new(Inner {
                client: client.clone(),
                opts,
                repos,
                namespaces,
                entries: RwLock::default(),
                locks: Mutex::default(),
                dirty: Mutex::default(),
                restic_runs: Semaphore::new(permits),
                unsupported_logged: Mutex::default(),
                deletes: Mutex::default(),
                wake: Notify::new(),
                refreshes: Default::default(),
            }),
        };
        let mut tasks = Vec::new();
        let c = catalog.clone();
        tasks.push(tokio::spawn(async move {
            let mut changes = std::pin::pin!(changes);
            while let Some(change) = changes.next().await {
                c.observe(change);
            }
        }));
        let ns_stream = reflector(
            ns_writer,
            watcher(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default().any_semantic(),
            ),
        )
        .default_backoff()
        .touched_objects();
        tasks.push(tokio::spawn(async move {
            let mut s = std::pin::pin!(ns_stream);
            while let Some(r) = s.next().await {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "snapshots: Namespace watch");
                }
            }
        }));
        tasks.push(tokio::spawn(catalog.clone().rereader()));
        // Answer nothing before the first Namespace list arrived (the Repositories' store is
        // listed before the operator is Ready).
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            catalog.inner.namespaces.wait_until_ready(),
        )
        .await;
        (catalog, tasks)
    }

    /// A Repository change: forget deleted repositories; a backup or deletion in one this
    /// replica holds marks it for a background re-read.
    fn observe(&self, change: Change<Repository>) {
        match change {
            Change::Applied(repo) => self.observe_applied(&repo),
            Change::Deleted(repo) => {
                let uid = uid_of(&repo);
                self.inner
                    .entries
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&uid);
                self.inner
                    .locks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&uid);
            }
            Change::Listed(all) => {
                let live: HashSet<String> = all.iter().map(|r| uid_of(r)).collect();
                self.inner
                    .entries
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|k, _| live.contains(k));
                for repo in all.iter() {
                    self.observe_applied(repo);
                }
            }
        }
    }

    fn observe_applied(&self, repo: &Repository) {
        let uid = uid_of(repo);
        let changed = self
            .inner
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .is_some_and(|e| e.changes != Changes::of(repo));
        if changed {
            self.mark_dirty(uid);
        }
    }

    fn mark_dirty(&self, uid: String) {
        self.inner
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid);
        self.inner.wake.notify_one();
    }

    fn is_dirty(&self, uid: &str) -> bool {
        self.inner
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(uid)
    }

    /// Mark a repository's list stale: the next request reads it again (and, if this replica
    /// holds it, the background re-reads it soon).
    pub fn invalidate(&self, namespace: &str, repository: &str) {
        let key = reflector::ObjectRef::<Repository>::new(repository).within(namespace);
        if let Some(r) = self.inner.repos.get(&key) {
            self.mark_dirty(uid_of(&r));
        }
    }

    /// The cached entry of `repo` (this very object: a recreated Repository has none).
    pub fn entry(&self, repo: &Repository) -> Option<Entry> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid_of(repo))
            .cloned()
    }

    /// How many restic runs the catalog has made (for tests and metrics).
    pub fn refreshes(&self) -> u64 {
        self.inner
            .refreshes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The Repositories known (from the reflector), in `namespace` or everywhere.
    pub fn repositories(&self, namespace: Option<&str>) -> Vec<Arc<Repository>> {
        let mut out: Vec<_> = self
            .inner
            .repos
            .state()
            .into_iter()
            .filter(|r| namespace.is_none_or(|ns| r.namespace().as_deref() == Some(ns)))
            .collect();
        out.sort_by_key(|a| (a.namespace(), a.name_any()));
        out
    }

    /// One Repository: from the reflector, else from the API server (a just-created one).
    pub async fn repository(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Repository>>, kube::Error> {
        let key = reflector::ObjectRef::<Repository>::new(name).within(namespace);
        if let Some(r) = self.inner.repos.get(&key) {
            return Ok(Some(r));
        }
        Ok(
            Api::<Repository>::namespaced(self.inner.client.clone(), namespace)
                .get_opt(name)
                .await?
                .map(Arc::new),
        )
    }

    /// Is `namespace` being deleted? Its snapshots are then hidden, so that the namespace
    /// controller never deletes (forgets) them: the backend outlives the namespace.
    pub fn terminating(&self, namespace: &str) -> bool {
        let key = reflector::ObjectRef::<Namespace>::new(namespace);
        self.inner
            .namespaces
            .get(&key)
            .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
    }

    /// [`Catalog::terminating`] asked of the API server (authoritative; for deletes).
    pub async fn terminating_now(&self, namespace: &str) -> bool {
        match Api::<Namespace>::all(self.inner.client.clone())
            .get_opt(namespace)
            .await
        {
            Ok(n) => n.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
            Err(_) => self.terminating(namespace),
        }
    }

    /// Whether `e`, read for `repo`, may still answer for it.
    fn fresh(&self, repo: &Repository, e: &Entry) -> bool {
        e.generation == repo.metadata.generation
            && e.changes == Changes::of(repo)
            && e.fetched_at.elapsed() < self.inner.opts.refresh
            && !self.is_dirty(&uid_of(repo))
    }

    /// The snapshots of `repo`, reading them first unless a fresh entry holds them.
    pub async fn snapshots(
        &self,
        repo: &Repository,
    ) -> Result<Arc<Vec<restic::Snapshot>>, FetchError> {
        match self.entry(repo).filter(|e| self.fresh(repo, e)) {
            Some(e) => answer(e),
            None => {
                let _ = self.refresh(repo, Instant::now()).await;
                self.entry(repo).map_or_else(|| Ok(Arc::default()), answer)
            }
        }
    }

    /// [`Catalog::snapshots`] within `budget`: a slower read goes on in the background (its
    /// result is kept) and this answers [`FetchError::Slow`]. A request never waits for a
    /// backend that hangs longer than the API server waits for us.
    pub async fn snapshots_within(
        &self,
        repo: Arc<Repository>,
        budget: Duration,
    ) -> Result<Arc<Vec<restic::Snapshot>>, FetchError> {
        let this = self.clone();
        let read = tokio::spawn(async move { this.snapshots(&repo).await });
        match tokio::time::timeout(budget, read).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(FetchError::Failed(format!("the read stopped: {e}"))),
            Err(_) => Err(FetchError::Slow(budget)),
        }
    }

    /// What the catalog holds for `repo` without reading it; `None` when it was never read.
    pub fn cached(
        &self,
        repo: &Repository,
    ) -> Option<Result<Arc<Vec<restic::Snapshot>>, FetchError>> {
        self.entry(repo).map(answer)
    }

    /// Read `repo`'s snapshots now, unless another refresh finished after `since`.
    pub async fn refresh(&self, repo: &Repository, since: Instant) -> Result<(), FetchError> {
        let key = key_of(repo);
        let uid = uid_of(repo);
        let lock = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(uid.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if let Some(e) = self.entry(repo)
            && e.fetched_at >= since
            && e.generation == repo.metadata.generation
        {
            return e.error.map_or(Ok(()), |m| Err(FetchError::Failed(m)));
        }
        self.inner
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
        let changes = Changes::of(repo);
        let started = Instant::now();
        let result = {
            let _permit = self
                .inner
                .restic_runs
                .acquire()
                .await
                .map_err(|e| FetchError::Failed(e.to_string()))?;
            self.fetch(repo).await
        };
        self.inner
            .refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (snapshots, error) = match result {
            Ok(s) => (Arc::new(s), None),
            Err(e) => {
                tracing::warn!(namespace = %key.0, repository = %key.1, error = %e, "snapshots: reading the repository failed");
                (Arc::default(), Some(e.to_string()))
            }
        };
        tracing::debug!(namespace = %key.0, repository = %key.1, count = snapshots.len(), took = ?started.elapsed(), "snapshots: catalog refreshed");
        let err = error.clone();
        // A Repository deleted meanwhile keeps no entry.
        let live = self
            .inner
            .repos
            .get(&reflector::ObjectRef::<Repository>::new(&key.1).within(&key.0))
            .is_none_or(|r| uid_of(&r) == uid);
        if live {
            self.inner
                .entries
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    uid,
                    Entry {
                        snapshots,
                        fetched_at: started,
                        generation: repo.metadata.generation,
                        changes,
                        error,
                    },
                );
        }
        err.map_or(Ok(()), |m| Err(FetchError::Failed(m)))
    }

    /// `restic forget --prune <id>` on `repo`, then read it again.
    pub async fn forget(&self, repo: &Repository, id: &str) -> Result<(), FetchError> {
        let result = match &self.inner.opts.reader_image {
            Some(image) => super::reader::forget(
                &self.inner.client,
                repo,
                image,
                id,
                self.inner.opts.timeout.max(FORGET_TIMEOUT),
            )
            .await
            .map_err(FetchError::Failed),
            None => Ok(None),
        };
        let result = match result {
            Ok(Some(())) => Ok(()),
            Ok(None) => {
                let r = self.open(repo).await?.ok_or_else(|| {
                    FetchError::Failed("this backend is not supported by the Snapshot API".into())
                })?;
                r.forget_ids(&[id.to_owned()], true)
                    .await
                    .map_err(|e| FetchError::Failed(e.to_string()))
            }
            Err(e) => Err(e),
        };
        // Every replica keeps its own catalog: touching the Repository tells the others (an
        // entry read before the annotation's time is read again).
        let touched = if result.is_ok() {
            self.touch(repo).await
        } else {
            None
        };
        let _ = self
            .refresh(touched.as_ref().unwrap_or(repo), Instant::now())
            .await;
        result
    }

    /// Forget snapshot `id` of `repo` (`restic forget --prune`) as background work of the
    /// Repository: the request is answered at once, a prune may take longer than the API
    /// server waits for one (60 s), and a cancelled request never stops a restic that holds
    /// the repository's lock; the handle says how it ended. One delete at a time per Repository, in order; its progress and
    /// outcome are the Repository's condition [`DELETION_CONDITION`] (`True` while one runs,
    /// then `False` with reason `Deleted` or `DeleteFailed` and restic's words). The snapshot
    /// leaves the list when it is forgotten (what `kubectl delete` waits for).
    pub fn delete_in_background(
        &self,
        repo: Repository,
        id: String,
    ) -> tokio::task::JoinHandle<Result<(), FetchError>> {
        let this = self.clone();
        let short: String = id.chars().take(8).collect();
        let turn = {
            let mut deletes = self.inner.deletes.lock().unwrap_or_else(|e| e.into_inner());
            deletes
                .entry(repo.uid().unwrap_or_default())
                .or_default()
                .clone()
        };
        tokio::spawn(async move {
            let (ns, name) = key_of(&repo);
            let _turn = turn.lock().await;
            this.deletion_condition(
                &repo,
                "True",
                "Deleting",
                format!("forgetting snapshot {short} (restic forget --prune)"),
            )
            .await;
            let result = this.forget(&repo, &id).await;
            let (status, reason, message) = match &result {
                Ok(()) => {
                    tracing::info!(namespace = %ns, repository = %name, snapshot = %short, "snapshots: forgot snapshot (restic forget --prune)");
                    ("False", "Deleted", format!("forgot snapshot {short}"))
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, repository = %name, snapshot = %short, error = %e, "snapshots: a delete failed");
                    (
                        "False",
                        "DeleteFailed",
                        format!("forgetting snapshot {short} failed: {e}"),
                    )
                }
            };
            this.deletion_condition(&repo, status, reason, message)
                .await;
            result
        })
    }

    /// Apply the Repository's [`DELETION_CONDITION`] (its own field manager; a failure is
    /// logged: the condition is information, the snapshot list is the truth).
    async fn deletion_condition(
        &self,
        repo: &Repository,
        status: &str,
        reason: &str,
        message: String,
    ) {
        let (ns, name) = key_of(repo);
        let patch = serde_json::json!({
            "apiVersion": <Repository as kube::Resource>::api_version(&()),
            "kind": "Repository",
            "metadata": {"name": name},
            "status": {"conditions": [{
                "type": DELETION_CONDITION, "status": status, "reason": reason,
                "message": message, "lastTransitionTime": jiff::Timestamp::now().to_string(),
            }]},
        });
        if let Err(e) = Api::<Repository>::namespaced(self.inner.client.clone(), &ns)
            .patch_status(
                &name,
                &kube::api::PatchParams::apply(DELETION_MANAGER).force(),
                &kube::api::Patch::Apply(&patch),
            )
            .await
        {
            tracing::warn!(namespace = %ns, repository = %name, error = %e, "snapshots: could not write the delete's condition");
        }
    }

    /// Annotate `repo` with the time its snapshots changed.
    async fn touch(&self, repo: &Repository) -> Option<Repository> {
        let (ns, name) = key_of(repo);
        let patch = serde_json::json!({"metadata": {"annotations": {SNAPSHOTS_CHANGED_ANNOTATION: jiff::Timestamp::now().to_string()}}});
        match Api::<Repository>::namespaced(self.inner.client.clone(), &ns)
            .patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(namespace = %ns, repository = %name, error = %e, "snapshots: could not mark the Repository changed");
                None
            }
        }
    }

    /// A restic handle for `repo` (`None`: a backend the operator cannot reach).
    async fn open(&self, repo: &Repository) -> Result<Option<restic::Repo>, FetchError> {
        let ns = repo.namespace().unwrap_or_default();
        let location = match location(repo) {
            Ok(Some(l)) => l,
            Ok(None) => {
                if self
                    .inner
                    .unsupported_logged
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key_of(repo))
                {
                    tracing::info!(namespace = %ns, repository = %repo.name_any(),
                        "snapshots: local backend without hostPath: the operator cannot read it, the Snapshot API lists no snapshots for it");
                }
                return Ok(None);
            }
            Err(e) => return Err(FetchError::Failed(e)),
        };
        let secret_name = repo
            .spec
            .backend
            .storage_secret_name
            .clone()
            .unwrap_or_default();
        if secret_name.is_empty() {
            return Err(FetchError::Failed(
                "spec.backend.storageSecretName is not set".into(),
            ));
        }
        let secret = Api::<Secret>::namespaced(self.inner.client.clone(), &ns)
            .get_opt(&secret_name)
            .await
            .map_err(|e| FetchError::Failed(format!("reading Secret {secret_name}: {e}")))?
            .ok_or_else(|| FetchError::Failed(format!("Secret {secret_name} not found")))?;
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (k, v) in secret.string_data.unwrap_or_default() {
            data.entry(k).or_insert_with(|| v.into_bytes());
        }
        let scratch = self
            .inner
            .opts
            .scratch_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let credentials = restic::Credentials::from_map_in(data, &scratch)
            .map_err(|e| FetchError::Failed(format!("Secret {secret_name}: {e}")))?;
        restic::Repo::builder(location, credentials)
            .binary(self.inner.opts.restic.clone())
            .scratch_dir(scratch)
            .cache(false)
            .timeout(Some(self.inner.opts.timeout))
            .build()
            .map(Some)
            .map_err(|e| FetchError::Failed(e.to_string()))
    }

    async fn fetch(&self, repo: &Repository) -> Result<Vec<restic::Snapshot>, FetchError> {
        if let Some(image) = &self.inner.opts.reader_image
            && let Some(list) =
                super::reader::snapshots(&self.inner.client, repo, image, self.inner.opts.timeout)
                    .await
                    .map_err(FetchError::Failed)?
        {
            return Ok(list);
        }
        let Some(r) = self.open(repo).await? else {
            return Ok(Vec::new());
        };
        match r
            .snapshots(&restic::SnapshotFilter {
                no_lock: true,
                ..Default::default()
            })
            .await
        {
            Ok(s) => Ok(s),
            // A backend without a restic repository yields an empty list (§8.1).
            Err(restic::Error::RepositoryNotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(FetchError::Failed(e.to_string())),
        }
    }

    /// Whether `repo` is read only when asked (a `local` backend read through a Pod: a Pod per
    /// repository per refresh interval would be a load of its own), not in the background.
    fn on_demand(&self, repo: &Repository) -> bool {
        self.inner.opts.reader_image.is_some()
            && matches!(repo.spec.backend.validate(), Ok(BackendKind::Local(_)))
    }

    /// The background: when woken, re-read the invalidated repositories this replica holds
    /// (a backup completed, a snapshot was deleted), bounded like every restic run.
    async fn rereader(self) {
        loop {
            self.inner.wake.notified().await;
            let dirty: Vec<String> = self
                .inner
                .dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            let held: Vec<Arc<Repository>> = {
                let entries = self.inner.entries.read().unwrap_or_else(|e| e.into_inner());
                self.inner
                    .repos
                    .state()
                    .into_iter()
                    .filter(|r| {
                        let uid = uid_of(r);
                        dirty.contains(&uid) && entries.contains_key(&uid)
                    })
                    .filter(|r| !self.on_demand(r))
                    .collect()
            };
            let now = Instant::now();
            futures::stream::iter(held)
                .for_each_concurrent(self.inner.opts.concurrency.max(1), |r| {
                    let this = self.clone();
                    async move {
                        let _ = this.refresh(&r, now).await;
                    }
                })
                .await;
        }
    }
}

/// An entry as an answer: its list, or its error.
fn answer(e: Entry) -> Result<Arc<Vec<restic::Snapshot>>, FetchError> {
    match e.error {
        Some(m) => Err(FetchError::Failed(m)),
        None => Ok(e.snapshots),
    }
}

/// `(namespace, name)` of a Repository.
pub fn key_of(repo: &Repository) -> Key {
    (repo.namespace().unwrap_or_default(), repo.name_any())
}

pub use stash_core::location::operator_location as location;

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(backend: serde_json::Value) -> Repository {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
            "metadata": {"name": "r", "namespace": "n"}, "spec": {"backend": backend}
        }))
        .unwrap()
    }

    #[test]
    fn host_path_backends_are_read_on_the_host() {
        let r = repo(serde_json::json!({"storageSecretName": "s",
            "local": {"mountPath": "/safe/data", "subPath": "a/b", "hostPath": {"path": "/var/backup"}}}));
        assert_eq!(
            location(&r).unwrap(),
            Some(restic::Location::local("/var/backup", "a/b"))
        );
        let r = repo(serde_json::json!({"storageSecretName": "s",
            "local": {"mountPath": "/safe/data", "persistentVolumeClaim": {"claimName": "c"}}}));
        assert_eq!(location(&r).unwrap(), None);
        let r = repo(
            serde_json::json!({"storageSecretName": "s", "s3": {"endpoint": "http://x", "bucket": "b"}}),
        );
        assert!(matches!(
            location(&r).unwrap(),
            Some(restic::Location::S3 { .. })
        ));
    }

    #[test]
    fn a_backup_or_a_deletion_changes_the_markers() {
        let mut r = repo(serde_json::json!({"storageSecretName": "s",
            "local": {"mountPath": "/safe/data", "hostPath": {"path": "/var/backup"}}}));
        let before = Changes::of(&r);
        r.status = Some(
            serde_json::from_value(serde_json::json!({"lastBackupTime": "2026-11-30T00:00:00Z"}))
                .unwrap(),
        );
        let backed_up = Changes::of(&r);
        assert_ne!(before, backed_up);
        r.metadata.annotations =
            Some([(SNAPSHOTS_CHANGED_ANNOTATION.to_string(), "t".to_string())].into());
        assert_ne!(backed_up, Changes::of(&r));
    }

    #[test]
    fn an_entry_with_an_error_answers_with_the_error() {
        let e = Entry {
            snapshots: Arc::default(),
            fetched_at: Instant::now(),
            generation: None,
            changes: Changes::default(),
            error: Some("wrong password".into()),
        };
        assert!(matches!(answer(e), Err(FetchError::Failed(m)) if m == "wrong password"));
    }
}
