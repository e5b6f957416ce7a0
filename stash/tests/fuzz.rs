//! Issue 24: arbitrary schema-valid objects of every kind through admission, the decisions and
//! every builder of Jobs, Pods, pod templates and Roles.
//!
//! The objects are generated from the CRDs' own OpenAPI schemas (as the API server admits
//! them: types, enums, minimum/maximum, int-or-string, maps and lists, bounded in depth and
//! length; strings drawn from what users write and what attackers try: `${…}` templates,
//! `..`, absolute paths, the empty string). Each case must: deserialize into the typed
//! object (the API server stores it, so every watch of the operator must read it), pass
//! through validation and warnings without a panic, and every builder's output must stay
//! bounded (at most [`MAX_OUTPUT`] bytes as JSON). The counts are printed and asserted.
use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};
use stash_crds::{
    BackupConfiguration, BackupConfigurationTemplate, BackupSession, Function, Repository,
    RestoreSession, Task,
};

use stash_admission::validate::Validate;

/// Cases per kind.
const CASES: u32 = 300;
/// The most any builder may produce from one bounded object (JSON bytes).
const MAX_OUTPUT: usize = 1 << 20;
/// Objects and arrays nest at most this deep before only required fields are generated.
const MAX_DEPTH: u32 = 12;

/// Strings users write and attackers try.
fn string() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z0-9-]{0,12}",
        1 => "[ -~]{0,24}",
        1 => Just(String::new()),
        1 => prop::sample::select(vec![
            "/source/data", "/source/data/../../etc", "..", "latest", "${POD_ORDINAL}",
            "${A:=${B:=${C}}}", "${X:1:9223372036854775807}", "*/5 * * * *",
            "CRON_TZ=Europe/Berlin 0 2 * * *", "host-0", "1Gi", "apps/v1", "Deployment",
            "StatefulSet", "DaemonSet", "default", "kube-system", "pvc-backup", "pvc-restore",
        ])
        .prop_map(str::to_string),
    ]
    .boxed()
}

fn integer(schema: &Value) -> BoxedStrategy<Value> {
    let min = schema["minimum"].as_i64().unwrap_or(i64::from(i32::MIN));
    let max = schema["maximum"].as_i64().unwrap_or(i64::from(i32::MAX));
    prop_oneof![
        (min..=max).prop_map(Value::from),
        prop::sample::select(vec![min, max, 0.clamp(min, max), 1.clamp(min, max)])
            .prop_map(Value::from),
    ]
    .boxed()
}

/// Values valid under `schema` (an OpenAPI v3 schema as the CRD carries it).
fn value(schema: &Value, depth: u32) -> BoxedStrategy<Value> {
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        return prop_oneof![integer(&json!({})), string().prop_map(Value::from)].boxed();
    }
    if let Some(options) = schema["enum"].as_array().filter(|o| !o.is_empty()) {
        return prop::sample::select(options.clone()).boxed();
    }
    if let Some(any) = schema["anyOf"]
        .as_array()
        .or(schema["oneOf"].as_array())
        .filter(|a| !a.is_empty())
    {
        let choices: Vec<BoxedStrategy<Value>> = any.iter().map(|s| value(s, depth)).collect();
        return prop::strategy::Union::new(choices).boxed();
    }
    match schema["type"].as_str() {
        Some("string") if schema["format"] == "date-time" => prop::sample::select(vec![
            "2024-02-29T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "2099-12-31T23:59:59+14:00",
        ])
        .prop_map(Value::from)
        .boxed(),
        Some("string") => string().prop_map(Value::from).boxed(),
        Some("integer") => integer(schema),
        Some("number") => {
            prop_oneof![(-1e9f64..1e9).prop_map(Value::from), Just(json!(0.5))].boxed()
        }
        Some("boolean") => any::<bool>().prop_map(Value::from).boxed(),
        Some("array") => {
            let items = schema.get("items").cloned().unwrap_or(json!({}));
            let len = if depth >= MAX_DEPTH { 0..1 } else { 0..3 };
            prop::collection::vec(value(&items, depth + 1), len)
                .prop_map(Value::Array)
                .boxed()
        }
        Some("object") | None if schema.get("properties").is_some() => object(schema, depth),
        Some("object") => match schema.get("additionalProperties") {
            Some(inner) if inner.is_object() && depth < MAX_DEPTH => {
                prop::collection::btree_map("[a-z]{1,6}", value(inner, depth + 1), 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect()))
                    .boxed()
            }
            _ => Just(json!({})).boxed(),
        },
        _ => Just(Value::Null).boxed(),
    }
}

/// An object with its required properties and any subset of the others.
fn object(schema: &Value, depth: u32) -> BoxedStrategy<Value> {
    let required: Vec<String> = schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut fields: Vec<BoxedStrategy<Option<(String, Value)>>> = Vec::new();
    for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
        let must = required.contains(name);
        if !must && depth >= MAX_DEPTH {
            continue;
        }
        let name = name.clone();
        let v = value(prop, depth + 1).prop_map(move |v| (name.clone(), v));
        fields.push(if must {
            v.prop_map(Some).boxed()
        } else {
            prop::option::weighted(0.5, v).boxed()
        });
    }
    fields
        .prop_map(|fs| Value::Object(fs.into_iter().flatten().collect::<Map<String, Value>>()))
        .boxed()
}

/// The `openAPIV3Schema` of the CRD of `kind`.
fn schema_of(kind: &str) -> Value {
    let crd = stash_crds::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("crd");
    let v = crd.spec.versions.last().expect("version").clone();
    serde_json::to_value(v.schema.and_then(|s| s.open_api_v3_schema)).expect("schema")
}

/// Generate `CASES` objects of `kind`: each is read as `T` and given to `check`; returns
/// (cases run, cases the typed object could not read).
fn run<T: serde::de::DeserializeOwned>(
    kind: &str,
    api_version: &str,
    mut check: impl FnMut(T) -> Result<(), String>,
) -> (u32, Vec<String>) {
    let schema = schema_of(kind);
    let mut body = schema.clone();
    if let Some(props) = body["properties"].as_object_mut() {
        props.remove("metadata");
        props.remove("apiVersion");
        props.remove("kind");
        // Status goes through the status subresource, which namespace users are not granted.
        props.remove("status");
    }
    let strategy = object(&body, 0);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    let mut unreadable = Vec::new();
    let mut ran = 0;
    for _ in 0..CASES {
        let mut v = strategy
            .new_tree(&mut runner)
            .expect("a generated value")
            .current();
        v["apiVersion"] = json!(api_version);
        v["kind"] = json!(kind);
        v["metadata"] = json!({"name": "fuzz", "namespace": "n", "uid": "u", "generation": 1});
        ran += 1;
        match serde_json::from_value::<T>(v.clone()) {
            Ok(obj) => {
                if let Err(e) = check(obj) {
                    panic!("{kind}: {e}\n{v:#}");
                }
            }
            Err(e) => unreadable.push(format!("{e}")),
        }
    }
    (ran, unreadable)
}

/// The JSON size of what a builder produced, checked against [`MAX_OUTPUT`].
fn bounded(what: &str, out: &impl serde::Serialize) -> Result<(), String> {
    let n = serde_json::to_vec(out).map_err(|e| e.to_string())?.len();
    if n > MAX_OUTPUT {
        return Err(format!("{what} produced {n} bytes"));
    }
    Ok(())
}

fn repository() -> Repository {
    serde_json::from_value(json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
        "metadata": {"name": "repo", "namespace": "n"},
        "spec": {"backend": {"storageSecretName": "s", "local": {"mountPath": "/repo",
                 "hostPath": {"path": "/var/repo"}}}}
    }))
    .expect("repository")
}

fn template() -> k8s_openapi::api::core::v1::PodTemplateSpec {
    serde_json::from_value(json!({
        "metadata": {"labels": {"app": "a"}},
        "spec": {"containers": [{"name": "app", "image": "busybox",
                 "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}],
                 "volumes": [{"name": "data", "emptyDir": {}}]}
    }))
    .expect("template")
}

fn functions() -> BTreeMap<String, Function> {
    stash_core::jobs::builtin::functions("img")
        .into_iter()
        .map(|f| (f.metadata.name.clone().unwrap_or_default(), f))
        .collect()
}

fn task(name: &str) -> Task {
    stash_core::jobs::builtin::tasks()
        .into_iter()
        .find(|t| t.metadata.name.as_deref() == Some(name))
        .expect("task")
}

fn report(kind: &str, (ran, unreadable): (u32, Vec<String>)) {
    eprintln!(
        "fuzz {kind}: {ran} schema-valid objects through admission and the builders, {} not readable",
        unreadable.len()
    );
    assert_eq!(ran, CASES, "{kind}: every case ran");
    assert!(
        unreadable.is_empty(),
        "{kind}: schema-valid objects the operator cannot read (its watches would fail): {:#?}",
        unreadable.iter().collect::<std::collections::BTreeSet<_>>()
    );
}

fn cfg() -> stash_core::inject::InjectConfig {
    stash_core::inject::InjectConfig {
        image: "img".into(),
        pushgateway_url: "http://pgw".into(),
    }
}

#[test]
fn arbitrary_repositories() {
    report(
        "Repository",
        run::<Repository>("Repository", "stash.appscode.com/v1alpha1", |r| {
            let _ = r.validate_create(&());
            let _ = r.validate_update(&repository(), &());
            let _ = r.warnings();
            let _ = stash_core::location::operator_location(&r);
            let bc = backup_configuration_fixture();
            if let Ok(t) = stash_core::inject::apply_backup(&template(), Some((&bc, &r)), &cfg()) {
                bounded("sidecar injection", &t)?;
            }
            Ok(())
        }),
    );
}

fn backup_configuration_fixture() -> BackupConfiguration {
    serde_json::from_value(json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
        "metadata": {"name": "bc", "namespace": "n"},
        "spec": {"repository": {"name": "repo"}, "schedule": "*/5 * * * *",
                 "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "a"},
                            "directories": ["/source/data"],
                            "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}}
    }))
    .expect("bc")
}

#[test]
fn arbitrary_backup_configurations() {
    let repo = repository();
    let functions = functions();
    let backup = task("pvc-backup");
    report(
        "BackupConfiguration",
        run::<BackupConfiguration>("BackupConfiguration", "stash.appscode.com/v1beta1", |b| {
            let _ = b.validate_create(&());
            let _ = b.validate_update(&backup_configuration_fixture(), &());
            let _ = b.warnings();
            if let Ok(t) = stash_core::inject::apply_backup(&template(), Some((&b, &repo)), &cfg())
            {
                bounded("sidecar injection", &t)?;
            }
            let schedule = b.spec.schedule.clone().unwrap_or_default();
            let cj = stash_operator::backup_configuration::cron_job(&b, &schedule, "img", "sa", "");
            bounded("trigger CronJob", &cj)?;
            let op = stash_core::jobs::inputs::OperatorInputs::default();
            if let Ok(job) =
                stash_operator::jobs::backup::build(&b, "s", &repo, &backup, &functions, &op)
            {
                bounded("backup Job", &job.0)?;
            }
            bounded("Role", &stash_operator::rbac::cron_job_rules("fuzz"))?;
            bounded(
                "sidecar Role",
                &stash_operator::rbac::sidecar_rules("fuzz", "repo", "lease", &["s"]),
            )?;
            let _ = stash_operator::backup_configuration::history_limit(&b, 5);
            let _ = stash_core::inject::spec_hash(&b);
            Ok(())
        }),
    );
}

#[test]
fn arbitrary_backup_sessions() {
    report(
        "BackupSession",
        run::<BackupSession>("BackupSession", "stash.appscode.com/v1beta1", |s| {
            let _ = s.validate_create(&());
            let _ = s.validate_update(&s, &());
            let _ = s.warnings();
            Ok(())
        }),
    );
}

#[test]
fn arbitrary_restore_sessions() {
    let repo = repository();
    let functions = functions();
    let restore = task("pvc-restore");
    report(
        "RestoreSession",
        run::<RestoreSession>("RestoreSession", "stash.appscode.com/v1beta1", |r| {
            let _ = r.validate_create(&());
            let _ = r.warnings();
            if let Ok(t) = stash_core::inject::apply_restore(&template(), Some((&r, &repo)), &cfg())
            {
                bounded("init-container injection", &t)?;
            }
            let ordinals = stash_operator::jobs::restore::ordinals(&r).unwrap_or_default();
            let max = stash_machines::restore_session::MAX_HOSTS as usize;
            if ordinals.len() > max {
                return Err(format!("{} ordinals", ordinals.len()));
            }
            bounded("Job names", &stash_operator::jobs::restore::job_names(&r))?;
            let op = stash_core::jobs::inputs::OperatorInputs::default();
            for o in ordinals.iter().take(2) {
                if let Ok(claims) = stash_operator::jobs::restore::claims(&r, *o) {
                    bounded(
                        "claims",
                        &claims.into_iter().map(|c| c.1).collect::<Vec<_>>(),
                    )?;
                }
                if let Ok(pod) = stash_operator::jobs::restore::pod_spec(
                    &r,
                    &repo,
                    Some((&restore, &functions)),
                    Some(*o),
                    "img",
                    &op,
                    "sa",
                ) {
                    bounded("restore Job pod", &pod)?;
                }
            }
            let _ = stash_agent::restore::plan(&r, "host-0", &["/source/data".to_string()]);
            bounded(
                "restore Role",
                &stash_operator::rbac::restore_init_rules("fuzz", "repo", Some("lease")),
            )?;
            Ok(())
        }),
    );
}

#[test]
fn arbitrary_functions_and_tasks() {
    let builtin = functions();
    report(
        "Function",
        run::<Function>("Function", "stash.appscode.com/v1beta1", |f| {
            let _ = f.validate_create(&());
            let _ = f.warnings();
            let mut fs = builtin.clone();
            fs.insert("fuzz".into(), f);
            let t: Task = serde_json::from_value(json!({
                "apiVersion": "stash.appscode.com/v1beta1", "kind": "Task",
                "metadata": {"name": "t"}, "spec": {"steps": [{"name": "fuzz"}]}
            }))
            .map_err(|e| e.to_string())?;
            if let Ok(r) = stash_core::jobs::resolve::resolve(&t, &fs, &[], &Default::default()) {
                bounded("resolved containers", &r.container)?;
            }
            Ok(())
        }),
    );
    let names: std::collections::BTreeSet<String> = builtin.keys().cloned().collect();
    let exists = move |name: &str| names.contains(name);
    report(
        "Task",
        run::<Task>("Task", "stash.appscode.com/v1beta1", |t| {
            let _ = t.validate_create(&exists);
            let _ = t.warnings();
            if let Ok(r) =
                stash_core::jobs::resolve::resolve(&t, &builtin, &[], &Default::default())
            {
                bounded("resolved containers", &r.container)?;
            }
            Ok(())
        }),
    );
}

#[test]
fn arbitrary_backup_configuration_templates() {
    report(
        "BackupConfigurationTemplate",
        run::<BackupConfigurationTemplate>(
            "BackupConfigurationTemplate",
            "stash.appscode.com/v1beta1",
            |t| {
                let _ = t.validate_create(&());
                let _ = t.warnings();
                Ok(())
            },
        ),
    );
}
