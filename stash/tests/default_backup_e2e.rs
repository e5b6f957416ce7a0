//! Default backups end to end (§5.5): a BackupConfigurationTemplate plus annotations create the
//! Repository and BackupConfiguration; removing the annotations deletes the configuration and
//! keeps the Repository. First with the upstream auto-backup examples, then a real backup
//! through a template with a local backend, and through later Stash's BackupBlueprint.
use stash_e2e as support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use stash_crds::{BackupConfiguration, Repository};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_auto_backup_examples_create_and_remove_the_configuration() {
    let env = env().await;
    let ns = env.cp.namespace("auto").await.expect("namespace");
    let client = env.cp.client();
    for doc in upstream(
        "auto-backup-workload-backupconfiguration_template.yaml",
        &ns.name,
    )
    .into_iter()
    .chain(upstream("auto-backup-workload-deployment.yaml", &ns.name))
    {
        apply(&client, &ns.name, doc).await;
    }
    let bcs = Api::<BackupConfiguration>::namespaced(client.clone(), &ns.name);
    let repos = Api::<Repository>::namespaced(client.clone(), &ns.name);
    let bc = eventually(
        "the default BackupConfiguration",
        Duration::from_secs(60),
        || {
            let bcs = bcs.clone();
            async move { bcs.get("deployment-stash-demo").await.ok() }
        },
    )
    .await;
    let target = bc.spec.target.clone().expect("target");
    assert_eq!(target.target_ref.kind.as_deref(), Some("Deployment"));
    assert_eq!(target.target_ref.name.as_deref(), Some("stash-demo"));
    assert_eq!(target.directories, ["/source/data-1", "/source/data-2"]);
    assert_eq!(
        target
            .volume_mounts
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["source-data-1", "source-data-2"]
    );
    assert_eq!(bc.spec.schedule.as_deref(), Some("*/5 * * * *"));
    assert_eq!(
        bc.spec.retention_policy.as_ref().and_then(|r| r.keep_last),
        Some(5)
    );
    assert_eq!(bc.owner_references()[0].kind, "Deployment");
    let repo = repos
        .get("deployment-stash-demo")
        .await
        .expect("the default Repository");
    let prefix = repo
        .spec
        .backend
        .gcs
        .as_ref()
        .and_then(|g| g.prefix.clone());
    assert_eq!(
        prefix,
        Some(format!("stash-backup/{}/deployment/stash-demo", ns.name)),
        "template inputs substituted"
    );

    // The configuration targets the Deployment, so the sidecar is injected.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    eventually("the sidecar", Duration::from_secs(60), || {
        let d = deployments.clone();
        async move {
            let d = d.get("stash-demo").await.ok()?;
            d.spec?
                .template
                .spec?
                .containers
                .iter()
                .any(|c| c.name == "stash")
                .then_some(())
        }
    })
    .await;

    // Removing the annotations deletes the BackupConfiguration and keeps the Repository.
    deployments
        .patch(
            "stash-demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "stash.appscode.com/backup-template": null,
                "stash.appscode.com/target-directories": null,
                "stash.appscode.com/volume-mounts": null}}})),
        )
        .await
        .expect("remove annotations");
    eventually(
        "the BackupConfiguration to be deleted",
        Duration::from_secs(60),
        || {
            let bcs = bcs.clone();
            async move {
                bcs.get_opt("deployment-stash-demo")
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    assert!(
        repos
            .get_opt("deployment-stash-demo")
            .await
            .expect("get")
            .is_some(),
        "the Repository is kept"
    );
    eventually("the sidecar to go", Duration::from_secs(60), || {
        let d = deployments.clone();
        async move {
            let d = d.get("stash-demo").await.ok()?;
            (!d.spec?
                .template
                .spec?
                .containers
                .iter()
                .any(|c| c.name == "stash"))
            .then_some(())
        }
    })
    .await;

    // The PVC example: the template's task is carried into the configuration.
    for doc in upstream(
        "auto-backup-pvc-backupconfiguration_template.yaml",
        &ns.name,
    ) {
        apply(&client, &ns.name, doc).await;
    }
    let mut pvc = upstream("auto-backup-pvc-nfs_pvc.yaml", &ns.name).remove(0);
    pvc["metadata"]["annotations"] = json!({
        "stash.appscode.com/backup-template": "pvc-backup-template",
        "stash.appscode.com/mountpath": "/source/data",
        "stash.appscode.com/target-directories": "/source/data"
    });
    apply(&client, &ns.name, pvc).await;
    let bc = eventually(
        "the PVC's default BackupConfiguration",
        Duration::from_secs(60),
        || {
            let bcs = bcs.clone();
            async move { bcs.get("persistentvolumeclaim-nfs-pvc").await.ok() }
        },
    )
    .await;
    assert_eq!(
        bc.spec.task.as_ref().map(|t| t.name.as_str()),
        Some("pvc-backup")
    );
    assert_eq!(
        bc.spec
            .target
            .as_ref()
            .and_then(|t| t.target_ref.kind.as_deref()),
        Some("PersistentVolumeClaim")
    );
    assert_eq!(
        bc.spec
            .target
            .as_ref()
            .map(|t| t.volume_mounts[0].name.as_str()),
        Some("stash-volume")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_default_backup_with_a_local_template_really_backs_up() {
    let bc = default_backup_backs_up("auto-local", |name, backend| {
        let source = json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfigurationTemplate",
                            "metadata": {"name": name}, "spec": {"backend": backend, "schedule": "0 0 1 1 *"}});
        let annotations = json!({"stash.appscode.com/backup-template": name,
                                 "stash.appscode.com/target-directories": "/source/data",
                                 "stash.appscode.com/volume-mounts": "data:/source/data"});
        (source, annotations)
    })
    .await;
    assert_eq!(bc.spec.schedule.as_deref(), Some("0 0 1 1 *"));
}

/// Later Stash's auto-backup: a BackupBlueprint named by `stash.appscode.com/backup-blueprint`
/// on a new Deployment, with the later annotations (`target-paths`, and `schedule` over the
/// blueprint's), yields a Repository and a BackupConfiguration (with the blueprint's
/// `retryConfig`) and a Succeeded session whose snapshot restores byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_blueprint_annotation_gives_a_new_deployment_its_backup() {
    let bc = default_backup_backs_up("blueprint", |name, backend| {
        let source = json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupBlueprint",
                            "metadata": {"name": name},
                            "spec": {"backend": backend, "schedule": "*/5 * * * *",
                                     "retryConfig": {"maxRetry": 1, "delay": "1m"},
                                     "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true}}});
        let annotations = json!({"stash.appscode.com/backup-blueprint": name,
                                 "stash.appscode.com/target-paths": "/source/data",
                                 "stash.appscode.com/volume-mounts": "data:/source/data",
                                 "stash.appscode.com/schedule": "0 0 1 1 *"});
        (source, annotations)
    })
    .await;
    assert_eq!(
        bc.spec.schedule.as_deref(),
        Some("0 0 1 1 *"),
        "the Deployment's schedule annotation over the blueprint's"
    );
    assert_eq!(
        bc.spec.retry_config.and_then(|r| r.max_retry),
        Some(1),
        "the blueprint's retryConfig"
    );
}

/// A Deployment named `app` on PVC `data`, annotated for a default backup from a cluster-scoped
/// source (`make(name, backend)` gives the source object and the annotations) whose local
/// backend's sub-path is templated: its sidecar backs up into that path (restic's own view),
/// the snapshot restores byte for byte; the BackupConfiguration made for it.
async fn default_backup_backs_up(
    prefix: &str,
    make: impl Fn(&str, serde_json::Value) -> (serde_json::Value, serde_json::Value),
) -> BackupConfiguration {
    let env = env().await;
    let ns = env.cp.namespace(prefix).await.expect("namespace");
    let client = env.cp.client();
    let repo_root = env.cp.dir().join("repos").join(&ns.name);
    std::fs::create_dir_all(&repo_root).expect("repo dir");
    let data = pv_dir(&ns.name, "data").await;
    generate_files(&data, 77, 10, 2048);
    let name = format!("local-{}", ns.name);
    let backend = json!({"storageSecretName": "local-secret",
                         "local": {"mountPath": "/safe/data", "subPath": "${TARGET_NAMESPACE}/${TARGET_KIND}/${TARGET_NAME}",
                                   "hostPath": {"path": repo_root.to_string_lossy()}}});
    let (source, annotations) = make(&name, backend);
    for doc in [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "local-secret"}, "stringData": {"RESTIC_PASSWORD": "pw"}}),
        source,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "app", "annotations": annotations},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}},
                        "template": {"metadata": {"labels": {"app": "app"}},
                                     "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "3600"],
                                                              "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                              "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}}}),
    ] {
        apply(&client, &ns.name, doc).await;
    }
    wait_sidecar_ready(&client, &ns.name, "app", Duration::from_secs(120)).await;
    let session = run_backup_session(
        &client,
        &ns.name,
        "deployment-app",
        "now",
        Duration::from_secs(150),
    )
    .await;
    assert_eq!(
        session.status.and_then(|s| s.phase),
        Some(stash_crds::backup_session::Phase::Succeeded)
    );
    let repo = repo_root.join(&ns.name).join("deployment").join("app");
    let snaps = restic_snapshots(&repo.to_string_lossy(), "pw");
    assert_eq!(
        snaps.len(),
        1,
        "one snapshot in the templated repository path"
    );
    let id = snaps[0]["id"].as_str().expect("id");
    assert_restores_equal(restic(&repo.to_string_lossy(), "pw"), id, &data);
    assert_no_illegal_transitions().await;
    // The Repository and the BackupConfiguration, as the API server has them.
    Api::<Repository>::namespaced(client.clone(), &ns.name)
        .get("deployment-app")
        .await
        .expect("the Repository made for it");
    Api::<BackupConfiguration>::namespaced(client.clone(), &ns.name)
        .get("deployment-app")
        .await
        .expect("the BackupConfiguration made for it")
}
