//! The validating webhooks' decisions: pure functions of the object (and, on update, the old
//! object). Every message starts with the path of the field it is about, e.g.
//! `spec.schedule: invalid cron expression "x": ...`.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
};

use kube::ResourceExt;
use stash_crds::{
    Backend, BackendError, BackendKind, BackupConfiguration, BackupConfigurationTemplate,
    BackupSession, Driver, Function, Repository, RestoreSession, RetentionPolicy, TargetRef, Task,
    consts, repository::RepositoryValidationError,
};

use super::cron;
use crate::target::WorkloadKind;

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `spec.backend.s3.bucket` or `spec.rules[1].targetHosts`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one object (never empty when returned as an error).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for FieldErrors {}

impl FieldErrors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// Which Functions exist (for Task validation). Implemented for sets of names and closures.
pub trait FunctionLookup {
    /// Does the (cluster-scoped) Function `name` exist?
    fn exists(&self, name: &str) -> bool;
}

impl FunctionLookup for BTreeSet<String> {
    fn exists(&self, name: &str) -> bool {
        self.contains(name)
    }
}

impl FunctionLookup for HashSet<String> {
    fn exists(&self, name: &str) -> bool {
        self.contains(name)
    }
}

impl<F: Fn(&str) -> bool> FunctionLookup for F {
    fn exists(&self, name: &str) -> bool {
        self(name)
    }
}

/// The validating decision for one kind.
pub trait Validate {
    /// What else the decision may consult (`()` for most kinds; existing Functions for Task).
    type Context: ?Sized;

    /// Is this new object acceptable?
    fn validate_create(&self, ctx: &Self::Context) -> Result<(), FieldErrors>;

    /// Is this change from `old` acceptable? Kinds with a mutable spec re-check the new object
    /// only when the spec changed, so metadata-only updates (finalizers, labels) always pass.
    fn validate_update(&self, old: &Self, ctx: &Self::Context) -> Result<(), FieldErrors>;

    /// Non-fatal remarks shown to the client (`kubectl` prints them as warnings).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

fn blank(s: &Option<String>) -> bool {
    s.as_deref().is_none_or(|s| s.trim().is_empty())
}

fn required(errs: &mut FieldErrors, field: &str, value: &Option<String>) {
    if blank(value) {
        errs.push(field, "required");
    }
}

fn non_negative(errs: &mut FieldErrors, field: &str, value: Option<i32>) {
    if let Some(v) = value.filter(|v| *v < 0) {
        errs.push(field, format!("must be non-negative, got {v}"));
    }
}

/// A `rest` backend URL: `http(s)://[user@]host[:port][/path]`.
fn check_url(url: &str) -> Result<(), String> {
    if url.chars().any(char::is_whitespace) {
        return Err("contains whitespace".into());
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("must be an absolute URL like http://host:8000/path")?;
    if !matches!(scheme, "http" | "https") {
        return Err(format!("scheme {scheme:?} is not http or https"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']').ok_or("unterminated IPv6 address")?;
            (h, after.strip_prefix(':'))
        }
        None => match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if let Some(p) = port {
        p.parse::<u16>()
            .map_err(|_| format!("port {p:?} is not a number"))?;
    }
    Ok(())
}

/// The backend rules: exactly one provider, the storage Secret, and what each provider needs.
fn check_backend(errs: &mut FieldErrors, path: &str, backend: &Backend) {
    required(
        errs,
        &format!("{path}.storageSecretName"),
        &backend.storage_secret_name,
    );
    let kind = match backend.validate() {
        Ok(kind) => kind,
        Err(BackendError::NoProvider) => {
            errs.push(
                path,
                "exactly one of local, s3, gcs, azure, swift, b2, rest must be set, found none",
            );
            return;
        }
        Err(BackendError::MultipleProviders(set)) => {
            let names: Vec<&str> = set.iter().map(|p| p.as_str()).collect();
            errs.push(
                path,
                format!(
                    "exactly one of local, s3, gcs, azure, swift, b2, rest must be set, found {}",
                    names.join(", ")
                ),
            );
            return;
        }
    };
    match kind {
        BackendKind::Local(l) => {
            let p = format!("{path}.local");
            match l.mount_path.as_deref().map(str::trim) {
                None | Some("") => errs.push(format!("{p}.mountPath"), "required"),
                Some(m) if !m.starts_with('/') => errs.push(
                    format!("{p}.mountPath"),
                    format!("must be an absolute path, got {m:?}"),
                ),
                Some(_) => {}
            }
            if l.volume_source == stash_crds::VolumeSource::default() {
                errs.push(p, "a volume source (hostPath, nfs, persistentVolumeClaim, emptyDir, ...) is required");
            }
        }
        BackendKind::S3(s) => required(errs, &format!("{path}.s3.bucket"), &s.bucket),
        BackendKind::Gcs(g) => {
            required(errs, &format!("{path}.gcs.bucket"), &g.bucket);
            non_negative(
                errs,
                &format!("{path}.gcs.maxConnections"),
                g.max_connections,
            );
        }
        BackendKind::Azure(a) => {
            required(errs, &format!("{path}.azure.container"), &a.container);
            non_negative(
                errs,
                &format!("{path}.azure.maxConnections"),
                a.max_connections,
            );
        }
        BackendKind::Swift(s) => required(errs, &format!("{path}.swift.container"), &s.container),
        BackendKind::B2(b) => {
            required(errs, &format!("{path}.b2.bucket"), &b.bucket);
            non_negative(
                errs,
                &format!("{path}.b2.maxConnections"),
                b.max_connections,
            );
        }
        BackendKind::Rest(r) => match r.url.as_deref().map(str::trim) {
            None | Some("") => errs.push(format!("{path}.rest.url"), "required"),
            Some(u) => {
                if let Err(why) = check_url(u) {
                    errs.push(
                        format!("{path}.rest.url"),
                        format!("invalid URL {u:?}: {why}"),
                    );
                }
            }
        },
    }
}

fn check_wipe_out(errs: &mut FieldErrors, spec: &stash_crds::RepositorySpec) {
    if let Err(e) = spec.validate() {
        let msg = match e {
            RepositoryValidationError::WipeOutLocal | RepositoryValidationError::WipeOutB2 => {
                e.to_string()
            }
        };
        errs.push("spec.wipeOut", msg);
    }
}

fn check_schedule(errs: &mut FieldErrors, schedule: &Option<String>) {
    match schedule.as_deref() {
        None => errs.push("spec.schedule", "required"),
        Some(s) => {
            if let Err(why) = cron::parse(s) {
                errs.push(
                    "spec.schedule",
                    format!("invalid cron expression {s:?}: {why}"),
                );
            }
        }
    }
}

fn check_retention(errs: &mut FieldErrors, policy: &Option<RetentionPolicy>) {
    let Some(p) = policy else { return };
    let counts = [
        ("keepLast", p.keep_last),
        ("keepHourly", p.keep_hourly),
        ("keepDaily", p.keep_daily),
        ("keepWeekly", p.keep_weekly),
        ("keepMonthly", p.keep_monthly),
        ("keepYearly", p.keep_yearly),
    ];
    for (name, v) in counts {
        non_negative(errs, &format!("spec.retentionPolicy.{name}"), v);
    }
    for (i, t) in p.keep_tags.iter().enumerate() {
        if t.trim().is_empty() {
            errs.push(
                format!("spec.retentionPolicy.keepTags[{i}]"),
                "must not be empty",
            );
        }
    }
    let keeps_something =
        counts.iter().any(|(_, v)| v.is_some_and(|v| v > 0)) || !p.keep_tags.is_empty();
    if p.prune && !keeps_something {
        errs.push(
            "spec.retentionPolicy",
            "prune without any keep rule (keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly, keepYearly, keepTags) would delete every snapshot",
        );
    }
}

/// What a target reference names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetClass {
    Workload(WorkloadKind),
    Pvc,
    AppBinding,
}

const SUPPORTED_KINDS: &str = "Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, DeploymentConfig, PersistentVolumeClaim, AppBinding";

/// Checks kind, apiVersion and name of `spec.target.ref`; the class when they are usable.
fn check_target_ref(errs: &mut FieldErrors, r: &TargetRef) -> Option<TargetClass> {
    let path = "spec.target.ref";
    required(errs, &format!("{path}.name"), &r.name);
    let Some(kind) = r.kind.as_deref().filter(|k| !k.is_empty()) else {
        errs.push(
            format!("{path}.kind"),
            format!("required (one of {SUPPORTED_KINDS})"),
        );
        return None;
    };
    let (class, want) = match WorkloadKind::of(r) {
        Some(w) => (TargetClass::Workload(w), w.api_version()),
        None => match kind {
            "PersistentVolumeClaim" => (TargetClass::Pvc, "v1"),
            "AppBinding" => (TargetClass::AppBinding, "appcatalog.appscode.com/v1alpha1"),
            other => {
                errs.push(
                    format!("{path}.kind"),
                    format!("unsupported target kind {other:?} (supported: {SUPPORTED_KINDS})"),
                );
                return None;
            }
        },
    };
    match r.api_version.as_deref() {
        Some(v) if v == want => Some(class),
        Some(v) => {
            errs.push(
                format!("{path}.apiVersion"),
                format!("a {kind} target must use apiVersion {want}, got {v:?} (targets are matched by exact apiVersion)"),
            );
            None
        }
        None => {
            errs.push(
                format!("{path}.apiVersion"),
                format!("required ({want} for {kind})"),
            );
            None
        }
    }
}

fn spec_immutable(kind: &str) -> FieldErrors {
    FieldErrors(vec![FieldError::new(
        "spec",
        format!("{kind} spec is immutable"),
    )])
}

const VOLUME_SNAPSHOTTER_WARNING: &str = "spec.driver: VolumeSnapshotter is not supported by stash-rs; sessions using it fail with a reason";

// ---------------------------------------------------------------------------------------------
// Repository

impl Validate for Repository {
    type Context = ();

    fn validate_create(&self, _: &()) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        check_backend(&mut errs, "spec.backend", &self.spec.backend);
        check_wipe_out(&mut errs, &self.spec);
        errs.into_result()
    }

    fn validate_update(&self, old: &Self, ctx: &()) -> Result<(), FieldErrors> {
        if self.spec == old.spec {
            Ok(())
        } else {
            self.validate_create(ctx)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// BackupConfiguration

impl Validate for BackupConfiguration {
    type Context = ();

    fn validate_create(&self, _: &()) -> Result<(), FieldErrors> {
        let spec = &self.spec;
        let mut errs = FieldErrors::default();
        check_schedule(&mut errs, &spec.schedule);
        let restic = spec.driver() == Driver::Restic;
        // VolumeSnapshotter needs no Repository.
        match &spec.repository {
            Some(r) if !r.name.trim().is_empty() => {}
            _ if restic => errs.push("spec.repository.name", "required"),
            _ => {}
        }
        let task_missing = spec.task.as_ref().is_none_or(|t| t.name.trim().is_empty());
        match &spec.target {
            None => {
                if restic && task_missing {
                    errs.push(
                        "spec.task.name",
                        "required when spec.target is not set (cluster or custom backup)",
                    );
                }
            }
            Some(target) => match check_target_ref(&mut errs, &target.target_ref) {
                Some(TargetClass::Workload(kind)) if restic => {
                    if target.directories.is_empty() {
                        errs.push(
                            "spec.target.directories",
                            format!(
                                "at least one directory is required to back up a {}",
                                kind.kind()
                            ),
                        );
                    }
                    for (i, d) in target.directories.iter().enumerate() {
                        if !d.starts_with('/') {
                            errs.push(
                                format!("spec.target.directories[{i}]"),
                                format!("must be an absolute path, got {d:?}"),
                            );
                        }
                    }
                    if target.volume_mounts.is_empty() {
                        errs.push(
                            "spec.target.volumeMounts",
                            format!("at least one volume of the {} must be mounted into the backup sidecar", kind.kind()),
                        );
                    }
                }
                Some(class @ (TargetClass::Pvc | TargetClass::AppBinding))
                    if restic && task_missing =>
                {
                    let kind = if class == TargetClass::Pvc {
                        "PersistentVolumeClaim"
                    } else {
                        "AppBinding"
                    };
                    errs.push("spec.task.name", format!("required for a {kind} target"));
                }
                _ => {}
            },
        }
        check_retention(&mut errs, &spec.retention_policy);
        errs.into_result()
    }

    fn validate_update(&self, old: &Self, ctx: &()) -> Result<(), FieldErrors> {
        if self.spec == old.spec {
            Ok(())
        } else {
            self.validate_create(ctx)
        }
    }

    fn warnings(&self) -> Vec<String> {
        if self.spec.driver() == Driver::VolumeSnapshotter {
            vec![VOLUME_SNAPSHOTTER_WARNING.into()]
        } else {
            vec![]
        }
    }
}

// ---------------------------------------------------------------------------------------------
// BackupSession

impl Validate for BackupSession {
    type Context = ();

    fn validate_create(&self, _: &()) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        let name = self
            .spec
            .backup_configuration
            .as_ref()
            .map(|r| r.name.trim())
            .filter(|n| !n.is_empty());
        let Some(name) = name else {
            errs.push("spec.backupConfiguration.name", "required");
            return errs.into_result();
        };
        let field = format!("metadata.labels[{}]", consts::BACKUP_CONFIGURATION_LABEL);
        match self.labels().get(consts::BACKUP_CONFIGURATION_LABEL) {
            None => errs.push(
                field,
                format!("required, must be {name:?} (spec.backupConfiguration.name)"),
            ),
            Some(v) if v != name => {
                errs.push(
                    field,
                    format!("must equal spec.backupConfiguration.name {name:?}, got {v:?}"),
                );
            }
            Some(_) => {}
        }
        errs.into_result()
    }

    fn validate_update(&self, old: &Self, _: &()) -> Result<(), FieldErrors> {
        if self.spec == old.spec {
            Ok(())
        } else {
            Err(spec_immutable("BackupSession"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RestoreSession (stash-api.md §3.4)

impl Validate for RestoreSession {
    type Context = ();

    fn validate_create(&self, _: &()) -> Result<(), FieldErrors> {
        let spec = &self.spec;
        let mut errs = FieldErrors::default();
        match &spec.repository {
            Some(r) if !r.name.trim().is_empty() => {}
            _ if spec.driver() == Driver::Restic => errs.push("spec.repository.name", "required"),
            _ => {}
        }
        if let Some(t) = &spec.target {
            if !t.target_ref.is_empty() {
                check_target_ref(&mut errs, &t.target_ref);
            }
            if let Some(r) = t.replicas.filter(|r| *r < 0) {
                errs.push(
                    "spec.target.replicas",
                    format!("must be non-negative, got {r}"),
                );
            }
        }
        let mut catch_all: Option<usize> = None;
        let mut hosts: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, rule) in spec.rules.iter().enumerate() {
            let path = format!("spec.rules[{i}]");
            if rule.target_hosts.is_empty() {
                match catch_all {
                    Some(first) => errs.push(
                        format!("{path}.targetHosts"),
                        format!("at most one rule may leave targetHosts empty, spec.rules[{first}] already does"),
                    ),
                    None => catch_all = Some(i),
                }
            }
            for host in &rule.target_hosts {
                match hosts.get(host.as_str()) {
                    Some(first) if *first != i => errs.push(
                        format!("{path}.targetHosts"),
                        format!("host {host:?} is already targeted by spec.rules[{first}]"),
                    ),
                    Some(_) => errs.push(
                        format!("{path}.targetHosts"),
                        format!("host {host:?} is listed twice"),
                    ),
                    None => {
                        hosts.insert(host, i);
                    }
                }
            }
            if !rule.snapshots.is_empty() && !rule.paths.is_empty() {
                errs.push(path, "snapshots and paths are mutually exclusive (a snapshot already selects its paths)");
            }
        }
        errs.into_result()
    }

    fn validate_update(&self, old: &Self, _: &()) -> Result<(), FieldErrors> {
        if self.spec == old.spec {
            Ok(())
        } else {
            Err(spec_immutable("RestoreSession"))
        }
    }

    fn warnings(&self) -> Vec<String> {
        if self.spec.driver() == Driver::VolumeSnapshotter {
            vec![VOLUME_SNAPSHOTTER_WARNING.into()]
        } else {
            vec![]
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Function and Task

impl Validate for Function {
    type Context = ();

    fn validate_create(&self, _: &()) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        required(&mut errs, "spec.image", &self.spec.image);
        errs.into_result()
    }

    fn validate_update(&self, old: &Self, ctx: &()) -> Result<(), FieldErrors> {
        if self.spec == old.spec {
            Ok(())
        } else {
            self.validate_create(ctx)
        }
    }
}

impl Validate for Task {
    type Context = dyn FunctionLookup + Send + Sync;

    fn validate_create(&self, functions: &Self::Context) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        if self.spec.steps.is_empty() {
            errs.push("spec.steps", "at least one step is required");
        }
        for (i, step) in self.spec.steps.iter().enumerate() {
            if step.name.trim().is_empty() {
                errs.push(format!("spec.steps[{i}].name"), "required");
            } else if !functions.exists(&step.name) {
                errs.push(
                    format!("spec.steps[{i}].name"),
                    format!("Function {:?} not found", step.name),
                );
            }
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, v) in self.spec.volumes.iter().enumerate() {
            if let Some(first) = seen.insert(v.name.as_str(), i) {
                errs.push(
                    format!("spec.volumes[{i}].name"),
                    format!(
                        "duplicate volume name {:?} (also spec.volumes[{first}])",
                        v.name
                    ),
                );
            }
        }
        errs.into_result()
    }

    fn validate_update(&self, old: &Self, functions: &Self::Context) -> Result<(), FieldErrors> {
        if self.spec == old.spec {
            Ok(())
        } else {
            self.validate_create(functions)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// BackupConfigurationTemplate

impl Validate for BackupConfigurationTemplate {
    type Context = ();

    fn validate_create(&self, _: &()) -> Result<(), FieldErrors> {
        let spec = &self.spec;
        let mut errs = FieldErrors::default();
        check_backend(&mut errs, "spec.backend", &spec.repository.backend);
        check_wipe_out(&mut errs, &spec.repository);
        check_schedule(&mut errs, &spec.schedule);
        check_retention(&mut errs, &spec.retention_policy);
        errs.into_result()
    }

    fn validate_update(&self, old: &Self, ctx: &()) -> Result<(), FieldErrors> {
        if self.spec == old.spec {
            Ok(())
        } else {
            self.validate_create(ctx)
        }
    }
}

#[cfg(test)]
mod tests;
