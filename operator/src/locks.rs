//! The lock janitor: the operator's side of a lock that stands in an agent's way.
//!
//! An agent reports the locks of other hosts that refuse its command on its session
//! (`status.blockingLocks`, withdrawn once the command has its lock or gave up) and waits for
//! them (`--retry-lock`). Each reported lock is judged ([`stash_machines::locks::judge`]; one
//! kept because its holder's pod exists is judged again every [`JUDGE_AGAIN`] while it is
//! reported: the pod may go), from the API server's own answer (not a cache: the verdict
//! removes a lock) to "does a pod of the lock's hostname exist, in any namespace?" and
//! from whether the hostname is one of the repository's agents'. A dead agent's locks are
//! removed by `restic unlock` run in an unlock Pod that carries the dead agent's hostname
//! ([`unlock_pod`], `stash-agent unlock-dead`): restic itself proves them stale there. Every
//! decision is written to `status.lockDecisions` (this module's own field manager) and named in
//! an Event: `StaleLockRemoved` (Warning) or `LockKept`.
use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde::de::DeserializeOwned;
use stash_crds::{
    BackupSession, Repository,
    common::{BlockingLock, LockDecision, ReportsLocks},
};
use stash_machines::locks::{self, HolderFacts, Kept, Verdict};
use stash_runtime::events::Severity;

use crate::{Ctx, Error, stores};

/// The field manager of `status.lockDecisions`.
pub const FIELD_MANAGER: &str = "stash-rs-locks";

/// Where the unlock Pod mounts the storage Secret.
const SECRET_DIR: &str = "/etc/stash/repository-secret";

/// How long an unlock Pod may take (its image is the operator's, already on the node).
const UNLOCK_TIMEOUT: Duration = Duration::from_secs(90);

/// The reported locks of `session` still to judge.
pub fn undecided<S: ReportsLocks>(status: Option<&S>) -> Vec<BlockingLock> {
    status
        .map(|s| s.undecided_locks().into_iter().cloned().collect())
        .unwrap_or_default()
}

/// How soon a lock kept for its running holder is judged again while it is reported.
pub const JUDGE_AGAIN: Duration = Duration::from_secs(10);

/// A BackupSession's or RestoreSession's status, as the janitor reads and writes it.
pub trait Session:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
{
    /// Its status.
    type Status: ReportsLocks;
    /// Its status, if any.
    fn locks_status(&self) -> Option<&Self::Status>;
}

impl Session for BackupSession {
    type Status = stash_crds::backup_session::BackupSessionStatus;
    fn locks_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

impl Session for stash_crds::RestoreSession {
    type Status = stash_crds::restore_session::RestoreSessionStatus;
    fn locks_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

/// Whether `session` has reported locks still to judge.
pub fn has_undecided<K: Session>(session: &K) -> bool {
    !undecided(session.locks_status()).is_empty()
}

/// Judge the reported locks of `session` (on Repository `repo_name`) still to judge (see the
/// module's text); the agent's command goes on by itself once a removed lock is gone. Whether
/// to look again ([`JUDGE_AGAIN`]): a lock kept for its running holder is still reported.
pub async fn judge_reported<K: Session>(
    ctx: &Ctx,
    session: &K,
    repo_name: &str,
) -> Result<bool, Error> {
    let pending = undecided(session.locks_status());
    if pending.is_empty() {
        return Ok(false);
    }
    let ns = session.namespace().unwrap_or_default();
    let repo = stores::get_or_fetch(&ctx.stores.repositories, &ctx.client, &ns, repo_name)
        .await?
        .ok_or_else(|| Error::Waiting(format!("Repository {repo_name}")))?;
    // The workloads whose pods are this repository's agents: every configuration's and
    // restore's target in the namespace that uses it.
    let mut workloads: Vec<String> = ctx
        .stores
        .configurations
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(&ns) && c.spec.repository_name() == repo_name)
        .filter_map(|c| c.spec.target.as_ref()?.target_ref.name.clone())
        .collect();
    workloads.extend(
        ctx.stores
            .restores
            .state()
            .iter()
            .filter(|r| {
                r.namespace().as_deref() == Some(&ns)
                    && r.spec.repository.as_ref().map(|x| x.name.as_str()) == Some(repo_name)
            })
            .filter_map(|r| r.spec.target.as_ref()?.target_ref.name.clone()),
    );
    let mut by_host: BTreeMap<String, Vec<BlockingLock>> = BTreeMap::new();
    for l in pending {
        by_host
            .entry(l.hostname.clone().unwrap_or_default())
            .or_default()
            .push(l);
    }
    let before: Vec<LockDecision> = session
        .locks_status()
        .map(|s| s.lock_decisions().to_vec())
        .unwrap_or_default();
    let mut decisions = before.clone();
    let object = session.object_ref(&());
    for (host, held) in by_host {
        let pod_exists = !host.is_empty()
            && host.len() < locks::HOSTNAME_MAX
            && !Api::<Pod>::all(ctx.client.clone())
                .list(&ListParams::default().fields(&format!("metadata.name={host}")))
                .await?
                .items
                .is_empty();
        let facts = HolderFacts {
            pod_exists,
            agent_host: locks::is_agent_host(&host, &workloads),
        };
        let left = match locks::judge(&host, facts) {
            Verdict::Keep(why) => held.iter().map(|l| (l, why)).collect::<Vec<_>>(),
            Verdict::Remove => {
                let outcome = unlock(ctx, session, &repo, &host, &held).await?;
                held.iter()
                    .filter(|l| outcome.left.contains(&l.id))
                    .map(|l| (l, Kept::NotProvenStale))
                    .collect()
            }
        };
        for l in &held {
            let what = describe(l);
            let kept = left.iter().find(|(k, _)| k.id == l.id).map(|(_, why)| *why);
            let same = |d: &LockDecision| {
                d.id == l.id && kept.is_some_and(|k| d.reason.as_deref() == Some(k.name()))
            };
            if before.iter().any(same) {
                // Kept again for the same reason: nothing new to say.
                continue;
            }
            let (decision, reason) = match kept {
                None => {
                    tracing::warn!(session = %session.name_any(), lock = %what, "removed a dead agent's lock (its pod is gone)");
                    ctx.events
                        .publish(
                            &object,
                            Severity::Warning,
                            "StaleLockRemoved",
                            format!("removed the {what}: no pod of that name exists any more"),
                        )
                        .await;
                    ("Removed", format!("no pod {host} exists any more"))
                }
                Some(why) => {
                    tracing::info!(session = %session.name_any(), lock = %what, reason = why.name(), "kept a lock in an agent's way");
                    ctx.events
                        .publish(
                            &object,
                            Severity::Normal,
                            "LockKept",
                            format!("kept the {what}: {}", kept_text(why)),
                        )
                        .await;
                    ("Kept", why.name().to_string())
                }
            };
            decisions.retain(|d| d.id != l.id);
            decisions.push(LockDecision {
                id: l.id.clone(),
                decision: Some(decision.into()),
                reason: Some(reason),
            });
        }
    }
    let again = decisions
        .iter()
        .any(|d| d.reason.as_deref() == Some(stash_crds::common::HOLDER_RUNNING));
    if decisions == before {
        return Ok(again);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": session.name_any() },
        "status": { "lockDecisions": decisions },
    });
    Api::<K>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &session.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(again)
}

/// `exclusive lock 1a2b3c4d of PID 80 on app-x (95s old)`.
fn describe(l: &BlockingLock) -> String {
    let age = l
        .time
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| jiff::Timestamp::now().duration_since(t).as_secs().max(0))
        .unwrap_or(0);
    format!(
        "{} lock {} of PID {} on {} ({age}s old)",
        if l.exclusive == Some(true) {
            "exclusive"
        } else {
            "shared"
        },
        l.id.chars().take(8).collect::<String>(),
        l.pid.unwrap_or(0),
        l.hostname.as_deref().unwrap_or(""),
    )
}

fn kept_text(why: Kept) -> &'static str {
    match why {
        Kept::HolderRunning => "a pod of that name exists; its agent may be alive (waited for)",
        Kept::UnknownHolder => {
            "its host is none of this repository's agents (restic removes it once it is 30 minutes old)"
        }
        Kept::HostnameTruncated => {
            "its hostname is cut to 63 characters, so whether its pod lives is unknown"
        }
        Kept::NotProvenStale => "restic, run under its hostname, did not prove it stale",
    }
}

/// Run the unlock Pod for `host`'s locks and read what it did.
async fn unlock<K: Session>(
    ctx: &Ctx,
    session: &K,
    repo: &Repository,
    host: &str,
    held: &[BlockingLock],
) -> Result<stash_agent_outcome::Outcome, Error> {
    let pod = unlock_pod(repo, &ctx.inject.image, host, held, session).map_err(Error::Config)?;
    let name = pod.name_any();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &repo.namespace().unwrap_or_default());
    pods.create(&PostParams::default(), &pod).await?;
    let _guard = stash_runtime::pods::DeleteOnDrop::new(pods.clone(), name.clone());
    let (phase, log) = stash_runtime::pods::wait_and_read(&pods, &name, "unlock", UNLOCK_TIMEOUT)
        .await
        .map_err(Error::Waiting)?;
    let outcome = log
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<stash_agent_outcome::Outcome>(l.trim()).ok());
    match (phase.as_str(), outcome) {
        ("Succeeded", Some(o)) => Ok(o),
        _ => Err(Error::Waiting(format!(
            "the unlock Pod {name} ended {phase}: {}",
            log.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
        ))),
    }
}

/// What `stash-agent unlock-dead` prints last (the agent's `unlock::Outcome`; the operator
/// does not link the agent).
mod stash_agent_outcome {
    /// Ids of the host's locks restic removed, and of those still there.
    #[derive(Debug, Default, serde::Deserialize)]
    pub struct Outcome {
        #[allow(dead_code)]
        pub removed: Vec<String>,
        pub left: Vec<String>,
    }
}

/// The unlock Pod for the locks `held` by `host` on `repo` (pure): `stash-agent unlock-dead`
/// with `spec.hostname: host` (and those locks' ids: no other lock of that hostname goes), the storage Secret and a `local` backend's volume mounted, no
/// service-account token, owned by `session` (collected with it).
pub fn unlock_pod<K: Session>(
    repo: &Repository,
    image: &str,
    host: &str,
    held: &[BlockingLock],
    session: &K,
) -> Result<Pod, String> {
    let above_pid = held.iter().filter_map(|l| l.pid).max().unwrap_or(0);
    let only: Vec<&str> = held.iter().map(|l| l.id.as_str()).collect();
    let secret = repo
        .spec
        .backend
        .storage_secret()
        .ok_or("spec.backend.storageSecretName is not set")?;
    let name = stash_machines::names::fit(
        "stash-unlock-",
        &format!("{}-{host}", session.name_any()),
        stash_machines::names::DNS_LABEL,
    );
    let repository = serde_json::json!({
        "apiVersion": Repository::api_version(&()),
        "kind": "Repository",
        "metadata": {"name": repo.name_any(), "namespace": repo.namespace()},
        "spec": repo.spec,
    });
    let mut volumes = vec![
        serde_json::json!({"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}),
        serde_json::json!({"name": "storage-secret", "secret": {"secretName": secret}}),
    ];
    let mut mounts = vec![
        serde_json::json!({"name": "tmp", "mountPath": "/tmp"}),
        serde_json::json!({"name": "storage-secret", "mountPath": SECRET_DIR, "readOnly": true}),
    ];
    if let Some(local) = &repo.spec.backend.local {
        let mut v = serde_json::to_value(&local.volume_source).map_err(|e| e.to_string())?;
        v["name"] = "repository".into();
        volumes.push(v);
        mounts.push(serde_json::json!({"name": "repository", "mountPath": local.mount_path.clone().unwrap_or_default()}));
    }
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": repo.namespace(),
            "labels": {"app.kubernetes.io/managed-by": "stash-rs", "stash.appscode.com/unlock": "true"},
            "ownerReferences": session.meta().uid.as_ref().map(|uid| vec![serde_json::json!({
                "apiVersion": K::api_version(&()), "kind": K::kind(&()),
                "name": session.name_any(), "uid": uid})]),
        },
        "spec": {
            // The dead agent's hostname: restic proves its locks stale here.
            "hostname": host,
            "restartPolicy": "Never",
            "activeDeadlineSeconds": UNLOCK_TIMEOUT.as_secs(),
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "containers": [{
                "name": "unlock",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/usr/local/bin/stash-agent"],
                "args": ["unlock-dead", "--hostname", host, "--above-pid", above_pid.max(0).to_string(),
                         "--only", only.join(","), "--secret-dir", SECRET_DIR, "--scratch-dir", "/tmp"],
                "env": [{"name": "STASH_REPOSITORY", "value": repository.to_string()},
                        {"name": "HOME", "value": "/tmp"}, {"name": "TMPDIR", "value": "/tmp"}],
                "volumeMounts": mounts,
                // Root, as every agent of a repository (docs/identity.md): it removes lock
                // files any of them wrote; the root filesystem is read-only.
                "securityContext": stash_core::identity::agent_security_context(None, stash_core::identity::Agent::Reader),
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}}
            }],
            "volumes": volumes,
        }
    });
    serde_json::from_value(pod).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> Repository {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
            "metadata": {"name": "r", "namespace": "demo"},
            "spec": {"backend": {"storageSecretName": "s", "local": {"mountPath": "/repo", "hostPath": {"path": "/data/r"}}}}
        }))
        .expect("repository")
    }

    fn session() -> BackupSession {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
            "metadata": {"name": "nightly", "namespace": "demo", "uid": "u-1"},
            "spec": {"backupConfiguration": {"name": "bc"}},
            "status": {"blockingLocks": [{"id": "a1", "hostname": "app-x", "pid": 80}, {"id": "b2", "hostname": "app-y"},
                                        {"id": "c3", "hostname": "app-z"}],
                       "lockDecisions": [{"id": "b2", "decision": "Kept", "reason": "UnknownHolder"},
                                         {"id": "c3", "decision": "Kept", "reason": "HolderRunning"}]}
        }))
        .expect("session")
    }

    #[test]
    fn undecided_locks_and_those_of_a_running_holder_are_judged() {
        // b2 is decided for good; c3's holder ran when it was judged, and may have died since.
        let u = undecided(session().status.as_ref());
        assert_eq!(
            u.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
            ["a1", "c3"]
        );
    }

    #[test]
    fn the_unlock_pod_carries_the_dead_host_s_name_and_no_token() {
        let held = [BlockingLock {
            id: "a1".into(),
            hostname: Some("app-x".into()),
            pid: Some(80),
            ..Default::default()
        }];
        let pod = unlock_pod(&repo(), "img", "app-x", &held, &session()).expect("pod");
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("app-x"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let c = &spec.containers[0];
        let args = c.args.clone().unwrap_or_default();
        assert_eq!(
            args[..5],
            ["unlock-dead", "--hostname", "app-x", "--above-pid", "80"]
        );
        let mounts: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/tmp", SECRET_DIR, "/repo"]);
        // The password is never in the Pod: only the Secret's name.
        assert!(
            !serde_json::to_string(&c.env)
                .expect("env")
                .contains("RESTIC_PASSWORD")
        );
        assert_eq!(
            pod.metadata.owner_references.expect("owner")[0].name,
            "nightly"
        );
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some("stash-unlock-nightly-app-x")
        );
    }
}
