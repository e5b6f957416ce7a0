//! The Snapshot API (issue 5 §3, stash-api.md §8.1) of the installed operator, through the
//! real kube-apiserver and the real kubectl: restic repositories are made with the restic
//! binary in hostPath directories, which the operator reads (and forgets snapshots in)
//! through short-lived Pods that mount them.
use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Namespace, Pod},
    kube_aggregator::pkg::apis::apiregistration::v1::APIService,
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
    core::DynamicObject,
    discovery::ApiResource,
};
use serde_json::{Value, json};
use stash_crds::{Repository, Snapshot};
use stash_testenv::{ControlPlane, bins, cluster::NETNS};

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
    serde_json::from_str(&ok(
        restic(dir)
            .args(["snapshots", "--json", "--no-lock"])
            .output()
            .expect("restic"),
        "restic snapshots",
    ))
    .expect("json")
}

async fn apply(client: &Client, ns: &str, obj: Value) {
    let api_version = obj["apiVersion"].as_str().expect("apiVersion").to_owned();
    let kind = obj["kind"].as_str().expect("kind").to_owned();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let plural = match kind.as_str() {
        "Repository" => "repositories".to_owned(),
        k => format!("{}s", k.to_lowercase()),
    };
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.clone(),
        kind,
        plural,
    };
    let name = obj["metadata"]["name"].as_str().expect("name").to_owned();
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
    let o: DynamicObject = serde_json::from_value(obj).expect("object");
    api.patch(
        &name,
        &PatchParams::apply("snapshot-e2e").force(),
        &Patch::Apply(&o),
    )
    .await
    .expect("apply");
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
    fn run(&self, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
        let mut c = self.cp.kubectl().expect("kubectl");
        c.env("KUBECACHEDIR", self.cache.path())
            .env("HOME", self.cache.path());
        if let Some(k) = kubeconfig {
            c.env("KUBECONFIG", k);
        }
        c.args(args).output().expect("run kubectl")
    }

    fn ok(&self, args: &[&str]) -> String {
        ok(
            self.run(None, args),
            &format!(
                "kubectl {} (KUBECONFIG {} exists: {})",
                args.join(" "),
                self.cp.kubeconfig.display(),
                self.cp.kubeconfig.exists()
            ),
        )
    }

    fn err(&self, kubeconfig: Option<&Path>, args: &[&str]) -> String {
        let out = self.run(kubeconfig, args);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_api_of_the_installed_operator() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = stash_testenv::shared().await.expect("the cluster");
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
    scenario(cp).await;
}

async fn scenario(cp: &'static ControlPlane) {
    let client = cp.client();
    let work = tempfile::tempdir().expect("work dir");
    let ns_a = cp.namespace("snap-a").await.expect("ns");
    let ns_b = cp.namespace("snap-b").await.expect("ns");
    let (a, b) = (ns_a.name.as_str(), ns_b.name.as_str());
    let dir_a = work.path().join("repo-a");
    let dir_b = work.path().join("repo-b");
    let (da, db) = (dir_a.clone(), dir_b.clone());
    tokio::task::spawn_blocking(move || {
        make_repo(&da, 3, "host-0");
        make_repo(&db, 1, "host-1");
    })
    .await
    .expect("repos");
    repository(&client, a, "repo", &dir_a, json!({"app": "web"})).await;
    repository(&client, b, "other", &dir_b, json!({})).await;
    // A repository whose backend has no restic repository yet lists nothing.
    repository(
        &client,
        a,
        "empty",
        &work.path().join("nothing-here"),
        json!({}),
    )
    .await;
    let kubectl = Kubectl {
        cp,
        cache: tempfile::tempdir().expect("cache"),
    };

    // Discovery.
    let out = kubectl.ok(&[
        "api-resources",
        "--api-group=repositories.stash.appscode.com",
    ]);
    assert!(
        out.contains("snapshots") && out.contains("Snapshot"),
        "{out}"
    );

    // OpenAPI: the API server aggregates ours (kubectl explain reads it through OpenAPI v3).
    let mut explained = String::new();
    for _ in 0..40 {
        let out = kubectl.run(None, &["explain", "snapshots.status"]);
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

    // list in one namespace, by label: exactly restic's snapshots.
    let restic_a = restic_snapshots(&dir_a);
    let mut want: BTreeSet<String> = short_ids(&restic_a)
        .iter()
        .map(|id| format!("repo-{id}"))
        .collect();
    assert_eq!(want.len(), 3);
    let out = kubectl.ok(&[
        "get",
        "snapshots",
        "-n",
        a,
        "-l",
        "repository=repo",
        "-o",
        "name",
    ]);
    assert_eq!(names(&out), want, "{out}");
    assert!(
        out.lines()
            .all(|l| l.starts_with("snapshot.repositories.stash.appscode.com/")),
        "{out}"
    );
    let out = kubectl.ok(&["get", "snapshots", "-n", a, "-l", "app=web", "-o", "name"]);
    assert_eq!(
        names(&out),
        want,
        "a Repository's labels select its snapshots: {out}"
    );
    let out = kubectl.ok(&[
        "get",
        "snapshots",
        "-n",
        a,
        "-l",
        "repository=nope",
        "-o",
        "name",
    ]);
    assert!(out.trim().is_empty(), "{out}");

    // Tables: default and wide columns.
    let out = kubectl.ok(&["get", "snapshots", "-n", a, "-l", "repository=repo"]);
    println!("kubectl get snapshots -n {a} -l repository=repo\n{out}");
    let header = out.lines().next().expect("header");
    for col in ["NAME", "REPOSITORY", "HOSTNAME", "PATHS", "ID", "AGE"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(!header.contains("TAGS"), "{header}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        out.contains("host-0")
            && out.contains(&restic_a[0]["short_id"].as_str().unwrap().to_string()),
        "{out}"
    );
    let out = kubectl.ok(&[
        "get",
        "snapshots",
        "-n",
        a,
        "-l",
        "repository=repo",
        "-o",
        "wide",
    ]);
    println!("kubectl get snapshots -o wide\n{out}");
    let header = out.lines().next().expect("header");
    for col in ["NAME", "HOSTNAME", "TIME", "TAGS", "USERNAME", "TREE"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(
        out.contains("n0") && out.contains("n2"),
        "tags shown: {out}"
    );

    // -o yaml: kind, status, uid = full id.
    let out = kubectl.ok(&[
        "get",
        "snapshots",
        "-n",
        a,
        "-l",
        "repository=repo",
        "-o",
        "yaml",
    ]);
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
        let r = restic_a
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

    // All namespaces (B's local repository is read for the first time).
    let out = kubectl.ok(&["get", "snapshots", "-A"]);
    println!("kubectl get snapshots -A\n{out}");
    assert!(
        out.lines().next().unwrap_or_default().contains("NAMESPACE"),
        "{out}"
    );
    assert!(
        out.contains(a) && out.contains(b) && out.contains("other-"),
        "{out}"
    );

    // get one; a bad name; a missing one.
    let first = format!(
        "repo-{}",
        restic_a[0]["short_id"].as_str().expect("short id")
    );
    let one: Value =
        serde_json::from_str(&kubectl.ok(&["get", "snapshot", &first, "-n", a, "-o", "json"]))
            .expect("json");
    assert_eq!(one["metadata"]["name"], first.as_str());
    assert_eq!(one["metadata"]["uid"], restic_a[0]["id"]);
    let out = kubectl.ok(&["get", "snapshot", &first, "-n", a]);
    assert!(out.contains(&first), "{out}");
    let err = kubectl.err(None, &["get", "snapshot", "bad", "-n", a]);
    assert!(err.contains("invalid snapshot name"), "{err}");
    let err = kubectl.err(None, &["get", "snapshot", "repo-00000000", "-n", a]);
    assert!(
        err.contains("NotFound") && err.contains("not found"),
        "{err}"
    );
    let err = kubectl.err(None, &["get", "snapshot", "norepo-00000000", "-n", a]);
    assert!(err.contains("NotFound") && err.contains("norepo"), "{err}");
    let err = kubectl.err(
        None,
        &[
            "get",
            "snapshots",
            "-n",
            a,
            "--watch",
            "--request-timeout=5s",
        ],
    );
    assert!(
        err.contains("not supported") || err.contains("MethodNotAllowed") || err.contains("405"),
        "{err}"
    );

    // A snapshot taken after the last refresh is found by `get` (refresh on a miss).
    let late_dir = work.path().join("late");
    std::fs::create_dir_all(&late_dir).expect("dir");
    std::fs::write(late_dir.join("f"), noise(1, 200_000)).expect("write");
    std::fs::write(late_dir.join("keep"), noise(2, 50_000)).expect("write");
    backup_as_host_9(&dir_a, &late_dir).await;
    let late = restic_snapshots(&dir_a)
        .into_iter()
        .find(|s| s["hostname"] == "host-9")
        .expect("late snapshot");
    let late_name = format!("repo-{}", late["short_id"].as_str().expect("id"));
    let out = kubectl.ok(&["get", "snapshot", &late_name, "-n", a, "-o", "name"]);
    assert!(out.contains(&late_name), "{out}");

    // A newer snapshot of the same directory, `f` replaced: the late snapshot's data pack
    // holds `f` (unused once it is forgotten) and `keep` (still used), so the prune repacks,
    // and restic writes temporary packs (the reader Pod's root filesystem is read-only; its
    // scratch volume takes them).
    std::fs::write(late_dir.join("f"), noise(3, 200_000)).expect("write");
    backup_as_host_9(&dir_a, &late_dir).await;
    let newer = restic_snapshots(&dir_a)
        .into_iter()
        .find(|s| s["hostname"] == "host-9" && s["id"] != late["id"])
        .expect("newer snapshot");

    // delete = restic forget --prune.
    let out = kubectl.ok(&["delete", "snapshot", &late_name, "-n", a]);
    assert!(out.contains("deleted"), "{out}");
    let after = restic_snapshots(&dir_a);
    assert!(
        !after.iter().any(|s| s["id"] == late["id"]),
        "restic no longer lists the deleted snapshot"
    );
    let newer_short = newer["short_id"].as_str().expect("id").to_owned();
    want.insert(format!("repo-{newer_short}"));
    let mut expected = short_ids(&restic_a);
    expected.insert(newer_short);
    assert_eq!(short_ids(&after), expected);
    ok(
        restic(&dir_a)
            .args(["check", "--read-data"])
            .output()
            .expect("restic check"),
        "restic check after the repacking prune",
    );
    let err = kubectl.err(None, &["get", "snapshot", &late_name, "-n", a]);
    assert!(err.contains("NotFound"), "{err}");

    // Authorization: alice may get/list in A only; bob has no grants.
    apply(&client, a, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "snapshot-reader"},
        "rules": [{"apiGroups": ["repositories.stash.appscode.com"], "resources": ["snapshots"], "verbs": ["get", "list"]}]}))
    .await;
    apply(&client, a, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "alice-reads"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "snapshot-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}))
    .await;
    let alice = cp.user_kubeconfig("alice", &[]).expect("alice");
    let bob = cp.user_kubeconfig("bob", &[]).expect("bob");
    let mut allowed = String::new();
    for _ in 0..50 {
        let out = kubectl.run(Some(&alice), &["get", "snapshots", "-n", a, "-o", "name"]);
        if out.status.success() {
            allowed = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // RBAC cache
    }
    assert_eq!(names(&allowed), want, "alice lists in {a}");
    let err = kubectl.err(Some(&alice), &["get", "snapshots", "-n", b]);
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
    let err = kubectl.err(Some(&alice), &["delete", "snapshot", &first, "-n", a]);
    assert!(err.contains("forbidden"), "{err}");
    let err = kubectl.err(Some(&bob), &["get", "snapshots", "-n", a]);
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );

    // Our own server authenticates and authorizes too (not only the API server in front):
    // without the front-proxy certificate → 401; with it, bob → 403, admin → 200.
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
    let path = format!("/apis/repositories.stash.appscode.com/v1alpha1/namespaces/{a}/snapshots");
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

    // The catalog answers lists in milliseconds: 50 lists through the API server vs one restic run.
    let snaps = Api::<Snapshot>::namespaced(client.clone(), a);
    let lp = ListParams::default().labels("repository=repo");
    let warm = snaps.list(&lp).await.expect("list");
    assert_eq!(warm.items.len(), want.len());
    let t = Instant::now();
    for _ in 0..50 {
        let l = snaps.list(&lp).await.expect("list");
        assert_eq!(l.items.len(), want.len());
    }
    let api_avg = t.elapsed() / 50;
    let d = dir_a.clone();
    let restic_time = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        restic_snapshots(&d);
        t.elapsed()
    })
    .await
    .expect("restic");
    println!(
        "list 3 snapshots: Snapshot API through kube-apiserver {:.2} ms on average (50 lists), restic snapshots --json {:.2} ms",
        api_avg.as_secs_f64() * 1e3,
        restic_time.as_secs_f64() * 1e3
    );
    assert!(
        api_avg * 2 < restic_time,
        "catalog lists ({api_avg:?}) are well under a restic run ({restic_time:?})"
    );

    // A Repository deleted and created again under the same name answers with the new
    // backend's snapshots at once (the catalog is keyed by UID, not by name).
    let repos = Api::<Repository>::namespaced(client.clone(), a);
    let twin = |dir: &Path| {
        json!({"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
               "metadata": {"name": "twin"},
               "spec": {"backend": {"storageSecretName": "storage",
                                    "local": {"mountPath": "/safe/data", "hostPath": {"path": dir.to_string_lossy()}}}}})
    };
    apply(&client, a, twin(&dir_a)).await;
    let out = kubectl.ok(&[
        "get",
        "snapshots",
        "-n",
        a,
        "-l",
        "repository=twin",
        "-o",
        "name",
    ]);
    let want_a: BTreeSet<String> = short_ids(&restic_snapshots(&dir_a))
        .into_iter()
        .map(|id| format!("twin-{id}"))
        .collect();
    assert_eq!(names(&out), want_a, "{out}");
    repos
        .delete("twin", &Default::default())
        .await
        .expect("delete twin");
    let deadline = Instant::now() + Duration::from_secs(60);
    while repos.get_opt("twin").await.expect("get twin").is_some() {
        assert!(Instant::now() < deadline, "Repository twin is deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    apply(&client, a, twin(&dir_b)).await;
    let out = kubectl.ok(&[
        "get",
        "snapshots",
        "-n",
        a,
        "-l",
        "repository=twin",
        "-o",
        "name",
    ]);
    let want_b: BTreeSet<String> = short_ids(&restic_snapshots(&dir_b))
        .into_iter()
        .map(|id| format!("twin-{id}"))
        .collect();
    assert_eq!(
        names(&out),
        want_b,
        "the recreated Repository's own snapshots: {out}"
    );

    // A repository that cannot be read (wrong password) is an error naming it, not an empty
    // list; a list across every namespace still lists the others.
    apply(
        &client,
        a,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wrong"},
               "stringData": {"RESTIC_PASSWORD": "not-the-password"}}),
    )
    .await;
    apply(&client, a, json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
        "metadata": {"name": "locked"},
        "spec": {"backend": {"storageSecretName": "wrong",
                             "local": {"mountPath": "/safe/data", "hostPath": {"path": dir_a.to_string_lossy()}}}}
    }))
    .await;
    let err = kubectl.err(
        None,
        &["get", "snapshots", "-n", a, "-l", "repository=locked"],
    );
    assert!(
        err.contains("locked") && err.contains("cannot be read"),
        "an unreadable repository is an error: {err}"
    );
    let all = kubectl.run(None, &["get", "snapshots", "-A", "-o", "name"]);
    let listed = String::from_utf8_lossy(&all.stdout);
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    assert!(
        want_a
            .iter()
            .all(|n| listed.contains(&format!("repo-{}", &n["twin-".len()..]))),
        "the readable repositories are listed across namespaces: {listed}"
    );
    println!(
        "all namespaces with an unreadable repository, stderr: {}",
        String::from_utf8_lossy(&all.stderr).trim()
    );
    for name in ["locked", "twin"] {
        repos
            .delete(name, &Default::default())
            .await
            .expect("delete repository");
    }

    // Deleting a namespace finishes (the API stays discoverable) and forgets nothing: the
    // namespace controller sees no snapshots in a terminating namespace.
    let b = b.to_owned();
    drop(ns_b);
    let namespaces = Api::<Namespace>::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(90);
    while namespaces
        .get_opt(&b)
        .await
        .expect("get namespace")
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "namespace {b} is deleted while the Snapshot API is registered"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        restic_snapshots(&dir_b).len(),
        1,
        "deleting the namespace forgot no snapshot"
    );
}
