//! `testenv`: the local single-node cluster (see `stash_testenv::cluster`).
//!
//! ```text
//! testenv up [--images DIR]      run the cluster in the foreground until Ctrl-C/SIGTERM
//! testenv start [--images DIR]   run `up` in the background; return when the node is Ready
//! testenv down                   stop a started cluster (or a killed run's leftovers)
//! testenv snapshot FILE          record the host state the environment may change
//! testenv verify FILE            compare the host with a snapshot; non-zero on a difference
//! ```
//! One cluster per machine: `up` holds an exclusive lock on the state directory.
use std::{
    fs::File,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use stash_testenv::cluster::{self, host::HostSnapshot};

#[derive(Parser)]
#[command(about = "A real single-node Kubernetes cluster in a network namespace of its own")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the cluster in the foreground until Ctrl-C or SIGTERM.
    Up {
        /// Directory of docker-archive image tars to import (testenv/images.sh).
        #[arg(long)]
        images: Option<PathBuf>,
    },
    /// Start `up` in the background and wait until the node is Ready.
    Start {
        /// Directory of docker-archive image tars to import.
        #[arg(long)]
        images: Option<PathBuf>,
    },
    /// Stop the cluster started with `start` and undo everything it changed.
    Down,
    /// Record the host state that the environment may change.
    Snapshot { file: PathBuf },
    /// Compare the host with a snapshot; exit 1 listing every difference.
    Verify { file: PathBuf },
}

fn lock(state: &std::path::Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(state)?;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("lock"))?;
    f.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "a cluster is already running on this machine (lock {} is held)",
            state.join("lock").display()
        )
    })?;
    Ok(f)
}

fn tars(dir: Option<PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    out.sort();
    // The sandbox image first: every pod needs it.
    out.sort_by_key(|p| p.file_name().is_none_or(|n| n != "pause.tar"));
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state = cluster::state_dir();
    match Cli::parse().cmd {
        Cmd::Up { images } => {
            let _lock = lock(&state)?;
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            cluster::run(&tars(images)?, stop).await?;
        }
        Cmd::Start { images } => {
            drop(lock(&state)?);
            let begun = Instant::now();
            let log = state.join("up.log");
            let out = File::create(&log)?;
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.arg("up")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            if let Some(dir) = images {
                cmd.arg("--images").arg(dir);
            }
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            let mut child = cmd.spawn()?;
            let ready = cluster::Layout::new()?.ready_file();
            loop {
                if ready.exists() {
                    break;
                }
                if let Some(status) = child.try_wait()? {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    anyhow::bail!("testenv up exited with {status}:\n{text}");
                }
                anyhow::ensure!(
                    begun.elapsed() < Duration::from_secs(300),
                    "the cluster did not come up in 300 s; see {}",
                    log.display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            println!(
                "cluster up in {:.1}s (pid {}, log {})",
                begun.elapsed().as_secs_f64(),
                child.id(),
                log.display()
            );
            println!(
                "export KUBECONFIG={}",
                cluster::Layout::new()?.kubeconfig("admin").display()
            );
        }
        Cmd::Down => {
            let begun = Instant::now();
            let layout = cluster::Layout::new()?;
            if let Some(pid) = cluster::up_process(&layout) {
                cluster::host::signal(pid, libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(60);
                while !cluster::host::gone(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            // Whatever is left (a killed, stuck or still starting `up`): by the record.
            if lock(&state).is_err()
                && let Some(rec) = cluster::host::Record::load(&state)
                && let Some((pid, _, _)) = rec.procs.iter().find(|(pid, start, name)| {
                    name == "testenv up" && cluster::host::start_time(*pid) == Some(*start)
                })
            {
                cluster::host::signal(*pid, libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(60);
                while !cluster::host::gone(*pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let lock_file = lock(&state)?;
            cluster::cleanup_leftovers(&state);
            // Nothing of the environment stays on the host: the lock and the state directory
            // go too (removed while held; `start` makes them anew).
            let _ = std::fs::remove_file(state.join("lock"));
            let _ = std::fs::remove_dir(&state);
            drop(lock_file);
            println!("cluster down in {:.1}s", begun.elapsed().as_secs_f64());
        }
        Cmd::Snapshot { file } => {
            std::fs::write(&file, serde_json::to_vec_pretty(&HostSnapshot::take())?)?;
        }
        Cmd::Verify { file } => {
            let before: HostSnapshot = serde_json::from_slice(&std::fs::read(&file)?)?;
            let diff = HostSnapshot::diff(&before, &HostSnapshot::take());
            let checks = before.sysctls.len()
                + before.links.len()
                + before.routes.len()
                + before.netns.len()
                + before.cgroups.len()
                + before.iptables.len();
            if diff.is_empty() {
                println!(
                    "host restored: sysctls, links, routes, network namespaces, fixed paths, cgroups and iptables as before ({checks} items compared)"
                );
            } else {
                for d in &diff {
                    eprintln!("host not restored: {d}");
                }
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
