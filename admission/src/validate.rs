//! The validating webhooks' decisions: pure functions of the object (and, on update, the old
//! object). Every message starts with the path of the field it is about, e.g.
//! `spec.schedule: invalid cron expression "x": ...`.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
};

use k8s_openapi::api::core::v1 as core;
use kube::ResourceExt;
use stash_crds::{
    Backend, BackendError, BackendKind, BackupConfiguration, BackupConfigurationTemplate,
    BackupSession, ContainerRuntimeSettings, Driver, EmptyDirSettings, Function, Param, Repository,
    RestoreSession, RetentionPolicy, RuntimeSettings, TargetRef, Task, TaskRef, consts,
    repository::RepositoryValidationError,
};

use stash_core::cron;

mod format;
use stash_core::target::WorkloadKind;

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

/// `value` (when set and not blank) must pass `check`; the message says what is accepted.
fn format_of(
    errs: &mut FieldErrors,
    field: &str,
    value: Option<&str>,
    check: fn(&str) -> Result<(), String>,
) {
    if let Some(v) = value.filter(|v| !v.trim().is_empty())
        && let Err(why) = check(v)
    {
        errs.push(field, why);
    }
}

/// A reference by name to an object in the same namespace (or a cluster-scoped one).
fn check_reference(errs: &mut FieldErrors, field: &str, name: &str) {
    if name.trim().is_empty() {
        errs.push(field, "required");
    } else {
        format_of(errs, field, Some(name), format::object_name);
    }
}

/// `spec.target.alias`: a host name of its own, or the prefix of `<alias>-<ordinal>` and
/// `<alias>-<node>`: a DNS label, as every host name a session lists.
fn check_alias(errs: &mut FieldErrors, alias: Option<&str>) {
    format_of(errs, "spec.target.alias", alias, format::dns_label);
}

/// `spec.target.args`: each argument from the allow-list of `command` (`stash_core::args`).
fn check_args(errs: &mut FieldErrors, command: stash_core::args::Command, args: &[String]) {
    if let Err(refused) = stash_core::args::check(command, args) {
        for (i, why) in refused {
            errs.push(format!("spec.target.args[{i}]"), why);
        }
    }
}

/// `spec.usagePolicy.allowedNamespaces`: `Selector` needs its selector.
fn check_usage_policy(errs: &mut FieldErrors, spec: &stash_crds::RepositorySpec) {
    use stash_crds::repository::NamespacesFrom;
    let Some(a) = spec
        .usage_policy
        .as_ref()
        .and_then(|p| p.allowed_namespaces.as_ref())
    else {
        return;
    };
    if a.from == Some(NamespacesFrom::Selector) && a.selector.is_none() {
        errs.push(
            "spec.usagePolicy.allowedNamespaces.selector",
            "required when from is Selector",
        );
    }
}

/// Later Stash fields stash-rs keeps but does not act on yet: set, each is refused with the
/// reason, never dropped (a hook a user wrote must not silently not run).
fn check_not_yet(
    errs: &mut FieldErrors,
    own_namespace: Option<&str>,
    not_yet: &stash_crds::common::NotYet,
    interim_for_job: bool,
    namespaces: &[(&str, Option<&str>)],
) {
    if not_yet.hooks.is_some() {
        errs.push(
            "spec.hooks",
            "hooks are not run by stash-rs yet (refused rather than dropped; docs/differences.md §46)",
        );
    }
    match (&not_yet.interim_volume_template, not_yet.interim_volume()) {
        (None, _) => {}
        (Some(_), None) => errs.push(
            "spec.interimVolumeTemplate",
            "must be a PersistentVolumeClaim (metadata and spec)",
        ),
        (Some(_), Some(claim)) if interim_for_job => {
            if claim.spec.is_none() {
                errs.push("spec.interimVolumeTemplate.spec", "required");
            }
        }
        (Some(_), Some(_)) => errs.push(
            "spec.interimVolumeTemplate",
            "an interim volume is the scratch space of a backup or restore Job: a target backed up by a sidecar or restored by an init-container has none (docs/differences.md §46)",
        ),
    }
    for (field, ns) in namespaces {
        if let Some(ns) = ns.filter(|n| !n.is_empty())
            && Some(ns) != own_namespace
        {
            errs.push(
                *field,
                format!(
                    "{ns:?} is another namespace: stash-rs uses objects of the session's own namespace only (docs/differences.md §46)"
                ),
            );
        }
    }
}

/// [`check_not_yet`] of a BackupConfiguration or RestoreSession: its later fields, and the
/// namespaces of its Repository and target.
fn check_session_not_yet(
    errs: &mut FieldErrors,
    own_namespace: Option<&str>,
    not_yet: &stash_crds::common::NotYet,
    repository: &Option<stash_crds::common::RepositoryRef>,
    target: Option<&TargetRef>,
) {
    // The job model: a target that is no workload (a PVC, an AppBinding, none).
    let job_model = target.is_none_or(|t| stash_core::target::WorkloadKind::of(t).is_none());
    check_not_yet(
        errs,
        own_namespace,
        not_yet,
        job_model,
        &[
            (
                "spec.repository.namespace",
                repository.as_ref().and_then(|r| r.namespace.as_deref()),
            ),
            (
                "spec.target.ref.namespace",
                target.and_then(|t| t.namespace.as_deref()),
            ),
        ],
    );
}

/// `params[]`: variable names, each once, with a value.
fn check_params(errs: &mut FieldErrors, path: &str, params: &[Param]) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in params.iter().enumerate() {
        let field = format!("{path}[{i}].name");
        if p.name.trim().is_empty() {
            errs.push(field, "required");
            continue;
        }
        format_of(errs, &field, Some(&p.name), format::param_name);
        if let Some(first) = seen.insert(p.name.as_str(), i) {
            errs.push(
                field,
                format!("parameter {:?} is already set by {path}[{first}]", p.name),
            );
        }
    }
}

/// `spec.task`: a Task name and its parameters.
fn check_task_ref(errs: &mut FieldErrors, path: &str, task: &Option<TaskRef>) {
    let Some(t) = task else { return };
    format_of(
        errs,
        &format!("{path}.name"),
        Some(&t.name),
        format::object_name,
    );
    check_params(errs, &format!("{path}.params"), &t.params);
}

/// `volumeMounts[]`: a volume name, an absolute mount path, no path mounted twice.
fn check_volume_mounts(errs: &mut FieldErrors, path: &str, mounts: &[core::VolumeMount]) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, m) in mounts.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if m.name.trim().is_empty() {
            errs.push(format!("{p}.name"), "required");
        } else {
            format_of(
                errs,
                &format!("{p}.name"),
                Some(&m.name),
                format::volume_name,
            );
        }
        if m.mount_path.trim().is_empty() {
            errs.push(format!("{p}.mountPath"), "required");
            continue;
        }
        format_of(
            errs,
            &format!("{p}.mountPath"),
            Some(&m.mount_path),
            format::absolute_path,
        );
        let key = m.mount_path.trim_end_matches('/');
        if let Some(first) = seen.insert(key, i) {
            errs.push(
                format!("{p}.mountPath"),
                format!("{:?} is already mounted by {path}[{first}]", m.mount_path),
            );
        }
        format_of(
            errs,
            &format!("{p}.subPath"),
            m.sub_path.as_deref(),
            format::relative_path,
        );
    }
}

/// Every path of `paths` (at `path[i]`) must lie under one of `mounts`' mount paths.
fn check_under_mounts(
    errs: &mut FieldErrors,
    path: &str,
    paths: &[String],
    mounts_field: &str,
    mounts: &[core::VolumeMount],
) {
    if mounts.is_empty() {
        return;
    }
    let dirs: Vec<&str> = mounts.iter().map(|m| m.mount_path.as_str()).collect();
    for (i, d) in paths.iter().enumerate() {
        if d.starts_with('/') && !format::templated(d) && !dirs.iter().any(|m| format::under(d, m))
        {
            errs.push(
                format!("{path}[{i}]"),
                format!(
                    "{d:?} does not lie under a mounted volume (the mountPaths of {mounts_field}: {})",
                    dirs.join(", ")
                ),
            );
        }
    }
}

/// `spec.timeOut`, when set, is a deadline: a Go duration greater than zero.
fn check_time_out(errs: &mut FieldErrors, time_out: Option<&str>) {
    match stash_crds::duration::time_out(time_out) {
        Err(e) => errs.push("spec.timeOut", e.to_string()),
        Ok(Some(t)) if t.is_zero() => errs.push(
            "spec.timeOut",
            "must be greater than 0 (leave it out for the operator's deadline)",
        ),
        Ok(_) => {}
    }
}

/// `spec.retryConfig`: at most [`RetryConfig::MAX_RETRY`](stash_crds::common::RetryConfig)
/// retries, and a delay that parses.
fn check_retry(errs: &mut FieldErrors, retry: Option<&stash_crds::common::RetryConfig>) {
    let Some(retry) = retry else { return };
    let max = stash_crds::common::RetryConfig::MAX_RETRY;
    if !(0..=max).contains(&retry.max_retry()) {
        errs.push(
            "spec.retryConfig.maxRetry",
            format!("must lie in 0..={max}, got {}", retry.max_retry()),
        );
    }
    if let Err(e) = stash_crds::duration::time_out(retry.delay.as_deref()) {
        errs.push("spec.retryConfig.delay", e.to_string());
    }
}

/// A quantity that must parse and, with `positive`, be greater than zero.
fn check_quantity(errs: &mut FieldErrors, field: &str, q: &str, positive: bool) -> Option<f64> {
    match format::quantity(q.trim()) {
        Err(why) => {
            errs.push(field, why);
            None
        }
        Ok(v) if v < 0.0 || (positive && v == 0.0) => {
            let want = if positive {
                "greater than 0"
            } else {
                "non-negative"
            };
            errs.push(field, format!("must be {want}, got {q:?}"));
            None
        }
        Ok(v) => Some(v),
    }
}

fn check_probe(errs: &mut FieldErrors, path: &str, probe: &Option<core::Probe>) {
    let Some(p) = probe else { return };
    for (name, v, min) in [
        ("initialDelaySeconds", p.initial_delay_seconds, 0),
        ("periodSeconds", p.period_seconds, 1),
        ("timeoutSeconds", p.timeout_seconds, 1),
        ("successThreshold", p.success_threshold, 1),
        ("failureThreshold", p.failure_threshold, 1),
    ] {
        if let Some(v) = v.filter(|v| *v < min) {
            errs.push(
                format!("{path}.{name}"),
                format!("must be ≥ {min}, got {v}"),
            );
        }
    }
    let handlers = [
        p.exec.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.grpc.is_some(),
    ];
    if handlers.iter().filter(|h| **h).count() != 1 {
        errs.push(
            path,
            "exactly one of exec, httpGet, tcpSocket, grpc must be set",
        );
    }
}

/// `runtimeSettings.container` (also a Function's `runtimeSettings`).
fn check_container_runtime(errs: &mut FieldErrors, path: &str, c: &ContainerRuntimeSettings) {
    if let Some(r) = &c.resources {
        let mut limits = BTreeMap::new();
        for (name, q) in r.limits.iter().flatten() {
            let field = format!("{path}.resources.limits.{name}");
            if let Some(v) = check_quantity(errs, &field, &q.0, false) {
                limits.insert(name.as_str(), (v, q.0.as_str()));
            }
        }
        for (name, q) in r.requests.iter().flatten() {
            let field = format!("{path}.resources.requests.{name}");
            if let Some(v) = check_quantity(errs, &field, &q.0, false)
                && let Some((_, limit)) = limits.get(name.as_str()).filter(|(l, _)| v > *l)
            {
                errs.push(
                    field,
                    format!(
                        "must be ≤ {path}.resources.limits.{name} ({limit}), got {}",
                        q.0
                    ),
                );
            }
        }
    }
    check_probe(errs, &format!("{path}.livenessProbe"), &c.liveness_probe);
    check_probe(errs, &format!("{path}.readinessProbe"), &c.readiness_probe);
    if let Some(n) = c.nice.as_ref().and_then(|n| n.adjustment)
        && !(-20..=19).contains(&n)
    {
        errs.push(
            format!("{path}.nice.adjustment"),
            format!("must be in -20..19 (nice), got {n}"),
        );
    }
    if let Some(io) = &c.ionice {
        if let Some(class) = io.class.filter(|c| !(0..=3).contains(c)) {
            errs.push(
                format!("{path}.ionice.class"),
                format!("must be in 0..3 (none, realtime, best-effort, idle), got {class}"),
            );
        }
        if let Some(data) = io.class_data.filter(|d| !(0..=7).contains(d)) {
            errs.push(
                format!("{path}.ionice.classData"),
                format!("must be in 0..7, got {data}"),
            );
        }
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, e) in c.env.iter().enumerate() {
        let p = format!("{path}.env[{i}]");
        if e.name.is_empty() {
            errs.push(format!("{p}.name"), "required");
        } else {
            format_of(errs, &format!("{p}.name"), Some(&e.name), format::env_name);
            if let Some(first) = seen.insert(e.name.as_str(), i) {
                errs.push(
                    format!("{p}.name"),
                    format!("{:?} is already set by {path}.env[{first}]", e.name),
                );
            }
        }
        if e.value.as_deref().is_some_and(|v| !v.is_empty()) && e.value_from.is_some() {
            errs.push(p, "value and valueFrom are mutually exclusive");
        }
    }
    for (i, e) in c.env_from.iter().enumerate() {
        if e.config_map_ref.is_some() == e.secret_ref.is_some() {
            errs.push(
                format!("{path}.envFrom[{i}]"),
                "exactly one of configMapRef, secretRef must be set",
            );
        }
    }
}

/// `spec.runtimeSettings`.
fn check_runtime_settings(errs: &mut FieldErrors, path: &str, rs: &Option<RuntimeSettings>) {
    let Some(rs) = rs else { return };
    if let Some(pod) = &rs.pod {
        let p = format!("{path}.pod");
        for (name, v) in [
            ("serviceAccountName", &pod.service_account_name),
            ("priorityClassName", &pod.priority_class_name),
            ("nodeName", &pod.node_name),
            ("runtimeClassName", &pod.runtime_class_name),
        ] {
            format_of(
                errs,
                &format!("{p}.{name}"),
                v.as_deref(),
                format::dns_subdomain,
            );
        }
        for (i, s) in pod.image_pull_secrets.iter().enumerate() {
            check_reference(errs, &format!("{p}.imagePullSecrets[{i}].name"), &s.name);
        }
        for (i, t) in pod.tolerations.iter().enumerate() {
            let tp = format!("{p}.tolerations[{i}]");
            let op = t.operator.as_deref().unwrap_or("Equal");
            match op {
                "Exists" if t.value.as_deref().is_some_and(|v| !v.is_empty()) => {
                    errs.push(
                        format!("{tp}.value"),
                        "must be empty when operator is Exists",
                    );
                }
                "Exists" | "Equal" | "" => {}
                other => errs.push(
                    format!("{tp}.operator"),
                    format!("must be Exists or Equal, got {other:?}"),
                ),
            }
            let effect = t.effect.as_deref().unwrap_or("");
            if !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                errs.push(
                    format!("{tp}.effect"),
                    format!("must be NoSchedule, PreferNoSchedule or NoExecute, got {effect:?}"),
                );
            }
            if t.toleration_seconds.is_some() && effect != "NoExecute" {
                errs.push(
                    format!("{tp}.tolerationSeconds"),
                    "only allowed with effect NoExecute",
                );
            }
        }
    }
    if let Some(c) = &rs.container {
        check_container_runtime(errs, &format!("{path}.container"), c);
    }
}

/// `spec.tempDir`: medium and size limit.
fn check_temp_dir(errs: &mut FieldErrors, temp: &Option<EmptyDirSettings>) {
    let Some(t) = temp else { return };
    if let Some(m) = t.medium.as_deref()
        && !(m.is_empty() || m == "Memory" || m == "HugePages" || m.starts_with("HugePages-"))
    {
        errs.push(
            "spec.tempDir.medium",
            format!("must be \"\", Memory or HugePages[-<size>], got {m:?}"),
        );
    }
    if let Some(q) = &t.size_limit {
        check_quantity(errs, "spec.tempDir.sizeLimit", &q.0, true);
    }
}

/// The backend rules: exactly one provider, the storage Secret, and what each provider needs.
fn check_backend(errs: &mut FieldErrors, path: &str, backend: &Backend) {
    if backend
        .s3
        .as_ref()
        .is_some_and(|s| s.insecure_tls == Some(true))
    {
        errs.push(
            format!("{path}.s3.insecureTLS"),
            "TLS verification is never skipped: give the endpoint's CA certificate in the storage Secret's CA_CERT_DATA (docs/differences.md §46)",
        );
    }
    required(
        errs,
        &format!("{path}.storageSecretName"),
        &backend.storage_secret_name,
    );
    format_of(
        errs,
        &format!("{path}.storageSecretName"),
        backend.storage_secret_name.as_deref(),
        format::object_name,
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
            format_of(
                errs,
                &format!("{p}.subPath"),
                l.sub_path.as_deref(),
                format::relative_path,
            );
            if l.volume_source == stash_crds::VolumeSource::default() {
                errs.push(p, "a volume source (hostPath, nfs, persistentVolumeClaim, emptyDir, ...) is required");
            }
        }
        BackendKind::S3(s) => {
            required(errs, &format!("{path}.s3.bucket"), &s.bucket);
            format_of(
                errs,
                &format!("{path}.s3.bucket"),
                s.bucket.as_deref(),
                format::s3_bucket,
            );
            format_of(
                errs,
                &format!("{path}.s3.endpoint"),
                s.endpoint.as_deref(),
                format::endpoint,
            );
        }
        BackendKind::Gcs(g) => {
            required(errs, &format!("{path}.gcs.bucket"), &g.bucket);
            format_of(
                errs,
                &format!("{path}.gcs.bucket"),
                g.bucket.as_deref(),
                format::gcs_bucket,
            );
            non_negative(
                errs,
                &format!("{path}.gcs.maxConnections"),
                g.max_connections,
            );
        }
        BackendKind::Azure(a) => {
            required(errs, &format!("{path}.azure.container"), &a.container);
            format_of(
                errs,
                &format!("{path}.azure.container"),
                a.container.as_deref(),
                format::azure_container,
            );
            non_negative(
                errs,
                &format!("{path}.azure.maxConnections"),
                a.max_connections,
            );
        }
        BackendKind::Swift(s) => {
            required(errs, &format!("{path}.swift.container"), &s.container);
            format_of(
                errs,
                &format!("{path}.swift.container"),
                s.container.as_deref(),
                format::swift_container,
            );
        }
        BackendKind::B2(b) => {
            required(errs, &format!("{path}.b2.bucket"), &b.bucket);
            format_of(
                errs,
                &format!("{path}.b2.bucket"),
                b.bucket.as_deref(),
                format::b2_bucket,
            );
            non_negative(
                errs,
                &format!("{path}.b2.maxConnections"),
                b.max_connections,
            );
        }
        BackendKind::Rest(r) => match r.url.as_deref().map(str::trim) {
            None | Some("") => errs.push(format!("{path}.rest.url"), "required"),
            Some(u) => {
                if let Err(why) = format::http_url(u) {
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

/// `spec.target.replicas`: from 0 to [`MAX_HOSTS`](stash_machines::restore_session::MAX_HOSTS)
/// (one host, and so one name and possibly one Job, per replica).
fn check_replicas(errs: &mut FieldErrors, replicas: Option<i32>) {
    let max = stash_machines::restore_session::MAX_HOSTS;
    match replicas {
        Some(r) if r < 0 => errs.push(
            "spec.target.replicas",
            format!("must be non-negative, got {r}"),
        ),
        Some(r) if r.unsigned_abs() > max => errs.push(
            "spec.target.replicas",
            format!("at most {max} hosts restore in one session, got {r}"),
        ),
        _ => {}
    }
}

/// A `volumeClaimTemplates[].metadata.name`: with `${POD_ORDINAL}` substituted (ordinal 0), a
/// valid object name; a template that cannot be substituted (bad syntax, past a limit, a
/// variable other than `POD_ORDINAL`) is refused with the substitution's own error.
fn check_claim_template_name(errs: &mut FieldErrors, field: &str, name: &str) {
    let inputs = [("POD_ORDINAL".to_string(), "0".to_string())].into();
    match stash_core::jobs::envsubst::subst(name, &inputs) {
        Ok(n) => format_of(errs, field, Some(&n), format::object_name),
        Err(e) => errs.push(field, e.to_string()),
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

/// A schedule that fires more often than once a minute (only `@every` can).
fn schedule_warning(schedule: &Option<String>) -> Vec<String> {
    match schedule.as_deref().and_then(cron::every) {
        Some(d) if d < std::time::Duration::from_secs(60) => vec![format!(
            "spec.schedule: {:?} starts a backup more often than every minute; a backup that is still running makes the next one wait or be skipped",
            schedule.as_deref().unwrap_or_default()
        )],
        _ => vec![],
    }
}

/// A retention policy without any keep rule (legal, yet `forget` then keeps nothing).
fn retention_warning(policy: &Option<RetentionPolicy>) -> Vec<String> {
    match policy {
        Some(p) if p.keeps_nothing() && !p.prune => vec![
            "spec.retentionPolicy: sets no keep rule (keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly, keepYearly, keepTags), so it keeps nothing; with prune it would delete every snapshot".into(),
        ],
        _ => vec![],
    }
}

/// A restore rule's snapshot: `latest`, a restic snapshot ID, or the Snapshot name
/// `<repository>-<id>` of the session's Repository.
fn snapshot_of(snap: &str, repo: Option<&str>) -> Result<(), String> {
    let hex = |s: &str| (8..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if snap == "latest" || hex(snap) {
        return Ok(());
    }
    match repo {
        Some(r)
            if snap
                .strip_prefix(r)
                .and_then(|x| x.strip_prefix('-'))
                .is_some_and(hex) =>
        {
            Ok(())
        }
        Some(r) => Err(format!(
            "{snap:?} is not a snapshot of Repository {r:?}: must be latest, a snapshot ID, or {r}-<id> (the Snapshot's name)"
        )),
        None => Err(format!(
            "{snap:?} must be latest, a snapshot ID, or <repository>-<id>"
        )),
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
    format_of(
        errs,
        &format!("{path}.name"),
        r.name.as_deref(),
        format::object_name,
    );
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
        check_usage_policy(&mut errs, &self.spec);
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
        check_time_out(&mut errs, spec.time_out.as_deref());
        check_retry(&mut errs, spec.retry_config.as_ref());
        check_session_not_yet(
            &mut errs,
            self.metadata.namespace.as_deref(),
            &spec.not_yet,
            &spec.repository,
            spec.target.as_ref().map(|t| &t.target_ref),
        );
        let restic = spec.driver() == Driver::Restic;
        // VolumeSnapshotter needs no Repository.
        match &spec.repository {
            Some(r) if !r.name.trim().is_empty() => {
                check_reference(&mut errs, "spec.repository.name", &r.name);
            }
            _ if restic => errs.push("spec.repository.name", "required"),
            _ => {}
        }
        check_task_ref(&mut errs, "spec.task", &spec.task);
        let task_missing = spec.task.as_ref().is_none_or(|t| t.name.trim().is_empty());
        if let Some(t) = &spec.target
            && !t.directories.is_empty()
            && !t.paths.is_empty()
            && t.directories != t.paths
        {
            errs.push(
                "spec.target.paths",
                "spec.target.paths and spec.target.directories are two spellings of one list and say different things: write one of them",
            );
        }
        if let Some(t) = &spec.target {
            check_alias(&mut errs, t.alias.as_deref());
            check_args(&mut errs, stash_core::args::Command::Backup, &t.args);
        }
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
                    // Both spellings are one list: `directories` (mid-2019), `paths` (later).
                    let field = if target.directories.is_empty() && !target.paths.is_empty() {
                        "spec.target.paths"
                    } else {
                        "spec.target.directories"
                    };
                    if target.backup_paths().is_empty() {
                        errs.push(
                            field,
                            format!(
                                "at least one directory is required to back up a {}",
                                kind.kind()
                            ),
                        );
                    }
                    for (i, d) in target.backup_paths().iter().enumerate() {
                        if !d.starts_with('/') {
                            errs.push(
                                format!("{field}[{i}]"),
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
                    check_under_mounts(
                        &mut errs,
                        field,
                        target.backup_paths(),
                        "spec.target.volumeMounts",
                        &target.volume_mounts,
                    );
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
        if let Some(target) = &spec.target {
            check_volume_mounts(&mut errs, "spec.target.volumeMounts", &target.volume_mounts);
            check_replicas(&mut errs, target.replicas);
        }
        check_retention(&mut errs, &spec.retention_policy);
        check_runtime_settings(&mut errs, "spec.runtimeSettings", &spec.runtime_settings);
        check_temp_dir(&mut errs, &spec.temp_dir);
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
        let mut out = Vec::new();
        if self.spec.driver() == Driver::VolumeSnapshotter {
            out.push(VOLUME_SNAPSHOTTER_WARNING.into());
        }
        out.extend(schedule_warning(&self.spec.schedule));
        out.extend(retention_warning(&self.spec.retention_policy));
        out
    }
}

/// What the webhook looked up in the cluster about the objects a BackupConfiguration or
/// RestoreSession names (`None`: not known, e.g. the lookup failed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Does the Repository exist?
    pub repository_exists: Option<bool>,
    /// Does the target exist?
    pub target_exists: Option<bool>,
    /// The other BackupConfigurations in the namespace that use the same Repository.
    pub sharing_repository: Vec<String>,
}

/// Warnings about what the object names but does not exist yet, and a Repository shared by
/// several BackupConfigurations.
pub fn reference_warnings(
    repository: Option<&str>,
    target: Option<&TargetRef>,
    refs: &References,
) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(repo), Some(false)) = (repository, refs.repository_exists) {
        out.push(format!(
            "spec.repository.name: Repository {repo:?} does not exist yet; sessions fail until it is created"
        ));
    }
    if let (Some(t), Some(false)) = (target, refs.target_exists) {
        out.push(format!(
            "spec.target.ref: {} {:?} does not exist yet; nothing is backed up or restored until it is created",
            t.kind.as_deref().unwrap_or_default(),
            t.name.as_deref().unwrap_or_default()
        ));
    }
    if let (Some(repo), false) = (repository, refs.sharing_repository.is_empty()) {
        out.push(format!(
            "spec.repository.name: Repository {repo:?} is also used by BackupConfiguration {}; their backups share one restic repository and its lock, and each retention policy applies to the other's snapshots of the same host",
            refs.sharing_repository.join(", ")
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// BackupSession

impl Validate for BackupSession {
    type Context = ();

    fn validate_create(&self, _: &()) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        let spec = &self.spec;
        // Two spellings of one reference: `backupConfiguration` (mid-2019) and `invoker`
        // (later Stash), whose kind must be one stash-rs serves.
        if let Some(i) = &spec.invoker {
            if i.kind != "BackupConfiguration" {
                errs.push(
                    "spec.invoker.kind",
                    format!(
                        "{:?} is not served by stash-rs (only BackupConfiguration; see docs/differences.md)",
                        i.kind
                    ),
                );
            }
            if let Some(r) = &spec.backup_configuration
                && r.name != i.name
            {
                errs.push(
                    "spec.invoker.name",
                    format!(
                        "{:?} differs from spec.backupConfiguration.name {:?}: write one of them",
                        i.name, r.name
                    ),
                );
            }
        }
        let (field, name) = if spec.backup_configuration.is_some() || spec.invoker.is_none() {
            ("spec.backupConfiguration.name", spec.configuration_name())
        } else {
            ("spec.invoker.name", spec.configuration_name())
        };
        let name = name.trim();
        if name.is_empty() {
            if spec.invoker.is_none() {
                errs.push(field, "required");
            }
            return errs.into_result();
        }
        check_reference(&mut errs, field, name);
        if spec
            .retry_left
            .is_some_and(|r| r > stash_crds::common::RetryConfig::MAX_RETRY)
        {
            errs.push(
                "spec.retryLeft",
                format!("at most {}", stash_crds::common::RetryConfig::MAX_RETRY),
            );
        }
        let label = format!("metadata.labels[{}]", consts::BACKUP_CONFIGURATION_LABEL);
        match self.labels().get(consts::BACKUP_CONFIGURATION_LABEL) {
            None => errs.push(label, format!("required, must be {name:?} ({field})")),
            Some(v) if v != name => {
                errs.push(label, format!("must equal {field} {name:?}, got {v:?}"));
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
        check_time_out(&mut errs, spec.time_out.as_deref());
        check_session_not_yet(
            &mut errs,
            self.metadata.namespace.as_deref(),
            &spec.not_yet,
            &spec.repository,
            spec.target.as_ref().map(|t| &t.target_ref),
        );
        let repo = match &spec.repository {
            Some(r) if !r.name.trim().is_empty() => {
                check_reference(&mut errs, "spec.repository.name", &r.name);
                Some(r.name.trim())
            }
            _ if spec.driver() == Driver::Restic => {
                errs.push("spec.repository.name", "required");
                None
            }
            _ => None,
        };
        check_task_ref(&mut errs, "spec.task", &spec.task);
        // Into volumeClaimTemplates, the restored paths land wherever the templates' claims are
        // mounted (upstream's own example does so), so only workload mounts bound the paths.
        let mounts = spec
            .target
            .as_ref()
            .filter(|t| t.volume_claim_templates.is_empty())
            .map_or(&[][..], |t| &t.volume_mounts[..]);
        if let Some(t) = &spec.target {
            if !t.target_ref.is_empty() {
                check_target_ref(&mut errs, &t.target_ref);
            }
            check_alias(&mut errs, t.alias.as_deref());
            check_args(&mut errs, stash_core::args::Command::Restore, &t.args);
            check_volume_mounts(&mut errs, "spec.target.volumeMounts", &t.volume_mounts);
            for (i, pvc) in t.volume_claim_templates.iter().enumerate() {
                let field = format!("spec.target.volumeClaimTemplates[{i}].metadata.name");
                match pvc.metadata.name.as_deref() {
                    None | Some("") => errs.push(field, "required"),
                    Some(n) => check_claim_template_name(&mut errs, &field, n),
                }
            }
            check_replicas(&mut errs, t.replicas);
        }
        let mut catch_all: Option<usize> = None;
        let mut hosts: BTreeMap<&str, usize> = BTreeMap::new();
        let rules_field = spec.rules_field();
        if let Some(t) = &spec.target
            && !spec.rules.is_empty()
            && !t.rules.is_empty()
            && spec.rules != t.rules
        {
            errs.push(
                "spec.target.rules",
                "spec.target.rules and spec.rules are two places of one list and say different things: write one of them",
            );
        }
        for (i, rule) in spec.restore_rules().iter().enumerate() {
            let path = format!("{rules_field}[{i}]");
            if rule.target_hosts.is_empty() {
                match catch_all {
                    Some(first) => errs.push(
                        format!("{path}.targetHosts"),
                        format!("at most one rule may leave targetHosts empty, {rules_field}[{first}] already does"),
                    ),
                    None => catch_all = Some(i),
                }
            }
            for host in &rule.target_hosts {
                match hosts.get(host.as_str()) {
                    Some(first) if *first != i => errs.push(
                        format!("{path}.targetHosts"),
                        format!("host {host:?} is already targeted by {rules_field}[{first}]"),
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
                errs.push(&path, "snapshots and paths are mutually exclusive (a snapshot already selects its paths)");
            }
            for (j, host) in rule.target_hosts.iter().enumerate() {
                if host.trim().is_empty() {
                    errs.push(format!("{path}.targetHosts[{j}]"), "must not be empty");
                }
            }
            if let Some(h) = rule
                .source_host
                .as_deref()
                .filter(|h| h.chars().any(char::is_whitespace))
            {
                errs.push(
                    format!("{path}.sourceHost"),
                    format!("must be a host name without whitespace, got {h:?}"),
                );
            }
            for (j, p) in rule.paths.iter().enumerate() {
                if p.trim().is_empty() {
                    errs.push(format!("{path}.paths[{j}]"), "must not be empty");
                } else {
                    format_of(
                        &mut errs,
                        &format!("{path}.paths[{j}]"),
                        Some(p),
                        format::absolute_path,
                    );
                }
            }
            check_under_mounts(
                &mut errs,
                &format!("{path}.paths"),
                &rule.paths,
                "spec.target.volumeMounts",
                mounts,
            );
            for (j, snap) in rule.snapshots.iter().enumerate() {
                if let Err(why) = snapshot_of(snap, repo) {
                    errs.push(format!("{path}.snapshots[{j}]"), why);
                }
            }
        }
        check_runtime_settings(&mut errs, "spec.runtimeSettings", &spec.runtime_settings);
        check_temp_dir(&mut errs, &spec.temp_dir);
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
        let spec = &self.spec;
        required(&mut errs, "spec.image", &spec.image);
        format_of(
            &mut errs,
            "spec.image",
            spec.image.as_deref(),
            format::image,
        );
        format_of(
            &mut errs,
            "spec.workingDir",
            spec.working_dir.as_deref(),
            format::absolute_path,
        );
        for (i, port) in spec.ports.iter().enumerate() {
            if !(1..=65535).contains(&port.container_port) {
                errs.push(
                    format!("spec.ports[{i}].containerPort"),
                    format!("must be in 1..65535, got {}", port.container_port),
                );
            }
        }
        check_volume_mounts(&mut errs, "spec.volumeMounts", &spec.volume_mounts);
        if let Some(c) = &spec.runtime_settings {
            check_container_runtime(&mut errs, "spec.runtimeSettings", c);
        }
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
            check_params(&mut errs, &format!("spec.steps[{i}].params"), &step.params);
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, v) in self.spec.volumes.iter().enumerate() {
            format_of(
                &mut errs,
                &format!("spec.volumes[{i}].name"),
                Some(&v.name),
                format::volume_name,
            );
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
        let mut errs = FieldErrors::default();
        check_template(&mut errs, &self.spec);
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
        template_warnings(&self.spec)
    }
}

/// What a template of default backups says (a BackupConfigurationTemplate, and the same
/// fields of a BackupBlueprint).
fn check_template(errs: &mut FieldErrors, spec: &stash_crds::BackupConfigurationTemplateSpec) {
    check_backend(errs, "spec.backend", &spec.repository.backend);
    check_wipe_out(errs, &spec.repository);
    check_schedule(errs, &spec.schedule);
    check_time_out(errs, spec.time_out.as_deref());
    check_task_ref(errs, "spec.task", &spec.task);
    check_retention(errs, &spec.retention_policy);
    check_runtime_settings(errs, "spec.runtimeSettings", &spec.runtime_settings);
    check_temp_dir(errs, &spec.temp_dir);
}

fn template_warnings(spec: &stash_crds::BackupConfigurationTemplateSpec) -> Vec<String> {
    let mut out = schedule_warning(&spec.schedule);
    out.extend(retention_warning(&spec.retention_policy));
    out
}

// ---------------------------------------------------------------------------------------------
// BackupBlueprint (later Stash)

impl Validate for stash_crds::BackupBlueprint {
    type Context = ();

    fn validate_create(&self, _: &()) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        let spec = &self.spec;
        check_template(&mut errs, &spec.template);
        check_retry(&mut errs, spec.retry_config.as_ref());
        // Cluster-scoped: any namespace named is another one.
        check_not_yet(
            &mut errs,
            None,
            &spec.not_yet,
            // Copied into the configurations of PVCs and AppBindings (the job model) only.
            true,
            &[
                ("spec.backupNamespace", spec.backup_namespace.as_deref()),
                ("spec.repoNamespace", spec.repo_namespace.as_deref()),
            ],
        );
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
        template_warnings(&self.spec.template)
    }
}

#[cfg(test)]
mod tests;
