//! Metrics end to end: the sidecar pushes the §10 metrics to a real Prometheus pushgateway,
//! grouped by job and host, with the values restic reported; the operator serves its own.
use stash_e2e as support;

use std::{collections::BTreeMap, time::Duration};

use serde_json::json;
use support::*;

/// `name{labels} value` lines of `text` whose labels include every pair in `want`.
fn samples(text: &str, name: &str, want: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_push_their_backup_metrics_grouped_by_job_and_host() {
    let env = env().await;
    let cp = env.cp;
    let ns = cp.namespace("metrics").await.expect("namespace");
    let client = cp.client();
    let repo_dir = cp.dir().join("repos").join(&ns.name);
    std::fs::create_dir_all(&repo_dir).expect("repo dir");
    hostpath_repository(&client, &ns.name, &repo_dir, "pw").await;
    for i in 0..2 {
        generate_files(
            &pv_dir(&ns.name, &format!("data-web-{i}")).await,
            300 + i,
            6 + 3 * i as usize,
            1000,
        );
    }
    for doc in [
        statefulset_with_claims("web", 2),
        json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration", "metadata": {"name": "web-backup"},
               "spec": {"repository": {"name": "repo"}, "schedule": "0 0 1 1 *",
                        "target": {"ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web"},
                                   "directories": ["/source/data"],
                                   "volumeMounts": [{"name": "data", "mountPath": "/source/data"}]}}}),
    ] {
        apply(&client, &ns.name, doc).await;
    }
    wait_rolled_out(
        &client,
        &ns.name,
        Workload::StatefulSet("web", 2),
        Injected::Sidecar,
        Duration::from_secs(150),
    )
    .await;
    let s = run_backup_session(
        &client,
        &ns.name,
        "web-backup",
        "m1",
        Duration::from_secs(150),
    )
    .await;
    let status = s.status.expect("status");

    // The pushgateway holds one group per host, with the numbers restic reported (a host pushes
    // right after its report, so the groups may land a moment after the session ends).
    let text = eventually("both hosts' groups", Duration::from_secs(60), || async {
        let text = pushgateway_metrics().await;
        ["host-0", "host-1"]
            .iter()
            .all(|h| {
                let labels = [("job", "web-backup"), ("Host", *h)];
                !samples(&text, "stash_backup_files_total", &labels).is_empty()
            })
            .then_some(text)
    })
    .await;
    let files: BTreeMap<String, i32> = status
        .stats
        .iter()
        .map(|h| {
            (
                h.hostname.clone().unwrap_or_default(),
                h.snapshots[0]
                    .file_stats
                    .as_ref()
                    .and_then(|f| f.total_files)
                    .unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(files.len(), 2);
    for (host, total) in &files {
        let labels = [
            ("job", "web-backup"),
            ("Host", host.as_str()),
            ("kind", "StatefulSet"),
            ("name", "web"),
        ];
        assert_eq!(
            samples(&text, "stash_backup_session_success", &labels),
            [1.0],
            "{host}:\n{text}"
        );
        assert_eq!(
            samples(&text, "stash_backup_files_total", &labels),
            [f64::from(*total)],
            "{host}"
        );
        assert_eq!(samples(&text, "stash_repository_integrity", &labels), [1.0]);
        let size = samples(&text, "stash_backup_data_size_bytes", &labels);
        assert_eq!(size.len(), 1);
        assert!(size[0] > 0.0);
    }
    // Files differ per host (6 and 9 files), so neither host overwrote the other's group.
    assert_eq!(files["host-0"], 6);
    assert_eq!(files["host-1"], 9);
    // restic agrees on the repository's snapshot count.
    let count = restic_snapshots(&repo_dir.to_string_lossy(), "pw").len() as f64;
    let counts = samples(
        &text,
        "stash_repository_snapshot_count",
        &[("job", "web-backup")],
    );
    assert!(counts.contains(&count), "{counts:?} vs restic {count}");

    // The operator serves its own metrics.
    let own = operator_metrics().await;
    assert!(
        own.contains("stash_operator_reconciles_total{controller=\"backupsession\"}"),
        "{own}"
    );
    assert!(own.contains("stash_operator_leader 1"));
    assert_no_illegal_transitions().await;
}
