//! The Functions and Tasks the operator creates (or updates) at start-up, with the operator's
//! image (stash-api.md §11.2), and the PostgreSQL ones (§11.3), which ship as YAML under
//! `deploy/functions/` and are not created by the operator.
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaimVolumeSource, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use stash_crds::{
    Function, Task,
    common::{FunctionRef, Param},
    function::FunctionSpec,
    task::TaskSpec,
};

/// Where Functions mount the storage Secret.
pub const SECRET_DIR: &str = "/etc/repository/secret";
/// The PostgreSQL versions we ship Functions and Tasks for (names `pg-backup-<v>`, `pg-restore-<v>`).
pub const PG_VERSIONS: &[&str] = &["9.6", "10.2", "10.6", "11.1", "11.2", "15"];

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(
            [(
                "app.kubernetes.io/managed-by".to_string(),
                "stash.appscode.com".to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

fn function(name: &str, image: &str, a: Vec<String>, mounts: Vec<VolumeMount>) -> Function {
    Function {
        metadata: meta(name),
        spec: FunctionSpec {
            image: Some(image.into()),
            command: vec![crate::names::AGENT.to_string()],
            args: a,
            volume_mounts: mounts,
            ..Default::default()
        },
    }
}

fn param(name: &str, value: &str) -> Param {
    Param {
        name: name.into(),
        value: value.into(),
    }
}

fn step(name: &str, params: &[(&str, &str)]) -> FunctionRef {
    FunctionRef {
        name: name.into(),
        params: params.iter().map(|(n, v)| param(n, v)).collect(),
    }
}

fn secret_volume() -> Volume {
    Volume {
        name: "secret-volume".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some("${REPOSITORY_SECRET_NAME}".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn target_volume() -> Volume {
    Volume {
        name: "target-volume".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: "${TARGET_NAME}".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

const SETUP: &[&str] = &[
    "--provider=${REPOSITORY_PROVIDER:=}",
    "--bucket=${REPOSITORY_BUCKET:=}",
    "--endpoint=${REPOSITORY_ENDPOINT:=}",
    "--region=${REPOSITORY_REGION:=}",
    "--rest-server-url=${REPOSITORY_URL:=}",
    "--path=${REPOSITORY_PREFIX:=}",
    "--secret-dir=/etc/repository/secret",
    "--scratch-dir=/tmp",
    "--enable-cache=${ENABLE_CACHE:=true}",
    "--max-connections=${MAX_CONNECTIONS:=0}",
];

const RETENTION: &[&str] = &[
    "--retention-keep-last=${RETENTION_KEEP_LAST:=0}",
    "--retention-keep-hourly=${RETENTION_KEEP_HOURLY:=0}",
    "--retention-keep-daily=${RETENTION_KEEP_DAILY:=0}",
    "--retention-keep-weekly=${RETENTION_KEEP_WEEKLY:=0}",
    "--retention-keep-monthly=${RETENTION_KEEP_MONTHLY:=0}",
    "--retention-keep-yearly=${RETENTION_KEEP_YEARLY:=0}",
    "--retention-keep-tags=${RETENTION_KEEP_TAGS:=}",
    "--retention-prune=${RETENTION_PRUNE:=false}",
    "--retention-dry-run=${RETENTION_DRY_RUN:=false}",
];

const OUTPUT: &[&str] = &[
    "--output-dir=${outputDir:=}",
    "--metrics-enabled=true",
    "--metrics-pushgateway-url=${PROMETHEUS_PUSHGATEWAY_URL:=}",
];

fn concat(parts: &[&[&str]]) -> Vec<String> {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .map(|s| s.to_string())
        .collect()
}

/// The built-in Functions of §11.2.
pub fn functions(image: &str) -> Vec<Function> {
    vec![
        function(
            "update-status",
            image,
            args(&[
                "update-status",
                "--namespace=${NAMESPACE:=default}",
                "--backup-session=${BACKUP_SESSION:=}",
                "--repository=${REPOSITORY_NAME:=}",
                "--restore-session=${RESTORE_SESSION:=}",
                "--output-dir=${outputDir:=}",
                "--enable-status-subresource=${ENABLE_STATUS_SUBRESOURCE:=false}",
            ]),
            vec![],
        ),
        function(
            "pvc-backup",
            image,
            concat(&[
                &["backup-pvc"],
                SETUP,
                &[
                    "--hostname=${HOSTNAME:=}",
                    "--backup-dirs=${TARGET_DIRECTORIES}",
                    "--exclude=${EXCLUDE_PATTERNS:=}",
                    "--restic-args=${RESTIC_ARGS:=}",
                ],
                RETENTION,
                OUTPUT,
            ]),
            vec![
                mount("${targetVolume}", "${TARGET_MOUNT_PATH}"),
                mount("${secretVolume}", SECRET_DIR),
            ],
        ),
        function(
            "pvc-restore",
            image,
            concat(&[
                &["restore-pvc"],
                SETUP,
                &[
                    "--hostname=${HOSTNAME:=}",
                    "--restore-dirs=${RESTORE_DIRECTORIES}",
                    "--snapshots=${RESTORE_SNAPSHOTS:=}",
                    "--target-mounts=${TARGET_MOUNT_PATH:=}",
                    "--include=${INCLUDE_PATTERNS:=}",
                    "--exclude=${EXCLUDE_PATTERNS:=}",
                    "--restic-args=${RESTIC_ARGS:=}",
                ],
                OUTPUT,
            ]),
            vec![
                mount("${targetVolume}", "${TARGET_MOUNT_PATH}"),
                mount("${secretVolume}", SECRET_DIR),
            ],
        ),
    ]
}

/// The built-in Tasks of §11.2.
pub fn tasks() -> Vec<Task> {
    let task = |name: &str, first: &str| Task {
        metadata: meta(name),
        spec: TaskSpec {
            steps: vec![
                step(
                    first,
                    &[
                        ("outputDir", "/tmp/output"),
                        ("targetVolume", "target-volume"),
                        ("secretVolume", "secret-volume"),
                    ],
                ),
                step("update-status", &[("outputDir", "/tmp/output")]),
            ],
            volumes: vec![target_volume(), secret_volume()],
        },
    };
    vec![
        task("pvc-backup", "pvc-backup"),
        task("pvc-restore", "pvc-restore"),
    ]
}

/// The PostgreSQL Functions and Tasks for `version` (§11.3): `pg_dump` streamed into
/// `restic backup --stdin-from-command`, restored with `psql`.
pub fn postgres(image: &str, version: &str) -> (Vec<Function>, Vec<Task>) {
    let backup = format!("pg-backup-{version}");
    let restore = format!("pg-restore-{version}");
    let functions = vec![
        function(
            &backup,
            image,
            concat(&[
                &["backup-pg"],
                SETUP,
                &[
                    "--hostname=${HOSTNAME:=host-0}",
                    "--pg-args=${pgArgs:=}",
                    "--namespace=${NAMESPACE:=default}",
                    "--app-binding=${TARGET_NAME:=}",
                ],
                RETENTION,
                OUTPUT,
            ]),
            vec![mount("${secretVolume}", SECRET_DIR)],
        ),
        function(
            &restore,
            image,
            concat(&[
                &["restore-pg"],
                SETUP,
                &[
                    "--hostname=${HOSTNAME:=host-0}",
                    "--pg-args=${pgArgs:=}",
                    "--namespace=${NAMESPACE:=default}",
                    "--app-binding=${TARGET_NAME:=}",
                    "--snapshot=${RESTORE_SNAPSHOTS:=}",
                ],
                OUTPUT,
            ]),
            vec![mount("${secretVolume}", SECRET_DIR)],
        ),
    ];
    let task = |name: &str, first: &str| Task {
        metadata: meta(name),
        spec: TaskSpec {
            steps: vec![
                step(
                    first,
                    &[
                        ("outputDir", "/tmp/output"),
                        ("secretVolume", "secret-volume"),
                    ],
                ),
                step("update-status", &[("outputDir", "/tmp/output")]),
            ],
            volumes: vec![secret_volume()],
        },
    };
    (
        functions,
        vec![task(&backup, &backup), task(&restore, &restore)],
    )
}

/// The PostgreSQL Functions and Tasks of every shipped version, as a multi-document YAML
/// (what `deploy/functions/postgres.yaml` holds).
pub fn postgres_yaml(image: &str) -> String {
    let mut docs = Vec::new();
    for v in PG_VERSIONS {
        let (fs, ts) = postgres(image, v);
        for f in fs {
            docs.push(serde_json::json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "Function", "metadata": f.metadata, "spec": f.spec}));
        }
        for t in ts {
            docs.push(serde_json::json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "Task", "metadata": t.metadata, "spec": t.spec}));
        }
    }
    docs.iter()
        .map(serde_saphyr_free_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// JSON is YAML: one document per line keeps the file diffable without a YAML dependency.
fn serde_saphyr_free_yaml(v: &serde_json::Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{envsubst::Inputs, resolve};

    #[test]
    fn builtins_have_the_upstream_shape() {
        let fs = functions("img");
        let names: Vec<_> = fs
            .iter()
            .map(|f| f.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["update-status", "pvc-backup", "pvc-restore"]);
        assert!(fs.iter().all(|f| f.spec.image.as_deref() == Some("img")));
        assert!(
            fs[1]
                .spec
                .args
                .contains(&"--backup-dirs=${TARGET_DIRECTORIES}".to_string())
        );
        let ts = tasks();
        assert_eq!(
            ts[0]
                .spec
                .steps
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["pvc-backup", "update-status"]
        );
        let _ = resolve::container_name("pg-backup-11.2", 0);
        let _: Inputs = Inputs::new();
    }

    #[test]
    fn shipped_postgres_yaml_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/functions/postgres.yaml");
        let want = postgres_yaml(concat!("stash-rs/stash:", env!("CARGO_PKG_VERSION")));
        if std::env::var_os("STASH_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
            std::fs::write(&path, &want).expect("write");
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            have, want,
            "deploy/functions/postgres.yaml is stale: rerun with STASH_BLESS=1"
        );
    }
}
