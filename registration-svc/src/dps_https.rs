//! The Azure DPS-compatible HTTPS front end (dps-protocol.md §1–§4, §9): the device REST API
//! that unmodified Azure IoT device SDKs speak, over the same [`RegistrationBackend`] (engine,
//! allocation, store) as the gRPC front end.
//!
//! | route | answer |
//! |---|---|
//! | `PUT /{idScope}/registrations/{registrationId}/register` | 200 terminal state, 202 `assigning` (+`Retry-After`, `Location`), 401 TPM challenge, error |
//! | `GET /{idScope}/registrations/{registrationId}/operations/{operationId}` | 200 terminal state, 202 `assigning` (+`Retry-After`), error |
//! | `POST /{idScope}/registrations/{registrationId}` | 200 bare `registrationState`, error |
//!
//! Quirks tolerated (§9): any `api-version` (or none); the C SDK's `UserAgent` header; a body on
//! GET (ignored); `payload: null`; unknown body fields; percent-encoded path segments (decoded
//! before the engine sees them). Errors are DPS error bodies (`errorCode`, `trackingId`,
//! `message`, `timestampUtc`) with the `x-ms-error-code` header; throttling is 429 with
//! `Retry-After`.
//!
//! How the device proves itself:
//! * a `tpm` object in the body: TPM; without `Authorization` the engine answers with the
//!   challenge (401 + `authenticationKey`), with it the SAS signed by the imported key;
//! * otherwise an `Authorization` header: a symmetric-key SAS token;
//! * otherwise X.509: the TLS client certificate chain of the connection.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Extension, Path, Request, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post, put},
};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::metrics::{Metrics, Operation, Protocol};
use crate::server::backend::{RegistrationStatus, Substatus};
use crate::server::{
    BackendError, DeviceAttestation, OperationOutcome, OperationStatusRequest, PeerInfo,
    PendingOperation, RegisterOutcome, RegisterRequest, RegistrationBackend, RegistrationState,
    RegistrationStateRequest, TpmChallenge, dps_error_response,
};

/// Route of the register call.
pub const REGISTER_PATH: &str = "/{id_scope}/registrations/{registration_id}/register";
/// Route of the operation status poll.
pub const OPERATION_PATH: &str =
    "/{id_scope}/registrations/{registration_id}/operations/{operation_id}";
/// Route of the registration status lookup.
pub const LOOKUP_PATH: &str = "/{id_scope}/registrations/{registration_id}";

/// Message of the TPM challenge body, as the real service words it (dps-protocol §4.1).
pub const TPM_CHALLENGE_MESSAGE: &str = crate::attestation::tpm::CHALLENGE_MESSAGE;

/// Settings of the HTTPS front end.
#[derive(Clone, Debug)]
pub struct DpsHttpsConfig {
    /// How long a register call waits for its assignment before answering 202 `assigning`
    /// (the device then polls). DPS answers 202 at once; a short wait saves most devices the
    /// poll while slow assignments (webhooks, busy stores) still answer quickly.
    pub register_wait: Duration,
    /// How long the first TPM call waits for its challenge. A challenge cannot be polled, so
    /// this is the full budget of a call.
    pub challenge_wait: Duration,
}

impl DpsHttpsConfig {
    /// The default register wait (see [`DpsHttpsConfig::register_wait`]).
    pub const DEFAULT_REGISTER_WAIT: Duration = Duration::from_secs(1);

    /// Settings derived from the device-port limits: the register wait is
    /// [`Self::DEFAULT_REGISTER_WAIT`] (capped by `limits.max_register_wait`), the challenge wait
    /// `limits.max_register_wait`.
    pub fn from_limits(limits: &crate::server::Limits) -> Self {
        Self {
            register_wait: Self::DEFAULT_REGISTER_WAIT.min(limits.max_register_wait),
            challenge_wait: limits.max_register_wait,
        }
    }
}

impl Default for DpsHttpsConfig {
    fn default() -> Self {
        Self::from_limits(&crate::server::Limits::default())
    }
}

struct Shared<B> {
    backend: Arc<B>,
    metrics: Metrics,
    config: DpsHttpsConfig,
}

/// The DPS HTTPS routes over `backend`, to merge into the device router
/// (`DeviceApi::merge`). No fallback: unknown paths reach the device router's DPS-style 404.
/// The front end records `registrations_total{protocol="https"}`, request durations and the
/// in-flight gauge; the backend must not record them again.
pub fn routes<B: RegistrationBackend>(
    backend: Arc<B>,
    metrics: Metrics,
    config: DpsHttpsConfig,
) -> Router {
    let shared = Arc::new(Shared {
        backend,
        metrics,
        config,
    });
    Router::new()
        .route(REGISTER_PATH, only(put(register::<B>)))
        .route(OPERATION_PATH, only(get(operation_status::<B>)))
        .route(LOOKUP_PATH, only(post(lookup::<B>)))
        .with_state(shared)
}

fn only<S: Clone + Send + Sync + 'static>(route: MethodRouter<S>) -> MethodRouter<S> {
    route.fallback(method_not_allowed)
}

async fn method_not_allowed(request: Request) -> Response {
    dps_error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        405_000,
        &format!(
            "method {} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The JSON body of register and lookup calls (`DeviceRegistration`). Unknown fields are
/// ignored; `payload: null` is the same as no payload.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceRegistration {
    #[serde(default)]
    registration_id: Option<String>,
    #[serde(default)]
    tpm: Option<TpmBody>,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    csr: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TpmBody {
    #[serde(default)]
    endorsement_key: Option<String>,
    #[serde(default)]
    storage_root_key: Option<String>,
}

/// A request the front end refuses before it reaches the engine.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("connection information missing")]
    NoPeer,
}

impl RequestError {
    fn response(&self) -> Response {
        match self {
            RequestError::BadRequest(m) => dps_error_response(StatusCode::BAD_REQUEST, 400_000, m),
            RequestError::TooLarge(m) => {
                dps_error_response(StatusCode::PAYLOAD_TOO_LARGE, 413_000, m)
            }
            RequestError::NoPeer => {
                // Only reachable if the router is served outside `serve_connection`.
                tracing::error!("DPS HTTPS request without connection information (PeerInfo)");
                dps_error_response(StatusCode::INTERNAL_SERVER_ERROR, 500_000, "internal error")
            }
        }
    }
}

fn path_error(rejection: PathRejection) -> RequestError {
    RequestError::BadRequest(format!("invalid request path: {}", rejection.body_text()))
}

/// Parses a register/lookup body; an empty body is an empty registration.
fn parse_body(body: &Bytes) -> Result<DeviceRegistration, RequestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeviceRegistration::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        RequestError::BadRequest(format!("the body is not a valid DeviceRegistration: {e}"))
    })
}

/// The `Authorization` header, if any (a SAS token).
fn authorization(headers: &HeaderMap) -> Result<Option<String>, RequestError> {
    match headers.get(header::AUTHORIZATION) {
        None => Ok(None),
        Some(v) => {
            let v = v.to_str().map_err(|_| {
                RequestError::BadRequest("the Authorization header is not ASCII".into())
            })?;
            let v = v.trim();
            Ok(Some(v.to_owned()).filter(|v| !v.is_empty()))
        }
    }
}

fn decode_tpm_key(field: &str, value: Option<&str>) -> Result<Vec<u8>, RequestError> {
    let value = value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RequestError::BadRequest(format!("tpm.{field} is required")))?;
    B64.decode(value)
        .map_err(|e| RequestError::BadRequest(format!("tpm.{field} is not valid base64: {e}")))
}

/// What the device presented: see the module documentation.
fn attestation(
    body: &DeviceRegistration,
    headers: &HeaderMap,
) -> Result<DeviceAttestation, RequestError> {
    let sas = authorization(headers)?;
    if let Some(tpm) = &body.tpm {
        return Ok(DeviceAttestation::Tpm {
            endorsement_key: decode_tpm_key("endorsementKey", tpm.endorsement_key.as_deref())?,
            storage_root_key: decode_tpm_key("storageRootKey", tpm.storage_root_key.as_deref())?,
            sas_token: sas,
        });
    }
    Ok(match sas {
        Some(sas_token) => DeviceAttestation::SymmetricKey { sas_token },
        None => DeviceAttestation::X509,
    })
}

/// Checks a body's `registrationId` (optional) against the path's and refuses a `csr`.
fn check_body(body: &DeviceRegistration, registration_id: &str) -> Result<(), RequestError> {
    if let Some(id) = &body.registration_id
        && !id.eq_ignore_ascii_case(registration_id)
    {
        return Err(RequestError::BadRequest(format!(
            "registrationId {:?} in the body does not match {:?} in the path",
            truncate(id, 128),
            truncate(registration_id, 128)
        )));
    }
    if body.csr.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(RequestError::BadRequest(
            "certificate signing requests (csr) are not supported by this service".into(),
        ));
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

fn user_agent(headers: &HeaderMap) -> &str {
    // azure-iot-sdk-c sends the non-standard `UserAgent` instead of `User-Agent`.
    headers
        .get(header::USER_AGENT)
        .or_else(|| headers.get("useragent"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn register<B: RegistrationBackend>(
    State(shared): State<Arc<Shared<B>>>,
    path: Result<Path<(String, String)>, PathRejection>,
    peer: Option<Extension<PeerInfo>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let started = Instant::now();
    let _in_flight = shared.metrics.in_flight(Protocol::Https);
    let parsed = (|| {
        let Path((id_scope, registration_id)) = path.map_err(path_error)?;
        let body = body.map_err(body_error)?;
        let Extension(peer) = peer.ok_or(RequestError::NoPeer)?;
        let registration = parse_body(&body)?;
        check_body(&registration, &registration_id)?;
        let attestation = attestation(&registration, &headers)?;
        Ok::<_, RequestError>((id_scope, registration_id, registration, attestation, peer))
    })();
    let (id_scope, registration_id, registration, attestation, peer) = match parsed {
        Ok(p) => p,
        Err(e) => {
            shared.metrics.observe_duration(
                Protocol::Https,
                Operation::Register,
                started.elapsed(),
            );
            return e.response();
        }
    };
    let kind = attestation.kind();
    // A TPM challenge cannot be polled: wait for it.
    let wait = match &attestation {
        DeviceAttestation::Tpm {
            sas_token: None, ..
        } => shared.config.challenge_wait,
        _ => shared.config.register_wait,
    };
    tracing::debug!(%registration_id, attestation = ?kind, user_agent = user_agent(&headers), "DPS HTTPS register");
    let request = RegisterRequest {
        id_scope: id_scope.clone(),
        registration_id: registration_id.clone(),
        attestation,
        payload: registration.payload,
        deadline: started + wait,
    };
    let result = shared.backend.register(request, peer).await;
    let outcome = match &result {
        Ok(o) => o.metric_outcome(),
        Err(e) => e.metric_outcome(),
    };
    shared
        .metrics
        .record_outcome(Protocol::Https, kind, outcome, started.elapsed());
    match result {
        Ok(RegisterOutcome::Done(state)) => {
            operation_response(StatusCode::OK, &new_operation_id(), Some(&state))
        }
        Ok(RegisterOutcome::Pending(pending)) => {
            let location = location(&uri, &headers, &id_scope, &registration_id);
            let mut response = pending_response(&pending);
            if let Some(location) = location
                && let Ok(v) = HeaderValue::from_str(&location)
            {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
        }
        Ok(RegisterOutcome::TpmChallenge(challenge)) => challenge_response(&challenge),
        Err(e) => error_response(&e, &registration_id),
    }
}

async fn operation_status<B: RegistrationBackend>(
    State(shared): State<Arc<Shared<B>>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    peer: Option<Extension<PeerInfo>>,
    headers: HeaderMap,
    // Node sends `{}` on this GET; the body is never looked at.
) -> Response {
    let started = Instant::now();
    let _in_flight = shared.metrics.in_flight(Protocol::Https);
    let response = async {
        let Path((id_scope, registration_id, operation_id)) = path.map_err(path_error)?;
        let Extension(peer) = peer.ok_or(RequestError::NoPeer)?;
        // The poll carries the register call's credentials; the operation id (128 random bits,
        // bound to the registration ID) is what the engine checks.
        let attestation = match authorization(&headers)? {
            Some(sas_token) => DeviceAttestation::SymmetricKey { sas_token },
            None => DeviceAttestation::X509,
        };
        let request = OperationStatusRequest {
            id_scope,
            registration_id: registration_id.clone(),
            operation_id: operation_id.clone(),
            attestation,
        };
        Ok::<_, RequestError>(match shared.backend.operation_status(request, peer).await {
            Ok(OperationOutcome::Done(state)) => {
                operation_response(StatusCode::OK, &operation_id, Some(&state))
            }
            Ok(OperationOutcome::Pending(pending)) => pending_response(&pending),
            Err(e) => error_response(&e, &registration_id),
        })
    }
    .await
    .unwrap_or_else(|e| e.response());
    shared.metrics.observe_duration(
        Protocol::Https,
        Operation::OperationStatus,
        started.elapsed(),
    );
    response
}

async fn lookup<B: RegistrationBackend>(
    State(shared): State<Arc<Shared<B>>>,
    path: Result<Path<(String, String)>, PathRejection>,
    peer: Option<Extension<PeerInfo>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let started = Instant::now();
    let _in_flight = shared.metrics.in_flight(Protocol::Https);
    let response = async {
        let Path((id_scope, registration_id)) = path.map_err(path_error)?;
        let body = body.map_err(body_error)?;
        let Extension(peer) = peer.ok_or(RequestError::NoPeer)?;
        let registration = parse_body(&body)?;
        check_body(&registration, &registration_id)?;
        let request = RegistrationStateRequest {
            id_scope,
            registration_id: registration_id.clone(),
            attestation: attestation(&registration, &headers)?,
        };
        Ok::<_, RequestError>(
            match shared.backend.registration_state(request, peer).await {
                Ok(state) => {
                    (StatusCode::OK, Json(registration_state_json(&state))).into_response()
                }
                Err(e) => error_response(&e, &registration_id),
            },
        )
    }
    .await
    .unwrap_or_else(|e| e.response());
    shared.metrics.observe_duration(
        Protocol::Https,
        Operation::RegistrationState,
        started.elapsed(),
    );
    response
}

fn body_error(rejection: axum::extract::rejection::BytesRejection) -> RequestError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        RequestError::TooLarge("the request body is too large".into())
    } else {
        RequestError::BadRequest(format!(
            "reading the request body: {}",
            rejection.body_text()
        ))
    }
}

/// `https://{host}/{idScope}/registrations/{id}/register` from the request's host, as DPS
/// sends it on 202.
fn location(
    uri: &Uri,
    headers: &HeaderMap,
    id_scope: &str,
    registration_id: &str,
) -> Option<String> {
    // HTTP/1.1 sends `Host`; HTTP/2 the `:authority` (in the URI).
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))?;
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return None;
    }
    Some(format!(
        "https://{host}/{}/registrations/{}/register",
        encode_segment(id_scope),
        encode_segment(registration_id)
    ))
}

fn encode_segment(s: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

fn new_operation_id() -> String {
    format!("kdps.{}", uuid::Uuid::new_v4())
}

/// `RegistrationOperationStatus`: `{operationId, status, registrationState?}`.
fn operation_response(
    status: StatusCode,
    operation_id: &str,
    state: Option<&RegistrationState>,
) -> Response {
    let mut body = Map::new();
    body.insert("operationId".into(), operation_id.into());
    match state {
        Some(state) => {
            body.insert("status".into(), status_name(state.status).into());
            body.insert("registrationState".into(), registration_state_json(state));
        }
        None => {
            body.insert("status".into(), "assigning".into());
        }
    }
    (status, Json(Value::Object(body))).into_response()
}

/// 202 `{operationId, status: "assigning"}` with `Retry-After`.
fn pending_response(pending: &PendingOperation) -> Response {
    let body = json!({
        "operationId": pending.operation_id,
        "status": status_name(pending.status),
    });
    (
        StatusCode::ACCEPTED,
        [(
            header::RETRY_AFTER,
            retry_after_secs(pending.retry_after).to_string(),
        )],
        Json(body),
    )
        .into_response()
}

/// 401 with the activation blob (dps-protocol §4.1 step 3).
fn challenge_response(challenge: &TpmChallenge) -> Response {
    let body = json!({
        "message": TPM_CHALLENGE_MESSAGE,
        "authenticationKey": B64.encode(&challenge.authentication_key),
        "unencryptedAuthenticationKey": Value::Null,
        "keyName": challenge.key_name,
    });
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

/// A DPS error body for a backend error; 429 carries `Retry-After`.
fn error_response(e: &BackendError, registration_id: &str) -> Response {
    match e {
        BackendError::Internal(detail) => {
            tracing::error!(%registration_id, %detail, "registration failed with an internal error");
        }
        other => tracing::debug!(%registration_id, error = %other, "DPS HTTPS request refused"),
    }
    let mut response = dps_error_response(e.http_status(), e.dps_error_code(), &e.public_message());
    if let BackendError::Throttled { retry_after } = e
        && let Ok(v) = HeaderValue::from_str(&retry_after_secs(*retry_after).to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// The DPS name of a status.
pub fn status_name(status: RegistrationStatus) -> &'static str {
    match status {
        RegistrationStatus::Unassigned => "unassigned",
        RegistrationStatus::Assigning => "assigning",
        RegistrationStatus::Assigned => "assigned",
        RegistrationStatus::Failed => "failed",
        RegistrationStatus::Disabled => "disabled",
    }
}

/// The DPS name of a substatus.
pub fn substatus_name(substatus: Substatus) -> &'static str {
    match substatus {
        Substatus::InitialAssignment => "initialAssignment",
        Substatus::DeviceDataMigrated => "deviceDataMigrated",
        Substatus::DeviceDataReset => "deviceDataReset",
        Substatus::ReprovisionedToInitialAssignment => "reprovisionedToInitialAssignment",
    }
}

/// A timestamp as DPS writes it: UTC, seven fractional digits (`2022-08-31T22:02:50.5163352Z`).
pub fn dps_timestamp(ts: jiff::Timestamp) -> String {
    format!(
        "{}.{:07}Z",
        ts.strftime("%Y-%m-%dT%H:%M:%S"),
        ts.subsec_nanosecond() / 100
    )
}

/// `DeviceRegistrationResult` (dps-protocol §1.4). Absent values are left out.
pub fn registration_state_json(s: &RegistrationState) -> Value {
    let mut m = Map::new();
    m.insert("registrationId".into(), s.registration_id.clone().into());
    if let Some(t) = s.created {
        m.insert("createdDateTimeUtc".into(), dps_timestamp(t).into());
    }
    if let Some(hub) = &s.assigned_hub {
        m.insert("assignedHub".into(), hub.clone().into());
    }
    if let Some(id) = &s.device_id {
        m.insert("deviceId".into(), id.clone().into());
    }
    m.insert("status".into(), status_name(s.status).into());
    if let Some(sub) = s.substatus {
        m.insert("substatus".into(), substatus_name(sub).into());
    }
    if let Some(e) = &s.error {
        m.insert("errorCode".into(), e.code.into());
        m.insert("errorMessage".into(), e.message.clone().into());
    }
    if let Some(t) = s.last_updated {
        m.insert("lastUpdatedDateTimeUtc".into(), dps_timestamp(t).into());
    }
    if let Some(etag) = &s.etag {
        m.insert("etag".into(), etag.clone().into());
    }
    if let Some(key) = &s.tpm_authentication_key {
        m.insert(
            "tpm".into(),
            json!({ "authenticationKey": B64.encode(key) }),
        );
    }
    match (&s.x509, &s.enrollment_group_id) {
        (Some(x509), _) => {
            m.insert("x509".into(), x509.clone());
        }
        // A group without X.509 info is a symmetric-key group (TPM has no groups).
        (None, Some(group)) if s.tpm_authentication_key.is_none() => {
            m.insert("symmetricKey".into(), json!({ "enrollmentGroupId": group }));
        }
        _ => {}
    }
    if let Some(payload) = &s.payload {
        m.insert("payload".into(), payload.clone());
    }
    Value::Object(m)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::server::backend::RegistrationError;

    fn state() -> RegistrationState {
        RegistrationState {
            registration_id: "dev-1".into(),
            assigned_hub: Some("hub.example".into()),
            device_id: Some("dev-1".into()),
            status: RegistrationStatus::Assigned,
            substatus: Some(Substatus::InitialAssignment),
            etag: Some("ImV0YWci".into()),
            created: Some(jiff::Timestamp::new(1_661_983_370, 516_335_299).unwrap()),
            last_updated: Some(jiff::Timestamp::new(1_661_983_370, 5_000).unwrap()),
            error: None,
            payload: None,
            tpm_authentication_key: None,
            enrollment_group_id: None,
            x509: None,
        }
    }

    #[test]
    fn timestamps_have_seven_fraction_digits_in_utc() {
        let t = jiff::Timestamp::new(1_661_983_370, 516_335_299).unwrap();
        assert_eq!(dps_timestamp(t), "2022-08-31T22:02:50.5163352Z");
        let t = jiff::Timestamp::new(1_661_983_370, 0).unwrap();
        assert_eq!(dps_timestamp(t), "2022-08-31T22:02:50.0000000Z");
    }

    #[test]
    fn assigned_state_uses_dps_field_names() {
        let v = registration_state_json(&state());
        assert_eq!(
            v,
            json!({
                "registrationId": "dev-1",
                "createdDateTimeUtc": "2022-08-31T22:02:50.5163352Z",
                "assignedHub": "hub.example",
                "deviceId": "dev-1",
                "status": "assigned",
                "substatus": "initialAssignment",
                "lastUpdatedDateTimeUtc": "2022-08-31T22:02:50.0000050Z",
                "etag": "ImV0YWci",
            })
        );
    }

    #[test]
    fn group_tpm_x509_and_payload_objects() {
        let mut s = state();
        s.enrollment_group_id = Some("sensors".into());
        s.payload = Some(json!({"a": 1}));
        let v = registration_state_json(&s);
        assert_eq!(v["symmetricKey"], json!({"enrollmentGroupId": "sensors"}));
        assert_eq!(v["payload"], json!({"a": 1}));
        assert!(v.get("x509").is_none());

        s.x509 = Some(json!({"enrollmentGroupId": "cas", "certificateInfo": {}}));
        let v = registration_state_json(&s);
        assert_eq!(v["x509"]["enrollmentGroupId"], "cas");
        assert!(v.get("symmetricKey").is_none());

        let mut s = state();
        s.tpm_authentication_key = Some(vec![1, 2, 3]);
        let v = registration_state_json(&s);
        assert_eq!(v["tpm"], json!({"authenticationKey": "AQID"}));
    }

    #[test]
    fn failed_state_carries_the_error() {
        let mut s = state();
        s.status = RegistrationStatus::Failed;
        s.assigned_hub = None;
        s.device_id = None;
        s.substatus = None;
        s.error = Some(RegistrationError {
            code: 400_207,
            message: "Custom allocation failed with status code: 400".into(),
        });
        let v = registration_state_json(&s);
        assert_eq!(v["status"], "failed");
        assert_eq!(v["errorCode"], 400_207);
        assert!(v.get("assignedHub").is_none());
    }

    #[test]
    fn bodies_tolerate_quirks() {
        let b = parse_body(&Bytes::from_static(b"")).unwrap();
        assert!(b.registration_id.is_none());
        let b = parse_body(&Bytes::from_static(
            br#"{"payload": null, "registrationId": "Dev-1", "extra": [1]}"#,
        ))
        .unwrap();
        assert!(b.payload.is_none());
        check_body(&b, "dev-1").unwrap();
        assert!(check_body(&b, "dev-2").is_err());
        assert!(parse_body(&Bytes::from_static(b"{not json")).is_err());
        let b = parse_body(&Bytes::from_static(br#"{"csr": "MIIB"}"#)).unwrap();
        assert!(check_body(&b, "d").is_err());
    }

    #[test]
    fn attestation_is_chosen_from_body_and_header() {
        let mut headers = HeaderMap::new();
        let empty = DeviceRegistration::default();
        assert_eq!(
            attestation(&empty, &headers).unwrap(),
            DeviceAttestation::X509
        );
        headers.insert(
            header::AUTHORIZATION,
            "SharedAccessSignature sr=x".parse().unwrap(),
        );
        assert!(matches!(
            attestation(&empty, &headers).unwrap(),
            DeviceAttestation::SymmetricKey { .. }
        ));
        let tpm = parse_body(&Bytes::from_static(
            br#"{"tpm": {"endorsementKey": "AQI=", "storageRootKey": "AwQ="}}"#,
        ))
        .unwrap();
        match attestation(&tpm, &headers).unwrap() {
            DeviceAttestation::Tpm {
                endorsement_key,
                storage_root_key,
                sas_token,
            } => {
                assert_eq!(endorsement_key, vec![1, 2]);
                assert_eq!(storage_root_key, vec![3, 4]);
                assert!(sas_token.is_some());
            }
            other => panic!("{other:?}"),
        }
        let bad = parse_body(&Bytes::from_static(br#"{"tpm": {"endorsementKey": "!!"}}"#)).unwrap();
        assert!(attestation(&bad, &HeaderMap::new()).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }

    #[test]
    fn location_encodes_segments() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "localhost".parse().unwrap());
        assert_eq!(
            location(&Uri::from_static("/x"), &h, "0ne00000A11", "dev:1").unwrap(),
            "https://localhost/0ne00000A11/registrations/dev%3A1/register"
        );
        h.insert(header::HOST, "evil/x".parse().unwrap());
        assert!(location(&Uri::from_static("/x"), &h, "s", "d").is_none());
        let h2 = Uri::from_static("https://dps.example:443/x");
        assert_eq!(
            location(&h2, &HeaderMap::new(), "s", "d").unwrap(),
            "https://dps.example:443/s/registrations/d/register"
        );
    }
}
