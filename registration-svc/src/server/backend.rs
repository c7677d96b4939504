//! The seam between the device-facing front ends (gRPC, DPS HTTPS) and the registration
//! engine: protocol-neutral request/response types and the [`RegistrationBackend`] trait.
//!
//! Front ends parse their wire format into these types, call the backend and render the
//! result; the engine implements the trait once for both protocols.

use std::{fmt, future::Future, time::Duration};

use tokio::time::Instant;

use super::PeerInfo;
use crate::metrics::Outcome;
pub use crate::registry::{AttestationType, RegistrationStatus, Substatus};

/// The credentials a device presented in the request. For X.509 the certificate chain is the
/// TLS client chain in [`PeerInfo::chain`]. `Debug` never shows SAS tokens.
#[derive(Clone, PartialEq, Eq)]
pub enum DeviceAttestation {
    /// Symmetric key: a DPS SAS token (`SharedAccessSignature sr=...&sig=...&se=...`).
    SymmetricKey {
        /// The token, as sent.
        sas_token: String,
    },
    /// X.509: the TLS client certificate chain.
    X509,
    /// TPM 2.0.
    Tpm {
        /// Marshalled TPM2B_PUBLIC of the endorsement key (with its 2-byte size).
        endorsement_key: Vec<u8>,
        /// Marshalled TPM2B_PUBLIC of the storage root key (with its 2-byte size).
        storage_root_key: Vec<u8>,
        /// SAS token signed with the key from the challenge; `None` asks for a challenge.
        sas_token: Option<String>,
    },
}

impl DeviceAttestation {
    /// The attestation type (for records and metrics).
    pub fn kind(&self) -> AttestationType {
        match self {
            DeviceAttestation::SymmetricKey { .. } => AttestationType::SymmetricKey,
            DeviceAttestation::X509 => AttestationType::X509,
            DeviceAttestation::Tpm { .. } => AttestationType::Tpm,
        }
    }
}

impl fmt::Debug for DeviceAttestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceAttestation::SymmetricKey { .. } => f
                .debug_struct("SymmetricKey")
                .field("sas_token", &"[redacted]")
                .finish(),
            DeviceAttestation::X509 => f.write_str("X509"),
            DeviceAttestation::Tpm {
                endorsement_key,
                storage_root_key,
                sas_token,
            } => f
                .debug_struct("Tpm")
                .field("endorsement_key_len", &endorsement_key.len())
                .field("storage_root_key_len", &storage_root_key.len())
                .field("sas_token", &sas_token.as_ref().map(|_| "[redacted]"))
                .finish(),
        }
    }
}

/// A registration request (DPS `PUT .../register`, gRPC `Register`).
#[derive(Clone, Debug)]
pub struct RegisterRequest {
    /// ID scope the device addressed.
    pub id_scope: String,
    /// Registration ID as sent (not yet validated or lower-cased).
    pub registration_id: String,
    /// The device's credentials.
    pub attestation: DeviceAttestation,
    /// Custom-allocation payload (any JSON), if the device sent one.
    pub payload: Option<serde_json::Value>,
    /// Answer by this instant: if the assignment is not finished by then, return
    /// [`RegisterOutcome::Pending`] and let the device poll. Front ends derive it from the
    /// call's deadline (gRPC `grpc-timeout`), capped by their configured maximum wait.
    pub deadline: Instant,
}

/// An operation status poll (DPS `GET .../operations/{operationId}`, gRPC
/// `GetOperationStatus`).
#[derive(Clone, Debug)]
pub struct OperationStatusRequest {
    /// ID scope the device addressed.
    pub id_scope: String,
    /// Registration ID as sent.
    pub registration_id: String,
    /// Operation id from [`PendingOperation::operation_id`].
    pub operation_id: String,
    /// The same credentials as the register call.
    pub attestation: DeviceAttestation,
}

/// A registration status lookup (DPS `POST /{idScope}/registrations/{id}`, gRPC
/// `GetRegistrationState`).
#[derive(Clone, Debug)]
pub struct RegistrationStateRequest {
    /// ID scope the device addressed.
    pub id_scope: String,
    /// Registration ID as sent.
    pub registration_id: String,
    /// The device's credentials.
    pub attestation: DeviceAttestation,
}

/// Result of a register call.
// One value per request, moved once: boxing the state would only burden the engine.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum RegisterOutcome {
    /// Finished: status assigned, failed or disabled.
    Done(RegistrationState),
    /// Not finished by the deadline; the device polls.
    Pending(PendingOperation),
    /// TPM: the device must import this key and register again with a SAS token it signs.
    TpmChallenge(TpmChallenge),
}

impl RegisterOutcome {
    /// The metrics outcome label.
    pub fn metric_outcome(&self) -> Outcome {
        match self {
            RegisterOutcome::Done(state) => match state.status {
                RegistrationStatus::Assigned => Outcome::Assigned,
                RegistrationStatus::Failed => Outcome::Failed,
                RegistrationStatus::Disabled => Outcome::Disabled,
                RegistrationStatus::Assigning | RegistrationStatus::Unassigned => Outcome::Pending,
            },
            RegisterOutcome::Pending(_) => Outcome::Pending,
            RegisterOutcome::TpmChallenge(_) => Outcome::Challenge,
        }
    }
}

/// Result of an operation status poll.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum OperationOutcome {
    /// Finished: status assigned, failed or disabled.
    Done(RegistrationState),
    /// Still running.
    Pending(PendingOperation),
}

/// A registration still in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingOperation {
    /// Opaque id the device polls with.
    pub operation_id: String,
    /// How long the device should wait before polling.
    pub retry_after: Duration,
    /// Current status (normally [`RegistrationStatus::Assigning`]).
    pub status: RegistrationStatus,
}

/// The TPM activation challenge. `Debug` shows only the blob's length.
#[derive(Clone, PartialEq, Eq)]
pub struct TpmChallenge {
    /// Activation blob (dps-protocol §4.2).
    pub authentication_key: Vec<u8>,
    /// Key name for the SAS token's `skn` (`registration`).
    pub key_name: String,
}

impl fmt::Debug for TpmChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmChallenge")
            .field("authentication_key_len", &self.authentication_key.len())
            .field("key_name", &self.key_name)
            .finish()
    }
}

/// Error of a failed registration as reported to the device (DPS `errorCode`,
/// `errorMessage`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationError {
    /// Six-digit DPS error code; the first three digits are the HTTP status.
    pub code: u32,
    /// Human-readable message.
    pub message: String,
}

/// A device's registration state (DPS `registrationState` / `DeviceRegistrationResult`).
#[derive(Clone, PartialEq)]
pub struct RegistrationState {
    /// Registration ID (canonical lower case).
    pub registration_id: String,
    /// Assigned hub host name (when assigned).
    pub assigned_hub: Option<String>,
    /// Device ID on the hub (when assigned).
    pub device_id: Option<String>,
    /// Status.
    pub status: RegistrationStatus,
    /// Substatus (when assigned).
    pub substatus: Option<Substatus>,
    /// Opaque record version.
    pub etag: Option<String>,
    /// When the record was created.
    pub created: Option<jiff::Timestamp>,
    /// When the record was last updated.
    pub last_updated: Option<jiff::Timestamp>,
    /// Error when status is failed (or disabled).
    pub error: Option<RegistrationError>,
    /// Payload from a custom-allocation webhook.
    pub payload: Option<serde_json::Value>,
    /// TPM: activation blob with the hub key, returned on assignment.
    pub tpm_authentication_key: Option<Vec<u8>>,
    /// Name of the enrollment group that admitted the device (None for individual ones).
    pub enrollment_group_id: Option<String>,
    /// DPS `registrationState.x509` object (certificate info); only the DPS HTTPS front end
    /// renders it.
    pub x509: Option<serde_json::Value>,
}

impl fmt::Debug for RegistrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationState")
            .field("registration_id", &self.registration_id)
            .field("assigned_hub", &self.assigned_hub)
            .field("device_id", &self.device_id)
            .field("status", &self.status)
            .field("substatus", &self.substatus)
            .field("etag", &self.etag)
            .field("created", &self.created)
            .field("last_updated", &self.last_updated)
            .field("error", &self.error)
            .field("payload", &self.payload.as_ref().map(|_| "[payload]"))
            .field(
                "tpm_authentication_key_len",
                &self.tpm_authentication_key.as_ref().map(Vec::len),
            )
            .field("enrollment_group_id", &self.enrollment_group_id)
            .finish_non_exhaustive()
    }
}

/// Why a request was refused. Front ends map it to their status codes
/// ([`BackendError::grpc_code`], [`BackendError::http_status`]) and error bodies
/// ([`BackendError::dps_error_code`]). Messages are shown to the device: never put secrets
/// or internal details in them (use [`BackendError::Internal`], whose detail is only logged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Malformed request (IDs, sizes, mismatching scope...).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// Attestation failed, or no enrollment admits the device.
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// Message for the device (e.g. "Invalid certificate.").
        message: String,
        /// Specific DPS error code (e.g. 401002); `None` uses 401000.
        dps_code: Option<u32>,
    },
    /// Unknown operation id, or no registration record.
    #[error("not found: {0}")]
    NotFound(String),
    /// Rate limited.
    #[error("too many requests; retry after {} s", retry_after.as_secs())]
    Throttled {
        /// When to retry.
        retry_after: Duration,
    },
    /// Another registration of the same device is running.
    #[error("precondition failed: {0}")]
    Conflict(String),
    /// Temporarily unable to serve (store not open, manifests not loaded).
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Unexpected failure. The detail is logged, not sent to the device.
    #[error("internal error")]
    Internal(String),
}

impl BackendError {
    /// Shorthand for [`BackendError::Unauthorized`] with the generic code.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        BackendError::Unauthorized {
            message: message.into(),
            dps_code: None,
        }
    }

    /// gRPC status code for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            BackendError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            BackendError::Unauthorized { .. } => tonic::Code::Unauthenticated,
            BackendError::NotFound(_) => tonic::Code::NotFound,
            BackendError::Throttled { .. } => tonic::Code::ResourceExhausted,
            BackendError::Conflict(_) => tonic::Code::Aborted,
            BackendError::Unavailable(_) => tonic::Code::Unavailable,
            BackendError::Internal(_) => tonic::Code::Internal,
        }
    }

    /// HTTP status for the DPS HTTPS API.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            BackendError::InvalidArgument(_) => http::StatusCode::BAD_REQUEST,
            BackendError::Unauthorized { .. } => http::StatusCode::UNAUTHORIZED,
            BackendError::NotFound(_) => http::StatusCode::NOT_FOUND,
            BackendError::Throttled { .. } => http::StatusCode::TOO_MANY_REQUESTS,
            BackendError::Conflict(_) => http::StatusCode::PRECONDITION_FAILED,
            BackendError::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            BackendError::Internal(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Six-digit DPS `errorCode` (HTTP status × 1000, or a specific code).
    pub fn dps_error_code(&self) -> u32 {
        match self {
            BackendError::Unauthorized {
                dps_code: Some(code),
                ..
            } => *code,
            // DPS reports a concurrent registration as 409203 "Precondition failed."
            BackendError::Conflict(_) => 409_203,
            other => u32::from(other.http_status().as_u16()) * 1000,
        }
    }

    /// The message to show the device (the display form, except for internal errors, whose
    /// detail stays in the logs).
    pub fn public_message(&self) -> String {
        match self {
            BackendError::Unauthorized { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// The metrics outcome label of a register call that failed with this error.
    pub fn metric_outcome(&self) -> Outcome {
        match self {
            BackendError::InvalidArgument(_) | BackendError::NotFound(_) => Outcome::Invalid,
            BackendError::Unauthorized { .. } => Outcome::Unauthorized,
            BackendError::Throttled { .. } => Outcome::Throttled,
            BackendError::Conflict(_)
            | BackendError::Unavailable(_)
            | BackendError::Internal(_) => Outcome::Failed,
        }
    }
}

/// What the registration engine provides to the device-facing front ends.
///
/// Implementations must be cheap to call concurrently (`&self`); the front ends hold the
/// backend in an `Arc`. Each call receives the connection's [`PeerInfo`] (client address for
/// geo-latency allocation, TLS client chain for X.509 attestation).
///
/// Write implementations with `async fn`; the returned futures must be `Send`.
pub trait RegistrationBackend: Send + Sync + 'static {
    /// Registers a device: rate-limit, find the enrollment, attest, allocate, write, answer.
    /// Must return by `request.deadline` (returning [`RegisterOutcome::Pending`] if the work
    /// continues in the background).
    fn register(
        &self,
        request: RegisterRequest,
        peer: PeerInfo,
    ) -> impl Future<Output = Result<RegisterOutcome, BackendError>> + Send;

    /// Reports the progress of a pending registration.
    fn operation_status(
        &self,
        request: OperationStatusRequest,
        peer: PeerInfo,
    ) -> impl Future<Output = Result<OperationOutcome, BackendError>> + Send;

    /// Looks up a device's registration state without registering it.
    fn registration_state(
        &self,
        request: RegistrationStateRequest,
        peer: PeerInfo,
    ) -> impl Future<Output = Result<RegistrationState, BackendError>> + Send;
}
