//! `stash-install`: print every manifest a cluster needs (`kubectl apply --server-side -f -`).
use clap::Parser;

/// Render the stash-rs install manifests (CRDs, RBAC, Deployment, Service, webhooks, APIService).
#[derive(Parser)]
#[command(name = "stash-install", version)]
struct Cli {
    #[command(flatten)]
    opts: stash_install::InstallOptions,
}

fn main() {
    print!("{}", stash_install::render(&Cli::parse().opts));
}
