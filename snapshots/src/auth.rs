//! Authentication from the front proxy and delegated authorization.
//!
//! * The kube-aggregator presents its proxy client certificate; the TLS layer verifies it
//!   against the request-header CA published in ConfigMap
//!   `kube-system/extension-apiserver-authentication` ([`RequestHeaderConfig::load`]), and
//!   [`RequestHeaderConfig::authenticate`] checks its CN against `requestheader-allowed-names`
//!   before it trusts the user, group and extra headers.
//! * Every resource request is authorized with a SubjectAccessReview; allowed answers are
//!   cached for a short while ([`Authorizer`]).
use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::HeaderMap;
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::ConfigMap,
};
use kube::{Api, Client, api::PostParams};
use stash_runtime::aggregated::PeerCertificates;

/// The ConfigMap kube-apiserver publishes its authentication settings in.
pub const AUTH_CONFIGMAP_NAMESPACE: &str = "kube-system";
/// Its name.
pub const AUTH_CONFIGMAP_NAME: &str = "extension-apiserver-authentication";

/// The request-header authentication settings of the cluster.
#[derive(Clone, Debug)]
pub struct RequestHeaderConfig {
    /// PEM bundle of the CA that signs front-proxy client certificates.
    pub client_ca_pem: String,
    /// CNs allowed to assert users (empty: any certificate the CA signed).
    pub allowed_names: Vec<String>,
    /// Headers holding the user name (first non-empty wins).
    pub username_headers: Vec<String>,
    /// Headers holding groups.
    pub group_headers: Vec<String>,
    /// Prefixes of extra headers.
    pub extra_prefixes: Vec<String>,
}

fn json_list(data: &BTreeMap<String, String>, key: &str, default: &[&str]) -> Vec<String> {
    data.get(key)
        .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
}

impl RequestHeaderConfig {
    /// Read the settings from `kube-system/extension-apiserver-authentication`.
    pub async fn load(client: &Client) -> anyhow::Result<Self> {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), AUTH_CONFIGMAP_NAMESPACE)
            .get(AUTH_CONFIGMAP_NAME)
            .await
            .map_err(|e| {
                anyhow::anyhow!("ConfigMap {AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP_NAME}: {e}")
            })?;
        Self::from_data(&cm.data.unwrap_or_default())
    }

    /// Parse the ConfigMap's data.
    pub fn from_data(data: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let client_ca_pem = data
            .get("requestheader-client-ca-file")
            .filter(|s| !s.trim().is_empty())
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the API server publishes no requestheader-client-ca-file: is the aggregation layer configured?"))?;
        Ok(Self {
            client_ca_pem,
            allowed_names: data
                .get("requestheader-allowed-names")
                .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok())
                .unwrap_or_default(),
            username_headers: json_list(data, "requestheader-username-headers", &["X-Remote-User"]),
            group_headers: json_list(data, "requestheader-group-headers", &["X-Remote-Group"]),
            extra_prefixes: json_list(
                data,
                "requestheader-extra-headers-prefix",
                &["X-Remote-Extra-"],
            ),
        })
    }

    /// The user a request asserts, if it came over a verified front-proxy connection.
    pub fn authenticate(
        &self,
        peer: &PeerCertificates,
        headers: &HeaderMap,
    ) -> Result<UserInfo, String> {
        let leaf = peer.leaf().ok_or("no client certificate")?;
        let cn = stash_runtime::certs::common_name(leaf)
            .ok_or("client certificate without a common name")?;
        if !self.allowed_names.is_empty() && !self.allowed_names.contains(&cn) {
            return Err(format!(
                "client certificate CN {cn:?} is not an allowed request-header name"
            ));
        }
        let name = self
            .username_headers
            .iter()
            .find_map(|h| {
                headers
                    .get(h.as_str())
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
            })
            .ok_or("no user in the request headers")?
            .to_owned();
        let groups = self
            .group_headers
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()).iter())
            .filter_map(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (h, v) in headers {
            let h = h.as_str();
            for prefix in &self.extra_prefixes {
                if h.len() > prefix.len()
                    && h[..prefix.len()].eq_ignore_ascii_case(prefix)
                    && let Ok(v) = v.to_str()
                {
                    extra
                        .entry(percent_decode(&h[prefix.len()..]).to_lowercase())
                        .or_default()
                        .push(v.to_owned());
                }
            }
        }
        Ok(UserInfo {
            name,
            groups,
            extra,
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (keys lower-case).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request wants to do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attributes {
    /// `get`, `list` or `delete`.
    pub verb: &'static str,
    /// Namespace (empty: all namespaces).
    pub namespace: String,
    /// Object name (empty for lists).
    pub name: String,
}

/// SubjectAccessReview-backed authorization with a short cache of allowed answers.
pub struct Authorizer {
    client: Client,
    ttl: Duration,
    cache: Mutex<HashMap<(UserInfo, Attributes), Instant>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// An authorization answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Forbidden, with the authorizer's reason (may be empty).
    Deny(String),
}

impl Authorizer {
    /// An authorizer that caches allowed answers for `ttl`.
    pub fn new(client: Client, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            cache: Mutex::default(),
        }
    }

    /// May `user` do `attrs` on snapshots?
    pub async fn authorize(
        &self,
        user: &UserInfo,
        attrs: &Attributes,
    ) -> Result<Decision, kube::Error> {
        let key = (user.clone(), attrs.clone());
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if cache.len() > 10_000 {
                cache.retain(|_, t| *t > now);
            }
            if cache.get(&key).is_some_and(|t| *t > now) {
                return Ok(Decision::Allow);
            }
        }
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(stash_crds::consts::SNAPSHOT_GROUP.to_owned()),
                    version: Some("v1alpha1".into()),
                    resource: Some(stash_crds::snapshot::SNAPSHOT_PLURAL.into()),
                    verb: Some(attrs.verb.into()),
                    namespace: (!attrs.namespace.is_empty()).then(|| attrs.namespace.clone()),
                    name: (!attrs.name.is_empty()).then(|| attrs.name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &sar)
            .await?;
        let status = answer.status.unwrap_or_default();
        if status.allowed && status.denied != Some(true) {
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, Instant::now() + self.ttl);
            Ok(Decision::Allow)
        } else {
            Ok(Decision::Deny(status.reason.unwrap_or_default()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn config_from_the_configmap() {
        let data: BTreeMap<String, String> = [
            (
                "requestheader-client-ca-file",
                "-----BEGIN CERTIFICATE-----\n",
            ),
            ("requestheader-allowed-names", "[\"front-proxy-client\"]"),
            ("requestheader-username-headers", "[\"X-Remote-User\"]"),
            ("requestheader-group-headers", "[\"X-Remote-Group\"]"),
            (
                "requestheader-extra-headers-prefix",
                "[\"X-Remote-Extra-\"]",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let c = RequestHeaderConfig::from_data(&data).unwrap();
        assert_eq!(c.allowed_names, vec!["front-proxy-client"]);
        assert!(RequestHeaderConfig::from_data(&BTreeMap::new()).is_err());
    }

    #[test]
    fn headers_need_an_allowed_certificate() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = stash_testenv::certs::Ca::new("fp").unwrap();
        let good = ca.client("front-proxy-client", &[]).unwrap();
        let bad = ca.client("mallory", &[]).unwrap();
        let der = |pem: &str| {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            CertificateDer::from_pem_slice(pem.as_bytes())
                .unwrap()
                .into_owned()
        };
        let config = RequestHeaderConfig {
            client_ca_pem: ca.cert.clone(),
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_prefixes: vec!["X-Remote-Extra-".into()],
        };
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", HeaderValue::from_static("alice"));
        h.append("x-remote-group", HeaderValue::from_static("dev"));
        h.append(
            "x-remote-group",
            HeaderValue::from_static("system:authenticated"),
        );
        h.insert("x-remote-extra-scopes%2Fa", HeaderValue::from_static("v"));
        let peer = PeerCertificates(std::sync::Arc::new(vec![der(&good.cert)]));
        let u = config.authenticate(&peer, &h).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, vec!["dev", "system:authenticated"]);
        assert_eq!(u.extra.get("scopes/a"), Some(&vec!["v".to_owned()]));
        assert!(
            config
                .authenticate(
                    &PeerCertificates(std::sync::Arc::new(vec![der(&bad.cert)])),
                    &h
                )
                .is_err()
        );
        assert!(
            config
                .authenticate(&PeerCertificates::default(), &h)
                .is_err()
        );
    }
}
