//! The committed install manifest on the real kube-apiserver.
//!
//! * every object is accepted by a server-side dry-run apply with the real kubectl (the
//!   namespace is created first: a dry run persists nothing, so namespaced objects would
//!   otherwise find no namespace);
//! * the RBAC lint passes on what the file holds;
//! * the RBAC is applied for real and the operator's ServiceAccount (impersonated) can do what
//!   the operator does: create and bind the agents' narrow Roles (without `escalate` or `bind`:
//!   it holds what it grants), take its Lease, write its certificate Secret, patch its webhook
//!   configurations, and nothing it should not: no ClusterRole, no Role beyond what it holds,
//!   no Secret listing, no cluster-admin binding.
use std::path::{Path, PathBuf};

use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    rbac::v1::{ClusterRole, Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use stash_install::{InstallOptions, NAME, key, rbac_problems};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn committed() -> (PathBuf, Vec<Value>) {
    let path = root().join("deploy/install/stash-rs.yaml");
    let text = std::fs::read_to_string(&path)
        .expect("committed manifest (STASH_BLESS=1 cargo test -p stash-install --test generated)");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("parses");
    (path, docs.into_iter().filter(|d| !d.is_null()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_manifest_is_accepted_by_the_api_server() -> anyhow::Result<()> {
    let cp = stash_testenv::shared().await?;
    let (path, docs) = committed();
    let problems = rbac_problems(&docs);
    assert!(problems.is_empty(), "{problems:#?}");

    let ns = InstallOptions::default().namespace;
    cp.ensure_namespace(&ns).await?;
    let out = cp
        .kubectl()?
        .args([
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=stash-install",
            "-f",
        ])
        .arg(&path)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl apply --dry-run=server failed:\n{stdout}\n{stderr}"
    );
    let accepted: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("serverside-applied (server dry run)"))
        .collect();
    stash_testenv::report(&format!(
        "install: {}/{} objects accepted",
        accepted.len(),
        docs.len()
    ));
    for d in &docs {
        let kind = d["kind"].as_str().unwrap_or("").to_lowercase();
        let name = d["metadata"]["name"].as_str().unwrap_or("");
        assert!(
            accepted.iter().any(|l| l
                .split_whitespace()
                .next()
                .is_some_and(|r| r.starts_with(&kind) && r.ends_with(&format!("/{name}")))),
            "{} not accepted:\n{stdout}",
            key(d)
        );
    }
    assert_eq!(accepted.len(), docs.len(), "{stdout}");
    Ok(())
}

fn as_operator(cp: &stash_testenv::ControlPlane, ns: &str) -> Client {
    let mut config = cp.config().clone();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{NAME}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".into(),
    ]);
    Client::try_from(config).expect("impersonating client")
}

async fn can(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    ns: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: ns.map(String::from),
                name: name.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(r.status.is_some_and(|s| s.allowed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_service_account_has_exactly_what_it_needs() -> anyhow::Result<()> {
    let cp = stash_testenv::shared().await?;
    let ns = InstallOptions::default().namespace;
    cp.ensure_namespace(&ns).await?;
    let admin = cp.client();

    // Apply the ServiceAccount and the RBAC objects for real (not the webhooks or the
    // APIService: they would point the shared API server at a Service that does not exist).
    let (_, docs) = committed();
    let rbac_kinds = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let rbac: Vec<&Value> = docs
        .iter()
        .filter(|d| rbac_kinds.contains(&d["kind"].as_str().unwrap_or("")))
        .collect();
    let file = tempfile_path("rbac.yaml");
    let text: String = rbac
        .iter()
        .map(|d| format!("---\n{}", serde_saphyr::to_string(d).expect("yaml")))
        .collect();
    std::fs::write(&file, text)?;
    let out = cp
        .kubectl()?
        .args([
            "apply",
            "--server-side",
            "--field-manager=stash-install",
            "-f",
        ])
        .arg(&file)
        .output()?;
    assert!(
        out.status.success(),
        "apply RBAC: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let op = as_operator(cp, &ns);
    // What it does for every sidecar, restore init-container and Job: a narrow Role of its own
    // and its binding. It holds every permission it grants, so this needs neither `escalate`
    // nor `bind`.
    let user_ns = cp.namespace("install-rbac").await?;
    let pp = PatchParams::apply("stash-operator").force();
    let rules = stash_install::granted_rules();
    let n_rules = rules.len();
    stash_operator::rbac::grant(&op, &user_ns.name, "test-narrow", "sa", rules, None)
        .await
        .map_err(|e| anyhow::anyhow!("operator cannot grant its narrow Roles: {e}"))?;
    println!("rbac: the operator created and bound a Role of {n_rules} narrow rules");

    // Not a Role granting what it does not hold (listing Secrets).
    let rogue_role: Role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "stash-rogue", "namespace": user_ns.name},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    }))?;
    let denied = Api::<Role>::namespaced(op.clone(), &user_ns.name)
        .patch("stash-rogue", &pp, &Patch::Apply(&rogue_role))
        .await;
    assert!(
        matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 403),
        "a Role listing Secrets: {denied:?}"
    );

    // But not any other ClusterRole: neither edit one, nor bind cluster-admin.
    let rogue: ClusterRole = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "stash-rogue"}, "rules": [],
    }))?;
    let denied = Api::<ClusterRole>::all(op.clone())
        .patch("stash-rogue", &pp, &Patch::Apply(&rogue))
        .await;
    assert!(
        matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 403),
        "{denied:?}"
    );
    let admin_rb: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "escalate", "namespace": user_ns.name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": user_ns.name}],
    }))?;
    let denied = Api::<RoleBinding>::namespaced(op.clone(), &user_ns.name)
        .create(&PostParams::default(), &admin_rb)
        .await;
    assert!(
        matches!(denied, Err(kube::Error::Api(ref s)) if s.code == 403),
        "binding cluster-admin: {denied:?}"
    );

    // What the operator does elsewhere, and what it must not do.
    let n = Some(ns.as_str());
    let u = Some(user_ns.name.as_str());
    let webhook = Some("admission.stash.appscode.com");
    let expect = [
        (true, "create", "coordination.k8s.io", "leases", n, None),
        (
            true,
            "update",
            "coordination.k8s.io",
            "leases",
            n,
            Some("stash-operator"),
        ),
        // The agents' Leases are created empty by the operator (their Roles grant them by name).
        (true, "create", "coordination.k8s.io", "leases", u, None),
        (
            false,
            "escalate",
            "rbac.authorization.k8s.io",
            "roles",
            u,
            Some("x"),
        ),
        (
            false,
            "bind",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            Some("stash-sidecar"),
        ),
        (true, "create", "", "secrets", n, None),
        (
            true,
            "update",
            "",
            "secrets",
            n,
            Some("stash-operator-webhook-cert"),
        ),
        (false, "update", "", "secrets", n, Some("something-else")),
        (true, "get", "", "secrets", u, Some("storage")),
        (false, "list", "", "secrets", u, None),
        (false, "create", "", "secrets", u, None),
        (
            true,
            "patch",
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            None,
            webhook,
        ),
        (
            true,
            "patch",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
            webhook,
        ),
        (
            false,
            "patch",
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            None,
            Some("other"),
        ),
        (
            true,
            "patch",
            "apiregistration.k8s.io",
            "apiservices",
            None,
            Some("v1alpha1.repositories.stash.appscode.com"),
        ),
        (
            false,
            "patch",
            "apiregistration.k8s.io",
            "apiservices",
            None,
            Some("v1.apps"),
        ),
        (
            true,
            "get",
            "",
            "configmaps",
            Some("kube-system"),
            Some("extension-apiserver-authentication"),
        ),
        (
            true,
            "create",
            "authorization.k8s.io",
            "subjectaccessreviews",
            None,
            None,
        ),
        (true, "patch", "apps", "deployments", u, Some("app")),
        (false, "create", "apps", "deployments", u, None),
        (true, "create", "batch", "jobs", u, None),
        (true, "create", "batch", "cronjobs", u, None),
        (true, "delete", "", "pods", u, Some("p")),
        // The Snapshot API's reader Pods for local backends (created, their log read, deleted).
        (true, "create", "", "pods", u, None),
        (true, "get", "", "pods/log", u, Some("p")),
        (false, "create", "", "pods/exec", u, Some("p")),
        (
            true,
            "patch",
            "stash.appscode.com",
            "backupsessions/status",
            u,
            Some("s"),
        ),
        (
            true,
            "create",
            "stash.appscode.com",
            "functions",
            None,
            None,
        ),
        (true, "create", "events.k8s.io", "events", u, None),
        (false, "delete", "", "namespaces", None, Some("default")),
        (
            false,
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
            None,
        ),
    ];
    let mut wrong = Vec::new();
    for (want, verb, group, resource, ns, name) in expect {
        let got = can(&op, verb, group, resource, ns, name).await?;
        if got != want {
            wrong.push(format!(
                "{verb} {group}/{resource} ns={ns:?} name={name:?}: allowed={got}, want {want}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    println!(
        "rbac: {} access checks as the operator's ServiceAccount",
        expect.len()
    );
    drop(admin);
    Ok(())
}

fn tempfile_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stash-install-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}
