//! gRPC front end: `kdps.registration.v1.RegistrationService` over a [`RegistrationBackend`].

use std::{sync::Arc, time::Duration};

use kdps_proto::{
    grpc_convert::{json_to_value, value_to_json},
    registration::v1::{self as pb, registration_service_server::RegistrationService},
};
use tokio::time::Instant;
use tonic::{Request, Response, Status, metadata::MetadataMap};

use super::{
    PeerInfo,
    backend::{
        BackendError, DeviceAttestation, OperationOutcome, OperationStatusRequest,
        PendingOperation, RegisterOutcome, RegisterRequest, RegistrationBackend, RegistrationState,
        RegistrationStateRequest, RegistrationStatus, Substatus, TpmChallenge,
    },
};
use crate::metrics::{Metrics, Operation, Outcome, Protocol};

/// Trailing metadata key with the number of seconds to wait (on RESOURCE_EXHAUSTED).
pub const RETRY_AFTER_METADATA: &str = "retry-after";
/// Trailing metadata key with the six-digit DPS error code of a failed call.
pub const ERROR_CODE_METADATA: &str = "dps-error-code";

/// Implements the generated `RegistrationService` on top of a [`RegistrationBackend`]:
/// converts messages, derives the register deadline from `grpc-timeout`, maps
/// [`BackendError`]s to gRPC statuses and records metrics: the outcome of every Register
/// call (`registrations_total{protocol="grpc",...}`; calls without an attestation are only
/// timed), the duration of every call and the in-flight gauge. The backend must not record
/// these again.
pub struct GrpcFrontend<B> {
    backend: Arc<B>,
    metrics: Metrics,
    max_wait: Duration,
}

impl<B> std::fmt::Debug for GrpcFrontend<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcFrontend")
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl<B> GrpcFrontend<B> {
    /// `max_wait` caps how long Register waits for an assignment (also when the client sent
    /// no deadline).
    pub fn new(backend: Arc<B>, metrics: Metrics, max_wait: Duration) -> Self {
        Self {
            backend,
            metrics,
            max_wait,
        }
    }
}

#[tonic::async_trait]
impl<B: RegistrationBackend> RegistrationService for GrpcFrontend<B> {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let started = Instant::now();
        let _in_flight = self.metrics.in_flight(Protocol::Grpc);
        let peer = peer_info(&request)?;
        let deadline = started + wait_budget(grpc_timeout(request.metadata()), self.max_wait);
        let message = request.into_inner();
        let attestation_kind = message
            .attestation
            .as_ref()
            .and_then(|a| a.mechanism.as_ref())
            .map(|m| match m {
                pb::attestation::Mechanism::SymmetricKey(_) => {
                    crate::registry::AttestationType::SymmetricKey
                }
                pb::attestation::Mechanism::X509(_) => crate::registry::AttestationType::X509,
                pb::attestation::Mechanism::Tpm(_) => crate::registry::AttestationType::Tpm,
            });
        let record = |outcome: Outcome| {
            if let Some(kind) = attestation_kind {
                self.metrics
                    .record_outcome(Protocol::Grpc, kind, outcome, started.elapsed());
            } else {
                self.metrics.observe_duration(
                    Protocol::Grpc,
                    Operation::Register,
                    started.elapsed(),
                );
            }
        };

        let domain = match register_request(message, deadline) {
            Ok(r) => r,
            Err(status) => {
                record(Outcome::Invalid);
                return Err(status);
            }
        };
        let registration_id = domain.registration_id.clone();
        match self.backend.register(domain, peer).await {
            Ok(outcome) => {
                record(outcome.metric_outcome());
                tracing::debug!(%registration_id, outcome = outcome.metric_outcome().as_str(), "gRPC register");
                Ok(Response::new(register_response(outcome)))
            }
            Err(e) => {
                record(e.metric_outcome());
                Err(to_status(e, &registration_id))
            }
        }
    }

    async fn get_operation_status(
        &self,
        request: Request<pb::GetOperationStatusRequest>,
    ) -> Result<Response<pb::GetOperationStatusResponse>, Status> {
        let started = Instant::now();
        let _in_flight = self.metrics.in_flight(Protocol::Grpc);
        let result = async {
            let peer = peer_info(&request)?;
            let m = request.into_inner();
            let domain = OperationStatusRequest {
                id_scope: required("id_scope", m.id_scope)?,
                registration_id: required("registration_id", m.registration_id)?,
                operation_id: required("operation_id", m.operation_id)?,
                attestation: attestation(m.attestation)?,
            };
            let operation_id = domain.operation_id.clone();
            let registration_id = domain.registration_id.clone();
            let outcome = self
                .backend
                .operation_status(domain, peer)
                .await
                .map_err(|e| to_status(e, &registration_id))?;
            let result = match outcome {
                OperationOutcome::Done(state) => {
                    pb::get_operation_status_response::Result::Assignment(state_to_pb(state))
                }
                OperationOutcome::Pending(p) => {
                    pb::get_operation_status_response::Result::Pending(pending_to_pb(p))
                }
            };
            Ok(Response::new(pb::GetOperationStatusResponse {
                operation_id,
                result: Some(result),
            }))
        }
        .await;
        self.metrics.observe_duration(
            Protocol::Grpc,
            Operation::OperationStatus,
            started.elapsed(),
        );
        result
    }

    async fn get_registration_state(
        &self,
        request: Request<pb::GetRegistrationStateRequest>,
    ) -> Result<Response<pb::GetRegistrationStateResponse>, Status> {
        let started = Instant::now();
        let _in_flight = self.metrics.in_flight(Protocol::Grpc);
        let result = async {
            let peer = peer_info(&request)?;
            let m = request.into_inner();
            let domain = RegistrationStateRequest {
                id_scope: required("id_scope", m.id_scope)?,
                registration_id: required("registration_id", m.registration_id)?,
                attestation: attestation(m.attestation)?,
            };
            let registration_id = domain.registration_id.clone();
            let state = self
                .backend
                .registration_state(domain, peer)
                .await
                .map_err(|e| to_status(e, &registration_id))?;
            Ok(Response::new(pb::GetRegistrationStateResponse {
                registration_state: Some(state_to_pb(state)),
            }))
        }
        .await;
        self.metrics.observe_duration(
            Protocol::Grpc,
            Operation::RegistrationState,
            started.elapsed(),
        );
        result
    }
}

fn peer_info<T>(request: &Request<T>) -> Result<PeerInfo, Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| {
            // Only reachable if the router is served outside `serve_connection`.
            tracing::error!("gRPC request without connection information (PeerInfo)");
            Status::internal("connection information missing")
        })
}

/// Parses the `grpc-timeout` header: 1-8 digits and a unit (H, M, S, m, u, n).
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let unit_at = value.len().checked_sub(1)?;
    let (digits, unit) = (value.get(..unit_at)?, value.get(unit_at..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long Register may wait: a little less than the client's timeout (so the answer
/// arrives before the client gives up), at most `max_wait`.
pub fn wait_budget(timeout: Option<Duration>, max_wait: Duration) -> Duration {
    match timeout {
        Some(t) => {
            let margin = (t / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
            t.saturating_sub(margin).min(max_wait)
        }
        None => max_wait,
    }
}

fn invalid(message: impl Into<String>) -> Status {
    let mut status = Status::invalid_argument(message);
    insert_metadata(&mut status, ERROR_CODE_METADATA, "400000");
    status
}

fn required(field: &str, value: String) -> Result<String, Status> {
    if value.is_empty() {
        Err(invalid(format!("{field} is required")))
    } else {
        Ok(value)
    }
}

fn attestation(a: Option<pb::Attestation>) -> Result<DeviceAttestation, Status> {
    use pb::attestation::Mechanism;
    match a.and_then(|a| a.mechanism) {
        None => Err(invalid(
            "attestation is required (symmetric_key, x509 or tpm)",
        )),
        Some(Mechanism::SymmetricKey(s)) => Ok(DeviceAttestation::SymmetricKey {
            sas_token: required("attestation.symmetric_key.sas_token", s.sas_token)?,
        }),
        Some(Mechanism::X509(_)) => Ok(DeviceAttestation::X509),
        Some(Mechanism::Tpm(t)) => {
            if t.endorsement_key.is_empty() {
                return Err(invalid("attestation.tpm.endorsement_key is required"));
            }
            if t.storage_root_key.is_empty() {
                return Err(invalid("attestation.tpm.storage_root_key is required"));
            }
            let sas_token = match t.sas_token {
                Some(s) if s.is_empty() => {
                    return Err(invalid(
                        "attestation.tpm.sas_token must not be empty when set",
                    ));
                }
                other => other,
            };
            Ok(DeviceAttestation::Tpm {
                endorsement_key: t.endorsement_key,
                storage_root_key: t.storage_root_key,
                sas_token,
            })
        }
    }
}

fn register_request(m: pb::RegisterRequest, deadline: Instant) -> Result<RegisterRequest, Status> {
    Ok(RegisterRequest {
        id_scope: required("id_scope", m.id_scope)?,
        registration_id: required("registration_id", m.registration_id)?,
        attestation: attestation(m.attestation)?,
        payload: m
            .payload
            .map(value_to_json)
            .transpose()
            .map_err(|e| invalid(format!("payload: {e}")))?,
        deadline,
    })
}

fn register_response(outcome: RegisterOutcome) -> pb::RegisterResponse {
    use pb::register_response::Result as R;
    let result = match outcome {
        RegisterOutcome::Done(state) => R::Assignment(state_to_pb(state)),
        RegisterOutcome::Pending(p) => R::Pending(pending_to_pb(p)),
        RegisterOutcome::TpmChallenge(TpmChallenge {
            authentication_key,
            key_name,
        }) => R::TpmChallenge(pb::TpmChallenge {
            authentication_key,
            key_name,
        }),
    };
    pb::RegisterResponse {
        result: Some(result),
    }
}

/// Protobuf form of a registration status.
pub fn status_to_pb(status: RegistrationStatus) -> pb::RegistrationStatus {
    match status {
        RegistrationStatus::Unassigned => pb::RegistrationStatus::Unassigned,
        RegistrationStatus::Assigning => pb::RegistrationStatus::Assigning,
        RegistrationStatus::Assigned => pb::RegistrationStatus::Assigned,
        RegistrationStatus::Failed => pb::RegistrationStatus::Failed,
        RegistrationStatus::Disabled => pb::RegistrationStatus::Disabled,
    }
}

/// Protobuf form of a substatus.
pub fn substatus_to_pb(substatus: Substatus) -> pb::RegistrationSubstatus {
    match substatus {
        Substatus::InitialAssignment => pb::RegistrationSubstatus::InitialAssignment,
        Substatus::DeviceDataMigrated => pb::RegistrationSubstatus::DeviceDataMigrated,
        Substatus::DeviceDataReset => pb::RegistrationSubstatus::DeviceDataReset,
        Substatus::ReprovisionedToInitialAssignment => {
            pb::RegistrationSubstatus::ReprovisionedToInitialAssignment
        }
    }
}

fn timestamp_to_pb(ts: jiff::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ts.as_second(),
        nanos: ts.subsec_nanosecond(),
    }
}

fn duration_to_pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Always < 10^9.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn pending_to_pb(p: PendingOperation) -> pb::OperationPending {
    pb::OperationPending {
        operation_id: p.operation_id,
        retry_after: Some(duration_to_pb(p.retry_after)),
        status: status_to_pb(p.status).into(),
    }
}

/// Protobuf form of a registration state.
pub fn state_to_pb(s: RegistrationState) -> pb::RegistrationState {
    let (error_code, error_message) = s
        .error
        .map(|e| (i32::try_from(e.code).unwrap_or(i32::MAX), e.message))
        .unwrap_or_default();
    pb::RegistrationState {
        registration_id: s.registration_id,
        assigned_hub: s.assigned_hub.unwrap_or_default(),
        device_id: s.device_id.unwrap_or_default(),
        status: status_to_pb(s.status).into(),
        substatus: s
            .substatus
            .map(substatus_to_pb)
            .unwrap_or(pb::RegistrationSubstatus::Unspecified)
            .into(),
        etag: s.etag.unwrap_or_default(),
        created_time: s.created.map(timestamp_to_pb),
        last_updated_time: s.last_updated.map(timestamp_to_pb),
        error_code,
        error_message,
        payload: s.payload.map(json_to_value),
        tpm_authentication_key: s.tpm_authentication_key.unwrap_or_default(),
        enrollment_group_id: s.enrollment_group_id.unwrap_or_default(),
    }
}

fn insert_metadata(status: &mut Status, key: &'static str, value: &str) {
    if let Ok(v) = value.parse() {
        status.metadata_mut().insert(key, v);
    }
}

/// The gRPC status for a backend error: code, device-facing message, `dps-error-code` and,
/// when throttled, `retry-after` (whole seconds, rounded up) in the trailing metadata.
pub fn to_status(e: BackendError, registration_id: &str) -> Status {
    match &e {
        BackendError::Internal(detail) => {
            tracing::error!(%registration_id, %detail, "registration failed with an internal error");
        }
        other => tracing::debug!(%registration_id, error = %other, "registration refused"),
    }
    let mut status = Status::new(e.grpc_code(), e.public_message());
    insert_metadata(
        &mut status,
        ERROR_CODE_METADATA,
        &e.dps_error_code().to_string(),
    );
    if let BackendError::Throttled { retry_after } = e {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        insert_metadata(&mut status, RETRY_AFTER_METADATA, &secs.max(1).to_string());
    }
    status
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn md(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        m
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(grpc_timeout(&md("5S")), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout(&md("2M")), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout(&md("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&md("250m")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&md("7u")), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout(&md("9n")), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "5", "5s", "123456789S", "-5S", "5 S", "1.5S"] {
            let mut m = MetadataMap::new();
            if let Ok(v) = bad.parse() {
                m.insert("grpc-timeout", v);
            }
            assert_eq!(grpc_timeout(&m), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn wait_budget_leaves_a_margin_and_respects_the_cap() {
        let cap = Duration::from_secs(30);
        assert_eq!(wait_budget(None, cap), cap);
        assert_eq!(
            wait_budget(Some(Duration::from_secs(10)), cap),
            Duration::from_secs(9)
        );
        assert_eq!(wait_budget(Some(Duration::from_secs(600)), cap), cap);
        assert_eq!(
            wait_budget(Some(Duration::from_millis(100)), cap),
            Duration::from_millis(80)
        );
        assert_eq!(
            wait_budget(Some(Duration::from_millis(10)), cap),
            Duration::ZERO
        );
    }

    #[test]
    fn errors_map_to_codes_and_metadata() {
        let s = to_status(
            BackendError::Throttled {
                retry_after: Duration::from_millis(1500),
            },
            "dev",
        );
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.metadata().get("retry-after").unwrap(), "2");
        assert_eq!(s.metadata().get("dps-error-code").unwrap(), "429000");

        let s = to_status(BackendError::Internal("db path /secret".into()), "dev");
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("secret"));

        let s = to_status(
            BackendError::Unauthorized {
                message: "Invalid certificate.".into(),
                dps_code: Some(401_002),
            },
            "dev",
        );
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert_eq!(s.message(), "Invalid certificate.");
        assert_eq!(s.metadata().get("dps-error-code").unwrap(), "401002");
    }

    #[test]
    fn attestation_requires_its_fields() {
        use pb::attestation::Mechanism;
        assert!(attestation(None).is_err());
        assert!(attestation(Some(pb::Attestation { mechanism: None })).is_err());
        let sym = |t: &str| {
            Some(pb::Attestation {
                mechanism: Some(Mechanism::SymmetricKey(pb::SymmetricKeyAttestation {
                    sas_token: t.into(),
                })),
            })
        };
        assert!(attestation(sym("")).is_err());
        assert_eq!(
            attestation(sym("SharedAccessSignature x")).unwrap(),
            DeviceAttestation::SymmetricKey {
                sas_token: "SharedAccessSignature x".into()
            }
        );
        let tpm = |ek: &[u8], srk: &[u8], sas: Option<&str>| {
            Some(pb::Attestation {
                mechanism: Some(Mechanism::Tpm(pb::TpmAttestation {
                    endorsement_key: ek.to_vec(),
                    storage_root_key: srk.to_vec(),
                    sas_token: sas.map(str::to_owned),
                })),
            })
        };
        assert!(attestation(tpm(b"", b"s", None)).is_err());
        assert!(attestation(tpm(b"e", b"", None)).is_err());
        assert!(attestation(tpm(b"e", b"s", Some(""))).is_err());
        assert!(matches!(
            attestation(tpm(b"e", b"s", None)).unwrap(),
            DeviceAttestation::Tpm {
                sas_token: None,
                ..
            }
        ));
    }

    #[test]
    fn state_conversion_keeps_every_field() {
        let created = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let state = RegistrationState {
            registration_id: "dev-1".into(),
            assigned_hub: Some("hub.example".into()),
            device_id: Some("dev-1".into()),
            status: RegistrationStatus::Assigned,
            substatus: Some(Substatus::DeviceDataMigrated),
            etag: Some("e1".into()),
            created: Some(created),
            last_updated: Some(created),
            error: None,
            payload: Some(serde_json::json!({"a": 1})),
            tpm_authentication_key: Some(vec![1, 2, 3]),
            enrollment_group_id: Some("sensors".into()),
            x509: None,
        };
        let p = state_to_pb(state);
        assert_eq!(p.status(), pb::RegistrationStatus::Assigned);
        assert_eq!(p.substatus(), pb::RegistrationSubstatus::DeviceDataMigrated);
        assert_eq!(p.created_time.unwrap().seconds, 1_700_000_000);
        assert_eq!(
            value_to_json(p.payload.unwrap()).unwrap(),
            serde_json::json!({"a": 1})
        );
        assert_eq!(p.tpm_authentication_key, vec![1, 2, 3]);
        assert_eq!(p.enrollment_group_id, "sensors");
    }
}
