//! Reconciles read from watch-fed stores, never LIST (issue 12), counted by the real API
//! server: a FlowSchema matches only the operator ServiceAccount's `list` requests in the
//! test's namespace (the watches' own lists are cluster-wide, so they do not match), and
//! `apiserver_flowcontrol_dispatched_requests_total` for it must not move while twenty
//! BackupSessions of a paused configuration are decided, nor while a workload targeted by a
//! BackupConfiguration and a RestoreSession is reconciled again and again.
use stash_e2e as support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
    core::DynamicObject,
};
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

/// The operator's LIST requests in one namespace, as the API server counts them.
struct Lists {
    client: Client,
    ns: String,
    schema: String,
    before: f64,
}

impl Lists {
    /// Start counting the operator ServiceAccount's LISTs in `ns` (a FlowSchema of its own).
    async fn of_operator_in(client: &Client, ns: &str) -> Self {
        let schema = format!("stash-lists-{ns}");
        apply(client, "", json!({
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
        Self {
            client: client.clone(),
            ns: ns.into(),
            schema,
            before: 0.0,
        }
    }

    /// From now on.
    async fn reset(&mut self) {
        self.before = dispatched(&self.client, &self.schema).await;
    }

    /// The LISTs since [`Lists::reset`]; then one LIST made as the operator's ServiceAccount
    /// must be counted (the positive control, so the assertion on the count can fail), and the
    /// FlowSchema is deleted.
    async fn counted(self) -> f64 {
        let lists = dispatched(&self.client, &self.schema).await - self.before;
        let out = env()
            .await
            .cp
            .kubectl()
            .expect("kubectl")
            .args([
                "--as=system:serviceaccount:stash-system:stash-operator",
                "get",
                "backupsessions",
                "-n",
                &self.ns,
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
        let control = dispatched(&self.client, &self.schema).await - self.before - lists;
        let fs = kube::discovery::pinned_kind(
            &self.client,
            &kube::core::GroupVersionKind::gvk("flowcontrol.apiserver.k8s.io", "v1", "FlowSchema"),
        )
        .await
        .expect("discovery")
        .0;
        let _ = Api::<DynamicObject>::all_with(self.client.clone(), &fs)
            .delete(&self.schema, &DeleteParams::default())
            .await;
        assert!(
            control >= 1.0,
            "a LIST as the operator's ServiceAccount is counted ({control})"
        );
        lists
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deciding_sessions_issues_no_list() {
    let env = env().await;
    let client = env.cp.client();
    let f = fixture_with_password("no-list", "pw").await;
    let ns = f.ns.name.clone();
    let mut lists = Lists::of_operator_in(&client, &ns).await;
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
    lists.reset().await;
    let names: Vec<String> = (0..20).map(|i| format!("quiet-{i:02}")).collect();
    for name in &names {
        create_backup_session(&client, &ns, "quiet", name).await;
    }
    for name in &names {
        wait_session_terminal(&client, &ns, name, Duration::from_secs(60)).await;
    }
    let lists = lists.counted().await;
    println!("LIST requests of the operator while deciding 20 sessions: {lists}");
    assert_eq!(
        lists, 0.0,
        "the operator listed {lists} times in {ns} while deciding 20 sessions"
    );
}

/// The workload controllers' reconciles ended so far, over every operator replica.
async fn workload_reconciles() -> f64 {
    operator_metrics()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("stash_operator_reconciles_total{controller=\"workload\"} "))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn reconciling_a_targeted_workload_issues_no_list() {
    let env = env().await;
    let client = env.cp.client();
    let f = fixture_with_password("no-list-wl", "pw").await;
    let ns = f.ns.name.clone();
    let mut lists = Lists::of_operator_in(&client, &ns).await;
    // No replicas: no pods, only the workload's template matters. Its writes (ours, then the
    // operator's injections) go through the mutating webhook, which still lists: they all
    // come before the count starts.
    apply(&client, &ns, json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "labels": {"app": "app"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "app"}},
                 "template": {"metadata": {"labels": {"app": "app"}},
                              "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "3600"],
                                                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                       "volumes": [{"name": "data", "emptyDir": {}}]}}}
    }))
    .await;
    apply(
        &client,
        &ns,
        deployment_backup_configuration("app", "repo", "0 0 1 1 *", json!({})),
    )
    .await;
    let restore = json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
        "metadata": {"name": "rs"},
        "spec": {"repository": {"name": "repo"},
                 "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                            "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]},
                 "rules": [{"paths": ["/source/data"]}]}
    });
    apply(&client, &ns, restore).await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    eventually(
        "the sidecar and the init-container in Deployment app",
        Duration::from_secs(60),
        || {
            let d = deployments.clone();
            async move {
                let d = d.get("app").await.ok()?;
                let pod = d.spec?.template.spec?;
                let sidecar = pod.containers.iter().any(|c| c.name == "stash");
                let init = pod
                    .init_containers
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.name == "stash-init");
                (sidecar && init).then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    lists.reset().await;
    let reconciled = workload_reconciles().await;
    // Each change of the RestoreSession reconciles the workload it targets; none changes the
    // workload's template, so nothing writes the workload (no webhook call).
    let restores = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "stash.appscode.com",
            "v1beta1",
            "RestoreSession",
        )),
    );
    for i in 0..5 {
        restores
            .patch(
                "rs",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"touched": i.to_string()}}})),
            )
            .await
            .expect("label the RestoreSession");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after = eventually(
        "five more workload reconciles",
        Duration::from_secs(30),
        || async move {
            let now = workload_reconciles().await;
            (now >= reconciled + 5.0).then_some(now)
        },
    )
    .await;
    let lists = lists.counted().await;
    println!(
        "LIST requests of the operator while reconciling a targeted workload {} times: {lists}",
        after - reconciled
    );
    assert_eq!(
        lists, 0.0,
        "the operator listed {lists} times in {ns} while reconciling a targeted Deployment"
    );
}
