//! `kubectl stash` against the real control plane, run as a person runs it: the binary as a
//! process (through `kubectl`'s plugin discovery where it matters), its stdout checked line by
//! line, and once under a pseudo-terminal (`script`) for the live progress display.
//!
//! Sessions are run by the operator installed in the cluster, on real pods; the exact rendering
//! of scripted statuses is unit-tested in `src/render.rs`.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::json;
use stash_crds::{BackupConfiguration, BackupSession, Repository};
use stash_testenv::ControlPlane;

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-stash");

async fn setup(
    prefix: &str,
) -> anyhow::Result<(&'static ControlPlane, stash_testenv::TestNamespace)> {
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
    cp.kubectl()
        .expect("kubectl")
        .env("PATH", plugin_path())
        .arg("stash")
        .args(args)
        .output()
        .expect("run kubectl stash")
}

/// `kubectl-stash <args>` directly.
fn plugin(cp: &ControlPlane) -> Command {
    let mut c = Command::new(BIN);
    c.env("KUBECONFIG", &cp.kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST");
    c
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
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
    Api::<BackupConfiguration>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &bc)
        .await?;
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
    assert_eq!(
        out,
        format!("BackupConfiguration {}/nightly paused\n", ns.name)
    );
    assert!(
        api.get("nightly").await?.spec.paused,
        "paused is read back from the API"
    );

    let o = kubectl_stash(cp, &["pause", "nightly", "-n", &ns.name]);
    assert_eq!(
        text(&o).0,
        format!(
            "BackupConfiguration {}/nightly is already paused\n",
            ns.name
        )
    );

    // A paused configuration refuses `backup`.
    let o = plugin(cp)
        .args(["backup", "nightly", "-n", &ns.name])
        .output()?;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("is paused; `kubectl stash resume nightly` first"),
        "{err}"
    );

    let o = kubectl_stash(cp, &["resume", "nightly", "-n", &ns.name]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(
        out,
        format!("BackupConfiguration {}/nightly resumed\n", ns.name)
    );
    assert!(!api.get("nightly").await?.spec.paused);

    let o = plugin(cp)
        .args(["pause", "missing", "-n", &ns.name])
        .output()?;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains(&format!(
        "BackupConfiguration {}/missing not found",
        ns.name
    )));
    println!("pause/resume: ok");
    Ok(())
}

/// Deployment `app` over a hostPath data directory, Repository `repo` (a local hostPath
/// backend, or `rest_url`), BackupConfiguration `bc` of it; waits until the `stash` sidecar
/// runs. The real operator does the rest.
async fn workload(
    cp: &ControlPlane,
    ns: &str,
    bc: &str,
    rest_url: Option<&str>,
    image: &str,
) -> anyhow::Result<()> {
    let client = cp.client();
    let data = cp.dir().join(ns).join("data");
    let repo = cp.dir().join(ns).join("repo");
    for d in [&data, &repo] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(data.join("hello.txt"), "hello from the plugin test\n")?;
    let backend = match rest_url {
        Some(url) => json!({"storageSecretName": "repo-secret", "rest": {"url": url}}),
        None => {
            json!({"storageSecretName": "repo-secret", "local": {"mountPath": "/safe/data", "hostPath": {"path": repo.to_string_lossy()}}})
        }
    };
    let docs = [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-secret"}, "stringData": {"RESTIC_PASSWORD": "pw"}}),
        json!({"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"}, "spec": {"backend": backend}}),
        json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration", "metadata": {"name": bc},
               "spec": {"repository": {"name": "repo"}, "schedule": "0 0 1 1 *",
                        "runtimeSettings": {"container": {"env": [{"name": "STASH_BACKEND_RETRY_BUDGET", "value": "5s"}]}},
                        "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                                   "directories": ["/source/data"], "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}},
                        "template": {"metadata": {"labels": {"app": "app"}},
                                     "spec": {"terminationGracePeriodSeconds": 1,
                                              "containers": [{"name": "app", "image": image, "command": ["sleep", "3600"],
                                                              "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                                              "volumes": [{"name": "data", "hostPath": {"path": data.to_string_lossy()}}]}}}}),
    ];
    for doc in docs {
        let mut c = cp.kubectl()?;
        c.args(["apply", "--server-side", "-n", ns, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn()?;
        std::io::Write::write_all(
            &mut child.stdin.take().expect("stdin"),
            doc.to_string().as_bytes(),
        )?;
        let o = child.wait_with_output()?;
        anyhow::ensure!(
            o.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    if image != "busybox" {
        return Ok(());
    }
    stash_e2e::wait_sidecar_ready(&client, ns, "app", Duration::from_secs(120)).await;
    Ok(())
}

/// Wait for the session `kubectl stash backup` created.
async fn created_session(api: &Api<BackupSession>, bc: &str) -> anyhow::Result<String> {
    for _ in 0..200 {
        let l = api
            .list(&ListParams::default().labels(&format!(
                "{}={bc}",
                stash_crds::consts::BACKUP_CONFIGURATION_LABEL
            )))
            .await?;
        if let Some(s) = l.items.first() {
            return Ok(s.metadata.name.clone().expect("name"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("no BackupSession was created")
}

/// `kubectl stash backup` follows a real session of the installed operator to its end, and
/// `kubectl stash describe` shows it (the exact rendering of scripted statuses is unit-tested
/// in `render.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_now_follows_the_session_to_its_end() -> anyhow::Result<()> {
    let (cp, ns) = setup("plugin-backup").await?;
    let api = Api::<BackupSession>::namespaced(cp.client(), &ns.name);

    // Succeeded: exit 0, the progress lines a person reads (stdout is a pipe: one line per change).
    workload(cp, &ns.name, "app", None, "busybox").await?;
    let o = kubectl_stash(cp, &["backup", "app", "-n", &ns.name, "--timeout", "180s"]);
    let (out, err) = text(&o);
    println!("--- kubectl stash backup app ---\n{out}{err}");
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let name = created_session(&api, "app").await?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "BackupSession {}/{name} created for BackupConfiguration app",
            ns.name
        )
    );
    assert!(
        lines.iter().any(
            |l| l.starts_with("  host host-0: Succeeded in ") && l.ends_with(", 1 snapshot(s)")
        ),
        "{out}"
    );
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "BackupSession {}/{name} Succeeded (1/1 hosts, ",
            ns.name
        )),
        "{out}"
    );
    let phase = api.get(&name).await?.status.and_then(|s| s.phase);
    assert_eq!(
        phase,
        Some(stash_crds::backup_session::Phase::Succeeded),
        "the API server agrees"
    );

    let o = kubectl_stash(cp, &["describe", &name, "-n", &ns.name]);
    let (out, err) = text(&o);
    println!("--- kubectl stash describe {name} ---\n{out}");
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.starts_with(&format!(
            "BackupSession:       {}/{name}\nBackupConfiguration: app\n",
            ns.name
        )),
        "{out}"
    );
    assert!(
        out.contains("Phase:               Succeeded\n")
            && out.contains("Hosts:               1/1 reported\n"),
        "{out}"
    );
    assert!(
        out.contains("  ▶ Succeeded (terminal)   ◀ current\n"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("  host-0  Succeeded ")),
        "{out}"
    );
    let o = plugin(cp)
        .args(["describe", "nope", "-n", &ns.name])
        .output()?;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o).1,
        format!(
            "error: no BackupSession or RestoreSession {}/nope\n",
            ns.name
        )
    );
    Ok(())
}

/// A backend nobody answers: the host fails, the plugin prints its error and the session's
/// reason and exits 1; `describe` lists the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_now_reports_a_failed_session() -> anyhow::Result<()> {
    let (cp, ns) = setup("plugin-fail").await?;
    let api = Api::<BackupSession>::namespaced(cp.client(), &ns.name);
    let url = format!("http://{}:{}/", stash_testenv::NODE_IP, cp.cluster_port());
    workload(cp, &ns.name, "db", Some(&url), "busybox").await?;
    let o = kubectl_stash(cp, &["backup", "db", "-n", &ns.name, "--timeout", "180s"]);
    let (out, err) = text(&o);
    println!("--- kubectl stash backup db ---\n{out}{err}");
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    let name = created_session(&api, "db").await?;
    assert!(
        out.lines()
            .any(|l| l.starts_with("  host host-0: Failed") && l.contains("unreachable")),
        "{out}"
    );
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with(&format!("BackupSession {}/{name} Failed: ", ns.name))),
        "{out}"
    );
    let o = kubectl_stash(cp, &["describe", &name, "-n", &ns.name]);
    let (out, _) = text(&o);
    assert!(
        out.contains("  ▶ Failed (terminal)   ◀ current\n") && out.contains("Errors:\n  host-0: "),
        "{out}"
    );
    Ok(())
}

/// A session that cannot finish (the workload's image does not exist): `--timeout` exits 2
/// and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_now_times_out_and_the_session_goes_on() -> anyhow::Result<()> {
    let (cp, ns) = setup("plugin-slow").await?;
    workload(cp, &ns.name, "slow", None, "stash-rs.local/no-such-image:1").await?;
    let o = plugin(cp)
        .args(["backup", "slow", "-n", &ns.name, "--timeout", "2s"])
        .output()?;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(
        err.contains("timed out after 2s following BackupSession") && err.contains("); it goes on"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_progress_on_a_terminal() -> anyhow::Result<()> {
    let (cp, ns) = setup("plugin-tty").await?;
    let api = Api::<BackupSession>::namespaced(cp.client(), &ns.name);
    workload(cp, &ns.name, "app", None, "busybox").await?;
    // `script` gives the plugin a pseudo-terminal, as in a person's shell.
    let cmd = format!("{BIN} backup app -n {}", ns.name);
    let o = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("KUBECONFIG", &cp.kubeconfig)
        .stdin(Stdio::null())
        .output()?;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let name = created_session(&api, "app").await?;
    // The status line is redrawn in place (carriage return + erase line) with a spinner.
    assert!(out.contains("\r\x1b[K"), "{out:?}");
    assert!(
        ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏']
            .iter()
            .any(|c| out.contains(&format!("{c} "))),
        "{out:?}"
    );
    // What the screen shows at the end: each `\r\x1b[K` erases the line drawn before it.
    let screen: Vec<String> = out
        .replace("\r\n", "\n")
        .split('\n')
        .map(|l| l.rsplit("\r\x1b[K").next().unwrap_or("").to_string())
        .filter(|l| !l.is_empty())
        .collect();
    println!(
        "--- the terminal after kubectl stash backup ---\n{}",
        screen.join("\n")
    );
    assert_eq!(
        screen[0],
        format!(
            "BackupSession {}/{name} created for BackupConfiguration app",
            ns.name
        )
    );
    assert!(
        screen
            .iter()
            .any(|l| l.starts_with("  host host-0: Succeeded in ")),
        "{screen:?}"
    );
    assert!(
        screen.iter().any(|l| l.contains(" Succeeded hosts 1/1")),
        "{screen:?}"
    );
    assert!(
        screen.last().is_some_and(|l| l.starts_with(&format!(
            "BackupSession {}/{name} Succeeded (1/1 hosts, ",
            ns.name
        ))),
        "{screen:?}"
    );
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
    Reaped(
        Command::new(restic())
            .args([
                "backup",
                "--stdin",
                "--stdin-filename",
                "x",
                "--no-cache",
                "-r",
            ])
            .arg(repo)
            .env("RESTIC_PASSWORD_FILE", password_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restic backup"),
    )
}

fn lock_count(repo: &Path, password_file: &Path) -> usize {
    let o = Command::new(restic())
        .args(["list", "locks", "--no-lock", "--no-cache", "-r"])
        .arg(repo)
        .env("RESTIC_PASSWORD_FILE", password_file)
        .output()
        .expect("restic list locks");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_removes_only_stale_locks() -> anyhow::Result<()> {
    let (cp, ns) = setup("plugin-unlock").await?;
    let client = cp.client();
    let dir = tempfile::tempdir()?;
    let repo_dir = dir.path().join("repo");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret")?;
    let o = Command::new(restic())
        .args(["init", "-r"])
        .arg(&repo_dir)
        .env("RESTIC_PASSWORD_FILE", &pw)
        .output()?;
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
    assert_eq!(
        lock_count(&repo_dir, &pw),
        2,
        "two restic backups hold a lock each"
    );
    let (dead_pid, live_pid) = (dead.0.id(), live.0.id());
    drop(dead);

    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-secret", "namespace": ns.name},
        "stringData": {"RESTIC_PASSWORD": "s3cret"},
    }))?;
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await?;
    let repo: Repository = serde_json::from_value(json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
        "metadata": {"name": "local-repo", "namespace": ns.name},
        "spec": {"backend": {"storageSecretName": "repo-secret",
                             "local": {"mountPath": "/safe/data", "hostPath": {"path": repo_dir.display().to_string()}}}},
    }))?;
    Api::<Repository>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &repo)
        .await?;

    let o = kubectl_stash(
        cp,
        &[
            "unlock",
            "local-repo",
            "-n",
            &ns.name,
            "--restic",
            &restic().display().to_string(),
        ],
    );
    let (out, err) = text(&o);
    println!("--- kubectl stash unlock local-repo ---\n{out}{err}");
    drop(live);
    assert!(o.status.success(), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "Repository {}/local-repo (local: {})",
            ns.name,
            repo_dir.display()
        )
    );
    let removed: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("removed stale lock "))
        .collect();
    let kept: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("kept lock "))
        .collect();
    assert_eq!(removed.len(), 1, "{out}");
    assert!(
        removed[0].contains(&format!(" pid={dead_pid} ")),
        "the killed backup's lock was removed:\n{out}"
    );
    assert_eq!(kept.len(), 1, "{out}");
    assert!(
        kept[0].contains(&format!(" pid={live_pid} "))
            && kept[0].ends_with("(live: refreshed within 30m)"),
        "{out}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("1 stale lock(s) removed, 1 kept")
    );
    Ok(())
}
