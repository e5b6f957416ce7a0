//! Listing a repository of 1,000 snapshots: `kubectl get snapshots` (the Snapshot API of the
//! operator installed in the local cluster — `scripts/cluster.sh up` — answered from its
//! catalog through the real kube-apiserver) against
//! `restic snapshots --json` on the same repository, side by side.
//!
//! Run: `cargo bench -p stash --bench snapshots_list` (`STASH_BENCH_SNAPSHOTS=N` changes the
//! count, `STASH_BENCH_RUNS=N` the timed runs per side, default 5; the median is reported).
//!
//! The repository is generated once and cached in `target/bench-cache/restic-<N>`: one
//! `restic backup`, then `restic rewrite --new-host` rounds, each of which copies every
//! snapshot it is given (metadata only), doubling the count — ten restic runs for 1,000.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use futures::FutureExt;
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
    core::DynamicObject,
    discovery::ApiResource,
};
use serde_json::{Value, json};
use stash_crds::Snapshot;
use stash_testenv::bins;

const PASSWORD: &str = "bench-password";

fn restic(repo: &Path) -> Command {
    let mut c = Command::new(bins::bin("restic").expect("restic binary"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"));
    c
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn snapshot_ids(repo: &Path) -> Vec<String> {
    let v: Vec<Value> = serde_json::from_str(&ok(
        restic(repo)
            .args(["snapshots", "--json", "--no-lock"])
            .output()
            .expect("restic"),
        "restic snapshots",
    ))
    .expect("json");
    v.iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect()
}

fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<bench>
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("target dir")
}

/// A restic repository with exactly `n` snapshots (cached across runs).
fn repository_with(n: usize) -> PathBuf {
    let cache = target_dir().join("bench-cache");
    let dir = cache.join(format!("restic-{n}"));
    if dir.join("config").exists() && dir.join(".complete").exists() {
        eprintln!("bench: reusing {} ({n} snapshots)", dir.display());
        return dir;
    }
    let t = Instant::now();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&cache).expect("bench cache");
    let building = cache.join(format!("restic-{n}.building"));
    let _ = std::fs::remove_dir_all(&building);
    let src = cache.join(format!("restic-{n}.src"));
    std::fs::create_dir_all(&src).expect("src");
    std::fs::write(src.join("data.txt"), "a small file\n").expect("write");
    ok(
        restic(&building)
            .args(["init", "--quiet"])
            .output()
            .expect("init"),
        "restic init",
    );
    ok(
        restic(&building)
            .args(["backup", "--quiet", "--host", "host-0"])
            .arg(&src)
            .output()
            .expect("backup"),
        "restic backup",
    );
    let mut round = 0;
    loop {
        let ids = snapshot_ids(&building);
        if ids.len() >= n {
            break;
        }
        round += 1;
        let take = (n - ids.len()).min(ids.len());
        let mut c = restic(&building);
        c.args(["rewrite", "--quiet", "--new-host", &format!("host-{round}")]);
        c.args(ids.iter().take(take).map(|id| &id[..16]));
        ok(c.output().expect("rewrite"), "restic rewrite");
    }
    std::fs::write(building.join(".complete"), n.to_string()).expect("marker");
    std::fs::rename(&building, &dir).expect("rename");
    let _ = std::fs::remove_dir_all(&src);
    eprintln!(
        "bench: generated {n} snapshots in {:.1}s ({round} rewrite rounds) at {}",
        t.elapsed().as_secs_f64(),
        dir.display()
    );
    dir
}

async fn apply(client: &Client, ns: &str, obj: Value) {
    let api_version = obj["apiVersion"].as_str().expect("apiVersion").to_owned();
    let kind = obj["kind"].as_str().expect("kind").to_owned();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let plural = if kind == "Repository" {
        "repositories".to_owned()
    } else {
        format!("{}s", kind.to_lowercase())
    };
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.clone(),
        kind,
        plural,
    };
    let name = obj["metadata"]["name"].as_str().expect("name").to_owned();
    let o: DynamicObject = serde_json::from_value(obj).expect("object");
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .patch(
            &name,
            &PatchParams::apply("snapshot-bench").force(),
            &Patch::Apply(&o),
        )
        .await
        .expect("apply");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let n: usize = std::env::var("STASH_BENCH_SNAPSHOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let runs: usize = std::env::var("STASH_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let repo_dir = repository_with(n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let cp = stash_testenv::shared().await.expect("control plane");
        cp.install_crds(&stash_crds::crds()).await.expect("CRDs");
        let client = cp.client();
        let ns = cp.namespace("bench").await.expect("namespace");
        apply(&client, &ns.name, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "storage"},
                                         "stringData": {"RESTIC_PASSWORD": PASSWORD}}))
        .await;
        apply(&client, &ns.name, json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "bench"},
            "spec": {"backend": {"storageSecretName": "storage",
                                 "local": {"mountPath": "/safe/data", "hostPath": {"path": repo_dir.to_string_lossy()}}}}
        }))
        .await;
        let outcome = std::panic::AssertUnwindSafe(async {
            let cache = tempfile::tempdir().expect("kubectl cache");
            let kubectl = || {
                let mut c = cp.kubectl().expect("kubectl");
                c.env("HOME", cache.path()).args(["get", "snapshots", "-n", &ns.name, "-l", "repository=bench", "-o", "name"]);
                c
            };
            // Warm-up: kubectl's discovery cache and the catalog's first read.
            let t = Instant::now();
            let out = ok(kubectl().output().expect("kubectl"), "kubectl get snapshots");
            assert_eq!(out.lines().count(), n, "kubectl lists every snapshot");
            eprintln!("bench: first kubectl get (discovery + the catalog's first read, a reader Pod): {:.2}s", t.elapsed().as_secs_f64());

            let mut kube_times = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                let out = ok(kubectl().output().expect("kubectl"), "kubectl get snapshots");
                kube_times.push(t.elapsed());
                assert_eq!(out.lines().count(), n);
            }
            let mut restic_times = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                let out = ok(restic(&repo_dir).args(["snapshots", "--json"]).output().expect("restic"), "restic snapshots");
                restic_times.push(t.elapsed());
                let v: Vec<Value> = serde_json::from_str(&out).expect("json");
                assert_eq!(v.len(), n);
            }
            // The API alone (no kubectl process start-up): a kube client list through the API server.
            let api = Api::<Snapshot>::namespaced(client.clone(), &ns.name);
            let lp = ListParams::default().labels("repository=bench");
            let mut api_times = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                let l = api.list(&lp).await.expect("list");
                api_times.push(t.elapsed());
                assert_eq!(l.items.len(), n);
            }
            let (k, r, a) = (median(kube_times), median(restic_times), median(api_times));
            println!(
                "list {n} snapshots: kubectl get snapshots {:.2} s, restic snapshots --json {:.2} s, ratio {:.2} (median of {runs}; \
                 API list without kubectl start-up {:.3} s)",
                k.as_secs_f64(),
                r.as_secs_f64(),
                k.as_secs_f64() / r.as_secs_f64(),
                a.as_secs_f64()
            );
        })
        .catch_unwind()
        .await;
        drop(ns);
        if let Err(p) = outcome {
            std::panic::resume_unwind(p);
        }
    });
}
