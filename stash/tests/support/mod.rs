//! Shared end-to-end support: the real single-node cluster (`testenv start`) with stash-rs
//! installed from the committed manifest (`scripts/test.sh` does both), pods from the real
//! image, hostPath PersistentVolumes the tests can look into, and test servers inside the
//! cluster's network namespace.
#![allow(dead_code)]

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
    apply(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rest-secret"},
            "stringData": {"RESTIC_PASSWORD": password}
        }),
    )
    .await;
    let url = format!("http://{NODE_IP}:{port}/app");
    apply(client, ns, serde_json::json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"},
        "spec": {"backend": {"storageSecretName": "rest-secret", "rest": {"url": url}}}
    }))
    .await;
    url
}

/// The documents of upstream Stash v0.8.3's example `file`
/// (`../shared/conformance/stash-v0.8.3/examples/`), moved from namespace `demo` to `ns`.
pub fn upstream(file: &str, ns: &str) -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/stash-v0.8.3/examples")
        .join(file);
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

/// Wait up to `timeout` until RestoreSession `ns/name` is Succeeded, Failed or Unknown; the
/// operator's logs are dumped when it is not Succeeded.
pub async fn wait_restore_terminal(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> stash_crds::RestoreSession {
    use stash_crds::restore_session::Phase;
    let api = Api::<stash_crds::RestoreSession>::namespaced(client.clone(), ns);
    let rs = eventually(&format!("RestoreSession {name} to finish"), timeout, || {
        let api = api.clone();
        async move {
            let s = api.get(name).await.ok()?;
            let p = s.status.as_ref()?.phase?;
            matches!(p, Phase::Succeeded | Phase::Failed | Phase::Unknown).then_some(s)
        }
    })
    .await;
    if rs.status.as_ref().and_then(|s| s.phase) != Some(Phase::Succeeded) {
        dump_logs(env().await.cp);
    }
    rs
}

/// RestoreSession `name` of Repository `repo` into Deployment `deployment` (its volume `data`
/// at `/source/data`, rule `/source/data`), waited for until it ends (180 s at most).
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
    wait_restore_terminal(client, ns, name, Duration::from_secs(180)).await
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
    apply(
        client,
        ns,
        deployment_backup_configuration("app", "repo", "@yearly", extra),
    )
    .await;
    wait_sidecar_ready(client, ns, "app", Duration::from_secs(180)).await;
    source
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
    apply(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "local-secret"},
            "stringData": {"RESTIC_PASSWORD": password}
        }),
    )
    .await;
    apply(client, ns, serde_json::json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"},
        "spec": {"backend": {"storageSecretName": "local-secret",
                             "local": {"mountPath": "/safe/data", "hostPath": {"path": dir.to_string_lossy()}}}}
    }))
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
    let api = Api::<stash_crds::BackupSession>::namespaced(client.clone(), ns);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = api.get(name).await
            && s.status
                .as_ref()
                .and_then(|st| st.phase)
                .is_some_and(|p| p.is_terminal())
        {
            return s;
        }
        if Instant::now() > deadline {
            // What a person would look at: the session, then every pod's log in the namespace.
            let status = api
                .get(name)
                .await
                .map(|s| serde_json::to_string_pretty(&s.status).unwrap_or_default())
                .unwrap_or_else(|e| e.to_string());
            let logs = pod_logs(ns, "");
            let lines: Vec<&str> = logs.lines().collect();
            let tail = lines[lines.len().saturating_sub(150)..].join("\n");
            panic!(
                "timed out after {timeout:?} waiting for BackupSession {name} to finish\nstatus: {status}\nlast pod log lines of {ns}:\n{tail}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
