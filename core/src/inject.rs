//! The pure sidecar decision (stash-api.md §6.1): given a workload's pod template and the
//! BackupConfiguration that targets it (if any), the pod template it should have.
//!
//! The controller path and the mutating webhook both call [`apply_backup`], so a workload
//! looks the same whichever path saw it first, and running it twice changes nothing.
use std::{collections::BTreeMap, hash::Hasher};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ObjectFieldSelector, PodTemplateSpec, SecretVolumeSource, Volume, VolumeMount,
};
use kube::ResourceExt;
use stash_crds::{BackupConfiguration, Repository, RestoreSession, consts};

use crate::target::WorkloadKind;

/// The sidecar container's name.
pub const SIDECAR: &str = "stash";
/// The restore init-container's name.
pub const INIT_CONTAINER: &str = "stash-init";
/// Where the storage Secret is mounted in the sidecar.
pub const SECRET_DIR: &str = "/etc/stash/repository/secret";
const PODINFO_VOLUME: &str = "stash-podinfo";
const SECRET_VOLUME: &str = "stash-secret-volume";
const LOCAL_VOLUME: &str = "stash-local";
const TMP_VOLUME: &str = "tmp-dir";
const SCRATCH_VOLUME: &str = "stash-scratchdir";

/// Operator-wide settings the injected containers need.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    /// The image of the `stash` containers.
    pub image: String,
    /// Where agents push metrics (empty: metrics off).
    pub pushgateway_url: String,
}

/// Why the sidecar cannot be injected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// The Repository has no `storageSecretName`.
    #[error("Repository {0} has no spec.backend.storageSecretName")]
    NoStorageSecret(String),
}

/// The ServiceAccount stash-rs gives a workload whose pods run as `default` (or name none)
/// while a sidecar or restore init-container is injected: the agents' narrow Roles are bound
/// to it, never to `default` (docs/security.md).
pub fn dedicated_service_account(kind: WorkloadKind, workload: &str) -> String {
    format!("{}-{workload}-stash", kind.kind().to_lowercase())
}

/// `template` with the ServiceAccount the injected agents run as: [`dedicated_service_account`]
/// when `injected` and the pods run as `default`; back to `default` (unset) when nothing is
/// injected any more and the pods run as the dedicated one. A ServiceAccount the workload
/// names is left alone.
pub fn with_service_account(
    template: &PodTemplateSpec,
    kind: WorkloadKind,
    workload: &str,
    injected: bool,
) -> PodTemplateSpec {
    let mut t = template.clone();
    let dedicated = dedicated_service_account(kind, workload);
    if let Some(spec) = t.spec.as_mut() {
        let current = spec
            .service_account_name
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        if injected && current == "default" {
            spec.service_account_name = Some(dedicated);
            spec.service_account = None;
        } else if !injected && current == dedicated {
            spec.service_account_name = None;
            spec.service_account = None;
        }
    }
    t
}

/// The ServiceAccount the pods of `template` run as.
pub fn service_account(template: &PodTemplateSpec) -> String {
    template
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// FNV-64a of the BackupConfiguration spec's JSON, in decimal (the pod-template hash annotation).
/// `paused` and `schedule` are left out: the sidecar does not use them (the operator decides
/// pausing, the CronJob carries the schedule), and a change of the hash restarts the workload's
/// pods — pausing must not kill a backup that is running.
pub fn spec_hash(bc: &BackupConfiguration) -> String {
    let mut spec = bc.spec.clone();
    spec.paused = false;
    spec.schedule = Default::default();
    let json = serde_json::to_vec(&spec).unwrap_or_default();
    let mut h = Fnv64a::default();
    h.write(&json);
    h.finish().to_string()
}

#[derive(Debug)]
struct Fnv64a(u64);
impl Default for Fnv64a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}
impl Hasher for Fnv64a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn upsert<T: Clone>(items: &mut Vec<T>, item: T, same: impl Fn(&T) -> bool) {
    match items.iter_mut().find(|i| same(i)) {
        Some(existing) => *existing = item,
        None => items.push(item),
    }
}

/// The pod template `template` should have: with the sidecar for `target` = `Some((bc, repo))`,
/// without it for `None`. Pure and idempotent.
pub fn apply_backup(
    template: &PodTemplateSpec,
    target: Option<(&BackupConfiguration, &Repository)>,
    cfg: &InjectConfig,
) -> Result<PodTemplateSpec, InjectError> {
    let mut out = template.clone();
    let meta = out.metadata.get_or_insert_with(Default::default);
    let spec = out.spec.get_or_insert_with(Default::default);
    let Some((bc, repo)) = target else {
        spec.containers.retain(|c| c.name != SIDECAR);
        if let Some(a) = meta.annotations.as_mut() {
            a.remove(consts::LAST_APPLIED_BACKUP_CONFIGURATION_HASH_ANNOTATION);
            if a.is_empty() {
                meta.annotations = None;
            }
        }
        remove_stash_volumes_if_unused(spec);
        return Ok(out);
    };

    let secret = storage_secret(repo)?;
    let temp_dir = bc.spec.temp_dir.clone().unwrap_or_default();
    let target_mounts = bc
        .spec
        .target
        .as_ref()
        .map(|t| t.volume_mounts.as_slice())
        .unwrap_or_default();
    let run = [
        "run-backup".to_string(),
        format!("--backup-configuration={}", bc.name_any()),
    ];
    let mut sidecar = Container {
        security_context: Some(crate::identity::agent_security_context(
            Some(&application(spec)),
            crate::identity::Agent::Sidecar,
        )),
        ..agent_container(SIDECAR, run, repo, &temp_dir, target_mounts, cfg)
    };
    if let Some(c) = bc
        .spec
        .runtime_settings
        .as_ref()
        .and_then(|r| r.container.as_ref())
    {
        crate::runtime_settings::apply_container(&mut sidecar, c);
    }
    upsert(&mut spec.containers, sidecar, |c| c.name == SIDECAR);

    upsert_stash_volumes(spec, repo, &secret, &temp_dir);
    if let Some(pod) = bc
        .spec
        .runtime_settings
        .as_ref()
        .and_then(|r| r.pod.as_ref())
        && !pod.image_pull_secrets.is_empty()
    {
        let secrets = spec.image_pull_secrets.get_or_insert_with(Vec::new);
        for s in &pod.image_pull_secrets {
            if !secrets.contains(s) {
                secrets.push(s.clone());
            }
        }
    }
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(
        consts::LAST_APPLIED_BACKUP_CONFIGURATION_HASH_ANNOTATION.into(),
        spec_hash(bc),
    );
    Ok(out)
}

/// The application's own pod: `spec` without the containers stash-rs injected.
pub(crate) fn application(
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> k8s_openapi::api::core::v1::PodSpec {
    let mut app = spec.clone();
    app.containers.retain(|c| c.name != SIDECAR);
    if let Some(inits) = app.init_containers.as_mut() {
        inits.retain(|c| c.name != INIT_CONTAINER);
    }
    app
}

/// The Repository's storage Secret, which every injected container mounts.
fn storage_secret(repo: &Repository) -> Result<String, InjectError> {
    repo.spec
        .backend
        .storage_secret_name
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| InjectError::NoStorageSecret(repo.name_any()))
}

/// A `stash` container running `run` (the subcommand and its object) with the flags, env and
/// mounts the sidecar and the restore init-container share (§6.1, §6.2).
fn agent_container(
    name: &str,
    run: [String; 2],
    repo: &Repository,
    temp_dir: &stash_crds::common::EmptyDirSettings,
    target_mounts: &[VolumeMount],
    cfg: &InjectConfig,
) -> Container {
    let mut args = run.to_vec();
    args.extend([
        format!("--secret-dir={SECRET_DIR}"),
        format!("--enable-cache={}", temp_dir.enable_cache()),
        format!("--max-connections={}", repo.spec.backend.max_connections()),
        format!("--metrics-enabled={}", !cfg.pushgateway_url.is_empty()),
    ]);
    if !cfg.pushgateway_url.is_empty() {
        args.push(format!("--pushgateway-url={}", cfg.pushgateway_url));
    }
    Container {
        name: name.into(),
        image: Some(cfg.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: crate::names::agent_command(),
        args: Some(args),
        env: Some(vec![
            env_field("NODE_NAME", "spec.nodeName"),
            env_field("POD_NAME", "metadata.name"),
            env_field("POD_NAMESPACE", "metadata.namespace"),
        ]),
        volume_mounts: Some(stash_mounts(repo, target_mounts)),
        ..Default::default()
    }
}

/// The mounts every Stash container gets: pod info, the storage Secret, `/tmp`, the
/// target's volumes, and the local backend.
fn stash_mounts(repo: &Repository, target_mounts: &[VolumeMount]) -> Vec<VolumeMount> {
    let mut mounts = vec![
        VolumeMount {
            name: PODINFO_VOLUME.into(),
            mount_path: "/etc/stash".into(),
            ..Default::default()
        },
        VolumeMount {
            name: SECRET_VOLUME.into(),
            mount_path: SECRET_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: TMP_VOLUME.into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    mounts.extend(target_mounts.iter().cloned());
    // The whole volume is mounted at `mountPath`; restic's repository is `mountPath/subPath`
    // (§9.1), so `subPath` is applied once, by the repository path, not by the mount too.
    if let Some(local) = &repo.spec.backend.local {
        mounts.push(VolumeMount {
            name: LOCAL_VOLUME.into(),
            mount_path: local.mount_path.clone().unwrap_or_default(),
            ..Default::default()
        });
    }
    mounts
}

/// Upsert the pod volumes Stash containers mount.
fn upsert_stash_volumes(
    spec: &mut k8s_openapi::api::core::v1::PodSpec,
    repo: &Repository,
    secret: &str,
    temp_dir: &stash_crds::common::EmptyDirSettings,
) {
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    let mut ours = vec![
        Volume {
            name: TMP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: temp_dir.medium.clone(),
                size_limit: temp_dir.size_limit.clone(),
            }),
            ..Default::default()
        },
        Volume {
            name: PODINFO_VOLUME.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "labels".into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: SECRET_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    match &repo.spec.backend.local {
        Some(local) => ours.push(local.volume_source.to_volume(LOCAL_VOLUME)),
        None => volumes.retain(|v| v.name != LOCAL_VOLUME),
    }
    for v in ours {
        let name = v.name.clone();
        upsert(volumes, v, |x| x.name == name);
    }
}

fn remove_stash_volumes_if_unused(spec: &mut k8s_openapi::api::core::v1::PodSpec) {
    let sidecar = spec.containers.iter().any(|c| c.name == SIDECAR);
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == INIT_CONTAINER);
    if sidecar || init {
        return;
    }
    if let Some(vols) = spec.volumes.as_mut() {
        vols.retain(|v| {
            ![
                SCRATCH_VOLUME,
                PODINFO_VOLUME,
                SECRET_VOLUME,
                LOCAL_VOLUME,
                TMP_VOLUME,
            ]
            .contains(&v.name.as_str())
        });
        if vols.is_empty() {
            spec.volumes = None;
        }
    }
}

fn set_annotation(
    meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
    value: Option<String>,
) {
    match value {
        Some(v) => {
            meta.annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(key.into(), v);
        }
        None => {
            if let Some(a) = meta.annotations.as_mut() {
                a.remove(key);
                if a.is_empty() {
                    meta.annotations = None;
                }
            }
        }
    }
}

/// The RestoreSession that applies to workload `kind`/`name` (§5.3): of the non-deleted
/// Restic sessions whose target matches, Running first, then Pending, then Failed, else the
/// newest. The controller path and the webhook both use it.
pub fn applicable_restore<'a>(
    kind: crate::target::WorkloadKind,
    name: &str,
    sessions: &'a [RestoreSession],
) -> Option<&'a RestoreSession> {
    use stash_crds::restore_session::Phase;
    let rank = |rs: &RestoreSession| match rs.status.as_ref().and_then(|s| s.phase) {
        Some(Phase::Running) => 0,
        None | Some(Phase::Pending) => 1,
        Some(Phase::Failed) => 2,
        _ => 3,
    };
    let mut matching: Vec<&RestoreSession> = sessions
        .iter()
        .filter(|rs| {
            rs.metadata.deletion_timestamp.is_none()
                && rs.spec.driver() == stash_crds::common::Driver::Restic
        })
        .filter(|rs| {
            rs.spec
                .target
                .as_ref()
                .is_some_and(|t| kind.matches(&t.target_ref, name))
        })
        .collect();
    matching.sort_by(|a, b| {
        rank(a).cmp(&rank(b)).then_with(|| {
            b.metadata
                .creation_timestamp
                .cmp(&a.metadata.creation_timestamp)
        })
    });
    matching.into_iter().next()
}

/// Whether BackupConfiguration `bc` selects workload `kind`/`name` (of its namespace) for a
/// sidecar: not being deleted, driver Restic, exact target match. The one rule of the webhook,
/// the workload controller and the shared stores' lookup.
pub fn selects(bc: &BackupConfiguration, kind: crate::target::WorkloadKind, name: &str) -> bool {
    bc.metadata.deletion_timestamp.is_none()
        && bc.spec.driver() == stash_crds::common::Driver::Restic
        && bc
            .spec
            .target
            .as_ref()
            .is_some_and(|t| kind.matches(&t.target_ref, name))
}

/// The BackupConfiguration JSON recorded on the workload
/// (`last-applied-backupconfiguration`), written by the workload controller and the webhook
/// alike.
pub fn last_applied(bc: &BackupConfiguration) -> String {
    serde_json::json!({
        "apiVersion": "stash.appscode.com/v1beta1",
        "kind": "BackupConfiguration",
        "metadata": {"name": bc.name_any(), "namespace": bc.metadata.namespace},
        "spec": bc.spec,
    })
    .to_string()
}

/// The RestoreSession JSON recorded on the workload (`last-applied-restoresession`).
pub fn last_applied_restore(rs: &RestoreSession) -> String {
    serde_json::json!({
        "apiVersion": "stash.appscode.com/v1beta1",
        "kind": "RestoreSession",
        "metadata": {"name": rs.name_any(), "namespace": rs.metadata.namespace},
        "spec": rs.spec,
    })
    .to_string()
}

/// FNV-64a of the RestoreSession spec's JSON, in decimal.
pub fn restore_hash(rs: &RestoreSession) -> String {
    let json = serde_json::to_vec(&rs.spec).unwrap_or_default();
    let mut h = Fnv64a::default();
    h.write(&json);
    h.finish().to_string()
}

/// The pod template `template` should have for restore (§6.2): the `stash-init`
/// init-container for `target = Some((rs, repo))`, none for `None`. Pure and idempotent.
pub fn apply_restore(
    template: &PodTemplateSpec,
    target: Option<(&RestoreSession, &Repository)>,
    cfg: &InjectConfig,
) -> Result<PodTemplateSpec, InjectError> {
    let mut out = template.clone();
    let meta = out.metadata.get_or_insert_with(Default::default);
    let spec = out.spec.get_or_insert_with(Default::default);
    let Some((rs, repo)) = target else {
        if let Some(inits) = spec.init_containers.as_mut() {
            inits.retain(|c| c.name != INIT_CONTAINER);
            if inits.is_empty() {
                spec.init_containers = None;
            }
        }
        set_annotation(
            meta,
            consts::LAST_APPLIED_RESTORE_SESSION_HASH_ANNOTATION,
            None,
        );
        remove_stash_volumes_if_unused(spec);
        return Ok(out);
    };
    let secret = storage_secret(repo)?;
    let temp_dir = rs.spec.temp_dir.clone().unwrap_or_default();
    let target_mounts = rs
        .spec
        .target
        .as_ref()
        .map(|t| t.volume_mounts.as_slice())
        .unwrap_or_default();
    let run = [
        "restore".to_string(),
        format!("--restore-session={}", rs.name_any()),
    ];
    // Restores write files of any owner (docs/identity.md), merged with the user's settings.
    let mut init = Container {
        security_context: Some(crate::identity::agent_security_context(
            Some(&application(spec)),
            crate::identity::Agent::RestoreInit,
        )),
        ..agent_container(INIT_CONTAINER, run, repo, &temp_dir, target_mounts, cfg)
    };
    if let Some(c) = rs
        .spec
        .runtime_settings
        .as_ref()
        .and_then(|r| r.container.as_ref())
    {
        crate::runtime_settings::apply_container(&mut init, c);
    }
    // The restore runs before every other init-container.
    let inits = spec.init_containers.get_or_insert_with(Vec::new);
    inits.retain(|c| c.name != INIT_CONTAINER);
    inits.insert(0, init);
    upsert_stash_volumes(spec, repo, &secret, &temp_dir);
    set_annotation(
        meta,
        consts::LAST_APPLIED_RESTORE_SESSION_HASH_ANNOTATION,
        Some(restore_hash(rs)),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn fixtures() -> (PodTemplateSpec, BackupConfiguration, Repository) {
        let template = PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("busybox".into()),
                    ..Default::default()
                }],
                volumes: Some(vec![Volume {
                    name: "data".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        let bc: BackupConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
            "metadata": {"name": "bc", "namespace": "demo"},
            "spec": {"repository": {"name": "repo"}, "schedule": "* * * * *",
                     "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                                "directories": ["/source/data"],
                                "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}}
        }))
        .expect("bc");
        let repo: Repository = serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
            "metadata": {"name": "repo", "namespace": "demo"},
            "spec": {"backend": {"storageSecretName": "secret",
                                 "local": {"mountPath": "/safe/data", "hostPath": {"path": "/data/stash-test/repo"}}}}
        }))
        .expect("repo");
        (template, bc, repo)
    }

    fn cfg() -> InjectConfig {
        InjectConfig {
            image: "stash-rs/stash:test".into(),
            pushgateway_url: String::new(),
        }
    }

    #[test]
    fn injection_adds_the_sidecar_its_volumes_and_the_hash() {
        let (t, bc, repo) = fixtures();
        let out = apply_backup(&t, Some((&bc, &repo)), &cfg()).expect("inject");
        let spec = out.spec.as_ref().expect("spec");
        let sidecar = spec
            .containers
            .iter()
            .find(|c| c.name == SIDECAR)
            .expect("sidecar");
        let args = sidecar.args.clone().unwrap_or_default();
        assert_eq!(args[0], "run-backup");
        assert!(args.contains(&"--backup-configuration=bc".to_string()));
        let mounts: Vec<_> = sidecar
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert!(mounts.contains(&("data", "/source/data")));
        assert!(mounts.contains(&(LOCAL_VOLUME, "/safe/data")));
        let vols: Vec<_> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        for v in [
            "data",
            TMP_VOLUME,
            PODINFO_VOLUME,
            SECRET_VOLUME,
            LOCAL_VOLUME,
        ] {
            assert!(vols.contains(&v), "{v} in {vols:?}");
        }
        let ann = out
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .expect("annotations");
        assert_eq!(
            ann[consts::LAST_APPLIED_BACKUP_CONFIGURATION_HASH_ANNOTATION],
            spec_hash(&bc)
        );
    }

    #[test]
    fn injection_is_idempotent_and_removal_restores_the_original() {
        let (t, bc, repo) = fixtures();
        let once = apply_backup(&t, Some((&bc, &repo)), &cfg()).expect("inject");
        let twice = apply_backup(&once, Some((&bc, &repo)), &cfg()).expect("inject again");
        assert_eq!(once, twice);
        let removed = apply_backup(&twice, None, &cfg()).expect("remove");
        assert_eq!(
            removed.spec, t.spec,
            "tmp-dir and every other Stash volume are removed"
        );
    }

    #[test]
    fn a_repository_without_a_secret_is_refused() {
        let (t, bc, mut repo) = fixtures();
        repo.spec.backend.storage_secret_name = None;
        assert_eq!(
            apply_backup(&t, Some((&bc, &repo)), &cfg()),
            Err(InjectError::NoStorageSecret("repo".into()))
        );
    }

    #[test]
    fn pausing_or_rescheduling_does_not_change_the_spec_hash() {
        let (_, bc, _) = fixtures();
        let mut paused = bc.clone();
        paused.spec.paused = true;
        paused.spec.schedule = Some("*/7 * * * *".into());
        assert_eq!(spec_hash(&paused), spec_hash(&bc));
        let mut retargeted = bc.clone();
        if let Some(t) = retargeted.spec.target.as_mut() {
            t.directories.push("/elsewhere".into());
        }
        assert_ne!(spec_hash(&retargeted), spec_hash(&bc));
    }

    #[test]
    fn the_spec_hash_is_fnv64a_of_the_spec_json() {
        let mut h = Fnv64a::default();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn agents_never_run_as_default() {
        let (template, _, _) = fixtures();
        let k = WorkloadKind::Deployment;
        let t = with_service_account(&template, k, "app", true);
        assert_eq!(service_account(&t), "deployment-app-stash");
        assert_eq!(with_service_account(&t, k, "app", true), t);
        assert_eq!(with_service_account(&t, k, "app", false), template);
        let mut named = template.clone();
        named.spec.as_mut().expect("spec").service_account_name = Some("app-sa".into());
        assert_eq!(with_service_account(&named, k, "app", true), named);
        assert_eq!(with_service_account(&named, k, "app", false), named);
    }
}
