//! The serving infrastructure: one TLS listener for the device APIs and a plain-HTTP admin
//! listener.
//!
//! ```text
//!   device ──TLS (ALPN h2 | http/1.1)──► serve_tls ──► serve_connection ──► DeviceApi router
//!                                         accept loop    (PeerInfo in the      ├ kdps.registration.v1 (GrpcFrontend)
//!                                                         request extensions)  ├ grpc.health.v1
//!                                                                               ├ grpc.reflection.v1 / v1alpha
//!                                                                               └ DPS HTTPS routes (merged later)
//!   operator/kubelet ──HTTP──► serve_admin: /metrics /healthz /readyz
//! ```
//!
//! [`Server::run`] wires both listeners and the gRPC health status to one shutdown token.

pub mod admin;
pub mod backend;
pub mod grpc;
mod listener;
mod router;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::registry::Registry;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use admin::{Readiness, admin_router, serve_admin, serve_admin_router};
pub use backend::{
    BackendError, DeviceAttestation, OperationOutcome, OperationStatusRequest, PendingOperation,
    RegisterOutcome, RegisterRequest, RegistrationBackend, RegistrationError, RegistrationState,
    RegistrationStateRequest, TpmChallenge,
};
pub use grpc::GrpcFrontend;
pub use listener::{HttpVersion, serve_connection, serve_tls};
pub use router::{DeviceApi, dps_error_response, follow_readiness};

use crate::metrics::Metrics;

/// What the device-facing handlers learn about the connection a request came in on. Inserted
/// into every request's extensions (`request.extensions().get::<PeerInfo>()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client's address (geo-latency allocation maps it to a region).
    pub addr: SocketAddr,
    /// The TLS client certificate chain, leaf first; empty when the client sent none. Only the
    /// handshake signature has been checked: the chain's issuer, validity and names are not.
    pub chain: Arc<Vec<CertificateDer<'static>>>,
}

impl PeerInfo {
    /// A peer without a client certificate.
    pub fn without_certificate(addr: SocketAddr) -> Self {
        Self {
            addr,
            chain: Arc::new(Vec::new()),
        }
    }

    /// The client's leaf certificate, if it sent one.
    pub fn client_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.chain.first()
    }
}

/// Bounds that protect the device port.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest gRPC message accepted or sent (DPS: 96 KiB).
    pub max_grpc_message_bytes: usize,
    /// Largest HTTP request body (gRPC or DPS HTTPS) in bytes.
    pub max_http_body_bytes: usize,
    /// TLS handshakes that take longer are dropped.
    pub handshake_timeout: Duration,
    /// HTTP/1.1 clients must send the request headers within this time.
    pub header_read_timeout: Duration,
    /// Connections open at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// The most a Register call waits for its assignment before answering "pending".
    pub max_register_wait: Duration,
    /// On shutdown, connections get this long to finish their requests.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_grpc_message_bytes: 96 * 1024,
            max_http_body_bytes: 128 * 1024,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_concurrent_streams: 100,
            max_register_wait: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Errors of the serving infrastructure.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound or queried.
    #[error("listener {addr}: {source}")]
    Listen {
        /// What was being bound ("device port", "admin port") or its address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptor set.
    #[error("building gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The admin server failed.
    #[error("admin server: {0}")]
    Admin(std::io::Error),
}

/// Everything needed to serve: see [`Server::run`].
pub struct Server {
    /// TLS configuration of the device port (see [`crate::tls::server_config`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// The device-facing router.
    pub api: DeviceApi,
    /// Metrics handles (handshake failures are recorded here).
    pub metrics: Metrics,
    /// The registry `/metrics` encodes.
    pub registry: Arc<Registry>,
    /// Drives `/readyz` and the gRPC health status.
    pub readiness: Readiness,
    /// Bounds of the device port.
    pub limits: Limits,
    /// Extra routes for the admin port (e.g. listing registrations); `Router::new()` for none.
    pub admin_routes: axum::Router,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Serves the device port on `device` and the admin port on `admin` until `shutdown` is
    /// cancelled, then drains connections. If either server stops on its own (an error), the
    /// other is shut down too and the error is returned.
    pub async fn run(
        self,
        device: TcpListener,
        admin: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServerError> {
        let Server {
            tls,
            api,
            metrics,
            registry,
            readiness,
            limits,
            admin_routes,
        } = self;
        // A child token: a failing task stops its siblings without cancelling the caller's.
        let token = shutdown.child_token();
        let health = follow_readiness(api.health_reporter(), readiness.clone(), token.clone());
        let device_task = {
            let token = token.clone();
            async move {
                let r = serve_tls(
                    device,
                    tls,
                    api.into_router(),
                    metrics,
                    limits,
                    token.clone(),
                )
                .await;
                token.cancel();
                r
            }
        };
        let admin_task = {
            let token = token.clone();
            async move {
                let router = admin_router(registry, readiness).merge(admin_routes);
                let r = serve_admin_router(admin, router, token.clone()).await;
                token.cancel();
                r
            }
        };
        let ((), device_result, admin_result) = tokio::join!(health, device_task, admin_task);
        device_result.and(admin_result)
    }
}
