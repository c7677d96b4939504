//! Client-side TLS set up exactly as the device SDK does it (`kdps_device::client`): ring
//! provider, TLS 1.3 and 1.2, the service CA as the only root, ALPN `h2`, a fresh
//! `ClientConfig` (and so no session resumption) for every connection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::BenchError;

/// A client certificate chain (leaf first) and its key. `Debug` never shows the key.
pub struct ClientIdentity {
    /// Chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Loads the PEM trust roots the devices use (the service's `DATA/tls/ca.pem`).
pub fn load_roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, BenchError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| BenchError::Tls(format!("{}: {e}", path.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| BenchError::Tls(format!("{}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| BenchError::Tls(format!("{}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(BenchError::Tls(format!(
            "{}: no certificate",
            path.display()
        )));
    }
    Ok(Arc::new(roots))
}

/// The device SDK's client configuration.
pub fn client_config(
    roots: &Arc<rustls::RootCertStore>,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, BenchError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| BenchError::Tls(e.to_string()))?
        .with_root_certificates(roots.clone());
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| BenchError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Opens a new TCP connection (no Nagle) and completes a TLS handshake on it.
pub async fn connect(
    host: &str,
    port: u16,
    config: rustls::ClientConfig,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| ConnectError::Timeout("connect"))?
        .map_err(ConnectError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| ConnectError::Tls(format!("invalid server name {host:?}")))?;
    tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| ConnectError::Timeout("TLS handshake"))?
    .map_err(|e| ConnectError::Tls(e.to_string()))
}

/// Why a connection failed; [`ConnectError::kind`] is the error bucket in the summary.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// A step took too long.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// Reading or writing after the handshake failed.
    #[error("I/O after the handshake: {0}")]
    Io(std::io::Error),
}

impl ConnectError {
    /// Error bucket name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "cannot_reach",
            Self::Tls(_) => "tls",
            Self::Timeout(_) => "timeout",
            Self::Io(_) => "io",
        }
    }
}

/// Splits `https://host:port`.
pub fn host_port(endpoint: &str) -> Result<(String, u16), BenchError> {
    kdps_device::client::parse_endpoint(endpoint).map_err(|e| BenchError::Config(e.to_string()))
}
