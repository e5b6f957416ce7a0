//! Restore Jobs (stash-api.md §6.4): with a Task (resolved like a backup), or without one (the
//! `stash restore --restore-model=job` container); with `target.volumeClaimTemplates` (or
//! `target.replicas` > 1) one Job per ordinal, `stash-restore-<rs>-<n>`, restoring host
//! `host-<n>` into PVCs created from the templates with `${POD_ORDINAL}` substituted.
use std::collections::BTreeMap;

use k8s_openapi::api::{
    batch::v1::{Job, JobSpec},
    core::v1::{
        Container, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, PodSpec,
        PodTemplateSpec, SecretVolumeSource, Volume, VolumeMount,
    },
};
use kube::{Api, Client, Resource, ResourceExt, api::ObjectMeta, runtime::reflector::Store};
use stash_crds::{Function, Repository, RestoreSession, Task, consts};

use super::{
    BACKOFF_LIMIT, JobError, JobState, config,
    envsubst::{Inputs, subst_object},
    inputs::{self, OperatorInputs},
    resolve,
};
use crate::rbac::{self as op_rbac, RESTORE_JOB_ROLE};

const SECRET_VOLUME: &str = "stash-secret-volume";
const SECRET_DIR: &str = "/etc/stash/repository/secret";

/// The ordinals restored by separate Jobs (`None`: one Job, `stash-restore-<rs>`, host-0).
/// Never more than [`MAX_HOSTS`](stash_machines::restore_session::MAX_HOSTS): a session asking
/// for more is failed by its machine before any Job is made, and nothing here allocates per
/// requested replica.
pub fn ordinals(rs: &RestoreSession) -> Option<Vec<u32>> {
    let t = rs.spec.target.as_ref();
    let replicas = t.and_then(|t| t.replicas).unwrap_or(1).max(1);
    let replicas = u32::try_from(replicas)
        .unwrap_or(1)
        .min(stash_machines::restore_session::MAX_HOSTS);
    let templates = t.is_some_and(|t| !t.volume_claim_templates.is_empty());
    (templates || replicas > 1).then(|| (0..replicas).collect())
}

/// The names of the Jobs of `rs`.
pub fn job_names(rs: &RestoreSession) -> Vec<String> {
    use stash_machines::names::{DNS_LABEL, fit};
    let name = rs.name_any();
    match ordinals(rs) {
        None => vec![fit("stash-restore-", &name, DNS_LABEL)],
        Some(os) => os
            .iter()
            .map(|o| fit("stash-restore-", &format!("{name}-{o}"), DNS_LABEL))
            .collect(),
    }
}

/// Labels of objects derived from a RestoreSession (§5.6).
fn offshoot_labels(rs: &RestoreSession) -> BTreeMap<String, String> {
    let mut labels = rs.labels().clone();
    labels.insert(
        consts::COMPONENT_LABEL.into(),
        consts::COMPONENT_RESTORE.into(),
    );
    labels.insert(
        consts::MANAGED_BY_LABEL.into(),
        consts::MANAGED_BY_STASH.into(),
    );
    labels
}

/// The PVCs of ordinal `ordinal`, with `${POD_ORDINAL}` substituted, and the pod volumes for them
/// (named after the claim without its `-<ordinal>` suffix).
pub fn claims(
    rs: &RestoreSession,
    ordinal: u32,
) -> Result<Vec<(PersistentVolumeClaim, Volume)>, String> {
    let t = rs.spec.target.clone().unwrap_or_default();
    let inputs: Inputs = [("POD_ORDINAL".to_string(), ordinal.to_string())].into();
    let mut out = Vec::new();
    for tpl in &t.volume_claim_templates {
        let mut pvc: PersistentVolumeClaim =
            subst_object(tpl, &inputs).map_err(|e| format!("volumeClaimTemplates: {e}"))?;
        let name = pvc
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or("a volumeClaimTemplate has no name")?;
        pvc.metadata.namespace = rs.namespace();
        pvc.status = None;
        let suffix = format!("-{ordinal}");
        let vol_name = name.strip_suffix(&suffix).unwrap_or(&name).to_string();
        let vol = Volume {
            name: vol_name,
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: name,
                ..Default::default()
            }),
            ..Default::default()
        };
        out.push((pvc, vol));
    }
    Ok(out)
}

/// The pod of the Job restoring `host` (ordinal `ordinal` when per-ordinal).
pub fn pod_spec(
    rs: &RestoreSession,
    repo: &Repository,
    task: Option<(&Task, &BTreeMap<String, Function>)>,
    ordinal: Option<u32>,
    image: &str,
    op: &OperatorInputs,
    service_account: &str,
) -> Result<PodSpec, String> {
    let target = rs.spec.target.clone().unwrap_or_default();
    let host = stash_core::target::host_name(
        target.alias.as_deref(),
        ordinal.map_or(stash_core::target::Host::Only, |o| {
            stash_core::target::Host::Ordinal(u64::from(o))
        }),
    );
    let settings = rs.spec.runtime_settings.clone().unwrap_or_default();
    let (std_vols, mut std_mounts) =
        super::backup::standard_volumes(repo, rs.spec.temp_dir.as_ref(), &rs.spec.not_yet);
    let claim_vols: Vec<Volume> = match ordinal {
        Some(o) => claims(rs, o)?.into_iter().map(|(_, v)| v).collect(),
        None => vec![],
    };
    let extra_env: Vec<EnvVar> = ordinal
        .map(|o| EnvVar {
            name: "POD_ORDINAL".into(),
            value: Some(o.to_string()),
            ..Default::default()
        })
        .into_iter()
        .collect();
    let (init, main, mut volumes) = match task {
        Some((task, functions)) => {
            let implicit = inputs::restore(rs, &host, repo, op)?;
            let user_params = rs
                .spec
                .task
                .as_ref()
                .map(|t| t.params.clone())
                .unwrap_or_default();
            let r = resolve::resolve(task, functions, &user_params, &implicit)?;
            (r.init_containers, r.container, r.volumes)
        }
        None => {
            let secret = repo.spec.backend.storage_secret().ok_or_else(|| {
                format!("Repository {} has no storageSecretName", repo.name_any())
            })?;
            let cache = rs.spec.temp_dir.as_ref().is_none_or(|t| t.enable_cache());
            let args = vec![
                "restore".to_string(),
                format!("--restore-session={}", rs.name_any()),
                "--restore-model=job".into(),
                format!("--secret-dir={SECRET_DIR}"),
                format!("--enable-cache={cache}"),
                format!("--max-connections={}", repo.spec.backend.max_connections()),
                format!("--metrics-enabled={}", !op.pushgateway_url.is_empty()),
                format!("--pushgateway-url={}", op.pushgateway_url),
            ];
            std_mounts.push(VolumeMount {
                name: SECRET_VOLUME.into(),
                mount_path: SECRET_DIR.into(),
                ..Default::default()
            });
            std_mounts.extend(target.volume_mounts.iter().cloned());
            let c = Container {
                name: "stash".into(),
                image: Some(image.into()),
                command: stash_core::names::agent_command(),
                args: Some(args),
                image_pull_policy: Some("IfNotPresent".into()),
                ..Default::default()
            };
            let vols = vec![Volume {
                name: SECRET_VOLUME.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret),
                    ..Default::default()
                }),
                ..Default::default()
            }];
            (vec![], c, vols)
        }
    };
    let mut init = init;
    let mut main = main;
    for c in init.iter_mut().chain(std::iter::once(&mut main)) {
        resolve::decorate(c, &std_mounts, &extra_env, settings.container.as_ref());
    }
    for v in std_vols.into_iter().chain(claim_vols) {
        volumes.retain(|x| x.name != v.name);
        volumes.push(v);
    }
    let mut spec = PodSpec {
        init_containers: (!init.is_empty()).then_some(init),
        containers: vec![main],
        volumes: Some(volumes),
        restart_policy: Some("Never".into()),
        service_account_name: Some(service_account.into()),
        security_context: Some(stash_core::identity::job_pod_security_context()),
        ..Default::default()
    };
    if let Some(p) = &settings.pod {
        resolve::apply_pod(&mut spec, p);
    }
    Ok(spec)
}

/// Create the restore Job(s) of `rs` if absent, with the PVCs of `volumeClaimTemplates`, the
/// ServiceAccount and the RoleBinding. Errors as [`super::backup::ensure_job`].
pub async fn ensure_jobs(
    client: &Client,
    image: &str,
    op: &OperatorInputs,
    rs: &RestoreSession,
) -> Result<(), JobError> {
    let ns = rs.namespace().unwrap_or_default();
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    let names = job_names(rs);
    let mut missing = false;
    for n in &names {
        missing |= jobs.get_opt(n).await?.is_none();
    }
    if !missing {
        return Ok(());
    }
    let repo_name = rs
        .spec
        .repository
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let repo = Api::<Repository>::namespaced(client.clone(), &ns)
        .get_opt(&repo_name)
        .await?
        .ok_or_else(|| config(format!("Repository {repo_name} not found")))?;
    let loaded = match rs.spec.task.as_ref().filter(|t| !t.name.is_empty()) {
        Some(t) => Some(super::backup::load_task(client, &t.name).await?),
        None => None,
    };
    let task = loaded.as_ref().map(|(t, f)| (t, f));
    let base = format!("stash-restore-{}", rs.name_any());
    let user_sa = rs
        .spec
        .runtime_settings
        .as_ref()
        .and_then(|r| r.pod.as_ref())
        .and_then(|p| p.service_account_name.clone());
    let sa = user_sa
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| base.clone());
    let ords: Vec<Option<u32>> = match ordinals(rs) {
        None => vec![None],
        Some(os) => os.into_iter().map(Some).collect(),
    };
    // Build every pod first: a configuration error creates nothing.
    let mut pods = Vec::new();
    for o in &ords {
        pods.push(pod_spec(rs, &repo, task, *o, image, op, &sa).map_err(JobError::Config)?);
    }
    let owner = rs.controller_owner_ref(&()).map(|mut o| {
        o.controller = Some(false);
        o
    });
    let labels = offshoot_labels(rs);
    if user_sa.is_none_or(|s| s.is_empty()) {
        super::ensure_service_account(client, &ns, &sa, &labels, owner.clone()).await?;
    }
    let target = rs.spec.target.clone().unwrap_or_default().target_ref;
    let ab = super::app_binding_grant(client, &ns, &target).await?;
    let rules = op_rbac::restore_job_rules(&rs.name_any(), &repo_name, ab.as_ref());
    op_rbac::grant(
        client,
        &ns,
        &format!("{}-{RESTORE_JOB_ROLE}", rs.name_any()),
        &sa,
        rules,
        owner.clone(),
    )
    .await?;
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    let mut job_labels = labels.clone();
    job_labels.insert(
        consts::DELETE_JOB_ON_COMPLETION_LABEL.into(),
        "false".into(),
    );
    for ((o, spec), name) in ords.iter().zip(pods).zip(&names) {
        if let Some(o) = o {
            for (pvc, _) in claims(rs, *o).map_err(JobError::Config)? {
                super::create_if_absent(&pvcs, &pvc).await?;
            }
        }
        let job = Job {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(job_labels.clone()),
                owner_references: owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(JobSpec {
                backoff_limit: Some(BACKOFF_LIMIT),
                ttl_seconds_after_finished: Some(super::FINISHED_JOB_TTL_SECONDS),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(job_labels.clone()),
                        annotations: super::backup::pod_annotations(
                            rs.spec.runtime_settings.as_ref(),
                        ),
                        ..Default::default()
                    }),
                    spec: Some(spec),
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        super::create_if_absent(&jobs, &job).await?;
    }
    Ok(())
}

/// The restore Jobs of `rs`, combined, as the machine takes them (`None`: none exists), from
/// the store of stash-rs's Jobs.
pub async fn observe(client: &Client, jobs: &Store<Job>, rs: &RestoreSession) -> Option<JobState> {
    let ns = rs.namespace().unwrap_or_default();
    let found: Vec<Job> = job_names(rs)
        .iter()
        .filter_map(|n| stash_index::stores::get(jobs, &ns, n))
        .map(|j| (*j).clone())
        .collect();
    super::combined_state(client, &ns, &found).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(target: serde_json::Value, task: Option<&str>) -> RestoreSession {
        let mut spec = serde_json::json!({"repository": {"name": "repo"}, "target": target, "rules": [{"paths": ["/source/data"]}]});
        if let Some(t) = task {
            spec["task"] = serde_json::json!({"name": t, "params": [{"name": "targetVolume", "value": "restored"}]});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": "rs", "namespace": "ns", "uid": "u"}, "spec": spec
        }))
        .expect("rs")
    }

    fn repo() -> Repository {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo", "namespace": "ns"},
            "spec": {"backend": {"storageSecretName": "sec", "local": {"mountPath": "/repo", "hostPath": {"path": "/h"}}}}
        }))
        .expect("repo")
    }

    #[test]
    fn volume_claim_templates_give_a_job_per_ordinal() {
        let r = rs(
            serde_json::json!({"replicas": 2, "volumeMounts": [{"name": "restored", "mountPath": "/source/data"}],
                               "volumeClaimTemplates": [{"metadata": {"name": "restored-${POD_ORDINAL}"},
                                                         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}),
            None,
        );
        assert_eq!(job_names(&r), ["stash-restore-rs-0", "stash-restore-rs-1"]);
        let c = claims(&r, 1).expect("claims");
        assert_eq!(c[0].0.metadata.name.as_deref(), Some("restored-1"));
        assert_eq!(c[0].1.name, "restored");
        let spec = pod_spec(
            &r,
            &repo(),
            None,
            Some(1),
            "img",
            &OperatorInputs::default(),
            "sa",
        )
        .expect("pod");
        let c = &spec.containers[0];
        assert_eq!(c.name, "stash");
        assert!(
            c.args
                .clone()
                .unwrap_or_default()
                .contains(&"--restore-model=job".to_string())
        );
        let env: Vec<_> = c
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| e.value.map(|v| (e.name, v)))
            .collect();
        assert_eq!(env, [("POD_ORDINAL".to_string(), "1".to_string())]);
        let mounts: Vec<_> = c
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            mounts,
            ["tmp-dir", "stash-local", "stash-secret-volume", "restored"]
        );
        assert_eq!(spec.security_context.and_then(|s| s.run_as_user), Some(0));
        let single = rs(
            serde_json::json!({"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "d"}}),
            None,
        );
        assert_eq!(job_names(&single), ["stash-restore-rs"]);
    }

    #[test]
    fn a_task_restore_uses_the_task_with_user_params() {
        let r = rs(
            serde_json::json!({"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "d"},
                                      "volumeMounts": [{"name": "restored", "mountPath": "/source/data"}]}),
            Some("pvc-restore"),
        );
        let fns: BTreeMap<_, _> = crate::jobs::builtin::functions("img")
            .into_iter()
            .map(|f| (f.metadata.name.clone().unwrap_or_default(), f))
            .collect();
        let task = &crate::jobs::builtin::tasks()[1];
        let spec = pod_spec(
            &r,
            &repo(),
            Some((task, &fns)),
            None,
            "img",
            &OperatorInputs::default(),
            "sa",
        )
        .expect("pod");
        let init = &spec.init_containers.expect("init")[0];
        assert_eq!(init.name, "pvc-restore-0");
        let args = init.args.clone().unwrap_or_default();
        assert!(
            args.contains(&"--restore-dirs=/source/data".to_string())
                && args.contains(&"--hostname=host-0".to_string()),
            "{args:?}"
        );
        assert_eq!(
            init.volume_mounts.clone().unwrap_or_default()[0].name,
            "restored"
        );
    }
}
