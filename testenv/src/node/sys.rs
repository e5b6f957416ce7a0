//! Fork-time system calls for pod processes: each container process gets its own process
//! group, `PR_SET_PDEATHSIG=SIGKILL`, and a private mount namespace with its volumes
//! bind-mounted at their mount paths.
//!
//! Everything that runs between `fork` and `exec` (the `pre_exec` closure) only makes raw
//! system calls on data prepared before the fork (C strings, flags): no allocation, no locks.
#![allow(unsafe_code)]

use std::{
    collections::HashSet,
    ffi::CString,
    fs::OpenOptions,
    io,
    os::unix::{ffi::OsStrExt, process::CommandExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread,
};

/// One bind mount inside the container's mount namespace.
#[derive(Debug, Clone)]
pub(crate) struct BindMount {
    /// The host file or directory.
    pub src: PathBuf,
    /// Where it appears (an absolute path, which must exist on the host).
    pub dst: PathBuf,
    /// Remount read-only after binding.
    pub read_only: bool,
}

/// What to run for one container.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// In mount order (parents before children).
    pub mounts: Vec<BindMount>,
    pub cwd: PathBuf,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
}

/// Process groups of running pod processes, shared with whoever has to kill them all.
pub(crate) type Live = Arc<Mutex<HashSet<i32>>>;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits; forking from one
/// thread that lives as long as the process ties pod processes to the process.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("node-agent-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the node agent's spawner thread");
        Mutex::new(tx)
    })
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// The mount flags of the file system holding `path` that an unprivileged remount must keep.
fn locked_flags(path: &Path) -> libc::c_ulong {
    let Ok(c) = cstr(path) else { return 0 };
    // SAFETY: statvfs(3) writes into the zeroed struct we own; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let f = st.f_flag;
    let mut out = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_flag != 0 {
            out |= ms_flag;
        }
    }
    out
}

/// Start `l` and call `on_exit(pid, exit code)` from a waiter thread when it exits (after the
/// rest of its process group has been killed, as a container runtime would). Returns the
/// pid, which is also the process group id.
pub(crate) fn spawn(l: &Launch, live: &Live, on_exit: impl FnOnce(i32, i32) + Send + 'static) -> io::Result<i32> {
    struct M {
        src: CString,
        staged: CString,
        staged_is_file: bool,
        dst: CString,
        ro_flags: Option<libc::c_ulong>,
    }
    // Two phases inside the new namespace: first every source is bound into a private
    // staging tmpfs, then each staged copy is bound at its mount path. A mount over, say,
    // `/tmp` (an emptyDir) then cannot hide the sources of the mounts that follow it.
    let stage = ["/mnt", "/media", "/srv", "/opt"]
        .into_iter()
        .map(Path::new)
        .find(|st| {
            st.is_dir()
                && l.mounts.iter().all(|m| !m.dst.starts_with(st) && !st.starts_with(&m.dst) && !m.src.starts_with(st))
        })
        .ok_or_else(|| io::Error::other("no staging directory for the container's mounts"))?;
    let mounts = l
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Ok(M {
                src: cstr(&m.src)?,
                staged: cstr(&stage.join(i.to_string()))?,
                staged_is_file: m.src.is_file(),
                dst: cstr(&m.dst)?,
                ro_flags: m.read_only.then(|| locked_flags(&m.src)),
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let stage = cstr(stage)?;
    let tmpfs = CString::new("tmpfs").expect("static");
    let cwd = cstr(&l.cwd)?;
    let root = CString::new("/").expect("static");

    let out = OpenOptions::new().create(true).append(true).open(&l.log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(&l.program);
    cmd.args(&l.args).env_clear().envs(l.env.iter().cloned()).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: the closure runs in the forked child before exec. It only makes raw system
    // calls (setpgid, prctl, unshare, mount, chdir) on C strings and integers prepared above;
    // it does not allocate, lock or touch any other shared state.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
            check(libc::setpgid(0, 0))?;
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            // A private mount namespace: our bind mounts never show on the host.
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(tmpfs.as_ptr(), stage.as_ptr(), tmpfs.as_ptr(), 0, std::ptr::null()))?;
            for m in &mounts {
                if m.staged_is_file {
                    let fd = libc::open(m.staged.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o600);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    libc::close(fd);
                } else {
                    check(libc::mkdir(m.staged.as_ptr(), 0o700))?;
                }
                check(libc::mount(
                    m.src.as_ptr(),
                    m.staged.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
            }
            for m in &mounts {
                check(libc::mount(
                    m.staged.as_ptr(),
                    m.dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                if let Some(flags) = m.ro_flags {
                    check(libc::mount(
                        std::ptr::null(),
                        m.dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | flags,
                        std::ptr::null(),
                    ))?;
                }
            }
            check(libc::chdir(cwd.as_ptr()))?;
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    let mut child = rx.recv().map_err(|_| io::Error::other("spawner thread is gone"))??;
    let pid = child.id() as i32;
    live.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
    let live = live.clone();
    thread::Builder::new().name(format!("pod-wait-{pid}")).spawn(move || {
        // Wait for the exit without reaping, so the pid (and with it the process group id)
        // cannot be reused while we kill what is left of the group.
        // SAFETY: waitid(2) on our own child, writing into a zeroed siginfo we own.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        kill_group(pid, libc::SIGKILL);
        live.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
        let code = match child.wait() {
            Ok(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)),
            Err(_) => 255,
        };
        on_exit(pid, code);
    })?;
    Ok(pid)
}

/// Send `sig` to process group `pgid`.
pub(crate) fn kill_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) on a process group we created (never 0, 1 or negative).
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// Kill every live process group in `live`: SIGTERM, up to `grace` for them to go, SIGKILL.
pub(crate) fn kill_all(live: &Live, grace: std::time::Duration) {
    let groups: Vec<i32> = live.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
    for g in &groups {
        kill_group(*g, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if live.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return;
        }
        thread::sleep(std::time::Duration::from_millis(20));
    }
    let groups: Vec<i32> = live.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
    for g in groups {
        kill_group(g, libc::SIGKILL);
    }
}

/// The kernel release, for the Node's `nodeInfo`.
pub(crate) fn kernel_release() -> String {
    // SAFETY: uname(2) fills the zeroed struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = u.release.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
