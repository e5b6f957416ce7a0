//! PodSecurity `restricted` end to end (issue 26), on the real cluster whose API server enforces
//! the namespace label `pod-security.kubernetes.io/enforce`:
//!
//! * a compliant application (non-root uid 1000, no capabilities, no privilege escalation,
//!   RuntimeDefault seccomp, its data written by itself on its own volume) with an S3
//!   repository (MinIO over HTTPS with a private CA): the injected sidecar runs as the
//!   application's user without capabilities, the backup succeeds and restic's own view of the
//!   repository holds the files with their owner; the restore init-container brings the data
//!   back into the replaced pod's empty volume byte for byte, owned by the application's user, and no pod is ever refused;
//! * the same namespace kind with a hostPath Repository: the BackupConfiguration and the
//!   RestoreSession are refused at admission with the reason (the level, the hostPath), and
//!   the workload is left exactly as it was written.
use stash_e2e as support;

use std::{os::unix::fs::MetadataExt, path::Path, time::Duration};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Namespace, Pod, SecurityContext},
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use stash_crds::{BackupConfiguration, RestoreSession};
use support::{minio::*, *};

const PASSWORD: &str = "restricted-test-password";
/// The application's user and group.
const APP_UID: u32 = 1000;

/// A new namespace `<prefix>-<random>` labelled to enforce PodSecurity `restricted` (latest), and
/// proof that the API server enforces it there: a pod with the defaults (root, capabilities,
/// privilege escalation, no seccomp profile) is refused (server-side dry run).
async fn restricted_namespace(prefix: &str) -> stash_testenv::TestNamespace {
    let env = env().await;
    let client = env.cp.client();
    let ns = env.cp.namespace(prefix).await.expect("namespace");
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest"
            }}})),
        )
        .await
        .expect("label the namespace");
    let root_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "root-probe"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                                 "command": ["sleep", "1"]}]}
    }))
    .expect("pod");
    let err = Api::<Pod>::namespaced(client, &ns.name)
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &root_pod,
        )
        .await
        .expect_err("a root pod is refused in a restricted namespace");
    assert!(
        err.to_string()
            .contains("violates PodSecurity \"restricted:latest\""),
        "the API server enforces restricted in {}: {err}",
        ns.name
    );
    ns
}

/// A one-replica Deployment `name` that PodSecurity `restricted` admits: uid/gid 1000, fsGroup
/// 1000, RuntimeDefault seccomp, no privilege escalation, every capability dropped; an emptyDir
/// at `/source/data` that the application fills with `files` files ([`app_command`]).
fn compliant_deployment(name: &str, files: usize) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": APP_UID, "runAsGroup": APP_UID,
                                                           "fsGroup": APP_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                                       "containers": [{"name": "app", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                                                       "command": ["sh", "-c", app_command(files)],
                                                       "securityContext": {"allowPrivilegeEscalation": false,
                                                                           "capabilities": {"drop": ["ALL"]}},
                                                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                       "volumes": [{"name": "data", "emptyDir": {}}]}}}
    })
}

/// What the application (uid 1000) runs: on an empty volume it writes its data — `count` files
/// of 4 KiB, one private file (0600: umask 077) in a private directory (0700), a README
/// (umask 022) last — and leaves data it finds (restored) alone.
fn app_command(count: usize) -> String {
    format!(
        "cd /source/data && if [ ! -e README ]; then \
           for i in $(seq 1 {count}); do head -c 4096 /dev/urandom > file-$i; done \
           && (umask 077; mkdir private && echo 'only uid 1000 reads this' > private/secret.txt) \
           && echo 'the application' > README.tmp && mv README.tmp README; fi; exec sleep 3600"
    )
}

/// Every entry under `dir` (the volume's root is the kubelet's) has the application's owner
/// and group; the number of entries.
fn assert_owned_by_app(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).expect("stat");
        assert_eq!(
            (m.uid(), m.gid()),
            (APP_UID, APP_UID),
            "owner of {}",
            p.display()
        );
        n += 1;
        if m.is_dir() {
            n += assert_owned_by_app(&p);
        }
    }
    n
}

/// An agent's security context as the API server stored it in the pod: the application's user
/// and group, runAsNonRoot, no privilege escalation, RuntimeDefault seccomp (its own or the
/// pod's), every capability dropped and none added.
fn assert_app_identity(pod: &Pod, container: &str, sc: Option<&SecurityContext>) {
    let what = format!(
        "{container} in pod {}",
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    let sc = sc.unwrap_or_else(|| panic!("{what} has a securityContext"));
    assert_eq!(sc.run_as_user, Some(APP_UID.into()), "{what}: {sc:?}");
    assert_eq!(sc.run_as_group, Some(APP_UID.into()), "{what}: {sc:?}");
    assert_eq!(sc.run_as_non_root, Some(true), "{what}: {sc:?}");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}: {sc:?}");
    assert_ne!(sc.privileged, Some(true), "{what}: {sc:?}");
    let caps = sc
        .capabilities
        .as_ref()
        .unwrap_or_else(|| panic!("{what} sets capabilities: {sc:?}"));
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{what}: {sc:?}");
    assert!(
        caps.add.as_ref().is_none_or(|a| a.is_empty()),
        "{what} adds no capability: {sc:?}"
    );
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|s| s.seccomp_profile.as_ref())
        })
        .map(|p| p.type_.as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"), "{what}: {sc:?}");
}

/// No pod of `ns` was refused: no `FailedCreate` event (what a ReplicaSet reports when the API
/// server refuses its pod), no `PodSecurityRefused`, and no ReplicaSet with a `ReplicaFailure`
/// condition. The number of ReplicaSets (one per rollout).
async fn assert_no_pod_rejected(client: &Client, ns: &str) -> usize {
    let events = events_in(client, ns).await;
    let refused: Vec<&EventView> = events
        .iter()
        .filter(|e| e.reason == "FailedCreate" || e.reason == "PodSecurityRefused")
        .collect();
    assert!(refused.is_empty(), "pods refused in {ns}: {refused:#?}");
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list replicasets")
        .items;
    for rs in &sets {
        let failures: Vec<_> = rs
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ == "ReplicaFailure")
            .collect();
        assert!(
            failures.is_empty(),
            "ReplicaSet {:?}: {failures:?}",
            rs.metadata.name
        );
    }
    sets.len()
}

/// Issue 26: in a namespace enforcing `restricted`, a compliant application's sidecar backup to
/// MinIO and its init-container restore both work, as the application's own user, and no pod is
/// refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_compliant_application_is_backed_up_and_restored_under_restricted() {
    let env = env().await;
    let client = env.cp.client();
    let guard = restricted_namespace("restricted-s3").await;
    let ns = guard.name.clone();

    // MinIO over HTTPS with a private CA; Secret and Repository `repo` at bucket/app.
    let certs = tempfile::tempdir().expect("certs");
    let ca = private_ca(certs.path(), &[stash_testenv::NODE_IP]);
    let store = tempfile::tempdir().expect("minio data");
    let bucket = "stash-restricted";
    let port = minio(certs.path(), store.path(), bucket, &[]).await;
    let endpoint = format!("https://{}:{port}", stash_testenv::NODE_IP);
    minio_repository(&client, &ns, &endpoint, bucket, "app", &ca, PASSWORD).await;
    let url = format!("s3:{endpoint}/{bucket}/app");
    let cacert = certs.path().join("ca.crt");
    let host = || minio_restic(&url, PASSWORD, &cacert);

    // The application, then its BackupConfiguration: admitted, the sidecar injected and Ready.
    apply(&client, &ns, compliant_deployment("app", 24)).await;
    sidecar_backup(&client, &ns, "app", "repo", json!({})).await;
    // The data the application wrote in the pod that runs the sidecar.
    let data = app_volume(env.cp, &client, &ns, "app=app", "stash").await;
    let original = checksums(&data);
    assert_eq!(original.len(), 26, "24 files, the private one, the README");
    let pods = live_pods(&client, &ns, "app=app").await;
    let sidecar_pod = pods
        .iter()
        .find(|p| {
            p.spec
                .as_ref()
                .is_some_and(|s| s.containers.iter().any(|c| c.name == "stash"))
        })
        .unwrap_or_else(|| panic!("a pod of app with the sidecar: {pods:#?}"));
    let sidecar = sidecar_pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == "stash"))
        .expect("sidecar");
    assert_app_identity(sidecar_pod, "stash", sidecar.security_context.as_ref());

    // A backup through the sidecar.
    let s = run_backup_session(
        &client,
        &ns,
        "app-backup",
        "backup-1",
        Duration::from_secs(150),
    )
    .await;
    let status = s.status.clone().expect("status");
    let short = status.stats[0].snapshots[0]
        .name
        .clone()
        .expect("snapshot name");
    // Restic on the host looks once the agent is done with the repository.
    let rstatus = wait_repository_status(&client, &ns).await;
    assert_eq!(rstatus.snapshot_count, Some(1), "{rstatus:?}");

    // restic's own view: the snapshot, and every file with the application's owner.
    assert_only_snapshot(&restic_snapshots_of(host()), "host-0", &short);
    let nodes = restic_ls_of(host(), &short);
    let files: std::collections::BTreeSet<String> = nodes
        .iter()
        .filter(|n| n["type"] == "file")
        .filter_map(|n| n["path"].as_str()?.strip_prefix("/source/data/"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        files,
        original.keys().cloned().collect(),
        "restic lists every file of the application"
    );
    // Every entry the application wrote (the volume's root is the kubelet's).
    for n in nodes.iter().filter(|n| {
        n["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/source/data/"))
    }) {
        assert_eq!(
            (n["uid"].as_u64(), n["gid"].as_u64()),
            (Some(APP_UID.into()), Some(APP_UID.into())),
            "owner recorded for {n}"
        );
    }
    let secret = nodes
        .iter()
        .find(|n| n["path"] == "/source/data/private/secret.txt")
        .expect("the private file in the snapshot");
    assert_eq!(secret["mode"].as_u64().map(|m| m & 0o777), Some(0o600));

    // Lose the data (the restore replaces the pod: a new, empty volume); restore it through
    // the init-container. (Succeeded: the pods' logs are printed otherwise.)
    restore_deployment(&client, &ns, "restore", "app").await;
    let data = app_volume(env.cp, &client, &ns, "app=app", "stash-init").await;
    assert_eq!(checksums(&data), original, "restored bytes differ");
    let entries = assert_owned_by_app(&data);
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").mode() & 0o777;
    assert_eq!(mode(&data.join("private")), 0o700);
    assert_eq!(mode(&data.join("private").join("secret.txt")), 0o600);

    // The init-container ran as the application's user, without capabilities, and exited 0
    // (the pod's status catches up with the agent's report).
    let restored_pod = wait_ready_pod_with(
        &client,
        &ns,
        "app=app",
        "stash-init",
        Duration::from_secs(90),
    )
    .await;
    let init = restored_pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "stash-init"))
        .expect("stash-init");
    assert_app_identity(&restored_pod, "stash-init", init.security_context.as_ref());
    let init_state = restored_pod
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|s| s.iter().find(|c| c.name == "stash-init"))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    assert_eq!(
        init_state,
        Some(0),
        "stash-init exited 0: {:?}",
        restored_pod.status
    );

    // Nothing was refused on the way: three rollouts (as written, with the sidecar, with the
    // init-container), every pod created.
    let sets = assert_no_pod_rejected(&client, &ns).await;
    assert!(sets >= 3, "a ReplicaSet per rollout: {sets}");
    assert_no_illegal_transitions().await;
    stash_testenv::report(&format!(
        "restricted namespace: backup {short} of {} files as uid {APP_UID} to MinIO, restored \
         {entries} entries owned by uid {APP_UID}, {sets} ReplicaSets, no pod refused",
        original.len()
    ));
}

/// Issue 26: a hostPath Repository cannot serve a namespace enforcing `restricted` (the agents
/// would mount a hostPath volume): the BackupConfiguration and the RestoreSession are refused
/// at admission with the reason, and the workload stays as it was written.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostpath_repository_is_refused_under_restricted() {
    let env = env().await;
    let client = env.cp.client();
    let guard = restricted_namespace("restricted-hostpath").await;
    let ns = guard.name.clone();

    let repo_dir = env.cp.dir().join("repos").join(&ns);
    std::fs::create_dir_all(&repo_dir).expect("repo dir");
    hostpath_repository(&client, &ns, &repo_dir, PASSWORD).await;
    apply(&client, &ns, compliant_deployment("app", 6)).await;
    wait_rolled_out(
        &client,
        &ns,
        Workload::Deployment("app", 1),
        Injected::Nothing,
        Duration::from_secs(90),
    )
    .await;
    let data = app_volume(env.cp, &client, &ns, "app=app", "app").await;
    let original = checksums(&data);
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let before = deployments.get("app").await.expect("deployment");

    // Refused at admission, with the level and the hostPath.
    let refused = |what: &str, r: Result<serde_json::Value, kube::Error>| {
        let err = match r {
            Ok(o) => panic!("{what} admitted in a restricted namespace: {o}"),
            Err(kube::Error::Api(e)) => e,
            Err(e) => panic!("{what}: not an admission refusal: {e}"),
        };
        for needle in [
            "denied the request",
            "forbids hostPath",
            "\"restricted\"",
            &repo_dir.to_string_lossy(),
        ] {
            assert!(
                err.message.contains(needle),
                "{what}: the refusal says {needle:?}: {err:?}"
            );
        }
        assert!(err.code == 400 || err.code == 403, "{what}: {err:?}");
        eprintln!("{what} refused: {}", err.message);
    };
    let pp = PatchParams::apply("stash-e2e").force();
    let bcs = Api::<BackupConfiguration>::namespaced(client.clone(), &ns);
    let bc = deployment_backup_configuration("app", "repo", "0 0 1 1 *", json!({}));
    refused(
        "BackupConfiguration app-backup",
        bcs.patch("app-backup", &pp, &Patch::Apply(&bc))
            .await
            .map(|o| json!(o.metadata)),
    );
    let restores = Api::<RestoreSession>::namespaced(client.clone(), &ns);
    let rs = json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "restore"},
        "spec": {"repository": {"name": "repo"},
                 "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                            "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]},
                 "rules": [{"paths": ["/source/data"]}]}
    });
    refused(
        "RestoreSession restore",
        restores
            .patch("restore", &pp, &Patch::Apply(&rs))
            .await
            .map(|o| json!(o.metadata)),
    );

    // Nothing was stored, and the workload is untouched (as written, no new rollout, no agent).
    assert!(bcs.get_opt("app-backup").await.expect("get").is_none());
    assert!(restores.get_opt("restore").await.expect("get").is_none());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = deployments.get("app").await.expect("deployment");
    assert_eq!(after.metadata.generation, before.metadata.generation);
    assert_eq!(after.metadata.generation, Some(1), "never changed");
    let spec = after
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("template");
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app"], "no stash container");
    assert!(
        spec.init_containers.as_ref().is_none_or(|c| c.is_empty()),
        "no init-container: {:?}",
        spec.init_containers
    );
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["data"], "no extra volume");
    assert_eq!(
        serde_json::to_value(&after.spec).expect("json"),
        serde_json::to_value(&before.spec).expect("json"),
        "the Deployment's spec is as written"
    );
    for p in live_pods(&client, &ns, "app=app").await {
        let names: Vec<String> = p
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
            .collect();
        assert_eq!(names, ["app"], "the running pod has no agent");
    }
    assert_no_pod_rejected(&client, &ns).await;
    assert_eq!(
        checksums(&data),
        original,
        "the application's data untouched"
    );
    assert!(
        std::fs::read_dir(&repo_dir)
            .expect("repo dir")
            .next()
            .is_none(),
        "nothing was written to the hostPath"
    );
}
