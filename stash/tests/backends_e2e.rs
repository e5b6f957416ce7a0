//! Remote backends for real, each server on the node address inside the cluster's network
//! namespace (the sidecar, the restore Job and the operator reach it through the cluster
//! network): S3 on moto (plain HTTP) and on MinIO (HTTPS with a private CA), Google Cloud
//! Storage on fake-gcs-server and Azure Blob Storage on Azurite (both HTTPS with the private
//! CA), and the restic REST server. A Deployment is backed up through the sidecar, restic on the
//! host lists the snapshot of `host-0` at the same repository, and the restored bytes are
//! identical to the originals; the TLS backends are also restored in the cluster (a
//! RestoreSession into a new PVC), listed through `kubectl get snapshots`, and wiped out.
//! wipeOut also: in a bucket with foreign objects (only restic's go), with the bucket's region
//! found from the endpoint (MinIO with a site region), failing (event, `WipeOut` condition,
//! retried on an interval, the abandon annotation), and with its storage Secret gone while the
//! namespace is deleted (the namespace does not stay Terminating). Figures go through
//! `stash_testenv::report`.
use stash_e2e as support;

use std::time::Duration;

use kube::Client;
use serde_json::json;
use stash_testenv::bins;
use support::{minio::*, *};

const PASSWORD: &str = "backend-test-password";

/// A namespace `<prefix>-<random>` with a Deployment `app` over a PVC of generated files: the
/// namespace's guard, its name, the source directory, and a client.
async fn workload(
    prefix: &str,
) -> (
    stash_testenv::TestNamespace,
    String,
    std::path::PathBuf,
    Client,
) {
    let env = env().await;
    let ns = env.cp.namespace(prefix).await.expect("namespace");
    let source = pv_dir(&ns.name, "source-data").await;
    generate_files(&source, 77, 16, 8192);
    let client = env.cp.client();
    deployment_with_pvc(&client, &ns.name, "app", "source-data").await;
    let name = ns.name.clone();
    (ns, name, source, client)
}

/// Back up `app` into Repository `repo` (already applied) and check restic's view at
/// `restic_url` with the environment `restic_env`.
async fn backup_and_verify(
    client: &Client,
    ns: &str,
    source: &std::path::Path,
    restic_url: &str,
    restic_env: &[(&str, &str)],
) -> String {
    let host = || {
        let mut c = restic(restic_url, PASSWORD);
        for (k, v) in restic_env {
            c.env(k, v);
        }
        c
    };
    backup_and_check(client, ns, source, &host).await
}

/// Back up `app` into Repository `repo` (already applied) and check restic's own view through
/// `host_restic` (a restic command on the host for that repository). Returns the snapshot.
async fn backup_and_check(
    client: &Client,
    ns: &str,
    source: &std::path::Path,
    host_restic: &dyn Fn() -> std::process::Command,
) -> String {
    let retention = json!({"name": "keep-last-5", "keepLast": 5, "prune": true});
    sidecar_backup(
        client,
        ns,
        "app",
        "repo",
        json!({"retentionPolicy": retention}),
    )
    .await;
    let s = run_backup_session(client, ns, "app-backup", "remote", Duration::from_secs(120)).await;
    let status = s.status.clone().expect("status");
    let short = status.stats[0].snapshots[0]
        .name
        .clone()
        .expect("snapshot name");

    // Restic on the host takes its own locks once the agent is done with the repository.
    let rs = wait_repository_status(client, ns).await;
    assert_eq!(rs.snapshot_count, Some(1), "{rs:?}");
    assert_eq!(rs.integrity, Some(true), "{rs:?}");
    assert_only_snapshot(&restic_snapshots_of(host_restic()), "host-0", &short);
    assert_restores_equal(host_restic(), &short, source);
    assert_no_illegal_transitions().await;
    short
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_is_backed_up_to_s3() {
    let (_guard, ns, source, client) = workload("s3").await;
    // moto listens on the node address, inside the cluster's network namespace: the sidecar
    // (a pod) and the operator (wipeOut) reach it there, and so does restic on the host.
    let moto = bins::bin("moto_server").expect("moto_server");
    let port = cluster_server(
        "moto",
        &moto,
        |ip, port| vec!["-H".into(), ip.into(), "-p".into(), port.to_string()],
        &[],
    )
    .await;
    let bucket = "stash-e2e";
    let endpoint = format!("http://{}:{port}", stash_testenv::NODE_IP);
    // Create the bucket (an anonymous PUT is accepted by moto).
    eventually("the bucket to be created", Duration::from_secs(30), || {
        let endpoint = endpoint.clone();
        async move {
            http_put(&endpoint, &format!("/{bucket}"))
                .await
                .filter(|c| *c == 200)
        }
    })
    .await;
    let (key_id, key) = ("AKIASTASHE2E", "s3-secret-key-for-the-test");
    secret_and_repository(
        &client,
        &ns,
        "s3-secret",
        json!({"RESTIC_PASSWORD": PASSWORD, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": key}),
        json!({"backend": {"s3": {"endpoint": endpoint, "bucket": bucket, "prefix": "demo/app"}},
               "wipeOut": true}),
    )
    .await;
    let url = format!("s3:{endpoint}/{bucket}/demo/app");
    backup_and_verify(
        &client,
        &ns,
        &source,
        &url,
        &[
            ("AWS_ACCESS_KEY_ID", key_id),
            ("AWS_SECRET_ACCESS_KEY", key),
        ],
    )
    .await;

    // The Repository controller's finalizer: deleting with wipeOut deletes the restic data
    // under the bucket/prefix (signed S3 requests), then lets the Repository go.
    let repos = kube::Api::<stash_crds::Repository>::namespaced(client.clone(), &ns);
    let r = repos.get("repo").await.expect("repo");
    assert!(
        r.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"stash".to_string()),
        "finalizer `stash` on a live Repository"
    );
    let has_repo = || {
        let mut cmd = restic(&url, PASSWORD);
        cmd.env("AWS_ACCESS_KEY_ID", key_id)
            .env("AWS_SECRET_ACCESS_KEY", key)
            .args(["cat", "config"]);
        cmd.output().expect("restic cat config").status.success()
    };
    assert!(has_repo(), "the repository exists before the deletion");
    let ev = delete_and_wipe(&client, &ns).await;
    assert!(ev.note.contains("deleted"), "{ev:?}");
    assert!(!has_repo(), "restic finds no repository after the wipe-out");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_is_backed_up_to_a_rest_server() {
    let (_guard, ns, source, client) = workload("rest").await;
    let data = tempfile::tempdir().expect("rest-server data");
    let url = rest_repository(&client, &ns, data.path(), PASSWORD).await;
    backup_and_verify(&client, &ns, &source, &format!("rest:{url}"), &[]).await;
    assert!(
        data.path().join("app").join("config").exists(),
        "the repository lives in the REST server's directory"
    );
}

/// restic (`restic`: a command for a repository that was wiped out) finds no repository.
fn assert_wiped(mut restic: std::process::Command) {
    let out = restic.args(["cat", "config"]).output().expect("restic");
    assert!(
        !out.status.success(),
        "restic finds no repository after the wipe-out"
    );
}

/// `PUT path` over plain HTTP/1.0; the status code.
async fn http_put(endpoint: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("PUT {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// A restic command on the host for `url`, with `env` (credentials stay in the environment,
/// never in the arguments) and `--cacert`. With `hosts`, restic runs in a mount namespace of
/// its own where that file is `/etc/hosts` (cluster DNS names the pods resolve through
/// CoreDNS; the host's files are untouched).
fn host_restic(
    url: &str,
    env: &[(&str, String)],
    cacert: &std::path::Path,
    hosts: Option<&std::path::Path>,
) -> std::process::Command {
    let bin = bins::bin("restic").expect("restic");
    let mut cmd = match hosts {
        Some(h) => {
            let mut c = std::process::Command::new("unshare");
            c.args(["-m", "--propagation", "private", "sh", "-c"])
                .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
                .arg(h)
                .arg(&bin);
            c
        }
        None => std::process::Command::new(&bin),
    };
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", "/tmp")
        .env("RESTIC_REPOSITORY", url)
        .env("RESTIC_PASSWORD", PASSWORD)
        .arg("--no-cache")
        .arg("--cacert")
        .arg(cacert);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `kubectl get snapshots -n ns` (the operator's Snapshot API, which runs restic against the
/// backend from inside the cluster) lists snapshot `short` of Repository `repo`.
fn kubectl_lists_snapshot(ns: &str, short: &str) {
    let cp = stash_testenv::shared_now().expect("attached");
    let out = cp
        .kubectl()
        .expect("kubectl")
        .args([
            "get",
            "snapshots",
            "-n",
            ns,
            "-l",
            "repository=repo",
            "-o",
            "json",
        ])
        .output()
        .expect("kubectl get snapshots");
    assert!(
        out.status.success(),
        "kubectl get snapshots: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    assert!(
        names.iter().any(|n| n == &format!("repo-{short}")),
        "kubectl get snapshots lists repo-{short}: {names:?}"
    );
}

/// Restore `/source/data` of `host-0` from Repository `repo` into a new PVC through a
/// RestoreSession (a Job in the cluster); the restored bytes equal `source`.
async fn restore_in_cluster(client: &Client, ns: &str, source: &std::path::Path) {
    use stash_crds::restore_session::Phase as RestorePhase;
    let restored = pv_dir(ns, "restored-data").await;
    apply(client, ns, json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "restored-data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .await;
    apply(client, ns, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "restore"},
        "spec": {"repository": {"name": "repo"}, "task": {"name": "pvc-restore"},
                 "target": {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "restored-data"},
                            "volumeMounts": [{"name": "target-volume", "mountPath": "/source/data"}]},
                 "rules": [{"paths": ["/source/data"]}]}
    }))
    .await;
    wait_session_ends(
        client,
        ns,
        "restore",
        RestorePhase::Succeeded,
        Duration::from_secs(180),
    )
    .await;
    let got = checksums(&restored);
    assert!(!got.is_empty());
    assert_eq!(
        got,
        checksums(source),
        "restored bytes differ (in-cluster restore)"
    );
}

/// Delete Repository `repo` (wipeOut: true) and wait for it to be gone; the `WipedOut` event.
async fn delete_and_wipe(client: &Client, ns: &str) -> EventView {
    let repos = kube::Api::<stash_crds::Repository>::namespaced(client.clone(), ns);
    repos
        .delete("repo", &Default::default())
        .await
        .expect("delete repo");
    eventually("the Repository to be gone", Duration::from_secs(90), || {
        let repos = repos.clone();
        async move { matches!(repos.get_opt("repo").await, Ok(None)).then_some(()) }
    })
    .await;
    let ev = wait_event(client, ns, "repo", "WipedOut", Duration::from_secs(30)).await;
    assert_eq!(ev.type_, "Normal");
    ev
}

/// The keys of every object in `store`.
async fn all_keys(store: &dyn object_store::ObjectStore) -> std::collections::BTreeSet<String> {
    use futures::TryStreamExt;
    store
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list the bucket")
}

/// S3 over HTTPS with a certificate from a private CA (MinIO): the Secret carries
/// `CA_CERT_DATA`; backup through the sidecar, `kubectl get snapshots`, a restore in the
/// cluster and from the host, then a wipe-out of a repository at the bucket's root (empty
/// prefix) in a bucket that also holds foreign files: only restic's objects go.
#[tokio::test(flavor = "multi_thread")]
async fn minio_over_tls_with_a_private_ca() {
    use object_store::ObjectStoreExt;
    let (_guard, ns, source, client) = workload("minio").await;
    let certs = tempfile::tempdir().expect("certs");
    let ca = private_ca(certs.path(), &[stash_testenv::NODE_IP]);
    let data = tempfile::tempdir().expect("minio data");
    let bucket = "stash-tls";
    let (user, secret) = (MINIO_USER, MINIO_SECRET);
    let port = minio(certs.path(), data.path(), bucket, &[]).await;
    let endpoint = format!("https://{}:{port}", stash_testenv::NODE_IP);
    minio_repository(&client, &ns, &endpoint, bucket, "", &ca, PASSWORD).await;
    let url = format!("s3:{endpoint}/{bucket}");
    let cacert = certs.path().join("ca.crt");
    let renv = [
        ("AWS_ACCESS_KEY_ID", user.to_string()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
    ];
    let host = || host_restic(&url, &renv, &cacert, None);
    let short = backup_and_check(&client, &ns, &source, &host).await;
    kubectl_lists_snapshot(&ns, &short);
    restore_in_cluster(&client, &ns, &source).await;

    // Foreign files in the same bucket: at the root beside the repository, inside restic's
    // own directories under names that are not restic's, and another repository's layout
    // under a prefix of its own.
    let store = minio_store(&endpoint, bucket, "us-east-1", &cacert);
    let hex = "ab".repeat(32);
    let foreign = [
        "photos/cat.jpg".to_string(),
        "README.txt".to_string(),
        "data/README".to_string(),
        "keys/not-a-key".to_string(),
        "other-app/config".to_string(),
        format!("other-app/keys/{hex}"),
        format!("other-app/data/ab/{hex}"),
    ];
    for k in &foreign {
        store
            .put(
                &object_store::path::Path::from(k.as_str()),
                b"not restic's".to_vec().into(),
            )
            .await
            .expect("put a foreign object");
    }
    let before = all_keys(&store).await;
    let restic_objects: Vec<&String> = before.iter().filter(|k| !foreign.contains(k)).collect();
    assert!(restic_objects.iter().any(|k| *k == "config"));
    assert!(restic_objects.iter().any(|k| k.starts_with("data/")));
    let ev = delete_and_wipe(&client, &ns).await;
    let after = all_keys(&store).await;
    let expected: std::collections::BTreeSet<String> = foreign.iter().cloned().collect();
    assert_eq!(after, expected, "exactly the foreign objects are left");
    assert!(
        ev.note
            .contains(&format!("deleted {} restic objects", restic_objects.len())),
        "{ev:?}"
    );
    assert_eq!(before.len(), restic_objects.len() + foreign.len());
    stash_testenv::report(&format!(
        "wipeOut mixed bucket: {} restic objects deleted, {} foreign objects kept",
        restic_objects.len(),
        after.len()
    ));
    assert_wiped(host());
}

/// Two Repository objects in two namespaces on one bucket and prefix (what a template prefix
/// without `${TARGET_NAMESPACE}` makes), their first sessions created together: the
/// first-backup claim is the storage location's, so one session initialises the repository
/// and the other starts once it has finished (issue 25). restic's own view: one key, one
/// config, both snapshots, `check` clean.
#[tokio::test(flavor = "multi_thread")]
async fn two_repository_objects_on_one_prefix_initialise_it_once() {
    let (_a_guard, a, a_source, client) = workload("shared-prefix-a").await;
    let (_b_guard, b, _, _) = workload("shared-prefix-b").await;
    let certs = tempfile::tempdir().expect("certs");
    let ca = private_ca(certs.path(), &[stash_testenv::NODE_IP]);
    let data = tempfile::tempdir().expect("minio data");
    let bucket = "stash-shared";
    let port = minio(certs.path(), data.path(), bucket, &[]).await;
    let endpoint = format!("https://{}:{port}", stash_testenv::NODE_IP);
    for ns in [&a, &b] {
        minio_repository(&client, ns, &endpoint, bucket, "shared", &ca, PASSWORD).await;
        sidecar_backup(&client, ns, "app", "repo", json!({})).await;
    }
    let (sa, sb) = tokio::join!(
        run_backup_session(&client, &a, "app-backup", "first", Duration::from_secs(240)),
        run_backup_session(&client, &b, "app-backup", "first", Duration::from_secs(240)),
    );
    // One after the other: the later one started after the earlier one ended.
    let mut runs = Vec::new();
    for ns in [&a, &b] {
        let started = event_times(&client, ns, "first", "BackupSessionJobCreated").await[0].0;
        let ended = event_times(&client, ns, "first", "SuccessfulBackup").await[0].0;
        runs.push((started, ended, ns.clone()));
    }
    runs.sort();
    assert!(
        runs[1].0 >= runs[0].1,
        "the first sessions overlapped: {runs:?}"
    );
    let url = format!("s3:{endpoint}/{bucket}/shared");
    let renv = [
        ("AWS_ACCESS_KEY_ID", MINIO_USER.to_string()),
        ("AWS_SECRET_ACCESS_KEY", MINIO_SECRET.to_string()),
    ];
    let cacert = certs.path().join("ca.crt");
    let host = || host_restic(&url, &renv, &cacert, None);
    // Restic on the host waits for the agents' follow-up locks.
    for ns in [&a, &b] {
        wait_repository_status(&client, ns).await;
    }
    let keys = host()
        .args(["key", "list", "--json"])
        .output()
        .expect("restic key list");
    assert!(
        keys.status.success(),
        "{}",
        String::from_utf8_lossy(&keys.stderr)
    );
    let keys: Vec<serde_json::Value> = serde_json::from_slice(&keys.stdout).expect("keys json");
    assert_eq!(keys.len(), 1, "one restic init: {keys:?}");
    let snaps = restic_snapshots_of(host());
    let named: std::collections::BTreeSet<String> = [&sa, &sb]
        .iter()
        .map(|s| {
            s.status.as_ref().expect("status").stats[0].snapshots[0]
                .name
                .clone()
                .expect("name")
        })
        .collect();
    let found: std::collections::BTreeSet<String> = snaps
        .iter()
        .filter_map(|s| s["short_id"].as_str().map(String::from))
        .collect();
    assert_eq!(
        found, named,
        "both first sessions' snapshots, and nothing else"
    );
    let check = host().arg("check").output().expect("restic check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_restores_equal(
        host(),
        &sa.status.as_ref().expect("status").stats[0].snapshots[0]
            .name
            .clone()
            .expect("name"),
        &a_source,
    );
    stash_testenv::report(&format!(
        "two Repository objects on one prefix: one key, {} snapshots, the second first session started {} ms after the first ended",
        snaps.len(),
        runs[1].0.duration_since(runs[0].1).as_millis()
    ));
}

/// Google Cloud Storage against fake-gcs-server over HTTPS with the private CA: restic (and
/// the operator's wipe-out) reach it through `STORAGE_EMULATOR_HOST`, with a bearer token
/// (`GOOGLE_ACCESS_TOKEN`) instead of a service account.
#[tokio::test(flavor = "multi_thread")]
async fn google_cloud_storage_on_fake_gcs_server() {
    let (_guard, ns, source, client) = workload("gcs").await;
    let certs = tempfile::tempdir().expect("certs");
    let ca = private_ca(certs.path(), &[stash_testenv::NODE_IP]);
    let gcs = bins::bin("fake-gcs-server").expect("fake-gcs-server");
    // The bucket, preloaded (`-data`: each directory is a bucket).
    let preload = tempfile::tempdir().expect("preload");
    std::fs::create_dir(preload.path().join("stash-gcs")).expect("bucket dir");
    let preload_dir = preload.path().to_owned();
    let certs_dir = certs.path().to_owned();
    let port = cluster_server(
        "fake-gcs-server",
        &gcs,
        |ip, port| {
            let cert = certs_dir.join("public.crt").display().to_string();
            let key = certs_dir.join("private.key").display().to_string();
            vec![
                "-scheme".into(),
                "https".into(),
                "-host".into(),
                ip.into(),
                "-port".into(),
                port.to_string(),
                "-cert-location".into(),
                cert,
                "-private-key-location".into(),
                key,
                "-backend".into(),
                "memory".into(),
                "-data".into(),
                preload_dir.display().to_string(),
                "-public-host".into(),
                format!("{ip}:{port}"),
                "-external-url".into(),
                format!("https://{ip}:{port}"),
                "-log-level".into(),
                "warn".into(),
            ]
        },
        &[],
    )
    .await;
    let emulator = format!("https://{}:{port}", stash_testenv::NODE_IP);
    let (project, token) = ("stash-e2e", "gcs-bearer-token-for-the-test");
    secret_and_repository(
        &client,
        &ns,
        "gcs-secret",
        json!({"RESTIC_PASSWORD": PASSWORD, "GOOGLE_PROJECT_ID": project,
               "GOOGLE_ACCESS_TOKEN": token, "STORAGE_EMULATOR_HOST": emulator,
               "CA_CERT_DATA": ca}),
        json!({"backend": {"gcs": {"bucket": "stash-gcs", "prefix": "demo/app"}},
               "wipeOut": true}),
    )
    .await;
    let cacert = certs.path().join("ca.crt");
    let renv = [
        ("GOOGLE_PROJECT_ID", project.to_string()),
        ("GOOGLE_ACCESS_TOKEN", token.to_string()),
        ("STORAGE_EMULATOR_HOST", emulator.clone()),
    ];
    let host = || host_restic("gs:stash-gcs:/demo/app", &renv, &cacert, None);
    let short = backup_and_check(&client, &ns, &source, &host).await;
    kubectl_lists_snapshot(&ns, &short);
    restore_in_cluster(&client, &ns, &source).await;
    let ev = delete_and_wipe(&client, &ns).await;
    eprintln!("GCS wipe-out: {}", ev.note);
    assert_wiped(host());
}

/// Azure Blob Storage against Azurite over HTTPS with the private CA. restic only speaks to
/// `https://<account>.blob.<AZURE_ENDPOINT_SUFFIX>`: the suffix is `<ns>.svc.cluster.local:<port>`
/// and a headless Service `blob` whose endpoint has hostname `<account>` gives that name to
/// the node address (Azurite takes the account from the host name, as Azure does).
#[tokio::test(flavor = "multi_thread")]
async fn azure_blob_storage_on_azurite() {
    let (_guard, ns, source, client) = workload("azure").await;
    let account = "stashe2e";
    let fqdn = format!("{account}.blob.{ns}.svc.cluster.local");
    let certs = tempfile::tempdir().expect("certs");
    let ca = private_ca(certs.path(), &[&fqdn]);
    let key = AZURITE_KEY;
    let accounts = format!("{account}:{key}");
    let data = tempfile::tempdir().expect("azurite data");
    let azurite = bins::bin("azurite-blob").expect("azurite-blob");
    let (certs_dir, data_dir) = (certs.path().to_owned(), data.path().to_owned());
    let port = cluster_server(
        "azurite",
        &azurite,
        |ip, port| {
            vec![
                "--blobHost".into(),
                ip.into(),
                "--blobPort".into(),
                port.to_string(),
                "--cert".into(),
                certs_dir.join("public.crt").display().to_string(),
                "--key".into(),
                certs_dir.join("private.key").display().to_string(),
                "--location".into(),
                data_dir.display().to_string(),
                "--skipApiVersionCheck".into(),
                "--loose".into(),
                "--silent".into(),
            ]
        },
        &[("AZURITE_ACCOUNTS", accounts.as_ref())],
    )
    .await;
    // `<account>.blob.<ns>.svc.cluster.local` → the node address, for pods (CoreDNS).
    apply(&client, &ns, json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "blob"},
        "spec": {"clusterIP": "None", "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}
    }))
    .await;
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "blob-node", "labels": {"kubernetes.io/service-name": "blob"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [stash_testenv::NODE_IP], "hostname": account,
                           "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
        }),
    )
    .await;
    let suffix = format!("{ns}.svc.cluster.local:{port}");
    secret_and_repository(
        &client,
        &ns,
        "azure-secret",
        json!({"RESTIC_PASSWORD": PASSWORD, "AZURE_ACCOUNT_NAME": account,
               "AZURE_ACCOUNT_KEY": key, "AZURE_ENDPOINT_SUFFIX": suffix,
               "CA_CERT_DATA": ca}),
        json!({"backend": {"azure": {"container": "stash-azure", "prefix": "demo/app"}},
               "wipeOut": true}),
    )
    .await;
    // The same name for restic on the host, in a mount namespace of its own.
    let hosts = certs.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{} {fqdn}\n", stash_testenv::NODE_IP),
    )
    .expect("hosts");
    let cacert = certs.path().join("ca.crt");
    let renv = [
        ("AZURE_ACCOUNT_NAME", account.to_string()),
        ("AZURE_ACCOUNT_KEY", key.to_string()),
        ("AZURE_ENDPOINT_SUFFIX", suffix.clone()),
    ];
    let host = || host_restic("azure:stash-azure:/demo/app", &renv, &cacert, Some(&hosts));
    // restic 0.19.1 looks for `config` before it creates a missing container, and a missing
    // container (`ContainerNotFound`) is an error it retries, not "no repository": the
    // container must exist, as on Azure. `restic init` creates it (and the repository) from
    // the host. (Azurite is patched at build to take restic's empty `x-ms-access-tier` header
    // as no tier, as Azure does: testenv/build.sh.)
    let out = host().arg("init").output().expect("restic init");
    assert!(
        out.status.success(),
        "restic init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let short = backup_and_check(&client, &ns, &source, &host).await;
    kubectl_lists_snapshot(&ns, &short);
    restore_in_cluster(&client, &ns, &source).await;

    // What an Azure user sees when the container does not exist: restic retries
    // `ContainerNotFound` forever; the wrapper stops it at once with a clear error (here
    // through the Snapshot API, which runs restic in the operator).
    apply(&client, &ns, json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "missing"},
        "spec": {"backend": {"storageSecretName": "azure-secret",
                             "azure": {"container": "no-such-container", "prefix": "x"}}}
    }))
    .await;
    let started = std::time::Instant::now();
    let out = stash_testenv::shared_now()
        .expect("attached")
        .kubectl()
        .expect("kubectl")
        .args(["get", "snapshots", "-n", &ns, "-l", "repository=missing"])
        .output()
        .expect("kubectl get snapshots");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("container no-such-container does not exist"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}: {stderr}");
    stash_testenv::report(&format!(
        "Azure missing container: reported in {:.1} s: {}",
        took.as_secs_f64(),
        stderr.trim()
    ));

    // The Secret as a user holding only a SAS token writes it (no account key): the Snapshot
    // API's restic lists through it, and the wipe-out deletes with it.
    let secrets = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns);
    let mut secret = secrets.get("azure-secret").await.expect("secret");
    let data = secret.data.get_or_insert_with(Default::default);
    assert!(data.remove("AZURE_ACCOUNT_KEY").is_some());
    data.insert(
        "AZURE_ACCOUNT_SAS".into(),
        k8s_openapi::ByteString(account_sas(account, AZURITE_KEY_BYTES).into_bytes()),
    );
    secrets
        .replace("azure-secret", &Default::default(), &secret)
        .await
        .expect("the Secret with a SAS token only");
    kubectl_lists_snapshot(&ns, &short);
    stash_testenv::report("Azure SAS-only Secret: snapshots listed through the Snapshot API");
    // The wipe-out with the SAS token only: one DELETE per blob (Azure's blob batch, which
    // object_store uses, does not take every SAS token; Azurite 3.37.0 answers it with 500).
    let ev = delete_and_wipe(&client, &ns).await;
    stash_testenv::report(&format!(
        "Azure wipe-out with a SAS-only Secret: {}",
        ev.note
    ));
    assert_wiped(host());
}

/// A wipe-out that cannot succeed (the object store does not answer) keeps the finalizer and
/// says why in a Warning event; the documented annotation lets the deletion finish.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_wipe_out_is_reported_and_can_be_abandoned() {
    let env = env().await;
    let client = env.cp.client();
    let ns_guard = env.cp.namespace("wipe-fail").await.expect("namespace");
    let ns = ns_guard.name.clone();
    let repos = repo_on_a_silent_endpoint(&client, &ns, "gone", "x").await;
    repos
        .delete("repo", &Default::default())
        .await
        .expect("delete");
    let ev = wait_event(
        &client,
        &ns,
        "repo",
        "WipeOutFailed",
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(ev.type_, "Warning");
    assert!(
        ev.note.contains("stash.appscode.com/abandon-wipe-out"),
        "{ev:?}"
    );
    assert!(
        repos.get_opt("repo").await.expect("get").is_some(),
        "the finalizer keeps the Repository while the wipe fails"
    );
    // The failure is in the Repository's status too: condition `WipeOut`.
    let cond = eventually(
        "the WipeOut condition in the status",
        Duration::from_secs(60),
        || {
            let repos = repos.clone();
            async move {
                let r = repos.get("repo").await.ok()?;
                r.status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == stash_crds::repository::WIPE_OUT_CONDITION)
            }
        },
    )
    .await;
    assert_eq!(cond.status, "False", "{cond:?}");
    assert_eq!(cond.reason, "WipeOutFailed", "{cond:?}");
    assert!(
        cond.message.contains("s3://gone/x")
            && cond.message.contains("stash.appscode.com/abandon-wipe-out"),
        "{cond:?}"
    );
    // Retried on the controller's interval (5 s), not in a loop driven by its own status
    // writes.
    let attempts = || async {
        kube::Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("WipeOutFailed"))
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum::<i32>()
    };
    let (before, started) = (attempts().await, std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let retries = attempts().await - before;
    let per_min = f64::from(retries) * 60.0 / started.elapsed().as_secs_f64();
    assert!(
        (1..=8).contains(&retries),
        "{retries} failed attempts in 20 s"
    );
    stash_testenv::report(&format!(
        "wipeOut failing: {retries} attempts in 20 s ({per_min:.0}/min), condition WipeOut/False/WipeOutFailed"
    ));
    abandon_wipe_out(&repos).await;
    let ev = wait_event(
        &client,
        &ns,
        "repo",
        "WipeOutAbandoned",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(ev.type_, "Warning");
}

/// The bucket's region found from the endpoint: MinIO with a site region (`eu-west-7`), a
/// Repository whose Secret has no `AWS_REGION`. Requests signed for the default `us-east-1`
/// are refused by this server (checked first), so the wipe-out succeeds only because the
/// operator asked the endpoint for the bucket's region (`x-amz-bucket-region`).
#[tokio::test(flavor = "multi_thread")]
async fn wipe_out_finds_the_buckets_region() {
    use object_store::ObjectStoreExt;
    let env = env().await;
    let client = env.cp.client();
    let ns_guard = env.cp.namespace("region").await.expect("namespace");
    let ns = ns_guard.name.clone();
    let certs = tempfile::tempdir().expect("certs");
    let ca = private_ca(certs.path(), &[stash_testenv::NODE_IP]);
    let data = tempfile::tempdir().expect("minio data");
    let (bucket, region) = ("stash-region", "eu-west-7");
    let port = minio(
        certs.path(),
        data.path(),
        bucket,
        &[("MINIO_SITE_REGION", region.as_ref())],
    )
    .await;
    let endpoint = format!("https://{}:{port}", stash_testenv::NODE_IP);
    let cacert = certs.path().join("ca.crt");
    let store_in = |region: &str| minio_store(&endpoint, bucket, region, &cacert);
    let wrong = store_in("us-east-1")
        .put(
            &object_store::path::Path::from("probe"),
            b"x".to_vec().into(),
        )
        .await;
    let wrong = format!("{:?}", wrong.expect_err("a request signed for us-east-1"));
    assert!(
        wrong.contains(region),
        "the server refuses requests signed for us-east-1 and names its region: {wrong}"
    );
    // A repository with a snapshot, made by restic on the host (it finds the region itself).
    let url = format!("s3:{endpoint}/{bucket}/region/app");
    let renv = [
        ("AWS_ACCESS_KEY_ID", MINIO_USER.to_string()),
        ("AWS_SECRET_ACCESS_KEY", MINIO_SECRET.to_string()),
    ];
    let host = || host_restic(&url, &renv, &cacert, None);
    let files = tempfile::tempdir().expect("files");
    generate_files(files.path(), 20, 4, 4096);
    for args in [
        vec!["init".into()],
        vec!["backup".into(), files.path().display().to_string()],
    ] {
        let out = host().args(&args).output().expect("restic");
        assert!(
            out.status.success(),
            "restic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let objects = all_keys(&store_in(region)).await;
    let restic_objects = objects
        .iter()
        .filter(|k| k.starts_with("region/app/"))
        .count();
    assert!(restic_objects >= 5, "{objects:?}");
    let repos =
        minio_repository(&client, &ns, &endpoint, bucket, "region/app", &ca, PASSWORD).await;
    wait_finalizer(&repos).await;
    let ev = delete_and_wipe(&client, &ns).await;
    assert!(
        ev.note
            .contains(&format!("deleted {restic_objects} restic objects")),
        "{ev:?}"
    );
    assert!(
        all_keys(&store_in(region)).await.is_empty(),
        "the bucket is empty after the wipe-out"
    );
    assert_wiped(host());
    stash_testenv::report(&format!(
        "wipeOut bucket region: {region} found from the endpoint, {restic_objects} restic objects deleted"
    ));
}

/// A namespace deleted with a wipeOut Repository whose storage Secret goes first (the
/// namespace controller deletes both in no particular order): the wipe-out cannot be done, and
/// the operator lets the finalizer go instead of keeping the namespace Terminating forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_whose_storage_secret_is_gone_is_not_kept_terminating() {
    let env = env().await;
    let client = env.cp.client();
    let ns_guard = env.cp.namespace("wipe-ns").await.expect("namespace");
    let ns = ns_guard.name.clone();
    repo_on_a_silent_endpoint(&client, &ns, "wipe-ns", "p").await;
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
        .delete("s3-secret", &Default::default())
        .await
        .expect("delete the Secret");
    let namespaces = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    namespaces
        .delete(&ns, &Default::default())
        .await
        .expect("delete the namespace");
    let started = std::time::Instant::now();
    eventually("the namespace to be gone", Duration::from_secs(120), || {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move { matches!(namespaces.get_opt(&ns).await, Ok(None)).then_some(()) }
    })
    .await;
    stash_testenv::report(&format!(
        "wipeOut storage Secret gone with its namespace: namespace deleted in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
}

/// Secret `s3-secret` and Repository `repo` (wipeOut) on S3 at a node port where nothing
/// listens, bucket `bucket`, prefix `prefix`; returns the Repositories API once the finalizer
/// is on.
async fn repo_on_a_silent_endpoint(
    client: &Client,
    ns: &str,
    bucket: &str,
    prefix: &str,
) -> kube::Api<stash_crds::Repository> {
    let port = env().await.cp.cluster_port();
    let endpoint = format!("http://{}:{port}", stash_testenv::NODE_IP);
    secret_and_repository(
        client,
        ns,
        "s3-secret",
        json!({"RESTIC_PASSWORD": PASSWORD, "AWS_ACCESS_KEY_ID": "AKIAWIPEFAIL",
               "AWS_SECRET_ACCESS_KEY": "wipe-fail-secret", "AWS_REGION": "eu-west-3"}),
        json!({"backend": {"s3": {"endpoint": endpoint, "bucket": bucket, "prefix": prefix}},
               "wipeOut": true}),
    )
    .await;
    let repos = kube::Api::<stash_crds::Repository>::namespaced(client.clone(), ns);
    wait_finalizer(&repos).await;
    repos
}

/// Annotate Repository `repo` to abandon its wipe-out and wait until it is gone.
async fn abandon_wipe_out(repos: &kube::Api<stash_crds::Repository>) {
    repos
        .patch(
            "repo",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {
                "stash.appscode.com/abandon-wipe-out": "true"}}})),
        )
        .await
        .expect("annotate");
    eventually("the Repository to be gone", Duration::from_secs(90), || {
        let repos = repos.clone();
        async move { matches!(repos.get_opt("repo").await, Ok(None)).then_some(()) }
    })
    .await;
}

/// Wait for the operator's finalizer on Repository `repo`.
async fn wait_finalizer(repos: &kube::Api<stash_crds::Repository>) {
    eventually("the finalizer", Duration::from_secs(30), || {
        let repos = repos.clone();
        async move {
            let r = repos.get("repo").await.ok()?;
            r.metadata.finalizers.filter(|f| !f.is_empty()).map(|_| ())
        }
    })
    .await;
}

/// Issue 24, wipeOut on MinIO as a user would expect it: a Repository whose prefix restic
/// normalises (`./app` is `app`) or that object stores encode (`team~1/app`) is wiped where
/// restic wrote it, and a storage Secret without keys is a clear `WipeOutFailed` — the wipe
/// never falls back to the operator's own identity — with every object left in place.
#[tokio::test(flavor = "multi_thread")]
async fn wipe_out_deletes_exactly_the_repository_the_user_named() {
    let env = env().await;
    let client = env.cp.client();
    let certs = tempfile::tempdir().expect("certs");
    let ca = private_ca(certs.path(), &[stash_testenv::NODE_IP]);
    let data = tempfile::tempdir().expect("minio data");
    let bucket = "stash-prefixes";
    let port = minio(certs.path(), data.path(), bucket, &[]).await;
    let endpoint = format!("https://{}:{port}", stash_testenv::NODE_IP);
    let cacert = certs.path().join("ca.crt");
    let store = minio_store(&endpoint, bucket, "us-east-1", &cacert);
    let renv = [
        ("AWS_ACCESS_KEY_ID", MINIO_USER.to_string()),
        ("AWS_SECRET_ACCESS_KEY", MINIO_SECRET.to_string()),
    ];
    let files = tempfile::tempdir().expect("files");
    generate_files(files.path(), 24, 4, 4096);
    // restic on the host makes each repository at the URL the operator would give it.
    let make = |prefix: &str| {
        let url = format!("s3:{endpoint}/{bucket}/{prefix}");
        for args in [
            vec!["init".to_string()],
            vec!["backup".into(), files.path().display().to_string()],
        ] {
            let out = host_restic(&url, &renv, &cacert, None)
                .args(&args)
                .output()
                .expect("restic");
            assert!(
                out.status.success(),
                "restic {args:?} at {url}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    for (spec_prefix, restic_prefix) in [("./app", "app"), ("team~1/app", "team~1/app")] {
        make(restic_prefix);
        let keys = all_keys(&store).await;
        let under = |k: &&String| k.starts_with(&format!("{restic_prefix}/"));
        let written = keys.iter().filter(under).count();
        assert!(written >= 5, "{restic_prefix}: {keys:?}");
        let ns_guard = env.cp.namespace("wipe-prefix").await.expect("namespace");
        let ns = ns_guard.name.clone();
        let repos =
            minio_repository(&client, &ns, &endpoint, bucket, spec_prefix, &ca, PASSWORD).await;
        wait_finalizer(&repos).await;
        let ev = delete_and_wipe(&client, &ns).await;
        assert!(
            ev.note
                .contains(&format!("deleted {written} restic objects")),
            "prefix {spec_prefix:?}: {ev:?}"
        );
        let left: Vec<String> = all_keys(&store)
            .await
            .iter()
            .filter(under)
            .cloned()
            .collect();
        assert!(left.is_empty(), "prefix {spec_prefix:?} left {left:?}");
        stash_testenv::report(&format!(
            "wipeOut prefix {spec_prefix:?}: {written} restic objects deleted at {restic_prefix:?}"
        ));
    }

    // A Secret without keys: refused, nothing deleted, and the user can still let go.
    make("nokeys/app");
    let before = all_keys(&store).await;
    let ns_guard = env.cp.namespace("wipe-nokeys").await.expect("namespace");
    let ns = ns_guard.name.clone();
    secret_and_repository(
        &client,
        &ns,
        "minio-secret",
        json!({"RESTIC_PASSWORD": PASSWORD, "CA_CERT_DATA": ca}),
        json!({"backend": {"s3": {"endpoint": endpoint, "bucket": bucket, "prefix": "nokeys/app"}},
               "wipeOut": true}),
    )
    .await;
    let repos = kube::Api::<stash_crds::Repository>::namespaced(client.clone(), &ns);
    wait_finalizer(&repos).await;
    repos
        .delete("repo", &Default::default())
        .await
        .expect("delete");
    let ev = wait_event(
        &client,
        &ns,
        "repo",
        "WipeOutFailed",
        Duration::from_secs(90),
    )
    .await;
    assert!(
        ev.note
            .contains("no AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            && ev.note.contains("never the operator's own identity"),
        "{ev:?}"
    );
    assert_eq!(all_keys(&store).await, before, "nothing was deleted");
    abandon_wipe_out(&repos).await;
    assert_eq!(all_keys(&store).await, before, "abandoned: the data stays");
    stash_testenv::report(&format!(
        "wipeOut Secret without keys: WipeOutFailed ({}), {} objects kept",
        ev.note.split(':').next().unwrap_or_default(),
        before.len()
    ));
}

/// Azurite's account key in the Azure tests (base64, as Azure shows keys) and its bytes.
const AZURITE_KEY: &str = "c3Rhc2gtcnMgYXp1cml0ZSBrZXkgZm9yIHRoZSBlMmUgdGVzdA==";
const AZURITE_KEY_BYTES: &[u8] = b"stash-rs azurite key for the e2e test";

/// An account SAS token (service version 2019-12-12: blob service, every resource type,
/// read/write/delete/list/add/create, HTTPS only, valid until 2035), signed with the account
/// key as Azure documents it: HMAC-SHA256 over the newline-joined fields, base64.
fn account_sas(account: &str, key: &[u8]) -> String {
    let (sp, ss, srt, se, spr, sv) = (
        "rwdlac",
        "b",
        "sco",
        "2035-01-01T00:00:00Z",
        "https",
        "2019-12-12",
    );
    let to_sign = format!("{account}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n{spr}\n{sv}\n");
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        to_sign.as_bytes(),
    );
    let sig: String = base64(mac.as_ref())
        .chars()
        .map(|c| match c {
            '+' => "%2B".to_string(),
            '/' => "%2F".to_string(),
            '=' => "%3D".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!("sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={se}&spr={spr}&sig={sig}")
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_test_key_is_its_bytes_in_base64() {
    assert_eq!(base64(AZURITE_KEY_BYTES), AZURITE_KEY);
}
