//! The restore init-container ([`crate::restore_host`]) up to restic: the host it is, what the
//! restore host machine decides from the session, the restore Lease, and the failures before
//! restic runs.
use std::path::PathBuf;

use http::Method;
use serde_json::{Value, json};
use stash_testenv::scripted::{self, Exchange, expect, get_not_found};

use super::{REPOSITORIES, STASH, host_entry, stash_object};
use crate::restore_host::{Options, run_with};

/// The pod of the tests (a Deployment's: host `host-0`).
const POD: &str = "app-6d4cf56db6-x7k2p";
/// Its events' reporting controller: `stash-restore-<pod>`.
const CONTROLLER: &str = "stash-restore-app-6d4cf56db6-x7k2p";
/// The restore Lease of Deployment `app`.
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/n/leases/lock-deployment-app-restore";

/// `--restore-session rs` of pod [`POD`] in namespace `n` on node `node-1`, restore model
/// `model`. The storage Secret's directory does not exist: restic can never start.
fn options(model: &str) -> Options {
    Options {
        restore_session: "rs".into(),
        restore_model: model.into(),
        secret_dir: PathBuf::from("/nonexistent/stash-secret"),
        scratch_dir: PathBuf::from("/nonexistent/stash-scratch"),
        enable_cache: false,
        max_connections: 0,
        metrics_enabled: false,
        pushgateway_url: String::new(),
        target_dir: PathBuf::from("/nonexistent/stash-restore-target"),
        namespace: "n".into(),
        pod_name: POD.into(),
        node_name: "node-1".into(),
        pod_ordinal: None,
    }
}

/// Run the restore command of `opts` against the scripted `script`: its result (the error's
/// message), once every request in the script came and nothing else.
async fn restore(opts: Options, script: Vec<Exchange>) -> Result<(), String> {
    let (client, server) = scripted::client();
    let server = server.run(script);
    let result = run_with(client, opts).await;
    server.verify().await;
    result.map_err(|e| e.to_string())
}

/// RestoreSession `rs` restoring `/data` of `target` (a `ref`) from Repository `repo` with
/// `rules`; `status` as given.
fn restore_session(target: Value, rules: Value, status: Value) -> Value {
    stash_object(
        "RestoreSession",
        "rs",
        json!({
            "repository": {"name": "repo"},
            "target": {"ref": target, "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            "rules": rules,
        }),
        status,
    )
}

/// Deployment `app`.
fn deployment() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"})
}

/// RestoreSession `rs` of Deployment `app`, every host restoring `/data`, with `status`.
fn session(status: Value) -> Value {
    restore_session(deployment(), json!([{"paths": ["/data"]}]), status)
}

/// RestoreSession `rs` of Deployment `app`, running, whose only rule is for `host-1`.
fn no_rule_for_host_0() -> Value {
    let rules = json!([{"targetHosts": ["host-1"], "paths": ["/data"]}]);
    restore_session(deployment(), rules, json!({"phase": "Running"}))
}

fn get_session(rs: Value) -> Exchange {
    expect(Method::GET, format!("{STASH}/restoresessions/rs")).reply(200, rs)
}

/// The watch of a pending session: its initial LIST (answering `listed` at resourceVersion
/// 10), then the WATCH from there (answering `events`).
fn watch_session(listed: Value, events: Vec<Value>) -> [Exchange; 2] {
    let sessions = format!("{STASH}/restoresessions?&fieldSelector=metadata.name%3Drs");
    let list = json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSessionList",
                      "metadata": {"resourceVersion": "10"}, "items": [listed]});
    [
        expect(Method::GET, format!("{sessions}&limit=500")).reply(200, list),
        expect(
            Method::GET,
            format!(
                "{STASH}/restoresessions?&watch=true&timeoutSeconds=290&fieldSelector=metadata.name%3Drs&allowWatchBookmarks=true&resourceVersion=10"
            ),
        )
        .watch_events(events),
    ]
}

/// The repository `repo` (a REST server, storage Secret `s`).
fn get_repository() -> Exchange {
    expect(Method::GET, format!("{REPOSITORIES}/repo")).reply(
        200,
        json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
            "metadata": {"name": "repo", "namespace": "n", "uid": "uid-repo", "resourceVersion": "4"},
            "spec": {"backend": {"rest": {"url": "http://rest:8000/repo"}, "storageSecretName": "s"}},
        }),
    )
}

/// Host `host-0`'s `Failed` entry: hostname, phase, a duration and an error that contains
/// `error`, nothing else.
fn failed_entry(error: &'static str) -> Exchange {
    host_entry("RestoreSession", "rs", "host-0", move |e| {
        assert_eq!(e["hostname"], "host-0");
        assert_eq!(e["phase"], "Failed");
        assert!(e["duration"].is_string(), "duration: {e}");
        let got = e["error"].as_str().expect("error");
        assert!(got.contains(error), "error {got:?} names {error:?}");
        assert_eq!(e.as_object().map(|o| o.len()), Some(4), "{e}");
    })
}

/// Host `host-0`'s `FailedHostRestore` warning, whose note contains `error`.
fn failed_event(error: &'static str) -> Exchange {
    scripted::event_by(CONTROLLER, "n", "Warning", "FailedHostRestore", move |n| {
        assert!(n.starts_with("host host-0: "), "{n}");
        assert!(n.contains(error), "{n} names {error:?}");
    })
    .body(|b| assert_eq!(b["regarding"]["name"], "rs"))
}

#[tokio::test]
async fn a_host_that_already_reported_does_nothing_more() {
    // A restarted pod: its host's entry is there, the session still runs. One GET, no Lease,
    // no Repository, no entry, no event.
    for model in ["init-container", "job"] {
        let rs = session(json!({"phase": "Running", "stats": [
            {"hostname": "host-0", "phase": "Failed", "error": "earlier"},
        ]}));
        assert_eq!(restore(options(model), vec![get_session(rs)]).await, Ok(()));
    }
}

#[tokio::test]
async fn each_workload_kind_names_its_host_for_the_reported_check() {
    // StatefulSet: the pod's ordinal; DaemonSet: the node; a restore Job's `--pod-ordinal`
    // (volumeClaimTemplates): that ordinal. The session runs and only that host's entry is
    // there: any other name would go on to restore (and ask the server more).
    let cases = [
        ("StatefulSet", "db", "db-2", None, "host-2"),
        ("DaemonSet", "agent", "agent-x9f2q", None, "node-1"),
        ("Deployment", "app", POD, Some(3), "host-3"),
    ];
    for (kind, name, pod, ordinal, host) in cases {
        let rs = restore_session(
            json!({"apiVersion": "apps/v1", "kind": kind, "name": name}),
            json!([{"paths": ["/data"]}]),
            json!({"phase": "Running", "stats": [{"hostname": host, "phase": "Succeeded"}]}),
        );
        let mut opts = options("job");
        opts.pod_name = pod.into();
        opts.pod_ordinal = ordinal;
        assert_eq!(
            restore(opts, vec![get_session(rs)]).await,
            Ok(()),
            "{kind} {pod}"
        );
    }
}

#[tokio::test]
async fn a_session_that_ended_before_this_host_started_leaves_nothing_to_do() {
    for phase in ["Succeeded", "Failed", "Unknown"] {
        let rs = session(json!({"phase": phase, "stats": [{"hostname": "host-1"}]}));
        let result = restore(options("init-container"), vec![get_session(rs)]).await;
        assert_eq!(result, Ok(()), "{phase}");
    }
}

#[tokio::test]
async fn a_pending_session_is_watched_until_it_ends_or_goes() {
    // Failed while this host waited: nothing to do. Deleted: an error (the pod cannot tell
    // whether its data should have been restored).
    let modified = json!({"type": "MODIFIED", "object": session(json!({"phase": "Failed"}))});
    let deleted = json!({"type": "DELETED", "object": session(json!({"phase": "Pending"}))});
    for (event, want) in [
        (modified, Ok(())),
        (deleted, Err("RestoreSession rs was deleted".to_owned())),
    ] {
        let mut script = vec![get_session(session(json!({"phase": "Pending"})))];
        script.extend(watch_session(session(json!({})), vec![event]));
        assert_eq!(restore(options("init-container"), script).await, want);
    }
}

#[tokio::test]
async fn a_host_that_fails_before_restic_reports_failed_with_a_warning() {
    // The job model (no restore Lease). No rule for the host: the Repository is not even
    // read. No storage Secret: restic cannot start.
    let running = session(json!({"phase": "Running", "stats": [{"hostname": "host-1"}]}));
    let cases = [
        (
            vec![get_session(no_rule_for_host_0())],
            "no restore rule matches host host-0",
        ),
        (
            vec![get_session(running), get_repository()],
            "RESTIC_PASSWORD",
        ),
    ];
    for (mut script, error) in cases {
        script.extend([failed_entry(error), failed_event(error)]);
        let e = restore(options("job"), script).await.expect_err(error);
        assert!(e.starts_with("restore of host host-0 failed: "), "{e}");
        assert!(e.contains(error), "{e}");
    }
}

#[tokio::test]
async fn the_init_container_restores_under_the_workloads_lease_and_gives_it_back_before_the_event()
{
    // The session starts while the host waits (a watch, not a poll); the Repository is gone:
    // the host fails, reports it, releases the Lease, then publishes the warning.
    let running = json!({"type": "MODIFIED", "object": session(json!({"phase": "Running"}))});
    let mut script = vec![get_session(session(json!({"phase": "Pending"})))];
    script.extend(watch_session(
        session(json!({"phase": "Pending"})),
        vec![running],
    ));
    let held = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                      "metadata": {"name": "lock-deployment-app-restore", "namespace": "n", "resourceVersion": "12"},
                      "spec": {"holderIdentity": POD, "leaseDurationSeconds": 15}});
    script.extend([
        get_not_found(LEASE),
        expect(
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/n/leases?",
        )
        .body(|b| {
            assert_eq!(b["metadata"]["name"], "lock-deployment-app-restore");
            assert_eq!(b["spec"]["holderIdentity"], POD);
            assert_eq!(b["spec"]["leaseDurationSeconds"], 15);
        })
        .echo(201),
        // Decided again under the Lease, from the session as it is now.
        get_session(session(json!({"phase": "Running"}))),
        get_not_found(format!("{REPOSITORIES}/repo")),
        failed_entry("Repository repo: "),
        expect(Method::GET, LEASE).reply(200, held),
        expect(Method::PUT, format!("{LEASE}?"))
            .body(|b| {
                assert_eq!(b["metadata"]["resourceVersion"], "12");
                assert_eq!(b["spec"].get("holderIdentity"), None, "released: {b}");
            })
            .echo(200),
        failed_event("Repository repo: "),
    ]);
    let e = restore(options("init-container"), script)
        .await
        .expect_err("failed");
    assert!(
        e.starts_with("restore of host host-0 failed: Repository repo: "),
        "{e}"
    );
}

#[tokio::test]
async fn a_refused_entry_write_fails_the_host_without_an_event() {
    let invalid = scripted::failure(422, "Invalid", "status.stats: Invalid value");
    let script = vec![
        get_session(no_rule_for_host_0()),
        failed_entry("no restore rule").reply(422, invalid),
    ];
    let e = restore(options("job"), script).await.expect_err("refused");
    assert!(e.contains("status.stats: Invalid value"), "{e}");
}

#[tokio::test]
async fn a_pod_that_finds_its_host_restored_under_the_lease_gives_it_back_and_restores_nothing() {
    // Another pod of the same host (a Recreate Deployment's) restored while this one waited for
    // the Lease: the session read under the Lease has the host's entry, so nothing is restored
    // (no Repository read, no entry written, no event) and the Lease is given back.
    let running = session(json!({"phase": "Running"}));
    let restored = session(json!({"phase": "Running",
                                  "stats": [{"hostname": "host-0", "phase": "Succeeded"}]}));
    let held = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                      "metadata": {"name": "lock-deployment-app-restore", "namespace": "n", "resourceVersion": "7"},
                      "spec": {"holderIdentity": POD, "leaseDurationSeconds": 15}});
    let script = vec![
        get_session(running),
        get_not_found(LEASE),
        expect(
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/n/leases?",
        )
        .echo(201),
        get_session(restored),
        expect(Method::GET, LEASE).reply(200, held),
        expect(Method::PUT, format!("{LEASE}?"))
            .body(|b| assert_eq!(b["spec"].get("holderIdentity"), None, "released: {b}"))
            .echo(200),
    ];
    restore(options("init-container"), script)
        .await
        .expect("nothing to do is a success");
}
