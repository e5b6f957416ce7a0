//! Conformance on a real kube-apiserver: our generated CRDs accept every upstream Stash
//! manifest of the kinds we implement, unchanged; broken manifests are rejected with a
//! message naming the field; `kubectl get` by short name shows the printer columns.
use stash_e2e as support;

use std::{
    collections::BTreeSet,
    io::Write,
    process::{Command, Stdio},
};

use kube::{
    Api,
    api::{DynamicObject, PostParams},
    discovery,
};
use stash_testenv::{ControlPlane, shared};
use support::{IN_SCOPE, gvk_of, upstream_examples, upstream_files};

async fn control_plane() -> &'static ControlPlane {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = shared()
        .await
        .unwrap_or_else(|e| panic!("the control plane must start: {e}"));
    // Installed through the CLI, exactly as a user would: `stash crds | kubectl apply --server-side -f -`.
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let yaml = Command::new(env!("CARGO_BIN_EXE_stash"))
                .arg("crds")
                .output()
                .expect("run stash crds");
            assert!(yaml.status.success(), "stash crds failed");
            let mut kubectl = cp
                .kubectl()
                .expect("kubectl")
                .args(["apply", "--server-side", "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn kubectl");
            kubectl
                .stdin
                .take()
                .expect("stdin")
                .write_all(&yaml.stdout)
                .expect("pipe CRDs");
            let out = kubectl.wait_with_output().expect("kubectl apply");
            assert!(
                out.status.success(),
                "stash crds | kubectl apply --server-side -f - failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            print!("{}", String::from_utf8_lossy(&out.stdout));
            // Then wait until every CRD is Established and discoverable.
            cp.install_crds(&stash_crds::crds())
                .await
                .expect("CRDs established");
        })
        .await;
    cp
}

fn documents(path: &std::path::Path) -> Vec<serde_json::Value> {
    let mut text = std::fs::read_to_string(path).expect("read example");
    // One upstream doc example (postgres-backup-appbinding.yaml) marks elided fields with
    // `...` lines, which YAML reads as "end of document": no client can send that file as
    // it is. Those marker lines, and nothing else, are dropped.
    if text.lines().any(|l| l.trim_end() == "...") {
        println!(
            "note: {} uses `...` elision markers; they are dropped",
            path.display()
        );
        text = text
            .lines()
            .filter(|l| l.trim_end() != "...")
            .collect::<Vec<_>>()
            .join("\n");
    }
    serde_saphyr::from_multiple::<serde_json::Value>(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Create `doc` on the server exactly as written (a plain create: the API server validates
/// it against our schema and prunes unknown fields, as it does for `kubectl create`). Several
/// upstream examples share a name, so an existing object of that name is replaced.
///
/// Server-side *apply* is not used here: the API server answers SSA of a manifest carrying
/// fields outside the schema (upstream's `tempDir.disableCache` typo) with a 500 instead of
/// pruning them; `stash crds | kubectl apply --server-side` is exercised for the CRDs.
async fn apply(
    client: &kube::Client,
    doc: &serde_json::Value,
    ns: Option<&str>,
) -> Result<(), String> {
    let gvk = gvk_of(doc);
    let (ar, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("discovery of {gvk:?}: {e}"))?;
    let mut obj: DynamicObject = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let name = obj.metadata.name.clone().ok_or("no metadata.name")?;
    let api: Api<DynamicObject> = match (caps.scope, ns) {
        (discovery::Scope::Namespaced, Some(ns)) => {
            obj.metadata.namespace = Some(ns.to_string());
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        (discovery::Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &ar),
        (discovery::Scope::Cluster, _) => {
            // Cluster-scoped examples (Functions, Tasks, templates) are created where nothing
            // of that name exists; one that would replace an existing object (the installed
            // operator's built-in `pvc-backup` Function, …) goes through the same admission as
            // a dry run under a name of its own. A 409 comes after admission: accepted.
            let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
            let exists = api
                .get_opt(&name)
                .await
                .map_err(|e| e.to_string())?
                .is_some();
            if exists {
                obj.metadata.name = Some(format!("{name}-conformance"));
            }
            let pp = PostParams {
                dry_run: exists,
                ..Default::default()
            };
            return match api.create(&pp, &obj).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(e.to_string()),
            };
        }
    };
    for _ in 0..50 {
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let _ = api.delete(&name, &Default::default()).await;
                // Wait for finalizers of an earlier object of the same name.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("{name} kept existing"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_upstream_manifest_of_our_kinds_is_accepted_unchanged() {
    let cp = control_plane().await;
    let client = cp.client();
    let in_scope: BTreeSet<(&str, &str)> = IN_SCOPE.iter().copied().collect();

    let files = upstream_files();

    // Applied into a namespace of this test's own (deleted at the end) instead of the examples'
    // `demo`, so their schedules stop with the test; nothing else of a manifest is changed.
    let own = cp.namespace("conformance").await.expect("namespace");
    let (mut total, mut accepted, mut failures) = (0, 0, Vec::new());
    let mut kinds_seen = BTreeSet::new();
    for file in &files {
        for doc in documents(file) {
            let gvk = gvk_of(&doc);
            if !in_scope.contains(&(gvk.group.as_str(), gvk.kind.as_str())) {
                continue;
            }
            total += 1;
            kinds_seen.insert(gvk.kind.clone());
            let ns = doc["metadata"]["namespace"]
                .as_str()
                .map(|_| own.name.as_str());
            match apply(&client, &doc, ns).await {
                Ok(()) => accepted += 1,
                Err(e) => failures.push(format!(
                    "{} ({} {}): {e}",
                    file.file_name().unwrap_or_default().to_string_lossy(),
                    gvk.kind,
                    doc["metadata"]["name"]
                )),
            }
        }
    }
    stash_testenv::report(&format!(
        "conformance: {accepted}/{total} manifests accepted ({} kinds: {kinds_seen:?})",
        kinds_seen.len()
    ));
    assert!(
        total >= 80,
        "expected the full upstream corpus, found only {total} manifests"
    );
    assert_eq!(kinds_seen.len(), IN_SCOPE.len(), "every kind is exercised");
    assert!(
        failures.is_empty(),
        "rejected upstream manifests:\n{}",
        failures.join("\n")
    );
    assert_eq!(accepted, total);
}

/// A manifest that is wrong in one place, and the field path the API server must name.
struct Broken {
    what: &'static str,
    doc: serde_json::Value,
    field: &'static str,
}

fn broken_manifests() -> Vec<Broken> {
    use serde_json::json;
    let bc = |spec: serde_json::Value| {
        json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
               "metadata": {"name": "broken"}, "spec": spec})
    };
    vec![
        Broken {
            what: "an unknown driver",
            doc: bc(
                json!({"driver": "Tape", "repository": {"name": "r"}, "schedule": "* * * * *"}),
            ),
            field: "spec.driver",
        },
        Broken {
            what: "paused as a string",
            doc: bc(json!({"paused": "yes", "repository": {"name": "r"}, "schedule": "* * * * *"})),
            field: "spec.paused",
        },
        Broken {
            what: "keepLast as a string",
            doc: bc(json!({"repository": {"name": "r"}, "schedule": "* * * * *",
                           "retentionPolicy": {"name": "p", "keepLast": "five"}})),
            field: "spec.retentionPolicy.keepLast",
        },
        Broken {
            what: "a task param without a value",
            doc: bc(json!({"repository": {"name": "r"}, "schedule": "* * * * *",
                           "task": {"name": "pvc-backup", "params": [{"name": "outputDir"}]}})),
            field: "spec.task.params[0].value",
        },
        Broken {
            what: "a RestoreSession with an unknown driver",
            doc: json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
                        "metadata": {"name": "broken"},
                        "spec": {"driver": "Tape", "repository": {"name": "r"}}}),
            field: "spec.driver",
        },
        Broken {
            what: "a Repository whose s3 bucket is a number",
            doc: json!({"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
                        "metadata": {"name": "broken"},
                        "spec": {"backend": {"storageSecretName": "s", "s3": {"endpoint": "e", "bucket": 5}}}}),
            field: "spec.backend.s3.bucket",
        },
        Broken {
            what: "a Task volume without a name",
            doc: json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "Task",
                        "metadata": {"name": "broken-task"},
                        "spec": {"steps": [{"name": "update-status"}], "volumes": [{"emptyDir": {}}]}}),
            field: "spec.volumes[0].name",
        },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_manifests_are_rejected_with_the_field_named() {
    let cp = control_plane().await;
    let ns = cp.namespace("broken").await.expect("namespace");
    let client = cp.client();
    let cases = broken_manifests();
    let mut wrong = Vec::new();
    for case in &cases {
        let gvk = gvk_of(&case.doc);
        let (ar, caps) = discovery::pinned_kind(&client, &gvk)
            .await
            .expect("discovery");
        let api: Api<DynamicObject> = match caps.scope {
            discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), &ns.name, &ar),
            discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        let obj: DynamicObject = serde_json::from_value(case.doc.clone()).expect("dynamic object");
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => wrong.push(format!("{}: accepted", case.what)),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(case.field) => {
                println!("rejected {}: {}", case.what, s.message);
            }
            Err(e) => wrong.push(format!(
                "{}: rejected without naming {}: {e}",
                case.what, case.field
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_get_by_short_name_shows_the_printer_columns() {
    let cp = control_plane().await;
    let ns = cp.namespace("columns").await.expect("namespace");
    let client = cp.client();
    let dir = upstream_examples();
    // One object of each namespaced kind in our namespace, plus the cluster-scoped ones.
    for file in [
        "workloads-deployment-backupconfiguration.yaml",
        "instant-backup-backupsession.yaml",
        "workloads-deployment-restoresession.yaml",
        "backends-s3.yaml",
        "concept-crds-appbinding.yaml",
        "concept-crds-function.yaml",
        "concept-crds-task.yaml",
        "concept-crds-backupconfiguration_template.yaml",
    ] {
        for doc in documents(&dir.join(file)) {
            apply(&client, &doc, Some(&ns.name))
                .await
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
    let expectations: &[(&str, bool, &[&str])] = &[
        (
            "bc",
            true,
            &["NAME", "TASK", "SCHEDULE", "PAUSED", "PHASE", "AGE"],
        ),
        ("bs", true, &["NAME", "BACKUPCONFIGURATION", "PHASE", "AGE"]),
        (
            "restore",
            true,
            &["NAME", "REPOSITORY-NAME", "PHASE", "AGE"],
        ),
        (
            "repo",
            true,
            &[
                "NAME",
                "INTEGRITY",
                "SIZE",
                "SNAPSHOT-COUNT",
                "LAST-SUCCESSFUL-BACKUP",
                "AGE",
            ],
        ),
        ("appbindings", true, &["NAME", "AGE"]),
        ("fn", false, &["NAME", "AGE"]),
        ("task", false, &["NAME", "AGE"]),
        ("btpl", false, &["NAME", "TASK", "SCHEDULE", "AGE"]),
    ];
    for (short, namespaced, columns) in expectations {
        let mut cmd = cp.kubectl().expect("kubectl");
        cmd.args(["get", short]);
        if *namespaced {
            cmd.args(["-n", &ns.name]);
        }
        let out = cmd.output().expect("run kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "kubectl get {short}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let header: Vec<&str> = stdout
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(&header, columns, "kubectl get {short}:\n{stdout}");
        assert!(
            stdout.lines().count() >= 2,
            "kubectl get {short} lists an object:\n{stdout}"
        );
        println!("$ kubectl get {short}\n{stdout}");
    }
}

/// Every `*.yaml` under `dir`, recursively, sorted.
fn yaml_files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Why a later manifest may be refused: the text the refusal carries and the reason's name in
/// docs/differences.md §46's table. Every refusal must be one of these.
const LATER_REASONS: &[(&str, &str)] = &[
    ("hooks are not run by stash-rs yet", "hooks (issue 28)"),
    (
        "an interim volume is the scratch space of a backup or restore Job",
        "interimVolumeTemplate on a workload target",
    ),
    ("is another namespace", "an object of another namespace"),
    (
        "does not lie under a mounted volume",
        "a path on no mounted volume",
    ),
    (
        "\"BackupBatch\" is not served by stash-rs",
        "a BackupBatch's session",
    ),
    (
        "unsupported target kind \"Namespace\"",
        "the kubedump addon's Namespace target",
    ),
    (
        "required for a AppBinding target",
        "an AppBinding target without a Task (an addon's)",
    ),
    (
        "Function \"postgres-backup-11.2\" not found",
        "a Task of an addon's Functions",
    ),
    ("TLS verification is never skipped", "s3.insecureTLS"),
];

/// Stash's later manifests (its v2025.10.17 documentation, `../shared/conformance/`): every
/// object of a kind stash-rs serves is applied unchanged (server-side, dry run, with
/// `fieldValidation=Strict`: a field the schema would prune fails it) and is admitted or
/// refused for a reason of [`LATER_REASONS`]; BackupBatch and RestoreBatch are not served.
/// Admitted objects keep the later fields stash-rs acts on through the API server (issue 27).
#[tokio::test(flavor = "multi_thread")]
async fn later_manifests_are_admitted_or_refused_for_a_listed_reason() {
    use kube::api::{Patch, PatchParams, ValidationDirective};
    use std::collections::BTreeMap;
    let cp = control_plane().await;
    let client = cp.client();
    let ns = cp.namespace("later-spelling").await.expect("namespace");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/stash-v2025.10.17/docs");
    assert!(
        dir.is_dir(),
        "the later corpus is missing at {}",
        dir.display()
    );
    // The fields read back from an admitted object (kept, not pruned).
    let watched = |kind: &str| -> &'static [&'static str] {
        match kind {
            "BackupConfiguration" => &[
                "/spec/target/paths",
                "/spec/target/exclude",
                "/spec/target/alias",
                "/spec/target/args",
                "/spec/retryConfig",
                "/spec/timeOut",
            ],
            "RestoreSession" => &[
                "/spec/target/rules",
                "/spec/target/alias",
                "/spec/target/args",
            ],
            "BackupSession" => &["/spec/invoker", "/spec/retryLeft"],
            "BackupBlueprint" => &["/spec/backend", "/spec/schedule", "/spec/retryConfig"],
            "Repository" => &["/spec/backend", "/spec/usagePolicy"],
            _ => &[],
        }
    };
    let mut admitted: BTreeMap<String, usize> = BTreeMap::new();
    let mut refused: BTreeMap<&str, usize> = BTreeMap::new();
    let mut not_served: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut total = 0;
    for file in yaml_files_under(&dir) {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for doc in serde_saphyr::from_multiple::<serde_json::Value>(&text).unwrap_or_default() {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            if !api_version.starts_with("stash.appscode.com/")
                && !api_version.starts_with("appcatalog.appscode.com/")
            {
                continue;
            }
            total += 1;
            if matches!(kind.as_str(), "BackupBatch" | "RestoreBatch") {
                *not_served.entry(kind).or_default() += 1;
                continue;
            }
            let name = format!(
                "{} {} {}",
                file.strip_prefix(&dir).unwrap_or(&file).display(),
                kind,
                doc["metadata"]["name"]
            );
            let gvk = gvk_of(&doc);
            let (ar, caps) = discovery::pinned_kind(&client, &gvk)
                .await
                .unwrap_or_else(|e| panic!("{name}: discovery: {e}"));
            // `status` is the system's: a manifest's sample status is not applied.
            let mut applied = doc.clone();
            if let Some(o) = applied.as_object_mut() {
                o.remove("status");
            }
            let mut obj: DynamicObject = serde_json::from_value(applied).expect("object");
            obj.metadata.resource_version = None;
            obj.metadata.creation_timestamp = None;
            let api = if caps.scope == discovery::Scope::Cluster {
                obj.metadata.namespace = None;
                Api::<DynamicObject>::all_with(client.clone(), &ar)
            } else {
                obj.metadata.namespace = Some(ns.name.clone());
                Api::<DynamicObject>::namespaced_with(client.clone(), &ns.name, &ar)
            };
            let pp = PatchParams::apply("later-conformance")
                .force()
                .dry_run()
                .validation(ValidationDirective::Strict);
            let object_name = obj.metadata.name.clone().unwrap_or_default();
            match api.patch(&object_name, &pp, &Patch::Apply(&obj)).await {
                Ok(stored) => {
                    let stored = serde_json::to_value(&stored).expect("json");
                    for p in watched(&kind) {
                        if doc.pointer(p) != stored.pointer(p) {
                            failures.push(format!(
                                "{name}: {p} was {:?}, the API server kept {:?}",
                                doc.pointer(p),
                                stored.pointer(p)
                            ));
                        }
                    }
                    *admitted.entry(kind).or_default() += 1;
                }
                Err(e) => {
                    let text = e.to_string();
                    match LATER_REASONS
                        .iter()
                        .find(|(needle, _)| text.contains(needle))
                    {
                        Some((_, reason)) => *refused.entry(reason).or_default() += 1,
                        None => {
                            failures.push(format!("{name}: refused for no listed reason: {text}"))
                        }
                    }
                }
            }
        }
    }
    let served = admitted.values().sum::<usize>() + refused.values().sum::<usize>();
    let unserved = not_served.values().sum::<usize>();
    stash_testenv::report(&format!(
        "later manifests: {}/{} admitted or refused for a listed reason (admitted {admitted:?}; refused {refused:?}); {unserved} of kinds not served {not_served:?}",
        served,
        total - unserved
    ));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The corpus as committed: 258 objects of our groups, 253 of kinds served.
    assert_eq!(
        total, 258,
        "objects of stash.appscode.com and appcatalog.appscode.com"
    );
    assert_eq!(
        admitted.values().sum::<usize>(),
        232,
        "admitted: {admitted:?}"
    );
    assert_eq!(
        refused,
        BTreeMap::from([
            ("a BackupBatch's session", 1),
            ("a Task of an addon's Functions", 1),
            ("an AppBinding target without a Task (an addon's)", 3),
            ("an object of another namespace", 6),
            ("hooks (issue 28)", 9),
            ("the kubedump addon's Namespace target", 1),
        ])
    );
    assert_eq!(
        not_served,
        BTreeMap::from([
            ("BackupBatch".to_string(), 3),
            ("RestoreBatch".to_string(), 2)
        ])
    );
}
