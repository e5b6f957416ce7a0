//! The committed `deploy/crds/stash-crds.yaml` is what `render_yaml()` produces.
//! Regenerate with `STASH_BLESS=1 cargo test -p stash-crds --test generated`.

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds/stash-crds.yaml")
}

#[test]
fn committed_crd_yaml_is_fresh() {
    let rendered = stash_crds::render_yaml();
    let path = committed_path();
    if std::env::var_os("STASH_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &rendered).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run STASH_BLESS=1 cargo test -p stash-crds",
            path.display()
        )
    });
    assert!(
        committed == rendered,
        "{} is stale; regenerate with STASH_BLESS=1 cargo test -p stash-crds",
        path.display()
    );
}

#[test]
fn render_yaml_is_deterministic_and_round_trips() {
    let a = stash_crds::render_yaml();
    assert_eq!(a, stash_crds::render_yaml());
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&a).expect("rendered YAML parses");
    let crds: Vec<serde_json::Value> = stash_crds::crds()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    assert_eq!(docs.len(), crds.len());
    for (d, c) in docs.iter().zip(&crds) {
        assert_eq!(
            d, c,
            "YAML document of {} differs from crds()",
            c["metadata"]["name"]
        );
    }
}
