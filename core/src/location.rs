//! Where a Repository's restic repository is (stash-api.md §9.1), as restic names it.
use stash_crds::{Repository, backend::BackendKind};
use stash_restic as restic;

/// The restic location of a Repository's backend.
pub fn location(repo: &Repository) -> Result<restic::Location, String> {
    let kind = repo.spec.backend.validate().map_err(|e| e.to_string())?;
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    Ok(match kind {
        BackendKind::Local(l) => {
            restic::Location::local(s(&l.mount_path), l.sub_path.as_deref().unwrap_or_default())
        }
        BackendKind::S3(b) => restic::Location::S3 {
            endpoint: s(&b.endpoint),
            bucket: s(&b.bucket),
            prefix: s(&b.prefix),
            region: b.region.clone().filter(|r| !r.is_empty()),
        },
        BackendKind::Gcs(b) => restic::Location::Gcs {
            bucket: s(&b.bucket),
            prefix: s(&b.prefix),
            max_connections: connections(b.max_connections),
        },
        BackendKind::Azure(b) => restic::Location::Azure {
            container: s(&b.container),
            prefix: s(&b.prefix),
            max_connections: connections(b.max_connections),
        },
        BackendKind::Swift(b) => restic::Location::Swift {
            container: s(&b.container),
            prefix: s(&b.prefix),
        },
        BackendKind::B2(b) => restic::Location::B2 {
            bucket: s(&b.bucket),
            prefix: s(&b.prefix),
            max_connections: connections(b.max_connections),
        },
        BackendKind::Rest(b) => restic::Location::Rest { url: s(&b.url) },
    })
}

fn connections(n: Option<i32>) -> Option<u32> {
    n.and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0)
}

/// Where the operator finds `repo`'s restic repository: `Ok(None)` for a local backend it
/// cannot read (any volume but `hostPath`).
pub fn operator_location(repo: &Repository) -> Result<Option<restic::Location>, String> {
    let kind = repo.spec.backend.validate().map_err(|e| e.to_string())?;
    if let BackendKind::Local(l) = kind {
        return Ok(l.volume_source.host_path.as_ref().map(|hp| {
            restic::Location::local(hp.path.clone(), l.sub_path.as_deref().unwrap_or_default())
        }));
    }
    location(repo).map(Some)
}

/// The storage `repo` (in namespace `ns`) names, the same for every Repository object that
/// names it: the first-backup claim is keyed by it, so two Repository objects on one bucket
/// and prefix (a template's prefix without `${TARGET_NAMESPACE}`) or one volume directory never
/// `restic init` together. Remote backends: provider, endpoint, bucket and prefix (slashes
/// trimmed); local ones: the volume (a hostPath's path, a namespace's claim, an NFS export;
/// any other volume kind is this object's own) and the sub-path. `None` for an invalid backend.
pub fn backend_key(repo: &Repository, ns: &str) -> Option<String> {
    let kind = repo.spec.backend.validate().ok()?;
    let s = |o: &Option<String>| {
        o.as_deref()
            .unwrap_or_default()
            .trim_matches('/')
            .to_string()
    };
    Some(match kind {
        BackendKind::Local(l) => {
            let v = &l.volume_source;
            let volume = if let Some(h) = &v.host_path {
                format!("hostPath:{}", h.path.trim_end_matches('/'))
            } else if let Some(c) = &v.persistent_volume_claim {
                format!("pvc:{ns}/{}", c.claim_name)
            } else if let Some(n) = &v.nfs {
                format!("nfs:{}:{}", n.server, n.path.trim_end_matches('/'))
            } else {
                use kube::ResourceExt;
                format!("volume:{ns}/{}", repo.name_any())
            };
            format!("local:{volume}/{}", s(&l.sub_path))
        }
        BackendKind::S3(b) => format!(
            "s3:{}/{}/{}",
            s(&b.endpoint)
                .trim_start_matches("https://")
                .trim_start_matches("http://"),
            s(&b.bucket),
            s(&b.prefix)
        ),
        BackendKind::Gcs(b) => format!("gs:{}/{}", s(&b.bucket), s(&b.prefix)),
        BackendKind::Azure(b) => format!("azure:{}/{}", s(&b.container), s(&b.prefix)),
        BackendKind::Swift(b) => format!("swift:{}/{}", s(&b.container), s(&b.prefix)),
        BackendKind::B2(b) => format!("b2:{}/{}", s(&b.bucket), s(&b.prefix)),
        BackendKind::Rest(b) => format!("rest:{}", s(&b.url)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str, backend: serde_json::Value) -> Repository {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
            "metadata": {"name": name}, "spec": {"backend": backend}
        }))
        .expect("repository")
    }

    #[test]
    fn two_repository_objects_on_one_location_share_a_key_and_others_do_not() {
        let s3 = |name, prefix: &str| {
            repo(
                name,
                serde_json::json!({"storageSecretName": "s",
                "s3": {"endpoint": "http://minio:9000", "bucket": "b", "prefix": prefix}}),
            )
        };
        assert_eq!(
            backend_key(&s3("a", "team/x"), "n1"),
            backend_key(&s3("b", "/team/x/"), "n2")
        );
        assert_ne!(
            backend_key(&s3("a", "team/x"), "n1"),
            backend_key(&s3("a", "team/y"), "n1")
        );
        let host = |name, sub: &str| {
            repo(
                name,
                serde_json::json!({"storageSecretName": "s",
                "local": {"mountPath": "/safe/data", "hostPath": {"path": "/data/repos/"}, "subPath": sub}}),
            )
        };
        assert_eq!(
            backend_key(&host("a", "x"), "n1"),
            backend_key(&host("b", "x"), "n2")
        );
        assert_ne!(
            backend_key(&host("a", "x"), "n1"),
            backend_key(&host("a", "y"), "n1")
        );
        // A claim is its namespace's: the same claim name elsewhere is another volume.
        let claim = |name| {
            repo(
                name,
                serde_json::json!({"storageSecretName": "s",
                "local": {"mountPath": "/safe/data", "persistentVolumeClaim": {"claimName": "c"}}}),
            )
        };
        assert_eq!(
            backend_key(&claim("a"), "n1"),
            backend_key(&claim("b"), "n1")
        );
        assert_ne!(
            backend_key(&claim("a"), "n1"),
            backend_key(&claim("a"), "n2")
        );
        let empty = |name| {
            repo(
                name,
                serde_json::json!({"storageSecretName": "s",
                "local": {"mountPath": "/safe/data", "emptyDir": {}}}),
            )
        };
        assert_ne!(
            backend_key(&empty("a"), "n1"),
            backend_key(&empty("b"), "n1")
        );
    }
}
