//! The chart installed as a user installs it, on the real cluster: `helm install` into
//! `stash-system`, the operator Ready with its APIService Available and its validating webhook
//! refusing an invalid Repository; `helm upgrade` (one replica, a new log level) rolls out and
//! is Ready again; `helm uninstall` removes it.
//!
//! Not run by a plain `cargo test` (`test = false` in Cargo.toml): it needs a cluster *without*
//! stash-rs, so `scripts/test.sh` runs it (`scripts/run_tests.py --only helm_install`, which builds it by name)
//! after the cluster starts and before the committed manifest is applied.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn helm_bin() -> PathBuf {
    let out = Command::new("bash")
        .arg(root().join("deploy/helm/build-helm.sh"))
        .output()
        .expect("run build-helm.sh");
    assert!(
        out.status.success(),
        "building helm failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_ready(client: &kube::Client, replicas: i32, timeout: Duration) -> Duration {
    let api = Api::<Deployment>::namespaced(client.clone(), "stash-system");
    let begun = Instant::now();
    loop {
        if let Ok(d) = api.get("stash-operator").await
            && let Some(st) = d.status
            && d.spec.as_ref().and_then(|s| s.replicas) == Some(replicas)
            && st.observed_generation == d.metadata.generation
            && st.ready_replicas == Some(replicas)
            && st.updated_replicas == Some(replicas)
            && st.replicas == Some(replicas)
        {
            return begun.elapsed();
        }
        assert!(
            begun.elapsed() < timeout,
            "the operator is not Ready with {replicas} replicas after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_and_uninstall() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = stash_testenv::shared()
        .await
        .expect("the cluster (scripts/test.sh starts it)");
    let client = cp.client();
    assert!(
        Api::<Deployment>::namespaced(client.clone(), "stash-system")
            .get_opt("stash-operator")
            .await
            .expect("get")
            .is_none(),
        "this test needs a cluster without stash-rs (scripts/test.sh runs it before installing the manifest)"
    );
    let helm = helm_bin();
    let work = tempfile::tempdir().expect("helm home");
    let helm_cmd = |args: &[&str]| {
        let mut c = Command::new(&helm);
        c.env("KUBECONFIG", &cp.kubeconfig)
            .env("HELM_CACHE_HOME", work.path().join("cache"))
            .env("HELM_CONFIG_HOME", work.path().join("config"))
            .env("HELM_DATA_HOME", work.path().join("data"))
            .args(args);
        c
    };
    let chart = root().join("deploy/helm/stash-rs");
    let chart = chart.to_string_lossy();
    // Whatever fails below, the release is gone afterwards: the suite installs the committed
    // manifest on this cluster next, and a release left behind would own its objects.
    let mut cleanup = Uninstall(Some(helm_cmd(&[
        "uninstall",
        "stash-rs",
        "--namespace",
        "stash-system",
        "--wait",
        "--timeout",
        "180s",
        "--ignore-not-found",
    ])));

    let begun = Instant::now();
    run(
        &mut helm_cmd(&[
            "install",
            "stash-rs",
            &chart,
            "--namespace",
            "stash-system",
            "--create-namespace",
        ]),
        "helm install",
    );
    let took = wait_ready(&client, 2, Duration::from_secs(240)).await;
    stash_admission::xray(&client, Duration::from_secs(60))
        .await
        .expect("the chart's validating webhook refuses an invalid Repository");
    let available = run(
        cp.kubectl().expect("kubectl").args([
            "wait",
            "--for=condition=Available",
            "--timeout=120s",
            "apiservice/v1alpha1.repositories.stash.appscode.com",
        ]),
        "APIService Available",
    );
    assert!(available.contains("condition met"), "{available}");
    stash_testenv::report(&format!(
        "helm: installed, operator Ready {:.1}s after `helm install` returned ({:.1}s in all)",
        took.as_secs_f64(),
        begun.elapsed().as_secs_f64()
    ));

    run(
        &mut helm_cmd(&[
            "upgrade",
            "stash-rs",
            &chart,
            "--namespace",
            "stash-system",
            "--set",
            "replicas=1",
            "--set",
            "operator.logLevel=debug",
        ]),
        "helm upgrade",
    );
    let took = wait_ready(&client, 1, Duration::from_secs(240)).await;
    let d = Api::<Deployment>::namespaced(client.clone(), "stash-system")
        .get("stash-operator")
        .await
        .expect("deployment");
    let env = d
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug")),
        "the upgrade's values are rolled out: {env:?}"
    );
    let history = run(
        &mut helm_cmd(&["history", "stash-rs", "--namespace", "stash-system"]),
        "helm history",
    );
    assert!(
        history.contains("deployed") && history.lines().count() == 3,
        "two revisions:\n{history}"
    );
    stash_testenv::report(&format!(
        "helm: upgraded to 1 replica at log level debug, Ready {:.1}s after `helm upgrade`",
        took.as_secs_f64()
    ));

    run(
        cleanup.0.as_mut().expect("not uninstalled yet"),
        "helm uninstall",
    );
    cleanup.0 = None;
    assert!(
        Api::<Deployment>::namespaced(client.clone(), "stash-system")
            .get_opt("stash-operator")
            .await
            .expect("get")
            .is_none(),
        "uninstalled"
    );
    let leftover = run(
        cp.kubectl().expect("kubectl").args([
            "get",
            "validatingwebhookconfigurations,mutatingwebhookconfigurations,apiservices",
            "-o",
            "name",
        ]),
        "list registrations",
    );
    assert!(
        !leftover.contains("admission.stash.appscode.com")
            && !leftover.contains("v1alpha1.repositories.stash.appscode.com"),
        "the chart's registrations are gone: {leftover}"
    );
}

/// `helm uninstall`, run when dropped unless taken (the test's own uninstall takes it).
struct Uninstall(Option<Command>);

impl Drop for Uninstall {
    fn drop(&mut self) {
        if let Some(mut uninstall) = self.0.take() {
            let out = uninstall.output();
            eprintln!("helm uninstall after a failure: {out:?}");
        }
    }
}
