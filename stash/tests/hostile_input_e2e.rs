//! Issue 24 on the real cluster: what a namespace user can write must neither take the
//! operator down nor take over objects that are not stash's.
//!
//! - Hostile objects: a job-model RestoreSession asking for 2,147,483,647 hosts (refused at
//!   admission by the CRD schema), a RestoreSession of a StatefulSet whose `replicas` is
//!   100,000 (the session fails with the reason, no host name is built), a Function whose
//!   arguments overflow a substring position and nest defaults 200 deep (the backup session
//!   fails with the substitution's limit), and a `CRON_TZ=` schedule (the trigger CronJob gets
//!   `spec.timeZone`). Afterwards the operator's pods have not restarted and a backup in
//!   another namespace still succeeds.
//! - Names that belong to someone else: a user's ServiceAccount, RoleBinding and CronJob named
//!   like a BackupConfiguration are unchanged (same resourceVersion, no owner) after the
//!   configuration is created, used for a backup and deleted; the clash is a Warning Event.
use stash_e2e as support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{batch::v1::CronJob, core::v1::ServiceAccount, rbac::v1::RoleBinding};
use kube::{
    Api, Client, Resource,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams},
    discovery,
};
use serde_json::json;
use stash_crds::{backup_session::Phase, restore_session::Phase as RestorePhase};
use support::*;

/// Each operator pod's name and restart count.
async fn restarts(client: &Client) -> BTreeMap<String, i32> {
    operator_pods(client)
        .await
        .into_iter()
        .map(|p| {
            let restarts = p
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
                .iter()
                .map(|c| c.restart_count)
                .sum();
            (p.metadata.name.unwrap_or_default(), restarts)
        })
        .collect()
}

/// Server-side apply that may be refused: the API server's message.
async fn try_apply(client: &Client, ns: &str, doc: serde_json::Value) -> Result<(), String> {
    let (ar, _) = discovery::pinned_kind(client, &gvk_of(&doc))
        .await
        .expect("discovery");
    let obj: DynamicObject = serde_json::from_value(doc).expect("object");
    let name = obj.metadata.name.clone().expect("name");
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .patch(&name, &PatchParams::apply("stash-e2e"), &Patch::Apply(&obj))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A backup of a Deployment in a namespace of its own, through the sidecar: `Succeeded`.
async fn a_backup_elsewhere_succeeds(client: &Client) {
    let f = fixture_with_password("hostile-other", "password").await;
    let ns = f.ns.name.clone();
    let source = pv_dir(&ns, "data").await;
    generate_files(&source, 5, 3, 1024);
    deployment_with_pvc(client, &ns, "app", "data").await;
    sidecar_backup(client, &ns, "app", "repo", json!({})).await;
    run_backup_session(
        client,
        &ns,
        "app-backup",
        "other-1",
        Duration::from_secs(180),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_objects_leave_the_operator_running() {
    let env = env().await;
    let client = env.cp.client();
    let before = restarts(&client).await;
    assert!(!before.is_empty(), "operator pods");
    let f = fixture_with_password("hostile", "password").await;
    let ns = f.ns.name.clone();

    // 1. A job-model restore of two billion hosts: refused before anything runs.
    let refused = try_apply(&client, &ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
        "metadata": {"name": "two-billion"},
        "spec": {"repository": {"name": "repo"}, "task": {"name": "pvc-restore"},
                 "rules": [{"paths": ["/source/data"]}],
                 "target": {"replicas": 2147483647,
                            "volumeMounts": [{"name": "data", "mountPath": "/source/data"}],
                            "volumeClaimTemplates": [{"metadata": {"name": "data-${POD_ORDINAL}"},
                                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}
    }))
    .await
    .expect_err("two billion hosts are refused");
    assert!(refused.contains("spec.target.replicas"), "{refused}");

    // 2. A StatefulSet of 100,000 replicas (its first pod can never be scheduled, so the
    //    StatefulSet controller makes just that one), and a restore of it: past the operator's
    //    5,000 hosts. (Not 2,147,483,647: kube-controller-manager's StatefulSet controller
    //    allocates a slot per replica, 16 GiB for that, and takes the node down itself.)
    apply(&client, &ns, json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "huge"},
        "spec": {"replicas": 100000, "serviceName": "huge",
                 "selector": {"matchLabels": {"app": "huge"}},
                 "template": {"metadata": {"labels": {"app": "huge"}},
                              "spec": {"nodeSelector": {"stash-e2e/nowhere": "true"},
                                       "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "3600"],
                                                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                       "volumes": [{"name": "data", "emptyDir": {}}]}}}
    }))
    .await;
    apply(&client, &ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
        "metadata": {"name": "huge-restore"},
        "spec": {"repository": {"name": "repo"}, "rules": [{"paths": ["/source/data"]}],
                 "target": {"ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "huge"},
                            "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}}
    }))
    .await;

    // 3. A Function whose arguments overflow a substring position and nest defaults 200 deep,
    //    run as a job-model backup of a PVC.
    let nested = format!("--nested={}x{}", "${A:=".repeat(200), "}".repeat(200));
    let function = format!("hostile-fn-{ns}");
    let task = format!("hostile-task-{ns}");
    apply(&client, "", json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "Function", "metadata": {"name": function},
        "spec": {"image": IMAGE, "args": ["--overflow=${TARGET_NAME:1:9223372036854775807}", nested]}
    }))
    .await;
    apply(&client, "", json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "Task", "metadata": {"name": task},
        "spec": {"steps": [{"name": function}, {"name": "update-status", "params": [{"name": "outputDir", "value": "/tmp/output"}]}]}
    }))
    .await;
    apply(&client, &ns, json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "claim"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .await;
    // 4. With a time zone in its schedule (refused by the API server in a CronJob's schedule).
    let hostile_job =
        json!({"schedule": "CRON_TZ=Europe/Berlin 0 2 * * *", "task": {"name": task}});
    let bc = pvc_backup_configuration("hostile-job", "claim", hostile_job);
    let cron = apply_with_trigger(&client, &ns, bc).await;
    create_backup_session(&client, &ns, "hostile-job", "hostile-1").await;

    let s = wait_session_ends(
        &client,
        &ns,
        "hostile-1",
        Phase::Failed,
        Duration::from_secs(120),
    )
    .await;
    let status = s.status.clone().expect("status");
    let reason = status.reason.unwrap_or_default();
    assert!(
        reason.contains("substitution exceeds a limit: nested deeper than 16 levels"),
        "{reason}"
    );

    let rs = wait_session_ends(
        &client,
        &ns,
        "huge-restore",
        RestorePhase::Failed,
        Duration::from_secs(120),
    )
    .await;
    let reason = rs.status.and_then(|s| s.reason).unwrap_or_default();
    assert!(
        reason.contains("100000 replicas to restore: at most 5000 hosts"),
        "{reason}"
    );

    let spec = cron.spec;
    assert_eq!(spec.schedule, "0 2 * * *");
    assert_eq!(spec.time_zone.as_deref(), Some("Europe/Berlin"));

    for kind in ["Task", "Function"] {
        let name = if kind == "Task" { &task } else { &function };
        let gvk = GroupVersionKind::gvk("stash.appscode.com", "v1beta1", kind);
        let (ar, _) = discovery::pinned_kind(&client, &gvk).await.expect("kind");
        Api::<DynamicObject>::all_with(client.clone(), &ar)
            .delete(name, &Default::default())
            .await
            .expect("delete");
    }

    a_backup_elsewhere_succeeds(&client).await;
    let after = restarts(&client).await;
    assert_eq!(
        after, before,
        "the operator's pods and their restart counts"
    );
    stash_testenv::report(&format!(
        "hostile input: replicas 2147483647 refused at admission; StatefulSet restore Failed ({reason}); \
         200-deep template Failed; CRON_TZ → timeZone Europe/Berlin; operator restarts {after:?}"
    ));
}

/// The fields of a user's object that stash must never change.
fn untouched<K: Resource>(o: &K) -> (Option<String>, Option<String>, usize) {
    let m = o.meta();
    (
        m.uid.clone(),
        m.resource_version.clone(),
        m.owner_references.as_ref().map_or(0, Vec::len),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn users_objects_named_like_a_configuration_are_never_touched() {
    let env = env().await;
    let client = env.cp.client();
    let f = fixture_with_password("clash", "password").await;
    let ns = f.ns.name.clone();
    let source = pv_dir(&ns, "data").await;
    generate_files(&source, 6, 3, 1024);
    deployment_with_pvc(&client, &ns, "app", "data").await;
    // The user's own objects, named as stash would name the configuration's.
    let name = "app-backup";
    apply(&client, &ns, json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "labels": {"team": "ops"}}
    }))
    .await;
    apply(&client, &ns, json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "Group", "name": "auditors", "apiGroup": "rbac.authorization.k8s.io"}]
    }))
    .await;
    apply(&client, &ns, json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
        "spec": {"schedule": "0 0 1 1 *", "suspend": true,
                 "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                     "containers": [{"name": "report", "image": "busybox", "command": ["true"]}]}}}}}
    }))
    .await;
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
    let rbs = Api::<RoleBinding>::namespaced(client.clone(), &ns);
    let cronjobs = Api::<CronJob>::namespaced(client.clone(), &ns);
    let snapshot = || async {
        (
            untouched(&sas.get(name).await.expect("the user's ServiceAccount")),
            untouched(&rbs.get(name).await.expect("the user's RoleBinding")),
            untouched(&cronjobs.get(name).await.expect("the user's CronJob")),
        )
    };
    let before = snapshot().await;

    apply(
        &client,
        &ns,
        deployment_backup_configuration("app", "repo", "*/30 * * * *", json!({})),
    )
    .await;
    let ev = wait_event(&client, &ns, name, "NameClash", Duration::from_secs(60)).await;
    assert_eq!(ev.type_, "Warning");
    assert!(
        ev.note.contains(&format!(
            "ServiceAccount {ns}/{name} exists and was not created by stash"
        )),
        "{ev:?}"
    );
    // And in the configuration's status, as the API server returns it: phase NotReady, the
    // condition CronJobCreated False with reason NameClash.
    let configs = Api::<stash_crds::BackupConfiguration>::namespaced(client.clone(), &ns);
    let status = eventually(
        "the configuration's status to name the clash",
        Duration::from_secs(60),
        || {
            let configs = configs.clone();
            async move {
                let st = configs.get(name).await.ok()?.status?;
                (st.phase == Some(stash_crds::backup_configuration::Phase::NotReady)).then_some(st)
            }
        },
    )
    .await;
    let c = &status.conditions[0];
    assert_eq!(
        (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
        ("CronJobCreated", "False", "NameClash"),
        "{status:?}"
    );
    assert!(
        c.message.contains(&format!(
            "ServiceAccount {ns}/{name} exists and was not created by stash"
        )),
        "{c:?}"
    );
    // The backup itself goes through the workload's own agents.
    wait_sidecar_ready(&client, &ns, "app", Duration::from_secs(180)).await;
    run_backup_session(&client, &ns, name, "clash-1", Duration::from_secs(180)).await;
    configs
        .delete(name, &Default::default())
        .await
        .expect("delete the configuration");
    eventually(
        "the configuration to be gone",
        Duration::from_secs(60),
        || {
            let configs = configs.clone();
            async move { matches!(configs.get_opt(name).await, Ok(None)).then_some(()) }
        },
    )
    .await;
    // An unchanged resourceVersion means no write at all: no owner reference was ever added,
    // so the garbage collector has nothing of the user's to take with the configuration.
    let after = snapshot().await;
    assert_eq!(
        after, before,
        "uid, resourceVersion and owners of SA, RoleBinding, CronJob"
    );
    assert_eq!(
        before.0.2 + before.1.2 + before.2.2,
        0,
        "no owner at any time"
    );
    stash_testenv::report(&format!(
        "name clash: the user's ServiceAccount, RoleBinding and CronJob {name} unchanged (resourceVersions {:?}, {:?}, {:?}); backup Succeeded; NameClash event and status condition",
        after.0.1, after.1.1, after.2.1
    ));
}
