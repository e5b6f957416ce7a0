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
        let cp = stash_testenv::shared()
            .await
            .unwrap_or_else(|e| panic!("the control plane must start: {e}"));
        cp.install_crds(&stash_crds::crds())
            .await
            .expect("CRDs installed");
        let stash = stash_bin();
        let bin_dir = bins::bin_dir().expect("testenv binaries");
        cp.start_node_agent(&[(IMAGE, stash.as_path())], &[bin_dir])
            .await
            .expect("node agent");
        let metrics_port = stash_testenv::process::free_port().expect("port");
        let pid = start_operator(cp, metrics_port);
        Env {
            cp,
            operator_pid: std::sync::Mutex::new(pid),
            metrics_port,
        }
    })
    .await
}

/// Start an operator process, adopted by the control plane. Returns its pid.
pub fn start_operator(cp: &ControlPlane, metrics_port: u16) -> u32 {
    let pushgateway = format!("http://127.0.0.1:{}", pushgateway_port(cp));
    let args: Vec<String> = [
        "run",
        "--pushgateway-url",
        pushgateway.as_str(),
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
        &[
            ("KUBECONFIG", cp.kubeconfig.as_os_str()),
            ("RUST_LOG", std::ffi::OsStr::new("info,kube=warn")),
        ],
        cp.dir(),
    )
    .expect("start the operator");
    let pid = p.pid();
    cp.adopt(p);
    pid
}

/// The real Prometheus pushgateway of this test binary (started on first use, on loopback,
/// adopted by the control plane so it is stopped by process group at exit).
pub fn pushgateway_port(cp: &ControlPlane) -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *PORT.get_or_init(|| {
        let port = stash_testenv::process::free_port().expect("port");
        let p = Proc::spawn(
            "pushgateway",
            &bins::bin("pushgateway").expect("pushgateway"),
            &[format!("--web.listen-address=127.0.0.1:{port}")],
            cp.dir(),
        )
        .expect("start the pushgateway");
        cp.adopt(p);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the pushgateway did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        port
    })
}

/// The pushgateway's `/metrics` text.
pub async fn pushgateway_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect pushgateway");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    buf
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// A test namespace with a storage Secret `local-secret` (RESTIC_PASSWORD = `password`) and a
/// Repository `repo` on a hostPath local backend.
pub struct Fixture {
    /// The namespace (deleted when dropped).
    pub ns: stash_testenv::TestNamespace,
    /// The local backend's directory on the host: the restic repository.
    pub repo_dir: PathBuf,
}

/// Create a [`Fixture`] in a new namespace `<prefix>-<random>`.
pub async fn fixture_with_password(prefix: &str, password: &str) -> Fixture {
    let env = env().await;
    let ns = env.cp.namespace(prefix).await.expect("namespace");
    let repo_dir = env.cp.dir().join("repos").join(&ns.name);
    std::fs::create_dir_all(&repo_dir).expect("repo dir");
    let client = env.cp.client();
    apply(&client, &ns.name, serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "local-secret"},
        "stringData": {"RESTIC_PASSWORD": password}
    }))
    .await;
    apply(&client, &ns.name, serde_json::json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"},
        "spec": {"backend": {"storageSecretName": "local-secret",
                             "local": {"mountPath": "/safe/data", "hostPath": {"path": repo_dir.to_string_lossy()}}}}
    }))
    .await;
    Fixture { ns, repo_dir }
}

/// Server-side apply a manifest (any kind), in `ns` when namespaced.
pub async fn apply(client: &Client, ns: &str, doc: serde_json::Value) -> DynamicObject {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    let gvk = GroupVersionKind::gvk(group, version, doc["kind"].as_str().unwrap_or_default());
    let (ar, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .expect("discovery");
    let api: Api<DynamicObject> = match caps.scope {
        discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), ns, &ar),
        discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let obj: DynamicObject = serde_json::from_value(doc).expect("object");
    let name = obj.metadata.name.clone().expect("name");
    api.patch(
        &name,
        &PatchParams::apply("stash-e2e").force(),
        &Patch::Apply(&obj),
    )
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
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.is_file() {
                let data = std::fs::read(&p).expect("read");
                let rel = p
                    .strip_prefix(root)
                    .expect("prefix")
                    .to_string_lossy()
                    .to_string();
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
    let out = restic(repo, password)
        .args(["snapshots", "--json"])
        .output()
        .expect("restic snapshots");
    assert!(
        out.status.success(),
        "restic snapshots: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    assert!(
        out.status.success(),
        "restic restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The operator's /metrics text.
pub async fn operator_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect /metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    buf
}

/// Assert the operator never refused an illegal phase change.
pub async fn assert_no_illegal_transitions(port: u16) {
    let text = operator_metrics(port).await;
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("stash_operator_illegal_transitions_total{") && !l.ends_with(" 0")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "illegal transitions were attempted: {bad:?}"
    );
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

// ---------------------------------------------------------------------------------------
// Helpers for the backup end-to-end tests (sessions, workloads, events, test servers).
// ---------------------------------------------------------------------------------------

/// One Event as the tests look at it (from events.k8s.io/v1 or core v1).
#[derive(Clone, Debug)]
pub struct EventView {
    /// The object the event is about (`regarding` / `involvedObject`): kind.
    pub kind: String,
    /// … and name.
    pub name: String,
    /// `Normal` or `Warning`.
    pub type_: String,
    /// The reason.
    pub reason: String,
    /// `note` (events.k8s.io) or `message` (core).
    pub note: String,
}

/// Every Event in `ns`, from both the events.k8s.io/v1 and the core v1 API.
pub async fn events_in(client: &Client, ns: &str) -> Vec<EventView> {
    use k8s_openapi::api::{core::v1::Event as CoreEvent, events::v1::Event};
    let mut out = Vec::new();
    let lp = kube::api::ListParams::default();
    if let Ok(list) = Api::<Event>::namespaced(client.clone(), ns).list(&lp).await {
        for e in list {
            let r = e.regarding.unwrap_or_default();
            out.push(EventView {
                kind: r.kind.unwrap_or_default(),
                name: r.name.unwrap_or_default(),
                type_: e.type_.unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
                note: e.note.unwrap_or_default(),
            });
        }
    }
    if let Ok(list) = Api::<CoreEvent>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
    {
        for e in list {
            let r = e.involved_object;
            let view = EventView {
                kind: r.kind.unwrap_or_default(),
                name: r.name.unwrap_or_default(),
                type_: e.type_.unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
                note: e.message.unwrap_or_default(),
            };
            // The same event is served by both APIs; keep one copy.
            if !out
                .iter()
                .any(|o| o.name == view.name && o.reason == view.reason && o.note == view.note)
            {
                out.push(view);
            }
        }
    }
    out
}

/// Wait (≤ `timeout`) for an event with `reason` about object `name` in `ns`.
pub async fn wait_event(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> EventView {
    eventually(
        &format!("event {reason} about {name}"),
        timeout,
        || async move {
            events_in(client, ns)
                .await
                .into_iter()
                .find(|e| e.name == name && e.reason == reason)
        },
    )
    .await
}

/// Create a manual BackupSession `name` of BackupConfiguration `bc` (with the label sidecars
/// select on).
pub async fn create_backup_session(client: &Client, ns: &str, bc: &str, name: &str) {
    apply(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
            "metadata": {"name": name, "labels": {"stash.appscode.com/backup-configuration": bc}},
            "spec": {"backupConfiguration": {"name": bc}}
        }),
    )
    .await;
}

/// Wait until BackupSession `name` is terminal (`Succeeded`, `Failed`, `Skipped`); return it.
pub async fn wait_session_terminal(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> stash_crds::BackupSession {
    use stash_crds::backup_session::Phase;
    let api = Api::<stash_crds::BackupSession>::namespaced(client.clone(), ns);
    eventually(&format!("BackupSession {name} to finish"), timeout, || {
        let api = api.clone();
        async move {
            let s = api.get(name).await.ok()?;
            let phase = s.status.as_ref()?.phase?;
            matches!(phase, Phase::Succeeded | Phase::Failed | Phase::Skipped).then_some(s)
        }
    })
    .await
}

/// A PVC `claim` and a one-replica Deployment `name` mounting it at `/source/data`.
pub async fn deployment_with_pvc(client: &Client, ns: &str, name: &str, claim: &str) {
    apply(client, ns, serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .await;
    apply(client, ns, serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "app", "image": "busybox",
                                                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                       "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}}}
    }))
    .await;
}

/// A BackupConfiguration `<workload>-backup` of Deployment `workload` (`/source/data`) into
/// Repository `repo`; `extra` is merged into `spec` (e.g. a retention policy or runtimeSettings).
pub fn deployment_backup_configuration(
    workload: &str,
    repo: &str,
    schedule: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "repository": {"name": repo},
        "schedule": schedule,
        "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload},
                   "directories": ["/source/data"],
                   "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
        "metadata": {"name": format!("{workload}-backup")},
        "spec": spec
    })
}

/// Wait (≤ `timeout`) until Deployment `name` has the `stash` sidecar and its one pod is
/// updated and ready.
pub async fn wait_sidecar_ready(client: &Client, ns: &str, name: &str, timeout: Duration) {
    use k8s_openapi::api::apps::v1::Deployment;
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    eventually(
        &format!("the sidecar in a ready Deployment {name}"),
        timeout,
        || {
            let d = deployments.clone();
            async move {
                let d = d.get(name).await.ok()?;
                let injected = d
                    .spec
                    .as_ref()?
                    .template
                    .spec
                    .as_ref()?
                    .containers
                    .iter()
                    .any(|c| c.name == "stash");
                let st = d.status?;
                let settled = st.updated_replicas == Some(1)
                    && st.ready_replicas == Some(1)
                    && st.replicas == Some(1);
                (injected && settled && st.observed_generation == d.metadata.generation)
                    .then_some(())
            }
        },
    )
    .await;
}

/// Wait (≤ `timeout`) until something accepts TCP connections on `127.0.0.1:port`.
pub async fn wait_port(port: u16, timeout: Duration) {
    eventually(
        &format!("a server on 127.0.0.1:{port}"),
        timeout,
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

/// A loopback port nothing listens on (reserved, then released; nobody binds it again in
/// this process).
pub fn closed_port() -> u16 {
    stash_testenv::process::free_port().expect("port")
}

/// Every file under `dir` with its bytes' sha256 (to prove a repository was not touched).
pub fn tree_digest(dir: &Path) -> BTreeMap<String, String> {
    checksums(dir)
}
