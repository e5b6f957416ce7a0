//! The narrow Roles the operator grants to the pods it creates or injects into, and the
//! RoleBindings that bind them (stash-api.md §5.2, §6.1–§6.4; docs/security.md).
//!
//! Every component gets a namespaced Role of its own whose rules name the objects it works on
//! (`resourceNames`): its BackupConfiguration or RestoreSession, its session, its Repository,
//! its Lease, the Secret of its AppBinding. What cannot be limited by name is limited to what
//! leaks nothing: `create` of BackupSessions (the trigger CronJob), list/watch of the
//! BackupSessions of the namespace (the sidecar's watch), events.
//!
//! Guarantees:
//! * no rule grants a Secret but by name; no rule writes anything but by name, except
//!   `create` of BackupSessions and events;
//! * a rule whose names are not known yet is left out (an empty `resourceNames` would mean
//!   every name);
//! * the operator holds every permission it grants, so creating these Roles and binding them
//!   needs neither `escalate` nor `bind`.
use k8s_openapi::{
    api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams},
};

/// Suffix of the trigger CronJob's Role (the Role and RoleBinding are named after the
/// BackupConfiguration).
pub const CRON_JOB_ROLE: &str = "stash-cron-job";
/// Suffix of the backup sidecar's Role (`<kind>-<workload>-stash-sidecar`).
pub const SIDECAR_ROLE: &str = "stash-sidecar";
/// Suffix of the restore init-container's Role (`<kind>-<workload>-stash-restore-init-container`).
pub const RESTORE_INIT_ROLE: &str = "stash-restore-init-container";
/// Suffix of the backup Job's Role (`<bc>-stash-backup-job`).
pub const BACKUP_JOB_ROLE: &str = "stash-backup-job";
/// Suffix of the restore Job's Role (`<rs>-stash-restore-job`).
pub const RESTORE_JOB_ROLE: &str = "stash-restore-job";

use stash_core::names::FIELD_MANAGER;

/// A write of an object stash names after a user's object (ServiceAccount, Role, RoleBinding,
/// CronJob) that failed, or was not made because the name is someone else's (issue 24).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The name is held by an object stash did not create: it is left exactly as it is.
    #[error("{0}")]
    Clash(String),
}

/// Event reason of a [`WriteError::Clash`].
pub const NAME_CLASH: &str = stash_machines::reasons::NAME_CLASH;

/// Did stash create the object `meta` describes? Its label `app.kubernetes.io/managed-by:
/// stash.appscode.com` (every object stash writes carries it), or — for what older versions
/// created without the label (the workloads' dedicated ServiceAccounts) — an owner reference
/// to `owner`, the object stash would own it by.
pub fn stash_holds(meta: &ObjectMeta, owner: Option<&OwnerReference>) -> bool {
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"))
        .is_some_and(|v| v == STASH);
    let owned = owner.is_some_and(|o| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == o.uid)
    });
    labelled || owned
}

/// The object `name` if it exists and stash holds it ([`stash_holds`]); `None` if it does not
/// exist; a [`WriteError::Clash`] naming it if someone else's object has the name. Every write
/// of a name derived from a user's object goes through this first: a user's RoleBinding,
/// Role, ServiceAccount or CronJob of that name is never modified, owned or deleted.
pub async fn claim<K>(
    api: &Api<K>,
    name: &str,
    owner: Option<&OwnerReference>,
) -> Result<Option<K>, WriteError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await? {
        Some(o) if !stash_holds(o.meta(), owner) => Err(WriteError::Clash(format!(
            "{} {}/{name} exists and was not created by stash (no label \
             app.kubernetes.io/managed-by={STASH}): it is left unchanged and nothing is \
             written in its place; rename it or the stash object that needs the name",
            K::kind(&()),
            o.meta().namespace.as_deref().unwrap_or_default(),
        ))),
        o => Ok(o),
    }
}

/// The ServiceAccount every pod of a namespace runs as unless told otherwise: stash never
/// binds, annotates or owns it.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
const STASH: &str = "stash.appscode.com";
const STATUS: &[&str] = &["get", "update", "patch"];
const EVENTS: &[&str] = &["create", "patch", "update"];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A rule on every object of `resources` (only for what cannot be named: create, list/watch).
fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

/// A rule on the objects named `names`; `None` when there is no name (an empty
/// `resourceNames` would grant every object).
fn named(
    groups: &[&str],
    resources: &[&str],
    names: &[&str],
    verbs: &[&str],
) -> Option<PolicyRule> {
    let names: Vec<String> = names
        .iter()
        .filter(|n| !n.is_empty())
        .map(|s| s.to_string())
        .collect();
    (!names.is_empty()).then(|| PolicyRule {
        resource_names: Some(names),
        ..rule(groups, resources, verbs)
    })
}

fn events() -> PolicyRule {
    rule(&["", "events.k8s.io"], &["events"], EVENTS)
}

/// The AppBinding a Job works on and the Secret it names (database Functions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppBindingGrant {
    /// The AppBinding.
    pub name: String,
    /// Its `spec.secret.name` (empty: none).
    pub secret: String,
}

fn app_binding_rules(ab: Option<&AppBindingGrant>) -> Vec<PolicyRule> {
    let Some(ab) = ab else { return vec![] };
    [
        named(
            &["appcatalog.appscode.com"],
            &["appbindings"],
            &[&ab.name],
            &["get"],
        ),
        named(&[""], &["secrets"], &[&ab.secret], &["get"]),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `create-backupsession`: read its BackupConfiguration, create a BackupSession, events.
pub fn cron_job_rules(bc: &str) -> Vec<PolicyRule> {
    [
        named(&[STASH], &["backupconfigurations"], &[bc], &["get"]),
        Some(rule(&[STASH], &["backupsessions"], &["create"])),
        Some(events()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The backup sidecar: its BackupConfiguration, the namespace's BackupSessions (read: it
/// watches for its own by label), the status of `sessions` (the running one), its Repository
/// and its status, its Lease, events.
pub fn sidecar_rules(bc: &str, repo: &str, lease: &str, sessions: &[&str]) -> Vec<PolicyRule> {
    [
        named(&[STASH], &["backupconfigurations"], &[bc], &["get"]),
        Some(rule(
            &[STASH],
            &["backupsessions"],
            &["get", "list", "watch"],
        )),
        named(&[STASH], &["backupsessions/status"], sessions, STATUS),
        named(&[STASH], &["repositories"], &[repo], &["get"]),
        named(&[STASH], &["repositories/status"], &[repo], STATUS),
        named(
            &["coordination.k8s.io"],
            &["leases"],
            &[lease],
            &["get", "update"],
        ),
        Some(events()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The restore init-container: its RestoreSession and its status, its Repository, its Lease
/// (none for a single-pod restore), events.
pub fn restore_init_rules(rs: &str, repo: &str, lease: Option<&str>) -> Vec<PolicyRule> {
    [
        named(&[STASH], &["restoresessions"], &[rs], &["get"]),
        named(&[STASH], &["restoresessions/status"], &[rs], STATUS),
        named(&[STASH], &["repositories"], &[repo], &["get"]),
        lease.and_then(|l| {
            named(
                &["coordination.k8s.io"],
                &["leases"],
                &[l],
                &["get", "update"],
            )
        }),
        Some(events()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// A backup Job: its session and its status, its BackupConfiguration, its Repository and its
/// status, the AppBinding and its Secret (database Functions), events.
pub fn backup_job_rules(
    bc: &str,
    session: &str,
    repo: &str,
    ab: Option<&AppBindingGrant>,
) -> Vec<PolicyRule> {
    let mut v: Vec<PolicyRule> = [
        named(&[STASH], &["backupsessions"], &[session], &["get"]),
        named(&[STASH], &["backupsessions/status"], &[session], STATUS),
        named(&[STASH], &["backupconfigurations"], &[bc], &["get"]),
        named(&[STASH], &["repositories"], &[repo], &["get"]),
        named(&[STASH], &["repositories/status"], &[repo], STATUS),
        Some(events()),
    ]
    .into_iter()
    .flatten()
    .collect();
    v.extend(app_binding_rules(ab));
    v
}

/// A restore Job: its RestoreSession and its status, its Repository, the AppBinding and its
/// Secret (database Functions), events.
pub fn restore_job_rules(rs: &str, repo: &str, ab: Option<&AppBindingGrant>) -> Vec<PolicyRule> {
    let mut v: Vec<PolicyRule> = [
        named(&[STASH], &["restoresessions"], &[rs], &["get"]),
        named(&[STASH], &["restoresessions/status"], &[rs], STATUS),
        named(&[STASH], &["repositories"], &[repo], &["get"]),
        Some(events()),
    ]
    .into_iter()
    .flatten()
    .collect();
    v.extend(app_binding_rules(ab));
    v
}

fn managed_meta(name: &str, namespace: &str, owner: Option<OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        owner_references: owner.map(|o| vec![o]),
        labels: Some(
            [(
                "app.kubernetes.io/managed-by".to_string(),
                "stash.appscode.com".to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

/// Role `name` in `namespace` with `rules`.
pub fn role(
    name: &str,
    namespace: &str,
    rules: Vec<PolicyRule>,
    owner: Option<OwnerReference>,
) -> Role {
    Role {
        metadata: managed_meta(name, namespace, owner),
        rules: Some(rules),
    }
}

/// A RoleBinding `name` in `namespace` granting Role `name` to ServiceAccount `sa`.
pub fn role_binding(
    name: &str,
    namespace: &str,
    sa: &str,
    owner: Option<OwnerReference>,
) -> RoleBinding {
    RoleBinding {
        metadata: managed_meta(name, namespace, owner),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa.into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        }]),
    }
}

/// Server-side apply Role `name` with `rules` and the RoleBinding of the same name granting it
/// to ServiceAccount `sa`. A binding left by an older version (to a ClusterRole: `roleRef` is
/// immutable) is replaced. A Role or RoleBinding of that name stash did not create, or `sa`
/// being `default`, is a [`WriteError::Clash`]: nothing is written.
pub async fn grant(
    client: &Client,
    namespace: &str,
    name: &str,
    sa: &str,
    rules: Vec<PolicyRule>,
    owner: Option<OwnerReference>,
) -> Result<(), WriteError> {
    if sa == DEFAULT_SERVICE_ACCOUNT {
        return Err(WriteError::Clash(format!(
            "Role {namespace}/{name} is not bound to ServiceAccount default: every pod of the \
             namespace without an account of its own runs as it; name another account in \
             runtimeSettings.pod.serviceAccountName"
        )));
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let roles = Api::<Role>::namespaced(client.clone(), namespace);
    let rbs = Api::<RoleBinding>::namespaced(client.clone(), namespace);
    claim(&roles, name, owner.as_ref()).await?;
    let old = claim(&rbs, name, owner.as_ref()).await?;
    let r = role(name, namespace, rules, owner.clone());
    roles.patch(name, &pp, &Patch::Apply(&r)).await?;
    let rb = role_binding(name, namespace, sa, owner);
    if old.is_some_and(|old| old.role_ref != rb.role_ref) {
        rbs.delete(name, &DeleteParams::default()).await?;
    }
    rbs.patch(name, &pp, &Patch::Apply(&rb)).await?;
    Ok(())
}

/// Delete the Role and RoleBinding `name` if present and stash's (someone else's object of
/// that name is left alone).
pub async fn revoke(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let rbs = Api::<RoleBinding>::namespaced(client.clone(), namespace);
    if rbs
        .get_opt(name)
        .await?
        .is_some_and(|o| stash_holds(&o.metadata, None))
    {
        rbs.delete(name, &DeleteParams::default()).await?;
    }
    let roles = Api::<Role>::namespaced(client.clone(), namespace);
    if roles
        .get_opt(name)
        .await?
        .is_some_and(|o| stash_holds(&o.metadata, None))
    {
        roles.delete(name, &DeleteParams::default()).await?;
    }
    Ok(())
}

/// Every rule of every component, with sample names (for the install manifest's check that
/// the operator holds all it grants, and for tests).
pub fn sample_rules() -> Vec<PolicyRule> {
    let ab = AppBindingGrant {
        name: "ab".into(),
        secret: "s".into(),
    };
    let mut v = cron_job_rules("bc");
    v.extend(sidecar_rules("bc", "repo", "lock", &["bc-1"]));
    v.extend(restore_init_rules("rs", "repo", Some("lock")));
    v.extend(backup_job_rules("bc", "bc-1", "repo", Some(&ab)));
    v.extend(restore_job_rules("rs", "repo", Some(&ab)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_writes_only_by_name() {
        for r in sample_rules() {
            let res = r.resources.clone().unwrap_or_default();
            assert!(!r.verbs.iter().any(|v| v == "*") && !res.iter().any(|x| x.contains('*')));
            let names = r.resource_names.clone().unwrap_or_default();
            if res.iter().any(|x| x == "secrets") {
                assert!(!names.is_empty(), "{r:?}");
                assert_eq!(r.verbs, vec!["get"]);
            }
            let writes = r
                .verbs
                .iter()
                .any(|v| !["get", "list", "watch"].contains(&v.as_str()));
            let unnamed_write_ok = res == ["events"] || res == ["backupsessions"];
            if writes && !unnamed_write_ok {
                assert!(!names.is_empty(), "{r:?}");
            }
            if res == ["backupsessions"] && writes {
                assert_eq!(r.verbs, vec!["create"], "{r:?}");
            }
        }
    }

    #[test]
    fn no_name_no_rule() {
        let rules = sidecar_rules("bc", "repo", "lock", &[]);
        assert!(
            !rules
                .iter()
                .any(|r| r.resources.as_deref() == Some(&["backupsessions/status".to_string()])),
            "{rules:?}"
        );
        let rules = backup_job_rules(
            "bc",
            "s",
            "repo",
            Some(&AppBindingGrant {
                name: "ab".into(),
                secret: String::new(),
            }),
        );
        assert!(
            !rules
                .iter()
                .any(|r| r.resources.as_deref() == Some(&["secrets".to_string()]))
        );
    }
}
