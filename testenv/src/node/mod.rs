//! A node agent standing in for the kubelet.
//!
//! It registers Node `testenv-node` (Ready, no taints), binds every unscheduled pod to it
//! (there is no kube-scheduler), and for each pod on it:
//!
//! - materialises the volumes as host directories: emptyDir and the Secret, ConfigMap,
//!   downwardAPI and projected volumes under `<root>/pods/<uid>/volumes/<name>`, a
//!   PersistentVolumeClaim as `<root>/pvc/<namespace>/<claimName>` (shared by every pod using
//!   the claim, so a test can put files there and a restore can read them), hostPath as itself;
//! - runs each container whose image is one of "our" images as a local process (the mapped
//!   binary with `command[1..]` and `args`), in its own process group and a private mount
//!   namespace where the volumes are bind-mounted at their mount paths, with a clean
//!   environment resolved like the kubelet does and a bound service-account token, so RBAC
//!   is real; output goes to `<root>/pods/<namespace>_<pod>_<uid>/<container>.log`;
//! - simulates containers of any other image (running and ready; in run-to-completion pods
//!   and as init containers they complete at once with exit code 0);
//! - runs init containers in order (native sidecars keep running), restarts containers by
//!   `restartPolicy` with back-off, and writes `pods/status` as the kubelet does, so the Job,
//!   Deployment, StatefulSet and DaemonSet controllers work;
//! - finishes deleted pods: SIGTERM, SIGKILL after the grace period (at most 10 s), a final
//!   status, then the real `DELETE` with `gracePeriodSeconds=0` and a UID precondition.
//!
//! [`ControlPlane::start_node_agent`] runs the agent inside the test process (on its own thread
//! and runtime); the `node-agent` binary runs it standalone.
use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

use crate::{ControlPlane, Error, Result};

mod env;
mod pod;
mod sys;
mod volumes;

/// The node's name.
pub const NODE_NAME: &str = "testenv-node";
/// The node's (and every pod's) IP: processes share the host network.
pub const POD_IP: &str = "127.0.0.1";
const NODE_CPU: i64 = 1000;
const NODE_MEMORY: i64 = 1 << 40;
const NODE_STORAGE: i64 = 1 << 40;
const KUBELET_VERSION: &str = "v1.36.3";

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct Options {
    /// Credentials for the API server (an admin: the agent binds pods and mints tokens).
    pub config: Config,
    /// The Node to register.
    pub node_name: String,
    /// Where volumes, PVC directories and pod logs live.
    pub root: PathBuf,
    /// "Our" images: image → local binary run for containers of that image.
    pub images: Vec<(String, PathBuf)>,
    /// Prepended to `PATH` of every process (e.g. the directory holding restic).
    pub path_dirs: Vec<PathBuf>,
    /// The API server URL handed to pods (`KUBERNETES_SERVICE_HOST`/`_PORT`); default: the
    /// config's cluster URL.
    pub api_server: Option<String>,
    /// PEM of the CA that signed the API server's certificate (`ca.crt` for pods).
    pub ca_pem: String,
    /// Log file; stderr when `None`.
    pub log: Option<PathBuf>,
}

/// State shared by the dispatcher and the pod tasks.
pub(crate) struct Ctx {
    config: Config,
    /// Created inside the agent's runtime (a kube client is bound to the runtime it was made in).
    client: std::sync::OnceLock<Client>,
    node: String,
    root: PathBuf,
    images: RwLock<HashMap<String, PathBuf>>,
    path_dirs: RwLock<Vec<PathBuf>>,
    api_host: String,
    api_port: u16,
    ca_pem: String,
    /// Process groups of running pod processes.
    live: sys::Live,
    log: Mutex<Box<dyn Write + Send>>,
    /// Set when the agent stops: no process is started any more.
    stopped: std::sync::atomic::AtomicBool,
    /// Wakes the in-process agent's `run` to stop it.
    stop: tokio::sync::Notify,
}

impl Ctx {
    fn client(&self) -> Client {
        self.client.get().expect("the agent's client is set before any task runs").clone()
    }

    fn log(&self, msg: impl std::fmt::Display) {
        let now = jiff::Timestamp::now().strftime("%H:%M:%S%.3f");
        let mut w = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(w, "{now} {msg}");
        let _ = w.flush();
    }
}

/// A running agent: lets its owner kill every pod process.
#[derive(Clone)]
pub struct Handle {
    ctx: Arc<Ctx>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("node", &self.ctx.node).field("root", &self.ctx.root).finish()
    }
}

impl Handle {
    /// Build the agent's shared state (creates `root`).
    pub fn new(opts: Options) -> Result<Self> {
        std::fs::create_dir_all(&opts.root).map_err(|e| Error::Io(format!("mkdir {}", opts.root.display()), e))?;
        let url: http::Uri = match &opts.api_server {
            Some(s) => s.parse().map_err(|e| Error::Kubeconfig(format!("--api-server {s}: {e}")))?,
            None => opts.config.cluster_url.clone(),
        };
        let api_host = url.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']).to_string();
        let api_port = url.port_u16().unwrap_or(443);
        let log: Box<dyn Write + Send> = match &opts.log {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| Error::Io(format!("open {}", p.display()), e))?,
            ),
            None => Box::new(std::io::stderr()),
        };
        Ok(Self {
            ctx: Arc::new(Ctx {
                config: opts.config,
                client: std::sync::OnceLock::new(),
                node: opts.node_name,
                root: opts.root,
                images: RwLock::new(opts.images.into_iter().collect()),
                path_dirs: RwLock::new(opts.path_dirs),
                api_host,
                api_port,
                ca_pem: opts.ca_pem,
                live: Arc::new(Mutex::new(HashSet::new())),
                log: Mutex::new(log),
                stopped: std::sync::atomic::AtomicBool::new(false),
                stop: tokio::sync::Notify::new(),
            }),
        })
    }

    /// Register the node and serve pods until `stop` resolves; then kill every pod process.
    /// Must run inside a tokio runtime that outlives the agent.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) -> Result<()> {
        let ctx = self.ctx.clone();
        if ctx.client.get().is_none() {
            let _ = ctx.client.set(Client::try_from(ctx.config.clone())?);
        }
        ctx.log(format_args!("node agent starting: node {} root {}", ctx.node, ctx.root.display()));
        register_node(&ctx).await?;
        let heartbeat = tokio::spawn(heartbeat(ctx.clone()));
        let pods = tokio::spawn(watch_pods(ctx.clone()));
        tokio::select! {
            _ = stop => {}
            _ = ctx.stop.notified() => {}
        }
        ctx.log("node agent stopping");
        heartbeat.abort();
        pods.abort();
        self.kill_all();
        Ok(())
    }

    /// Stop: no new processes, every pod process killed (SIGTERM, 2 s, SIGKILL), and a
    /// running [`Handle::run`] returns. Synchronous; idempotent.
    pub fn kill_all(&self) {
        self.ctx.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        self.ctx.stop.notify_one();
        sys::kill_all(&self.ctx.live, Duration::from_secs(2));
        // With every pod process gone, no mount point on the host is in use: remove the ones
        // this agent created, so nothing is left behind on the host.
        volumes::remove_created_mount_points();
    }

    /// Add image mappings and PATH entries for pods started from now on.
    pub fn add(&self, images: &[(String, PathBuf)], path_dirs: &[PathBuf]) {
        let mut m = self.ctx.images.write().unwrap_or_else(|e| e.into_inner());
        for (i, b) in images {
            m.insert(i.clone(), b.clone());
        }
        let mut p = self.ctx.path_dirs.write().unwrap_or_else(|e| e.into_inner());
        for d in path_dirs {
            if !p.contains(d) {
                p.push(d.clone());
            }
        }
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

async fn register_node(ctx: &Ctx) -> Result<()> {
    let api = Api::<Node>::all(ctx.client());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": ctx.node,
            "labels": {
                "kubernetes.io/hostname": ctx.node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch(),
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": arch(),
                "node.kubernetes.io/instance-type": "testenv",
            },
        },
        "spec": {},
    }))
    .map_err(|e| Error::Kubeconfig(format!("node object: {e}")))?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    // The TaintNodesByCondition admission plugin gives a new Node `node.kubernetes.io/not-ready`;
    // the node lifecycle controller (not running here) would lift it once Ready. Without this,
    // the DaemonSet controller would never place pods on the node.
    api.patch(&ctx.node, &PatchParams::default(), &Patch::Merge(&json!({ "spec": { "taints": null } }))).await?;
    patch_node_status(ctx, true).await
}

async fn patch_node_status(ctx: &Ctx, full: bool) -> Result<()> {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let cond = |t: &str, status: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let api = Api::<Node>::all(ctx.client());
    // Keep each condition's lastTransitionTime: only the heartbeat moves.
    let existing = api.get_status(&ctx.node).await?;
    let mut conditions = vec![
        cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        cond("NetworkUnavailable", "False", "RouteCreated", "RouteController created a route"),
    ];
    for c in &mut conditions {
        if let Some(old) = existing.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| {
            cs.iter().find(|o| {
                Some(o.type_.as_str()) == c["type"].as_str() && Some(o.status.as_str()) == c["status"].as_str()
            })
        }) && let Some(t) = &old.last_transition_time
        {
            c["lastTransitionTime"] = json!(t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
    }
    let mut status = json!({ "conditions": conditions, "phase": "Running" });
    if full {
        let resources = json!({
            "cpu": NODE_CPU.to_string(),
            "memory": "1Ti",
            "ephemeral-storage": "1Ti",
            "pods": "1000000",
        });
        status["capacity"] = resources.clone();
        status["allocatable"] = resources;
        status["addresses"] = json!([
            {"type": "InternalIP", "address": POD_IP},
            {"type": "Hostname", "address": ctx.node},
        ]);
        status["nodeInfo"] = json!({
            "machineID": "testenv",
            "systemUUID": "testenv",
            "bootID": "testenv",
            "kernelVersion": sys::kernel_release(),
            "osImage": "stash-testenv node agent",
            "containerRuntimeVersion": "testenv://0.1.0",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        });
        status["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": 0}});
    }
    api.patch_status(&ctx.node, &PatchParams::default(), &Patch::Merge(&json!({ "status": status }))).await?;
    Ok(())
}

async fn heartbeat(ctx: Arc<Ctx>) {
    loop {
        tokio::time::sleep(Duration::from_secs(20)).await;
        if let Err(e) = patch_node_status(&ctx, false).await {
            ctx.log(format_args!("node heartbeat failed: {e}"));
            // The node may have been deleted: register again.
            if let Err(e) = register_node(&ctx).await {
                ctx.log(format_args!("node re-registration failed: {e}"));
            }
        }
    }
}

fn scheduled_by_default(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    spec.and_then(|s| s.scheduler_name.as_deref()).is_none_or(|s| s.is_empty() || s == "default-scheduler")
        && spec.and_then(|s| s.scheduling_gates.as_ref()).is_none_or(|g| g.is_empty())
}

async fn bind(ctx: Arc<Ctx>, p: Pod, binding: Arc<Mutex<HashSet<String>>>) {
    let (ns, name, uid) = (p.namespace().unwrap_or_default(), p.name_any(), p.uid().unwrap_or_default());
    let api = Api::<Pod>::namespaced(ctx.client(), &ns);
    let body = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": { "name": name, "uid": uid },
        "target": { "apiVersion": "v1", "kind": "Node", "name": ctx.node },
    });
    for attempt in 0..5u32 {
        match api.create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &body).await {
            Ok(_) => {
                ctx.log(format_args!("pod {ns}/{name}: bound to {}", ctx.node));
                break;
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => break,
            Err(e) => {
                ctx.log(format_args!("pod {ns}/{name}: binding failed: {e}"));
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    binding.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
}

async fn watch_pods(ctx: Arc<Ctx>) {
    let api = Api::<Pod>::all(ctx.client());
    // Under the client's 60 s read timeout, so quiet watches end cleanly instead of erroring.
    let cfg = watcher::Config::default().timeout(50);
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut workers: pod::Workers = HashMap::new();
    let binding: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(ev) = stream.next().await {
        let p = match ev {
            Ok(watcher::Event::Init) => {
                seen.clear();
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                pod::retain_seen(&mut workers, &seen);
                continue;
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(tx) = p.uid().and_then(|u| workers.remove(&u)) {
                    let _ = tx.send(pod::Msg::Gone);
                }
                continue;
            }
            Ok(watcher::Event::InitApply(p)) => {
                seen.extend(p.uid());
                p
            }
            Ok(watcher::Event::Apply(p)) => p,
            Err(e) => {
                ctx.log(format_args!("pod watch: {e}"));
                continue;
            }
        };
        let Some(uid) = p.uid() else { continue };
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        if node == ctx.node {
            if let Some(tx) = workers.get(&uid)
                && tx.send(pod::Msg::Update(Box::new(p.clone()))).is_ok()
            {
                continue;
            }
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            workers.insert(uid, tx);
            let w = pod::Worker::new(ctx.clone(), p);
            tokio::spawn(w.run(rx));
        } else if node.is_empty()
            && p.metadata.deletion_timestamp.is_none()
            && scheduled_by_default(&p)
            && binding.lock().unwrap_or_else(|e| e.into_inner()).insert(uid)
        {
            tokio::spawn(bind(ctx.clone(), p, binding.clone()));
        }
    }
}

/// In-process agents, one per control plane directory.
static AGENTS: Mutex<Vec<(PathBuf, Handle)>> = Mutex::new(Vec::new());

/// Stop the in-process agent of the control plane in `dir`, if any (kills its pods'
/// processes). Called first thing by [`ControlPlane::shutdown`].
pub(crate) fn stop_agent(dir: &Path) {
    let handle = {
        let mut agents = AGENTS.lock().unwrap_or_else(|e| e.into_inner());
        let pos = agents.iter().position(|(d, _)| d == dir);
        pos.map(|i| agents.remove(i).1)
    };
    if let Some(h) = handle {
        h.ctx.log("control plane shutting down: killing pod processes");
        h.kill_all();
    }
}

impl ControlPlane {
    /// Where the node agent keeps volumes and logs: `<dir>/node`.
    ///
    /// - a PVC's directory: `<node_root>/pvc/<namespace>/<claimName>` (see [`Self::pvc_dir`]);
    /// - a pod's logs: `<node_root>/pods/<namespace>_<pod>_<uid>/<container>.log`;
    /// - a pod's other volumes: `<node_root>/pods/<uid>/volumes/<volume>` (removed with the pod).
    pub fn node_root(&self) -> PathBuf {
        self.dir.join("node")
    }

    /// The host directory backing PersistentVolumeClaim `claim` in `namespace`.
    pub fn pvc_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        volumes::pvc_dir(&self.node_root(), namespace, claim)
    }

    /// Every container log of pods named `pod` in `namespace` (all uids), for failure output.
    pub fn pod_logs(&self, namespace: &str, pod: &str) -> String {
        let prefix = format!("{namespace}_{pod}_");
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.node_root().join("pods")) else { return out };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        for d in dirs {
            let Ok(files) = std::fs::read_dir(&d) else { continue };
            let mut files: Vec<PathBuf> = files.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                out.push_str(&format!("--- {} ---\n{text}\n", f.display()));
            }
        }
        out
    }

    /// Start the node agent (the kubelet stand-in) for this control plane, inside this
    /// process on its own thread, and wait until Node `testenv-node` is Ready.
    ///
    /// `images` maps image names to local binaries ("our" images, run as processes); every
    /// other image is simulated. `path_dirs` are prepended to `PATH` of pod processes.
    /// Calling it again is cheap: it adds the given images and PATH entries and waits for
    /// readiness. The agent is stopped (pod processes killed by process group) first thing
    /// when the control plane shuts down. Its log is `<dir>/node-agent.log`.
    pub async fn start_node_agent(&self, images: &[(&str, &Path)], path_dirs: &[PathBuf]) -> Result<()> {
        let images: Vec<(String, PathBuf)> = images.iter().map(|(i, p)| (i.to_string(), p.to_path_buf())).collect();
        for (_, bin) in &images {
            if !bin.exists() {
                return Err(Error::Spawn {
                    name: "node-agent".into(),
                    reason: format!("{} does not exist", bin.display()),
                });
            }
        }
        let log = self.dir.join("node-agent.log");
        {
            let mut agents = AGENTS.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, h)) = agents.iter().find(|(d, _)| d == &self.dir) {
                h.add(&images, path_dirs);
            } else {
                let handle = Handle::new(Options {
                    config: self.config.clone(),
                    node_name: NODE_NAME.into(),
                    root: self.node_root(),
                    images,
                    path_dirs: path_dirs.to_vec(),
                    api_server: Some(self.server.clone()),
                    ca_pem: self.pki.serving_ca.cert.clone(),
                    log: Some(log.clone()),
                })?;
                let h = handle.clone();
                std::thread::Builder::new()
                    .name("testenv-node-agent".into())
                    .spawn(move || {
                        let rt = match tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(2)
                            .thread_name("node-agent")
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt,
                            Err(e) => return h.ctx.log(format_args!("node agent runtime: {e}")),
                        };
                        // Runs for the rest of the process; `stop_agent` kills the pods.
                        if let Err(e) = rt.block_on(h.run(std::future::pending())) {
                            h.ctx.log(format_args!("node agent failed: {e}"));
                        }
                    })
                    .map_err(|e| Error::Spawn { name: "node-agent".into(), reason: e.to_string() })?;
                agents.push((self.dir.clone(), handle));
            }
        }
        let nodes = Api::<Node>::all(self.client());
        self.wait_for(&format!("Node {NODE_NAME} Ready"), || {
            let (nodes, log) = (nodes.clone(), log.clone());
            async move {
                let n = nodes.get_opt(NODE_NAME).await.map_err(|e| e.to_string())?;
                let ready = n
                    .and_then(|n| n.status)
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                if ready {
                    Ok(())
                } else {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    Err(format!(
                        "not Ready yet; agent log:\n{}",
                        text.lines().rev().take(10).collect::<Vec<_>>().join("\n")
                    ))
                }
            }
        })
        .await
    }
}
