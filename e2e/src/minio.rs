//! MinIO for the e2e tests: an S3 server over HTTPS with a private CA, on the node address
//! inside the cluster's network namespace (pods, the operator and this process reach it
//! there), a storage Secret and Repository on it, and clients of it from the host (restic, an
//! S3 client).
use std::{ffi::OsStr, path::Path, process::Command};

use kube::{Api, Client};
use serde_json::json;
use stash_testenv::bins;

use super::{cluster_server, restic, secret_and_repository};

/// MinIO's root user (the access key of every MinIO the tests start).
pub const MINIO_USER: &str = "stash-e2e-minio";
/// MinIO's root password (the secret key).
pub const MINIO_SECRET: &str = "minio-secret-key-for-the-test";

/// A private CA and a serving certificate from it for `sans`, written as `<dir>/ca.crt`,
/// `<dir>/public.crt` and `<dir>/private.key` (MinIO's names). The CA's PEM.
pub fn private_ca(dir: &Path, sans: &[&str]) -> String {
    let ca = stash_testenv::certs::Ca::new("stash-e2e-private-ca").expect("ca");
    let pair = ca.server("stash-e2e-server", sans).expect("server cert");
    std::fs::write(dir.join("ca.crt"), &ca.cert).expect("ca.crt");
    std::fs::write(dir.join("public.crt"), &pair.cert).expect("public.crt");
    std::fs::write(dir.join("private.key"), &pair.key).expect("private.key");
    ca.cert
}

/// MinIO over HTTPS (the certificates of [`private_ca`] in `certs`) on the node address, its
/// drive at `data` with an empty bucket `bucket` (a top-level directory of the drive is a
/// bucket to MinIO; restic does not create a missing bucket before it looks for `config`),
/// root credentials [`MINIO_USER`] / [`MINIO_SECRET`], and `env` on top. The port.
pub async fn minio(certs: &Path, data: &Path, bucket: &str, env: &[(&str, &OsStr)]) -> u16 {
    std::fs::create_dir(data.join(bucket)).expect("bucket dir");
    let minio = bins::bin("minio").expect("minio");
    let (certs_dir, data_dir) = (certs.to_owned(), data.to_owned());
    let mut vars: Vec<(&str, &OsStr)> = vec![
        ("MINIO_ROOT_USER", MINIO_USER.as_ref()),
        ("MINIO_ROOT_PASSWORD", MINIO_SECRET.as_ref()),
        ("MINIO_BROWSER", "off".as_ref()),
        ("MINIO_UPDATE", "off".as_ref()),
    ];
    vars.extend_from_slice(env);
    cluster_server(
        "minio",
        &minio,
        |ip, port| {
            vec![
                "server".into(),
                "--quiet".into(),
                "--address".into(),
                format!("{ip}:{port}"),
                "--certs-dir".into(),
                certs_dir.display().to_string(),
                data_dir.display().to_string(),
            ]
        },
        &vars,
    )
    .await
}

/// Secret `minio-secret` (`password`, the MinIO root credentials, `CA_CERT_DATA` = `ca`, no
/// region) and Repository `repo` (wipeOut) on `endpoint`/`bucket`/`prefix` in `ns`.
pub async fn minio_repository(
    client: &Client,
    ns: &str,
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    ca: &str,
    password: &str,
) -> Api<stash_crds::Repository> {
    secret_and_repository(
        client,
        ns,
        "minio-secret",
        json!({"RESTIC_PASSWORD": password, "AWS_ACCESS_KEY_ID": MINIO_USER,
               "AWS_SECRET_ACCESS_KEY": MINIO_SECRET, "CA_CERT_DATA": ca}),
        json!({"backend": {"s3": {"endpoint": endpoint, "bucket": bucket, "prefix": prefix}},
               "wipeOut": true}),
    )
    .await;
    Api::<stash_crds::Repository>::namespaced(client.clone(), ns)
}

/// restic on the host for repository `url` (`s3:<endpoint>/<bucket>[/<prefix>]`) with the MinIO
/// root credentials (in the environment, never in the arguments), trusting `cacert`.
pub fn minio_restic(url: &str, password: &str, cacert: &Path) -> Command {
    let mut cmd = restic(url, password);
    cmd.env("AWS_ACCESS_KEY_ID", MINIO_USER)
        .env("AWS_SECRET_ACCESS_KEY", MINIO_SECRET)
        .arg("--cacert")
        .arg(cacert);
    cmd
}

/// An S3 client of MinIO's `bucket` at `endpoint` signing for `region`, trusting `cacert`,
/// without retries.
pub fn minio_store(
    endpoint: &str,
    bucket: &str,
    region: &str,
    cacert: &Path,
) -> object_store::aws::AmazonS3 {
    let pem = std::fs::read_to_string(cacert).expect("ca pem");
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(region)
        .with_endpoint(endpoint)
        .with_access_key_id(MINIO_USER)
        .with_secret_access_key(MINIO_SECRET)
        .with_retry(object_store::RetryConfig {
            max_retries: 0,
            ..Default::default()
        })
        .with_client_options(object_store::ClientOptions::new().with_root_certificate(
            object_store::Certificate::from_pem(pem.as_bytes()).expect("ca"),
        ))
        .build()
        .expect("s3 client")
}
