//! Who the agents run as (docs/identity.md), end to end: the upstream v0.8.3 Deployment
//! tutorial as written, on a hostPath repository the container runtime creates (root, 0755),
//! then `kubectl delete snapshot` and another backup; and an application running as uid 999
//! whose private files (0600 in 0700 directories, written by the application itself) are
//! backed up into a repository directory
//! root made with `mkdir`, and restored with their owner and mode.
use stash_e2e as support;

use std::{collections::BTreeMap, os::unix::fs::MetadataExt, path::Path, time::Duration};

use kube::ResourceExt;
use serde_json::json;
use stash_crds::restore_session::Phase as RestorePhase;
use support::*;

const PASSWORD: &str = "identity-e2e-password";

/// Every file and directory under `dir`: relative path → (uid, gid, mode bits, content digest).
fn inventory(dir: &Path) -> BTreeMap<String, (u32, u32, u32, String)> {
    let mut out = BTreeMap::new();
    let sums = checksums(dir);
    for entry in walk(dir) {
        let m = std::fs::symlink_metadata(&entry).expect("stat");
        let rel = entry
            .strip_prefix(dir)
            .expect("under dir")
            .to_string_lossy()
            .to_string();
        let digest = sums.get(&rel).cloned().unwrap_or_default();
        out.insert(rel, (m.uid(), m.gid(), m.mode() & 0o7777, digest));
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

fn kubectl(args: &[&str]) -> String {
    let out = env_now()
        .kubectl()
        .expect("kubectl")
        .args(args)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn env_now() -> &'static stash_testenv::ControlPlane {
    stash_testenv::shared_now().expect("attached")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_deployment_tutorial_backs_up_restores_deletes_and_backs_up_again() {
    let env = env().await;
    let client = env.cp.client();
    let guard = env.cp.namespace("tutorial").await.expect("namespace");
    let ns = guard.name.clone();
    // The backends guide's hostPath, under this test's scratch directory; it does not exist:
    // the container runtime creates it (root, 0755) when the first sidecar starts.
    let repo_dir = env
        .cp
        .dir()
        .join(format!("tutorial-{ns}"))
        .join("data/stash-test/repo");
    assert!(!repo_dir.exists());
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "local-secret"},
            "stringData": {"RESTIC_PASSWORD": PASSWORD}
        }),
    )
    .await;
    let repo_name = "local-repo-with-hostpath";
    for mut doc in upstream("backends-local_hostPath.yaml", &ns) {
        doc["spec"]["backend"]["local"]["hostPath"]["path"] = json!(repo_dir.to_string_lossy());
        apply(&client, &ns, doc).await;
    }
    // The claims bind to hostPath volumes an admin made; then the documents as written.
    let source = pv_dir(&ns, "stash-sample-data").await;
    let recovered = pv_dir(&ns, "demo-pvc").await;
    for file in [
        "workloads-deployment-pvc.yaml",
        "workloads-deployment-deployment.yaml",
        "workloads-deployment-backupconfiguration.yaml",
    ] {
        for mut doc in upstream(file, &ns) {
            if doc["kind"] == "BackupConfiguration" {
                // The one change the guide asks for: its repository in place of GCS.
                doc["spec"]["repository"]["name"] = json!(repo_name);
            }
            apply(&client, &ns, doc).await;
        }
    }
    // `schedule: "*/1 * * * *"`: the first scheduled session.
    let first = wait_scheduled_success(
        &client,
        &ns,
        "deployment-backup",
        None,
        Duration::from_secs(240),
    )
    .await;
    eprintln!("tutorial: {} Succeeded", first.name_any());
    let meta = std::fs::metadata(&repo_dir).expect("the runtime created the repository dir");
    assert_eq!(meta.uid(), 0, "the repository directory belongs to root");
    assert_eq!(meta.mode() & 0o777, 0o755);
    let repo = repo_dir.to_string_lossy().to_string();
    let snaps = restic_snapshots(&repo, PASSWORD);
    assert!(!snaps.is_empty(), "restic lists the tutorial's snapshots");
    let data = std::fs::read(source.join("data.txt")).expect("the app wrote data.txt");
    assert_eq!(data, b"sample_data\n");

    // Restore into the recovered Deployment, as the guide does.
    for file in [
        "workloads-deployment-recovered_deployment.yaml",
        "workloads-deployment-restoresession.yaml",
    ] {
        for mut doc in upstream(file, &ns) {
            if doc["kind"] == "RestoreSession" {
                doc["spec"]["repository"]["name"] = json!(repo_name);
            }
            if doc["kind"] == "PersistentVolumeClaim" {
                // Bound above (pv_dir): the claim as written changes nothing.
                continue;
            }
            apply(&client, &ns, doc).await;
        }
    }
    wait_session_ends(
        &client,
        &ns,
        "deployment-restore",
        RestorePhase::Succeeded,
        Duration::from_secs(240),
    )
    .await;
    assert_eq!(
        std::fs::read(recovered.join("data.txt")).expect("restored data.txt"),
        data,
        "restored bytes equal the backed-up bytes"
    );

    // `kubectl delete snapshot` (a prune in a reader Pod), then the next scheduled backup.
    let names = kubectl(&[
        "get",
        "snapshots",
        "-n",
        &ns,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let victim = names
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("kubectl get snapshots lists the tutorial's: {names:?}"))
        .to_string();
    let out = kubectl(&["delete", "snapshot", &victim, "-n", &ns]);
    assert!(out.contains("deleted"), "{out}");
    let deleted_at = jiff::Timestamp::now();
    let short = victim.rsplit('-').next().expect("short id");
    assert!(
        !restic_snapshots(&repo, PASSWORD)
            .iter()
            .any(|s| s["short_id"] == short),
        "restic no longer lists {victim}"
    );
    let after = wait_scheduled_success(
        &client,
        &ns,
        "deployment-backup",
        Some(deleted_at),
        Duration::from_secs(240),
    )
    .await;
    eprintln!("tutorial: {} Succeeded after the delete", after.name_any());
    // One identity for every agent of the repository: root wrote all of it, and restic's own
    // check of the repository is clean.
    for p in walk(&repo_dir) {
        let m = std::fs::symlink_metadata(&p).expect("stat");
        assert_eq!(m.uid(), 0, "{} belongs to root", p.display());
    }
    let check = restic(&repo, PASSWORD)
        .arg("check")
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "restic check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    println!(
        "upstream tutorial: backup {}, restore byte-equal, snapshot {victim} deleted, backup {} after it",
        first.name_any(),
        after.name_any()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn private_files_of_an_application_running_as_uid_999_are_backed_up_and_restored_with_owner_and_mode()
 {
    let env = env().await;
    let client = env.cp.client();
    let guard = env.cp.namespace("uid999").await.expect("namespace");
    let ns = guard.name.clone();
    // The repository: a directory root made with mkdir (0755), as users make it.
    let repo_dir = env.cp.dir().join("repos").join(&ns);
    std::fs::create_dir_all(&repo_dir).expect("mkdir");
    assert_eq!(
        std::fs::metadata(&repo_dir).expect("stat").mode() & 0o777,
        0o755
    );
    hostpath_repository(&client, &ns, &repo_dir, PASSWORD).await;
    // The application (uid 999) makes its own data when it starts on an empty volume: private
    // files (umask 077: 0600) in private directories (0700), and a README anyone may read
    // (umask 022), written last. A pod that finds its data (restored) leaves it alone.
    let make_data = "cd /source/data && if [ ! -e README ]; then umask 077 \
        && mkdir -p private/sub \
        && for i in 1 2 3 4; do head -c 3000 /dev/urandom > private/f$i; done \
        && for i in 1 2 3; do head -c 70000 /dev/urandom > private/sub/g$i; done \
        && (umask 022; echo 'readable by all' > README.tmp) && mv README.tmp README; fi; \
        exec sleep 3600";
    apply(&client, &ns, json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "labels": {"app": "app"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}},
                 "template": {"metadata": {"labels": {"app": "app"}},
                              "spec": {"securityContext": {"runAsUser": 999, "runAsGroup": 999},
                                       "containers": [{"name": "app", "image": "busybox", "command": ["sh", "-c", make_data],
                                                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                       "volumes": [{"name": "data", "emptyDir": {}}]}}}
    }))
    .await;
    sidecar_backup(&client, &ns, "app", "repo", json!({})).await;
    let data = app_volume(env.cp, &client, &ns, "app=app", "stash").await;
    let before = inventory(&data);
    assert!(before.len() >= 10, "{before:?}");
    assert_eq!(before["README"].2, 0o644, "{before:?}");
    assert_eq!(before["private"].2, 0o700, "{before:?}");
    assert_eq!(before["private/f1"].2, 0o600, "{before:?}");
    assert!(
        before
            .values()
            .all(|(uid, gid, ..)| (*uid, *gid) == (999, 999))
    );
    // The sidecar as the API server has it: root, DAC_OVERRIDE only, no escalation.
    let pod = live_pods(&client, &ns, "app=app")
        .await
        .into_iter()
        .next()
        .expect("the app's pod");
    let sidecar = pod
        .spec
        .as_ref()
        .expect("spec")
        .containers
        .iter()
        .find(|c| c.name == "stash")
        .expect("the sidecar")
        .security_context
        .clone()
        .expect("the sidecar's securityContext");
    assert_eq!(sidecar.run_as_user, Some(0));
    assert_eq!(sidecar.allow_privilege_escalation, Some(false));
    let caps = sidecar.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert_eq!(caps.add, Some(vec!["DAC_OVERRIDE".to_string()]));

    let s = run_backup_session(
        &client,
        &ns,
        "app-backup",
        "private-1",
        Duration::from_secs(180),
    )
    .await;
    let status = s.status.clone().expect("status");
    // restic's own listing of the snapshot: every file of the application.
    let repo = repo_dir.to_string_lossy().to_string();
    let id = status.stats[0].snapshots[0].name.clone().expect("snapshot");
    let listed: Vec<String> = restic_ls_of(restic(&repo, PASSWORD), &id)
        .iter()
        .filter_map(|v| v["path"].as_str().map(str::to_string))
        .collect();
    for rel in before.keys() {
        let path = format!("/source/data/{rel}");
        assert!(listed.contains(&path), "{path} in the snapshot: {listed:?}");
    }

    // Lose everything (the restore replaces the pod: a new, empty volume), then restore
    // through the init-container.
    restore_deployment(&client, &ns, "private-restore", "app").await;
    let restored = app_volume(env.cp, &client, &ns, "app=app", "stash-init").await;
    assert_ne!(restored, data, "a new pod, a new volume");
    let after = inventory(&restored);
    assert_eq!(
        after, before,
        "every file restored with its bytes, owner and mode"
    );
    println!(
        "uid 999: {} files and directories backed up into a root-made repository and restored with owner and mode",
        before.len()
    );
}
