//! A generic HTTPS server for Kubernetes admission webhooks.
//!
//! The transport stays thin: [`review`] turns an async decision
//! `AdmissionRequest -> AdmissionResponse` into an axum handler that parses the
//! `AdmissionReview`, calls the decision and answers with `into_review()`. [`serve_tls`] serves
//! any axum [`Router`] (a `tower::Service`) over TLS, one hyper HTTP/1.1 connection per accepted
//! socket. The serving certificate comes from a [`CertStore`], a rustls certificate resolver
//! whose certificate can be replaced at any time ([`CertStore::set_pem`]): new connections use
//! the new certificate at once, without a restart.
use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{Router, body::Bytes, http::StatusCode, response::IntoResponse, routing::MethodRouter};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::net::TcpListener;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The PEM could not be parsed.
    #[error("certificate PEM: {0}")]
    Pem(String),
    /// The key is of an unsupported type.
    #[error("private key: {0}")]
    Key(String),
}

/// The serving certificate of a TLS server, replaceable while it runs.
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").finish_non_exhaustive()
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::Pem("no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| CertError::Key(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl CertStore {
    /// A store serving the PEM certificate chain `cert_pem` with the PKCS#8/PKCS#1/SEC1 PEM key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Arc<Self>, CertError> {
        Ok(Arc::new(Self {
            current: RwLock::new(certified_key(cert_pem, key_pem)?),
        }))
    }

    /// Replace the certificate; connections accepted from now on use it.
    pub fn set_pem(&self, cert_pem: &str, key_pem: &str) -> Result<(), CertError> {
        let key = certified_key(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }

    /// The DER of the leaf certificate currently served.
    pub fn leaf_der(&self) -> Vec<u8> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current
            .cert
            .first()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// A rustls server configuration (ring, TLS 1.2 and 1.3, HTTP/1.1 via ALPN) whose certificate
/// is resolved from `store` at every handshake.
pub fn tls_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A rustls server configuration like [`tls_config`] that verifies client certificates against
/// the CAs in `client_ca_pem`. A certificate another CA signed always fails the handshake; a
/// client without a certificate fails it too when `required`, else it is let through (the
/// application decides). Serve it with [`crate::aggregated::serve_mtls`], which hands every
/// request the verified chain (e.g. to check the certificate's name).
pub fn client_auth_tls_config(
    store: Arc<CertStore>,
    client_ca_pem: &str,
    required: bool,
) -> Result<Arc<ServerConfig>, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| CertError::Pem(e.to_string()))?;
        roots.add(cert).map_err(|e| CertError::Pem(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(CertError::Pem("no client CA certificate found".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    if !required {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serve `app` over TLS on `listener` until the returned future is dropped. Each connection is
/// served on its own task; a connection whose handshake takes longer than 10 s is dropped.
pub fn serve_tls(
    listener: TcpListener,
    store: Arc<CertStore>,
    app: Router,
) -> impl Future<Output = ()> + Send {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(store));
    async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admission: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "admission: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "admission: TLS handshake timed out");
                        return;
                    }
                };
                let service = TowerToHyperService::new(app);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "admission: connection ended with an error");
                }
            });
        }
    }
}

/// Bind `addr` and serve `app` over TLS. Returns the bound address (port 0 picks a free one)
/// and the serving future.
pub async fn bind_tls(
    addr: SocketAddr,
    store: Arc<CertStore>,
    app: Router,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, serve_tls(listener, store, app)))
}

fn json(status: StatusCode, review: &AdmissionReview<DynamicObject>) -> axum::response::Response {
    match serde_json::to_vec(review) {
        Ok(body) => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// An axum `POST` handler for one webhook path: parse the `AdmissionReview`, call `decide`,
/// answer with its response. A body that is not an `AdmissionReview` request gets `400` with an
/// `invalid` response.
pub fn review<F, Fut>(decide: F) -> MethodRouter
where
    F: Fn(AdmissionRequest<DynamicObject>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = AdmissionResponse> + Send + 'static,
{
    axum::routing::post(move |body: Bytes| {
        let decide = decide.clone();
        async move {
            let req: AdmissionRequest<DynamicObject> = match serde_json::from_slice::<
                AdmissionReview<DynamicObject>,
            >(&body)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                r.try_into()
                    .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| e.to_string())
            }) {
                Ok(req) => req,
                Err(e) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &AdmissionResponse::invalid(format!("not an AdmissionReview: {e}"))
                            .into_review(),
                    );
                }
            };
            json(StatusCode::OK, &decide(req).await.into_review())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The round trip with real certificates (rcgen) is tested by the stash admission module.
    #[test]
    fn garbage_is_refused() {
        assert!(
            CertStore::from_pem(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                ""
            )
            .is_err()
        );
        assert!(CertStore::from_pem("", "").is_err());
    }
}
