//! The handshake baseline: a bare rustls server that completes a TLS handshake and does nothing
//! else, with the registration service's own TLS configuration
//! ([`kdps_registration::tls::server_config`]: same certificate and key, TLS 1.3/1.2, ring,
//! X25519 first, ALPN, client certificates requested but optional) — the floor any secure
//! registration pays.
//!
//! Per connection the server accepts, completes the handshake (for a client certificate this
//! includes checking the CertificateVerify signature, as the service does), writes one byte of
//! application data so the client knows the server finished too, and closes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::error::BenchError;
use crate::tls::ConnectError;

/// Same bound as the service's `Limits::handshake_timeout`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves handshakes on `listen` with the certificate chain and key in `cert`/`key` (PEM) until
/// the process is stopped. Prints `listening <addr>` on stdout once bound.
pub async fn serve(listen: SocketAddr, cert: &Path, key: &Path) -> Result<(), BenchError> {
    let identity = kdps_registration::tls::ServerIdentity::from_pem_files(cert, key)
        .map_err(|e| BenchError::Tls(e.to_string()))?;
    let config = kdps_registration::tls::server_config(identity)
        .map_err(|e| BenchError::Tls(e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(BenchError::io(listen.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(BenchError::io(listen.to_string()))?;
    println!("listening {addr}");
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(Ok(mut tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            if tls.write_all(b"k").await.is_ok() {
                let _ = tls.shutdown().await;
            }
        });
    }
}

/// The client side of one baseline operation: a new connection, the handshake, and the
/// server's one byte.
pub async fn handshake_once(
    host: &str,
    port: u16,
    config: rustls::ClientConfig,
    timeout: Duration,
) -> Result<(), ConnectError> {
    let mut tls = crate::tls::connect(host, port, config, timeout).await?;
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(timeout, tls.read(&mut byte))
        .await
        .map_err(|_| ConnectError::Timeout("reading the server's byte"))?
        .map_err(ConnectError::Io)?;
    if n != 1 {
        return Err(ConnectError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed before finishing the handshake",
        )));
    }
    Ok(())
}
