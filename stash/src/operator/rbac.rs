//! The ClusterRoles the operator maintains for the pods it creates or injects into, and the
//! RoleBindings that grant them (stash-api.md §5.2, §6.1).
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, RoleBinding, RoleRef, Subject};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams},
};

/// ClusterRole of the trigger CronJob's pods.
pub const CRON_JOB_ROLE: &str = "stash-cron-job";
/// ClusterRole of backup sidecars.
pub const SIDECAR_ROLE: &str = "stash-sidecar";
/// ClusterRole of restore init-containers.
pub const RESTORE_INIT_ROLE: &str = "stash-restore-init-container";

const MANAGER: &str = "stash-operator";

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const EVENTS: &[&str] = &["create", "patch", "update"];

/// Every ClusterRole the operator owns, least privilege.
pub fn cluster_roles() -> Vec<ClusterRole> {
    let role = |name: &str, rules: Vec<PolicyRule>| ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("app".to_string(), "stash".to_string())].into()),
            ..Default::default()
        },
        rules: Some(rules),
        ..Default::default()
    };
    vec![
        role(
            CRON_JOB_ROLE,
            vec![
                rule(&["stash.appscode.com"], &["backupconfigurations"], READ),
                rule(
                    &["stash.appscode.com"],
                    &["backupsessions"],
                    &["get", "list", "create"],
                ),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
                rule(
                    &["apps"],
                    &["deployments", "statefulsets", "daemonsets", "replicasets"],
                    &["get"],
                ),
                rule(
                    &[""],
                    &["replicationcontrollers", "persistentvolumeclaims"],
                    &["get"],
                ),
                rule(&["appcatalog.appscode.com"], &["appbindings"], &["get"]),
            ],
        ),
        role(
            SIDECAR_ROLE,
            vec![
                rule(
                    &["stash.appscode.com"],
                    &["backupconfigurations", "repositories", "backupsessions"],
                    READ,
                ),
                rule(
                    &["stash.appscode.com"],
                    &["backupsessions/status", "repositories/status"],
                    &["get", "patch", "update"],
                ),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["get", "create", "update"],
                ),
                rule(
                    &["apps"],
                    &["deployments", "statefulsets", "daemonsets", "replicasets"],
                    &["get"],
                ),
                rule(&[""], &["replicationcontrollers"], &["get"]),
            ],
        ),
        role(
            RESTORE_INIT_ROLE,
            vec![
                rule(
                    &["stash.appscode.com"],
                    &["restoresessions", "repositories"],
                    READ,
                ),
                rule(
                    &["stash.appscode.com"],
                    &["restoresessions/status"],
                    &["get", "patch", "update"],
                ),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["get", "create", "update"],
                ),
                rule(
                    &["apps"],
                    &["deployments", "statefulsets", "daemonsets", "replicasets"],
                    &["get"],
                ),
                rule(&[""], &["replicationcontrollers"], &["get"]),
            ],
        ),
    ]
}

/// Create or update every ClusterRole of [`cluster_roles`].
pub async fn ensure_cluster_roles(client: &Client) -> Result<(), kube::Error> {
    let api: Api<ClusterRole> = Api::all(client.clone());
    for role in cluster_roles() {
        let name = role.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&role),
        )
        .await?;
    }
    Ok(())
}

/// A RoleBinding `name` in `namespace` granting `cluster_role` to ServiceAccount `sa`.
pub fn role_binding(
    name: &str,
    namespace: &str,
    cluster_role: &str,
    sa: &str,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
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
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: cluster_role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa.into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        }]),
    }
}

/// Server-side apply `rb`.
pub async fn apply_role_binding(client: &Client, rb: &RoleBinding) -> Result<(), kube::Error> {
    let ns = rb.metadata.namespace.clone().unwrap_or_default();
    let name = rb.metadata.name.clone().unwrap_or_default();
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(rb),
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_role_has_wildcards() {
        for role in cluster_roles() {
            for r in role.rules.unwrap_or_default() {
                assert!(
                    !r.verbs.iter().any(|v| v == "*"),
                    "{:?}",
                    role.metadata.name
                );
                assert!(!r.resources.unwrap_or_default().iter().any(|v| v == "*"));
            }
        }
    }
}
