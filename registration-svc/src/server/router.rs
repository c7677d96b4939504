//! The device-facing router: gRPC services mounted in one axum `Router`, plus the place
//! where the DPS HTTPS routes join them.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::Request,
    response::{IntoResponse, Response},
};
use kdps_proto::registration::v1::{
    FILE_DESCRIPTOR_SET, registration_service_server::RegistrationServiceServer,
};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};

use super::{Limits, Readiness, RegistrationBackend, ServerError, grpc::GrpcFrontend};
use crate::metrics::Metrics;

/// Full name of the registration gRPC service.
pub const REGISTRATION_SERVICE: &str =
    kdps_proto::registration::v1::registration_service_server::SERVICE_NAME;

/// The router served on the device port, with the gRPC health reporter that belongs to it.
#[derive(Clone)]
pub struct DeviceApi {
    router: Router,
    health: HealthReporter,
}

impl std::fmt::Debug for DeviceApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceApi").finish_non_exhaustive()
    }
}

impl DeviceApi {
    /// Mounts `kdps.registration.v1.RegistrationService` (over `backend`), `grpc.health.v1`
    /// and server reflection (v1 and v1alpha). Requests that match nothing get gRPC
    /// UNIMPLEMENTED (gRPC clients) or a DPS-style 404 JSON error (everything else).
    pub fn new<B: RegistrationBackend>(
        backend: Arc<B>,
        metrics: Metrics,
        limits: &Limits,
    ) -> Result<Self, ServerError> {
        let registration = RegistrationServiceServer::new(GrpcFrontend::new(
            backend,
            metrics,
            limits.max_register_wait,
        ))
        .max_decoding_message_size(limits.max_grpc_message_bytes)
        .max_encoding_message_size(limits.max_grpc_message_bytes);

        let (health, health_service) = tonic_health::server::health_reporter();

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let router = Routes::new(registration)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .into_axum_router()
            // Replaces tonic's gRPC-only fallback.
            .fallback(not_found);

        // ---------------------------------------------------------------------------------
        // DPS HTTPS API (dps-protocol.md §1): the routes
        //   PUT  /{idScope}/registrations/{registrationId}/register
        //   GET  /{idScope}/registrations/{registrationId}/operations/{operationId}
        //   POST /{idScope}/registrations/{registrationId}
        // are merged here by the DPS HTTPS front end, over the same backend:
        //   let router = router.merge(dps_https::routes(backend.clone(), metrics.clone()));
        // (or later through `DeviceApi::merge`). They must not define a fallback.
        // ---------------------------------------------------------------------------------

        Ok(Self { router, health })
    }

    /// Adds routes (e.g. the DPS HTTPS API) to the device router. `routes` must not have a
    /// fallback of its own; paths must not collide with the gRPC services.
    pub fn merge(mut self, routes: Router) -> Self {
        self.router = self.router.merge(routes);
        self
    }

    /// The gRPC health reporter of this router.
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    /// The router to serve.
    pub fn into_router(self) -> Router {
        self.router
    }
}

/// Fallback for unknown paths.
async fn not_found(request: Request) -> Response {
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if is_grpc {
        return tonic::Status::unimplemented("unknown gRPC method")
            .into_http::<axum::body::Body>()
            .into_response();
    }
    dps_error_response(
        http::StatusCode::NOT_FOUND,
        404_000,
        "The requested resource does not exist.",
    )
}

/// A DPS-style error response: `{"errorCode", "trackingId", "message", "timestampUtc"}` with
/// the `x-ms-error-code` header (dps-protocol §1.2).
pub fn dps_error_response(status: http::StatusCode, error_code: u32, message: &str) -> Response {
    let body = serde_json::json!({
        "errorCode": error_code,
        "trackingId": uuid::Uuid::new_v4().to_string(),
        "message": message,
        "timestampUtc": jiff::Timestamp::now().to_string(),
    });
    (
        status,
        [("x-ms-error-code", error_code.to_string())],
        Json(body),
    )
        .into_response()
}

/// Keeps the gRPC health status in line with `readiness` until `shutdown`: SERVING for the
/// whole server ("") and the registration service while ready, NOT_SERVING otherwise and
/// from the moment shutdown starts (so load balancers stop sending new calls while
/// connections drain).
pub async fn follow_readiness(
    health: HealthReporter,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut rx = readiness.subscribe();
    loop {
        let ready = *rx.borrow_and_update();
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        health
            .set_service_status(REGISTRATION_SERVICE, status)
            .await;
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = rx.changed() => if changed.is_err() { break },
        }
    }
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(REGISTRATION_SERVICE, ServingStatus::NotServing)
        .await;
}
