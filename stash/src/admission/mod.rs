//! The admission webhooks (stash-api.md §8), served by the operator over TLS.
//!
//! - [`validate`]: the validating decisions ([`Validate`] per kind), pure; messages name the
//!   field (`spec.schedule: invalid cron expression ...`).
//! - [`mutate`]: the mutating decisions, pure: sidecar injection into workloads through
//!   [`crate::inject::apply_backup`] (the controller's decision) and defaulting of our kinds.
//! - [`certs`]: the serving certificate — generated, kept in a Secret, rotated.
//! - [`register`]: the webhook configurations (both `admission.stash.appscode.com`) and paths.
//!
//! The transport is thin: [`stash_runtime::admission`] parses the `AdmissionReview`, this module
//! converts the object to its type, fetches what a decision needs to read (BackupConfigurations
//! and the Repository for a workload, the Functions for a Task — never writing anything), calls
//! the decision and returns `deny(reason)` or a JSON patch.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
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
use stash_runtime::admission::{CertStore, review, serve_tls};
use tokio::task::JoinHandle;

use crate::{inject::InjectConfig, target::WorkloadKind};

pub mod certs;
pub mod cron;
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
    let bcs = match Api::<BackupConfiguration>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            let m = mutate::Mutation {
                object: None,
                warnings: vec![format!("stash: cannot list BackupConfigurations: {e}")],
            };
            return respond(&req, &original, m);
        }
    };
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
            match Api::<Repository>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&repo_name)
                .await
            {
                Ok(r) => repo = r,
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
    let sessions = Api::<RestoreSession>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await;
    let restore = match sessions
        .as_ref()
        .map(|l| crate::inject::applicable_restore(kind, &name, &l.items))
    {
        Ok(Some(rs)) => {
            let repo_name = rs
                .spec
                .repository
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default();
            match Api::<Repository>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&repo_name)
                .await
            {
                Ok(Some(r)) => Some((rs.clone(), r)),
                _ => None,
            }
        }
        _ => None,
    };
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
        refs.repository_exists = Api::<Repository>::namespaced(ctx.client.clone(), ns)
            .get_metadata_opt(repo)
            .await
            .ok()
            .map(|r| r.is_some());
        if K::SHARES_REPOSITORY
            && let Ok(list) = Api::<BackupConfiguration>::namespaced(ctx.client.clone(), ns)
                .list(&ListParams::default())
                .await
        {
            refs.sharing_repository = list
                .items
                .iter()
                .filter(|bc| bc.name_any() != req.name)
                .filter(|bc| bc.spec.repository.as_ref().is_some_and(|r| r.name == repo))
                .map(ResourceExt::name_any)
                .collect();
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
}

impl References for BackupConfiguration {
    const SHARES_REPOSITORY: bool = true;
    fn repository(&self) -> Option<&str> {
        self.spec.repository.as_ref().map(|r| r.name.as_str())
    }
    fn target_ref(&self) -> Option<&stash_crds::TargetRef> {
        self.spec.target.as_ref().map(|t| &t.target_ref)
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

/// Start the webhooks: load or create the serving certificate (Secret
/// `opts.cert_secret_name`), serve over TLS on `opts.bind`, register both webhook
/// configurations with the CA bundle, and keep the certificate rotated.
pub async fn start(
    client: Client,
    opts: WebhookOptions,
    inject: InjectConfig,
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
    });
    let serving = serve_tls(listener, store.clone(), app);
    tracing::info!(%addr, ?endpoint, "admission: serving webhooks over TLS");
    let server = tokio::spawn(serving);
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
