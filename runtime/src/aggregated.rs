//! TLS transport for aggregated API servers (APIService backends).
//!
//! The kube-aggregator dials an APIService backend with its proxy client certificate (signed by
//! the request-header CA) and passes the authenticated user in `X-Remote-*` headers. A backend
//! must therefore verify the client certificate against the request-header CA before trusting
//! those headers. [`mtls_config`] builds a rustls server configuration (ring provider) that
//! verifies client certificates against a PEM CA bundle — optionally: health probes come
//! without one — and [`serve_mtls`] serves an axum [`Router`] on it, handing every request the
//! verified chain as the [`PeerCertificates`] extension (empty when the client sent none).
//!
//! The serving certificate comes from the same hot-swappable [`CertStore`] as the admission
//! webhooks.
use std::{future::Future, sync::Arc, time::Duration};

use axum::{Extension, Router};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use rustls::{ServerConfig, pki_types::CertificateDer};
use tokio::net::TcpListener;

use crate::admission::{CertError, CertStore};

/// The client certificate chain verified during the TLS handshake (leaf first); empty when
/// the client presented no certificate.
#[derive(Clone, Debug, Default)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

impl PeerCertificates {
    /// The DER of the verified leaf certificate, if any.
    pub fn leaf(&self) -> Option<&[u8]> {
        self.0.first().map(|c| c.as_ref())
    }
}

/// A rustls server configuration (ring, TLS 1.2/1.3, HTTP/1.1 via ALPN) serving the
/// certificate of `store` and verifying client certificates against the CAs in
/// `client_ca_pem`. Clients without a certificate are let through the handshake (the
/// application decides, e.g. health probes); a certificate that does not verify fails it.
pub fn mtls_config(
    store: Arc<CertStore>,
    client_ca_pem: &str,
) -> Result<Arc<ServerConfig>, CertError> {
    crate::admission::client_auth_tls_config(store, client_ca_pem, false)
}

/// Serve `app` over TLS with `config` on `listener` until the returned future is dropped. Each
/// request carries the connection's verified client chain as [`PeerCertificates`].
pub fn serve_mtls(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    app: Router,
) -> impl Future<Output = ()> + Send {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "aggregated: accept failed");
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
                        tracing::debug!(%peer, error = %e, "aggregated: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "aggregated: TLS handshake timed out");
                        return;
                    }
                };
                let chain: Vec<CertificateDer<'static>> = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default();
                let app = app.layer(Extension(PeerCertificates(Arc::new(chain))));
                let service = TowerToHyperService::new(app);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "aggregated: connection ended with an error");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_ca_is_required() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = stash_testenv::certs::Ca::new("test-ca").expect("ca");
        let pair = ca.server("server", &["localhost"]).expect("server cert");
        let store = CertStore::from_pem(&pair.cert, &pair.key).expect("store");
        assert!(mtls_config(store.clone(), "").is_err());
        assert!(mtls_config(store, &ca.cert).is_ok());
    }
}
