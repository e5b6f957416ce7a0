//! AppBinding (appcatalog.appscode.com/v1alpha1; stash-api.md §3.8).

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{LocalObjectReference, SecretReference};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Value of `spec.type` for a generic application.
pub const APP_TYPE_OPAQUE: &str = "Opaque";

/// How to connect to an application (a database, usually).
// kube's `printcolumn(...)` repeats `type_ = ".."` on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "appcatalog.appscode.com",
    version = "v1alpha1",
    kind = "AppBinding",
    plural = "appbindings",
    singular = "appbinding",
    namespaced,
    category = "catalog",
    category = "appscode",
    category = "all",
    label("app", "catalog"),
    doc = "Connection information of an application (appcatalog.appscode.com AppBinding).",
    derive = "PartialEq",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AppBindingSpec {
    /// Application type, e.g. `kubedb.com/postgres`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub app_type: Option<String>,
    /// Application version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// How to reach the application.
    pub client_config: ClientConfig,
    /// Credentials Secret (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<LocalObjectReference>,
    /// Transformations of the Secret's keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_transforms: Vec<SecretTransform>,
    /// Free-form application parameters (raw JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Connection configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.url) || has(self.service)",
        "message": "one of url, service must be set"
    },
    {
        "rule": "!has(self.url) || (self.url.contains('://') && isURL(self.url))",
        "fieldPath": ".url",
        "message": "must be an absolute URL such as postgres://host:5432/db"
    }
]))]
pub struct ClientConfig {
    /// Full URL; takes precedence over `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// In-cluster Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceReference>,
    /// Skip TLS verification.
    #[serde(
        rename = "insecureSkipTLSVerify",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub insecure_skip_tls_verify: bool,
    /// PEM CA bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::optional_bytes")]
    pub ca_bundle: Option<ByteString>,
}

/// Reference to a Service (same namespace as the AppBinding).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.name) <= 63",
    "fieldPath": ".name",
    "message": "must be a Service name (a DNS-1123 label: at most 63 lowercase letters, digits and '-')"
}]))]
pub struct ServiceReference {
    /// URL scheme (upstream marks it required; the upstream docs omit it, so it is optional here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Service name.
    pub name: String,
    /// Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// URL path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// URL query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// One Secret transformation; exactly one member should be set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.renameKey) ? 1 : 0) + (has(self.addKey) ? 1 : 0) + (has(self.addKeysFrom) ? 1 : 0) + (has(self.removeKey) ? 1 : 0) == 1",
    "message": "exactly one of renameKey, addKey, addKeysFrom, removeKey must be set"
}]))]
pub struct SecretTransform {
    /// Rename a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rename_key: Option<RenameKeyTransform>,
    /// Add a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_key: Option<AddKeyTransform>,
    /// Add every key of another Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_keys_from: Option<AddKeysFromTransform>,
    /// Remove a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_key: Option<RemoveKeyTransform>,
}

/// `renameKey`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RenameKeyTransform {
    /// Old key.
    pub from: String,
    /// New key.
    pub to: String,
}

/// `addKey`: one of `value`, `stringValue`, `jsonPathExpression` gives the value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddKeyTransform {
    /// Key to add.
    pub key: String,
    /// Binary value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::optional_bytes")]
    pub value: Option<ByteString>,
    /// String value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_value: Option<String>,
    /// JSONPath into the AppBinding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path_expression: Option<String>,
}

/// `addKeysFrom`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddKeysFromTransform {
    /// The Secret to copy keys from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
}

/// `removeKey`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RemoveKeyTransform {
    /// Key to remove.
    pub key: String,
}

impl ClientConfig {
    /// The connection URL: `url` if set, else
    /// `<scheme>://<service>.<namespace>.svc:<port><path>?<query>` (no `?` without query).
    /// `None` when neither is set.
    pub fn connection_url(&self, namespace: &str) -> Option<String> {
        if let Some(url) = self.url.as_ref().filter(|u| !u.is_empty()) {
            return Some(url.clone());
        }
        let s = self.service.as_ref()?;
        let mut u = String::new();
        if let Some(scheme) = s.scheme.as_ref().filter(|x| !x.is_empty()) {
            u.push_str(scheme);
            u.push_str("://");
        }
        u.push_str(&format!("{}.{}.svc:{}", s.name, namespace, s.port));
        u.push_str(s.path.as_deref().unwrap_or(""));
        if let Some(q) = s.query.as_ref().filter(|q| !q.is_empty()) {
            u.push('?');
            u.push_str(q);
        }
        Some(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_url() {
        let c = ClientConfig {
            service: Some(ServiceReference {
                scheme: Some("postgresql".into()),
                name: "quick-postgres".into(),
                port: 5432,
                path: Some("/".into()),
                query: Some("sslmode=disable".into()),
            }),
            ..Default::default()
        };
        assert_eq!(
            c.connection_url("demo").unwrap(),
            "postgresql://quick-postgres.demo.svc:5432/?sslmode=disable"
        );
        let u = ClientConfig {
            url: Some("http://x".into()),
            ..c
        };
        assert_eq!(u.connection_url("demo").unwrap(), "http://x");
        assert_eq!(ClientConfig::default().connection_url("demo"), None);
    }
}
