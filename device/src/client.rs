//! The registration client: connects to kdps, proves the device's identity, follows the
//! registration to its end and retries what is worth retrying.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kdps_proto::registration::v1 as pb;
use rand::Rng as _;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::error::DeviceError;
use crate::x509::X509Identity;

/// Lifetime of the SAS tokens the client signs.
const SAS_TTL: Duration = Duration::from_secs(3600);

/// How the device proves its identity.
pub enum Credential {
    /// An individual enrollment's key, or a key already derived from a group key.
    SymmetricKey(Vec<u8>),
    /// An X.509 certificate chain and its private key, presented as the TLS client certificate.
    X509(X509Identity),
    /// A TPM reached through a TCTI (e.g. `swtpm:host=127.0.0.1,port=2321`).
    #[cfg(feature = "tpm")]
    Tpm(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SymmetricKey(_) => f.write_str("SymmetricKey(<redacted>)"),
            Self::X509(_) => f.write_str("X509(..)"),
            #[cfg(feature = "tpm")]
            Self::Tpm(tcti) => write!(f, "Tpm({tcti})"),
        }
    }
}

impl Credential {
    /// The attestation type name used in output and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SymmetricKey(_) => "symmetricKey",
            Self::X509(_) => "x509",
            #[cfg(feature = "tpm")]
            Self::Tpm(_) => "tpm",
        }
    }
}

/// Retry behaviour: exponential back-off with full jitter, honouring the service's retry-after.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts before giving up (connection failures, throttling, transient server errors).
    pub max_attempts: u32,
    /// First back-off.
    pub initial_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// Polls of a pending operation before giving up.
    pub max_polls: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_polls: 60,
        }
    }
}

impl RetryPolicy {
    /// The back-off before attempt `attempt` (1-based), at least `floor` (a retry-after).
    fn backoff(&self, attempt: u32, floor: Duration) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_backoff);
        // Full jitter spreads a fleet rebooting at once; never go below what the service asked.
        let jitter = rand::thread_rng().gen_range(0..=exp.as_millis().max(1) as u64);
        floor.max(Duration::from_millis(jitter))
    }
}

/// The wire protocol to register with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `kdps.registration.v1` over gRPC.
    #[default]
    Grpc,
    /// The Azure DPS HTTPS device protocol.
    Https,
}

/// Everything a registration needs.
#[derive(Debug)]
pub struct RegisterOptions {
    /// `https://host:port` of the registration endpoint.
    pub endpoint: String,
    /// The ID scope of the provisioning service.
    pub id_scope: String,
    /// The registration ID (for X.509: the certificate's CN).
    pub registration_id: String,
    /// CA certificates (PEM) that sign the server certificate; the system roots when `None`.
    pub ca_cert: Option<PathBuf>,
    /// The device's credential.
    pub credential: Credential,
    /// Custom data for a custom-allocation webhook.
    pub payload: Option<serde_json::Value>,
    /// The protocol.
    pub protocol: Protocol,
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// Time allowed for one call (connect + request).
    pub call_timeout: Duration,
}

/// The outcome of a successful registration, in DPS field names.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationResult {
    /// The registration ID.
    pub registration_id: String,
    /// `assigned`.
    pub status: String,
    /// Host name of the assigned hub.
    pub assigned_hub: String,
    /// Device ID on the hub.
    pub device_id: String,
    /// `initialAssignment`, `deviceDataMigrated`, `deviceDataReset` or
    /// `reprovisionedToInitialAssignment`.
    pub substatus: String,
    /// Opaque version of the registration record.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub etag: String,
    /// When the registration record was created (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// When the registration record was last updated (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// Data returned by a custom-allocation webhook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// The enrollment group that admitted the device, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
    /// TPM devices: the hub authentication key blob (base64), imported into the TPM.
    #[serde(skip)]
    pub tpm_authentication_key: Option<Vec<u8>>,
}

/// A registration client for one device.
pub struct ProvisioningClient {
    opts: RegisterOptions,
    tls_roots: Arc<rustls::RootCertStore>,
    host: String,
    port: u16,
    #[cfg(feature = "tpm")]
    tpm: Option<crate::tpm::Tpm>,
}

impl std::fmt::Debug for ProvisioningClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisioningClient")
            .field("endpoint", &self.opts.endpoint)
            .field("registration_id", &self.opts.registration_id)
            .finish_non_exhaustive()
    }
}

/// What one round trip ended with.
pub(crate) enum Step {
    Done(Box<pb::RegistrationState>),
    Pending {
        operation_id: String,
        retry_after: Duration,
    },
    #[cfg_attr(not(feature = "tpm"), allow(dead_code))]
    Challenge(Vec<u8>),
}

impl ProvisioningClient {
    /// Validates the options and loads the trust roots.
    pub fn new(opts: RegisterOptions) -> Result<Self, DeviceError> {
        let (host, port) = parse_endpoint(&opts.endpoint)?;
        if opts.id_scope.trim().is_empty() {
            return Err(DeviceError::Config("the ID scope is empty".into()));
        }
        if opts.registration_id.trim().is_empty() {
            return Err(DeviceError::Config("the registration ID is empty".into()));
        }
        let tls_roots = Arc::new(load_roots(opts.ca_cert.as_deref())?);
        Ok(Self {
            opts,
            tls_roots,
            host,
            port,
            #[cfg(feature = "tpm")]
            tpm: None,
        })
    }

    /// Registers the device: retries transient failures with back-off, follows pending
    /// operations and answers a TPM challenge.
    pub async fn register(&mut self) -> Result<RegistrationResult, DeviceError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.register_once().await {
                Ok(result) => return Ok(result),
                Err(Retry::Fatal(e)) => return Err(e),
                Err(Retry::After(e, floor)) => {
                    if attempt >= self.opts.retry.max_attempts {
                        return Err(match e {
                            DeviceError::Throttled { retry_after, .. } => DeviceError::Throttled {
                                retry_after,
                                attempts: attempt,
                            },
                            other => other,
                        });
                    }
                    let wait = self.opts.retry.backoff(attempt, floor);
                    tracing::info!(attempt, ?wait, error = %e, "retrying registration");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn register_once(&mut self) -> Result<RegistrationResult, Retry> {
        let mut rpc = self.connect().await?;
        let mut step = self.call_register(&mut rpc, None).await?;
        #[cfg(feature = "tpm")]
        if let Step::Challenge(blob) = step {
            let token = self.answer_challenge(&blob).map_err(Retry::Fatal)?;
            step = self.call_register(&mut rpc, Some(token)).await?;
        }
        let mut polls = 0u32;
        loop {
            match step {
                Step::Done(state) => return finish(*state).map_err(Retry::Fatal),
                Step::Challenge(_) => {
                    return Err(Retry::Fatal(DeviceError::Protocol(
                        "the service sent a TPM challenge to a non-TPM device, or a second challenge"
                            .into(),
                    )));
                }
                Step::Pending {
                    operation_id,
                    retry_after,
                } => {
                    polls += 1;
                    if polls > self.opts.retry.max_polls {
                        return Err(Retry::Fatal(DeviceError::Protocol(format!(
                            "registration still pending after {} polls (operation {operation_id})",
                            self.opts.retry.max_polls
                        ))));
                    }
                    tokio::time::sleep(retry_after.max(Duration::from_millis(100))).await;
                    step = self.call_poll(&mut rpc, &operation_id).await?;
                }
            }
        }
    }

    /// Opens a new TLS connection and an HTTP/2 gRPC channel on it.
    async fn connect(&self) -> Result<Transport, Retry> {
        if self.opts.protocol == Protocol::Https {
            // reqwest opens (and pools) the TLS connections itself.
            let config = self.tls_config().map_err(Retry::Fatal)?;
            return Ok(Transport::Https(crate::https::HttpsTransport::new(
                &self.opts.endpoint,
                &self.host,
                self.port,
                config,
                self.opts.call_timeout,
            )?));
        }
        let endpoint_str = self.opts.endpoint.clone();
        let reach = |reason: String| {
            Retry::After(
                DeviceError::CannotReach {
                    endpoint: endpoint_str.clone(),
                    reason,
                },
                Duration::ZERO,
            )
        };
        let timeout = self.opts.call_timeout;
        let tcp =
            tokio::time::timeout(timeout, TcpStream::connect((self.host.as_str(), self.port)))
                .await
                .map_err(|_| reach(format!("connect timed out after {timeout:?}")))?
                .map_err(|e| reach(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let config = self.tls_config().map_err(Retry::Fatal)?;
        let server_name = ServerName::try_from(self.host.clone()).map_err(|_| {
            Retry::Fatal(DeviceError::Config(format!(
                "invalid server name {:?}",
                self.host
            )))
        })?;
        let tls = tokio::time::timeout(
            timeout,
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp),
        )
        .await
        .map_err(|_| reach(format!("TLS handshake timed out after {timeout:?}")))?
        .map_err(|e| classify_tls_error(&endpoint_str, e))?;

        let mut slot = Some(hyper_util::rt::TokioIo::new(tls));
        let connector = tower::service_fn(move |_: http::Uri| {
            let io = slot.take();
            async move {
                io.ok_or_else(|| std::io::Error::other("the registration connection was closed"))
            }
        });
        // The URI is only used for the :authority of requests; the connection is already open.
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://{}:{}",
            bracket_host(&self.host),
            self.port
        ))
        .map_err(|e| Retry::Fatal(DeviceError::Config(format!("invalid endpoint: {e}"))))?
        .timeout(timeout)
        .connect_with_connector(connector)
        .await
        .map_err(|e| reach(format!("HTTP/2 setup failed: {e}")))?;
        Ok(Transport::Grpc(
            pb::registration_service_client::RegistrationServiceClient::new(channel)
                .max_decoding_message_size(1 << 20),
        ))
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, DeviceError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| DeviceError::Config(format!("TLS setup: {e}")))?
            .with_root_certificates(self.tls_roots.clone());
        let mut config = match &self.opts.credential {
            Credential::X509(id) => builder
                .with_client_auth_cert(id.chain().to_vec(), id.key().clone_key())
                .map_err(|e| {
                    DeviceError::Config(format!("the X.509 identity is not usable: {e}"))
                })?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn attestation(&mut self, tpm_token: Option<String>) -> Result<pb::Attestation, DeviceError> {
        use pb::attestation::Mechanism;
        let mechanism = match &self.opts.credential {
            Credential::SymmetricKey(key) => Mechanism::SymmetricKey(pb::SymmetricKeyAttestation {
                sas_token: crate::sas::registration_token(
                    &self.opts.id_scope,
                    &self.opts.registration_id,
                    key,
                    SAS_TTL,
                    SystemTime::now(),
                ),
            }),
            Credential::X509(_) => Mechanism::X509(pb::X509Attestation {}),
            #[cfg(feature = "tpm")]
            Credential::Tpm(_) => {
                let tpm = self.tpm()?;
                Mechanism::Tpm(pb::TpmAttestation {
                    endorsement_key: tpm.endorsement_key()?,
                    storage_root_key: tpm.storage_root_key()?,
                    sas_token: tpm_token,
                })
            }
        };
        #[cfg(not(feature = "tpm"))]
        let _ = tpm_token;
        Ok(pb::Attestation {
            mechanism: Some(mechanism),
        })
    }

    #[cfg(feature = "tpm")]
    fn tpm(&mut self) -> Result<&mut crate::tpm::Tpm, DeviceError> {
        let Credential::Tpm(tcti) = &self.opts.credential else {
            return Err(DeviceError::Config("not a TPM device".into()));
        };
        if self.tpm.is_none() {
            self.tpm = Some(crate::tpm::Tpm::open(tcti)?);
        }
        self.tpm
            .as_mut()
            .ok_or_else(|| DeviceError::Config("TPM not open".into()))
    }

    #[cfg(feature = "tpm")]
    fn answer_challenge(&mut self, blob: &[u8]) -> Result<String, DeviceError> {
        let id_scope = self.opts.id_scope.clone();
        let registration_id = self.opts.registration_id.clone();
        let tpm = self.tpm()?;
        tpm.import_activation(blob)?;
        Ok(tpm.registration_token(&id_scope, &registration_id, SAS_TTL, SystemTime::now())?)
    }

    async fn call_register(
        &mut self,
        rpc: &mut Transport,
        tpm_token: Option<String>,
    ) -> Result<Step, Retry> {
        let attestation = self.attestation(tpm_token).map_err(Retry::Fatal)?;
        let rpc = match rpc {
            Transport::Grpc(rpc) => rpc,
            Transport::Https(https) => {
                return https
                    .register(
                        &self.opts.id_scope,
                        &self.opts.registration_id,
                        &attestation,
                        self.opts.payload.as_ref(),
                    )
                    .await;
            }
        };
        let request = pb::RegisterRequest {
            id_scope: self.opts.id_scope.clone(),
            registration_id: self.opts.registration_id.clone(),
            attestation: Some(attestation),
            payload: self
                .opts
                .payload
                .clone()
                .map(kdps_proto::grpc_convert::json_to_value),
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.opts.call_timeout);
        let response = rpc
            .register(request)
            .await
            .map_err(|s| classify_status(&self.opts.endpoint, s))?
            .into_inner();
        use pb::register_response::Result as R;
        match response.result {
            Some(R::Assignment(state)) => Ok(Step::Done(Box::new(state))),
            Some(R::Pending(p)) => Ok(pending(p)),
            Some(R::TpmChallenge(c)) => Ok(Step::Challenge(c.authentication_key)),
            None => Err(Retry::Fatal(DeviceError::Protocol(
                "empty Register response".into(),
            ))),
        }
    }

    async fn call_poll(&mut self, rpc: &mut Transport, operation_id: &str) -> Result<Step, Retry> {
        let attestation = self.attestation(None).map_err(Retry::Fatal)?;
        let rpc = match rpc {
            Transport::Grpc(rpc) => rpc,
            Transport::Https(https) => {
                return https
                    .poll(
                        &self.opts.id_scope,
                        &self.opts.registration_id,
                        operation_id,
                        &attestation,
                    )
                    .await;
            }
        };
        let mut request = tonic::Request::new(pb::GetOperationStatusRequest {
            id_scope: self.opts.id_scope.clone(),
            registration_id: self.opts.registration_id.clone(),
            operation_id: operation_id.to_owned(),
            attestation: Some(attestation),
        });
        request.set_timeout(self.opts.call_timeout);
        let response = rpc
            .get_operation_status(request)
            .await
            .map_err(|s| classify_status(&self.opts.endpoint, s))?
            .into_inner();
        use pb::get_operation_status_response::Result as R;
        match response.result {
            Some(R::Assignment(state)) => Ok(Step::Done(Box::new(state))),
            Some(R::Pending(p)) => Ok(pending(p)),
            None => Err(Retry::Fatal(DeviceError::Protocol(
                "empty GetOperationStatus response".into(),
            ))),
        }
    }
}

/// The connection a registration runs over.
enum Transport {
    Grpc(pb::registration_service_client::RegistrationServiceClient<tonic::transport::Channel>),
    Https(crate::https::HttpsTransport),
}

/// Whether an error is worth another attempt, and how long to wait at least.
pub(crate) enum Retry {
    Fatal(DeviceError),
    After(DeviceError, Duration),
}

impl From<DeviceError> for Retry {
    fn from(e: DeviceError) -> Self {
        Self::Fatal(e)
    }
}

fn pending(p: pb::OperationPending) -> Step {
    let retry_after = p
        .retry_after
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::from_secs(1));
    Step::Pending {
        operation_id: p.operation_id,
        retry_after,
    }
}

/// Turns a terminal registration state into a result or the matching error.
fn finish(state: pb::RegistrationState) -> Result<RegistrationResult, DeviceError> {
    use pb::RegistrationStatus as S;
    match S::try_from(state.status).unwrap_or(S::Unspecified) {
        S::Assigned => {
            if state.assigned_hub.is_empty() || state.device_id.is_empty() {
                return Err(DeviceError::Protocol(
                    "assigned without a hub or device id".into(),
                ));
            }
            Ok(RegistrationResult {
                registration_id: state.registration_id,
                status: "assigned".into(),
                assigned_hub: state.assigned_hub,
                device_id: state.device_id,
                substatus: substatus_name(state.substatus).into(),
                etag: state.etag,
                created_date_time_utc: state.created_time.map(timestamp),
                last_updated_date_time_utc: state.last_updated_time.map(timestamp),
                payload: state
                    .payload
                    .and_then(|v| kdps_proto::grpc_convert::value_to_json(v).ok()),
                enrollment_group_id: Some(state.enrollment_group_id).filter(|s| !s.is_empty()),
                tpm_authentication_key: Some(state.tpm_authentication_key)
                    .filter(|k| !k.is_empty()),
            })
        }
        S::Disabled => Err(DeviceError::Disabled(state.error_message)),
        S::Failed => {
            let code = state.error_code;
            let message = state.error_message;
            // 400207: custom allocation failed; 400208: no hub could be assigned.
            if code == 400_207 || code == 400_208 {
                Err(DeviceError::NoHub { code, message })
            } else if code / 1000 == 401 {
                Err(DeviceError::Unauthorized(message))
            } else {
                Err(DeviceError::Failed { code, message })
            }
        }
        other => Err(DeviceError::Protocol(format!(
            "terminal response with status {other:?}"
        ))),
    }
}

/// The DPS name of a substatus.
pub fn substatus_name(value: i32) -> &'static str {
    use pb::RegistrationSubstatus as S;
    match S::try_from(value).unwrap_or(S::Unspecified) {
        S::InitialAssignment => "initialAssignment",
        S::DeviceDataMigrated => "deviceDataMigrated",
        S::DeviceDataReset => "deviceDataReset",
        S::ReprovisionedToInitialAssignment => "reprovisionedToInitialAssignment",
        S::Unspecified => "",
    }
}

fn timestamp(ts: prost_types::Timestamp) -> String {
    jiff::Timestamp::new(ts.seconds, ts.nanos)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Maps a gRPC status to what the device can act on.
fn classify_status(endpoint: &str, status: tonic::Status) -> Retry {
    use tonic::Code;
    let message = status.message().to_owned();
    let retry_after = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            Retry::Fatal(DeviceError::Unauthorized(message))
        }
        Code::InvalidArgument | Code::OutOfRange => {
            Retry::Fatal(DeviceError::InvalidRequest(message))
        }
        Code::ResourceExhausted => {
            let retry_after = retry_after.unwrap_or(Duration::from_secs(2));
            Retry::After(
                DeviceError::Throttled {
                    retry_after,
                    attempts: 0,
                },
                retry_after,
            )
        }
        Code::Unavailable => {
            // Connection-level failures surface here too; a TLS trust failure is not transient.
            if let Some(e) = find_rustls_error(&status) {
                return Retry::Fatal(DeviceError::ServerNotTrusted(e));
            }
            Retry::After(
                DeviceError::CannotReach {
                    endpoint: endpoint.to_owned(),
                    reason: message,
                },
                retry_after.unwrap_or_default(),
            )
        }
        Code::Aborted | Code::DeadlineExceeded | Code::Internal | Code::Unknown => Retry::After(
            DeviceError::Failed {
                code: 500_000,
                message: format!("{:?}: {message}", status.code()),
            },
            retry_after.unwrap_or_default(),
        ),
        Code::NotFound => Retry::Fatal(DeviceError::Failed {
            code: 404_000,
            message,
        }),
        _ => Retry::Fatal(DeviceError::Protocol(format!(
            "{:?}: {message}",
            status.code()
        ))),
    }
}

pub(crate) fn find_rustls_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        cur = e.source();
    }
    None
}

fn classify_tls_error(endpoint: &str, e: std::io::Error) -> Retry {
    if let Some(r) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return match r {
            rustls::Error::InvalidCertificate(c) => Retry::Fatal(DeviceError::ServerNotTrusted(
                format!("invalid server certificate: {c:?}"),
            )),
            rustls::Error::AlertReceived(a) => Retry::Fatal(DeviceError::Unauthorized(format!(
                "the server rejected the TLS handshake ({a:?})"
            ))),
            other => Retry::Fatal(DeviceError::ServerNotTrusted(other.to_string())),
        };
    }
    Retry::After(
        DeviceError::CannotReach {
            endpoint: endpoint.to_owned(),
            reason: format!("TLS handshake failed: {e}"),
        },
        Duration::ZERO,
    )
}

/// Splits `https://host:port` (port default 443). IPv6 hosts are bracketed.
pub fn parse_endpoint(endpoint: &str) -> Result<(String, u16), DeviceError> {
    let bad = |why: &str| DeviceError::Config(format!("invalid --endpoint {endpoint:?}: {why}"));
    let rest = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| bad("must start with https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
            None if after.is_empty() => 443,
            None => return Err(bad("garbage after the IPv6 address")),
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("invalid port"))?),
            None => (authority.to_owned(), 443),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host, port))
}

fn bracket_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Loads trust roots: the PEM file given, else the system's roots.
fn load_roots(ca_cert: Option<&std::path::Path>) -> Result<rustls::RootCertStore, DeviceError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let certs: Vec<_> = CertificateDer::pem_file_iter(path)
                .map_err(|e| {
                    DeviceError::Config(format!("cannot read --ca-cert {}: {e}", path.display()))
                })?
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    DeviceError::Config(format!("invalid PEM in {}: {e}", path.display()))
                })?;
            if certs.is_empty() {
                return Err(DeviceError::Config(format!(
                    "no certificate in --ca-cert {}",
                    path.display()
                )));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    DeviceError::Config(format!(
                        "unusable CA certificate in {}: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(DeviceError::Config(
                    "no system CA certificates found; pass the service CA with --ca-cert".into(),
                ));
            }
        }
    }
    Ok(roots)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("https://localhost:8443").unwrap(),
            ("localhost".into(), 8443)
        );
        assert_eq!(
            parse_endpoint("https://dps.example.com").unwrap(),
            ("dps.example.com".into(), 443)
        );
        assert_eq!(
            parse_endpoint("https://[::1]:9000/").unwrap(),
            ("::1".into(), 9000)
        );
        for bad in [
            "http://x:1",
            "https://",
            "https://h:port",
            "https://[::1",
            "x",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let p = RetryPolicy::default();
        for attempt in 1..10 {
            let d = p.backoff(attempt, Duration::from_secs(3));
            assert!(d >= Duration::from_secs(3));
            assert!(d <= p.max_backoff.max(Duration::from_secs(3)));
        }
        assert!(p.backoff(1, Duration::ZERO) <= p.initial_backoff);
    }

    #[test]
    fn failed_states_map_to_specific_errors() {
        let state = |status: pb::RegistrationStatus, code: i32| pb::RegistrationState {
            registration_id: "d".into(),
            status: status as i32,
            error_code: code,
            error_message: "m".into(),
            ..Default::default()
        };
        assert_eq!(
            finish(state(pb::RegistrationStatus::Disabled, 0))
                .unwrap_err()
                .kind(),
            "disabled"
        );
        assert_eq!(
            finish(state(pb::RegistrationStatus::Failed, 400_207))
                .unwrap_err()
                .kind(),
            "no_hub"
        );
        assert_eq!(
            finish(state(pb::RegistrationStatus::Failed, 401_002))
                .unwrap_err()
                .kind(),
            "unauthorized"
        );
        assert_eq!(
            finish(state(pb::RegistrationStatus::Assigned, 0))
                .unwrap_err()
                .kind(),
            "protocol"
        );
    }
}
