//! Shared pieces of the `server_*` tests: a fake [`RegistrationBackend`] that records what it
//! receives and answers according to the registration ID.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Mutex, time::Duration};

use kdps_registration::registry::{RegistrationStatus, Substatus};
use kdps_registration::server::{
    BackendError, DeviceAttestation, OperationOutcome, OperationStatusRequest, PeerInfo,
    PendingOperation, RegisterOutcome, RegisterRequest, RegistrationBackend, RegistrationError,
    RegistrationState, RegistrationStateRequest, TpmChallenge,
};
use tokio::time::Instant;

/// What the fake saw of one call.
#[derive(Clone, Debug)]
pub struct Seen {
    pub operation: &'static str,
    pub registration_id: String,
    pub attestation: DeviceAttestation,
    pub payload: Option<serde_json::Value>,
    /// Time left until the request's deadline when the call arrived (register only).
    pub budget: Option<Duration>,
    pub peer: PeerInfo,
}

/// Registration IDs with special behaviour:
/// - `throttled`: rate limited (retry after 3 s);
/// - `intruder`: unauthorized with DPS code 401002;
/// - `broken`: internal error;
/// - `slow`: waits until the deadline, then answers pending;
/// - `disabled`: terminal disabled state;
/// - anything else: assigned to `hub.example` with the payload echoed back; TPM requests
///   without a SAS token get a challenge.
#[derive(Default)]
pub struct FakeBackend {
    pub seen: Mutex<Vec<Seen>>,
}

pub const TPM_CHALLENGE_BLOB: &[u8] = b"activation-blob";
pub const TPM_HUB_KEY_BLOB: &[u8] = b"hub-key-blob";

impl FakeBackend {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the backend was called")
    }

    fn record(&self, seen: Seen) {
        self.seen.lock().unwrap().push(seen);
    }
}

pub fn assigned(registration_id: &str) -> RegistrationState {
    let now = jiff::Timestamp::now();
    RegistrationState {
        registration_id: registration_id.to_owned(),
        assigned_hub: Some("hub.example".to_owned()),
        device_id: Some(registration_id.to_owned()),
        status: RegistrationStatus::Assigned,
        substatus: Some(Substatus::InitialAssignment),
        etag: Some("etag-1".to_owned()),
        created: Some(now),
        last_updated: Some(now),
        error: None,
        payload: None,
        tpm_authentication_key: None,
        enrollment_group_id: None,
        x509: None,
    }
}

impl RegistrationBackend for FakeBackend {
    async fn register(
        &self,
        request: RegisterRequest,
        peer: PeerInfo,
    ) -> Result<RegisterOutcome, BackendError> {
        let budget = request.deadline.saturating_duration_since(Instant::now());
        self.record(Seen {
            operation: "register",
            registration_id: request.registration_id.clone(),
            attestation: request.attestation.clone(),
            payload: request.payload.clone(),
            budget: Some(budget),
            peer,
        });
        let id = request.registration_id.as_str();
        match id {
            "throttled" => Err(BackendError::Throttled {
                retry_after: Duration::from_secs(3),
            }),
            "intruder" => Err(BackendError::Unauthorized {
                message: "Invalid certificate.".to_owned(),
                dps_code: Some(401_002),
            }),
            "broken" => Err(BackendError::Internal("disk on fire".to_owned())),
            "slow" => {
                tokio::time::sleep_until(request.deadline).await;
                Ok(RegisterOutcome::Pending(PendingOperation {
                    operation_id: "op-slow".to_owned(),
                    retry_after: Duration::from_secs(2),
                    status: RegistrationStatus::Assigning,
                }))
            }
            "disabled" => Ok(RegisterOutcome::Done(RegistrationState {
                assigned_hub: None,
                device_id: None,
                substatus: None,
                status: RegistrationStatus::Disabled,
                error: Some(RegistrationError {
                    code: 401_003,
                    message: "enrollment disabled".to_owned(),
                }),
                ..assigned(id)
            })),
            _ => {
                if let DeviceAttestation::Tpm {
                    sas_token: None, ..
                } = request.attestation
                {
                    return Ok(RegisterOutcome::TpmChallenge(TpmChallenge {
                        authentication_key: TPM_CHALLENGE_BLOB.to_vec(),
                        key_name: "registration".to_owned(),
                    }));
                }
                let mut state = assigned(id);
                state.payload = request.payload;
                if matches!(request.attestation, DeviceAttestation::Tpm { .. }) {
                    state.tpm_authentication_key = Some(TPM_HUB_KEY_BLOB.to_vec());
                }
                Ok(RegisterOutcome::Done(state))
            }
        }
    }

    async fn operation_status(
        &self,
        request: OperationStatusRequest,
        peer: PeerInfo,
    ) -> Result<OperationOutcome, BackendError> {
        self.record(Seen {
            operation: "operation_status",
            registration_id: request.registration_id.clone(),
            attestation: request.attestation.clone(),
            payload: None,
            budget: None,
            peer,
        });
        match request.operation_id.as_str() {
            "op-slow" => Ok(OperationOutcome::Done(assigned(&request.registration_id))),
            "op-running" => Ok(OperationOutcome::Pending(PendingOperation {
                operation_id: "op-running".to_owned(),
                retry_after: Duration::from_millis(1500),
                status: RegistrationStatus::Assigning,
            })),
            other => Err(BackendError::NotFound(format!("operation {other}"))),
        }
    }

    async fn registration_state(
        &self,
        request: RegistrationStateRequest,
        peer: PeerInfo,
    ) -> Result<RegistrationState, BackendError> {
        self.record(Seen {
            operation: "registration_state",
            registration_id: request.registration_id.clone(),
            attestation: request.attestation.clone(),
            payload: None,
            budget: None,
            peer,
        });
        if request.registration_id == "unknown" {
            return Err(BackendError::NotFound("no registration record".to_owned()));
        }
        Ok(assigned(&request.registration_id))
    }
}

/// A Register request with symmetric-key attestation.
pub fn symmetric_register(registration_id: &str) -> kdps_proto::registration::v1::RegisterRequest {
    use kdps_proto::registration::v1 as pb;
    pb::RegisterRequest {
        id_scope: "0ne00000A11".to_owned(),
        registration_id: registration_id.to_owned(),
        attestation: Some(pb::Attestation {
            mechanism: Some(pb::attestation::Mechanism::SymmetricKey(
                pb::SymmetricKeyAttestation {
                    sas_token: "SharedAccessSignature sr=x&sig=y&se=1".to_owned(),
                },
            )),
        }),
        payload: None,
    }
}
