//! `stash`: the operator process (`stash run`: controllers, admission webhooks, Snapshot API)
//! and `stash crds`. The agents are `stash-agent` (crate `stash-agent`), in the same image.
use clap::{Parser, Subcommand};

mod serve;

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
    Run(Box<serve::RunOptions>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    stash_runtime::init_process();
    match Cli::parse().command {
        Command::Crds => {
            print!("{}", stash_crds::render_yaml());
            Ok(())
        }
        Command::Run(opts) => serve::run(*opts).await,
    }
}
