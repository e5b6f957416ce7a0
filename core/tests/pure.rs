//! stash-core and stash-machines stay pure: neither links kube's client or runtime, tokio, or
//! an HTTP stack (issue 23). `cargo tree` answers from Cargo.lock and the local registry cache.
use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "kube-client",
    "kube-runtime",
    "hyper",
    "reqwest",
    "axum",
];

fn dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["-p", package])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn assert_pure(package: &str, must_have: &str) {
    let deps = dependencies(package);
    assert!(
        deps.iter().any(|d| d == must_have),
        "cargo tree -p {package} does not list {must_have}: {deps:?}"
    );
    let found: Vec<_> = deps
        .iter()
        .filter(|d| FORBIDDEN.contains(&d.as_str()))
        .collect();
    assert!(
        found.is_empty(),
        "{package} links {found:?}: it must build without kube's client and tokio"
    );
}

#[test]
fn the_core_links_no_client_and_no_runtime() {
    assert_pure("stash-core", "stash-crds");
}

#[test]
fn the_machines_link_no_client_and_no_runtime() {
    assert_pure("stash-machines", "statig");
}

#[test]
fn the_check_sees_a_runtime_where_there_is_one() {
    // The same question of a crate that does link tokio must find it, or the checks above
    // could pass by listing nothing.
    let deps = dependencies("stash-index");
    assert!(deps.iter().any(|d| d == "tokio"), "{deps:?}");
    assert!(deps.iter().any(|d| d == "kube-client"), "{deps:?}");
}
