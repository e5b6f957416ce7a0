//! Child processes of the control plane: each in its own process group, killed with
//! its parent, and stopped by its process group id (never by name).
#![allow(unsafe_code)] // pre_exec needs setpgid/prctl between fork and exec.

use std::{
    fs::File,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    thread,
    time::{Duration, Instant},
};

use crate::Error;

/// A running server process, in its own process group.
#[derive(Debug)]
pub struct Proc {
    /// A short name, used in messages and for the log file.
    pub name: String,
    /// The child; its pid is also its process group id.
    child: Child,
    /// Where stdout and stderr go.
    pub log: PathBuf,
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Children get `PR_SET_PDEATHSIG`, which fires when the *thread* that forked them
/// exits. Spawning from one thread that lives as long as the process makes it mean
/// "when the test process dies" rather than "when some pool thread idles out".
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the testenv spawner thread");
        Mutex::new(tx)
    })
}

impl Proc {
    /// Start `bin args…` with output to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, bin: &Path, args: &[String], log_dir: &Path) -> Result<Self, Error> {
        Self::spawn_with_env(name, bin, args, &[], log_dir)
    }

    /// Like [`Proc::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, &std::ffi::OsStr)],
        log_dir: &Path,
    ) -> Result<Self, Error> {
        let log = log_dir.join(format!("{name}.log"));
        let out =
            File::create(&log).map_err(|e| Error::Io(format!("create {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::Io("dup log".into(), e))?;
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .expect("spawner lock")
            .send((cmd, tx))
            .map_err(|_| Error::Spawn {
                name: name.into(),
                reason: "spawner thread is gone".into(),
            })?;
        let child = rx
            .recv()
            .map_err(|_| Error::Spawn {
                name: name.into(),
                reason: "spawner thread is gone".into(),
            })?
            .map_err(|e| Error::Spawn {
                name: name.into(),
                reason: format!("{}: {e}", bin.display()),
            })?;
        Ok(Self {
            name: name.into(),
            child,
            log,
        })
    }

    /// The process (and process group) id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` when the process has already exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `n` lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL the process group at once (a crash, for tests) and reap it.
    pub fn kill(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-(self.pid() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// SIGTERM the process group, wait up to `grace`, then SIGKILL it.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let pgid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Reserve a free loopback port: bind port 0, remember the port, release it.
/// Ports handed out are remembered so one process never hands out the same port twice.
pub fn free_port() -> Result<u16, Error> {
    static USED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::Io("bind 127.0.0.1:0".into(), e))?;
        let port = l
            .local_addr()
            .map_err(|e| Error::Io("local_addr".into(), e))?
            .port();
        let mut used = USED.lock().expect("port lock");
        if !used.contains(&port) {
            used.push(port);
            return Ok(port);
        }
    }
    Err(Error::Spawn {
        name: "ports".into(),
        reason: "no free loopback port".into(),
    })
}
