//! The main job, for a person: a real local control plane, the operator, a workload backed
//! up by its sidecar, the data destroyed and restored, all shown with the real kubectl and
//! restic. Run it with `scripts/demo.sh`.
//!
//! Everything it starts listens on loopback and is stopped (by process group) when it exits;
//! With `--keep` (scripts/demo.sh sets `TESTENV_KEEP=1`) the repository directory stays and the
//! cluster keeps running until Ctrl-C so you can look around.
use stash_e2e as support;

use std::{process::Command, time::Duration};

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume};
use kube::Api;
use serde_json::json;
use stash_crds::{
    BackupSession, RestoreSession, backup_session::Phase, restore_session::Phase as RestorePhase,
};
use support::*;

const PASSWORD: &str = "demo-password";

fn show(title: &str, cmd: &mut Command) {
    println!("\n$ {title}");
    match cmd.output() {
        Ok(out) => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                print!("{}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Err(e) => println!("(could not run: {e})"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    println!(
        "== the local cluster (scripts/cluster.sh up) with stash-rs installed from deploy/install/stash-rs.yaml"
    );
    let env = env().await;
    let cp = env.cp;
    println!(
        "API server {}; export KUBECONFIG={}",
        cp.server,
        cp.kubeconfig.display()
    );
    let kubectl = |args: &[&str]| {
        let mut c = cp.kubectl().expect("kubectl");
        c.args(args);
        c
    };
    let client = cp.client();
    // A tour that ran before on this cluster left its namespaces: start from nothing.
    for ns in ["demo", "demo-invalid"] {
        fresh_namespace(&client, ns).await?;
    }
    cp.ensure_namespace("demo").await?;
    let ns = "demo";
    let repo_dir = cp.dir().join("demo-repository");
    std::fs::create_dir_all(&repo_dir)?;
    let data = pv_dir(ns, "source-data").await;
    generate_files(&data, 2026, 32, 8192);
    let original = checksums(&data);
    println!(
        "\n== the workload's data: {} files in the PVC source-data ({})",
        original.len(),
        data.display()
    );

    for doc in [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "local-secret"},
               "stringData": {"RESTIC_PASSWORD": PASSWORD}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "source-data"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "stash-demo"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "stash-demo"}},
                        "template": {"metadata": {"labels": {"app": "stash-demo"}},
                                     "spec": {"containers": [{"name": "busybox", "image": "busybox", "command": ["sleep", "3600"],
                                                              "volumeMounts": [{"name": "source-data", "mountPath": "/source/data"}]}],
                                              "volumes": [{"name": "source-data", "persistentVolumeClaim": {"claimName": "source-data"}}]}}}}),
        json!({"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "local-repo"},
               "spec": {"backend": {"storageSecretName": "local-secret",
                                    "local": {"mountPath": "/safe/data", "hostPath": {"path": repo_dir.to_string_lossy()}}}}}),
        json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration", "metadata": {"name": "deployment-backup"},
               "spec": {"repository": {"name": "local-repo"}, "schedule": "*/1 * * * *",
                        "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "stash-demo"},
                                   "directories": ["/source/data"],
                                   "volumeMounts": [{"name": "source-data", "mountPath": "/source/data"}]},
                        "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true}}}),
    ] {
        apply(&client, ns, doc).await;
    }
    println!(
        "\n== applied a Secret, a PVC, a Deployment, a Repository and a BackupConfiguration (every minute)"
    );
    let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns);
    eventually("the sidecar", Duration::from_secs(120), || {
        let d = deployments.clone();
        async move {
            let d = d.get("stash-demo").await.ok()?;
            let injected = d
                .spec
                .as_ref()?
                .template
                .spec
                .as_ref()?
                .containers
                .iter()
                .any(|c| c.name == "stash");
            let st = d.status?;
            (injected
                && st.updated_replicas == Some(1)
                && st.ready_replicas == Some(1)
                && st.replicas == Some(1))
            .then_some(())
        }
    })
    .await;
    show(
        "kubectl get deploy stash-demo -o jsonpath='{.spec.template.spec.containers[*].name}'",
        &mut kubectl(&[
            "get",
            "deploy",
            "stash-demo",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.template.spec.containers[*].name}",
        ]),
    );
    println!();
    show(
        "kubectl get bc,cronjob -n demo",
        &mut kubectl(&["get", "bc,cronjob", "-n", ns]),
    );

    println!("\n== waiting for the schedule to create a BackupSession (at most a minute)");
    let sessions = Api::<BackupSession>::namespaced(client.clone(), ns);
    eventually(
        "a scheduled BackupSession to succeed",
        Duration::from_secs(150),
        || {
            let api = sessions.clone();
            async move {
                let list = api.list(&Default::default()).await.ok()?;
                list.items
                    .into_iter()
                    .find(|s| s.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
            }
        },
    )
    .await;
    show(
        "kubectl get backupsessions -n demo",
        &mut kubectl(&["get", "bs", "-n", ns]),
    );
    show(
        "kubectl get repository -n demo",
        &mut kubectl(&["get", "repo", "-n", ns]),
    );

    // The Snapshot API: the operator's aggregated API server, registered with kube-apiserver.
    show(
        "kubectl get snapshots -n demo -l repository=local-repo",
        &mut kubectl(&["get", "snapshots", "-n", ns, "-l", "repository=local-repo"]),
    );
    show(
        "restic snapshots (restic's own view of the repository)",
        restic(&repo_dir.to_string_lossy(), PASSWORD).args(["snapshots"]),
    );
    let pushed = pushgateway_metrics().await;
    println!(
        "\n$ kubectl get --raw /api/v1/namespaces/stash-system/services/stash-pushgateway:pushgateway/proxy/metrics | grep stash_backup"
    );
    for line in pushed
        .lines()
        .filter(|l| l.starts_with("stash_backup_") || l.starts_with("stash_repository_"))
    {
        println!("{line}");
    }

    // The admission webhooks are active here: every manifest of the admission test's corpus
    // of invalid ones is refused, by the webhook or the CRD schema, with the message it expects.
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../admission/tests/admission-corpus/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&corpus)?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    cp.ensure_namespace("demo-invalid").await?;
    // The Function the corpus' Tasks name (so that what is wrong is what each file says).
    apply(&client, "", json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "Function",
                              "metadata": {"name": "admission-corpus-fn"}, "spec": {"image": IMAGE}}))
    .await;
    let mut refused = 0;
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        let expect = corpus_expectation(&text).unwrap_or_default();
        let out = kubectl(&[
            "apply",
            "--server-side",
            "-n",
            "demo-invalid",
            "-f",
            &f.to_string_lossy(),
        ])
        .output()?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        match judge_refusal(&expect, out.status.success(), &stdout, &stderr) {
            Ok(()) => refused += 1,
            Err(e) => println!("NOT refused as expected: {}: {e}", f.display()),
        }
    }
    println!(
        "\n== the admission webhooks and the CRD schema refused {refused}/{} invalid manifests of admission/tests/admission-corpus, each naming its field",
        files.len()
    );
    anyhow::ensure!(
        refused == files.len(),
        "some invalid manifests were not refused as expected"
    );

    // As Stash's guides say: pause the backups before a restore, so that no scheduled backup
    // of the destroyed data becomes the latest snapshot.
    println!("\n== pausing the BackupConfiguration, as before any restore");
    show(
        "kubectl patch backupconfiguration deployment-backup -n demo --type=merge -p '{\"spec\":{\"paused\":true}}'",
        &mut kubectl(&[
            "patch",
            "backupconfiguration",
            "deployment-backup",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"paused":true}}"#,
        ]),
    );
    eventually(
        "every BackupSession to have finished",
        Duration::from_secs(300),
        || {
            let api = Api::<BackupSession>::namespaced(client.clone(), ns);
            async move {
                let list = api.list(&Default::default()).await.ok()?;
                list.items
                    .iter()
                    .all(|s| {
                        s.status
                            .as_ref()
                            .and_then(|st| st.phase)
                            .is_some_and(|p| p.is_terminal())
                    })
                    .then_some(())
            }
        },
    )
    .await;

    println!("\n== destroying the data, then restoring it with a RestoreSession");
    // Remove what is inside (the PV's directory itself is what the pod has mounted).
    for e in std::fs::read_dir(&data)? {
        let p = e?.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?
        } else {
            std::fs::remove_file(&p)?
        }
    }
    println!("files left in the PVC: {}", checksums(&data).len());
    apply(&client, ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "deployment-restore"},
        "spec": {"repository": {"name": "local-repo"},
                 "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "stash-demo"},
                            "volumeMounts": [{"name": "source-data", "mountPath": "/source/data"}]},
                 "rules": [{"paths": ["/source/data"]}]}
    }))
    .await;
    let restores = Api::<RestoreSession>::namespaced(client.clone(), ns);
    let (phase, reason) = eventually("the restore to finish", Duration::from_secs(150), || {
        let api = restores.clone();
        async move {
            let status = api.get("deployment-restore").await.ok()?.status?;
            matches!(
                status.phase?,
                RestorePhase::Succeeded | RestorePhase::Failed
            )
            .then(|| (status.phase, status.reason))
        }
    })
    .await;
    anyhow::ensure!(
        phase == Some(RestorePhase::Succeeded),
        "the restore ended {phase:?}: {}",
        reason.unwrap_or_default()
    );
    show(
        "kubectl get restoresession -n demo",
        &mut kubectl(&["get", "restore", "-n", ns]),
    );
    let restored = checksums(&data);
    println!(
        "\nrestored {} files; sha256 of every file equals the original: {}",
        restored.len(),
        if restored == original { "yes" } else { "NO" }
    );
    anyhow::ensure!(
        restored == original,
        "the restored data differs from the original"
    );

    if keep {
        println!(
            "\n== namespace demo and {} are kept; KUBECONFIG={}",
            cp.dir().display(),
            cp.kubeconfig.display()
        );
    } else {
        for ns in ["demo", "demo-invalid"] {
            let _ = Api::<Namespace>::all(client.clone())
                .delete(ns, &Default::default())
                .await;
        }
    }
    cp.shutdown();
    Ok(())
}

/// Delete namespace `name` if it exists, and then its hostPath PersistentVolumes (cluster-scoped,
/// `Retain`: the tour makes new ones under the same names); wait until they are gone.
async fn fresh_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    if api.get_opt(name).await?.is_some() {
        println!("(namespace {name} is left from an earlier tour: deleting it first)");
        let _ = api.delete(name, &Default::default()).await;
    }
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let lp = kube::api::ListParams::default().labels(&format!("stash-testenv/namespace={name}"));
    eventually(
        &format!("namespace {name} and its PersistentVolumes to be deleted"),
        Duration::from_secs(180),
        || {
            let (api, pvs, lp) = (api.clone(), pvs.clone(), lp.clone());
            async move {
                if api.get_opt(name).await.ok()?.is_some() {
                    return None;
                }
                let left = pvs.list(&lp).await.ok()?.items;
                for pv in &left {
                    let _ = pvs
                        .delete(pv.metadata.name.as_deref()?, &Default::default())
                        .await;
                }
                left.is_empty().then_some(())
            }
        },
    )
    .await;
    Ok(())
}
