//! The `stash` executable: the operator and its agents.
use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", stash_crds::render_yaml()),
    }
    Ok(())
}
