//! `wipeOut` (stash-api.md §3.1): delete a restic repository from its object store, and
//! nothing else.
//!
//! Only restic's own layout under the repository prefix is touched: `config`, and the objects
//! of `keys/`, `data/<2 hex>/`, `index/`, `snapshots/` and `locks/` whose names are restic's
//! (64 lower-case hex digits, a `data/` object under the directory of its first two digits).
//! Anything else — other prefixes, other files beside or inside those directories — stays. With
//! an empty prefix that means the bucket's other objects survive.
//!
//! Before anything is deleted the prefix is verified to hold a restic repository: a key file
//! under `keys/` that parses as restic's key JSON (`kdf`, `salt`, `data`; key files are not
//! encrypted, so this needs no password). `config` is deleted after the packs and the keys
//! last, so a wipe interrupted half-way is still recognised as a repository when retried.
//!
//! The object stores are reached through the `object_store` crate (Apache Arrow; S3, GCS and
//! Azure with maintained request signing), not hand-written signers: it honours a custom CA
//! (`CA_CERT_DATA`), the S3 region (from `AWS_REGION`, else the bucket's own region as its
//! endpoint reports it in `x-amz-bucket-region`), GCS emulators (`STORAGE_EMULATOR_HOST`) and
//! Azure endpoint suffixes (`AZURE_ENDPOINT_SUFFIX`), the same keys restic reads.
use std::{collections::BTreeMap, sync::Arc};

use futures::{StreamExt, TryStreamExt};
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, path::Path};
use stash_crds::Backend as BackendSpec;

/// restic's directories whose objects are named by their SHA-256 (in deletion order: `keys`
/// goes last, after `config`).
const DIRS: &[&str] = &["data", "index", "snapshots", "locks"];

/// What a wipe did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// restic objects deleted (including `config`).
    pub deleted: usize,
    /// Objects found inside restic's directories whose names are not restic's: left in place.
    pub kept: usize,
}

/// An object store and the repository prefix in it (no leading or trailing `/`).
pub struct Target {
    /// The store (bucket or container).
    pub store: Arc<dyn ObjectStore>,
    /// The repository prefix (may be empty).
    pub prefix: String,
    /// `s3://bucket/prefix` and the like, for messages.
    pub describe: String,
    /// Azure with a SAS token: objects are deleted one request each (object_store deletes
    /// through the blob batch API, which does not take every SAS token).
    pub sas_delete: Option<SasDelete>,
}

/// Deleting Azure blobs one `DELETE` each, authorised by a SAS token.
pub struct SasDelete {
    client: reqwest::Client,
    /// `https://<account>.blob.<suffix>/<container>`.
    container: reqwest::Url,
    /// The token's query string (without `?`). Never printed: it is a credential.
    sas: String,
}

impl SasDelete {
    /// `DELETE` one blob: deleted (202) or already gone (404) is done.
    async fn delete(&self, path: &Path) -> Result<(), String> {
        let mut url = self.container.clone();
        url.path_segments_mut()
            .map_err(|()| "the Azure endpoint cannot carry a path".to_string())?
            .extend(path.as_ref().split('/'));
        let shown = url.to_string();
        url.set_query(Some(&self.sas));
        let resp = self
            .client
            .delete(url)
            .header("x-ms-version", "2021-08-06")
            .send()
            .await
            .map_err(|e| format!("DELETE {shown}: {}", e.without_url()))?;
        match resp.status().as_u16() {
            200..=299 | 404 => Ok(()),
            code => {
                let code_header = resp
                    .headers()
                    .get("x-ms-error-code")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                Err(format!("DELETE {shown}: HTTP {code} {code_header}"))
            }
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Is `rel` (a path relative to the repository prefix) one of restic's objects?
pub fn is_restic_object(rel: &str) -> bool {
    if rel == "config" {
        return true;
    }
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        ["data", sub, name] => sub.len() == 2 && is_hex64(name) && name.starts_with(sub),
        [dir, name] if ["keys", "index", "snapshots", "locks"].contains(dir) => is_hex64(name),
        _ => false,
    }
}

/// Does `bytes` look like a restic key file (`restic key list` reads these without the
/// repository password)?
pub fn is_restic_key(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| {
        v.get("kdf").and_then(|k| k.as_str()).is_some()
            && v.get("salt").and_then(|k| k.as_str()).is_some()
            && v.get("data").and_then(|k| k.as_str()).is_some()
    })
}

impl Target {
    /// The object `rel` under the prefix, named as restic names it (no percent-encoding:
    /// `team~1/app` is the key `team~1/app`, as restic wrote it).
    fn path(&self, rel: &str) -> Result<Path, String> {
        let raw = if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        };
        Path::parse(&raw).map_err(|e| {
            format!(
                "{}: the key {raw:?} cannot be addressed for the wipe-out ({e}): nothing was deleted",
                self.describe
            )
        })
    }

    fn rel<'a>(&self, full: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.prefix)
                .map_or(full, |r| r.trim_start_matches('/'))
        }
    }

    /// The objects under `dir/`, split into restic's and the others.
    async fn list(&self, dir: &str) -> Result<(Vec<Path>, usize), String> {
        let prefix = self.path(dir)?;
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| format!("listing {}/{dir}/: {e}", self.describe))?;
        let mut restic = Vec::new();
        let mut other = 0;
        for o in objects {
            if is_restic_object(self.rel(o.location.as_ref())) {
                restic.push(o.location);
            } else {
                other += 1;
            }
        }
        Ok((restic, other))
    }

    async fn delete_all(&self, paths: Vec<Path>) -> Result<usize, String> {
        let n = paths.len();
        if let Some(sas) = &self.sas_delete {
            let deletes: Vec<_> = paths
                .into_iter()
                .map(|p| -> futures::future::BoxFuture<'_, Result<(), String>> {
                    Box::pin(async move { sas.delete(&p).await })
                })
                .collect();
            let mut results = futures::stream::iter(deletes).buffer_unordered(8);
            while let Some(r) = results.next().await {
                r.map_err(|e| format!("deleting from {}: {e}", self.describe))?;
            }
            return Ok(n);
        }
        let stream = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut results = self.store.delete_stream(stream);
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(format!("deleting from {}: {e}", self.describe)),
            }
        }
        Ok(n)
    }

    /// Verify, then delete restic's objects under the prefix. With `expect_data` (the
    /// Repository recorded backups) finding no restic repository there is a failure: the
    /// data is somewhere this wipe does not look, and "deleted 0" would release the finalizer
    /// with the data still in place.
    pub async fn wipe(&self, expect_data: bool) -> Result<Report, String> {
        let (keys, keys_other) = self.list("keys").await?;
        let mut verified = false;
        for key in keys.iter().take(3) {
            let bytes = self
                .store
                .get(key)
                .await
                .map_err(|e| format!("reading {key}: {e}"))?
                .bytes()
                .await
                .map_err(|e| format!("reading {key}: {e}"))?;
            if is_restic_key(&bytes) {
                verified = true;
                break;
            }
        }
        let mut found = BTreeMap::new();
        let mut report = Report {
            deleted: 0,
            kept: keys_other,
        };
        for dir in DIRS {
            let (restic, other) = self.list(dir).await?;
            report.kept += other;
            found.insert(*dir, restic);
        }
        let config = self.path("config")?;
        let has_config = match self.store.head(&config).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(format!("reading {config}: {e}")),
        };
        let any = has_config || !keys.is_empty() || found.values().any(|v| !v.is_empty());
        if !verified {
            if any {
                return Err(format!(
                    "{} is not verified to be a restic repository (no restic key file under keys/): nothing was deleted",
                    self.describe
                ));
            }
            if expect_data {
                return Err(format!(
                    "no restic repository under {} although the Repository recorded backups: nothing was deleted (is the bucket or prefix right, and do the Secret's credentials see it?)",
                    self.describe
                ));
            }
            // Nothing of restic's there, and no backup was ever recorded: never initialised.
            return Ok(report);
        }
        for dir in DIRS {
            report.deleted += self
                .delete_all(found.remove(dir).unwrap_or_default())
                .await?;
        }
        if has_config {
            report.deleted += self.delete_all(vec![config]).await?;
        }
        report.deleted += self.delete_all(keys).await?;
        Ok(report)
    }
}

/// The storage Secret's values, trimmed (restic reads them from the environment).
pub type SecretData = BTreeMap<String, String>;

/// A few quick retries: a failed wipe is retried by the controller with back-off anyway.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(20),
        ..Default::default()
    }
}

fn client_options(secret: &SecretData) -> Result<ClientOptions, String> {
    let mut opts = ClientOptions::new().with_timeout(std::time::Duration::from_secs(60));
    if let Some(pem) = secret.get("CA_CERT_DATA") {
        for cert in object_store::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("CA_CERT_DATA: {e}"))?
        {
            opts = opts.with_root_certificate(cert);
        }
    }
    Ok(opts)
}

/// Split an S3 endpoint as restic takes it (`host[:port]` means https) into a URL; `None` for
/// AWS itself.
fn s3_endpoint(endpoint: Option<&str>) -> Option<String> {
    let e = endpoint.map(|e| e.trim().trim_end_matches('/'))?;
    if e.is_empty() || e == "s3.amazonaws.com" || e == "https://s3.amazonaws.com" {
        return None;
    }
    Some(if e.contains("://") {
        e.to_string()
    } else {
        format!("https://{e}")
    })
}

/// The bucket's region as its endpoint reports it (`x-amz-bucket-region` on `HEAD /bucket`,
/// sent by AWS and MinIO even to an anonymous request).
async fn bucket_region(url: &str, secret: &SecretData) -> Option<String> {
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(20));
    if let Some(pem) = secret.get("CA_CERT_DATA") {
        for c in reqwest::Certificate::from_pem_bundle(pem.as_bytes()).ok()? {
            b = b.add_root_certificate(c);
        }
    }
    let resp = b.build().ok()?.head(url).send().await.ok()?;
    resp.headers()
        .get("x-amz-bucket-region")
        .and_then(|v| v.to_str().ok())
        .filter(|r| !r.is_empty())
        .map(str::to_string)
}

/// The prefix as restic uses it ([`stash_restic::object_prefix`]: `./app` is `app`).
fn clean_prefix(s3: bool, p: Option<&String>) -> String {
    stash_restic::object_prefix(s3, p.map_or("", String::as_str))
}

/// Only the credentials of the storage Secret: without them the object store client would
/// fall back to the operator pod's own identity (instance role, workload identity) and could
/// delete a repository the user never pointed at.
fn require(found: bool, provider: &str, keys: &str) -> Result<(), String> {
    if found {
        Ok(())
    } else {
        Err(format!(
            "the storage Secret has no {keys}: a {provider} wipe-out uses only the Secret's credentials, never the operator's own identity; nothing was deleted"
        ))
    }
}

/// The wipe target of a Repository's backend; `Ok(None)` for providers that cannot be wiped
/// through an object store (local, REST, Swift, B2).
pub async fn target(backend: &BackendSpec, secret: &SecretData) -> Result<Option<Target>, String> {
    let get = |k: &str| secret.get(k).cloned().filter(|v| !v.is_empty());
    if let Some(s3) = &backend.s3 {
        require(
            get("AWS_ACCESS_KEY_ID").is_some() && get("AWS_SECRET_ACCESS_KEY").is_some(),
            "S3",
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        )?;
        let bucket = s3.bucket.clone().unwrap_or_default();
        let endpoint = s3_endpoint(s3.endpoint.as_deref());
        let region = match get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")) {
            Some(r) => r,
            None => {
                let base = endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://{bucket}.s3.amazonaws.com"));
                let url = match &endpoint {
                    Some(e) => format!("{e}/{bucket}"),
                    None => base,
                };
                bucket_region(&url, secret)
                    .await
                    .unwrap_or_else(|| "us-east-1".into())
            }
        };
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(region)
            .with_retry(retry())
            .with_client_options(client_options(secret)?);
        if let Some(k) = get("AWS_ACCESS_KEY_ID") {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = get("AWS_SECRET_ACCESS_KEY") {
            b = b.with_secret_access_key(k);
        }
        if let Some(t) = get("AWS_SESSION_TOKEN") {
            b = b.with_token(t);
        }
        if let Some(e) = &endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        let store = b.build().map_err(|e| format!("S3 bucket {bucket}: {e}"))?;
        let prefix = clean_prefix(true, s3.prefix.as_ref());
        return Ok(Some(Target {
            store: Arc::new(store),
            describe: format!("s3://{bucket}/{prefix}"),
            prefix,
            sas_delete: None,
        }));
    }
    if let Some(gcs) = &backend.gcs {
        require(
            get("GOOGLE_ACCESS_TOKEN").is_some()
                || get("GOOGLE_SERVICE_ACCOUNT_JSON_KEY").is_some(),
            "GCS",
            "GOOGLE_SERVICE_ACCOUNT_JSON_KEY or GOOGLE_ACCESS_TOKEN",
        )?;
        let bucket = gcs.bucket.clone().unwrap_or_default();
        let mut b = object_store::gcp::GoogleCloudStorageBuilder::new()
            .with_bucket_name(&bucket)
            .with_retry(retry())
            .with_client_options(client_options(secret)?);
        if let Some(host) = get("STORAGE_EMULATOR_HOST") {
            let url = if host.contains("://") {
                host
            } else {
                format!("http://{host}")
            };
            b = b.with_base_url(url.trim_end_matches('/'));
        }
        if let Some(token) = get("GOOGLE_ACCESS_TOKEN") {
            b = b.with_credentials(Arc::new(object_store::StaticCredentialProvider::new(
                object_store::gcp::GcpCredential { bearer: token },
            )));
        } else if let Some(json) = get("GOOGLE_SERVICE_ACCOUNT_JSON_KEY") {
            b = b.with_service_account_key(json);
        }
        let store = b.build().map_err(|e| format!("GCS bucket {bucket}: {e}"))?;
        let prefix = clean_prefix(false, gcs.prefix.as_ref());
        return Ok(Some(Target {
            store: Arc::new(store),
            describe: format!("gs://{bucket}/{prefix}"),
            prefix,
            sas_delete: None,
        }));
    }
    if let Some(az) = &backend.azure {
        require(
            get("AZURE_ACCOUNT_KEY").is_some() || get("AZURE_ACCOUNT_SAS").is_some(),
            "Azure",
            "AZURE_ACCOUNT_KEY or AZURE_ACCOUNT_SAS",
        )?;
        let container = az.container.clone().unwrap_or_default();
        let account = get("AZURE_ACCOUNT_NAME").unwrap_or_default();
        let suffix = get("AZURE_ENDPOINT_SUFFIX").unwrap_or_else(|| "core.windows.net".into());
        let endpoint = format!("https://{account}.blob.{suffix}");
        let mut b = object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(&account)
            .with_container_name(&container)
            .with_endpoint(endpoint.clone())
            .with_retry(retry())
            .with_client_options(client_options(secret)?);
        let mut sas_delete = None;
        if let Some(k) = get("AZURE_ACCOUNT_KEY") {
            b = b.with_access_key(k);
        } else if let Some(sas) = get("AZURE_ACCOUNT_SAS") {
            let mut client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
            if let Some(pem) = secret.get("CA_CERT_DATA") {
                for c in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                    .map_err(|e| format!("CA_CERT_DATA: {e}"))?
                {
                    client = client.add_root_certificate(c);
                }
            }
            let mut url = reqwest::Url::parse(&endpoint)
                .map_err(|e| format!("Azure endpoint {endpoint}: {e}"))?;
            url.path_segments_mut()
                .map_err(|()| format!("Azure endpoint {endpoint} cannot carry a path"))?
                .push(&container);
            sas_delete = Some(SasDelete {
                client: client
                    .build()
                    .map_err(|e| format!("HTTP client for {endpoint}: {e}"))?,
                container: url,
                sas: sas.trim_start_matches('?').to_string(),
            });
            // restic's key: the SAS token's query string (a leading `?` allowed).
            b = b.with_config(
                object_store::azure::AzureConfigKey::SasKey,
                sas.trim_start_matches('?'),
            );
        }
        let store = b
            .build()
            .map_err(|e| format!("Azure container {container}: {e}"))?;
        let prefix = clean_prefix(false, az.prefix.as_ref());
        return Ok(Some(Target {
            store: Arc::new(store),
            describe: format!("azure://{account}/{container}/{prefix}"),
            prefix,
            sas_delete,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn only_restics_layout_is_recognised() {
        assert!(is_restic_object("config"));
        assert!(is_restic_object(&format!("data/01/{H}")));
        assert!(is_restic_object(&format!("keys/{H}")));
        assert!(is_restic_object(&format!("index/{H}")));
        assert!(is_restic_object(&format!("snapshots/{H}")));
        assert!(is_restic_object(&format!("locks/{H}")));
        // Not restic's: wrong sub-directory, upper case, short, foreign names, nesting.
        assert!(!is_restic_object(&format!("data/02/{H}")));
        assert!(!is_restic_object(&format!("data/{H}")));
        assert!(!is_restic_object(&format!("keys/{}", H.to_uppercase())));
        assert!(!is_restic_object("keys/abc"));
        assert!(!is_restic_object("data/README"));
        assert!(!is_restic_object("config.bak"));
        assert!(!is_restic_object(&format!("other/{H}")));
        assert!(!is_restic_object(&format!("x/keys/{H}")));
    }

    #[test]
    fn key_files_are_recognised_without_the_password() {
        assert!(is_restic_key(
            br#"{"created":"2024-01-01T00:00:00Z","kdf":"scrypt","N":32768,"r":8,"p":1,"salt":"c2FsdA==","data":"ZGF0YQ=="}"#
        ));
        assert!(!is_restic_key(b"{\"kdf\":\"scrypt\"}"));
        assert!(!is_restic_key(b"not json"));
    }

    #[test]
    fn s3_endpoints_follow_restic() {
        assert_eq!(s3_endpoint(None), None);
        assert_eq!(s3_endpoint(Some("s3.amazonaws.com")), None);
        assert_eq!(
            s3_endpoint(Some("minio:9000/")).as_deref(),
            Some("https://minio:9000")
        );
        assert_eq!(
            s3_endpoint(Some("http://10.0.0.1:9000")).as_deref(),
            Some("http://10.0.0.1:9000")
        );
    }

    /// An in-memory bucket with a repository under `repo/`, foreign files beside and inside
    /// it, and a second repository elsewhere: only the first repository's objects go.
    #[tokio::test]
    async fn a_wipe_deletes_only_restics_objects_under_the_prefix() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let key = br#"{"kdf":"scrypt","N":1,"r":8,"p":1,"salt":"cw==","data":"ZA=="}"#;
        let put = |p: String, b: &'static [u8]| {
            let store = store.clone();
            async move {
                store
                    .put(&Path::from(p), b.to_vec().into())
                    .await
                    .expect("put");
            }
        };
        for root in ["repo", "other-repo"] {
            put(format!("{root}/config"), b"c").await;
            put(format!("{root}/keys/{H}"), key).await;
            put(format!("{root}/data/01/{H}"), b"d").await;
            put(format!("{root}/index/{H}"), b"i").await;
            put(format!("{root}/snapshots/{H}"), b"s").await;
        }
        put("repo/data/README".into(), b"mine").await;
        put("repo/notes.txt".into(), b"mine").await;
        put("photos/a.jpg".into(), b"mine").await;
        let t = Target {
            store: store.clone(),
            prefix: "repo".into(),
            describe: "mem://repo".into(),
            sas_delete: None,
        };
        let r = t.wipe(true).await.expect("wipe");
        assert_eq!(
            r,
            Report {
                deleted: 5,
                kept: 1
            }
        );
        let left: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(left.len(), 8, "{left:?}");
        assert!(
            left.iter().all(|p| !p.starts_with("repo/")
                || p == "repo/data/README"
                || p == "repo/notes.txt")
        );
        // Again: nothing of restic's is left, nothing more is deleted.
        assert_eq!(t.wipe(false).await.expect("again").deleted, 0);
        assert!(
            t.wipe(true).await.is_err(),
            "a Repository that recorded backups and has nothing there fails"
        );
    }

    #[tokio::test]
    async fn an_unverified_prefix_is_refused() {
        let store = Arc::new(object_store::memory::InMemory::new());
        store
            .put(&Path::from(format!("data/01/{H}")), b"x".to_vec().into())
            .await
            .unwrap();
        store
            .put(
                &Path::from(format!("keys/{H}")),
                b"not a key".to_vec().into(),
            )
            .await
            .unwrap();
        let t = Target {
            store: store.clone(),
            prefix: String::new(),
            describe: "mem://".into(),
            sas_delete: None,
        };
        let e = t.wipe(true).await.expect_err("refused");
        assert!(e.contains("not verified"), "{e}");
        assert_eq!(store.list(None).count().await, 2);
    }
}
