//! Targets: which kinds are workloads (sidecar model), how a target reference matches an
//! object, and the host names of §9.3.
use stash_crds::common::TargetRef;

/// A workload kind backed up by an injected sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// v1 ReplicationController.
    ReplicationController,
    /// apps.openshift.io/v1 DeploymentConfig (only on OpenShift).
    DeploymentConfig,
}

impl WorkloadKind {
    /// Every workload kind.
    pub const ALL: [WorkloadKind; 6] = [
        Self::Deployment,
        Self::StatefulSet,
        Self::DaemonSet,
        Self::ReplicaSet,
        Self::ReplicationController,
        Self::DeploymentConfig,
    ];

    /// The kind's name.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::ReplicaSet => "ReplicaSet",
            Self::ReplicationController => "ReplicationController",
            Self::DeploymentConfig => "DeploymentConfig",
        }
    }

    /// The apiVersion objects are normalised to before matching (§2.3).
    pub fn api_version(self) -> &'static str {
        match self {
            Self::ReplicationController => "v1",
            Self::DeploymentConfig => "apps.openshift.io/v1",
            _ => "apps/v1",
        }
    }

    /// The workload kind a target names, if it names one (by kind alone).
    pub fn of(target: &TargetRef) -> Option<Self> {
        let kind = target.kind.as_deref()?;
        Self::ALL.into_iter().find(|k| k.kind() == kind)
    }

    /// Does `target` name this workload `name`? apiVersion, kind and name must match exactly.
    pub fn matches(self, target: &TargetRef, name: &str) -> bool {
        target.api_version.as_deref() == Some(self.api_version())
            && target.kind.as_deref() == Some(self.kind())
            && target.name.as_deref() == Some(name)
    }
}

/// The `--host` of a backup made by a sidecar (§9.3).
pub fn backup_host(kind: Option<WorkloadKind>, pod_name: &str, node_name: &str) -> String {
    match kind {
        Some(WorkloadKind::StatefulSet) => {
            let ordinal = pod_name.rsplit_once('-').map_or("0", |(_, o)| o);
            format!("host-{ordinal}")
        }
        Some(WorkloadKind::DaemonSet) => node_name.to_string(),
        _ => "host-0".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(api: &str, kind: &str, name: &str) -> TargetRef {
        TargetRef {
            api_version: Some(api.into()),
            kind: Some(kind.into()),
            name: Some(name.into()),
        }
    }

    #[test]
    fn matching_compares_api_version_kind_and_name_exactly() {
        assert!(WorkloadKind::Deployment.matches(&r("apps/v1", "Deployment", "app"), "app"));
        assert!(
            !WorkloadKind::Deployment.matches(&r("extensions/v1beta1", "Deployment", "app"), "app")
        );
        assert!(!WorkloadKind::Deployment.matches(&r("apps/v1", "Deployment", "other"), "app"));
        assert!(
            WorkloadKind::ReplicationController
                .matches(&r("v1", "ReplicationController", "rc"), "rc")
        );
        assert_eq!(
            WorkloadKind::of(&r("v1", "PersistentVolumeClaim", "pvc")),
            None
        );
    }

    #[test]
    fn hosts_follow_the_workload_kind() {
        assert_eq!(
            backup_host(Some(WorkloadKind::StatefulSet), "db-2", "node"),
            "host-2"
        );
        assert_eq!(
            backup_host(Some(WorkloadKind::DaemonSet), "ds-xyz", "node-a"),
            "node-a"
        );
        assert_eq!(
            backup_host(Some(WorkloadKind::Deployment), "app-5f7-abc", "node"),
            "host-0"
        );
        assert_eq!(backup_host(None, "x", "node"), "host-0");
    }
}
