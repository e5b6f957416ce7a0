//! The ClusterRoles of backup and restore Job pods (stash-api.md §6.3, §6.4), least privilege
//! for what our Functions do: `update-status` (session and Repository status, events),
//! `restore` without a Task (the RestoreSession and its Repository), the database Functions
//! (the AppBinding and its Secret).
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams},
};

/// ClusterRole of backup Job pods.
pub const BACKUP_JOB_ROLE: &str = "stash-backup-job";
/// ClusterRole of restore Job pods.
pub const RESTORE_JOB_ROLE: &str = "stash-restore-job";

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

const STATUS: &[&str] = &["get", "patch", "update"];
const EVENTS: &[&str] = &["create", "patch", "update"];

/// The two ClusterRoles.
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
            BACKUP_JOB_ROLE,
            vec![
                rule(
                    &["stash.appscode.com"],
                    &["backupsessions", "backupconfigurations", "repositories"],
                    &["get"],
                ),
                rule(
                    &["stash.appscode.com"],
                    &["backupsessions/status", "repositories/status"],
                    STATUS,
                ),
                rule(&["appcatalog.appscode.com"], &["appbindings"], &["get"]),
                rule(&[""], &["secrets"], &["get"]),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
        role(
            RESTORE_JOB_ROLE,
            vec![
                rule(
                    &["stash.appscode.com"],
                    &["restoresessions", "repositories"],
                    &["get"],
                ),
                rule(&["stash.appscode.com"], &["restoresessions/status"], STATUS),
                rule(&["appcatalog.appscode.com"], &["appbindings"], &["get"]),
                rule(&[""], &["secrets"], &["get"]),
                rule(&["", "events.k8s.io"], &["events"], EVENTS),
            ],
        ),
    ]
}

/// Create or update both ClusterRoles (server-side apply).
pub async fn ensure_cluster_roles(client: &Client) -> Result<(), kube::Error> {
    let api: Api<ClusterRole> = Api::all(client.clone());
    for role in cluster_roles() {
        let name = role.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply(super::MANAGER).force(),
            &Patch::Apply(&role),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_wildcards_and_no_writes_beyond_status_and_events() {
        for role in cluster_roles() {
            for r in role.rules.unwrap_or_default() {
                let res = r.resources.unwrap_or_default();
                assert!(!r.verbs.iter().any(|v| v == "*") && !res.iter().any(|x| x == "*"));
                let writes = r
                    .verbs
                    .iter()
                    .any(|v| v != "get" && v != "list" && v != "watch");
                if writes {
                    assert!(
                        res.iter().all(|x| x.ends_with("/status") || x == "events"),
                        "{res:?}"
                    );
                }
            }
        }
    }
}
