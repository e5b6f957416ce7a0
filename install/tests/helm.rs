//! The Helm chart renders the same objects as the plain manifests.
//!
//! Helm is built from the Go module proxy by `deploy/helm/build-helm.sh` (pinned in
//! `deploy/helm/go/go.mod`, cached like the test environment). `helm template --include-crds`
//! is parsed and compared object by object with [`stash_install::objects`]. Documented
//! differences, removed before comparing:
//! * the chart's labels `helm.sh/chart` and `app.kubernetes.io/managed-by: Helm` on each
//!   object's metadata;
//! * with default values the chart does not render the Namespace (`helm install
//!   --create-namespace` creates it); with `createNamespace=true` it does.
//!
//! Neither renders the webhook port's NetworkPolicy unless given the API server's source range
//! (`--apiserver-cidr` / `webhook.apiServerCIDRs`); given, both render the same one.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use stash_install::{InstallOptions, key, objects};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn helm() -> PathBuf {
    let out = Command::new("bash")
        .arg(root().join("deploy/helm/build-helm.sh"))
        .output()
        .expect("run build-helm.sh");
    assert!(
        out.status.success(),
        "building helm failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).expect("utf8").trim())
}

/// `helm template` of the chart with `--set`s, Helm's own directories kept out of `$HOME`.
fn template_command(helm: &Path, namespace: &str, set: &[&str]) -> Command {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "stash-rs"])
        .arg(root().join("deploy/helm/stash-rs"))
        .args(["--namespace", namespace, "--include-crds"])
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("stash-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("stash-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("stash-helm-data"),
        );
    for s in set {
        cmd.args(["--set", s]);
    }
    cmd
}

fn template(helm: &Path, namespace: &str, set: &[&str]) -> Vec<Value> {
    let out = template_command(helm, namespace, set)
        .output()
        .expect("run helm template");
    assert!(
        out.status.success(),
        "helm template failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("helm output parses");
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(normalize)
        .collect()
}

fn normalize(mut v: Value) -> Value {
    if let Some(l) = v["metadata"]["labels"].as_object_mut() {
        l.remove("helm.sh/chart");
        if l.get("app.kubernetes.io/managed-by")
            .and_then(Value::as_str)
            == Some("Helm")
        {
            l.remove("app.kubernetes.io/managed-by");
        }
    }
    v
}

fn by_key(objs: Vec<Value>) -> BTreeMap<String, Value> {
    let n = objs.len();
    let m: BTreeMap<String, Value> = objs.into_iter().map(|o| (key(&o), o)).collect();
    assert_eq!(m.len(), n, "duplicate objects");
    m
}

/// Paths where two JSON values differ (for a readable failure).
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                diff(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &format!("{path}.{k}"),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(p, q, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: plain {a} / helm {b}")),
        _ => {}
    }
}

fn compare(plain: Vec<Value>, helm: Vec<Value>, what: &str) {
    let (plain, helm) = (by_key(plain), by_key(helm));
    let only_plain: Vec<&String> = plain.keys().filter(|k| !helm.contains_key(*k)).collect();
    let only_helm: Vec<&String> = helm.keys().filter(|k| !plain.contains_key(*k)).collect();
    assert!(
        only_plain.is_empty() && only_helm.is_empty(),
        "{what}: only plain {only_plain:?}, only helm {only_helm:?}"
    );
    let mut problems = Vec::new();
    for (k, p) in &plain {
        let mut d = Vec::new();
        diff(p, &helm[k], "", &mut d);
        problems.extend(d.into_iter().map(|d| format!("{k} {d}")));
    }
    assert!(
        problems.is_empty(),
        "{what}: the chart differs from the plain manifests:\n{}",
        problems.join("\n")
    );
    println!(
        "helm ({what}): {} objects identical to the plain manifests",
        plain.len()
    );
}

#[test]
fn chart_renders_the_same_objects() {
    let helm = helm();
    let o = InstallOptions::default();

    // Default values: everything but the Namespace.
    let plain: Vec<Value> = objects(&o)
        .into_iter()
        .filter(|v| v["kind"] != "Namespace")
        .collect();
    compare(plain, template(&helm, &o.namespace, &[]), "default values");

    // With the Namespace, exactly the committed install manifest.
    let committed = std::fs::read_to_string(root().join("deploy/install/stash-rs.yaml"))
        .expect("committed manifest");
    let committed: Vec<Value> = serde_saphyr::from_multiple(&committed).expect("parses");
    compare(
        committed,
        template(&helm, &o.namespace, &["createNamespace=true"]),
        "createNamespace=true",
    );

    // Options map onto values.
    let o2 = InstallOptions {
        namespace: "backup".into(),
        image: "registry.example/stash:1.2.3".into(),
        replicas: 3,
        pdb_min_available: 2,
        webhook: false,
        snapshot_api: true,
        ..Default::default()
    };
    let set = [
        "createNamespace=true",
        "image.repository=registry.example/stash",
        "image.tag=1.2.3",
        "replicas=3",
        "pdb.minAvailable=2",
        "webhook.enabled=false",
        "snapshotApi.enabled=true",
    ];
    compare(
        objects(&o2),
        template(&helm, &o2.namespace, &set),
        "non-default values",
    );
}

#[test]
fn chart_network_policy_only_when_told_the_api_servers_range() {
    let helm = helm();
    let network_policies = |objs: &[Value]| -> Vec<Value> {
        objs.iter()
            .filter(|d| d["kind"] == "NetworkPolicy")
            .cloned()
            .collect()
    };
    // Default values (webhook.apiServerCIDRs: []): none.
    let default = template(&helm, "stash-system", &[]);
    assert_eq!(network_policies(&default), Vec::<Value>::new());

    // Given, the generator's policy for the same ranges: exactly those ipBlocks on the webhook
    // port, metrics and the Snapshot API open.
    let cidrs = ["10.0.0.10/32", "10.0.0.11/32", "fd00:10::/64"];
    let o = InstallOptions {
        apiserver_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    };
    let set = format!("webhook.apiServerCIDRs={{{}}}", cidrs.join(","));
    let with = template(&helm, &o.namespace, &[&set]);
    let nps = network_policies(&with);
    assert_eq!(nps.len(), 1, "{nps:?}");
    let from: Vec<&str> = nps[0]["spec"]["ingress"][0]["from"]
        .as_array()
        .expect("from")
        .iter()
        .filter_map(|f| f["ipBlock"]["cidr"].as_str())
        .collect();
    assert_eq!(from, cidrs);
    assert_eq!(
        nps[0]["spec"]["ingress"][0]["ports"],
        serde_json::json!([{"port": "webhook", "protocol": "TCP"}])
    );
    let plain: Vec<Value> = objects(&o)
        .into_iter()
        .filter(|v| v["kind"] != "Namespace")
        .collect();
    compare(plain, with, "webhook.apiServerCIDRs set");

    // Without the webhook, none even when given.
    let off = template(&helm, "stash-system", &[&set, "webhook.enabled=false"]);
    assert_eq!(network_policies(&off), Vec::<Value>::new());

    // A single string instead of a list is refused with a message, not rendered half-way.
    let out = template_command(
        &helm,
        "stash-system",
        &["webhook.apiServerCIDRs=10.0.0.10/32"],
    )
    .output()
    .expect("helm template");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("webhook.apiServerCIDRs must be a list"),
        "{stderr}"
    );
}

#[test]
fn chart_lints() {
    let out = Command::new(helm())
        .arg("lint")
        .arg(root().join("deploy/helm/stash-rs"))
        .arg("--strict")
        .output()
        .expect("helm lint");
    assert!(
        out.status.success(),
        "helm lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
