//! Restores end to end on the real control plane: workloads get the `stash-init`
//! init-container, their pods restart and restore before the application starts, and the
//! restored bytes equal the backed-up bytes.
use stash_e2e as support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, api::DeleteParams};
use serde_json::json;
use stash_crds::{RestoreSession, restore_session::Phase as RestorePhase};
use support::*;

const PASSWORD: &str = "restore-test-password";

/// Namespace, storage Secret, a hostPath Repository `repo`.
async fn fixture(prefix: &str) -> Fixture {
    fixture_with_password(prefix, PASSWORD).await
}

fn backup_configuration(kind: &str, name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
        "metadata": {"name": format!("{name}-backup")},
        "spec": {
            "repository": {"name": "repo"},
            "schedule": "0 0 1 1 *",
            "target": {"ref": {"apiVersion": "apps/v1", "kind": kind, "name": name},
                       "directories": ["/source/data"],
                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}
        }
    })
}

/// Run a manual backup session to success; return the short snapshot id per host.
async fn backup(ns: &str, bc: &str, name: &str) -> BTreeMap<String, String> {
    let client = env().await.cp.client();
    let s = run_backup_session(&client, ns, bc, name, Duration::from_secs(150)).await;
    s.status
        .expect("status")
        .stats
        .into_iter()
        .map(|h| {
            (
                h.hostname.unwrap_or_default(),
                h.snapshots[0].name.clone().unwrap_or_default(),
            )
        })
        .collect()
}

async fn restore_session(
    ns: &str,
    name: &str,
    kind: &str,
    target: &str,
    rules: serde_json::Value,
) -> RestoreSession {
    restore_session_at(ns, name, kind, target, "/source/data", rules).await
}

/// [`restore_session`] with the target's volume `data` mounted at `mount`.
async fn restore_session_at(
    ns: &str,
    name: &str,
    kind: &str,
    target: &str,
    mount: &str,
    rules: serde_json::Value,
) -> RestoreSession {
    let env = env().await;
    let client = env.cp.client();
    apply(
        &client,
        ns,
        json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": name},
            "spec": {"repository": {"name": "repo"},
                     "target": {"ref": {"apiVersion": "apps/v1", "kind": kind, "name": target},
                                "volumeMounts": [{"name": "data", "mountPath": mount}]},
                     "rules": rules}
        }),
    )
    .await;
    wait_restore_terminal(&client, ns, name, Duration::from_secs(150)).await
}

/// Wait until `workload`'s pods run the injected sidecar without the restore init-container,
/// all updated and Ready.
async fn wait_sidecar_rolled_out(ns: &str, workload: Workload<'_>) {
    let client = env().await.cp.client();
    wait_rolled_out(
        &client,
        ns,
        workload,
        Injected::Sidecar,
        Duration::from_secs(150),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_restores_the_latest_and_a_chosen_older_snapshot() {
    let env = env().await;
    let f = fixture("restore-deploy").await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    let data = pv_dir(&ns, "source-data").await;
    generate_files(&data, 7, 16, 3000);
    let v1 = checksums(&data);
    deployment_with_pvc(&client, &ns, "app", "source-data").await;
    apply(&client, &ns, backup_configuration("Deployment", "app")).await;
    wait_sidecar_rolled_out(&ns, Workload::Deployment("app", 1)).await;
    let first = backup(&ns, "app-backup", "backup-1").await;
    // A second version of the data, backed up too.
    generate_files(&data, 8, 20, 2000);
    let v2 = checksums(&data);
    assert_ne!(v1, v2);
    backup(&ns, "app-backup", "backup-2").await;

    // Destroy the data; restore the latest snapshot through the init-container.
    wipe(&data);
    let rs = restore_session(
        &ns,
        "restore-latest",
        "Deployment",
        "app",
        json!([{"paths": ["/source/data"]}]),
    )
    .await;
    let status = rs.status.clone().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    assert_eq!(status.stats.len(), 1);
    assert_status_ownership(&rs.metadata, &["host-0"]);
    assert_eq!(
        checksums(&data),
        v2,
        "restored bytes equal the latest backup"
    );
    let d = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("app")
        .await
        .expect("deployment");
    let inits: Vec<_> = d
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.init_containers)
        .unwrap_or_default();
    assert_eq!(inits.first().map(|c| c.name.as_str()), Some("stash-init"));

    // Deleting the RestoreSession removes the init-container.
    Api::<RestoreSession>::namespaced(client.clone(), &ns)
        .delete("restore-latest", &DeleteParams::default())
        .await
        .expect("delete restore session");
    wait_sidecar_rolled_out(&ns, Workload::Deployment("app", 1)).await;

    // Restore a chosen older snapshot by its Snapshot API name.
    wipe(&data);
    let older = format!("repo-{}", first["host-0"]);
    let rs = restore_session(
        &ns,
        "restore-older",
        "Deployment",
        "app",
        json!([{"snapshots": [older]}]),
    )
    .await;
    assert_eq!(
        rs.status.as_ref().and_then(|s| s.phase),
        Some(RestorePhase::Succeeded),
        "{:?}",
        rs.status
    );
    assert_eq!(
        checksums(&data),
        v1,
        "restored bytes equal the older backup"
    );

    // A snapshot whose path the target does not mount (the volume is mounted at /restored,
    // the snapshot holds /source/data) is refused with the reason: restoring it would write
    // into the init-container's own filesystem and change nothing the application sees.
    Api::<RestoreSession>::namespaced(client.clone(), &ns)
        .delete("restore-older", &DeleteParams::default())
        .await
        .expect("delete restore session");
    wait_sidecar_rolled_out(&ns, Workload::Deployment("app", 1)).await;
    let rs = restore_session_at(
        &ns,
        "restore-elsewhere",
        "Deployment",
        "app",
        "/restored",
        json!([{"snapshots": ["latest"]}]),
    )
    .await;
    let status = rs.status.clone().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Failed), "{status:?}");
    let error = status.stats[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("holds /source/data, which lies under none of the target's volumeMounts (the target mounts /restored)"),
        "{error}"
    );
    assert_eq!(checksums(&data), v1, "the refused restore changed nothing");
    assert_no_illegal_transitions().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statefulset_host_restores_another_hosts_data_via_source_host() {
    let env = env().await;
    let f = fixture("restore-sts").await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    let mut dirs = Vec::new();
    for i in 0..2 {
        dirs.push(pv_dir(&ns, &format!("data-db-{i}")).await);
    }
    let pvc = |i: usize| dirs[i].clone();
    for i in 0..2 {
        generate_files(&pvc(i), 100 + i as u64, 10, 2500);
    }
    let originals: Vec<_> = (0..2).map(|i| checksums(&pvc(i))).collect();
    assert_ne!(originals[0], originals[1]);
    apply(&client, &ns, statefulset_with_claims("db", 2)).await;
    apply(&client, &ns, backup_configuration("StatefulSet", "db")).await;
    wait_sidecar_rolled_out(&ns, Workload::StatefulSet("db", 2)).await;
    let snaps = backup(&ns, "db-backup", "backup-1").await;
    assert_eq!(snaps.len(), 2);

    // host-0 loses its data and is given host-1's; host-1 restores its own.
    wipe(&pvc(0));
    let rules = json!([
        {"targetHosts": ["host-0"], "sourceHost": "host-1", "paths": ["/source/data"]},
        {"targetHosts": ["host-1"], "paths": ["/source/data"]}
    ]);
    let rs = restore_session(&ns, "swap", "StatefulSet", "db", rules).await;
    let status = rs.status.expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    let mut hosts: Vec<_> = status
        .stats
        .iter()
        .filter_map(|h| h.hostname.clone())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["host-0", "host-1"]);
    assert_eq!(
        checksums(&pvc(0)),
        originals[1],
        "host-0 now holds host-1's data"
    );
    assert_eq!(checksums(&pvc(1)), originals[1]);

    // `snapshots: [latest]` is the latest of each rule's source host, not the newest
    // snapshot in the repository: both hosts get their own data back.
    Api::<RestoreSession>::namespaced(client.clone(), &ns)
        .delete("swap", &DeleteParams::default())
        .await
        .expect("delete restore session");
    wait_sidecar_rolled_out(&ns, Workload::StatefulSet("db", 2)).await;
    wipe(&pvc(0));
    wipe(&pvc(1));
    let rules = json!([
        {"targetHosts": ["host-0"], "snapshots": ["latest"]},
        {"targetHosts": ["host-1"], "snapshots": ["latest"]}
    ]);
    let rs = restore_session(&ns, "own-latest", "StatefulSet", "db", rules).await;
    let status = rs.status.expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    for (i, original) in originals.iter().enumerate() {
        assert_eq!(
            &checksums(&pvc(i)),
            original,
            "host-{i} holds its own latest"
        );
    }
    assert_no_illegal_transitions().await;
}

/// A 2020–2025 Stash user's manifests (issue 27): the BackupConfiguration names what it backs
/// up with `target.paths` and leaves out `target.exclude` patterns; the RestoreSession puts its
/// rules under `spec.target.rules` and restores only what a rule's `include` names. Checked in
/// restic's own view (the snapshot lists no excluded file) and in the restored bytes.
#[tokio::test(flavor = "multi_thread")]
async fn the_later_spelling_backs_up_paths_without_excluded_files_and_restores_included_ones() {
    let env = env().await;
    let f = fixture("later-spelling").await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    let data = pv_dir(&ns, "source-data").await;
    write_filter_files(&data);
    write_args_files(&data);
    deployment_with_pvc(&client, &ns, "app", "source-data").await;
    let mut bc = backup_configuration("Deployment", "app");
    in_later_spelling_excluding_tmp(&mut bc);
    // `alias` (later Stash) names the host the data is stored under; `args` go to restic.
    bc["spec"]["target"]["alias"] = json!("web");
    bc["spec"]["target"]["args"] = json!(BACKUP_ARGS);
    apply(&client, &ns, bc).await;
    // The API server kept the later fields (no pruning) and the webhook admitted them.
    let stored = Api::<stash_crds::BackupConfiguration>::namespaced(client.clone(), &ns)
        .get("app-backup")
        .await
        .expect("stored configuration");
    let t = stored.spec.target.expect("target");
    assert_eq!(
        (t.paths.as_slice(), t.exclude.as_slice()),
        (
            &["/source/data".to_string()][..],
            &["*.tmp".to_string()][..]
        )
    );
    wait_sidecar_rolled_out(&ns, Workload::Deployment("app", 1)).await;
    let snaps = backup(&ns, "app-backup", "later-1").await;
    let repo = f.repo_dir.to_string_lossy().to_string();
    assert_snapshot_excludes_tmp(&repo, PASSWORD, &snaps["web"]);
    // restic's own view: the one snapshot is the alias's.
    let listed = restic_snapshots(&repo, PASSWORD);
    assert_only_snapshot(&listed, "web", &snaps["web"]);
    assert_snapshot_honours_backup_args(&repo, PASSWORD, &snaps["web"]);

    wipe(&data);
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": "restore-included"},
            "spec": {"repository": {"name": "repo"},
                     "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                                "alias": "web",
                                "args": RESTORE_ARGS,
                                "volumeMounts": [{"name": "data", "mountPath": "/source/data"}],
                                "rules": [{"paths": ["/source/data"], "include": ["/source/data/keep"]}]}}
        }),
    )
    .await;
    let rs =
        wait_restore_terminal(&client, &ns, "restore-included", Duration::from_secs(150)).await;
    let status = rs.status.clone().expect("status");
    assert_eq!(status.phase, Some(RestorePhase::Succeeded), "{status:?}");
    // The restoring host is the alias too, and restored the alias's snapshot by default.
    let hosts: Vec<_> = status
        .stats
        .iter()
        .filter_map(|h| h.hostname.as_deref())
        .collect();
    assert_eq!(hosts, ["web"], "{status:?}");
    assert_restored_only_included(&data);
    assert_restore_honoured_args(&data);
    assert_no_illegal_transitions().await;
}
