//! Benchmark: backing up 1 GiB through the operator (BackupSession created → `Succeeded`,
//! read back from the API server) against a raw `restic backup` of the same directory with
//! the same restic binary, each into a fresh local repository.
//!
//! `cargo bench -p stash --bench backup_vs_restic`; `STASH_BENCH_BYTES` sets the size
//! (default 1 GiB, written as 4 MiB files of incompressible pseudo-random data).
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use kube::Api;
use serde_json::json;
use stash_crds::{BackupSession, backup_session::Phase};
use support::*;

const PASSWORD: &str = "bench-password";
const FILE_SIZE: usize = 4 << 20;

fn main() {
    // `cargo bench` passes `--bench`; nothing else is configurable on the command line.
    let bytes: u64 = std::env::var("STASH_BENCH_BYTES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1 << 30);
    let files = usize::try_from(bytes.div_ceil(FILE_SIZE as u64))
        .unwrap_or(1)
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(run(files));
    std::process::exit(code);
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

async fn run(files: usize) -> i32 {
    let total = (files * FILE_SIZE) as u64;
    let env = env().await;
    let client = env.cp.client();
    let ns_guard = env.cp.namespace("bench").await.expect("namespace");
    let ns = ns_guard.name.clone();
    let source = pv_dir(&ns, "source-data").await;
    let t = Instant::now();
    generate_files(&source, 0xbe9c, files, FILE_SIZE);
    eprintln!(
        "generated {} in {} files in {:.1}s",
        human(total),
        files,
        t.elapsed().as_secs_f64()
    );

    // (a) The operator path.
    let repo_dir = env.cp.dir().join("repos").join(&ns).join("operator");
    std::fs::create_dir_all(&repo_dir).expect("repo dir");
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
                "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true}
            }),
        ),
    )
    .await;
    wait_sidecar_ready(&client, &ns, "app", Duration::from_secs(150)).await;
    let api = Api::<BackupSession>::namespaced(client.clone(), &ns);
    let started = Instant::now();
    create_backup_session(&client, &ns, "app-backup", "bench").await;
    let deadline = started + Duration::from_secs(1800);
    let session = loop {
        if let Ok(s) = api.get("bench").await
            && let Some(p) = s.status.as_ref().and_then(|s| s.phase)
            && matches!(p, Phase::Succeeded | Phase::Failed | Phase::Skipped)
        {
            break s;
        }
        if Instant::now() > deadline {
            eprintln!("the session did not finish within 30 minutes");
            dump_logs(env.cp);
            return 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let operator = started.elapsed();
    let status = session.status.clone().unwrap_or_default();
    if status.phase != Some(Phase::Succeeded) {
        eprintln!("the session did not succeed: {status:?}");
        dump_logs(env.cp);
        return 1;
    }

    // The snapshot is where it should be and holds all the data (not, say, an empty mount).
    let snaps = restic_snapshots(&repo_dir.to_string_lossy(), PASSWORD);
    let processed = snaps
        .first()
        .and_then(|s| s["summary"]["total_bytes_processed"].as_u64())
        .unwrap_or(0);
    if snaps.len() != 1 || processed != total {
        eprintln!(
            "the operator's repository does not hold one snapshot of {total} bytes: {processed} bytes in {} snapshots",
            snaps.len()
        );
        return 1;
    }

    eprintln!(
        "operator path: {:.1} s (session created → Succeeded read back)",
        operator.as_secs_f64()
    );
    // Disk space is shared: drop the operator's repository before writing the second one.
    let _ = std::fs::remove_dir_all(&repo_dir);

    // (b) Raw restic, same binary, same data, a fresh repository (init + backup).
    let raw_dir = env.cp.dir().join("repos").join(&ns).join("raw");
    let raw_repo = raw_dir.to_string_lossy().to_string();
    let started = Instant::now();
    let out = restic(&raw_repo, PASSWORD)
        .args(["init", "--json"])
        .output()
        .expect("restic init");
    assert!(
        out.status.success(),
        "restic init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let init = started.elapsed();
    let out = restic(&raw_repo, PASSWORD)
        .arg("backup")
        .arg(&source)
        .args(["--host", "host-0", "--json", "--quiet"])
        .output()
        .expect("restic backup");
    if !out.status.success() {
        eprintln!("restic backup: {}", String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_dir_all(&source);
        let _ = std::fs::remove_dir_all(&raw_dir);
        return 1;
    }
    let raw = started.elapsed();

    let ratio = operator.as_secs_f64() / raw.as_secs_f64();
    println!(
        "backup {}: operator {:.1} s, raw restic {:.1} s (init {:.1} s + backup {:.1} s), ratio {:.2}",
        human(total),
        operator.as_secs_f64(),
        raw.as_secs_f64(),
        init.as_secs_f64(),
        (raw - init).as_secs_f64(),
        ratio
    );
    println!(
        "  operator host duration (sidecar's own restic sequence: init, backup, check, forget, stats): {}",
        status
            .stats
            .first()
            .and_then(|h| h.duration.as_ref())
            .map(|d| format!("{:.1} s", d.as_std().as_secs_f64()))
            .unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&source);
    let _ = std::fs::remove_dir_all(&raw_dir);
    0
}
