//! A real single-node Kubernetes cluster, confined to a network namespace of its own.
//!
//! etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (with Debian's
//! runc and the CNI bridge plugins), CoreDNS, the kubelet and kube-proxy all run as processes
//! of [`up`], inside network namespace [`NETNS`]; pods get namespaces of their own beneath it,
//! on bridge [`BRIDGE`]. The root namespace reaches the node address [`NODE_IP`] through one
//! veth pair; every other address of 198.18.0.0/15 is `unreachable` there, so no packet for a
//! pod or Service can follow the default route off the machine. Inside, a forward hook rejects
//! whatever a pod sends toward the root namespace, and CoreDNS forwards nothing.
//!
//! Everything lives under one state directory ([`Layout::state`]): PKI, kubeconfigs, logs,
//! etcd, containerd, the kubelet's root, and `record.json`, which lists what the run changed
//! on the host so that teardown — or the next start after a hard kill — undoes exactly that
//! ([`host`]).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{Error, Result, bins, certs, process::Proc};

pub mod config;
pub mod host;

/// The cluster's network namespace.
pub const NETNS: &str = "stash-rs-testenv";
/// The veth end in the root namespace (address [`HOST_IP`]).
pub const VETH_HOST: &str = "stvh0";
/// The veth end in the cluster's namespace (address [`NODE_IP`]).
pub const VETH_NODE: &str = "stvn0";
/// The root namespace's side of the veth pair.
pub const HOST_IP: &str = "198.18.0.1";
/// The node's address: kube-apiserver, the kubelet, CoreDNS and test servers bind it.
pub const NODE_IP: &str = "198.18.0.2";
/// Every address the environment uses is in this range (reserved for benchmarking networks).
pub const TEST_RANGE: &str = "198.18.0.0/15";
/// Services.
pub const SERVICE_CIDR: &str = "198.18.128.0/24";
/// The `kubernetes` Service's address (first of [`SERVICE_CIDR`]).
pub const API_SERVICE_IP: &str = "198.18.128.1";
/// Pods, on the bridge.
pub const POD_CIDR: &str = "198.19.0.0/24";
/// The bridge's address (the pods' gateway).
pub const POD_GATEWAY: &str = "198.19.0.1";
/// The CNI bridge.
pub const BRIDGE: &str = "stcni0";
/// The Node's name.
pub const NODE_NAME: &str = "stash-node";
/// The kube-apiserver's port on [`NODE_IP`].
pub const API_PORT: u16 = 6443;
/// The kubelet's cgroup root (in every hierarchy), removed at teardown.
pub const CGROUP_ROOT: &str = "stash-rs-testenv";
/// The cluster's image registry's port on [`NODE_IP`] (docker.io resolves there).
pub const REGISTRY_PORT: u16 = 5000;
/// The sandbox image, built locally (`testenv/images.sh`) and imported.
pub const PAUSE_IMAGE: &str = "stash-rs.local/pause:3.10";

/// Where everything of one environment lives.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The state directory: `$STASH_TESTENV_STATE`, default `/var/lib/stash-rs-testenv`.
    pub state: PathBuf,
    /// The Go-built binaries (`testenv/build.sh`).
    pub bin_dir: PathBuf,
    /// Debian's runc.
    pub runc: PathBuf,
}

impl Layout {
    /// The layout for this machine.
    pub fn new() -> Result<Self> {
        let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| Error::Binaries("runc is missing: apt-get install runc".into()))?;
        Ok(Self {
            state: state_dir(),
            bin_dir: bins::bin_dir()?,
            runc,
        })
    }
    /// PKI files.
    pub fn pki_dir(&self) -> PathBuf {
        self.state.join("pki")
    }
    /// The ports claimed on the node address, one empty file each (across test processes).
    pub fn ports_dir(&self) -> PathBuf {
        self.state.join("ports")
    }
    /// Server logs.
    pub fn log_dir(&self) -> PathBuf {
        self.state.join("logs")
    }
    /// containerd's root, state and sockets.
    pub fn containerd_dir(&self) -> PathBuf {
        self.state.join("containerd")
    }
    /// containerd's socket.
    pub fn containerd_sock(&self) -> PathBuf {
        self.containerd_dir().join("containerd.sock")
    }
    /// The CNI configuration directory.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.state.join("cni")
    }
    /// The kubeconfig of a component or of `admin`.
    pub fn kubeconfig(&self, who: &str) -> PathBuf {
        self.state
            .join("kubeconfigs")
            .join(format!("{who}.kubeconfig"))
    }
    /// Written when the cluster is ready: the `up` process's pid and start time.
    pub fn ready_file(&self) -> PathBuf {
        self.state.join("ready")
    }
}

/// The `up` process of a ready cluster, if it is still that process (pid and start time).
pub fn up_process(layout: &Layout) -> Option<u32> {
    let text = fs::read_to_string(layout.ready_file()).ok()?;
    let mut it = text.split_whitespace();
    let pid: u32 = it.next()?.parse().ok()?;
    let start: u64 = it.next()?.parse().ok()?;
    (host::start_time(pid) == Some(start)).then_some(pid)
}

/// The state directory of this machine's environment.
pub fn state_dir() -> PathBuf {
    std::env::var_os("STASH_TESTENV_STATE")
        .map_or_else(|| PathBuf::from("/var/lib/stash-rs-testenv"), PathBuf::from)
}

/// The API server's URL as seen from the root namespace (and from inside).
pub fn api_server_url() -> String {
    format!("https://{NODE_IP}:{API_PORT}")
}

/// A command run inside the cluster's network namespace (network only: the mount namespace,
/// and so `/sys/fs/cgroup` and the kubelet's mounts, stay the host's).
pub fn in_netns(bin: &Path) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{NETNS}"))
        .arg("--")
        .arg(bin);
    c
}

fn sh(what: &str, cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::Io(format!("run {what}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Spawn {
            name: what.into(),
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

fn ip(args: &[&str]) -> Result<()> {
    sh(
        &format!("ip {}", args.join(" ")),
        Command::new("ip").args(args),
    )
}

/// The running cluster, owned by the `testenv up` process.
pub struct Cluster {
    layout: Layout,
    procs: Vec<Proc>,
    record: host::Record,
    /// How long the start took.
    pub started_in: Duration,
}

impl Cluster {
    /// Bring the cluster up: undo a killed run's leftovers, record the host, create the
    /// network namespace, start every server, import the images in `images` (docker-archive
    /// tars) and wait until the Node is Ready and the default ServiceAccount exists.
    pub async fn up(images: &[PathBuf]) -> Result<Self> {
        let begun = Instant::now();
        let layout = Layout::new()?;
        let l = &layout;
        for b in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kube-proxy",
            "containerd",
            "containerd-shim-runc-v2",
            "ctr",
            "coredns",
            "registry",
            "bridge",
            "host-local",
            "loopback",
            "portmap",
        ] {
            bins::bin(b)?;
        }
        cleanup_leftovers(&l.state);
        fs::create_dir_all(&l.state)
            .map_err(|e| Error::Io(format!("create {}", l.state.display()), e))?;
        let mut record = host::Record::before_start();
        // `up` itself first: a `down` that finds no ready file still finds it here.
        record.add_proc(std::process::id(), "testenv up");
        record.save(&l.state)?;
        let mut c = Self {
            layout: layout.clone(),
            procs: Vec::new(),
            record,
            started_in: Duration::ZERO,
        };
        match c.start(images).await {
            Ok(()) => {
                c.started_in = begun.elapsed();
                let me = std::process::id();
                fs::write(
                    l.ready_file(),
                    format!("{me} {}", host::start_time(me).unwrap_or(0)),
                )
                .map_err(|e| Error::Io("write ready".into(), e))?;
                Ok(c)
            }
            Err(e) => {
                c.down();
                Err(e)
            }
        }
    }

    async fn start(&mut self, images: &[PathBuf]) -> Result<()> {
        let l = self.layout.clone();
        // The ports the test processes claimed on the node address (`cluster_port`): a new
        // cluster starts with none.
        let _ = fs::remove_dir_all(l.ports_dir());
        for d in [
            l.ports_dir(),
            l.log_dir(),
            l.containerd_dir(),
            l.cni_conf_dir(),
            l.state.join("kubeconfigs"),
            l.state.join("kubelet"),
            l.state.join("kubelet-plugins"),
            l.state.join("scratch"),
        ] {
            fs::create_dir_all(&d).map_err(|e| Error::Io(format!("create {}", d.display()), e))?;
        }

        // The network: root namespace first (unreachable range), then the cluster's own.
        if !route_exists() {
            ip(&["route", "add", "unreachable", TEST_RANGE])?;
            self.record.added_route = true;
            self.record.save(&l.state)?;
        }
        ip(&["netns", "add", NETNS])?;
        ip(&[
            "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NODE, "netns", NETNS,
        ])?;
        ip(&["addr", "add", &format!("{HOST_IP}/30"), "dev", VETH_HOST])?;
        ip(&["link", "set", VETH_HOST, "up"])?;
        ip(&[
            "-n",
            NETNS,
            "addr",
            "add",
            &format!("{NODE_IP}/30"),
            "dev",
            VETH_NODE,
        ])?;
        ip(&["-n", NETNS, "link", "set", VETH_NODE, "up"])?;
        ip(&["-n", NETNS, "link", "set", "lo", "up"])?;
        // ClusterIPs need a route for kube-proxy's DNAT to apply to locally started
        // connections (the namespace has no default route).
        ip(&["-n", NETNS, "route", "add", SERVICE_CIDR, "dev", VETH_NODE])?;
        // Pods never reach the root namespace: reject whatever leaves through the veth
        // (before any iptables chain of kube-proxy or the kubelet sees it).
        let nft = format!(
            "table inet stash_confine {{\n chain forward {{\n  type filter hook forward priority -10; policy accept;\n  oifname \"{VETH_NODE}\" reject\n }}\n}}\n"
        );
        sh("nft (confinement)", in_netns(Path::new("nft")).arg(&nft))?;
        // Service traffic between pods on the bridge must pass iptables (per-namespace).
        let _ = sh(
            "br_netfilter",
            in_netns(Path::new("sh")).args([
                "-c",
                "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables",
            ]),
        );

        // PKI and kubeconfigs.
        let pki_dir = l.pki_dir();
        let pki = certs::Pki::generate(&pki_dir, NODE_IP, API_SERVICE_IP)?;
        let server = api_server_url();
        let write = |path: PathBuf, body: String| -> Result<()> {
            fs::write(&path, body).map_err(|e| Error::Io(format!("write {}", path.display()), e))
        };
        write(
            l.kubeconfig("admin"),
            config::kubeconfig(
                &server,
                &pki.serving_ca.cert,
                &pki.admin.cert,
                &pki.admin.key,
            ),
        )?;
        for (stem, _, _) in certs::COMPONENTS {
            let p = certs::Pki::component(&pki_dir, stem)?;
            write(
                l.kubeconfig(stem),
                config::kubeconfig(&server, &pki.serving_ca.cert, &p.cert, &p.key),
            )?;
        }
        let d = |f: &str| pki_dir.join(f).display().to_string();

        // The API server's client certificate for admission webhooks reached through a
        // Service, from a CA of its own (the operator is told only this CA, so no user
        // certificate of the cluster's client CA can call the webhooks).
        let webhook_client_ca = certs::Ca::new("stash-testenv-webhook-client-ca")?;
        let webhook_client = webhook_client_ca.client(config::WEBHOOK_CLIENT_CN, &[])?;
        write(
            pki_dir.join("webhook-client-ca.crt"),
            webhook_client_ca.cert.clone(),
        )?;
        write(pki_dir.join("webhook-client.crt"), webhook_client.cert)?;
        write(pki_dir.join("webhook-client.key"), webhook_client.key)?;
        let webhook_kubeconfig = pki_dir.join("webhook-client.kubeconfig");
        write(
            webhook_kubeconfig.clone(),
            config::webhook_client_kubeconfig(
                &pki_dir.join("webhook-client.crt"),
                &pki_dir.join("webhook-client.key"),
            ),
        )?;
        let admission_config = l.state.join("admission-configuration.yaml");
        write(
            admission_config.clone(),
            config::admission_configuration(&webhook_kubeconfig),
        )?;

        // etcd, on the namespace's loopback.
        self.spawn(
            "etcd",
            &[
                format!("--data-dir={}", l.state.join("etcd").display()),
                "--listen-client-urls=http://127.0.0.1:2379".into(),
                "--advertise-client-urls=http://127.0.0.1:2379".into(),
                "--listen-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-cluster=default=http://127.0.0.1:2380".into(),
                "--listen-metrics-urls=http://127.0.0.1:2381".into(),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;

        self.spawn(
            "kube-apiserver",
            &[
                "--etcd-servers=http://127.0.0.1:2379".into(),
                format!("--bind-address={NODE_IP}"),
                format!("--advertise-address={NODE_IP}"),
                format!("--secure-port={API_PORT}"),
                format!("--tls-cert-file={}", d("apiserver.crt")),
                format!("--tls-private-key-file={}", d("apiserver.key")),
                format!("--client-ca-file={}", d("client-ca.crt")),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                format!(
                    "--admission-control-config-file={}",
                    admission_config.display()
                ),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--allow-privileged=true".into(),
                format!("--service-account-issuer={server}"),
                format!("--service-account-key-file={}", d("sa.pub")),
                format!("--service-account-signing-key-file={}", d("sa.key")),
                format!(
                    "--kubelet-client-certificate={}",
                    d("apiserver-kubelet-client.crt")
                ),
                format!("--kubelet-client-key={}", d("apiserver-kubelet-client.key")),
                format!("--kubelet-certificate-authority={}", d("serving-ca.crt")),
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--requestheader-client-ca-file={}", d("front-proxy-ca.crt")),
                "--requestheader-allowed-names=front-proxy-client".into(),
                "--requestheader-username-headers=X-Remote-User".into(),
                "--requestheader-group-headers=X-Remote-Group".into(),
                "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                format!("--proxy-client-cert-file={}", d("front-proxy-client.crt")),
                format!("--proxy-client-key-file={}", d("front-proxy-client.key")),
                "--enable-aggregator-routing=true".into(),
                format!("--cert-dir={}", l.state.join("apiserver-certs").display()),
            ],
        )?;
        let admin = crate::load_config(&l.kubeconfig("admin")).await?;
        self.wait("kube-apiserver", || {
            let admin = admin.clone();
            async move {
                let client = kube::Client::try_from(admin).map_err(|e| e.to_string())?;
                let req = http::Request::get("/readyz")
                    .body(Vec::new())
                    .map_err(|e| e.to_string())?;
                client
                    .request_text(req)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await?;

        let kcm = l.kubeconfig("kcm").display().to_string();
        self.spawn(
            "kube-controller-manager",
            &[
                format!("--kubeconfig={kcm}"),
                format!("--authentication-kubeconfig={kcm}"),
                format!("--authorization-kubeconfig={kcm}"),
                "--bind-address=127.0.0.1".into(),
                "--leader-elect=false".into(),
                "--controllers=*".into(),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", d("sa.key")),
                format!("--root-ca-file={}", d("serving-ca.crt")),
                format!("--cluster-signing-cert-file={}", d("client-ca.crt")),
                format!("--cluster-signing-key-file={}", d("client-ca.key")),
                "--kube-api-qps=200".into(),
                "--kube-api-burst=400".into(),
                "--node-monitor-grace-period=60s".into(),
                // PVCs of the default StorageClass get hostPath PVs under /tmp/hostpath_pv.
                "--enable-hostpath-provisioner=true".into(),
                format!("--cert-dir={}", l.state.join("kcm-certs").display()),
            ],
        )?;
        let sched = l.kubeconfig("scheduler").display().to_string();
        self.spawn(
            "kube-scheduler",
            &[
                format!("--kubeconfig={sched}"),
                format!("--authentication-kubeconfig={sched}"),
                format!("--authorization-kubeconfig={sched}"),
                "--bind-address=127.0.0.1".into(),
                "--leader-elect=false".into(),
            ],
        )?;

        // containerd, then the images.
        write(
            l.containerd_dir().join("config.toml"),
            config::containerd(&l),
        )?;
        write(
            l.cni_conf_dir().join("10-stash-testenv.conflist"),
            config::cni(&l),
        )?;
        self.spawn(
            "containerd",
            &[format!(
                "--config={}",
                l.containerd_dir().join("config.toml").display()
            )],
        )?;
        let sock = l.containerd_sock();
        self.wait("containerd", || {
            let sock = sock.clone();
            async move {
                if sock.exists() {
                    Ok(())
                } else {
                    Err("no socket yet".into())
                }
            }
        })
        .await?;
        // The registry, and every imported image of docker.io pushed into it.
        let docker_io = l.state.join("certs.d").join("docker.io");
        fs::create_dir_all(&docker_io).map_err(|e| Error::Io("create certs.d".into(), e))?;
        write(docker_io.join("hosts.toml"), config::docker_io_hosts())?;
        write(l.state.join("registry.yaml"), config::registry(&l))?;
        self.spawn(
            "registry",
            &[
                "serve".into(),
                l.state.join("registry.yaml").display().to_string(),
            ],
        )?;
        let ctr = |args: &[&str]| {
            let mut c = in_netns(&l.bin_dir.join("ctr"));
            c.arg("--address")
                .arg(&sock)
                .args(["-n", "k8s.io"])
                .args(args);
            c
        };
        for tar in images {
            let begun = Instant::now();
            let tar = tar.display().to_string();
            sh(
                &format!("ctr images import {tar}"),
                &mut ctr(&["images", "import", &tar]),
            )?;
            eprintln!(
                "testenv: imported {tar} in {:.1}s",
                begun.elapsed().as_secs_f64()
            );
        }
        let listed = ctr(&["images", "ls", "-q"])
            .output()
            .map_err(|e| Error::Io("ctr images ls".into(), e))?;
        for name in String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|n| n.strip_prefix("docker.io/"))
        {
            let remote = format!("{NODE_IP}:{REGISTRY_PORT}/{name}");
            let local = format!("docker.io/{name}");
            let mut last = String::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match sh(
                    &format!("ctr images push {remote}"),
                    &mut ctr(&["images", "push", "--plain-http", &remote, &local]),
                ) {
                    Ok(()) => break,
                    Err(e) if Instant::now() < deadline => {
                        last = e.to_string();
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Err(e) => {
                        return Err(Error::Spawn {
                            name: "registry push".into(),
                            reason: format!("{e} ({last})"),
                        });
                    }
                }
            }
        }

        // CoreDNS, the kubelet, kube-proxy.
        write(l.state.join("Corefile"), config::corefile(&l))?;
        write(
            l.state.join("resolv.conf"),
            format!("nameserver {NODE_IP}\n"),
        )?;
        self.spawn(
            "coredns",
            &[format!("-conf={}", l.state.join("Corefile").display())],
        )?;
        // The kubelet's cgroup root must exist in every hierarchy (removed at teardown).
        for h in host::cgroup_hierarchies() {
            let dir = h.join(CGROUP_ROOT);
            fs::create_dir_all(&dir)
                .map_err(|e| Error::Io(format!("create {}", dir.display()), e))?;
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = fs::read_to_string(h.join(f)) {
                    let _ = fs::write(dir.join(f), v.trim());
                }
            }
        }
        write(l.state.join("kubelet.yaml"), config::kubelet(&l))?;
        self.spawn(
            "kubelet",
            &[
                format!("--config={}", l.state.join("kubelet.yaml").display()),
                format!("--kubeconfig={}", l.kubeconfig("kubelet").display()),
                format!("--root-dir={}", l.state.join("kubelet").display()),
                format!("--cert-dir={}", l.state.join("kubelet-certs").display()),
                format!("--node-ip={NODE_IP}"),
                format!("--hostname-override={NODE_NAME}"),
                "--v=1".into(),
            ],
        )?;
        write(l.state.join("kube-proxy.yaml"), config::kube_proxy(&l))?;
        self.spawn(
            "kube-proxy",
            &[format!(
                "--config={}",
                l.state.join("kube-proxy.yaml").display()
            )],
        )?;

        let admin = crate::load_config(&l.kubeconfig("admin")).await?;
        self.wait(
            "the Node to be Ready and ServiceAccount default/default",
            || {
                let admin = admin.clone();
                async move {
                    use k8s_openapi::api::core::v1::{Node, ServiceAccount};
                    let client = kube::Client::try_from(admin).map_err(|e| e.to_string())?;
                    let node = kube::Api::<Node>::all(client.clone())
                        .get(NODE_NAME)
                        .await
                        .map_err(|e| e.to_string())?;
                    let ready = node
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    if !ready {
                        return Err("Node not Ready".into());
                    }
                    kube::Api::<ServiceAccount>::namespaced(client, "default")
                        .get("default")
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("ServiceAccount default/default: {e}"))
                }
            },
        )
        .await?;

        // The default StorageClass: hostPath volumes provisioned by kube-controller-manager.
        let sc: k8s_openapi::api::storage::v1::StorageClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "kubernetes.io/host-path", "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"
        }))
        .expect("static StorageClass");
        let client = kube::Client::try_from(admin.clone()).map_err(Error::Kube)?;
        kube::Api::<k8s_openapi::api::storage::v1::StorageClass>::all(client.clone())
            .patch(
                "standard",
                &kube::api::PatchParams::apply("stash-testenv").force(),
                &kube::api::Patch::Apply(&sc),
            )
            .await?;

        // What a cluster admin does for the installed operator: publish the CA of the API
        // server's webhook client certificate where the install manifest looks for it.
        publish_webhook_client_ca(client, &webhook_client_ca.cert).await?;
        Ok(())
    }

    fn spawn(&mut self, name: &str, args: &[String]) -> Result<()> {
        let l = &self.layout;
        let bin = bins::bin(name)?;
        let mut all = vec![
            format!("--net=/run/netns/{NETNS}"),
            "--".into(),
            bin.display().to_string(),
        ];
        all.extend_from_slice(args);
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            l.bin_dir.display()
        );
        let p = Proc::spawn_with_env(
            name,
            Path::new("/usr/bin/nsenter"),
            &all,
            &[("PATH", path.as_ref())],
            &l.log_dir(),
        )?;
        self.record.add_proc(p.pid(), name);
        self.record.save(&l.state)?;
        self.procs.push(p);
        Ok(())
    }

    async fn wait<F, Fut>(&mut self, name: &str, probe: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), String>>,
    {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::from("not probed yet");
        loop {
            for p in &mut self.procs {
                if let Some(status) = p.exited() {
                    return Err(Error::NotReady {
                        name: name.into(),
                        reason: format!("{} exited with {status}", p.name),
                        log: p.log_tail(40),
                    });
                }
            }
            if Instant::now() > deadline {
                let log = self
                    .procs
                    .last()
                    .map(|p| p.log_tail(40))
                    .unwrap_or_default();
                return Err(Error::NotReady {
                    name: name.into(),
                    reason: format!("timed out; last probe: {last}"),
                    log,
                });
            }
            match probe().await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Stop everything and leave the host as it was. Idempotent.
    pub fn down(&mut self) {
        let begun = Instant::now();
        let _ = fs::remove_file(self.layout.ready_file());
        // The kubelet first (it would restart what is killed next), then every pod.
        if let Some(i) = self.procs.iter().position(|p| p.name == "kubelet") {
            self.procs.remove(i).kill();
        }
        kill_pods(&self.layout.state);
        while let Some(mut p) = self.procs.pop() {
            p.stop(Duration::from_secs(5));
        }
        kill_strays();
        teardown(&self.layout.state, &self.record);
        eprintln!("testenv: down in {:.1}s", begun.elapsed().as_secs_f64());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.layout.state.join("record.json").exists() {
            self.down();
        }
    }
}

/// Namespace of the installed operator.
pub const OPERATOR_NAMESPACE: &str = "stash-system";
/// The optional ConfigMap the install manifest mounts for webhook client authentication.
pub const WEBHOOK_CLIENT_AUTH_CONFIGMAP: &str = "stash-webhook-client-auth";

/// Create `stash-system/stash-webhook-client-auth` with `ca.crt` (the CA that signs the API
/// server's webhook client certificate) and `allowed-names` (its CN), and the Namespace.
async fn publish_webhook_client_ca(client: kube::Client, ca_pem: &str) -> Result<()> {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    let pp = kube::api::PatchParams::apply("stash-testenv").force();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}
    }))
    .expect("static Namespace");
    kube::Api::<Namespace>::all(client.clone())
        .patch(OPERATOR_NAMESPACE, &pp, &kube::api::Patch::Apply(&ns))
        .await?;
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": WEBHOOK_CLIENT_AUTH_CONFIGMAP, "namespace": OPERATOR_NAMESPACE},
        "data": {"ca.crt": ca_pem, "allowed-names": format!("{}\n", config::WEBHOOK_CLIENT_CN)}
    }))
    .expect("static ConfigMap");
    kube::Api::<ConfigMap>::namespaced(client, OPERATOR_NAMESPACE)
        .patch(
            WEBHOOK_CLIENT_AUTH_CONFIGMAP,
            &pp,
            &kube::api::Patch::Apply(&cm),
        )
        .await?;
    Ok(())
}

fn route_exists() -> bool {
    Command::new("ip")
        .args(["route", "show", "type", "unreachable", TEST_RANGE])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty())
}

/// Kill every container process (in the kubelet's cgroup tree) and every containerd shim
/// (their pid files live under containerd's state directory).
fn kill_pods(state: &Path) {
    let mut pids = Vec::new();
    for h in host::cgroup_hierarchies() {
        pids.extend(host::cgroup_procs(&h.join(CGROUP_ROOT)));
    }
    let mut stack = vec![state.join("containerd").join("state")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir())
                && !e.file_type().is_ok_and(|t| t.is_symlink())
            {
                stack.push(p);
            } else if matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some("shim.pid" | "init.pid")
            ) && let Some(pid) = fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&p| p != std::process::id());
    host::kill_all(&pids);
}

/// Once the servers are stopped: whatever still runs one of the environment's own binaries
/// (only this environment starts them), such as a shim whose task directory is already gone.
fn kill_strays() {
    if let Ok(dir) = bins::bin_dir() {
        host::kill_all(&host::procs_running_from(&dir));
    }
}

/// Undo a run: everything the record lists, everything mounted under the state directory,
/// the network namespace. Leaves an empty state directory.
fn teardown(state: &Path, rec: &host::Record) {
    host::unmount_under(state);
    for p in &rec.created_paths {
        host::unmount_under(p);
    }
    for h in host::cgroup_hierarchies() {
        host::remove_cgroup_tree(&h.join(CGROUP_ROOT));
    }
    for c in &rec.created_cgroups {
        host::remove_cgroup_tree(c);
    }
    if Path::new("/run/netns").join(NETNS).exists() {
        let _ = ip(&["netns", "del", NETNS]);
    }
    // The veth pair goes with the namespace; a half-made one may be left in the root one.
    let _ = Command::new("ip")
        .args(["link", "del", VETH_HOST])
        .stderr(std::process::Stdio::null())
        .status();
    if rec.added_route {
        let _ = ip(&["route", "del", "unreachable", TEST_RANGE]);
    }
    host::restore_sysctls(rec);
    for p in &rec.created_paths {
        let _ = fs::remove_dir_all(p);
    }
    // Keep the state directory itself (and the lock in it); empty the rest.
    if let Ok(rd) = fs::read_dir(state) {
        for e in rd.flatten() {
            let name = e.file_name();
            if name == "lock" || name == "record.json" {
                continue;
            }
            let p = e.path();
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
    let _ = fs::remove_file(state.join("record.json"));
}

/// If a run was killed, stop what it left running (recorded pids whose start time still
/// matches, pods, shims) and undo its changes.
/// Called with the lock held, so no cluster of ours runs: a process still running one of
/// the environment's binaries is a stray even when the record is gone.
pub fn cleanup_leftovers(state: &Path) {
    let Some(rec) = host::Record::load(state) else {
        kill_strays();
        return;
    };
    eprintln!(
        "testenv: cleaning up after a run that did not stop ({} processes recorded)",
        rec.procs.len()
    );
    let alive: Vec<u32> = rec
        .procs
        .iter()
        .filter(|(pid, start, _)| {
            host::start_time(*pid) == Some(*start) && *pid != std::process::id()
        })
        .map(|(pid, _, _)| *pid)
        .collect();
    host::kill_all(&alive);
    kill_pods(state);
    kill_strays();
    teardown(state, &rec);
}

/// `testenv up`'s main loop: bring the cluster up, run until `stop` is set or a server
/// exits, then tear down.
pub async fn run(images: &[PathBuf], stop: Arc<AtomicBool>) -> Result<()> {
    let mut c = Cluster::up(images).await?;
    eprintln!(
        "testenv: cluster up in {:.1}s; KUBECONFIG={}",
        c.started_in.as_secs_f64(),
        c.layout.kubeconfig("admin").display()
    );
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        if let Some(p) = c
            .procs
            .iter_mut()
            .find_map(|p| p.exited().map(|s| (p.name.clone(), s, p.log_tail(30))))
        {
            break Err(Error::NotReady {
                name: p.0,
                reason: format!("exited with {}", p.1),
                log: p.2,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    c.down();
    result
}
