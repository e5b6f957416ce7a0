//! One test per rule: the message names the field; plus every upstream example passes.
use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;

fn obj<K: DeserializeOwned>(api_version: &str, kind: &str, spec: Value) -> K {
    serde_json::from_value(json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": "x", "namespace": "demo"},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("{kind}: {e}"))
}

fn repo(spec: Value) -> Repository {
    obj("stash.appscode.com/v1alpha1", "Repository", spec)
}
fn bc(spec: Value) -> BackupConfiguration {
    obj("stash.appscode.com/v1beta1", "BackupConfiguration", spec)
}
fn rs(spec: Value) -> RestoreSession {
    obj("stash.appscode.com/v1beta1", "RestoreSession", spec)
}
fn tpl(spec: Value) -> BackupConfigurationTemplate {
    obj(
        "stash.appscode.com/v1beta1",
        "BackupConfigurationTemplate",
        spec,
    )
}

/// The error text of a failed validation, which must contain `want`.
fn rejected(r: Result<(), FieldErrors>, want: &str) {
    match r {
        Ok(()) => panic!("accepted, expected {want:?}"),
        Err(e) => assert!(
            e.to_string().contains(want),
            "{e} does not contain {want:?}"
        ),
    }
}

fn s3() -> Value {
    json!({"storageSecretName": "s", "s3": {"endpoint": "s3.amazonaws.com", "bucket": "stash-b"}})
}

#[test]
fn repository_rules() {
    assert_eq!(repo(json!({"backend": s3()})).validate_create(&()), Ok(()));
    rejected(
        repo(json!({"backend": {"storageSecretName": "s"}})).validate_create(&()),
        "spec.backend: exactly one of local, s3",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "s3": {"bucket": "stash-b"}, "gcs": {"bucket": "b"}}})).validate_create(&()),
        "spec.backend: exactly one of local, s3, gcs, azure, swift, b2, rest must be set, found s3, gcs",
    );
    rejected(
        repo(json!({"backend": {"s3": {"bucket": "stash-b"}}})).validate_create(&()),
        "spec.backend.storageSecretName: required",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "s3": {"endpoint": "e"}}}))
            .validate_create(&()),
        "spec.backend.s3.bucket: required",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "gcs": {"prefix": "p"}}}))
            .validate_create(&()),
        "spec.backend.gcs.bucket: required",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "gcs": {"bucket": "b", "maxConnections": -1}}})).validate_create(&()),
        "spec.backend.gcs.maxConnections: must be non-negative",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "azure": {}}})).validate_create(&()),
        "spec.backend.azure.container: required",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "swift": {}}})).validate_create(&()),
        "spec.backend.swift.container: required",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "b2": {}}})).validate_create(&()),
        "spec.backend.b2.bucket: required",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "rest": {}}})).validate_create(&()),
        "spec.backend.rest.url: required",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "rest": {"url": "rest-server:8000"}}}))
            .validate_create(&()),
        "spec.backend.rest.url: invalid URL \"rest-server:8000\"",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "rest": {"url": "ftp://r/x"}}}))
            .validate_create(&()),
        "scheme \"ftp\" is not http or https",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "rest": {"url": "http://r:port/x"}}}))
            .validate_create(&()),
        "port \"port\" is not a number",
    );
    assert_eq!(
        repo(json!({"backend": {"storageSecretName": "s", "rest": {"url": "http://u@rest.demo.svc:8000/stash"}}})).validate_create(&()),
        Ok(())
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "local": {"hostPath": {"path": "/d"}}}}))
            .validate_create(&()),
        "spec.backend.local.mountPath: required",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "local": {"mountPath": "rel", "hostPath": {"path": "/d"}}}})).validate_create(&()),
        "spec.backend.local.mountPath: must be an absolute path",
    );
    rejected(
        repo(json!({"backend": {"storageSecretName": "s", "local": {"mountPath": "/safe"}}}))
            .validate_create(&()),
        "spec.backend.local: a volume source",
    );
    let local = json!({"storageSecretName": "s", "local": {"mountPath": "/safe", "hostPath": {"path": "/d"}}});
    assert_eq!(repo(json!({"backend": local})).validate_create(&()), Ok(()));
    rejected(
        repo(json!({"backend": local, "wipeOut": true})).validate_create(&()),
        "spec.wipeOut: wipe out operation is not supported for local backend",
    );
    rejected(
        repo(
            json!({"backend": {"storageSecretName": "s", "b2": {"bucket": "stash-b"}}, "wipeOut": true}),
        )
        .validate_create(&()),
        "spec.wipeOut: wipe out operation is not supported for B2 backend",
    );
    assert_eq!(
        repo(json!({"backend": s3(), "wipeOut": true})).validate_create(&()),
        Ok(())
    );
}

#[test]
fn repository_updates_are_checked_only_when_the_spec_changes() {
    let broken = repo(
        json!({"backend": {"storageSecretName": "s", "local": {"mountPath": "/safe", "hostPath": {"path": "/d"}}}, "wipeOut": true}),
    );
    let mut finalized = broken.clone();
    finalized.metadata.finalizers = Some(vec![]);
    assert_eq!(
        finalized.validate_update(&broken, &()),
        Ok(()),
        "metadata-only updates of old objects pass"
    );
    let good = repo(json!({"backend": s3()}));
    rejected(broken.validate_update(&good, &()), "spec.wipeOut");
}

fn workload_bc() -> Value {
    json!({"repository": {"name": "r"}, "schedule": "*/5 * * * *",
           "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                      "directories": ["/source/data"],
                      "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]},
           "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true}})
}

fn with(mut base: Value, pointer: &str, v: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let target = base
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{parent}"));
    match v {
        Value::Null => {
            target.as_object_mut().expect("object").remove(key);
        }
        v => target[key] = v,
    }
    base
}

#[test]
fn backup_configuration_schedule() {
    assert_eq!(bc(workload_bc()).validate_create(&()), Ok(()));
    assert_eq!(
        bc(with(workload_bc(), "/schedule", json!("@every 1m"))).validate_create(&()),
        Ok(())
    );
    rejected(
        bc(with(workload_bc(), "/schedule", json!("every minute"))).validate_create(&()),
        "spec.schedule: invalid cron expression \"every minute\"",
    );
    rejected(
        bc(with(workload_bc(), "/schedule", json!("61 * * * *"))).validate_create(&()),
        "minute \"61\" is out of range",
    );
    rejected(
        bc(with(workload_bc(), "/schedule", Value::Null)).validate_create(&()),
        "spec.schedule: required",
    );
    rejected(
        bc(with(workload_bc(), "/repository", Value::Null)).validate_create(&()),
        "spec.repository.name: required",
    );
}

#[test]
fn backup_configuration_targets() {
    let t = |p: &str, v: Value| bc(with(workload_bc(), p, v)).validate_create(&());
    rejected(
        t("/target/ref/kind", json!("Pod")),
        "spec.target.ref.kind: unsupported target kind \"Pod\"",
    );
    rejected(
        t("/target/ref/kind", Value::Null),
        "spec.target.ref.kind: required",
    );
    rejected(
        t("/target/ref/name", Value::Null),
        "spec.target.ref.name: required",
    );
    rejected(
        t("/target/ref/apiVersion", json!("extensions/v1beta1")),
        "spec.target.ref.apiVersion: a Deployment target must use apiVersion apps/v1",
    );
    rejected(
        t("/target/ref/apiVersion", Value::Null),
        "spec.target.ref.apiVersion: required",
    );
    rejected(
        t("/target/directories", Value::Null),
        "spec.target.directories: at least one directory",
    );
    rejected(
        t("/target/directories", json!(["data"])),
        "spec.target.directories[0]: must be an absolute path",
    );
    rejected(
        t("/target/volumeMounts", Value::Null),
        "spec.target.volumeMounts: at least one volume",
    );
    let rc = with(
        with(
            workload_bc(),
            "/target/ref/kind",
            json!("ReplicationController"),
        ),
        "/target/ref/apiVersion",
        json!("v1"),
    );
    assert_eq!(bc(rc).validate_create(&()), Ok(()));
    let pvc = json!({"repository": {"name": "r"}, "schedule": "@daily",
                     "target": {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "p"}}});
    rejected(
        bc(pvc.clone()).validate_create(&()),
        "spec.task.name: required for a PersistentVolumeClaim target",
    );
    assert_eq!(
        bc(with(pvc, "/task", json!({"name": "pvc-backup"}))).validate_create(&()),
        Ok(())
    );
    let app = json!({"repository": {"name": "r"}, "schedule": "@daily",
                     "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "name": "db"}}});
    rejected(
        bc(app).validate_create(&()),
        "spec.task.name: required for a AppBinding target",
    );
    rejected(
        bc(json!({"repository": {"name": "r"}, "schedule": "@daily"})).validate_create(&()),
        "spec.task.name: required when spec.target is not set",
    );
    // VolumeSnapshotter: accepted with a warning (out of scope, fails at run time with a reason).
    let vs = bc(
        json!({"driver": "VolumeSnapshotter", "repository": {"name": "r"}, "schedule": "@daily",
                       "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}}}),
    );
    assert_eq!(vs.validate_create(&()), Ok(()));
    assert!(vs.warnings()[0].contains("VolumeSnapshotter is not supported"));
}

#[test]
fn backup_configuration_retention() {
    let t = |p: &str, v: Value| bc(with(workload_bc(), p, v)).validate_create(&());
    rejected(
        t("/retentionPolicy/keepLast", json!(-1)),
        "spec.retentionPolicy.keepLast: must be non-negative, got -1",
    );
    rejected(
        t("/retentionPolicy/keepDaily", json!(-3)),
        "spec.retentionPolicy.keepDaily: must be non-negative",
    );
    rejected(
        t("/retentionPolicy/keepLast", Value::Null),
        "spec.retentionPolicy: prune without any keep rule",
    );
    rejected(
        t("/retentionPolicy/keepLast", json!(0)),
        "would delete every snapshot",
    );
    assert_eq!(
        t(
            "/retentionPolicy",
            json!({"keepTags": ["keep"], "prune": true, "dryRun": true})
        ),
        Ok(())
    );
    assert_eq!(
        t("/retentionPolicy", json!({"keepLast": 1, "dryRun": true})),
        Ok(())
    );
    rejected(
        t("/retentionPolicy", json!({"keepTags": [""], "keepLast": 1})),
        "spec.retentionPolicy.keepTags[0]: must not be empty",
    );
}

#[test]
fn backup_configuration_update_checks_a_changed_spec() {
    let old = bc(workload_bc());
    let mut same = old.clone();
    same.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
    assert_eq!(same.validate_update(&old, &()), Ok(()));
    rejected(
        bc(with(workload_bc(), "/schedule", json!("bad"))).validate_update(&old, &()),
        "spec.schedule",
    );
}

#[test]
fn backup_session_label_and_immutability() {
    let bs = |labels: Value, name: Value| -> BackupSession {
        serde_json::from_value(json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
            "metadata": {"name": "s", "namespace": "demo", "labels": labels},
            "spec": {"backupConfiguration": {"name": name}}
        }))
        .expect("bs")
    };
    let good = bs(
        json!({"stash.appscode.com/backup-configuration": "bc"}),
        json!("bc"),
    );
    assert_eq!(good.validate_create(&()), Ok(()));
    rejected(
        bs(json!({}), json!("bc")).validate_create(&()),
        "metadata.labels[stash.appscode.com/backup-configuration]: required, must be \"bc\"",
    );
    rejected(
        bs(
            json!({"stash.appscode.com/backup-configuration": "other"}),
            json!("bc"),
        )
        .validate_create(&()),
        "metadata.labels[stash.appscode.com/backup-configuration]: must equal spec.backupConfiguration.name \"bc\", got \"other\"",
    );
    rejected(
        bs(json!({}), json!("")).validate_create(&()),
        "spec.backupConfiguration.name: required",
    );
    let changed = bs(
        json!({"stash.appscode.com/backup-configuration": "bc"}),
        json!("bc2"),
    );
    rejected(
        changed.validate_update(&good, &()),
        "spec: BackupSession spec is immutable",
    );
    let mut relabelled = good.clone();
    relabelled.metadata.labels = None;
    assert_eq!(relabelled.validate_update(&good, &()), Ok(()));
}

#[test]
fn restore_session_rules() {
    let base = json!({"repository": {"name": "r"},
                      "target": {"ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "s"}}});
    let with_rules = |rules: Value| rs(with(base.clone(), "/rules", rules));
    assert_eq!(with_rules(json!([{"targetHosts": ["host-3"], "sourceHost": "host-1", "paths": ["/d"]}, {"paths": ["/d"]}])).validate_create(&()), Ok(()));
    rejected(
        with_rules(json!([{"paths": ["/a"]}, {"targetHosts": [], "paths": ["/b"]}]))
            .validate_create(&()),
        "spec.rules[1].targetHosts: at most one rule may leave targetHosts empty, spec.rules[0] already does",
    );
    rejected(
        with_rules(json!([{"targetHosts": ["host-0", "host-1"]}, {"targetHosts": ["host-1"]}]))
            .validate_create(&()),
        "spec.rules[1].targetHosts: host \"host-1\" is already targeted by spec.rules[0]",
    );
    rejected(
        with_rules(json!([{"targetHosts": ["h", "h"]}])).validate_create(&()),
        "host \"h\" is listed twice",
    );
    rejected(
        with_rules(json!([{"snapshots": ["latest"], "paths": ["/d"]}])).validate_create(&()),
        "spec.rules[0]: snapshots and paths are mutually exclusive",
    );
    rejected(
        rs(json!({"rules": []})).validate_create(&()),
        "spec.repository.name: required",
    );
    rejected(
        rs(with(
            base.clone(),
            "/target/ref/apiVersion",
            json!("apps/v1beta1"),
        ))
        .validate_create(&()),
        "spec.target.ref.apiVersion: a StatefulSet target must use apiVersion apps/v1",
    );
    rejected(
        rs(with(base.clone(), "/target/replicas", json!(-1))).validate_create(&()),
        "spec.target.replicas: must be non-negative",
    );
    let old = with_rules(json!([{"paths": ["/d"]}]));
    rejected(
        with_rules(json!([{"paths": ["/e"]}])).validate_update(&old, &()),
        "spec: RestoreSession spec is immutable",
    );
    let mut status_only = old.clone();
    status_only.metadata.finalizers = Some(vec!["x".into()]);
    assert_eq!(status_only.validate_update(&old, &()), Ok(()));
    let vs = rs(json!({"driver": "VolumeSnapshotter", "repository": {"name": "r"}}));
    assert_eq!(vs.validate_create(&()), Ok(()));
    assert!(!vs.warnings().is_empty());
}

#[test]
fn function_and_task() {
    let f: Function = obj(
        "stash.appscode.com/v1beta1",
        "Function",
        json!({"args": ["x"]}),
    );
    rejected(f.validate_create(&()), "spec.image: required");
    let f: Function = obj(
        "stash.appscode.com/v1beta1",
        "Function",
        json!({"image": "stash:1"}),
    );
    assert_eq!(f.validate_create(&()), Ok(()));

    let functions: BTreeSet<String> =
        ["pvc-backup".to_string(), "update-status".to_string()].into();
    let task = |spec: Value| -> Task { obj("stash.appscode.com/v1beta1", "Task", spec) };
    let good = task(
        json!({"steps": [{"name": "pvc-backup"}, {"name": "update-status"}],
                           "volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}]}),
    );
    assert_eq!(good.validate_create(&functions), Ok(()));
    rejected(
        task(json!({"steps": [{"name": "pvc-backup"}, {"name": "nope"}]}))
            .validate_create(&functions),
        "spec.steps[1].name: Function \"nope\" not found",
    );
    rejected(
        task(json!({"steps": []})).validate_create(&functions),
        "spec.steps: at least one step is required",
    );
    rejected(
        task(json!({"steps": [{"name": "pvc-backup"}], "volumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]}))
            .validate_create(&functions),
        "spec.volumes[1].name: duplicate volume name \"a\" (also spec.volumes[0])",
    );
    let none = |_: &str| false;
    rejected(
        good.validate_create(&none),
        "spec.steps[0].name: Function \"pvc-backup\" not found",
    );
    assert_eq!(
        good.validate_update(&good, &none),
        Ok(()),
        "an unchanged Task passes even if a Function is gone"
    );
}

#[test]
fn backup_configuration_template() {
    let base = json!({"backend": s3(), "schedule": "@every 1h", "task": {"name": "pvc-backup"},
                      "retentionPolicy": {"keepLast": 5, "prune": true}});
    assert_eq!(tpl(base.clone()).validate_create(&()), Ok(()));
    rejected(
        tpl(with(base.clone(), "/schedule", json!("* *"))).validate_create(&()),
        "spec.schedule: invalid cron expression \"* *\"",
    );
    rejected(
        tpl(with(
            base.clone(),
            "/backend",
            json!({"storageSecretName": "s"}),
        ))
        .validate_create(&()),
        "spec.backend: exactly one",
    );
    rejected(
        tpl(with(base.clone(), "/backend", json!({"storageSecretName": "s", "local": {"mountPath": "/m", "hostPath": {"path": "/d"}}})).as_object().cloned().map(|mut m| {
            m.insert("wipeOut".into(), json!(true));
            Value::Object(m)
        }).expect("object")).validate_create(&()),
        "spec.wipeOut: wipe out operation is not supported for local backend",
    );
    rejected(
        tpl(with(base, "/retentionPolicy/keepLast", Value::Null)).validate_create(&()),
        "would delete every snapshot",
    );
}

#[test]
fn errors_list_every_field() {
    let errs = bc(
        json!({"target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}}}),
    )
    .validate_create(&())
    .expect_err("broken");
    let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.schedule",
            "spec.repository.name",
            "spec.target.directories",
            "spec.target.volumeMounts"
        ]
    );
    assert_eq!(errs.to_string().matches("; ").count(), 3);
}

/// Every upstream example of our kinds passes its validator (Task steps against the Functions
/// the examples define).
#[test]
fn every_upstream_example_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/stash-v0.8.3/examples");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        for doc in serde_saphyr::from_multiple::<Value>(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        {
            if !doc.is_null() {
                docs.push((
                    path.file_name()
                        .expect("name")
                        .to_string_lossy()
                        .to_string(),
                    doc,
                ));
            }
        }
    }
    let functions: BTreeSet<String> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "Function")
        .filter_map(|(_, d)| d["metadata"]["name"].as_str().map(String::from))
        .collect();
    let (mut checked, mut failures) = (0, Vec::new());
    for (file, doc) in &docs {
        if !doc["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("stash.appscode.com/"))
        {
            continue;
        }
        // BackupSessions get their label from the defaulting webhook first.
        let doc = if doc["kind"] == "BackupSession" {
            super::super::mutate::default_backup_session(doc)
                .object
                .unwrap_or_else(|| doc.clone())
        } else {
            doc.clone()
        };
        fn check<K: Validate + DeserializeOwned>(
            doc: &Value,
            ctx: &K::Context,
        ) -> Result<(), String> {
            let k: K = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
            k.validate_create(ctx).map_err(|e| e.to_string())
        }
        let r = match doc["kind"].as_str().unwrap_or_default() {
            "Repository" => check::<Repository>(&doc, &()),
            "BackupConfiguration" => check::<BackupConfiguration>(&doc, &()),
            "BackupSession" => check::<BackupSession>(&doc, &()),
            "RestoreSession" => check::<RestoreSession>(&doc, &()),
            "Function" => check::<Function>(&doc, &()),
            "Task" => check::<Task>(&doc, &functions),
            "BackupConfigurationTemplate" => check::<BackupConfigurationTemplate>(&doc, &()),
            "BackupBlueprint" => check::<stash_crds::BackupBlueprint>(&doc, &()),
            _ => continue,
        };
        checked += 1;
        if let Err(e) = r {
            failures.push(format!(
                "{file} {} {}: {e}",
                doc["kind"], doc["metadata"]["name"]
            ));
        }
    }
    assert!(checked >= 80, "only {checked} examples");
    assert!(
        failures.is_empty(),
        "{} of {checked} rejected:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `docs/admission-rules.md` has one row per rule, each naming a corpus manifest whose expected
/// refusal starts with that row's field; and every corpus manifest's field has a row.
#[test]
fn admission_rules_table_matches_the_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("../docs/admission-rules.md")).expect("docs");
    let corpus = root.join("tests/admission-corpus/invalid");
    let normalize = |field: &str| {
        let mut out = String::new();
        let mut in_index = false;
        for c in field.chars() {
            match c {
                '[' if !in_index => {
                    in_index = true;
                    out.push('[');
                }
                ']' if in_index => {
                    in_index = false;
                    out.push(']');
                }
                c if in_index && c.is_ascii_digit() => {
                    if !out.ends_with('i') {
                        out.push('i');
                    }
                }
                c => {
                    if in_index && out.ends_with("[i") {
                        // A non-numeric key such as labels[stash.appscode.com/...].
                        out.pop();
                    }
                    out.push(c);
                }
            }
        }
        out
    };
    let expect_of = |file: &str| {
        let text = std::fs::read_to_string(corpus.join(file))
            .unwrap_or_else(|e| panic!("corpus manifest {file}: {e}"));
        let first = text.lines().next().unwrap_or_default();
        let expect = first.strip_prefix("# expect: ").unwrap_or_default();
        let (field, _) = expect
            .split_once(": ")
            .unwrap_or_else(|| panic!("{file}: {first}"));
        normalize(field)
    };
    let mut rows = 0;
    let mut covered = BTreeSet::new();
    for line in doc
        .lines()
        .filter(|l| l.starts_with("| ") && l.ends_with(".yaml` |"))
    {
        let cells: Vec<&str> = line.split(" | ").collect();
        let field = cells[2].trim_matches('`');
        let file = cells
            .last()
            .expect("file cell")
            .trim_end_matches(" |")
            .trim_matches('`');
        assert_eq!(expect_of(file), field, "row {line}");
        covered.insert(file.to_string());
        covered.insert(format!("{}/{field}", cells[1]));
        rows += 1;
    }
    assert!(rows >= 100, "only {rows} rules in docs/admission-rules.md");
    assert!(
        doc.contains(&format!("{rows} rules.")),
        "the stated count is {rows}"
    );
    for entry in std::fs::read_dir(&corpus).expect("corpus") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(corpus.join(&name)).expect("read");
        let kind = text
            .lines()
            .find_map(|l| l.strip_prefix("kind: "))
            .unwrap_or_default();
        let key = format!("{kind}/{}", expect_of(&name));
        assert!(
            covered.contains(&name) || covered.contains(&key),
            "{name} ({key}) has no row in docs/admission-rules.md"
        );
    }
}

#[test]
fn doubtful_objects_get_warnings_naming_the_field() {
    let b = bc(with(workload_bc(), "/schedule", json!("@every 30s")));
    assert!(b.validate_create(&()).is_ok());
    let w = b.warnings();
    assert!(w.iter().any(|w| w.starts_with("spec.schedule: ")), "{w:?}");
    let every_minute = bc(with(workload_bc(), "/schedule", json!("@every 1m")));
    assert!(every_minute.warnings().is_empty());
    let keeps_nothing = bc(with(
        workload_bc(),
        "/retentionPolicy",
        json!({"name": "none"}),
    ));
    assert!(
        keeps_nothing
            .warnings()
            .iter()
            .any(|w| w.starts_with("spec.retentionPolicy: sets no keep rule"))
    );
    let target = TargetRef {
        api_version: Some("apps/v1".into()),
        kind: Some("Deployment".into()),
        name: Some("app".into()),
        namespace: None,
    };
    let refs = References {
        repository_exists: Some(false),
        target_exists: Some(false),
        sharing_repository: vec!["other".into()],
    };
    let w = reference_warnings(Some("repo"), Some(&target), &refs);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w[0].starts_with("spec.repository.name: Repository \"repo\" does not exist"));
    assert!(w[1].starts_with("spec.target.ref: Deployment \"app\" does not exist"));
    assert!(w[2].contains("also used by BackupConfiguration other"));
    let known = References {
        repository_exists: Some(true),
        target_exists: None,
        sharing_repository: vec![],
    };
    assert!(reference_warnings(Some("repo"), Some(&target), &known).is_empty());
    assert_eq!(snapshot_of("latest", Some("gcs-repo")), Ok(()));
    assert_eq!(snapshot_of("gcs-repo-02b0ed42", Some("gcs-repo")), Ok(()));
    assert!(snapshot_of("s3-repo-02b0ed42", Some("gcs-repo")).is_err());
}

/// Issue 24's hostile inputs, from the admission corpus: the webhook refuses each with the
/// corpus' expected message (and nothing panics or grows on the way).
#[test]
fn hostile_corpus_manifests_are_refused_by_the_webhook() {
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/admission-corpus/invalid");
    let load = |file: &str| -> (String, Value) {
        let text = std::fs::read_to_string(root.join(file)).expect("corpus file");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .expect("expect line")
            .to_string();
        (expect, serde_saphyr::from_str(&text).expect("yaml"))
    };
    for file in [
        "restoresession-pvc-template-nested-too-deep.yaml",
        "restoresession-pvc-template-ordinal-overflow.yaml",
    ] {
        let (expect, v) = load(file);
        let r: RestoreSession = serde_json::from_value(v).expect("RestoreSession");
        rejected(r.validate_create(&()), &expect);
    }
    let (expect, v) = load("backupconfiguration-directory-dotdot-walks-out.yaml");
    let b: BackupConfiguration = serde_json::from_value(v).expect("BackupConfiguration");
    rejected(b.validate_create(&()), &expect);
    // The schema's bound holds in the webhook too (an API server without the schema's maximum).
    let (_, v) = load("restoresession-replicas-past-the-limit.yaml");
    let r: RestoreSession = serde_json::from_value(v).expect("RestoreSession");
    rejected(
        r.validate_create(&()),
        "spec.target.replicas: at most 5000 hosts restore in one session, got 2147483647",
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

    /// Issue 24: arbitrary RestoreSessions a namespace user could write (any replica count,
    /// templated claim names over the substitution operators, rules naming hosts) go through
    /// admission, the machine's host rule and every restore Job and PVC builder: no panic, and
    /// nothing built per requested replica beyond the machine's limit.
    #[test]
    fn arbitrary_restore_sessions_never_panic_or_grow(
        replicas in proptest::option::of(proptest::num::i32::ANY),
        claim in "(data|\\$\\{POD_ORDINAL\\}|\\$\\{POD_ORDINAL:[-0-9]{1,20}(:[-0-9]{1,20})?\\}|\\$\\{A:=|\\}|-|[a-z]){0,12}",
        hosts in proptest::collection::vec("host-[0-9]{1,3}", 0..4),
    ) {
        let max = stash_machines::restore_session::MAX_HOSTS as usize;
        let mut target = json!({"volumeMounts": [{"name": "d", "mountPath": "/d"}],
            "volumeClaimTemplates": [{"metadata": {"name": claim},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]});
        if let Some(r) = replicas {
            target["replicas"] = json!(r);
        }
        let r = rs(json!({"repository": {"name": "r"}, "task": {"name": "pvc-restore"},
                          "rules": [{"targetHosts": hosts, "paths": ["/d"]}], "target": target}));
        let admitted = r.validate_create(&()).is_ok();
        if admitted {
            proptest::prop_assert!(replicas.unwrap_or(1) <= 5000);
        }
        let ordinals = stash_operator::jobs::restore::ordinals(&r).unwrap_or_default();
        proptest::prop_assert!(ordinals.len() <= max);
        proptest::prop_assert!(stash_operator::jobs::restore::job_names(&r).len() <= max.max(1));
        let _ = stash_operator::jobs::restore::claims(&r, ordinals.first().copied().unwrap_or(0));
        match stash_machines::restore_session::numbered_hosts(i64::from(replicas.unwrap_or(1)), None, true) {
            Ok(h) => proptest::prop_assert!(h.len() <= max),
            Err(why) => proptest::prop_assert!(why.contains("at most 5000")),
        }
    }

    /// Arbitrary schedules and directories of a BackupConfiguration: admission and the
    /// trigger CronJob's builder never panic; a zone always leaves the CronJob's schedule.
    #[test]
    fn arbitrary_schedules_and_directories_never_panic(
        schedule in "((CRON_)?TZ=[A-Za-z/_]{0,12} )?([0-9*/,-]{1,6} ){0,5}[0-9*@a-z ]{0,10}",
        dir in "(/|\\.\\.|\\.|source|data|/){0,10}",
    ) {
        let b = bc(json!({"repository": {"name": "r"}, "schedule": schedule,
            "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                       "directories": [dir],
                       "volumeMounts": [{"name": "d", "mountPath": "/source/data"}]}}));
        let _ = b.validate_create(&());
        let cj = stash_operator::backup_configuration::cron_job(&b, &schedule, "img", "sa", "");
        proptest::prop_assert!(!cj.spec.schedule.contains("TZ="));
    }
}

#[test]
fn the_later_spelling_of_paths_and_rules_is_one_list_with_the_earlier() {
    // `target.paths` (Stash v0.9.0 on) is `target.directories`.
    let later = with(
        with(workload_bc(), "/target/directories", Value::Null),
        "/target/paths",
        json!(["/source/data"]),
    );
    assert_eq!(bc(later.clone()).validate_create(&()), Ok(()));
    rejected(
        bc(with(later.clone(), "/target/paths", json!(["data"]))).validate_create(&()),
        "spec.target.paths[0]: must be an absolute path",
    );
    // Both spellings: the same list is accepted, different lists are refused, field named.
    let both = with(workload_bc(), "/target/paths", json!(["/source/data"]));
    assert_eq!(bc(both.clone()).validate_create(&()), Ok(()));
    rejected(
        bc(with(both, "/target/paths", json!(["/source/other"]))).validate_create(&()),
        "spec.target.paths: spec.target.paths and spec.target.directories are two spellings of one list and say different things",
    );
    // `spec.target.rules` is `spec.rules`; errors name the place the manifest used.
    let base = json!({"repository": {"name": "r"},
                      "target": {"ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "s"}}});
    let in_target = |rules: Value| rs(with(base.clone(), "/target/rules", rules));
    assert_eq!(
        in_target(json!([{"paths": ["/d"], "include": ["/d/a*"], "exclude": ["*.tmp"]}]))
            .validate_create(&()),
        Ok(())
    );
    rejected(
        in_target(json!([{"paths": ["/a"]}, {"paths": ["/b"]}])).validate_create(&()),
        "spec.target.rules[1].targetHosts: at most one rule may leave targetHosts empty, spec.target.rules[0] already does",
    );
    let both = with(
        with(base.clone(), "/target/rules", json!([{"paths": ["/a"]}])),
        "/rules",
        json!([{"paths": ["/b"]}]),
    );
    rejected(
        rs(both).validate_create(&()),
        "spec.target.rules: spec.target.rules and spec.rules are two places of one list and say different things",
    );
}

#[test]
fn a_time_out_is_a_positive_deadline() {
    let base = with(workload_bc(), "/timeOut", json!("2h"));
    assert_eq!(bc(base.clone()).validate_create(&()), Ok(()));
    rejected(
        bc(with(base.clone(), "/timeOut", json!("0s"))).validate_create(&()),
        "spec.timeOut: must be greater than 0",
    );
    rejected(
        bc(with(base, "/timeOut", json!("two hours"))).validate_create(&()),
        "spec.timeOut: invalid Go duration \"two hours\"",
    );
    let restore = json!({"repository": {"name": "r"}, "timeOut": "0s",
                         "target": {"ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "s"}},
                         "rules": [{"paths": ["/d"]}]});
    rejected(
        rs(restore).validate_create(&()),
        "spec.timeOut: must be greater than 0",
    );
}
