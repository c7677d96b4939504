//! Read-only listing of registrations and devices on the admin port, for operators of a
//! standalone service (in a cluster, `kubectl get dreg,kdev` does the same).
//!
//! - `GET /registrations?after=TOKEN&limit=N` → `{"items": [...], "next": TOKEN|null}`
//! - `GET /devices?namespace=NS&after=TOKEN&limit=N` → the same shape
//!
//! Records never contain key material: device keys stay in the key Secret records, which are
//! not listed.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::registry::{Page, Registry};

/// Default page size.
const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
    namespace: Option<String>,
}

/// The listing routes over a registry.
pub fn routes(registry: Arc<dyn Registry>) -> Router {
    Router::new()
        .route("/registrations", get(list_registrations))
        .route("/devices", get(list_devices))
        .with_state(registry)
}

fn page_response<T: serde::Serialize>(page: Page<T>) -> Response {
    Json(serde_json::json!({ "items": page.items, "next": page.next })).into_response()
}

fn error_response(e: crate::registry::RegistryError) -> Response {
    tracing::error!(error = %e, "listing failed");
    (
        http::StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn list_registrations(
    State(registry): State<Arc<dyn Registry>>,
    Query(q): Query<ListQuery>,
) -> Response {
    match registry
        .list_registrations(q.after.as_deref(), q.limit.unwrap_or(DEFAULT_LIMIT))
        .await
    {
        Ok(page) => page_response(page),
        Err(e) => error_response(e),
    }
}

async fn list_devices(
    State(registry): State<Arc<dyn Registry>>,
    Query(q): Query<ListQuery>,
) -> Response {
    match registry
        .list_devices(
            q.namespace.as_deref(),
            q.after.as_deref(),
            q.limit.unwrap_or(DEFAULT_LIMIT),
        )
        .await
    {
        Ok(page) => page_response(page),
        Err(e) => error_response(e),
    }
}
