//! Backups that must fail, end to end on the real control plane: a wrong repository password
//! and an unreachable backend. Each session ends `Failed` promptly with the reason in its
//! status and in Warning events, without leaking secrets and without touching the repository.
use stash_e2e as support;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use kube::{Api, Client};
use serde_json::json;
use stash_crds::{BackupSession, backup_session::Phase};
use support::*;

const PASSWORD: &str = "the-right-password-4711";
const WRONG_PASSWORD: &str = "a-wrong-password-0815";

/// Namespace, a Deployment `app` whose PVC holds some files, and the host directory for a
/// local repository.
async fn workload(prefix: &str) -> (stash_testenv::TestNamespace, PathBuf) {
    let env = env().await;
    let ns = env.cp.namespace(prefix).await.expect("namespace");
    let repo_dir = env.cp.dir().join("repos").join(&ns.name);
    std::fs::create_dir_all(&repo_dir).expect("repo dir");
    let source = pv_dir(&ns.name, "source-data").await;
    generate_files(&source, 5, 6, 2048);
    deployment_with_pvc(&env.cp.client(), &ns.name, "app", "source-data").await;
    (ns, repo_dir)
}

async fn secret(client: &Client, ns: &str, name: &str, data: serde_json::Value) {
    apply(client, ns, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data})).await;
}

/// Repository `repo` on the local repository at `path`, with a Secret holding the wrong password.
async fn wrong_password_repository(client: &Client, ns: &str, path: &str) {
    secret(
        client,
        ns,
        "wrong-secret",
        json!({"RESTIC_PASSWORD": WRONG_PASSWORD}),
    )
    .await;
    apply(client, ns, json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"},
        "spec": {"backend": {"storageSecretName": "wrong-secret",
                             "local": {"mountPath": "/safe/data", "hostPath": {"path": path}}}}
    }))
    .await;
}

/// Everything the API server says about the session and the namespace's events, as text.
async fn visible_text(client: &Client, ns: &str, session: &BackupSession) -> String {
    let mut text = serde_json::to_string(&session.status).expect("status json");
    for e in events_in(client, ns).await {
        text.push_str(&format!("\n{} {} {}", e.reason, e.name, e.note));
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_fails_the_session_and_leaves_the_repository_alone() {
    let env = env().await;
    let client = env.cp.client();
    let (guard, repo_dir) = workload("wrongpw").await;
    let ns = guard.name.clone();
    // A repository initialised by an earlier successful backup with the right password.
    let repo = repo_dir.to_string_lossy().to_string();
    let seed = tempfile::tempdir().expect("seed");
    generate_files(seed.path(), 3, 4, 1024);
    let out = restic(&repo, PASSWORD)
        .args(["init"])
        .output()
        .expect("restic init");
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = restic(&repo, PASSWORD)
        .arg("backup")
        .arg(seed.path())
        .args(["--host", "seed", "--json", "--quiet"])
        .output()
        .expect("backup");
    assert!(
        out.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshots_before = restic_snapshots(&repo, PASSWORD).len();
    let config_before = std::fs::read(repo_dir.join("config")).expect("config");
    let tree_before = tree_digest(&repo_dir);

    wrong_password_repository(&client, &ns, &repo).await;
    sidecar_backup(
        &client,
        &ns,
        "app",
        "repo",
        json!({
            "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true}
        }),
    )
    .await;
    create_backup_session(&client, &ns, "app-backup", "wrong-password").await;
    let started = Instant::now();
    let s = wait_session_ends(
        &client,
        &ns,
        "wrong-password",
        Phase::Failed,
        Duration::from_secs(120),
    )
    .await;
    eprintln!(
        "wrong password: terminal after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let status = s.status.clone().expect("status");
    assert_eq!(status.stats.len(), 1, "{status:?}");
    let error = status.stats[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("wrong password"),
        "the host entry says why: {error}"
    );
    assert!(status.stats[0].snapshots.is_empty());
    let reason = status.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("host-0") && reason.contains("wrong password"),
        "status.reason: {reason}"
    );

    let host_ev = wait_event(
        &client,
        &ns,
        "wrong-password",
        "FailedHostBackup",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(host_ev.type_, "Warning");
    assert!(host_ev.note.contains("wrong password"), "{host_ev:?}");
    let session_ev = wait_event(
        &client,
        &ns,
        "wrong-password",
        "BackupSessionFailedToExecute",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(session_ev.type_, "Warning");

    let visible = visible_text(&client, &ns, &s).await;
    assert!(
        !visible.contains(WRONG_PASSWORD) && !visible.contains(PASSWORD),
        "a password leaked:\n{visible}"
    );

    // The repository is untouched: same snapshots, same config, not a byte changed.
    assert_eq!(restic_snapshots(&repo, PASSWORD).len(), snapshots_before);
    assert_eq!(
        std::fs::read(repo_dir.join("config")).expect("config"),
        config_before
    );
    assert_eq!(
        tree_digest(&repo_dir),
        tree_before,
        "no file of the repository changed"
    );
    assert_no_illegal_transitions().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_backend_fails_the_session_promptly() {
    let env = env().await;
    let client = env.cp.client();
    let (guard, _repo_dir) = workload("unreach").await;
    let ns = guard.name.clone();
    let port = closed_port().await;
    secret(
        &client,
        &ns,
        "rest-secret",
        json!({"RESTIC_PASSWORD": PASSWORD}),
    )
    .await;
    apply(&client, &ns, json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"},
        "spec": {"backend": {"storageSecretName": "rest-secret", "rest": {"url": format!("http://{}:{port}/", stash_testenv::NODE_IP)}}}
    }))
    .await;
    // The sidecar gives up on a backend after 5 s of retries (default 60 s).
    sidecar_backup(&client, &ns, "app", "repo", json!({
        "runtimeSettings": {"container": {"env": [{"name": "STASH_BACKEND_RETRY_BUDGET", "value": "5s"}]}}
    })).await;
    create_backup_session(&client, &ns, "app-backup", "unreachable").await;
    let api = Api::<BackupSession>::namespaced(client.clone(), &ns);
    eventually("the session to run", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let s = api.get("unreachable").await.ok()?;
            s.status?.phase.filter(|p| *p != Phase::Pending)
        }
    })
    .await;
    let running_at = Instant::now();
    let s = wait_session_ends(
        &client,
        &ns,
        "unreachable",
        Phase::Failed,
        Duration::from_secs(90),
    )
    .await;
    let took = running_at.elapsed();
    eprintln!(
        "unreachable backend: Failed {:.1}s after Running",
        took.as_secs_f64()
    );
    let status = s.status.clone().expect("status");
    assert!(
        took < Duration::from_secs(45),
        "bounded by the retry budget, not restic's 15 minutes: {took:?}"
    );
    let error = status
        .stats
        .first()
        .and_then(|h| h.error.clone())
        .unwrap_or_default();
    assert!(
        error.contains("unreachable") && error.contains(&port.to_string()),
        "the host entry says why: {error}"
    );
    let reason = status.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("host-0") && reason.contains("unreachable"),
        "status.reason: {reason}"
    );
    let ev = wait_event(
        &client,
        &ns,
        "unreachable",
        "FailedHostBackup",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(ev.type_, "Warning");
    assert!(ev.note.contains("unreachable"), "{ev:?}");
    wait_event(
        &client,
        &ns,
        "unreachable",
        "BackupSessionFailedToExecute",
        Duration::from_secs(30),
    )
    .await;
    let visible = visible_text(&client, &ns, &s).await;
    assert!(
        !visible.contains(PASSWORD),
        "the password leaked:\n{visible}"
    );
    assert_no_illegal_transitions().await;
}

/// `retryConfig: {maxRetry: 2, delay: 10s}` (later Stash): a scheduled session that fails is
/// followed by exactly two more, each a BackupSession of its own created at least 10 s after
/// the one before failed, each Failed with its own reason; the last has no retry left and
/// nothing follows it.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_session_is_retried_as_its_retry_config_says() {
    let env = env().await;
    let client = env.cp.client();
    let (guard, repo_dir) = workload("retry").await;
    let ns = guard.name.clone();
    let repo = repo_dir.to_string_lossy().to_string();
    let out = restic(&repo, PASSWORD)
        .arg("init")
        .output()
        .expect("restic init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wrong_password_repository(&client, &ns, &repo).await;
    sidecar_backup(
        &client,
        &ns,
        "app",
        "repo",
        json!({
            "retryConfig": {"maxRetry": 2, "delay": "10s"}
        }),
    )
    .await;
    // The session the schedule would create: its trigger Job, run now.
    run_trigger_job(&client, &ns, "app-backup", "trigger-now").await;
    let api = Api::<BackupSession>::namespaced(client.clone(), &ns);
    let first = eventually("the scheduled session", Duration::from_secs(30), || {
        let api = api.clone();
        async move {
            api.list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        }
    })
    .await;
    let first_name = kube::ResourceExt::name_any(&first);
    assert_eq!(first.spec.retry_left, Some(2), "set from maxRetry");
    let names = [
        first_name.clone(),
        format!("{first_name}-retry-1"),
        format!("{first_name}-retry-2"),
    ];
    let mut sessions = Vec::new();
    for name in &names {
        sessions.push(
            wait_session_ends(&client, &ns, name, Phase::Failed, Duration::from_secs(180)).await,
        );
    }
    // Each failed for its own reason, written on it.
    for s in &sessions {
        let reason = s
            .status
            .as_ref()
            .and_then(|st| st.reason.clone())
            .unwrap_or_default();
        assert!(
            reason.contains("wrong password"),
            "{}: {reason}",
            kube::ResourceExt::name_any(s)
        );
    }
    // Each of the first two was followed, at least its delay after it failed.
    let events = events_in(&client, &ns).await;
    let mut gaps = Vec::new();
    for (i, name) in names.iter().enumerate().take(2) {
        let failed = api.get(name).await.expect("session");
        let st = failed.status.clone().expect("status");
        assert_eq!(st.retried, Some(true), "{name}: {st:?}");
        let next_retry = st.next_retry.expect("nextRetry").0;
        let next = api.get(&names[i + 1]).await.expect("the retry");
        let created = next.metadata.creation_timestamp.clone().expect("created").0;
        assert!(
            created >= next_retry,
            "{}: created {created} before nextRetry {next_retry}",
            names[i + 1]
        );
        assert_eq!(next.spec.retry_left, Some(1 - i as i32), "{}", names[i + 1]);
        assert_eq!(
            next.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("stash.appscode.com/retry-of")),
            Some(name)
        );
        // The failure (its phase written) came at least 10 s before the retry existed.
        let failed_at = failed
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|f| f.manager.as_deref() == Some("stash-operator"))
            .filter_map(|f| f.time.clone())
            .map(|t| t.0)
            .max()
            .expect("the operator's status write");
        let gap = created.duration_since(failed_at).as_secs_f64();
        gaps.push(format!("{gap:.1} s"));
        assert!(
            gap >= 9.0,
            "{}: created {gap:.1}s after {name} failed",
            names[i + 1]
        );
        assert!(
            events.iter().any(|e| e.name == *name
                && e.reason == "BackupSessionRetried"
                && e.note.contains(&names[i + 1])),
            "{name}: no BackupSessionRetried event naming the retry"
        );
    }
    let last = &sessions[2];
    assert_eq!(last.spec.retry_left, Some(0));
    // Nothing follows the last: watched for longer than the delay.
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline {
        let all = api.list(&Default::default()).await.expect("list").items;
        assert_eq!(
            all.len(),
            3,
            "exactly two retries: {:?}",
            all.iter()
                .map(kube::ResourceExt::name_any)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(last.status.as_ref().and_then(|s| s.retried), None);
    stash_testenv::report(&format!(
        "retryConfig maxRetry 2, delay 10s: 3 sessions, all Failed; the retries created {} after the failures",
        gaps.join(" and ")
    ));
}
