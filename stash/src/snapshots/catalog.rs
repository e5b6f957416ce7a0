//! The snapshot catalog: every Repository's restic snapshots, kept fresh in the background so
//! that Snapshot lists never run restic on the request path.
//!
//! * Repositories (and Namespaces) are mirrored by kube reflectors.
//! * A refresher runs `restic snapshots --json --no-lock` (cache off) once per repository per
//!   refresh interval, at most four repositories at a time; at once for a repository that is
//!   new, whose spec changed, or that was [`Catalog::invalidate`]d.
//! * BackupSessions and RestoreSessions are watched: one reaching a terminal phase invalidates
//!   its repository.
//! * A request that finds a repository never fetched refreshes it first (refreshes of one
//!   repository are serialised, and a refresh that finished after the request began is reused).
//!
//! Backends: everything restic reaches over the network, plus `local` backends: with
//! [`CatalogOptions::reader_image`] (the operator) through a short-lived Pod that mounts the
//! backend's volume ([`super::reader`]); without it, a `hostPath` volume is read on the host
//! the catalog runs on (tests, benchmarks) and other local volumes list no snapshots (one log
//! line says why). A backend without a restic repository lists no snapshots; a repository
//! that fails to open (wrong password, unreachable) keeps its last good list and records the
//! error. Credentials come from the storage Secret, are written to a private temp dir only for
//! the duration of one restic run and never appear in logs.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use stash_crds::{BackendKind, BackupConfiguration, BackupSession, Repository, RestoreSession};
use stash_restic as restic;
use tokio::sync::Notify;

/// Set on a Repository when a snapshot was deleted through the Snapshot API (the time).
pub const SNAPSHOTS_CHANGED_ANNOTATION: &str = "stash.appscode.com/snapshots-changed-at";

/// `(namespace, repository name)`.
pub type Key = (String, String);

/// What the catalog knows about one repository.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The snapshots, oldest first (restic's order).
    pub snapshots: Arc<Vec<restic::Snapshot>>,
    /// When they were read.
    pub fetched_at: Instant,
    /// The Repository generation they were read for.
    pub generation: Option<i64>,
    /// The Repository's resourceVersion then (a Repository read on demand is read again once
    /// it changed: a backup's status, another replica's snapshot deletion).
    pub resource_version: Option<String>,
    /// The last refresh's error (the snapshots are then the last good ones).
    pub error: Option<String>,
}

/// Catalog settings.
#[derive(Clone, Debug)]
pub struct CatalogOptions {
    /// How old a repository's list may get before it is read again.
    pub refresh: Duration,
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
            restic: PathBuf::from("restic"),
            scratch_dir: None,
            timeout: Duration::from_secs(120),
            reader_image: None,
        }
    }
}

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
    entries: RwLock<HashMap<Key, Entry>>,
    locks: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    dirty: Mutex<HashSet<Key>>,
    unsupported_logged: Mutex<HashSet<Key>>,
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
}

impl Catalog {
    /// Start the reflectors, the session watchers and the refresher on the current runtime.
    /// Returns the catalog and the background tasks (abort them to stop).
    pub async fn start(
        client: Client,
        opts: CatalogOptions,
    ) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let (repos, repo_writer) = reflector::store::<Repository>();
        let (namespaces, ns_writer) = reflector::store::<Namespace>();
        let catalog = Catalog {
            inner: Arc::new(Inner {
                client: client.clone(),
                opts,
                repos,
                namespaces,
                entries: RwLock::default(),
                locks: Mutex::default(),
                dirty: Mutex::default(),
                unsupported_logged: Mutex::default(),
                wake: Notify::new(),
                refreshes: Default::default(),
            }),
        };
        let mut tasks = Vec::new();
        let c = catalog.clone();
        let repo_stream = reflector(
            repo_writer,
            watcher(
                Api::<Repository>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .touched_objects();
        tasks.push(tokio::spawn(async move {
            let mut s = std::pin::pin!(repo_stream);
            while let Some(r) = s.next().await {
                match r {
                    Ok(_) => c.inner.wake.notify_one(),
                    Err(e) => tracing::debug!(error = %e, "snapshots: Repository watch"),
                }
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
        tasks.push(tokio::spawn(catalog.clone().watch_backup_sessions()));
        tasks.push(tokio::spawn(catalog.clone().watch_restore_sessions()));
        tasks.push(tokio::spawn(catalog.clone().refresher()));
        // Answer nothing before the first Repository list arrived.
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            catalog.inner.repos.wait_until_ready(),
        )
        .await;
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            catalog.inner.namespaces.wait_until_ready(),
        )
        .await;
        (catalog, tasks)
    }

    /// Mark a repository's list stale and have it read again soon (in the background). For
    /// the backup, forget and restore paths.
    pub fn invalidate(&self, namespace: &str, repository: &str) {
        self.inner
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.to_owned(), repository.to_owned()));
        self.inner.wake.notify_one();
    }

    /// The cached entry of a repository.
    pub fn entry(&self, namespace: &str, repository: &str) -> Option<Entry> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_owned(), repository.to_owned()))
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

    /// The snapshots of `repo`, reading them first if the catalog never has.
    pub async fn snapshots(&self, repo: &Repository) -> Arc<Vec<restic::Snapshot>> {
        let key = key_of(repo);
        let stale = |e: &Entry| {
            let dirty = self
                .inner
                .dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key);
            e.resource_version != repo.metadata.resource_version
                || self.on_demand(repo)
                    && (dirty || e.fetched_at.elapsed() >= self.inner.opts.refresh)
        };
        if let Some(e) = self
            .entry(&key.0, &key.1)
            .filter(|e| e.generation == repo.metadata.generation && !stale(e))
        {
            return e.snapshots;
        }
        let _ = self.refresh(repo, Instant::now()).await;
        self.entry(&key.0, &key.1)
            .map(|e| e.snapshots)
            .unwrap_or_default()
    }

    /// What the catalog holds for `repo` without reading it; `None` when it was never read.
    pub fn cached(&self, repo: &Repository) -> Option<Arc<Vec<restic::Snapshot>>> {
        let key = key_of(repo);
        self.entry(&key.0, &key.1).map(|e| e.snapshots)
    }

    /// Read `repo`'s snapshots now, unless another refresh finished after `since`.
    pub async fn refresh(&self, repo: &Repository, since: Instant) -> Result<(), FetchError> {
        let key = key_of(repo);
        let lock = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if let Some(e) = self.entry(&key.0, &key.1)
            && e.fetched_at >= since
            && e.generation == repo.metadata.generation
        {
            return e.error.map_or(Ok(()), |m| Err(FetchError::Failed(m)));
        }
        self.inner
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let started = Instant::now();
        let result = self.fetch(repo).await;
        self.inner
            .refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut entries = self
            .inner
            .entries
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let previous = entries
            .get(&key)
            .map(|e| e.snapshots.clone())
            .unwrap_or_default();
        let (snapshots, error) = match result {
            Ok(s) => (Arc::new(s), None),
            Err(e) => {
                tracing::warn!(namespace = %key.0, repository = %key.1, error = %e, "snapshots: reading the repository failed");
                (previous, Some(e.to_string()))
            }
        };
        tracing::debug!(namespace = %key.0, repository = %key.1, count = snapshots.len(), took = ?started.elapsed(), "snapshots: catalog refreshed");
        let err = error.clone();
        entries.insert(
            key,
            Entry {
                snapshots,
                fetched_at: started,
                generation: repo.metadata.generation,
                resource_version: repo.metadata.resource_version.clone(),
                error,
            },
        );
        err.map_or(Ok(()), |m| Err(FetchError::Failed(m)))
    }

    /// `restic forget --prune <id>` on `repo`, then read it again.
    pub async fn forget(&self, repo: &Repository, id: &str) -> Result<(), FetchError> {
        let result = match &self.inner.opts.reader_image {
            Some(image) => {
                super::reader::forget(&self.inner.client, repo, image, id, self.inner.opts.timeout)
                    .await
                    .map_err(FetchError::Failed)
            }
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
        // entry whose Repository's resourceVersion moved on is read again).
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

    /// The background loop: every second (or when woken) refresh what is due.
    async fn refresher(self) {
        loop {
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let now = Instant::now();
            let repos = self.repositories(None);
            let live: HashSet<Key> = repos.iter().map(|r| key_of(r)).collect();
            self.inner
                .entries
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|k, _| live.contains(k));
            let dirty = self
                .inner
                .dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let due: Vec<Arc<Repository>> = repos
                .into_iter()
                .filter(|r| !self.on_demand(r))
                .filter(|r| {
                    let key = key_of(r);
                    dirty.contains(&key)
                        || self.entry(&key.0, &key.1).is_none_or(|e| {
                            e.generation != r.metadata.generation
                                || now.duration_since(e.fetched_at) >= self.inner.opts.refresh
                        })
                })
                .collect();
            futures::stream::iter(due)
                .for_each_concurrent(4, |r| {
                    let this = self.clone();
                    async move {
                        let _ = this.refresh(&r, now).await;
                    }
                })
                .await;
        }
    }

    async fn watch_backup_sessions(self) {
        let api = Api::<BackupSession>::all(self.inner.client.clone());
        let mut seen = HashSet::new();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        let mut s = std::pin::pin!(stream);
        loop {
            match s.try_next().await {
                Ok(Some(bs)) => {
                    let Some(phase) = bs
                        .status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .map(|p| phase_name(&p))
                    else {
                        continue;
                    };
                    if !is_terminal(&phase) || !seen.insert((bs.uid().unwrap_or_default(), phase)) {
                        continue;
                    }
                    let ns = bs.namespace().unwrap_or_default();
                    let Some(bc) = bs
                        .spec
                        .backup_configuration
                        .as_ref()
                        .map(|r| r.name.clone())
                    else {
                        continue;
                    };
                    let repo =
                        Api::<BackupConfiguration>::namespaced(self.inner.client.clone(), &ns)
                            .get_opt(&bc)
                            .await
                            .ok()
                            .flatten()
                            .and_then(|c| c.spec.repository.map(|r| r.name));
                    if let Some(repo) = repo {
                        self.invalidate(&ns, &repo);
                    }
                }
                Ok(None) => return,
                Err(e) => tracing::debug!(error = %e, "snapshots: BackupSession watch"),
            }
        }
    }

    async fn watch_restore_sessions(self) {
        let api = Api::<RestoreSession>::all(self.inner.client.clone());
        let mut seen = HashSet::new();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        let mut s = std::pin::pin!(stream);
        loop {
            match s.try_next().await {
                Ok(Some(rs)) => {
                    let Some(phase) = rs
                        .status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .map(|p| phase_name(&p))
                    else {
                        continue;
                    };
                    if !is_terminal(&phase) || !seen.insert((rs.uid().unwrap_or_default(), phase)) {
                        continue;
                    }
                    if let Some(repo) = rs.spec.repository.as_ref().map(|r| r.name.clone()) {
                        self.invalidate(&rs.namespace().unwrap_or_default(), &repo);
                    }
                }
                Ok(None) => return,
                Err(e) => tracing::debug!(error = %e, "snapshots: RestoreSession watch"),
            }
        }
    }
}

fn phase_name<P: serde::Serialize>(p: &P) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn is_terminal(phase: &str) -> bool {
    matches!(phase, "Succeeded" | "Failed" | "Unknown")
}

/// `(namespace, name)` of a Repository.
pub fn key_of(repo: &Repository) -> Key {
    (repo.namespace().unwrap_or_default(), repo.name_any())
}

/// Where the operator finds `repo`'s restic repository: `Ok(None)` for a local backend it
/// cannot read (any volume but `hostPath`).
pub fn location(repo: &Repository) -> Result<Option<restic::Location>, String> {
    let kind = repo.spec.backend.validate().map_err(|e| e.to_string())?;
    if let BackendKind::Local(l) = kind {
        return Ok(l.volume_source.host_path.as_ref().map(|hp| {
            restic::Location::local(hp.path.clone(), l.sub_path.as_deref().unwrap_or_default())
        }));
    }
    crate::backup::location(repo).map(Some)
}

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
    fn terminal_phases() {
        assert!(is_terminal("Succeeded") && is_terminal("Failed") && !is_terminal("Running"));
    }
}
