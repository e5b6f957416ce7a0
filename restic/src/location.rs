//! Where a repository lives (stash-api.md §2.1) and the restic repository string for it
//! (§9.1). Pure: no I/O, no secrets.
use std::path::PathBuf;

/// A repository backend, one per provider of the Stash `backend` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory (`<mountPath>/<subPath>` of a mounted volume).
    Local {
        /// The repository directory.
        path: PathBuf,
    },
    /// S3 or an S3-compatible server (Minio, moto, …).
    S3 {
        /// Host (`s3.amazonaws.com`; restic then uses https) or URL with scheme
        /// (`http://minio:9000`); kept as given.
        endpoint: String,
        /// Bucket.
        bucket: String,
        /// Path prefix inside the bucket (may be empty).
        prefix: String,
        /// The bucket's region (`--option s3.region=…`); `None`: restic asks the endpoint.
        region: Option<String>,
    },
    /// Google Cloud Storage.
    Gcs {
        /// Bucket.
        bucket: String,
        /// Path prefix.
        prefix: String,
        /// `--option gs.connections=N` when > 0.
        max_connections: Option<u32>,
    },
    /// Azure Blob Storage.
    Azure {
        /// Container.
        container: String,
        /// Path prefix.
        prefix: String,
        /// `--option azure.connections=N` when > 0.
        max_connections: Option<u32>,
    },
    /// OpenStack Swift.
    Swift {
        /// Container.
        container: String,
        /// Path prefix.
        prefix: String,
    },
    /// Backblaze B2.
    B2 {
        /// Bucket.
        bucket: String,
        /// Path prefix.
        prefix: String,
        /// `--option b2.connections=N` when > 0.
        max_connections: Option<u32>,
    },
    /// A restic REST server; `REST_SERVER_USERNAME`/`_PASSWORD` become URL userinfo.
    Rest {
        /// `http(s)://host:port/path`.
        url: String,
    },
}

impl Location {
    /// A local location at `<mount_path>/<sub_path>` (`sub_path` may be empty).
    pub fn local(mount_path: impl Into<PathBuf>, sub_path: &str) -> Self {
        let mut path: PathBuf = mount_path.into();
        let sub = sub_path.trim_start_matches('/');
        if !sub.is_empty() {
            path.push(sub);
        }
        Location::Local { path }
    }

    /// The provider identifier Stash uses (`local`, `s3`, `gcs`, `azure`, `swift`, `b2`, `rest`).
    pub fn provider(&self) -> &'static str {
        match self {
            Location::Local { .. } => "local",
            Location::S3 { .. } => "s3",
            Location::Gcs { .. } => "gcs",
            Location::Azure { .. } => "azure",
            Location::Swift { .. } => "swift",
            Location::B2 { .. } => "b2",
            Location::Rest { .. } => "rest",
        }
    }

    /// The `RESTIC_REPOSITORY` value, without credentials (see
    /// [`Location::repository_url_with_userinfo`] for the REST server).
    pub fn repository_url(&self) -> String {
        match self {
            Location::Local { path } => path.display().to_string(),
            Location::S3 {
                endpoint,
                bucket,
                prefix,
                ..
            } => {
                format!(
                    "s3:{}/{}",
                    endpoint.trim_end_matches('/'),
                    join_clean(&[bucket, prefix])
                )
            }
            Location::Gcs { bucket, prefix, .. } => {
                format!("gs:{bucket}:/{}", join_clean(&[prefix]))
            }
            Location::Azure {
                container, prefix, ..
            } => format!("azure:{container}:/{}", join_clean(&[prefix])),
            Location::Swift { container, prefix } => {
                format!("swift:{container}:/{}", join_clean(&[prefix]))
            }
            Location::B2 { bucket, prefix, .. } => {
                format!("b2:{bucket}:/{}", join_clean(&[prefix]))
            }
            Location::Rest { url } => format!("rest:{url}"),
        }
    }

    /// Like [`Location::repository_url`], with `user:password@` injected into a REST URL
    /// (percent-encoded; any userinfo already in the URL is replaced). Other backends ignore
    /// the credentials. The result contains a secret: never log it.
    pub fn repository_url_with_userinfo(
        &self,
        username: Option<&str>,
        password: Option<&str>,
    ) -> String {
        match self {
            Location::Rest { url } if username.is_some() || password.is_some() => {
                format!(
                    "rest:{}",
                    inject_userinfo(url, username.unwrap_or(""), password)
                )
            }
            _ => self.repository_url(),
        }
    }

    /// The `--option` values this location needs (`gs.connections=N`, …).
    pub fn extended_options(&self) -> Vec<String> {
        let (key, n) = match self {
            Location::S3 {
                region: Some(r), ..
            } if !r.is_empty() => return vec![format!("s3.region={r}")],
            Location::Gcs {
                max_connections, ..
            } => ("gs", max_connections),
            Location::Azure {
                max_connections, ..
            } => ("azure", max_connections),
            Location::B2 {
                max_connections, ..
            } => ("b2", max_connections),
            _ => return Vec::new(),
        };
        match n {
            Some(n) if *n > 0 => vec![format!("{key}.connections={n}")],
            _ => Vec::new(),
        }
    }
}

/// `filepath.Join` of the non-empty parts, without leading/trailing or doubled slashes.
/// Go's `path.Clean`, which restic 0.19.1 applies to a repository's prefix: `.` and empty
/// components dropped, `..` removing the component before it (kept at the start of a relative
/// path, dropped at the root), `.` for an empty result.
pub fn go_path_clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    // Leading `..` of a relative path: nothing before them to remove.
    let mut fixed = 0;
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." if out.len() > fixed => {
                out.pop();
            }
            ".." if !rooted => {
                out.push("..");
                fixed = out.len();
            }
            ".." => {}
            c => out.push(c),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

/// The key prefix under which restic keeps the repository of a Repository whose `prefix` is
/// `prefix`, exactly as restic computes it from the `RESTIC_REPOSITORY` stash-rs gives it
/// ([`Location::repository_url`]): for S3 (`s3:<endpoint>/<bucket>/<prefix>`) `path.Clean` of
/// the prefix; for GCS, Azure, Swift and B2 (`<scheme>:<bucket>:/<prefix>`) `path.Clean` of
/// the rooted prefix without its `/`. restic then joins object names with `path.Join`, so a
/// prefix that cleans to `.` is the bucket's root (`""` here). The wipe-out deletes under
/// exactly this prefix.
pub fn object_prefix(s3: bool, prefix: &str) -> String {
    let joined = join_clean(&[&prefix.to_string()]);
    let cleaned = if s3 {
        if joined.is_empty() {
            String::new()
        } else {
            go_path_clean(&joined)
        }
    } else {
        go_path_clean(&format!("/{joined}"))
            .trim_start_matches('/')
            .to_string()
    };
    if cleaned == "." {
        String::new()
    } else {
        cleaned
    }
}

fn join_clean(parts: &[&String]) -> String {
    parts
        .iter()
        .flat_map(|p| p.split('/'))
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn inject_userinfo(url: &str, username: &str, password: Option<&str>) -> String {
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, USERINFO).to_string();
    let userinfo = match password {
        Some(p) => format!("{}:{}", enc(username), enc(p)),
        None => enc(username),
    };
    let Some(i) = url.find("://") else {
        // No scheme: restic would reject it anyway; keep the shape recognisable.
        return format!("{userinfo}@{url}");
    };
    let (scheme, rest) = url.split_at(i + 3);
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}{userinfo}@{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_for_every_backend() {
        let s = |x: &str| x.to_string();
        assert_eq!(
            Location::local("/safe/data", "demo/deployment").repository_url(),
            "/safe/data/demo/deployment"
        );
        assert_eq!(
            Location::local("/safe/data", "").repository_url(),
            "/safe/data"
        );
        assert_eq!(
            Location::S3 {
                endpoint: s("s3.amazonaws.com"),
                bucket: s("stash-qa"),
                prefix: s("demo"),
                region: None
            }
            .repository_url(),
            "s3:s3.amazonaws.com/stash-qa/demo"
        );
        assert_eq!(
            Location::S3 {
                endpoint: s("http://127.0.0.1:9000/"),
                bucket: s("b"),
                prefix: s("/a//b/"),
                region: None
            }
            .repository_url(),
            "s3:http://127.0.0.1:9000/b/a/b"
        );
        assert_eq!(
            Location::S3 {
                endpoint: s("minio:9000"),
                bucket: s("b"),
                prefix: s(""),
                region: None
            }
            .repository_url(),
            "s3:minio:9000/b"
        );
        assert_eq!(
            Location::Gcs {
                bucket: s("bk"),
                prefix: s("p/q"),
                max_connections: None
            }
            .repository_url(),
            "gs:bk:/p/q"
        );
        assert_eq!(
            Location::Azure {
                container: s("c"),
                prefix: s("/p"),
                max_connections: Some(3)
            }
            .repository_url(),
            "azure:c:/p"
        );
        assert_eq!(
            Location::Swift {
                container: s("c"),
                prefix: s("p")
            }
            .repository_url(),
            "swift:c:/p"
        );
        assert_eq!(
            Location::B2 {
                bucket: s("b"),
                prefix: s(""),
                max_connections: None
            }
            .repository_url(),
            "b2:b:/"
        );
        assert_eq!(
            Location::Rest {
                url: s("http://h:8000/r")
            }
            .repository_url(),
            "rest:http://h:8000/r"
        );
    }

    #[test]
    fn rest_userinfo_is_injected_and_encoded() {
        let l = Location::Rest {
            url: "https://old:x@rest.example:8000/repo/a".into(),
        };
        assert_eq!(
            l.repository_url_with_userinfo(Some("al ice"), Some("p@ss:w/rd")),
            "rest:https://al%20ice:p%40ss%3Aw%2Frd@rest.example:8000/repo/a"
        );
        let l = Location::Rest {
            url: "http://h:1".into(),
        };
        assert_eq!(
            l.repository_url_with_userinfo(Some("u"), None),
            "rest:http://u@h:1"
        );
        assert_eq!(
            l.repository_url_with_userinfo(None, None),
            "rest:http://h:1"
        );
        // Other backends ignore REST credentials.
        let l = Location::Swift {
            container: "c".into(),
            prefix: "p".into(),
        };
        assert_eq!(
            l.repository_url_with_userinfo(Some("u"), Some("p")),
            "swift:c:/p"
        );
    }

    #[test]
    fn max_connections_become_options() {
        let s = String::new;
        assert_eq!(
            Location::Gcs {
                bucket: s(),
                prefix: s(),
                max_connections: Some(4)
            }
            .extended_options(),
            ["gs.connections=4"]
        );
        assert_eq!(
            Location::Azure {
                container: s(),
                prefix: s(),
                max_connections: Some(2)
            }
            .extended_options(),
            ["azure.connections=2"]
        );
        assert_eq!(
            Location::B2 {
                bucket: s(),
                prefix: s(),
                max_connections: Some(9)
            }
            .extended_options(),
            ["b2.connections=9"]
        );
        // An S3 bucket's region (later Stash's `s3.region`).
        assert_eq!(
            Location::S3 {
                endpoint: s(),
                bucket: s(),
                prefix: s(),
                region: Some("us-west-1".into())
            }
            .extended_options(),
            ["s3.region=us-west-1"]
        );
        assert!(
            Location::B2 {
                bucket: s(),
                prefix: s(),
                max_connections: Some(0)
            }
            .extended_options()
            .is_empty()
        );
        assert!(
            Location::Gcs {
                bucket: s(),
                prefix: s(),
                max_connections: None
            }
            .extended_options()
            .is_empty()
        );
        assert!(Location::local("/x", "").extended_options().is_empty());
    }

    /// Go's own `path.Clean` table (src/path/path_test.go), as restic applies it.
    #[test]
    fn go_path_clean_matches_go() {
        for (input, want) in [
            ("", "."),
            ("abc", "abc"),
            ("abc/def", "abc/def"),
            ("a/b/c", "a/b/c"),
            (".", "."),
            ("..", ".."),
            ("../..", "../.."),
            ("../../abc", "../../abc"),
            ("/abc", "/abc"),
            ("/", "/"),
            ("abc/", "abc"),
            ("abc/def/", "abc/def"),
            ("a/b/c/", "a/b/c"),
            ("./", "."),
            ("../", ".."),
            ("../../", "../.."),
            ("/abc/", "/abc"),
            ("abc//def//ghi", "abc/def/ghi"),
            ("//abc", "/abc"),
            ("///abc", "/abc"),
            ("//abc//", "/abc"),
            ("abc//", "abc"),
            ("abc/./def", "abc/def"),
            ("/./abc/def", "/abc/def"),
            ("abc/.", "abc"),
            ("abc/def/ghi/../jkl", "abc/def/jkl"),
            ("abc/def/../ghi/../jkl", "abc/jkl"),
            ("abc/def/..", "abc"),
            ("abc/def/../..", "."),
            ("/abc/def/../..", "/"),
            ("abc/def/../../..", ".."),
            ("/abc/def/../../..", "/"),
            ("abc/def/../../../ghi/jkl/../../../mno", "../../mno"),
            ("abc/./../def", "def"),
            ("abc//./../def", "def"),
            ("abc/../../././../def", "../../def"),
        ] {
            assert_eq!(go_path_clean(input), want, "{input:?}");
        }
    }

    #[test]
    fn object_prefixes_are_restics() {
        assert_eq!(object_prefix(true, "./app"), "app");
        assert_eq!(object_prefix(true, "a/../b"), "b");
        assert_eq!(object_prefix(true, "team~1/app"), "team~1/app");
        assert_eq!(object_prefix(true, "/demo//x/"), "demo/x");
        assert_eq!(object_prefix(true, "a/.."), "");
        assert_eq!(object_prefix(true, "../x"), "../x", "S3 keeps a leading ..");
        assert_eq!(object_prefix(true, ""), "");
        assert_eq!(
            object_prefix(false, "../x"),
            "x",
            "a rooted prefix drops it"
        );
        assert_eq!(object_prefix(false, "./app/"), "app");
        assert_eq!(object_prefix(false, "a/../b"), "b");
        assert_eq!(object_prefix(false, ""), "");
    }
}
