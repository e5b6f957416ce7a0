//! The job model (stash-api.md §6.3, §6.4, §7.2): backups and restores of targets that are not
//! workloads (PVCs, AppBindings, no target) run as Jobs built from Functions and Tasks.
//!
//! * the pure parts are `stash_core::jobs`: [`envsubst`] (§4), [`resolve`] (Task + Functions +
//!   inputs → containers and volumes), [`inputs`], [`output`] and the built-in definitions;
//! * [`backup`] / [`restore`]: build and create the Jobs (with ServiceAccount and
//!   RoleBinding), and observe them as the session machines need ([`JobState`]);
//! * [`builtin`]: the Functions and Tasks the operator writes at start-up (§11.2).
//!
//! Deliberate differences from upstream (documented for the project docs):
//! * a Job is owned by its session (a pruned session takes it along) and gets
//!   `ttlSecondsAfterFinished` ([`FINISHED_JOB_TTL_SECONDS`]);
//! * a Job gets `backoffLimit: 0`: a failed pod is not retried (a retry would repeat the whole
//!   dump); the next scheduled session is the retry. The session fails with the failing
//!   container's exit and message in its reason;
//! * the local backend volume is mounted at `mountPath` without `subPath`, and the repository is
//!   at `mountPath/subPath` (`REPOSITORY_PREFIX`), so the two are not applied twice;
//! * `TARGET_APP_REPLICAS` is the number (decision 4); B2 has bucket/prefix (decision 4);
//! * the restoring host's entry is named after the restoring host (`host-<ordinal>`), not the
//!   source host, so `totalHosts` entries can all report;
//! * PodSecurityPolicies no longer exist in Kubernetes; `podSecurityPolicyName` is accepted and
//!   ignored.
pub mod backup;
pub mod builtin;
pub use stash_core::jobs::{envsubst, inputs, output, resolve};
pub mod restore;

use stash_crds::consts;
use std::collections::BTreeMap;

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Pod, ServiceAccount},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, PostParams},
};
pub use stash_machines::JobState;

/// Pod volume of `/tmp` (the `tempDir` settings).
pub const TMP_VOLUME: &str = "tmp-dir";
/// Pod volume of the local backend.
pub const LOCAL_VOLUME: &str = "stash-local";
/// `backoffLimit` of every backup/restore Job (see the module docs).
pub const BACKOFF_LIMIT: i32 = 0;
/// `ttlSecondsAfterFinished` of every backup/restore Job: an hour, far beyond the operator's
/// poll (the session machines read a finished Job's outcome before it goes), after which the
/// Job and its Pods are deleted by Kubernetes (issue 12). The session keeps the outcome.
pub const FINISHED_JOB_TTL_SECONDS: i32 = 3600;

/// Why a Job could not be created.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A problem of the user's objects (unresolved variable, missing Function/Task/Repository,
    /// …): the session fails with this reason. Not retried.
    #[error("{0}")]
    Config(String),
    /// The API failed; retry.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl From<crate::rbac::WriteError> for JobError {
    fn from(e: crate::rbac::WriteError) -> Self {
        match e {
            crate::rbac::WriteError::Kube(e) => JobError::Kube(e),
            // Someone else's object holds the name: the session fails with the reason.
            crate::rbac::WriteError::Clash(m) => JobError::Config(m),
        }
    }
}

/// What creating a session's Job came to, for its machine: done; refused for good (the API
/// refused it as invalid, over a limit or forbidden, or its inputs cannot be resolved), which
/// the machine turns into a failed session; or a transient API error, retried with back-off.
pub fn performed(result: Result<(), JobError>) -> Result<stash_machines::Performed, kube::Error> {
    use stash_machines::Performed;
    match result {
        Ok(()) => Ok(Performed::Done),
        Err(JobError::Kube(kube::Error::Api(e)))
            if stash_machines::api_error_is_permanent(e.code) =>
        {
            Ok(Performed::Refused(e.message))
        }
        Err(JobError::Kube(e)) => Err(e),
        Err(JobError::Config(message)) => Ok(Performed::Refused(message)),
    }
}

pub(crate) fn config(msg: impl Into<String>) -> JobError {
    JobError::Config(msg.into())
}

/// Create `obj` unless it exists (creation effects must be create-if-absent).
pub(crate) async fn create_if_absent<K>(api: &Api<K>, obj: &K) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Create ServiceAccount `name` (owned by `owner`, labelled as stash's) unless stash's exists;
/// a ServiceAccount of that name stash did not create (`default` among them) is a clash: it
/// is neither used, bound nor owned.
pub(crate) async fn ensure_service_account(
    client: &Client,
    ns: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<(), crate::rbac::WriteError> {
    let api = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    if crate::rbac::claim(&api, name, owner.as_ref())
        .await?
        .is_some()
    {
        return Ok(());
    }
    let mut labels = labels.clone();
    labels.insert(
        consts::MANAGED_BY_LABEL.into(),
        consts::MANAGED_BY_STASH.into(),
    );
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        ..Default::default()
    };
    Ok(create_if_absent(&api, &sa).await?)
}

/// The state of one Job, as the machines take it.
pub fn job_state(job: &Job) -> JobState {
    let conds = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let is = |t: &str| conds.iter().find(|c| c.type_ == t && c.status == "True");
    if let Some(c) = is("Failed") {
        let msg = [c.reason.clone(), c.message.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        return JobState::Failed {
            message: if msg.is_empty() {
                "the Job failed".into()
            } else {
                msg
            },
        };
    }
    if is("Complete").is_some() || is("SuccessCriteriaMet").is_some() {
        return JobState::Succeeded;
    }
    JobState::Active
}

/// What the failed containers of a Job's pods said (exit code and message), for the reason.
pub(crate) async fn failure_detail(client: &Client, ns: &str, job: &str) -> Option<String> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .ok()?;
    let mut out = Vec::new();
    for p in pods {
        let st = p.status.unwrap_or_default();
        for c in st
            .init_container_statuses
            .iter()
            .flatten()
            .chain(st.container_statuses.iter().flatten())
        {
            if let Some(t) = c.state.as_ref().and_then(|s| s.terminated.as_ref())
                && t.exit_code != 0
            {
                let msg = t.message.clone().or(t.reason.clone()).unwrap_or_default();
                out.push(
                    format!(
                        "pod {} container {} exited with code {} {msg}",
                        p.metadata.name.clone().unwrap_or_default(),
                        c.name,
                        t.exit_code
                    )
                    .trim()
                    .to_string(),
                );
            }
        }
    }
    (!out.is_empty()).then(|| out.join("; "))
}

/// The combined state of several Jobs: any failed → failed; all succeeded → succeeded.
pub(crate) async fn combined_state(client: &Client, ns: &str, jobs: &[Job]) -> Option<JobState> {
    if jobs.is_empty() {
        return None;
    }
    let mut all_done = true;
    for j in jobs {
        match job_state(j) {
            JobState::Failed { message } => {
                let name = j.name_any();
                let detail = failure_detail(client, ns, &name).await;
                let message = match detail {
                    Some(d) => format!("Job {name}: {message} ({d})"),
                    None => format!("Job {name}: {message}"),
                };
                return Some(JobState::Failed { message });
            }
            JobState::Active => all_done = false,
            // An existing Job is never `Rejected` (that is a refused create).
            JobState::Succeeded | JobState::Rejected { .. } => {}
        }
    }
    Some(if all_done {
        JobState::Succeeded
    } else {
        JobState::Active
    })
}

/// The AppBinding `target` names (if it is one) and the Secret of that AppBinding: what a
/// database Function's pod reads, and all it may read ([`crate::rbac`]).
pub(crate) async fn app_binding_grant(
    client: &Client,
    ns: &str,
    target: &stash_crds::common::TargetRef,
) -> Result<Option<crate::rbac::AppBindingGrant>, kube::Error> {
    if target.kind.as_deref() != Some("AppBinding") {
        return Ok(None);
    }
    let name = target.name.clone().unwrap_or_default();
    let secret = Api::<stash_crds::AppBinding>::namespaced(client.clone(), ns)
        .get_opt(&name)
        .await?
        .and_then(|ab| ab.spec.secret.map(|s| s.name))
        .unwrap_or_default();
    Ok(Some(crate::rbac::AppBindingGrant { name, secret }))
}
