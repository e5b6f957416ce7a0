//! Benchmark: backup and restore through the operator against raw restic, on the real cluster,
//! as alternating pairs.
//!
//! * backup: BackupSession created → `Succeeded` read back (a watch) against `restic init` +
//!   `restic backup` of the same directory with the same restic binary. Both sides start from
//!   an empty repository (the operator's is emptied in place; the sidecar initialises it) and
//!   both use a restic cache. The operator's follow-up after its report (forget, stats, and
//!   `check` on its schedule) is waited for before the next side and printed on its own line.
//! * restore: RestoreSession created → `Succeeded` read back, the restored bytes verified,
//!   against `restic restore <snapshot>:/source/data` of the same snapshot of the same
//!   repository into the same (emptied) directory, with a fresh restic cache (the init
//!   container's is fresh too). The RestoreSession is deleted and the workload rolled back
//!   between pairs (not timed). A third side runs the same `restic restore` in a bare Pod
//!   (the stash image, the init-container's volumes and CPU request): what Kubernetes costs
//!   any restore run in a pod, printed as part `restore-vs-pod`. Each operator restore prints
//!   its timeline (pod created, scheduled, init-container running, host reported).
//!
//! Each part runs `STASH_BENCH_PAIRS` (default 5) pairs, operator first then restic (A B A B
//! …). Before every side the dirty pages are written out (`sync`) and the side's input (the
//! source data, or the repository) is read once so the page cache is equally warm for both;
//! with `STASH_BENCH_DROP_CACHES=1` the page cache is dropped instead. The ratio is the median
//! of the pairwise ratios, printed with its spread and both sides' medians as one line a
//! script can read:
//!
//! ```text
//! BENCH part=backup baseline=restic bytes=1073741824 pairs=5 ratio_median=1.02 ratio_min=0.97 ratio_max=1.10 operator_median_s=10.41 baseline_median_s=10.20 operator_extra_median_s=0.21
//! ```
//!
//! The agents get a CPU request (`STASH_BENCH_AGENT_CPU`, default `500m`; `none` leaves the
//! pod BestEffort, whose cgroup has `cpu.shares` 2: on a busy machine its restic then waits
//! behind every other process, which measures Kubernetes' QoS, not the operator).
//!
//! `cargo bench -p stash --bench backup_vs_restic`; `STASH_BENCH_BYTES` sets the size (default
//! 1 GiB, written as 4 MiB files of incompressible pseudo-random data), `STASH_BENCH_PARTS`
//! the parts (`backup,restore`).
use stash_e2e as support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::json;
use stash_crds::{
    BackupSession, Repository, RestoreSession, backup_session::Phase,
    restore_session::Phase as RestorePhase,
};
use stash_testenv::bins;
use support::*;

const PASSWORD: &str = "bench-password";
const FILE_SIZE: usize = 4 << 20;
const SESSION_TIMEOUT: Duration = Duration::from_secs(3600);

struct Config {
    files: usize,
    pairs: usize,
    drop_caches: bool,
    /// The agents' CPU request (`runtimeSettings.container.resources`), `None` for none.
    agent_cpu: Option<String>,
    backup: bool,
    restore: bool,
}

fn main() {
    // `cargo bench` passes `--bench`; everything else comes from the environment.
    let var = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_string());
    let bytes: u64 = var("STASH_BENCH_BYTES")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let parts = var("STASH_BENCH_PARTS").unwrap_or_else(|| "backup,restore".into());
    let config = Config {
        files: usize::try_from(bytes.div_ceil(FILE_SIZE as u64))
            .unwrap_or(1)
            .max(1),
        pairs: var("STASH_BENCH_PAIRS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(5usize)
            .max(1),
        drop_caches: var("STASH_BENCH_DROP_CACHES").as_deref() == Some("1"),
        agent_cpu: Some(var("STASH_BENCH_AGENT_CPU").unwrap_or_else(|| "500m".into()))
            .filter(|c| !c.is_empty() && c != "none"),
        backup: parts.split(',').any(|p| p.trim() == "backup"),
        restore: parts.split(',').any(|p| p.trim() == "restore"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(run(config));
    std::process::exit(code);
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// One measured pair: the operator's side, restic's side, and the operator's breakdown.
struct Pair {
    operator: f64,
    restic: f64,
    /// The agent's own part of the operator side (the host entry's duration).
    host: f64,
    /// Time after the session ended that the agent kept working (backup follow-up), if any.
    after: Option<f64>,
}

/// Print a part's figures against `baseline` (what the pairs' second side ran).
fn summary(part: &str, baseline: &str, bytes: u64, pairs: &[Pair]) {
    let ratios: Vec<f64> = pairs.iter().map(|p| p.operator / p.restic).collect();
    let op: Vec<f64> = pairs.iter().map(|p| p.operator).collect();
    let raw: Vec<f64> = pairs.iter().map(|p| p.restic).collect();
    let host: Vec<f64> = pairs.iter().map(|p| p.host).collect();
    let extra: Vec<f64> = pairs.iter().map(|p| p.operator - p.restic).collect();
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    println!(
        "{part} {}: median pairwise ratio {:.3} (min {:.3}, max {:.3}) over {} pairs; medians: operator {:.2} s, {baseline} {:.2} s; agent's own part {:.2} s",
        human(bytes),
        median(&ratios),
        min,
        max,
        pairs.len(),
        median(&op),
        median(&raw),
        median(&host),
    );
    let after: Vec<f64> = pairs.iter().filter_map(|p| p.after).collect();
    if !after.is_empty() {
        println!(
            "  {part}: the agent's follow-up after its report (forget, stats, check when due; not in the session's time): median {:.2} s",
            median(&after)
        );
    }
    println!(
        "BENCH part={part} baseline={baseline} bytes={bytes} pairs={} ratio_median={:.3} ratio_min={:.3} ratio_max={:.3} operator_median_s={:.3} baseline_median_s={:.3} operator_extra_median_s={:.3}",
        pairs.len(),
        median(&ratios),
        min,
        max,
        median(&op),
        median(&raw),
        median(&extra),
    );
}

/// Write the dirty pages out, then make the page cache equally warm for the next side (read
/// `inputs` once) or drop it.
fn settle(drop_caches: bool, inputs: &[&Path]) {
    let _ = Command::new("sync").status();
    if drop_caches {
        if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3\n") {
            eprintln!("cannot drop the page cache: {e}");
        }
        return;
    }
    fn read_all(p: &Path) {
        let Ok(entries) = std::fs::read_dir(p) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                read_all(&p);
            } else if let Ok(mut f) = std::fs::File::open(&p) {
                let _ = std::io::copy(&mut f, &mut std::io::sink());
            }
        }
    }
    for i in inputs {
        read_all(i);
    }
}

/// Remove everything inside `dir`, keeping the directory (a mounted volume).
fn empty(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// raw restic as a user runs it: the pinned binary, a cache directory, the repository.
fn raw_restic(repo: &Path, cache: &Path) -> Command {
    let mut cmd = Command::new(bins::bin("restic").expect("restic"));
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/tmp")
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", PASSWORD)
        .arg("--cache-dir")
        .arg(cache);
    cmd
}

fn ok(what: &str, out: std::io::Result<std::process::Output>) -> Result<String, String> {
    let out = out.map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into())
    } else {
        Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Wait (a watch) until BackupSession `name` ends; it must be `Succeeded`. Also returns when
/// the operator set it `Running` (from the watch's events).
async fn wait_backup(
    api: &Api<BackupSession>,
    name: &str,
) -> Result<(BackupSession, Option<Instant>), String> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let stream = watcher(
        api.clone(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects();
    futures::pin_mut!(stream);
    let mut running = None;
    let watch = async {
        while let Some(item) = stream.next().await {
            let Ok(s) = item else { continue };
            match s.status.as_ref().and_then(|s| s.phase) {
                Some(Phase::Running) if running.is_none() => running = Some(Instant::now()),
                Some(Phase::Succeeded | Phase::Failed | Phase::Skipped) => return Some(s),
                _ => {}
            }
        }
        None
    };
    let s = tokio::time::timeout(SESSION_TIMEOUT, watch)
        .await
        .map_err(|_| format!("BackupSession {name} did not finish in time"))?
        .ok_or_else(|| format!("BackupSession {name}: the watch ended"))?;
    match s.status.as_ref().and_then(|s| s.phase) {
        Some(Phase::Succeeded) => Ok((s, running)),
        _ => Err(format!("BackupSession {name}: {:?}", s.status)),
    }
}

/// Wait (a watch, at most [`SESSION_TIMEOUT`]) until `kind` `name` meets `ended`.
async fn await_ended<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    ended: impl Fn(Option<&K>) -> bool,
) -> Result<K, String>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    tokio::time::timeout(
        SESSION_TIMEOUT,
        kube::runtime::wait::await_condition(api.clone(), name, ended),
    )
    .await
    .map_err(|_| format!("{kind} {name} did not finish in time"))?
    .map_err(|e| format!("watch: {e}"))?
    .ok_or_else(|| format!("{kind} {name} disappeared"))
}

async fn wait_restore(api: &Api<RestoreSession>, name: &str) -> Result<RestoreSession, String> {
    let done = |s: Option<&RestoreSession>| {
        s.and_then(|s| s.status.as_ref()?.phase).is_some_and(|p| {
            matches!(
                p,
                RestorePhase::Succeeded | RestorePhase::Failed | RestorePhase::Unknown
            )
        })
    };
    let s = await_ended(api, "RestoreSession", name, done).await?;
    match s.status.as_ref().and_then(|s| s.phase) {
        Some(RestorePhase::Succeeded) => Ok(s),
        _ => Err(format!("RestoreSession {name}: {:?}", s.status)),
    }
}

/// Where a restore's time goes: the first moment (from watches of the namespace's pods and
/// of the session) each step of the rollout was seen, relative to the create.
struct Timeline {
    marks: std::sync::Arc<std::sync::Mutex<Vec<(&'static str, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Timeline {
    /// Start watching before RestoreSession `name` is created.
    fn start(client: &Client, ns: &str, name: &str) -> Self {
        use futures::{StreamExt, future::Either};
        use k8s_openapi::api::core::v1::Pod;
        use kube::runtime::{WatchStreamExt, watcher};
        let marks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mark = {
            let marks = marks.clone();
            move |what: &'static str| {
                let mut m = marks.lock().expect("marks");
                if !m.iter().any(|(w, _)| *w == what) {
                    m.push((what, Instant::now()));
                }
            }
        };
        let pods = watcher(
            Api::<Pod>::namespaced(client.clone(), ns),
            Default::default(),
        )
        .applied_objects()
        .map(Either::Left);
        let sessions = watcher(
            Api::<RestoreSession>::namespaced(client.clone(), ns),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .applied_objects()
        .map(Either::Right);
        let task = tokio::spawn(async move {
            let stream = futures::stream::select(pods, sessions);
            futures::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Either::Left(Ok(pod)) => {
                        let spec = pod.spec.as_ref();
                        let has_init = spec
                            .and_then(|s| s.init_containers.as_ref())
                            .is_some_and(|c| c.iter().any(|c| c.name == "stash-init"));
                        if !has_init {
                            continue;
                        }
                        mark("pod created");
                        if spec.is_some_and(|s| s.node_name.is_some()) {
                            mark("scheduled");
                        }
                        let init = pod
                            .status
                            .as_ref()
                            .and_then(|s| s.init_container_statuses.as_ref())
                            .and_then(|c| c.iter().find(|c| c.name == "stash-init"))
                            .and_then(|c| c.state.clone());
                        if let Some(state) = init {
                            if state.running.is_some() || state.terminated.is_some() {
                                mark("init-container running");
                            }
                            if state.terminated.is_some() {
                                mark("init-container ended");
                            }
                        }
                    }
                    Either::Right(Ok(rs)) => {
                        let st = rs.status.as_ref();
                        if st.and_then(|s| s.phase) == Some(RestorePhase::Running) {
                            mark("session Running");
                        }
                        if st.is_some_and(|s| !s.stats.is_empty()) {
                            mark("host reported");
                        }
                    }
                    _ => {}
                }
            }
        });
        Self { marks, task }
    }

    /// The steps seen, in order, as `step +seconds` from `started`.
    fn finish(self, started: Instant) -> String {
        self.task.abort();
        let mut m = self.marks.lock().expect("marks").clone();
        m.sort_by_key(|(_, t)| *t);
        m.iter()
            .map(|(w, t)| format!("{w} +{:.2}", t.duration_since(started).as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The Repository's `lastBackupTime` (the agent writes it after its follow-up steps).
async fn last_backup(api: &Api<Repository>) -> Option<String> {
    api.get("repo")
        .await
        .ok()?
        .status?
        .last_backup_time
        .map(|t| t.0.to_string())
}

async fn wait_repository_updated(api: &Api<Repository>, before: &Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while last_backup(api).await == *before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Bench {
    client: Client,
    ns: String,
    source: PathBuf,
    repo_dir: PathBuf,
    raw_repo: PathBuf,
    raw_cache: PathBuf,
    total: u64,
    drop_caches: bool,
    runtime_settings: serde_json::Value,
}

impl Bench {
    /// The operator side of a backup pair; the repository starts empty.
    async fn operator_backup(&self, name: &str) -> Result<(f64, f64, f64, f64), String> {
        empty(&self.repo_dir);
        let repos = Api::<Repository>::namespaced(self.client.clone(), &self.ns);
        let before = last_backup(&repos).await;
        settle(self.drop_caches, &[&self.source]);
        let api = Api::<BackupSession>::namespaced(self.client.clone(), &self.ns);
        let started = Instant::now();
        let session: BackupSession = serde_json::from_value(json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
            "metadata": {"name": name, "labels": {"stash.appscode.com/backup-configuration": "app-backup"}},
            "spec": {"backupConfiguration": {"name": "app-backup"}}
        }))
        .expect("session");
        api.create(&PostParams::default(), &session)
            .await
            .map_err(|e| format!("create {name}: {e}"))?;
        let (s, running) = wait_backup(&api, name).await?;
        let took = started.elapsed().as_secs_f64();
        let to_running = running.map_or(f64::NAN, |r| (r - started).as_secs_f64());
        let ended = Instant::now();
        wait_repository_updated(&repos, &before).await;
        let after = ended.elapsed().as_secs_f64();
        let host = first_host_secs(
            s.status
                .as_ref()
                .map(|s| s.stats.iter().map(|h| &h.duration)),
        );
        // The snapshot is where it should be and holds all the data (not an empty mount).
        let snaps = restic_snapshots(&self.repo_dir.to_string_lossy(), PASSWORD);
        let processed = snaps
            .first()
            .and_then(|s| s["summary"]["total_bytes_processed"].as_u64())
            .unwrap_or(0);
        if snaps.len() != 1 || processed != self.total {
            return Err(format!(
                "the operator's repository does not hold one snapshot of {} bytes: {processed} bytes in {} snapshots",
                self.total,
                snaps.len()
            ));
        }
        Ok((took, host, after, to_running))
    }

    /// The restic side of a backup pair: init + backup into an empty repository.
    fn raw_backup(&self, name: &str) -> Result<f64, String> {
        let _ = std::fs::remove_dir_all(&self.raw_repo);
        let _ = std::fs::remove_dir_all(&self.raw_cache);
        settle(self.drop_caches, &[&self.source]);
        let started = Instant::now();
        ok(
            "restic init",
            raw_restic(&self.raw_repo, &self.raw_cache)
                .args(["init", "--json"])
                .output(),
        )?;
        ok(
            "restic backup",
            raw_restic(&self.raw_repo, &self.raw_cache)
                .args(["backup", "--json", "--quiet", "--host", "host-0", "--tag"])
                .arg(format!("stash-session={name}"))
                .arg("--")
                .arg(&self.source)
                .output(),
        )?;
        let took = started.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&self.raw_repo);
        let _ = std::fs::remove_dir_all(&self.raw_cache);
        Ok(took)
    }

    /// The operator side of a restore pair: the source directory emptied, restored through a
    /// RestoreSession, the bytes verified; then the session deleted and the workload settled.
    async fn operator_restore(
        &self,
        name: &str,
        expected: &std::collections::BTreeMap<String, String>,
    ) -> Result<(f64, f64, String), String> {
        empty(&self.source);
        settle(self.drop_caches, &[&self.repo_dir]);
        let api = Api::<RestoreSession>::namespaced(self.client.clone(), &self.ns);
        let rs: RestoreSession = serde_json::from_value(json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": name},
            "spec": {"repository": {"name": "repo"},
                     "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                                "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]},
                     "rules": [{"paths": ["/source/data"]}],
                     "runtimeSettings": self.runtime_settings}
        }))
        .expect("restore session");
        let timeline = Timeline::start(&self.client, &self.ns, name);
        // The watches have listed before the clock starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        api.create(&PostParams::default(), &rs)
            .await
            .map_err(|e| format!("create {name}: {e}"))?;
        let s = wait_restore(&api, name).await?;
        let took = started.elapsed().as_secs_f64();
        let steps = timeline.finish(started);
        let host = first_host_secs(
            s.status
                .as_ref()
                .map(|s| s.stats.iter().map(|h| &h.duration)),
        );
        if checksums(&self.source) != *expected {
            return Err(format!(
                "{name}: the restored bytes differ from the backed-up ones"
            ));
        }
        api.delete(name, &DeleteParams::default())
            .await
            .map_err(|e| format!("delete {name}: {e}"))?;
        wait_rolled_out(&self.client, &self.ns, "app").await;
        Ok((took, host, steps))
    }

    /// The restic side of a restore pair: the same snapshot of the same repository into the
    /// same (emptied) directory, with a fresh cache.
    fn raw_restore(
        &self,
        snapshot: &str,
        expected: &std::collections::BTreeMap<String, String>,
    ) -> Result<f64, String> {
        empty(&self.source);
        let _ = std::fs::remove_dir_all(&self.raw_cache);
        settle(self.drop_caches, &[&self.repo_dir]);
        let started = Instant::now();
        ok(
            "restic restore",
            raw_restic(&self.repo_dir, &self.raw_cache)
                .args(["restore", "--json", "--target"])
                .arg(&self.source)
                .arg("--")
                .arg(format!("{snapshot}:/source/data"))
                .output(),
        )?;
        let took = started.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&self.raw_cache);
        if checksums(&self.source) != *expected {
            return Err("restic restore: the restored bytes differ".into());
        }
        Ok(took)
    }

    /// The third side of a restore: the same `restic restore` as the raw side, run in a bare
    /// Pod (the stash image, the same volumes and Secret as the init-container, the same CPU
    /// request), created → `Succeeded` read back through a watch. What Kubernetes costs any
    /// restic restore that runs in a pod: the operator's restore needs one (the init-container
    /// of the workload's new pod), the raw side does not.
    async fn pod_restore(
        &self,
        name: &str,
        snapshot: &str,
        expected: &std::collections::BTreeMap<String, String>,
    ) -> Result<f64, String> {
        use k8s_openapi::api::core::v1::Pod;
        empty(&self.source);
        settle(self.drop_caches, &[&self.repo_dir]);
        let resources = self.runtime_settings["container"]["resources"].clone();
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "restic", "image": IMAGE,
                    "command": ["/usr/local/bin/restic", "--repo", "/safe/data",
                                "--password-file", "/etc/restic/RESTIC_PASSWORD",
                                "--cache-dir", "/tmp/restic-cache",
                                "restore", "--json", "--target", "/source/data", "--",
                                format!("{snapshot}:/source/data")],
                    "resources": if resources.is_null() { json!({}) } else { resources },
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/source/data"},
                        {"name": "repo", "mountPath": "/safe/data"},
                        {"name": "secret", "mountPath": "/etc/restic", "readOnly": true},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "source-data"}},
                    {"name": "repo", "hostPath": {"path": self.repo_dir.to_string_lossy()}},
                    {"name": "secret", "secret": {"secretName": "local-secret"}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            }
        }))
        .expect("pod");
        let api = Api::<Pod>::namespaced(self.client.clone(), &self.ns);
        let ended = |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref()?.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed")
        };
        let started = Instant::now();
        api.create(&PostParams::default(), &pod)
            .await
            .map_err(|e| format!("create pod {name}: {e}"))?;
        let p = await_ended(&api, "pod", name, ended).await?;
        let took = started.elapsed().as_secs_f64();
        let phase = p.status.and_then(|s| s.phase);
        if phase.as_deref() != Some("Succeeded") {
            return Err(format!("pod {name}: {phase:?}"));
        }
        if checksums(&self.source) != *expected {
            return Err(format!("pod {name}: the restored bytes differ"));
        }
        api.delete(name, &DeleteParams::default())
            .await
            .map_err(|e| format!("delete pod {name}: {e}"))?;
        let _ = tokio::time::timeout(
            Duration::from_secs(120),
            kube::runtime::wait::await_condition(
                api,
                name,
                kube::runtime::conditions::is_deleted(&p.metadata.uid.unwrap_or_default()),
            ),
        )
        .await;
        Ok(took)
    }
}

/// The first host entry's duration in seconds (0 when there is none).
fn first_host_secs<'a>(
    durations: Option<impl Iterator<Item = &'a Option<stash_crds::duration::GoDuration>>>,
) -> f64 {
    durations
        .and_then(|mut d| d.next().cloned().flatten())
        .map_or(0.0, |d| d.as_std().as_secs_f64())
}

/// Wait until Deployment `name` has rolled out with no restore init-container.
async fn wait_rolled_out(client: &Client, ns: &str, name: &str) {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    eventually(
        &format!("Deployment {name} rolled out without the restore init-container"),
        Duration::from_secs(300),
        || {
            let (d, pods) = (deployments.clone(), pods.clone());
            async move {
                let d = d.get(name).await.ok()?;
                let init = d
                    .spec
                    .as_ref()?
                    .template
                    .spec
                    .as_ref()?
                    .init_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == "stash-init");
                let st = d.status?;
                let settled = st.updated_replicas == Some(1)
                    && st.ready_replicas == Some(1)
                    && st.replicas == Some(1)
                    && st.observed_generation == d.metadata.generation;
                // Old pods gone too (they would compete for the CPU).
                let n = pods
                    .list(&kube::api::ListParams::default().labels(&format!("app={name}")))
                    .await
                    .ok()?
                    .items
                    .len();
                (!init && settled && n == 1).then_some(())
            }
        },
    )
    .await;
}

async fn run(config: Config) -> i32 {
    let total = (config.files * FILE_SIZE) as u64;
    let env = env().await;
    let client = env.cp.client();
    let ns_guard = env.cp.namespace("bench").await.expect("namespace");
    let ns = ns_guard.name.clone();
    let source = pv_dir(&ns, "source-data").await;
    let t = Instant::now();
    generate_files(&source, 0xbe9c, config.files, FILE_SIZE);
    let expected = checksums(&source);
    eprintln!(
        "generated {} in {} files in {:.1}s",
        human(total),
        config.files,
        t.elapsed().as_secs_f64()
    );
    let repo_dir = env.cp.dir().join("repos").join(&ns).join("operator");
    std::fs::create_dir_all(&repo_dir).expect("repo dir");
    let bench = Bench {
        client: client.clone(),
        ns: ns.clone(),
        source: source.clone(),
        repo_dir: repo_dir.clone(),
        raw_repo: env.cp.dir().join("repos").join(&ns).join("raw"),
        raw_cache: env.cp.dir().join("repos").join(&ns).join("raw-cache"),
        total,
        drop_caches: config.drop_caches,
        runtime_settings: runtime_settings(config.agent_cpu.as_deref()),
    };
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "local-secret"},
            "stringData": {"RESTIC_PASSWORD": PASSWORD}
        }),
    )
    .await;
    apply(&client, &ns, json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"},
        "spec": {"backend": {"storageSecretName": "local-secret",
                             "local": {"mountPath": "/safe/data", "hostPath": {"path": repo_dir.to_string_lossy()}}}}
    }))
    .await;
    deployment_with_pvc(&client, &ns, "app", "source-data").await;
    apply(
        &client,
        &ns,
        deployment_backup_configuration(
            "app",
            "repo",
            "0 0 1 1 *",
            json!({
                "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true},
                "runtimeSettings": bench.runtime_settings,
            }),
        ),
    )
    .await;
    wait_sidecar_ready(&client, &ns, "app", Duration::from_secs(150)).await;
    let code = match measure(&bench, &config, &expected).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            dump_logs(env.cp);
            eprintln!("{}", pod_logs(&ns, "app"));
            1
        }
    };
    empty(&source);
    let _ = std::fs::remove_dir_all(env.cp.dir().join("repos").join(&ns));
    // The guard deletes the namespace from a thread that `process::exit` would cut short.
    let pvs = Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(client.clone());
    let _ = pvs
        .delete_collection(
            &DeleteParams::background(),
            &kube::api::ListParams::default().labels(&format!("stash-testenv/namespace={ns}")),
        )
        .await;
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .delete(&ns, &DeleteParams::background())
        .await;
    code
}

/// The agents' runtime settings: a CPU request, so that their restic competes for the CPU
/// like raw restic on the host does. Without one the pod is BestEffort (cgroup
/// `cpu.shares` 2) and, on a busy machine, waits behind every other process.
fn runtime_settings(cpu: Option<&str>) -> serde_json::Value {
    match cpu {
        Some(cpu) => json!({"container": {"resources": {"requests": {"cpu": cpu}}}}),
        None => json!({}),
    }
}

async fn measure(
    b: &Bench,
    config: &Config,
    expected: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    let mut pairs = Vec::new();
    if config.backup {
        for i in 0..config.pairs {
            let (operator, host, after, to_running) =
                b.operator_backup(&format!("bench-{i}")).await?;
            // Disk space is shared: one 1 GiB repository at a time.
            empty(&b.repo_dir);
            let restic = b.raw_backup(&format!("raw-{i}"))?;
            eprintln!(
                "backup pair {i}: operator {operator:.2} s (created → Running {to_running:.2} s, agent {host:.2} s, follow-up after the report {after:.2} s), restic {restic:.2} s, ratio {:.3}",
                operator / restic
            );
            pairs.push(Pair {
                operator,
                restic,
                host,
                after: Some(after),
            });
        }
        summary("backup", "restic", b.total, &pairs);
    }
    if config.restore {
        // The repository the restores read: one operator backup (not timed).
        b.operator_backup("bench-restore-source").await?;
        let snaps = restic_snapshots(&b.repo_dir.to_string_lossy(), PASSWORD);
        let snapshot = snaps
            .first()
            .and_then(|s| s["id"].as_str())
            .ok_or("no snapshot to restore")?
            .to_string();
        let (mut pairs, mut in_pods) = (Vec::new(), Vec::new());
        for i in 0..config.pairs {
            let (operator, host, steps) = b
                .operator_restore(&format!("restore-{i}"), expected)
                .await?;
            let restic = b.raw_restore(&snapshot, expected)?;
            let in_pod = b
                .pod_restore(&format!("restic-{i}"), &snapshot, expected)
                .await?;
            eprintln!(
                "restore pair {i}: operator {operator:.2} s (agent {host:.2} s; {steps}), restic {restic:.2} s, ratio {:.3}; restic in a pod {in_pod:.2} s, operator / restic in a pod {:.3}",
                operator / restic,
                operator / in_pod
            );
            pairs.push(Pair {
                operator,
                restic,
                host,
                after: None,
            });
            in_pods.push(Pair {
                operator,
                restic: in_pod,
                host,
                after: None,
            });
        }
        summary("restore", "restic", b.total, &pairs);
        // The same operator runs against restic in a bare pod: the part of the overhead
        // that any restore run in a pod pays.
        summary("restore-vs-pod", "restic-in-a-pod", b.total, &in_pods);
    }
    Ok(())
}
