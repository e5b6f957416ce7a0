//! Running one restic process: clean environment, own process group, stdin/stdout plumbing,
//! stderr watching (backend retries, exit_error messages) and time limits.
#![allow(unsafe_code)] // kill(2) on our own child's process group.

use std::{
    collections::VecDeque,
    ffi::OsString,
    path::Path,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::{Error, Result, error::scrub};

/// How long restic gets to clean up (remove its lock) after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
const TAIL_LINES: usize = 20;

/// restic processes started and not yet known to have exited.
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Wait (at most `bound`) until every restic this process started has exited: a process
/// that is told to stop (SIGTERM) drops its work, which asks each restic to stop and clean up
/// its lock, and then must not exit before they did (in a container, the exit of PID 1
/// SIGKILLs them). True when none is left.
pub async fn stopped(bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if RUNNING.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn exited() {
    RUNNING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
}

pub(crate) type DynRead<'a> = &'a mut (dyn AsyncRead + Unpin + Send);
pub(crate) type DynWrite<'a> = &'a mut (dyn AsyncWrite + Unpin + Send);

/// One invocation.
pub(crate) struct Invocation<'a> {
    pub sub: &'static str,
    pub program: OsString,
    pub argv: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: &'a Path,
    pub stdin: Option<DynRead<'a>>,
    /// `None`: capture stdout into [`Finished::stdout`].
    pub stdout: Option<DynWrite<'a>>,
    pub timeout: Option<Duration>,
    pub retry_budget: Option<Duration>,
    pub secrets: &'a [String],
}

/// A restic process that ran to its end.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    /// The `exit_error` message restic printed with `--json` (code, message).
    pub exit_error: Option<(i32, String)>,
    /// The last stderr lines (JSON `error` messages reduced to their text), scrubbed.
    pub tail: Vec<String>,
    /// The items a backup could not read (its archival-phase `error` messages), scrubbed.
    pub unreadable: crate::Unreadable,
}

impl Finished {
    /// The line that explains a failure: the first line of the `exit_error` message, else
    /// the last non-empty stderr line (already scrubbed).
    pub fn reason(&self) -> String {
        if let Some((_, m)) = &self.exit_error
            && let Some(first) = m.lines().find(|l| !l.trim().is_empty())
        {
            return first.trim().to_string();
        }
        self.tail
            .last()
            .cloned()
            .unwrap_or_else(|| "no output on stderr".into())
    }

    /// Turn a non-zero exit into the matching [`Error`].
    pub fn error(&self) -> Error {
        let reason = self.reason();
        let code = self.status.code();
        match code {
            Some(10) => Error::RepositoryNotFound { reason },
            Some(11) => Error::Locked { reason },
            Some(12) => Error::WrongPassword { reason },
            _ if looks_unreachable(&reason) || self.tail.iter().any(|l| looks_unreachable(l)) => {
                Error::Unreachable { reason }
            }
            _ => Error::Failed {
                status: go_status(&self.status),
                code,
                reason,
            },
        }
    }
}

/// Like Go's `(*exec.ExitError).Error()`.
fn go_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("signal: {s}"),
        _ => status.to_string(),
    }
}

pub(crate) fn looks_unreachable(line: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "connection refused",
        "no such host",
        "i/o timeout",
        "network is unreachable",
        "no route to host",
        "connection reset by peer",
        "context deadline exceeded",
        "Client.Timeout exceeded",
        "server misbehaving",
    ];
    PATTERNS.iter().any(|p| line.contains(p))
}

#[derive(Default)]
struct StderrState {
    tail: VecDeque<String>,
    exit_error: Option<(i32, String)>,
    retrying_since: Option<Instant>,
    last_retry: Option<String>,
    /// The Azure container restic keeps retrying on because it does not exist.
    missing_container: Option<String>,
    /// `backup`: the items restic could not read.
    unreadable: crate::Unreadable,
}

/// The Azure container of a retried request (`… HEAD https://<account>.blob.<suffix>/<container>/<blob>`):
/// restic 0.19.1 retries `ContainerNotFound` (only `BlobNotFound` is "not found" to it), so a
/// missing container would otherwise look like a flaky backend until the retry budget ends.
pub(crate) fn azure_container(retry_line: &str) -> Option<String> {
    let url = retry_line
        .split_whitespace()
        .find(|w| w.starts_with("https://") || w.starts_with("http://"))?;
    let path = url.split_once("://")?.1.split_once('/')?.1;
    let container = path.split(['/', '?']).next()?;
    (!container.is_empty()).then(|| container.to_string())
}

impl StderrState {
    fn push(&mut self, raw: &str, secrets: &[String]) {
        let line = raw.trim();
        if line.is_empty() {
            return;
        }
        let text = if line.starts_with('{') {
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) if v["message_type"] == "exit_error" => {
                    let code = v["code"].as_i64().unwrap_or(1) as i32;
                    let msg = scrub(v["message"].as_str().unwrap_or_default(), secrets);
                    self.exit_error = Some((code, msg.clone()));
                    msg.lines().next().unwrap_or_default().to_string()
                }
                Ok(v) if v["message_type"] == "error" => {
                    // backup/restore: {"error":{"message":…},"item":…}; check: {"message":…}.
                    let msg = v["error"]["message"]
                        .as_str()
                        .or(v["message"].as_str())
                        .unwrap_or_default();
                    let msg = msg.trim();
                    let item = v["item"].as_str().unwrap_or_default();
                    if v["during"] == "archival" && !item.is_empty() {
                        self.unreadable.push(scrub(item, secrets));
                    }
                    scrub(
                        &if item.is_empty() {
                            msg.to_string()
                        } else {
                            format!("{item}: {msg}")
                        },
                        secrets,
                    )
                }
                _ => scrub(line, secrets),
            }
        } else {
            scrub(line, secrets)
        };
        if text.contains("returned error, retrying after") {
            self.retrying_since.get_or_insert_with(Instant::now);
            self.last_retry = Some(text.clone());
        } else if text.contains("operation successful after") {
            self.retrying_since = None;
        } else if text.contains("ERROR CODE: ContainerNotFound") {
            self.missing_container = Some(
                self.last_retry
                    .as_deref()
                    .and_then(azure_container)
                    .unwrap_or_else(|| "(unknown)".into()),
            );
        }
        tracing::debug!(target: "stash_restic::stderr", "{text}");
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text);
    }
}

/// Stops the process group when dropped while armed (a cancelled future must not leave
/// restic running) the way restic can clean up after itself: SIGTERM first (restic removes its
/// lock files and exits), SIGKILL only after [`TERM_GRACE`], from a thread that watches the
/// process through a pidfd (so a reused pid is never signalled). Meanwhile the thread drains
/// restic's stdout and stderr through duplicates of their read ends: with the pipes closed,
/// restic's "cleaning up" line would kill it with SIGPIPE before it removed its lock. A
/// restic killed that way leaves its lock behind, and an exclusive lock refuses every later
/// backup of the repository.
struct GroupGuard {
    pgid: i32,
    /// A pidfd of restic (the group's leader), -1 when the kernel has none.
    pidfd: i32,
    /// Duplicates of the read ends of restic's stdout and stderr (-1: none).
    outputs: [i32; 2],
    armed: bool,
}

impl GroupGuard {
    fn signal(&self, sig: libc::c_int) {
        if self.armed && self.pgid > 0 {
            // SAFETY: kill(2) on the process group of a child we spawned and have not reaped.
            unsafe {
                libc::kill(-self.pgid, sig);
            }
        }
    }
}

/// Close the file descriptors of `fds` that are open (≥ 0).
fn close_all(fds: &[i32]) {
    for &fd in fds.iter().filter(|fd| **fd >= 0) {
        // SAFETY: closing descriptors this guard opened (pidfd, dup) and owns.
        unsafe { libc::close(fd) };
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let pidfd = std::mem::replace(&mut self.pidfd, -1);
        let outputs = std::mem::replace(&mut self.outputs, [-1, -1]);
        if !self.armed || self.pgid <= 0 {
            close_all(&[pidfd, outputs[0], outputs[1]]);
            exited();
            return;
        }
        // The leader has not been waited for (its Child is dropped after this guard), so the
        // group id is still ours.
        self.signal(libc::SIGTERM);
        if pidfd < 0 {
            // No pidfd (an old kernel): the group cannot be watched without a reuse race.
            self.signal(libc::SIGKILL);
            close_all(&outputs);
            exited();
            return;
        }
        let pgid = self.pgid;
        std::thread::spawn(move || {
            let deadline = Instant::now() + TERM_GRACE;
            let mut fds = [
                libc::pollfd {
                    fd: pidfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: outputs[0],
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: outputs[1],
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let mut buf = [0u8; 8192];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!(
                        pgid,
                        "restic did not stop within {TERM_GRACE:?} of SIGTERM: killed"
                    );
                    // SAFETY: pidfd_send_signal(2) on our own pidfd: only that very process.
                    unsafe {
                        libc::syscall(
                            libc::SYS_pidfd_send_signal,
                            pidfd,
                            libc::SIGKILL,
                            std::ptr::null::<libc::siginfo_t>(),
                            0,
                        );
                    }
                    break;
                }
                let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
                // SAFETY: poll(2) on descriptors this thread owns (negative ones are skipped).
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, ms) };
                if n < 0 {
                    continue;
                }
                if fds[0].revents != 0 {
                    break; // restic exited
                }
                for p in &mut fds[1..] {
                    if p.fd >= 0 && p.revents != 0 {
                        // SAFETY: read(2) into our buffer from a descriptor we own.
                        let r = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
                        if r == 0 || (r < 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0) {
                            // SAFETY: closing a descriptor we own, once.
                            unsafe { libc::close(p.fd) };
                            p.fd = -1;
                        }
                    }
                }
            }
            close_all(&[pidfd, fds[1].fd, fds[2].fd]);
            exited();
        });
    }
}

/// A duplicate of `fd` (dup(2)), -1 on failure.
fn dup(fd: std::os::fd::RawFd) -> i32 {
    // SAFETY: dup(2) of a descriptor of a pipe we hold open.
    unsafe { libc::dup(fd) }
}

/// A pidfd for `pid` (pidfd_open(2)), -1 when the kernel has none.
fn pidfd_open(pid: u32) -> i32 {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return -1;
    };
    // SAFETY: pidfd_open(2) on a child we spawned and have not reaped.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    i32::try_from(fd).unwrap_or(-1)
}

enum Stop {
    Timeout(Duration),
    Retrying(String),
    MissingContainer(String),
}

pub(crate) async fn run(inv: Invocation<'_>) -> Result<Finished> {
    let Invocation {
        sub,
        program,
        argv,
        env,
        cwd,
        stdin,
        stdout,
        timeout,
        retry_budget,
        secrets,
    } = inv;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&argv)
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Stopped by the guard below: SIGTERM, then SIGKILL after a grace (never SIGKILL at
        // once: restic would leave its lock).
        .kill_on_drop(false);
    tracing::debug!(command = sub, ?argv, "running restic");
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: program.to_string_lossy().into_owned(),
        source,
    })?;
    let child_stdin = child.stdin.take();
    let child_stdout = child.stdout.take().expect("stdout is piped");
    let child_stderr = child.stderr.take().expect("stderr is piped");
    RUNNING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut guard = GroupGuard {
        pgid: child.id().map_or(0, |p| p as i32),
        pidfd: child.id().map_or(-1, pidfd_open),
        outputs: [
            dup(std::os::fd::AsRawFd::as_raw_fd(&child_stdout)),
            dup(std::os::fd::AsRawFd::as_raw_fd(&child_stderr)),
        ],
        armed: true,
    };
    let state = Arc::new(Mutex::new(StderrState::default()));

    let stdin_fut = async move {
        if let (Some(r), Some(mut w)) = (stdin, child_stdin) {
            // restic may exit before reading everything (errors); a broken pipe is not ours
            // to report, its exit status is.
            let _ = tokio::io::copy(r, &mut w).await;
            let _ = w.shutdown().await;
        }
    };
    let stdout_fut = async move {
        let mut out = child_stdout;
        match stdout {
            Some(w) => {
                let r = tokio::io::copy(&mut out, w).await;
                let flushed = w.flush().await;
                r.and(flushed).map(|_| Vec::new())
            }
            None => {
                let mut buf = Vec::new();
                out.read_to_end(&mut buf).await.map(|_| buf)
            }
        }
    };
    let stderr_state = state.clone();
    let stderr_fut = async move {
        let mut lines = BufReader::new(child_stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            stderr_state
                .lock()
                .expect("stderr state")
                .push(&line, secrets);
        }
    };
    let work = async {
        let ((), out, ()) = tokio::join!(stdin_fut, stdout_fut, stderr_fut);
        (out, child.wait().await)
    };
    tokio::pin!(work);

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let stop = loop {
        tokio::select! {
            done = &mut work => {
                let (out, status) = done;
                guard.armed = false;
                let status = status.map_err(|e| Error::io(format!("wait for restic {sub}"), e))?;
                let out = out.map_err(|e| Error::io(format!("restic {sub} output"), e))?;
                let st = std::mem::take(&mut *state.lock().expect("stderr state"));
                return Ok(Finished {
                    status,
                    stdout: String::from_utf8_lossy(&out).into_owned(),
                    exit_error: st.exit_error,
                    tail: st.tail.into(),
                    unreadable: st.unreadable,
                });
            }
            _ = tick.tick() => {
                if let Some(t) = timeout && started.elapsed() > t {
                    break Stop::Timeout(t);
                }
                let st = state.lock().expect("stderr state");
                if let Some(c) = &st.missing_container {
                    break Stop::MissingContainer(c.clone());
                }
                if let (Some(budget), Some(since)) = (retry_budget, st.retrying_since)
                    && since.elapsed() > budget
                {
                    break Stop::Retrying(st.last_retry.clone().unwrap_or_default());
                }
            }
        }
    };

    // Ask restic to stop (it removes its lock on SIGTERM), then make sure.
    guard.signal(libc::SIGTERM);
    if tokio::time::timeout(TERM_GRACE, &mut work).await.is_err() {
        guard.signal(libc::SIGKILL);
        let _ = work.await;
    }
    guard.armed = false;
    let last = state
        .lock()
        .expect("stderr state")
        .tail
        .back()
        .cloned()
        .unwrap_or_default();
    Err(match stop {
        Stop::Timeout(after) => Error::Timeout {
            command: sub.into(),
            after,
            reason: last,
        },
        Stop::MissingContainer(container) => Error::Backend {
            reason: format!(
                "container {container} does not exist (Azure answered ContainerNotFound; restic retries that instead of failing): create the container, or run `restic init`, which creates it"
            ),
        },
        Stop::Retrying(line) => {
            let reason = format!("restic kept retrying for longer than the retry budget: {line}");
            if looks_unreachable(&line) {
                Error::Unreachable { reason }
            } else {
                Error::Backend { reason }
            }
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const RETRY: &str = "Stat(<config/>) returned error, retrying after 507.877097ms: blob.GetProperties: HEAD https://acct.blob.example.svc.cluster.local:38917/stash-azure/demo%2Fapp%2Fconfig";

    /// restic 0.19.1's stderr for `backup --quiet --json` of a tree with an unreadable
    /// directory and two unreadable files (captured from a real run as an unprivileged user;
    /// the exit status was 3 and stdout had the summary).
    pub(crate) const UNREADABLE_STDERR: &str = r#"{"message_type":"error","error":{"message":"openfile for readdirnames failed: open /tmp/unr.1nMI/data/closed: permission denied"},"during":"scan","item":"/tmp/unr.1nMI/data/closed"}
{"message_type":"error","error":{"message":"openfile for readdirnames failed: open /tmp/unr.1nMI/data/closed: permission denied"},"during":"archival","item":"/tmp/unr.1nMI/data/closed"}
{"message_type":"error","error":{"message":"open /tmp/unr.1nMI/data/secret: permission denied"},"during":"archival","item":"/tmp/unr.1nMI/data/secret"}
{"message_type":"error","error":{"message":"open /tmp/unr.1nMI/data/sub/s2: permission denied"},"during":"archival","item":"/tmp/unr.1nMI/data/sub/s2"}
{"message_type":"exit_error","code":3,"message":"Warning: at least one source file could not be read"}"#;

    #[test]
    fn the_items_restic_could_not_read_are_collected_from_its_archival_errors() {
        let mut st = StderrState::default();
        for line in UNREADABLE_STDERR.lines() {
            st.push(line, &["unr.1nMI".to_string()]);
        }
        // The scan-phase error of `closed` is restic's estimate; its archival error counts.
        assert_eq!(
            st.unreadable.paths,
            [
                "/tmp/***/data/closed",
                "/tmp/***/data/secret",
                "/tmp/***/data/sub/s2"
            ]
        );
        assert_eq!(st.unreadable.count, 3);
        assert_eq!(
            st.exit_error,
            Some((
                3,
                "Warning: at least one source file could not be read".into()
            ))
        );
        // Only the first few are kept; the count goes on.
        let mut st = StderrState::default();
        for i in 0..25 {
            st.push(
                &format!(
                    r#"{{"message_type":"error","error":{{"message":"denied"}},"during":"archival","item":"/d/{i}"}}"#
                ),
                &[],
            );
        }
        assert_eq!(st.unreadable.count, 25);
        assert_eq!(st.unreadable.paths.len(), crate::Unreadable::KEPT);
        assert_eq!(st.unreadable.paths[0], "/d/0");
    }

    #[test]
    fn the_container_of_a_retried_azure_request() {
        assert_eq!(azure_container(RETRY).as_deref(), Some("stash-azure"));
        assert_eq!(azure_container("no url here"), None);
        assert_eq!(
            azure_container("HEAD https://acct.blob.core.windows.net/"),
            None
        );
    }

    #[test]
    fn a_missing_container_is_recognised_in_restics_retry_output() {
        let mut st = StderrState::default();
        for line in [
            RETRY,
            "--------------------------------------------------------------------------------",
            "RESPONSE 404: 404 The specified container does not exist.",
        ] {
            st.push(line, &[]);
        }
        assert_eq!(st.missing_container, None);
        st.push("ERROR CODE: ContainerNotFound", &[]);
        assert_eq!(st.missing_container.as_deref(), Some("stash-azure"));
        // A missing blob is restic's "not found", not this.
        let mut st = StderrState::default();
        st.push(RETRY, &[]);
        st.push("ERROR CODE: BlobNotFound", &[]);
        assert_eq!(st.missing_container, None);
    }
}
