//! The committed manifests are what the renderer produces, the RBAC is least privilege, the
//! operator accepts the arguments the Deployment gives it, and the Dockerfile's pins match the
//! repository's.
//!
//! Regenerate the committed files with `STASH_BLESS=1 cargo test -p stash-install --test generated`.
use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::Value;
use stash_install::{InstallOptions, key, objects, operator_args, rbac_problems, render};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn check_file(rel: &str, want: &str) {
    let path = root().join(rel);
    if std::env::var_os("STASH_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, want).expect("write");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run STASH_BLESS=1 cargo test -p stash-install --test generated",
            path.display()
        )
    });
    if have != want {
        let line = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || {
                    format!(
                        "lengths differ ({} vs {} lines)",
                        have.lines().count(),
                        want.lines().count()
                    )
                },
                |i| {
                    format!(
                        "first difference at line {}:\n  committed: {}\n  rendered:  {}",
                        i + 1,
                        have.lines().nth(i).unwrap_or(""),
                        want.lines().nth(i).unwrap_or("")
                    )
                },
            );
        panic!(
            "{} is stale ({line}); run STASH_BLESS=1 cargo test -p stash-install --test generated",
            path.display()
        );
    }
}

#[test]
fn committed_install_manifest_is_current() {
    check_file(
        "deploy/install/stash-rs.yaml",
        &render(&InstallOptions::default()),
    );
}

#[test]
fn chart_crds_are_current() {
    check_file(
        "deploy/helm/stash-rs/crds/stash-crds.yaml",
        &stash_crds::render_yaml(),
    );
}

#[test]
fn render_is_deterministic_and_parses_back() {
    let o = InstallOptions::default();
    let a = render(&o);
    assert_eq!(a, render(&o));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&a).expect("YAML parses");
    let want = objects(&o);
    assert_eq!(docs.len(), want.len());
    for (d, w) in docs.iter().zip(&want) {
        assert_eq!(d, w, "{}", key(w));
    }
    let kinds: Vec<&str> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or(""))
        .collect();
    for k in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        assert!(kinds.contains(&k), "no {k} rendered");
    }
}

#[test]
fn options_drop_what_is_disabled() {
    let o = InstallOptions {
        webhook: false,
        snapshot_api: false,
        ..Default::default()
    };
    let with_api = objects(&InstallOptions {
        snapshot_api: true,
        ..Default::default()
    });
    let api = with_api
        .iter()
        .find(|d| d["kind"] == "APIService")
        .expect("APIService when enabled");
    assert_eq!(
        api["metadata"]["name"],
        "v1alpha1.repositories.stash.appscode.com"
    );
    assert_eq!(api["spec"]["service"]["name"], "stash-operator");
    let objs = objects(&o);
    let kinds: Vec<&str> = objs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or(""))
        .collect();
    assert!(
        !kinds
            .iter()
            .any(|k| k.ends_with("WebhookConfiguration") || *k == "APIService"),
        "{kinds:?}"
    );
    let args = operator_args(&o).join(" ");
    assert!(
        !args.contains("--webhook") && !args.contains("--snapshot-api"),
        "{args}"
    );
    let o = InstallOptions {
        namespace: "backup".into(),
        replicas: 3,
        ..Default::default()
    };
    let y = render(&o);
    assert!(y.contains("--webhook-service=backup/stash-operator:443"));
    assert!(y.contains("--pushgateway-url=http://stash-pushgateway.backup.svc:56789"));
    assert!(!y.contains("stash-system"));
}

/// The NetworkPolicy of [`objects`], if any.
fn network_policy(o: &InstallOptions) -> Option<Value> {
    objects(o)
        .into_iter()
        .find(|d| d["kind"] == "NetworkPolicy")
}

/// The generator's command line (as the `stash-install` binary flattens it).
#[derive(Parser)]
struct Generator {
    #[command(flatten)]
    opts: InstallOptions,
}

#[test]
fn network_policy_only_when_told_the_api_servers_range() {
    // Off by default, in the options, on the command line and in the committed manifest: a
    // guessed range would cut the API server off from the webhooks under an enforcing CNI.
    assert_eq!(network_policy(&InstallOptions::default()), None);
    let cli = Generator::try_parse_from(["stash-install"]).expect("no arguments");
    assert_eq!(cli.opts, InstallOptions::default());
    assert!(cli.opts.apiserver_cidrs.is_empty());
    let committed =
        std::fs::read_to_string(root().join("deploy/install/stash-rs.yaml")).expect("committed");
    assert!(
        !committed.contains("NetworkPolicy"),
        "the committed manifest must install on any cluster: no NetworkPolicy"
    );

    // Given (repeatable), exactly those ranges as ipBlocks on the webhook port.
    let cidrs = ["10.0.0.10/32", "10.0.0.11/32", "fd00:10::/64"];
    let cli = Generator::try_parse_from(
        std::iter::once("stash-install".to_string())
            .chain(cidrs.iter().map(|c| format!("--apiserver-cidr={c}"))),
    )
    .expect("--apiserver-cidr parses");
    assert_eq!(cli.opts.apiserver_cidrs, cidrs);
    let np = network_policy(&cli.opts).expect("a NetworkPolicy when a CIDR is given");
    assert_eq!(np["metadata"]["name"], "stash-operator");
    assert_eq!(np["metadata"]["namespace"], "stash-system");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        serde_json::json!({"app.kubernetes.io/component": "operator", "app.kubernetes.io/name": "stash"})
    );
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let ingress = np["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 2, "{np}");
    // The webhook port (named in the Deployment as containerPort WEBHOOK_PORT): only the CIDRs.
    assert_eq!(
        ingress[0]["ports"],
        serde_json::json!([{"port": "webhook", "protocol": "TCP"}])
    );
    let from: Vec<Value> = cidrs
        .iter()
        .map(|c| serde_json::json!({"ipBlock": {"cidr": c}}))
        .collect();
    assert_eq!(ingress[0]["from"], Value::Array(from));
    let deployment = objects(&cli.opts)
        .into_iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "stash-operator")
        .expect("operator Deployment");
    assert!(
        deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == "webhook"
                && p["containerPort"] == u64::from(stash_install::WEBHOOK_PORT)),
        "the policy's `webhook` port is the operator's webhook port"
    );
    // Metrics and the Snapshot API stay open to every source.
    assert_eq!(ingress[1].get("from"), None, "{np}");
    assert_eq!(
        ingress[1]["ports"],
        serde_json::json!([{"port": "metrics", "protocol": "TCP"}, {"port": "snapshot-api", "protocol": "TCP"}])
    );
    assert!(render(&cli.opts).contains("kind: NetworkPolicy"));

    // Without the webhook there is no webhook port to guard.
    assert_eq!(
        network_policy(&InstallOptions {
            webhook: false,
            ..cli.opts.clone()
        }),
        None
    );

    // What is not a CIDR is refused before anything is rendered.
    for bad in [
        "",
        "10.0.0.0",
        "10.0.0.0/33",
        "10.0.0/24",
        "fd00::/129",
        "10.0.0.0/+8",
        "api.example/32",
    ] {
        assert!(
            Generator::try_parse_from(["stash-install", "--apiserver-cidr", bad]).is_err(),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn rbac_is_least_privilege() {
    let objs = objects(&InstallOptions::default());
    let problems = rbac_problems(&objs);
    assert!(problems.is_empty(), "{problems:#?}");
    // The lint catches what it should.
    let bad: Vec<Value> = serde_json::from_value(serde_json::json!([
        {"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]},
        {"kind": "ClusterRoleBinding", "metadata": {"name": "y"}, "roleRef": {"name": "cluster-admin"}},
    ]))
    .expect("json");
    assert_eq!(rbac_problems(&bad).len(), 2);
    // Writes to RBAC objects and the webhook/APIService registrations are limited by name.
    let cr = objs
        .iter()
        .find(|o| o["kind"] == "ClusterRole")
        .expect("ClusterRole");
    for r in cr["rules"].as_array().expect("rules") {
        let res: Vec<&str> = r["resources"]
            .as_array()
            .expect("res")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if res.iter().any(|x| {
            [
                "clusterroles",
                "mutatingwebhookconfigurations",
                "validatingwebhookconfigurations",
                "apiservices",
            ]
            .contains(x)
        }) {
            assert!(
                r["resourceNames"].as_array().is_some_and(|n| !n.is_empty()),
                "{r}"
            );
        }
    }
}

/// `stash run` as the operator binary parses it.
#[derive(Parser)]
struct Run {
    // What `stash run` flattens (stash/src/serve.rs `RunOptions`).
    #[command(flatten)]
    operator: stash_operator::Options,
    #[command(flatten)]
    webhook: stash_admission::Args,
    #[command(flatten)]
    snapshots: stash_snapshots::Args,
}

#[test]
fn operator_accepts_the_deployment_arguments() {
    for o in [
        InstallOptions::default(),
        InstallOptions {
            webhook: false,
            ..Default::default()
        },
    ] {
        let args = operator_args(&o);
        assert_eq!(args[0], "run");
        let argv = std::iter::once("stash".to_string()).chain(args[1..].iter().cloned());
        if let Err(e) = Run::try_parse_from(argv) {
            panic!(
                "`stash {}` is rejected by the operator:\n{e}",
                args.join(" ")
            );
        }
    }
}

fn field<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(str::trim)
}

#[test]
fn dockerfile_pins_match_the_repository() {
    let docker = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let restic_mod =
        std::fs::read_to_string(root().join("testenv/go/restic/go.mod")).expect("restic go.mod");
    let pinned = field(&restic_mod, "github.com/restic/restic v")
        .expect("restic pin")
        .split_whitespace()
        .next()
        .expect("v");
    assert_eq!(
        field(&docker, "ARG RESTIC_VERSION="),
        Some(pinned),
        "Dockerfile restic version vs testenv/go/restic/go.mod"
    );
    let go = field(&restic_mod, "go ").expect("go directive");
    let go_minor: String = go.split('.').take(2).collect::<Vec<_>>().join(".");
    assert_eq!(
        field(&docker, "ARG GO_VERSION="),
        Some(go_minor.as_str()),
        "Go version vs the module's go directive"
    );
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let msrv = field(&cargo, "rust-version = ")
        .expect("rust-version")
        .trim_matches('"');
    let rust = field(&docker, "ARG RUST_VERSION=").expect("RUST_VERSION");
    let v = |s: &str| {
        s.split('.')
            .map(|p| p.parse::<u32>().expect("number"))
            .collect::<Vec<_>>()
    };
    assert!(
        v(rust) >= v(msrv),
        "Dockerfile Rust {rust} is older than rust-version {msrv}"
    );
    for needle in [
        "FROM rust:${RUST_VERSION}-bookworm",
        "FROM golang:${GO_VERSION}-bookworm",
        "cargo build --release --locked -p stash",
        "COPY testenv/go/restic/go.mod testenv/go/restic/go.sum",
        "/usr/local/bin/stash",
        "/usr/local/bin/restic",
        "USER 65534:65534",
        "ENTRYPOINT [\"/usr/local/bin/stash\"]",
    ] {
        assert!(docker.contains(needle), "Dockerfile lacks {needle:?}");
    }
    // The default image of the manifests is this crate's version, as the operator's own default.
    assert_eq!(
        InstallOptions::default().image,
        format!("stash-rs/stash:{}", env!("CARGO_PKG_VERSION"))
    );
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore keeps target/ out of the context"
    );
}
