//! One host's backup (stash-api.md §7.4): open the repository (initialising it when there is
//! none) while looking up this session's snapshots, back up each directory with `--host`;
//! after the host's report: check (on its own schedule, [`stash_machines::backup_host::check_due`]), forget with the
//! retention policy, stats.
use std::path::PathBuf;

use stash_crds::{BackupConfiguration, Repository};
use stash_machines::backup_host::{Phase as HostPhase, Session as HostSession};
use stash_restic as restic;

/// Where the agent finds its secret and scratch space.
#[derive(Clone)]
pub struct Settings {
    /// The storage Secret, mounted as files.
    pub secret_dir: PathBuf,
    /// Scratch space (cache, temp).
    pub scratch_dir: PathBuf,
    /// Use restic's cache.
    pub enable_cache: bool,
    /// Backend connections (gcs, azure, b2).
    pub max_connections: i32,
    /// Where the locks of other hosts in a command's way are reported (the session's
    /// `status.blockingLocks`, [`crate::report::lock_reporter`]); `None`: not reported.
    pub lock_reporter: Option<restic::LockReporter>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("secret_dir", &self.secret_dir)
            .field("scratch_dir", &self.scratch_dir)
            .field("enable_cache", &self.enable_cache)
            .field("max_connections", &self.max_connections)
            .field("lock_reporter", &self.lock_reporter.is_some())
            .finish()
    }
}

/// What one directory's backup produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotResult {
    /// The directory.
    pub directory: String,
    /// restic's short id.
    pub short_id: String,
    /// Bytes processed.
    pub total_bytes: u64,
    /// Bytes added to the repository.
    pub data_added: u64,
    /// Seconds taken.
    pub duration_secs: u64,
    /// Files processed.
    pub total_files: u64,
    /// New files.
    pub files_new: u64,
    /// Changed files.
    pub files_changed: u64,
    /// Unmodified files.
    pub files_unmodified: u64,
}

/// What a successful host backup produced. The figures after the snapshots are `None` when
/// the step that gives them failed (the failure is in `warnings`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupOutcome {
    /// One per directory.
    pub snapshots: Vec<SnapshotResult>,
    /// `restic check` found no errors.
    pub integrity: Option<bool>,
    /// Snapshots in the repository after forget.
    pub snapshot_count: Option<u64>,
    /// Snapshots forget removed.
    pub snapshots_removed: Option<u64>,
    /// Repository size (restore size of all snapshots).
    pub repository_size: Option<u64>,
    /// Follow-up steps that failed after the snapshots were taken.
    pub warnings: Vec<String>,
    /// What the follow-up steps came to, as conditions of the host's entry.
    pub conditions: Vec<stash_machines::backup_host::FollowUpCondition>,
}

pub use stash_core::location::location;

/// A restic handle for `repo` with the agent's settings.
pub fn open(repo: &Repository, settings: &Settings) -> Result<restic::Repo, String> {
    let location = location(repo)?;
    let credentials =
        restic::Credentials::from_secret_dir(&settings.secret_dir).map_err(|e| e.to_string())?;
    let mut r = restic::Repo::builder(location, credentials)
        .scratch_dir(settings.scratch_dir.clone())
        .cache(settings.enable_cache)
        .niceness_from_env()
        .backend_retry_budget(Some(retry_budget_from_env()))
        .build()
        .map_err(|e| e.to_string())?;
    if let Some(reporter) = &settings.lock_reporter {
        r.set_lock_reporter(reporter.clone());
    }
    Ok(r)
}

/// The environment variable that bounds how long restic may keep retrying an unreachable or
/// failing backend before the agent gives up (humantime, e.g. `30s`, `2m`). Set it through
/// `runtimeSettings.container.env` of the BackupConfiguration / RestoreSession.
pub const RETRY_BUDGET_ENV: &str = "STASH_BACKEND_RETRY_BUDGET";

/// Default backend retry budget of the agents: long enough for a flaky backend to recover,
/// short enough that a session fails well within the operator's session deadline.
pub const DEFAULT_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);

/// The backend retry budget from [`RETRY_BUDGET_ENV`], else [`DEFAULT_RETRY_BUDGET`] (an
/// unparsable value is logged and ignored).
pub fn retry_budget_from_env() -> std::time::Duration {
    parse_retry_budget(std::env::var(RETRY_BUDGET_ENV).ok().as_deref())
}

fn parse_retry_budget(v: Option<&str>) -> std::time::Duration {
    parse_duration(v, RETRY_BUDGET_ENV, DEFAULT_RETRY_BUDGET, false)
}

/// A humantime duration from the environment variable `name` (value `v`): `default` when it is
/// unset, empty, unparsable (logged) or zero while `zero_ok` is false.
fn parse_duration(
    v: Option<&str>,
    name: &str,
    default: std::time::Duration,
    zero_ok: bool,
) -> std::time::Duration {
    match v.map(str::trim).filter(|v| !v.is_empty()) {
        None => default,
        Some(v) => match humantime::parse_duration(v) {
            Ok(d) if zero_ok || !d.is_zero() => d,
            _ => {
                tracing::warn!(
                    value = v,
                    "{name} is not a valid duration; using the default"
                );
                default
            }
        },
    }
}

/// The retention policy in the wrapper's terms.
pub fn retention(p: &stash_crds::common::RetentionPolicy) -> restic::RetentionPolicy {
    let n = |v: Option<i32>| i64::from(v.unwrap_or(0));
    restic::RetentionPolicy {
        keep_last: n(p.keep_last),
        keep_hourly: n(p.keep_hourly),
        keep_daily: n(p.keep_daily),
        keep_weekly: n(p.keep_weekly),
        keep_monthly: n(p.keep_monthly),
        keep_yearly: n(p.keep_yearly),
        keep_tags: p.keep_tags.clone(),
        prune: p.prune,
        dry_run: p.dry_run,
    }
}

/// The environment variable that sets how often the sidecar runs `restic check` after a
/// backup (humantime, e.g. `6h`; `0s` checks after every backup). Set it through
/// `runtimeSettings.container.env` of the BackupConfiguration.
pub const CHECK_INTERVAL_ENV: &str = "STASH_CHECK_INTERVAL";

/// Default interval between two integrity checks of one agent.
pub const DEFAULT_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The check interval from [`CHECK_INTERVAL_ENV`], else [`DEFAULT_CHECK_INTERVAL`] (an
/// unparsable value is logged and ignored).
pub fn check_interval_from_env() -> std::time::Duration {
    parse_check_interval(std::env::var(CHECK_INTERVAL_ENV).ok().as_deref())
}

fn parse_check_interval(v: Option<&str>) -> std::time::Duration {
    parse_duration(v, CHECK_INTERVAL_ENV, DEFAULT_CHECK_INTERVAL, true)
}

/// The snapshots of one host's backup, and the restic handle for the follow-up steps.
#[derive(Debug)]
pub struct Snapshotted {
    /// One per directory (partial ones included: they are kept).
    pub snapshots: Vec<SnapshotResult>,
    /// The host's phase now: `Reporting` (its entry is what comes next).
    pub phase: HostPhase,
    /// What the snapshots come to ([`stash_machines::backup_host::verdict`]).
    pub verdict: stash_machines::backup_host::Verdict,
    /// Why the host fails although its snapshots exist (one text per partial snapshot);
    /// `Some` exactly when the verdict is not a success.
    pub failure: Option<String>,
    repo: restic::Repo,
}

/// How many of the paths restic could not read a host's error names (restic's count follows).
pub const UNREADABLE_LISTED: usize = 5;

/// The host's error for directory `dir`, whose snapshot (`short_id`, after tagging) restic made
/// without reading everything: the count, the snapshot kept, whether it carries the
/// [`PARTIAL_TAG`](stash_machines::backup_host::PARTIAL_TAG), and the first paths.
pub fn incomplete_message(
    dir: &str,
    short_id: &str,
    tagged: Result<(), &str>,
    unreadable: &restic::Unreadable,
) -> String {
    let tag = stash_machines::backup_host::PARTIAL_TAG;
    let kept = match tagged {
        Ok(()) => format!("snapshot {short_id} kept, tagged {tag}"),
        Err(e) => format!("snapshot {short_id} kept; tagging it {tag} failed: {e}"),
    };
    let list = unreadable.list(UNREADABLE_LISTED);
    let list = if list.is_empty() {
        String::new()
    } else {
        format!(": {list}")
    };
    format!(
        "backup of {dir}: {} could not be read ({kept}){list}",
        unreadable.files()
    )
}

/// A snapshot restic made of `dir` without reading every file (`restic::Error::Incomplete`):
/// keep it and tag it [`PARTIAL_TAG`](stash_machines::backup_host::PARTIAL_TAG) (restic
/// rewrites the snapshot, so its id changes). Returns the summary with the snapshot's id after
/// tagging (the old one when tagging failed) and the host's error text.
pub async fn keep_partial(
    r: &restic::Repo,
    dir: &str,
    summary: &restic::BackupSummary,
    unreadable: &restic::Unreadable,
) -> (restic::BackupSummary, String) {
    let tag = stash_machines::backup_host::PARTIAL_TAG.to_string();
    let tagged = r.tag(&summary.snapshot_id, &[tag]).await;
    let mut kept = summary.clone();
    let text = match &tagged {
        Ok(id) => {
            kept.snapshot_id = id.clone();
            incomplete_message(dir, kept.short_id(), Ok(()), unreadable)
        }
        Err(e) => incomplete_message(dir, kept.short_id(), Err(&e.to_string()), unreadable),
    };
    tracing::warn!(
        directory = dir,
        snapshot = kept.short_id(),
        unreadable = unreadable.count,
        paths = ?unreadable.paths,
        "restic could not read some files: the snapshot is kept and tagged partial, the host fails"
    );
    (kept, text)
}

/// Why one host's snapshots could not be taken, and the phase of the host lifecycle it failed
/// in (`LookingUp`: the repository or the tag lookup; `BackingUp`: a `restic backup`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HostFailure {
    /// Where the host was.
    pub phase: HostPhase,
    /// User-facing text (restic's reason, secrets scrubbed).
    pub message: String,
}

/// The session as the host machine sees it, from `status.phase`: empty or `Pending` (not
/// started), `Running`, or any terminal phase (ended).
pub fn session_state(phase: Option<stash_crds::backup_session::Phase>) -> HostSession {
    use stash_crds::backup_session::Phase;
    match phase {
        Some(Phase::Running) => HostSession::Running,
        Some(p) if p.is_terminal() => HostSession::Ended,
        _ => HostSession::Pending,
    }
}

/// Take `session`'s snapshots of this host, which is in `phase` (`LookingUp`: the operator has
/// started the session and the host has not reported). Errors are user-facing text (restic's
/// reason, secrets scrubbed) with the phase they happened in. The host's steps are decided by
/// [`stash_machines::backup_host`], every one a transition of its lifecycle:
/// snapshots carry the session's tags (its name, its uid), a directory that already has one for this session (by uid) is
/// reported, not backed up again. One restic invocation opens the repository and looks the
/// tag up (`snapshots --tag … --host …`; a repository that does not exist is initialised
/// instead, and then holds no snapshot of the session), then one `backup` per directory.
/// What follows the snapshots is [`follow_up`], after the host's report.
pub async fn run(
    repo: &Repository,
    bc: &BackupConfiguration,
    host: &str,
    session: &str,
    session_uid: &str,
    phase: HostPhase,
    settings: &Settings,
) -> Result<Snapshotted, HostFailure> {
    use stash_machines::backup_host::{self as plan, HostObservation, HostStep};
    let failed = |phase, message| HostFailure { phase, message };
    let r = open(repo, settings).map_err(|e| failed(phase, e))?;
    let directories: Vec<String> = bc
        .spec
        .target
        .as_ref()
        .map(|t| t.backup_paths().iter().map(|d| normalize(d)).collect())
        .unwrap_or_default();
    if directories.is_empty() {
        return Err(failed(
            phase,
            "BackupConfiguration has no spec.target.paths (or directories)".into(),
        ));
    }
    let tags = [
        plan::session_tag(session),
        plan::session_uid_tag(session_uid),
    ];
    let (_created, found) = r
        .snapshots_or_init(&restic::SnapshotFilter {
            hosts: vec![host.to_string()],
            tags: vec![tags[1].clone()],
            ..Default::default()
        })
        .await
        .map_err(|e| failed(phase, e.to_string()))?;
    // The observation the host machine decides from: the session is Running and this host has
    // not reported (what brought the agent here), and restic's answer.
    let obs = HostObservation {
        session: HostSession::Running,
        reported: false,
        directories,
        tagged: Some(
            found
                .iter()
                .flat_map(|s| s.paths.iter().map(|p| (normalize(p), s.short_id.clone())))
                .collect(),
        ),
    };
    let d = plan::decide(&obs);
    if let Some(r) = d.rejection {
        return Err(failed(phase, format!("BUG: {r}")));
    }
    let phase = d.phase;
    let (back_up, reuse) = match d.step {
        HostStep::BackUp { back_up, reuse } => (back_up, reuse),
        HostStep::Report { snapshots } => (vec![], snapshots),
        HostStep::Idle | HostStep::LookUpSnapshots => (vec![], Default::default()),
    };
    // A snapshot found by the session's tag is partial when it carries the partial tag (the
    // host that took it failed, or crashed before its report): reported again, as Failed.
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    let mut snapshots: Vec<SnapshotResult> = reuse
        .into_iter()
        .map(|(directory, short_id)| {
            tracing::info!(%directory, %short_id, "this session's snapshot already exists; reporting it");
            let outcome = found
                .iter()
                .find(|s| s.short_id == short_id)
                .map_or(plan::SnapshotOutcome::Complete, |s| plan::outcome_from_tags(&s.tags));
            if outcome == plan::SnapshotOutcome::Partial {
                failures.push(format!(
                    "backup of {directory}: snapshot {short_id} of this session is tagged {} (restic could not read some files)",
                    plan::PARTIAL_TAG
                ));
            }
            outcomes.push(outcome);
            SnapshotResult {
                directory,
                short_id,
                total_bytes: 0,
                data_added: 0,
                duration_secs: 0,
                total_files: 0,
                files_new: 0,
                files_changed: 0,
                files_unmodified: 0,
            }
        })
        .collect();
    let target = bc.spec.target.clone().unwrap_or_default();
    // Admission refused arguments off the allow-list; one that got in fails the host, named.
    let extra = stash_core::args::check(stash_core::args::Command::Backup, &target.args)
        .map_err(|errs| failed(phase, refused_args("spec.target.args", &errs)))?;
    for dir in &back_up {
        let s = match r
            .backup_excluding(
                std::path::Path::new(dir),
                host,
                &tags,
                &target.exclude,
                &extra,
            )
            .await
        {
            Ok(s) => {
                outcomes.push(plan::SnapshotOutcome::Complete);
                s
            }
            // A partial snapshot is a snapshot: kept, tagged, and the host goes on.
            Err(restic::Error::Incomplete {
                summary,
                unreadable,
            }) => {
                let (kept, text) = keep_partial(&r, dir, &summary, &unreadable).await;
                outcomes.push(plan::SnapshotOutcome::Partial);
                failures.push(text);
                kept
            }
            Err(e) => return Err(failed(phase, format!("backup of {dir}: {e}"))),
        };
        snapshots.push(SnapshotResult {
            directory: dir.clone(),
            short_id: s.short_id().to_string(),
            total_bytes: s.total_bytes_processed,
            data_added: s.data_added,
            duration_secs: s.total_duration.round() as u64,
            total_files: s.total_files_processed,
            files_new: s.files_new,
            files_changed: s.files_changed,
            files_unmodified: s.files_unmodified,
        });
    }
    let verdict = plan::verdict(&outcomes);
    // `BackingUp --Snapshot--> Reporting` (`--Fail-->` with a partial snapshot); `Reporting`
    // already when every snapshot existed.
    let phase = match phase {
        HostPhase::BackingUp => plan::after_step(phase, verdict.succeeded)
            .map_err(|r| failed(phase, format!("BUG: {r}")))?,
        p => p,
    };
    let failure = (!verdict.succeeded).then(|| failures.join("; "));
    Ok(Snapshotted {
        snapshots,
        phase,
        verdict,
        failure,
        repo: r,
    })
}

/// The steps after the snapshots, run once the host has reported, and only when its
/// snapshots are complete (`Snapshotted::verdict`; the session's outcome does not depend on
/// them): `check` when `check` is set, `forget` with the retention policy, `stats`,
/// and the snapshot count (from `forget`'s groups when it ran, else `snapshots`). Nothing here
/// can lose the snapshots: a failed step is a warning and its figure `None`.
pub async fn follow_up(s: Snapshotted, bc: &BackupConfiguration, check: bool) -> BackupOutcome {
    let policy = retention(&bc.spec.retention_policy.clone().unwrap_or_default());
    BackupOutcome {
        snapshots: s.snapshots,
        ..after_snapshots(&s.repo, &policy, check).await
    }
}

/// The follow-up steps of [`follow_up`] on `r` with `policy`, for the sidecar and the job
/// model alike (`snapshots` left empty): a failed step is a warning, a condition and a figure
/// `None`, never a failed host.
pub async fn after_snapshots(
    r: &restic::Repo,
    policy: &restic::RetentionPolicy,
    check: bool,
) -> BackupOutcome {
    use stash_machines::backup_host::{self as plan, AfterSnapshot, FollowUpStep};
    let outcome = |e: Option<String>| e.map_or(AfterSnapshot::Done, AfterSnapshot::Failed);
    let integrity = if check {
        Some(r.check(false).await)
    } else {
        None
    };
    let forgot = if policy.is_empty() {
        None
    } else {
        Some(r.forget(policy).await)
    };
    let stats = r.stats().await;
    // forget lists every snapshot it keeps (no host filter: every group); its output is empty
    // only when the repository holds none, and then `snapshots` says so. A dry run removes
    // nothing, so its list is not the repository's.
    let count = match &forgot {
        Some(Ok(f)) if !f.groups.is_empty() && !policy.dry_run => Ok(f.kept as u64),
        _ => r
            .snapshots(&restic::SnapshotFilter {
                no_lock: true,
                ..Default::default()
            })
            .await
            .map(|c| c.len() as u64),
    };
    let err = |e: &restic::Error| Some(e.to_string());
    let mut steps = Vec::new();
    if let Some(i) = &integrity {
        let found = match i {
            Ok(true) => None,
            Ok(false) => Some("restic check found errors in the repository".to_string()),
            Err(e) => err(e),
        };
        steps.push((FollowUpStep::Check, outcome(found)));
    }
    if let Some(f) = &forgot {
        steps.push((
            FollowUpStep::Forget,
            outcome(f.as_ref().err().and_then(err)),
        ));
    }
    steps.push((
        FollowUpStep::Stats,
        outcome(stats.as_ref().err().and_then(err)),
    ));
    steps.push((
        FollowUpStep::Count,
        outcome(count.as_ref().err().and_then(err)),
    ));
    let follow_ups = plan::after_snapshot(&steps);
    BackupOutcome {
        snapshots: vec![],
        integrity: integrity.and_then(Result::ok),
        snapshot_count: count.ok(),
        snapshots_removed: match forgot {
            None => Some(0),
            Some(f) => f.ok().map(|f| f.removed as u64),
        },
        repository_size: stats.ok().map(|s| s.total_size),
        warnings: follow_ups.warnings,
        conditions: follow_ups.conditions,
    }
}

/// A directory as restic records it: without a trailing slash (but `/` stays `/`).
fn normalize(dir: &str) -> String {
    let t = dir.trim_end_matches('/');
    if t.is_empty() { "/".into() } else { t.into() }
}

/// `field[i]: why; …` for refused `target.args`.
pub(crate) fn refused_args(field: &str, errs: &[(usize, String)]) -> String {
    errs.iter()
        .map(|(i, why)| format!("{field}[{i}]: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_incomplete_backup_names_the_count_the_snapshot_and_the_first_paths() {
        let u = |n: usize| restic::Unreadable {
            paths: (0..n.min(restic::Unreadable::KEPT))
                .map(|i| format!("/data/f{i}"))
                .collect(),
            count: n,
        };
        assert_eq!(
            incomplete_message("/data", "1a2b3c4d", Ok(()), &u(3)),
            "backup of /data: 3 files could not be read (snapshot 1a2b3c4d kept, tagged partial): /data/f0, /data/f1, /data/f2"
        );
        assert_eq!(
            incomplete_message("/data", "1a2b3c4d", Ok(()), &u(1)),
            "backup of /data: 1 file could not be read (snapshot 1a2b3c4d kept, tagged partial): /data/f0"
        );
        assert_eq!(
            incomplete_message("/data", "1a2b3c4d", Ok(()), &u(12)),
            "backup of /data: 12 files could not be read (snapshot 1a2b3c4d kept, tagged partial): /data/f0, /data/f1, /data/f2, /data/f3, /data/f4, …"
        );
        assert_eq!(
            incomplete_message(
                "/data",
                "1a2b3c4d",
                Err("repository is already locked"),
                &u(0)
            ),
            "backup of /data: some files could not be read (snapshot 1a2b3c4d kept; tagging it partial failed: repository is already locked)"
        );
    }

    #[test]
    fn the_retry_budget_defaults_and_parses() {
        assert_eq!(parse_retry_budget(None), DEFAULT_RETRY_BUDGET);
        assert_eq!(parse_retry_budget(Some("")), DEFAULT_RETRY_BUDGET);
        assert_eq!(parse_retry_budget(Some("5s")), Duration::from_secs(5));
        assert_eq!(parse_retry_budget(Some("2m")), Duration::from_secs(120));
        assert_eq!(parse_retry_budget(Some("0s")), DEFAULT_RETRY_BUDGET);
        assert_eq!(parse_retry_budget(Some("soon")), DEFAULT_RETRY_BUDGET);
    }

    #[test]
    fn the_check_interval_defaults_and_parses() {
        assert_eq!(parse_check_interval(None), DEFAULT_CHECK_INTERVAL);
        assert_eq!(
            parse_check_interval(Some("6h")),
            Duration::from_secs(6 * 3600)
        );
        assert_eq!(parse_check_interval(Some("0s")), Duration::ZERO);
        assert_eq!(parse_check_interval(Some("often")), DEFAULT_CHECK_INTERVAL);
    }
}
