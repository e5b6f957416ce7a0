//! A sidecar killed outright (its container SIGKILLed through containerd, as an OOM kill does)
//! while restic holds a lock: the kubelet restarts it in the same pod, and the following
//! sessions succeed without any manual step — the dead restic's lock is one restic proves stale
//! (this pod's hostname, a dead pid), removed before the exclusive `forget --prune`
//! (docs/sessions.md "Locks"); retention catches up; no lock is left.
use stash_e2e as support;

use std::{path::Path, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::json;
use support::*;

const PASSWORD: &str = "locks-e2e-password";

/// Complete lock files of the local repository at `repo` (64 hex digits).
fn locks(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("locks")).map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .count()
    })
}

fn sidecar_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "stash")
        .cloned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_killed_holding_a_lock_blocks_no_later_session() {
    let env = env().await;
    let client = env.cp.client();
    let f = fixture_with_password("locks", PASSWORD).await;
    let ns = f.ns.name.clone();
    let source = sidecar_workload(
        &client,
        &ns,
        "source-data",
        json!({"retentionPolicy": {"name": "keep-last-1", "keepLast": 1, "prune": true}}),
    )
    .await;
    generate_files(&source, 25, 40, 4 << 20);
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let pod = live_pods(&client, &ns, "app=app")
        .await
        .into_iter()
        .next()
        .expect("the app's pod");
    let pod_name = pod.metadata.name.clone().expect("name");
    let container = sidecar_status(&pod)
        .and_then(|c| c.container_id)
        .expect("the sidecar's container");

    // The first session's restic takes its lock; the sidecar dies with it, at once.
    create_backup_session(&client, &ns, "app-backup", "killed").await;
    eventually(
        "restic's lock in the repository",
        Duration::from_secs(120),
        || {
            let dir = f.repo_dir.clone();
            async move { (locks(&dir) > 0).then_some(()) }
        },
    )
    .await;
    env.cp
        .kill_container(&container)
        .expect("SIGKILL the sidecar's container");
    assert!(
        locks(&f.repo_dir) > 0,
        "the killed restic left its lock behind"
    );
    // The kubelet starts it again, in the same pod (same hostname).
    eventually(
        "the sidecar restarted in the same pod",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            let pod_name = pod_name.clone();
            async move {
                let p = pods.get(&pod_name).await.ok()?;
                let s = sidecar_status(&p)?;
                (s.restart_count >= 1 && s.ready).then_some(())
            }
        },
    )
    .await;
    let killed = wait_session_terminal(&client, &ns, "killed", Duration::from_secs(300)).await;
    eprintln!(
        "the killed session ended {:?}",
        killed.status.as_ref().and_then(|s| s.phase)
    );

    // Every following session succeeds; retention runs and catches up.
    for round in 1..=2 {
        let name = format!("after-{round}");
        generate_files(&source, 100 + round, 4, 4096);
        run_backup_session(&client, &ns, "app-backup", &name, Duration::from_secs(300)).await;
    }
    // Retention runs after the report: restic's own view catches up to keepLast 1, and no
    // lock is left.
    let repo = f.repo_dir.to_string_lossy().to_string();
    eventually(
        "retention applied (one snapshot) and no lock left",
        Duration::from_secs(120),
        || {
            let (repo, dir) = (repo.clone(), f.repo_dir.clone());
            async move {
                (restic_snapshots(&repo, PASSWORD).len() == 1 && locks(&dir) == 0).then_some(())
            }
        },
    )
    .await;
    // The removed lock is named in an Event: this pod's hostname, a pid, its age.
    let removed: Vec<EventView> = events_in(&client, &ns)
        .await
        .into_iter()
        .filter(|e| e.reason == "StaleLockRemoved")
        .collect();
    assert!(
        removed
            .iter()
            .any(|e| e.type_ == "Warning" && e.note.contains(&format!(" on {pod_name} ("))),
        "a StaleLockRemoved event names the dead restic's lock of {pod_name}: {removed:?}"
    );
    println!(
        "sidecar SIGKILLed holding a lock: its restart removed the stale lock, 2 later sessions Succeeded"
    );
}
