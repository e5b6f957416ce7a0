//! Default backups (stash-api.md §5.5): a BackupConfigurationTemplate — or, in later Stash's
//! spelling, a BackupBlueprint — named by annotations on a workload, PVC or AppBinding gives it
//! a Repository and a BackupConfiguration.
//!
//! Annotations: `stash.appscode.com/backup-template` or `backup-blueprint` (all),
//! `target-directories` or `target-paths` (workloads and PVCs), `volume-mounts`
//! (`name:mountPath,…`, workloads), `mountpath` (PVCs, mounted as volume `stash-volume`),
//! `schedule` (over the source's) and `params.stash.appscode.com/<name>` (Task parameters). Removing the annotations deletes the BackupConfiguration (only one
//! this object owns) and keeps the Repository, with its data.
use std::sync::Arc;

use k8s_openapi::{
    api::core::v1::VolumeMount,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PropagationPolicy},
};
use stash_crds::{
    BackupBlueprint, BackupConfiguration, BackupConfigurationTemplate,
    BackupConfigurationTemplateSpec, Repository,
    backup_configuration::BackupConfigurationSpec,
    common::{BackupTarget, TargetRef},
    consts,
    repository::RepositorySpec,
};

use super::{Ctx, Error};
use stash_core::jobs::envsubst::{Inputs, subst_object};

use stash_core::names::FIELD_MANAGER;

/// The object carrying the annotations.
#[derive(Clone, Debug)]
pub struct Target {
    /// `apiVersion` (AppBindings are stamped `v1`, like upstream).
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Plural resource name (workloads only).
    pub resource: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// `spec.version` of an AppBinding.
    pub app_version: Option<String>,
    /// The object's annotations.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// Owner reference to the object (the BackupConfiguration is owned by it).
    pub owner: OwnerReference,
}

/// Where a default backup's Repository and BackupConfiguration come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A BackupConfigurationTemplate (mid-2019, `stash.appscode.com/backup-template`).
    Template(String),
    /// A BackupBlueprint (later Stash, `stash.appscode.com/backup-blueprint`).
    Blueprint(String),
}

/// What the annotations ask for.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The template or blueprint.
    pub source: Source,
    /// `stash.appscode.com/schedule`: this target's schedule, over the source's.
    pub schedule: Option<String>,
    /// `params.stash.appscode.com/<name>`: Task parameters, over the source's.
    pub params: Vec<stash_crds::Param>,
    /// Directories to back up.
    pub directories: Vec<String>,
    /// Mounts of the target's volumes.
    pub volume_mounts: Vec<VolumeMount>,
}

/// The name of the Repository and BackupConfiguration of `target`.
pub fn object_name(target: &Target) -> String {
    format!("{}-{}", target.kind.to_lowercase(), target.name)
}

/// Read the annotations: `Ok(None)` when no default backup is asked for, an error when they
/// are malformed or incomplete.
pub fn request(target: &Target) -> Result<Option<Request>, String> {
    let a = &target.annotations;
    let named = |k: &str| a.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let source = match (
        named(consts::BACKUP_TEMPLATE_ANNOTATION),
        named(consts::BACKUP_BLUEPRINT_ANNOTATION),
    ) {
        (None, None) => return Ok(None),
        (Some(t), None) => Source::Template(t.to_string()),
        (None, Some(b)) => Source::Blueprint(b.to_string()),
        (Some(_), Some(_)) => {
            return Err(format!(
                "annotations {} and {} both name a default backup: write one of them",
                consts::BACKUP_TEMPLATE_ANNOTATION,
                consts::BACKUP_BLUEPRINT_ANNOTATION
            ));
        }
    };
    let list = |k: &str| -> Vec<String> {
        a.get(k)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    // Two spellings of one list: `target-directories` (mid-2019), `target-paths` (later).
    let directories = match (
        list(consts::TARGET_DIRECTORIES_ANNOTATION),
        list(consts::TARGET_PATHS_ANNOTATION),
    ) {
        (d, p) if d.is_empty() => p,
        (d, p) if p.is_empty() || p == d => d,
        _ => {
            return Err(format!(
                "annotations {} and {} say different things: write one of them",
                consts::TARGET_DIRECTORIES_ANNOTATION,
                consts::TARGET_PATHS_ANNOTATION
            ));
        }
    };
    let params = a
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(consts::PARAMS_ANNOTATION_PREFIX)?;
            Some(stash_crds::Param {
                name: name.to_string(),
                value: v.clone(),
            })
        })
        .collect();
    let volume_mounts = match target.kind.as_str() {
        "AppBinding" => vec![],
        "PersistentVolumeClaim" => {
            let path = a
                .get(consts::MOUNT_PATH_ANNOTATION)
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    format!(
                        "annotation {} is required for a PVC",
                        consts::MOUNT_PATH_ANNOTATION
                    )
                })?;
            vec![VolumeMount {
                name: "stash-volume".into(),
                mount_path: path.clone(),
                ..Default::default()
            }]
        }
        _ => list(consts::VOLUME_MOUNTS_ANNOTATION)
            .iter()
            .map(|m| match m.split_once(':') {
                Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok(VolumeMount {
                    name: name.into(),
                    mount_path: path.into(),
                    ..Default::default()
                }),
                _ => Err(format!(
                    "annotation {}: {m:?} is not name:mountPath",
                    consts::VOLUME_MOUNTS_ANNOTATION
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    if target.kind != "AppBinding" && directories.is_empty() {
        return Err(format!(
            "annotation {} (or {}) is required",
            consts::TARGET_DIRECTORIES_ANNOTATION,
            consts::TARGET_PATHS_ANNOTATION
        ));
    }
    Ok(Some(Request {
        source,
        schedule: named(consts::SCHEDULE_ANNOTATION).map(String::from),
        params,
        directories,
        volume_mounts,
    }))
}

/// What a template or blueprint says, as [`desired`] needs it.
#[derive(Clone, Debug)]
pub struct Blueprint {
    /// `BackupConfigurationTemplate tpl` or `BackupBlueprint bp` (for messages).
    pub what: String,
    /// The template's fields (a blueprint has them all).
    pub spec: BackupConfigurationTemplateSpec,
    /// A blueprint's `retryConfig`.
    pub retry_config: Option<stash_crds::common::RetryConfig>,
    /// A blueprint's `interimVolumeTemplate` (for the job model's targets).
    pub interim_volume_template: stash_crds::common::Unsupported,
}

impl From<&BackupConfigurationTemplate> for Blueprint {
    fn from(t: &BackupConfigurationTemplate) -> Self {
        Self {
            what: format!("BackupConfigurationTemplate {}", t.name_any()),
            spec: t.spec.clone(),
            retry_config: None,
            interim_volume_template: None,
        }
    }
}

impl From<&BackupBlueprint> for Blueprint {
    fn from(b: &BackupBlueprint) -> Self {
        Self {
            what: format!("BackupBlueprint {}", b.name_any()),
            spec: b.spec.template.clone(),
            retry_config: b.spec.retry_config.clone(),
            interim_volume_template: b.spec.not_yet.interim_volume_template.clone(),
        }
    }
}

/// The Repository and BackupConfiguration the template or blueprint gives `target`, with the
/// target's own schedule and parameters over its. Pure.
pub fn desired(
    template: &Blueprint,
    target: &Target,
    req: &Request,
) -> Result<(Repository, BackupConfiguration), String> {
    let mut inputs = Inputs::new();
    inputs.insert("TARGET_API_VERSION".into(), target.api_version.clone());
    inputs.insert("TARGET_KIND".into(), target.kind.to_lowercase());
    inputs.insert("TARGET_NAME".into(), target.name.clone());
    inputs.insert("TARGET_NAMESPACE".into(), target.namespace.clone());
    if let Some(r) = &target.resource {
        inputs.insert("TARGET_RESOURCE".into(), r.clone());
    }
    if let Some(v) = &target.app_version {
        inputs.insert("TARGET_APP_VERSION".into(), v.clone());
    }
    let spec =
        subst_object(&template.spec, &inputs).map_err(|e| format!("{}: {e}", template.what))?;
    let mut task = spec.task.clone();
    if !req.params.is_empty() {
        let task = task.get_or_insert_with(Default::default);
        for p in &req.params {
            match task.params.iter_mut().find(|q| q.name == p.name) {
                Some(q) => q.value.clone_from(&p.value),
                None => task.params.push(p.clone()),
            }
        }
    }
    let name = object_name(target);
    let repository = Repository {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(target.namespace.clone()),
            ..Default::default()
        },
        // `wipeOut` is not copied (upstream): a default backup never deletes data.
        spec: RepositorySpec {
            backend: spec.repository.backend.clone(),
            wipe_out: false,
            usage_policy: spec.repository.usage_policy.clone(),
        },
        status: None,
    };
    let bc = BackupConfiguration {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(target.namespace.clone()),
            owner_references: Some(vec![target.owner.clone()]),
            ..Default::default()
        },
        spec: BackupConfigurationSpec {
            schedule: req.schedule.clone().or_else(|| spec.schedule.clone()),
            repository: Some(stash_crds::common::RepositoryRef {
                name,
                namespace: None,
            }),
            task,
            target: Some(BackupTarget {
                target_ref: TargetRef {
                    api_version: Some(target.api_version.clone()),
                    kind: Some(target.kind.clone()),
                    name: Some(target.name.clone()),
                    namespace: None,
                },
                directories: req.directories.clone(),
                volume_mounts: req.volume_mounts.clone(),
                ..Default::default()
            }),
            retention_policy: spec.retention_policy.clone(),
            runtime_settings: spec.runtime_settings.clone(),
            temp_dir: spec.temp_dir.clone(),
            backup_history_limit: spec.backup_history_limit,
            time_out: spec.time_out.clone(),
            retry_config: template.retry_config.clone(),
            // The scratch space of a backup Job: for the targets of the job model only.
            not_yet: stash_crds::common::NotYet {
                hooks: None,
                interim_volume_template: template.interim_volume_template.clone().filter(|_| {
                    matches!(target.kind.as_str(), "PersistentVolumeClaim" | "AppBinding")
                }),
            },
            ..Default::default()
        },
        status: None,
    };
    Ok((repository, bc))
}

/// Bring `target`'s default backup in line with its annotations.
pub async fn reconcile(ctx: &Arc<Ctx>, target: &Target) -> Result<(), Error> {
    // Whether its BackupConfiguration exists is read from the shared store: once it listed.
    ctx.stores.ready().await?;
    let bcs = Api::<BackupConfiguration>::namespaced(ctx.client.clone(), &target.namespace);
    let name = object_name(target);
    let req = request(target).map_err(Error::Config)?;
    let Some(req) = req else {
        // No (more) annotations: delete the BackupConfiguration we made for it, keep the
        // Repository. Whether there is one is read from the shared store (every workload
        // reconcile asks).
        if let Some(bc) =
            stash_index::stores::get(&ctx.stores.configurations, &target.namespace, &name)
            && bc
                .owner_references()
                .iter()
                .any(|o| o.uid == target.owner.uid)
        {
            bcs.delete(
                &name,
                &DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..Default::default()
                },
            )
            .await?;
        }
        return Ok(());
    };
    let template: Blueprint = match &req.source {
        Source::Template(t) => Api::<BackupConfigurationTemplate>::all(ctx.client.clone())
            .get_opt(t)
            .await?
            .map(|t| Blueprint::from(&t))
            .ok_or_else(|| Error::Config(format!("BackupConfigurationTemplate {t:?} not found")))?,
        Source::Blueprint(b) => Api::<BackupBlueprint>::all(ctx.client.clone())
            .get_opt(b)
            .await?
            .map(|b| Blueprint::from(&b))
            .ok_or_else(|| Error::Config(format!("BackupBlueprint {b:?} not found")))?,
    };
    let (repo, bc) = desired(&template, target, &req).map_err(Error::Config)?;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    Api::<Repository>::namespaced(ctx.client.clone(), &target.namespace)
        .patch(
            &name,
            &pp,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
                "metadata": {"name": name}, "spec": repo.spec,
            })),
        )
        .await?;
    bcs.patch(&name, &pp, &Patch::Apply(serde_json::json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
        "metadata": {"name": name, "ownerReferences": bc.metadata.owner_references}, "spec": bc.spec,
    })))
    .await?;
    Ok(())
}

pub(crate) struct Carriers<K>(pub(crate) Arc<Ctx>, pub(crate) std::marker::PhantomData<K>);

/// How a carrier kind is described to the template.
trait Carrier:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const API_VERSION: &'static str;
    const KIND: &'static str;
    fn app_version(&self) -> Option<String> {
        None
    }
}

impl Carrier for k8s_openapi::api::core::v1::PersistentVolumeClaim {
    const API_VERSION: &'static str = "v1";
    const KIND: &'static str = "PersistentVolumeClaim";
}

impl Carrier for stash_crds::AppBinding {
    // Upstream stamps AppBindings as apiVersion v1 before building the reference (§5.5).
    const API_VERSION: &'static str = "v1";
    const KIND: &'static str = "AppBinding";
    fn app_version(&self) -> Option<String> {
        self.spec.version.clone()
    }
}

impl<K: Carrier> stash_runtime::Reconcile<K> for Carriers<K> {
    type Error = Error;
    const NAME: &'static str = "defaultbackup";

    async fn reconcile(&self, obj: Arc<K>) -> Result<stash_runtime::Action, Error> {
        if obj.meta().deletion_timestamp.is_some() {
            return Ok(stash_runtime::Action::await_change());
        }
        let Some(uid) = obj.uid() else {
            return Ok(stash_runtime::Action::await_change());
        };
        let target = Target {
            api_version: K::API_VERSION.into(),
            kind: K::KIND.into(),
            resource: None,
            name: obj.name_any(),
            namespace: obj.namespace().unwrap_or_default(),
            app_version: obj.app_version(),
            annotations: obj.annotations().clone(),
            owner: OwnerReference {
                api_version: K::api_version(&()).into(),
                kind: K::KIND.into(),
                name: obj.name_any(),
                uid,
                ..Default::default()
            },
        };
        if let Err(e) = reconcile(&self.0, &target).await {
            let reference = obj.object_ref(&());
            self.0
                .events
                .publish(
                    &reference,
                    stash_runtime::events::Severity::Warning,
                    "DefaultBackupFailed",
                    e.to_string(),
                )
                .await;
            return Err(e);
        }
        Ok(stash_runtime::Action::requeue(
            std::time::Duration::from_secs(600),
        ))
    }
}

async fn run<K: Carrier>(ctx: Arc<Ctx>) {
    let controller = kube::runtime::Controller::new(
        Api::<K>::all(ctx.client.clone()),
        kube::runtime::watcher::Config::default(),
    );
    stash_runtime::drive(
        controller,
        Carriers::<K>(ctx.clone(), std::marker::PhantomData),
        ctx.metrics.clone(),
        ctx.events.clone(),
    )
    .await;
}

/// Default backups of annotated PVCs.
pub async fn run_pvcs(ctx: Arc<Ctx>) {
    run::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(ctx).await;
}

/// Default backups of annotated AppBindings.
pub async fn run_app_bindings(ctx: Arc<Ctx>) {
    run::<stash_crds::AppBinding>(ctx).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(annotations: &[(&str, &str)]) -> Target {
        Target {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            resource: Some("deployments".into()),
            name: "stash-demo".into(),
            namespace: "demo".into(),
            app_version: None,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            owner: OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "stash-demo".into(),
                uid: "u".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_blueprint_with_the_later_annotations_gives_its_schedule_params_and_retries() {
        let bp: BackupBlueprint = serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupBlueprint",
            "metadata": {"name": "workload-backup-blueprint"},
            "spec": {"backend": {"gcs": {"bucket": "appscode-qa", "prefix": "stash-backup/${TARGET_NAMESPACE}/${TARGET_KIND}/${TARGET_NAME}"},
                                 "storageSecretName": "gcs-secret"},
                     "schedule": "*/5 * * * *",
                     "task": {"name": "pvc-backup", "params": [{"name": "a", "value": "1"}]},
                     "retryConfig": {"maxRetry": 2, "delay": "1m"},
                     "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true}}
        }))
        .expect("blueprint");
        let t = target(&[
            (
                consts::BACKUP_BLUEPRINT_ANNOTATION,
                "workload-backup-blueprint",
            ),
            (
                consts::TARGET_PATHS_ANNOTATION,
                "/source/data-1,/source/data-2",
            ),
            (
                consts::VOLUME_MOUNTS_ANNOTATION,
                "source-data-1:/source/data-1,source-data-2:/source/data-2",
            ),
            (consts::SCHEDULE_ANNOTATION, "*/15 * * * *"),
            ("params.stash.appscode.com/a", "2"),
            ("params.stash.appscode.com/b", "3"),
        ]);
        let req = request(&t).expect("valid").expect("asked for");
        assert_eq!(
            req.source,
            Source::Blueprint("workload-backup-blueprint".into())
        );
        let (repo, bc) = desired(&Blueprint::from(&bp), &t, &req).expect("desired");
        assert_eq!(
            repo.spec
                .backend
                .gcs
                .as_ref()
                .and_then(|g| g.prefix.clone())
                .as_deref(),
            Some("stash-backup/demo/deployment/stash-demo")
        );
        assert_eq!(bc.spec.schedule.as_deref(), Some("*/15 * * * *"));
        assert_eq!(
            bc.spec.target.as_ref().map(|t| t.directories.clone()),
            Some(vec![
                "/source/data-1".to_string(),
                "/source/data-2".to_string()
            ])
        );
        let params: Vec<(String, String)> = bc
            .spec
            .task
            .expect("task")
            .params
            .into_iter()
            .map(|p| (p.name, p.value))
            .collect();
        assert_eq!(params, [("a".into(), "2".into()), ("b".into(), "3".into())]);
        assert_eq!(bc.spec.retry_config.and_then(|r| r.max_retry), Some(2));
        // Both sources, or both spellings of the paths saying different things: refused.
        let both = target(&[
            (consts::BACKUP_BLUEPRINT_ANNOTATION, "b"),
            (consts::BACKUP_TEMPLATE_ANNOTATION, "t"),
            (consts::TARGET_PATHS_ANNOTATION, "/a"),
        ]);
        assert!(
            request(&both)
                .expect_err("two sources")
                .contains("write one of them")
        );
        let differ = target(&[
            (consts::BACKUP_BLUEPRINT_ANNOTATION, "b"),
            (consts::TARGET_PATHS_ANNOTATION, "/a"),
            (consts::TARGET_DIRECTORIES_ANNOTATION, "/b"),
        ]);
        assert!(
            request(&differ)
                .expect_err("two lists")
                .contains("say different things")
        );
    }

    #[test]
    fn the_upstream_template_gives_a_repository_and_a_backup_configuration() {
        let template: BackupConfigurationTemplate = serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfigurationTemplate",
            "metadata": {"name": "workload-backup-template"},
            "spec": {"backend": {"gcs": {"bucket": "appscode-qa", "prefix": "stash-backup/${TARGET_NAMESPACE}/${TARGET_KIND}/${TARGET_NAME}"},
                                 "storageSecretName": "gcs-secret"},
                     "schedule": "*/5 * * * *",
                     "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true}}
        }))
        .expect("template");
        let t = target(&[
            (
                consts::BACKUP_TEMPLATE_ANNOTATION,
                "workload-backup-template",
            ),
            (
                consts::TARGET_DIRECTORIES_ANNOTATION,
                "/source/data-1,/source/data-2",
            ),
            (
                consts::VOLUME_MOUNTS_ANNOTATION,
                "source-data-1:/source/data-1,source-data-2:/source/data-2",
            ),
        ]);
        let req = request(&t).expect("valid").expect("asked for");
        let (repo, bc) = desired(&Blueprint::from(&template), &t, &req).expect("desired");
        assert_eq!(repo.name_any(), "deployment-stash-demo");
        assert_eq!(
            repo.spec
                .backend
                .gcs
                .as_ref()
                .and_then(|g| g.prefix.clone())
                .as_deref(),
            Some("stash-backup/demo/deployment/stash-demo")
        );
        let target = bc.spec.target.expect("target");
        assert_eq!(target.directories, ["/source/data-1", "/source/data-2"]);
        assert_eq!(target.volume_mounts.len(), 2);
        assert_eq!(bc.spec.schedule.as_deref(), Some("*/5 * * * *"));
        assert_eq!(
            bc.metadata.owner_references.expect("owner")[0].kind,
            "Deployment"
        );
    }

    #[test]
    fn a_templates_history_limit_and_time_out_go_into_its_configurations() {
        let template: BackupConfigurationTemplate = serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfigurationTemplate",
            "metadata": {"name": "t"},
            "spec": {"backend": {"local": {"mountPath": "/safe/data", "hostPath": {"path": "/data"}},
                                 "storageSecretName": "s"},
                     "schedule": "*/5 * * * *", "backupHistoryLimit": 2, "timeOut": "30m"}
        }))
        .expect("template");
        let t = target(&[
            (consts::BACKUP_TEMPLATE_ANNOTATION, "t"),
            (consts::TARGET_DIRECTORIES_ANNOTATION, "/source/data"),
            (consts::VOLUME_MOUNTS_ANNOTATION, "data:/source/data"),
        ]);
        let req = request(&t).expect("valid").expect("asked for");
        let (_, bc) = desired(&Blueprint::from(&template), &t, &req).expect("desired");
        assert_eq!(bc.spec.backup_history_limit, Some(2));
        assert_eq!(bc.spec.time_out.as_deref(), Some("30m"));
    }

    #[test]
    fn malformed_annotations_are_errors() {
        let t = target(&[
            (consts::BACKUP_TEMPLATE_ANNOTATION, "x"),
            (consts::TARGET_DIRECTORIES_ANNOTATION, "/a"),
            (consts::VOLUME_MOUNTS_ANNOTATION, "novolume"),
        ]);
        assert!(request(&t).unwrap_err().contains("not name:mountPath"));
        let t = target(&[(consts::BACKUP_TEMPLATE_ANNOTATION, "x")]);
        assert!(request(&t).unwrap_err().contains("target-directories"));
        assert_eq!(request(&target(&[])), Ok(None));
    }
}
