//! One task per pod bound to our node: prepares volumes, runs (or simulates) its containers
//! in kubelet order, restarts them by policy, writes `pods/status`, and finishes deletion.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use serde_json::{Value, json};
use tokio::{
    sync::mpsc,
    time::{Instant, sleep_until},
};

use super::{
    Ctx, POD_IP, env,
    sys::{self, BindMount, Launch},
    volumes::{self, MountPoints, PodVolumes, SA_MOUNT},
};

/// What the dispatcher tells a pod task.
#[derive(Debug)]
pub(crate) enum Msg {
    /// The pod's newest version.
    Update(Box<Pod>),
    /// The pod is gone from the API server.
    Gone,
}

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const MAX_GRACE: Duration = Duration::from_secs(10);

fn now() -> Timestamp {
    Timestamp::now()
}

fn ts(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[derive(Debug, Clone)]
struct Term {
    code: i32,
    reason: String,
    message: Option<String>,
    started_at: Timestamp,
    finished_at: Timestamp,
    id: String,
}

#[derive(Debug, Clone)]
enum State {
    Waiting { reason: String, message: Option<String> },
    Running { pid: Option<i32>, id: String, started_at: Timestamp, since: Instant },
    Terminated(Term),
}

#[derive(Debug)]
struct C {
    spec: Container,
    init: bool,
    sidecar: bool,
    /// The local binary for "our" images; `None` means simulated.
    binary: Option<PathBuf>,
    state: State,
    last: Option<Term>,
    restarts: i32,
    backoff: Duration,
    next_start: Option<Instant>,
    ever_started: bool,
}

impl C {
    fn image(&self) -> String {
        self.spec.image.clone().unwrap_or_default()
    }
    fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }
    fn pid(&self) -> Option<i32> {
        match self.state {
            State::Running { pid, .. } => pid,
            _ => None,
        }
    }
    fn exit_code(&self) -> Option<i32> {
        match &self.state {
            State::Terminated(t) => Some(t.code),
            _ => None,
        }
    }
}

struct Exit {
    idx: usize,
    pid: i32,
    code: i32,
}

/// Where the pod's logs go: `<root>/pods/<ns>_<pod>_<uid>/<container>.log`.
pub(crate) fn log_dir(root: &Path, ns: &str, name: &str, uid: &str) -> PathBuf {
    root.join("pods").join(format!("{ns}_{name}_{uid}"))
}

pub(crate) struct Worker {
    ctx: Arc<Ctx>,
    pod: Pod,
    ns: String,
    name: String,
    uid: String,
    cs: Vec<C>,
    vols: Option<PodVolumes>,
    sa_dir: Option<PathBuf>,
    mount_points: MountPoints,
    prepare_error: Option<String>,
    start_time: Timestamp,
    /// The phase we decided; Succeeded/Failed are final.
    phase: &'static str,
    init_failed: bool,
    /// Sent SIGTERM to what is running; SIGKILL at this instant.
    kill_at: Option<Instant>,
    stopping: bool,
    delete_sent: bool,
    retry_at: Option<Instant>,
    token_refresh_at: Option<Instant>,
    conds: HashMap<String, (String, String)>,
    last_patch: Option<Value>,
    exit_tx: mpsc::UnboundedSender<Exit>,
    exit_rx: mpsc::UnboundedReceiver<Exit>,
}

impl Worker {
    pub(crate) fn new(ctx: Arc<Ctx>, pod: Pod) -> Self {
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let spec = pod.spec.clone().unwrap_or_default();
        let images = ctx.images.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mk = |c: &Container, init: bool| C {
            spec: c.clone(),
            init,
            sidecar: init && c.restart_policy.as_deref() == Some("Always"),
            binary: c.image.as_ref().and_then(|i| images.get(i).cloned()),
            state: State::Waiting {
                reason: if init { "PodInitializing" } else { "ContainerCreating" }.into(),
                message: None,
            },
            last: None,
            restarts: 0,
            backoff: BACKOFF_START,
            next_start: None,
            ever_started: false,
        };
        let mut cs: Vec<C> = spec.init_containers.iter().flatten().map(|c| mk(c, true)).collect();
        cs.extend(spec.containers.iter().map(|c| mk(c, false)));
        let status = pod.status.clone().unwrap_or_default();
        let phase = match status.phase.as_deref() {
            Some("Succeeded") => "Succeeded",
            Some("Failed") => "Failed",
            _ => "Pending",
        };
        let conds = status
            .conditions
            .iter()
            .flatten()
            .map(|c| {
                let t = c.last_transition_time.as_ref().map(|t| ts(t.0)).unwrap_or_else(|| ts(now()));
                (c.type_.clone(), (c.status.clone(), t))
            })
            .collect();
        Self {
            ns: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            start_time: status.start_time.map(|t| t.0).unwrap_or_else(now),
            ctx,
            pod,
            cs,
            vols: None,
            sa_dir: None,
            mount_points: MountPoints::default(),
            prepare_error: None,
            phase,
            init_failed: false,
            kill_at: None,
            stopping: false,
            delete_sent: false,
            retry_at: None,
            token_refresh_at: None,
            conds,
            last_patch: None,
            exit_tx,
            exit_rx,
        }
    }

    fn terminal(&self) -> bool {
        matches!(self.phase, "Succeeded" | "Failed")
    }

    fn restart_policy(&self) -> &str {
        self.pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
    }

    /// Run until the pod is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let adopted_terminal = self.terminal();
        if adopted_terminal {
            self.last_patch = Some(Value::Null); // leave a finished pod's status alone
        }
        loop {
            self.reconcile().await;
            let wake = self.next_wake();
            tokio::select! {
                m = rx.recv() => match m {
                    Some(Msg::Update(p)) => self.pod = *p,
                    Some(Msg::Gone) | None => {
                        self.gone();
                        return;
                    }
                },
                Some(e) = self.exit_rx.recv() => self.on_exit(e),
                _ = sleep_until(wake) => {}
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        [self.retry_at, self.kill_at, self.token_refresh_at]
            .into_iter()
            .chain(self.cs.iter().map(|c| c.next_start))
            .flatten()
            .min()
            .unwrap_or(far)
            .min(far)
    }

    fn log(&self, msg: impl std::fmt::Display) {
        self.ctx.log(format_args!("pod {}/{}: {msg}", self.ns, self.name));
    }

    /// The pod vanished (force-deleted, or deleted by us): kill, clean up.
    fn gone(&mut self) {
        for c in &self.cs {
            if let Some(pid) = c.pid() {
                sys::kill_group(pid, libc::SIGKILL);
            }
        }
        self.cleanup();
        self.log("gone");
    }

    fn cleanup(&mut self) {
        self.mount_points.release();
        let _ = std::fs::remove_dir_all(volumes::pod_dir(&self.ctx.root, &self.uid));
    }

    fn on_exit(&mut self, e: Exit) {
        let restart_policy = self.restart_policy().to_string();
        let stopping = self.stopping || self.terminal();
        let Some(c) = self.cs.get_mut(e.idx) else { return };
        let State::Running { pid: Some(pid), id, started_at, since } = &c.state else { return };
        if *pid != e.pid {
            return;
        }
        let t = Term {
            code: e.code,
            reason: if e.code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: *started_at,
            finished_at: now(),
            id: id.clone(),
        };
        let ran_long = since.elapsed() > Duration::from_secs(60);
        self.ctx.log(format_args!(
            "pod {}/{}: container {} (pid {}) exited with {}",
            self.ns, self.name, c.spec.name, e.pid, e.code
        ));
        Self::after_exit(c, t, &restart_policy, stopping, ran_long);
    }

    /// Record a termination; schedule a restart if the policy asks for one.
    fn after_exit(c: &mut C, t: Term, restart_policy: &str, stopping: bool, ran_long: bool) {
        let restart = !stopping
            && if c.sidecar {
                true
            } else if c.init {
                restart_policy != "Never" && t.code != 0
            } else {
                match restart_policy {
                    "Never" => false,
                    "OnFailure" => t.code != 0,
                    _ => true,
                }
            };
        if ran_long {
            c.backoff = BACKOFF_START;
        }
        if restart {
            c.next_start = Some(Instant::now() + c.backoff);
            c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
            c.state = State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!("back-off restarting failed container {}", c.spec.name)),
            };
            c.last = Some(t);
        } else {
            c.state = State::Terminated(t);
        }
    }

    async fn reconcile(&mut self) {
        let now_i = Instant::now();
        if self.retry_at.is_some_and(|t| t <= now_i) {
            self.retry_at = None;
        }
        if self.delete_sent {
            return;
        }
        if self.pod.metadata.deletion_timestamp.is_some() {
            self.reconcile_deletion().await;
            return;
        }
        if self.last_patch == Some(Value::Null) {
            return; // adopted an already finished pod
        }
        if !self.terminal() {
            self.run_containers().await;
        }
        if self.terminal() {
            self.stop_processes(MAX_GRACE);
            self.escalate_kill();
            if !self.any_running() {
                self.mount_points.release();
            }
        }
        self.patch_status().await;
    }

    fn any_running(&self) -> bool {
        self.cs.iter().any(|c| c.pid().is_some())
    }

    /// SIGTERM every real process once; SIGKILL at `kill_at`. Simulated containers stop at once.
    fn stop_processes(&mut self, grace: Duration) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        let mut any = false;
        for c in &mut self.cs {
            match &c.state {
                State::Running { pid: Some(pid), .. } => {
                    sys::kill_group(*pid, libc::SIGTERM);
                    any = true;
                }
                State::Running { pid: None, id, started_at, .. } => {
                    let t = Term {
                        code: 0,
                        reason: "Completed".into(),
                        message: None,
                        started_at: *started_at,
                        finished_at: now(),
                        id: id.clone(),
                    };
                    c.state = State::Terminated(t);
                }
                _ => {}
            }
            c.next_start = None;
        }
        if any {
            self.kill_at = Some(Instant::now() + grace);
        }
    }

    fn escalate_kill(&mut self) {
        if self.kill_at.is_some_and(|t| t <= Instant::now()) {
            self.kill_at = None;
            for c in &self.cs {
                if let Some(pid) = c.pid() {
                    sys::kill_group(pid, libc::SIGKILL);
                }
            }
        }
    }

    async fn reconcile_deletion(&mut self) {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(MAX_GRACE)
            .min(MAX_GRACE);
        self.stop_processes(grace);
        self.escalate_kill();
        if self.any_running() {
            return;
        }
        // Every container has stopped: the kubelet's final status, then the real delete.
        if !self.terminal() {
            let all_ok = self.cs.iter().filter(|c| !c.init).all(|c| c.exit_code() == Some(0));
            self.phase = if all_ok && self.restart_policy() != "Always" { "Succeeded" } else { "Failed" };
        }
        if self.last_patch != Some(Value::Null) {
            self.patch_status().await;
        }
        self.cleanup();
        let api = Api::<Pod>::namespaced(self.ctx.client(), &self.ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }),
            ..DeleteParams::default()
        };
        match api.delete(&self.name, &dp).await {
            Ok(_) => {
                self.delete_sent = true;
                self.log("deleted");
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => self.delete_sent = true,
            Err(e) => {
                self.log(format_args!("delete failed: {e}"));
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    async fn prepare(&mut self) -> bool {
        if self.vols.is_some() {
            return true;
        }
        let mut vols = match volumes::prepare(&self.ctx, &self.pod).await {
            Ok(v) => v,
            Err(e) => return self.prepare_failed(e),
        };
        let spec = self.pod.spec.clone().unwrap_or_default();
        let has_sa_mount = self
            .cs
            .iter()
            .any(|c| c.spec.volume_mounts.iter().flatten().any(|m| m.mount_path.trim_end_matches('/') == SA_MOUNT));
        if !has_sa_mount
            && spec.automount_service_account_token != Some(false)
            && self.cs.iter().any(|c| c.binary.is_some())
        {
            match volumes::fallback_sa_dir(&self.ctx, &self.pod, &mut vols).await {
                Ok(d) => self.sa_dir = Some(d),
                Err(e) => return self.prepare_failed(e),
            }
        }
        if !vols.tokens.is_empty() {
            let min = vols.tokens.iter().map(|t| t.expiration.max(600)).min().unwrap_or(3600);
            self.token_refresh_at = Some(Instant::now() + Duration::from_secs(min as u64 * 8 / 10));
        }
        self.vols = Some(vols);
        self.prepare_error = None;
        true
    }

    fn prepare_failed(&mut self, e: String) -> bool {
        if self.prepare_error.as_ref() != Some(&e) {
            self.log(format_args!("volumes: {e}"));
        }
        self.prepare_error = Some(e);
        self.retry_at = Some(Instant::now() + Duration::from_secs(2));
        false
    }

    async fn refresh_tokens(&mut self) {
        if self.token_refresh_at.is_none_or(|t| t > Instant::now()) {
            return;
        }
        let tokens = self.vols.as_ref().map(|v| v.tokens.clone()).unwrap_or_default();
        let mut ok = true;
        for t in &tokens {
            if let Err(e) = volumes::write_token(&self.ctx, &self.pod, t).await {
                self.log(format_args!("token refresh: {e}"));
                ok = false;
            }
        }
        let min = tokens.iter().map(|t| t.expiration.max(600)).min().unwrap_or(3600) as u64;
        let next = if ok { Duration::from_secs(min * 8 / 10) } else { Duration::from_secs(10) };
        self.token_refresh_at = Some(Instant::now() + next);
    }

    async fn run_containers(&mut self) {
        if !self.prepare().await {
            return;
        }
        self.refresh_tokens().await;
        let policy = self.restart_policy().to_string();
        let now_i = Instant::now();
        let due = |c: &C| c.next_start.is_none_or(|t| t <= now_i);
        let n_init = self.cs.iter().filter(|c| c.init).count();
        // Init containers, in order.
        let mut initialized = true;
        for i in 0..n_init {
            if self.cs[i].sidecar {
                if matches!(self.cs[i].state, State::Waiting { .. }) && due(&self.cs[i]) {
                    self.start(i).await;
                }
                continue;
            }
            match &self.cs[i].state {
                State::Terminated(t) if t.code == 0 => continue,
                State::Terminated(_) => {
                    // Not restarted (restartPolicy Never): the pod has failed.
                    self.init_failed = true;
                    initialized = false;
                    break;
                }
                State::Running { .. } => {
                    initialized = false;
                    break;
                }
                State::Waiting { .. } => {
                    if due(&self.cs[i]) {
                        self.start(i).await;
                    }
                    if self.cs[i].exit_code() == Some(0) {
                        continue;
                    }
                    initialized = false;
                    break;
                }
            }
        }
        if initialized {
            for i in n_init..self.cs.len() {
                if matches!(self.cs[i].state, State::Waiting { .. }) && due(&self.cs[i]) {
                    self.start(i).await;
                }
            }
        }
        // Phase.
        let mains: Vec<&C> = self.cs.iter().filter(|c| !c.init).collect();
        self.phase = if self.init_failed {
            "Failed"
        } else if !initialized {
            "Pending"
        } else if mains.iter().all(|c| matches!(c.state, State::Terminated(_))) {
            if mains.iter().all(|c| c.exit_code() == Some(0)) { "Succeeded" } else { "Failed" }
        } else if mains.iter().any(|c| c.ever_started) {
            "Running"
        } else {
            "Pending"
        };
        if self.terminal() {
            self.log(format_args!("phase {} (restartPolicy {policy})", self.phase));
        }
    }

    /// Start container `i`: a local process for our images, a simulation otherwise.
    async fn start(&mut self, i: usize) {
        if self.ctx.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let policy = self.restart_policy().to_string();
        let was_started = self.cs[i].ever_started;
        let started_at = now();
        let c = &self.cs[i];
        let Some(binary) = c.binary.clone() else {
            // Simulated: "runs" until stopped; in run-to-completion pods (and as an init
            // container) it completes at once with exit code 0.
            let id = format!("testenv://simulated/{}/{}", self.uid, c.spec.name);
            let completes = (c.init && !c.sidecar) || (!c.init && policy != "Always");
            let c = &mut self.cs[i];
            if was_started {
                c.restarts += 1;
            }
            c.ever_started = true;
            c.next_start = None;
            c.state = if completes {
                State::Terminated(Term {
                    code: 0,
                    reason: "Completed".into(),
                    message: None,
                    started_at,
                    finished_at: started_at,
                    id,
                })
            } else {
                State::Running { pid: None, id, started_at, since: Instant::now() }
            };
            return;
        };
        let launch = match self.launch(i, binary).await {
            Ok(l) => l,
            Err(e) => {
                self.log(format_args!("container {}: {e}", self.cs[i].spec.name));
                let c = &mut self.cs[i];
                c.state = State::Waiting { reason: "CreateContainerConfigError".into(), message: Some(e) };
                c.next_start = Some(Instant::now() + Duration::from_secs(2));
                return;
            }
        };
        let tx = self.exit_tx.clone();
        let live = self.ctx.live.clone();
        let spawned = tokio::task::spawn_blocking(move || {
            sys::spawn(&launch, &live, move |pid, code| {
                let _ = tx.send(Exit { idx: i, pid, code });
            })
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let c = &mut self.cs[i];
        if was_started {
            c.restarts += 1;
        }
        c.ever_started = true;
        c.next_start = None;
        match spawned {
            Ok(pid) => {
                if self.ctx.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    sys::kill_group(pid, libc::SIGKILL); // raced with the agent's stop
                }
                let id = format!("testenv://{pid}");
                self.ctx
                    .log(format_args!("pod {}/{}: container {} started (pid {pid})", self.ns, self.name, c.spec.name));
                c.state = State::Running { pid: Some(pid), id, started_at, since: Instant::now() };
            }
            Err(e) => {
                let msg = format!("cannot start {}: {e}", c.spec.name);
                self.ctx.log(format_args!("pod {}/{}: {msg}", self.ns, self.name));
                let t = Term {
                    code: 128,
                    reason: "StartError".into(),
                    message: Some(msg),
                    started_at,
                    finished_at: now(),
                    id: String::new(),
                };
                Self::after_exit(c, t, &policy, false, false);
            }
        }
    }

    /// Everything needed to spawn container `i`.
    async fn launch(&mut self, i: usize, binary: PathBuf) -> Result<Launch, String> {
        let c = self.cs[i].spec.clone();
        let ctx = self.ctx.clone();
        let mut path: Vec<String> =
            ctx.path_dirs.read().unwrap_or_else(|e| e.into_inner()).iter().map(|p| p.display().to_string()).collect();
        path.extend(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(String::from));
        let base = vec![
            ("PATH".to_string(), path.join(":")),
            ("HOME".to_string(), "/root".to_string()),
            ("HOSTNAME".to_string(), self.name.clone()),
            ("KUBERNETES_SERVICE_HOST".to_string(), ctx.api_host.clone()),
            ("KUBERNETES_SERVICE_PORT".to_string(), ctx.api_port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".to_string(), ctx.api_port.to_string()),
            ("KUBERNETES_PORT".to_string(), format!("tcp://{}:{}", ctx.api_host, ctx.api_port)),
        ];
        let env = env::resolve(&ctx, &self.pod, &c, base).await?;
        let env_map: HashMap<String, String> = env.iter().cloned().collect();
        let mut args: Vec<String> = c.command.iter().flatten().skip(1).cloned().collect();
        args.extend(c.args.iter().flatten().cloned());
        let args = args.iter().map(|a| env::expand(a, &env_map)).collect();

        // Mounts: volumes at their mount paths, parents first.
        let vols = self.vols.as_ref().ok_or("volumes not prepared")?;
        let mut mounts: Vec<BindMount> = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(host) = vols.paths.get(&m.name) else {
                return Err(format!("volumeMount {:?}: no volume of that name", m.name));
            };
            let sub = m
                .sub_path
                .clone()
                .filter(|s| !s.is_empty())
                .or_else(|| m.sub_path_expr.as_ref().map(|e| env::expand(e, &env_map)).filter(|s| !s.is_empty()));
            let src = match sub {
                Some(s) => {
                    let p = Path::new(&s);
                    if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                        return Err(format!("invalid subPath {s:?}"));
                    }
                    let src = host.join(p);
                    if !src.exists() {
                        std::fs::create_dir_all(&src).map_err(|e| format!("mkdir {}: {e}", src.display()))?;
                    }
                    src
                }
                None => host.clone(),
            };
            let read_only = m.read_only.unwrap_or(false) || vols.read_only.contains(&m.name);
            mounts.push(BindMount { src, dst: PathBuf::from(&m.mount_path), read_only });
        }
        if let Some(sa) = &self.sa_dir {
            mounts.push(BindMount { src: sa.clone(), dst: PathBuf::from(SA_MOUNT), read_only: true });
        }
        mounts.sort_by_key(|m| m.dst.components().count());
        // Mount points must exist before the bind: inside an earlier mount's source if they
        // are below it, else on the host (created and later removed by us).
        for k in 0..mounts.len() {
            let dst = mounts[k].dst.clone();
            let is_file = mounts[k].src.is_file();
            let parent = mounts[..k].iter().rev().find(|p| dst.starts_with(&p.dst) && dst != p.dst);
            match parent {
                Some(p) => {
                    let inner = p.src.join(dst.strip_prefix(&p.dst).unwrap_or(&dst));
                    if !inner.exists() {
                        let r = if is_file {
                            inner
                                .parent()
                                .map(std::fs::create_dir_all)
                                .transpose()
                                .and_then(|_| std::fs::write(&inner, b""))
                        } else {
                            std::fs::create_dir_all(&inner)
                        };
                        r.map_err(|e| format!("mount point {}: {e}", inner.display()))?;
                    }
                }
                None => self.mount_points.ensure(&dst, is_file)?,
            }
        }
        let cwd = c.working_dir.clone().filter(|w| !w.is_empty()).map(PathBuf::from).unwrap_or_else(|| "/".into());
        if !mounts.iter().any(|m| cwd.starts_with(&m.dst)) && !cwd.exists() {
            self.mount_points.ensure(&cwd, false)?;
        }
        let logs = log_dir(&ctx.root, &self.ns, &self.name, &self.uid);
        std::fs::create_dir_all(&logs).map_err(|e| format!("mkdir {}: {e}", logs.display()))?;
        Ok(Launch { program: binary, args, env, mounts, cwd, log: logs.join(format!("{}.log", c.name)) })
    }

    fn condition(&mut self, type_: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> Value {
        let status = if ok { "True" } else { "False" };
        let entry = self.conds.entry(type_.to_string()).or_insert_with(|| (status.to_string(), ts(now())));
        if entry.0 != status {
            *entry = (status.to_string(), ts(now()));
        }
        let mut v = json!({
            "type": type_,
            "status": status,
            "lastProbeTime": null,
            "lastTransitionTime": entry.1,
        });
        if let Some(r) = reason {
            v["reason"] = json!(r);
        }
        if let Some(m) = message {
            v["message"] = json!(m);
        }
        v
    }

    fn container_status(c: &C, initialized: bool) -> Value {
        let term = |t: &Term| {
            let mut v = json!({
                "exitCode": t.code,
                "reason": t.reason,
                "startedAt": ts(t.started_at),
                "finishedAt": ts(t.finished_at),
            });
            if !t.id.is_empty() {
                v["containerID"] = json!(t.id);
            }
            if let Some(m) = &t.message {
                v["message"] = json!(m);
            }
            json!({ "terminated": v })
        };
        let state = match &c.state {
            State::Waiting { reason, message } => {
                let reason =
                    if !c.init && !initialized && reason == "ContainerCreating" { "PodInitializing" } else { reason };
                let mut w = json!({ "reason": reason });
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({ "waiting": w })
            }
            State::Running { started_at, .. } => json!({ "running": { "startedAt": ts(*started_at) } }),
            State::Terminated(t) => term(t),
        };
        let ready = match &c.state {
            State::Running { .. } => true,
            State::Terminated(t) => c.init && !c.sidecar && t.code == 0,
            State::Waiting { .. } => false,
        };
        let image = c.image();
        let mut v = json!({
            "name": c.spec.name,
            "image": image,
            "imageID": format!("testenv://{image}"),
            "ready": ready,
            "started": c.running(),
            "restartCount": c.restarts,
            "state": state,
            "lastState": c.last.as_ref().map(term).unwrap_or_else(|| json!({})),
        });
        let id = match &c.state {
            State::Running { id, .. } => Some(id.clone()),
            State::Terminated(t) if !t.id.is_empty() => Some(t.id.clone()),
            _ => c.last.as_ref().map(|t| t.id.clone()).filter(|i| !i.is_empty()),
        };
        if let Some(id) = id {
            v["containerID"] = json!(id);
        }
        v
    }

    fn status(&mut self) -> Value {
        let n_init = self.cs.iter().filter(|c| c.init).count();
        let initialized = self.cs[..n_init].iter().all(|c| c.sidecar || c.exit_code() == Some(0))
            || (self.terminal() && !self.init_failed);
        let terminal = self.terminal();
        let not_init: Vec<String> = self.cs[..n_init]
            .iter()
            .filter(|c| !c.sidecar && c.exit_code() != Some(0))
            .map(|c| c.spec.name.clone())
            .collect();
        let not_ready: Vec<String> =
            self.cs.iter().filter(|c| (!c.init || c.sidecar) && !c.running()).map(|c| c.spec.name.clone()).collect();
        let containers_ready = not_ready.is_empty() && !terminal;
        let gates: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|g| g.condition_type)
            .collect();
        let existing = self.pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let gates_ok = gates.iter().all(|g| existing.iter().any(|c| &c.type_ == g && c.status == "True"));
        let ours = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"];
        let list = |names: &[String]| format!("[{}]", names.join(" "));
        let completed = terminal.then_some("PodCompleted");
        let mut conditions = vec![
            self.condition("PodReadyToStartContainers", self.vols.is_some() && !terminal, None, None),
            self.condition(
                "Initialized",
                initialized,
                if initialized { completed } else { Some("ContainersNotInitialized") },
                (!initialized).then(|| format!("containers with incomplete status: {}", list(&not_init))),
            ),
            self.condition(
                "Ready",
                containers_ready && gates_ok,
                if terminal {
                    completed
                } else if !containers_ready {
                    Some("ContainersNotReady")
                } else if !gates_ok {
                    Some("ReadinessGatesNotReady")
                } else {
                    None
                },
                (!containers_ready && !terminal)
                    .then(|| format!("containers with unready status: {}", list(&not_ready))),
            ),
            self.condition(
                "ContainersReady",
                containers_ready,
                if terminal {
                    completed
                } else if !containers_ready {
                    Some("ContainersNotReady")
                } else {
                    None
                },
                (!containers_ready && !terminal)
                    .then(|| format!("containers with unready status: {}", list(&not_ready))),
            ),
            self.condition("PodScheduled", true, None, None),
        ];
        for c in existing {
            if !ours.contains(&c.type_.as_str()) {
                conditions.push(serde_json::to_value(&c).unwrap_or(Value::Null));
            }
        }
        let init_statuses: Vec<Value> =
            self.cs[..n_init].iter().map(|c| Self::container_status(c, initialized)).collect();
        let statuses: Vec<Value> = self.cs[n_init..].iter().map(|c| Self::container_status(c, initialized)).collect();
        let mut status = json!({
            "phase": self.phase,
            "conditions": conditions,
            "hostIP": POD_IP,
            "hostIPs": [{ "ip": POD_IP }],
            "podIP": POD_IP,
            "podIPs": [{ "ip": POD_IP }],
            "startTime": ts(self.start_time),
            "containerStatuses": statuses,
            "initContainerStatuses": init_statuses,
        });
        if let Some(g) = self.pod.metadata.generation {
            status["observedGeneration"] = json!(g);
        }
        if let Some(e) = &self.prepare_error {
            status["message"] = json!(e);
            status["reason"] = json!("ContainerCreating");
        } else {
            status["message"] = Value::Null;
            status["reason"] = Value::Null;
        }
        status
    }

    async fn patch_status(&mut self) {
        let status = self.status();
        if self.last_patch.as_ref() == Some(&status) {
            return;
        }
        let api = Api::<Pod>::namespaced(self.ctx.client(), &self.ns);
        let body = json!({ "status": status });
        match api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&body)).await {
            Ok(_) => self.last_patch = Some(status),
            Err(kube::Error::Api(s)) if s.code == 404 => self.last_patch = Some(status),
            Err(e) => {
                self.log(format_args!("status patch failed: {e}"));
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }
}

/// Pod uids with a task, for the dispatcher.
pub(crate) type Workers = HashMap<String, mpsc::UnboundedSender<Msg>>;

/// Keep only workers whose uid is in `seen` (after a re-list); tell the others their pod is gone.
pub(crate) fn retain_seen(workers: &mut Workers, seen: &HashSet<String>) {
    workers.retain(|uid, tx| {
        let keep = seen.contains(uid);
        if !keep {
            let _ = tx.send(Msg::Gone);
        }
        keep
    });
}
