//! `testenv up`: start the local control plane for a person and print how to use it.
//! Runs until Ctrl-C (or SIGTERM), then stops every server by process group.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "up".into());
    anyhow::ensure!(cmd == "up", "usage: testenv up");
    let cp = stash_testenv::ControlPlane::start().await?;
    println!("control plane up in {:.1}s at {}", cp.started_in.as_secs_f64(), cp.server);
    println!("export KUBECONFIG={}", cp.kubeconfig.display());
    println!("kubectl: {}", stash_testenv::bins::bin("kubectl")?.display());
    println!("logs: {}", cp.dir().display());
    println!("press Ctrl-C to stop");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    cp.shutdown();
    Ok(())
}
