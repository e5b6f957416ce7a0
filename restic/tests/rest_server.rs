//! restic's REST server backend (rest-server built by testenv) and unreachable backends.
mod common;

use std::time::{Duration, Instant};

use common::*;
use stash_restic::{Error, Location, RestoreOptions, SnapshotFilter};

#[tokio::test]
async fn rest_server_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let (server, port) = rest_server(&work.path().join("rest-data"), work.path());
    let src = work.path().join("src");
    gen_tree(&src, 3);
    let loc = Location::Rest {
        url: format!("http://127.0.0.1:{port}/stash/demo"),
    };
    // rest-server --no-auth accepts any userinfo; it is injected into the URL all the same.
    let repo = repo(
        loc,
        creds(&[
            ("RESTIC_PASSWORD", "pw"),
            ("REST_SERVER_USERNAME", "stash"),
            ("REST_SERVER_PASSWORD", "rest-secret"),
        ]),
        work.path(),
    );
    assert!(repo.ensure_initialized().await.unwrap());
    assert!(work.path().join("rest-data/stash/demo/config").exists());
    let s = repo.backup(&src, "host-0", &[]).await.unwrap();
    assert!(repo.check(false).await.unwrap());
    let snaps = repo
        .snapshots(&SnapshotFilter {
            no_lock: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].id, s.snapshot_id);
    let target = work.path().join("restore");
    repo.restore(&RestoreOptions::new(s.snapshot_id.clone(), &target))
        .await
        .unwrap();
    assert_eq!(checksums(&restored(&target, &src)), checksums(&src));
    drop(server);
}

#[tokio::test]
async fn unreachable_rest_backend_fails_promptly() {
    let work = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let port = stash_testenv::process::free_port().unwrap();
    let repo = repo(
        Location::Rest {
            url: format!("http://127.0.0.1:{port}/repo"),
        },
        creds(&[
            ("RESTIC_PASSWORD", "pw"),
            ("REST_SERVER_USERNAME", "u"),
            ("REST_SERVER_PASSWORD", "rest-secret"),
        ]),
        work.path(),
    );
    let started = Instant::now();
    let e = repo.ensure_initialized().await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let msg = e.to_string();
    assert!(msg.contains("connection refused"), "{msg}");
    assert!(
        !msg.contains("rest-secret") && !msg.contains("pw@"),
        "{msg}"
    );
    eprintln!("unreachable after {took:?}: {msg}");
}

/// rest-server over TLS with a private CA: the Secret's `CA_CERT_DATA` becomes `--cacert`
/// (the Secret read as mounted files); without it restic refuses the certificate.
#[tokio::test]
async fn rest_server_tls_with_ca_cert_data_from_secret_dir() {
    let work = tempfile::tempdir().unwrap();
    let ca = stash_testenv::certs::Ca::new("restic-test-ca").unwrap();
    let pair = ca
        .server("rest-server", &["127.0.0.1", "localhost"])
        .unwrap();
    std::fs::write(work.path().join("tls.crt"), &pair.cert).unwrap();
    std::fs::write(work.path().join("tls.key"), &pair.key).unwrap();
    let port = stash_testenv::process::free_port().unwrap();
    let mut server = stash_testenv::process::Proc::spawn(
        "rest-server-tls",
        &stash_testenv::bins::bin("rest-server").unwrap(),
        &[
            "--path".into(),
            work.path().join("rest-data").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--no-auth".into(),
            "--tls".into(),
            "--tls-cert".into(),
            work.path().join("tls.crt").display().to_string(),
            "--tls-key".into(),
            work.path().join("tls.key").display().to_string(),
        ],
        work.path(),
    )
    .unwrap();
    wait_port(port, &mut server);

    let secret = work.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("RESTIC_PASSWORD"), "pw").unwrap();
    std::fs::write(secret.join("CA_CERT_DATA"), &ca.cert).unwrap();
    let loc = Location::Rest {
        url: format!("https://127.0.0.1:{port}/tls-repo"),
    };
    let repo = repo(
        loc.clone(),
        stash_restic::Credentials::from_secret_dir(&secret).unwrap(),
        work.path(),
    );
    assert!(repo.ensure_initialized().await.unwrap());
    let src = work.path().join("src");
    gen_tree(&src, 6);
    repo.backup(&src, "host-0", &[]).await.unwrap();
    assert_eq!(
        repo.snapshots(&SnapshotFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );

    std::fs::remove_file(secret.join("CA_CERT_DATA")).unwrap();
    let no_ca = common::repo(
        loc,
        stash_restic::Credentials::from_secret_dir(&secret).unwrap(),
        work.path(),
    );
    let started = Instant::now();
    let e = no_ca
        .snapshots(&SnapshotFilter::default())
        .await
        .unwrap_err();
    eprintln!("without CA after {:?}: {e}", started.elapsed());
    assert!(e.to_string().contains("certificate"), "{e:?}");
    assert!(matches!(e, Error::Backend { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(server);
}
