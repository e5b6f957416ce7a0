//! Finding the Go-built binaries (etcd, kube-apiserver, kube-controller-manager, kubectl,
//! restic, …). They are built once per machine by `testenv/build.sh` into a cache outside
//! the repository; a missing binary is an error, never a skip.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::Error;

/// The directory holding the binaries: `$STASH_TESTENV_BIN` if set, else whatever
/// `testenv/build.sh` prints (building what is missing, under a lock).
pub fn bin_dir() -> Result<PathBuf, Error> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("STASH_TESTENV_BIN") {
            return Ok(PathBuf::from(dir));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}):\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let dir = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        Ok(PathBuf::from(dir))
    })
    .clone()
    .map_err(Error::Binaries)
}

/// The path of binary `name`, which must exist.
pub fn bin(name: &str) -> Result<PathBuf, Error> {
    let path = bin_dir()?.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::Binaries(format!(
            "{} is missing; run testenv/build.sh (needs the go toolchain)",
            path.display()
        )))
    }
}
