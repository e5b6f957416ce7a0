//! Typed Rust definitions of the Stash mid-2019 API (stash.appscode.com v1beta1 + Repository
//! v1alpha1, appcatalog.appscode.com AppBinding, and the aggregated Snapshot object), and the
//! CustomResourceDefinitions generated from them.
//!
//! See `shared/spec/stash-api.md` §1–§3 for the API these types implement.
//!
//! Layout: one module per kind ([`backup_configuration`], [`backup_session`],
//! [`restore_session`], [`function`], [`task`], [`backup_configuration_template`],
//! [`repository`], [`app_binding`], [`snapshot`]); shared field types in [`common`],
//! [`backend`], [`runtime`], [`volume`]; value types [`GoDuration`] and [`IntHash`]; well-known
//! names in [`consts`]; [`schema`] holds the structural-schema self-check. [`crds`] and
//! [`render_yaml`] produce the CRDs (`deploy/crds/stash-crds.yaml` is `render_yaml()`).
//!
//! Where the generated schemas differ from the upstream CRD YAMLs:
//! * AppBinding `clientConfig.service.scheme` is optional (upstream marks it required, yet its own
//!   docs' minimal AppBinding omits it), and `secretTransforms[].addKey` requires only `key`
//!   (upstream requires all four members although they are alternatives).
//! * `observedGeneration` is int-or-string (kmodules `IntHash`); Quantity fields are
//!   int-or-string; the status subresource is always declared (BackupSession, RestoreSession,
//!   Repository).
//! * Embedded core types are those of Kubernetes 1.36, so e.g. `LocalObjectReference.name`
//!   (`repository`, `backupConfiguration`, `secret`) is required.
//! * Phases and `driver` are string enums (upstream: free strings).
#![warn(missing_docs)]

pub mod app_binding;
pub mod backend;
pub mod backup_blueprint;
pub mod backup_configuration;
pub mod backup_configuration_template;
pub mod backup_session;
pub mod common;
pub mod consts;
pub mod duration;
pub mod function;
pub mod int_hash;
pub mod repository;
pub mod restore_session;
pub mod runtime;
pub mod schema;
pub mod snapshot;
pub mod task;
pub mod volume;

pub use app_binding::{AppBinding, AppBindingSpec};
pub use backend::{Backend, BackendError, BackendKind, LocalSpec, Provider};
pub use backup_blueprint::{BackupBlueprint, BackupBlueprintSpec};
pub use backup_configuration::{BackupConfiguration, BackupConfigurationSpec};
pub use backup_configuration_template::{
    BackupConfigurationTemplate, BackupConfigurationTemplateSpec,
};
pub use backup_session::{BackupSession, BackupSessionSpec, BackupSessionStatus};
pub use common::{
    BackupTarget, Driver, EmptyDirSettings, FunctionRef, Param, RestoreTarget, RetentionPolicy,
    TargetRef, TaskRef,
};
pub use duration::GoDuration;
pub use function::{Function, FunctionSpec};
pub use int_hash::IntHash;
pub use repository::{Repository, RepositorySpec, RepositoryStatus};
pub use restore_session::{RestoreSession, RestoreSessionSpec, RestoreSessionStatus};
pub use runtime::{ContainerRuntimeSettings, PodRuntimeSettings, RuntimeSettings};
pub use snapshot::{Snapshot, SnapshotStatus};
pub use task::{Task, TaskSpec};
pub use volume::VolumeSource;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

/// The Repository CRD: v1alpha1 (served, storage) and v1beta1 (served, not storage), same schema.
fn repository_crd() -> CustomResourceDefinition {
    let v1alpha1 = Repository::crd();
    let mut v1beta1 = v1alpha1.clone();
    v1beta1.spec.versions[0].name = "v1beta1".to_owned();
    v1beta1.spec.versions[0].storage = false;
    kube::core::crd::merge_crds(vec![v1alpha1, v1beta1], "v1alpha1")
        .expect("Repository versions merge")
}

/// Applies [`schema::normalize`] to every version's schema.
fn normalized(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for v in &mut crd.spec.versions {
        if let Some(s) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let mut value = serde_json::to_value(&*s).expect("schema serializes");
            schema::normalize(&mut value);
            *s = serde_json::from_value(value).expect("normalized schema deserializes");
        }
    }
    crd
}

/// Recursively rebuilds a JSON value with object keys in sorted order.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Every CRD the operator registers, in a fixed order: BackupConfiguration, BackupSession,
/// RestoreSession, Function, Task, BackupConfigurationTemplate, Repository, AppBinding,
/// BackupBlueprint.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        BackupConfiguration::crd(),
        BackupSession::crd(),
        RestoreSession::crd(),
        Function::crd(),
        Task::crd(),
        BackupConfigurationTemplate::crd(),
        repository_crd(),
        AppBinding::crd(),
        BackupBlueprint::crd(),
    ]
    .into_iter()
    .map(normalized)
    .collect()
}

/// All [`crds`] as one multi-document YAML stream (`---` separated, keys sorted), the content of
/// `deploy/crds/stash-crds.yaml`.
pub fn render_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        let v = sorted(serde_json::to_value(&crd).expect("CRD serializes"));
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&v).expect("CRD renders as YAML"));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
