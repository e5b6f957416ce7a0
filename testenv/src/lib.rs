//! A real single-node Kubernetes cluster for tests and demos.
//!
//! [`cluster`] brings the node up (`testenv start`/`up`, once per machine, under a lock):
//! etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd with runc and
//! the CNI bridge plugins, CoreDNS, the kubelet and kube-proxy, built from Go modules at
//! pinned versions by `testenv/build.sh`, confined to a network namespace of their own.
//! Test processes attach to it with [`shared`]: a [`ControlPlane`] handle with an admin
//! client, `kubectl`, namespaces per test ([`ControlPlane::namespace`]) and test servers run
//! inside the cluster's network namespace ([`ControlPlane::spawn_in_cluster`]), stopped by
//! the process that started them.
//!
//! [`scripted`] is the other end of the scale: a scripted API server behind a [`kube::Client`],
//! for unit tests that check the exact requests a piece of code makes.
//!
//! Nothing here skips: a missing binary or no running cluster is an [`Error`] with the
//! reason.
use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

pub mod bins;
pub mod certs;
pub mod cluster;
pub mod process;
pub mod scripted;

pub use cluster::{NODE_IP, NODE_NAME};
use process::Proc;

/// What can go wrong starting or using the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Go-built binaries are missing or could not be built.
    #[error("control-plane binaries: {0}")]
    Binaries(String),
    /// Generating certificates failed.
    #[error("certificates: {0}")]
    Certs(String),
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A server process could not be started.
    #[error("cannot start {name}: {reason}")]
    Spawn {
        /// Which server.
        name: String,
        /// Why.
        reason: String,
    },
    /// A server did not become ready in time, or exited.
    #[error("{name} did not become ready: {reason}\n--- last lines of {name}'s log ---\n{log}")]
    NotReady {
        /// Which server.
        name: String,
        /// Why.
        reason: String,
        /// The tail of its log.
        log: String,
    },
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// A tool of the environment (`ctr`, …) ran and failed.
    #[error("{0}")]
    Command(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The running cluster, as a test process sees it: the admin identity, the PKI to issue
/// more users, a scratch directory of its own, and the processes it started (stopped by
/// process group at [`ControlPlane::shutdown`]).
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    procs: Mutex<Vec<Proc>>,
    /// The API server's URL, `https://198.18.0.2:6443`.
    pub server: String,
    /// The admin kubeconfig (user `admin`, group `system:masters`).
    pub kubeconfig: PathBuf,
    config: Config,
    /// The cluster's PKI (its CAs can issue more users, e.g. a non-admin for RBAC tests).
    pub pki: certs::Pki,
    /// The cluster's layout (state directory, binaries).
    pub layout: cluster::Layout,
}

impl ControlPlane {
    /// Attach to the cluster running on this machine.
    pub async fn attach() -> Result<Self> {
        let layout = cluster::Layout::new()?;
        let ready = std::fs::read_to_string(layout.ready_file()).map_err(|_| {
            Error::NotReady {
                name: "the cluster".into(),
                reason: format!(
                    "none is running (no {}): start one with `cargo run -p stash-testenv --bin testenv -- start` \
                     (scripts/test.sh and scripts/demo.sh do)",
                    layout.ready_file().display()
                ),
                log: String::new(),
            }
        })?;
        if cluster::up_process(&layout).is_none() {
            return Err(Error::NotReady {
                name: "the cluster".into(),
                reason: format!(
                    "its `testenv up` process ({}) is gone; run `testenv down`, then start it again",
                    ready.trim()
                ),
                log: String::new(),
            });
        }
        let kubeconfig = layout.kubeconfig("admin");
        let config = load_config(&kubeconfig).await?;
        let pki = certs::Pki::load(&layout.pki_dir())?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .tempdir_in(layout.state.join("scratch"))
            .map_err(|e| Error::Io("create scratch dir".into(), e))?
            .keep();
        Ok(Self {
            dir,
            procs: Mutex::new(Vec::new()),
            server: cluster::api_server_url(),
            kubeconfig,
            config,
            pki,
            layout,
        })
    }

    /// A new admin client, bound to the calling tokio runtime.
    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("a client from the admin kubeconfig")
    }

    /// The admin `kube::Config`.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This process's scratch directory on the host (removed at exit). Pods see it through
    /// `hostPath` volumes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A `kubectl` command (the one built with the cluster) using the admin kubeconfig.
    pub fn kubectl(&self) -> Result<std::process::Command> {
        let mut cmd = std::process::Command::new(bins::bin("kubectl")?);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
        Ok(cmd)
    }

    /// Write a kubeconfig for a new user signed by the client CA.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let pair = self.pki.client_ca.client(user, groups)?;
        let path = self.dir.join(format!("{user}.kubeconfig"));
        write_kubeconfig(&path, &self.server, &self.pki.serving_ca.cert, &pair)?;
        Ok(path)
    }

    /// Start a server inside the cluster's network namespace (where pods can reach it on
    /// [`NODE_IP`]), stopped by process group at shutdown.
    pub fn spawn_in_cluster(
        &self,
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<u32> {
        let mut all = vec![
            format!("--net=/run/netns/{}", cluster::NETNS),
            "--".into(),
            bin.display().to_string(),
        ];
        all.extend_from_slice(args);
        let p = Proc::spawn_with_env(name, Path::new("/usr/bin/nsenter"), &all, env, &self.dir)?;
        let pid = p.pid();
        self.adopt(p);
        Ok(pid)
    }

    /// A port on [`NODE_IP`] that nothing listens on now (for a server started with
    /// [`ControlPlane::spawn_in_cluster`]).
    pub fn cluster_port(&self) -> u16 {
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let _ = std::fs::create_dir_all(self.layout.ports_dir());
        loop {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let port = 20_000
                + ((std::process::id() as u16)
                    .wrapping_mul(37)
                    .wrapping_add(n * 7)
                    % 30_000);
            let addr = std::net::SocketAddr::from((
                NODE_IP.parse::<std::net::Ipv4Addr>().expect("ip"),
                port,
            ));
            // Claimed across the test processes (one file each, created only if absent): a
            // port another process chose but whose server does not listen yet would pass the
            // connect check below in both, and one test would talk to the other's server.
            let claimed = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.layout.ports_dir().join(port.to_string()))
                .is_ok();
            if claimed
                && std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
            {
                return port;
            }
        }
    }

    /// Create a namespace `<prefix>-<random>` that is deleted when the guard drops.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        self.ensure_namespace(&name).await?;
        Ok(TestNamespace {
            name,
            config: self.config.clone(),
        })
    }

    /// Create namespace `name` if it does not exist.
    pub async fn ensure_namespace(&self, name: &str) -> Result<()> {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .expect("static namespace");
        match Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Server-side apply `crds` and wait until each is Established and served.
    pub async fn install_crds(&self, crds: &[CustomResourceDefinition]) -> Result<()> {
        let api = Api::<CustomResourceDefinition>::all(self.client());
        let pp = PatchParams::apply("stash-testenv").force();
        for crd in crds {
            api.patch(&crd.name_any(), &pp, &Patch::Apply(crd)).await?;
        }
        for crd in crds {
            let name = crd.name_any();
            let api = api.clone();
            self.wait_for(&format!("CRD {name} Established"), || {
                let (api, name) = (api.clone(), name.clone());
                async move {
                    let c = api.get(&name).await.map_err(|e| e.to_string())?;
                    let established = c
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    if established {
                        Ok(())
                    } else {
                        Err("not yet Established".into())
                    }
                }
            })
            .await?;
        }
        // Discovery lags behind Established for a moment; wait until every group-version lists
        // the resource.
        let client = self.client();
        for crd in crds {
            for v in &crd.spec.versions {
                let gv = format!("/apis/{}/{}", crd.spec.group, v.name);
                let plural = crd.spec.names.plural.clone();
                let client = client.clone();
                self.wait_for(&format!("discovery of {plural} in {gv}"), || {
                    let (client, gv, plural) = (client.clone(), gv.clone(), plural.clone());
                    async move {
                        let req = http::Request::get(&gv)
                            .body(Vec::new())
                            .map_err(|e| e.to_string())?;
                        let text = client.request_text(req).await.map_err(|e| e.to_string())?;
                        if text.contains(&format!("\"name\":\"{plural}\"")) {
                            Ok(())
                        } else {
                            Err("not listed".into())
                        }
                    }
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Poll `probe` for up to 60 s.
    pub async fn wait_for<F, Fut>(&self, what: &str, probe: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), String>>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match probe().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::NotReady {
                        name: what.into(),
                        reason: e,
                        log: String::new(),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Hand a process (an operator, a test server) to the control plane: it is stopped by
    /// process group at shutdown, before the servers started earlier.
    pub fn adopt(&self, p: Proc) {
        self.procs.lock().expect("procs").push(p);
    }

    /// Stop one adopted process early (by pid), e.g. to restart an operator. Returns whether
    /// it was found. With `kill`, it gets SIGKILL at once instead of SIGTERM.
    pub fn stop_adopted(&self, pid: u32, kill: bool) -> bool {
        let mut procs = self.procs.lock().expect("procs");
        let Some(i) = procs.iter().position(|p| p.pid() == pid) else {
            return false;
        };
        let mut p = procs.remove(i);
        drop(procs);
        if kill {
            p.kill();
        } else {
            p.stop(Duration::from_secs(10));
        }
        true
    }

    /// Freeze a container of a pod (`ctr tasks pause`: its cgroup's freezer): its processes
    /// stop where they are and handle no signal until [`ControlPlane::resume_container`] — an
    /// agent whose node stopped answering. A SIGKILL still ends them.
    pub fn pause_container(&self, container_id: &str) -> Result<()> {
        self.ctr_task(container_id, &["pause"], None)
    }

    /// Thaw a container frozen by [`ControlPlane::pause_container`].
    pub fn resume_container(&self, container_id: &str) -> Result<()> {
        self.ctr_task(container_id, &["resume"], None)
    }

    /// `ctr tasks <args> <id>`; a failure whose message contains `done` counts as done.
    fn ctr_task(&self, container_id: &str, args: &[&str], done: Option<&str>) -> Result<()> {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let out = std::process::Command::new(self.layout.bin_dir.join("ctr"))
            .arg("--address")
            .arg(self.layout.containerd_sock())
            .args(["-n", "k8s.io", "tasks"])
            .args(args)
            .arg(id)
            .output()
            .map_err(|e| Error::Io(format!("ctr tasks {}", args.join(" ")), e))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || done.is_some_and(|d| stderr.contains(d)) {
            Ok(())
        } else {
            Err(Error::Command(format!(
                "ctr tasks {} {id}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// SIGKILL a running container's processes through containerd, now: a crash, an OOM
    /// kill. (Deleting a pod with grace period 0 is not one: the kubelet still sends SIGTERM
    /// and waits at least 2 s before SIGKILL, and the process works on until the kubelet
    /// has seen the deletion.) `container_id` is a pod status's `containerID`, with or
    /// without its `containerd://` prefix; a container whose process has already exited counts
    /// as killed.
    pub fn kill_container(&self, container_id: &str) -> Result<()> {
        // Already gone (the kubelet stopped it first): what was asked for is true.
        self.ctr_task(
            container_id,
            &["kill", "--signal", "SIGKILL"],
            Some("process already finished"),
        )
    }

    /// Stop every process this handle started (newest first) and remove the scratch
    /// directory unless `TESTENV_KEEP=1`. Idempotent.
    pub fn shutdown(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut p) = procs.pop() {
            p.stop(Duration::from_secs(10));
        }
        if std::env::var("TESTENV_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("testenv: kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A namespace owned by one test; deleted when dropped (also when the test panics).
#[derive(Debug)]
pub struct TestNamespace {
    /// The namespace's name.
    pub name: String,
    config: Config,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var("TESTENV_KEEP").is_ok_and(|v| v == "1") {
            return;
        }
        let (name, config) = (self.name.clone(), self.config.clone());
        // Drop cannot await; delete from a short-lived thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let client = Client::try_from(config).ok()?;
                // PersistentVolumes the test made for its claims (labelled with the namespace).
                let pvs = Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(client.clone());
                let lp = kube::api::ListParams::default()
                    .labels(&format!("stash-testenv/namespace={name}"));
                let _ = pvs
                    .delete_collection(&DeleteParams::background(), &lp)
                    .await;
                Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await
                    .ok()
            })
        })
        .join();
    }
}

static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();

extern "C" fn shutdown_shared() {
    if let Some(cp) = SHARED.get() {
        cp.shutdown();
    }
}

/// The cluster, attached once per test binary; what this process started in it is stopped
/// when the binary exits (an `atexit` hook; if the binary is killed, `PR_SET_PDEATHSIG`).
pub async fn shared() -> Result<&'static ControlPlane> {
    SHARED
        .get_or_try_init(|| async {
            let cp = ControlPlane::attach().await?;
            // SAFETY: registers a plain extern "C" fn that only touches a 'static.
            #[allow(unsafe_code)]
            unsafe {
                libc::atexit(shutdown_shared);
            }
            Ok(cp)
        })
        .await
}

/// The cluster handle of this process, if [`shared`] has attached already.
pub fn shared_now() -> Option<&'static ControlPlane> {
    SHARED.get()
}

/// Load a kube `Config` from a kubeconfig file.
pub async fn load_config(path: &Path) -> Result<Config> {
    let kc = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    config.read_timeout = Some(Duration::from_secs(60));
    Ok(config)
}

fn write_kubeconfig(path: &Path, server: &str, ca: &str, user: &certs::Pair) -> Result<()> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let b = |s: &str| STANDARD.encode(s.as_bytes());
    let body = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: testenv\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: testenv\n  context:\n    cluster: testenv\n    user: testenv\ncurrent-context: testenv\n",
        b(ca),
        b(&user.cert),
        b(&user.key)
    );
    std::fs::write(path, body).map_err(|e| Error::Io(format!("write {}", path.display()), e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Io(format!("chmod {}", path.display()), e))
}

/// Print a result line that shows in the test command's output even when the test passes
/// (libtest captures `println!`; this writes to the process's stderr directly).
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
