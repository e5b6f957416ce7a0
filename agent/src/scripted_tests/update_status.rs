//! `update-status` ([`crate::update_status`]): what `output.json` becomes in the session's
//! status, the events and the Repository status.
use std::path::PathBuf;

use http::Method;
use serde_json::{Value, json};
use stash_core::jobs::output::Output;
use stash_testenv::scripted::{self, Exchange, expect, failure};

use super::{REPOSITORIES, STASH, host_entry, session_event, stash_object};
use crate::update_status::{Options, run_with};

/// The events' reporting controller: `stash-job-<pod>`.
const CONTROLLER: &str = "stash-job-pod-1";

/// Which session `update-status` reports into: BackupSession `bs` (with Repository `repo`) or
/// RestoreSession `rs`, in namespace `n`.
#[derive(Clone, Copy, Debug)]
enum Session {
    Backup,
    Restore,
}

impl Session {
    const BOTH: [Session; 2] = [Session::Backup, Session::Restore];

    /// `--backup-session bs --repository repo`, or `--restore-session rs`.
    fn options(self) -> Options {
        let (backup, restore, repository) = match self {
            Session::Backup => ("bs", "", "repo"),
            Session::Restore => ("", "rs", ""),
        };
        Options {
            namespace: "n".into(),
            repository: repository.into(),
            backup_session: backup.into(),
            restore_session: restore.into(),
            output_dir: PathBuf::from("/output"),
            enable_status_subresource: "true".into(),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Session::Backup => "BackupSession",
            Session::Restore => "RestoreSession",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Session::Backup => "bs",
            Session::Restore => "rs",
        }
    }

    /// `GET` of the session (Running) with these host entries.
    fn get(self, stats: Value) -> Exchange {
        let (collection, spec) = match self {
            Session::Backup => (
                "backupsessions",
                json!({"invoker": {"apiGroup": "stash.appscode.com", "kind": "BackupConfiguration", "name": "bc"}}),
            ),
            Session::Restore => (
                "restoresessions",
                json!({"repository": {"name": "repo"}, "rules": [{"paths": ["/data"]}]}),
            ),
        };
        let status = json!({"phase": "Running", "totalHosts": 2, "stats": stats});
        expect(Method::GET, format!("{STASH}/{collection}/{}", self.name()))
            .reply(200, stash_object(self.kind(), self.name(), spec, status))
    }

    /// Host `host`'s entry in the session's status, exactly `want`.
    fn entry(self, host: &str, want: Value) -> Exchange {
        host_entry(self.kind(), self.name(), host, move |e| {
            assert_eq!(e, &want)
        })
    }

    /// The event `reason` about the session, with exactly this note.
    fn event(self, type_: &'static str, reason: &'static str, note: &str) -> Exchange {
        session_event(
            CONTROLLER,
            self.kind(),
            self.name(),
            type_,
            reason,
            note.into(),
        )
    }

    /// One host's conversation: the session read (with the entries `before`), the host's entry
    /// written (exactly `written`), the session read again, and `event`.
    fn one_host(self, before: Value, written: &Value, event: Exchange) -> Vec<Exchange> {
        let host = written["hostname"].as_str().expect("hostname");
        vec![
            self.get(before),
            self.entry(host, written.clone()),
            self.get(json!([written])),
            event,
        ]
    }
}

/// Run `update-status` with `output.json` `out` against the scripted `script`: its result (the
/// error's message), once every request in the script came and nothing else.
async fn update_status(opts: Options, out: Value, script: Vec<Exchange>) -> Result<(), String> {
    let output: Output = serde_json::from_value(out).expect("output.json");
    let (client, server) = scripted::client();
    let server = server.run(script);
    let result = run_with(client, &opts, &output, "pod-1").await;
    server.verify().await;
    result.map_err(|e| e.to_string())
}

/// A successful host's entry of `output.json` (snapshot of `/data`).
fn succeeded(host: &str) -> Value {
    json!({
        "hostname": host, "phase": "Succeeded", "duration": "3.5s",
        "snapshots": [{
            "name": "bs-1a2b3c4d", "directory": "/data", "size": "1.000 MiB", "uploaded": "12 KiB",
            "processingTime": "2s",
            "fileStats": {"totalFiles": 4, "newFiles": 1, "modifiedFiles": 0, "unmodifiedFiles": 3},
        }],
    })
}

/// What `output.json` says of the repository after a successful backup.
fn repository_stats() -> Value {
    json!({"integrity": true, "size": "10.123 MiB", "snapshotCount": 3, "snapshotsRemovedOnLastCleanup": 1})
}

/// Repository `repo` (resourceVersion 4) with `status`.
fn repository(status: Value) -> Value {
    json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
        "metadata": {"name": "repo", "namespace": "n", "uid": "uid-repo", "resourceVersion": "4"},
        "spec": {"backend": {"rest": {"url": "http://rest:8000/"}, "storageSecretName": "s"}},
        "status": status,
    })
}

/// The read of Repository `repo`'s status, answering `status`.
fn get_repository_status(status: Value) -> Exchange {
    expect(Method::GET, format!("{REPOSITORIES}/repo/status")).reply(200, repository(status))
}

/// The agents' server-side apply of the backup figures in Repository `repo`'s status, from
/// what was read (resourceVersion 4: another agent's write in between is a conflict);
/// `figures` checks the status applied.
fn apply_repository_figures(figures: impl Fn(&Value) + Send + 'static) -> Exchange {
    scripted::apply_at(&format!("{REPOSITORIES}/repo/status"), "stash-agent")
        .body(move |b| {
            assert_eq!(b["apiVersion"], "stash.appscode.com/v1alpha1");
            assert_eq!(b["kind"], "Repository");
            assert_eq!(
                b["metadata"],
                json!({"name": "repo", "resourceVersion": "4"})
            );
            figures(&b["status"]);
        })
        .reply(200, repository(json!({})))
}

#[tokio::test]
async fn a_successful_host_is_applied_to_the_backup_session_with_an_event_and_the_repository_updated()
 {
    let before = json!({"firstBackupTime": "2024-01-01T00:00:00Z", "lastBackupTime": "2024-01-01T00:00:00Z",
                        "snapshotCount": 2, "integrity": false, "size": "9 MiB"});
    let b = Session::Backup;
    let event = b.event(
        "Normal",
        "SuccessfulHostBackup",
        "backup of host host-0 succeeded",
    );
    let mut script = b.one_host(json!([]), &succeeded("host-0"), event);
    script.extend([
        get_repository_status(before),
        apply_repository_figures(|s| {
            let last = s["lastBackupTime"].as_str().expect("lastBackupTime");
            assert!(last > "2024-01-01T00:00:00Z", "now: {last}");
            // The figures of output.json, the first backup's time kept, nothing else.
            assert_eq!(
                s,
                &json!({"integrity": true, "size": "10.123 MiB", "snapshotCount": 3,
                        "snapshotsRemovedOnLastCleanup": 1,
                        "firstBackupTime": "2024-01-01T00:00:00Z", "lastBackupTime": last}),
            );
        }),
    ]);
    let out = json!({"hostBackupStats": [succeeded("host-0")], "repository": repository_stats()});
    assert_eq!(update_status(b.options(), out, script).await, Ok(()));
}

#[tokio::test]
async fn a_failed_host_is_written_failed_with_a_warning_and_fails_the_command_leaving_the_repository()
 {
    // An entry that says Succeeded but carries an error is Failed; upstream's errored entry
    // (neither hostname nor phase) is host-0's, Failed. No Repository status either way (the
    // output's figures are there): the backup failed.
    let mut says_succeeded = succeeded("host-1");
    says_succeeded["error"] = json!("restic: boom");
    let mut failed = says_succeeded.clone();
    failed["phase"] = json!("Failed");
    let upstream = json!({"error": "repository locked"});
    let named = json!({"hostname": "host-0", "phase": "Failed", "error": "repository locked"});
    let cases = [
        (says_succeeded, failed, "restic: boom"),
        (upstream, named, "repository locked"),
    ];
    for (entry, written, error) in cases {
        let host = written["hostname"].as_str().expect("hostname").to_owned();
        let note = format!("backup of host {host} failed: {error}");
        let b = Session::Backup;
        let event = b.event("Warning", "FailedHostBackup", &note);
        let script = b.one_host(json!([]), &written, event);
        let out = json!({"hostBackupStats": [entry], "repository": repository_stats()});
        let result = update_status(b.options(), out, script).await;
        assert_eq!(result, Err(format!("host {host}: {error}")));
    }
}

#[tokio::test]
async fn a_retried_pod_rewrites_the_entry_its_host_already_reported_beside_a_new_one() {
    // host-0 reported on the pod's first try (Reported: its entry is rewritten), host-1 is new
    // (Reporting); both are written, each as its own field manager, in output.json's order.
    let mut earlier = succeeded("host-0");
    earlier["duration"] = json!("1s");
    let b = Session::Backup;
    let script = vec![
        b.get(json!([earlier])),
        b.entry("host-0", succeeded("host-0")),
        b.entry("host-1", succeeded("host-1")),
        b.get(json!([succeeded("host-0"), succeeded("host-1")])),
        b.event(
            "Normal",
            "SuccessfulHostBackup",
            "backup of host host-0 succeeded",
        ),
        b.event(
            "Normal",
            "SuccessfulHostBackup",
            "backup of host host-1 succeeded",
        ),
        get_repository_status(json!({})),
        apply_repository_figures(|s| {
            assert_eq!(s["snapshotCount"], 3);
            assert!(s["lastBackupTime"].is_string(), "{s}");
            assert_eq!(
                s["firstBackupTime"], s["lastBackupTime"],
                "the first backup"
            );
        }),
    ];
    let out = json!({"hostBackupStats": [succeeded("host-0"), succeeded("host-1")],
                     "repository": repository_stats()});
    assert_eq!(update_status(b.options(), out, script).await, Ok(()));
}

#[tokio::test]
async fn a_refused_entry_write_fails_the_command_before_any_event() {
    let b = Session::Backup;
    let refused = failure(403, "Forbidden", "backupsessions/status is forbidden");
    let script = vec![
        b.get(json!([])),
        b.entry("host-0", succeeded("host-0")).reply(403, refused),
    ];
    let out = json!({"hostBackupStats": [succeeded("host-0")], "repository": repository_stats()});
    let e = update_status(b.options(), out, script)
        .await
        .expect_err("refused");
    assert!(e.contains("backupsessions/status is forbidden"), "{e}");
}

#[tokio::test]
async fn an_output_without_entries_is_an_error_and_writes_nothing() {
    for s in Session::BOTH {
        let script = vec![s.get(json!([])), s.get(json!([]))];
        let out = json!({"repository": repository_stats()});
        let want = match s {
            Session::Backup => "output.json has no backup entry",
            Session::Restore => "output.json has no restore entry",
        };
        assert_eq!(
            update_status(s.options(), out, script).await,
            Err(want.into())
        );
    }
}

#[tokio::test]
async fn without_a_session_nothing_is_asked() {
    let mut opts = Session::Backup.options();
    opts.backup_session.clear();
    let out = json!({"hostBackupStats": [succeeded("host-0")]});
    assert_eq!(
        update_status(opts, out, vec![]).await,
        Err("one of --backup-session and --restore-session is required".into())
    );
}

#[tokio::test]
async fn a_restored_host_is_applied_to_the_restore_session_with_an_event_also_after_a_retry() {
    // A first try, and a retried pod whose host already reported (Reported: rewritten).
    let entry = json!({"hostname": "host-2", "phase": "Succeeded", "duration": "2.25s"});
    let earlier = json!({"hostname": "host-2", "phase": "Failed", "error": "x"});
    for before in [json!([]), json!([earlier])] {
        let r = Session::Restore;
        let event = r.event("Normal", "SuccessfulHostRestore", "host host-2 restored");
        let script = r.one_host(before, &entry, event);
        let out = json!({"hostRestoreStats": [entry]});
        assert_eq!(update_status(r.options(), out, script).await, Ok(()));
    }
}

#[tokio::test]
async fn a_failed_restore_is_written_failed_with_a_warning_and_fails_the_command() {
    let r = Session::Restore;
    let written = json!({"hostname": "host-0", "phase": "Failed", "error": "no snapshot of /data"});
    let note = "restore of host host-0 failed: no snapshot of /data";
    let script = r.one_host(
        json!([]),
        &written,
        r.event("Warning", "FailedHostRestore", note),
    );
    let out = json!({"hostRestoreStats": [{"error": "no snapshot of /data"}]});
    assert_eq!(
        update_status(r.options(), out, script).await,
        Err("host host-0: no snapshot of /data".into())
    );
}
