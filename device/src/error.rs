//! What can go wrong when a device registers, in terms a device operator can act on.

use std::time::Duration;

/// A registration error. The variants are the classes a device (and its operator) can act on;
/// the message says what exactly happened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The service refused the device's credentials (wrong key, certificate or TPM).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The device's enrollment is disabled: the device is not provisioned.
    #[error("disabled: the enrollment of this device is disabled{}", suffix(.0))]
    Disabled(String),
    /// The service could not assign a hub (no eligible hub, custom allocation failed, ...).
    #[error("no hub assigned: {message} (error code {code})")]
    NoHub {
        /// DPS error code.
        code: i32,
        /// The service's explanation.
        message: String,
    },
    /// The registration failed for another reason.
    #[error("registration failed: {message} (error code {code})")]
    Failed {
        /// DPS error code.
        code: i32,
        /// The service's explanation.
        message: String,
    },
    /// The service kept throttling us until we gave up.
    #[error(
        "throttled: the service asked to retry after {retry_after:?}; gave up after {attempts} attempts"
    )]
    Throttled {
        /// The last retry-after the service sent.
        retry_after: Duration,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The server's TLS certificate is not trusted (wrong CA, wrong host name, expired).
    #[error("server not trusted: {0} (pass the service CA with --ca-cert)")]
    ServerNotTrusted(String),
    /// The service could not be reached (DNS, connection refused, timeout).
    #[error("cannot reach the service at {endpoint}: {reason}")]
    CannotReach {
        /// The endpoint we dialed.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The request was rejected as malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The arguments given to the client are not usable.
    #[error("{0}")]
    Config(String),
    /// Loading the X.509 identity failed.
    #[error(transparent)]
    Identity(#[from] crate::x509::IdentityError),
    /// A TPM operation failed.
    #[cfg(feature = "tpm")]
    #[error(transparent)]
    Tpm(#[from] crate::tpm::TpmError),
    /// The service answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

fn suffix(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl DeviceError {
    /// A short, stable name of the error class (`unauthorized`, `disabled`, ...), used in the
    /// CLI's exit status mapping and by the load generator's error counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Disabled(_) => "disabled",
            Self::NoHub { .. } => "no_hub",
            Self::Failed { .. } => "failed",
            Self::Throttled { .. } => "throttled",
            Self::ServerNotTrusted(_) => "server_not_trusted",
            Self::CannotReach { .. } => "cannot_reach",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Config(_) => "config",
            Self::Identity(_) => "identity",
            #[cfg(feature = "tpm")]
            Self::Tpm(_) => "tpm",
            Self::Protocol(_) => "protocol",
        }
    }

    /// Whether trying again later may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::CannotReach { .. })
    }
}
