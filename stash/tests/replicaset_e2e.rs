//! ReplicaSets and ReplicationControllers get the sidecar too (their pods are replaced by the
//! operator, they do not roll out by themselves), here into a local backend on a PVC.
use stash_e2e as support;

use std::time::Duration;

use serde_json::json;
use support::*;

async fn backs_up(kind: &str, api_version: &str, prefix: &str) {
    let env = env().await;
    let ns = env.cp.namespace(prefix).await.expect("namespace");
    let client = env.cp.client();
    let data = pv_dir(&ns.name, "data").await;
    generate_files(&data, 9, 12, 1500);
    let repo = pv_dir(&ns.name, "repo-pvc").await;
    let template = json!({"metadata": {"labels": {"app": "w"}},
                          "spec": {"containers": [{"name": "w", "image": "busybox", "command": ["sleep", "3600"],
                                                   "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                   "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}});
    let selector = if kind == "ReplicationController" {
        json!({"app": "w"})
    } else {
        json!({"matchLabels": {"app": "w"}})
    };
    for doc in [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"RESTIC_PASSWORD": "pw"}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "repo-pvc"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"},
               "spec": {"backend": {"storageSecretName": "s",
                                    "local": {"mountPath": "/safe/data", "persistentVolumeClaim": {"claimName": "repo-pvc"}}}}}),
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "w"},
               "spec": {"replicas": 1, "selector": selector, "template": template}}),
        json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration", "metadata": {"name": "w-backup"},
               "spec": {"repository": {"name": "repo"}, "schedule": "0 0 1 1 *",
                        "target": {"ref": {"apiVersion": api_version, "kind": kind, "name": "w"},
                                   "directories": ["/source/data"],
                                   "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}}}),
    ] {
        apply(&client, &ns.name, doc).await;
    }
    // The operator replaces the pods: a ready pod with the sidecar appears.
    wait_ready_pod_with(
        &client,
        &ns.name,
        "app=w",
        "stash",
        Duration::from_secs(120),
    )
    .await;
    // The shared wait: on a timeout it shows the session's status and the pods' logs.
    run_backup_session(
        &client,
        &ns.name,
        "w-backup",
        "now",
        Duration::from_secs(300),
    )
    .await;
    let snaps = restic_snapshots(&repo.to_string_lossy(), "pw");
    assert_eq!(snaps.len(), 1, "one snapshot in the PVC-backed repository");
    assert_eq!(snaps[0]["hostname"], "host-0");
    let id = snaps[0]["id"].as_str().expect("id");
    assert_restores_equal(restic(&repo.to_string_lossy(), "pw"), id, &data);
    assert_no_illegal_transitions().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replicaset_is_backed_up_into_a_pvc_backed_repository() {
    backs_up("ReplicaSet", "apps/v1", "rs").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replication_controller_is_backed_up_into_a_pvc_backed_repository() {
    backs_up("ReplicationController", "v1", "rc").await;
}
