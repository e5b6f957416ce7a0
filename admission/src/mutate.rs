//! The mutating webhooks' decisions, pure: defaulting of our kinds, and the backup sidecar of
//! workloads through the same [`inject::apply_backup`] the workload controller calls, so a
//! workload created after its BackupConfiguration runs with the sidecar from its first pod and
//! the controller then finds nothing to change.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::ResourceExt;
use serde_json::{Value, json};
use stash_crds::{BackupConfiguration, Repository, consts};

use stash_core::{inject, target::WorkloadKind};

/// The outcome of a mutating decision: the object as it should be admitted (`None`: unchanged)
/// and remarks for the client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mutation {
    /// The whole object after mutation, when it changed.
    pub object: Option<Value>,
    /// Warnings shown by `kubectl` (e.g. why no sidecar was injected).
    pub warnings: Vec<String>,
}

impl Mutation {
    /// The JSON patch from `original` to the mutated object (`None` when unchanged).
    pub fn patch(&self, original: &Value) -> Option<json_patch::Patch> {
        let new = self.object.as_ref()?;
        let patch = json_patch::diff(original, new);
        if patch.0.is_empty() {
            None
        } else {
            Some(patch)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Defaulting of our kinds (CREATE only, so objects created before the webhook never change)

/// BackupConfiguration and RestoreSession: `spec.driver` defaults to `Restic`.
pub fn default_driver(obj: &Value) -> Mutation {
    if obj.pointer("/spec/driver").is_some_and(|d| !d.is_null()) {
        return Mutation::default();
    }
    let mut out = obj.clone();
    match out.get_mut("spec").and_then(Value::as_object_mut) {
        Some(spec) => {
            spec.insert("driver".into(), json!("Restic"));
        }
        None => {
            out["spec"] = json!({"driver": "Restic"});
        }
    }
    Mutation {
        object: Some(out),
        warnings: vec![],
    }
}

/// BackupSession: label `stash.appscode.com/backup-configuration` from
/// `spec.backupConfiguration.name` (or the later `spec.invoker.name` of kind
/// BackupConfiguration) when it is missing (manual sessions need it, §3.3).
pub fn default_backup_session(obj: &Value) -> Mutation {
    let invoker = obj
        .pointer("/spec/invoker")
        .filter(|i| i["kind"] == "BackupConfiguration")
        .and_then(|i| i["name"].as_str());
    let Some(name) = obj
        .pointer("/spec/backupConfiguration/name")
        .and_then(Value::as_str)
        .or(invoker)
        .filter(|n| !n.is_empty())
    else {
        return Mutation::default();
    };
    if obj
        .pointer("/metadata/labels")
        .and_then(|l| l.get(consts::BACKUP_CONFIGURATION_LABEL))
        .is_some()
    {
        return Mutation::default();
    }
    let mut out = obj.clone();
    let meta = out
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})));
    if let Some(meta) = meta.and_then(Value::as_object_mut) {
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if labels.is_null() {
            *labels = json!({});
        }
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(consts::BACKUP_CONFIGURATION_LABEL.into(), json!(name));
        }
    }
    Mutation {
        object: Some(out),
        warnings: vec![],
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

pub use stash_core::inject::last_applied;

/// The BackupConfigurations (of the workload's namespace) that target workload `kind`/`name`,
/// as the controller selects them ([`stash_core::inject::selects`]).
pub fn targeting<'a>(
    kind: WorkloadKind,
    name: &str,
    bcs: &'a [BackupConfiguration],
) -> Vec<&'a BackupConfiguration> {
    bcs.iter()
        .filter(|bc| stash_core::inject::selects(bc, kind, name))
        .collect()
}

/// Is this a ReplicaSet owned by a Deployment (it follows its Deployment, never mutated)?
pub fn owned_by_deployment(obj: &Value) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r["kind"] == "Deployment" && r["controller"].as_bool() == Some(true))
        })
}

fn has_sidecar(template: &PodTemplateSpec) -> bool {
    template
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == inject::SIDECAR))
}

/// The sidecar decision for one workload object (`obj`, its JSON as admitted). `bcs` are the
/// BackupConfigurations of its namespace; `repository(name)` finds a Repository of that
/// namespace. Mirrors the workload controller: the same BackupConfiguration selection, the
/// same pod template ([`inject::apply_backup`]), the same `last-applied-backupconfiguration`
/// annotation, and RollingUpdate forced on DaemonSets and StatefulSets whose template changes.
///
/// Problems the controller reports as events (several BackupConfigurations, a missing
/// Repository, a Repository without storage Secret) admit the object unchanged with a warning,
/// as upstream's `failurePolicy: Ignore` did.
pub fn mutate_workload(
    kind: WorkloadKind,
    obj: &Value,
    bcs: &[BackupConfiguration],
    repository: impl Fn(&str) -> Option<Repository>,
    restore: Option<(&stash_crds::RestoreSession, &Repository)>,
    cfg: &inject::InjectConfig,
) -> Mutation {
    if kind == WorkloadKind::ReplicaSet && owned_by_deployment(obj) {
        return Mutation::default();
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let current: PodTemplateSpec = match obj.pointer("/spec/template") {
        Some(t) => match serde_json::from_value(t.clone()) {
            Ok(t) => t,
            Err(e) => return warn(format!("stash: cannot read spec.template: {e}")),
        },
        None => PodTemplateSpec::default(),
    };
    let annotations: BTreeMap<String, String> = obj
        .pointer("/metadata/annotations")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();
    let current_annotation = annotations
        .get(consts::LAST_APPLIED_BACKUP_CONFIGURATION_ANNOTATION)
        .cloned();
    let current_restore_annotation = annotations
        .get(consts::LAST_APPLIED_RESTORE_SESSION_ANNOTATION)
        .cloned();
    let has_init = current.spec.as_ref().is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .any(|c| c.name == inject::INIT_CONTAINER)
    });

    let matching = targeting(kind, name, bcs);
    if matching.len() > 1 {
        let names: Vec<String> = matching.iter().map(|b| b.name_any()).collect();
        return warn(format!(
            "stash: more than one BackupConfiguration targets {} {name}: {}; no sidecar injected",
            kind.kind(),
            names.join(", ")
        ));
    }
    let target = match matching.first() {
        None => None,
        Some(bc) => {
            let repo_name = bc
                .spec
                .repository
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default();
            match repository(&repo_name) {
                Some(repo) => Some(((*bc).clone(), repo)),
                None => {
                    return warn(format!(
                        "stash: Repository {repo_name:?} of BackupConfiguration {} not found; no sidecar injected",
                        bc.name_any()
                    ));
                }
            }
        }
    };
    // Nothing of ours on the object and nothing to add: leave it alone entirely.
    let restore_untouched = restore.is_none() && current_restore_annotation.is_none() && !has_init;
    if target.is_none()
        && current_annotation.is_none()
        && !has_sidecar(&current)
        && restore_untouched
    {
        return Mutation::default();
    }
    let injected = target.is_some() || restore.is_some();
    let desired = match inject::apply_backup(&current, target.as_ref().map(|(b, r)| (b, r)), cfg)
        .and_then(|t| inject::apply_restore(&t, restore, cfg))
        .map(|t| inject::with_service_account(&t, kind, name, injected))
    {
        Ok(d) => d,
        Err(e) => return warn(format!("stash: {e}; nothing injected")),
    };
    let desired_annotation = target.as_ref().map(|(bc, _)| last_applied(bc));
    let desired_restore_annotation = restore.map(|(rs, _)| inject::last_applied_restore(rs));
    if desired == current
        && desired_annotation == current_annotation
        && desired_restore_annotation == current_restore_annotation
    {
        return Mutation::default();
    }
    let mut out = obj.clone();
    let template = match serde_json::to_value(&desired) {
        Ok(t) => t,
        Err(e) => return warn(format!("stash: cannot write spec.template: {e}")),
    };
    let Some(root) = out.as_object_mut() else {
        return Mutation::default();
    };
    let spec = root.entry("spec").or_insert_with(|| json!({}));
    if desired != current {
        spec["template"] = template;
        match kind {
            WorkloadKind::DaemonSet | WorkloadKind::StatefulSet => {
                let strategy = spec
                    .as_object_mut()
                    .map(|s| s.entry("updateStrategy").or_insert_with(|| json!({})));
                if let Some(strategy) = strategy {
                    if !strategy.is_object() {
                        *strategy = json!({});
                    }
                    strategy["type"] = json!("RollingUpdate");
                }
            }
            _ => {}
        }
    }
    let meta = root.entry("metadata").or_insert_with(|| json!({}));
    let mut new_annotations = annotations;
    for (key, value) in [
        (
            consts::LAST_APPLIED_BACKUP_CONFIGURATION_ANNOTATION,
            desired_annotation,
        ),
        (
            consts::LAST_APPLIED_RESTORE_SESSION_ANNOTATION,
            desired_restore_annotation,
        ),
    ] {
        match value {
            Some(a) => {
                new_annotations.insert(key.into(), a);
            }
            None => {
                new_annotations.remove(key);
            }
        }
    }
    if let Some(m) = meta.as_object_mut() {
        if new_annotations.is_empty() {
            m.remove("annotations");
        } else {
            m.insert("annotations".into(), json!(new_annotations));
        }
    }
    Mutation {
        object: Some(out),
        warnings: vec![],
    }
}

fn warn(w: String) -> Mutation {
    Mutation {
        object: None,
        warnings: vec![w],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> inject::InjectConfig {
        inject::InjectConfig {
            image: "stash-rs/stash:test".into(),
            pushgateway_url: String::new(),
        }
    }

    fn bc(name: &str, target: &str) -> BackupConfiguration {
        serde_json::from_value(json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {"repository": {"name": "repo"}, "schedule": "* * * * *",
                     "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                                "directories": ["/source/data"],
                                "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}}
        }))
        .expect("bc")
    }

    fn repo() -> Repository {
        serde_json::from_value(json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
            "metadata": {"name": "repo", "namespace": "demo"},
            "spec": {"backend": {"storageSecretName": "secret", "s3": {"bucket": "b"}}}
        }))
        .expect("repo")
    }

    fn deployment(name: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "3600"]}],
                                           "volumes": [{"name": "data", "emptyDir": {}}]}}}
        })
    }

    fn apply(patch: &json_patch::Patch, obj: &Value) -> Value {
        let mut out = obj.clone();
        json_patch::patch(&mut out, patch).expect("patch applies");
        out
    }

    #[test]
    fn a_targeted_deployment_gets_the_sidecar_and_the_annotation() {
        let d = deployment("app");
        let bcs = [bc("bc", "app")];
        let m = mutate_workload(
            WorkloadKind::Deployment,
            &d,
            &bcs,
            |n| (n == "repo").then(repo),
            None,
            &cfg(),
        );
        let patch = m.patch(&d).expect("a patch");
        let out = apply(&patch, &d);
        let containers = out
            .pointer("/spec/template/spec/containers")
            .and_then(Value::as_array)
            .expect("containers");
        assert!(containers.iter().any(|c| c["name"] == "stash"), "{out:#}");
        assert_eq!(
            out.pointer("/metadata/annotations")
                .and_then(|a| a.get(consts::LAST_APPLIED_BACKUP_CONFIGURATION_ANNOTATION)),
            Some(&json!(last_applied(&bcs[0])))
        );
        // Idempotent: the mutated object needs nothing more.
        let again = mutate_workload(
            WorkloadKind::Deployment,
            &out,
            &bcs,
            |n| (n == "repo").then(repo),
            None,
            &cfg(),
        );
        assert_eq!(again, Mutation::default());
        // Same template as the controller path computes.
        let template: PodTemplateSpec =
            serde_json::from_value(d["spec"]["template"].clone()).expect("template");
        let controller =
            inject::apply_backup(&template, Some((&bcs[0], &repo())), &cfg()).expect("inject");
        let name = d["metadata"]["name"].as_str().expect("name");
        let controller =
            inject::with_service_account(&controller, WorkloadKind::Deployment, name, true);
        assert_eq!(
            serde_json::from_value::<PodTemplateSpec>(out["spec"]["template"].clone()).expect("t"),
            controller
        );
    }

    #[test]
    fn untargeted_workloads_are_left_alone() {
        let d = deployment("other");
        let m = mutate_workload(
            WorkloadKind::Deployment,
            &d,
            &[bc("bc", "app")],
            |_| Some(repo()),
            None,
            &cfg(),
        );
        assert_eq!(m, Mutation::default());
    }

    #[test]
    fn the_sidecar_is_removed_when_no_configuration_targets_the_workload_any_more() {
        let d = deployment("app");
        let bcs = [bc("bc", "app")];
        let injected = apply(
            &mutate_workload(
                WorkloadKind::Deployment,
                &d,
                &bcs,
                |_| Some(repo()),
                None,
                &cfg(),
            )
            .patch(&d)
            .expect("patch"),
            &d,
        );
        let m = mutate_workload(
            WorkloadKind::Deployment,
            &injected,
            &[],
            |_| Some(repo()),
            None,
            &cfg(),
        );
        let out = apply(&m.patch(&injected).expect("removal patch"), &injected);
        let containers = out
            .pointer("/spec/template/spec/containers")
            .and_then(Value::as_array)
            .expect("containers");
        assert!(!containers.iter().any(|c| c["name"] == "stash"));
        assert!(out.pointer("/metadata/annotations").is_none());
    }

    #[test]
    fn problems_admit_unchanged_with_a_warning() {
        let d = deployment("app");
        let two = [bc("a", "app"), bc("b", "app")];
        let m = mutate_workload(
            WorkloadKind::Deployment,
            &d,
            &two,
            |_| Some(repo()),
            None,
            &cfg(),
        );
        assert!(
            m.object.is_none() && m.warnings[0].contains("more than one BackupConfiguration"),
            "{m:?}"
        );
        let m = mutate_workload(
            WorkloadKind::Deployment,
            &d,
            &[bc("a", "app")],
            |_| None,
            None,
            &cfg(),
        );
        assert!(
            m.object.is_none() && m.warnings[0].contains("Repository \"repo\""),
            "{m:?}"
        );
        let mut r = repo();
        r.spec.backend.storage_secret_name = None;
        let m = mutate_workload(
            WorkloadKind::Deployment,
            &d,
            &[bc("a", "app")],
            |_| Some(r.clone()),
            None,
            &cfg(),
        );
        assert!(
            m.object.is_none() && m.warnings[0].contains("storageSecretName"),
            "{m:?}"
        );
    }

    #[test]
    fn replicasets_of_deployments_are_skipped_and_daemonsets_roll() {
        let mut rs = deployment("app");
        rs["kind"] = json!("ReplicaSet");
        rs["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "app", "uid": "u", "controller": true}]);
        let mut bcs = vec![bc("bc", "app")];
        bcs[0].spec.target.as_mut().expect("target").target_ref.kind = Some("ReplicaSet".into());
        assert_eq!(
            mutate_workload(
                WorkloadKind::ReplicaSet,
                &rs,
                &bcs,
                |_| Some(repo()),
                None,
                &cfg()
            ),
            Mutation::default()
        );

        let mut ds = deployment("app");
        ds["kind"] = json!("DaemonSet");
        ds["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        bcs[0].spec.target.as_mut().expect("target").target_ref.kind = Some("DaemonSet".into());
        let m = mutate_workload(
            WorkloadKind::DaemonSet,
            &ds,
            &bcs,
            |_| Some(repo()),
            None,
            &cfg(),
        );
        let out = apply(&m.patch(&ds).expect("patch"), &ds);
        assert_eq!(out["spec"]["updateStrategy"]["type"], "RollingUpdate");
    }

    #[test]
    fn defaulting() {
        let bc = json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration", "metadata": {"name": "x"}, "spec": {"schedule": "@hourly"}});
        let m = default_driver(&bc);
        assert_eq!(m.object.expect("defaulted")["spec"]["driver"], "Restic");
        let explicit = json!({"spec": {"driver": "VolumeSnapshotter"}});
        assert_eq!(default_driver(&explicit), Mutation::default());

        let bs =
            json!({"metadata": {"name": "s"}, "spec": {"backupConfiguration": {"name": "bc"}}});
        let out = default_backup_session(&bs).object.expect("labelled");
        assert_eq!(
            out["metadata"]["labels"][consts::BACKUP_CONFIGURATION_LABEL],
            "bc"
        );
        let labelled = json!({"metadata": {"name": "s", "labels": {consts::BACKUP_CONFIGURATION_LABEL: "other"}},
                              "spec": {"backupConfiguration": {"name": "bc"}}});
        assert_eq!(
            default_backup_session(&labelled),
            Mutation::default(),
            "an explicit label is kept (and validated)"
        );
        let p = Mutation {
            object: Some(out.clone()),
            warnings: vec![],
        }
        .patch(&bs)
        .expect("patch");
        assert_eq!(apply(&p, &bs), out);
    }
}
