//! Who the agents run as, and what a namespace's PodSecurity level lets them do: the one rule
//! (docs/identity.md) that the sidecar, the restore init-container, the job-model pods and the
//! Snapshot API's reader Pods all follow.
//!
//! * **Root, with only the privileges restic needs**, as Stash ran: an agent must read private
//!   application data (0600 files of any owner) and write repositories that root or another
//!   agent created (a `hostPath` made with `mkdir`, an upstream Stash repository of 0400
//!   files). Every capability is dropped but `DAC_OVERRIDE` (read and write whatever the
//!   files' modes say), and a restore also keeps `CHOWN`, `FOWNER` and `FSETID` to give files
//!   back their owners, modes and times. No privilege escalation, the runtime's default seccomp
//!   profile, and for the sidecar and reader Pods a read-only root filesystem (restic works in
//!   the `/tmp` volume; a restore sets the metadata of the target's parent directories, which
//!   are the container's own). Every capability
//!   kept is one PodSecurity `baseline` allows. One identity (root) for every agent of a
//!   repository keeps the repository usable by all of them, whichever wrote last.
//! * **The workload's own user** where the workload forbids root (`runAsNonRoot: true` on its
//!   pod or on every container, as PodSecurity `restricted` demands): the agent takes the
//!   workload's `runAsUser`/`runAsGroup` (the pod's `fsGroup` applies to every container
//!   anyway), keeps no capability and says `runAsNonRoot: true`. It reads and writes exactly
//!   what the application can; its repository must be one that user can write (an object
//!   store, or a volume the `fsGroup` owns).
//! * `runtimeSettings.container.securityContext` overrides, field by field; an agent given a
//!   non-root user keeps no capability (they would not be effective anyway).
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext,
};
use stash_crds::Repository;

/// Which agent a security context is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// The backup sidecar (reads the data, writes the repository).
    Sidecar,
    /// The restore init-container (writes the data back, with owners and modes).
    RestoreInit,
    /// A job-model backup or restore pod's containers.
    Job,
    /// The Snapshot API's reader Pod (lists, reads and prunes the repository).
    Reader,
}

impl Agent {
    /// The capabilities a root agent keeps.
    fn capabilities(self) -> &'static [&'static str] {
        match self {
            Agent::Sidecar | Agent::Reader => &["DAC_OVERRIDE"],
            Agent::RestoreInit | Agent::Job => &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"],
        }
    }
}

/// Whether the workload's pod forbids root: `runAsNonRoot: true` on the pod (and not undone by
/// a container), or on every container.
pub fn requires_non_root(pod: &PodSpec) -> bool {
    let pod_level = pod
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        .unwrap_or(false);
    let containers: Vec<Option<bool>> = pod
        .containers
        .iter()
        .map(|c| c.security_context.as_ref().and_then(|s| s.run_as_non_root))
        .collect();
    if containers.is_empty() {
        return pod_level;
    }
    containers.iter().all(|c| c.unwrap_or(pod_level))
}

/// The user and group the workload's first container runs as (its own settings over the
/// pod's); `None` where only the image knows.
pub fn workload_user(pod: &PodSpec) -> (Option<i64>, Option<i64>) {
    let p = pod.security_context.as_ref();
    let c = pod
        .containers
        .first()
        .and_then(|c| c.security_context.as_ref());
    (
        c.and_then(|s| s.run_as_user)
            .or_else(|| p.and_then(|s| s.run_as_user)),
        c.and_then(|s| s.run_as_group)
            .or_else(|| p.and_then(|s| s.run_as_group)),
    )
}

fn restricted_basics() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn drop_all(add: &[&str]) -> Capabilities {
    Capabilities {
        drop: Some(vec!["ALL".into()]),
        add: (!add.is_empty()).then(|| add.iter().map(|c| c.to_string()).collect()),
    }
}

/// The security context of `agent`'s container beside (or for) the workload `pod`
/// (`None`: no workload, as for job-model and reader pods), before `runtimeSettings`.
pub fn agent_security_context(pod: Option<&PodSpec>, agent: Agent) -> SecurityContext {
    // A restore sets the metadata of the target's parent directories too (`/source` of
    // `/source/data`), which live in the container's root filesystem.
    let read_only = matches!(agent, Agent::Sidecar | Agent::Reader);
    let base = SecurityContext {
        read_only_root_filesystem: read_only.then_some(true),
        ..restricted_basics()
    };
    match pod.filter(|p| requires_non_root(p)) {
        Some(p) => {
            let (user, group) = workload_user(p);
            SecurityContext {
                run_as_non_root: Some(true),
                run_as_user: user,
                run_as_group: group,
                capabilities: Some(drop_all(&[])),
                ..base
            }
        }
        // A job-model pod says root at the pod level ([`job_pod_security_context`]), where
        // `runtimeSettings.pod.securityContext` can change it.
        None if agent == Agent::Job => SecurityContext {
            capabilities: Some(drop_all(agent.capabilities())),
            ..base
        },
        None => SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            capabilities: Some(drop_all(agent.capabilities())),
            ..base
        },
    }
}

/// `user` over `ours`, field by field; a non-root result keeps no capability.
pub fn merge(ours: SecurityContext, user: &SecurityContext) -> SecurityContext {
    let mut b = serde_json::to_value(&ours).unwrap_or_default();
    if let (Some(bo), Ok(serde_json::Value::Object(u))) =
        (b.as_object_mut(), serde_json::to_value(user))
    {
        for (k, v) in u {
            bo.insert(k, v);
        }
    }
    let mut merged: SecurityContext = serde_json::from_value(b).unwrap_or(ours);
    if merged.run_as_user.is_some_and(|u| u != 0) && user.capabilities.is_none() {
        merged.capabilities = Some(drop_all(&[]));
    }
    merged
}

/// The pod-level security context of a job-model or reader pod: root, the runtime's default
/// seccomp profile.
pub fn job_pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(0),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A namespace's enforced PodSecurity level (label `pod-security.kubernetes.io/enforce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// No label, or `privileged`.
    Privileged,
    /// `baseline`: no hostPath volumes, no capabilities beyond the runtime's defaults.
    Baseline,
    /// `restricted`: baseline, and non-root, no capabilities, no privilege escalation, a
    /// seccomp profile.
    Restricted,
}

/// The label PodSecurity admission enforces.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

impl Level {
    /// The level a namespace with `labels` enforces; a value PodSecurity does not know counts
    /// as `restricted`, as PodSecurity admission evaluates it.
    pub fn of(labels: Option<&BTreeMap<String, String>>) -> Level {
        match labels
            .and_then(|l| l.get(ENFORCE_LABEL))
            .map(String::as_str)
        {
            None | Some("privileged") => Level::Privileged,
            Some("baseline") => Level::Baseline,
            Some(_) => Level::Restricted,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// Why the agents stash-rs would add to `pod` (a workload's pod, with or without agents
/// injected already; `None` when not known yet)
/// for `repo` cannot run in namespace `ns` enforcing `level`: the pods would be refused by
/// PodSecurity admission. `None`: they can.
pub fn refusal(ns: &str, level: Level, repo: &Repository, pod: Option<&PodSpec>) -> Option<String> {
    if level >= Level::Baseline
        && let Some(local) = &repo.spec.backend.local
        && local.volume_source.host_path.is_some()
    {
        let path = local
            .volume_source
            .host_path
            .as_ref()
            .map(|h| h.path.clone())
            .unwrap_or_default();
        return Some(format!(
            "namespace {ns} enforces PodSecurity level \"{}\", which forbids hostPath volumes: \
             the agents would mount Repository {}'s hostPath {path}; use a PersistentVolumeClaim \
             or an object store for this namespace's repositories",
            level.name(),
            kube::ResourceExt::name_any(repo),
        ));
    }
    if level == Level::Restricted
        && let Some(p) = pod.map(crate::inject::application)
        && !requires_non_root(&p)
    {
        return Some(format!(
            "namespace {ns} enforces PodSecurity level \"restricted\": the agents run as the \
             workload does, and this workload's pod does not set runAsNonRoot: true, so they \
             would run as root, which the level forbids"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;

    fn pod(pod_sc: serde_json::Value, container_sc: serde_json::Value) -> PodSpec {
        serde_json::from_value(serde_json::json!({
            "securityContext": pod_sc,
            "containers": [{"name": "app", "securityContext": container_sc}]
        }))
        .expect("pod")
    }

    #[test]
    fn a_workload_without_a_user_gets_root_agents_with_only_dac_override() {
        let sc = agent_security_context(
            Some(&pod(serde_json::json!({}), serde_json::json!({}))),
            Agent::Sidecar,
        );
        assert_eq!((sc.run_as_user, sc.run_as_group), (Some(0), Some(0)));
        let caps = sc.capabilities.expect("caps");
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(caps.add, Some(vec!["DAC_OVERRIDE".to_string()]));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.seccomp_profile.map(|s| s.type_),
            Some("RuntimeDefault".into())
        );
    }

    #[test]
    fn a_workload_running_as_a_user_without_run_as_non_root_still_gets_root_agents() {
        // uid 999 with private files and a root-made repository: root reads and writes both.
        let p = pod(
            serde_json::json!({"runAsUser": 999, "fsGroup": 999}),
            serde_json::json!({}),
        );
        let sc = agent_security_context(Some(&p), Agent::RestoreInit);
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(
            sc.capabilities.and_then(|c| c.add),
            Some(vec![
                "CHOWN".into(),
                "DAC_OVERRIDE".into(),
                "FOWNER".into(),
                "FSETID".into()
            ])
        );
    }

    #[test]
    fn a_non_root_workload_gets_agents_of_its_own_user_without_capabilities() {
        let p = pod(
            serde_json::json!({"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 3000}),
            serde_json::json!({"runAsUser": 1001}),
        );
        assert!(requires_non_root(&p));
        let sc = agent_security_context(Some(&p), Agent::Sidecar);
        assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1001), Some(3000)));
        assert_eq!(sc.run_as_non_root, Some(true));
        let caps = sc.capabilities.expect("caps");
        assert_eq!(caps.add, None);
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    }

    #[test]
    fn run_as_non_root_on_every_container_counts_and_one_container_undoing_it_does_not() {
        let mut p = pod(
            serde_json::json!({}),
            serde_json::json!({"runAsNonRoot": true}),
        );
        assert!(requires_non_root(&p));
        p.containers.push(Container {
            name: "other".into(),
            ..Default::default()
        });
        assert!(!requires_non_root(&p));
        let p = pod(
            serde_json::json!({"runAsNonRoot": true}),
            serde_json::json!({"runAsNonRoot": false}),
        );
        assert!(!requires_non_root(&p));
    }

    #[test]
    fn job_containers_leave_the_user_to_the_pod_level_where_runtime_settings_can_change_it() {
        let sc = agent_security_context(None, Agent::Job);
        assert_eq!((sc.run_as_user, sc.run_as_group), (None, None));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, None);
        let pod = job_pod_security_context();
        assert_eq!((pod.run_as_user, pod.run_as_group), (Some(0), Some(0)));
        let reader = agent_security_context(None, Agent::Reader);
        assert_eq!(reader.run_as_user, Some(0));
        assert_eq!(reader.read_only_root_filesystem, Some(true));
    }

    #[test]
    fn user_settings_win_field_by_field_and_a_user_uid_keeps_no_capability() {
        let ours = agent_security_context(None, Agent::Sidecar);
        let user = SecurityContext {
            run_as_user: Some(1000),
            ..Default::default()
        };
        let m = merge(ours.clone(), &user);
        assert_eq!(m.run_as_user, Some(1000));
        assert_eq!(m.run_as_group, Some(0));
        assert_eq!(m.allow_privilege_escalation, Some(false));
        assert_eq!(m.capabilities.and_then(|c| c.add), None);
        let root = merge(
            ours,
            &SecurityContext {
                privileged: Some(false),
                ..Default::default()
            },
        );
        assert_eq!(
            root.capabilities.and_then(|c| c.add),
            Some(vec!["DAC_OVERRIDE".into()])
        );
    }

    #[test]
    fn levels_refuse_hostpath_from_baseline_and_root_agents_under_restricted() {
        let repo = |backend: serde_json::Value| -> Repository {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
                "metadata": {"name": "r", "namespace": "demo"},
                "spec": {"backend": backend}
            }))
            .expect("repo")
        };
        let host = repo(serde_json::json!({"storageSecretName": "s",
            "local": {"mountPath": "/safe/data", "hostPath": {"path": "/data/stash-test/restic-repo"}}}));
        let s3 = repo(serde_json::json!({"storageSecretName": "s",
            "s3": {"endpoint": "http://minio", "bucket": "b"}}));
        let labels = |v: &str| BTreeMap::from([(ENFORCE_LABEL.to_string(), v.to_string())]);
        assert_eq!(Level::of(None), Level::Privileged);
        assert_eq!(Level::of(Some(&labels("baseline"))), Level::Baseline);
        assert_eq!(Level::of(Some(&labels("restricted"))), Level::Restricted);
        assert_eq!(refusal("demo", Level::Privileged, &host, None), None);
        let why = refusal("demo", Level::Baseline, &host, None).expect("refused");
        assert!(
            why.contains("forbids hostPath") && why.contains("/data/stash-test/restic-repo"),
            "{why}"
        );
        assert!(refusal("demo", Level::Restricted, &host, None).is_some());
        let root_app = pod(serde_json::json!({}), serde_json::json!({}));
        let non_root = pod(
            serde_json::json!({"runAsNonRoot": true, "runAsUser": 1000}),
            serde_json::json!({}),
        );
        assert_eq!(refusal("demo", Level::Baseline, &s3, Some(&root_app)), None);
        let why = refusal("demo", Level::Restricted, &s3, Some(&root_app)).expect("refused");
        assert!(why.contains("runAsNonRoot"), "{why}");
        assert_eq!(
            refusal("demo", Level::Restricted, &s3, Some(&non_root)),
            None
        );
    }
}
