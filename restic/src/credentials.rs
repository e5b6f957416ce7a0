//! The repository's storage Secret (stash-api.md §9.2): the restic password and the provider
//! credentials, read from a mounted Secret directory or from the Secret's data map.
//!
//! Values are never printed: `Debug` shows key names only, and [`Credentials::secrets`] feeds
//! the scrubber that cleans every error message.
use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{Error, Location, Result};

/// The restic password key (required).
pub const RESTIC_PASSWORD: &str = "RESTIC_PASSWORD";
/// PEM CA bundle for TLS backends; passed as `--cacert <file>`.
pub const CA_CERT_DATA: &str = "CA_CERT_DATA";
/// GCS service-account JSON; its file path is exported as `GOOGLE_APPLICATION_CREDENTIALS`.
pub const GOOGLE_SERVICE_ACCOUNT_JSON_KEY: &str = "GOOGLE_SERVICE_ACCOUNT_JSON_KEY";
/// REST server user name (URL userinfo).
pub const REST_SERVER_USERNAME: &str = "REST_SERVER_USERNAME";
/// REST server password (URL userinfo).
pub const REST_SERVER_PASSWORD: &str = "REST_SERVER_PASSWORD";

const S3_KEYS: &[&str] = &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];
/// `GOOGLE_ACCESS_TOKEN` (a bearer token instead of a service account) and
/// `STORAGE_EMULATOR_HOST` (a GCS-compatible endpoint) are read by restic and Google's client.
const GCS_KEYS: &[&str] = &[
    "GOOGLE_PROJECT_ID",
    "GOOGLE_ACCESS_TOKEN",
    "STORAGE_EMULATOR_HOST",
];
/// `AZURE_ENDPOINT_SUFFIX`: restic reaches `https://<account>.blob.<suffix>` (default
/// `core.windows.net`; sovereign clouds and emulators set it, a port may follow).
const AZURE_KEYS: &[&str] = &[
    "AZURE_ACCOUNT_NAME",
    "AZURE_ACCOUNT_KEY",
    "AZURE_ACCOUNT_SAS",
    "AZURE_ENDPOINT_SUFFIX",
];
const B2_KEYS: &[&str] = &["B2_ACCOUNT_ID", "B2_ACCOUNT_KEY"];
const SWIFT_KEYS: &[&str] = &[
    // v1
    "ST_AUTH",
    "ST_USER",
    "ST_KEY",
    // v2
    "OS_AUTH_URL",
    "OS_REGION_NAME",
    "OS_USERNAME",
    "OS_USER_ID",
    "OS_PASSWORD",
    "OS_TENANT_ID",
    "OS_TENANT_NAME",
    // v3
    "OS_USER_DOMAIN_NAME",
    "OS_USER_DOMAIN_ID",
    "OS_PROJECT_NAME",
    "OS_PROJECT_DOMAIN_NAME",
    "OS_PROJECT_DOMAIN_ID",
    "OS_TRUST_ID",
    // application credentials
    "OS_APPLICATION_CREDENTIAL_ID",
    "OS_APPLICATION_CREDENTIAL_NAME",
    "OS_APPLICATION_CREDENTIAL_SECRET",
    // token
    "OS_STORAGE_URL",
    "OS_AUTH_TOKEN",
];
const REST_KEYS: &[&str] = &[REST_SERVER_USERNAME, REST_SERVER_PASSWORD];

/// Keys whose values are scrubbed from messages (identifiers such as regions or URLs are not).
const SECRET_KEYS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AZURE_ACCOUNT_KEY",
    "AZURE_ACCOUNT_SAS",
    "GOOGLE_ACCESS_TOKEN",
    "B2_ACCOUNT_ID",
    "B2_ACCOUNT_KEY",
    "ST_KEY",
    "OS_PASSWORD",
    "OS_APPLICATION_CREDENTIAL_SECRET",
    "OS_AUTH_TOKEN",
    REST_SERVER_PASSWORD,
];

fn provider_keys(location: &Location) -> &'static [&'static str] {
    match location {
        Location::Local { .. } => &[],
        Location::S3 { .. } => S3_KEYS,
        Location::Gcs { .. } => GCS_KEYS,
        Location::Azure { .. } => AZURE_KEYS,
        Location::Swift { .. } => SWIFT_KEYS,
        Location::B2 { .. } => B2_KEYS,
        Location::Rest { .. } => &[],
    }
}

fn all_value_keys() -> impl Iterator<Item = &'static str> {
    [
        S3_KEYS, GCS_KEYS, AZURE_KEYS, B2_KEYS, SWIFT_KEYS, REST_KEYS,
    ]
    .into_iter()
    .flatten()
    .copied()
}

/// The credentials of one repository. Cheap to clone; files written by
/// [`Credentials::from_map`] live in a private temporary directory that is removed when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Credentials {
    password: String,
    /// A file restic reads the same password from (`RESTIC_PASSWORD_FILE`), when restic's
    /// whitespace trimming of password files would not change the password.
    password_file: Option<PathBuf>,
    values: BTreeMap<&'static str, String>,
    google_credentials_file: Option<PathBuf>,
    ca_cert_file: Option<PathBuf>,
    _dir: Option<Arc<tempfile::TempDir>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("password", &"<redacted>")
            .field("password_file", &self.password_file)
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .field("google_credentials_file", &self.google_credentials_file)
            .field("ca_cert_file", &self.ca_cert_file)
            .finish()
    }
}

/// Does restic read exactly `password` from a file containing `raw`? (It trims whitespace
/// and a UTF-8 BOM; the upstream operator passed the raw bytes through `RESTIC_PASSWORD`.)
fn file_is_exact(raw: &[u8], password: &str) -> bool {
    raw == password.as_bytes() && password.trim() == password && !password.starts_with('\u{feff}')
}

fn utf8(key: &str, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| Error::InvalidKey {
        key: key.into(),
        reason: "value is not UTF-8".into(),
    })
}

impl Credentials {
    /// Read the storage Secret mounted as files in `dir` (one file per key; unknown keys are
    /// ignored). `RESTIC_PASSWORD` is required.
    pub fn from_secret_dir(dir: &Path) -> Result<Self> {
        let read = |key: &str| -> Result<Option<Vec<u8>>> {
            let path = dir.join(key);
            match std::fs::read(&path) {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
            }
        };
        let raw = read(RESTIC_PASSWORD)?.ok_or(Error::MissingKey {
            key: RESTIC_PASSWORD,
        })?;
        let password = utf8(RESTIC_PASSWORD, raw.clone())?;
        if password.is_empty() {
            return Err(Error::MissingKey {
                key: RESTIC_PASSWORD,
            });
        }
        let password_file = file_is_exact(&raw, &password).then(|| dir.join(RESTIC_PASSWORD));
        let mut values = BTreeMap::new();
        for key in all_value_keys() {
            if let Some(v) = read(key)? {
                values.insert(key, utf8(key, v)?);
            }
        }
        let exists = |key: &str| dir.join(key).exists().then(|| dir.join(key));
        Ok(Self {
            password,
            password_file,
            values,
            google_credentials_file: exists(GOOGLE_SERVICE_ACCOUNT_JSON_KEY),
            ca_cert_file: exists(CA_CERT_DATA),
            _dir: None,
        })
    }

    /// Build from a Secret's `data` (as the operator reads it through the API). The password
    /// file, the CA bundle and the GCS key file are written into a private (0700) temporary
    /// directory under `std::env::temp_dir()`.
    pub fn from_map(data: BTreeMap<String, Vec<u8>>) -> Result<Self> {
        Self::from_map_in(data, &std::env::temp_dir())
    }

    /// [`Credentials::from_map`] with the temporary directory created under `parent`.
    pub fn from_map_in(mut data: BTreeMap<String, Vec<u8>>, parent: &Path) -> Result<Self> {
        let raw = data.remove(RESTIC_PASSWORD).ok_or(Error::MissingKey {
            key: RESTIC_PASSWORD,
        })?;
        let password = utf8(RESTIC_PASSWORD, raw.clone())?;
        if password.is_empty() {
            return Err(Error::MissingKey {
                key: RESTIC_PASSWORD,
            });
        }
        // Created with mode 0700 (not left to the umask); files are created 0600.
        let dir = tempfile::Builder::new()
            .prefix("stash-restic-secret-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(|e| {
                Error::io(
                    format!("create a private directory in {}", parent.display()),
                    e,
                )
            })?;
        let write = |key: &str, bytes: &[u8]| -> Result<PathBuf> {
            use std::io::Write;
            let path = dir.path().join(key);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_0600()
                .open(&path)
                .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
            f.write_all(bytes)
                .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
            Ok(path)
        };
        let password_file = if file_is_exact(&raw, &password) {
            Some(write(RESTIC_PASSWORD, &raw)?)
        } else {
            None
        };
        let mut values = BTreeMap::new();
        for key in all_value_keys() {
            if let Some(v) = data.remove(key) {
                values.insert(key, utf8(key, v)?);
            }
        }
        let google_credentials_file = data
            .get(GOOGLE_SERVICE_ACCOUNT_JSON_KEY)
            .map(|v| write(GOOGLE_SERVICE_ACCOUNT_JSON_KEY, v))
            .transpose()?;
        let ca_cert_file = data
            .get(CA_CERT_DATA)
            .map(|v| write(CA_CERT_DATA, v))
            .transpose()?;
        Ok(Self {
            password,
            password_file,
            values,
            google_credentials_file,
            ca_cert_file,
            _dir: Some(Arc::new(dir)),
        })
    }

    /// A value of the Secret by key (provider keys only; not the password).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The `--cacert` file, when the Secret has `CA_CERT_DATA`.
    pub fn ca_cert_file(&self) -> Option<&Path> {
        self.ca_cert_file.as_deref()
    }

    /// The file restic reads the password from, when it is used instead of the environment.
    pub fn password_file(&self) -> Option<&Path> {
        self.password_file.as_deref()
    }

    /// The REST server user name and password, for the URL userinfo.
    pub fn rest_userinfo(&self) -> (Option<&str>, Option<&str>) {
        (
            self.get(REST_SERVER_USERNAME),
            self.get(REST_SERVER_PASSWORD),
        )
    }

    /// The environment a restic child needs for `location`: the password (as
    /// `RESTIC_PASSWORD_FILE` when possible, else `RESTIC_PASSWORD`) and only that
    /// provider's keys.
    pub fn env_for(&self, location: &Location) -> Vec<(&'static str, OsString)> {
        let mut env = Vec::new();
        match &self.password_file {
            Some(f) => env.push(("RESTIC_PASSWORD_FILE", f.clone().into_os_string())),
            None => env.push((RESTIC_PASSWORD, OsString::from(&self.password))),
        }
        for key in provider_keys(location) {
            if let Some(v) = self.values.get(key) {
                env.push((*key, OsString::from(v)));
            }
        }
        if matches!(location, Location::Gcs { .. })
            && let Some(f) = &self.google_credentials_file
        {
            env.push(("GOOGLE_APPLICATION_CREDENTIALS", f.clone().into_os_string()));
        }
        env
    }

    /// The secret values to scrub from messages (password, keys, REST password).
    pub fn secrets(&self) -> Vec<String> {
        let mut out = vec![self.password.clone()];
        for key in SECRET_KEYS {
            if let Some(v) = self.values.get(key) {
                out.push(v.clone());
                // Also the percent-encoded form, as it appears in a REST URL.
                let enc =
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                        .to_string();
                if enc != *v {
                    out.push(enc);
                }
            }
        }
        out
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn env_map(c: &Credentials, l: &Location) -> BTreeMap<String, String> {
        c.env_for(l)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_string().unwrap()))
            .collect()
    }

    fn all_keys() -> Vec<(&'static str, &'static str)> {
        vec![
            ("RESTIC_PASSWORD", "pw-secret"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-value"),
            ("GOOGLE_PROJECT_ID", "proj-1"),
            (
                "GOOGLE_SERVICE_ACCOUNT_JSON_KEY",
                "{\"type\":\"service_account\"}",
            ),
            ("GOOGLE_ACCESS_TOKEN", "gcs-token-value"),
            ("STORAGE_EMULATOR_HOST", "https://198.18.0.2:4443"),
            ("AZURE_ACCOUNT_NAME", "azname"),
            ("AZURE_ENDPOINT_SUFFIX", "ns.svc.cluster.local:10000"),
            ("AZURE_ACCOUNT_KEY", "azure-key-value"),
            ("B2_ACCOUNT_ID", "b2id"),
            ("B2_ACCOUNT_KEY", "b2-key-value"),
            ("OS_AUTH_URL", "https://keystone:5000/v3"),
            ("OS_USERNAME", "swiftuser"),
            ("OS_PASSWORD", "swift-pw-value"),
            ("OS_PROJECT_NAME", "proj"),
            ("ST_KEY", "st-key-value"),
            ("REST_SERVER_USERNAME", "restuser"),
            ("REST_SERVER_PASSWORD", "rest/pw@value"),
            ("CA_CERT_DATA", "-----BEGIN CERTIFICATE-----"),
            ("UNRELATED_TOKEN", "must-not-leak"),
        ]
    }

    #[test]
    fn env_per_backend_only_has_that_providers_keys() {
        let c = Credentials::from_map(map(&all_keys())).unwrap();
        let s = String::new;
        let pwfile = c.password_file().unwrap().to_path_buf();
        assert_eq!(std::fs::read_to_string(&pwfile).unwrap(), "pw-secret");

        let local = env_map(&c, &Location::local("/r", ""));
        assert_eq!(local.keys().collect::<Vec<_>>(), ["RESTIC_PASSWORD_FILE"]);

        let s3 = env_map(
            &c,
            &Location::S3 {
                endpoint: s(),
                bucket: s(),
                prefix: s(),
                region: None,
            },
        );
        assert_eq!(s3["AWS_ACCESS_KEY_ID"], "AKIAEXAMPLE");
        assert_eq!(s3["AWS_SECRET_ACCESS_KEY"], "aws-secret-value");
        assert_eq!(s3.len(), 3);

        let gcs = env_map(
            &c,
            &Location::Gcs {
                bucket: s(),
                prefix: s(),
                max_connections: None,
            },
        );
        assert_eq!(gcs["GOOGLE_PROJECT_ID"], "proj-1");
        let keyfile = &gcs["GOOGLE_APPLICATION_CREDENTIALS"];
        assert_eq!(
            std::fs::read_to_string(keyfile).unwrap(),
            "{\"type\":\"service_account\"}"
        );
        assert_eq!(gcs["GOOGLE_ACCESS_TOKEN"], "gcs-token-value");
        assert_eq!(gcs["STORAGE_EMULATOR_HOST"], "https://198.18.0.2:4443");
        assert_eq!(gcs.len(), 5);

        let az = env_map(
            &c,
            &Location::Azure {
                container: s(),
                prefix: s(),
                max_connections: None,
            },
        );
        assert_eq!(
            (
                az["AZURE_ACCOUNT_NAME"].as_str(),
                az["AZURE_ACCOUNT_KEY"].as_str()
            ),
            ("azname", "azure-key-value")
        );
        assert_eq!(az["AZURE_ENDPOINT_SUFFIX"], "ns.svc.cluster.local:10000");
        assert_eq!(az.len(), 4);

        let b2 = env_map(
            &c,
            &Location::B2 {
                bucket: s(),
                prefix: s(),
                max_connections: None,
            },
        );
        assert_eq!(
            (b2["B2_ACCOUNT_ID"].as_str(), b2["B2_ACCOUNT_KEY"].as_str()),
            ("b2id", "b2-key-value")
        );
        assert_eq!(b2.len(), 3);

        let sw = env_map(
            &c,
            &Location::Swift {
                container: s(),
                prefix: s(),
            },
        );
        for (k, v) in [
            ("OS_AUTH_URL", "https://keystone:5000/v3"),
            ("OS_USERNAME", "swiftuser"),
            ("OS_PASSWORD", "swift-pw-value"),
            ("OS_PROJECT_NAME", "proj"),
            ("ST_KEY", "st-key-value"),
        ] {
            assert_eq!(sw[k], v, "{k}");
        }
        assert_eq!(sw.len(), 6);

        let rest = env_map(&c, &Location::Rest { url: s() });
        assert_eq!(
            rest.len(),
            1,
            "REST credentials go into the URL, not the environment"
        );
        assert_eq!(c.rest_userinfo(), (Some("restuser"), Some("rest/pw@value")));

        for env in [&local, &s3, &gcs, &az, &b2, &sw, &rest] {
            assert!(!env.values().any(|v| v == "must-not-leak"));
        }
        let ca = c.ca_cert_file().unwrap();
        assert_eq!(
            std::fs::read_to_string(ca).unwrap(),
            "-----BEGIN CERTIFICATE-----"
        );
    }

    #[test]
    fn private_dir_and_files() {
        use std::os::unix::fs::PermissionsExt;
        let c = Credentials::from_map(map(&all_keys())).unwrap();
        let f = c.password_file().unwrap();
        let dir_mode = std::fs::metadata(f.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        let file_mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!((dir_mode, file_mode), (0o700, 0o600));
        let dir = f.parent().unwrap().to_path_buf();
        let clone = c.clone();
        drop(c);
        assert!(dir.exists(), "a clone keeps the directory");
        drop(clone);
        assert!(!dir.exists(), "the last clone removes it");
    }

    #[test]
    fn missing_or_empty_password_is_typed() {
        let e = Credentials::from_map(map(&[("AWS_ACCESS_KEY_ID", "x")])).unwrap_err();
        assert!(
            matches!(
                e,
                Error::MissingKey {
                    key: "RESTIC_PASSWORD"
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "storage secret: key RESTIC_PASSWORD is missing or empty"
        );
        let e = Credentials::from_map(map(&[("RESTIC_PASSWORD", "")])).unwrap_err();
        assert!(matches!(
            e,
            Error::MissingKey {
                key: "RESTIC_PASSWORD"
            }
        ));
        let dir = tempfile::tempdir().unwrap();
        let e = Credentials::from_secret_dir(dir.path()).unwrap_err();
        assert!(matches!(
            e,
            Error::MissingKey {
                key: "RESTIC_PASSWORD"
            }
        ));
    }

    #[test]
    fn password_with_surrounding_whitespace_goes_through_env_exactly() {
        // restic trims password files; the upstream operator passed the bytes as they are.
        let c = Credentials::from_map(map(&[("RESTIC_PASSWORD", "pw\n")])).unwrap();
        assert!(c.password_file().is_none());
        let env = env_map(&c, &Location::local("/r", ""));
        assert_eq!(env["RESTIC_PASSWORD"], "pw\n");
    }

    #[test]
    fn from_secret_dir_reads_files_in_place() {
        let dir = tempfile::tempdir().unwrap();
        for (k, v) in all_keys() {
            std::fs::write(dir.path().join(k), v).unwrap();
        }
        let c = Credentials::from_secret_dir(dir.path()).unwrap();
        assert_eq!(
            c.password_file(),
            Some(dir.path().join("RESTIC_PASSWORD").as_path())
        );
        assert_eq!(
            c.ca_cert_file(),
            Some(dir.path().join("CA_CERT_DATA").as_path())
        );
        let gcs = env_map(
            &c,
            &Location::Gcs {
                bucket: String::new(),
                prefix: String::new(),
                max_connections: None,
            },
        );
        assert_eq!(
            gcs["GOOGLE_APPLICATION_CREDENTIALS"],
            dir.path()
                .join("GOOGLE_SERVICE_ACCOUNT_JSON_KEY")
                .display()
                .to_string()
        );
        assert_eq!(c.get("AWS_SECRET_ACCESS_KEY"), Some("aws-secret-value"));
        assert_eq!(c.get("UNRELATED_TOKEN"), None);
    }

    #[test]
    fn debug_never_prints_values() {
        let c = Credentials::from_map(map(&all_keys())).unwrap();
        let dbg = format!("{c:?} {c:#?}");
        for (k, v) in all_keys() {
            if k != "CA_CERT_DATA" && k != "GOOGLE_SERVICE_ACCOUNT_JSON_KEY" {
                assert!(!dbg.contains(v), "Debug leaks {k}: {dbg}");
            }
        }
        assert!(dbg.contains("AWS_SECRET_ACCESS_KEY") && dbg.contains("<redacted>"));
        let secrets = c.secrets();
        for v in [
            "pw-secret",
            "aws-secret-value",
            "azure-key-value",
            "b2-key-value",
            "swift-pw-value",
            "rest/pw@value",
        ] {
            assert!(secrets.iter().any(|s| s == v), "{v} is not scrubbed");
        }
        assert!(secrets.iter().any(|s| s == "rest%2Fpw%40value"));
    }
}
