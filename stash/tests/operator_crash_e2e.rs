//! The operator killed (SIGKILL) in the middle of a backup and started again: the session
//! still ends `Succeeded`, with exactly one snapshot, and the new operator never attempted an
//! illegal phase change. A test binary of its own, since it kills the shared operator.
use stash_e2e as support;

use std::time::{Duration, Instant};

use kube::Api;
use serde_json::json;
use stash_crds::{BackupSession, backup_session::Phase};
use support::*;

const PASSWORD: &str = "crash-test-password";
const ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_survives_the_operator_being_killed_and_restarted() {
    let env = env().await;
    let client = env.cp.client();
    let ns_guard = env.cp.namespace("crash").await.expect("namespace");
    let ns = ns_guard.name.clone();
    let repo_dir = env.cp.dir().join("repos").join(&ns);
    std::fs::create_dir_all(&repo_dir).expect("repo dir");
    let source = pv_dir(&ns, "source-data").await;
    hostpath_repository(&client, &ns, &repo_dir, PASSWORD).await;
    deployment_with_pvc(&client, &ns, "app", "source-data").await;
    sidecar_backup(&client, &ns, "app", "repo", json!({})).await;

    let api = Api::<BackupSession>::namespaced(client.clone(), &ns);
    for round in 1..=ROUNDS {
        // Fresh data each round, so the backup is still running when the operator dies.
        generate_files(&source, 2024 + round as u64, 36, 4 << 20);
        let name = format!("survivor-{round}");
        create_backup_session(&client, &ns, "app-backup", &name).await;
        eventually("the session to be Running", Duration::from_secs(60), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let s = api.get(&name).await.ok()?;
                let st = s.status?;
                assert!(
                    !matches!(
                        st.phase,
                        Some(Phase::Succeeded | Phase::Failed | Phase::Skipped)
                    ),
                    "finished before the crash: {st:?}"
                );
                (st.phase == Some(Phase::Running)).then_some(())
            }
        })
        .await;
        // restic is still busy: no host has reported.
        let s = api.get(&name).await.expect("session");
        assert!(
            s.status.as_ref().is_some_and(|st| st.stats.is_empty()),
            "the backup is still running when the operator dies"
        );

        // Kill the leader: its container SIGKILLed through containerd (grace period 0 alone
        // still means SIGTERM and 2 s, during which the old leader could finish the session
        // itself), then its pod deleted at once (so the kubelet does not start it again under
        // the same identity; the Deployment replaces it). The standby replica takes the Lease
        // over once it expires.
        let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
            client.clone(),
            OPERATOR_NS,
        );
        let leader = leases
            .get("stash-operator")
            .await
            .expect("the operator's Lease")
            .spec
            .and_then(|s| s.holder_identity)
            .expect("a leader");
        let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), OPERATOR_NS);
        let container = pods
            .get(&leader)
            .await
            .expect("the leader's pod")
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().find(|c| c.name == "operator"))
            .and_then(|c| c.container_id)
            .expect("the leader's running container");
        env.cp
            .kill_container(&container)
            .expect("SIGKILL the leader's container");
        pods.delete(
            &leader,
            &kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("delete the leader pod");
        let killed_at = Instant::now();
        eprintln!("operator pod {leader} killed");

        let s = wait_session_ends(
            &client,
            &ns,
            &name,
            Phase::Succeeded,
            Duration::from_secs(150),
        )
        .await;
        eprintln!(
            "session Succeeded {:.1}s after the kill",
            killed_at.elapsed().as_secs_f64()
        );
        let status = s.status.clone().expect("status");
        assert_eq!(status.total_hosts, Some(1));
        assert_eq!(status.stats.len(), 1, "{status:?}");
        assert_eq!(status.stats[0].snapshots.len(), 1);
        let repo = repo_dir.to_string_lossy().to_string();
        let tag = stash_machines::backup_host::session_tag(&name);
        let snaps: Vec<_> = restic_snapshots(&repo, PASSWORD)
            .into_iter()
            .filter(|s| {
                s["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == &json!(tag)))
            })
            .collect();
        assert_eq!(snaps.len(), 1, "exactly one snapshot of {name}: {snaps:?}");
        assert_eq!(snaps[0]["hostname"], "host-0");
        assert_eq!(
            snaps[0]["short_id"].as_str(),
            status.stats[0].snapshots[0].name.as_deref()
        );
        // The new operator is the one that completed the session, legally.
        let now = leases
            .get("stash-operator")
            .await
            .expect("Lease")
            .spec
            .and_then(|s| s.holder_identity)
            .expect("a leader");
        assert_ne!(now, leader, "another replica leads after the kill");
        wait_operator_available(env.cp).await;
        assert_no_illegal_transitions().await;
        eprintln!("round {round}: {name} Succeeded after the leader was killed");
    }
    println!("operator killed during a backup: {ROUNDS} sessions Succeeded, one snapshot each");
}
