//! The storage backend of a Repository (stash-api.md §2.1) and restic repository URLs (§9.1).

use crate::volume::VolumeSource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a restic repository lives. On the wire this is the upstream struct of options
/// (`{storageSecretName, s3: {...}}`); exactly one provider should be set — see
/// [`Backend::provider`] (precedence when several are set) and [`Backend::validate`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// Secret in the same namespace holding `RESTIC_PASSWORD` and the provider credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_secret_name: Option<String>,
    /// A Kubernetes volume mounted into the backup containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalSpec>,
    /// Amazon S3 or an S3-compatible server (Minio, Rook, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
    /// Google Cloud Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsSpec>,
    /// Azure Blob Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSpec>,
    /// OpenStack Swift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swift: Option<SwiftSpec>,
    /// Backblaze B2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b2: Option<B2Spec>,
    /// A restic REST server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestServerSpec>,
}

/// A local backend: any core volume source plus where to mount it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSpec {
    /// The volume (hostPath, nfs, persistentVolumeClaim, ...), inlined.
    #[serde(flatten)]
    pub volume_source: VolumeSource,
    /// Where the volume is mounted in Stash containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// Sub-path inside the volume holding the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// S3 backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Endpoint, e.g. `s3.amazonaws.com` or `http://minio.example:9000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Bucket name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Path prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The bucket's region (later Stash), e.g. `us-west-1`; absent: restic and the operator
    /// ask the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Skip TLS verification (later Stash): refused at admission — give the endpoint's CA in
    /// the storage Secret's `CA_CERT_DATA` instead (docs/differences.md §46).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "insecureTLS"
    )]
    pub insecure_tls: Option<bool>,
}

/// GCS backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcsSpec {
    /// Bucket name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Path prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// restic `gs.connections` (0 = restic default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_connections: Option<i32>,
}

/// Azure backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureSpec {
    /// Container name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Path prefix inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// restic `azure.connections` (0 = restic default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_connections: Option<i32>,
}

/// Swift backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwiftSpec {
    /// Container name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Path prefix inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// B2 backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct B2Spec {
    /// Bucket name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Path prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// restic `b2.connections` (0 = restic default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_connections: Option<i32>,
}

/// REST server backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestServerSpec {
    /// Server URL, e.g. `http://rest-server.demo.svc:8000/stash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Which storage provider a [`Backend`] uses. The identifiers (`local`, `s3`, ...) are the ones
/// passed to Functions as `REPOSITORY_PROVIDER`. Declaration order is the precedence order.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// `local`
    Local,
    /// `s3`
    S3,
    /// `gcs`
    Gcs,
    /// `azure`
    Azure,
    /// `swift`
    Swift,
    /// `b2`
    B2,
    /// `rest`
    Rest,
}

impl Provider {
    /// Every provider, in precedence order.
    pub const ALL: [Provider; 7] = [
        Provider::Local,
        Provider::S3,
        Provider::Gcs,
        Provider::Azure,
        Provider::Swift,
        Provider::B2,
        Provider::Rest,
    ];

    /// The identifier (`local`, `s3`, `gcs`, `azure`, `swift`, `b2`, `rest`).
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::S3 => "s3",
            Provider::Gcs => "gcs",
            Provider::Azure => "azure",
            Provider::Swift => "swift",
            Provider::B2 => "b2",
            Provider::Rest => "rest",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed view of the provider section of a [`Backend`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BackendKind<'a> {
    /// `local`
    Local(&'a LocalSpec),
    /// `s3`
    S3(&'a S3Spec),
    /// `gcs`
    Gcs(&'a GcsSpec),
    /// `azure`
    Azure(&'a AzureSpec),
    /// `swift`
    Swift(&'a SwiftSpec),
    /// `b2`
    B2(&'a B2Spec),
    /// `rest`
    Rest(&'a RestServerSpec),
}

impl BackendKind<'_> {
    /// The provider of this section.
    pub fn provider(&self) -> Provider {
        match self {
            BackendKind::Local(_) => Provider::Local,
            BackendKind::S3(_) => Provider::S3,
            BackendKind::Gcs(_) => Provider::Gcs,
            BackendKind::Azure(_) => Provider::Azure,
            BackendKind::Swift(_) => Provider::Swift,
            BackendKind::B2(_) => Provider::B2,
            BackendKind::Rest(_) => Provider::Rest,
        }
    }
}

/// Why a [`Backend`] is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No provider section is set.
    #[error(
        "backend has no provider set (expected exactly one of local, s3, gcs, azure, swift, b2, rest)"
    )]
    NoProvider,
    /// More than one provider section is set.
    #[error("backend has several providers set: {}", .0.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", "))]
    MultipleProviders(Vec<Provider>),
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("")
}

/// `filepath.Join`-like join of non-empty segments (duplicate and trailing slashes removed,
/// a leading slash of the first segment kept).
pub(crate) fn join_path(parts: &[&str]) -> String {
    let absolute = parts
        .iter()
        .find(|p| !p.is_empty())
        .is_some_and(|p| p.starts_with('/'));
    let segs: Vec<&str> = parts
        .iter()
        .flat_map(|p| p.split('/'))
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let joined = segs.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

impl Backend {
    /// The storage Secret's name, when set and not empty.
    pub fn storage_secret(&self) -> Option<String> {
        self.storage_secret_name.clone().filter(|s| !s.is_empty())
    }

    /// True when nothing is set (not even `storageSecretName`).
    pub fn is_empty(&self) -> bool {
        self == &Backend::default()
    }

    /// Every provider whose section is set, in precedence order.
    pub fn providers(&self) -> Vec<Provider> {
        Provider::ALL
            .into_iter()
            .filter(|p| self.section(*p).is_some())
            .collect()
    }

    /// The section of `provider`, if set.
    pub fn section(&self, provider: Provider) -> Option<BackendKind<'_>> {
        match provider {
            Provider::Local => self.local.as_ref().map(BackendKind::Local),
            Provider::S3 => self.s3.as_ref().map(BackendKind::S3),
            Provider::Gcs => self.gcs.as_ref().map(BackendKind::Gcs),
            Provider::Azure => self.azure.as_ref().map(BackendKind::Azure),
            Provider::Swift => self.swift.as_ref().map(BackendKind::Swift),
            Provider::B2 => self.b2.as_ref().map(BackendKind::B2),
            Provider::Rest => self.rest.as_ref().map(BackendKind::Rest),
        }
    }

    /// The provider in use: the first set one in the order local, s3, gcs, azure, swift, b2, rest
    /// (upstream's precedence when several are set). `None` when none is set.
    pub fn provider(&self) -> Option<Provider> {
        self.kind().map(|k| k.provider())
    }

    /// The section in use (same precedence as [`Backend::provider`]).
    pub fn kind(&self) -> Option<BackendKind<'_>> {
        Provider::ALL.into_iter().find_map(|p| self.section(p))
    }

    /// Checks that exactly one provider is set and returns it.
    pub fn validate(&self) -> Result<BackendKind<'_>, BackendError> {
        let set = self.providers();
        match set.len() {
            0 => Err(BackendError::NoProvider),
            1 => Ok(self.section(set[0]).expect("provider is set")),
            _ => Err(BackendError::MultipleProviders(set)),
        }
    }

    /// The `RESTIC_REPOSITORY` value (stash-api.md §9.1) of the provider in use:
    /// `local` → `<mountPath>/<subPath>`, `s3:<endpoint>/<bucket>/<prefix>`, `gs:<bucket>:/<prefix>`,
    /// `azure:<container>:/<prefix>`, `swift:<container>:/<prefix>`, `b2:<bucket>:/<prefix>`,
    /// `rest:<url>` (REST credentials are injected by the caller, see
    /// [`RestServerSpec::url_with_credentials`]). An S3 backend without endpoint uses
    /// `s3.amazonaws.com`.
    pub fn restic_repository(&self) -> Result<String, BackendError> {
        let kind = self.kind().ok_or(BackendError::NoProvider)?;
        let pre = |p: &Option<String>| opt(p).trim_start_matches('/').to_owned();
        Ok(match kind {
            BackendKind::Local(l) => join_path(&[opt(&l.mount_path), opt(&l.sub_path)]),
            BackendKind::S3(s) => {
                let endpoint = match opt(&s.endpoint).trim_end_matches('/') {
                    "" => "s3.amazonaws.com",
                    e => e,
                };
                format!(
                    "s3:{endpoint}/{}",
                    join_path(&[opt(&s.bucket), opt(&s.prefix)])
                )
            }
            BackendKind::Gcs(g) => format!("gs:{}:/{}", opt(&g.bucket), pre(&g.prefix)),
            BackendKind::Azure(a) => format!("azure:{}:/{}", opt(&a.container), pre(&a.prefix)),
            BackendKind::Swift(s) => format!("swift:{}:/{}", opt(&s.container), pre(&s.prefix)),
            BackendKind::B2(b) => format!("b2:{}:/{}", opt(&b.bucket), pre(&b.prefix)),
            BackendKind::Rest(r) => format!("rest:{}", opt(&r.url)),
        })
    }

    /// `(REPOSITORY_BUCKET, REPOSITORY_PREFIX)` (stash-api.md §4): bucket/container and prefix;
    /// for local the bucket is empty and the prefix is `mountPath/subPath`; for rest both are empty.
    /// Unlike upstream MID-2019 this includes b2 (a documented fix).
    pub fn bucket_and_prefix(&self) -> Result<(String, String), BackendError> {
        let kind = self.kind().ok_or(BackendError::NoProvider)?;
        let s = |o: &Option<String>| opt(o).to_owned();
        Ok(match kind {
            BackendKind::Local(l) => (
                String::new(),
                join_path(&[opt(&l.mount_path), opt(&l.sub_path)]),
            ),
            BackendKind::S3(x) => (s(&x.bucket), s(&x.prefix)),
            BackendKind::Gcs(x) => (s(&x.bucket), s(&x.prefix)),
            BackendKind::Azure(x) => (s(&x.container), s(&x.prefix)),
            BackendKind::Swift(x) => (s(&x.container), s(&x.prefix)),
            BackendKind::B2(x) => (s(&x.bucket), s(&x.prefix)),
            BackendKind::Rest(_) => (String::new(), String::new()),
        })
    }

    /// `maxConnections` of the provider in use (gcs, azure, b2), 0 otherwise.
    pub fn max_connections(&self) -> i32 {
        match self.kind() {
            Some(BackendKind::Gcs(g)) => g.max_connections.unwrap_or(0),
            Some(BackendKind::Azure(a)) => a.max_connections.unwrap_or(0),
            Some(BackendKind::B2(b)) => b.max_connections.unwrap_or(0),
            _ => 0,
        }
    }
}

/// Percent-encodes a URL userinfo component.
fn encode_userinfo(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RestServerSpec {
    /// `rest:<url>` with `user:password@` injected as URL userinfo (as upstream does with
    /// `REST_SERVER_USERNAME` / `REST_SERVER_PASSWORD`). Without a username the URL is unchanged.
    pub fn url_with_credentials(&self, username: &str, password: &str) -> String {
        let url = opt(&self.url);
        if username.is_empty() {
            return format!("rest:{url}");
        }
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let userinfo = if password.is_empty() {
            encode_userinfo(username)
        } else {
            format!(
                "{}:{}",
                encode_userinfo(username),
                encode_userinfo(password)
            )
        };
        if scheme.is_empty() {
            format!("rest:{userinfo}@{rest}")
        } else {
            format!("rest:{scheme}://{userinfo}@{rest}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn provider_precedence_and_validation() {
        let mut b = Backend::default();
        assert_eq!(b.provider(), None);
        assert_eq!(b.validate(), Err(BackendError::NoProvider));
        b.rest = Some(RestServerSpec {
            url: s("http://r:8000"),
        });
        assert_eq!(b.provider(), Some(Provider::Rest));
        assert!(b.validate().is_ok());
        b.gcs = Some(GcsSpec {
            bucket: s("bk"),
            prefix: s("p"),
            max_connections: Some(3),
        });
        assert_eq!(b.provider(), Some(Provider::Gcs));
        assert_eq!(
            b.validate(),
            Err(BackendError::MultipleProviders(vec![
                Provider::Gcs,
                Provider::Rest
            ]))
        );
        assert_eq!(b.max_connections(), 3);
        b.local = Some(LocalSpec::default());
        assert_eq!(b.provider(), Some(Provider::Local));
        assert_eq!(Provider::B2.to_string(), "b2");
    }

    #[test]
    fn restic_repository_urls() {
        let local = Backend {
            local: Some(LocalSpec {
                mount_path: s("/safe/data"),
                sub_path: s("deployment/demo"),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            local.restic_repository().unwrap(),
            "/safe/data/deployment/demo"
        );
        assert_eq!(
            local.bucket_and_prefix().unwrap(),
            (String::new(), "/safe/data/deployment/demo".into())
        );
        let s3 = Backend {
            s3: Some(S3Spec {
                endpoint: s("s3.amazonaws.com"),
                bucket: s("stash-demo"),
                prefix: s("/demo/dep"),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            s3.restic_repository().unwrap(),
            "s3:s3.amazonaws.com/stash-demo/demo/dep"
        );
        let minio = Backend {
            s3: Some(S3Spec {
                endpoint: s("https://minio.demo:9000"),
                bucket: s("b"),
                prefix: None,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            minio.restic_repository().unwrap(),
            "s3:https://minio.demo:9000/b"
        );
        let gcs = Backend {
            gcs: Some(GcsSpec {
                bucket: s("b"),
                prefix: s("p/q"),
                max_connections: None,
            }),
            ..Default::default()
        };
        assert_eq!(gcs.restic_repository().unwrap(), "gs:b:/p/q");
        let az = Backend {
            azure: Some(AzureSpec {
                container: s("c"),
                prefix: s("p"),
                max_connections: None,
            }),
            ..Default::default()
        };
        assert_eq!(az.restic_repository().unwrap(), "azure:c:/p");
        let sw = Backend {
            swift: Some(SwiftSpec {
                container: s("c"),
                prefix: s("p"),
            }),
            ..Default::default()
        };
        assert_eq!(sw.restic_repository().unwrap(), "swift:c:/p");
        let b2 = Backend {
            b2: Some(B2Spec {
                bucket: s("b"),
                prefix: s("p"),
                max_connections: Some(2),
            }),
            ..Default::default()
        };
        assert_eq!(b2.restic_repository().unwrap(), "b2:b:/p");
        assert_eq!(b2.bucket_and_prefix().unwrap(), ("b".into(), "p".into()));
        assert_eq!(b2.max_connections(), 2);
        let rest = RestServerSpec {
            url: s("http://rest.demo.svc:8000/stash"),
        };
        let rb = Backend {
            rest: Some(rest.clone()),
            ..Default::default()
        };
        assert_eq!(
            rb.restic_repository().unwrap(),
            "rest:http://rest.demo.svc:8000/stash"
        );
        assert_eq!(
            rest.url_with_credentials("u", "p@ss"),
            "rest:http://u:p%40ss@rest.demo.svc:8000/stash"
        );
        assert_eq!(
            rest.url_with_credentials("", ""),
            "rest:http://rest.demo.svc:8000/stash"
        );
        assert_eq!(
            Backend::default().restic_repository(),
            Err(BackendError::NoProvider)
        );
    }
}
