//! Reading (and forgetting snapshots of) a `local` backend the operator cannot see: a
//! short-lived Pod in the Repository's namespace mounts the backend's volume (hostPath, PVC,
//! NFS, … exactly as the Repository says), runs `restic snapshots --json --no-lock` (or
//! `restic forget --prune <id>`) from the operator's image and exits; the catalog reads the
//! result from the Pod's log and deletes the Pod.
//!
//! The password reaches restic through `secretKeyRef` (never the Pod's arguments or the
//! operator's logs); the Pod has no service-account token, a read-only root filesystem and
//! mounts the volume read-only.
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams},
};
use stash_crds::{BackendKind, Repository};
use stash_restic as restic;
use stash_runtime::pods;

/// The label every reader Pod carries (`stash.appscode.com/snapshot-reader=<repository>`).
pub const LABEL: &str = "stash.appscode.com/snapshot-reader";

/// The value of [`LABEL`] for a Repository: its name when it fits a label value (≤ 63
/// characters), else its head and a hash of the whole — a Repository's name may be up to 253
/// characters, and one too long for a label made every reader Pod of its namespace invalid.
pub fn label_value(repository: &str) -> String {
    use stash_machines::names::{DNS_LABEL, fit};
    fit("", repository, DNS_LABEL)
}

/// The reader Pod's writable scratch directory (an emptyDir): restic's temporary packs.
const SCRATCH: &str = "/stash-scratch";

/// `restic snapshots` for the catalog.
pub const LIST: &[&str] = &["snapshots", "--json", "--no-lock", "--no-cache", "--quiet"];

/// The reader Pod for `repo` running `restic <args>` (the volume read-only unless `write`), or
/// `None` when its backend is not `local`.
pub fn pod(
    repo: &Repository,
    image: &str,
    name: &str,
    args: &[&str],
    write: bool,
    deadline: Duration,
) -> Result<Option<Pod>, String> {
    let BackendKind::Local(local) = repo.spec.backend.validate().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let secret = repo
        .spec
        .backend
        .storage_secret_name
        .clone()
        .unwrap_or_default();
    if secret.is_empty() {
        return Err("spec.backend.storageSecretName is not set".into());
    }
    let mount = local
        .mount_path
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or("spec.backend.local.mountPath is not set")?;
    let sub = local.sub_path.clone().unwrap_or_default();
    let repository = if sub.is_empty() {
        mount.clone()
    } else {
        format!(
            "{}/{}",
            mount.trim_end_matches('/'),
            sub.trim_start_matches('/')
        )
    };
    if mount.trim_end_matches('/') == SCRATCH {
        return Err(format!(
            "the Repository's local mountPath {mount} is the reader Pod's scratch directory"
        ));
    }
    let mut volume = serde_json::to_value(&local.volume_source).map_err(|e| e.to_string())?;
    volume["name"] = "repository".into();
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {LABEL: label_value(&repo.name_any()), "app.kubernetes.io/managed-by": "stash-rs"},
                     // Collected with its Repository, whatever becomes of the request.
                     "ownerReferences": repo.metadata.uid.as_ref().map(|uid| vec![serde_json::json!({
                         "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
                         "name": repo.name_any(), "uid": uid})])},
        "spec": {
            "restartPolicy": "Never",
            // Ended by the kubelet if the call that waits for it is gone: at most the call's
            // own bound.
            "activeDeadlineSeconds": deadline.as_secs().max(1),
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "containers": [{
                "name": "restic",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/usr/local/bin/restic"],
                "args": args,
                "env": [
                    {"name": "RESTIC_REPOSITORY", "value": repository},
                    {"name": "RESTIC_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "RESTIC_PASSWORD"}}},
                    {"name": "HOME", "value": SCRATCH},
                    // restic writes temporary packs when a prune repacks: the root
                    // filesystem is read-only, the scratch volume is not.
                    {"name": "TMPDIR", "value": SCRATCH}
                ],
                "volumeMounts": [{"name": "repository", "mountPath": mount, "readOnly": !write},
                                 {"name": "stash-scratch", "mountPath": SCRATCH}],
                // Root, as every agent of a repository runs (docs/identity.md): it reads and
                // prunes what any of them wrote; the root filesystem is read-only.
                "securityContext": stash_core::identity::agent_security_context(None, stash_core::identity::Agent::Reader),
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}}
            }],
            "volumes": [volume, {"name": "stash-scratch", "emptyDir": {"sizeLimit": "1Gi"}}]
        }
    });
    serde_json::from_value(pod)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Run the reader Pod for `repo` and return the snapshots it listed (`Ok(None)`: not a
/// `local` backend). An empty backend (no restic repository yet) lists nothing.
pub async fn snapshots(
    client: &Client,
    repo: &Repository,
    image: &str,
    timeout: Duration,
) -> Result<Option<Vec<restic::Snapshot>>, String> {
    // Once more with the Repository read again when the reader Pod vanished before it was
    // read: the garbage collector deletes a Pod whose owner is gone, and the Repository given
    // may be one deleted and created again under its name (seen in CI:
    // `a_recreated_repository_answers_with_its_new_backends_snapshots`).
    let listed = match run(client, repo, image, LIST, false, timeout).await {
        Err(e) if e.contains(pods::VANISHED) => {
            let fresh = Api::<Repository>::namespaced(
                client.clone(),
                &repo.namespace().unwrap_or_default(),
            )
            .get(&repo.name_any())
            .await
            .map_err(|e2| format!("{e}; reading the Repository again: {e2}"))?;
            run(client, &fresh, image, LIST, false, timeout).await
        }
        other => other,
    };
    let Some((phase, log)) = listed? else {
        return Ok(None);
    };
    parse(&phase, &log).map(Some)
}

/// How long a delete's `restic forget` in a reader Pod waits for another process's lock (an
/// agent's backup or prune): it runs in the background, not in the request.
const FORGET_RETRY_LOCK: &str = "120s";

/// `restic forget --prune <id>` in a Pod that mounts `repo`'s volume read-write (`Ok(None)`:
/// not a `local` backend).
pub async fn forget(
    client: &Client,
    repo: &Repository,
    image: &str,
    id: &str,
    timeout: Duration,
) -> Result<Option<()>, String> {
    // An agent's backup or follow-up may hold a lock (a schedule every minute often does):
    // wait for it instead of failing at once.
    let args = [
        "forget",
        "--prune",
        "--no-cache",
        "--quiet",
        "--retry-lock",
        FORGET_RETRY_LOCK,
        id,
    ];
    // Not run once more when its Pod vanished: the forget may have happened.
    let Some((phase, log)) = run(client, repo, image, &args, true, timeout).await? else {
        return Ok(None);
    };
    if phase == "Succeeded" {
        return Ok(Some(()));
    }
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output");
    Err(format!("restic forget failed in the reader Pod: {last}"))
}

/// Create the Pod, wait for it to end, read its log, delete it: `(phase, log)`.
async fn run(
    client: &Client,
    repo: &Repository,
    image: &str,
    args: &[&str],
    write: bool,
    timeout: Duration,
) -> Result<Option<(String, String)>, String> {
    let ns = repo.namespace().unwrap_or_default();
    let name = format!(
        "stash-snapshots-{}-{:05x}",
        truncate(&repo.name_any(), 30),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            & 0xfffff
    );
    let Some(pod) = pod(repo, image, &name, args, write, timeout)? else {
        return Ok(None);
    };
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    collect_finished(&pods, &repo.name_any(), timeout).await;
    pods.create(&PostParams::default(), &pod)
        .await
        .map_err(|e| format!("creating the reader Pod {name}: {e}"))?;
    // Deleted when this call ends, also when it is cancelled (the API server gave up on the
    // request, a replica stops).
    let _guard = pods::DeleteOnDrop::new(pods.clone(), name.clone());
    pods::wait_and_read(&pods, &name, "restic", timeout)
        .await
        .map(Some)
}

/// Delete the finished reader Pods of `repository` that an earlier call left behind (its
/// replica stopped before it could delete them): only those older than a call can last
/// (`timeout` and a minute), never a Pod another call is about to read (a concurrent read
/// lost its Pod so).
async fn collect_finished(pods: &Api<Pod>, repository: &str, timeout: Duration) {
    let lp =
        kube::api::ListParams::default().labels(&format!("{LABEL}={}", label_value(repository)));
    let Ok(list) = pods.list(&lp).await else {
        return;
    };
    let old_enough = jiff::Timestamp::now()
        - jiff::SignedDuration::try_from(timeout + Duration::from_secs(60)).unwrap_or_default();
    for p in list.items {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if matches!(phase, Some("Succeeded" | "Failed")) && created.is_some_and(|c| c < old_enough)
        {
            let _ = pods.delete(&p.name_any(), &DeleteParams::default()).await;
        }
    }
}

/// The reader's verdict from its phase and log.
pub fn parse(phase: &str, log: &str) -> Result<Vec<restic::Snapshot>, String> {
    if phase == "Succeeded" {
        let json = log
            .lines()
            .find(|l| l.trim_start().starts_with('['))
            .unwrap_or("[]");
        return serde_json::from_str(json).map_err(|e| format!("restic's snapshot list: {e}"));
    }
    // No restic repository on the volume yet: nothing to list (as for remote backends).
    if log.contains("repository does not exist")
        || log.contains("Is there a repository at the following location?")
    {
        return Ok(Vec::new());
    }
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output");
    Err(format!("restic snapshots failed in the reader Pod: {last}"))
}

fn truncate(s: &str, n: usize) -> &str {
    let end = s.char_indices().nth(n).map_or(s.len(), |(i, _)| i);
    s[..end].trim_end_matches('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(backend: serde_json::Value) -> Repository {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
            "metadata": {"name": "repo", "namespace": "demo"}, "spec": {"backend": backend}
        }))
        .expect("repository")
    }

    #[test]
    fn the_pod_belongs_to_its_repository_and_runs_as_every_agent_does() {
        let mut r = repo(serde_json::json!({"storageSecretName": "s",
            "local": {"mountPath": "/safe/data", "hostPath": {"path": "/data/repo"}}}));
        let p = pod(&r, "img:1", "reader", LIST, false, Duration::from_secs(120))
            .expect("valid")
            .expect("local");
        assert_eq!(p.metadata.owner_references, None, "no uid, no owner");
        r.metadata.uid = Some("0b5e-uid".into());
        let p = pod(&r, "img:1", "reader", LIST, false, Duration::from_secs(120))
            .expect("valid")
            .expect("local");
        let owners = p.metadata.owner_references.expect("owned");
        assert_eq!(
            (
                owners[0].kind.as_str(),
                owners[0].name.as_str(),
                owners[0].uid.as_str()
            ),
            ("Repository", "repo", "0b5e-uid")
        );
        let sc = p.spec.expect("spec").containers[0]
            .security_context
            .clone()
            .expect("securityContext");
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.and_then(|c| c.add),
            Some(vec!["DAC_OVERRIDE".to_string()])
        );
    }

    #[test]
    fn the_pod_mounts_the_backend_volume_and_takes_the_password_from_the_secret() {
        let r = repo(serde_json::json!({"storageSecretName": "s",
            "local": {"mountPath": "/safe/data", "subPath": "a", "persistentVolumeClaim": {"claimName": "c"}}}));
        let p = pod(&r, "img:1", "reader", LIST, false, Duration::from_secs(120))
            .expect("valid")
            .expect("local");
        let spec = p.spec.expect("spec");
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("img:1"));
        let env = c.env.clone().unwrap_or_default();
        assert_eq!(env[0].value.as_deref(), Some("/safe/data/a"));
        let from = env[1]
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("secretKeyRef");
        assert_eq!(
            (from.name.as_str(), from.key.as_str()),
            ("s", "RESTIC_PASSWORD")
        );
        assert!(
            !c.args
                .clone()
                .unwrap_or_default()
                .iter()
                .any(|a| a.contains("password"))
        );
        let v = &spec.volumes.expect("volumes")[0];
        assert_eq!(
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("c")
        );
        assert_eq!(
            c.volume_mounts.as_ref().expect("mounts")[0].read_only,
            Some(true)
        );
        assert_eq!(spec.automount_service_account_token, Some(false));
        // A prune's temporary packs have somewhere to go (the root filesystem is read-only).
        let scratch = &c.volume_mounts.as_ref().expect("mounts")[1];
        assert_eq!(
            (scratch.mount_path.as_str(), scratch.read_only),
            (SCRATCH, None)
        );
        assert!(
            c.env
                .iter()
                .flatten()
                .any(|e| e.name == "TMPDIR" && e.value.as_deref() == Some(SCRATCH))
        );
    }

    #[test]
    fn remote_backends_need_no_pod() {
        let r =
            repo(serde_json::json!({"storageSecretName": "s", "rest": {"url": "http://h:8000/"}}));
        assert!(
            pod(&r, "img", "x", LIST, false, Duration::from_secs(120))
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn logs_become_lists_or_errors() {
        assert_eq!(parse("Succeeded", "[]\n").expect("empty").len(), 0);
        let one = r#"[{"time":"2026-01-01T00:00:00Z","tree":"t","paths":["/a"],"hostname":"h","id":"0123456789abcdef","short_id":"01234567"}]"#;
        assert_eq!(parse("Succeeded", one).expect("one").len(), 1);
        assert!(
            parse(
                "Failed",
                "Fatal: repository does not exist: unable to open config file"
            )
            .expect("empty")
            .is_empty()
        );
        let e = parse("Failed", "Fatal: wrong password or no key found\n").expect_err("error");
        assert!(e.contains("wrong password"), "{e}");
    }
}
