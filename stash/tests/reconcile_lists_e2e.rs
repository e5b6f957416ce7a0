//! Reconciles read from watch-fed stores, never LIST (issue 12), counted by the real API
//! server: a FlowSchema matches only the operator ServiceAccount's `list` requests in the
//! test's namespace (the watches' own lists are cluster-wide, so they do not match), and
//! `apiserver_flowcontrol_dispatched_requests_total` for it must not move while twenty
//! BackupSessions of a paused configuration are decided.
mod support;

use std::time::Duration;

use kube::{Api, Client, api::DeleteParams, core::DynamicObject};
use serde_json::json;
use support::*;

async fn dispatched(client: &Client, schema: &str) -> f64 {
    let text = api_get(client, "/metrics").await.expect("/metrics");
    let needle = format!("flow_schema=\"{schema}\"");
    text.lines()
        .filter(|l| l.starts_with("apiserver_flowcontrol_dispatched_requests_total{"))
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn deciding_sessions_issues_no_list() {
    let env = env().await;
    let client = env.cp.client();
    let f = fixture_with_password("no-list", "pw").await;
    let ns = f.ns.name.clone();
    let schema = format!("stash-lists-{ns}");
    apply(&client, "", json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
        "metadata": {"name": schema},
        "spec": {
            "matchingPrecedence": 400,
            "priorityLevelConfiguration": {"name": "workload-low"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": "stash-operator", "namespace": "stash-system"}}],
                "resourceRules": [{"verbs": ["list"], "apiGroups": ["*"], "resources": ["*"], "namespaces": [ns]}]
            }]
        }
    }))
    .await;
    apply(&client, &ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
        "metadata": {"name": "quiet"},
        "spec": {"repository": {"name": "repo"}, "schedule": "0 0 1 1 *", "paused": true, "backupHistoryLimit": 30,
                 "task": {"name": "pvc-backup"},
                 "target": {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "data"}}}
    }))
    .await;
    // The configuration settles first (its own reconcile may read what it owns).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = dispatched(&client, &schema).await;
    let names: Vec<String> = (0..20).map(|i| format!("quiet-{i:02}")).collect();
    for name in &names {
        create_backup_session(&client, &ns, "quiet", name).await;
    }
    for name in &names {
        wait_session_terminal(&client, &ns, name, Duration::from_secs(60)).await;
    }
    let lists = dispatched(&client, &schema).await - before;
    // The counter counts: one LIST made as the operator's ServiceAccount moves it (so the
    // assertion below can fail).
    let out = env
        .cp
        .kubectl()
        .expect("kubectl")
        .args([
            "--as=system:serviceaccount:stash-system:stash-operator",
            "get",
            "backupsessions",
            "-n",
            &ns,
            "-o",
            "name",
        ])
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let control = dispatched(&client, &schema).await - before - lists;
    let fs = kube::discovery::pinned_kind(
        &client,
        &kube::core::GroupVersionKind::gvk("flowcontrol.apiserver.k8s.io", "v1", "FlowSchema"),
    )
    .await
    .expect("discovery")
    .0;
    let _ = Api::<DynamicObject>::all_with(client.clone(), &fs)
        .delete(&schema, &DeleteParams::default())
        .await;
    println!(
        "LIST requests of the operator while deciding 20 sessions: {lists} (one LIST as the operator: {control})"
    );
    assert!(
        control >= 1.0,
        "a LIST as the operator's ServiceAccount is counted ({control})"
    );
    assert_eq!(
        lists, 0.0,
        "the operator listed {lists} times in {ns} while deciding 20 sessions"
    );
}
