//! The backup Job of a job-model BackupSession (stash-api.md §6.3): `stash-backup-<session>`,
//! owned by the BackupConfiguration, its pod resolved from the configuration's Task.
use std::collections::BTreeMap;

use k8s_openapi::api::{
    batch::v1::{Job, JobSpec},
    core::v1::{EnvVar, PodSpec, PodTemplateSpec, Volume, VolumeMount},
};
use kube::{Api, Client, Resource, ResourceExt, api::ObjectMeta, runtime::reflector::Store};
use stash_crds::{BackupConfiguration, BackupSession, Function, Repository, Task, consts};

use super::{
    BACKOFF_LIMIT, JobError, JobState, LOCAL_VOLUME, TMP_VOLUME, config,
    inputs::{self, OperatorInputs},
    resolve,
};
use crate::rbac::{self as op_rbac, BACKUP_JOB_ROLE};
use stash_core::names::offshoot_labels;

/// The Job's name: `stash-backup-<session>`, cut to a DNS label with a hash when longer
/// ([`stash_machines::names::fit`]).
pub fn job_name(session: &str) -> String {
    use stash_machines::names::{DNS_LABEL, fit};
    fit("stash-backup-", session, DNS_LABEL)
}

/// The `/tmp` volume and mount, and the local backend's (mounted at `mountPath`, no subPath).
/// `/tmp` (restic's cache and temporary files) is an emptyDir, or, with an
/// `interimVolumeTemplate`, a volume claimed from that template for the pod and deleted with it
/// (a generic ephemeral volume).
pub(crate) fn standard_volumes(
    repo: &Repository,
    temp_dir: Option<&stash_crds::common::EmptyDirSettings>,
    not_yet: &stash_crds::common::NotYet,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let interim = not_yet.interim_volume();
    let mut vols = vec![Volume {
        name: TMP_VOLUME.into(),
        empty_dir: interim
            .is_none()
            .then(|| temp_dir.map(|t| t.to_empty_dir()).unwrap_or_default()),
        ephemeral: interim.map(|claim| k8s_openapi::api::core::v1::EphemeralVolumeSource {
            volume_claim_template: Some(
                k8s_openapi::api::core::v1::PersistentVolumeClaimTemplate {
                    metadata: Some(ObjectMeta {
                        labels: claim.metadata.labels.clone(),
                        annotations: claim.metadata.annotations.clone(),
                        ..Default::default()
                    }),
                    spec: claim.spec.clone().unwrap_or_default(),
                },
            ),
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: TMP_VOLUME.into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    if let Some(local) = &repo.spec.backend.local {
        vols.push(local.volume_source.to_volume(LOCAL_VOLUME));
        mounts.push(VolumeMount {
            name: LOCAL_VOLUME.into(),
            mount_path: local.mount_path.clone().unwrap_or_default(),
            ..Default::default()
        });
    }
    (vols, mounts)
}

/// Load a Task and the Functions of its steps (missing ones are left out; resolution names them).
pub(crate) async fn load_task(
    client: &Client,
    name: &str,
) -> Result<(Task, BTreeMap<String, Function>), JobError> {
    if name.is_empty() {
        return Err(config(
            "spec.task.name is empty: a Task is required for targets that are not workloads",
        ));
    }
    let task = Api::<Task>::all(client.clone())
        .get_opt(name)
        .await?
        .ok_or_else(|| config(format!("Task {name} not found")))?;
    let fapi = Api::<Function>::all(client.clone());
    let mut functions = BTreeMap::new();
    for s in &task.spec.steps {
        if let Some(f) = fapi.get_opt(&s.name).await? {
            functions.insert(s.name.clone(), f);
        }
    }
    Ok((task, functions))
}

/// Build the Job (pure, given every object it depends on).
pub fn build(
    bc: &BackupConfiguration,
    session: &str,
    repo: &Repository,
    task: &Task,
    functions: &BTreeMap<String, Function>,
    op: &OperatorInputs,
) -> Result<(Job, String), String> {
    let implicit = inputs::backup(bc, session, repo, op)?;
    let user_params = bc
        .spec
        .task
        .as_ref()
        .map(|t| t.params.clone())
        .unwrap_or_default();
    let r = resolve::resolve(task, functions, &user_params, &implicit)?;
    let (std_vols, std_mounts) =
        standard_volumes(repo, bc.spec.temp_dir.as_ref(), &bc.spec.not_yet);
    let settings = bc.spec.runtime_settings.clone().unwrap_or_default();
    let mut init = r.init_containers;
    let mut main = r.container;
    for c in init.iter_mut().chain(std::iter::once(&mut main)) {
        // The session the steps work for: a step that finds another host's lock in its way
        // reports it there (docs/sessions.md "Locks").
        let session_env = EnvVar {
            name: consts::BACKUP_SESSION_ENV.into(),
            value: Some(session.to_string()),
            ..Default::default()
        };
        resolve::decorate(
            c,
            &std_mounts,
            std::slice::from_ref(&session_env),
            settings.container.as_ref(),
        );
    }
    let mut volumes = r.volumes;
    for v in std_vols {
        if !volumes.iter().any(|x| x.name == v.name) {
            volumes.push(v);
        }
    }
    let bc_name = bc.name_any();
    let mut spec = PodSpec {
        init_containers: (!init.is_empty()).then_some(init),
        containers: vec![main],
        volumes: Some(volumes),
        restart_policy: Some("Never".into()),
        service_account_name: Some(bc_name.clone()),
        security_context: Some(stash_core::identity::job_pod_security_context()),
        ..Default::default()
    };
    if let Some(p) = &settings.pod {
        resolve::apply_pod(&mut spec, p);
    }
    let sa = spec.service_account_name.clone().unwrap_or_default();
    let mut labels = offshoot_labels(bc, consts::COMPONENT_BACKUP);
    labels.insert(
        consts::DELETE_JOB_ON_COMPLETION_LABEL.into(),
        "false".into(),
    );
    let job = Job {
        metadata: ObjectMeta {
            name: Some(job_name(session)),
            namespace: bc.namespace(),
            labels: Some(labels.clone()),
            // Owned by its session (set by `ensure_job`): a pruned session takes its Job and
            // Pods with it (issue 12).
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            ttl_seconds_after_finished: Some(super::FINISHED_JOB_TTL_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: pod_annotations(bc.spec.runtime_settings.as_ref()),
                    ..Default::default()
                }),
                spec: Some(spec),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok((job, sa))
}

/// Create the backup Job of `bs` if absent (with its ServiceAccount and RoleBinding).
///
/// [`JobError::Config`] means the session must fail with that reason (unresolved variable,
/// missing Task/Function/Repository/BackupConfiguration); [`JobError::Kube`] is transient.
pub async fn ensure_job(
    client: &Client,
    op: &OperatorInputs,
    bs: &BackupSession,
) -> Result<(), JobError> {
    let ns = bs.namespace().unwrap_or_default();
    let session = bs.name_any();
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    if jobs.get_opt(&job_name(&session)).await?.is_some() {
        return Ok(());
    }
    let bc_name = bs.spec.configuration_name();
    let bc = Api::<BackupConfiguration>::namespaced(client.clone(), &ns)
        .get_opt(&bc_name)
        .await?
        .ok_or_else(|| config(format!("BackupConfiguration {bc_name} not found")))?;
    let repo_name = bc.spec.repository_name();
    let repo = Api::<Repository>::namespaced(client.clone(), &ns)
        .get_opt(&repo_name)
        .await?
        .ok_or_else(|| config(format!("Repository {repo_name} not found")))?;
    let task_name = bc
        .spec
        .task
        .as_ref()
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let (task, functions) = load_task(client, &task_name).await?;
    let (job, sa) = build(&bc, &session, &repo, &task, &functions, op).map_err(JobError::Config)?;
    let owner = bc.controller_owner_ref(&()).map(|mut o| {
        o.controller = Some(false);
        o
    });
    let labels = offshoot_labels(&bc, consts::COMPONENT_BACKUP);
    let user_sa = bc
        .spec
        .runtime_settings
        .as_ref()
        .and_then(|r| r.pod.as_ref())
        .and_then(|p| p.service_account_name.clone());
    if user_sa.is_none_or(|s| s.is_empty()) {
        super::ensure_service_account(client, &ns, &sa, &labels, owner.clone()).await?;
    }
    // Its session, its Repository, its AppBinding's Secret: nothing else (one session of a
    // BackupConfiguration runs at a time, so the Role names the current one).
    let target = bc.spec.target.clone().unwrap_or_default().target_ref;
    let ab = super::app_binding_grant(client, &ns, &target).await?;
    let rules = op_rbac::backup_job_rules(&bc_name, &session, &repo_name, ab.as_ref());
    op_rbac::grant(
        client,
        &ns,
        &format!("{bc_name}-{BACKUP_JOB_ROLE}"),
        &sa,
        rules,
        owner,
    )
    .await?;
    let mut job = job;
    job.metadata.owner_references = bs.controller_owner_ref(&()).map(|o| vec![o]);
    super::create_if_absent(&Api::<Job>::namespaced(client.clone(), &ns), &job).await?;
    Ok(())
}

/// The backup Job of `bs`, as the machine takes it (`None`: no Job), from the store of
/// stash-rs's Jobs (a Job created a moment ago and not in it yet is `None`: the machine then
/// creates it again, which finds it, or waits).
pub async fn observe(client: &Client, jobs: &Store<Job>, bs: &BackupSession) -> Option<JobState> {
    let ns = bs.namespace().unwrap_or_default();
    let job = stash_index::stores::get(jobs, &ns, &job_name(&bs.name_any()))?;
    super::combined_state(client, &ns, &[(*job).clone()]).await
}

/// `runtimeSettings.pod.podAnnotations`: the annotations of a Job's pods.
pub(crate) fn pod_annotations(
    settings: Option<&stash_crds::RuntimeSettings>,
) -> Option<std::collections::BTreeMap<String, String>> {
    settings
        .and_then(|r| r.pod.as_ref())
        .and_then(|p| p.pod_annotations.clone())
        .filter(|a| !a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::builtin;

    #[test]
    fn the_pvc_backup_job() {
        let bc: BackupConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
            "metadata": {"name": "bc", "namespace": "ns", "uid": "u1", "labels": {"team": "a"}},
            "spec": {"repository": {"name": "repo"}, "schedule": "* * * * *", "task": {"name": "pvc-backup"},
                     "target": {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "data"},
                                "directories": ["/source/data"], "volumeMounts": [{"name": "target-volume", "mountPath": "/source/data"}]},
                     "runtimeSettings": {"container": {"resources": {"requests": {"memory": "64Mi"}}}}}
        }))
        .expect("bc");
        let repo: Repository = serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo", "namespace": "ns"},
            "spec": {"backend": {"storageSecretName": "sec", "local": {"mountPath": "/repo", "hostPath": {"path": "/h"}}}}
        }))
        .expect("repo");
        let fns = builtin::functions("img")
            .into_iter()
            .map(|f| (f.metadata.name.clone().unwrap_or_default(), f))
            .collect();
        let (job, sa) = build(
            &bc,
            "bc-1",
            &repo,
            &builtin::tasks()[0],
            &fns,
            &OperatorInputs::default(),
        )
        .expect("job");
        assert_eq!(sa, "bc");
        assert_eq!(job.metadata.name.as_deref(), Some("stash-backup-bc-1"));
        let labels = job.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(
            labels
                .get(consts::DELETE_JOB_ON_COMPLETION_LABEL)
                .map(String::as_str),
            Some("false")
        );
        let spec = job.spec.expect("spec");
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.expect("pod");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let init = &pod.init_containers.expect("init")[0];
        let mounts: Vec<_> = init
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.name, m.mount_path))
            .collect();
        assert!(
            mounts.contains(&("stash-local".into(), "/repo".into()))
                && mounts.contains(&("tmp-dir".into(), "/tmp".into())),
            "{mounts:?}"
        );
        assert!(
            init.args
                .clone()
                .unwrap_or_default()
                .contains(&"--path=/repo".to_string())
        );
        assert!(
            pod.containers[0]
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_some()
        );
        let vols: Vec<_> = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(
            vols,
            ["target-volume", "secret-volume", "tmp-dir", "stash-local"]
        );
    }
}
