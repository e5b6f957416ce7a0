//! The admission webhooks (stash-api.md §8), served by the operator over TLS.
//!
//! May not: write anything but its own certificate Secret and webhook configurations (a
//! decision reads; it never creates, updates or deletes what it admits).
//!
//! - [`validate`]: the validating decisions ([`Validate`] per kind), pure; messages name the
//!   field (`spec.schedule: invalid cron expression ...`).
//! - [`mutate`]: the mutating decisions, pure: sidecar injection into workloads through
//!   [`stash_core::inject::apply_backup`] (the controller's decision) and defaulting of our kinds.
//! - the serving certificate: [`stash_runtime::certs`] — generated, kept in a Secret, rotated.
//! - [`register`]: the webhook configurations (both `admission.stash.appscode.com`) and paths.
//! - [`ClientAuth`]: where the cluster gives the API server a client certificate for webhooks,
//!   only callers presenting it are answered (docs/security.md).
//!
//! The transport is thin: [`stash_runtime::admission`] parses the `AdmissionReview`, this module
//! converts the object to its type, fetches what a decision needs to read (BackupConfigurations
//! and the Repository for a workload, the Functions for a Task — never writing anything), calls
//! the decision and returns `deny(reason)` or a JSON patch.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use axum::Router;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, Operation},
    },
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use stash_crds::{
    BackupConfiguration, BackupConfigurationTemplate, BackupSession, Function, Repository,
    RestoreSession, Task,
};
use stash_runtime::{
    admission::{CertStore, client_auth_tls_config, review, serve_tls},
    aggregated::{PeerCertificates, serve_mtls},
};
use tokio::task::JoinHandle;

use stash_core::{
    identity::{self, Level},
    inject::InjectConfig,
    target::WorkloadKind,
};
use stash_index::stores::{self, Stores};
use stash_runtime::certs;

pub mod mutate;
pub mod register;
pub mod validate;

pub use register::{CONFIGURATION_NAME, Endpoint};
pub use validate::{FieldError, FieldErrors, FunctionLookup, Validate};

/// Default name of the Secret holding the serving certificate.
pub const CERT_SECRET: &str = "stash-operator-webhook-cert";

/// How to serve and register the webhooks.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// Where the TLS server listens (port 0: any free port).
    pub bind: SocketAddr,
    /// How the API server reaches it. `None`: `https://<bound address>` (the API server on the
    /// same host, as in tests and local demos).
    pub endpoint: Option<Endpoint>,
    /// Namespace of the certificate Secret (the operator's namespace).
    pub cert_secret_namespace: String,
    /// Name of the certificate Secret.
    pub cert_secret_name: String,
    /// Name of both webhook configurations.
    pub configuration_name: String,
    /// Register the validating webhooks (failurePolicy Fail).
    pub validating: bool,
    /// Register the mutating webhooks (failurePolicy Ignore).
    pub mutating: bool,
    /// Validity of a serving certificate; it is rotated when less than a third is left.
    pub cert_validity: Duration,
    /// How often the certificate and the registrations are checked.
    pub check_interval: Duration,
    /// After a new CA bundle is published, how long to wait before serving the new certificate.
    pub rotation_grace: Duration,
    /// More names for the serving certificate.
    pub extra_sans: Vec<String>,
    /// Require the API server's client certificate (`None`: answer any TLS client).
    pub client_auth: Option<ClientAuth>,
}

/// Who may call the webhooks: a client certificate signed by `ca_pem` (checked in the TLS
/// handshake; a client without one, or with one from another CA, is refused there) whose
/// common name is one of `allowed_names` (empty: any certificate of that CA).
///
/// kube-apiserver presents a client certificate to a webhook only when its
/// `--admission-control-config-file` gives the `ValidatingAdmissionWebhook` and
/// `MutatingAdmissionWebhook` plugins a `WebhookAdmissionConfiguration` whose `kubeConfigFile`
/// has a user for the webhook's host (`stash-operator.stash-system.svc`, `*.svc`, or `*`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM bundle of the CA(s) that sign the API server's webhook client certificate.
    pub ca_pem: String,
    /// Common names allowed (empty: any).
    pub allowed_names: Vec<String>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("allowed_names", &self.allowed_names)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// From `ca_file` (PEM) and the optional `names_file` (one common name a line; `#`
    /// comments). A CA file that does not exist means no client authentication (`None`): the
    /// install mounts an optional ConfigMap there, which the cluster admin creates where the
    /// API server has a webhook client certificate. A CA file that exists but holds no
    /// certificate is an error, not a silent fallback.
    pub fn from_files(ca_file: &Path, names_file: Option<&Path>) -> anyhow::Result<Option<Self>> {
        let ca_pem = match std::fs::read_to_string(ca_file) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("read {}", ca_file.display())),
        };
        if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            anyhow::bail!("{} holds no PEM certificate", ca_file.display());
        }
        let allowed_names = match names_file.map(std::fs::read_to_string) {
            None => Vec::new(),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Some(Err(e)) => {
                return Err(e)
                    .with_context(|| format!("read {}", names_file.unwrap_or(ca_file).display()));
            }
            Some(Ok(text)) => parse_names(&text),
        };
        Ok(Some(Self {
            ca_pem,
            allowed_names,
        }))
    }

    /// Is the verified chain of a connection an allowed caller?
    pub fn check(&self, peer: &PeerCertificates) -> Result<(), String> {
        let leaf = peer.leaf().ok_or("no client certificate")?;
        if self.allowed_names.is_empty() {
            return Ok(());
        }
        let cn = stash_runtime::certs::common_name(leaf)
            .ok_or("client certificate without a common name")?;
        if self.allowed_names.contains(&cn) {
            Ok(())
        } else {
            Err(format!(
                "client certificate CN {cn:?} is not allowed to call the webhooks"
            ))
        }
    }
}

fn parse_names(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

impl WebhookOptions {
    /// Defaults: both webhook kinds, Secret `stash-operator-webhook-cert` in `namespace`, one-year
    /// certificates checked hourly, 5 s grace.
    pub fn new(bind: SocketAddr, endpoint: Option<Endpoint>, namespace: &str) -> Self {
        Self {
            bind,
            endpoint,
            cert_secret_namespace: namespace.into(),
            cert_secret_name: CERT_SECRET.into(),
            configuration_name: CONFIGURATION_NAME.into(),
            validating: true,
            mutating: true,
            cert_validity: Duration::from_secs(365 * 24 * 3600),
            check_interval: Duration::from_secs(3600),
            rotation_grace: Duration::from_secs(5),
            extra_sans: Vec::new(),
            client_auth: None,
        }
    }
}

/// The `stash run` flags of the webhooks (to be flattened into the operator's options).
#[derive(Clone, Debug, clap::Args)]
#[group(id = "webhook-args")]
pub struct Args {
    /// Serve the admission webhooks over TLS on this address (unset: no webhooks).
    #[arg(long)]
    pub webhook_addr: Option<SocketAddr>,
    /// Base URL the API server calls, e.g. `https://127.0.0.1:8443` (default: the bound address).
    #[arg(long, conflicts_with = "webhook_service")]
    pub webhook_url: Option<String>,
    /// The Service the API server calls instead, as `namespace/name:port`.
    #[arg(long)]
    pub webhook_service: Option<String>,
    /// Secret (in the operator's namespace) holding the webhook serving certificate.
    #[arg(long, default_value = CERT_SECRET)]
    pub webhook_cert_secret: String,
    /// Register the validating webhooks.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_validating_webhook: bool,
    /// Register the mutating webhooks.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_mutating_webhook: bool,
    /// Do not check at start-up that the validating webhook rejects an invalid Repository.
    #[arg(long)]
    pub bypass_validating_webhook_xray: bool,
    /// PEM CA bundle that signs the API server's webhook client certificate: when the file
    /// exists, only clients presenting a certificate it signed are answered. A missing file
    /// means no client authentication (the install points this at an optional ConfigMap).
    #[arg(long)]
    pub webhook_client_ca_file: Option<PathBuf>,
    /// Common names (one a line) allowed among the certificates that CA signed; a missing
    /// file or no names: any.
    #[arg(long, requires = "webhook_client_ca_file")]
    pub webhook_client_allowed_names_file: Option<PathBuf>,
}

impl Args {
    /// The options these flags ask for (`None` without `--webhook-addr`).
    pub fn options(&self, namespace: &str) -> anyhow::Result<Option<WebhookOptions>> {
        let Some(bind) = self.webhook_addr else {
            return Ok(None);
        };
        let endpoint = match (&self.webhook_url, &self.webhook_service) {
            (Some(url), _) => Some(Endpoint::Url(url.clone())),
            (None, Some(svc)) => Some(parse_service(svc)?),
            (None, None) => None,
        };
        let mut opts = WebhookOptions::new(bind, endpoint, namespace);
        opts.cert_secret_name = self.webhook_cert_secret.clone();
        opts.validating = self.enable_validating_webhook;
        opts.mutating = self.enable_mutating_webhook;
        if let Some(ca) = &self.webhook_client_ca_file {
            opts.client_auth =
                ClientAuth::from_files(ca, self.webhook_client_allowed_names_file.as_deref())
                    .context("--webhook-client-ca-file")?;
            if opts.client_auth.is_none() {
                tracing::warn!(
                    file = %ca.display(),
                    "admission: no webhook client CA: any TLS client is answered"
                );
            }
        }
        Ok(Some(opts))
    }
}

fn parse_service(s: &str) -> anyhow::Result<Endpoint> {
    let (ns, rest) = s
        .split_once('/')
        .context("--webhook-service must be namespace/name:port")?;
    let (name, port) = rest
        .split_once(':')
        .context("--webhook-service must be namespace/name:port")?;
    let port = port.parse().context("--webhook-service port")?;
    Ok(Endpoint::Service {
        namespace: ns.into(),
        name: name.into(),
        port,
    })
}

// ---------------------------------------------------------------------------------------------
// The pure decision wrapper

fn typed<K: DeserializeOwned>(obj: &DynamicObject) -> Result<K, String> {
    serde_json::to_value(obj)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string())
}

/// Validate the request's object as `K` and answer (allowed, or denied with every field error).
pub fn decide<K: Validate + DeserializeOwned>(
    req: &AdmissionRequest<DynamicObject>,
    ctx: &K::Context,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    let Some(obj) = req.object.as_ref() else {
        return resp;
    };
    let new: K = match typed(obj) {
        Ok(k) => k,
        Err(e) => return resp.deny(format!("cannot read the {}: {e}", req.kind.kind)),
    };
    let verdict = match (&req.operation, req.old_object.as_ref()) {
        (Operation::Create, _) => new.validate_create(ctx),
        (Operation::Update, Some(old)) => match typed::<K>(old) {
            Ok(old) => new.validate_update(&old, ctx),
            Err(e) => return resp.deny(format!("cannot read the old {}: {e}", req.kind.kind)),
        },
        _ => Ok(()),
    };
    match verdict {
        Ok(()) => {
            let mut resp = resp;
            let warnings = new.warnings();
            if !warnings.is_empty() {
                resp.warnings = Some(warnings);
            }
            resp
        }
        Err(errs) => {
            tracing::info!(
                kind = %req.kind.kind, namespace = req.namespace.as_deref().unwrap_or(""), name = %req.name,
                operation = ?req.operation, reason = %errs, "admission: denied"
            );
            resp.deny(errs)
        }
    }
}

fn respond(
    req: &AdmissionRequest<DynamicObject>,
    original: &Value,
    m: mutate::Mutation,
) -> AdmissionResponse {
    let mut resp = AdmissionResponse::from(req);
    if !m.warnings.is_empty() {
        tracing::info!(kind = %req.kind.kind, namespace = req.namespace.as_deref().unwrap_or(""), name = %req.name, warnings = ?m.warnings, "admission: not mutated");
        resp.warnings = Some(m.warnings.clone());
    }
    match m.patch(original) {
        None => resp,
        Some(patch) => match resp.clone().with_patch(patch) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "admission: cannot serialize a patch");
                resp
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers: fetch what the decision reads, then decide

#[derive(Clone)]
struct Ctx {
    client: Client,
    inject: InjectConfig,
    /// The operator's shared stores: the Stash objects a decision reads (never a LIST per
    /// request; readiness waits until they have listed).
    stores: Stores,
}

async fn validate_task(ctx: Ctx, req: AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let functions: BTreeSet<String> = match Api::<Function>::all(ctx.client.clone())
        .list_metadata(&ListParams::default())
        .await
    {
        Ok(list) => list.items.iter().map(|f| f.name_any()).collect(),
        Err(e) => {
            return AdmissionResponse::from(&req)
                .deny(format!("spec.steps: cannot look up Functions: {e}"));
        }
    };
    decide::<Task>(&req, &functions)
}

async fn mutate_workload(
    ctx: Ctx,
    kind: WorkloadKind,
    req: AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let Some(obj) = req.object.as_ref() else {
        return AdmissionResponse::from(&req);
    };
    let original = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(_) => return AdmissionResponse::from(&req),
    };
    let ns = req.namespace.clone().unwrap_or_default();
    let name = original
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if name.is_empty()
        || (kind == WorkloadKind::ReplicaSet && mutate::owned_by_deployment(&original))
    {
        return AdmissionResponse::from(&req);
    }
    let stores = &ctx.stores;
    let bcs: Vec<BackupConfiguration> =
        stores::configurations_targeting(&stores.configurations, kind, &ns, &name)
            .iter()
            .map(|bc| (**bc).clone())
            .collect();
    let matching = mutate::targeting(kind, &name, &bcs);
    let mut repo = None;
    if let [bc] = matching.as_slice() {
        let repo_name = bc
            .spec
            .repository
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default();
        if !repo_name.is_empty() {
            match stores::get_or_fetch(&stores.repositories, &ctx.client, &ns, &repo_name).await {
                Ok(r) => repo = r.map(|r| (*r).clone()),
                Err(e) => {
                    let m = mutate::Mutation {
                        object: None,
                        warnings: vec![format!("stash: cannot read Repository {repo_name:?}: {e}")],
                    };
                    return respond(&req, &original, m);
                }
            }
        }
    }
    // The restore init-container, chosen exactly as the workload controller chooses it.
    let restore = match stores::restore_for(&stores.restores, kind, &ns, &name) {
        Some(rs) => {
            let repo_name = rs
                .spec
                .repository
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default();
            match stores::get_or_fetch(&stores.repositories, &ctx.client, &ns, &repo_name).await {
                Ok(Some(r)) => Some((rs, (*r).clone())),
                _ => None,
            }
        }
        None => None,
    };
    // Agents the namespace's PodSecurity level would refuse are not injected: the workload
    // stays as it was written, and the user is told why (docs/identity.md).
    let repos = repo.iter().chain(restore.as_ref().map(|(_, r)| r));
    if repo.is_some() || restore.is_some() {
        let level = match stores::pod_security_level_now(&ctx.client, &ns).await {
            Ok(l) => l,
            Err(e) => {
                let m = mutate::Mutation {
                    object: None,
                    warnings: vec![format!(
                        "stash: agents not injected: cannot read namespace {ns}'s PodSecurity level: {e}"
                    )],
                };
                return respond(&req, &original, m);
            }
        };
        let pod = original
            .pointer("/spec/template/spec")
            .cloned()
            .and_then(|p| serde_json::from_value(p).ok());
        if let Some(why) = repos
            .filter_map(|r| identity::refusal(&ns, level, r, pod.as_ref()))
            .next()
        {
            let m = mutate::Mutation {
                object: None,
                warnings: vec![format!("stash: agents not injected: {why}")],
            };
            return respond(&req, &original, m);
        }
    }
    let m = mutate::mutate_workload(
        kind,
        &original,
        &bcs,
        |n| repo.clone().filter(|r| r.name_any() == n),
        restore.as_ref().map(|(rs, r)| (rs, r)),
        &ctx.inject,
    );
    if m.object.is_some() {
        tracing::info!(kind = kind.kind(), namespace = %ns, %name, operation = ?req.operation, "admission: workload mutated");
    }
    respond(&req, &original, m)
}

/// Validate a BackupConfiguration or RestoreSession, then warn about what it names that does not
/// exist yet, and (BackupConfiguration) about a Repository other BackupConfigurations use too.
async fn validate_with_references<K>(
    ctx: Ctx,
    req: AdmissionRequest<DynamicObject>,
) -> AdmissionResponse
where
    K: Validate<Context = ()> + DeserializeOwned + References,
{
    let resp = decide::<K>(&req, &());
    let (Some(obj), Some(ns)) = (req.object.as_ref(), req.namespace.as_deref()) else {
        return resp;
    };
    let Ok(new) = typed::<K>(obj) else {
        return resp;
    };
    if !resp.allowed {
        return resp;
    }
    let repository = new.repository().filter(|r| !r.is_empty());
    let mut refs = validate::References::default();
    if let Some(repo) = repository {
        refs.repository_exists =
            stores::get_or_fetch(&ctx.stores.repositories, &ctx.client, ns, repo)
                .await
                .ok()
                .map(|r| r.is_some());
        if K::SHARES_REPOSITORY {
            refs.sharing_repository =
                stores::configurations_sharing(&ctx.stores.configurations, ns, repo, &req.name);
        }
    }
    let target = new
        .target_ref()
        .filter(|t| t.name.is_some() && t.kind.is_some());
    if let Some(t) = target {
        let (group, version) = t
            .api_version
            .as_deref()
            .unwrap_or_default()
            .rsplit_once('/')
            .unwrap_or(("", t.api_version.as_deref().unwrap_or_default()));
        let gvk =
            kube::api::GroupVersionKind::gvk(group, version, t.kind.as_deref().unwrap_or_default());
        let ar = kube::api::ApiResource::from_gvk(&gvk);
        refs.target_exists = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &ar)
            .get_metadata_opt(t.name.as_deref().unwrap_or_default())
            .await
            .ok()
            .map(|o| o.is_some());
    }
    // The agents must be able to run where the workload runs (docs/identity.md): refused here,
    // before anything is injected, when the namespace's PodSecurity level would refuse them.
    if new.injects()
        && let (Some(t), Some(repo)) = (target, repository)
        && let Some(kind) = WorkloadKind::of(t)
        && let Ok(Some(repo)) =
            stores::get_or_fetch(&ctx.stores.repositories, &ctx.client, ns, repo).await
    {
        let name = t.name.as_deref().unwrap_or_default();
        // Straight from the API server: a namespace labelled a moment ago counts.
        let level = match stores::pod_security_level_now(&ctx.client, ns).await {
            Ok(l) => l,
            Err(e) => {
                return resp.deny(format!(
                    "cannot read namespace {ns}'s PodSecurity level to check the agents against it: {e}"
                ));
            }
        };
        if level != Level::Privileged {
            let pod = stores::workload_pod(&ctx.client, ns, kind, name)
                .await
                .ok()
                .flatten();
            if let Some(why) = identity::refusal(ns, level, &repo, pod.as_ref()) {
                return resp.deny(why);
            }
        }
    }
    let extra = validate::reference_warnings(repository, target, &refs);
    if extra.is_empty() {
        return resp;
    }
    let mut resp = resp;
    resp.warnings.get_or_insert_with(Vec::new).extend(extra);
    resp
}

/// What [`validate_with_references`] reads from a kind.
trait References {
    /// Whether other BackupConfigurations sharing the Repository deserve a warning.
    const SHARES_REPOSITORY: bool;
    fn repository(&self) -> Option<&str>;
    fn target_ref(&self) -> Option<&stash_crds::TargetRef>;
    /// Whether the target gets agents injected (the restic driver).
    fn injects(&self) -> bool;
}

impl References for BackupConfiguration {
    const SHARES_REPOSITORY: bool = true;
    fn repository(&self) -> Option<&str> {
        self.spec.repository.as_ref().map(|r| r.name.as_str())
    }
    fn target_ref(&self) -> Option<&stash_crds::TargetRef> {
        self.spec.target.as_ref().map(|t| &t.target_ref)
    }
    fn injects(&self) -> bool {
        self.spec.driver() == stash_crds::common::Driver::Restic
    }
}

impl References for RestoreSession {
    const SHARES_REPOSITORY: bool = false;
    fn repository(&self) -> Option<&str> {
        self.spec.repository.as_ref().map(|r| r.name.as_str())
    }
    fn target_ref(&self) -> Option<&stash_crds::TargetRef> {
        self.spec.target.as_ref().map(|t| &t.target_ref)
    }
    fn injects(&self) -> bool {
        self.spec.driver() == stash_crds::common::Driver::Restic
    }
}

fn default_kind(short: &str, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let Some(obj) = req
        .object
        .as_ref()
        .filter(|_| req.operation == Operation::Create)
    else {
        return AdmissionResponse::from(req);
    };
    let Ok(original) = serde_json::to_value(obj) else {
        return AdmissionResponse::from(req);
    };
    let m = match short {
        "backupsession" => mutate::default_backup_session(&original),
        _ => mutate::default_driver(&original),
    };
    respond(req, &original, m)
}

fn router(ctx: Ctx) -> Router {
    let mut app = Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    for h in register::validating_hooks()
        .into_iter()
        .chain(register::mutating_hooks())
    {
        let ctx = ctx.clone();
        let route = match h.decision {
            register::Decision::Validate(kind) => match kind {
                "repository" => review(|req| async move { decide::<Repository>(&req, &()) }),
                "backupconfiguration" => review(move |req| {
                    validate_with_references::<BackupConfiguration>(ctx.clone(), req)
                }),
                "backupsession" => review(|req| async move { decide::<BackupSession>(&req, &()) }),
                "restoresession" => {
                    review(move |req| validate_with_references::<RestoreSession>(ctx.clone(), req))
                }
                "function" => review(|req| async move { decide::<Function>(&req, &()) }),
                "backupconfigurationtemplate" => {
                    review(|req| async move { decide::<BackupConfigurationTemplate>(&req, &()) })
                }
                "backupblueprint" => {
                    review(|req| async move { decide::<stash_crds::BackupBlueprint>(&req, &()) })
                }
                "task" => review(move |req| validate_task(ctx.clone(), req)),
                other => unreachable!("no validator for {other}"),
            },
            register::Decision::Workload(kind) => {
                review(move |req| mutate_workload(ctx.clone(), kind, req))
            }
            register::Decision::Default(short) => {
                review(move |req| async move { default_kind(short, &req) })
            }
        };
        app = app.route(&h.path, route);
    }
    app
}

// ---------------------------------------------------------------------------------------------
// Running

struct Inner {
    client: Client,
    opts: WebhookOptions,
    endpoint: Endpoint,
    sans: Vec<String>,
    store: Arc<CertStore>,
    /// The certificate PEM being served and the CA bundle last published.
    state: tokio::sync::Mutex<(String, String)>,
}

impl Inner {
    fn secret(&self) -> certs::SecretRef {
        certs::SecretRef {
            namespace: self.opts.cert_secret_namespace.clone(),
            name: self.opts.cert_secret_name.clone(),
        }
    }

    /// Make sure the stored certificate is current (rotating when due or `force`d), the
    /// configurations carry its CA bundle, and it is the one served.
    async fn reconcile(&self, force: bool) -> anyhow::Result<()> {
        let mut state = self.state.lock().await;
        let bundle = certs::ensure(
            &self.client,
            &self.secret(),
            &self.sans,
            self.opts.cert_validity,
            force,
        )
        .await?;
        let ca_bundle = bundle.ca_bundle();
        let bundle_changed = state.1 != ca_bundle;
        register::apply(
            &self.client,
            &self.opts.configuration_name,
            &self.endpoint,
            &ca_bundle,
            self.opts.validating,
            self.opts.mutating,
        )
        .await
        .context("register the webhook configurations")?;
        state.1 = ca_bundle;
        if state.0 != bundle.cert_pem {
            if bundle_changed && !state.0.is_empty() {
                // Let the API server see the new bundle (it trusts old and new) first.
                tokio::time::sleep(self.opts.rotation_grace).await;
            }
            self.store.set_pem(&bundle.cert_pem, &bundle.key_pem)?;
            state.0 = bundle.cert_pem;
            tracing::info!("admission: serving a new certificate");
        }
        Ok(())
    }
}

/// The running webhook server. Dropping it stops serving (the registrations stay, as for a
/// restarting operator: mutating webhooks are `Ignore`, validating ones fail closed).
pub struct AdmissionServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for AdmissionServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionServer")
            .field("addr", &self.addr)
            .field("endpoint", &self.inner.endpoint)
            .finish()
    }
}

impl AdmissionServer {
    /// The address the TLS server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How the API server reaches it.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The CA bundle last written into the webhook configurations.
    pub async fn ca_bundle(&self) -> String {
        self.inner.state.lock().await.1.clone()
    }

    /// Rotate the serving certificate now (new CA and certificate; the bundle keeps the
    /// previous CA), publish the bundle, then serve the new certificate.
    pub async fn rotate(&self) -> anyhow::Result<()> {
        self.inner.reconcile(true).await
    }

    /// Stop serving and delete both webhook configurations.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop();
        register::delete(&self.inner.client, &self.inner.opts.configuration_name).await?;
        Ok(())
    }

    fn stop(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

impl Drop for AdmissionServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sans(endpoint: &Endpoint, extra: &[String]) -> Vec<String> {
    let mut out = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    match endpoint {
        Endpoint::Url(url) => {
            let host = url
                .split_once("://")
                .map_or(url.as_str(), |(_, r)| r)
                .split(['/', '?'])
                .next()
                .unwrap_or_default();
            let host = match host.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default(),
                None => host.split(':').next().unwrap_or_default(),
            };
            out.push(host.to_string());
        }
        Endpoint::Service {
            namespace, name, ..
        } => {
            out.push(format!("{name}.{namespace}.svc"));
            out.push(format!("{name}.{namespace}.svc.cluster.local"));
        }
    }
    out.extend(extra.iter().cloned());
    let mut seen = BTreeSet::new();
    out.retain(|s| !s.is_empty() && seen.insert(s.clone()));
    out
}

/// Serve `app` over TLS on `listener`; with `auth`, only to callers with an allowed client
/// certificate (refused in the handshake without one or with another CA's, `403` for a name
/// not allowed).
pub fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<CertStore>,
    app: Router,
    auth: Option<&ClientAuth>,
) -> anyhow::Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
    let Some(auth) = auth else {
        return Ok(Box::pin(serve_tls(listener, store, app)));
    };
    let config =
        client_auth_tls_config(store, &auth.ca_pem, true).context("the webhook client CA")?;
    let auth = Arc::new(auth.clone());
    let app = app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let auth = auth.clone();
            async move {
                let peer = req
                    .extensions()
                    .get::<PeerCertificates>()
                    .cloned()
                    .unwrap_or_default();
                match auth.check(&peer) {
                    Ok(()) => next.run(req).await,
                    Err(why) => {
                        tracing::warn!(reason = %why, "admission: caller refused");
                        use axum::response::IntoResponse as _;
                        (axum::http::StatusCode::FORBIDDEN, why).into_response()
                    }
                }
            }
        },
    ));
    Ok(Box::pin(serve_mtls(listener, config, app)))
}

/// Start the webhooks: load or create the serving certificate (Secret
/// `opts.cert_secret_name`), serve over TLS on `opts.bind`, register both webhook
/// configurations with the CA bundle, and keep the certificate rotated.
pub async fn start(
    client: Client,
    opts: WebhookOptions,
    inject: InjectConfig,
    stores: Stores,
) -> anyhow::Result<AdmissionServer> {
    let listener = tokio::net::TcpListener::bind(opts.bind)
        .await
        .with_context(|| format!("bind {}", opts.bind))?;
    let addr = listener.local_addr()?;
    let endpoint = opts
        .endpoint
        .clone()
        .unwrap_or_else(|| Endpoint::Url(format!("https://{addr}")));
    let sans = sans(&endpoint, &opts.extra_sans);
    let secret = certs::SecretRef {
        namespace: opts.cert_secret_namespace.clone(),
        name: opts.cert_secret_name.clone(),
    };
    let bundle = certs::ensure(&client, &secret, &sans, opts.cert_validity, false)
        .await
        .with_context(|| {
            format!(
                "webhook certificate in Secret {}/{}",
                secret.namespace, secret.name
            )
        })?;
    let store = CertStore::from_pem(&bundle.cert_pem, &bundle.key_pem)?;
    let app = router(Ctx {
        client: client.clone(),
        inject,
        stores,
    });
    let server = tokio::spawn(serve(
        listener,
        store.clone(),
        app,
        opts.client_auth.as_ref(),
    )?);
    tracing::info!(%addr, ?endpoint, client_auth = ?opts.client_auth, "admission: serving webhooks over TLS");
    let inner = Arc::new(Inner {
        client,
        opts,
        endpoint,
        sans,
        store,
        state: tokio::sync::Mutex::new((bundle.cert_pem.clone(), String::new())),
    });
    if let Err(e) = inner.reconcile(false).await {
        server.abort();
        return Err(e);
    }
    let every = inner.opts.check_interval;
    let background = inner.clone();
    let checker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = background.reconcile(false).await {
                tracing::warn!(error = %format!("{e:#}"), "admission: certificate check failed");
            }
        }
    });
    Ok(AdmissionServer {
        addr,
        inner,
        tasks: Mutex::new(vec![server, checker]),
    })
}

/// The name of the xray Repository (upstream's).
pub const XRAY_REPOSITORY: &str = "test-repository-for-webhook-xray";

/// Upstream's start-up "xray": creating Repository `default/test-repository-for-webhook-xray`
/// with `wipeOut` on a local backend must be rejected by our validating webhook. Done as a
/// dry run (nothing is stored), retried for up to `timeout` while the API server picks up the
/// configuration. An error means the webhook is not active.
pub async fn xray(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let repo: Repository = serde_json::from_value(serde_json::json!({
        "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
        "metadata": {"name": XRAY_REPOSITORY, "namespace": "default"},
        "spec": {"wipeOut": true, "backend": {"storageSecretName": "xray",
                 "local": {"mountPath": "/safe/data", "hostPath": {"path": "/tmp/stash-xray"}}}}
    }))?;
    let api = Api::<Repository>::namespaced(client.clone(), "default");
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match api.create(&pp, &repo).await {
            Err(kube::Error::Api(s))
                if s.message
                    .contains("wipe out operation is not supported for local backend") =>
            {
                return Ok(());
            }
            Err(e) => format!("unexpected answer: {e}"),
            Ok(_) => "an invalid Repository was accepted".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("AdmissionWebhookNotActivated: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `AdmissionReview` creating a Repository the validating webhook must refuse.
    fn xray_review() -> String {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "0d7f1d1c-1111-4b4b-9c9c-000000000001",
                "kind": {"group": "stash.appscode.com", "version": "v1alpha1", "kind": "Repository"},
                "resource": {"group": "stash.appscode.com", "version": "v1alpha1", "resource": "repositories"},
                "operation": "CREATE", "name": "r", "namespace": "other-team", "userInfo": {},
                "object": {"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
                           "metadata": {"name": "r", "namespace": "other-team"},
                           "spec": {"wipeOut": true, "backend": {"storageSecretName": "s",
                                    "local": {"mountPath": "/safe/data", "hostPath": {"path": "/tmp/x"}}}}}
            }
        })
        .to_string()
    }

    struct Served {
        addr: SocketAddr,
        serving_ca: String,
        task: JoinHandle<()>,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// The real router (offline client: the Repository decision reads nothing) served with
    /// `auth`.
    async fn served(auth: Option<&ClientAuth>) -> Served {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = stash_testenv::certs::Ca::new("webhook-serving-ca").expect("ca");
        let pair = ca
            .server("stash-operator", &["webhook.test"])
            .expect("serving cert");
        let store = CertStore::from_pem(&pair.cert, &pair.key).expect("store");
        let offline = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let app = router(Ctx {
            client: Client::try_from(offline).expect("client"),
            inject: InjectConfig {
                image: "stash-rs/stash:0.1.0".into(),
                pushgateway_url: String::new(),
            },
            stores: stash_index::stores::new().0,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(serve(listener, store, app, auth).expect("serve"));
        Served {
            addr,
            serving_ca: ca.cert.clone(),
            task,
        }
    }

    /// POST the review as a client with `identity` (certificate + key PEM): the status and
    /// body, or the transport error.
    async fn post(
        s: &Served,
        identity: Option<&stash_testenv::certs::Pair>,
    ) -> Result<(u16, String), String> {
        let mut b = reqwest::Client::builder()
            .resolve("webhook.test", s.addr)
            .add_root_certificate(
                reqwest::Certificate::from_pem(s.serving_ca.as_bytes()).expect("ca"),
            )
            .timeout(Duration::from_secs(10));
        if let Some(p) = identity {
            b = b.identity(
                reqwest::Identity::from_pem(format!("{}{}", p.cert, p.key).as_bytes())
                    .expect("identity"),
            );
        }
        let url = format!(
            "https://webhook.test:{}{}",
            s.addr.port(),
            register::validating_hooks()
                .into_iter()
                .find(|h| h.decision == register::Decision::Validate("repository"))
                .expect("repository hook")
                .path
        );
        let resp = b
            .build()
            .expect("client")
            .post(url)
            .header("content-type", "application/json")
            .body(xray_review())
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| format!("{e:?}"))?;
        Ok((status, body))
    }

    const API_SERVER_CN: &str = "kube-apiserver-webhook-client";

    #[tokio::test]
    async fn only_the_api_servers_client_certificate_is_answered() {
        let client_ca = stash_testenv::certs::Ca::new("webhook-client-ca").expect("ca");
        let other_ca = stash_testenv::certs::Ca::new("another-ca").expect("ca");
        let auth = ClientAuth {
            ca_pem: client_ca.cert.clone(),
            allowed_names: vec![API_SERVER_CN.into()],
        };
        let s = served(Some(&auth)).await;

        let good = client_ca.client(API_SERVER_CN, &[]).expect("cert");
        let (status, body) = post(&s, Some(&good)).await.expect("answered");
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("wipe out operation is not supported for local backend"),
            "the decision is answered: {body}"
        );

        let none = post(&s, None).await;
        assert!(none.is_err(), "no client certificate: {none:?}");
        let foreign = other_ca.client(API_SERVER_CN, &[]).expect("cert");
        let foreign = post(&s, Some(&foreign)).await;
        assert!(foreign.is_err(), "another CA's certificate: {foreign:?}");
        let mallory = client_ca.client("mallory", &[]).expect("cert");
        let (status, body) = post(&s, Some(&mallory)).await.expect("an HTTP answer");
        assert_eq!(status, 403, "a name not allowed: {body}");
        assert!(!body.contains("wipe out"), "{body}");

        // The right certificate is still answered after the refusals.
        let (status, _) = post(&s, Some(&good)).await.expect("answered");
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn without_a_client_ca_any_tls_client_is_answered() {
        let s = served(None).await;
        let (status, body) = post(&s, None).await.expect("answered");
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("wipe out operation is not supported"),
            "{body}"
        );
    }

    #[test]
    fn client_auth_from_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.crt");
        let names_file = dir.path().join("allowed-names");
        assert_eq!(
            ClientAuth::from_files(&ca_file, Some(&names_file)).expect("missing is off"),
            None
        );
        std::fs::write(&ca_file, "not a certificate").expect("write");
        assert!(ClientAuth::from_files(&ca_file, None).is_err());
        let ca = stash_testenv::certs::Ca::new("c").expect("ca");
        std::fs::write(&ca_file, &ca.cert).expect("write");
        let auth = ClientAuth::from_files(&ca_file, Some(&names_file))
            .expect("read")
            .expect("configured");
        assert!(auth.allowed_names.is_empty());
        std::fs::write(
            &names_file,
            "# who may call\nkube-apiserver-webhook-client\n\n other \n",
        )
        .expect("write");
        let auth = ClientAuth::from_files(&ca_file, Some(&names_file))
            .expect("read")
            .expect("configured");
        assert_eq!(
            auth.allowed_names,
            vec!["kube-apiserver-webhook-client", "other"]
        );
        assert!(!format!("{auth:?}").contains("BEGIN"));

        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            w: Args,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--webhook-addr=127.0.0.1:0",
            &format!("--webhook-client-ca-file={}", ca_file.display()),
            &format!(
                "--webhook-client-allowed-names-file={}",
                names_file.display()
            ),
        ])
        .expect("flags");
        let opts = cli.w.options("ns").expect("options").expect("webhooks");
        assert_eq!(opts.client_auth, Some(auth));
        let cli = Cli::try_parse_from([
            "x",
            "--webhook-addr=127.0.0.1:0",
            "--webhook-client-ca-file=/nonexistent/ca.crt",
        ])
        .expect("flags");
        assert_eq!(
            cli.w
                .options("ns")
                .expect("options")
                .expect("webhooks")
                .client_auth,
            None
        );
    }

    #[test]
    fn certificate_names() {
        let s = sans(&Endpoint::Url("https://127.0.0.1:8443".into()), &[]);
        assert_eq!(s, vec!["127.0.0.1", "localhost"]);
        let s = sans(
            &Endpoint::Service {
                namespace: "kube-system".into(),
                name: "stash-operator".into(),
                port: 443,
            },
            &[],
        );
        assert!(s.contains(&"stash-operator.kube-system.svc".to_string()));
        assert!(s.contains(&"stash-operator.kube-system.svc.cluster.local".to_string()));
        assert_eq!(
            parse_service("kube-system/stash-operator:443").expect("parse"),
            Endpoint::Service {
                namespace: "kube-system".into(),
                name: "stash-operator".into(),
                port: 443
            }
        );
        assert!(parse_service("stash-operator:443").is_err());
    }
}
