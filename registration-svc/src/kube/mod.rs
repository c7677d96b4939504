//! `serve` mode (design.md §1, §5): the registration service in a cluster, configured by
//! kube-runtime reflectors over its namespace ([`config`]) and storing registrations, devices
//! and device keys as Kubernetes objects ([`registry`], mapped by [`objects`]).
//!
//! The wiring is standalone mode's with the two sources swapped: the same [`Engine`], the same
//! TLS listener (gRPC and DPS HTTPS on one port) and the same admin port. The serving
//! certificate comes from PEM files (the operator mounts a `kubernetes.io/tls` Secret), the
//! Kubernetes client from the in-cluster ServiceAccount or `KUBECONFIG`.
//!
//! See `docs/kubernetes-registry.md` for the objects, names, write order and concurrency.

pub mod config;
pub mod objects;
pub mod registry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineConfig};
use crate::metrics::Metrics;
use crate::server::{DeviceApi, Limits, Readiness, Server, ServerError};
use crate::tls;

pub use registry::{DEFAULT_FIELD_MANAGER, KubeRegistry};

/// Settings of `kdps-registration serve`.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Namespace of the ProvisioningService (and its links, enrollments, Secrets and
    /// DeviceRegistrations).
    pub namespace: String,
    /// The ProvisioningService to serve; `None` when the namespace has exactly one.
    pub service_name: Option<String>,
    /// Device port.
    pub listen: SocketAddr,
    /// Admin port (`/metrics`, `/healthz`, `/readyz`, `/registrations`, `/devices`).
    pub admin_listen: SocketAddr,
    /// Serving certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// Its private key (PEM).
    pub tls_key: PathBuf,
    /// Field manager of every write.
    pub field_manager: String,
    /// How often referenced Secrets are re-read.
    pub secret_refresh: Duration,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Device-port limits.
    pub limits: Limits,
}

/// Errors that stop `serve`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No Kubernetes client configuration (neither in-cluster nor `KUBECONFIG`).
    #[error(
        "no Kubernetes client configuration: {0} (run in a pod with a ServiceAccount, or set KUBECONFIG)"
    )]
    Client(#[source] ::kube::Error),
    /// The configuration could not be read.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The server failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The configuration source stopped on its own (its reflectors could not start).
    #[error("the configuration reflectors stopped; see the log above")]
    ConfigStopped,
}

/// Runs `serve` until `shutdown` is cancelled (or the server fails).
pub async fn run(config: ServeConfig, shutdown: CancellationToken) -> Result<(), ServeError> {
    let identity = tls::ServerIdentity::from_pem_files(&config.tls_cert, &config.tls_key)?;
    let tls_config = tls::server_config(identity)?;
    let client = ::kube::Client::try_default()
        .await
        .map_err(ServeError::Client)?;
    config::probe(&client, &config.namespace).await?;

    let registry = Arc::new(KubeRegistry::new(
        client.clone(),
        &config.namespace,
        &config.field_manager,
    ));
    let readiness = Readiness::new();
    let (catalog_tx, catalog_rx) = watch::channel(None);
    let engine = Arc::new(Engine::new(
        catalog_rx,
        registry.clone(),
        config.engine.clone(),
    ));
    let (metrics_registry, metrics) = Metrics::with_new_registry();
    let backend = Arc::new(engine.clone());
    let api = DeviceApi::new(backend.clone(), metrics.clone(), &config.limits)?.merge(
        crate::dps_https::routes(
            backend,
            metrics.clone(),
            crate::dps_https::DpsHttpsConfig::from_limits(&config.limits),
        ),
    );
    let device = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    tracing::info!(
        namespace = %config.namespace,
        listen = %device.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        field_manager = %config.field_manager,
        "kdps-registration serve starting"
    );

    // One token for every task: the server stopping (error or signal) stops the reflectors.
    let token = shutdown.child_token();
    let source = tokio::spawn(config::run(
        client,
        config::ConfigSettings {
            namespace: config.namespace.clone(),
            service_name: config.service_name.clone(),
            secret_refresh: config.secret_refresh,
        },
        catalog_tx,
        readiness.clone(),
        token.clone(),
    ));
    let server = Server {
        tls: tls_config,
        api,
        metrics,
        registry: Arc::new(metrics_registry),
        readiness,
        limits: config.limits.clone(),
        admin_routes: crate::admin_api::routes(registry),
    };
    let serving = server.run(device, admin, token.clone());
    tokio::pin!(serving);
    let mut source = source;
    let mut source_done = false;
    let result = tokio::select! {
        r = &mut serving => r.map_err(ServeError::from),
        joined = &mut source => {
            source_done = true;
            if let Err(e) = joined {
                tracing::error!(error = %e, "configuration task failed");
            }
            let stopped_on_its_own = !token.is_cancelled();
            token.cancel();
            let served = serving.await;
            if stopped_on_its_own {
                Err(ServeError::ConfigStopped)
            } else {
                served.map_err(ServeError::from)
            }
        }
    };
    token.cancel();
    if !source_done && let Err(e) = source.await {
        tracing::error!(error = %e, "configuration task failed");
    }
    result
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen {
            addr: addr.to_string(),
            source,
        })
}
