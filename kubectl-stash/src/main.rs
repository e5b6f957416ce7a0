//! `kubectl stash`: the stash-rs kubectl plugin.
//!
//! On `PATH` as `kubectl-stash`, kubectl runs it for `kubectl stash …`. It talks to the cluster
//! of the current kubeconfig context (`KUBECONFIG`, `--context`).
//!
//! * `backup <bc>`: create a BackupSession now and follow it to its end with a progress display;
//!   exit 0 when it Succeeded, 1 otherwise (with the reason), 2 on timeout.
//! * `snapshots`: list snapshots through the Snapshot API (repositories.stash.appscode.com).
//! * `unlock <repository>`: remove only the stale restic locks, saying which it removed and which
//!   it kept.
//! * `describe <session>`: a BackupSession or RestoreSession: its lifecycle with the current
//!   phase marked, its hosts and errors.
//! * `pause <bc>` / `resume <bc>`.
use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use stash_crds::{BackupConfiguration, BackupSession, Repository, RestoreSession, Snapshot};
use stash_machines::Lifecycle;

mod render;

/// The stash-rs kubectl plugin.
#[derive(Parser)]
#[command(name = "kubectl-stash", bin_name = "kubectl stash", version)]
struct Cli {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Back up now: create a BackupSession for a BackupConfiguration and follow it to its end.
    Backup {
        /// The BackupConfiguration.
        backup_configuration: String,
        /// Give up following after this long (the session goes on).
        #[arg(long, default_value = "6h", value_parser = humantime_parse)]
        timeout: Duration,
        /// Only create the session, do not follow it.
        #[arg(long)]
        no_follow: bool,
    },
    /// List snapshots (the Snapshot API, repositories.stash.appscode.com/v1alpha1).
    Snapshots {
        /// Label selector, e.g. `repository=local-repo`.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Remove the stale restic locks of a Repository (never a live one), saying which.
    Unlock {
        /// The Repository.
        repository: String,
        /// The restic binary.
        #[arg(long, env = "STASH_RESTIC", default_value = "restic")]
        restic: PathBuf,
    },
    /// Describe a BackupSession or RestoreSession: lifecycle, hosts, errors.
    Describe {
        /// The session's name.
        session: String,
    },
    /// Pause a BackupConfiguration (no new sessions; running ones finish).
    Pause {
        /// The BackupConfiguration.
        backup_configuration: String,
    },
    /// Resume a paused BackupConfiguration.
    Resume {
        /// The BackupConfiguration.
        backup_configuration: String,
    },
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("invalid duration {s:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

/// The exit code of a command that ran to its end (errors exit 1 with `error: …`).
struct Exit(u8);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(Exit(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn client(context: Option<String>) -> anyhow::Result<(Client, String)> {
    let opts = KubeConfigOptions {
        context,
        ..Default::default()
    };
    let config = match Kubeconfig::read() {
        Ok(kc) => Config::from_custom_kubeconfig(kc, &opts)
            .await
            .context("kubeconfig")?,
        Err(_) => Config::infer()
            .await
            .context("no kubeconfig and not in a cluster")?,
    };
    let ns = config.default_namespace.clone();
    Ok((Client::try_from(config)?, ns))
}

async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let (client, default_ns) = client(cli.context).await?;
    let ns = cli.namespace.unwrap_or(default_ns);
    match cli.command {
        Command::Backup {
            backup_configuration,
            timeout,
            no_follow,
        } => backup(&client, &ns, &backup_configuration, timeout, no_follow).await,
        Command::Snapshots {
            selector,
            all_namespaces,
        } => snapshots(&client, &ns, selector, all_namespaces).await,
        Command::Unlock { repository, restic } => unlock(&client, &ns, &repository, restic).await,
        Command::Describe { session } => describe(&client, &ns, &session).await,
        Command::Pause {
            backup_configuration,
        } => set_paused(&client, &ns, &backup_configuration, true).await,
        Command::Resume {
            backup_configuration,
        } => set_paused(&client, &ns, &backup_configuration, false).await,
    }
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

async fn set_paused(client: &Client, ns: &str, name: &str, paused: bool) -> anyhow::Result<Exit> {
    let api = Api::<BackupConfiguration>::namespaced(client.clone(), ns);
    let bc = api
        .get_opt(name)
        .await?
        .ok_or_else(|| anyhow!("BackupConfiguration {ns}/{name} not found"))?;
    let verb = if paused { "paused" } else { "resumed" };
    if bc.spec.paused == paused {
        println!(
            "BackupConfiguration {ns}/{name} is already {}",
            if paused {
                "paused"
            } else {
                "running (not paused)"
            }
        );
        return Ok(Exit(0));
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": paused}})),
    )
    .await?;
    println!("BackupConfiguration {ns}/{name} {verb}");
    Ok(Exit(0))
}

async fn backup(
    client: &Client,
    ns: &str,
    bc_name: &str,
    timeout: Duration,
    no_follow: bool,
) -> anyhow::Result<Exit> {
    let bcs = Api::<BackupConfiguration>::namespaced(client.clone(), ns);
    let bc = bcs
        .get_opt(bc_name)
        .await?
        .ok_or_else(|| anyhow!("BackupConfiguration {ns}/{bc_name} not found"))?;
    if bc.spec.paused {
        bail!(
            "BackupConfiguration {ns}/{bc_name} is paused; `kubectl stash resume {bc_name}` first"
        );
    }
    let unix = jiff::Timestamp::now().as_second();
    let name = format!("{bc_name}-{unix}");
    let session: BackupSession = serde_json::from_value(json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
        "metadata": {"name": name, "namespace": ns, "labels": {
            stash_crds::consts::BACKUP_CONFIGURATION_LABEL: bc_name,
            stash_crds::consts::LEGACY_BACKUP_CONFIGURATION_LABEL: bc_name,
        }},
        "spec": {"backupConfiguration": {"name": bc_name}},
    }))?;
    let api = Api::<BackupSession>::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &session)
        .await
        .with_context(|| format!("create BackupSession {ns}/{name}"))?;
    println!("BackupSession {ns}/{name} created for BackupConfiguration {bc_name}");
    if no_follow {
        return Ok(Exit(0));
    }
    follow(&api, ns, &name, timeout).await
}

/// Follow a session until its phase is terminal. On a terminal, one line is redrawn in place;
/// otherwise a line is printed whenever what it shows changes.
async fn follow(
    api: &Api<BackupSession>,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Exit> {
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut last_line = String::new();
    let mut seen_hosts: BTreeMap<String, String> = BTreeMap::new();
    let spinner = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let mut tick = 0usize;
    loop {
        let s = api.get(name).await?;
        let status = s.status.clone().unwrap_or_default();
        let phase = status
            .phase
            .unwrap_or(<stash_crds::backup_session::Phase as Lifecycle>::INITIAL);
        let reported = status.stats.len();
        let total = status
            .total_hosts
            .map_or("?".to_string(), |t| t.to_string());
        let elapsed = start.elapsed().as_secs();
        let mut out = std::io::stdout().lock();
        // Host entries as they arrive, each once.
        for h in &status.stats {
            let host = h.hostname.clone().unwrap_or_else(|| "?".into());
            let hp = h.phase.map_or("?".into(), |p| format!("{p:?}"));
            if seen_hosts.get(&host) != Some(&hp) {
                let err = h
                    .error
                    .as_deref()
                    .filter(|e| !e.is_empty())
                    .map(|e| format!(" — {e}"))
                    .unwrap_or_default();
                let dur = h
                    .duration
                    .as_ref()
                    .map(|d| format!(" in {d}"))
                    .unwrap_or_default();
                if tty {
                    write!(out, "\r\x1b[K")?;
                }
                writeln!(
                    out,
                    "  host {host}: {hp}{dur}, {} snapshot(s){err}",
                    h.snapshots.len()
                )?;
                seen_hosts.insert(host, hp);
                last_line.clear();
            }
        }
        let line = format!("{:<9} hosts {reported}/{total}", phase.name());
        if tty {
            tick += 1;
            write!(
                out,
                "\r\x1b[K{} {line}  {}",
                spinner[tick % spinner.len()],
                render::secs(elapsed)
            )?;
            out.flush()?;
        } else if line != last_line {
            writeln!(out, "{line}  {}", render::secs(elapsed))?;
        }
        last_line = line;
        if phase.is_terminal() {
            if tty {
                writeln!(out)?;
            }
            let took = status
                .session_duration
                .map(|d| d.to_string())
                .unwrap_or_else(|| render::secs(elapsed));
            return Ok(match phase {
                stash_crds::backup_session::Phase::Succeeded => {
                    writeln!(
                        out,
                        "BackupSession {ns}/{name} Succeeded ({reported}/{total} hosts, {took})"
                    )?;
                    Exit(0)
                }
                p => {
                    let reason = status.reason.unwrap_or_else(|| "no reason given".into());
                    writeln!(out, "BackupSession {ns}/{name} {}: {reason}", p.name())?;
                    Exit(1)
                }
            });
        }
        drop(out);
        if start.elapsed() >= timeout {
            if tty {
                println!();
            }
            eprintln!(
                "timed out after {} following BackupSession {ns}/{name} (still {}); it goes on",
                render::secs(elapsed),
                phase.name()
            );
            return Ok(Exit(2));
        }
        tokio::time::sleep(Duration::from_millis(if tty { 200 } else { 500 })).await;
    }
}

async fn snapshots(
    client: &Client,
    ns: &str,
    selector: Option<String>,
    all: bool,
) -> anyhow::Result<Exit> {
    let api: Api<Snapshot> = if all {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), ns)
    };
    let mut lp = ListParams::default();
    if let Some(s) = &selector {
        lp = lp.labels(s);
    }
    let list = match api.list(&lp).await {
        Ok(l) => l,
        Err(e) if not_found(&e) => bail!(
            "the Snapshot API (repositories.stash.appscode.com/v1alpha1) is not served by this cluster: \
             is the stash operator running with its Snapshot API (APIService v1alpha1.repositories.stash.appscode.com)?"
        ),
        Err(kube::Error::Api(s)) if s.code == 503 => bail!(
            "the Snapshot API (APIService v1alpha1.repositories.stash.appscode.com) is unavailable: {}",
            s.message
        ),
        Err(e) => return Err(e).context("list snapshots"),
    };
    let mut items = list.items;
    items.sort_by(|a, b| {
        (
            a.namespace(),
            a.labels().get("repository").cloned(),
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
        )
            .cmp(&(
                b.namespace(),
                b.labels().get("repository").cloned(),
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
            ))
    });
    if items.is_empty() {
        println!(
            "No snapshots found{}.",
            if all {
                String::new()
            } else {
                format!(" in namespace {ns}")
            }
        );
        return Ok(Exit(0));
    }
    let mut rows = Vec::new();
    let mut header = vec!["NAME", "REPOSITORY", "HOSTNAME", "ID", "CREATED", "PATHS"];
    if all {
        header.insert(0, "NAMESPACE");
    }
    for s in &items {
        let mut row = vec![
            s.name_any(),
            s.labels().get("repository").cloned().unwrap_or_default(),
            s.status.hostname.clone(),
            s.metadata
                .uid
                .clone()
                .unwrap_or_default()
                .chars()
                .take(8)
                .collect(),
            s.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.strftime("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default(),
            s.status.paths.join(","),
        ];
        if all {
            row.insert(0, s.namespace().unwrap_or_default());
        }
        rows.push(row);
    }
    print!("{}", render::table(&header, &rows));
    Ok(Exit(0))
}

async fn unlock(
    client: &Client,
    ns: &str,
    name: &str,
    restic_bin: PathBuf,
) -> anyhow::Result<Exit> {
    let repo = Api::<Repository>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .ok_or_else(|| anyhow!("Repository {ns}/{name} not found"))?;
    // Local backends: the plugin reads the hostPath directly (it cannot reach other volumes).
    let location = stash_core::location::operator_location(&repo)
        .map_err(|e| anyhow!("Repository {ns}/{name}: {e}"))?
        .ok_or_else(|| anyhow!("Repository {ns}/{name}: a local backend on a volume other than hostPath cannot be reached from here"))?;
    let secret_name = repo
        .spec
        .backend
        .storage_secret_name
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("Repository {ns}/{name} has no storageSecretName"))?;
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&secret_name)
        .await?
        .ok_or_else(|| {
            anyhow!("Secret {ns}/{secret_name} (storage of Repository {name}) not found")
        })?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let creds = stash_restic::Credentials::from_map(data)
        .map_err(|e| anyhow!("storage Secret {ns}/{secret_name}: {e}"))?;
    let scratch = tempfile::tempdir()?;
    let r = stash_restic::Repo::builder(location.clone(), creds)
        .binary(&restic_bin)
        .scratch_dir(scratch.path())
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    println!(
        "Repository {ns}/{name} ({}: {})",
        location.provider(),
        location.repository_url()
    );
    let before = r.locks().await.map_err(|e| anyhow!("list locks: {e}"))?;
    if before.is_empty() {
        println!("No locks.");
        return Ok(Exit(0));
    }
    let now = jiff::Timestamp::now();
    // As restic judges: a lock of this machine whose process is gone is stale at once.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok();
    let host = host.as_deref();
    let stale: Vec<_> = before.iter().filter(|l| l.is_stale(now, host)).collect();
    let after = if stale.is_empty() {
        before.clone()
    } else {
        // restic removes exactly the locks it considers stale (not refreshed for 30 minutes, or
        // of this host with a dead pid); what it removed is read back, not assumed.
        r.unlock(false)
            .await
            .map_err(|e| anyhow!("restic unlock: {e}"))?;
        r.locks().await.map_err(|e| anyhow!("list locks: {e}"))?
    };
    let describe = |l: &stash_restic::LockInfo| {
        let age = now.duration_since(l.time).as_secs().max(0) as u64;
        format!(
            "{}  {} host={} pid={} user={} age={}",
            l.id.chars().take(8).collect::<String>(),
            if l.exclusive {
                "exclusive"
            } else {
                "shared   "
            },
            l.hostname,
            l.pid,
            l.username,
            render::secs(age)
        )
    };
    let mut removed = 0;
    for l in &before {
        if !after.iter().any(|a| a.id == l.id) {
            removed += 1;
            println!("removed stale lock {}", describe(l));
        }
    }
    for l in &after {
        let why = if l.is_stale(now, host) {
            "stale, but restic kept it"
        } else {
            "live: refreshed within 30m"
        };
        println!("kept lock          {} ({why})", describe(l));
    }
    println!("{removed} stale lock(s) removed, {} kept", after.len());
    Ok(Exit(0))
}

async fn describe(client: &Client, ns: &str, name: &str) -> anyhow::Result<Exit> {
    if let Some(bs) = Api::<BackupSession>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    {
        print!("{}", render::backup_session(&bs));
        return Ok(Exit(0));
    }
    if let Some(rs) = Api::<RestoreSession>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    {
        print!("{}", render::restore_session(&rs));
        return Ok(Exit(0));
    }
    bail!("no BackupSession or RestoreSession {ns}/{name}")
}
