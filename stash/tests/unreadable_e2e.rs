//! An incomplete snapshot is not a success (issue 26), end to end on the real cluster: the
//! Deployment's app writes, as root, a file only root may read (`0600`) next to readable files;
//! the sidecar runs as uid 1000 (`runtimeSettings.container.securityContext`), so restic makes
//! the snapshot without that file and exits 3. The session ends `Failed` (its phase as the API
//! server has it), the host's error names the unreadable path and the count, restic's own
//! `snapshots --json` shows the snapshot kept and tagged `partial`, and `restic ls` finds the
//! readable files in it and not the other one.
//!
//! The repository is on the restic REST server (on the node address, in the cluster's network
//! namespace, its data directory created by root): a sidecar that runs as uid 1000 could not
//! write a root-owned local (hostPath) repository, and loosening that directory's mode to suit
//! the agent is not what a user would do.
use stash_e2e as support;

use std::{os::unix::fs::MetadataExt, time::Duration};

use serde_json::json;
use stash_crds::backup_session::{HostPhase, Phase};
use support::*;

const PASSWORD: &str = "unreadable-test-password-5e2b";
const SECRET_FILE: &str = "/source/data/secret.key";

#[tokio::test(flavor = "multi_thread")]
async fn a_file_the_agent_cannot_read_fails_the_session_names_it_and_the_snapshot_is_tagged_partial()
 {
    let env = env().await;
    let client = env.cp.client();
    let guard = env.cp.namespace("unreadable").await.expect("namespace");
    let ns = guard.name.clone();

    // Readable files (0644, directories 0755), and the app that writes, as root, a file with
    // mode 0600 before it starts serving.
    let source = pv_dir(&ns, "source-data").await;
    generate_files(&source, 26, 9, 4096);
    let readable = checksums(&source);
    assert_eq!(readable.len(), 9);
    apply(&client, &ns, json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "labels": {"app": "app"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}},
                 "template": {"metadata": {"labels": {"app": "app"}},
                              "spec": {"containers": [{"name": "app", "image": "busybox",
                                                       "command": ["sh", "-c", format!("umask 077 && echo 'root only' > {SECRET_FILE} && exec sleep 3600")],
                                                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                       "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "source-data"}}]}}}
    }))
    .await;

    // The repository: a REST server whose data directory root made with mkdir.
    let data = tempfile::tempdir().expect("rest-server data");
    let root_dir = data.path().join("repos");
    std::fs::create_dir(&root_dir).expect("mkdir");
    let url = rest_repository(&client, &ns, &root_dir, PASSWORD).await;

    // The sidecar runs as uid/gid 1000: it reads what everyone may read, not the app's file.
    // A retention policy that would forget the other snapshots: it must not run.
    sidecar_backup(&client, &ns, "app", "repo", json!({
                "retentionPolicy": {"name": "keep-last-1", "keepLast": 1, "prune": true},
                "runtimeSettings": {"container": {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}}
            })).await;
    // The injected sidecar runs as uid 1000, as runtimeSettings say.
    let users: Vec<Option<i64>> = live_pods(&client, &ns, "app=app")
        .await
        .iter()
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
        .filter(|c| c.name == "stash")
        .map(|c| c.security_context.as_ref().and_then(|s| s.run_as_user))
        .collect();
    assert_eq!(users, [Some(1000)], "the sidecar's runAsUser");
    let secret = source.join("secret.key");
    let meta = eventually("the app's root-only file", Duration::from_secs(60), || {
        let secret = secret.clone();
        async move { std::fs::metadata(&secret).ok() }
    })
    .await;
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o600),
        "written by root, mode 0600"
    );

    create_backup_session(&client, &ns, "app-backup", "incomplete").await;
    let s = wait_session_ends(
        &client,
        &ns,
        "incomplete",
        Phase::Failed,
        Duration::from_secs(180),
    )
    .await;
    let status = s.status.clone().expect("status");
    println!(
        "unreadable: session {:?}, reason {:?}, hosts {}",
        status.phase,
        status.reason,
        serde_json::to_string(&status.stats).unwrap_or_default()
    );
    assert_eq!(status.stats.len(), 1, "{status:?}");
    let host = &status.stats[0];
    assert_eq!(host.hostname.as_deref(), Some("host-0"));
    assert_eq!(host.phase, Some(HostPhase::Failed), "{host:?}");
    let error = host.error.clone().unwrap_or_default();
    assert_eq!(
        host.snapshots.len(),
        1,
        "the partial snapshot is listed: {host:?}"
    );
    let short = host.snapshots[0].name.clone().expect("snapshot name");
    assert_eq!(
        error,
        format!(
            "backup of /source/data: 1 file could not be read (snapshot {short} kept, tagged partial): {SECRET_FILE}"
        )
    );
    assert!(!error.contains(PASSWORD));
    assert_eq!(
        host.snapshots[0]
            .file_stats
            .as_ref()
            .and_then(|f| f.total_files),
        Some(9),
        "the readable files were processed"
    );

    // restic's own view: the one snapshot, kept and tagged partial; the readable files in it.
    let repo = format!("rest:{url}");
    let snaps = restic_snapshots(&repo, PASSWORD);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["short_id"].as_str(), Some(short.as_str()));
    assert_eq!(snaps[0]["hostname"], "host-0");
    let tags: Vec<&str> = snaps[0]["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    let uid_tag = format!(
        "stash-session-uid={}",
        s.metadata.uid.as_deref().expect("session uid")
    );
    assert_eq!(
        tags,
        ["stash-session=incomplete", uid_tag.as_str(), "partial"],
        "{snaps:?}"
    );
    let files: std::collections::BTreeSet<String> = restic_ls_of(restic(&repo, PASSWORD), &short)
        .iter()
        .filter(|v| v["type"] == "file")
        .filter_map(|v| v["path"].as_str().map(String::from))
        .collect();
    let expected: std::collections::BTreeSet<String> = readable
        .keys()
        .map(|k| format!("/source/data/{k}"))
        .collect();
    assert_eq!(files, expected, "the readable files, and not {SECRET_FILE}");

    // A failed host runs no follow-up step: no backup time recorded, nothing forgotten.
    let repos = kube::Api::<stash_crds::Repository>::namespaced(client.clone(), &ns);
    let r = repos.get("repo").await.expect("repository");
    let rs = r.status.unwrap_or_default();
    assert_eq!(rs.last_backup_time, None, "{rs:?}");
    let ev = wait_event(
        &client,
        &ns,
        "incomplete",
        "FailedHostBackup",
        Duration::from_secs(30),
    )
    .await;
    assert!(ev.note.contains(SECRET_FILE), "{}", ev.note);
    println!(
        "unreadable: host error {error:?}; restic snapshot {short} tags {tags:?}; {} files in it",
        files.len()
    );
    assert_no_illegal_transitions().await;
}
