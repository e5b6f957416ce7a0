//! The control plane's PKI, generated fresh for every start.
//!
//! Three independent CAs, as a real cluster has them: the client CA that signs user
//! certificates, the serving CA that signs the API server's certificate, and the
//! front-proxy CA that signs the aggregator's client certificate (it must differ from
//! the client CA). Plus the service-account signing key.
use std::{fs, path::Path};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
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
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert: String,
    /// The CA's private key, PEM (written next to the certificate so that processes that
    /// attach to a running cluster can issue users too).
    pub key: String,
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
    fn params(cn: &str) -> Result<CertificateParams, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        params.distinguished_name = dn(cn, Some("stash-testenv"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(params)
    }

    /// A new self-signed CA named `cn`.
    pub fn new(cn: &str) -> Result<Self, Error> {
        let key = KeyPair::generate().map_err(rc)?;
        let key_pem = key.serialize_pem();
        let cert = CertifiedIssuer::self_signed(Self::params(cn)?, key)
            .map_err(rc)?
            .pem();
        Self::load(cn, &cert, &key_pem)
    }

    /// The CA named `cn` from its certificate and key (PEM), e.g. read back from a running
    /// cluster's files.
    pub fn load(cn: &str, cert: &str, key: &str) -> Result<Self, Error> {
        let issuer = Issuer::new(Self::params(cn)?, KeyPair::from_pem(key).map_err(rc)?);
        Ok(Self {
            issuer,
            cert: cert.to_string(),
            key: key.to_string(),
        })
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
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.sign(params)
    }

    /// A serving certificate for the given DNS names and IP addresses.
    pub fn server(&self, cn: &str, sans: &[&str]) -> Result<Pair, Error> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(rc)?;
        params.distinguished_name = dn(cn, None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Pair, Error> {
        let key = KeyPair::generate().map_err(rc)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rc)?;
        Ok(Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
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

/// Every certificate and key the cluster needs, written under one directory (`pki/` of the
/// environment's state directory). The CAs' keys are written too, so that a test process
/// attached to the running cluster can issue users ([`Pki::load`]).
#[derive(Debug)]
pub struct Pki {
    /// Signs user (client) certificates; the API server and the kubelet trust it.
    pub client_ca: Ca,
    /// Signs the API server's and the kubelet's serving certificates.
    pub serving_ca: Ca,
    /// Signs the aggregator's front-proxy client certificate.
    pub front_proxy_ca: Ca,
    /// `admin`, in `system:masters`.
    pub admin: Pair,
}

/// A client identity of one cluster component: file stem, user, groups.
pub const COMPONENTS: &[(&str, &str, &[&str])] = &[
    ("kcm", "system:kube-controller-manager", &[]),
    ("scheduler", "system:kube-scheduler", &[]),
    ("kube-proxy", "system:kube-proxy", &[]),
    ("kubelet", "system:node:stash-node", &["system:nodes"]),
    ("coredns", "stash-testenv:coredns", &["system:masters"]),
    (
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        &["system:masters"],
    ),
];

impl Pki {
    /// Generate the PKI and write every file the servers read: `<stem>.crt`/`<stem>.key`
    /// for the CAs, the API server, the kubelet's serving certificate, each of
    /// [`COMPONENTS`], the front proxy and the service-account key pair.
    pub fn generate(dir: &Path, node_ip: &str, api_service_ip: &str) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::Io(format!("create {}", dir.display()), e))?;
        let client_ca = Ca::new("stash-testenv-client-ca")?;
        let serving_ca = Ca::new("stash-testenv-serving-ca")?;
        let front_proxy_ca = Ca::new("stash-testenv-front-proxy-ca")?;
        let apiserver = serving_ca.server(
            "kube-apiserver",
            &[
                node_ip,
                api_service_ip,
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?;
        let kubelet_serving = serving_ca.server("stash-node", &[node_ip, "stash-node"])?;
        let front_proxy_client = front_proxy_ca.client("front-proxy-client", &[])?;
        let admin = client_ca.client("admin", &["system:masters"])?;
        let sa = KeyPair::generate().map_err(rc)?;

        let w = |name: &str, body: &str| -> Result<(), Error> {
            let path = dir.join(name);
            fs::write(&path, body).map_err(|e| Error::Io(format!("write {}", path.display()), e))
        };
        let pair = |stem: &str, p: &Pair| -> Result<(), Error> {
            w(&format!("{stem}.crt"), &p.cert)?;
            w(&format!("{stem}.key"), &p.key)
        };
        w("client-ca.crt", &client_ca.cert)?;
        w("client-ca.key", &client_ca.key)?;
        w("serving-ca.crt", &serving_ca.cert)?;
        w("serving-ca.key", &serving_ca.key)?;
        w("front-proxy-ca.crt", &front_proxy_ca.cert)?;
        w("front-proxy-ca.key", &front_proxy_ca.key)?;
        pair("apiserver", &apiserver)?;
        pair("kubelet-serving", &kubelet_serving)?;
        pair("front-proxy-client", &front_proxy_client)?;
        pair("admin", &admin)?;
        for (stem, user, groups) in COMPONENTS {
            pair(stem, &client_ca.client(user, groups)?)?;
        }
        w("sa.pub", &sa.public_key_pem())?;
        w("sa.key", &sa.serialize_pem())?;
        Ok(Self {
            client_ca,
            serving_ca,
            front_proxy_ca,
            admin,
        })
    }

    /// Read back the PKI a running cluster wrote with [`Pki::generate`].
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let r = |name: &str| -> Result<String, Error> {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|e| Error::Io(format!("read {}", path.display()), e))
        };
        Ok(Self {
            client_ca: Ca::load(
                "stash-testenv-client-ca",
                &r("client-ca.crt")?,
                &r("client-ca.key")?,
            )?,
            serving_ca: Ca::load(
                "stash-testenv-serving-ca",
                &r("serving-ca.crt")?,
                &r("serving-ca.key")?,
            )?,
            front_proxy_ca: Ca::load(
                "stash-testenv-front-proxy-ca",
                &r("front-proxy-ca.crt")?,
                &r("front-proxy-ca.key")?,
            )?,
            admin: Pair {
                cert: r("admin.crt")?,
                key: r("admin.key")?,
            },
        })
    }

    /// Read one component's certificate pair (see [`COMPONENTS`]).
    pub fn component(dir: &Path, stem: &str) -> Result<Pair, Error> {
        let r = |name: String| -> Result<String, Error> {
            let path = dir.join(&name);
            fs::read_to_string(&path).map_err(|e| Error::Io(format!("read {}", path.display()), e))
        };
        Ok(Pair {
            cert: r(format!("{stem}.crt"))?,
            key: r(format!("{stem}.key"))?,
        })
    }
}
