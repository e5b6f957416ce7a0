//! Every upstream example manifest of one of our kinds (conformance/stash-v0.8.3/examples)
//! deserializes into its typed struct, survives a serde round trip without losing fields
//! (except the known upstream mistakes), and is accepted by the generated CRD schema as the
//! API server would check it (types, enums, required fields; unknown fields are pruned).

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use stash_crds::*;
use std::path::PathBuf;

fn examples_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/stash-v0.8.3/examples");
    assert!(
        dir.is_dir(),
        "examples directory {} is missing (shared/ must sit beside the repository)",
        dir.display()
    );
    dir
}

/// Fields the upstream docs write that are not real field names: the structural schema prunes
/// them and our types ignore them. `tempDir.size`/`disableCache` are listed in the examples'
/// README (real names `sizeLimit`/`disableCaching`); `concept-crds-function.yaml` also nests the
/// Function's `runtimeSettings` under `container`, but a Function's `runtimeSettings` *is* the
/// container settings (upstream `*ContainerRuntimeSettings`), so `container` is unknown there.
const KNOWN_UNKNOWN: &[&str] = &[
    ".spec.tempDir.disableCache",
    ".spec.tempDir.size",
    ".spec.runtimeSettings.container",
];

struct Doc {
    file: String,
    value: Value,
}

/// All YAML documents of all example files. `postgres-backup-appbinding.yaml` uses `...` lines
/// as an ellipsis ("more fields here"), which YAML reads as document-end markers; those lines
/// are dropped so the manifest reads as its author meant (kubectl would reject the file as is).
fn documents() -> Vec<Doc> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        let text: String = if text.lines().any(|l| l.trim_end() == "...") {
            eprintln!("{name}: dropping `...` ellipsis lines");
            text.lines()
                .filter(|l| l.trim_end() != "...")
                .map(|l| format!("{l}\n"))
                .collect()
        } else {
            text
        };
        let values: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{name}: YAML does not parse: {e}"));
        docs.extend(
            values
                .into_iter()
                .filter(|v| !v.is_null())
                .map(|value| Doc {
                    file: name.clone(),
                    value,
                }),
        );
    }
    docs
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    BackupConfiguration,
    BackupSession,
    RestoreSession,
    Function,
    Task,
    BackupConfigurationTemplate,
    Repository,
    AppBinding,
    Snapshot,
}

fn our_kind(v: &Value) -> Option<Kind> {
    let api = v["apiVersion"].as_str()?;
    let kind = v["kind"].as_str()?;
    let group = api.split('/').next()?;
    Some(match (group, kind) {
        ("stash.appscode.com", "BackupConfiguration") => Kind::BackupConfiguration,
        ("stash.appscode.com", "BackupSession") => Kind::BackupSession,
        ("stash.appscode.com", "RestoreSession") => Kind::RestoreSession,
        ("stash.appscode.com", "Function") => Kind::Function,
        ("stash.appscode.com", "Task") => Kind::Task,
        ("stash.appscode.com", "BackupConfigurationTemplate") => Kind::BackupConfigurationTemplate,
        ("stash.appscode.com", "Repository") => Kind::Repository,
        ("appcatalog.appscode.com", "AppBinding") => Kind::AppBinding,
        ("repositories.stash.appscode.com", "Snapshot") => Kind::Snapshot,
        ("stash.appscode.com", "Restic" | "Recovery") => return None, // legacy, out of scope
        (
            "stash.appscode.com" | "appcatalog.appscode.com" | "repositories.stash.appscode.com",
            other,
        ) => {
            panic!("unexpected kind {other} in {api}")
        }
        _ => return None,
    })
}

/// Deserializes (from JSON and directly from YAML) and re-serializes.
fn typed<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    v: &Value,
) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| format!("from JSON: {e}"))?;
    let yaml = serde_saphyr::to_string(v).map_err(|e| e.to_string())?;
    let t2: T = serde_saphyr::from_str(&yaml).map_err(|e| format!("from YAML: {e}"))?;
    if t != t2 {
        return Err("YAML and JSON decodings differ".into());
    }
    serde_json::to_value(&t).map_err(|e| e.to_string())
}

fn to_typed(kind: Kind, v: &Value) -> Result<Value, String> {
    match kind {
        Kind::BackupConfiguration => typed::<BackupConfiguration>(v),
        Kind::BackupSession => typed::<BackupSession>(v),
        Kind::RestoreSession => typed::<RestoreSession>(v),
        Kind::Function => typed::<Function>(v),
        Kind::Task => typed::<Task>(v),
        Kind::BackupConfigurationTemplate => typed::<BackupConfigurationTemplate>(v),
        Kind::Repository => typed::<Repository>(v),
        Kind::AppBinding => typed::<AppBinding>(v),
        Kind::Snapshot => typed::<Snapshot>(v),
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) => false,
    }
}

/// Paths present in `orig` but lost in `back` (Go-`omitempty`-empty values do not count), and
/// values that changed.
fn lost(orig: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(bv) => lost(v, bv, &p, out),
                    None if is_empty_value(v) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Object(o), _) if o.is_empty() => {}
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (x, y)) in o.iter().zip(b).enumerate() {
                lost(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

/// A small model of the API server's structural-schema validation and pruning.
fn validate(v: &Value, s: &Value, path: &str, errors: &mut Vec<String>, pruned: &mut Vec<String>) {
    if v.is_null() {
        if s["nullable"] != Value::Bool(true) {
            pruned.push(format!("{path} (null)"));
        }
        return;
    }
    if s["x-kubernetes-int-or-string"] == Value::Bool(true) {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errors.push(format!("{path}: {v} is not an int or string"));
        }
        return;
    }
    let ok = match s["type"].as_str() {
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("array") => v.is_array(),
        Some("object") => v.is_object(),
        None => s["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true),
        Some(other) => panic!("{path}: unknown type {other}"),
    };
    if !ok {
        errors.push(format!("{path}: {v} is not of type {}", s["type"]));
        return;
    }
    if s["format"] == "int32" && v.as_i64().is_none_or(|n| i32::try_from(n).is_err()) {
        errors.push(format!("{path}: {v} is not an int32"));
    }
    if let Some(values) = s["enum"].as_array()
        && !values.contains(v)
    {
        errors.push(format!("{path}: {v} is not one of {values:?}"));
    }
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                validate(item, &s["items"], &format!("{path}[{i}]"), errors, pruned);
            }
        }
        Value::Object(fields) => {
            for r in s["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap();
                if fields.get(r).is_none_or(Value::is_null) {
                    errors.push(format!("{path}: required field {r} is missing"));
                }
            }
            for (k, fv) in fields {
                let p = format!("{path}.{k}");
                if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&k.as_str()) {
                    continue;
                }
                if let Some(ps) = s["properties"].get(k) {
                    validate(fv, ps, &p, errors, pruned);
                } else if s["additionalProperties"].is_object() {
                    validate(fv, &s["additionalProperties"], &p, errors, pruned);
                } else if s["x-kubernetes-preserve-unknown-fields"] != Value::Bool(true) {
                    pruned.push(p);
                }
            }
        }
        _ => {}
    }
}

/// `(group, kind, version) -> openAPIV3Schema` of every generated CRD version, computed once.
fn schemas() -> &'static Vec<(String, String, String, Value)> {
    static SCHEMAS: std::sync::OnceLock<Vec<(String, String, String, Value)>> =
        std::sync::OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let mut out = Vec::new();
        for c in crds() {
            for v in &c.spec.versions {
                let s = serde_json::to_value(
                    v.schema
                        .as_ref()
                        .unwrap()
                        .open_api_v3_schema
                        .as_ref()
                        .unwrap(),
                )
                .unwrap();
                out.push((
                    c.spec.group.clone(),
                    c.spec.names.kind.clone(),
                    v.name.clone(),
                    s,
                ));
            }
        }
        out
    })
}

fn crd_schema(v: &Value) -> Option<Value> {
    let (group, version) = v["apiVersion"].as_str()?.split_once('/')?;
    let kind = v["kind"].as_str()?;
    schemas()
        .iter()
        .find(|(g, k, ver, _)| g == group && k == kind && ver == version)
        .map(|(.., s)| s.clone())
}

#[test]
fn upstream_examples_deserialize_and_are_accepted() {
    let docs = documents();
    let mut ours = 0;
    let mut typed_ok = 0;
    let mut failures = Vec::new();
    let mut per_kind = std::collections::BTreeMap::<String, usize>::new();
    for Doc { file, value } in &docs {
        let Some(kind) = our_kind(value) else {
            continue;
        };
        ours += 1;
        *per_kind.entry(format!("{kind:?}")).or_default() += 1;
        let back = match to_typed(kind, value) {
            Ok(b) => b,
            Err(e) => {
                failures.push(format!("{file} {kind:?}: does not deserialize: {e}"));
                continue;
            }
        };
        typed_ok += 1;
        let mut lost_paths = Vec::new();
        for top in ["spec", "status"] {
            lost(&value[top], &back[top], &format!(".{top}"), &mut lost_paths);
        }
        lost_paths.retain(|p| !KNOWN_UNKNOWN.contains(&p.as_str()));
        if !lost_paths.is_empty() {
            failures.push(format!("{file} {kind:?}: round trip lost {lost_paths:?}"));
        }
        if kind == Kind::Snapshot {
            continue; // aggregated API, no CRD
        }
        let schema = crd_schema(value)
            .unwrap_or_else(|| panic!("{file}: no CRD serves {}", value["apiVersion"]));
        let (mut errors, mut pruned) = (Vec::new(), Vec::new());
        validate(value, &schema, "", &mut errors, &mut pruned);
        pruned.retain(|p| !KNOWN_UNKNOWN.contains(&p.as_str()));
        if !errors.is_empty() {
            failures.push(format!(
                "{file} {kind:?}: rejected by the CRD schema: {errors:?}"
            ));
        }
        if !pruned.is_empty() {
            failures.push(format!(
                "{file} {kind:?}: fields pruned by the CRD schema: {pruned:?}"
            ));
        }
    }
    println!(
        "typed: {typed_ok}/{ours} documents ({} documents in all files); per kind: {per_kind:?}",
        docs.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(typed_ok, ours);
    assert!(
        ours >= 90,
        "expected the full example set, found {ours} documents of our kinds"
    );
    for k in [
        "BackupConfiguration",
        "BackupSession",
        "RestoreSession",
        "Function",
        "Task",
        "BackupConfigurationTemplate",
        "Repository",
        "AppBinding",
        "Snapshot",
    ] {
        assert!(per_kind.contains_key(k), "no example of {k}");
    }
}

#[test]
fn known_upstream_mistakes_are_pruned_not_rejected() {
    let docs = documents();
    let bc = docs
        .iter()
        .find(|d| d.file == "concept-crds-backupconfiguration.yaml")
        .expect("concept BackupConfiguration example");
    let typed: BackupConfiguration = serde_json::from_value(bc.value.clone()).unwrap();
    let temp = typed.spec.temp_dir.unwrap();
    assert_eq!(temp.medium.as_deref(), Some("Memory"));
    assert_eq!(temp.size_limit, None, "`size` is not `sizeLimit`");
    assert!(temp.enable_cache());
    let (mut errors, mut pruned) = (Vec::new(), Vec::new());
    validate(
        &bc.value,
        &crd_schema(&bc.value).unwrap(),
        "",
        &mut errors,
        &mut pruned,
    );
    assert!(errors.is_empty(), "{errors:?}");
    pruned.sort();
    assert_eq!(pruned, [".spec.tempDir.disableCache", ".spec.tempDir.size"]);
    let bs = docs
        .iter()
        .find(|d| d.file == "concept-crds-backupsession.yaml")
        .unwrap();
    let typed: BackupSession = serde_json::from_value(bs.value.clone()).unwrap();
    let labels = typed.metadata.labels.unwrap();
    assert!(labels.contains_key(consts::LEGACY_BACKUP_CONFIGURATION_LABEL));
    assert!(!labels.contains_key(consts::BACKUP_CONFIGURATION_LABEL));
    let status = typed.status.unwrap();
    assert_eq!(status.phase, Some(backup_session::Phase::Succeeded));
    assert_eq!(status.session_duration.unwrap().to_string(), "3.861369766s");
    assert_eq!(
        status.stats[0].snapshots[0]
            .file_stats
            .as_ref()
            .unwrap()
            .total_files,
        Some(2)
    );
}
