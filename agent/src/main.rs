//! `stash-agent`: the commands that run in pods — the backup sidecar, the restore
//! init-container, the job model's steps and the trigger CronJob's. The operator names this
//! executable (`command`) in every container it injects or creates; it links no HTTP server,
//! no certificate generation, no object-store client and no admission code.
use clap::{Parser, Subcommand};
use futures::{FutureExt, future::BoxFuture};
use stash_agent as agent;

/// The stash-rs agent (runs in pods; the operator is `stash`).
#[derive(Parser)]
#[command(name = "stash-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a BackupSession for a BackupConfiguration (what the trigger CronJob runs).
    CreateBackupsession(agent::create_backupsession::Options),
    /// The backup sidecar.
    RunBackup(agent::run_backup::Options),
    /// Restore one host (the restore init-container, or a restore Job without a Task).
    Restore(agent::restore_host::Options),
    /// Back up directories of a PVC (first step of the `pvc-backup` Task).
    BackupPvc(agent::pvc::BackupOptions),
    /// Restore directories into a PVC (first step of the `pvc-restore` Task).
    RestorePvc(agent::pvc::RestoreOptions),
    /// Record a job-model step's output.json in the session status (last step of every Task).
    UpdateStatus(agent::update_status::Options),
    /// Back up a PostgreSQL database: pg_dump streamed into restic.
    BackupPg(agent::postgres::BackupOptions),
    /// Restore a PostgreSQL database: restic dump streamed into psql.
    RestorePg(agent::postgres::RestoreOptions),
    /// Remove a dead agent's restic locks, under its hostname (the operator's unlock Pod).
    UnlockDead(agent::unlock::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::UnlockDead(o) = &cli.command {
        // Before any thread: the runtime's threads take pids too.
        agent::unlock::advance_pids(o.above_pid);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    stash_runtime::init_process();
    let agent = match cli.command {
        Command::CreateBackupsession(opts) => agent::create_backupsession::run(opts).boxed(),
        Command::RunBackup(opts) => agent::run_backup::run(opts).boxed(),
        Command::Restore(opts) => agent::restore_host::run(opts).boxed(),
        Command::BackupPvc(opts) => agent::pvc::backup(opts).boxed(),
        Command::RestorePvc(opts) => agent::pvc::restore(opts).boxed(),
        Command::UpdateStatus(opts) => agent::update_status::run(opts).boxed(),
        Command::BackupPg(opts) => agent::postgres::backup(opts).boxed(),
        Command::RestorePg(opts) => agent::postgres::restore(opts).boxed(),
        Command::UnlockDead(opts) => agent::unlock::run(opts).boxed(),
    };
    until_stopped(agent).await
}

/// Run an agent until it ends or its container is stopped (SIGTERM: a pod deleted, evicted,
/// drained; SIGINT). Stopped, the agent's work is dropped — which asks every running restic
/// to stop and remove its lock — and the process exits only once they have (bounded): as
/// PID 1 of its container, its exit would SIGKILL them and leave their locks behind.
async fn until_stopped(agent: BoxFuture<'static, anyhow::Result<()>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let why = tokio::select! {
        r = agent => return r,
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::warn!("{why}: stopping; restic is asked to stop and remove its lock first");
    let clean = stash_restic::stopped(std::time::Duration::from_secs(10)).await;
    anyhow::bail!(
        "stopped by {why}{}",
        if clean {
            ""
        } else {
            " (a restic did not exit in time)"
        }
    )
}
