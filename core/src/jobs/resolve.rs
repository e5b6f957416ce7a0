//! Task resolution (stash-api.md §6.3), pure: the Task and its Functions, with the inputs
//! substituted, become the pod's init-containers (every step but the last, in order), its one
//! container (the last step) and its volumes.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodSecurityContext, PodSpec, Volume,
    VolumeMount,
};
use stash_crds::{
    Function, Task,
    common::Param,
    runtime::{ContainerRuntimeSettings, PodRuntimeSettings},
};

use super::envsubst::{Inputs, subst_object};

/// The resolved pod parts.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// Every step but the last.
    pub init_containers: Vec<Container>,
    /// The last step.
    pub container: Container,
    /// The Task's volumes.
    pub volumes: Vec<Volume>,
}

/// `<function name with '.'→'-'>-<step index>`.
pub fn container_name(function: &str, index: usize) -> String {
    format!("{}-{index}", function.replace('.', "-"))
}

fn overlay(base: &mut Inputs, params: &[Param]) {
    for p in params {
        base.insert(p.name.clone(), p.value.clone());
    }
}

/// Resolve `task` with `functions` (by name). Inputs, highest precedence first: `implicit` >
/// `user_params` (BackupConfiguration/RestoreSession `spec.task.params`) > the step's params.
pub fn resolve(
    task: &Task,
    functions: &BTreeMap<String, Function>,
    user_params: &[Param],
    implicit: &Inputs,
) -> Result<Resolved, String> {
    let task_name = task.metadata.name.clone().unwrap_or_default();
    let mut task_inputs = Inputs::new();
    overlay(&mut task_inputs, user_params);
    task_inputs.extend(implicit.iter().map(|(k, v)| (k.clone(), v.clone())));
    let task: Task =
        subst_object(task, &task_inputs).map_err(|e| format!("Task {task_name}: {e}"))?;
    if task.spec.steps.is_empty() {
        return Err(format!("Task {task_name} has no steps"));
    }
    let mut containers = Vec::new();
    for (i, step) in task.spec.steps.iter().enumerate() {
        let f = functions.get(&step.name).ok_or_else(|| {
            format!(
                "Task {task_name}, step {i}: Function {} not found",
                step.name
            )
        })?;
        let mut inputs = Inputs::new();
        overlay(&mut inputs, &step.params);
        overlay(&mut inputs, user_params);
        inputs.extend(implicit.iter().map(|(k, v)| (k.clone(), v.clone())));
        let f: Function = subst_object(f, &inputs)
            .map_err(|e| format!("Task {task_name}, step {i} (Function {}): {e}", step.name))?;
        let s = f.spec;
        let image = s
            .image
            .clone()
            .filter(|i| !i.is_empty())
            .ok_or_else(|| format!("Function {} has no image", step.name))?;
        let mut c = Container {
            name: container_name(&step.name, i),
            image: Some(image),
            command: (!s.command.is_empty()).then(|| s.command.clone()),
            args: (!s.args.is_empty()).then(|| s.args.clone()),
            working_dir: s.working_dir.clone(),
            ports: (!s.ports.is_empty()).then(|| s.ports.clone()),
            volume_mounts: (!s.volume_mounts.is_empty()).then(|| s.volume_mounts.clone()),
            volume_devices: (!s.volume_devices.is_empty()).then(|| s.volume_devices.clone()),
            image_pull_policy: Some("IfNotPresent".into()),
            ..Default::default()
        };
        if let Some(rs) = &s.runtime_settings {
            crate::runtime_settings::apply_container(&mut c, rs);
        }
        containers.push(c);
    }
    let container = containers.pop().expect("at least one step");
    Ok(Resolved {
        init_containers: containers,
        container,
        volumes: task.spec.volumes,
    })
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

/// What every job container gets: pod identity in the environment (plus `extra_env`), the
/// `/tmp` and backend mounts (unless already mounted there), then the session's container
/// runtimeSettings on top.
pub fn decorate(
    c: &mut Container,
    mounts: &[VolumeMount],
    extra_env: &[EnvVar],
    settings: Option<&ContainerRuntimeSettings>,
) {
    let env = c.env.get_or_insert_with(Vec::new);
    for e in [
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("NODE_NAME", "spec.nodeName"),
    ]
    .into_iter()
    .chain(extra_env.iter().cloned())
    {
        env.retain(|x| x.name != e.name);
        env.push(e);
    }
    let vm = c.volume_mounts.get_or_insert_with(Vec::new);
    for m in mounts {
        if !vm.iter().any(|x| x.mount_path == m.mount_path) {
            vm.push(m.clone());
        }
    }
    // Job-model containers run as root with restore's capabilities (docs/identity.md); a
    // Function's own securityContext, then runtimeSettings, win field by field.
    let ours = crate::identity::agent_security_context(None, crate::identity::Agent::Job);
    c.security_context = Some(match c.security_context.take() {
        Some(function) => crate::identity::merge(ours, &function),
        None => ours,
    });
    if let Some(s) = settings {
        crate::runtime_settings::apply_container(c, s);
    }
}

/// Pod-level runtimeSettings: each field that is set replaces the pod's (§2.6).
pub fn apply_pod(spec: &mut PodSpec, s: &PodRuntimeSettings) {
    if s.node_selector.as_ref().is_some_and(|m| !m.is_empty()) {
        spec.node_selector = s.node_selector.clone();
    }
    if let Some(sa) = s.service_account_name.as_ref().filter(|x| !x.is_empty()) {
        spec.service_account_name = Some(sa.clone());
    }
    if s.automount_service_account_token.is_some() {
        spec.automount_service_account_token = s.automount_service_account_token;
    }
    if let Some(n) = s.node_name.as_ref().filter(|x| !x.is_empty()) {
        spec.node_name = Some(n.clone());
    }
    if let Some(sc) = &s.security_context {
        spec.security_context = Some(merge_security_context(
            spec.security_context.clone().unwrap_or_default(),
            sc,
        ));
    }
    if !s.image_pull_secrets.is_empty() {
        spec.image_pull_secrets = Some(s.image_pull_secrets.clone());
    }
    if s.affinity.is_some() {
        spec.affinity = s.affinity.clone();
    }
    if let Some(x) = s.scheduler_name.as_ref().filter(|x| !x.is_empty()) {
        spec.scheduler_name = Some(x.clone());
    }
    if !s.tolerations.is_empty() {
        spec.tolerations = Some(s.tolerations.clone());
    }
    if let Some(x) = s.priority_class_name.as_ref().filter(|x| !x.is_empty()) {
        spec.priority_class_name = Some(x.clone());
    }
    if s.priority.is_some() {
        spec.priority = s.priority;
    }
    if !s.readiness_gates.is_empty() {
        spec.readiness_gates = Some(s.readiness_gates.clone());
    }
    if let Some(x) = s.runtime_class_name.as_ref().filter(|x| !x.is_empty()) {
        spec.runtime_class_name = Some(x.clone());
    }
    if s.enable_service_links.is_some() {
        spec.enable_service_links = s.enable_service_links;
    }
}

/// `user` over `base`, field by field (restore Jobs default to root, §6.4).
pub fn merge_security_context(
    base: PodSecurityContext,
    user: &PodSecurityContext,
) -> PodSecurityContext {
    let mut b = serde_json::to_value(base).unwrap_or_default();
    if let (Some(bo), Ok(serde_json::Value::Object(u))) =
        (b.as_object_mut(), serde_json::to_value(user))
    {
        for (k, v) in u {
            bo.insert(k, v);
        }
    }
    serde_json::from_value(b).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::builtin;

    fn fns() -> BTreeMap<String, Function> {
        builtin::functions("img")
            .into_iter()
            .map(|f| (f.metadata.name.clone().unwrap_or_default(), f))
            .collect()
    }

    fn implicit() -> Inputs {
        [
            ("REPOSITORY_PROVIDER", "local"),
            ("REPOSITORY_PREFIX", "/repo"),
            ("REPOSITORY_SECRET_NAME", "sec"),
            ("TARGET_NAME", "data"),
            ("TARGET_DIRECTORIES", "/source/data"),
            ("TARGET_MOUNT_PATH", "/source/data"),
            ("HOSTNAME", "host-0"),
            ("NAMESPACE", "ns"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn steps_become_init_containers_then_the_container() {
        let task = &builtin::tasks()[0];
        let r = resolve(task, &fns(), &[], &implicit()).expect("resolved");
        assert_eq!(r.init_containers.len(), 1);
        let init = &r.init_containers[0];
        assert_eq!(init.name, "pvc-backup-0");
        assert_eq!(r.container.name, "update-status-1");
        let args = init.args.clone().unwrap_or_default();
        assert!(
            args.contains(&"--backup-dirs=/source/data".to_string()),
            "{args:?}"
        );
        assert!(args.contains(&"--output-dir=/tmp/output".to_string()));
        assert!(args.contains(&"--retention-keep-last=0".to_string()));
        let mounts = init.volume_mounts.clone().unwrap_or_default();
        assert_eq!(mounts[0].name, "target-volume");
        assert_eq!(mounts[0].mount_path, "/source/data");
        assert_eq!(
            r.volumes[0]
                .persistent_volume_claim
                .as_ref()
                .map(|p| p.claim_name.as_str()),
            Some("data")
        );
        assert_eq!(
            r.volumes[1]
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some("sec")
        );
        assert_eq!(container_name("pg-backup-11.2", 0), "pg-backup-11-2-0");
    }

    #[test]
    fn precedence_is_implicit_then_user_then_step() {
        let task = &builtin::tasks()[0];
        let user = [
            Param {
                name: "outputDir".into(),
                value: "/tmp/user".into(),
            },
            Param {
                name: "HOSTNAME".into(),
                value: "mine".into(),
            },
        ];
        let r = resolve(task, &fns(), &user, &implicit()).expect("resolved");
        let args = r.init_containers[0].args.clone().unwrap_or_default();
        assert!(
            args.contains(&"--output-dir=/tmp/user".to_string()),
            "user params beat step params"
        );
        assert!(
            args.contains(&"--hostname=host-0".to_string()),
            "implicit inputs beat user params"
        );
    }

    #[test]
    fn unresolved_variables_and_missing_functions_are_named() {
        let task = &builtin::tasks()[0];
        let mut i = implicit();
        i.remove("TARGET_DIRECTORIES");
        let e = resolve(task, &fns(), &[], &i).unwrap_err();
        assert!(
            e.contains("input/default value not found for key TARGET_DIRECTORIES"),
            "{e}"
        );
        let mut i = implicit();
        i.remove("TARGET_NAME");
        let e = resolve(task, &fns(), &[], &i).unwrap_err();
        assert!(
            e.contains("Task pvc-backup") && e.contains("TARGET_NAME"),
            "{e}"
        );
        let mut f = fns();
        f.remove("update-status");
        let e = resolve(task, &f, &[], &implicit()).unwrap_err();
        assert!(e.contains("Function update-status not found"), "{e}");
    }

    #[test]
    fn decoration_and_pod_settings() {
        let mut c = Container {
            name: "c".into(),
            ..Default::default()
        };
        let tmp = VolumeMount {
            name: "tmp-dir".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        };
        let s: ContainerRuntimeSettings =
            serde_json::from_value(serde_json::json!({"resources": {"requests": {"cpu": "50m"}}, "nice": {"adjustment": 5}})).expect("s");
        decorate(&mut c, &[tmp.clone(), tmp], &[], Some(&s));
        assert_eq!(c.volume_mounts.as_ref().map(Vec::len), Some(1));
        assert!(
            c.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_some(),
            "requests apply (decision 4)"
        );
        let env: Vec<_> = c
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            env,
            ["POD_NAME", "POD_NAMESPACE", "NODE_NAME", "NICE_ADJUSTMENT"]
        );
        let mut spec = PodSpec {
            security_context: Some(PodSecurityContext {
                run_as_user: Some(0),
                run_as_group: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p: PodRuntimeSettings = serde_json::from_value(serde_json::json!({"serviceAccountName": "sa", "securityContext": {"runAsUser": 1000}, "nodeSelector": {"a": "b"}})).expect("p");
        apply_pod(&mut spec, &p);
        assert_eq!(spec.service_account_name.as_deref(), Some("sa"));
        let sc = spec.security_context.expect("sc");
        assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1000), Some(0)));
    }
}
