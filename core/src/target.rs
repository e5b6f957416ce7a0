//! Targets: which kinds are workloads (sidecar model), how a target reference matches an
//! object, and the host names of §9.3.
use stash_crds::common::TargetRef;
pub use stash_machines::names::{Host, host_name};

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

/// What the operator reads of a target workload to know its hosts: a StatefulSet's
/// `spec.replicas` and a DaemonSet's `status.desiredNumberScheduled` (`None`: not read, or
/// the workload does not exist).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadScale {
    /// A StatefulSet's `spec.replicas`.
    pub replicas: Option<i32>,
    /// A DaemonSet's `status.desiredNumberScheduled`: the nodes it runs on.
    pub scheduled: Option<i32>,
}

/// The hosts of a session's target (§9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hosts {
    /// `host-0` … `host-<n-1>`.
    Numbered(i64),
    /// One per node the DaemonSet is scheduled on, each named by its node when it reports.
    Nodes(u32),
}

impl Hosts {
    /// How many.
    pub fn count(self) -> i64 {
        match self {
            Hosts::Numbered(n) => n,
            Hosts::Nodes(n) => i64::from(n),
        }
    }
}

/// The one host-set rule of backups and restores, from the workload's own object (`scale`):
/// a StatefulSet has one host per replica (`replicas`, the session's `target.replicas`, when
/// it does not exist yet), a DaemonSet one per node it is scheduled on (none while it does not
/// exist), any other workload one; a target that is no workload (the job model) has
/// `replicas` hosts, one by default.
pub fn hosts(kind: Option<WorkloadKind>, scale: WorkloadScale, replicas: Option<i32>) -> Hosts {
    match kind {
        Some(WorkloadKind::StatefulSet) => {
            Hosts::Numbered(i64::from(scale.replicas.or(replicas).unwrap_or(1)))
        }
        Some(WorkloadKind::DaemonSet) => {
            Hosts::Nodes(u32::try_from(scale.scheduled.unwrap_or(0)).unwrap_or(0))
        }
        Some(_) => Hosts::Numbered(1),
        None => Hosts::Numbered(i64::from(replicas.unwrap_or(1))),
    }
}

/// Whether every pod of a workload of `kind` is the same host (`host-0`: a Deployment,
/// ReplicaSet or ReplicationController), so that its agents elect one pod per session with the
/// workload's Lease. A StatefulSet's pods (one ordinal each) and a DaemonSet's (one node each)
/// are hosts of their own and back up and restore side by side, as in Stash: under one Lease
/// they went host after host, and a large DaemonSet always ran out of the session's deadline.
pub fn host_is_shared(kind: Option<WorkloadKind>) -> bool {
    !matches!(
        kind,
        Some(WorkloadKind::StatefulSet | WorkloadKind::DaemonSet)
    )
}

/// The `--host` of a backup made by a sidecar (§9.3), or of the restore of the pod
/// `pod_name` on node `node_name`: [`host_name`] with the target's `alias`.
pub fn backup_host(
    kind: Option<WorkloadKind>,
    alias: Option<&str>,
    pod_name: &str,
    node_name: &str,
) -> String {
    let host = match kind {
        Some(WorkloadKind::StatefulSet) => Host::Ordinal(
            pod_name
                .rsplit_once('-')
                .and_then(|(_, o)| o.parse().ok())
                .unwrap_or(0),
        ),
        Some(WorkloadKind::DaemonSet) => Host::Node(node_name),
        _ => Host::Only,
    };
    host_name(alias, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kinds_whose_pods_are_all_host_0_share_a_host() {
        for kind in [WorkloadKind::StatefulSet, WorkloadKind::DaemonSet] {
            assert!(!host_is_shared(Some(kind)));
        }
        assert_eq!(
            backup_host(Some(WorkloadKind::StatefulSet), None, "db-2", "n1"),
            "host-2"
        );
        assert_eq!(
            backup_host(Some(WorkloadKind::DaemonSet), None, "ds-x1", "n1"),
            "n1"
        );
        for kind in [
            WorkloadKind::Deployment,
            WorkloadKind::ReplicaSet,
            WorkloadKind::ReplicationController,
        ] {
            assert!(host_is_shared(Some(kind)));
            assert_eq!(backup_host(Some(kind), None, "w-abc12", "n1"), "host-0");
        }
    }

    #[test]
    fn one_host_set_rule_from_the_workloads_own_object() {
        let sts = Some(WorkloadKind::StatefulSet);
        let ds = Some(WorkloadKind::DaemonSet);
        let scale = |replicas, scheduled| WorkloadScale {
            replicas,
            scheduled,
        };
        assert_eq!(
            hosts(sts, scale(Some(3), None), Some(5)),
            Hosts::Numbered(3)
        );
        // Not created yet: the session's replicas, else one.
        assert_eq!(hosts(sts, scale(None, None), Some(5)), Hosts::Numbered(5));
        assert_eq!(hosts(sts, scale(None, None), None), Hosts::Numbered(1));
        assert_eq!(hosts(ds, scale(None, Some(2)), None), Hosts::Nodes(2));
        // A DaemonSet that does not exist runs on no node (not on every node of the cluster).
        assert_eq!(hosts(ds, scale(None, None), None), Hosts::Nodes(0));
        let deploy = Some(WorkloadKind::Deployment);
        assert_eq!(
            hosts(deploy, scale(None, None), Some(4)),
            Hosts::Numbered(1)
        );
        assert_eq!(hosts(None, scale(None, None), Some(4)), Hosts::Numbered(4));
        assert_eq!(hosts(None, scale(None, None), None).count(), 1);
    }

    fn r(api: &str, kind: &str, name: &str) -> TargetRef {
        TargetRef {
            api_version: Some(api.into()),
            kind: Some(kind.into()),
            name: Some(name.into()),
            namespace: None,
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
            backup_host(Some(WorkloadKind::StatefulSet), None, "db-2", "node"),
            "host-2"
        );
        assert_eq!(
            backup_host(Some(WorkloadKind::DaemonSet), None, "ds-xyz", "node-a"),
            "node-a"
        );
        assert_eq!(
            backup_host(Some(WorkloadKind::Deployment), None, "app-5f7-abc", "node"),
            "host-0"
        );
        assert_eq!(backup_host(None, None, "x", "node"), "host-0");
    }
}
