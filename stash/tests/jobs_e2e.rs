//! The job model end to end on the real control plane (issue 6, and the restore Jobs of issue
//! 5): a PVC backed up by a Job built from the built-in `pvc-backup` Task, restored by a
//! `pvc-restore` Job into a new PVC, and by restore Jobs creating new PVCs from
//! `volumeClaimTemplates`; checksums identical. Failures (a failing step, an unresolved
//! variable, a missing Task or Function) end the session `Failed` with the reason in status and
//! an event, and never retry.
use stash_e2e as support;

use std::{path::PathBuf, time::Duration};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Event, Pod},
};
use kube::{Api, ResourceExt, api::ListParams};
use serde_json::json;
use stash_crds::{
    BackupSession, Repository, backup_session::Phase, restore_session::Phase as RestorePhase,
};
use support::*;

const PASSWORD: &str = "not-so-secret-password";

/// Namespace, storage Secret, a hostPath Repository `repo`.
async fn fixture(prefix: &str) -> Fixture {
    fixture_with_password(prefix, PASSWORD).await
}

async fn pvc(ns: &str, name: &str) {
    apply(&env().await.cp.client(), ns, json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .await;
}

/// [`pvc_backup_configuration`] through Task `task` of `directories`, keeping the last 5.
fn pvc_backup_through(
    name: &str,
    claim: &str,
    task: &str,
    directories: serde_json::Value,
) -> serde_json::Value {
    let mut bc = pvc_backup_configuration(
        name,
        claim,
        json!({
            "task": {"name": task},
            "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true}
        }),
    );
    bc["spec"]["target"]["directories"] = directories;
    bc
}

/// Wait (≤ 150 s) until session `name` in `ns` ends `want` (a BackupSession's or a
/// RestoreSession's phase).
async fn ends<P: SessionPhase>(ns: &str, name: &str, want: P) -> P::Session {
    let client = env().await.cp.client();
    wait_session_ends(&client, ns, name, want, Duration::from_secs(150)).await
}

/// Back up PVC `source-data` (generated files) through the `pvc-backup` Task; return its dir.
async fn backed_up_pvc(f: &Fixture) -> PathBuf {
    let env = env().await;
    let ns = f.ns.name.clone();
    let source = pv_dir(&ns, "source-data").await;
    generate_files(&source, 7, 30, 5000);
    pvc(&ns, "source-data").await;
    apply(
        &env.cp.client(),
        &ns,
        pvc_backup_through(
            "pvc-backup",
            "source-data",
            "pvc-backup",
            json!(["/source/data"]),
        ),
    )
    .await;
    let started = std::time::Instant::now();
    create_backup_session(&env.cp.client(), &ns, "pvc-backup", "pvc-backup-1").await;
    let s = ends(&ns, "pvc-backup-1", Phase::Succeeded).await;
    let status = s.status.clone().expect("status");
    println!("PVC backup through the job model: {:?}", started.elapsed());
    assert_eq!(status.total_hosts, Some(1));
    assert_eq!(status.stats.len(), 1);
    assert_eq!(status.stats[0].hostname.as_deref(), Some("host-0"));
    assert_eq!(status.stats[0].snapshots.len(), 1);
    // restic's own view: one snapshot of /source/data by host-0, byte-identical.
    let repo = f.repo_dir.to_string_lossy().to_string();
    let snaps = restic_snapshots(&repo, PASSWORD);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["hostname"], "host-0");
    assert_eq!(snaps[0]["paths"], json!(["/source/data"]));
    let id = snaps[0]["id"].as_str().expect("id");
    assert_restores_equal(restic(&repo, PASSWORD), id, &source);
    // The Repository status comes from update-status.
    let r = Api::<Repository>::namespaced(env.cp.client(), &ns)
        .get("repo")
        .await
        .expect("repo");
    let rs = r.status.expect("repository status");
    assert_eq!(rs.snapshot_count, Some(1));
    assert_eq!(rs.integrity, Some(true));
    // The Job: two steps, init-container then container, no retry budget.
    let job = Api::<Job>::namespaced(env.cp.client(), &ns)
        .get("stash-backup-pvc-backup-1")
        .await
        .expect("job");
    let spec = job.spec.expect("job spec");
    assert_eq!(spec.backoff_limit, Some(0));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.init_containers
            .unwrap_or_default()
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>(),
        ["pvc-backup-0"]
    );
    assert_eq!(pod.containers[0].name, "update-status-1");
    assert_eq!(pod.service_account_name.as_deref(), Some("pvc-backup"));
    source
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pvc_is_backed_up_and_restored_into_a_new_pvc_through_jobs() {
    let env = env().await;
    let f = fixture("jobs-pvc").await;
    let ns = f.ns.name.clone();
    let source = backed_up_pvc(&f).await;

    // The second PVC is bound to a hostPath PersistentVolume of its own.
    let restored_dir = pv_dir(&ns, "restored-data").await;
    pvc(&ns, "restored-data").await;
    assert_eq!(
        bound_pv_dir(&ns, "restored-data").await,
        restored_dir,
        "bound to the PV made for it"
    );
    apply(&env.cp.client(), &ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "restore-pvc"},
        "spec": {"repository": {"name": "repo"}, "task": {"name": "pvc-restore"},
                 "target": {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "restored-data"},
                            "volumeMounts": [{"name": "target-volume", "mountPath": "/source/data"}]},
                 "rules": [{"paths": ["/source/data"]}]}
    }))
    .await;
    let started = std::time::Instant::now();
    let rs = ends(&ns, "restore-pvc", RestorePhase::Succeeded).await;
    let status = rs.status.clone().expect("status");
    println!("PVC restore through the job model: {:?}", started.elapsed());
    assert_eq!(status.stats.len(), 1);
    assert_eq!(status.stats[0].hostname.as_deref(), Some("host-0"));
    let restored = checksums(&restored_dir);
    assert!(!restored.is_empty());
    assert_eq!(restored, checksums(&source), "restored bytes differ");
    assert_no_illegal_transitions().await;
}

/// The job model reads the later spelling too (issue 27): a PVC backed up through the
/// `pvc-backup` Task with `target.paths` and `target.exclude`, restored into a new PVC through
/// `pvc-restore` with its rule under `spec.target.rules` and an `include`.
#[tokio::test(flavor = "multi_thread")]
async fn a_pvc_backed_up_with_exclude_is_restored_with_include_through_jobs() {
    let env = env().await;
    let client = env.cp.client();
    let f = fixture("jobs-later").await;
    let ns = f.ns.name.clone();
    let source = pv_dir(&ns, "source-data").await;
    write_filter_files(&source);
    write_args_files(&source);
    pvc(&ns, "source-data").await;
    let mut bc = pvc_backup_configuration("later", "source-data", json!({}));
    in_later_spelling_excluding_tmp(&mut bc);
    bc["spec"]["target"]["args"] = json!(BACKUP_ARGS);
    apply(&client, &ns, bc).await;
    create_backup_session(&client, &ns, "later", "later-1").await;
    let s = ends(&ns, "later-1", Phase::Succeeded).await;
    let short = s.status.expect("status").stats[0].snapshots[0]
        .name
        .clone()
        .expect("snapshot");
    assert_snapshot_excludes_tmp(&f.repo_dir.to_string_lossy(), PASSWORD, &short);
    assert_snapshot_honours_backup_args(&f.repo_dir.to_string_lossy(), PASSWORD, &short);

    let restored_dir = pv_dir(&ns, "restored-data").await;
    pvc(&ns, "restored-data").await;
    apply(&client, &ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "restore-included"},
        "spec": {"repository": {"name": "repo"}, "task": {"name": "pvc-restore"},
                 "target": {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "restored-data"},
                            "volumeMounts": [{"name": "target-volume", "mountPath": "/source/data"}],
                            "args": RESTORE_ARGS,
                            "rules": [{"paths": ["/source/data"], "include": ["/source/data/keep"]}]}}
    }))
    .await;
    ends(&ns, "restore-included", RestorePhase::Succeeded).await;
    assert_restored_only_included(&restored_dir);
    assert_restore_honoured_args(&restored_dir);
    assert_no_illegal_transitions().await;
}

/// A backup Job whose `forget` fails after its snapshot (the older snapshot's file made
/// immutable) keeps the snapshot and Succeeds: the failure is the host's condition and a
/// Warning, as for the sidecar (issue 25: it used to fail the host).
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_job_whose_retention_fails_keeps_its_snapshot_and_succeeds() {
    let env = env().await;
    let client = env.cp.client();
    let f = fixture("jobs-follow-up").await;
    let ns = f.ns.name.clone();
    let source = pv_dir(&ns, "source-data").await;
    generate_files(&source, 3, 10, 4000);
    pvc(&ns, "source-data").await;
    let mut bc = pvc_backup_configuration("keep-one", "source-data", json!({}));
    bc["spec"]["retentionPolicy"] = json!({"name": "last-one", "keepLast": 1, "prune": true});
    apply(&client, &ns, bc).await;
    create_backup_session(&client, &ns, "keep-one", "keep-one-1").await;
    let first = ends(&ns, "keep-one-1", Phase::Succeeded).await;
    let applied = retention_condition_of(&first).expect("the first session's retention condition");
    assert_retention_applied(&applied);
    // The first snapshot cannot be deleted now: the second Job's `forget` fails for real.
    let pinned = Immutable::files_of(&f.repo_dir.join("snapshots"));
    generate_files(&source, 4, 10, 4000);
    create_backup_session(&client, &ns, "keep-one", "keep-one-2").await;
    let second = ends(&ns, "keep-one-2", Phase::Succeeded).await;
    let failed = retention_condition_of(&second).expect("the second session's retention condition");
    assert_retention_failed(&client, &ns, "keep-one-2", &failed).await;
    drop(pinned);
    // restic's own view: both snapshots kept, the second one the status names.
    let repo = f.repo_dir.to_string_lossy().to_string();
    let snaps = restic_snapshots(&repo, PASSWORD);
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let named = second.status.as_ref().expect("status").stats[0].snapshots[0]
        .name
        .clone()
        .expect("snapshot name");
    assert!(
        snaps
            .iter()
            .any(|s| s["short_id"].as_str() == Some(named.as_str())),
        "{named} not in {snaps:?}"
    );
    println!(
        "job-model follow-up failure: session Succeeded, condition {} {} ({}), both snapshots kept",
        failed.type_, failed.status, failed.reason
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_jobs_create_new_pvcs_from_volume_claim_templates() {
    let env = env().await;
    let f = fixture("jobs-vct").await;
    let ns = f.ns.name.clone();
    let source = backed_up_pvc(&f).await;
    apply(&env.cp.client(), &ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "restore-vct"},
        "spec": {"repository": {"name": "repo"},
                 "target": {"replicas": 2,
                            "volumeMounts": [{"name": "restored", "mountPath": "/source/data"}],
                            "volumeClaimTemplates": [{"metadata": {"name": "restored-${POD_ORDINAL}"},
                                                      "spec": {"accessModes": ["ReadWriteOnce"],
                                                               "resources": {"requests": {"storage": "1Gi"}}}}]},
                 "rules": [{"sourceHost": "host-0", "paths": ["/source/data"]}]}
    }))
    .await;
    let rs = ends(&ns, "restore-vct", RestorePhase::Succeeded).await;
    let status = rs.status.clone().expect("status");
    assert_eq!(status.total_hosts, Some(2));
    let mut hosts: Vec<_> = status
        .stats
        .iter()
        .filter_map(|h| h.hostname.clone())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["host-0", "host-1"]);
    let jobs = Api::<Job>::namespaced(env.cp.client(), &ns);
    for n in 0..2 {
        jobs.get(&format!("stash-restore-restore-vct-{n}"))
            .await
            .expect("a Job per ordinal");
        let claims = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(
            env.cp.client(),
            &ns,
        );
        claims
            .get(&format!("restored-{n}"))
            .await
            .expect("PVC created from the template");
        // Provisioned by kube-controller-manager's hostPath provisioner.
        let restored = checksums(&bound_pv_dir(&ns, &format!("restored-{n}")).await);
        assert_eq!(
            restored,
            checksums(&source),
            "ordinal {n}: restored bytes differ"
        );
    }
    assert_no_illegal_transitions().await;
}

async fn events_of(ns: &str, name: &str) -> Vec<Event> {
    let api = Api::<Event>::namespaced(env().await.cp.client(), ns);
    api.list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Session `name` fails with a reason containing `want`, and a Warning event says so.
async fn fails_with(ns: &str, name: &str, want: &str) -> BackupSession {
    let s = ends(ns, name, Phase::Failed).await;
    let status = s.status.clone().expect("status");
    let reason = status.reason.clone().unwrap_or_default();
    assert!(
        reason.contains(want),
        "{name}: reason {reason:?} should contain {want:?}"
    );
    let ev = eventually(
        &format!("a failure event on {name}"),
        Duration::from_secs(30),
        || async {
            events_of(ns, name).await.into_iter().find(|e| {
                e.reason.as_deref() == Some("BackupSessionFailedToExecute")
                    && e.message.as_deref().unwrap_or("").contains(want)
            })
        },
    )
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_end_the_session_with_the_reason_and_never_retry() {
    let env = env().await;
    let f = fixture("jobs-fail").await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    pvc(&ns, "data").await;
    generate_files(&pv_dir(&ns, "data").await, 3, 4, 100);

    // 1. A failing step: the directory does not exist. backup-pvc records the error,
    //    update-status fails the pod; one pod, no retry, the reason in status.
    apply(
        &client,
        &ns,
        pvc_backup_through(
            "missing-dir",
            "data",
            "pvc-backup",
            json!(["/source/data/nope"]),
        ),
    )
    .await;
    create_backup_session(&client, &ns, "missing-dir", "missing-dir-1").await;
    // 2. An unresolved variable: no directories → ${TARGET_DIRECTORIES} has no value.
    apply(
        &client,
        &ns,
        pvc_backup_through("no-dirs", "data", "pvc-backup", json!([])),
    )
    .await;
    create_backup_session(&client, &ns, "no-dirs", "no-dirs-1").await;
    // 3. A missing Task.
    apply(
        &client,
        &ns,
        pvc_backup_through("no-task", "data", "no-such-task", json!(["/source/data"])),
    )
    .await;
    create_backup_session(&client, &ns, "no-task", "no-task-1").await;
    // 4. A Task naming a Function that is gone by the time the session runs (admission
    //    refuses a Task whose Function does not exist at all).
    let ghost_fn = format!("ghost-fn-{ns}");
    apply(&client, "", json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "Function", "metadata": {"name": ghost_fn},
        "spec": {"image": IMAGE, "args": ["--help"]}
    }))
    .await;
    apply(&client, "", json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "Task", "metadata": {"name": format!("ghost-{ns}")},
        "spec": {"steps": [{"name": ghost_fn}, {"name": "update-status", "params": [{"name": "outputDir", "value": "/tmp/output"}]}]}
    }))
    .await;
    Api::<stash_crds::Function>::all(client.clone())
        .delete(&ghost_fn, &Default::default())
        .await
        .expect("delete the Function");
    apply(
        &client,
        &ns,
        pvc_backup_through(
            "ghost",
            "data",
            &format!("ghost-{ns}"),
            json!(["/source/data"]),
        ),
    )
    .await;
    create_backup_session(&client, &ns, "ghost", "ghost-1").await;

    let s = fails_with(&ns, "missing-dir-1", "no such directory").await;
    let host = &s.status.as_ref().expect("status").stats[0];
    assert_eq!(host.hostname.as_deref(), Some("host-0"));
    assert!(
        host.error
            .as_deref()
            .is_some_and(|e| e.contains("/source/data/nope")),
        "{host:?}"
    );
    // update-status publishes the host's event after its report, and the operator may end the
    // session (and publish its own event) before that: wait for it.
    eventually(
        "update-status emits the host event",
        Duration::from_secs(30),
        || async {
            events_of(&ns, "missing-dir-1")
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("FailedHostBackup"))
        },
    )
    .await;

    fails_with(
        &ns,
        "no-dirs-1",
        "input/default value not found for key TARGET_DIRECTORIES",
    )
    .await;
    fails_with(&ns, "no-task-1", "Task no-such-task not found").await;
    fails_with(&ns, "ghost-1", &format!("Function {ghost_fn} not found")).await;

    // Nothing was created for the configuration errors; the failing step ran exactly once.
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    for name in ["no-dirs-1", "no-task-1", "ghost-1"] {
        assert!(
            jobs.get_opt(&format!("stash-backup-{name}"))
                .await
                .expect("get")
                .is_none(),
            "{name}: no Job"
        );
    }
    let job = jobs.get("stash-backup-missing-dir-1").await.expect("job");
    let failed = eventually(
        "the Job to be marked failed",
        Duration::from_secs(60),
        || {
            let jobs = jobs.clone();
            async move {
                let j = jobs.get("stash-backup-missing-dir-1").await.ok()?;
                (j.status.as_ref()?.failed.unwrap_or(0) >= 1).then_some(j)
            }
        },
    )
    .await;
    let _ = job;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("job-name=stash-backup-missing-dir-1"))
        .await
        .expect("pods");
    assert_eq!(
        pods.items.len(),
        1,
        "no retry: {:?}",
        pods.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    assert_eq!(failed.status.and_then(|s| s.failed), Some(1));
    let snaps = restic_snapshots(&f.repo_dir.to_string_lossy(), PASSWORD);
    assert!(
        snaps.is_empty(),
        "a failed backup leaves no snapshot: {snaps:?}"
    );

    // A restore naming a missing Task fails the same way.
    apply(&client, &ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "restore-no-task"},
        "spec": {"repository": {"name": "repo"}, "task": {"name": "no-such-task"},
                 "target": {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "data"}},
                 "rules": [{"paths": ["/source/data"]}]}
    }))
    .await;
    let rs = ends(&ns, "restore-no-task", RestorePhase::Failed).await;
    let status = rs.status.expect("status");
    assert!(
        status
            .reason
            .unwrap_or_default()
            .contains("Task no-such-task not found")
    );
    assert_no_illegal_transitions().await;
    let _ = Api::<stash_crds::Task>::all(client.clone())
        .delete(&format!("ghost-{ns}"), &Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_keeps_the_built_in_functions_and_tasks() {
    let env = env().await;
    let client = env.cp.client();
    let fns = Api::<stash_crds::Function>::all(client.clone());
    let f = eventually("the built-in Functions", Duration::from_secs(60), || {
        let fns = fns.clone();
        async move { fns.get_opt("pvc-backup").await.ok().flatten() }
    })
    .await;
    assert_eq!(f.spec.image.as_deref(), Some(IMAGE));
    for name in ["update-status", "pvc-restore"] {
        fns.get(name)
            .await
            .unwrap_or_else(|e| panic!("Function {name}: {e}"));
    }
    let tasks = Api::<stash_crds::Task>::all(client.clone());
    for name in ["pvc-backup", "pvc-restore"] {
        let t = tasks
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("Task {name}: {e}"));
        assert_eq!(
            t.spec.steps.last().map(|s| s.name.as_str()),
            Some("update-status")
        );
    }
    // The Jobs' permissions are narrow namespaced Roles now (issue 13): the operator no longer
    // keeps cluster-wide roles for them.
    let roles = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(client.clone());
    for name in ["stash-backup-job", "stash-restore-job"] {
        assert!(
            roles.get_opt(name).await.expect("ClusterRole").is_none(),
            "ClusterRole {name} is not created any more"
        );
    }
}

/// `interimVolumeTemplate` (later Stash) on a job-model configuration: the backup Job's
/// scratch space (`/tmp`: restic's cache and temporary files) is a volume claimed from the
/// template for its pod — a PersistentVolumeClaim of the template's class, bound here to a
/// hostPath volume of that class — and restic's cache lands on it; the snapshot restores byte
/// for byte.
#[tokio::test(flavor = "multi_thread")]
async fn an_interim_volume_template_is_the_backup_jobs_scratch_space() {
    let env = env().await;
    let client = env.cp.client();
    let f = fixture("jobs-interim").await;
    let ns = f.ns.name.clone();
    let source = pv_dir(&ns, "source-data").await;
    generate_files(&source, 11, 8, 3000);
    pvc(&ns, "source-data").await;
    // A volume of a class of its own: only the claim made from the template binds it.
    let class = format!("interim-{ns}");
    let interim_dir = env.cp.dir().join("pv").join(&ns).join("interim");
    std::fs::create_dir_all(&interim_dir).expect("interim dir");
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": class, "labels": {"stash-testenv/namespace": ns}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": class,
                     "hostPath": {"path": interim_dir.to_string_lossy(), "type": "Directory"}}
        }),
    )
    .await;
    let bc = pvc_backup_configuration(
        "interim",
        "source-data",
        json!({
            "interimVolumeTemplate": {"metadata": {"name": "stash-tmp-storage"},
                                      "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                                               "resources": {"requests": {"storage": "100Mi"}}}}
        }),
    );
    apply(&client, &ns, bc).await;
    create_backup_session(&client, &ns, "interim", "interim-1").await;
    let s = ends(&ns, "interim-1", Phase::Succeeded).await;
    let short = s.status.expect("status").stats[0].snapshots[0]
        .name
        .clone()
        .expect("snapshot");
    // The Job's pod claimed its /tmp from the template, and that claim is bound to our volume.
    let claims =
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .expect("claims")
            .items;
    let interim: Vec<_> = claims
        .iter()
        .filter(|c| {
            c.spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
                == Some(class.as_str())
        })
        .collect();
    assert_eq!(interim.len(), 1, "one claim from the template: {claims:?}");
    assert!(
        interim[0].name_any().ends_with("-tmp-dir"),
        "the pod's ephemeral claim: {}",
        interim[0].name_any()
    );
    assert_eq!(
        interim[0]
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref()),
        Some(class.as_str())
    );
    // restic's cache was written there.
    assert!(
        interim_dir.join("restic-cache").is_dir(),
        "no restic cache on the interim volume: {:?}",
        std::fs::read_dir(&interim_dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    assert_restores_equal(
        restic(&f.repo_dir.to_string_lossy(), PASSWORD),
        &short,
        &source,
    );
    assert_no_illegal_transitions().await;
}
