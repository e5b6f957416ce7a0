//! Scale (issue 12): 1,000 BackupConfigurations (job model, then paused) and 10,000
//! BackupSessions against the operator installed in the local cluster
//! (`scripts/cluster.sh up`), in a namespace of their own that is deleted at the end.
//!
//! Prints side by side: the operator's peak RSS (the leader's process, sampled every 100 ms
//! from `/proc`), how long after the last create every session is decided, the operator's API
//! requests per decided session (from the API server's own metrics: a FlowSchema matching the
//! operator's ServiceAccount, `apiserver_flowcontrol_dispatched_requests_total`), whether the
//! history was pruned to the limit, and the physical reference: how long a minimal client
//! takes to write the same number of BackupSession status updates. Then it deletes everything
//! and prints how long until the operator's RSS is back to its idle level.
//!
//! Run: `cargo bench -p stash --bench scale` (`STASH_SCALE_CONFIGS`, default 1000;
//! `STASH_SCALE_SESSIONS`, default 10000; `STASH_SCALE_TIMEOUT` in seconds for each wait,
//! default 900). The configurations share one Repository that has had backups (the steady
//! state); `STASH_SCALE_FRESH_REPOSITORY=1` leaves it never backed up, the worst case. Not a
//! timed test: it reports, it does not assert.
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Namespace};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::{DynamicObject, GroupVersionKind},
    discovery,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use stash_crds::{BackupConfiguration, BackupSession, backup_session::Phase};

const FLOW_SCHEMA: &str = "stash-rs-scale-bench";
const OPERATOR_NS: &str = "stash-system";
const OPERATOR_SA: &str = "stash-operator";
const HISTORY_LIMIT: usize = 5;
const IN_FLIGHT: usize = 32;
static POST: PostParams = PostParams {
    dry_run: false,
    field_manager: None,
};
static PATCH: std::sync::LazyLock<PatchParams> = std::sync::LazyLock::new(PatchParams::default);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Server-side apply any manifest.
async fn apply(client: &Client, ns: Option<&str>, doc: serde_json::Value) {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    let gvk = GroupVersionKind::gvk(group, version, doc["kind"].as_str().unwrap_or_default());
    let (ar, _) = discovery::pinned_kind(client, &gvk)
        .await
        .expect("discovery");
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let obj: DynamicObject = serde_json::from_value(doc).expect("object");
    let name = obj.metadata.name.clone().expect("name");
    api.patch(
        &name,
        &PatchParams::apply("stash-scale-bench").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {gvk:?} {name}: {e}"));
}

/// Retry `op` on transient failures (a webhook call that failed, throttling, a conflict), at
/// most ten times a second apart.
async fn retried<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut tries = 0;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(kube::Error::Api(s)) if tries < 10 && matches!(s.code, 409 | 429 | 500..=504) => {
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// The pid of the leading operator replica's process on this host.
async fn leader_pid(client: &Client) -> i32 {
    let lease = Api::<Lease>::namespaced(client.clone(), OPERATOR_NS)
        .get("stash-operator")
        .await
        .expect("the operator's Lease");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a leader");
    let want = format!("POD_NAME={holder}");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).nth(1) != Some(b"run".as_slice()) {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
            return pid;
        }
    }
    panic!("no process of the leader {holder} on this host");
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Requests of the operator's ServiceAccount the API server has dispatched (APF metric).
async fn operator_requests(client: &Client) -> f64 {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client.request_text(req).await.expect("/metrics");
    let needle = format!("flow_schema=\"{FLOW_SCHEMA}\"");
    text.lines()
        .filter(|l| l.starts_with("apiserver_flowcontrol_dispatched_requests_total{"))
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sessions seen by the bench's own watch: decided ones (terminal, or pruned) and the present
/// ones per configuration.
#[derive(Default)]
struct Seen {
    decided: HashSet<String>,
    present: HashMap<String, String>,
}

fn main() {
    let configs = env_or("STASH_SCALE_CONFIGS", 1000) as usize;
    let sessions = env_or("STASH_SCALE_SESSIONS", 10000) as usize;
    let timeout = Duration::from_secs(env_or("STASH_SCALE_TIMEOUT", 900));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(configs, sessions, timeout));
}

async fn run(configs: usize, sessions: usize, timeout: Duration) {
    let cp = stash_testenv::shared().await.expect("control plane");
    let client = cp.client();
    let pid = leader_pid(&client).await;
    // Idle: the median of ten samples a second apart.
    let mut idle: Vec<u64> = Vec::new();
    for _ in 0..10 {
        idle.extend(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    idle.sort_unstable();
    let idle = idle[idle.len() / 2];
    println!(
        "scale: {configs} BackupConfigurations, {sessions} BackupSessions; operator pid {pid}, idle RSS {:.1} MiB",
        mib(idle)
    );

    apply(&client, None, json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
        "metadata": {"name": FLOW_SCHEMA},
        "spec": {
            "matchingPrecedence": 500,
            "priorityLevelConfiguration": {"name": "workload-low"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": OPERATOR_SA, "namespace": OPERATOR_NS}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
            }]
        }
    }))
    .await;

    let peak = Arc::new(AtomicU64::new(idle));
    let sampling = Arc::new(AtomicBool::new(true));
    let gone = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, sampling, gone) = (peak.clone(), sampling.clone(), gone.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                match rss_kib(pid) {
                    Some(r) => {
                        peak.fetch_max(r, Ordering::Relaxed);
                    }
                    None if !gone.swap(true, Ordering::Relaxed) => println!(
                        "the operator process {pid} exited (OOMKilled or restarted) at {:.1} MiB peak",
                        mib(peak.load(Ordering::Relaxed))
                    ),
                    None => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let ns = cp.namespace("scale").await.expect("namespace");
    let ns_name = ns.name.clone();
    apply(
        &client,
        Some(&ns_name),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "storage"},
                                          "stringData": {"RESTIC_PASSWORD": "scale-bench"}}),
    )
    .await;
    apply(&client, Some(&ns_name), json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"},
        "spec": {"backend": {"storageSecretName": "storage",
                             "local": {"mountPath": "/safe/data", "hostPath": {"path": "/tmp/stash-scale-bench"}}}}
    }))
    .await;

    // The Repository has had backups (the steady state): a session's observation then needs
    // no other configuration's sessions. `STASH_SCALE_FRESH_REPOSITORY=1` keeps it never
    // backed up, the worst case (every session looks at every configuration sharing it).
    if std::env::var("STASH_SCALE_FRESH_REPOSITORY").is_ok_and(|v| v == "1") {
        println!("the Repository has never been backed up into (worst case)");
    } else {
        let now = jiff::Timestamp::now().to_string();
        let backed_up =
            Patch::Merge(json!({"status": {"firstBackupTime": now, "lastBackupTime": now}}));
        let repos = Api::<stash_crds::Repository>::namespaced(client.clone(), &ns_name);
        retried("Repository status", || {
            repos.patch_status("repo", &PATCH, &backed_up)
        })
        .await;
    }

    // The configurations: job model (a PVC target, the built-in Task), then paused.
    let bcs = Api::<BackupConfiguration>::namespaced(client.clone(), &ns_name);
    let t = Instant::now();
    futures::stream::iter(0..configs)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let bcs = bcs.clone();
            async move {
                let bc: BackupConfiguration = serde_json::from_value(json!({
                    "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
                    "metadata": {"name": format!("bc-{i:04}")},
                    "spec": {"repository": {"name": "repo"}, "schedule": "0 0 1 1 *",
                             "task": {"name": "pvc-backup"},
                             "target": {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": format!("data-{i:04}")}}}
                }))
                .expect("bc");
                retried("create BackupConfiguration", || {
                    bcs.create(&POST, &bc)
                })
                .await;
            }
        })
        .await;
    futures::stream::iter(0..configs)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let bcs = bcs.clone();
            async move {
                let name = format!("bc-{i:04}");
                let pause = Patch::Merge(json!({"spec": {"paused": true}}));
                retried("pause", || bcs.patch(&name, &PATCH, &pause)).await;
            }
        })
        .await;
    println!(
        "created and paused {configs} BackupConfigurations in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The bench's own watch of the sessions.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watch = {
        let seen = seen.clone();
        let api = Api::<BackupSession>::namespaced(client.clone(), &ns_name);
        tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Ok(Some(ev)) = s.try_next().await {
                let mut seen = seen.lock().expect("seen");
                match ev {
                    watcher::Event::Apply(bs) | watcher::Event::InitApply(bs) => {
                        let config = bs.spec.configuration_name();
                        if bs.status.as_ref().and_then(|s| s.phase).is_some_and(|p| {
                            matches!(p, Phase::Succeeded | Phase::Failed | Phase::Skipped)
                        }) {
                            seen.decided.insert(bs.name_any());
                        }
                        seen.present.insert(bs.name_any(), config);
                    }
                    watcher::Event::Delete(bs) => {
                        seen.decided.insert(bs.name_any());
                        seen.present.remove(&bs.name_any());
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
            }
        })
    };

    let before = operator_requests(&client).await;
    let sessions_api = Api::<BackupSession>::namespaced(client.clone(), &ns_name);
    let t = Instant::now();
    futures::stream::iter(0..sessions)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let api = sessions_api.clone();
            async move {
                let bc = format!("bc-{:04}", i % configs);
                let bs: BackupSession = serde_json::from_value(json!({
                    "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
                    "metadata": {"name": format!("{bc}-{:03}", i / configs),
                                 "labels": {"stash.appscode.com/backup-configuration": bc}},
                    "spec": {"backupConfiguration": {"name": bc}}
                }))
                .expect("bs");
                retried("create BackupSession", || api.create(&POST, &bs)).await;
            }
        })
        .await;
    let last_create = Instant::now();
    println!(
        "created {sessions} BackupSessions in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let decided_after = loop {
        let n = seen.lock().expect("seen").decided.len();
        if n >= sessions {
            break Some(last_create.elapsed());
        }
        if last_create.elapsed().as_millis() % 30_000 < 50 {
            println!(
                "  {:.0} s after the last create: {n} decided, operator RSS {:.1} MiB (peak {:.1})",
                last_create.elapsed().as_secs_f64(),
                mib(rss_kib(pid).unwrap_or(0)),
                mib(peak.load(Ordering::Relaxed))
            );
        }
        if last_create.elapsed() > timeout {
            println!("only {n} of {sessions} sessions decided within {timeout:?}");
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = operator_requests(&client).await;
    // History: wait (bounded) until every configuration is down to the limit.
    let prune_deadline = Instant::now() + Duration::from_secs(120);
    let max_kept = loop {
        let max = {
            let seen = seen.lock().expect("seen");
            let mut per: HashMap<&str, usize> = HashMap::new();
            for c in seen.present.values() {
                *per.entry(c.as_str()).or_default() += 1;
            }
            per.values().copied().max().unwrap_or(0)
        };
        if max <= HISTORY_LIMIT || Instant::now() > prune_deadline {
            break max;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pruned_requests = operator_requests(&client).await;

    // The physical reference: a minimal client writes as many status updates.
    let kept: Vec<String> = seen.lock().expect("seen").present.keys().cloned().collect();
    let t = Instant::now();
    futures::stream::iter(0..sessions)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let api = sessions_api.clone();
            let name = kept[i % kept.len()].clone();
            async move {
                let write =
                    Patch::Merge(json!({"status": {"reason": format!("scale bench write {i}")}}));
                retried("status write", || api.patch_status(&name, &PATCH, &write)).await;
            }
        })
        .await;
    let reference = t.elapsed();
    let peak_run = peak.load(Ordering::Relaxed);

    if gone.load(Ordering::Relaxed) {
        println!("the operator process exited during the run: the figures below are partial");
    }
    let decided_n = seen.lock().expect("seen").decided.len().max(1);
    let per_session = (after - before) / decided_n as f64;
    println!();
    println!("{:<58} {:>14} {:>14}", "", "stash-rs", "target");
    println!(
        "{:<58} {:>10.1} MiB {:>10} MiB",
        "operator peak RSS (idle before)",
        mib(peak_run),
        "≤ 40"
    );
    println!("{:<58} {:>10.1} MiB", "operator idle RSS", mib(idle));
    match decided_after {
        Some(d) => println!(
            "{:<58} {:>12.2} s {:>12} s",
            "every session decided, after the last create",
            d.as_secs_f64(),
            "≤ 10"
        ),
        None => println!(
            "{:<58} {:>14} {:>12} s",
            "every session decided, after the last create", "not within timeout", "≤ 10"
        ),
    }
    println!(
        "{:<58} {:>14.2} {:>14}",
        "operator API requests per decided session", per_session, "≤ 3"
    );
    println!(
        "{:<58} {:>14.2}",
        "  … including the pruning deletes",
        (pruned_requests - before) / decided_n as f64
    );
    println!(
        "{:<58} {:>14} {:>14}",
        "sessions kept per configuration (max)",
        max_kept,
        format!("≤ {HISTORY_LIMIT}")
    );
    println!(
        "{:<58} {:>12.2} s",
        format!("reference: a minimal client writes {sessions} status updates"),
        reference.as_secs_f64()
    );

    // Delete everything; how long until the operator is back to its idle memory.
    let t = Instant::now();
    drop(ns);
    let namespaces = Api::<Namespace>::all(client.clone());
    while namespaces.get_opt(&ns_name).await.ok().flatten().is_some() && t.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{:<58} {:>12.1} s",
        format!("namespace deleted ({configs} finalizers removed by the operator)"),
        t.elapsed().as_secs_f64()
    );
    let back = loop {
        let Some(r) = rss_kib(pid) else {
            println!("the operator process {pid} is gone: no figure for the return to idle");
            break None;
        };
        if r <= idle + idle / 10 {
            break Some((t.elapsed(), r));
        }
        if t.elapsed() > Duration::from_secs(180) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    match back {
        Some((d, r)) => println!(
            "{:<58} {:>12.1} s ({:.1} MiB)",
            "back to idle RSS (within 10%) after the delete",
            d.as_secs_f64(),
            mib(r)
        ),
        None => println!(
            "{:<58} not within 180 s: {:.1} MiB vs idle {:.1} MiB",
            "back to idle RSS (within 10%) after the delete",
            mib(rss_kib(pid).unwrap_or(0)),
            mib(idle)
        ),
    }
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    watch.abort();
    let fs = discovery::pinned_kind(
        &client,
        &GroupVersionKind::gvk("flowcontrol.apiserver.k8s.io", "v1", "FlowSchema"),
    )
    .await
    .expect("discovery")
    .0;
    let _ = Api::<DynamicObject>::all_with(client.clone(), &fs)
        .delete(FLOW_SCHEMA, &DeleteParams::default())
        .await;
}
