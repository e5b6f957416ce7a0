//! A restic repository and the operations Stash runs on it.
use std::{
    ffi::{OsStr, OsString},
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    BackupSummary, CheckReport, Credentials, Error, ForgetOutcome, Location, LockInfo,
    RestoreSummary, Result, RetentionPolicy, Snapshot, Stats, StatsMode,
    error::scrub,
    run::{Finished, Invocation, run},
};

/// `ionice -c <class> [-n <class_data>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoNice {
    /// 1 realtime, 2 best-effort, 3 idle.
    pub class: u8,
    /// Priority within the class (0–7).
    pub class_data: Option<u8>,
}

/// Default for [`RepoBuilder::backend_retry_budget`].
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(120);

/// A restic repository: where it is, how to open it, and how to run restic on it.
#[derive(Clone)]
pub struct Repo {
    location: Location,
    credentials: Credentials,
    binary: PathBuf,
    cache_dir: Option<PathBuf>,
    scratch_dir: PathBuf,
    nice: Option<i32>,
    ionice: Option<IoNice>,
    timeout: Option<Duration>,
    retry_budget: Option<Duration>,
    retry_lock: Duration,
    secrets: Vec<String>,
    lock_reporter: Option<LockReporter>,
}

/// Told, before a command, which locks of other hosts stand in its way
/// ([`stash_machines::locks::blocks`]): an agent reports them on its session for the operator
/// to judge, while the command waits for them (`--retry-lock`). See [`Repo::set_lock_reporter`].
pub type LockReporter = std::sync::Arc<
    dyn Fn(Vec<LockInfo>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

impl fmt::Debug for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repo")
            .field(
                "location",
                &scrub(&format!("{:?}", self.location), &self.secrets),
            )
            .field("credentials", &self.credentials)
            .field("binary", &self.binary)
            .field("cache_dir", &self.cache_dir)
            .field("scratch_dir", &self.scratch_dir)
            .field("nice", &self.nice)
            .field("ionice", &self.ionice)
            .field("timeout", &self.timeout)
            .field("retry_budget", &self.retry_budget)
            .field("retry_lock", &self.retry_lock)
            .finish()
    }
}

/// Builds a [`Repo`].
#[derive(Debug)]
pub struct RepoBuilder {
    location: Location,
    credentials: Credentials,
    binary: PathBuf,
    cache: CacheChoice,
    scratch_dir: Option<PathBuf>,
    nice: Option<i32>,
    ionice: Option<IoNice>,
    timeout: Option<Duration>,
    retry_budget: Option<Duration>,
    retry_lock: Duration,
}

#[derive(Debug)]
enum CacheChoice {
    Off,
    InScratch,
    Dir(PathBuf),
}

impl RepoBuilder {
    /// The restic binary (default `restic`, looked up in `PATH`).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = path.into();
        self
    }

    /// Working directory of restic; `TMPDIR` is `<scratch>/restic-tmp` (default: the
    /// system temp dir).
    pub fn scratch_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.scratch_dir = Some(dir.into());
        self
    }

    /// Enable the cache at `<scratch>/restic-cache` (`true`) or run with `--no-cache`
    /// (`false`, the default).
    pub fn cache(mut self, enabled: bool) -> Self {
        self.cache = if enabled {
            CacheChoice::InScratch
        } else {
            CacheChoice::Off
        };
        self
    }

    /// Enable the cache in `dir` (`None`: `--no-cache`).
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cache = dir.map_or(CacheChoice::Off, CacheChoice::Dir);
        self
    }

    /// Run restic under `nice -n <adjustment>`.
    pub fn nice(mut self, adjustment: Option<i32>) -> Self {
        self.nice = adjustment;
        self
    }

    /// Run restic under `ionice -c <class> [-n <data>]`.
    pub fn ionice(mut self, ionice: Option<IoNice>) -> Self {
        self.ionice = ionice;
        self
    }

    /// Read `NICE_ADJUSTMENT`, `IONICE_CLASS` and `IONICE_CLASS_DATA` (the variables Stash
    /// sets from `runtimeSettings`) from the environment.
    pub fn niceness_from_env(mut self) -> Self {
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        if let Some(n) = num("NICE_ADJUSTMENT") {
            self.nice = Some(n as i32);
        }
        if let Some(c) = num("IONICE_CLASS") {
            self.ionice = Some(IoNice {
                class: c as u8,
                class_data: num("IONICE_CLASS_DATA").map(|d| d as u8),
            });
        }
        self
    }

    /// Kill restic (process group; SIGTERM, then SIGKILL after 5 s) when one command runs
    /// longer than this. Default: no limit.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// restic retries failing backend requests for up to 15 minutes and has no switch to
    /// shorten that. When restic has been retrying without a success for longer than this
    /// budget, the wrapper stops it and returns [`Error::Unreachable`]. `None` leaves restic
    /// alone. Default [`DEFAULT_RETRY_BUDGET`].
    pub fn backend_retry_budget(mut self, budget: Option<Duration>) -> Self {
        self.retry_budget = budget;
        self
    }

    /// How long a command waits for another process's lock (`--retry-lock`, whole seconds;
    /// default [`RETRY_LOCK`]) before the refusal is decided on
    /// ([`stash_machines::locks::on_refusal`]).
    pub fn retry_lock(mut self, wait: Duration) -> Self {
        self.retry_lock = wait;
        self
    }

    /// Create the scratch directories and build the [`Repo`].
    pub fn build(self) -> Result<Repo> {
        if let Some(ioc) = self.ionice
            && !(1..=3).contains(&ioc.class)
        {
            return Err(Error::Config(format!(
                "ionice class must be 1, 2 or 3, not {}",
                ioc.class
            )));
        }
        let scratch_dir = self.scratch_dir.unwrap_or_else(std::env::temp_dir);
        let tmp = scratch_dir.join("restic-tmp");
        std::fs::create_dir_all(&tmp)
            .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        let cache_dir = match self.cache {
            CacheChoice::Off => None,
            CacheChoice::InScratch => Some(scratch_dir.join("restic-cache")),
            CacheChoice::Dir(d) => Some(d),
        };
        let secrets = self.credentials.secrets();
        Ok(Repo {
            location: self.location,
            credentials: self.credentials,
            binary: self.binary,
            cache_dir,
            scratch_dir,
            nice: self.nice,
            ionice: self.ionice,
            timeout: self.timeout,
            retry_budget: self.retry_budget,
            retry_lock: self.retry_lock,
            secrets,
            lock_reporter: None,
        })
    }
}

/// Which snapshots to list.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// `--host`, repeated.
    pub hosts: Vec<String>,
    /// `--path`, repeated (a snapshot must include all of them).
    pub paths: Vec<String>,
    /// `--tag`, repeated.
    pub tags: Vec<String>,
    /// Snapshot ids or prefixes (none: all).
    pub ids: Vec<String>,
    /// `--no-lock` (read-only access, e.g. from the operator).
    pub no_lock: bool,
}

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// A snapshot id or `latest`.
    pub snapshot: String,
    /// `--host` (with `latest`: the newest snapshot of this host).
    pub host: Option<String>,
    /// `--path`, repeated (with `latest`: the newest snapshot of these paths).
    pub paths: Vec<String>,
    /// `--include`, repeated (restore only these paths of the snapshot).
    pub includes: Vec<String>,
    /// `--exclude`, repeated (restore all but these patterns).
    pub excludes: Vec<String>,
    /// `--target` (Stash restores to `/`).
    pub target: PathBuf,
    /// Extra arguments (checked by the caller: `stash_core::args`).
    pub extra: Vec<String>,
}

impl RestoreOptions {
    /// Restore all of `snapshot` into `target`.
    pub fn new(snapshot: impl Into<String>, target: impl Into<PathBuf>) -> Self {
        Self {
            snapshot: snapshot.into(),
            host: None,
            paths: Vec::new(),
            includes: Vec::new(),
            excludes: Vec::new(),
            target: target.into(),
            extra: Vec::new(),
        }
    }
}

/// What [`Repo::dump`] prints.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// A snapshot id or `latest`.
    pub snapshot: String,
    /// The file inside the snapshot (`/stdin` or the `--stdin-filename` of a stdin backup).
    pub file: String,
    /// `--host`.
    pub host: Option<String>,
    /// `--path`, repeated.
    pub paths: Vec<String>,
}

impl Repo {
    /// Start building a repository handle.
    pub fn builder(location: Location, credentials: Credentials) -> RepoBuilder {
        RepoBuilder {
            location,
            credentials,
            binary: PathBuf::from("restic"),
            cache: CacheChoice::Off,
            scratch_dir: None,
            nice: None,
            ionice: None,
            timeout: None,
            retry_budget: Some(DEFAULT_RETRY_BUDGET),
            retry_lock: RETRY_LOCK,
        }
    }

    /// Report the locks of other hosts that stand in a locking command's way to `reporter`
    /// before the command runs (and once more, with one more run, when it is refused anyway).
    pub fn set_lock_reporter(&mut self, reporter: LockReporter) {
        self.lock_reporter = Some(reporter);
    }

    /// Where the repository is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The cache directory, when the cache is on.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// Remove every secret of this repository from `text`.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, &self.secrets)
    }

    /// The environment of every restic child (the whole of it: the parent's environment is
    /// not inherited). Contains secrets.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        env.push(("PATH".into(), path));
        let home =
            std::env::var_os("HOME").unwrap_or_else(|| self.scratch_dir.clone().into_os_string());
        env.push(("HOME".into(), home));
        env.push((
            "TMPDIR".into(),
            self.scratch_dir.join("restic-tmp").into_os_string(),
        ));
        let (user, pass) = self.credentials.rest_userinfo();
        env.push((
            "RESTIC_REPOSITORY".into(),
            self.location
                .repository_url_with_userinfo(user, pass)
                .into(),
        ));
        for (k, v) in self.credentials.env_for(&self.location) {
            env.push((k.into(), v));
        }
        env
    }

    /// The global flags: cache, CA bundle, extended options.
    fn global_args(&self, cleanup_cache: bool) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        match &self.cache_dir {
            Some(d) => {
                a.push("--cache-dir".into());
                a.push(d.clone().into_os_string());
                if cleanup_cache {
                    a.push("--cleanup-cache".into());
                }
            }
            None => a.push("--no-cache".into()),
        }
        if let Some(ca) = self.credentials.ca_cert_file() {
            a.push("--cacert".into());
            a.push(ca.as_os_str().to_owned());
        }
        for o in self.location.extended_options() {
            a.push("--option".into());
            a.push(o.into());
        }
        a
    }

    /// The program and its arguments for `restic <sub> <global flags> <args>`, wrapped in
    /// `ionice`/`nice` when configured.
    pub fn command_line(
        &self,
        sub: &str,
        args: &[OsString],
        cleanup_cache: bool,
    ) -> (OsString, Vec<OsString>) {
        self.command_line_waiting(sub, args, cleanup_cache, self.retry_lock)
    }

    /// [`Repo::command_line`] waiting `wait` for another process's lock.
    fn command_line_waiting(
        &self,
        sub: &str,
        args: &[OsString],
        cleanup_cache: bool,
        wait: Duration,
    ) -> (OsString, Vec<OsString>) {
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(io) = self.ionice {
            argv.push("ionice".into());
            argv.push("-c".into());
            argv.push(io.class.to_string().into());
            if let Some(d) = io.class_data {
                argv.push("-n".into());
                argv.push(d.to_string().into());
            }
        }
        if let Some(n) = self.nice {
            argv.push("nice".into());
            argv.push("-n".into());
            argv.push(n.to_string().into());
        }
        argv.push(self.binary.clone().into_os_string());
        argv.push(sub.into());
        argv.extend(self.global_args(cleanup_cache));
        if takes_lock(sub, args) {
            // Another host's lock (two configurations sharing the repository, a prune) is waited
            // for, bounded, instead of failing at once. A lock whose holder is dead still
            // blocks: restic 0.19's lock check does not look at staleness, and only `unlock`
            // removes a lock, and only one restic can prove stale (30 minutes old, or of a dead
            // pid on the same hostname). So restic is never SIGKILLed while it holds a lock
            // (see `run::GroupGuard`).
            argv.push("--retry-lock".into());
            argv.push(format!("{}s", wait.as_secs().max(1)).into());
        }
        argv.extend(args.iter().cloned());
        let program = argv.remove(0);
        (program, argv)
    }

    /// Run `restic <sub> <args>`. A command restic refuses a lock (exit 11, after waiting
    /// `--retry-lock`) is decided on by [`stash_machines::locks::on_refusal`]: a lock of this
    /// host or older than restic's stale age is removed by `restic unlock` (only if restic
    /// proves it stale) and the command runs once more; any other lock is left alone. Commands
    /// that stream stdin or stdout are not run twice.
    async fn exec<'a>(
        &'a self,
        sub: &'static str,
        args: Vec<OsString>,
        stdin: Option<crate::run::DynRead<'a>>,
        stdout: Option<crate::run::DynWrite<'a>>,
        cleanup_cache: bool,
    ) -> Result<Finished> {
        use stash_machines::locks::{Holder, OnRefusal, on_refusal};
        let locking = takes_lock(sub, &args);
        let exclusive = matches!(sub, "forget" | "prune" | "check");
        let retryable = stdin.is_none() && stdout.is_none() && locking;
        let mut reported = false;
        if locking && (exclusive || !retryable || self.lock_reporter.is_none()) {
            reported = self.before_locking(sub, exclusive).await?;
        }
        // A shared command (a backup, on the critical path) is not preceded by a look at the
        // locks, which costs a restic start: it waits a shorter first while, and refused,
        // reports the locks in its way and waits the full time once more.
        let wait = if retryable && !exclusive && self.lock_reporter.is_some() {
            self.retry_lock.min(SHARED_FIRST_WAIT)
        } else {
            self.retry_lock
        };
        let f = self
            .exec_once_waiting(sub, &args, stdin, stdout, cleanup_cache, wait)
            .await;
        let f = match f {
            Ok(f) if retryable && f.status.code() == Some(11) => f,
            other => {
                self.withdraw_report(reported).await;
                return other;
            }
        };
        let message = f
            .exit_error
            .as_ref()
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| f.tail.join("\n"));
        let holder = Holder::parse(&message);
        if on_refusal(holder.as_ref(), &hostname(), 0) == OnRefusal::Fail {
            // A lock taken after the first look (or not yet judged): reported, and waited for
            // once more.
            let locks = self.locks().await.unwrap_or_default();
            if self.report_blocking(sub, exclusive, locks).await {
                let again = self.exec_once(sub, &args, None, None, cleanup_cache).await;
                self.withdraw_report(true).await;
                return again;
            }
            self.withdraw_report(reported).await;
            return Ok(f);
        }
        self.withdraw_report(reported).await;
        let unlocked = self.exec_once("unlock", &[], None, None, false).await?;
        let what = holder.as_ref().map(Holder::describe).unwrap_or_default();
        if !unlocked.status.success() {
            tracing::warn!(sub, lock = %what, reason = %unlocked.reason(), "restic unlock failed; not retrying");
            return Ok(f);
        }
        // Removed if the lock restic named is gone.
        let left = self
            .exec_once(
                "list",
                &self::args(["locks", "--no-lock"]),
                None,
                None,
                false,
            )
            .await?;
        let id = holder.as_ref().map(|h| h.id.as_str()).unwrap_or_default();
        if !id.is_empty() && !left.stdout.lines().any(|l| l.trim().starts_with(id)) {
            tracing::warn!(sub, lock = %what, "removed a stale lock (restic unlock), running the command again");
            record_removed(what);
        }
        self.exec_once(sub, &args, None, None, cleanup_cache).await
    }

    /// `restic unlock` (never `--remove-all`) when the repository has locks: those restic
    /// proves stale — this host's of a pid that no longer runs (an agent restarted in its pod
    /// after its restic was killed), or any not refreshed for 30 minutes — are removed and
    /// recorded for [`take_removed_locks`]. What a restarted agent runs first, so that a lock
    /// of its dead restic stands in no other host's way until its own next exclusive command.
    pub async fn clear_stale_locks(&self) -> Result<()> {
        self.before_locking("unlock", true).await.map(|_| ())
    }

    /// Before locking command `sub`: clear the locks restic proves stale when the command is
    /// exclusive ([`clear_stale_first`]), recording each one removed (its host, pid and age) for
    /// [`take_removed_locks`]; then report the other hosts' locks in its way
    /// ([`Repo::report_blocking`]): whether any was reported. One `list locks` when there are
    /// none; a repository whose locks cannot be listed is restic's to refuse.
    async fn before_locking(&self, sub: &'static str, exclusive: bool) -> Result<bool> {
        use stash_machines::locks::clear_stale_first;
        let clear = clear_stale_first(exclusive);
        if !clear && self.lock_reporter.is_none() {
            return Ok(false);
        }
        let Ok(mut locks) = self.locks().await else {
            return Ok(false);
        };
        if locks.is_empty() {
            return Ok(false);
        }
        if clear {
            self.exec_once("unlock", &[], None, None, false).await?;
            let after = self
                .exec_once("list", &args(["locks", "--no-lock"]), None, None, false)
                .await?;
            let now = jiff::Timestamp::now();
            let (removed, left): (Vec<LockInfo>, Vec<LockInfo>) = locks
                .into_iter()
                .partition(|l| !after.stdout.lines().any(|id| id.trim() == l.id));
            for l in removed {
                let holder = stash_machines::locks::Holder {
                    exclusive: l.exclusive,
                    pid: u32::try_from(l.pid).unwrap_or_default(),
                    host: l.hostname.clone(),
                    age: now.duration_since(l.time).try_into().unwrap_or_default(),
                    id: l.id.chars().take(8).collect(),
                };
                let what = holder.describe();
                tracing::warn!(sub, lock = %what, "removed a stale lock (restic unlock) before an exclusive command");
                record_removed(what);
            }
            locks = left;
        }
        Ok(self.report_blocking(sub, exclusive, locks).await)
    }

    /// Withdraw this command's report of the locks in its way (it has run, or given up).
    async fn withdraw_report(&self, reported: bool) {
        if let (true, Some(reporter)) = (reported, self.lock_reporter.clone()) {
            reporter(Vec::new()).await;
        }
    }

    /// Report those of `locks` that stand in the way of `sub` ([`stash_machines::locks::blocks`])
    /// to the [`LockReporter`]; whether any did.
    async fn report_blocking(
        &self,
        sub: &'static str,
        exclusive: bool,
        locks: Vec<LockInfo>,
    ) -> bool {
        let Some(reporter) = self.lock_reporter.clone() else {
            return false;
        };
        let (now, me) = (jiff::Timestamp::now(), hostname());
        let blocking: Vec<LockInfo> = locks
            .into_iter()
            .filter(|l| {
                let age = now.duration_since(l.time).try_into().unwrap_or_default();
                stash_machines::locks::blocks(exclusive, l.exclusive, &l.hostname, age, &me)
            })
            .collect();
        if blocking.is_empty() {
            return false;
        }
        for l in &blocking {
            tracing::info!(sub, id = %l.id, host = %l.hostname, pid = l.pid, exclusive = l.exclusive, "another host's lock stands in the way: reported, waited for");
        }
        reporter(blocking).await;
        true
    }

    async fn exec_once<'a>(
        &'a self,
        sub: &'static str,
        args: &[OsString],
        stdin: Option<crate::run::DynRead<'a>>,
        stdout: Option<crate::run::DynWrite<'a>>,
        cleanup_cache: bool,
    ) -> Result<Finished> {
        self.exec_once_waiting(sub, args, stdin, stdout, cleanup_cache, self.retry_lock)
            .await
    }

    /// [`Repo::exec_once`] waiting `wait` for another process's lock.
    async fn exec_once_waiting<'a>(
        &'a self,
        sub: &'static str,
        args: &[OsString],
        stdin: Option<crate::run::DynRead<'a>>,
        stdout: Option<crate::run::DynWrite<'a>>,
        cleanup_cache: bool,
        wait: Duration,
    ) -> Result<Finished> {
        let (program, argv) = self.command_line_waiting(sub, args, cleanup_cache, wait);
        let env = self.env();
        run(Invocation {
            sub,
            program,
            argv,
            env,
            cwd: &self.scratch_dir,
            stdin,
            stdout,
            timeout: self.timeout,
            retry_budget: self.retry_budget,
            secrets: &self.secrets,
        })
        .await
    }

    /// Run and require exit status 0.
    async fn exec_ok(&self, sub: &'static str, args: Vec<OsString>) -> Result<Finished> {
        let f = self.exec(sub, args, None, None, false).await?;
        if f.status.success() {
            Ok(f)
        } else {
            Err(f.error())
        }
    }

    /// `init`: create the repository.
    pub async fn init(&self) -> Result<()> {
        self.exec_ok("init", args(["--json"])).await.map(|_| ())
    }

    /// Open the repository (`cat config`); create it when there is none. A wrong password
    /// or an unreachable backend is an error and never leads to `init`. Returns `true` when
    /// the repository was created.
    pub async fn ensure_initialized(&self) -> Result<bool> {
        match self
            .exec_ok("cat", args(["config", "--json", "--no-lock"]))
            .await
        {
            Ok(_) => Ok(false),
            Err(Error::RepositoryNotFound { .. }) => match self.init().await {
                Ok(()) => Ok(true),
                // Someone else initialised it in the meantime: fine if it now opens.
                Err(e) => match self
                    .exec_ok("cat", args(["config", "--json", "--no-lock"]))
                    .await
                {
                    Ok(_) => Ok(false),
                    Err(_) => Err(e),
                },
            },
            Err(e) => Err(e),
        }
    }

    /// `snapshots --no-lock` with `filter`, creating the repository first when there is none:
    /// one restic invocation (one key derivation) for an existing repository where
    /// [`Repo::ensure_initialized`] followed by [`Repo::snapshots`] takes two. Like
    /// `ensure_initialized`, a wrong password or an unreachable backend is an error and never
    /// leads to `init`. Returns whether the repository was created (then it holds no
    /// snapshots) and the snapshots found.
    pub async fn snapshots_or_init(
        &self,
        filter: &SnapshotFilter,
    ) -> Result<(bool, Vec<Snapshot>)> {
        let filter = SnapshotFilter {
            no_lock: true,
            ..filter.clone()
        };
        match self.snapshots(&filter).await {
            Ok(s) => Ok((false, s)),
            Err(Error::RepositoryNotFound { .. }) => match self.init().await {
                Ok(()) => Ok((true, Vec::new())),
                // Someone else initialised it in the meantime: fine if it now opens.
                Err(e) => match self.snapshots(&filter).await {
                    Ok(s) => Ok((false, s)),
                    Err(_) => Err(e),
                },
            },
            Err(e) => Err(e),
        }
    }

    fn backup_args(host: &str, tags: &[String]) -> Vec<OsString> {
        let mut a = args(["--quiet", "--json", "--host", host]);
        for t in tags {
            a.push("--tag".into());
            a.push(t.into());
        }
        a
    }

    /// A backup's result: its summary on exit status 0; on exit status 3 with a summary (restic
    /// made the snapshot but could not read some files) [`Error::Incomplete`] with the snapshot
    /// and what was unreadable; any other failure as [`Finished::error`] says.
    async fn finish_backup(f: Finished) -> Result<BackupSummary> {
        if f.status.success() {
            return BackupSummary::from_output(&f.stdout);
        }
        if f.status.code() == Some(3)
            && let Ok(summary) = BackupSummary::from_output(&f.stdout)
        {
            return Err(Error::Incomplete {
                summary: Box::new(summary),
                unreadable: f.unreadable,
            });
        }
        Err(f.error())
    }

    /// `tag --json --add <t>… -- <id>`: add `tags` to snapshot `id` (an id or unique prefix) and
    /// return its full id afterwards. restic rewrites a snapshot to change its tags, so the id
    /// changes (the old one is gone); a snapshot that already has every tag is left as it is
    /// and keeps its id. An id that matches nothing is [`Error::SnapshotNotFound`] (restic
    /// itself prints "Ignoring" and succeeds).
    pub async fn tag(&self, id: &str, tags: &[String]) -> Result<String> {
        if tags.is_empty() {
            return Err(Error::Config("tag needs at least one tag".into()));
        }
        let mut a = args(["--json"]);
        for t in tags {
            a.push("--add".into());
            a.push(t.into());
        }
        a.push("--".into());
        a.push(id.into());
        let f = self.exec_ok("tag", a).await?;
        if let Some(c) = crate::types::TagChanged::list_from_output(&f.stdout)?
            .into_iter()
            .find(|c| c.old_snapshot_id.starts_with(id))
        {
            return Ok(c.new_snapshot_id);
        }
        // Nothing changed: the snapshot had the tags already, or there is no such snapshot.
        self.snapshots(&SnapshotFilter {
            ids: vec![id.to_string()],
            no_lock: true,
            ..Default::default()
        })
        .await?
        .into_iter()
        .find(|s| s.id.starts_with(id) && tags.iter().all(|t| s.tags.contains(t)))
        .map(|s| s.id)
        .ok_or_else(|| Error::SnapshotNotFound { id: id.to_string() })
    }

    /// `backup <path> --host <host> [--tag t]…`: one snapshot of `path`. Files restic cannot
    /// read make it [`Error::Incomplete`] (the snapshot exists without them).
    pub async fn backup(&self, path: &Path, host: &str, tags: &[String]) -> Result<BackupSummary> {
        self.backup_excluding(path, host, tags, &[], &[]).await
    }

    /// [`Repo::backup`] leaving out the files that match `exclude` (`--exclude`, repeated),
    /// with `extra` arguments (checked by the caller: `stash_core::args`) before the path.
    pub async fn backup_excluding(
        &self,
        path: &Path,
        host: &str,
        tags: &[String],
        exclude: &[String],
        extra: &[String],
    ) -> Result<BackupSummary> {
        let mut a = Self::backup_args(host, tags);
        for e in exclude {
            a.push("--exclude".into());
            a.push(e.into());
        }
        a.extend(extra.iter().map(Into::into));
        a.push("--".into());
        a.push(path.as_os_str().to_owned());
        let f = self.exec("backup", a, None, None, true).await?;
        Self::finish_backup(f).await
    }

    /// `backup --stdin --stdin-filename <filename>`: a snapshot of one file, read from `data`.
    pub async fn backup_stdin(
        &self,
        data: &mut (dyn AsyncRead + Unpin + Send),
        filename: &str,
        host: &str,
        tags: &[String],
    ) -> Result<BackupSummary> {
        let mut a = Self::backup_args(host, tags);
        a.extend(args(["--stdin", "--stdin-filename", filename]));
        let f = self.exec("backup", a, Some(data), None, true).await?;
        Self::finish_backup(f).await
    }

    /// `backup --stdin-from-command --stdin-filename <filename> -- <command…>`: restic runs
    /// `command` and stores its stdout; a non-zero exit of `command` fails the backup (no
    /// snapshot).
    pub async fn backup_command<S: AsRef<OsStr>>(
        &self,
        command: &[S],
        filename: &str,
        host: &str,
        tags: &[String],
    ) -> Result<BackupSummary> {
        if command.is_empty() {
            return Err(Error::Config("backup_command needs a command".into()));
        }
        let mut a = Self::backup_args(host, tags);
        a.extend(args([
            "--stdin-filename",
            filename,
            "--stdin-from-command",
            "--",
        ]));
        a.extend(command.iter().map(|c| c.as_ref().to_owned()));
        let f = self.exec("backup", a, None, None, true).await?;
        Self::finish_backup(f).await
    }

    /// `check [--read-data]`: `true` when no errors were found.
    pub async fn check(&self, read_data: bool) -> Result<bool> {
        self.check_report(read_data).await.map(|r| r.is_ok())
    }

    /// `check --json [--read-data]` with restic's summary. Errors found in the repository
    /// are a report with `num_errors > 0`, not an `Err`.
    pub async fn check_report(&self, read_data: bool) -> Result<CheckReport> {
        let mut a = args(["--json"]);
        if read_data {
            a.push("--read-data".into());
        }
        let f = self.exec("check", a, None, None, false).await?;
        let report = CheckReport::from_output(&f.stdout).map(|r| CheckReport {
            errors: f.tail.clone(),
            ..r
        });
        match (f.status.success(), report) {
            (true, Some(r)) => Ok(r),
            (true, None) => Ok(CheckReport::default()),
            (false, Some(r)) if r.num_errors > 0 || !r.is_ok() => Ok(r),
            (false, Some(r)) if f.status.code() == Some(1) && f.exit_error.is_none() => {
                Ok(CheckReport {
                    num_errors: r.num_errors.max(1),
                    ..r
                })
            }
            (false, _) => Err(f.error()),
        }
    }

    /// `forget --json` with the retention policy, across every (host, paths) group (no host
    /// filter). An empty policy keeps everything (see [`RetentionPolicy::is_empty`]).
    pub async fn forget(&self, policy: &RetentionPolicy) -> Result<ForgetOutcome> {
        let mut a = args(["--quiet", "--json"]);
        a.extend(policy.args());
        let f = self.exec_ok("forget", a).await?;
        ForgetOutcome::from_output(&f.stdout)
    }

    /// Forget the given snapshots (ids or unique prefixes), with `--prune` if asked. restic
    /// silently ignores ids that match nothing; here that is [`Error::SnapshotNotFound`]
    /// and nothing is removed.
    pub async fn forget_ids(&self, ids: &[String], prune: bool) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let found = self
            .snapshots(&SnapshotFilter {
                ids: ids.to_vec(),
                no_lock: true,
                ..Default::default()
            })
            .await?;
        if let Some(missing) = ids
            .iter()
            .find(|id| !found.iter().any(|s| s.id.starts_with(id.as_str())))
        {
            return Err(Error::SnapshotNotFound {
                id: missing.clone(),
            });
        }
        let mut a = args(["--quiet", "--json"]);
        if prune {
            a.push("--prune".into());
        }
        a.push("--".into());
        a.extend(ids.iter().map(OsString::from));
        self.exec_ok("forget", a).await.map(|_| ())
    }

    /// `stats --json` in restore-size mode (what Stash reports as the repository size).
    pub async fn stats(&self) -> Result<Stats> {
        self.stats_mode(StatsMode::RestoreSize).await
    }

    /// `stats --json --mode <mode>`.
    pub async fn stats_mode(&self, mode: StatsMode) -> Result<Stats> {
        let f = self
            .exec_ok("stats", args(["--quiet", "--json", "--mode", mode.flag()]))
            .await?;
        Stats::from_output(&f.stdout)
    }

    /// `snapshots --json` with filters. Ids that match nothing are left out (restic prints
    /// "Ignoring …" on stderr and succeeds).
    pub async fn snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<Snapshot>> {
        let mut a = args(["--json"]);
        if filter.no_lock {
            a.push("--no-lock".into());
        }
        for (flag, values) in [
            ("--host", &filter.hosts),
            ("--path", &filter.paths),
            ("--tag", &filter.tags),
        ] {
            for v in values {
                a.push(flag.into());
                a.push(v.into());
            }
        }
        if !filter.ids.is_empty() {
            a.push("--".into());
            a.extend(filter.ids.iter().map(OsString::from));
        }
        let f = self.exec_ok("snapshots", a).await?;
        Snapshot::list_from_output("snapshots", &f.stdout)
    }

    /// `restore --json <snapshot> --target <dir> [--host] [--path]… [--include]…`.
    pub async fn restore(&self, opts: &RestoreOptions) -> Result<RestoreSummary> {
        let mut a = args(["--json", "--target"]);
        a.push(opts.target.clone().into_os_string());
        if let Some(h) = &opts.host {
            a.push("--host".into());
            a.push(h.into());
        }
        for p in &opts.paths {
            a.push("--path".into());
            a.push(p.into());
        }
        for i in &opts.includes {
            a.push("--include".into());
            a.push(i.into());
        }
        for e in &opts.excludes {
            a.push("--exclude".into());
            a.push(e.into());
        }
        a.extend(opts.extra.iter().map(Into::into));
        a.push("--".into());
        a.push((&opts.snapshot).into());
        let f = self.exec_ok("restore", a).await?;
        RestoreSummary::from_output(&f.stdout)
    }

    /// `dump --quiet <snapshot> <file> [--host] [--path]…`, written to `out`.
    pub async fn dump(
        &self,
        opts: &DumpOptions,
        out: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<()> {
        let mut a = args(["--quiet"]);
        if let Some(h) = &opts.host {
            a.push("--host".into());
            a.push(h.into());
        }
        for p in &opts.paths {
            a.push("--path".into());
            a.push(p.into());
        }
        a.push("--".into());
        a.push((&opts.snapshot).into());
        a.push((&opts.file).into());
        let f = self.exec("dump", a, None, Some(out), false).await?;
        if f.status.success() {
            Ok(())
        } else {
            Err(f.error())
        }
    }

    /// `unlock [--remove-all]`: remove stale locks (all locks with `remove_all`).
    pub async fn unlock(&self, remove_all: bool) -> Result<()> {
        let a = if remove_all {
            args(["--remove-all"])
        } else {
            Vec::new()
        };
        self.exec_ok("unlock", a).await.map(|_| ())
    }

    /// The repository's locks (`list locks`, then `cat lock <id>` each; locks that vanish
    /// in between are skipped).
    pub async fn locks(&self) -> Result<Vec<LockInfo>> {
        let f = self
            .exec_once("list", &args(["locks", "--no-lock"]), None, None, false)
            .await?;
        if !f.status.success() {
            return Err(f.error());
        }
        let mut out = Vec::new();
        for id in f.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let c = self
                .exec_once(
                    "cat",
                    &args(["lock", id, "--json", "--no-lock"]),
                    None,
                    None,
                    false,
                )
                .await?;
            if !c.status.success() {
                continue;
            }
            let mut lock: LockInfo = serde_json::from_str(c.stdout.trim())
                .map_err(|e| Error::parse("cat lock", e.to_string()))?;
            lock.id = id.to_string();
            out.push(lock);
        }
        Ok(out)
    }

    /// Locks that are stale now (see [`LockInfo::is_stale`]; `this_host` enables the
    /// dead-pid check for locks of this host).
    pub async fn stale_locks(&self, this_host: Option<&str>) -> Result<Vec<LockInfo>> {
        let now = jiff::Timestamp::now();
        Ok(self
            .locks()
            .await?
            .into_iter()
            .filter(|l| l.is_stale(now, this_host))
            .collect())
    }
}

/// The stale locks this process removed ([`Repo`]'s lock rule), not yet taken.
static REMOVED_LOCKS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn record_removed(what: String) {
    REMOVED_LOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(what);
}

/// The stale locks this process's restic commands removed since the last call, each as
/// `exclusive lock of PID 80 on app-x (95s old)`: what an agent reports as Events.
pub fn take_removed_locks() -> Vec<String> {
    std::mem::take(&mut *REMOVED_LOCKS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// This host's name, as restic writes it into its locks (a pod's name in a cluster): the
/// UTS namespace's, as gethostname(2) answers.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn args<const N: usize>(a: [&str; N]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

/// How long a shared command of an agent that reports the locks in its way first waits for
/// another process's lock before it reports them ([`Repo::set_lock_reporter`]).
pub const SHARED_FIRST_WAIT: Duration = Duration::from_secs(30);

/// How long a command waits for another process's lock on the repository (`--retry-lock`).
pub const RETRY_LOCK: Duration = Duration::from_secs(120);

/// Whether `restic <sub> <args>` locks the repository (so `--retry-lock` applies).
fn takes_lock(sub: &str, args: &[OsString]) -> bool {
    const LOCKING: &[&str] = &[
        "backup",
        "check",
        "copy",
        "diff",
        "dump",
        "find",
        "forget",
        "ls",
        "prune",
        "recover",
        "repair",
        "restore",
        "rewrite",
        "snapshots",
        "stats",
        "tag",
    ];
    LOCKING.contains(&sub) && !args.iter().any(|a| a == "--no-lock")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn creds(pairs: &[(&str, &str)]) -> Credentials {
        Credentials::from_map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap()
    }

    #[test]
    fn command_line_with_nice_ionice_cache_cacert_options() {
        let scratch = tempfile::tempdir().unwrap();
        let c = creds(&[("RESTIC_PASSWORD", "pw"), ("CA_CERT_DATA", "pem")]);
        let ca = c.ca_cert_file().unwrap().to_path_buf();
        let repo = Repo::builder(
            Location::Gcs {
                bucket: "b".into(),
                prefix: "p".into(),
                max_connections: Some(4),
            },
            c,
        )
        .binary("/bin/restic")
        .scratch_dir(scratch.path())
        .cache(true)
        .nice(Some(5))
        .ionice(Some(IoNice {
            class: 2,
            class_data: Some(7),
        }))
        .build()
        .unwrap();
        let (prog, argv) = repo.command_line("backup", &args(["--json", "/data"]), true);
        let argv: Vec<String> = argv.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(prog, "ionice");
        let cache = scratch.path().join("restic-cache").display().to_string();
        let ca = ca.display().to_string();
        assert_eq!(
            argv,
            [
                "-c",
                "2",
                "-n",
                "7",
                "nice",
                "-n",
                "5",
                "/bin/restic",
                "backup",
                "--cache-dir",
                &cache,
                "--cleanup-cache",
                "--cacert",
                &ca,
                "--option",
                "gs.connections=4",
                "--retry-lock",
                "120s",
                "--json",
                "/data"
            ]
        );
        assert!(scratch.path().join("restic-tmp").is_dir());

        let plain = Repo::builder(
            Location::local("/r", ""),
            creds(&[("RESTIC_PASSWORD", "pw")]),
        )
        .scratch_dir(scratch.path())
        .build()
        .unwrap();
        let (prog, argv) = plain.command_line("snapshots", &args(["--json"]), false);
        assert_eq!(prog, "restic");
        assert_eq!(
            argv,
            ["snapshots", "--no-cache", "--retry-lock", "120s", "--json"]
        );
        // Read-only access takes no lock; `init` and `cat config` have none to wait for.
        for (sub, a) in [
            ("snapshots", args(["--no-lock"])),
            ("init", args([])),
            ("unlock", args([])),
        ] {
            let (_, argv) = plain.command_line(sub, &a, false);
            assert!(!argv.iter().any(|x| x == "--retry-lock"), "{sub}: {argv:?}");
        }
    }

    #[test]
    fn env_is_minimal_and_debug_redacted() {
        let scratch = tempfile::tempdir().unwrap();
        let repo = Repo::builder(
            Location::Rest {
                url: "http://127.0.0.1:8000/repo".into(),
            },
            creds(&[
                ("RESTIC_PASSWORD", "pw-secret"),
                ("REST_SERVER_USERNAME", "alice"),
                ("REST_SERVER_PASSWORD", "rest-pw"),
                ("AWS_SECRET_ACCESS_KEY", "aws-not-for-rest"),
            ]),
        )
        .scratch_dir(scratch.path())
        .build()
        .unwrap();
        let env: BTreeMap<String, String> = repo
            .env()
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect();
        assert_eq!(
            env.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "HOME",
                "PATH",
                "RESTIC_PASSWORD_FILE",
                "RESTIC_REPOSITORY",
                "TMPDIR"
            ]
        );
        assert_eq!(
            env["RESTIC_REPOSITORY"],
            "rest:http://alice:rest-pw@127.0.0.1:8000/repo"
        );
        assert_eq!(
            env["TMPDIR"],
            scratch.path().join("restic-tmp").display().to_string()
        );
        let dbg = format!("{repo:?}");
        for secret in ["pw-secret", "rest-pw", "aws-not-for-rest"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert_eq!(
            repo.scrub("Fatal: rest:http://alice:rest-pw@127.0.0.1:8000/repo: pw-secret"),
            "Fatal: rest:http://***@127.0.0.1:8000/repo: ***"
        );
    }

    /// restic 0.19.1's stdout for the run of `run::tests::UNREADABLE_STDERR` (exit status 3).
    const UNREADABLE_STDOUT: &str = r#"{"message_type":"summary","files_new":1,"files_changed":0,"files_unmodified":0,"dirs_new":4,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":1,"tree_blobs":5,"data_added":1771,"data_added_packed":1438,"total_files_processed":1,"total_bytes_processed":3,"total_duration":0.685168067,"backup_start":"2026-12-07T08:49:17.673386043Z","backup_end":"2026-12-07T08:49:18.35855413Z","snapshot_id":"d7bacdc6bf23e725b8ae5e1d0df25644e9821fda54ff177cfd3dc9aed1fbb685"}"#;

    fn finished(code: i32, stdout: &str, stderr: &str) -> Finished {
        use std::os::unix::process::ExitStatusExt;
        let mut unreadable = crate::Unreadable::default();
        for l in stderr.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["during"] == "archival" {
                unreadable.push(v["item"].as_str().unwrap().to_string());
            }
        }
        Finished {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.into(),
            exit_error: (code != 0).then(|| {
                (
                    code,
                    "Warning: at least one source file could not be read".into(),
                )
            }),
            tail: vec![],
            unreadable,
        }
    }

    #[tokio::test]
    async fn exit_status_3_with_a_summary_is_an_incomplete_backup_with_its_snapshot() {
        let e = Repo::finish_backup(finished(
            3,
            UNREADABLE_STDOUT,
            crate::run::tests::UNREADABLE_STDERR,
        ))
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), Some(3));
        assert_eq!(
            e.to_string(),
            "3 files could not be read (snapshot d7bacdc6 kept): /tmp/unr.1nMI/data/closed, /tmp/unr.1nMI/data/secret, /tmp/unr.1nMI/data/sub/s2"
        );
        let Error::Incomplete {
            summary,
            unreadable,
        } = e
        else {
            panic!("{e:?}")
        };
        assert_eq!(summary.short_id(), "d7bacdc6");
        assert_eq!(summary.total_files_processed, 1);
        assert_eq!(unreadable.count, 3);
        assert_eq!(
            unreadable.list(2),
            "/tmp/unr.1nMI/data/closed, /tmp/unr.1nMI/data/secret, …"
        );
        // Exit status 3 without a summary (no snapshot) is a plain failure.
        let e = Repo::finish_backup(finished(3, "", crate::run::tests::UNREADABLE_STDERR))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Failed { code: Some(3), .. }), "{e:?}");
        // Success is the summary.
        let ok = Repo::finish_backup(finished(0, UNREADABLE_STDOUT, ""))
            .await
            .unwrap();
        assert_eq!(ok.short_id(), "d7bacdc6");
    }

    /// A real restic that cannot read everything: as root without `CAP_DAC_OVERRIDE` and
    /// `CAP_DAC_READ_SEARCH` (`setpriv`), restic cannot read another user's `0600` file nor
    /// open its `0700` directory, and still writes its root-owned repository. Skipped when not
    /// root or without `setpriv`.
    #[tokio::test]
    async fn a_backup_that_cannot_read_some_files_keeps_its_snapshot_and_it_is_tagged() {
        use std::os::unix::fs::PermissionsExt;
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists());
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective uid.
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let (Some(setpriv), true, Ok(restic)) = (setpriv, root, stash_testenv::bins::bin("restic"))
        else {
            eprintln!("skipped: needs root, setpriv and the pinned restic");
            return;
        };
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        std::fs::create_dir_all(src.join("closed")).unwrap();
        std::fs::write(src.join("readable.txt"), "everyone may read this").unwrap();
        std::fs::write(src.join("secret.key"), "only uid 65534 may read this").unwrap();
        std::fs::write(src.join("closed/inside"), "x").unwrap();
        for (p, mode) in [("secret.key", 0o600), ("closed", 0o700)] {
            let p = src.join(p);
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let wrapper = work.path().join("restic-without-dac");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec {} --bounding-set=-dac_override,-dac_read_search {} \"$@\"\n",
                setpriv.display(),
                restic.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let password = "unreadable-test-pw-9d1e";
        let repo = Repo::builder(
            Location::local(work.path().join("repo"), ""),
            creds(&[("RESTIC_PASSWORD", password)]),
        )
        .binary(&wrapper)
        .scratch_dir(work.path().join("scratch"))
        .timeout(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
        repo.ensure_initialized().await.unwrap();
        let session = "stash-session=s1".to_string();
        let e = repo
            .backup(&src, "host-0", std::slice::from_ref(&session))
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(!text.contains(password), "{text}");
        let Error::Incomplete {
            summary,
            unreadable,
        } = e
        else {
            panic!("{e:?}")
        };
        let mut paths = unreadable.paths.clone();
        paths.sort();
        let p = |n: &str| src.join(n).display().to_string();
        assert_eq!(paths, [p("closed"), p("secret.key")], "{text}");
        assert_eq!(unreadable.count, 2);
        assert_eq!(summary.total_files_processed, 1, "only readable.txt");
        assert!(
            text.starts_with("2 files could not be read (snapshot "),
            "{text}"
        );

        let old = summary.snapshot_id.clone();
        let partial = vec!["partial".to_string()];
        let new = repo.tag(summary.short_id(), &partial).await.unwrap();
        assert_ne!(new, old, "restic rewrites a snapshot to tag it");
        let all = repo.snapshots(&SnapshotFilter::default()).await.unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].id, new);
        assert_eq!(all[0].tags, [session.clone(), "partial".to_string()]);
        // Tagging again changes nothing and names the same snapshot; an unknown id is an error.
        assert_eq!(repo.tag(&new, &partial).await.unwrap(), new);
        assert!(matches!(
            repo.tag(&old, &partial).await,
            Err(Error::SnapshotNotFound { .. })
        ));
    }

    #[test]
    fn ionice_class_is_validated() {
        let scratch = tempfile::tempdir().unwrap();
        let e = Repo::builder(
            Location::local("/r", ""),
            creds(&[("RESTIC_PASSWORD", "pw")]),
        )
        .scratch_dir(scratch.path())
        .ionice(Some(IoNice {
            class: 9,
            class_data: None,
        }))
        .build()
        .unwrap_err();
        assert!(matches!(e, Error::Config(_)));
    }
}
