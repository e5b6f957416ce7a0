//! The commands that run inside pods.
pub mod create_backupsession;
pub mod postgres;
pub mod pvc;
pub mod report;
pub mod restore;
pub mod run_backup;
pub mod update_status;
