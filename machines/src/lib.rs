//! Temporary stub: the phase types the CRDs use. Replaced by the macro-generated machines.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// BackupSession phases.
pub mod backup_session {
    use super::*;
    /// The phase of a BackupSession (`status.phase`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
    pub enum Phase { Pending, Running, Succeeded, Failed, Skipped, Unknown }
    /// The phase of one host of a BackupSession (`status.stats[].phase`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
    pub enum HostPhase { Succeeded, Failed }
}
/// RestoreSession phases.
pub mod restore_session {
    use super::*;
    /// The phase of a RestoreSession (`status.phase`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
    pub enum Phase { Pending, Running, Succeeded, Failed, Unknown }
    /// The phase of one host of a RestoreSession (`status.stats[].phase`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
    pub enum HostPhase { Succeeded, Failed, Unknown }
}
