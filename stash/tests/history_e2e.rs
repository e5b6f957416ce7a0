//! Bounded history on the real control plane (issue 12): a BackupConfiguration with
//! `spec.backupHistoryLimit: 2` runs five real backup Jobs; the three oldest sessions are
//! deleted and their Jobs and Pods go with them; the two kept have Jobs owned by their
//! session with `ttlSecondsAfterFinished`. Everything is read back from the API server.
use stash_e2e as support;

use std::time::Duration;

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{Api, ResourceExt, api::ListParams};
use serde_json::json;
use stash_crds::BackupSession;
use support::*;

const PASSWORD: &str = "not-so-secret-password";

/// BackupConfiguration `keep-two`: PVC `source-data` through the `pvc-backup` Task, keeping
/// `limit` finished sessions.
fn configuration(limit: i32) -> serde_json::Value {
    pvc_backup_configuration(
        "keep-two",
        "source-data",
        json!({
            "backupHistoryLimit": limit,
            "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true}
        }),
    )
}

/// The names of the BackupSessions `sessions` lists (`None` when the list fails).
async fn session_names(sessions: &Api<BackupSession>) -> Option<Vec<String>> {
    let list = sessions.list(&ListParams::default()).await.ok()?;
    Some(list.into_iter().map(|s| s.name_any()).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_newest_finished_sessions_are_kept_with_their_jobs() {
    let env = env().await;
    let client = env.cp.client();
    let f = fixture_with_password("history", PASSWORD).await;
    let ns = f.ns.name.clone();
    let source = pv_dir(&ns, "source-data").await;
    generate_files(&source, 3, 5, 1000);
    apply(&client, &ns, json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "source-data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .await;
    apply(&client, &ns, configuration(2)).await;
    let names: Vec<String> = (0..5).map(|i| format!("keep-two-{i}")).collect();
    for name in &names {
        run_backup_session(&client, &ns, "keep-two", name, Duration::from_secs(150)).await;
    }
    assert_eq!(
        restic_snapshots(&f.repo_dir.to_string_lossy(), PASSWORD).len(),
        5,
        "five real backups"
    );

    // The three oldest sessions go, with their Jobs and the Jobs' Pods.
    let sessions = Api::<BackupSession>::namespaced(client.clone(), &ns);
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let job_of = |s: &str| stash_operator::jobs::backup::job_name(s);
    let kept = eventually(
        "the history to shrink to the two newest sessions, Jobs and Pods included",
        Duration::from_secs(60),
        || {
            let (sessions, jobs, pods, names) =
                (sessions.clone(), jobs.clone(), pods.clone(), names.clone());
            async move {
                let left = session_names(&sessions).await?;
                if left.len() != 2 {
                    return None;
                }
                for old in &names[..3] {
                    if jobs.get_opt(&job_of(old)).await.ok()?.is_some() {
                        return None;
                    }
                    let selector = format!("batch.kubernetes.io/job-name={}", job_of(old));
                    if !pods
                        .list(&ListParams::default().labels(&selector))
                        .await
                        .ok()?
                        .items
                        .is_empty()
                    {
                        return None;
                    }
                }
                Some(left)
            }
        },
    )
    .await;
    let mut kept = kept;
    kept.sort();
    assert_eq!(kept, names[3..].to_vec(), "the newest two are kept");

    // The kept sessions' Jobs are theirs (garbage collected with them) and expire on their own.
    for name in &names[3..] {
        let job = jobs.get(&job_of(name)).await.expect("kept job");
        let session = sessions.get(name).await.expect("kept session");
        let owners = job.owner_references();
        assert_eq!(owners.len(), 1, "{owners:?}");
        assert_eq!(owners[0].kind, "BackupSession");
        assert_eq!(Some(&owners[0].uid), session.uid().as_ref());
        assert_eq!(
            job.spec.and_then(|s| s.ttl_seconds_after_finished),
            Some(stash_operator::jobs::FINISHED_JOB_TTL_SECONDS)
        );
    }

    // Lowering the limit prunes at once (the configuration's own reconcile).
    apply(&client, &ns, configuration(1)).await;
    let left = eventually(
        "limit 1 to leave one session",
        Duration::from_secs(30),
        || {
            let sessions = sessions.clone();
            async move {
                let left = session_names(&sessions).await?;
                (left.len() == 1).then_some(left)
            }
        },
    )
    .await;
    assert_eq!(left, vec![names[4].clone()]);
    assert_no_illegal_transitions().await;
}
