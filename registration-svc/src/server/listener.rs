//! The TLS accept loop of the device port and the per-connection HTTP server.

use std::{sync::Arc, time::Duration};

use axum::Router;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::{Limits, PeerInfo, ServerError};
use crate::metrics::{HandshakeFailure, Metrics};

/// HTTP versions a connection may speak (from ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// Detect from the first bytes (HTTP/2 preface or HTTP/1.1).
    Auto,
    /// HTTP/1.1 only (ALPN `http/1.1`).
    Http1,
    /// HTTP/2 only (ALPN `h2`).
    Http2,
}

/// Accepts TLS connections on `listener` and serves `router` on each until `shutdown` is
/// cancelled; then stops accepting, lets open connections finish their requests for
/// `limits.drain_timeout` and closes the rest.
///
/// Every request carries a [`PeerInfo`] extension with the client address and certificate
/// chain. Handshakes are bounded by `limits.handshake_timeout`, open connections by
/// `limits.max_connections`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    metrics: Metrics,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: "device port".to_owned(),
            source,
        })?;
    tracing::info!(%addr, "device API listening (TLS: gRPC and HTTPS)");
    let acceptor = TlsAcceptor::from(tls);
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();

    loop {
        while let Some(done) = connections.try_join_next() {
            log_task_end(done);
        }
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
        };
        let (tcp, peer_addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE/ENFILE or a connection reset before accept: back off
                    // briefly instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        connections.spawn(handle_connection(
            acceptor.clone(),
            tcp,
            peer_addr,
            router.clone(),
            metrics.clone(),
            Arc::clone(&limits),
            shutdown.clone(),
            permit,
        ));
    }

    drop(listener);
    let open = connections.len();
    if open > 0 {
        tracing::info!(connections = open, "draining device connections");
    }
    let drained = tokio::time::timeout(limits.drain_timeout, async {
        while let Some(done) = connections.join_next().await {
            log_task_end(done);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "drain timeout; closing remaining connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "connection task panicked");
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: std::net::SocketAddr,
    router: Router,
    metrics: Metrics,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    // Small request/response exchanges: do not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
    let stream = tokio::select! {
        () = shutdown.cancelled() => return,
        result = handshake => match result {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                metrics.tls_handshake_failed(HandshakeFailure::Error);
                tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics.tls_handshake_failed(HandshakeFailure::Timeout);
                tracing::debug!(peer = %addr, "TLS handshake timed out");
                return;
            }
        },
    };
    let (_, session) = stream.get_ref();
    let chain = session
        .peer_certificates()
        .map(|c| c.iter().map(|cert| cert.clone().into_owned()).collect())
        .unwrap_or_default();
    let version = match session.alpn_protocol() {
        Some(b"h2") => HttpVersion::Http2,
        Some(b"http/1.1") => HttpVersion::Http1,
        _ => HttpVersion::Auto,
    };
    let peer = PeerInfo {
        addr,
        chain: Arc::new(chain),
    };
    serve_connection(stream, peer, router, &limits, version, shutdown).await;
}

/// Serves HTTP (1.1 and/or 2, see [`HttpVersion`]) on one established connection: inserts
/// `peer` into every request's extensions, bounds request bodies to
/// `limits.max_http_body_bytes` and shuts down gracefully (finishing in-flight requests) when
/// `shutdown` is cancelled. Used by [`serve_tls`]; tests call it on in-memory streams.
pub async fn serve_connection<I>(
    io: I,
    peer: PeerInfo,
    router: Router,
    limits: &Limits,
    version: HttpVersion,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_body = limits.max_http_body_bytes;
    let addr = peer.addr;
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        // Oversized bodies fail while being read: axum extractors answer 413, tonic an error
        // status.
        let mut request = request.map(|body| axum::body::Body::new(Limited::new(body, max_body)));
        request.extensions_mut().insert(peer.clone());
        router.clone().oneshot(request)
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams);
    let builder = match version {
        HttpVersion::Auto => builder,
        HttpVersion::Http1 => builder.http1_only(),
        HttpVersion::Http2 => builder.http2_only(),
    };

    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut draining = false;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            () = &mut cancelled, if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
    }
}
