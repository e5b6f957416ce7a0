//! Backups end to end on the real control plane: workloads get the sidecar, sessions reach
//! `Succeeded`, and restic's own view of the repository has the right hosts and paths, with
//! restored bytes identical to the originals.
use stash_e2e as support;

use std::time::Duration;

use kube::{Api, ResourceExt};
use serde_json::json;
use stash_crds::{BackupSession, Repository, backup_session::Phase};
use support::*;

const PASSWORD: &str = "not-so-secret-password";

/// Namespace, storage Secret, a hostPath Repository `repo`.
async fn fixture(prefix: &str) -> Fixture {
    fixture_with_password(prefix, PASSWORD).await
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

fn assert_succeeded(s: &BackupSession, hosts: usize) {
    let status = s.status.as_ref().expect("status");
    assert_eq!(
        status.phase,
        Some(Phase::Succeeded),
        "session {}: {status:?}",
        s.name_any()
    );
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
        .rfind(|s| s["hostname"] == host)
        .unwrap_or_else(|| panic!("no snapshot of {host} in {snaps:?}"));
    assert_eq!(snap["paths"], json!(["/source/data"]));
    let id = snap["id"].as_str().expect("id");
    assert_restores_equal(restic(repo, PASSWORD), id, source);
}

/// The Repository status agrees with restic once the agent has written it: the sidecar
/// reports its host first and updates the Repository after its follow-up steps (forget,
/// stats, check), so the figures may trail the session's `Succeeded` by a few seconds.
async fn repository_agrees_with_restic(ns: &str, repo: &str) {
    let api = Api::<Repository>::namespaced(env().await.cp.client(), ns);
    let count = restic_snapshots(repo, PASSWORD).len() as i32;
    let status = eventually(
        "the Repository status to agree with restic",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                let status = api.get("repo").await.ok()?.status?;
                (status.snapshot_count == Some(count)).then_some(status)
            }
        },
    )
    .await;
    // The first backup into a repository is always checked (integrity unknown until then).
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
    let source = pv_dir(&ns, "source-data").await;
    generate_files(&source, 1, 24, 4096);
    deployment_with_pvc(&client, &ns, "app", "source-data").await;
    apply(
        &client,
        &ns,
        backup_configuration("Deployment", "app", "*/1 * * * *"),
    )
    .await;

    // The sidecar is injected and its pod runs.
    wait_sidecar_ready(&client, &ns, "app", Duration::from_secs(90)).await;

    let s = run_backup_session(
        &client,
        &ns,
        "app-backup",
        "manual-1",
        Duration::from_secs(120),
    )
    .await;
    assert_succeeded(&s, 1);
    let repo = f.repo_dir.to_string_lossy().to_string();
    assert_restores_identically(&repo, "host-0", &source);
    repository_agrees_with_restic(&ns, &repo).await;

    // The schedule creates sessions too (named <bc>-<unix seconds>).
    let scheduled =
        wait_scheduled_success(&client, &ns, "app-backup", None, Duration::from_secs(150)).await;
    assert_succeeded(&scheduled, 1);
    let hosts: Vec<_> = restic_snapshots(&repo, PASSWORD)
        .iter()
        .map(|s| s["hostname"].clone())
        .collect();
    assert!(
        hosts.len() >= 2 && hosts.iter().all(|h| h == "host-0"),
        "{hosts:?}"
    );
    assert_no_illegal_transitions().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_of_a_statefulset_is_backed_up_as_its_own_host() {
    let env = env().await;
    let f = fixture("sts").await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    let mut pvs = Vec::new();
    for i in 0..3 {
        let dir = pv_dir(&ns, &format!("data-db-{i}")).await;
        generate_files(&dir, 10 + i, 8, 2048);
        pvs.push(dir);
    }
    apply(&client, &ns, statefulset_with_claims("db", 3)).await;
    apply(
        &client,
        &ns,
        backup_configuration("StatefulSet", "db", "0 0 1 1 *"),
    )
    .await;
    wait_rolled_out(
        &client,
        &ns,
        Workload::StatefulSet("db", 3),
        Injected::Sidecar,
        Duration::from_secs(150),
    )
    .await;
    let s = run_backup_session(
        &client,
        &ns,
        "db-backup",
        "manual-1",
        Duration::from_secs(150),
    )
    .await;
    assert_succeeded(&s, 3);
    assert_status_ownership(&s.metadata, &["host-0", "host-1", "host-2"]);
    let repo = f.repo_dir.to_string_lossy().to_string();
    for (i, pv) in pvs.iter().enumerate() {
        assert_restores_identically(&repo, &format!("host-{i}"), pv);
    }
    repository_agrees_with_restic(&ns, &repo).await;
    // Each replica is a host of its own and backs up beside the others, not host after host
    // under one Lease (the first session's hosts take turns: the repository is created by the
    // first of them): in the second session some two hosts' backups overlapped (each host's
    // interval ends at its SuccessfulHostBackup event and lasted its entry's duration).
    let s = run_backup_session(
        &client,
        &ns,
        "db-backup",
        "manual-2",
        Duration::from_secs(150),
    )
    .await;
    assert_succeeded(&s, 3);
    let ends = event_times(&client, &ns, "manual-2", "SuccessfulHostBackup").await;
    let stats = s.status.as_ref().expect("status").stats.clone();
    let intervals: Vec<(jiff::Timestamp, jiff::Timestamp, String)> = stats
        .iter()
        .map(|h| {
            let host = h.hostname.clone().expect("hostname");
            let end = ends
                .iter()
                .find(|(_, note)| *note == format!("backup of host {host} succeeded"))
                .unwrap_or_else(|| panic!("no SuccessfulHostBackup of {host}: {ends:?}"))
                .0;
            let took =
                jiff::SignedDuration::try_from(h.duration.expect("duration").0).expect("duration");
            (end - took, end, host)
        })
        .collect();
    let overlapped = intervals.iter().any(|a| {
        intervals
            .iter()
            .any(|b| a.2 != b.2 && a.0 < b.1 && b.0 < a.1)
    });
    assert!(
        overlapped,
        "the hosts backed up one after another: {intervals:?}"
    );
    assert_no_illegal_transitions().await;
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
                              "spec": {"containers": [{"name": "agent", "image": "busybox", "command": ["sleep", "3600"],
                                                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                       "volumes": [{"name": "data", "hostPath": {"path": source.to_string_lossy()}}]}}}
    }))
    .await;
    apply(
        &client,
        &ns,
        backup_configuration("DaemonSet", "agent", "0 0 1 1 *"),
    )
    .await;
    wait_rolled_out(
        &client,
        &ns,
        Workload::DaemonSet("agent"),
        Injected::Sidecar,
        Duration::from_secs(120),
    )
    .await;
    let s = run_backup_session(
        &client,
        &ns,
        "agent-backup",
        "manual-1",
        Duration::from_secs(120),
    )
    .await;
    assert_succeeded(&s, 1);
    let repo = f.repo_dir.to_string_lossy().to_string();
    assert_restores_identically(&repo, stash_testenv::NODE_NAME, &source);
    assert_no_illegal_transitions().await;
}

/// Issue 4: `retentionPolicy {keepLast: 2, prune: true}` over four sessions leaves exactly the
/// two newest snapshots, and the Repository status says so.
#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_two_newest_snapshots() {
    let env = env().await;
    let f = fixture("retain").await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    let source = pv_dir(&ns, "source-data").await;
    generate_files(&source, 7, 12, 2048);
    deployment_with_pvc(&client, &ns, "app", "source-data").await;
    let retention = json!({"name": "keep-last-2", "keepLast": 2, "prune": true});
    sidecar_backup(
        &client,
        &ns,
        "app",
        "repo",
        json!({"retentionPolicy": retention}),
    )
    .await;

    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for i in 1..=4 {
        let name = format!("keep-{i}");
        let s =
            run_backup_session(&client, &ns, "app-backup", &name, Duration::from_secs(120)).await;
        assert_succeeded(&s, 1);
        let short = s
            .status
            .as_ref()
            .and_then(|st| st.stats[0].snapshots[0].name.clone())
            .expect("snapshot name");
        ids.push(short);
    }
    eprintln!(
        "4 sessions in {:.1}s: {ids:?}",
        started.elapsed().as_secs_f64()
    );
    let repo = f.repo_dir.to_string_lossy().to_string();
    let mut newest: Vec<String> = ids[2..].to_vec();
    newest.sort();
    // forget runs after the host's report: wait (bounded) for it, then compare. The pod is
    // BestEffort (cgroup weight 2): with this target's other tests running, its `forget
    // --prune` may wait behind them for a while, and `--retry-lock` allows it 2 minutes.
    let kept = || {
        let mut kept: Vec<String> = restic_snapshots(&repo, PASSWORD)
            .iter()
            .map(|s| s["short_id"].as_str().expect("short_id").to_string())
            .collect();
        kept.sort();
        kept
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while kept() != newest && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if kept() != newest {
        eprintln!("{}", pod_logs(&ns, "app"));
    }
    assert_eq!(
        kept(),
        newest,
        "restic keeps exactly the snapshots of the last two sessions (all: {ids:?})"
    );
    // The sidecar writes the Repository status after its report (forget, stats, check first).
    let repos = Api::<Repository>::namespaced(client.clone(), &ns);
    let status = eventually(
        "the Repository status after the fourth backup",
        Duration::from_secs(120),
        || {
            let repos = repos.clone();
            async move {
                let status = repos.get("repo").await.ok()?.status?;
                (status.snapshot_count == Some(2)
                    && status.snapshots_removed_on_last_cleanup == Some(1))
                .then_some(status)
            }
        },
    )
    .await;
    assert_eq!(status.snapshot_count, Some(2), "{status:?}");
    assert_eq!(
        status.snapshots_removed_on_last_cleanup,
        Some(1),
        "the fourth backup removed the second: {status:?}"
    );
    assert_eq!(status.integrity, Some(true));
    assert_no_illegal_transitions().await;
}

/// Issue 4: a paused configuration's CronJob creates no session (an event says so), and a
/// manual session is `Skipped` with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_configuration_creates_and_runs_no_session() {
    let env = env().await;
    let f = fixture("paused").await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    // A schedule that does not fire during the test: the Job is created from the CronJob by hand.
    let bc = deployment_backup_configuration("app", "repo", "0 0 1 1 *", json!({}));
    apply_with_trigger(&client, &ns, bc).await;
    let mut bc = deployment_backup_configuration("app", "repo", "0 0 1 1 *", json!({}));
    bc["spec"]["paused"] = json!(true);
    apply(&client, &ns, bc).await;

    let st = run_trigger_job(&client, &ns, "app-backup", "trigger-now").await;
    assert!(
        st.failed.unwrap_or(0) == 0 && st.succeeded == Some(1),
        "the trigger Job succeeds: {st:?}"
    );
    let skipped = wait_event(
        &client,
        &ns,
        "app-backup",
        "BackupSkipped",
        Duration::from_secs(30),
    )
    .await;
    assert!(skipped.note.contains("paused"), "{skipped:?}");
    assert!(
        backup_sessions(&client, &ns).await.is_empty(),
        "no BackupSession while paused"
    );

    create_backup_session(&client, &ns, "app-backup", "while-paused").await;
    let s = wait_session_terminal(&client, &ns, "while-paused", Duration::from_secs(60)).await;
    let status = s.status.clone().expect("status");
    assert_eq!(status.phase, Some(Phase::Skipped), "{status:?}");
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("paused")),
        "{status:?}"
    );
    assert!(status.stats.is_empty(), "no host backed up: {status:?}");
    let ev = wait_event(
        &client,
        &ns,
        "while-paused",
        "BackupSessionSkipped",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(ev.type_, "Warning");
    assert!(ev.note.contains("paused"), "{ev:?}");
    assert!(
        !f.repo_dir.join("config").exists(),
        "nothing was written to the repository"
    );
    assert_no_illegal_transitions().await;
}

/// Issue 4 / decision 3: two sessions of one configuration created back to back never run at
/// once; the second is `Skipped` naming the first, and restic has exactly one new snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn two_sessions_of_one_configuration_never_run_at_once() {
    let env = env().await;
    let f = fixture("overlap").await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    let source = pv_dir(&ns, "source-data").await;
    // ~80 MB of incompressible data: a backup takes a few seconds.
    generate_files(&source, 99, 20, 4 << 20);
    deployment_with_pvc(&client, &ns, "app", "source-data").await;
    sidecar_backup(&client, &ns, "app", "repo", json!({})).await;
    let repo = f.repo_dir.to_string_lossy().to_string();
    let before = if f.repo_dir.join("config").exists() {
        restic_snapshots(&repo, PASSWORD).len()
    } else {
        0
    };

    create_backup_session(&client, &ns, "app-backup", "first").await;
    create_backup_session(&client, &ns, "app-backup", "second").await;
    let api = Api::<BackupSession>::namespaced(client.clone(), &ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let (mut polls, mut ran) = (0u32, std::collections::BTreeSet::new());
    let (a, b) = loop {
        let a = api.get("first").await.expect("first");
        let b = api.get("second").await.expect("second");
        let phase = |s: &BackupSession| s.status.as_ref().and_then(|s| s.phase);
        let (pa, pb) = (phase(&a), phase(&b));
        polls += 1;
        assert!(
            !(pa == Some(Phase::Running) && pb == Some(Phase::Running)),
            "both sessions Running at once (poll {polls})"
        );
        for (n, p) in [("first", pa), ("second", pb)] {
            if p == Some(Phase::Running) {
                ran.insert(n);
            }
        }
        let terminal =
            |p: Option<Phase>| matches!(p, Some(Phase::Succeeded | Phase::Failed | Phase::Skipped));
        if terminal(pa) && terminal(pb) {
            break (a, b);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions did not finish: {pa:?} {pb:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{polls} polls; seen Running: {ran:?}");
    let phase = |s: &BackupSession| s.status.as_ref().and_then(|s| s.phase);
    let (winner, loser) = if phase(&a) == Some(Phase::Succeeded) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    if phase(winner) != Some(Phase::Succeeded) {
        dump_logs(env.cp);
    }
    assert_succeeded(winner, 1);
    let ls = loser.status.clone().expect("status");
    assert_eq!(ls.phase, Some(Phase::Skipped), "{ls:?}");
    let reason = ls.reason.clone().unwrap_or_default();
    assert!(
        reason.contains(&winner.name_any()) && reason.contains("running"),
        "the reason names the running session: {reason}"
    );
    assert!(
        ls.stats.is_empty(),
        "the skipped session never backed up: {ls:?}"
    );
    let ev = wait_event(
        &client,
        &ns,
        &loser.name_any(),
        "BackupSessionSkipped",
        Duration::from_secs(30),
    )
    .await;
    assert!(ev.note.contains(&winner.name_any()), "{ev:?}");
    assert_eq!(
        restic_snapshots(&repo, PASSWORD).len(),
        before + 1,
        "exactly one new snapshot"
    );
    assert_no_illegal_transitions().await;
}
