//! The `stash` executable: the operator and its agents.
use clap::{Parser, Subcommand};
use stash::{agent, operator};

/// Kubernetes backup and restore with restic, speaking the Stash API.
#[derive(Parser)]
#[command(name = "stash", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as YAML (deterministic).
    Crds,
    /// Run the operator.
    Run(operator::Options),
    /// Create a BackupSession for a BackupConfiguration (what the trigger CronJob runs).
    CreateBackupsession(agent::create_backupsession::Options),
    /// The backup sidecar.
    RunBackup(agent::run_backup::Options),
    /// Restore one host (the restore init-container, or a restore Job without a Task).
    Restore(agent::restore::Options),
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Crds => print!("{}", stash_crds::render_yaml()),
        Command::Run(opts) => operator::run(opts).await?,
        Command::CreateBackupsession(opts) => agent::create_backupsession::run(opts).await?,
        Command::RunBackup(opts) => agent::run_backup::run(opts).await?,
        Command::Restore(opts) => agent::restore::run(opts).await?,
        Command::BackupPvc(opts) => agent::pvc::backup(opts).await?,
        Command::RestorePvc(opts) => agent::pvc::restore(opts).await?,
        Command::UpdateStatus(opts) => agent::update_status::run(opts).await?,
        Command::BackupPg(opts) => agent::postgres::backup(opts).await?,
        Command::RestorePg(opts) => agent::postgres::restore(opts).await?,
    }
    Ok(())
}
