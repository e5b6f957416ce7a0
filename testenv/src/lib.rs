//! A real, hermetic Kubernetes control plane for tests and demos.
//!
//! [`ControlPlane::start`] runs etcd, kube-apiserver and kube-controller-manager, built from
//! Go modules at pinned versions by `testenv/build.sh`, on random loopback ports with a freshly
//! generated PKI, and waits until they are ready. [`shared`] gives every test in one test
//! binary the same control plane and stops it (by process group) when the binary exits;
//! [`ControlPlane::namespace`] gives each test its own namespace.
//!
//! Nothing here skips: a missing binary or a failed start is an [`Error`] with the reason
//! and the tail of the failing server's log.
use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Namespace, ServiceAccount},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

pub mod bins;
pub mod certs;
pub mod node;
pub mod process;

use process::{Proc, free_port};

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
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running control plane. Dropping it (or [`ControlPlane::shutdown`]) stops every server
/// by its process group, controller manager first, and removes its directory unless
/// `TESTENV_KEEP=1`.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    keep: bool,
    procs: Mutex<Vec<Proc>>,
    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub server: String,
    /// The admin kubeconfig (user `admin`, group `system:masters`).
    pub kubeconfig: PathBuf,
    config: Config,
    /// The generated PKI (its CAs can issue more users, e.g. a non-admin for RBAC tests).
    pub pki: certs::Pki,
    /// How long the start took.
    pub started_in: Duration,
}

impl ControlPlane {
    /// Start etcd, kube-apiserver and kube-controller-manager and wait until they serve.
    pub async fn start() -> Result<Self> {
        let begun = Instant::now();
        let etcd_bin = bins::bin("etcd")?;
        let apiserver_bin = bins::bin("kube-apiserver")?;
        let kcm_bin = bins::bin("kube-controller-manager")?;

        let dir = tempfile::Builder::new()
            .prefix("stash-testenv-")
            .tempdir_in("/tmp")
            .map_err(|e| Error::Io("create work dir".into(), e))?
            .keep();
        let keep = std::env::var("TESTENV_KEEP").is_ok_and(|v| v == "1");
        let pki = certs::Pki::generate(&dir)?;
        let mut cp = Self {
            dir: dir.clone(),
            keep,
            procs: Mutex::new(Vec::new()),
            server: String::new(),
            kubeconfig: dir.join("admin.kubeconfig"),
            config: Config::new("https://127.0.0.1:1".parse().expect("static uri")),
            pki,
            started_in: Duration::ZERO,
        };

        // etcd
        let (etcd_client, etcd_peer) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let etcd = Proc::spawn(
            "etcd",
            &etcd_bin,
            &[
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            &dir,
        )?;
        cp.procs.lock().expect("procs").push(etcd);
        cp.wait("etcd", || async { http_get_ok("127.0.0.1", etcd_client, "/health").await }).await?;

        // kube-apiserver
        let api_port = free_port()?;
        cp.server = format!("https://127.0.0.1:{api_port}");
        let d = |f: &str| dir.join(f).display().to_string();
        let apiserver = Proc::spawn(
            "kube-apiserver",
            &apiserver_bin,
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                "--advertise-address=127.0.0.1".into(),
                "--endpoint-reconciler-type=none".into(),
                format!("--tls-cert-file={}", d("apiserver.crt")),
                format!("--tls-private-key-file={}", d("apiserver.key")),
                format!("--client-ca-file={}", d("client-ca.crt")),
                "--authorization-mode=RBAC".into(),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
                format!("--service-account-issuer=https://127.0.0.1:{api_port}/"),
                format!("--service-account-key-file={}", d("sa.pub")),
                format!("--service-account-signing-key-file={}", d("sa.key")),
                format!("--requestheader-client-ca-file={}", d("front-proxy-ca.crt")),
                "--requestheader-allowed-names=front-proxy-client".into(),
                "--requestheader-username-headers=X-Remote-User".into(),
                "--requestheader-group-headers=X-Remote-Group".into(),
                "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                format!("--proxy-client-cert-file={}", d("front-proxy-client.crt")),
                format!("--proxy-client-key-file={}", d("front-proxy-client.key")),
                format!("--cert-dir={}", d("apiserver-certs")),
            ],
            &dir,
        )?;
        cp.procs.lock().expect("procs").push(apiserver);

        write_kubeconfig(&cp.kubeconfig, &cp.server, &cp.pki.serving_ca.cert, &cp.pki.admin)?;
        let kcm_kubeconfig = dir.join("kcm.kubeconfig");
        write_kubeconfig(&kcm_kubeconfig, &cp.server, &cp.pki.serving_ca.cert, &cp.pki.controller_manager)?;
        cp.config = load_config(&cp.kubeconfig).await?;

        let config = cp.config.clone();
        cp.wait("kube-apiserver", move || {
            let config = config.clone();
            async move {
                let client = Client::try_from(config).map_err(|e| e.to_string())?;
                let req = http::Request::get("/readyz").body(Vec::new()).map_err(|e| e.to_string())?;
                client.request_text(req).await.map(|_| ()).map_err(|e| e.to_string())
            }
        })
        .await?;

        // kube-controller-manager
        let kcm_port = free_port()?;
        let kcm = Proc::spawn(
            "kube-controller-manager",
            &kcm_bin,
            &[
                format!("--kubeconfig={}", kcm_kubeconfig.display()),
                format!("--authentication-kubeconfig={}", kcm_kubeconfig.display()),
                format!("--authorization-kubeconfig={}", kcm_kubeconfig.display()),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={kcm_port}"),
                "--leader-elect=false".into(),
                format!("--controllers={}", KCM_CONTROLLERS.join(",")),
                format!("--service-account-private-key-file={}", d("sa.key")),
                format!("--root-ca-file={}", d("serving-ca.crt")),
                "--use-service-account-credentials=false".into(),
                "--kube-api-qps=1000".into(),
                "--kube-api-burst=2000".into(),
                format!("--cert-dir={}", d("kcm-certs")),
            ],
            &dir,
        )?;
        cp.procs.lock().expect("procs").push(kcm);
        let config = cp.config.clone();
        cp.wait("kube-controller-manager", move || {
            let config = config.clone();
            async move {
                let client = Client::try_from(config).map_err(|e| e.to_string())?;
                Api::<ServiceAccount>::namespaced(client, "default")
                    .get("default")
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("ServiceAccount default/default: {e}"))
            }
        })
        .await?;
        cp.started_in = begun.elapsed();
        Ok(cp)
    }

    /// Poll `probe` until it succeeds; fail with the log tail of the newest process if it
    /// exits or the time runs out.
    async fn wait<F, Fut>(&self, name: &str, probe: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), String>>,
    {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("not probed yet");
        loop {
            {
                let mut procs = self.procs.lock().expect("procs");
                let p = procs.last_mut().expect("a process was started");
                if let Some(status) = p.exited() {
                    return Err(Error::NotReady {
                        name: name.into(),
                        reason: format!("exited with {status}"),
                        log: p.log_tail(40),
                    });
                }
                if Instant::now() > deadline {
                    return Err(Error::NotReady {
                        name: name.into(),
                        reason: format!("timed out after {START_TIMEOUT:?}; last probe: {last}"),
                        log: p.log_tail(40),
                    });
                }
            }
            match probe().await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A new admin client, bound to the calling tokio runtime.
    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("a client from the admin kubeconfig")
    }

    /// The admin `kube::Config`.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The work directory (logs, certificates, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A `kubectl` command (the one built with the control plane) using the admin kubeconfig.
    pub fn kubectl(&self) -> Result<std::process::Command> {
        let mut cmd = std::process::Command::new(bins::bin("kubectl")?);
        cmd.env("KUBECONFIG", &self.kubeconfig).env_remove("KUBERNETES_SERVICE_HOST");
        Ok(cmd)
    }

    /// Write a kubeconfig for a new user signed by the client CA.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let pair = self.pki.client_ca.client(user, groups)?;
        let path = self.dir.join(format!("{user}.kubeconfig"));
        write_kubeconfig(&path, &self.server, &self.pki.serving_ca.cert, &pair)?;
        Ok(path)
    }

    /// Create a namespace `<prefix>-<random>` that is deleted when the guard drops.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        self.ensure_namespace(&name).await?;
        Ok(TestNamespace { name, config: self.config.clone() })
    }

    /// Create namespace `name` if it does not exist.
    pub async fn ensure_namespace(&self, name: &str) -> Result<()> {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .expect("static namespace");
        match Api::<Namespace>::all(self.client()).create(&PostParams::default(), &ns).await {
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
                    if established { Ok(()) } else { Err("not yet Established".into()) }
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
                        let req = http::Request::get(&gv).body(Vec::new()).map_err(|e| e.to_string())?;
                        let text = client.request_text(req).await.map_err(|e| e.to_string())?;
                        if text.contains(&format!("\"name\":\"{plural}\"")) { Ok(()) } else { Err("not listed".into()) }
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
                    return Err(Error::NotReady { name: what.into(), reason: e, log: String::new() });
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
        let Some(i) = procs.iter().position(|p| p.pid() == pid) else { return false };
        let mut p = procs.remove(i);
        drop(procs);
        if kill {
            p.kill();
        } else {
            p.stop(Duration::from_secs(10));
        }
        true
    }

    /// Stop every server (controller manager, API server, etcd: newest first) by process
    /// group and remove the work directory unless `TESTENV_KEEP=1`. Idempotent.
    pub fn shutdown(&self) {
        node::stop_agent(&self.dir);
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut p) = procs.pop() {
            p.stop(Duration::from_secs(10));
        }
        if self.keep {
            eprintln!("testenv: kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The controllers the tests need. Deliberately without the node lifecycle and pod GC
/// controllers: the node agent is the only "kubelet" and sends no lease heartbeats.
pub const KCM_CONTROLLERS: &[&str] = &[
    "cronjob-controller",
    "job-controller",
    "deployment-controller",
    "replicaset-controller",
    "replicationcontroller-controller",
    "statefulset-controller",
    "daemonset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "ttl-after-finished-controller",
    "persistentvolume-binder-controller",
];

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
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async move {
                let client = Client::try_from(config).ok()?;
                Api::<Namespace>::all(client).delete(&name, &DeleteParams::background()).await.ok()
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

/// The control plane shared by every test of this test binary: started by the first
/// caller, stopped by process group when the binary exits (an `atexit` hook; if the
/// binary is killed, `PR_SET_PDEATHSIG` takes the servers down with it).
///
/// There is deliberately no "attach to an existing cluster" mode: every test run proves
/// itself against a control plane it started.
pub async fn shared() -> Result<&'static ControlPlane> {
    SHARED
        .get_or_try_init(|| async {
            let cp = ControlPlane::start().await?;
            eprintln!(
                "testenv: control plane up in {:.1}s at {} (dir {})",
                cp.started_in.as_secs_f64(),
                cp.server,
                cp.dir.display()
            );
            // SAFETY: registers a plain extern "C" fn that only touches a 'static.
            #[allow(unsafe_code)]
            unsafe {
                libc::atexit(shutdown_shared);
            }
            Ok(cp)
        })
        .await
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

/// A plain HTTP/1.0 GET on loopback; Ok when the status is 200.
async fn http_get_ok(host: &str, port: u16, path: &str) -> std::result::Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(text.lines().next().unwrap_or("no answer").to_string())
    }
}

/// Print a result line that shows in the test command's output even when the test passes
/// (libtest captures `println!`; this writes to the process's stderr directly).
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
