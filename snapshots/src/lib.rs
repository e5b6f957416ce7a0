//! The Snapshot API (stash-api.md §8.1): `repositories.stash.appscode.com/v1alpha1`
//! `snapshots`, an aggregated API served by the operator and registered with the
//! kube-apiserver through an APIService.
//!
//! - [`catalog`]: every Repository's snapshots, read when asked and kept (keyed by UID) until
//!   stale or a backup completes; bounded restic concurrency; an unreadable repository is an
//!   error, not an empty list.
//! - [`api`]: discovery, OpenAPI, health, `get`/`list`/`delete` (JSON, Tables for kubectl,
//!   partial metadata), `metav1.Status` errors.
//! - [`auth`]: front-proxy authentication (client certificate verified against the
//!   request-header CA, CN in the allowed names, user from `X-Remote-*`) and
//!   SubjectAccessReview authorization with a short cache.
//! - [`register`]: the Service and the APIService.
//! - [`selector`]: label and field selectors.
//!
//! [`start`] wires it together; [`SnapshotApiServer::shutdown`] deletes the APIService (an
//! unavailable APIService breaks discovery and namespace deletion cluster-wide).
//!
//! Deviations from upstream, deliberate: local backends are read from their `hostPath` by the
//! operator instead of exec'ing into a workload pod (other local volumes list nothing); the
//! `metadata.name`/`metadata.namespace` field selectors are honoured; snapshots of a namespace
//! being deleted are hidden so that the namespace controller never forgets them.
pub mod api;
pub mod auth;
pub mod catalog;
pub mod register;
pub mod selector;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use kube::Client;
use stash_runtime::{
    admission::CertStore,
    aggregated::{mtls_config, serve_mtls},
};
use tokio::task::JoinHandle;

pub use catalog::{Catalog, CatalogOptions};
pub mod reader;

use stash_runtime::certs;

/// Default Service name (upstream's operator Service).
pub const DEFAULT_SERVICE: &str = "stash-operator";
/// Default Secret for the serving certificate.
pub const CERT_SECRET: &str = "stash-snapshot-api-cert";

/// Command-line flags of the Snapshot API (flattened into the operator's options).
#[derive(Clone, Debug, clap::Args)]
#[group(id = "snapshot-api-args")]
pub struct Args {
    /// Serve the Snapshot API (repositories.stash.appscode.com) over TLS on this address
    /// (unset: not served, no APIService).
    #[arg(long)]
    pub snapshot_api_addr: Option<SocketAddr>,
    /// How old a repository's snapshot list may get before a request has the catalog read it
    /// again (nothing is read on a timer).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub snapshot_api_refresh: Duration,
    /// At most this many restic runs of the catalog at a time.
    #[arg(long, default_value_t = 4)]
    pub snapshot_api_concurrency: usize,
    /// The Service the APIService points at (in the operator's namespace).
    #[arg(long, default_value = DEFAULT_SERVICE)]
    pub snapshot_api_service: String,
    /// Its port (default: the bound port).
    #[arg(long)]
    pub snapshot_api_service_port: Option<u16>,
    /// Create the Service as `type: ExternalName` with this external name (e.g. `localhost`
    /// when the API server reaches the operator on loopback); unset: the Service is the
    /// installer's (selecting the operator pods).
    #[arg(long)]
    pub snapshot_api_external_name: Option<String>,
    /// The restic binary the catalog runs.
    #[arg(long, default_value = "restic")]
    pub snapshot_api_restic: PathBuf,
}

impl Args {
    /// The options these flags ask for (`None` without `--snapshot-api-addr`).
    pub fn options(&self, namespace: &str) -> Option<SnapshotApiOptions> {
        let bind = self.snapshot_api_addr?;
        let mut o = SnapshotApiOptions::new(bind, namespace);
        o.catalog.refresh = self.snapshot_api_refresh;
        o.catalog.concurrency = self.snapshot_api_concurrency;
        o.catalog.restic = self.snapshot_api_restic.clone();
        o.service_name = self.snapshot_api_service.clone();
        o.service_port = self.snapshot_api_service_port;
        o.external_name = self.snapshot_api_external_name.clone();
        Some(o)
    }
}

/// How to run the Snapshot API.
#[derive(Clone, Debug)]
pub struct SnapshotApiOptions {
    /// Listen address (port 0: any free port).
    pub bind: SocketAddr,
    /// The operator's namespace (Service, certificate Secret).
    pub namespace: String,
    /// Service name.
    pub service_name: String,
    /// Service port (default: the bound port).
    pub service_port: Option<u16>,
    /// Create an ExternalName Service to this host (tests: `localhost`).
    pub external_name: Option<String>,
    /// Secret holding the serving certificate.
    pub cert_secret_name: String,
    /// Validity of a generated serving certificate.
    pub cert_validity: Duration,
    /// Catalog settings.
    pub catalog: CatalogOptions,
    /// How long an allowed SubjectAccessReview answer is reused.
    pub authz_cache_ttl: Duration,
    /// Register the APIService (and wait until it is Available).
    pub register: bool,
    /// How long to wait for `Available` before `start` returns; zero: do not wait (the
    /// operator: the APIService reaches it through a Service that routes only to Ready pods,
    /// so waiting before readiness would deadlock), and log when it becomes Available.
    pub available_timeout: Duration,
}

impl SnapshotApiOptions {
    /// Defaults for serving on `bind` with the operator in `namespace`.
    pub fn new(bind: SocketAddr, namespace: &str) -> Self {
        Self {
            bind,
            namespace: namespace.to_owned(),
            service_name: DEFAULT_SERVICE.to_owned(),
            service_port: None,
            external_name: None,
            cert_secret_name: CERT_SECRET.to_owned(),
            cert_validity: Duration::from_secs(365 * 24 * 3600),
            catalog: CatalogOptions::default(),
            authz_cache_ttl: Duration::from_secs(10),
            register: true,
            available_timeout: Duration::from_secs(60),
        }
    }
}

/// A running Snapshot API server.
pub struct SnapshotApiServer {
    addr: SocketAddr,
    client: Client,
    catalog: Catalog,
    ca_bundle: String,
    service: Option<(String, String)>,
    registered: bool,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for SnapshotApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SnapshotApiServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The snapshot catalog (call [`Catalog::invalidate`] after a backup, forget or restore).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The PEM CA bundle clients (the APIService) trust for the serving certificate.
    pub fn ca_bundle(&self) -> &str {
        &self.ca_bundle
    }

    /// Stop serving and refreshing, leaving the registration in place (another replica, or
    /// this one restarted, keeps serving it).
    pub fn stop(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    /// Delete the APIService (and the Service if this server created it), then stop serving.
    /// For the last server of a cluster (tests, uninstall): an APIService without a backend
    /// breaks discovery and namespace deletion.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        let result = if self.registered {
            register::unregister(
                &self.client,
                self.service
                    .as_ref()
                    .map(|(ns, n)| (ns.as_str(), n.as_str())),
            )
            .await
        } else {
            Ok(())
        };
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        result
    }
}

impl Drop for SnapshotApiServer {
    fn drop(&mut self) {
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

/// Start the Snapshot API: read the request-header settings, start the catalog, load or create
/// the serving certificate (Secret `opts.cert_secret_name`, SANs `<svc>.<ns>.svc`, …), serve
/// over TLS on `opts.bind`, and register the Service/APIService, waiting until it is Available.
/// Its Repositories come from the operator's shared store (`repos`) and its changes.
pub async fn start(
    client: Client,
    opts: SnapshotApiOptions,
    repos: kube::runtime::reflector::Store<stash_crds::Repository>,
    changes: impl futures::Stream<Item = stash_index::stores::Change<stash_crds::Repository>>
    + Send
    + 'static,
) -> anyhow::Result<SnapshotApiServer> {
    let authn = auth::RequestHeaderConfig::load(&client)
        .await
        .context("front-proxy authentication settings")?;
    let listener = tokio::net::TcpListener::bind(opts.bind)
        .await
        .with_context(|| format!("bind {}", opts.bind))?;
    let addr = listener.local_addr()?;
    let (svc, ns) = (&opts.service_name, &opts.namespace);
    let sans: Vec<String> = vec![
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
        format!("{svc}.{ns}"),
        "localhost".into(),
        "127.0.0.1".into(),
    ];
    let secret = certs::SecretRef {
        namespace: ns.clone(),
        name: opts.cert_secret_name.clone(),
    };
    let bundle = certs::ensure(&client, &secret, &sans, opts.cert_validity, false)
        .await
        .with_context(|| {
            format!(
                "Snapshot API certificate in Secret {ns}/{}",
                opts.cert_secret_name
            )
        })?;
    let store = CertStore::from_pem(&bundle.cert_pem, &bundle.key_pem)?;
    let tls = mtls_config(store, &authn.client_ca_pem).context("request-header client CA")?;

    let (catalog, mut tasks) =
        Catalog::start(client.clone(), opts.catalog.clone(), repos, changes).await;
    let state = Arc::new(api::ApiState {
        catalog: catalog.clone(),
        authn,
        authz: auth::Authorizer::new(client.clone(), opts.authz_cache_ttl),
    });
    tasks.push(tokio::spawn(serve_mtls(listener, tls, api::router(state))));
    tracing::info!(%addr, "snapshots: serving repositories.stash.appscode.com/v1alpha1 over TLS");

    let mut server = SnapshotApiServer {
        addr,
        client: client.clone(),
        catalog,
        ca_bundle: bundle.ca_bundle(),
        service: None,
        registered: false,
        tasks: std::sync::Mutex::new(tasks),
    };
    if opts.register {
        let port = opts.service_port.unwrap_or(addr.port());
        if let Some(external) = &opts.external_name {
            register::apply_external_service(&client, ns, svc, external, port).await?;
            server.service = Some((ns.clone(), svc.clone()));
        }
        register::apply_apiservice(&client, ns, svc, port, &server.ca_bundle).await?;
        server.registered = true;
        if opts.available_timeout.is_zero() {
            let client = client.clone();
            tokio::spawn(async move {
                loop {
                    match register::wait_available(&client, Duration::from_secs(60)).await {
                        Ok(()) => {
                            break tracing::info!(apiservice = %register::apiservice_name(), "snapshots: APIService available");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "snapshots: the APIService is not Available yet")
                        }
                    }
                }
            });
        } else {
            if let Err(e) = register::wait_available(&client, opts.available_timeout).await {
                let _ = server.shutdown().await;
                return Err(e);
            }
            tracing::info!(apiservice = %register::apiservice_name(), "snapshots: APIService available");
        }
    }
    Ok(server)
}
