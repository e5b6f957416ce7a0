//! `unlock-dead`: what the operator's unlock Pod runs to remove the locks of a dead agent.
//!
//! The Pod carries the dead agent's hostname (`spec.hostname`), so restic's own rule proves
//! its locks stale: a lock of *this* hostname whose pid does not run here. So that no process
//! of the Pod holds such a pid, the agent first spends pids (short-lived children) until the
//! next one is above every pid of the dead host's locks ([`advance_pids`], before any thread
//! starts); only pid 1 (the agent itself) stays below, and a lock of pid 1 is left. Then, if
//! that hostname holds no lock but those judged dead (`--only`: a pod of the same name started
//! since would hold others), `restic unlock` (never `--remove-all`); the last line of the log
//! says which locks of that hostname were removed and which are left, as JSON ([`Outcome`]).
use std::path::PathBuf;

use stash_crds::Repository;
use stash_restic as restic;

/// Options of `unlock-dead`.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// The dead agent's hostname (also this Pod's).
    #[arg(long)]
    pub hostname: String,
    /// The highest pid of that host's reported locks.
    #[arg(long, default_value_t = 0)]
    pub above_pid: u32,
    /// The ids of the locks judged dead (comma-separated): when that hostname holds any other
    /// lock (a pod of the same name started since, whose restic is alive), nothing is removed.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The Repository (JSON), from this environment variable.
    #[arg(long, default_value = "STASH_REPOSITORY")]
    pub repository_env: String,
    /// Where the storage Secret is mounted.
    #[arg(long)]
    pub secret_dir: PathBuf,
    /// Scratch space.
    #[arg(long, default_value = "/tmp")]
    pub scratch_dir: PathBuf,
}

/// The most children [`advance_pids`] starts.
const MAX_SPENT: u32 = 100_000;

/// Spend pids until the next one this process's children get is above `pid` (at most
/// [`MAX_SPENT`] children): run before the async runtime, whose threads take pids too.
pub fn advance_pids(pid: u32) {
    let me = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    for _ in 0..MAX_SPENT {
        let Ok(mut child) = std::process::Command::new(&me)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return;
        };
        let id = child.id();
        let _ = child.wait();
        if id > pid {
            return;
        }
    }
}

/// What the unlock came to (the log's last line).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// Ids of the host's locks restic removed.
    pub removed: Vec<String>,
    /// Ids of the host's locks still there.
    pub left: Vec<String>,
}

/// Run `unlock-dead`.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let repo: Repository = serde_json::from_str(
        &std::env::var(&opts.repository_env)
            .map_err(|_| anyhow::anyhow!("{} is not set", opts.repository_env))?,
    )?;
    let settings = crate::backup::Settings {
        secret_dir: opts.secret_dir.clone(),
        scratch_dir: opts.scratch_dir.clone(),
        enable_cache: false,
        max_connections: 0,
        lock_reporter: None,
    };
    let r = crate::backup::open(&repo, &settings).map_err(|e| anyhow::anyhow!(e))?;
    let of_host = |locks: Vec<restic::LockInfo>| -> Vec<String> {
        locks
            .into_iter()
            .filter(|l| l.hostname == opts.hostname)
            .map(|l| l.id)
            .collect()
    };
    let before = of_host(r.locks().await?);
    if let Some(other) = before.iter().find(|id| !opts.only.contains(id)) {
        eprintln!(
            "lock {other} of {} was not judged dead: nothing removed",
            opts.hostname
        );
        println!(
            "{}",
            serde_json::to_string(&Outcome {
                removed: Vec::new(),
                left: before,
            })?
        );
        return Ok(());
    }
    r.unlock(false).await?;
    let left = of_host(r.locks().await?);
    let outcome = Outcome {
        removed: before
            .iter()
            .filter(|id| !left.contains(id))
            .cloned()
            .collect(),
        left,
    };
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}
