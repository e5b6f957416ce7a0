//! Names and labels of the objects stash-rs derives from the user's objects.
use std::collections::BTreeMap;

use kube::ResourceExt;
use stash_crds::{BackupConfiguration, consts};

/// Labels of objects derived from a BackupConfiguration (§5.6).
pub fn offshoot_labels(bc: &BackupConfiguration, component: &str) -> BTreeMap<String, String> {
    let mut labels = bc.labels().clone();
    labels.insert(consts::COMPONENT_LABEL.into(), component.into());
    labels.insert(
        consts::MANAGED_BY_LABEL.into(),
        consts::MANAGED_BY_STASH.into(),
    );
    labels
}
