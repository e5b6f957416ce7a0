//! Backups end to end on the real control plane: workloads get the sidecar, sessions reach
//! `Succeeded`, and restic's own view of the repository has the right hosts and paths, with
//! restored bytes identical to the originals.
mod support;

use std::{path::PathBuf, time::Duration};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::{Api, ResourceExt, api::ListParams};
use serde_json::json;
use stash_crds::{BackupSession, Repository, backup_session::Phase};
use support::*;

const PASSWORD: &str = "not-so-secret-password";

struct Fixture {
    ns: stash_testenv::TestNamespace,
    /// The local backend's directory on the host (the restic repository).
    repo_dir: PathBuf,
}

/// Namespace, storage Secret, a hostPath Repository `repo`.
async fn fixture(prefix: &str) -> Fixture {
    let env = env().await;
    let ns = env.cp.namespace(prefix).await.expect("namespace");
    let repo_dir = env.cp.dir().join("repos").join(&ns.name);
    std::fs::create_dir_all(&repo_dir).expect("repo dir");
    let client = env.cp.client();
    apply(&client, &ns.name, json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "local-secret"},
        "stringData": {"RESTIC_PASSWORD": PASSWORD}
    }))
    .await;
    apply(&client, &ns.name, json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"},
        "spec": {"backend": {"storageSecretName": "local-secret",
                             "local": {"mountPath": "/safe/data", "hostPath": {"path": repo_dir.to_string_lossy()}}}}
    }))
    .await;
    Fixture { ns, repo_dir }
}

fn backup_configuration(kind: &str, name: &str, schedule: &str) -> serde_json::Value {
    json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
        "metadata": {"name": format!("{}-backup", name)},
        "spec": {
            "repository": {"name": "repo"},
            "schedule": schedule,
            "target": {"ref": {"apiVersion": "apps/v1", "kind": kind, "name": name},
                       "directories": ["/source/data"],
                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]},
            "retentionPolicy": {"name": "keep-last-10", "keepLast": 10, "prune": true}
        }
    })
}

async fn manual_session(ns: &str, bc: &str, name: &str) {
    let client = env().await.cp.client();
    apply(&client, ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
        "metadata": {"name": name, "labels": {"stash.appscode.com/backup-configuration": bc}},
        "spec": {"backupConfiguration": {"name": bc}}
    }))
    .await;
}

/// Wait until session `name` is terminal; return it.
async fn finished(ns: &str, name: &str, timeout: Duration) -> BackupSession {
    let api = Api::<BackupSession>::namespaced(env().await.cp.client(), ns);
    eventually(&format!("BackupSession {name} to finish"), timeout, || {
        let api = api.clone();
        async move {
            let s = api.get(name).await.ok()?;
            let phase = s.status.as_ref()?.phase?;
            matches!(phase, Phase::Succeeded | Phase::Failed | Phase::Skipped).then_some(s)
        }
    })
    .await
}

fn assert_succeeded(s: &BackupSession, hosts: usize) {
    let status = s.status.as_ref().expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "session {}: {status:?}", s.name_any());
    assert_eq!(status.stats.len(), hosts, "{status:?}");
    assert_eq!(status.total_hosts, Some(hosts as i32));
    for h in &status.stats {
        assert!(h.error.is_none(), "{h:?}");
        assert_eq!(h.snapshots.len(), 1, "one snapshot per directory: {h:?}");
    }
}

/// Restore every snapshot of `host` and compare with `source`.
fn assert_restores_identically(repo: &str, host: &str, source: &std::path::Path) {
    let snaps = restic_snapshots(repo, PASSWORD);
    let snap = snaps
        .iter()
        .filter(|s| s["hostname"] == host)
        .last()
        .unwrap_or_else(|| panic!("no snapshot of {host} in {snaps:?}"));
    assert_eq!(snap["paths"], json!(["/source/data"]));
    let scratch = tempfile::tempdir().expect("scratch");
    restic_restore(repo, PASSWORD, snap["id"].as_str().expect("id"), scratch.path());
    let restored = checksums(&scratch.path().join("source/data"));
    let original = checksums(source);
    assert!(!original.is_empty());
    assert_eq!(restored, original, "restored bytes of {host} differ from the originals");
}

async fn repository_agrees_with_restic(ns: &str, repo: &str) {
    let r = Api::<Repository>::namespaced(env().await.cp.client(), ns).get("repo").await.expect("repo");
    let status = r.status.expect("repository status");
    let count = restic_snapshots(repo, PASSWORD).len() as i32;
    assert_eq!(status.snapshot_count, Some(count), "Repository status agrees with restic");
    assert_eq!(status.integrity, Some(true));
    assert!(status.last_backup_time.is_some() && status.first_backup_time.is_some());
    assert!(status.size.as_deref().is_some_and(|s| !s.is_empty()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_is_backed_up_on_schedule_and_on_demand() {
    let env = env().await;
    let f = fixture("deploy").await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    let source = env.cp.node_root().join("pvc").join(&ns).join("source-data");
    generate_files(&source, 1, 24, 4096);
    apply(&client, &ns, json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "source-data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .await;
    apply(&client, &ns, json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "labels": {"app": "app"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}},
                 "template": {"metadata": {"labels": {"app": "app"}},
                              "spec": {"containers": [{"name": "busybox", "image": "busybox",
                                                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                       "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "source-data"}}]}}}
    }))
    .await;
    apply(&client, &ns, backup_configuration("Deployment", "app", "*/1 * * * *")).await;

    // The sidecar is injected and its pod runs.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    eventually("the sidecar in a ready Deployment", Duration::from_secs(90), || {
        let d = deployments.clone();
        async move {
            let d = d.get("app").await.ok()?;
            let injected = d.spec.as_ref()?.template.spec.as_ref()?.containers.iter().any(|c| c.name == "stash");
            let st = d.status?;
            (injected && st.updated_replicas == Some(1) && st.ready_replicas == Some(1) && st.replicas == Some(1)).then_some(())
        }
    })
    .await;

    manual_session(&ns, "app-backup", "manual-1").await;
    let s = finished(&ns, "manual-1", Duration::from_secs(120)).await;
    if s.status.as_ref().and_then(|s| s.phase) != Some(Phase::Succeeded) {
        dump_logs(env.cp);
    }
    assert_succeeded(&s, 1);
    let repo = f.repo_dir.to_string_lossy().to_string();
    assert_restores_identically(&repo, "host-0", &source);
    repository_agrees_with_restic(&ns, &repo).await;

    // The schedule creates sessions too (named <bc>-<unix seconds>).
    let api = Api::<BackupSession>::namespaced(client.clone(), &ns);
    let scheduled = eventually("a scheduled BackupSession to succeed", Duration::from_secs(150), || {
        let api = api.clone();
        async move {
            let list = api.list(&ListParams::default()).await.ok()?;
            list.into_iter().find(|s| {
                s.name_any().starts_with("app-backup-") && s.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded)
            })
        }
    })
    .await;
    assert_succeeded(&scheduled, 1);
    let hosts: Vec<_> = restic_snapshots(&repo, PASSWORD).iter().map(|s| s["hostname"].clone()).collect();
    assert!(hosts.len() >= 2 && hosts.iter().all(|h| h == "host-0"), "{hosts:?}");
    assert_no_illegal_transitions(env.metrics_port).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_of_a_statefulset_is_backed_up_as_its_own_host() {
    let env = env().await;
    let f = fixture("sts").await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    let pvc_root = env.cp.node_root().join("pvc").join(&ns);
    for i in 0..3 {
        generate_files(&pvc_root.join(format!("data-db-{i}")), 10 + i, 8, 2048);
    }
    apply(&client, &ns, json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "podManagementPolicy": "Parallel",
                 "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}},
                              "spec": {"containers": [{"name": "db", "image": "busybox",
                                                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                                           "spec": {"accessModes": ["ReadWriteOnce"],
                                                    "resources": {"requests": {"storage": "1Gi"}}}}]}
    }))
    .await;
    apply(&client, &ns, backup_configuration("StatefulSet", "db", "0 0 1 1 *")).await;
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    eventually("the sidecar in every StatefulSet pod", Duration::from_secs(150), || {
        let sts = sts.clone();
        async move {
            let s = sts.get("db").await.ok()?;
            let injected = s.spec.as_ref()?.template.spec.as_ref()?.containers.iter().any(|c| c.name == "stash");
            let st = s.status?;
            let rolled = st.update_revision.is_some() && st.update_revision == st.current_revision;
            (injected && rolled && st.ready_replicas == Some(3) && st.updated_replicas == Some(3)).then_some(())
        }
    })
    .await;
    manual_session(&ns, "db-backup", "manual-1").await;
    let s = finished(&ns, "manual-1", Duration::from_secs(150)).await;
    if s.status.as_ref().and_then(|s| s.phase) != Some(Phase::Succeeded) {
        dump_logs(env.cp);
    }
    assert_succeeded(&s, 3);
    let repo = f.repo_dir.to_string_lossy().to_string();
    for i in 0..3 {
        assert_restores_identically(&repo, &format!("host-{i}"), &pvc_root.join(format!("data-db-{i}")));
    }
    repository_agrees_with_restic(&ns, &repo).await;
    assert_no_illegal_transitions(env.metrics_port).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemonset_is_backed_up_under_its_node_name() {
    let env = env().await;
    let f = fixture("ds").await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    let source = env.cp.dir().join("hostpath").join(&ns);
    generate_files(&source, 42, 12, 3000);
    apply(&client, &ns, json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "agent", "image": "busybox",
                                                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                       "volumes": [{"name": "data", "hostPath": {"path": source.to_string_lossy()}}]}}}
    }))
    .await;
    apply(&client, &ns, backup_configuration("DaemonSet", "agent", "0 0 1 1 *")).await;
    let ds = Api::<DaemonSet>::namespaced(client.clone(), &ns);
    eventually("the sidecar in the DaemonSet pod", Duration::from_secs(120), || {
        let ds = ds.clone();
        async move {
            let d = ds.get("agent").await.ok()?;
            let injected = d.spec.as_ref()?.template.spec.as_ref()?.containers.iter().any(|c| c.name == "stash");
            let st = d.status?;
            (injected && st.updated_number_scheduled == Some(1) && st.number_ready == 1 && st.number_available == Some(1))
                .then_some(())
        }
    })
    .await;
    manual_session(&ns, "agent-backup", "manual-1").await;
    let s = finished(&ns, "manual-1", Duration::from_secs(120)).await;
    if s.status.as_ref().and_then(|s| s.phase) != Some(Phase::Succeeded) {
        dump_logs(env.cp);
    }
    assert_succeeded(&s, 1);
    let repo = f.repo_dir.to_string_lossy().to_string();
    assert_restores_identically(&repo, "testenv-node", &source);
    assert_no_illegal_transitions(env.metrics_port).await;
}
