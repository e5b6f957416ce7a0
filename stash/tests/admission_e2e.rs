//! The admission webhooks of the operator installed from the committed manifest (the same
//! cluster the demo runs on), driven through the real `kubectl`.
//!
//! - every manifest of `admission-corpus/invalid/` is rejected, by the validating webhook or the
//!   CRD schema, with the message its first line (`# expect: <field path>: ...`) names, so the
//!   refusal names the field (docs/admission-rules.md lists the rules);
//! - legal but doubtful objects are admitted with warnings that kubectl prints;
//! - every upstream example of our kinds is still admitted;
//! - a Deployment created after its BackupConfiguration has the `stash` sidecar from creation,
//!   and a `kubectl replace` without it keeps it;
//! - BackupSession and RestoreSession specs are immutable;
//! - a restart of the operator reuses the stored certificate.
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::{
    Api,
    api::{DynamicObject, PostParams},
    discovery,
};
use stash_admission as admission;

use stash_e2e as support;
use stash_testenv::ControlPlane;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../admission/tests/admission-corpus/invalid")
}

/// `kubectl replace -f -` of `doc` in `ns`, retried (at most 10 times) on a Conflict: kubectl
/// reads the live resourceVersion and PUTs, and the operator's controllers or the Deployment
/// controller's status writes may change the object in between.
async fn replace_retrying_conflicts(
    cp: &ControlPlane,
    ns: &str,
    doc: &str,
) -> (bool, String, String) {
    let mut replaced = (false, String::new(), String::new());
    for _ in 0..10 {
        replaced = kubectl(cp, &["replace", "-n", ns, "-f", "-"], Some(doc));
        if replaced.0 || !replaced.2.contains("Conflict") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    replaced
}

/// `kubectl <args>` with `stdin`; (success, stdout, stderr).
fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = cp.kubectl().expect("kubectl");
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn yaml_docs(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("read");
    serde_saphyr::from_multiple::<serde_json::Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_webhooks_of_the_installed_operator() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = stash_testenv::shared()
        .await
        .unwrap_or_else(|e| panic!("the cluster must be running: {e}"));
    admission::xray(&cp.client(), Duration::from_secs(60))
        .await
        .expect("the installed validating webhook is active");
    corpus_is_rejected(cp).await;
    doubtful_objects_are_admitted_with_warnings(cp).await;
    upstream_examples_are_admitted(cp).await;
    sidecar_is_injected_at_creation(cp).await;
    sessions_are_immutable(cp).await;
    a_restart_reuses_the_stored_certificate(cp).await;
}

/// Both operator replicas restarted (`kubectl rollout restart`): the serving certificate in
/// the Secret is reused, and requests are decided by the new pods.
async fn a_restart_reuses_the_stored_certificate(cp: &ControlPlane) {
    let secrets = Api::<Secret>::namespaced(cp.client(), "stash-system");
    let before = secrets
        .get(admission::CERT_SECRET)
        .await
        .expect("the webhook certificate Secret");
    let (ok, _, err) = kubectl(
        cp,
        &[
            "rollout",
            "restart",
            "deployment/stash-operator",
            "-n",
            "stash-system",
        ],
        None,
    );
    assert!(ok, "rollout restart: {err}");
    let (ok, _, err) = kubectl(
        cp,
        &[
            "rollout",
            "status",
            "deployment/stash-operator",
            "-n",
            "stash-system",
            "--timeout=180s",
        ],
        None,
    );
    assert!(ok, "rollout status: {err}");
    let after = secrets.get(admission::CERT_SECRET).await.expect("secret");
    assert_eq!(
        before.data, after.data,
        "a restart reuses the stored certificate"
    );
    let ns = cp
        .namespace("admission-restarted")
        .await
        .expect("namespace");
    let file = corpus_dir().join("repository-wipeout-local.yaml");
    let mut last = String::new();
    for _ in 0..60 {
        let (ok, _, err) = kubectl(
            cp,
            &[
                "apply",
                "--server-side",
                "-f",
                &file.to_string_lossy(),
                "-n",
                &ns.name,
            ],
            None,
        );
        if !ok && err.contains("wipe out operation is not supported for local backend") {
            println!(
                "admission: a restart reused the stored certificate; the new pods decide requests"
            );
            return;
        }
        last = err;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("after the restart, the invalid Repository is not refused: {last}");
}

async fn corpus_is_rejected(cp: &ControlPlane) {
    let ns = cp.namespace("admission-corpus").await.expect("namespace");
    // The Function the corpus' Tasks may reference.
    let (ok, _, err) = kubectl(
        cp,
        // Cluster-scoped, and the demo's tour applies the same one (the same image: the two
        // appliers co-own the field).
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(
            format!(
                "apiVersion: stash.appscode.com/v1beta1\nkind: Function\nmetadata:\n  name: admission-corpus-fn\nspec:\n  image: {}\n",
                support::IMAGE
            )
            .as_str(),
        ),
    );
    assert!(ok, "create Function admission-corpus-fn: {err}");

    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    let mut kinds = BTreeMap::<String, usize>::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let expect = support::corpus_expectation(&text)
            .unwrap_or_else(|| panic!("{} must start with `# expect: <message>`", file.display()));
        let field = expect.split_once(": ").map_or("", |(f, _)| f).to_string();
        assert!(
            field.starts_with("spec.") || field.starts_with("metadata."),
            "{}: the expected message must start with the field path",
            file.display()
        );
        let kind = yaml_docs(file)[0]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *kinds.entry(kind).or_default() += 1;
        let path = file.to_string_lossy();
        let (ok, stdout, stderr) = kubectl(
            cp,
            &["apply", "--server-side", "-f", &path, "-n", &ns.name],
            None,
        );
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        match support::judge_refusal(&expect, ok, &stdout, &stderr) {
            Ok(()) => println!("rejected {name}: {}", stderr.trim()),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    let total = files.len();
    stash_testenv::report(&format!(
        "admission: {}/{total} invalid manifests refused with the field named ({kinds:?})",
        total - failures.len()
    ));
    assert!(total >= 120, "the corpus has only {total} manifests");
    assert!(
        failures.is_empty(),
        "{} of {total} corpus manifests wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Legal but doubtful: admitted, and kubectl prints a warning naming the field.
async fn doubtful_objects_are_admitted_with_warnings(cp: &ControlPlane) {
    let ns = cp.namespace("admission-warnings").await.expect("namespace");
    let bc = |name: &str, schedule: &str, retention: &str| {
        format!(
            "apiVersion: stash.appscode.com/v1beta1\nkind: BackupConfiguration\nmetadata:\n  name: {name}\nspec:\n  repository:\n    name: not-yet-repo\n  schedule: '{schedule}'\n  target:\n    ref:\n      apiVersion: apps/v1\n      kind: Deployment\n      name: not-yet-deployment\n    volumeMounts:\n    - name: data\n      mountPath: /source/data\n    directories:\n    - /source/data\n  retentionPolicy:\n{retention}"
        )
    };
    let apply = |doc: String| {
        let (ok, _, stderr) = kubectl(
            cp,
            &["apply", "--server-side", "-f", "-", "-n", &ns.name],
            Some(&doc),
        );
        assert!(ok, "a doubtful but legal object is admitted: {stderr}");
        stderr
    };
    let first = apply(bc(
        "every-30s",
        "@every 30s",
        "    name: nothing\n    dryRun: true\n",
    ));
    for want in [
        "Warning: spec.repository.name: Repository \"not-yet-repo\" does not exist yet",
        "Warning: spec.target.ref: Deployment \"not-yet-deployment\" does not exist yet",
        "Warning: spec.schedule: \"@every 30s\" starts a backup more often than every minute",
        "Warning: spec.retentionPolicy: sets no keep rule",
    ] {
        assert!(first.contains(want), "missing {want:?} in:\n{first}");
    }
    let second = apply(bc(
        "every-5m",
        "*/5 * * * *",
        "    name: keep-last-5\n    keepLast: 5\n    prune: true\n",
    ));
    let shared = "Warning: spec.repository.name: Repository \"not-yet-repo\" is also used by BackupConfiguration every-30s";
    assert!(second.contains(shared), "missing {shared:?} in:\n{second}");
    assert!(
        !second.contains("more often than every minute") && !second.contains("sets no keep rule"),
        "no schedule or retention warning for a sound object:\n{second}"
    );
    stash_testenv::report(
        "admission: missing Repository and target, sub-minute schedule, empty retention and shared Repository are admitted with warnings",
    );
}

async fn upstream_examples_are_admitted(cp: &ControlPlane) {
    let ns = cp.namespace("admission-examples").await.expect("namespace");
    let client = cp.client();
    let mut docs = Vec::new();
    for f in &support::upstream_files() {
        for d in yaml_docs(f) {
            let gvk = support::gvk_of(&d);
            // postgres-backup-appbinding.yaml has a stray `...` (end of document) inside its
            // metadata, which leaves the AppBinding without metadata: not a manifest.
            if d["metadata"].is_null() {
                println!(
                    "admission: skipping a document of {} without metadata",
                    f.display()
                );
                continue;
            }
            if support::IN_SCOPE.contains(&(gvk.group.as_str(), gvk.kind.as_str())) {
                docs.push((
                    f.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .to_string(),
                    d,
                ));
            }
        }
    }
    // Functions before Tasks (Task validation looks them up), then everything else.
    let rank = |d: &serde_json::Value| match d["kind"].as_str() {
        Some("Function") => 0,
        Some("Task") => 1,
        _ => 2,
    };
    docs.sort_by_key(|(_, d)| rank(d));
    let (mut admitted, mut failures) = (0, Vec::new());
    for (file, doc) in &docs {
        let gvk = support::gvk_of(doc);
        let (ar, caps) = discovery::pinned_kind(&client, &gvk)
            .await
            .expect("discovery");
        let mut obj: DynamicObject = serde_json::from_value(doc.clone()).expect("object");
        let api: Api<DynamicObject> = match caps.scope {
            discovery::Scope::Namespaced => {
                obj.metadata.namespace = Some(ns.name.clone());
                Api::namespaced_with(client.clone(), &ns.name, &ar)
            }
            discovery::Scope::Cluster => {
                // Cluster-scoped examples are created where nothing of that name exists; one
                // that would replace an existing object (the installed operator's built-in
                // Functions and Tasks) goes through the same admission as a dry run under a
                // name of its own.
                let name = obj.metadata.name.clone().expect("name");
                let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
                let exists = api.get_opt(&name).await.expect("get").is_some();
                if exists {
                    obj.metadata.name = Some(format!("{name}-admission"));
                }
                let pp = PostParams {
                    dry_run: exists,
                    ..Default::default()
                };
                match api.create(&pp, &obj).await {
                    Ok(_) => admitted += 1,
                    Err(kube::Error::Api(s)) if s.code == 409 => admitted += 1,
                    Err(e) => failures.push(format!("{file} ({} {name}): {e}", gvk.kind)),
                }
                continue;
            }
        };
        let name = obj.metadata.name.clone().expect("name");
        // Every example is a CREATE: several examples share a name (with different specs, and
        // session specs are immutable), so an earlier namesake is deleted first.
        let mut result = api.create(&PostParams::default(), &obj).await;
        if matches!(&result, Err(kube::Error::Api(s)) if s.code == 409) {
            api.delete(&name, &Default::default())
                .await
                .expect("delete namesake");
            for _ in 0..100 {
                if api.get_opt(&name).await.expect("get").is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            result = api.create(&PostParams::default(), &obj).await;
        }
        match result {
            Ok(_) => admitted += 1,
            Err(e) => failures.push(format!("{file} ({} {name}): {e}", gvk.kind)),
        }
    }
    stash_testenv::report(&format!(
        "admission: {admitted}/{} upstream examples of our kinds admitted",
        docs.len()
    ));
    assert!(
        docs.len() >= 80,
        "expected the full upstream corpus, found {}",
        docs.len()
    );
    assert!(
        failures.is_empty(),
        "rejected upstream examples:\n{}",
        failures.join("\n")
    );
    // The defaulting webhook labelled the manual BackupSessions.
    let sessions = kubectl(
        cp,
        &[
            "get",
            "backupsessions",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={range .items[*]}{.metadata.labels.stash\\.appscode\\.com/backup-configuration}={.spec.backupConfiguration.name} {end}",
        ],
        None,
    );
    assert!(sessions.0, "{}", sessions.2);
    for pair in sessions.1.split_whitespace() {
        let (label, spec) = pair.split_once('=').expect("pair");
        assert_eq!(label, spec, "BackupSession labelled from its spec");
    }
    println!("admission: BackupSessions labelled: {}", sessions.1.trim());
}

const REPO_AND_BC: &str = r#"apiVersion: stash.appscode.com/v1alpha1
kind: Repository
metadata:
  name: s3-repo
spec:
  backend:
    storageSecretName: s3-secret
    s3:
      endpoint: s3.amazonaws.com
      bucket: stash-demo
      prefix: /demo/deployment
---
apiVersion: stash.appscode.com/v1beta1
kind: BackupConfiguration
metadata:
  name: deployment-backup
spec:
  repository:
    name: s3-repo
  schedule: "*/5 * * * *"
  target:
    ref:
      apiVersion: apps/v1
      kind: Deployment
      name: stash-demo
    volumeMounts:
    - name: source-data
      mountPath: /source/data
    directories:
    - /source/data
  retentionPolicy:
    name: keep-last-5
    keepLast: 5
    prune: true
"#;

fn deployment(label: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: stash-demo
  labels:
    app: stash-demo
    revision: "{label}"
spec:
  replicas: 1
  selector:
    matchLabels:
      app: stash-demo
  template:
    metadata:
      labels:
        app: stash-demo
    spec:
      containers:
      - name: busybox
        image: busybox
        command: ["sleep", "3600"]
        volumeMounts:
        - name: source-data
          mountPath: /source/data
      volumes:
      - name: source-data
        emptyDir: {{}}
"#
    )
}

fn containers(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

async fn sidecar_is_injected_at_creation(cp: &ControlPlane) {
    let ns = cp.namespace("admission-inject").await.expect("namespace");
    let (ok, _, err) = kubectl(
        cp,
        &["create", "-n", &ns.name, "-f", "-"],
        Some(REPO_AND_BC),
    );
    assert!(ok, "create Repository and BackupConfiguration: {err}");
    let (ok, _, err) = kubectl(
        cp,
        &["create", "-n", &ns.name, "-f", "-"],
        Some(&deployment("1")),
    );
    assert!(ok, "create Deployment: {err}");
    let api = Api::<Deployment>::namespaced(cp.client(), &ns.name);
    let created = api.get("stash-demo").await.expect("deployment");
    assert!(
        containers(&created).contains(&"stash".to_string()),
        "sidecar at creation: {:?}",
        containers(&created)
    );
    assert_eq!(
        created.metadata.generation,
        Some(1),
        "injected by the webhook, not by a later update"
    );
    let annotations = created.metadata.annotations.clone().unwrap_or_default();
    assert!(
        annotations.contains_key(stash_crds::consts::LAST_APPLIED_BACKUP_CONFIGURATION_ANNOTATION),
        "{annotations:?}"
    );
    let sidecar = created
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.iter().find(|c| c.name == "stash"))
        .cloned()
        .expect("sidecar");
    assert!(
        sidecar
            .args
            .unwrap_or_default()
            .contains(&"--backup-configuration=deployment-backup".to_string())
    );
    println!(
        "admission: Deployment created with containers {:?}",
        containers(&created)
    );

    // An UPDATE that leaves the sidecar out keeps it.
    let (ok, _, err) = replace_retrying_conflicts(cp, &ns.name, &deployment("2")).await;
    assert!(ok, "replace Deployment: {err}");
    let updated = api.get("stash-demo").await.expect("deployment");
    assert_eq!(
        updated
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("revision"))
            .map(String::as_str),
        Some("2")
    );
    assert!(
        containers(&updated).contains(&"stash".to_string()),
        "sidecar kept on update: {:?}",
        containers(&updated)
    );
    assert_eq!(
        updated.spec.as_ref().map(|s| &s.template),
        created.spec.as_ref().map(|s| &s.template),
        "the pod template did not change, so no rollout"
    );
    println!(
        "admission: Deployment replaced without the sidecar keeps {:?}",
        containers(&updated)
    );

    // A RestoreSession targeting the Deployment: an UPDATE gets the `stash-init`
    // init-container from the webhook (the same decision as the controller path).
    let rs = "apiVersion: stash.appscode.com/v1beta1\nkind: RestoreSession\nmetadata:\n  name: deployment-restore\nspec:\n  repository:\n    name: s3-repo\n  target:\n    ref:\n      apiVersion: apps/v1\n      kind: Deployment\n      name: stash-demo\n    volumeMounts:\n    - name: source-data\n      mountPath: /source/data\n  rules:\n  - paths:\n    - /source/data\n";
    let (ok, _, err) = kubectl(cp, &["create", "-n", &ns.name, "-f", "-"], Some(rs));
    assert!(ok, "create RestoreSession: {err}");
    // The operator's RestoreSession controller may update the Deployment at the same moment
    // (the same decision by the controller path).
    let (ok, _, err) = replace_retrying_conflicts(cp, &ns.name, &deployment("3")).await;
    assert!(ok, "replace Deployment: {err}");
    let restored = api.get("stash-demo").await.expect("deployment");
    let inits: Vec<String> = restored
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.init_containers.as_ref())
        .map(|c| c.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    assert_eq!(
        inits,
        ["stash-init"],
        "init-container injected by the webhook"
    );
    assert!(
        containers(&restored).contains(&"stash".to_string()),
        "and the sidecar kept"
    );
    let annotations = restored.metadata.annotations.clone().unwrap_or_default();
    assert!(
        annotations.contains_key(stash_crds::consts::LAST_APPLIED_RESTORE_SESSION_ANNOTATION),
        "{annotations:?}"
    );
    println!("admission: Deployment updated with init-containers {inits:?}");
}

async fn sessions_are_immutable(cp: &ControlPlane) {
    let ns = cp
        .namespace("admission-immutable")
        .await
        .expect("namespace");
    let create = |doc: &str| kubectl(cp, &["create", "-n", &ns.name, "-f", "-"], Some(doc));
    let get = |what: &str, jsonpath: &str| {
        let mut args = vec!["get"];
        args.extend(what.split(' '));
        args.extend(["-n", &ns.name, "-o", jsonpath]);
        kubectl(cp, &args, None)
    };
    let apply = |doc: &str| {
        let args = [
            "apply",
            "--server-side",
            "--force-conflicts",
            "-n",
            &ns.name,
            "-f",
            "-",
        ];
        kubectl(cp, &args, Some(doc))
    };
    let bs = |name: &str| {
        format!(
            "apiVersion: stash.appscode.com/v1beta1\nkind: BackupSession\nmetadata:\n  name: manual\nspec:\n  backupConfiguration:\n    name: {name}\n"
        )
    };
    let (ok, _, err) = create(&bs("deployment-backup"));
    assert!(
        ok,
        "a manual BackupSession without the label is admitted (defaulted): {err}"
    );
    let (ok, out, _) = get("backupsession manual", "jsonpath={.metadata.labels}");
    assert!(
        ok && out.contains("deployment-backup"),
        "label defaulted: {out}"
    );
    let (ok, _, err) = apply(&bs("other"));
    assert!(
        !ok && err.contains("spec: BackupSession spec is immutable"),
        "{err}"
    );
    let (ok, _, err) = kubectl(
        cp,
        &[
            "label",
            "backupsession",
            "manual",
            "-n",
            &ns.name,
            "note=metadata-is-fine",
        ],
        None,
    );
    assert!(ok, "metadata updates pass: {err}");

    let rs = |path: &str| {
        format!(
            "apiVersion: stash.appscode.com/v1beta1\nkind: RestoreSession\nmetadata:\n  name: restore\nspec:\n  repository:\n    name: s3-repo\n  rules:\n  - paths: [\"{path}\"]\n"
        )
    };
    let (ok, _, err) = create(&rs("/source/data"));
    assert!(ok, "create RestoreSession: {err}");
    let (ok, out, _) = get("restoresession restore", "jsonpath={.spec.driver}");
    assert!(ok && out == "Restic", "driver defaulted to Restic: {out:?}");
    let (ok, _, err) = apply(&rs("/other"));
    assert!(
        !ok && err.contains("spec: RestoreSession spec is immutable"),
        "{err}"
    );
    println!("admission: BackupSession and RestoreSession specs are immutable");
}
