//! TLS for the interop component's connections: the MLLP listener (optionally requiring client
//! certificates signed by a given CA: mutual TLS), the feeds' connections to receiving engines, and
//! the calls to the gateway. Certificates and keys are PEM, read from files at start.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A certificate chain and its key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub certificate: String,
    pub key: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(..)")
    }
}

impl Identity {
    pub fn from_files(certificate: &Path, key: &Path) -> anyhow::Result<Self> {
        Ok(Self { certificate: read(certificate)?, key: read(key)? })
    }
}

/// The text of a PEM file.
pub fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &str, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{what} is not PEM certificates"))?;
    anyhow::ensure!(!certificates.is_empty(), "{what} holds no certificate");
    Ok(certificates)
}

fn roots(pem: &str, what: &str) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(pem, what)? {
        roots.add(certificate).with_context(|| format!("{what}: a certificate is not usable as a CA"))?;
    }
    Ok(roots)
}

fn key(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).context("the key is not a PEM private key")
}

/// The listener's TLS: its identity, and the CA client certificates must be signed by (mutual TLS)
/// when given.
pub fn acceptor(identity: &Identity, client_ca: Option<&str>) -> anyhow::Result<TlsAcceptor> {
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca, "the client CA")?), provider()).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certificates(&identity.certificate, "the certificate")?, key(&identity.key)?)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connection's TLS to a server whose certificate `ca` signed, presenting `identity` when given.
pub fn connector(ca: &str, identity: Option<&Identity>) -> anyhow::Result<TlsConnector> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?.with_root_certificates(roots(ca, "the CA")?);
    let config = match identity {
        Some(identity) => {
            builder.with_client_auth_cert(certificates(&identity.certificate, "the client certificate")?, key(&identity.key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name a server's certificate must carry.
pub fn server_name(name: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(name.to_string()).with_context(|| format!("{name:?} is not a server name"))
}
