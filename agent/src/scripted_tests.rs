//! The agents' commands against a scripted API server ([`stash_testenv::scripted`], the one
//! the operator's reconcile tests use): each test lists the requests the command must make, in
//! order, with the bodies it must write and the answers it gets, runs the command with that
//! server's client (`run_with`), and checks its result and that nothing else was asked.
//!
//! - [`update_status`]: the job model's last step, for a backup (the host entries applied to
//!   the BackupSession status as each host's field manager, the events, the Repository status)
//!   and for a restore;
//! - [`restore_host`]: the restore init-container (and the restore Job without a Task), up to
//!   restic: which host it is, the restore host machine's decision from the session (skip when
//!   already reported or ended, watch a pending session), the restore Lease of the
//!   init-container model, and the failures that come before restic runs (no rule for the
//!   host, no Repository, no storage Secret), each reported as the host's `Failed` entry with
//!   a warning event.
//!
//! Left to the e2e tests (`stash/tests/restore_e2e.rs`, `jobs_e2e.rs`): whatever needs restic
//! itself, i.e. a restore that runs (the snapshots chosen, the data restored, the `Succeeded`
//! entry it leads to), and the metrics pushed to a pushgateway.
use serde_json::{Value, json};
use stash_testenv::scripted::{self, Exchange};

mod restore_host;
mod update_status;

/// The namespace of every object.
const NS: &str = "n";
/// The namespaced path of the `v1beta1` Stash kinds.
const STASH: &str = "/apis/stash.appscode.com/v1beta1/namespaces/n";
/// The namespaced path of Repositories.
const REPOSITORIES: &str = "/apis/stash.appscode.com/v1alpha1/namespaces/n/repositories";

/// Host `host`'s own server-side apply of its entry in the status of `session` (a BackupSession
/// or RestoreSession, by `kind`): the body holds that entry alone, which `entry` checks.
/// Answered with the session (an applied status, not the patch: a session has a spec).
fn host_entry(
    kind: &'static str,
    session: &'static str,
    host: &str,
    entry: impl Fn(&Value) + Send + 'static,
) -> Exchange {
    let collection = match kind {
        "BackupSession" => "backupsessions",
        _ => "restoresessions",
    };
    scripted::apply_at(
        &format!("{STASH}/{collection}/{session}/status"),
        &format!("stash-host-{host}"),
    )
    .body(move |b| {
        assert_eq!(b["apiVersion"], "stash.appscode.com/v1beta1");
        assert_eq!(b["kind"], kind);
        assert_eq!(b["metadata"], json!({"name": session}));
        let stats = b["status"]["stats"].as_array().expect("status.stats");
        assert_eq!(stats.len(), 1, "one entry: {stats:?}");
        assert_eq!(
            b["status"].as_object().map(|s| s.len()),
            Some(1),
            "nothing but stats"
        );
        entry(&stats[0]);
    })
    .reply(200, stash_object(kind, session, json!({}), json!({})))
}

/// The Event `reason` about `session` (of `kind`) published as `controller`; `note` is its
/// note exactly.
fn session_event(
    controller: &'static str,
    kind: &'static str,
    session: &'static str,
    type_: &'static str,
    reason: &'static str,
    note: String,
) -> Exchange {
    scripted::event_by(controller, NS, type_, reason, move |n| assert_eq!(n, note)).body(move |b| {
        assert_eq!(b["regarding"]["kind"], kind);
        assert_eq!(b["regarding"]["name"], session);
        assert_eq!(b["regarding"]["namespace"], NS);
    })
}

/// A `v1beta1` Stash object of `kind` named `name` (uid `uid-<name>`), with `spec` and `status`.
fn stash_object(kind: &str, name: &str, spec: Value, status: Value) -> Value {
    json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": kind,
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "resourceVersion": "7"},
        "spec": spec,
        "status": status,
    })
}
