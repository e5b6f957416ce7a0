//! A restore runs once per host (issue 25). Every pod of a Deployment, ReplicaSet or
//! ReplicationController is the same restic host (`host-0`): pods that start together
//! (`strategy: Recreate`, the pods the operator replaces in a standalone ReplicaSet) all run the
//! restore init-container. One restores under the host's Lease; the others decide again under
//! it, find the host's entry and restore nothing over data the first pod's application may
//! already be using. A standalone ReplicaSet's pods are replaced for the restore at all (they
//! were replaced only for a backup, and the restore waited for its deadline).
use stash_e2e as support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, LogParams},
};
use serde_json::json;
use stash_crds::restore_session::Phase as RestorePhase;
use support::*;

const PASSWORD: &str = "restore-once-password";

/// Back up workload `w` of `kind` (`replicas` pods sharing PVC `source-data`, extra `spec`
/// fields from `extra`) with the sidecar, wipe the data, restore it, and check that the data is
/// byte-equal and that exactly one pod restored.
async fn restores_once(
    prefix: &str,
    kind: &str,
    api_version: &str,
    replicas: i32,
    extra: serde_json::Value,
) {
    let env = env().await;
    let client = env.cp.client();
    let f = fixture_with_password(prefix, PASSWORD).await;
    let ns = f.ns.name.clone();
    let data = pv_dir(&ns, "source-data").await;
    generate_files(&data, 11, 12, 2500);
    let backed_up = checksums(&data);
    let selector = if kind == "ReplicationController" {
        json!({"app": "w"})
    } else {
        json!({"matchLabels": {"app": "w"}})
    };
    let mut spec = json!({
        "replicas": replicas, "selector": selector,
        "template": {"metadata": {"labels": {"app": "w"}},
                     "spec": {"containers": [{"name": "w", "image": "busybox", "command": ["sleep", "3600"],
                                              "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                              "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "source-data"}}]}}
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let target = json!({"apiVersion": api_version, "kind": kind, "name": "w"});
    for doc in [
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "source-data"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "w"}, "spec": spec}),
        json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration", "metadata": {"name": "w-backup"},
               "spec": {"repository": {"name": "repo"}, "schedule": "0 0 1 1 *",
                        "target": {"ref": target, "directories": ["/source/data"],
                                   "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}}}),
    ] {
        apply(&client, &ns, doc).await;
    }
    wait_ready_pod_with(&client, &ns, "app=w", "stash", Duration::from_secs(180)).await;
    run_backup_session(&client, &ns, "w-backup", "before", Duration::from_secs(300)).await;
    let snaps = restic_snapshots(&f.repo_dir.to_string_lossy(), PASSWORD);
    assert_eq!(snaps.len(), 1, "{snaps:?}");

    wipe(&data);
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": "restore"},
            "spec": {"repository": {"name": "repo"},
                     "target": {"ref": target,
                                "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]},
                     "rules": [{"paths": ["/source/data"]}]}
        }),
    )
    .await;
    let rs = wait_restore_terminal(&client, &ns, "restore", Duration::from_secs(240)).await;
    let status = rs.status.clone().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    assert_eq!(status.stats.len(), 1, "{status:?}");
    assert_eq!(
        checksums(&data),
        backed_up,
        "restored bytes equal the backed-up bytes"
    );

    // Every pod ran the init-container: all `replicas` pods Ready with it, and each one's log
    // says whether it restored ("nothing to do": it found the host restored). Exactly one did.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let ready_with_init = eventually(
        &format!("{replicas} pods Ready with the restore init-container"),
        Duration::from_secs(180),
        || {
            let pods = pods.clone();
            async move {
                let live: Vec<Pod> = pods
                    .list(&ListParams::default().labels("app=w"))
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter(|p| {
                        p.spec
                            .iter()
                            .flat_map(|s| s.init_containers.iter().flatten())
                            .any(|c| c.name == "stash-init")
                    })
                    .filter(|p| {
                        p.status
                            .iter()
                            .flat_map(|s| s.conditions.iter().flatten())
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                    .collect();
                (live.len() == usize::try_from(replicas).unwrap_or(0)).then_some(live)
            }
        },
    )
    .await;
    let mut restored = Vec::new();
    let mut skipped = Vec::new();
    for p in &ready_with_init {
        let log = pods
            .logs(
                &p.name_any(),
                &LogParams {
                    container: Some("stash-init".into()),
                    ..Default::default()
                },
            )
            .await
            .expect("init-container log");
        if log.contains("nothing to do") {
            skipped.push(p.name_any());
        } else {
            restored.push(p.name_any());
        }
    }
    assert_eq!(
        restored.len(),
        1,
        "restored in {restored:?}, skipped in {skipped:?}"
    );
    let restores = events_in(&client, &ns)
        .await
        .into_iter()
        .filter(|e| e.name == "restore" && e.reason == "SuccessfulHostRestore")
        .count();
    assert_eq!(restores, 1, "one SuccessfulHostRestore event");
    assert_eq!(
        checksums(&data),
        backed_up,
        "the data is still the backed-up bytes"
    );
    println!(
        "{kind} of {replicas}: restored once (by {}), {} pods found it restored",
        restored[0],
        skipped.len()
    );
    assert_no_illegal_transitions().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recreate_deployment_of_three_pods_restores_once() {
    restores_once(
        "restore-recreate",
        "Deployment",
        "apps/v1",
        3,
        json!({"strategy": {"type": "Recreate"}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standalone_replicaset_restores_once() {
    restores_once("restore-rs", "ReplicaSet", "apps/v1", 2, json!({})).await;
}
