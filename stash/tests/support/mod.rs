//! Shared end-to-end support: the real control plane with our CRDs, the node agent running
//! our binary for pods of the test image, and the operator as a real process.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use kube::{
    Api, Client,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams},
    discovery,
};
use sha2::{Digest, Sha256};
use stash_testenv::{ControlPlane, bins, process::Proc};

/// The image the node agent maps to our `stash` binary.
pub const IMAGE: &str = "stash-rs/stash:test";

/// The `stash` binary under test (tests and benches get it from cargo; the demo example finds
/// it next to itself in the target directory).
pub fn stash_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_stash") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("stash")
}

/// The control plane with CRDs, node agent and one operator process.
pub struct Env {
    pub cp: &'static ControlPlane,
    /// The operator's pid (it is adopted by the control plane and stopped at exit).
    pub operator_pid: std::sync::Mutex<u32>,
    /// The operator's /metrics port.
    pub metrics_port: u16,
}

static ENV: tokio::sync::OnceCell<Env> = tokio::sync::OnceCell::const_new();

/// Start (once per test binary) everything an end-to-end test needs.
pub async fn env() -> &'static Env {
    ENV.get_or_init(|| async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cp = stash_testenv::shared().await.unwrap_or_else(|e| panic!("the control plane must start: {e}"));
        cp.install_crds(&stash_crds::crds()).await.expect("CRDs installed");
        let stash = stash_bin();
        let bin_dir = bins::bin_dir().expect("testenv binaries");
        cp.start_node_agent(&[(IMAGE, stash.as_path())], &[bin_dir]).await.expect("node agent");
        let metrics_port = stash_testenv::process::free_port().expect("port");
        let pid = start_operator(cp, metrics_port);
        Env { cp, operator_pid: std::sync::Mutex::new(pid), metrics_port }
    })
    .await
}

/// Start an operator process, adopted by the control plane. Returns its pid.
pub fn start_operator(cp: &ControlPlane, metrics_port: u16) -> u32 {
    let args: Vec<String> = [
        "run",
        "--image",
        IMAGE,
        "--namespace",
        "kube-system",
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        "--lease-duration",
        "4s",
        "--session-deadline",
        "180s",
        "--poll",
        "2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let p = Proc::spawn_with_env(
        &format!("stash-operator-{metrics_port}-{}", rand_suffix()),
        &stash_bin(),
        &args,
        &[("KUBECONFIG", cp.kubeconfig.as_os_str()), ("RUST_LOG", std::ffi::OsStr::new("info,kube=warn"))],
        cp.dir(),
    )
    .expect("start the operator");
    let pid = p.pid();
    cp.adopt(p);
    pid
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
}

/// Server-side apply a manifest (any kind), in `ns` when namespaced.
pub async fn apply(client: &Client, ns: &str, doc: serde_json::Value) -> DynamicObject {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version.as_str()));
    let gvk = GroupVersionKind::gvk(group, version, doc["kind"].as_str().unwrap_or_default());
    let (ar, caps) = discovery::pinned_kind(client, &gvk).await.expect("discovery");
    let api: Api<DynamicObject> = match caps.scope {
        discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), ns, &ar),
        discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let obj: DynamicObject = serde_json::from_value(doc).expect("object");
    let name = obj.metadata.name.clone().expect("name");
    api.patch(&name, &PatchParams::apply("stash-e2e").force(), &Patch::Apply(&obj))
        .await
        .unwrap_or_else(|e| panic!("apply {gvk:?} {name}: {e}"))
}

/// Poll `probe` every 250 ms until it returns `Some`, or panic after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Write `count` files of pseudo-random content (deterministic per `seed`) under `dir`,
/// in nested directories.
pub fn generate_files(dir: &Path, seed: u64, count: usize, size: usize) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..count {
        let sub = dir.join(format!("d{}", i % 3)).join(format!("e{}", i % 2));
        std::fs::create_dir_all(&sub).expect("mkdir");
        let mut data = Vec::with_capacity(size);
        for _ in 0..size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push((x & 0xff) as u8);
        }
        std::fs::write(sub.join(format!("file-{i}.bin")), data).expect("write");
    }
}

/// sha256 of every regular file under `dir`, keyed by relative path.
pub fn checksums(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.is_file() {
                let data = std::fs::read(&p).expect("read");
                let rel = p.strip_prefix(root).expect("prefix").to_string_lossy().to_string();
                out.insert(rel, format!("{:x}", Sha256::digest(&data)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A restic command against a repository, with the given password.
pub fn restic(repo: &str, password: &str) -> Command {
    let mut cmd = Command::new(bins::bin("restic").expect("restic"));
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/tmp")
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", password)
        .arg("--no-cache");
    cmd
}

/// `restic snapshots --json`, parsed.
pub fn restic_snapshots(repo: &str, password: &str) -> Vec<serde_json::Value> {
    let out = restic(repo, password).args(["snapshots", "--json"]).output().expect("restic snapshots");
    assert!(out.status.success(), "restic snapshots: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("snapshots json")
}

/// Restore snapshot `id` into `target` (a scratch dir) and return the restored tree's root
/// for `path` (restic restores absolute paths under the target).
pub fn restic_restore(repo: &str, password: &str, id: &str, target: &Path) {
    let out = restic(repo, password)
        .args(["restore", id, "--target"])
        .arg(target)
        .output()
        .expect("restic restore");
    assert!(out.status.success(), "restic restore: {}", String::from_utf8_lossy(&out.stderr));
}

/// The operator's /metrics text.
pub async fn operator_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect /metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    buf
}

/// Assert the operator never refused an illegal phase change.
pub async fn assert_no_illegal_transitions(port: u16) {
    let text = operator_metrics(port).await;
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("stash_operator_illegal_transitions_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(bad.is_empty(), "illegal transitions were attempted: {bad:?}");
}

/// Print the logs of every pod process and the operator (for failures).
pub fn dump_logs(cp: &ControlPlane) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for f in $(find {} -name '*.log' -newer {} | sort); do echo \"=== $f\"; tail -n 40 $f; done",
            cp.dir().display(),
            cp.kubeconfig.display()
        ))
        .status();
}
