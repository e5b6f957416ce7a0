//! Least privilege that holds, on the real cluster (docs/security.md).
//!
//! A namespace user who may create BackupConfigurations, BackupSessions, RestoreSessions and
//! Pods but not read Secrets drives a sidecar backup, a job-model backup and a restore. Then,
//! with SubjectAccessReviews answered by the API server: no ServiceAccount the operator
//! created or bound may read any Secret of the namespace (none of these components needs one:
//! the storage Secret reaches the pods as a volume), nor list them, nor write another
//! session's status or take another Lease; `default` is bound to nothing; and the user can read
//! no Secret, nor get a token of any of those accounts.
use stash_e2e as support;

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::{Secret, ServiceAccount},
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use serde_json::json;
use stash_crds::{backup_session::Phase, restore_session::Phase as RestorePhase};
use support::*;

const PASSWORD: &str = "security-test-password-7f3a";
const USER: &str = "alice@example.com";

/// The API server's answer: may `user` (with `groups`) do `verb` on `resource`/`name`?
async fn allowed(
    client: &Client,
    (user, groups): (&str, &[String]),
    ns: &str,
    verb: &str,
    group: &str,
    resource: &str,
    name: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.into()),
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                name: name.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .expect("status")
        .allowed
}

fn sa_groups(ns: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".into(),
    ]
}

/// A client acting as [`USER`].
fn as_user(cp: &stash_testenv::ControlPlane) -> Client {
    let mut config = cp.config().clone();
    config.auth_info.impersonate = Some(USER.into());
    config.auth_info.impersonate_groups = Some(vec!["system:authenticated".into()]);
    Client::try_from(config).expect("impersonating client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_account_the_operator_binds_can_read_a_secret() {
    let env = env().await;
    let admin = env.cp.client();
    let f = fixture_with_password("security", PASSWORD).await;
    let ns = f.ns.name.clone();
    // Secrets the components must not read: the storage Secret and an unrelated one.
    apply(
        &admin,
        &ns,
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unrelated"},
            "stringData": {"token": "security-unrelated-token-91c2"}
        }),
    )
    .await;
    // The namespace user: stash objects and Pods, no Secrets.
    apply(&admin, &ns, json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "backup-user"},
        "rules": [
            {"apiGroups": ["stash.appscode.com"], "resources": ["backupconfigurations", "backupsessions", "restoresessions"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]}
        ]
    }))
    .await;
    apply(&admin, &ns, json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "backup-user"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "backup-user"},
        "subjects": [{"kind": "User", "name": USER, "apiGroup": "rbac.authorization.k8s.io"}]
    }))
    .await;
    let user = as_user(env.cp);

    // 1. A sidecar backup of a Deployment (workload by the admin, stash objects by the user).
    let source = pv_dir(&ns, "app-data").await;
    generate_files(&source, 3, 10, 2000);
    deployment_with_pvc(&admin, &ns, "app", "app-data").await;
    apply(
        &user,
        &ns,
        deployment_backup_configuration("app", "repo", "0 0 1 1 *", json!({})),
    )
    .await;
    wait_sidecar_ready(&admin, &ns, "app", Duration::from_secs(180)).await;
    create_backup_session(&user, &ns, "app-backup", "app-backup-1").await;
    wait_session_ends(
        &admin,
        &ns,
        "app-backup-1",
        Phase::Succeeded,
        Duration::from_secs(180),
    )
    .await;

    // 2. A job-model backup of a PVC.
    generate_files(&pv_dir(&ns, "job-data").await, 4, 10, 2000);
    apply(&admin, &ns, json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "job-data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .await;
    apply(
        &user,
        &ns,
        pvc_backup_configuration("pvc-backup", "job-data", json!({})),
    )
    .await;
    create_backup_session(&user, &ns, "pvc-backup", "pvc-backup-1").await;
    wait_session_ends(
        &admin,
        &ns,
        "pvc-backup-1",
        Phase::Succeeded,
        Duration::from_secs(180),
    )
    .await;

    // 3. A restore into the Deployment (the restore init-container).
    apply(&user, &ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "app-restore"},
        "spec": {"repository": {"name": "repo"},
                 "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                            "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]},
                 "rules": [{"paths": ["/source/data"]}]}
    }))
    .await;
    wait_session_ends(
        &admin,
        &ns,
        "app-restore",
        RestorePhase::Succeeded,
        Duration::from_secs(180),
    )
    .await;

    // Every ServiceAccount the operator created (owned by a stash object or a workload it
    // injected into) and every subject of a RoleBinding it manages.
    let mut subjects: BTreeSet<String> = BTreeSet::new();
    let bindings = Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=stash.appscode.com"))
        .await
        .expect("rolebindings");
    let mut kinds = BTreeSet::new();
    for rb in &bindings {
        assert_eq!(
            rb.role_ref.kind,
            "Role",
            "{}: {:?}",
            rb.name_any(),
            rb.role_ref
        );
        kinds.insert(rb.name_any());
        for s in rb.subjects.iter().flatten() {
            assert_eq!(s.kind, "ServiceAccount", "{s:?}");
            subjects.insert(s.name.clone());
        }
    }
    for sa in Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("serviceaccounts")
    {
        if !sa.owner_references().is_empty() {
            subjects.insert(sa.name_any());
        }
    }
    println!("security: operator bindings {kinds:?}; subjects {subjects:?}");
    assert!(
        !subjects.contains("default"),
        "the operator bound a role to default: {subjects:?}"
    );
    // The cron job, sidecar, restore init-container and backup Job each have their binding.
    for want in [
        "app-backup",
        "deployment-app-stash-sidecar",
        "deployment-app-stash-restore-init-container",
        "pvc-backup",
        "pvc-backup-stash-backup-job",
    ] {
        assert!(kinds.contains(want), "no binding {want}: {kinds:?}");
    }

    let secrets: Vec<String> = Api::<Secret>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("secrets")
        .into_iter()
        .map(|s| s.name_any())
        .collect();
    assert!(secrets.contains(&"local-secret".to_string()) && secrets.len() >= 2);

    // Subject × Secret: get, update, delete — all denied (none of them needs a Secret).
    let groups = sa_groups(&ns);
    let mut checks = 0;
    let mut granted = Vec::new();
    for sa in &subjects {
        let who = format!("system:serviceaccount:{ns}:{sa}");
        for secret in &secrets {
            for verb in ["get", "update", "delete"] {
                checks += 1;
                if allowed(
                    &admin,
                    (&who, &groups),
                    &ns,
                    verb,
                    "",
                    "secrets",
                    Some(secret),
                )
                .await
                {
                    granted.push(format!("{sa} may {verb} Secret {secret}"));
                }
            }
        }
        for verb in ["list", "watch", "create"] {
            if allowed(&admin, (&who, &groups), &ns, verb, "", "secrets", None).await {
                granted.push(format!("{sa} may {verb} Secrets"));
            }
        }
        // Nothing beyond its own objects: another session's status, another Lease.
        for (verb, res, name) in [
            ("update", "backupsessions/status", "someone-else-1"),
            ("update", "restoresessions/status", "someone-else"),
            ("update", "coordination.k8s.io/leases", "someone-else"),
            ("create", "coordination.k8s.io/leases", ""),
        ] {
            let (group, res) = match res.split_once("/leases") {
                Some((g, _)) => (g, "leases"),
                None => ("stash.appscode.com", res),
            };
            let name = (!name.is_empty()).then_some(name);
            if allowed(&admin, (&who, &groups), &ns, verb, group, res, name).await {
                granted.push(format!("{sa} may {verb} {res} {name:?}"));
            }
        }
    }
    // The user: no Secret directly, no token of any of those accounts, no impersonation.
    let user_groups = vec!["system:authenticated".to_string()];
    for secret in &secrets {
        checks += 1;
        if allowed(
            &admin,
            (USER, &user_groups),
            &ns,
            "get",
            "",
            "secrets",
            Some(secret),
        )
        .await
        {
            granted.push(format!("the user may get Secret {secret}"));
        }
    }
    for sa in &subjects {
        for (verb, res) in [
            ("create", "serviceaccounts/token"),
            ("impersonate", "serviceaccounts"),
        ] {
            if allowed(&admin, (USER, &user_groups), &ns, verb, "", res, Some(sa)).await {
                granted.push(format!("the user may {verb} {res} {sa}"));
            }
        }
    }
    let pairs = subjects.len() * secrets.len();
    println!(
        "security: {} subjects × {} Secrets = {pairs} pairs; {checks} Secret checks (get/update/delete per pair, plus the user's get per Secret), all denied: {}",
        subjects.len(),
        secrets.len(),
        granted.is_empty()
    );
    assert!(granted.is_empty(), "{granted:#?}");
    assert_eq!(checks, pairs * 3 + secrets.len());
    assert!(subjects.len() >= 3, "{subjects:?}");

    // And the checks can say yes: the sidecar's account may write its own Repository's status.
    let sidecar = format!("system:serviceaccount:{ns}:deployment-app-stash");
    assert!(
        allowed(
            &admin,
            (&sidecar, &groups),
            &ns,
            "update",
            "stash.appscode.com",
            "repositories/status",
            Some("repo")
        )
        .await
    );
}

const LEAK_PASSWORD: &str = "log-leak-test-password-c41d";
const LEAK_TOKEN: &str = "log-leak-test-token-8e2b";

/// Values worth searching for: long enough not to occur by chance, not a bare word.
fn needle(v: &str) -> Option<String> {
    let v = v.trim();
    // Words and environment variable names (`AWS_ACCESS_KEY_ID`, which the operator's messages
    // name) are not secrets; other tests running beside this one keep such values in Secrets.
    let generic = v.chars().all(|c| c.is_ascii_lowercase())
        || v.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if v.len() < 8 || generic || v.starts_with("-----BEGIN CERTIFICATE") {
        return None;
    }
    if v.starts_with("-----BEGIN") {
        // A private key: its first body line is unique and is what a log would show.
        return v.lines().nth(1).map(str::to_string);
    }
    Some(v.to_string())
}

/// Every password, key and token the suite uses: the constants and `stringData` values of the
/// test sources, and every Secret now in the cluster.
async fn suite_secrets(admin: &Client) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let keys = [
        "\"RESTIC_PASSWORD\"",
        "\"AWS_SECRET_ACCESS_KEY\"",
        "\"POSTGRES_PASSWORD\"",
        "\"password\"",
        "\"token\"",
        "\"AZURE_ACCOUNT_KEY\"",
    ];
    // The first string literal after `at` on the same line.
    let literal = |line: &str, at: usize| -> Option<String> {
        let rest = &line[at..];
        let start = rest.find('"')? + 1;
        let len = rest[start..].find('"')?;
        Some(rest[start..start + len].to_string())
    };
    for entry in std::fs::read_dir(&tests).expect("tests dir").flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let l = line.trim_start();
            if let Some(rest) = l.strip_prefix("const ")
                && let Some((name, _)) = rest.split_once(": &str =")
                && ["PASSWORD", "SECRET", "TOKEN", "KEY"]
                    .iter()
                    .any(|k| name.contains(k))
            {
                out.extend(literal(line, line.find("=").unwrap_or(0)).and_then(|v| needle(&v)));
            }
            for k in keys {
                let mut from = 0;
                while let Some(i) = line[from..].find(k) {
                    let after = from + i + k.len();
                    if line[after..].trim_start().starts_with(':') {
                        let colon = after + line[after..].find(':').unwrap_or(0) + 1;
                        out.extend(literal(line, colon).and_then(|v| needle(&v)));
                    }
                    from = after;
                }
            }
        }
    }
    for s in Api::<Secret>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .expect("secrets")
    {
        for (k, v) in s.data.unwrap_or_default() {
            // Identifiers kept beside credentials are not secrets (a GCS project id such as
            // `stash-e2e` is also a bucket name other tests' operator logs rightly show).
            if k.ends_with("_ID") || k.contains("PROJECT") {
                continue;
            }
            out.extend(needle(&String::from_utf8_lossy(&v.0)));
        }
    }
    out
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_log() {
    let env = env().await;
    let admin = env.cp.client();
    let f = fixture_with_password("logleak", LEAK_PASSWORD).await;
    let ns = f.ns.name.clone();
    apply(
        &admin,
        &ns,
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-token"},
            "stringData": {"token": LEAK_TOKEN}
        }),
    )
    .await;
    // A job-model backup and a job-model restore, so agents, Jobs and the operator all log.
    generate_files(&pv_dir(&ns, "leak-data").await, 5, 10, 2000);
    for claim in ["leak-data", "leak-restored"] {
        apply(&admin, &ns, json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .await;
    }
    apply(
        &admin,
        &ns,
        pvc_backup_configuration("leak", "leak-data", json!({})),
    )
    .await;
    run_backup_session(&admin, &ns, "leak", "leak-1", Duration::from_secs(180)).await;
    apply(&admin, &ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "leak-restore"},
        "spec": {"repository": {"name": "repo"}, "task": {"name": "pvc-restore"},
                 "target": {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "leak-restored"},
                            "volumeMounts": [{"name": "target-volume", "mountPath": "/source/data"}]},
                 "rules": [{"paths": ["/source/data"]}]}
    }))
    .await;
    wait_terminal::<RestorePhase>(&admin, &ns, "leak-restore", Duration::from_secs(180)).await;

    let secrets = suite_secrets(&admin).await;
    assert!(
        secrets.contains(LEAK_PASSWORD) && secrets.contains(LEAK_TOKEN),
        "{} secrets",
        secrets.len()
    );
    // Every container log on the node (operator, pushgateway, agents, Jobs, user pods), and
    // the operator's through the API too.
    let mut logs = Vec::new();
    files(std::path::Path::new("/var/log/pods"), &mut logs);
    let mut texts: Vec<(String, String)> = logs
        .iter()
        .filter_map(|p| {
            let bytes = std::fs::read(p).ok()?;
            Some((
                p.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ))
        })
        .collect();
    texts.push(("kubectl logs (leak namespace)".into(), pod_logs(&ns, "")));
    let pods_seen: BTreeSet<String> = logs
        .iter()
        .filter_map(|p| p.strip_prefix("/var/log/pods").ok()?.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    assert!(
        pods_seen
            .iter()
            .any(|p| p.starts_with(&format!("{ns}_stash-backup-leak-1")))
            && pods_seen
                .iter()
                .any(|p| p.starts_with("stash-system_stash-operator")),
        "{pods_seen:?}"
    );
    let bytes: usize = texts.iter().map(|(_, t)| t.len()).sum();
    let mut found = Vec::new();
    for (file, text) in &texts {
        for s in &secrets {
            if text.contains(s.as_str()) {
                found.push(format!("{file}: {}…", &s[..4]));
            }
        }
    }
    println!(
        "log-leak: {} log files of {} pods ({bytes} bytes) searched for {} secrets: {} found",
        texts.len(),
        pods_seen.len(),
        secrets.len(),
        found.len()
    );
    assert!(found.is_empty(), "{found:#?}");
}
