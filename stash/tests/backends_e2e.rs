//! Remote backends for real: S3 (moto) and the restic REST server, both on the node address
//! inside the cluster's network namespace. A
//! Deployment is backed up through the sidecar, restic lists the snapshot of `host-0` at the
//! same URL, and the restored bytes are identical to the originals.
mod support;

use std::time::Duration;

use kube::Client;
use serde_json::json;
use stash_crds::backup_session::Phase;
use stash_testenv::bins;
use support::*;

const PASSWORD: &str = "backend-test-password";

/// Namespace with a Deployment `app` over a PVC of generated files; returns the guard and the
/// source directory.
async fn workload(prefix: &str) -> (stash_testenv::TestNamespace, std::path::PathBuf) {
    let env = env().await;
    let ns = env.cp.namespace(prefix).await.expect("namespace");
    let source = pv_dir(&ns.name, "source-data").await;
    generate_files(&source, 77, 16, 8192);
    deployment_with_pvc(&env.cp.client(), &ns.name, "app", "source-data").await;
    (ns, source)
}

/// Back up `app` into Repository `repo` (already applied) and check restic's view at
/// `restic_url` with the environment `restic_env`.
async fn backup_and_verify(
    client: &Client,
    ns: &str,
    source: &std::path::Path,
    restic_url: &str,
    restic_env: &[(&str, &str)],
) {
    let env = env().await;
    apply(
        client,
        ns,
        deployment_backup_configuration(
            "app",
            "repo",
            "0 0 1 1 *",
            json!({
                "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true}
            }),
        ),
    )
    .await;
    wait_sidecar_ready(client, ns, "app", Duration::from_secs(90)).await;
    create_backup_session(client, ns, "app-backup", "remote").await;
    let s = wait_session_terminal(client, ns, "remote", Duration::from_secs(120)).await;
    let status = s.status.clone().expect("status");
    if status.phase != Some(Phase::Succeeded) {
        dump_logs(env.cp);
    }
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    let short = status.stats[0].snapshots[0]
        .name
        .clone()
        .expect("snapshot name");

    let with_env = |mut c: std::process::Command| {
        for (k, v) in restic_env {
            c.env(k, v);
        }
        c
    };
    let out = with_env(restic(restic_url, PASSWORD))
        .args(["snapshots", "--json"])
        .output()
        .expect("restic snapshots");
    assert!(
        out.status.success(),
        "restic snapshots: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["hostname"], "host-0");
    assert_eq!(snaps[0]["paths"], json!(["/source/data"]));
    assert_eq!(snaps[0]["short_id"].as_str(), Some(short.as_str()));
    let scratch = tempfile::tempdir().expect("scratch");
    let out = with_env(restic(restic_url, PASSWORD))
        .args(["restore", &short, "--target"])
        .arg(scratch.path())
        .output()
        .expect("restic restore");
    assert!(
        out.status.success(),
        "restic restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = checksums(&scratch.path().join("source/data"));
    let original = checksums(source);
    assert!(!original.is_empty());
    assert_eq!(
        restored, original,
        "restored bytes differ from the originals"
    );
    let r = kube::Api::<stash_crds::Repository>::namespaced(client.clone(), ns)
        .get("repo")
        .await
        .expect("repo");
    let rs = r.status.expect("repository status");
    assert_eq!(rs.snapshot_count, Some(1), "{rs:?}");
    assert_eq!(rs.integrity, Some(true));
    assert_no_illegal_transitions().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_is_backed_up_to_s3() {
    let env = env().await;
    let client = env.cp.client();
    let (guard, source) = workload("s3").await;
    let ns = guard.name.clone();
    // moto listens on the node address, inside the cluster's network namespace: the sidecar
    // (a pod) and the operator (wipeOut) reach it there, and so does restic on the host.
    let moto = bins::bin("moto_server").expect("moto_server");
    let port = cluster_server(
        "moto",
        &moto,
        |ip, port| vec!["-H".into(), ip.into(), "-p".into(), port.to_string()],
        &[],
    )
    .await;
    let bucket = "stash-e2e";
    let endpoint = format!("http://{}:{port}", stash_testenv::NODE_IP);
    // Create the bucket (an anonymous PUT is accepted by moto).
    eventually("the bucket to be created", Duration::from_secs(30), || {
        let endpoint = endpoint.clone();
        async move {
            http_put(&endpoint, &format!("/{bucket}"))
                .await
                .filter(|c| *c == 200)
        }
    })
    .await;
    let (key_id, key) = ("AKIASTASHE2E", "s3-secret-key-for-the-test");
    apply(&client, &ns, json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-secret"},
        "stringData": {"RESTIC_PASSWORD": PASSWORD, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": key}
    }))
    .await;
    apply(&client, &ns, json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"},
        "spec": {"backend": {"storageSecretName": "s3-secret",
                             "s3": {"endpoint": endpoint, "bucket": bucket, "prefix": "demo/app"}},
                 "wipeOut": true}
    }))
    .await;
    let url = format!("s3:{endpoint}/{bucket}/demo/app");
    backup_and_verify(
        &client,
        &ns,
        &source,
        &url,
        &[
            ("AWS_ACCESS_KEY_ID", key_id),
            ("AWS_SECRET_ACCESS_KEY", key),
        ],
    )
    .await;

    // The Repository controller's finalizer: deleting with wipeOut deletes the restic data
    // under the bucket/prefix (signed S3 requests), then lets the Repository go.
    let repos = kube::Api::<stash_crds::Repository>::namespaced(client.clone(), &ns);
    let r = repos.get("repo").await.expect("repo");
    assert!(
        r.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"stash".to_string()),
        "finalizer `stash` on a live Repository"
    );
    let has_repo = || {
        let mut cmd = restic(&url, PASSWORD);
        cmd.env("AWS_ACCESS_KEY_ID", key_id)
            .env("AWS_SECRET_ACCESS_KEY", key)
            .args(["cat", "config"]);
        cmd.output().expect("restic cat config").status.success()
    };
    assert!(has_repo(), "the repository exists before the deletion");
    repos
        .delete("repo", &Default::default())
        .await
        .expect("delete repo");
    eventually("the Repository to be gone", Duration::from_secs(60), || {
        let repos = repos.clone();
        async move { matches!(repos.get_opt("repo").await, Ok(None)).then_some(()) }
    })
    .await;
    let ev = wait_event(&client, &ns, "repo", "WipedOut", Duration::from_secs(30)).await;
    assert_eq!(ev.type_, "Normal");
    assert!(ev.note.contains("deleted"), "{ev:?}");
    assert!(!has_repo(), "restic finds no repository after the wipe-out");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_is_backed_up_to_a_rest_server() {
    let env = env().await;
    let client = env.cp.client();
    let (guard, source) = workload("rest").await;
    let ns = guard.name.clone();
    let data = tempfile::tempdir().expect("rest-server data");
    let path = data.path().to_string_lossy().to_string();
    let rest = bins::bin("rest-server").expect("rest-server");
    let port = cluster_server(
        "rest-server",
        &rest,
        |ip, port| {
            vec![
                "--path".into(),
                path.clone(),
                "--listen".into(),
                format!("{ip}:{port}"),
                "--no-auth".into(),
            ]
        },
        &[],
    )
    .await;
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rest-secret"},
            "stringData": {"RESTIC_PASSWORD": PASSWORD}
        }),
    )
    .await;
    let url = format!("http://{}:{port}/app", stash_testenv::NODE_IP);
    apply(&client, &ns, json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"},
        "spec": {"backend": {"storageSecretName": "rest-secret", "rest": {"url": url}}}
    }))
    .await;
    backup_and_verify(&client, &ns, &source, &format!("rest:{url}"), &[]).await;
    assert!(
        data.path().join("app").join("config").exists(),
        "the repository lives in the REST server's directory"
    );
}

/// `PUT path` over plain HTTP/1.0; the status code.
async fn http_put(endpoint: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("PUT {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}
