//! `node-agent`: the kubelet stand-in of `stash_testenv::node`, standalone (for the demo).
//! Runs until SIGTERM or SIGINT, then kills every pod process by process group.
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "A node agent standing in for the kubelet (stash-rs test environment)")]
struct Args {
    /// Admin kubeconfig.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The Node to register.
    #[arg(long, default_value = stash_testenv::node::NODE_NAME)]
    node_name: String,
    /// Where volumes, PVC directories (pvc/<ns>/<claim>) and pod logs live.
    #[arg(long)]
    root: PathBuf,
    /// `<image>=<local binary>`: containers of this image run the binary (repeatable).
    #[arg(long = "image", value_parser = parse_image)]
    images: Vec<(String, PathBuf)>,
    /// Prepended to PATH of pod processes (repeatable).
    #[arg(long = "path")]
    path_dirs: Vec<PathBuf>,
    /// API server URL for pods (default: the kubeconfig's).
    #[arg(long)]
    api_server: Option<String>,
    /// The API server's serving CA (ca.crt for pods).
    #[arg(long)]
    ca_file: PathBuf,
}

fn parse_image(s: &str) -> Result<(String, PathBuf), String> {
    let (image, bin) = s.rsplit_once('=').ok_or_else(|| format!("expected <image>=<path>, got {s:?}"))?;
    Ok((image.to_string(), PathBuf::from(bin)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let config = stash_testenv::load_config(&args.kubeconfig).await?;
    let ca_pem =
        std::fs::read_to_string(&args.ca_file).map_err(|e| anyhow::anyhow!("read {}: {e}", args.ca_file.display()))?;
    let handle = stash_testenv::node::Handle::new(stash_testenv::node::Options {
        config,
        node_name: args.node_name,
        root: args.root,
        images: args.images,
        path_dirs: args.path_dirs,
        api_server: args.api_server,
        ca_pem,
        log: None,
    })?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    handle
        .run(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}
