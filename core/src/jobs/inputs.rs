//! The implicit inputs of backup and restore Jobs (stash-api.md §4, "exactly when set").
use stash_crds::{
    BackupConfiguration, Repository, RestoreSession,
    backend::{BackendKind, Provider},
};

use super::envsubst::Inputs;

/// Settings of the operator that reach the inputs.
#[derive(Clone, Debug, Default)]
pub struct OperatorInputs {
    /// `PROMETHEUS_PUSHGATEWAY_URL` (empty: not set).
    pub pushgateway_url: String,
}

fn set(i: &mut Inputs, k: &str, v: impl Into<String>) {
    i.insert(k.to_string(), v.into());
}

/// Inputs shared by backups and restores: namespace, repository.
fn common(i: &mut Inputs, ns: &str, repo: &Repository, op: &OperatorInputs) -> Result<(), String> {
    set(i, "NAMESPACE", ns);
    set(i, "ENABLE_STATUS_SUBRESOURCE", "true");
    set(
        i,
        "REPOSITORY_NAME",
        repo.metadata.name.clone().unwrap_or_default(),
    );
    let backend = &repo.spec.backend;
    let kind = backend.validate().map_err(|e| {
        format!(
            "Repository {}: {e}",
            repo.metadata.name.clone().unwrap_or_default()
        )
    })?;
    let provider: Provider = kind.provider();
    set(i, "REPOSITORY_PROVIDER", provider.as_str());
    let (bucket, prefix) = backend.bucket_and_prefix().map_err(|e| e.to_string())?;
    set(i, "REPOSITORY_BUCKET", bucket);
    set(i, "REPOSITORY_PREFIX", prefix);
    if let Some(s) = backend
        .storage_secret_name
        .as_ref()
        .filter(|s| !s.is_empty())
    {
        set(i, "REPOSITORY_SECRET_NAME", s.clone());
    }
    match kind {
        BackendKind::S3(s) => {
            if let Some(e) = s.endpoint.as_ref().filter(|e| !e.is_empty()) {
                set(i, "REPOSITORY_ENDPOINT", e.clone());
            }
            if let Some(r) = s.region.as_ref().filter(|r| !r.is_empty()) {
                set(i, "REPOSITORY_REGION", r.clone());
            }
        }
        BackendKind::Rest(r) => {
            if let Some(u) = r.url.as_ref().filter(|u| !u.is_empty()) {
                set(i, "REPOSITORY_URL", u.clone());
            }
        }
        _ => {}
    }
    set(i, "MAX_CONNECTIONS", backend.max_connections().to_string());
    if !op.pushgateway_url.is_empty() {
        set(i, "PROMETHEUS_PUSHGATEWAY_URL", op.pushgateway_url.clone());
    }
    Ok(())
}

/// The implicit inputs of the backup Job of session `session` of `bc`.
pub fn backup(
    bc: &BackupConfiguration,
    session: &str,
    repo: &Repository,
    op: &OperatorInputs,
) -> Result<Inputs, String> {
    let mut i = Inputs::new();
    let ns = bc.metadata.namespace.clone().unwrap_or_default();
    common(&mut i, &ns, repo, op)?;
    set(&mut i, "BACKUP_SESSION", session);
    if let Some(t) = &bc.spec.target {
        if let Some(n) = t.target_ref.name.as_ref().filter(|n| !n.is_empty()) {
            set(&mut i, "TARGET_NAME", n.clone());
        }
        if !t.backup_paths().is_empty() {
            set(&mut i, "TARGET_DIRECTORIES", t.backup_paths().join(","));
        }
        // `target.args`, a JSON list (an argument may hold a comma).
        if !t.args.is_empty() {
            set(&mut i, "RESTIC_ARGS", serde_json::json!(t.args).to_string());
        }
        // Stash's variable for `target.exclude`, comma-separated.
        if !t.exclude.is_empty() {
            set(&mut i, "EXCLUDE_PATTERNS", t.exclude.join(","));
        }
        if let Some(m) = t.volume_mounts.first() {
            set(&mut i, "TARGET_MOUNT_PATH", m.mount_path.clone());
        }
    }
    let p = bc.spec.retention_policy.clone().unwrap_or_default();
    for (k, v) in [
        ("RETENTION_KEEP_LAST", p.keep_last),
        ("RETENTION_KEEP_HOURLY", p.keep_hourly),
        ("RETENTION_KEEP_DAILY", p.keep_daily),
        ("RETENTION_KEEP_WEEKLY", p.keep_weekly),
        ("RETENTION_KEEP_MONTHLY", p.keep_monthly),
        ("RETENTION_KEEP_YEARLY", p.keep_yearly),
    ] {
        if let Some(n) = v.filter(|n| *n > 0) {
            set(&mut i, k, n.to_string());
        }
    }
    if !p.keep_tags.is_empty() {
        set(&mut i, "RETENTION_KEEP_TAGS", p.keep_tags.join(","));
    }
    if p.prune {
        set(&mut i, "RETENTION_PRUNE", "true");
    }
    if p.dry_run {
        set(&mut i, "RETENTION_DRY_RUN", "true");
    }
    let alias = bc.spec.target.as_ref().and_then(|t| t.alias.as_deref());
    set(
        &mut i,
        "HOSTNAME",
        crate::target::host_name(alias, crate::target::Host::Only),
    );
    let cache = bc.spec.temp_dir.as_ref().is_none_or(|t| t.enable_cache());
    set(&mut i, "ENABLE_CACHE", cache.to_string());
    Ok(i)
}

/// The implicit inputs of the restore Job of `rs` for restoring host `host`.
pub fn restore(
    rs: &RestoreSession,
    host: &str,
    repo: &Repository,
    op: &OperatorInputs,
) -> Result<Inputs, String> {
    let mut i = Inputs::new();
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    common(&mut i, &ns, repo, op)?;
    set(
        &mut i,
        "RESTORE_SESSION",
        rs.metadata.name.clone().unwrap_or_default(),
    );
    let target = rs.spec.target.clone().unwrap_or_default();
    if let Some(n) = target.target_ref.name.as_ref().filter(|n| !n.is_empty()) {
        set(&mut i, "TARGET_NAME", n.clone());
    }
    if let Some(m) = target.volume_mounts.first() {
        set(&mut i, "TARGET_MOUNT_PATH", m.mount_path.clone());
    }
    if !target.args.is_empty() {
        set(
            &mut i,
            "RESTIC_ARGS",
            serde_json::json!(target.args).to_string(),
        );
    }
    let rule = rs
        .spec
        .rule_for_host(host)
        .ok_or_else(|| format!("no restore rule matches host {host}"))?;
    let source = rule
        .source_host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| host.to_string());
    set(&mut i, "HOSTNAME", source);
    set(&mut i, "RESTORE_DIRECTORIES", rule.paths.join(","));
    set(&mut i, "RESTORE_SNAPSHOTS", rule.snapshots.join(","));
    // Stash's variables for the rule's `include` and `exclude`, comma-separated.
    set(&mut i, "INCLUDE_PATTERNS", rule.include.join(","));
    set(&mut i, "EXCLUDE_PATTERNS", rule.exclude.join(","));
    set(
        &mut i,
        "TARGET_APP_REPLICAS",
        target.replicas.unwrap_or(1).to_string(),
    );
    let cache = rs.spec.temp_dir.as_ref().is_none_or(|t| t.enable_cache());
    set(&mut i, "ENABLE_CACHE", cache.to_string());
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(backend: serde_json::Value) -> Repository {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
            "metadata": {"name": "repo", "namespace": "ns"}, "spec": {"backend": backend}
        }))
        .expect("repo")
    }

    #[test]
    fn backup_inputs_are_set_exactly_when_known() {
        let bc: BackupConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
            "metadata": {"name": "bc", "namespace": "ns"},
            "spec": {"repository": {"name": "repo"}, "schedule": "* * * * *",
                     "target": {"ref": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "data"},
                                "directories": ["/a", "/b"], "volumeMounts": [{"name": "v", "mountPath": "/a"}]},
                     "retentionPolicy": {"name": "x", "keepLast": 3, "keepDaily": 0, "prune": true},
                     "tempDir": {"disableCaching": true}}
        }))
        .expect("bc");
        let r = repo(
            serde_json::json!({"storageSecretName": "s", "b2": {"bucket": "bk", "prefix": "p", "maxConnections": 4}}),
        );
        let i = backup(&bc, "bc-1", &r, &OperatorInputs::default()).expect("inputs");
        let get = |k: &str| i.get(k).map(String::as_str);
        assert_eq!(get("REPOSITORY_PROVIDER"), Some("b2"));
        assert_eq!(
            get("REPOSITORY_BUCKET"),
            Some("bk"),
            "B2 works (decision 4)"
        );
        assert_eq!(get("MAX_CONNECTIONS"), Some("4"));
        assert_eq!(get("TARGET_DIRECTORIES"), Some("/a,/b"));
        assert_eq!(get("TARGET_MOUNT_PATH"), Some("/a"));
        assert_eq!(get("RETENTION_KEEP_LAST"), Some("3"));
        assert_eq!(get("RETENTION_KEEP_DAILY"), None);
        assert_eq!(get("RETENTION_PRUNE"), Some("true"));
        assert_eq!(get("RETENTION_DRY_RUN"), None);
        assert_eq!(get("ENABLE_CACHE"), Some("false"));
        assert_eq!(get("BACKUP_SESSION"), Some("bc-1"));
        assert_eq!(get("REPOSITORY_ENDPOINT"), None);
        assert_eq!(get("PROMETHEUS_PUSHGATEWAY_URL"), None);
        let local = repo(
            serde_json::json!({"storageSecretName": "s", "local": {"mountPath": "/repo", "subPath": "x", "hostPath": {"path": "/h"}}}),
        );
        let i = backup(&bc, "bc-1", &local, &OperatorInputs::default()).expect("inputs");
        assert_eq!(
            i.get("REPOSITORY_PREFIX").map(String::as_str),
            Some("/repo/x")
        );
        assert_eq!(i.get("REPOSITORY_BUCKET").map(String::as_str), Some(""));
        assert_eq!(i.get("HOSTNAME").map(String::as_str), Some("host-0"));
        // `target.alias` names the one host of the job model.
        let mut aliased = bc.clone();
        aliased.spec.target.as_mut().expect("target").alias = Some("db".into());
        let i = backup(&aliased, "bc-1", &local, &OperatorInputs::default()).expect("inputs");
        assert_eq!(i.get("HOSTNAME").map(String::as_str), Some("db"));
    }

    #[test]
    fn restore_inputs_follow_the_hosts_rule() {
        let rs: RestoreSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": "rs", "namespace": "ns"},
            "spec": {"repository": {"name": "repo"}, "target": {"replicas": 3},
                     "rules": [{"targetHosts": ["host-1"], "sourceHost": "host-0", "paths": ["/d"]},
                               {"snapshots": ["a", "b"]}]}
        }))
        .expect("rs");
        let r = repo(
            serde_json::json!({"storageSecretName": "s", "s3": {"endpoint": "http://m:9000", "bucket": "b"}}),
        );
        let i = restore(&rs, "host-1", &r, &OperatorInputs::default()).expect("inputs");
        assert_eq!(i["HOSTNAME"], "host-0");
        assert_eq!(i["RESTORE_DIRECTORIES"], "/d");
        assert_eq!(i["RESTORE_SNAPSHOTS"], "");
        assert_eq!(i["TARGET_APP_REPLICAS"], "3", "the number (decision 4)");
        assert_eq!(i["REPOSITORY_ENDPOINT"], "http://m:9000");
        let i = restore(&rs, "host-2", &r, &OperatorInputs::default()).expect("inputs");
        assert_eq!(i["HOSTNAME"], "host-2");
        assert_eq!(i["RESTORE_SNAPSHOTS"], "a,b");
        assert!(!i.contains_key("TARGET_NAME"));
    }
}
