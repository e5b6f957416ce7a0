//! `kubectl stash` against the real control plane, run as a person runs it: the binary as a
//! process (through `kubectl`'s plugin discovery where it matters), its stdout checked line by
//! line, and once under a pseudo-terminal (`script`) for the live progress display.
//!
//! The tests play the operator themselves: they write session status through the status
//! subresource as the operator would.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use stash_crds::{BackupConfiguration, BackupSession, Repository, RestoreSession};
use stash_testenv::ControlPlane;

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-stash");

async fn setup(prefix: &str) -> anyhow::Result<(&'static ControlPlane, stash_testenv::TestNamespace)> {
    let cp = stash_testenv::shared().await?;
    cp.install_crds(&stash_crds::crds()).await?;
    let ns = cp.namespace(prefix).await?;
    Ok((cp, ns))
}

/// A directory holding only `kubectl-stash`, for kubectl's plugin discovery.
fn plugin_path() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kubectl-stash-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let link = dir.join("kubectl-stash");
    if !link.exists() {
        std::os::unix::fs::symlink(BIN, &link).expect("symlink");
    }
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{}:{path}", dir.display()).into()
}

/// `kubectl stash <args>` through the real kubectl.
fn kubectl_stash(cp: &ControlPlane, args: &[&str]) -> Output {
    cp.kubectl().expect("kubectl").env("PATH", plugin_path()).arg("stash").args(args).output().expect("run kubectl stash")
}

/// `kubectl-stash <args>` directly.
fn plugin(cp: &ControlPlane) -> Command {
    let mut c = Command::new(BIN);
    c.env("KUBECONFIG", &cp.kubeconfig).env_remove("KUBERNETES_SERVICE_HOST");
    c
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

async fn backup_configuration(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let bc: BackupConfiguration = serde_json::from_value(json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "schedule": "*/5 * * * *",
            "repository": {"name": "local-repo"},
            "target": {"ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db"},
                       "directories": ["/data"], "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true},
        },
    }))?;
    Api::<BackupConfiguration>::namespaced(client.clone(), ns).create(&PostParams::default(), &bc).await?;
    Ok(())
}

async fn set_status<K>(api: &Api<K>, name: &str, status: serde_json::Value) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_round_trip() -> anyhow::Result<()> {
    let (cp, ns) = setup("plugin-pause").await?;
    let client = cp.client();
    backup_configuration(&client, &ns.name, "nightly").await?;
    let api = Api::<BackupConfiguration>::namespaced(client.clone(), &ns.name);

    let o = kubectl_stash(cp, &["pause", "nightly", "-n", &ns.name]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(out, format!("BackupConfiguration {}/nightly paused\n", ns.name));
    assert!(api.get("nightly").await?.spec.paused, "paused is read back from the API");

    let o = kubectl_stash(cp, &["pause", "nightly", "-n", &ns.name]);
    assert_eq!(text(&o).0, format!("BackupConfiguration {}/nightly is already paused\n", ns.name));

    // A paused configuration refuses `backup`.
    let o = plugin(cp).args(["backup", "nightly", "-n", &ns.name]).output()?;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(err.contains("is paused; `kubectl stash resume nightly` first"), "{err}");

    let o = kubectl_stash(cp, &["resume", "nightly", "-n", &ns.name]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(out, format!("BackupConfiguration {}/nightly resumed\n", ns.name));
    assert!(!api.get("nightly").await?.spec.paused);

    let o = plugin(cp).args(["pause", "missing", "-n", &ns.name]).output()?;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains(&format!("BackupConfiguration {}/missing not found", ns.name)));
    println!("pause/resume: ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_lifecycle_hosts_and_errors() -> anyhow::Result<()> {
    let (cp, ns) = setup("plugin-describe").await?;
    let client = cp.client();
    let bs: BackupSession = serde_json::from_value(json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
        "metadata": {"name": "nightly-1", "namespace": ns.name},
        "spec": {"backupConfiguration": {"name": "nightly"}},
    }))?;
    let api = Api::<BackupSession>::namespaced(client.clone(), &ns.name);
    api.create(&PostParams::default(), &bs).await?;

    // No status yet: Pending, marked as such.
    let o = kubectl_stash(cp, &["describe", "nightly-1", "-n", &ns.name]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("Phase:               Pending (no status yet)"), "{out}");
    assert!(out.contains("▶ Pending (initial)   ◀ current"), "{out}");
    assert!(out.contains("(none reported yet)"), "{out}");

    set_status(&api, "nightly-1", json!({
        "phase": "Running", "totalHosts": 3,
        "stats": [
            {"hostname": "host-0", "phase": "Succeeded", "duration": "4.2s",
             "snapshots": [{"name": "repo-1a2b3c4d", "directory": "/data", "size": "1.5 MiB"}]},
            {"hostname": "host-1", "phase": "Failed", "duration": "1s",
             "error": "restic backup: exit status 1, reason: Fatal: unable to open config file"},
        ],
    }))
    .await?;
    let o = kubectl_stash(cp, &["describe", "nightly-1", "-n", &ns.name]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    println!("--- kubectl stash describe nightly-1 ---\n{out}");
    let want_head = format!(
        "BackupSession:       {ns}/nightly-1\nBackupConfiguration: nightly\n",
        ns = ns.name
    );
    assert!(out.starts_with(&want_head), "{out}");
    assert!(out.contains("Phase:               Running\n"), "{out}");
    assert!(out.contains("Hosts:               2/3 reported\n"), "{out}");
    assert_eq!(out.matches('▶').count(), 1, "exactly one phase is marked:\n{out}");
    assert!(out.contains("  ▶ Running   ◀ current\n"), "{out}");
    assert!(out.contains("    Pending (initial)\n        Start → Running\n"), "{out}");
    assert!(out.contains("        Complete [all_hosts_succeeded] → Succeeded\n"), "{out}");
    assert!(out.contains("    Succeeded (terminal)\n"), "{out}");
    assert!(out.contains("  HOST    PHASE      DURATION  SNAPSHOTS  SIZE\n"), "{out}");
    assert!(out.contains("  host-0  Succeeded  4.2s      1          1.5 MiB\n"), "{out}");
    assert!(out.contains("  host-1  Failed     1s        0\n"), "{out}");
    assert!(out.contains("Errors:\n  host-1: restic backup: exit status 1, reason: Fatal: unable to open config file\n"), "{out}");

    // A RestoreSession by the same command.
    let rs: RestoreSession = serde_json::from_value(json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
        "metadata": {"name": "restore-1", "namespace": ns.name},
        "spec": {"repository": {"name": "local-repo"},
                 "target": {"ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db"}},
                 "rules": [{"paths": ["/data"]}]},
    }))?;
    let rapi = Api::<RestoreSession>::namespaced(client.clone(), &ns.name);
    rapi.create(&PostParams::default(), &rs).await?;
    set_status(&rapi, "restore-1", json!({
        "phase": "Failed", "totalHosts": 2, "reason": "no rule matches host host-1",
        "stats": [{"hostname": "host-0", "phase": "Succeeded", "duration": "2s"}],
    }))
    .await?;
    let o = kubectl_stash(cp, &["describe", "restore-1", "-n", &ns.name]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    println!("--- kubectl stash describe restore-1 ---\n{out}");
    assert!(out.starts_with(&format!("RestoreSession:      {}/restore-1\nRepository:          local-repo\n", ns.name)), "{out}");
    assert!(out.contains("Reason:              no rule matches host host-1\n"), "{out}");
    assert!(out.contains("Lifecycle (RestoreSession):\n"), "{out}");
    assert!(out.contains("  ▶ Failed (terminal)   ◀ current\n"), "{out}");
    assert!(out.contains("        Complete [any_host_failed] → Failed\n"), "{out}");
    assert!(out.contains("  host-0  Succeeded  2s\n"), "{out}");

    let o = plugin(cp).args(["describe", "nope", "-n", &ns.name]).output()?;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o).1, format!("error: no BackupSession or RestoreSession {}/nope\n", ns.name));
    Ok(())
}

/// Wait for the session `kubectl stash backup` created.
async fn created_session(api: &Api<BackupSession>, bc: &str) -> anyhow::Result<String> {
    for _ in 0..200 {
        let l = api.list(&ListParams::default().labels(&format!("{}={bc}", stash_crds::consts::BACKUP_CONFIGURATION_LABEL))).await?;
        if let Some(s) = l.items.first() {
            return Ok(s.metadata.name.clone().expect("name"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("no BackupSession was created")
}

/// Play the operator: Running with 2 hosts, host-0, host-1, then the end.
async fn operate(api: &Api<BackupSession>, name: &str, host1_error: Option<&str>) -> anyhow::Result<()> {
    let step = Duration::from_millis(1200);
    tokio::time::sleep(step).await;
    set_status(api, name, json!({"phase": "Running", "totalHosts": 2})).await?;
    tokio::time::sleep(step).await;
    let h0 = json!({"hostname": "host-0", "phase": "Succeeded", "duration": "1.1s", "snapshots": [{"name": "r-0a0a0a0a"}]});
    set_status(api, name, json!({"stats": [h0]})).await?;
    tokio::time::sleep(step).await;
    let h1 = match host1_error {
        None => json!({"hostname": "host-1", "phase": "Succeeded", "duration": "2s", "snapshots": [{"name": "r-1b1b1b1b"}]}),
        Some(e) => json!({"hostname": "host-1", "phase": "Failed", "duration": "2s", "error": e}),
    };
    set_status(api, name, json!({"stats": [h0, h1]})).await?;
    tokio::time::sleep(step).await;
    let end = match host1_error {
        None => json!({"phase": "Succeeded", "sessionDuration": "4.8s"}),
        Some(_) => json!({"phase": "Failed", "sessionDuration": "4.8s", "reason": "host host-1 failed: disk full"}),
    };
    set_status(api, name, end).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_now_follows_the_session_to_its_end() -> anyhow::Result<()> {
    let (cp, ns) = setup("plugin-backup").await?;
    let client = cp.client();
    let api = Api::<BackupSession>::namespaced(client.clone(), &ns.name);

    // Succeeded: exit 0, the progress lines a person reads (stdout is a pipe: one line per change).
    backup_configuration(&client, &ns.name, "app").await?;
    let child = plugin(cp).args(["backup", "app", "-n", &ns.name]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let name = created_session(&api, "app").await?;
    assert!(name.starts_with("app-") && name[4..].parse::<i64>().is_ok(), "{name}");
    operate(&api, &name, None).await?;
    let o = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let (out, err) = text(&o);
    println!("--- kubectl stash backup app ---\n{out}{err}");
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("BackupSession {}/{name} created for BackupConfiguration app", ns.name));
    let expect = [
        "Pending   hosts 0/?",
        "Running   hosts 0/2",
        "host host-0: Succeeded in 1.1s, 1 snapshot(s)",
        "Running   hosts 1/2",
        "host host-1: Succeeded in 2s, 1 snapshot(s)",
        "Running   hosts 2/2",
        "Succeeded hosts 2/2",
    ];
    // Each line once, in this order (status lines end with the elapsed time).
    let mut it = lines[1..].iter();
    for e in expect {
        assert!(it.any(|s| s.trim_start().starts_with(&format!("{e} ")) || s.trim_start() == e), "missing (in order) {e:?} in:\n{out}");
    }
    assert_eq!(lines.last().copied(), Some(format!("BackupSession {}/{name} Succeeded (2/2 hosts, 4.8s)", ns.name).as_str()));

    // Failed: exit 1, the host's error and the session's reason.
    backup_configuration(&client, &ns.name, "db").await?;
    let child = plugin(cp).args(["backup", "db", "-n", &ns.name]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let name = created_session(&api, "db").await?;
    operate(&api, &name, Some("disk full")).await?;
    let o = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let (out, err) = text(&o);
    println!("--- kubectl stash backup db ---\n{out}{err}");
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.contains("  host host-1: Failed in 2s, 0 snapshot(s) — disk full\n"), "{out}");
    assert!(out.ends_with(&format!("BackupSession {}/{name} Failed: host host-1 failed: disk full\n", ns.name)), "{out}");

    // Timeout: exit 2, the session goes on.
    backup_configuration(&client, &ns.name, "slow").await?;
    let o = plugin(cp).args(["backup", "slow", "-n", &ns.name, "--timeout", "2s"]).output()?;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(err.contains("timed out after 2s following BackupSession") && err.contains("(still Pending); it goes on"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_progress_on_a_terminal() -> anyhow::Result<()> {
    let (cp, ns) = setup("plugin-tty").await?;
    let client = cp.client();
    let api = Api::<BackupSession>::namespaced(client.clone(), &ns.name);
    backup_configuration(&client, &ns.name, "app").await?;
    // `script` gives the plugin a pseudo-terminal, as in a person's shell.
    let cmd = format!("{BIN} backup app -n {}", ns.name);
    let child = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("KUBECONFIG", &cp.kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let name = created_session(&api, "app").await?;
    operate(&api, &name, None).await?;
    let o = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    // The status line is redrawn in place (carriage return + erase line) with a spinner.
    assert!(out.contains("\r\x1b[K"), "{out:?}");
    assert!(['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'].iter().any(|c| out.contains(&format!("{c} Running   hosts 1/2"))), "{out:?}");
    // What the screen shows at the end: each `\r\x1b[K` erases the line drawn before it.
    let screen: Vec<String> = out
        .replace("\r\n", "\n")
        .split('\n')
        .map(|l| l.rsplit("\r\x1b[K").next().unwrap_or("").to_string())
        .filter(|l| !l.is_empty())
        .collect();
    println!("--- the terminal after kubectl stash backup ---\n{}", screen.join("\n"));
    assert_eq!(screen[0], format!("BackupSession {}/{name} created for BackupConfiguration app", ns.name));
    assert_eq!(screen[1], "  host host-0: Succeeded in 1.1s, 1 snapshot(s)");
    assert_eq!(screen[2], "  host host-1: Succeeded in 2s, 1 snapshot(s)");
    assert!(screen[3].contains(" Succeeded hosts 2/2"), "{screen:?}");
    assert_eq!(screen[4], format!("BackupSession {}/{name} Succeeded (2/2 hosts, 4.8s)", ns.name));
    assert_eq!(screen.len(), 5, "{screen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_without_the_snapshot_api_say_so() -> anyhow::Result<()> {
    let (cp, ns) = setup("plugin-snap").await?;
    let o = kubectl_stash(cp, &["snapshots", "-n", &ns.name, "-l", "repository=local-repo"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(err.contains("the Snapshot API (repositories.stash.appscode.com/v1alpha1) is not served by this cluster"), "{err}");
    Ok(())
}

fn restic() -> PathBuf {
    stash_testenv::bins::bin("restic").expect("restic from testenv/build.sh")
}

/// A child process killed and reaped when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `restic backup --stdin` that holds its lock until stdin closes.
fn lock_holder(repo: &Path, password_file: &Path) -> Reaped {
    Reaped(Command::new(restic())
        .args(["backup", "--stdin", "--stdin-filename", "x", "--no-cache", "-r"])
        .arg(repo)
        .env("RESTIC_PASSWORD_FILE", password_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("restic backup"))
}

fn lock_count(repo: &Path, password_file: &Path) -> usize {
    let o = Command::new(restic())
        .args(["list", "locks", "--no-lock", "--no-cache", "-r"])
        .arg(repo)
        .env("RESTIC_PASSWORD_FILE", password_file)
        .output()
        .expect("restic list locks");
    String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_removes_only_stale_locks() -> anyhow::Result<()> {
    let (cp, ns) = setup("plugin-unlock").await?;
    let client = cp.client();
    let dir = tempfile::tempdir()?;
    let repo_dir = dir.path().join("repo");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret")?;
    let o = Command::new(restic()).args(["init", "-r"]).arg(&repo_dir).env("RESTIC_PASSWORD_FILE", &pw).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A stale lock: a backup killed with SIGKILL (reaped, so its pid is gone), and a live one.
    let dead = lock_holder(&repo_dir, &pw);
    let live = lock_holder(&repo_dir, &pw);
    for _ in 0..300 {
        if lock_count(&repo_dir, &pw) == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lock_count(&repo_dir, &pw), 2, "two restic backups hold a lock each");
    let (dead_pid, live_pid) = (dead.0.id(), live.0.id());
    drop(dead);

    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-secret", "namespace": ns.name},
        "stringData": {"RESTIC_PASSWORD": "s3cret"},
    }))?;
    Api::<Secret>::namespaced(client.clone(), &ns.name).create(&PostParams::default(), &secret).await?;
    let repo: Repository = serde_json::from_value(json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
        "metadata": {"name": "local-repo", "namespace": ns.name},
        "spec": {"backend": {"storageSecretName": "repo-secret",
                             "local": {"mountPath": "/safe/data", "hostPath": {"path": repo_dir.display().to_string()}}}},
    }))?;
    Api::<Repository>::namespaced(client.clone(), &ns.name).create(&PostParams::default(), &repo).await?;

    let o = kubectl_stash(cp, &["unlock", "local-repo", "-n", &ns.name, "--restic", &restic().display().to_string()]);
    let (out, err) = text(&o);
    println!("--- kubectl stash unlock local-repo ---\n{out}{err}");
    drop(live);
    assert!(o.status.success(), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("Repository {}/local-repo (local: {})", ns.name, repo_dir.display()));
    let removed: Vec<&&str> = lines.iter().filter(|l| l.starts_with("removed stale lock ")).collect();
    let kept: Vec<&&str> = lines.iter().filter(|l| l.starts_with("kept lock ")).collect();
    assert_eq!(removed.len(), 1, "{out}");
    assert!(removed[0].contains(&format!(" pid={dead_pid} ")), "the killed backup's lock was removed:\n{out}");
    assert_eq!(kept.len(), 1, "{out}");
    assert!(kept[0].contains(&format!(" pid={live_pid} ")) && kept[0].ends_with("(live: refreshed within 30m)"), "{out}");
    assert_eq!(lines.last().copied(), Some("1 stale lock(s) removed, 1 kept"));
    Ok(())
}
