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
