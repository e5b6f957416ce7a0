//! S3 backend against moto's S3 server.
mod common;

use common::*;
use stash_restic::{Location, RestoreOptions, SnapshotFilter};

#[tokio::test]
async fn s3_moto_backup_check_read_data_restore() {
    let work = tempfile::tempdir().unwrap();
    let (server, port) = moto("stash-backup", work.path());
    let src = work.path().join("src");
    gen_tree(&src, 4);
    let repo = repo(
        Location::S3 {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "stash-backup".into(),
            prefix: "demo/deployment".into(),
            region: None,
        },
        creds(&[
            ("RESTIC_PASSWORD", "pw"),
            ("AWS_ACCESS_KEY_ID", "AKIATESTKEY"),
            ("AWS_SECRET_ACCESS_KEY", "test-secret-key"),
        ]),
        work.path(),
    );
    assert!(repo.ensure_initialized().await.unwrap());
    let s = repo.backup(&src, "host-0", &[]).await.unwrap();
    assert!(repo.check(true).await.unwrap(), "check --read-data");
    let report = repo.check_report(true).await.unwrap();
    assert_eq!(report.num_errors, 0);
    let snaps = repo
        .snapshots(&SnapshotFilter {
            hosts: vec!["host-0".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(snaps.len(), 1);
    let target = work.path().join("restore");
    let r = repo
        .restore(&RestoreOptions::new("latest", &target))
        .await
        .unwrap();
    assert_eq!(r.total_bytes, s.total_bytes_processed);
    assert_eq!(checksums(&restored(&target, &src)), checksums(&src));
    drop(server);
}
