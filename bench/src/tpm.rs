//! TPM registrations with a software stand-in for the device's TPM ([`SoftTpm`]).
//!
//! The device SDK's TPM path drives a real TPM through tss-esapi (`Credential::Tpm(tcti)`), and
//! a software TPM daemon (swtpm) handles one client at a time, so high-concurrency TPM load uses
//! [`SoftTpm`] instead: it does the device-side cryptography of a TPM — ActivateCredential
//! (RSA-OAEP with the EK), Import (RSA-OAEP with the SRK, KDFa, AES-CFB, integrity HMACs) and
//! TPM2_HMAC of the SAS token — in software. On the wire it is the SDK's gRPC exchange: a new
//! TLS connection, `Register` without a token (→ TpmChallenge), `Register` with the token on
//! the same connection, polling while pending.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kdps_proto::registration::v1 as pb;
use kdps_proto::sas;
use kdps_proto::tpm::SoftTpm;

use crate::tls::ConnectError;

/// Lifetime of the SAS tokens (as the SDK).
const SAS_TTL: Duration = Duration::from_secs(3600);

/// Why a TPM registration failed; [`TpmRegisterError::kind`] names the error bucket.
#[derive(Debug, thiserror::Error)]
pub enum TpmRegisterError {
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// HTTP/2 setup on the open connection failed.
    #[error("HTTP/2 setup: {0}")]
    Http2(String),
    /// The service answered with an error status.
    #[error("{code:?}: {message}")]
    Status {
        /// gRPC code.
        code: tonic::Code,
        /// Message.
        message: String,
    },
    /// The software TPM rejected the activation blob.
    #[error("activation: {0}")]
    Activation(String),
    /// The service answered something unexpected or a failed registration.
    #[error("{0}")]
    Protocol(String),
}

impl TpmRegisterError {
    /// Error bucket, aligned with `kdps_device::error::DeviceError::kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(e) => e.kind(),
            Self::Http2(_) => "cannot_reach",
            Self::Status { code, .. } => match code {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => "unauthorized",
                tonic::Code::ResourceExhausted => "throttled",
                tonic::Code::Unavailable => "cannot_reach",
                tonic::Code::InvalidArgument => "invalid_request",
                _ => "failed",
            },
            Self::Activation(_) => "tpm",
            Self::Protocol(_) => "protocol",
        }
    }
}

/// One software-TPM device.
pub struct SoftTpmDevice {
    /// Registration ID of its individual enrollment.
    pub registration_id: String,
    tpm: Arc<Mutex<SoftTpm>>,
    ek: Vec<u8>,
    srk: Vec<u8>,
}

impl std::fmt::Debug for SoftTpmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftTpmDevice")
            .field("registration_id", &self.registration_id)
            .finish_non_exhaustive()
    }
}

impl SoftTpmDevice {
    /// Wraps a software TPM enrolled under `registration_id`.
    pub fn new(registration_id: String, tpm: SoftTpm) -> Self {
        Self {
            registration_id,
            ek: tpm.endorsement_key().to_tpm2b(),
            srk: tpm.storage_root_key().to_tpm2b(),
            tpm: Arc::new(Mutex::new(tpm)),
        }
    }

    fn attestation(&self, sas_token: Option<String>) -> pb::Attestation {
        pb::Attestation {
            mechanism: Some(pb::attestation::Mechanism::Tpm(pb::TpmAttestation {
                endorsement_key: self.ek.clone(),
                storage_root_key: self.srk.clone(),
                sas_token,
            })),
        }
    }

    /// Imports the challenge and signs the registration SAS token, off the async threads (two
    /// RSA-2048 decryptions).
    async fn answer(&self, id_scope: &str, blob: Vec<u8>) -> Result<String, TpmRegisterError> {
        let tpm = Arc::clone(&self.tpm);
        let id_scope = id_scope.to_owned();
        let registration_id = self.registration_id.clone();
        tokio::task::spawn_blocking(move || {
            let mut tpm = tpm
                .lock()
                .map_err(|_| TpmRegisterError::Activation("TPM lock poisoned".into()))?;
            tpm.import_activation(&blob)
                .map_err(|e| TpmRegisterError::Activation(e.to_string()))?;
            let se = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_add(SAS_TTL.as_secs());
            let sr = sas::encode_sr(
                &id_scope,
                &registration_id,
                sas::SrEncoding::UrlEncodedUpper,
            );
            let sig = tpm
                .hmac(sas::string_to_sign(&sr, se).as_bytes())
                .map_err(|e| TpmRegisterError::Activation(e.to_string()))?;
            Ok(sas::format_token(
                &sr,
                &sig,
                se,
                Some(sas::REGISTRATION_KEY_NAME),
            ))
        })
        .await
        .map_err(|e| TpmRegisterError::Activation(e.to_string()))?
    }

    /// Registers over a new TLS connection; returns the assigned device ID.
    pub async fn register(
        &self,
        host: &str,
        port: u16,
        config: rustls::ClientConfig,
        id_scope: &str,
        timeout: Duration,
    ) -> Result<String, TpmRegisterError> {
        let tls = crate::tls::connect(host, port, config, timeout).await?;
        let mut slot = Some(hyper_util::rt::TokioIo::new(tls));
        let connector = tower::service_fn(move |_: http::Uri| {
            let io = slot.take();
            async move { io.ok_or_else(|| std::io::Error::other("connection already used")) }
        });
        let authority = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}:{port}"))
            .map_err(|e| TpmRegisterError::Http2(e.to_string()))?
            .timeout(timeout)
            .connect_with_connector(connector)
            .await
            .map_err(|e| TpmRegisterError::Http2(e.to_string()))?;
        let mut rpc = pb::registration_service_client::RegistrationServiceClient::new(channel);

        let request = |attestation| pb::RegisterRequest {
            id_scope: id_scope.to_owned(),
            registration_id: self.registration_id.clone(),
            attestation: Some(attestation),
            payload: None,
        };
        let status = |s: tonic::Status| TpmRegisterError::Status {
            code: s.code(),
            message: s.message().to_owned(),
        };
        use pb::register_response::Result as R;
        let first = rpc
            .register(request(self.attestation(None)))
            .await
            .map_err(status)?
            .into_inner();
        let blob = match first.result {
            Some(R::TpmChallenge(c)) => c.authentication_key,
            other => {
                return Err(TpmRegisterError::Protocol(format!(
                    "expected a TPM challenge, got {other:?}"
                )));
            }
        };
        let token = self.answer(id_scope, blob).await?;
        let second = rpc
            .register(request(self.attestation(Some(token.clone()))))
            .await
            .map_err(status)?
            .into_inner();
        let mut outcome = second.result;
        for _ in 0..60 {
            match outcome {
                Some(R::Assignment(state)) => return assigned(state),
                Some(R::Pending(p)) => {
                    let wait = p
                        .retry_after
                        .and_then(|d| Duration::try_from(d).ok())
                        .unwrap_or(Duration::from_secs(1))
                        .max(Duration::from_millis(100));
                    tokio::time::sleep(wait).await;
                    let polled = rpc
                        .get_operation_status(pb::GetOperationStatusRequest {
                            id_scope: id_scope.to_owned(),
                            registration_id: self.registration_id.clone(),
                            operation_id: p.operation_id,
                            attestation: Some(self.attestation(Some(token.clone()))),
                        })
                        .await
                        .map_err(status)?
                        .into_inner();
                    use pb::get_operation_status_response::Result as P;
                    outcome = match polled.result {
                        Some(P::Assignment(s)) => Some(R::Assignment(s)),
                        Some(P::Pending(p)) => Some(R::Pending(p)),
                        None => None,
                    };
                }
                other => {
                    return Err(TpmRegisterError::Protocol(format!(
                        "unexpected answer to the token: {other:?}"
                    )));
                }
            }
        }
        Err(TpmRegisterError::Protocol(
            "still pending after 60 polls".into(),
        ))
    }
}

fn assigned(state: pb::RegistrationState) -> Result<String, TpmRegisterError> {
    if state.status == pb::RegistrationStatus::Assigned as i32 && !state.device_id.is_empty() {
        Ok(state.device_id)
    } else {
        Err(TpmRegisterError::Protocol(format!(
            "registration ended with status {} ({}: {})",
            state.status, state.error_code, state.error_message
        )))
    }
}
