//! Function (stash.appscode.com/v1beta1, cluster-scoped; stash-api.md §3.5).

use crate::runtime::ContainerRuntimeSettings;
use k8s_openapi::api::core::v1 as core;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A container template used as a step of a Task.
// kube's `printcolumn(...)` repeats `type_ = ".."` on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stash.appscode.com",
    version = "v1beta1",
    kind = "Function",
    plural = "functions",
    singular = "function",
    shortname = "fn",
    category = "stash",
    category = "appscode",
    category = "kube-ci",
    label("app", "stash"),
    doc = "A container template used as a Task step (stash.appscode.com Function).",
    derive = "PartialEq",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    /// Container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments (`${VAR}` substituted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<core::ContainerPort>,
    /// Volume mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<core::VolumeMount>,
    /// Volume devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_devices: Vec<core::VolumeDevice>,
    /// Container runtime settings of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_settings: Option<ContainerRuntimeSettings>,
    /// PodSecurityPolicy the step's ServiceAccount may `use`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_policy_name: Option<String>,
}
