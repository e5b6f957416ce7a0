//! An agent whose container is stopped (SIGTERM: a pod deleted, evicted, drained) asks restic
//! to stop first and exits only once it has: restic removes its own lock. Before, the agent
//! (PID 1 of its container) ignored SIGTERM until the kubelet SIGKILLed every process, and the
//! lock restic left refused the repository's later exclusive commands.
//!
//! The `stash` binary runs here on the host, as the `pvc-backup` Function runs it in a Job,
//! against a real restic repository.
use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn restic(repo: &Path) -> Command {
    let mut c = Command::new(stash_testenv::bins::bin("restic").expect("restic"));
    c.env_clear()
        .env("HOME", "/tmp")
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", "pw")
        .arg("--no-cache");
    c
}

fn locks(repo: &Path) -> Vec<String> {
    let out = restic(repo)
        .args(["list", "locks", "--no-lock"])
        .output()
        .expect("restic list locks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The agent under test, killed by its pid if the test fails while it runs.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn a_stopped_agent_leaves_no_restic_lock() {
    let work = tempfile::tempdir().expect("tempdir");
    let (repo, data, secrets, out) = (
        work.path().join("repo"),
        work.path().join("data"),
        work.path().join("secret"),
        work.path().join("output"),
    );
    for d in [&data, &secrets, &out] {
        std::fs::create_dir_all(d).expect("dir");
    }
    std::fs::write(secrets.join("RESTIC_PASSWORD"), "pw").expect("password");
    let init = restic(&repo).arg("init").output().expect("restic init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    // Enough data that the backup is still running when the signal comes.
    let mut random = std::fs::File::open("/dev/urandom").expect("urandom");
    for i in 0..6 {
        let mut buf = vec![0u8; 64 << 20];
        random.read_exact(&mut buf).expect("random");
        std::fs::write(data.join(format!("f{i}")), &buf).expect("data");
    }
    let restic_dir = stash_testenv::bins::bin("restic").expect("restic");
    let path = restic_dir.parent().expect("bin dir").to_owned();
    let mut agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_stash-agent"))
            .args(["backup-pvc", "--provider=local"])
            .arg(format!("--path={}", repo.display()))
            .arg(format!("--secret-dir={}", secrets.display()))
            .arg(format!("--scratch-dir={}", work.path().display()))
            .arg(format!("--output-dir={}", out.display()))
            .arg(format!("--backup-dirs={}", data.display()))
            .env_clear()
            .env("PATH", path)
            .env("HOME", "/tmp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stash-agent backup-pvc"),
    );
    let agent = &mut agent.0;
    // restic has taken its lock: the backup is running.
    let started = Instant::now();
    while locks(&repo).is_empty() {
        assert!(
            agent.try_wait().expect("try_wait").is_none(),
            "the backup ended before it was stopped"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no lock appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // What the container runtime does to the container's PID 1 (by pid: the agent this test
    // started).
    let term = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = agent.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "the agent did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    agent
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    assert!(!status.success(), "stopped, not finished: {log}");
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(
        locks(&repo),
        Vec::<String>::new(),
        "restic removed its lock: {log}"
    );
    eprintln!(
        "agent stopped by SIGTERM in {:.1} s, no lock left",
        stopped.elapsed().as_secs_f64()
    );
}
