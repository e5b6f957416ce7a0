//! Issue 13 item 4 on the real cluster: only the API server may call the admission webhooks,
//! and a webhook outage is visible (docs/security.md, "Admission webhooks").
//!
//! - The test cluster gives kube-apiserver a client certificate for webhooks reached through a
//!   Service (`--admission-control-config-file`, user `*.svc`) and publishes its CA in the
//!   ConfigMap the install mounts. From inside the cluster's network, a POST of an
//!   `AdmissionReview` to each operator pod is refused without a client certificate and with
//!   one another CA signed, and answered with the API server's; the API server itself still
//!   gets the webhook's decision.
//! - When the trigger CronJob cannot create a BackupSession because a validating webhook with
//!   `failurePolicy: Fail` has no replica serving, the BackupConfiguration gets a Warning event
//!   `BackupSessionCreateFailed` and the pushgateway `stash_backupsession_create_failure 1` for
//!   that namespace and configuration; once the webhook answers again the next run creates the
//!   session and the metric is 0.
use stash_e2e as support;

use std::{path::Path, time::Duration};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, api::PostParams};
use serde_json::json;
use stash_crds::BackupSession;
use support::*;

/// The webhook port of the operator container.
const WEBHOOK_PORT: u16 = 8443;

/// An `AdmissionReview` creating a Repository the validating webhook refuses (names another
/// namespace: what a pod on the pod network would probe for).
fn review() -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "6a1c1f5e-7d1e-4a51-9d38-2f6f0c1e0001",
            "kind": {"group": "stash.appscode.com", "version": "v1alpha1", "kind": "Repository"},
            "resource": {"group": "stash.appscode.com", "version": "v1alpha1", "resource": "repositories"},
            "operation": "CREATE", "name": "probe", "namespace": "someone-else", "userInfo": {},
            "object": {"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
                       "metadata": {"name": "probe", "namespace": "someone-else"},
                       "spec": {"wipeOut": true, "backend": {"storageSecretName": "s",
                                "local": {"mountPath": "/safe/data", "hostPath": {"path": "/tmp/probe"}}}}}
        }
    })
    .to_string()
}

/// `curl` from inside the cluster's network namespace (where pod addresses are routed):
/// (exit code, stdout, stderr).
fn curl(url: &str, body: &Path, identity: Option<(&Path, &Path)>) -> (i32, String, String) {
    let mut cmd = stash_testenv::cluster::in_netns(Path::new("curl"));
    cmd.args(["-sS", "--max-time", "10", "-k", "-X", "POST"])
        .args(["-H", "Content-Type: application/json"])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()));
    if let Some((cert, key)) = identity {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd.arg(url).output().expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_port_answers_only_the_api_servers_client_certificate() {
    let env = env().await;
    let client = env.cp.client();
    // What the test cluster's admin published, and the install mounts.
    let cm = Api::<ConfigMap>::namespaced(client.clone(), OPERATOR_NS)
        .get("stash-webhook-client-auth")
        .await
        .expect("the cluster publishes the webhook client CA");
    let data = cm.data.unwrap_or_default();
    assert!(
        data.get("ca.crt")
            .is_some_and(|c| c.contains("BEGIN CERTIFICATE")),
        "ca.crt: {data:?}"
    );

    let pki = stash_testenv::cluster::state_dir().join("pki");
    let (api_cert, api_key) = (
        pki.join("webhook-client.crt"),
        pki.join("webhook-client.key"),
    );
    assert!(
        api_cert.exists() && api_key.exists(),
        "the API server's webhook client certificate"
    );
    let scratch = tempfile::tempdir().expect("scratch");
    let body = scratch.path().join("review.json");
    std::fs::write(&body, review()).expect("write review");
    // The same name as the API server's certificate, from a CA the operator does not trust.
    let other = stash_testenv::certs::Ca::new("not-the-webhook-client-ca")
        .expect("ca")
        .client(stash_testenv::cluster::config::WEBHOOK_CLIENT_CN, &[])
        .expect("client cert");
    let (other_cert, other_key) = (scratch.path().join("o.crt"), scratch.path().join("o.key"));
    std::fs::write(&other_cert, &other.cert).expect("write");
    std::fs::write(&other_key, &other.key).expect("write");

    let path = stash_admission::register::validating_hooks()
        .into_iter()
        .find(|h| h.decision == stash_admission::register::Decision::Validate("repository"))
        .expect("the Repository webhook")
        .path;
    let pods = operator_pods(&client).await;
    assert!(!pods.is_empty(), "operator pods");
    for pod in pods {
        let ip = pod
            .status
            .and_then(|s| s.pod_ip)
            .expect("an operator pod address");
        let url = format!("https://{ip}:{WEBHOOK_PORT}{path}");

        let (code, out, err) = curl(&url, &body, None);
        assert_ne!(code, 0, "no client certificate must be refused: {out}");
        assert!(
            !out.contains("wipe out"),
            "no decision for a caller without a certificate: {out}"
        );
        assert!(err.contains("alert"), "refused in the TLS handshake: {err}");

        let (code, out, err) = curl(&url, &body, Some((&other_cert, &other_key)));
        assert_ne!(code, 0, "another CA's certificate must be refused: {out}");
        assert!(!out.contains("wipe out"), "{out}");
        assert!(err.contains("alert"), "refused in the TLS handshake: {err}");

        let (code, out, err) = curl(&url, &body, Some((&api_cert, &api_key)));
        assert_eq!(code, 0, "the API server's certificate is answered: {err}");
        assert!(
            out.contains("wipe out operation is not supported for local backend"),
            "the decision: {out}"
        );
    }

    // The API server still reaches the webhooks (a dry-run create it must refuse).
    stash_admission::xray(&client, Duration::from_secs(60))
        .await
        .expect("the API server's calls are answered");
}

/// A validating webhook on this namespace's BackupSessions (`failurePolicy: Fail`) whose
/// Service has no replica serving: what the trigger meets during a webhook outage. Deleted
/// when dropped.
struct Outage {
    name: String,
}

impl Outage {
    async fn create(client: &Client, ns: &str) -> Self {
        let name = format!("stash-test-outage-{ns}");
        apply(
            client,
            ns,
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": name},
                "webhooks": [{
                    "name": "outage.stash-rs.test",
                    "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                    "rules": [{"apiGroups": ["stash.appscode.com"], "apiVersions": ["*"],
                               "operations": ["CREATE"], "resources": ["backupsessions"], "scope": "Namespaced"}],
                    "clientConfig": {"service": {"namespace": ns, "name": "no-replica-serving", "port": 443}},
                }],
            }),
        )
        .await;
        Self { name }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if let Some(cp) = stash_testenv::shared_now()
            && let Ok(mut k) = cp.kubectl()
        {
            let _ = k
                .args([
                    "delete",
                    "validatingwebhookconfiguration",
                    &self.name,
                    "--ignore-not-found",
                ])
                .output();
        }
    }
}

/// May a BackupSession be created in `ns` now (a dry run)? The error text otherwise.
async fn can_create_session(client: &Client, ns: &str) -> Result<(), String> {
    let s: BackupSession = serde_json::from_value(json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "dry-run", "namespace": ns,
                     "labels": {"stash.appscode.com/backup-configuration": "app-backup"}},
        "spec": {"backupConfiguration": {"name": "app-backup"}}
    }))
    .expect("session");
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<BackupSession>::namespaced(client.clone(), ns)
        .create(&pp, &s)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Run the trigger CronJob now as Job `job`; whether it succeeded.
async fn trigger(client: &Client, ns: &str, job: &str) -> bool {
    let st = run_trigger_job(client, ns, "app-backup", job).await;
    st.conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Complete" && c.status == "True")
}

/// The value of `stash_backupsession_create_failure` for `ns`/`bc` in the pushgateway.
async fn create_failure(ns: &str, bc: &str) -> Option<String> {
    pushgateway_metrics().await.lines().find_map(|l| {
        (l.starts_with("stash_backupsession_create_failure{")
            && l.contains(&format!("namespace=\"{ns}\""))
            && l.contains(&format!("BackupConfiguration=\"{bc}\"")))
        .then(|| l.rsplit(' ').next().unwrap_or_default().to_string())
    })
}

/// Wait until the pushgateway shows `stash_backupsession_create_failure` = `want` for `ns`/`bc`.
async fn wait_create_failure(ns: &str, bc: &str, want: &str) {
    eventually(
        &format!("stash_backupsession_create_failure {want} for {ns}/{bc} in the pushgateway"),
        Duration::from_secs(60),
        || async move { create_failure(ns, bc).await.filter(|v| v == want) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_outage_is_an_event_and_a_metric() {
    let env = env().await;
    let f = fixture_with_password("outage", "outage-test-password-5c1e").await;
    let ns = f.ns.name.clone();
    let client = env.cp.client();
    // A schedule that does not fire during the test: the Jobs are created from the CronJob.
    let bc = deployment_backup_configuration("app", "repo", "0 0 1 1 *", json!({}));
    apply_with_trigger(&client, &ns, bc).await;

    let outage = Outage::create(&client, &ns).await;
    let refusal = eventually(
        "the API server to call the unserved webhook",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move { can_create_session(&client, &ns).await.err() }
        },
    )
    .await;
    assert!(refusal.contains("no-replica-serving"), "{refusal}");

    assert!(
        !trigger(&client, &ns, "during-outage").await,
        "the trigger Job fails while no webhook answers"
    );
    let ev = wait_event(
        &client,
        &ns,
        "app-backup",
        "BackupSessionCreateFailed",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(ev.type_, "Warning", "{ev:?}");
    assert!(
        ev.note.contains("could not create a BackupSession")
            && ev.note.contains("no-replica-serving"),
        "the event names the cause: {ev:?}"
    );
    wait_create_failure(&ns, "app-backup", "1").await;
    assert!(
        backup_sessions(&client, &ns).await.is_empty(),
        "no BackupSession was created during the outage"
    );

    // The webhook answers again: the next run creates the session and clears the metric.
    drop(outage);
    eventually(
        "BackupSessions to be admitted again",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move { can_create_session(&client, &ns).await.ok() }
        },
    )
    .await;
    assert!(
        trigger(&client, &ns, "after-outage").await,
        "the trigger Job succeeds once the webhook answers"
    );
    assert_eq!(
        backup_sessions(&client, &ns).await.len(),
        1,
        "the run after the outage created its session"
    );
    wait_create_failure(&ns, "app-backup", "0").await;
}
