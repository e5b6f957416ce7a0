//! The control plane's PKI, generated fresh for every start.
//!
//! Three independent CAs, as a real cluster has them: the client CA that signs user
//! certificates, the serving CA that signs the API server's certificate, and the
//! front-proxy CA that signs the aggregator's client certificate (it must differ from
//! the client CA). Plus the service-account signing key.
use std::{fs, path::Path};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::Error;

/// A certificate with its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Pair {
    /// The certificate, PEM.
    pub cert: String,
    /// The private key, PKCS#8 PEM.
    pub key: String,
}

/// A certificate authority that can issue leaf certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn rc(e: rcgen::Error) -> Error {
    Error::Certs(e.to_string())
}

impl Ca {
    /// A new self-signed CA named `cn`.
    pub fn new(cn: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        params.distinguished_name = dn(cn, Some("stash-testenv"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(rc)?).map_err(rc)?;
        let cert = issuer.pem();
        Ok(Self { issuer, cert })
    }

    /// A client certificate for user `cn` in groups `orgs`.
    pub fn client(&self, cn: &str, orgs: &[&str]) -> Result<Pair, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, cn);
        for o in orgs {
            name.push(DnType::OrganizationName, *o);
        }
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        self.sign(params)
    }

    /// A serving certificate for the given DNS names and IP addresses.
    pub fn server(&self, cn: &str, sans: &[&str]) -> Result<Pair, Error> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).map_err(rc)?;
        params.distinguished_name = dn(cn, None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Pair, Error> {
        let key = KeyPair::generate().map_err(rc)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rc)?;
        Ok(Pair { cert: cert.pem(), key: key.serialize_pem() })
    }
}

fn dn(cn: &str, o: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    if let Some(o) = o {
        name.push(DnType::OrganizationName, o);
    }
    name
}

/// Every certificate and key the control plane needs, written under one directory.
#[derive(Debug)]
pub struct Pki {
    /// Signs user (client) certificates; the API server trusts it for authentication.
    pub client_ca: Ca,
    /// Signs the API server's serving certificate.
    pub serving_ca: Ca,
    /// Signs the aggregator's front-proxy client certificate.
    pub front_proxy_ca: Ca,
    /// `admin`, in `system:masters`.
    pub admin: Pair,
    /// The controller manager's identity (also in `system:masters`, see the kcm flags).
    pub controller_manager: Pair,
}

impl Pki {
    /// Generate the PKI and write the files the API server and controller manager read.
    pub fn generate(dir: &Path) -> Result<Self, Error> {
        let client_ca = Ca::new("stash-testenv-client-ca")?;
        let serving_ca = Ca::new("stash-testenv-serving-ca")?;
        let front_proxy_ca = Ca::new("stash-testenv-front-proxy-ca")?;
        let apiserver = serving_ca.server(
            "kube-apiserver",
            &[
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?;
        let front_proxy_client = front_proxy_ca.client("front-proxy-client", &[])?;
        let admin = client_ca.client("admin", &["system:masters"])?;
        let controller_manager = client_ca.client("system:kube-controller-manager", &["system:masters"])?;
        let sa = KeyPair::generate().map_err(rc)?;

        let w = |name: &str, body: &str| -> Result<(), Error> {
            fs::write(dir.join(name), body).map_err(|e| Error::Io(format!("write {name}"), e))
        };
        w("client-ca.crt", &client_ca.cert)?;
        w("serving-ca.crt", &serving_ca.cert)?;
        w("front-proxy-ca.crt", &front_proxy_ca.cert)?;
        w("apiserver.crt", &apiserver.cert)?;
        w("apiserver.key", &apiserver.key)?;
        w("front-proxy-client.crt", &front_proxy_client.cert)?;
        w("front-proxy-client.key", &front_proxy_client.key)?;
        w("sa.pub", &sa.public_key_pem())?;
        w("sa.key", &sa.serialize_pem())?;
        Ok(Self { client_ca, serving_ca, front_proxy_ca, admin, controller_manager })
    }
}
