//! The Snapshot API (issue 5 §3, stash-api.md §8.1) of the installed operator, through the
//! real kube-apiserver and the real kubectl: restic repositories are made with the restic
//! binary in hostPath directories, which the operator reads (and forgets snapshots in)
//! through short-lived Pods that mount them.
//!
//! The tests that only read share one [`Catalog`] (two namespaces and their repositories); the
//! ones that change what they look at (a late snapshot, a delete, a recreated or unreadable
//! Repository, a namespace deleted) have namespaces of their own.
use stash_e2e as support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Namespace, Pod},
    kube_aggregator::pkg::apis::apiregistration::v1::APIService,
};
use kube::{Api, Client, api::ListParams};
use serde_json::{Value, json};
use stash_crds::{Repository, Snapshot};
use stash_testenv::{ControlPlane, TestNamespace, bins, cluster::NETNS};
use support::{apply, eventually, restic_snapshots_of};

const PASSWORD: &str = "not-a-real-password";
const SERVICE: &str = "stash-operator";

fn restic(repo: &Path) -> Command {
    let mut c = Command::new(bins::bin("restic").expect("restic binary"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"));
    c
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A restic repository at `dir` with `n` snapshots of a small directory, host `host`.
fn make_repo(dir: &Path, n: usize, host: &str) {
    ok(
        restic(dir)
            .args(["init", "--quiet"])
            .output()
            .expect("restic init"),
        "restic init",
    );
    let src = dir.with_extension("src");
    std::fs::create_dir_all(&src).expect("source dir");
    for i in 0..n {
        std::fs::write(src.join("file.txt"), format!("content {i}\n")).expect("write");
        ok(
            restic(dir)
                .args([
                    "backup",
                    "--quiet",
                    "--host",
                    host,
                    "--tag",
                    &format!("n{i}"),
                ])
                .arg(&src)
                .output()
                .expect("restic backup"),
            "restic backup",
        );
    }
}

fn restic_snapshots(dir: &Path) -> Vec<Value> {
    let mut c = restic(dir);
    c.arg("--no-lock");
    restic_snapshots_of(c)
}

/// Namespace `ns` gets Secret `storage` and Repository `name` on the hostPath `dir`.
async fn repository(client: &Client, ns: &str, name: &str, dir: &Path, labels: Value) {
    apply(
        client,
        ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "storage"},
                              "stringData": {"RESTIC_PASSWORD": PASSWORD}}),
    )
    .await;
    apply(client, ns, json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
        "metadata": {"name": name, "labels": labels},
        "spec": {"backend": {"storageSecretName": "storage",
                             "local": {"mountPath": "/safe/data", "hostPath": {"path": dir.to_string_lossy()}}}}
    }))
    .await;
}

struct Kubectl {
    cp: &'static ControlPlane,
    cache: tempfile::TempDir,
}

impl Kubectl {
    fn new(cp: &'static ControlPlane) -> Self {
        Kubectl {
            cp,
            cache: tempfile::tempdir().expect("cache"),
        }
    }

    fn run(&self, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
        let mut c = self.cp.kubectl().expect("kubectl");
        c.env("KUBECACHEDIR", self.cache.path())
            .env("HOME", self.cache.path());
        if let Some(k) = kubeconfig {
            c.env("KUBECONFIG", k);
        }
        c.args(args).output().expect("run kubectl")
    }

    /// `kubectl <args>`, asked again while the Snapshot API says a read "goes on, ask again"
    /// (for a minute at most): a repository's first read may outlast the API's 15 s on a busy
    /// node, and then a namespaced request fails and a list across every namespace leaves the
    /// repository out with a warning.
    async fn asking_again(&self, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
        let what = format!("kubectl {} to be answered", args.join(" "));
        eventually(&what, Duration::from_secs(60), || async {
            let out = self.run(kubeconfig, args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("ask again") {
                eprintln!("{what}: {}", stderr.trim());
                return None;
            }
            Some(out)
        })
        .await
    }

    /// `kubectl <args>` ([`Kubectl::asking_again`]), which must succeed; its output.
    async fn ok(&self, args: &[&str]) -> String {
        ok(
            self.asking_again(None, args).await,
            &format!(
                "kubectl {} (KUBECONFIG {} exists: {})",
                args.join(" "),
                self.cp.kubeconfig.display(),
                self.cp.kubeconfig.exists()
            ),
        )
    }

    /// `kubectl get snapshots -n <ns> -l <selector> -o name`.
    async fn list(&self, ns: &str, selector: &str) -> String {
        self.ok(&["get", "snapshots", "-n", ns, "-l", selector, "-o", "name"])
            .await
    }

    /// `kubectl <args>` ([`Kubectl::asking_again`]), which must fail; its error output.
    async fn err(&self, kubeconfig: Option<&Path>, args: &[&str]) -> String {
        let out = self.asking_again(kubeconfig, args).await;
        assert!(
            !out.status.success(),
            "kubectl {} should fail: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// curl straight to an operator pod's Snapshot API server (not through the API server), from
/// inside the cluster's network namespace, optionally with a front-proxy client certificate;
/// returns (HTTP code, body).
fn curl(
    pod_ip: &str,
    path: &str,
    cert: Option<(&Path, &Path)>,
    headers: &[&str],
    ca: &Path,
) -> (u16, String) {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{NETNS}"))
        .args([
            "--",
            "curl",
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(ca);
    c.args([
        "--resolve",
        &format!("{SERVICE}.stash-system.svc:8444:{pod_ip}"),
    ]);
    if let Some((crt, key)) = cert {
        c.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    for h in headers {
        c.args(["-H", h]);
    }
    c.arg(format!("https://{SERVICE}.stash-system.svc:8444{path}"));
    let out = ok(c.output().expect("curl"), "curl");
    let (body, code) = out.rsplit_once('\n').expect("code line");
    (code.trim().parse().expect("http code"), body.to_owned())
}

/// `restic backup` of `dir` into the repository at `repo` as host `host-9`.
async fn backup_as_host_9(repo: &Path, dir: &Path) {
    let (repo, dir) = (repo.to_owned(), dir.to_owned());
    tokio::task::spawn_blocking(move || {
        ok(
            restic(&repo)
                .args(["backup", "--quiet", "--host", "host-9"])
                .arg(&dir)
                .output()
                .expect("backup"),
            "backup",
        );
    })
    .await
    .expect("backup");
}

/// `len` bytes that do not compress or deduplicate (xorshift from `seed`).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn short_ids(snaps: &[Value]) -> BTreeSet<String> {
    snaps
        .iter()
        .map(|s| s["short_id"].as_str().expect("short_id").to_owned())
        .collect()
}

fn names(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.rsplit('/').next().unwrap_or(l).to_owned())
        .collect()
}

/// The cluster, once the installed operator's APIService is Available.
async fn snapshot_api() -> &'static ControlPlane {
    let cp = support::env().await.cp;
    let api = Api::<APIService>::all(cp.client())
        .get("v1alpha1.repositories.stash.appscode.com")
        .await
        .expect("the APIService");
    let available = api
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    assert!(
        available,
        "the installed operator's APIService is Available"
    );
    cp
}

/// What the tests that only read share: namespace A with Repository `repo` (label `app=web`,
/// three snapshots of host-0, tagged `n0`..`n2`) and `empty` (no restic repository at its
/// backend yet: it lists nothing), namespace B with `other` (one snapshot of host-1).
struct Catalog {
    cp: &'static ControlPlane,
    kubectl: Kubectl,
    ns_a: TestNamespace,
    ns_b: TestNamespace,
    dir_a: PathBuf,
    dir_b: PathBuf,
    /// restic's own view of A's repository.
    restic_a: Vec<Value>,
    /// The restic repositories' directories.
    _work: tempfile::TempDir,
}

impl Catalog {
    fn a(&self) -> &str {
        &self.ns_a.name
    }

    fn b(&self) -> &str {
        &self.ns_b.name
    }

    /// The Snapshot names of A's repository: `repo-<short id>`.
    fn want(&self) -> BTreeSet<String> {
        short_ids(&self.restic_a)
            .iter()
            .map(|id| format!("repo-{id}"))
            .collect()
    }

    /// The name of A's first snapshot.
    fn first(&self) -> String {
        format!(
            "repo-{}",
            self.restic_a[0]["short_id"].as_str().expect("short id")
        )
    }
}

/// The [`Catalog`] while any test holds it: built by the first, its namespaces deleted when the
/// last lets go (a test that starts after that builds a new one). Each test makes its own
/// clients: a client lives on the runtime of the test that made it.
async fn catalog() -> Arc<Catalog> {
    static SHARED: tokio::sync::Mutex<Weak<Catalog>> = tokio::sync::Mutex::const_new(Weak::new());
    let mut shared = SHARED.lock().await;
    if let Some(c) = shared.upgrade() {
        return c;
    }
    let cp = snapshot_api().await;
    let client = cp.client();
    let work = tempfile::tempdir().expect("work dir");
    let ns_a = cp.namespace("snap-a").await.expect("ns");
    let ns_b = cp.namespace("snap-b").await.expect("ns");
    let dir_a = work.path().join("repo-a");
    let dir_b = work.path().join("repo-b");
    let (da, db) = (dir_a.clone(), dir_b.clone());
    tokio::task::spawn_blocking(move || {
        make_repo(&da, 3, "host-0");
        make_repo(&db, 1, "host-1");
    })
    .await
    .expect("repos");
    repository(&client, &ns_a.name, "repo", &dir_a, json!({"app": "web"})).await;
    repository(&client, &ns_b.name, "other", &dir_b, json!({})).await;
    repository(
        &client,
        &ns_a.name,
        "empty",
        &work.path().join("nothing-here"),
        json!({}),
    )
    .await;
    // A's repositories are read (B's are left to the list across every namespace).
    let kubectl = Kubectl::new(cp);
    kubectl
        .ok(&["get", "snapshots", "-n", &ns_a.name, "-o", "name"])
        .await;
    let c = Arc::new(Catalog {
        cp,
        kubectl,
        restic_a: restic_snapshots(&dir_a),
        ns_a,
        ns_b,
        dir_a,
        dir_b,
        _work: work,
    });
    *shared = Arc::downgrade(&c);
    c
}

/// A namespace of one test's own with Repository `repo` on a new restic repository of `n`
/// snapshots of host-0.
struct Own {
    cp: &'static ControlPlane,
    kubectl: Kubectl,
    ns: TestNamespace,
    dir: PathBuf,
    work: tempfile::TempDir,
}

async fn own_repository(prefix: &str, n: usize) -> Own {
    let cp = snapshot_api().await;
    let work = tempfile::tempdir().expect("work dir");
    let ns = cp.namespace(prefix).await.expect("ns");
    let dir = work.path().join("repo");
    let d = dir.clone();
    tokio::task::spawn_blocking(move || make_repo(&d, n, "host-0"))
        .await
        .expect("repo");
    repository(&cp.client(), &ns.name, "repo", &dir, json!({})).await;
    Own {
        cp,
        kubectl: Kubectl::new(cp),
        ns,
        dir,
        work,
    }
}

/// The snapshot of host-9 that [`backup_as_host_9`] added to `own`'s repository after its
/// first listing, its Snapshot name, and the directory it backed up; `kubectl get` of that
/// name finds it (the catalog refreshes on a miss).
async fn late_snapshot(own: &Own) -> (Value, String, PathBuf) {
    let ns = own.ns.name.as_str();
    // The catalog has listed the repository.
    let listed = names(&own.kubectl.list(ns, "repository=repo").await);
    assert_eq!(listed.len(), 3, "{listed:?}");
    let late_dir = own.work.path().join("late");
    std::fs::create_dir_all(&late_dir).expect("dir");
    std::fs::write(late_dir.join("f"), noise(1, 200_000)).expect("write");
    std::fs::write(late_dir.join("keep"), noise(2, 50_000)).expect("write");
    backup_as_host_9(&own.dir, &late_dir).await;
    let late = restic_snapshots(&own.dir)
        .into_iter()
        .find(|s| s["hostname"] == "host-9")
        .expect("late snapshot");
    let late_name = format!("repo-{}", late["short_id"].as_str().expect("id"));
    let out = own
        .kubectl
        .ok(&["get", "snapshot", &late_name, "-n", ns, "-o", "name"])
        .await;
    assert!(out.contains(&late_name), "{out}");
    (late, late_name, late_dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_lists_the_snapshot_kind() {
    let c = catalog().await;
    let out = c
        .kubectl
        .ok(&[
            "api-resources",
            "--api-group=repositories.stash.appscode.com",
        ])
        .await;
    assert!(
        out.contains("snapshots") && out.contains("Snapshot"),
        "{out}"
    );
}

/// The API server aggregates our OpenAPI (kubectl explain reads it through OpenAPI v3).
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_explain_reads_the_aggregated_openapi() {
    let c = catalog().await;
    let mut explained = String::new();
    for _ in 0..40 {
        let out = c.kubectl.run(None, &["explain", "snapshots.status"]);
        explained = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && explained.contains("hostname") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        explained.contains("hostname") && explained.contains("Tags"),
        "{explained}"
    );
}

/// A list in one namespace, by label: exactly restic's snapshots.
#[tokio::test(flavor = "multi_thread")]
async fn a_list_by_label_is_exactly_restics_snapshots() {
    let c = catalog().await;
    let a = c.a();
    let want = c.want();
    assert_eq!(want.len(), 3);
    let out = c.kubectl.list(a, "repository=repo").await;
    assert_eq!(names(&out), want, "{out}");
    assert!(
        out.lines()
            .all(|l| l.starts_with("snapshot.repositories.stash.appscode.com/")),
        "{out}"
    );
    let out = c.kubectl.list(a, "app=web").await;
    assert_eq!(
        names(&out),
        want,
        "a Repository's labels select its snapshots: {out}"
    );
    let out = c.kubectl.list(a, "repository=nope").await;
    assert!(out.trim().is_empty(), "{out}");
}

/// Tables: the default and the wide columns.
#[tokio::test(flavor = "multi_thread")]
async fn tables_show_the_default_and_the_wide_columns() {
    let c = catalog().await;
    let a = c.a();
    let out = c
        .kubectl
        .ok(&["get", "snapshots", "-n", a, "-l", "repository=repo"])
        .await;
    println!("kubectl get snapshots -n {a} -l repository=repo\n{out}");
    let header = out.lines().next().expect("header");
    for col in ["NAME", "REPOSITORY", "HOSTNAME", "PATHS", "ID", "AGE"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(!header.contains("TAGS"), "{header}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        out.contains("host-0")
            && out.contains(&c.restic_a[0]["short_id"].as_str().unwrap().to_string()),
        "{out}"
    );
    let out = c
        .kubectl
        .ok(&[
            "get",
            "snapshots",
            "-n",
            a,
            "-l",
            "repository=repo",
            "-o",
            "wide",
        ])
        .await;
    println!("kubectl get snapshots -o wide\n{out}");
    let header = out.lines().next().expect("header");
    for col in ["NAME", "HOSTNAME", "TIME", "TAGS", "USERNAME", "TREE"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(
        out.contains("n0") && out.contains("n2"),
        "tags shown: {out}"
    );
}

/// `-o yaml`: kind, status, and the full restic id as the uid.
#[tokio::test(flavor = "multi_thread")]
async fn yaml_shows_kind_status_and_the_full_id_as_uid() {
    let c = catalog().await;
    let out = c
        .kubectl
        .ok(&[
            "get",
            "snapshots",
            "-n",
            c.a(),
            "-l",
            "repository=repo",
            "-o",
            "yaml",
        ])
        .await;
    let list: Value = serde_saphyr::from_str(&out).expect("yaml");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    for item in items {
        assert_eq!(item["kind"], "Snapshot");
        assert_eq!(
            item["apiVersion"],
            "repositories.stash.appscode.com/v1alpha1"
        );
        assert_eq!(item["status"]["hostname"], "host-0");
        let uid = item["metadata"]["uid"].as_str().expect("uid");
        let r = c
            .restic_a
            .iter()
            .find(|s| s["id"] == uid)
            .unwrap_or_else(|| panic!("uid {uid} is a full restic id"));
        assert_eq!(item["status"]["paths"], r["paths"]);
        assert_eq!(item["status"]["tree"], r["tree"]);
        assert_eq!(item["metadata"]["labels"]["repository"], "repo");
        assert_eq!(item["metadata"]["labels"]["app"], "web");
        assert!(
            item["status"]["Tags"].is_array(),
            "Tags key capitalised: {item:?}"
        );
    }
}

/// All namespaces (B's local repository read as well).
#[tokio::test(flavor = "multi_thread")]
async fn a_list_across_all_namespaces_names_each_namespace() {
    let c = catalog().await;
    let out = c.kubectl.ok(&["get", "snapshots", "-A"]).await;
    println!("kubectl get snapshots -A\n{out}");
    assert!(
        out.lines().next().unwrap_or_default().contains("NAMESPACE"),
        "{out}"
    );
    assert!(
        out.contains(c.a()) && out.contains(c.b()) && out.contains("other-"),
        "{out}"
    );
}

/// get one; a bad name; a missing one; no watch.
#[tokio::test(flavor = "multi_thread")]
async fn get_finds_one_snapshot_and_refuses_bad_or_missing_names() {
    let c = catalog().await;
    let a = c.a();
    let first = c.first();
    let one: Value = serde_json::from_str(
        &c.kubectl
            .ok(&["get", "snapshot", &first, "-n", a, "-o", "json"])
            .await,
    )
    .expect("json");
    assert_eq!(one["metadata"]["name"], first.as_str());
    assert_eq!(one["metadata"]["uid"], c.restic_a[0]["id"]);
    let out = c.kubectl.ok(&["get", "snapshot", &first, "-n", a]).await;
    assert!(out.contains(&first), "{out}");
    let err = c
        .kubectl
        .err(None, &["get", "snapshot", "bad", "-n", a])
        .await;
    assert!(err.contains("invalid snapshot name"), "{err}");
    let err = c
        .kubectl
        .err(None, &["get", "snapshot", "repo-00000000", "-n", a])
        .await;
    assert!(
        err.contains("NotFound") && err.contains("not found"),
        "{err}"
    );
    let err = c
        .kubectl
        .err(None, &["get", "snapshot", "norepo-00000000", "-n", a])
        .await;
    assert!(err.contains("NotFound") && err.contains("norepo"), "{err}");
    let err = c
        .kubectl
        .err(
            None,
            &[
                "get",
                "snapshots",
                "-n",
                a,
                "--watch",
                "--request-timeout=5s",
            ],
        )
        .await;
    assert!(
        err.contains("not supported") || err.contains("MethodNotAllowed") || err.contains("405"),
        "{err}"
    );
}

/// A snapshot taken after the last refresh is found by `get` (refresh on a miss).
#[tokio::test(flavor = "multi_thread")]
async fn get_finds_a_snapshot_taken_after_the_last_refresh() {
    let own = own_repository("snap-late", 3).await;
    late_snapshot(&own).await;
}

/// delete = restic forget --prune, and the prune repacks.
#[tokio::test(flavor = "multi_thread")]
async fn delete_forgets_the_snapshot_and_prunes_with_a_repack() {
    let own = own_repository("snap-delete", 3).await;
    let ns = own.ns.name.as_str();
    let before = restic_snapshots(&own.dir);
    let (late, late_name, late_dir) = late_snapshot(&own).await;
    // A newer snapshot of the same directory, `f` replaced: the late snapshot's data pack
    // holds `f` (unused once it is forgotten) and `keep` (still used), so the prune repacks,
    // and restic writes temporary packs (the reader Pod's root filesystem is read-only; its
    // scratch volume takes them).
    std::fs::write(late_dir.join("f"), noise(3, 200_000)).expect("write");
    backup_as_host_9(&own.dir, &late_dir).await;
    let newer = restic_snapshots(&own.dir)
        .into_iter()
        .find(|s| s["hostname"] == "host-9" && s["id"] != late["id"])
        .expect("newer snapshot");

    let out = own
        .kubectl
        .ok(&["delete", "snapshot", &late_name, "-n", ns])
        .await;
    assert!(out.contains("deleted"), "{out}");
    let after = restic_snapshots(&own.dir);
    assert!(
        !after.iter().any(|s| s["id"] == late["id"]),
        "restic no longer lists the deleted snapshot"
    );
    let mut expected = short_ids(&before);
    expected.insert(newer["short_id"].as_str().expect("id").to_owned());
    assert_eq!(short_ids(&after), expected);
    ok(
        restic(&own.dir)
            .args(["check", "--read-data"])
            .output()
            .expect("restic check"),
        "restic check after the repacking prune",
    );
    let err = own
        .kubectl
        .err(None, &["get", "snapshot", &late_name, "-n", ns])
        .await;
    assert!(err.contains("NotFound"), "{err}");
}

/// A delete whose prune outlasts the API server's 60 s for a request (another process holds
/// the repository's lock: a backup reading its input): answered `202 Accepted` after the
/// request's own bound, done in the background once the lock is gone — restic no longer lists
/// the snapshot, the Repository's `SnapshotDeletion` condition says `Deleted`, no lock and no
/// reader Pod is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_that_outlasts_the_request_completes_in_the_background() {
    use std::io::Write as _;
    let own = own_repository("snap-slow-delete", 3).await;
    let ns = own.ns.name.as_str();
    let before = restic_snapshots(&own.dir);
    let victim = before[0]["short_id"].as_str().expect("id").to_owned();
    let victim_name = format!("repo-{victim}");
    let lock_files = |dir: &Path| std::fs::read_dir(dir.join("locks")).map_or(0, |d| d.count());
    // Another process's backup holds a lock for 70 s (it reads its input until then).
    let mut holder = restic(&own.dir)
        .args([
            "backup",
            "--stdin",
            "--stdin-filename",
            "held",
            "--host",
            "host-9",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("restic backup --stdin");
    let dir = own.dir.clone();
    eventually("the holder's lock", Duration::from_secs(60), || {
        let n = lock_files(&dir);
        async move { (n > 0).then_some(()) }
    })
    .await;
    let started = Instant::now();
    let out = own
        .kubectl
        .ok(&["delete", "snapshot", &victim_name, "-n", ns, "--wait=false"])
        .await;
    let answered = started.elapsed();
    assert!(out.contains("deleted"), "{out}");
    assert!(
        answered >= Duration::from_secs(40) && answered < Duration::from_secs(60),
        "answered after the request's own bound, inside the API server's: {answered:?}"
    );
    // The lock outlasts the API server's timeout; then the holder ends and removes it.
    tokio::time::sleep_until((started + Duration::from_secs(70)).into()).await;
    holder
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"held")
        .expect("write");
    let held = tokio::task::spawn_blocking(move || holder.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(held.success(), "the holder's backup: {held:?}");
    let dir = own.dir.clone();
    let after = eventually(
        "the snapshot forgotten in the background",
        Duration::from_secs(180),
        || {
            let dir = dir.clone();
            let victim = victim.clone();
            async move {
                let snaps = restic_snapshots(&dir);
                (!snaps.iter().any(|s| s["short_id"] == victim.as_str())).then_some(snaps)
            }
        },
    )
    .await;
    let done = started.elapsed();
    assert!(done > Duration::from_secs(60), "{done:?}");
    // The other snapshots and the holder's are all there.
    assert_eq!(after.len(), before.len(), "{after:?}");
    let client = own.cp.client();
    let condition = eventually("the delete's condition", Duration::from_secs(60), || {
        let repos = Api::<Repository>::namespaced(client.clone(), ns);
        async move {
            let r = repos.get("repo").await.ok()?;
            r.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "SnapshotDeletion" && c.status == "False")
        }
    })
    .await;
    assert_eq!(condition.reason, "Deleted", "{condition:?}");
    assert!(condition.message.contains(&victim), "{condition:?}");
    assert_eq!(lock_files(&own.dir), 0, "no lock left");
    support::no_pods_left(&client, ns, "stash.appscode.com/snapshot-reader").await;
    let err = own
        .kubectl
        .err(None, &["get", "snapshot", &victim_name, "-n", ns])
        .await;
    assert!(err.contains("NotFound"), "{err}");
    println!(
        "a delete that outlasts the request: answered in {:.0?}, done in the background after {:.0?}",
        answered, done
    );
}

/// Authorization through the API server: alice may get/list in A only; bob has no grants.
#[tokio::test(flavor = "multi_thread")]
async fn only_granted_users_may_list_and_nobody_else_may_delete() {
    let c = catalog().await;
    let (a, b) = (c.a(), c.b());
    let client = c.cp.client();
    apply(&client, a, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "snapshot-reader"},
        "rules": [{"apiGroups": ["repositories.stash.appscode.com"], "resources": ["snapshots"], "verbs": ["get", "list"]}]}))
    .await;
    apply(&client, a, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "alice-reads"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "snapshot-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}))
    .await;
    let alice = c.cp.user_kubeconfig("alice", &[]).expect("alice");
    let bob = c.cp.user_kubeconfig("bob", &[]).expect("bob");
    let mut allowed = String::new();
    for _ in 0..50 {
        let out = c
            .kubectl
            .run(Some(&alice), &["get", "snapshots", "-n", a, "-o", "name"]);
        if out.status.success() {
            allowed = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // RBAC cache
    }
    assert_eq!(names(&allowed), c.want(), "alice lists in {a}");
    let err = c
        .kubectl
        .err(Some(&alice), &["get", "snapshots", "-n", b])
        .await;
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
    let err = c
        .kubectl
        .err(Some(&alice), &["delete", "snapshot", &c.first(), "-n", a])
        .await;
    assert!(err.contains("forbidden"), "{err}");
    let err = c
        .kubectl
        .err(Some(&bob), &["get", "snapshots", "-n", a])
        .await;
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
}

/// Our own server authenticates and authorizes too (not only the API server in front):
/// without the front-proxy certificate → 401; with it, bob → 403, admin → 200.
#[tokio::test(flavor = "multi_thread")]
async fn the_operators_server_authenticates_and_authorizes_on_its_own() {
    let c = catalog().await;
    let (cp, client) = (c.cp, c.cp.client());
    let apiservice = Api::<APIService>::all(client.clone())
        .get("v1alpha1.repositories.stash.appscode.com")
        .await
        .expect("APIService");
    let ca_bundle = String::from_utf8(
        apiservice
            .spec
            .and_then(|s| s.ca_bundle)
            .expect("caBundle")
            .0,
    )
    .expect("pem");
    let operator = Api::<Pod>::namespaced(client.clone(), "stash-system")
        .list(
            &ListParams::default()
                .labels("app.kubernetes.io/name=stash,app.kubernetes.io/component=operator"),
        )
        .await
        .expect("operator pods")
        .items
        .into_iter()
        .find_map(|p| p.status.and_then(|s| s.pod_ip))
        .expect("an operator pod with an IP");
    let pod_ip = operator.as_str();
    let work = tempfile::tempdir().expect("work dir");
    let pki = work.path().join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    let proxy = cp
        .pki
        .front_proxy_ca
        .client("front-proxy-client", &[])
        .expect("proxy cert");
    let other = cp
        .pki
        .front_proxy_ca
        .client("not-allowed", &[])
        .expect("cert");
    let w = |name: &str, body: &str| {
        let p = pki.join(name);
        std::fs::write(&p, body).expect("write");
        p
    };
    let (pc, pk, oc, ok_, ca) = (
        w("proxy.crt", &proxy.cert),
        w("proxy.key", &proxy.key),
        w("other.crt", &other.cert),
        w("other.key", &other.key),
        w("ca.crt", &ca_bundle),
    );
    let path = format!(
        "/apis/repositories.stash.appscode.com/v1alpha1/namespaces/{}/snapshots",
        c.a()
    );
    let (code, body) = curl(
        pod_ip,
        &path,
        None,
        &["X-Remote-User: admin", "X-Remote-Group: system:masters"],
        &ca,
    );
    assert_eq!(code, 401, "{body}");
    let (code, body) = curl(
        pod_ip,
        &path,
        Some((&oc, &ok_)),
        &["X-Remote-User: admin", "X-Remote-Group: system:masters"],
        &ca,
    );
    assert_eq!(
        code, 401,
        "a CN outside requestheader-allowed-names: {body}"
    );
    let (code, body) = curl(
        pod_ip,
        &path,
        Some((&pc, &pk)),
        &["X-Remote-User: bob", "X-Remote-Group: system:authenticated"],
        &ca,
    );
    assert_eq!(code, 403, "{body}");
    let status: Value = serde_json::from_str(&body).expect("Status");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Forbidden");
    let (code, body) = curl(
        pod_ip,
        &path,
        Some((&pc, &pk)),
        &["X-Remote-User: admin", "X-Remote-Group: system:masters"],
        &ca,
    );
    assert_eq!(code, 200, "{body}");
    let (code, _) = curl(pod_ip, "/healthz", None, &[], &ca);
    assert_eq!(code, 200);
    let (code, body) = curl(
        pod_ip,
        "/openapi/v3",
        Some((&pc, &pk)),
        &["X-Remote-User: admin"],
        &ca,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(
        pod_ip,
        "/openapi/v2",
        Some((&pc, &pk)),
        &["X-Remote-User: admin"],
        &ca,
    );
    assert_eq!(code, 200, "{body}");
}

/// The catalog answers lists in milliseconds: lists through the API server and restic runs,
/// alternating (so that both see the same load on a busy machine), the medians of 9 pairs.
#[tokio::test(flavor = "multi_thread")]
async fn catalog_lists_are_well_under_a_restic_run() {
    let c = catalog().await;
    let want = c.want();
    let snaps = Api::<Snapshot>::namespaced(c.cp.client(), c.a());
    let lp = ListParams::default().labels("repository=repo");
    let warm = snaps.list(&lp).await.expect("list");
    assert_eq!(warm.items.len(), want.len());
    let (mut lists, mut runs) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        let t = Instant::now();
        let l = snaps.list(&lp).await.expect("list");
        lists.push(t.elapsed());
        assert_eq!(l.items.len(), want.len());
        let d = c.dir_a.clone();
        runs.push(
            tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                restic_snapshots(&d);
                t.elapsed()
            })
            .await
            .expect("restic"),
        );
    }
    lists.sort();
    runs.sort();
    let (api, restic_time) = (lists[4], runs[4]);
    println!(
        "list 3 snapshots: Snapshot API through kube-apiserver {:.2} ms, restic snapshots --json {:.2} ms (medians of 9 alternating pairs)",
        api.as_secs_f64() * 1e3,
        restic_time.as_secs_f64() * 1e3
    );
    assert!(
        api * 2 < restic_time,
        "catalog lists ({api:?}) are well under a restic run ({restic_time:?})"
    );
}

/// Repository `twin` on the hostPath `dir` (Secret `storage`).
fn twin(dir: &Path) -> Value {
    json!({"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
           "metadata": {"name": "twin"},
           "spec": {"backend": {"storageSecretName": "storage",
                                "local": {"mountPath": "/safe/data", "hostPath": {"path": dir.to_string_lossy()}}}}})
}

/// The names `<repo>-<short id>` of the snapshots restic has in `dir`.
fn named(repo: &str, dir: &Path) -> BTreeSet<String> {
    short_ids(&restic_snapshots(dir))
        .into_iter()
        .map(|id| format!("{repo}-{id}"))
        .collect()
}

/// A Repository deleted and created again under the same name answers with the new backend's
/// snapshots at once (the catalog is keyed by UID, not by name).
#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_repository_answers_with_its_new_backends_snapshots() {
    let c = catalog().await;
    let client = c.cp.client();
    let guard = c.cp.namespace("snap-twin").await.expect("ns");
    let ns = guard.name.as_str();
    apply(
        &client,
        ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "storage"},
               "stringData": {"RESTIC_PASSWORD": PASSWORD}}),
    )
    .await;
    let repos = Api::<Repository>::namespaced(client.clone(), ns);
    apply(&client, ns, twin(&c.dir_a)).await;
    let out = c.kubectl.list(ns, "repository=twin").await;
    assert_eq!(names(&out), named("twin", &c.dir_a), "{out}");
    repos
        .delete("twin", &Default::default())
        .await
        .expect("delete twin");
    eventually(
        "Repository twin to be deleted",
        Duration::from_secs(60),
        || {
            let repos = repos.clone();
            async move { matches!(repos.get_opt("twin").await, Ok(None)).then_some(()) }
        },
    )
    .await;
    apply(&client, ns, twin(&c.dir_b)).await;
    let out = c.kubectl.list(ns, "repository=twin").await;
    assert_eq!(
        names(&out),
        named("twin", &c.dir_b),
        "the recreated Repository's own snapshots: {out}"
    );
}

/// A repository that cannot be read (wrong password) is an error naming it, not an empty list;
/// a list across every namespace still lists the others.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_repository_is_an_error_and_the_others_are_still_listed() {
    let c = catalog().await;
    let client = c.cp.client();
    let guard = c.cp.namespace("snap-locked").await.expect("ns");
    let ns = guard.name.as_str();
    apply(
        &client,
        ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wrong"},
               "stringData": {"RESTIC_PASSWORD": "not-the-password"}}),
    )
    .await;
    apply(&client, ns, json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
        "metadata": {"name": "locked"},
        "spec": {"backend": {"storageSecretName": "wrong",
                             "local": {"mountPath": "/safe/data", "hostPath": {"path": c.dir_a.to_string_lossy()}}}}
    }))
    .await;
    let err = c
        .kubectl
        .err(
            None,
            &["get", "snapshots", "-n", ns, "-l", "repository=locked"],
        )
        .await;
    assert!(
        err.contains("locked") && err.contains("cannot be read"),
        "an unreadable repository is an error: {err}"
    );
    let all = c
        .kubectl
        .asking_again(None, &["get", "snapshots", "-A", "-o", "name"])
        .await;
    let listed = String::from_utf8_lossy(&all.stdout);
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    assert!(
        named("repo", &c.dir_a).iter().all(|n| listed.contains(n)),
        "the readable repositories are listed across namespaces: {listed}"
    );
    println!(
        "all namespaces with an unreadable repository, stderr: {}",
        String::from_utf8_lossy(&all.stderr).trim()
    );
    Api::<Repository>::namespaced(client, ns)
        .delete("locked", &Default::default())
        .await
        .expect("delete repository");
}

/// Deleting a namespace finishes (the API stays discoverable) and forgets nothing: the
/// namespace controller sees no snapshots in a terminating namespace.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_namespace_finishes_and_forgets_no_snapshot() {
    let own = own_repository("snap-gone", 1).await;
    let client = own.cp.client();
    let ns = own.ns.name.clone();
    let listed = names(&own.kubectl.list(&ns, "repository=repo").await);
    assert_eq!(listed.len(), 1, "{listed:?}");
    drop(own.ns);
    let namespaces = Api::<Namespace>::all(client);
    eventually(
        &format!("namespace {ns} to be deleted while the Snapshot API is registered"),
        Duration::from_secs(90),
        || {
            let (namespaces, ns) = (namespaces.clone(), ns.clone());
            async move { matches!(namespaces.get_opt(&ns).await, Ok(None)).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        restic_snapshots(&own.dir).len(),
        1,
        "deleting the namespace forgot no snapshot"
    );
}
