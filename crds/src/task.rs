//! Task (stash.appscode.com/v1beta1, cluster-scoped; stash-api.md §3.6).

use crate::common::FunctionRef;
use k8s_openapi::api::core::v1 as core;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An ordered list of Functions run as one pod.
// kube's `printcolumn(...)` repeats `type_ = ".."` on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stash.appscode.com",
    version = "v1beta1",
    kind = "Task",
    plural = "tasks",
    singular = "task",
    shortname = "task",
    category = "stash",
    category = "appscode",
    label("app", "stash"),
    doc = "An ordered list of Functions run as one pod (stash.appscode.com Task).",
    derive = "PartialEq",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// Steps, in order: all but the last become init-containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<FunctionRef>,
    /// Pod volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<core::Volume>,
}
