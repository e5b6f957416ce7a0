//! A core `VolumeSource` (the inlined part of a core `Volume`), used by the local backend.

use k8s_openapi::api::core::v1 as core;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every volume source of a core `Volume` (k8s-openapi has no separate `VolumeSource` type);
/// at most one should be set. Field names are exactly the core ones.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeSource {
    /// Core `awsElasticBlockStore` volume source.
    #[serde(
        rename = "awsElasticBlockStore",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub aws_elastic_block_store: Option<core::AWSElasticBlockStoreVolumeSource>,
    /// Core `azureDisk` volume source.
    #[serde(rename = "azureDisk", default, skip_serializing_if = "Option::is_none")]
    pub azure_disk: Option<core::AzureDiskVolumeSource>,
    /// Core `azureFile` volume source.
    #[serde(rename = "azureFile", default, skip_serializing_if = "Option::is_none")]
    pub azure_file: Option<core::AzureFileVolumeSource>,
    /// Core `cephfs` volume source.
    #[serde(rename = "cephfs", default, skip_serializing_if = "Option::is_none")]
    pub cephfs: Option<core::CephFSVolumeSource>,
    /// Core `cinder` volume source.
    #[serde(rename = "cinder", default, skip_serializing_if = "Option::is_none")]
    pub cinder: Option<core::CinderVolumeSource>,
    /// Core `configMap` volume source.
    #[serde(rename = "configMap", default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<core::ConfigMapVolumeSource>,
    /// Core `csi` volume source.
    #[serde(rename = "csi", default, skip_serializing_if = "Option::is_none")]
    pub csi: Option<core::CSIVolumeSource>,
    /// Core `downwardAPI` volume source.
    #[serde(
        rename = "downwardAPI",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub downward_api: Option<core::DownwardAPIVolumeSource>,
    /// Core `emptyDir` volume source.
    #[serde(rename = "emptyDir", default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<core::EmptyDirVolumeSource>,
    /// Core `ephemeral` volume source.
    #[serde(rename = "ephemeral", default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<core::EphemeralVolumeSource>,
    /// Core `fc` volume source.
    #[serde(rename = "fc", default, skip_serializing_if = "Option::is_none")]
    pub fc: Option<core::FCVolumeSource>,
    /// Core `flexVolume` volume source.
    #[serde(
        rename = "flexVolume",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub flex_volume: Option<core::FlexVolumeSource>,
    /// Core `flocker` volume source.
    #[serde(rename = "flocker", default, skip_serializing_if = "Option::is_none")]
    pub flocker: Option<core::FlockerVolumeSource>,
    /// Core `gcePersistentDisk` volume source.
    #[serde(
        rename = "gcePersistentDisk",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub gce_persistent_disk: Option<core::GCEPersistentDiskVolumeSource>,
    /// Core `gitRepo` volume source.
    #[serde(rename = "gitRepo", default, skip_serializing_if = "Option::is_none")]
    pub git_repo: Option<core::GitRepoVolumeSource>,
    /// Core `glusterfs` volume source.
    #[serde(rename = "glusterfs", default, skip_serializing_if = "Option::is_none")]
    pub glusterfs: Option<core::GlusterfsVolumeSource>,
    /// Core `hostPath` volume source.
    #[serde(rename = "hostPath", default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<core::HostPathVolumeSource>,
    /// Core `image` volume source.
    #[serde(rename = "image", default, skip_serializing_if = "Option::is_none")]
    pub image: Option<core::ImageVolumeSource>,
    /// Core `iscsi` volume source.
    #[serde(rename = "iscsi", default, skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<core::ISCSIVolumeSource>,
    /// Core `nfs` volume source.
    #[serde(rename = "nfs", default, skip_serializing_if = "Option::is_none")]
    pub nfs: Option<core::NFSVolumeSource>,
    /// Core `persistentVolumeClaim` volume source.
    #[serde(
        rename = "persistentVolumeClaim",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub persistent_volume_claim: Option<core::PersistentVolumeClaimVolumeSource>,
    /// Core `photonPersistentDisk` volume source.
    #[serde(
        rename = "photonPersistentDisk",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub photon_persistent_disk: Option<core::PhotonPersistentDiskVolumeSource>,
    /// Core `portworxVolume` volume source.
    #[serde(
        rename = "portworxVolume",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub portworx_volume: Option<core::PortworxVolumeSource>,
    /// Core `projected` volume source.
    #[serde(rename = "projected", default, skip_serializing_if = "Option::is_none")]
    pub projected: Option<core::ProjectedVolumeSource>,
    /// Core `quobyte` volume source.
    #[serde(rename = "quobyte", default, skip_serializing_if = "Option::is_none")]
    pub quobyte: Option<core::QuobyteVolumeSource>,
    /// Core `rbd` volume source.
    #[serde(rename = "rbd", default, skip_serializing_if = "Option::is_none")]
    pub rbd: Option<core::RBDVolumeSource>,
    /// Core `scaleIO` volume source.
    #[serde(rename = "scaleIO", default, skip_serializing_if = "Option::is_none")]
    pub scale_io: Option<core::ScaleIOVolumeSource>,
    /// Core `secret` volume source.
    #[serde(rename = "secret", default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<core::SecretVolumeSource>,
    /// Core `storageos` volume source.
    #[serde(rename = "storageos", default, skip_serializing_if = "Option::is_none")]
    pub storageos: Option<core::StorageOSVolumeSource>,
    /// Core `vsphereVolume` volume source.
    #[serde(
        rename = "vsphereVolume",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub vsphere_volume: Option<core::VsphereVirtualDiskVolumeSource>,
}

impl VolumeSource {
    /// A core `Volume` named `name` with this source.
    pub fn to_volume(&self, name: impl Into<String>) -> core::Volume {
        let v = self.clone();
        core::Volume {
            name: name.into(),
            aws_elastic_block_store: v.aws_elastic_block_store,
            azure_disk: v.azure_disk,
            azure_file: v.azure_file,
            cephfs: v.cephfs,
            cinder: v.cinder,
            config_map: v.config_map,
            csi: v.csi,
            downward_api: v.downward_api,
            empty_dir: v.empty_dir,
            ephemeral: v.ephemeral,
            fc: v.fc,
            flex_volume: v.flex_volume,
            flocker: v.flocker,
            gce_persistent_disk: v.gce_persistent_disk,
            git_repo: v.git_repo,
            glusterfs: v.glusterfs,
            host_path: v.host_path,
            image: v.image,
            iscsi: v.iscsi,
            nfs: v.nfs,
            persistent_volume_claim: v.persistent_volume_claim,
            photon_persistent_disk: v.photon_persistent_disk,
            portworx_volume: v.portworx_volume,
            projected: v.projected,
            quobyte: v.quobyte,
            rbd: v.rbd,
            scale_io: v.scale_io,
            secret: v.secret,
            storageos: v.storageos,
            vsphere_volume: v.vsphere_volume,
        }
    }

    /// The source part of a core `Volume` (its name is dropped).
    pub fn from_volume(v: &core::Volume) -> Self {
        let v = v.clone();
        Self {
            aws_elastic_block_store: v.aws_elastic_block_store,
            azure_disk: v.azure_disk,
            azure_file: v.azure_file,
            cephfs: v.cephfs,
            cinder: v.cinder,
            config_map: v.config_map,
            csi: v.csi,
            downward_api: v.downward_api,
            empty_dir: v.empty_dir,
            ephemeral: v.ephemeral,
            fc: v.fc,
            flex_volume: v.flex_volume,
            flocker: v.flocker,
            gce_persistent_disk: v.gce_persistent_disk,
            git_repo: v.git_repo,
            glusterfs: v.glusterfs,
            host_path: v.host_path,
            image: v.image,
            iscsi: v.iscsi,
            nfs: v.nfs,
            persistent_volume_claim: v.persistent_volume_claim,
            photon_persistent_disk: v.photon_persistent_disk,
            portworx_volume: v.portworx_volume,
            projected: v.projected,
            quobyte: v.quobyte,
            rbd: v.rbd,
            scale_io: v.scale_io,
            secret: v.secret,
            storageos: v.storageos,
            vsphere_volume: v.vsphere_volume,
        }
    }
}
