//! Sessions that survive faults, on the real cluster (issue 11): a pause while a session runs,
//! a sidecar killed between its snapshot and its report, and two configurations whose first
//! sessions share one new Repository. Each is repeated; the outcome is read back from the API
//! server and from restic's own view of the repository.
use stash_e2e as support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use stash_crds::{BackupConfiguration, BackupSession, backup_session::Phase};
use support::*;

const PASSWORD: &str = "faults-password";
const ROUNDS: usize = 5;

async fn phase(api: &Api<BackupSession>, name: &str) -> Option<Phase> {
    api.get(name).await.ok()?.status?.phase
}

async fn set_paused(client: &Client, ns: &str, bc: &str, paused: bool) {
    Api::<BackupConfiguration>::namespaced(client.clone(), ns)
        .patch(
            bc,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": paused}})),
        )
        .await
        .expect("pause");
}

/// Snapshots restic holds with the session's tag.
fn tagged(repo: &Path, session: &str) -> Vec<serde_json::Value> {
    let tag = stash_machines::backup_host::session_tag(session);
    restic_snapshots(&repo.display().to_string(), PASSWORD)
        .into_iter()
        .filter(|s| {
            s["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == &json!(tag)))
        })
        .collect()
}

/// Every snapshot the session's status lists exists in restic, with the session's tag.
fn status_snapshots_exist(repo: &Path, s: &BackupSession) {
    let in_restic: Vec<String> = tagged(repo, &s.name_any())
        .iter()
        .map(|x| x["short_id"].as_str().unwrap_or_default().to_string())
        .collect();
    let status = s.status.as_ref().expect("status");
    for h in &status.stats {
        for snap in &h.snapshots {
            let id = snap.name.clone().unwrap_or_default();
            assert!(
                in_restic.iter().any(|r| id.contains(r.as_str())),
                "snapshot {id} of {} is not in restic ({in_restic:?})",
                s.name_any()
            );
        }
    }
}

/// `restic check` of the whole repository, without taking restic's lock. A sidecar killed or a
/// pod deleted in the middle of a restic command leaves that command's lock behind, and restic
/// counts it stale only after 30 minutes (or on the host that made it, which is gone), so a
/// locking check would wait for it. Reading without the lock is sound here: no configuration in
/// these tests prunes except the follow-up test, which checks once its follow-up steps are done.
fn restic_check(repo: &Path) {
    let out = restic(&repo.display().to_string(), PASSWORD)
        .args(["check", "--no-cache", "--no-lock"])
        .output()
        .expect("restic check");
    assert!(
        out.status.success(),
        "restic check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Deployment `name` with its own hostPath PV (`size` MiB of fresh data) and a
/// BackupConfiguration `<name>-backup` into Repository `repo`; waits for the sidecar.
async fn workload(client: &Client, ns: &str, name: &str, repo: &str, seed: u64, mib: usize) {
    let source = pv_dir(ns, &format!("{name}-data")).await;
    generate_files(&source, seed, mib, 1 << 20);
    deployment_with_pvc(client, ns, name, &format!("{name}-data")).await;
    sidecar_backup(client, ns, name, repo, json!({})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pausing_a_running_session_lets_it_complete() {
    let env = env().await;
    let f = fixture_with_password("pause-running", PASSWORD).await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    workload(&client, &ns, "app", "repo", 1, 1).await;
    let sessions = Api::<BackupSession>::namespaced(client.clone(), &ns);
    let source = pv_dir(&ns, "app-data").await;
    // Pausing changes nothing the sidecar runs with: the workload's pod is never replaced.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let pod_uids = || async {
        let mut uids: Vec<String> = pods
            .list(&ListParams::default().labels("app=app"))
            .await
            .expect("pods")
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.uid())
            .collect();
        uids.sort();
        uids
    };
    let pods_before = eventually(
        "one pod of the workload",
        Duration::from_secs(120),
        || async {
            let uids = pod_uids().await;
            (uids.len() == 1).then_some(uids)
        },
    )
    .await;
    let mut proven = 0;
    let mut attempts = 0;
    while proven < ROUNDS {
        attempts += 1;
        assert!(
            attempts <= ROUNDS + 3,
            "only {proven} of {attempts} pauses landed while Running"
        );
        // Fresh data each time, so the backup takes long enough to pause in the middle.
        generate_files(&source, 100 + attempts as u64, 96, 1 << 20);
        let name = format!("pause-{attempts}");
        create_backup_session(&client, &ns, "app-backup", &name).await;
        eventually("the session to run", Duration::from_secs(60), || {
            let s = sessions.clone();
            let name = name.clone();
            async move { (phase(&s, &name).await? != Phase::Pending).then_some(()) }
        })
        .await;
        set_paused(&client, &ns, "app-backup", true).await;
        let after_pause = phase(&sessions, &name).await;
        let s = wait_session_terminal(&client, &ns, &name, Duration::from_secs(300)).await;
        set_paused(&client, &ns, "app-backup", false).await;
        if after_pause != Some(Phase::Running) {
            eprintln!("round {attempts}: the session was {after_pause:?} once paused; not counted");
            continue;
        }
        let status = s.status.as_ref().expect("status");
        assert_eq!(
            status.phase,
            Some(Phase::Succeeded),
            "paused while Running: {status:?}"
        );
        status_snapshots_exist(&f.repo_dir, &s);
        assert_eq!(
            tagged(&f.repo_dir, &name).len(),
            1,
            "one snapshot for {name}"
        );
        proven += 1;
    }
    assert_eq!(
        pod_uids().await,
        pods_before,
        "pausing replaced the workload's pod"
    );
    // Pausing still stops a session that has not started.
    set_paused(&client, &ns, "app-backup", true).await;
    create_backup_session(&client, &ns, "app-backup", "while-paused").await;
    wait_session_ends(
        &client,
        &ns,
        "while-paused",
        Phase::Skipped,
        Duration::from_secs(60),
    )
    .await;
    println!("pause while Running: {proven} sessions Succeeded in {attempts} attempts");
}

/// The sidecar's main process (`stash run-backup`) of pod `uid`, from the host.
fn sidecar_pid(pod_uid: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            cmd.contains("run-backup") && cg.contains(&format!("pod{pod_uid}"))
        })
}

fn snapshot_files(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("snapshots")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_killed_between_snapshot_and_report_takes_no_second_snapshot() {
    let env = env().await;
    let f = fixture_with_password("kill-sidecar", PASSWORD).await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    let sessions = Api::<BackupSession>::namespaced(client.clone(), &ns);
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let mut proven = 0;
    for round in 1..=ROUNDS + 3 {
        if proven == ROUNDS {
            break;
        }
        // A fresh Deployment each round: no crash-loop back-off from the previous kill.
        let app = format!("app{round}");
        workload(&client, &ns, &app, "repo", round as u64, 64).await;
        let pod = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .expect("pods")
            .into_iter()
            .find(|p| p.metadata.deletion_timestamp.is_none())
            .expect("the pod");
        let uid = pod.uid().expect("uid");
        let name = format!("kill-{round}");
        let before = snapshot_files(&f.repo_dir);
        create_backup_session(&client, &ns, &format!("{app}-backup"), &name).await;
        // The moment restic has written the snapshot file, the sidecar dies: before its report
        // (check, forget and stats come first).
        let deadline = Instant::now() + Duration::from_secs(120);
        while snapshot_files(&f.repo_dir) == before {
            assert!(Instant::now() < deadline, "no snapshot appeared for {name}");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = sidecar_pid(&uid).expect("the sidecar process");
        // By pid: the sidecar of a pod this test created.
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(killed.success(), "kill {pid}");
        let reported_before_kill = sessions
            .get(&name)
            .await
            .ok()
            .and_then(|s| s.status)
            .is_some_and(|s| !s.stats.is_empty());
        let s = wait_session_ends(
            &client,
            &ns,
            &name,
            Phase::Succeeded,
            Duration::from_secs(300),
        )
        .await;
        assert_eq!(
            tagged(&f.repo_dir, &name).len(),
            1,
            "{name}: exactly one snapshot for the session"
        );
        status_snapshots_exist(&f.repo_dir, &s);
        if reported_before_kill {
            eprintln!("round {round}: the host had reported before the kill; not counted");
            continue;
        }
        // The kill happened: the sidecar container restarts. The kubelet writes the restart
        // count to the pod's status on its own schedule, which may come after the restarted
        // sidecar's report ended the session.
        eventually(
            &format!("{name}: the sidecar restarted"),
            Duration::from_secs(60),
            || async {
                pods.get(&pod.name_any())
                    .await
                    .ok()?
                    .status?
                    .container_statuses?
                    .iter()
                    .any(|c| c.name == "stash" && c.restart_count >= 1)
                    .then_some(())
            },
        )
        .await;
        proven += 1;
    }
    assert_eq!(proven, ROUNDS, "kills between snapshot and report");
    restic_check(&f.repo_dir);
    println!("sidecar killed after its snapshot: {proven} sessions, one snapshot each");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_configurations_sharing_a_new_repository_both_succeed() {
    let env = env().await;
    let f = fixture_with_password("shared-repo", PASSWORD).await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    for round in 1..=ROUNDS {
        // A new, empty Repository each round.
        let repo = format!("shared{round}");
        let dir = f.repo_dir.join(&repo);
        std::fs::create_dir_all(&dir).expect("repo dir");
        apply(&client, &ns, json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": repo},
            "spec": {"backend": {"storageSecretName": "local-secret",
                                 "local": {"mountPath": "/safe/data", "hostPath": {"path": dir.to_string_lossy()}}}}
        }))
        .await;
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        tokio::join!(
            workload(&client, &ns, &a, &repo, round as u64, 4),
            workload(&client, &ns, &b, &repo, 50 + round as u64, 4)
        );
        // First sessions of both at once.
        let (sa, sb) = (format!("{a}-first"), format!("{b}-first"));
        let (ba, bb) = (format!("{a}-backup"), format!("{b}-backup"));
        tokio::join!(
            create_backup_session(&client, &ns, &ba, &sa),
            create_backup_session(&client, &ns, &bb, &sb)
        );
        for s in [&sa, &sb] {
            wait_session_ends(&client, &ns, s, Phase::Succeeded, Duration::from_secs(300)).await;
        }
        restic_check(&dir);
        let snaps = restic_snapshots(&dir.display().to_string(), PASSWORD);
        assert_eq!(
            snaps.len(),
            2,
            "round {round}: one snapshot per configuration"
        );
    }
    println!("shared new Repository: {ROUNDS} rounds, both first sessions Succeeded, check clean");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_pod_while_its_sidecar_backs_up_still_ends_the_session() {
    let env = env().await;
    let f = fixture_with_password("delete-pod", PASSWORD).await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    workload(&client, &ns, "app", "repo", 7, 1).await;
    let source = pv_dir(&ns, "app-data").await;
    let sessions = Api::<BackupSession>::namespaced(client.clone(), &ns);
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    for round in 1..=ROUNDS {
        generate_files(&source, 200 + round as u64, 64, 1 << 20);
        let name = format!("deleted-{round}");
        let started = Instant::now();
        create_backup_session(&client, &ns, "app-backup", &name).await;
        eventually("the session to run", Duration::from_secs(60), || {
            let s = sessions.clone();
            let name = name.clone();
            async move { (phase(&s, &name).await? != Phase::Pending).then_some(()) }
        })
        .await;
        for p in pods
            .list(&ListParams::default().labels("app=app"))
            .await
            .expect("pods")
        {
            // Odd rounds kill at once (grace 0: SIGKILL mid-backup), even rounds delete as
            // `kubectl delete pod` does (the sidecar may finish within the grace period).
            let dp = kube::api::DeleteParams {
                grace_period_seconds: (round % 2 == 1).then_some(0),
                ..Default::default()
            };
            pods.delete(&p.name_any(), &dp).await.expect("delete pod");
        }
        let s = wait_session_ends(
            &client,
            &ns,
            &name,
            Phase::Succeeded,
            Duration::from_secs(300),
        )
        .await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(300), "{name} took {took:?}");
        assert_eq!(tagged(&f.repo_dir, &name).len(), 1, "{name}: one snapshot");
        status_snapshots_exist(&f.repo_dir, &s);
        eprintln!("round {round}: {name} Succeeded {took:?} after its creation");
    }
    restic_check(&f.repo_dir);
    println!("pod deleted during the backup: {ROUNDS} sessions Succeeded, one snapshot each");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_the_api_refuses_for_good_fails_the_session_at_once_and_long_names_fit() {
    let env = env().await;
    let client = env.cp.client();
    // 1. A quota of zero Jobs: the API refuses the backup Job (403). The session fails with the
    //    API's message right away instead of staying Pending until its deadline.
    let f = fixture_with_password("job-refused", PASSWORD).await;
    let ns = f.ns.name.clone();
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-jobs"},
            "spec": {"hard": {"count/jobs.batch": "0"}}
        }),
    )
    .await;
    generate_files(&pv_dir(&ns, "data").await, 5, 4, 1000);
    apply(
        &client,
        &ns,
        pvc_backup_configuration("data-backup", "data", json!({})),
    )
    .await;
    let started = Instant::now();
    create_backup_session(&client, &ns, "data-backup", "refused-1").await;
    let s = wait_session_ends(
        &client,
        &ns,
        "refused-1",
        Phase::Failed,
        Duration::from_secs(120),
    )
    .await;
    let status = s.status.expect("status");
    let reason = status.reason.unwrap_or_default();
    assert!(
        reason.starts_with("could not create the backup Job:") && reason.contains("exceeded quota"),
        "{reason}"
    );
    println!(
        "a refused Job failed its session in {:.1?}: {reason}",
        started.elapsed()
    );
    // The next session is not blocked by it.
    create_backup_session(&client, &ns, "data-backup", "refused-2").await;
    wait_session_ends(
        &client,
        &ns,
        "refused-2",
        Phase::Failed,
        Duration::from_secs(120),
    )
    .await;

    // 2. A session name whose `stash-backup-<name>` exceeds 63 characters: the Job's name is
    //    cut with a hash and the backup succeeds.
    let g = fixture_with_password("job-long-name", PASSWORD).await;
    let ns = g.ns.name.clone();
    generate_files(&pv_dir(&ns, "data").await, 6, 4, 1000);
    apply(
        &client,
        &ns,
        pvc_backup_configuration("data-backup", "data", json!({})),
    )
    .await;
    let long = format!("data-backup-{}", "x".repeat(60));
    run_backup_session(&client, &ns, "data-backup", &long, Duration::from_secs(300)).await;
    let jobs = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("jobs");
    assert!(
        jobs.items
            .iter()
            .all(|j| j.name_any().len() <= 63
                && j.name_any().starts_with("stash-backup-data-backup-x")),
        "{:?}",
        jobs.items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        restic_snapshots(&g.repo_dir.display().to_string(), PASSWORD).len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemonset_restore_waits_only_for_the_nodes_the_daemonset_runs_on() {
    use stash_crds::restore_session::Phase as RestorePhase;
    let env = env().await;
    let client = env.cp.client();
    let f = fixture_with_password("ds-restore", PASSWORD).await;
    let ns = f.ns.name.clone();
    // A DaemonSet that runs on no node (its node selector matches none): nothing to restore.
    apply(&client, &ns, json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"nodeSelector": {"stash-rs.test/nowhere": "true"},
                                       "containers": [{"name": "agent", "image": "busybox", "command": ["sleep", "3600"],
                                                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                       "volumes": [{"name": "data", "emptyDir": {}}]}}}
    }))
    .await;
    apply(&client, &ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "nowhere"},
        "spec": {"repository": {"name": "repo"},
                 "target": {"ref": {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent"},
                            "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]},
                 "rules": [{"paths": ["/source/data"]}]}
    }))
    .await;
    let s = wait_session_ends(
        &client,
        &ns,
        "nowhere",
        RestorePhase::Failed,
        Duration::from_secs(60),
    )
    .await;
    let status = s.status.expect("status");
    assert_eq!(
        status.reason.as_deref(),
        Some("no hosts to restore"),
        "{status:?}"
    );
}

/// Run session `name` of `app-backup` to `Succeeded` (a follow-up step never fails it) and wait
/// for its host's `RetentionPolicyApplied` condition (written after the follow-up steps).
async fn retention_condition(
    client: &Client,
    ns: &str,
    name: &str,
) -> (
    BackupSession,
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) {
    run_backup_session(client, ns, "app-backup", name, Duration::from_secs(180)).await;
    let sessions = Api::<BackupSession>::namespaced(client.clone(), ns);
    eventually(
        &format!("{name}'s RetentionPolicyApplied condition"),
        Duration::from_secs(120),
        || async {
            let s = sessions.get(name).await.ok()?;
            let c = retention_condition_of(&s)?;
            Some((s, c))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_retention_step_keeps_the_snapshot_and_is_a_condition_and_an_event() {
    let env = env().await;
    let f = fixture_with_password("follow-up-fails", PASSWORD).await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    let source = sidecar_workload(
        &client,
        &ns,
        "app-data",
        json!({"retentionPolicy": {"name": "last-one", "keepLast": 1, "prune": true}}),
    )
    .await;
    generate_files(&source, 3, 2, 1 << 20);
    let (_, first) = retention_condition(&client, &ns, "first").await;
    assert_retention_applied(&first);
    // The first snapshot cannot be deleted now: the second session's `forget` fails.
    let pinned = Immutable::files_of(&f.repo_dir.join("snapshots"));
    generate_files(&source, 4, 2, 1 << 20);
    let (second, retention) = retention_condition(&client, &ns, "second").await;
    assert_retention_failed(&client, &ns, "second", &retention).await;
    drop(pinned);
    // Nothing was lost: both sessions' snapshots are in restic, and the status names them.
    assert_eq!(tagged(&f.repo_dir, "first").len(), 1);
    assert_eq!(tagged(&f.repo_dir, "second").len(), 1);
    status_snapshots_exist(&f.repo_dir, &second);
    restic_check(&f.repo_dir);
    println!(
        "follow-up failure: session Succeeded, condition {} {} ({}), both snapshots kept",
        retention.type_, retention.status, retention.reason
    );
}

/// A configuration's `timeOut` (later Stash) is its sessions' deadline instead of the
/// operator's six hours (issue 27): a Deployment scaled to zero never reports, and its session
/// ends `Failed` once 20 s have passed, naming the deadline; the BackupSession event says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_configurations_time_out_is_its_sessions_deadline() {
    let env = env().await;
    let f = fixture_with_password("time-out", PASSWORD).await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    sidecar_workload(&client, &ns, "app-data", json!({"timeOut": "20s"})).await;
    kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns)
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .expect("scale to zero");
    let started = Instant::now();
    create_backup_session(&client, &ns, "app-backup", "nobody-reports").await;
    let s = wait_session_ends(
        &client,
        &ns,
        "nobody-reports",
        Phase::Failed,
        Duration::from_secs(120),
    )
    .await;
    let took = started.elapsed();
    let reason = s.status.and_then(|st| st.reason).unwrap_or_default();
    assert!(reason.starts_with("deadline of 20s exceeded: "), "{reason}");
    assert!(
        took >= Duration::from_secs(19),
        "ended after {took:?}, before its timeOut"
    );
    println!(
        "timeOut 20s: the session failed after {:.1}s: {reason}",
        took.as_secs_f64()
    );
}
