//! Names and labels of the objects stash-rs derives from the user's objects.
use std::collections::BTreeMap;

use kube::ResourceExt;
use stash_crds::{BackupConfiguration, consts};

use crate::target::WorkloadKind;

/// The field manager of everything the operator writes by server-side apply (objects and
/// status), and of its Events' reporting controller.
pub const FIELD_MANAGER: &str = "stash-operator";

/// A workload kind as names spell it (`deployment`, `statefulset`, …; `unknown` without one).
pub fn kind_label(kind: Option<WorkloadKind>) -> String {
    kind.map_or("unknown", |k| k.kind()).to_lowercase()
}

/// The Lease the backup sidecars of a workload elect their leader with: one backup per
/// session at a time (§6.1).
pub fn backup_lease(kind: Option<WorkloadKind>, workload: &str) -> String {
    format!("lock-{}-{workload}-backup", kind_label(kind))
}

/// The Lease the restore init-containers of a workload elect their leader with.
pub fn restore_lease(kind: Option<WorkloadKind>, workload: &str) -> String {
    format!("lock-{}-{workload}-restore", kind_label(kind))
}

/// The Role (and RoleBinding) granting an agent of a workload what it needs: `role` is the
/// agent's part (the sidecar's or the restore init-container's).
pub fn agent_role(kind: Option<WorkloadKind>, workload: &str, role: &str) -> String {
    format!("{}-{workload}-{role}", kind_label(kind))
}

/// The agents' executable in the stash-rs image: every container stash-rs injects or creates
/// runs it (`command`), with the agent's subcommand in `args` (`run-backup`, `restore`, …).
/// The image's entrypoint is the operator (`stash`).
pub const AGENT: &str = "/usr/local/bin/stash-agent";

/// The `command` of an agent container.
pub fn agent_command() -> Option<Vec<String>> {
    Some(vec![AGENT.to_string()])
}

/// Labels of objects derived from a BackupConfiguration (§5.6).
pub fn offshoot_labels(bc: &BackupConfiguration, component: &str) -> BTreeMap<String, String> {
    let mut labels = bc.labels().clone();
    labels.insert(consts::COMPONENT_LABEL.into(), component.into());
    labels.insert(
        consts::MANAGED_BY_LABEL.into(),
        consts::MANAGED_BY_STASH.into(),
    );
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_and_roles_are_named_as_stash_named_them() {
        let d = Some(WorkloadKind::Deployment);
        assert_eq!(backup_lease(d, "app"), "lock-deployment-app-backup");
        assert_eq!(restore_lease(d, "app"), "lock-deployment-app-restore");
        assert_eq!(
            backup_lease(Some(WorkloadKind::StatefulSet), "db"),
            "lock-statefulset-db-backup"
        );
        assert_eq!(backup_lease(None, "x"), "lock-unknown-x-backup");
        assert_eq!(
            agent_role(d, "app", "stash-sidecar"),
            "deployment-app-stash-sidecar"
        );
    }
}
