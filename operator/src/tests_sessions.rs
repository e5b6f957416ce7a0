//! The BackupSession and RestoreSession controllers against a scripted API server.
//!
//! Their reconcilers are private to their files, so each test runs the controller itself
//! (`run`) on the test context with the shared watch of its kind ([`super::stash_index::stores`]):
//! the watch lists the sessions once (the script's first request; the watch that follows stays
//! open), each reconcile then reads the other sessions of its configuration from the store that
//! watch feeds, and its BackupConfiguration and Repository from the shared stores the test
//! fills ([`Seed`]), so a LIST or GET of them per reconcile fails the test.
//! A test waits until the reconciles it expects have ended (the controller's duration
//! histogram counts them), then verifies the conversation.
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};

use std::sync::Arc;

use kube::{Api, ResourceExt};

use super::{Exchange, Seed, backup_configuration, event, expect, failure, test_ctx_fed};
use crate::{Ctx, backup_session, restore_session, stores::Feeds};

const STASH: &str = "/apis/stash.appscode.com";
const BACKUP_SESSIONS: &str = "/apis/stash.appscode.com/v1beta1/backupsessions";
const RESTORE_SESSIONS: &str = "/apis/stash.appscode.com/v1beta1/restoresessions";

/// The controller's initial LIST of `collection` (every namespace), answered with `items` at
/// resourceVersion 10.
fn initial_list(collection: &str, kind: &str, items: Vec<Value>) -> Exchange {
    expect(Method::GET, format!("{collection}?&limit=500")).reply(
        200,
        json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": kind,
               "metadata": {"resourceVersion": "10"}, "items": items}),
    )
}

/// The watch after the initial list: it stays open, and may come at any point.
fn watch(collection: &str) -> Exchange {
    expect(
        Method::GET,
        format!("{collection}?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=10"),
    )
    .hang()
}

/// Wait until `n` reconciles of `controller` have ended.
async fn reconciled(ctx: &Ctx, controller: &str, n: u64) {
    let line =
        format!("stash_operator_reconcile_duration_seconds_count{{controller=\"{controller}\"}} ");
    let ended = || {
        ctx.metrics
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix(&line)
                    .and_then(|c| c.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    for _ in 0..200 {
        if ended() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} of {n} {controller} reconciles ended", ended());
}

/// The failed reconciles of `controller`, by error label.
fn failures(ctx: &Ctx, controller: &str) -> Vec<String> {
    let prefix =
        format!("stash_operator_reconcile_failures_total{{controller=\"{controller}\",error=\"");
    ctx.metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| l.split_once('"'))
        .map(|(e, _)| e.to_string())
        .collect()
}

/// A creation time a minute ago (well inside the session deadline).
fn a_minute_ago() -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60)).to_string()
}

fn backup_session(name: &str, created: &str, status: Value) -> Value {
    json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
        "metadata": {"name": name, "namespace": "n", "uid": format!("uid-{name}"),
                     "resourceVersion": "8", "creationTimestamp": created,
                     "labels": {"stash.appscode.com/backup-configuration": "bc"}},
        "spec": {"backupConfiguration": {"name": "bc"}},
        "status": status,
    })
}

/// The shared stores: BackupConfiguration `bc` (`spec` merged over the fixture's) and
/// Repository `repo`, which has had backups (so its other users are not looked at).
fn stores(spec: Value) -> Seed {
    Seed {
        configurations: vec![serde_json::to_value(backup_configuration(spec)).expect("json")],
        repositories: vec![json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
            "metadata": {"name": "repo", "namespace": "n"},
            "spec": {"backend": {"s3": {"endpoint": "http://minio:9000", "bucket": "b"},
                                 "storageSecretName": "s3-secret"}},
            "status": {"lastBackupTime": "2026-01-01T00:00:00Z"},
        })],
        ..Seed::default()
    }
}

/// The server-side apply of the operator's status fields of session `name` (`collection`:
/// `backupsessions` or `restoresessions`); answered with `after`.
fn apply_status(collection: &str, name: &str, after: Value) -> Exchange {
    expect(
        Method::PATCH,
        format!(
            "{STASH}/v1beta1/namespaces/n/{collection}/{name}/status?&force=true&fieldManager=stash-operator"
        ),
    )
    .body(|b| {
        assert_eq!(b["metadata"]["resourceVersion"], "8", "conflict-safe");
        assert!(b["status"].get("stats").is_none(), "the hosts own their entries");
    })
    .reply(200, after)
}

/// `obj` with `status`.
fn with_status(mut obj: Value, status: Value) -> Value {
    obj["status"] = status;
    obj
}

/// The decision carried out: the operator's status fields become exactly `status` (the object
/// is answered with them), then the machine's event `reason` of type `type_`.
fn decided(
    collection: &str,
    obj: &Value,
    status: Value,
    type_: &'static str,
    reason: &'static str,
    note: impl Fn(&str) + Send + 'static,
) -> [Exchange; 2] {
    let name = obj["metadata"]["name"].as_str().expect("name").to_string();
    let expected = status.clone();
    [
        apply_status(collection, &name, with_status(obj.clone(), status))
            .body(move |b| assert_eq!(b["status"], expected, "the status written")),
        event("n", type_, reason, note),
    ]
}

/// Session `new` skipped: its configuration is paused.
fn skipped_as_paused(new: &Value) -> [Exchange; 2] {
    decided(
        "backupsessions",
        new,
        json!({"phase": "Skipped", "reason": "BackupConfiguration is paused"}),
        "Warning",
        "BackupSessionSkipped",
        |note| assert_eq!(note, "BackupConfiguration is paused"),
    )
}

/// Run the BackupSession controller, fed by the shared BackupSession watch, until `n`
/// reconciles have ended, then verify.
async fn run_backup_sessions(ctx: &Arc<Ctx>, mut feeds: Feeds, server: super::ApiServer, n: u64) {
    let controller = backup_session::run(ctx.clone(), &mut feeds);
    let watch = feeds.sessions.run(
        Api::all(ctx.client.clone()),
        Default::default(),
        stash_index::stores::strip,
    );
    run_until(
        ctx,
        server,
        async move {
            tokio::join!(watch, controller);
        },
        "backupsession",
        n,
    )
    .await;
}

/// Run the RestoreSession controller, fed by the shared RestoreSession watch, until `n`
/// reconciles have ended, then verify.
async fn run_restore_sessions(ctx: &Arc<Ctx>, mut feeds: Feeds, server: super::ApiServer, n: u64) {
    let controller = restore_session::run(ctx.clone(), &mut feeds);
    let watch = feeds.restores.run(
        Api::all(ctx.client.clone()),
        Default::default(),
        stash_index::stores::strip,
    );
    run_until(
        ctx,
        server,
        async move {
            tokio::join!(watch, controller);
        },
        "restoresession",
        n,
    )
    .await;
}

/// Run a controller until `reconciles` of its reconciles named `name` have ended, then verify
/// the conversation.
async fn run_until<F>(ctx: &Ctx, server: super::ApiServer, run: F, name: &str, reconciles: u64)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let task = tokio::spawn(run);
    reconciled(ctx, name, reconciles).await;
    server.verify().await;
    task.abort();
}

// === BackupSession ===

#[tokio::test]
async fn a_new_backup_session_runs_with_its_sidecar_granted_and_siblings_read_from_the_store() {
    // The workload controller (the Role's only writer) has named the session: the store shows
    // it, nothing is written to the Role here.
    let (ctx, server, feeds) = with_sidecar_role(&["bc-new"]);
    let new = backup_session("bc-new", &a_minute_ago(), json!(null));
    let server = server.run_with_anytime(
        vec![initial_list(
            BACKUP_SESSIONS,
            "BackupSessionList",
            vec![
                backup_session(
                    "bc-old",
                    "2026-01-01T00:00:00Z",
                    json!({"phase": "Succeeded"}),
                ),
                new.clone(),
            ],
        )]
        .into_iter()
        // bc-old is finished: it is history, not in the store, and never reconciled. The
        // configuration, the Repository and the sidecar's Role are read from the stores.
        .chain(decided(
            "backupsessions",
            &new,
            json!({"phase": "Running", "totalHosts": 1}),
            "Normal",
            "BackupSessionJobCreated",
            |_| {},
        ))
        .collect(),
        vec![watch(BACKUP_SESSIONS)],
    );
    run_backup_sessions(&ctx, feeds, server, 1).await;
    assert_eq!(failures(&ctx, "backupsession"), Vec::<String>::new());
    let stored: Vec<String> = ctx
        .stores
        .sessions
        .state()
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert_eq!(stored, ["bc-new"]);
    assert_eq!(ctx.stores.history.lock().unwrap().len(), 1, "bc-old");
}

#[tokio::test]
async fn a_new_backup_session_waits_until_the_sidecars_role_names_it() {
    // The Role still names only an older session: the session is not started (no status
    // write, no event) and the reconcile is retried ("waiting"); the Role's change triggers it.
    let (ctx, server, feeds) = with_sidecar_role(&["bc-old"]);
    let new = backup_session("bc-new", &a_minute_ago(), json!(null));
    let server = server.run_with_anytime(
        vec![initial_list(
            BACKUP_SESSIONS,
            "BackupSessionList",
            vec![new],
        )],
        vec![watch(BACKUP_SESSIONS)],
    );
    run_backup_sessions(&ctx, feeds, server, 1).await;
    assert_eq!(failures(&ctx, "backupsession"), ["waiting"]);
}

/// A context whose stores hold the configuration, its Repository and the sidecar's Role as the
/// workload controller writes it, naming `sessions`.
fn with_sidecar_role(sessions: &[&str]) -> (Arc<Ctx>, super::ApiServerVerifier, Feeds) {
    let mut seed = stores(json!({}));
    seed.roles = vec![json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "deployment-app-stash-sidecar", "namespace": "n",
                     "labels": {"app.kubernetes.io/managed-by": "stash.appscode.com"}},
        "rules": crate::rbac::sidecar_rules("bc", "repo", "lease", sessions),
    })];
    test_ctx_fed(seed)
}

#[tokio::test]
async fn a_running_job_model_session_reads_its_job_from_the_store_and_fails_when_it_ended_without_a_report()
 {
    // The Job is in the shared store of stash-rs's Jobs: no GET of it. It completed, but the
    // host never reported: the machine fails the session.
    let mut seed = stores(json!({
        "task": {"name": "pvc-backup"},
        "target": {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "data"}},
    }));
    seed.jobs = vec![json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "stash-backup-bc-run", "namespace": "n",
                     "labels": {"app.kubernetes.io/managed-by": "stash.appscode.com"}},
        "spec": {"template": {"spec": {"containers": []}}},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    })];
    let (ctx, server, feeds) = test_ctx_fed(seed);
    let running = backup_session(
        "bc-run",
        &a_minute_ago(),
        json!({"phase": "Running", "totalHosts": 1}),
    );
    let server = server.run_with_anytime(
        vec![initial_list(
            BACKUP_SESSIONS,
            "BackupSessionList",
            vec![running.clone()],
        )]
        .into_iter()
        .chain(decided(
            "backupsessions",
            &running,
            json!({"phase": "Failed", "totalHosts": 1,
                   "reason": "backup Job finished but 1 of 1 host(s) never reported"}),
            "Warning",
            "BackupSessionFailedToExecute",
            |_| {},
        ))
        .collect(),
        vec![watch(BACKUP_SESSIONS)],
    );
    run_backup_sessions(&ctx, feeds, server, 1).await;
    assert_eq!(failures(&ctx, "backupsession"), Vec::<String>::new());
}

#[tokio::test]
async fn a_backup_session_created_while_another_runs_is_skipped_without_a_list() {
    let (ctx, server, feeds) = test_ctx_fed(stores(json!({})));
    let two_minutes_ago =
        (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(120)).to_string();
    let new = backup_session("bc-new", &a_minute_ago(), json!(null));
    let server = server.run_with_anytime(
        vec![
            initial_list(
                BACKUP_SESSIONS,
                "BackupSessionList",
                vec![
                    backup_session(
                        "bc-running",
                        &two_minutes_ago,
                        json!({"phase": "Running", "totalHosts": 1}),
                    ),
                    new.clone(),
                ],
            ),
        ]
        .into_iter()
        .chain(decided(
            "backupsessions",
            &new,
            json!({"phase": "Skipped",
                   "reason": "BackupSession bc-running of the same BackupConfiguration is running"}),
            "Warning",
            "BackupSessionSkipped",
            |note| assert!(note.contains("bc-running"), "{note}"),
        ))
        .collect(),
        // The running session's own reconcile waits for its host: it asks nothing.
        vec![watch(BACKUP_SESSIONS)],
    );
    run_backup_sessions(&ctx, feeds, server, 2).await;
    assert_eq!(failures(&ctx, "backupsession"), Vec::<String>::new());
}

#[tokio::test]
async fn a_backup_session_of_a_paused_configuration_is_skipped_without_reading_the_repository() {
    let (ctx, server, feeds) = test_ctx_fed(stores(json!({"paused": true})));
    let new = backup_session("bc-new", &a_minute_ago(), json!(null));
    let server = server.run_with_anytime(
        vec![
            // Paused (read from the store): the session cannot start.
            initial_list(BACKUP_SESSIONS, "BackupSessionList", vec![new.clone()]),
        ]
        .into_iter()
        .chain(skipped_as_paused(&new))
        .collect(),
        vec![watch(BACKUP_SESSIONS)],
    );
    run_backup_sessions(&ctx, feeds, server, 1).await;
}

#[tokio::test]
async fn a_configuration_not_in_its_store_yet_is_fetched_once_not_listed() {
    // The session's watch was faster than the configuration's: one GET decides.
    let (ctx, server, feeds) = test_ctx_fed(Seed::default());
    let new = backup_session("bc-new", &a_minute_ago(), json!(null));
    let server = server.run_with_anytime(
        vec![
            initial_list(BACKUP_SESSIONS, "BackupSessionList", vec![new.clone()]),
            expect(
                Method::GET,
                format!("{STASH}/v1beta1/namespaces/n/backupconfigurations/bc"),
            )
            .reply(
                200,
                serde_json::to_value(backup_configuration(json!({"paused": true}))).expect("json"),
            ),
        ]
        .into_iter()
        .chain(skipped_as_paused(&new))
        .collect(),
        vec![watch(BACKUP_SESSIONS)],
    );
    run_backup_sessions(&ctx, feeds, server, 1).await;
}

#[tokio::test]
async fn a_refused_backup_session_status_write_fails_the_reconcile_and_emits_nothing() {
    let (ctx, server, feeds) = test_ctx_fed(stores(json!({"paused": true})));
    let new = backup_session("bc-new", &a_minute_ago(), json!(null));
    let server = server.run_with_anytime(
        vec![
            initial_list(BACKUP_SESSIONS, "BackupSessionList", vec![new]),
            apply_status("backupsessions", "bc-new", json!({})).reply(
                422,
                failure(
                    422,
                    "Invalid",
                    "BackupSession.stash.appscode.com \"bc-new\" is invalid",
                ),
            ),
            // No event: the status write comes first, and the reconcile is retried.
        ],
        vec![watch(BACKUP_SESSIONS)],
    );
    run_backup_sessions(&ctx, feeds, server, 1).await;
    assert_eq!(failures(&ctx, "backupsession"), ["status"]);
}

// === RestoreSession ===

fn restore_session(finalizers: &[&str], spec: Value) -> Value {
    let mut base = json!({
        "repository": {"name": "repo"},
        "target": {"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                   "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        "rules": [{"paths": ["/data"]}],
    });
    if let (Some(b), Value::Object(s)) = (base.as_object_mut(), spec) {
        b.extend(s);
    }
    json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
        "metadata": {"name": "rs", "namespace": "n", "uid": "uid-rs", "resourceVersion": "8",
                     "creationTimestamp": a_minute_ago(), "finalizers": finalizers},
        "spec": base,
    })
}

const FINALIZER: &str = "stash.appscode.com";

#[tokio::test]
async fn a_restore_into_a_deployment_runs_with_one_host() {
    let (ctx, server, feeds) = test_ctx_fed(Seed::default());
    let rs = restore_session(&[FINALIZER], json!({}));
    let server = server.run_with_anytime(
        vec![
            // A Deployment restores as one host: nothing to read.
            initial_list(RESTORE_SESSIONS, "RestoreSessionList", vec![rs.clone()]),
        ]
        .into_iter()
        .chain(decided(
            "restoresessions",
            &rs,
            json!({"phase": "Running", "totalHosts": 1}),
            "Normal",
            "RestoreSessionRunning",
            |_| {},
        ))
        .collect(),
        vec![watch(RESTORE_SESSIONS)],
    );
    run_restore_sessions(&ctx, feeds, server, 1).await;
    assert_eq!(failures(&ctx, "restoresession"), Vec::<String>::new());
}

#[tokio::test]
async fn a_restore_rule_that_matches_no_host_fails_the_session_with_the_reason() {
    let (ctx, server, feeds) = test_ctx_fed(Seed::default());
    let rs = restore_session(
        &[FINALIZER],
        json!({"rules": [{"targetHosts": ["host-7"], "paths": ["/data"]}]}),
    );
    let server = server.run_with_anytime(
        vec![initial_list(
            RESTORE_SESSIONS,
            "RestoreSessionList",
            vec![rs.clone()],
        )]
        .into_iter()
        .chain(decided(
            "restoresessions",
            &rs,
            json!({"phase": "Failed", "reason": "no restore rule matches host(s): host-0"}),
            "Warning",
            "RestoreSessionFailedToExecute",
            |note| assert_eq!(note, "no restore rule matches host(s): host-0"),
        ))
        .collect(),
        vec![watch(RESTORE_SESSIONS)],
    );
    run_restore_sessions(&ctx, feeds, server, 1).await;
}

#[tokio::test]
async fn a_new_restore_session_gets_the_stash_finalizer_first() {
    let (ctx, server, feeds) = test_ctx_fed(Seed::default());
    let server = server.run_with_anytime(
        vec![
            initial_list(
                RESTORE_SESSIONS,
                "RestoreSessionList",
                vec![restore_session(&[], json!({}))],
            ),
            expect(
                Method::PATCH,
                format!("{STASH}/v1beta1/namespaces/n/restoresessions/rs?"),
            )
            .body(|b| {
                assert_eq!(
                    b[1],
                    json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]})
                );
            })
            .reply(200, restore_session(&[FINALIZER], json!({}))),
        ],
        vec![watch(RESTORE_SESSIONS)],
    );
    run_restore_sessions(&ctx, feeds, server, 1).await;
}

#[tokio::test]
async fn a_refused_restore_session_status_write_fails_the_reconcile() {
    let (ctx, server, feeds) = test_ctx_fed(Seed::default());
    let server = server.run_with_anytime(
        vec![
            initial_list(
                RESTORE_SESSIONS,
                "RestoreSessionList",
                vec![restore_session(&[FINALIZER], json!({}))],
            ),
            apply_status("restoresessions", "rs", json!({})).reply(
                422,
                failure(
                    422,
                    "Invalid",
                    "RestoreSession.stash.appscode.com \"rs\" is invalid",
                ),
            ),
        ],
        vec![watch(RESTORE_SESSIONS)],
    );
    run_restore_sessions(&ctx, feeds, server, 1).await;
    assert_eq!(failures(&ctx, "restoresession"), ["status"]);
}
