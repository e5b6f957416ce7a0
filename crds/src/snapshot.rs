//! Snapshot of repositories.stash.appscode.com/v1alpha1 (stash-api.md §8.1). Served by the
//! operator's aggregated API server; not a CRD.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// API version of [`Snapshot`].
pub const SNAPSHOT_API_VERSION: &str = "repositories.stash.appscode.com/v1alpha1";
/// Kind of [`Snapshot`].
pub const SNAPSHOT_KIND: &str = "Snapshot";
/// Resource (plural) of [`Snapshot`].
pub const SNAPSHOT_PLURAL: &str = "snapshots";

/// One restic snapshot of a Repository. Read-only (`get`, `list`, `delete`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Always `repositories.stash.appscode.com/v1alpha1`.
    pub api_version: String,
    /// Always `Snapshot`.
    pub kind: String,
    /// name `<repository>-<first 8 hex of the restic id>`, uid = full restic id,
    /// creationTimestamp = snapshot time, labels `{repository: <repo>}` ∪ Repository labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The snapshot.
    #[serde(default)]
    pub status: SnapshotStatus,
}

/// The restic snapshot data. Field names and non-omitempty-ness are upstream's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotStatus {
    /// Tree id.
    #[serde(default)]
    pub tree: String,
    /// Backed-up paths.
    #[serde(default)]
    pub paths: Vec<String>,
    /// restic host.
    #[serde(default)]
    pub hostname: String,
    /// User that ran the backup.
    #[serde(default)]
    pub username: String,
    /// Uid of that user.
    #[serde(default)]
    pub uid: i32,
    /// Gid of that user.
    #[serde(default)]
    pub gid: i32,
    /// Tags; the JSON key is capitalised (`Tags`) as upstream, omitted when empty.
    #[serde(rename = "Tags", default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl Snapshot {
    /// A Snapshot with `apiVersion`/`kind` set.
    pub fn new(metadata: ObjectMeta, status: SnapshotStatus) -> Self {
        Self {
            api_version: SNAPSHOT_API_VERSION.to_owned(),
            kind: SNAPSHOT_KIND.to_owned(),
            metadata,
            status,
        }
    }

    /// The Snapshot name of restic snapshot `id` in `repository`: `<repository>-<id[..8]>`.
    pub fn name_for(repository: &str, id: &str) -> String {
        format!("{repository}-{}", id.get(..8).unwrap_or(id))
    }
}

/// A Snapshot name that does not have the form `<repository>-<8 chars>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid snapshot name")]
pub struct InvalidSnapshotName(pub String);

/// Splits a Snapshot name into `(repository, short id)` (stash-api.md §8.1): at least 9
/// characters, the part after the last `-` exactly 8 characters, and a non-empty repository.
pub fn parse_snapshot_name(name: &str) -> Result<(&str, &str), InvalidSnapshotName> {
    let err = || InvalidSnapshotName(name.to_owned());
    if name.len() < 9 {
        return Err(err());
    }
    let (repo, id) = name.rsplit_once('-').ok_or_else(err)?;
    if id.len() != 8 || repo.is_empty() {
        return Err(err());
    }
    Ok((repo, id))
}

impl kube::Resource for Snapshot {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        SNAPSHOT_KIND.into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        crate::consts::SNAPSHOT_GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }

    fn api_version(_: &()) -> Cow<'_, str> {
        SNAPSHOT_API_VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        SNAPSHOT_PLURAL.into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            parse_snapshot_name("local-repo-d421fe22").unwrap(),
            ("local-repo", "d421fe22")
        );
        assert!(parse_snapshot_name("d421fe22").is_err());
        assert!(parse_snapshot_name("-d421fe22").is_err());
        assert!(parse_snapshot_name("repo-d421fe2").is_err());
        assert!(parse_snapshot_name("repod421fe22x").is_err());
        assert_eq!(
            Snapshot::name_for("local-repo", "d421fe22de0905"),
            "local-repo-d421fe22"
        );
    }

    #[test]
    fn tags_key_is_capitalised() {
        let s = Snapshot::new(
            ObjectMeta::default(),
            SnapshotStatus {
                tags: vec!["t".into()],
                ..Default::default()
            },
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["status"]["Tags"][0], "t");
        assert_eq!(v["status"]["username"], "");
        assert_eq!(v["apiVersion"], SNAPSHOT_API_VERSION);
    }
}
