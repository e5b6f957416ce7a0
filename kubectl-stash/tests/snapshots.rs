//! `kubectl stash snapshots` through the real Snapshot API: the installed operator's aggregated
//! API server behind the real kube-apiserver, a local (hostPath) restic repository with two
//! snapshots, listed by the plugin.
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::PostParams};
use serde_json::json;
use stash_crds::Repository;

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-stash");

fn restic() -> PathBuf {
    stash_testenv::bins::bin("restic").expect("restic")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_lists_through_the_snapshot_api() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = stash_testenv::shared().await?;
    scenario(cp).await
}

async fn scenario(cp: &'static stash_testenv::ControlPlane) -> anyhow::Result<()> {
    let client = cp.client();
    let ns = cp.namespace("plugin-snapshots").await?;
    let dir = tempfile::tempdir()?;
    let repo_dir = dir.path().join("repo");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("f"), "hello")?;
    let restic_cmd = |args: &[&str]| {
        let o = Command::new(restic())
            .args(args)
            .arg("-r")
            .arg(&repo_dir)
            .env("RESTIC_PASSWORD", "pw")
            .output()
            .expect("restic");
        assert!(
            o.status.success(),
            "restic {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    restic_cmd(&["init"]);
    let d = data.display().to_string();
    restic_cmd(&["backup", &d, "--host", "host-0"]);
    restic_cmd(&["backup", &d, "--host", "host-1"]);

    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-secret", "namespace": ns.name},
        "stringData": {"RESTIC_PASSWORD": "pw"},
    }))?;
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await?;
    let repo: Repository = serde_json::from_value(json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
        "metadata": {"name": "local-repo", "namespace": ns.name, "labels": {"team": "a"}},
        "spec": {"backend": {"storageSecretName": "repo-secret",
                             "local": {"mountPath": "/safe/data", "hostPath": {"path": repo_dir.display().to_string()}}}},
    }))?;
    Api::<Repository>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &repo)
        .await?;

    let run = |args: &[&str]| {
        let o = Command::new(BIN)
            .env("KUBECONFIG", &cp.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl-stash");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (code, out, err) = loop {
        let r = run(&["snapshots", "-n", &ns.name, "-l", "repository=local-repo"]);
        if r.0 == Some(0) && r.1.lines().count() == 3 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("--- kubectl stash snapshots -l repository=local-repo ---\n{out}{err}");
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("REPOSITORY")
            && lines[0].ends_with("PATHS"),
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");
    for (l, host) in lines[1..].iter().zip(["host-0", "host-1"]) {
        let cells: Vec<&str> = l.split_whitespace().collect();
        assert!(
            cells[0].starts_with("local-repo-") && cells[0].len() == "local-repo-".len() + 8,
            "{l}"
        );
        assert_eq!(cells[1], "local-repo");
        assert_eq!(cells[2], host);
        assert_eq!(
            cells[0].rsplit('-').next(),
            Some(cells[3]),
            "name ends with the short id: {l}"
        );
        assert_eq!(cells.last().copied(), Some(d.as_str()));
    }

    // A selector that matches nothing, and every namespace.
    let (code, out, _) = run(&["snapshots", "-n", &ns.name, "-l", "team=b"]);
    assert_eq!(
        (code, out.as_str()),
        (
            Some(0),
            format!("No snapshots found in namespace {}.\n", ns.name).as_str()
        )
    );
    let (code, out, err) = run(&["snapshots", "-A", "-l", "team=a"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("NAMESPACE")
            && out.lines().filter(|l| l.starts_with(&ns.name)).count() == 2,
        "{out}"
    );
    Ok(())
}
