//! Shared end-to-end support, one crate for the e2e tests (`stash/tests`), the benchmarks, the
//! demo and the plugin's tests: the real single-node cluster (`testenv start`) with stash-rs
//! installed from the committed manifest (`scripts/test.sh` does both), pods from the real
//! image, hostPath PersistentVolumes the tests can look into, and test servers inside the
//! cluster's network namespace.

pub mod minio;

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
    discovery,
};
use sha2::{Digest, Sha256};
use stash_testenv::{ControlPlane, NODE_IP, bins};

/// The image of the installed operator (and of every agent it creates).
pub const IMAGE: &str = "stash-rs/stash:0.1.0";
/// Where the install manifest puts the operator.
pub const OPERATOR_NS: &str = "stash-system";
/// The operator pods' label selector.
pub const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/name=stash,app.kubernetes.io/component=operator";

/// The `stash` binary under test, for what runs on the host (the plugin, admission units).
pub fn stash_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_stash") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("stash")
}

/// The cluster with the operator installed.
pub struct Env {
    pub cp: &'static ControlPlane,
}

static ENV: tokio::sync::OnceCell<Env> = tokio::sync::OnceCell::const_new();

/// Attach (once per test binary) to the cluster and check the installed operator is there:
/// its Deployment Available and its CRDs served.
pub async fn env() -> &'static Env {
    ENV.get_or_init(|| async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cp = stash_testenv::shared()
            .await
            .unwrap_or_else(|e| panic!("the cluster must be running: {e}"));
        wait_operator_available(cp).await;
        Env { cp }
    })
    .await
}

/// Wait until Deployment `stash-system/stash-operator` is Available with every replica ready.
pub async fn wait_operator_available(cp: &ControlPlane) {
    use k8s_openapi::api::apps::v1::Deployment;
    let api = Api::<Deployment>::namespaced(cp.client(), OPERATOR_NS);
    eventually(
        "the installed operator to be Available (scripts/test.sh installs it)",
        Duration::from_secs(180),
        || {
            let api = api.clone();
            async move {
                let d = api.get("stash-operator").await.ok()?;
                let want = d.spec.as_ref()?.replicas.unwrap_or(1);
                let st = d.status?;
                (st.ready_replicas == Some(want)
                    && st.updated_replicas == Some(want)
                    && st.replicas == Some(want))
                .then_some(())
            }
        },
    )
    .await;
}

/// The operator pods (running ones).
pub async fn operator_pods(client: &Client) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), OPERATOR_NS)
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// GET `path` through the API server (e.g. a pod or Service proxy); the body as text.
pub async fn api_get(client: &Client, path: &str) -> Result<String, kube::Error> {
    let req = http::Request::get(path).body(Vec::new()).expect("request");
    client.request_text(req).await
}

/// The text of every operator pod's `/metrics`, through the API server's pod proxy.
pub async fn operator_metrics() -> String {
    let client = env().await.cp.client();
    let mut out = String::new();
    for p in operator_pods(&client).await {
        let name = p.metadata.name.unwrap_or_default();
        if let Ok(text) = api_get(
            &client,
            &format!("/api/v1/namespaces/{OPERATOR_NS}/pods/{name}:8080/proxy/metrics"),
        )
        .await
        {
            out.push_str(&text);
        }
    }
    out
}

/// The in-pod pushgateway's `/metrics`, through the API server's Service proxy.
pub async fn pushgateway_metrics() -> String {
    let client = env().await.cp.client();
    api_get(
        &client,
        &format!(
            "/api/v1/namespaces/{OPERATOR_NS}/services/stash-pushgateway:pushgateway/proxy/metrics"
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("the pushgateway's /metrics through the API server: {e}"))
}

/// Directory of a hostPath PersistentVolume bound to PVC `ns/claim` (both created here if they
/// do not exist). Files written here are what pods see.
pub async fn pv_dir(ns: &str, claim: &str) -> PathBuf {
    let env = env().await;
    // A claim that exists already keeps its volume: its directory is the answer.
    let claims =
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(env.cp.client(), ns);
    if claims.get_opt(claim).await.ok().flatten().is_some() {
        return bound_pv_dir(ns, claim).await;
    }
    let dir = env.cp.dir().join("pv").join(ns).join(claim);
    std::fs::create_dir_all(&dir).expect("pv dir");
    let name = format!(
        "pv-{}",
        &format!("{:x}", Sha256::digest(format!("{ns}/{claim}")))[..16]
    );
    apply(&env.cp.client(), ns, serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"stash-testenv/namespace": ns}},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "standard",
                 "claimRef": {"namespace": ns, "name": claim},
                 "hostPath": {"path": dir.to_string_lossy(), "type": "Directory"}}
    }))
    .await;
    // The claim too (its own field manager: a test may apply the same PVC with fewer fields).
    let claim_doc: k8s_openapi::api::core::v1::PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                 "storageClassName": "standard", "volumeName": name}
    }))
    .expect("pvc");
    Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(env.cp.client(), ns)
        .patch(
            claim,
            &PatchParams::apply("stash-e2e-pv").force(),
            &Patch::Apply(&claim_doc),
        )
        .await
        .unwrap_or_else(|e| panic!("PVC {ns}/{claim}: {e}"));
    dir
}

/// The host directory of the hostPath PersistentVolume that PVC `ns/claim` is bound to (waits
/// up to 60 s for the binding).
pub async fn bound_pv_dir(ns: &str, claim: &str) -> PathBuf {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let client = env().await.cp.client();
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    let pvs = Api::<PersistentVolume>::all(client);
    eventually(
        &format!("PVC {ns}/{claim} bound to a hostPath PV"),
        Duration::from_secs(60),
        || {
            let (claims, pvs) = (claims.clone(), pvs.clone());
            async move {
                let c = claims.get(claim).await.ok()?;
                let volume = c.spec?.volume_name?;
                let pv = pvs.get(&volume).await.ok()?;
                pv.spec?.host_path.map(|h| PathBuf::from(h.path))
            }
        },
    )
    .await
}

/// Start a test server inside the cluster's network namespace, listening on [`NODE_IP`]
/// (pods reach it there; so does this process). Returns its port.
pub async fn cluster_server(
    name: &str,
    bin: &Path,
    args: impl Fn(&str, u16) -> Vec<String>,
    env_vars: &[(&str, &std::ffi::OsStr)],
) -> u16 {
    let cp = env().await.cp;
    let port = cp.cluster_port();
    cp.spawn_in_cluster(name, bin, &args(NODE_IP, port), env_vars)
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    wait_port(port, Duration::from_secs(60)).await;
    port
}

/// A restic REST server (no auth) storing its repositories under `data` (a directory root
/// made), in the cluster's network namespace; Secret `rest-secret` with `password` and
/// Repository `repo` at `<server>/app` in `ns`. Returns the repository's URL.
pub async fn rest_repository(
    client: &kube::Client,
    ns: &str,
    data: &Path,
    password: &str,
) -> String {
    let path = data.to_string_lossy().to_string();
    let rest = bins::bin("rest-server").expect("rest-server");
    let port = cluster_server(
        "rest-server",
        &rest,
        |ip, port| {
            vec![
                "--path".into(),
                path.clone(),
                "--listen".into(),
                format!("{ip}:{port}"),
                "--no-auth".into(),
            ]
        },
        &[],
    )
    .await;
    let url = format!("http://{NODE_IP}:{port}/app");
    secret_and_repository(
        client,
        ns,
        "rest-secret",
        serde_json::json!({"RESTIC_PASSWORD": password}),
        serde_json::json!({"backend": {"rest": {"url": url}}}),
    )
    .await;
    url
}

/// The kinds of the API we implement (group, kind): what the conformance and admission tests
/// take from the upstream examples. Snapshot is served by the aggregated API, not a CRD, and
/// the legacy v1alpha1 Restic/Recovery kinds are out of scope.
pub const IN_SCOPE: &[(&str, &str)] = &[
    ("stash.appscode.com", "BackupConfiguration"),
    ("stash.appscode.com", "BackupSession"),
    ("stash.appscode.com", "RestoreSession"),
    ("stash.appscode.com", "Function"),
    ("stash.appscode.com", "Task"),
    ("stash.appscode.com", "BackupConfigurationTemplate"),
    ("stash.appscode.com", "Repository"),
    ("appcatalog.appscode.com", "AppBinding"),
];

/// The directory of upstream Stash v0.8.3's examples
/// (`../shared/conformance/stash-v0.8.3/examples/`).
pub fn upstream_examples() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/stash-v0.8.3/examples");
    assert!(
        dir.is_dir(),
        "conformance examples missing at {} (shared/ must sit beside the repo)",
        dir.display()
    );
    dir
}

/// Every example file (`*.yaml`) of [`upstream_examples`], sorted.
pub fn upstream_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(upstream_examples())
        .expect("list the examples")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The group, version and kind a manifest names.
pub fn gvk_of(doc: &serde_json::Value) -> GroupVersionKind {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, doc["kind"].as_str().unwrap_or_default())
}

/// The documents of upstream Stash v0.8.3's example `file` ([`upstream_examples`]), moved from
/// namespace `demo` to `ns`.
pub fn upstream(file: &str, ns: &str) -> Vec<serde_json::Value> {
    let path = upstream_examples().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<serde_json::Value>(&text)
        .expect("yaml")
        .into_iter()
        .filter(|d| !d.is_null())
        .map(|mut d| {
            // The examples live in namespace `demo`; each test has its own.
            if d["metadata"].get("namespace").is_some() {
                d["metadata"]["namespace"] = serde_json::json!(ns);
            }
            d
        })
        .collect()
}

/// Wait (≤ `timeout`) until RestoreSession `name` is terminal ([`wait_terminal`]); the
/// operator's logs are dumped when it is not Succeeded.
pub async fn wait_restore_terminal(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> stash_crds::RestoreSession {
    use stash_crds::restore_session::Phase;
    let rs = wait_terminal::<Phase>(client, ns, name, timeout).await;
    if Phase::of(&rs) != Some(Phase::Succeeded) {
        dump_logs(env().await.cp);
    }
    rs
}

/// RestoreSession `name` of Repository `repo` into Deployment `deployment` (its volume `data`
/// at `/source/data`, rule `/source/data`), waited for until it ends `Succeeded` (180 s at most,
/// [`wait_session_ends`]).
pub async fn restore_deployment(
    client: &Client,
    ns: &str,
    name: &str,
    deployment: &str,
) -> stash_crds::RestoreSession {
    apply(client, ns, serde_json::json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": name},
        "spec": {"repository": {"name": "repo"},
                 "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
                            "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]},
                 "rules": [{"paths": ["/source/data"]}]}
    }))
    .await;
    wait_session_ends(
        client,
        ns,
        name,
        stash_crds::restore_session::Phase::Succeeded,
        Duration::from_secs(180),
    )
    .await
}

/// Deployment `app` on PVC `claim` (a hostPath PV, returned: its directory holds what the
/// caller writes there), BackupConfiguration `app-backup` of Repository `repo` (never scheduled,
/// `extra` merged into its spec), and its sidecar ready.
pub async fn sidecar_workload(
    client: &Client,
    ns: &str,
    claim: &str,
    extra: serde_json::Value,
) -> PathBuf {
    let source = pv_dir(ns, claim).await;
    deployment_with_pvc(client, ns, "app", claim).await;
    sidecar_backup(client, ns, "app", "repo", extra).await;
    source
}

/// BackupConfiguration `<name>-backup` of Deployment `name` into Repository `repo` (never
/// scheduled, `extra` merged into its spec: [`deployment_backup_configuration`]), and the
/// Deployment's sidecar ready (≤ 180 s).
pub async fn sidecar_backup(
    client: &Client,
    ns: &str,
    name: &str,
    repo: &str,
    extra: serde_json::Value,
) {
    apply(
        client,
        ns,
        deployment_backup_configuration(name, repo, "0 0 1 1 *", extra),
    )
    .await;
    wait_sidecar_ready(client, ns, name, Duration::from_secs(180)).await;
}

/// Logs of every container of the pods in `ns` whose name starts with `prefix`.
pub fn pod_logs(ns: &str, prefix: &str) -> String {
    let cp = stash_testenv::shared_now().expect("attached");
    let names = cp
        .kubectl()
        .expect("kubectl")
        .args(["get", "pods", "-n", ns, "-o", "name"])
        .output()
        .expect("kubectl");
    let mut out = String::new();
    for pod in String::from_utf8_lossy(&names.stdout).lines() {
        if pod.trim_start_matches("pod/").starts_with(prefix) {
            let logs = cp
                .kubectl()
                .expect("kubectl")
                .args([
                    "logs",
                    "-n",
                    ns,
                    pod,
                    "--all-containers",
                    "--prefix",
                    "--tail=60",
                ])
                .output()
                .expect("kubectl");
            out.push_str(&String::from_utf8_lossy(&logs.stdout));
            out.push_str(&String::from_utf8_lossy(&logs.stderr));
        }
    }
    out
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
    hostpath_repository(&env.cp.client(), &ns.name, &repo_dir, password).await;
    Fixture { ns, repo_dir }
}

/// Secret `local-secret` with `password` and Repository `repo` on the local backend at host
/// directory `dir` (a hostPath, mounted at `/safe/data`), in `ns`.
pub async fn hostpath_repository(client: &Client, ns: &str, dir: &Path, password: &str) {
    secret_and_repository(
        client,
        ns,
        "local-secret",
        serde_json::json!({"RESTIC_PASSWORD": password}),
        serde_json::json!({"backend": {
            "local": {"mountPath": "/safe/data", "hostPath": {"path": dir.to_string_lossy()}}}}),
    )
    .await;
}

/// Secret `secret` with `string_data` (`RESTIC_PASSWORD` and the backend's credentials) and
/// Repository `repo` with `spec` (its `backend` naming the Secret as its storage Secret), in
/// `ns`.
pub async fn secret_and_repository(
    client: &Client,
    ns: &str,
    secret: &str,
    string_data: serde_json::Value,
    mut spec: serde_json::Value,
) {
    apply(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret},
            "stringData": string_data
        }),
    )
    .await;
    spec["backend"]["storageSecretName"] = serde_json::json!(secret);
    apply(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
            "metadata": {"name": "repo"}, "spec": spec
        }),
    )
    .await;
}

/// Remove everything inside `dir` (the directory itself is a PV that pods have mounted).
pub fn wipe(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        }
        .expect("wipe");
    }
    assert!(checksums(dir).is_empty());
}

/// Server-side apply a manifest (any kind), in `ns` when namespaced.
pub async fn apply(client: &Client, ns: &str, doc: serde_json::Value) -> DynamicObject {
    let gvk = gvk_of(&doc);
    let (ar, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .expect("discovery");
    let api: Api<DynamicObject> = match caps.scope {
        discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), ns, &ar),
        discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let obj: DynamicObject = serde_json::from_value(doc).expect("object");
    let name = obj.metadata.name.clone().expect("name");
    let mut attempt = 0;
    loop {
        attempt += 1;
        match api
            .patch(
                &name,
                &PatchParams::apply("stash-e2e").force(),
                &Patch::Apply(&obj),
            )
            .await
        {
            Ok(o) => return o,
            // The API server's call to the webhook broke off in transport (seen once in CI:
            // "read: connection reset by peer" from a Ready operator pod that never
            // restarted; not reproduced). Such a request is not retried by the API server;
            // a user runs kubectl again, and so does this helper, at most twice more.
            Err(kube::Error::Api(e))
                if attempt < 3
                    && e.code == 500
                    && e.message.contains("failed calling webhook")
                    && (e.message.contains("connection reset") || e.message.contains("EOF")) =>
            {
                eprintln!(
                    "apply {gvk:?} {name}: webhook transport error, again: {}",
                    e.message
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("apply {gvk:?} {name}: {e}"),
        }
    }
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
        .arg("--no-cache")
        // An agent may still hold a lock (a prune after its report): wait for it, bounded.
        .args(["--retry-lock", "2m"]);
    cmd
}

/// `snapshots --json` run by `restic` (a restic command for a repository: [`restic`],
/// [`minio::minio_restic`], or one of a test's own), asserted to succeed, parsed.
pub fn restic_snapshots_of(mut restic: Command) -> Vec<serde_json::Value> {
    let out = restic
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

/// `restic snapshots --json` of repository `repo`, parsed.
pub fn restic_snapshots(repo: &str, password: &str) -> Vec<serde_json::Value> {
    restic_snapshots_of(restic(repo, password))
}

/// The nodes (files, directories, …) of snapshot `id`: `ls --json <id>` run by `restic` (as
/// for [`restic_snapshots_of`]), asserted to succeed.
pub fn restic_ls_of(mut restic: Command, id: &str) -> Vec<serde_json::Value> {
    let out = restic
        .args(["ls", "--json", id])
        .output()
        .expect("restic ls");
    assert!(
        out.status.success(),
        "restic ls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|n| n["struct_type"] == "node")
        .collect()
}

/// Restore snapshot `id` into `target` (a scratch dir) through `restic` (a restic command for
/// the repository, as for [`restic_snapshots_of`]), asserted to succeed; restic restores
/// absolute paths under the target.
pub fn restic_restore_of(mut restic: Command, id: &str, target: &Path) {
    let out = restic
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

/// Restore snapshot `id` through `restic` (as for [`restic_restore_of`]) into a scratch
/// directory and assert that the restored `/source/data` is, byte for byte, the directory
/// `source` (which is not empty).
pub fn assert_restores_equal(restic: Command, id: &str, source: &Path) {
    let scratch = tempfile::tempdir().expect("scratch");
    restic_restore_of(restic, id, scratch.path());
    let original = checksums(source);
    assert!(!original.is_empty(), "{} is empty", source.display());
    assert_eq!(
        checksums(&scratch.path().join("source/data")),
        original,
        "snapshot {id} restores {} byte for byte",
        source.display()
    );
}

/// Assert that `snaps` (restic's own list) is one snapshot: of `/source/data`, by `host`, with
/// short id `short`.
pub fn assert_only_snapshot(snaps: &[serde_json::Value], host: &str, short: &str) {
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["hostname"], host);
    assert_eq!(snaps[0]["paths"], serde_json::json!(["/source/data"]));
    assert_eq!(snaps[0]["short_id"].as_str(), Some(short));
}

/// Restore snapshot `id` of repository `repo` into `target` ([`restic_restore_of`]).
pub fn restic_restore(repo: &str, password: &str, id: &str, target: &Path) {
    restic_restore_of(restic(repo, password), id, target);
}

/// Assert who owns a session's status, as the API server records it (`metadata.managedFields`,
/// subresource `status`): the operator's field manager `stash-operator` owns `status.phase`, and
/// each host's agent, field manager `stash-host-<host>`, owns exactly its own entry of the
/// `status.stats` list-map (keyed by hostname) and nothing the operator owns.
pub fn assert_status_ownership(meta: &kube::api::ObjectMeta, hosts: &[&str]) {
    let owned = |manager: &str| -> serde_json::Value {
        meta.managed_fields
            .iter()
            .flatten()
            .filter(|m| {
                m.manager.as_deref() == Some(manager) && m.subresource.as_deref() == Some("status")
            })
            .filter_map(|m| m.fields_v1.as_ref().map(|f| f.0.clone()))
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "no status fields owned by {manager}: {:?}",
                    meta.managed_fields
                )
            })
    };
    let operator = owned("stash-operator");
    assert!(
        operator["f:status"].get("f:phase").is_some(),
        "stash-operator owns status.phase: {operator}"
    );
    assert!(
        operator["f:status"].get("f:stats").is_none(),
        "stash-operator owns no host entry: {operator}"
    );
    for host in hosts {
        let agent = owned(&format!("stash-host-{host}"));
        let entries: Vec<&String> = agent["f:status"]["f:stats"]
            .as_object()
            .map(|o| o.keys().filter(|k| k.starts_with("k:")).collect())
            .unwrap_or_default();
        assert_eq!(
            entries,
            [&format!("k:{{\"hostname\":\"{host}\"}}")],
            "stash-host-{host} owns exactly its own entry: {agent}"
        );
        assert!(
            agent["f:status"].get("f:phase").is_none(),
            "stash-host-{host} does not own status.phase: {agent}"
        );
    }
}

/// Assert no operator replica ever refused an illegal phase change.
pub async fn assert_no_illegal_transitions() {
    let text = operator_metrics().await;
    assert!(
        text.contains("stash_operator_"),
        "the operators' /metrics: {text}"
    );
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

/// Print the operator's logs and the kubelet's (for failures).
pub fn dump_logs(cp: &ControlPlane) {
    let _ = cp
        .kubectl()
        .expect("kubectl")
        .args([
            "logs",
            "-n",
            OPERATOR_NS,
            "-l",
            OPERATOR_SELECTOR,
            "--all-containers",
            "--prefix",
            "--tail=60",
        ])
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

/// Wait (≤ 120 s) until Repository `repo` in `ns` has a status with a snapshot count; return
/// it. After a backup the agent reports its snapshot first, then (still holding restic's lock)
/// runs the follow-up steps (forget, stats, check) and writes the Repository status: restic on
/// the host waits for that before it takes its own locks.
pub async fn wait_repository_status(
    client: &Client,
    ns: &str,
) -> stash_crds::repository::RepositoryStatus {
    let repos = Api::<stash_crds::Repository>::namespaced(client.clone(), ns);
    eventually(
        "the Repository status after the backup",
        Duration::from_secs(120),
        || {
            let repos = repos.clone();
            async move {
                let r = repos.get("repo").await.ok()?;
                r.status.filter(|s| s.snapshot_count.is_some())
            }
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

/// Every BackupSession in `ns`.
pub async fn backup_sessions(client: &Client, ns: &str) -> Vec<stash_crds::BackupSession> {
    Api::<stash_crds::BackupSession>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list the BackupSessions")
        .items
}

/// Run BackupSession `name` of BackupConfiguration `bc` by hand ([`create_backup_session`]) and
/// wait (≤ `timeout`) until it ends `Succeeded` ([`wait_session_ends`]); return it.
pub async fn run_backup_session(
    client: &Client,
    ns: &str,
    bc: &str,
    name: &str,
    timeout: Duration,
) -> stash_crds::BackupSession {
    create_backup_session(client, ns, bc, name).await;
    let succeeded = stash_crds::backup_session::Phase::Succeeded;
    wait_session_ends(client, ns, name, succeeded, timeout).await
}

/// The phase of a session kind ([`stash_crds::backup_session::Phase`] of a BackupSession,
/// [`stash_crds::restore_session::Phase`] of a RestoreSession): what the waits below are generic
/// over.
pub trait SessionPhase: stash_machines::Lifecycle {
    /// The session kind.
    type Session: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize
        + Send
        + Sync
        + 'static;
    /// The session's `status.phase`.
    fn of(session: &Self::Session) -> Option<Self>;
}

impl SessionPhase for stash_crds::backup_session::Phase {
    type Session = stash_crds::BackupSession;
    fn of(session: &Self::Session) -> Option<Self> {
        session.status.as_ref()?.phase
    }
}

impl SessionPhase for stash_crds::restore_session::Phase {
    type Session = stash_crds::RestoreSession;
    fn of(session: &Self::Session) -> Option<Self> {
        session.status.as_ref()?.phase
    }
}

/// A session's `status`, pretty JSON.
fn status_text<S: serde::Serialize>(session: &S) -> String {
    serde_json::to_value(session)
        .and_then(|v| serde_json::to_string_pretty(&v["status"]))
        .unwrap_or_else(|e| e.to_string())
}

/// The last `n` lines of [`pod_logs`] of every pod in `ns`.
fn pod_logs_tail(ns: &str, n: usize) -> String {
    let logs = pod_logs(ns, "");
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Wait (≤ `timeout`) until session `name` in `ns` (a BackupSession or a RestoreSession, as
/// `P` says) is in a terminal phase; return it. On a timeout, panic with what a person would
/// look at: the session's status, then the last pod log lines of the namespace.
pub async fn wait_terminal<P: SessionPhase>(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> P::Session {
    let api = Api::<P::Session>::namespaced(client.clone(), ns);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = api.get(name).await
            && P::of(&s).is_some_and(P::is_terminal)
        {
            return s;
        }
        if Instant::now() > deadline {
            let status = api
                .get(name)
                .await
                .map(|s| status_text(&s))
                .unwrap_or_else(|e| e.to_string());
            panic!(
                "timed out after {timeout:?} waiting for {} {name} to finish\nstatus: {status}\nlast pod log lines of {ns}:\n{}",
                P::NAME,
                pod_logs_tail(ns, 150)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// [`wait_terminal`] for BackupSession `name` (`Succeeded`, `Failed`, `Skipped`, `Unknown`).
pub async fn wait_session_terminal(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> stash_crds::BackupSession {
    wait_terminal::<stash_crds::backup_session::Phase>(client, ns, name, timeout).await
}

/// Wait (≤ `timeout`) until session `name` in `ns` is terminal ([`wait_terminal`]) and assert
/// that it ended `want` (a BackupSession's phase or a RestoreSession's: the session kind
/// follows); return it. A session that ended otherwise gets the operator's logs and the pod
/// logs of the namespace printed before the assertion fails.
pub async fn wait_session_ends<P: SessionPhase>(
    client: &Client,
    ns: &str,
    name: &str,
    want: P,
    timeout: Duration,
) -> P::Session {
    let s = wait_terminal::<P>(client, ns, name, timeout).await;
    let phase = P::of(&s);
    if phase != Some(want) {
        dump_logs(env().await.cp);
        eprintln!("pod logs of {ns}:\n{}", pod_logs(ns, ""));
    }
    assert_eq!(
        phase,
        Some(want),
        "{} {name} ended {phase:?}: {}",
        P::NAME,
        status_text(&s)
    );
    s
}

/// Wait (≤ `timeout`) for a BackupSession of configuration `bc` that its schedule created
/// (named `<bc>-<unix seconds>`) and that `Succeeded`, created after `after` when given; the
/// oldest such.
pub async fn wait_scheduled_success(
    client: &Client,
    ns: &str,
    bc: &str,
    after: Option<jiff::Timestamp>,
    timeout: Duration,
) -> stash_crds::BackupSession {
    use stash_crds::backup_session::Phase;
    let api = Api::<stash_crds::BackupSession>::namespaced(client.clone(), ns);
    let what = match after {
        Some(t) => format!("a scheduled BackupSession of {bc} created after {t} to succeed"),
        None => format!("a scheduled BackupSession of {bc} to succeed"),
    };
    eventually(&what, timeout, || {
        let api = api.clone();
        async move {
            let mut ok: Vec<stash_crds::BackupSession> = api
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|s| {
                    s.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(&format!("{bc}-")))
                        && s.spec
                            .backup_configuration
                            .as_ref()
                            .is_some_and(|c| c.name == bc)
                        && Phase::of(s) == Some(Phase::Succeeded)
                        && after.is_none_or(|after| {
                            s.metadata
                                .creation_timestamp
                                .as_ref()
                                .is_some_and(|t| t.0 > after)
                        })
                })
                .collect();
            ok.sort_by_key(|s| s.metadata.creation_timestamp.clone());
            ok.into_iter().next()
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
                              "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "3600"],
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
    backup_configuration(
        &format!("{workload}-backup"),
        serde_json::json!({
            "repository": {"name": repo},
            "schedule": schedule,
            "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload},
                       "directories": ["/source/data"],
                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}
        }),
        extra,
    )
}

/// A job-model BackupConfiguration `name` of PVC `claim` (`/source/data`) into Repository
/// `repo` through the built-in `pvc-backup` Task, never scheduled; `extra` is merged into
/// `spec` (e.g. another Task, a retention policy or a history limit).
pub fn pvc_backup_configuration(
    name: &str,
    claim: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    backup_configuration(
        name,
        serde_json::json!({
            "repository": {"name": "repo"},
            "schedule": "0 0 1 1 *",
            "task": {"name": "pvc-backup"},
            "target": {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": claim},
                       "directories": ["/source/data"],
                       "volumeMounts": [{"name": "target-volume", "mountPath": "/source/data"}]}
        }),
        extra,
    )
}

/// BackupConfiguration `name` with `spec`, the top-level fields of `extra` put over it.
fn backup_configuration(
    name: &str,
    mut spec: serde_json::Value,
    extra: serde_json::Value,
) -> serde_json::Value {
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
        "metadata": {"name": name},
        "spec": spec
    })
}

/// A StatefulSet `name` of `replicas` busybox pods (label `app: <name>`, started in parallel),
/// each with its own PVC `data-<name>-<ordinal>` (from the claim template `data`) at
/// `/source/data`.
pub fn statefulset_with_claims(name: &str, replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
        "spec": {"replicas": replicas, "serviceName": name, "podManagementPolicy": "Parallel",
                 "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": name, "image": "busybox", "command": ["sleep", "3600"],
                                                       "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                                           "spec": {"accessModes": ["ReadWriteOnce"],
                                                    "resources": {"requests": {"storage": "1Gi"}}}}]}
    })
}

/// Apply BackupConfiguration `bc` and wait (≤ 60 s) for the CronJob that triggers its
/// sessions; return the CronJob.
pub async fn apply_with_trigger(
    client: &Client,
    ns: &str,
    bc: serde_json::Value,
) -> k8s_openapi::api::batch::v1::CronJob {
    let name = bc["metadata"]["name"]
        .as_str()
        .expect("the configuration's name")
        .to_string();
    apply(client, ns, bc).await;
    let cronjobs = Api::<k8s_openapi::api::batch::v1::CronJob>::namespaced(client.clone(), ns);
    eventually("the trigger CronJob", Duration::from_secs(60), || {
        let (c, name) = (cronjobs.clone(), name.clone());
        async move { c.get_opt(&name).await.ok().flatten() }
    })
    .await
}

/// Run BackupConfiguration `bc`'s trigger CronJob now, as Job `job` (`kubectl create job
/// --from=cronjob/<bc>`), and wait (≤ 180 s) until it is Complete or Failed; its status.
pub async fn run_trigger_job(
    client: &Client,
    ns: &str,
    bc: &str,
    job: &str,
) -> k8s_openapi::api::batch::v1::JobStatus {
    let out = env()
        .await
        .cp
        .kubectl()
        .expect("kubectl")
        .args([
            "create",
            "job",
            &format!("--from=cronjob/{bc}"),
            job,
            "-n",
            ns,
        ])
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl create job: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), ns);
    eventually(
        &format!("the trigger Job {job} to finish"),
        Duration::from_secs(180),
        || {
            let jobs = jobs.clone();
            async move {
                let st = jobs.get(job).await.ok()?.status?;
                let done =
                    st.conditions.iter().flatten().any(|c| {
                        (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                    });
                done.then_some(st)
            }
        },
    )
    .await
}

/// A workload the operator injects its agents into, and how many pods it runs.
#[derive(Clone, Copy, Debug)]
pub enum Workload<'a> {
    /// Deployment `name` of `replicas` pods.
    Deployment(&'a str, i32),
    /// StatefulSet `name` of `replicas` pods.
    StatefulSet(&'a str, i32),
    /// DaemonSet `name` (one pod: the cluster has one node).
    DaemonSet(&'a str),
}

/// What the operator has injected into a workload's pod template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// None of its agents.
    Nothing,
    /// The `stash` sidecar (and no `stash-init` restore init-container).
    Sidecar,
}

impl Workload<'_> {
    /// The pod template of the workload in `ns`, and whether its rollout is complete: the
    /// controller has seen the latest spec, and every pod is updated and ready.
    async fn rollout(
        self,
        client: &Client,
        ns: &str,
    ) -> Option<(k8s_openapi::api::core::v1::PodSpec, bool)> {
        use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
        match self {
            Workload::Deployment(name, n) => {
                let d = Api::<Deployment>::namespaced(client.clone(), ns)
                    .get(name)
                    .await
                    .ok()?;
                let st = d.status?;
                let done = st.observed_generation == d.metadata.generation
                    && st.replicas == Some(n)
                    && st.updated_replicas == Some(n)
                    && st.ready_replicas == Some(n);
                Some((d.spec?.template.spec?, done))
            }
            Workload::StatefulSet(name, n) => {
                let s = Api::<StatefulSet>::namespaced(client.clone(), ns)
                    .get(name)
                    .await
                    .ok()?;
                let st = s.status?;
                let done = st.observed_generation == s.metadata.generation
                    && st.update_revision.is_some()
                    && st.update_revision == st.current_revision
                    && st.updated_replicas == Some(n)
                    && st.ready_replicas == Some(n);
                Some((s.spec?.template.spec?, done))
            }
            Workload::DaemonSet(name) => {
                let d = Api::<DaemonSet>::namespaced(client.clone(), ns)
                    .get(name)
                    .await
                    .ok()?;
                let st = d.status?;
                let done = st.observed_generation == d.metadata.generation
                    && st.updated_number_scheduled == Some(1)
                    && st.number_ready == 1
                    && st.number_available == Some(1);
                Some((d.spec?.template.spec?, done))
            }
        }
    }
}

/// Wait (≤ `timeout`) until `workload` in `ns` has rolled out a pod template with what
/// `injected` says (never the `stash-init` restore init-container): the controller has seen
/// the latest spec and every pod is updated and ready.
pub async fn wait_rolled_out(
    client: &Client,
    ns: &str,
    workload: Workload<'_>,
    injected: Injected,
    timeout: Duration,
) {
    eventually(
        &format!("{workload:?} rolled out with {injected:?} injected"),
        timeout,
        || async move {
            let (pod, done) = workload.rollout(client, ns).await?;
            let sidecar = pod.containers.iter().any(|c| c.name == "stash");
            let init = pod
                .init_containers
                .iter()
                .flatten()
                .any(|c| c.name == "stash-init");
            (done && sidecar == (injected == Injected::Sidecar) && !init).then_some(())
        },
    )
    .await;
}

/// [`wait_rolled_out`] of Deployment `name` (one pod) with the `stash` sidecar.
pub async fn wait_sidecar_ready(client: &Client, ns: &str, name: &str, timeout: Duration) {
    wait_rolled_out(
        client,
        ns,
        Workload::Deployment(name, 1),
        Injected::Sidecar,
        timeout,
    )
    .await;
}

/// No Pod of `ns` carries label `selector` any more (≤ 60 s): the short-lived Pods stash-rs runs
/// (reader, unlock) are deleted once read.
pub async fn no_pods_left(client: &Client, ns: &str, selector: &str) {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    eventually(
        &format!("no Pod {selector} left in {ns}"),
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            async move {
                pods.list(&ListParams::default().labels(selector))
                    .await
                    .ok()?
                    .items
                    .is_empty()
                    .then_some(())
            }
        },
    )
    .await;
}

/// The live pods (not being deleted) in `ns` whose labels match `selector`.
pub async fn live_pods(client: &Client, ns: &str, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Wait (≤ `timeout`) for a live pod in `ns` matching `selector` that is Ready and has a
/// container or an init-container named `container`; return it.
pub async fn wait_ready_pod_with(
    client: &Client,
    ns: &str,
    selector: &str,
    container: &str,
    timeout: Duration,
) -> Pod {
    eventually(
        &format!("a Ready pod {selector} in {ns} with container {container}"),
        timeout,
        || async move {
            live_pods(client, ns, selector).await.into_iter().find(|p| {
                let has = p.spec.as_ref().is_some_and(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                        .any(|c| c.name == container)
                });
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                has && ready
            })
        },
    )
    .await
}

/// The `data` volume (an emptyDir, which the application fills itself) of the Ready pod `selector`
/// that has container or init-container `agent`, as the node holds it, once the application has
/// written its `README` (last).
pub async fn app_volume(
    cp: &ControlPlane,
    client: &Client,
    ns: &str,
    selector: &str,
    agent: &str,
) -> PathBuf {
    let pod = wait_ready_pod_with(client, ns, selector, agent, Duration::from_secs(180)).await;
    // The kubelet's root directory is `kubelet` in the cluster's state directory.
    let dir = cp
        .layout
        .state
        .join("kubelet/pods")
        .join(pod.metadata.uid.as_deref().expect("uid"))
        .join("volumes/kubernetes.io~empty-dir/data");
    eventually("the application's data", Duration::from_secs(60), || {
        let readme = dir.join("README");
        async move { readme.exists().then_some(()) }
    })
    .await;
    dir
}

/// Wait (≤ `timeout`) until something accepts TCP connections on `NODE_IP:port`.
pub async fn wait_port(port: u16, timeout: Duration) {
    eventually(
        &format!("a server on {NODE_IP}:{port}"),
        timeout,
        || async move {
            tokio::net::TcpStream::connect((NODE_IP, port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

/// A port on the node address nothing listens on.
pub async fn closed_port() -> u16 {
    env().await.cp.cluster_port()
}

/// Every file under `dir` with its bytes' sha256 (to prove a repository was not touched).
pub fn tree_digest(dir: &Path) -> BTreeMap<String, String> {
    checksums(dir)
}

/// A corpus manifest's expected refusal: its first line, `# expect: <field path>: <message>`.
pub fn corpus_expectation(text: &str) -> Option<String> {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect: "))
        .map(|e| e.trim().to_string())
}

/// Whether a `kubectl apply` of an invalid corpus manifest was refused as the corpus says:
/// refused, with the expected message, by the validating webhook or by the CRD schema (29
/// rules live in the schema since issue 24), naming the field. `Err` says what was wrong.
pub fn judge_refusal(expect: &str, ok: bool, stdout: &str, stderr: &str) -> Result<(), String> {
    let field = expect.split_once(": ").map_or("", |(f, _)| f);
    if ok {
        Err(format!("admitted ({})", stdout.trim()))
    } else if !stderr.contains(expect) {
        Err(format!(
            "rejected, but without {expect:?}:\n{}",
            stderr.trim()
        ))
    } else if !stderr.contains("admission webhook") && !stderr.contains("is invalid: ") {
        Err(format!(
            "rejected, but neither by the webhook nor by the CRD schema:\n{}",
            stderr.trim()
        ))
    } else if !stderr.contains(&format!("{field}: ")) {
        Err(format!(
            "rejected without naming {field}:\n{}",
            stderr.trim()
        ))
    } else {
        Ok(())
    }
}

/// Sets the immutable attribute on every file of a directory while alive (a file restic cannot
/// delete, whoever it runs as) and always clears it again, on success or panic.
pub struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    pub fn files_of(dir: &std::path::Path) -> Self {
        let files: Vec<_> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert!(!files.is_empty(), "no files in {}", dir.display());
        let set = Immutable(files);
        let status = std::process::Command::new("chattr")
            .arg("+i")
            .args(&set.0)
            .status()
            .expect("chattr");
        assert!(status.success(), "chattr +i");
        set
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .args(&self.0)
            .status();
    }
}

/// The `RetentionPolicyApplied` condition of session `s`'s host (its agent writes it once the
/// follow-up steps ran).
pub fn retention_condition_of(
    s: &stash_crds::BackupSession,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.status
        .iter()
        .flat_map(|st| st.stats.iter())
        .flat_map(|h| h.conditions.iter())
        .find(|c| c.type_ == "RetentionPolicyApplied")
        .cloned()
}

/// `c` says that retention worked.
pub fn assert_retention_applied(c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition) {
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "RetentionPolicyApplied"),
        "{c:?}"
    );
}

/// `c`, session `session`'s retention condition, says that `forget` failed after the snapshot,
/// and the host published it as a `HostBackupFollowUpFailed` Warning (≤ 60 s).
pub async fn assert_retention_failed(
    client: &Client,
    ns: &str,
    session: &str,
    c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) {
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "RetentionPolicyFailed"),
        "{c:?}"
    );
    assert!(
        c.message.starts_with("forget failed after the snapshot"),
        "{}",
        c.message
    );
    let event = wait_event(
        client,
        ns,
        session,
        "HostBackupFollowUpFailed",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(event.type_, "Warning");
    assert!(event.note.starts_with("forget failed"), "{}", event.note);
}

/// The events `reason` about object `name` in `ns` (events.k8s.io), oldest first: each one's
/// `eventTime` and note. Panics when there is none.
pub async fn event_times(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> Vec<(jiff::Timestamp, String)> {
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("events");
    let mut out: Vec<(jiff::Timestamp, String)> = events
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .filter_map(|e| Some((e.event_time?.0, e.note.unwrap_or_default())))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no {reason} event about {name} in {ns}");
    out
}

/// BackupConfiguration manifest `bc` as a later Stash user writes it: `target.paths` instead
/// of `target.directories`, and `target.exclude: ["*.tmp"]`.
pub fn in_later_spelling_excluding_tmp(bc: &mut serde_json::Value) {
    let target = &mut bc["spec"]["target"];
    target["paths"] = target["directories"].take();
    if let Some(t) = target.as_object_mut() {
        t.remove("directories");
    }
    target["exclude"] = serde_json::json!(["*.tmp"]);
}

/// The files of the include/exclude tests (later Stash's `target.exclude` and
/// `rules[].include`): one kept and restored, one excluded from the backup, one backed up
/// but not included in the restore. Written as a user writes them (this process, root).
pub fn write_filter_files(dir: &Path) {
    for (file, body) in [
        ("keep/a.txt", "kept and restored"),
        ("keep/scratch.tmp", "excluded from the backup"),
        ("other/c.txt", "backed up, not included in the restore"),
    ] {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(&path, body).expect("write");
    }
}

/// restic's own view of `snapshot` of [`write_filter_files`]' directory `/source/data`
/// backed up with `exclude: ["*.tmp"]`: both other files, no `.tmp`.
pub fn assert_snapshot_excludes_tmp(repo: &str, password: &str, snapshot: &str) {
    let listed = restic(repo, password)
        .args(["ls", "--json", snapshot])
        .output()
        .expect("restic ls");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let paths: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["path"].as_str().map(String::from))
        .collect();
    for want in ["/source/data/keep/a.txt", "/source/data/other/c.txt"] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }
    assert!(
        !paths.iter().any(|p| p.ends_with(".tmp")),
        "an excluded file is in the snapshot: {paths:?}"
    );
}

/// `dir` after a restore of that snapshot with `include: ["/source/data/keep"]`: the included
/// file's bytes, nothing else.
pub fn assert_restored_only_included(dir: &Path) {
    assert_eq!(
        std::fs::read_to_string(dir.join("keep/a.txt")).expect("restored file"),
        "kept and restored"
    );
    assert!(
        !dir.join("other/c.txt").exists(),
        "a file no rule includes was restored"
    );
    assert!(
        !dir.join("keep/scratch.tmp").exists(),
        "an excluded file came back"
    );
}

/// `target.args` of a backup in the args tests: restic leaves out files over 4 KiB.
pub const BACKUP_ARGS: [&str; 1] = ["--exclude-larger-than=4K"];
/// `target.args` of a restore in the args tests: restic restores one more file,
/// case-insensitively (a flag of restic's own, not a rule's field).
pub const RESTORE_ARGS: [&str; 1] = ["--iinclude=OTHER/B.LOG"];

/// Beside [`write_filter_files`]: a 16 KiB file that [`BACKUP_ARGS`] leave out and a small one
/// that [`RESTORE_ARGS`] bring back.
pub fn write_args_files(dir: &Path) {
    std::fs::write(dir.join("keep/big.bin"), vec![7u8; 16 * 1024]).expect("big file");
    std::fs::write(
        dir.join("other/b.log"),
        "backed up, restored by the restore's args",
    )
    .expect("log file");
}

/// restic's own view of `snapshot`: [`BACKUP_ARGS`] left out the big file only.
pub fn assert_snapshot_honours_backup_args(repo: &str, password: &str, snapshot: &str) {
    let files: Vec<String> = restic_ls_of(restic(repo, password), snapshot)
        .iter()
        .filter_map(|n| n["path"].as_str().map(String::from))
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("/other/b.log"))
            && !files.iter().any(|f| f.ends_with("/keep/big.bin")),
        "--exclude-larger-than=4K left out only the 16 KiB file: {files:?}"
    );
}

/// `dir` after a restore with [`RESTORE_ARGS`]: the file they include is back.
pub fn assert_restore_honoured_args(dir: &Path) {
    assert_eq!(
        std::fs::read_to_string(dir.join("other/b.log")).expect("--iinclude=OTHER/B.LOG restored"),
        "backed up, restored by the restore's args"
    );
}
