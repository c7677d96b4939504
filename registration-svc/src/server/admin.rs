//! The plain-HTTP admin port: `/metrics` (OpenMetrics text), `/healthz` (the process is
//! alive) and `/readyz` (the caller's readiness flag is set: manifests loaded, store open...).

use std::sync::Arc;

use axum::{Router, extract::State, response::IntoResponse, routing::get};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

use super::ServerError;
use crate::metrics;

/// A shared "ready to serve devices" flag. Starts not ready; the owner of the store/manifests
/// sets it. Drives `/readyz` and the gRPC health status ([`super::follow_readiness`]).
#[derive(Clone, Debug)]
pub struct Readiness {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Sets or clears the flag.
    pub fn set_ready(&self, ready: bool) {
        self.tx.send_if_modified(|current| {
            let changed = *current != ready;
            *current = ready;
            changed
        });
    }

    /// Whether the flag is set.
    pub fn is_ready(&self) -> bool {
        *self.tx.borrow()
    }

    /// Watches the flag.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// The admin routes.
pub fn admin_router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            registry,
            readiness,
        })
}

async fn metrics_handler(State(state): State<AdminState>) -> axum::response::Response {
    match metrics::encode(&state.registry) {
        Ok(text) => ([(http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            tracing::error!("encoding metrics failed");
            (
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (http::StatusCode::OK, "ready\n")
    } else {
        (http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves the admin routes on `listener` until `shutdown` is cancelled.
pub async fn serve_admin(
    listener: TcpListener,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    serve_admin_router(listener, admin_router(registry, readiness), shutdown).await
}

/// Serves `router` (the admin routes, possibly with extra ones merged in) on `listener` until
/// `shutdown` is cancelled.
pub async fn serve_admin_router(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin server listening");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(ServerError::Admin)
}
