//! Device attestation: symmetric-key SAS tokens, X.509 client certificates and the TPM
//! endorsement-key challenge.
//!
//! Each mechanism is a set of pure functions over bytes the caller already has (the token, the
//! TLS client chain, the enrollment's keys or certificates, the current time), so the engine
//! decides *which* enrollment to check and these modules decide *whether* the device proved it.
//! Every refusal is a specific [`AttestationError`] variant; none of them carries key material or
//! a whole token.

pub mod symmetric;
pub mod tpm;
pub mod x509;

use std::fmt;

use kdps_proto::sas::SasError;

/// Which of an enrollment's two credentials (keys, certificates) the device proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchedCredential {
    /// The primary key or certificate.
    Primary,
    /// The secondary key or certificate.
    Secondary,
}

impl fmt::Display for MatchedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MatchedCredential::Primary => "primary",
            MatchedCredential::Secondary => "secondary",
        })
    }
}

/// A certificate's place in the chain being validated, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertPosition {
    /// The device (end-entity) certificate, first in the presented chain.
    Leaf,
    /// Position `n` (1 = first certificate after the leaf) in the chain the device presented.
    Presented(usize),
    /// The signing certificate stored in the enrollment group.
    EnrolledSigningCertificate,
}

impl fmt::Display for CertPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertPosition::Leaf => f.write_str("device certificate"),
            CertPosition::Presented(n) => write!(f, "chain certificate {n}"),
            CertPosition::EnrolledSigningCertificate => f.write_str("enrolled signing certificate"),
        }
    }
}

/// Why a device failed attestation.
///
/// DPS error codes ([`AttestationError::dps_error_code`]) follow the service's convention that
/// the first three digits are the HTTP status:
///
/// | code | gRPC | variants |
/// |---|---|---|
/// | 400004 | `InvalidArgument` | [`MalformedToken`](Self::MalformedToken) — the `Authorization` value is not a SAS token at all |
/// | 401002 | `Unauthenticated` | every other token or certificate refusal (missing credential, wrong resource, expired, key name, signature, each chain check); the real service answers X.509 failures with `401002 "Invalid certificate."` |
/// | 500000 | `Internal` | the enrollment itself is unusable ([`InvalidEnrollmentKey`](Self::InvalidEnrollmentKey), [`InvalidEnrollmentCertificate`](Self::InvalidEnrollmentCertificate)) — nothing the device can fix |
///
/// TPM failures ([`AttestationError::Tpm`]) carry their own mapping
/// ([`tpm::TpmAttestationError::dps_error_code`]).
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    // ---- symmetric key ----
    /// The request carried no SAS token.
    #[error("no SAS token was presented")]
    MissingToken,
    /// The value is not a well-formed SAS token.
    #[error("malformed SAS token: {0}")]
    MalformedToken(#[from] SasError),
    /// The token's decoded `sr` is not `{idScope}/registrations/{registrationId}` for this request.
    #[error("SAS token resource does not name this ID scope and registration ID")]
    WrongResource,
    /// The token has an `skn` other than `registration`.
    #[error("SAS token key name is not accepted (only \"registration\" or none)")]
    KeyNameNotAccepted,
    /// `se` lies in the past, beyond the allowed clock skew.
    #[error("SAS token expired at {expiry} (now {now}, allowed clock skew {skew_secs} s)")]
    TokenExpired {
        /// The token's `se`.
        expiry: u64,
        /// The time the check ran at.
        now: u64,
        /// The allowed clock skew, in seconds.
        skew_secs: u64,
    },
    /// The signature matches none of the enrollment's (or derived) keys.
    #[error("SAS token signature does not match the enrollment's keys")]
    SignatureMismatch,
    /// The enrollment has no key of a usable length (16–64 bytes).
    #[error("enrollment has no usable symmetric key (16 to 64 bytes)")]
    InvalidEnrollmentKey,

    // ---- X.509 ----
    /// The TLS connection carried no client certificate.
    #[error("no client certificate was presented")]
    MissingCertificate,
    /// More certificates than we are willing to walk.
    #[error("client certificate chain has {0} certificates, more than the {max} allowed", max = x509::MAX_CHAIN_LEN)]
    ChainTooLong(usize),
    /// A presented certificate is not valid DER X.509.
    #[error("{position} is not a valid X.509 certificate")]
    UnparsableCertificate {
        /// Which certificate.
        position: CertPosition,
    },
    /// An enrollment's certificate (PEM or thumbprint) cannot be used.
    #[error("enrollment certificate is unusable: {reason}")]
    InvalidEnrollmentCertificate {
        /// What is wrong with it.
        reason: String,
    },
    /// Individual enrollment: the device certificate is neither the primary nor the secondary one.
    #[error("device certificate is not the enrolled certificate")]
    CertificateNotEnrolled,
    /// Group enrollment: no certificate in the chain was issued by the enrolled signing certificate.
    #[error("certificate chain does not lead to the enrollment group's signing certificate")]
    UnknownIssuer,
    /// A certificate's `notAfter` is in the past.
    #[error("{position} expired (not after {not_after})")]
    CertificateExpired {
        /// Which certificate.
        position: CertPosition,
        /// Its `notAfter`, RFC 3339.
        not_after: String,
    },
    /// A certificate's `notBefore` is in the future.
    #[error("{position} is not valid yet (not before {not_before})")]
    CertificateNotYetValid {
        /// Which certificate.
        position: CertPosition,
        /// Its `notBefore`, RFC 3339.
        not_before: String,
    },
    /// The device certificate's subject has no common name.
    #[error("device certificate subject has no common name")]
    MissingCommonName,
    /// The device certificate's CN is not the registration ID.
    #[error(
        "device certificate common name {common_name:?} does not match registration ID {registration_id:?}"
    )]
    CommonNameMismatch {
        /// The CN found (shortened to 64 characters).
        common_name: String,
        /// The registration ID of the request.
        registration_id: String,
    },
    /// A certificate's issuer name differs from the subject of the next certificate up.
    #[error("{position}'s issuer name does not match the subject of its issuer")]
    IssuerMismatch {
        /// Which certificate.
        position: CertPosition,
    },
    /// A certificate's signature does not verify with its issuer's public key.
    #[error("{position}'s signature does not verify with its issuer's key")]
    BadSignature {
        /// Which certificate.
        position: CertPosition,
    },
    /// A signature uses an algorithm or key size we do not verify (e.g. RSA below 2048 bits).
    #[error("{position}'s signature algorithm or key size is not supported")]
    UnsupportedSignatureAlgorithm {
        /// Which certificate.
        position: CertPosition,
    },
    /// An issuing certificate lacks `basicConstraints` with `cA = TRUE`.
    #[error("{position} issues certificates but is not a CA (basicConstraints)")]
    NotACa {
        /// Which certificate.
        position: CertPosition,
    },
    /// An issuing certificate has a key usage extension without `keyCertSign`.
    #[error("{position} issues certificates but its key usage does not include keyCertSign")]
    KeyCertSignNotAllowed {
        /// Which certificate.
        position: CertPosition,
    },
    /// An issuing certificate's `pathLenConstraint` is exceeded.
    #[error("{position}'s path length constraint is exceeded")]
    PathLenExceeded {
        /// Which certificate.
        position: CertPosition,
    },
    /// A certificate has an extended key usage extension without clientAuth.
    #[error("{position}'s extended key usage does not allow client authentication")]
    ClientAuthNotAllowed {
        /// Which certificate.
        position: CertPosition,
    },
    /// Group enrollment: the device certificate is itself a CA certificate.
    #[error("device certificate is a CA certificate, not an end-entity certificate")]
    CaUsedAsLeaf,
    /// A certificate carries a critical extension we do not understand.
    #[error("{position} has an unsupported critical extension")]
    UnsupportedCriticalExtension {
        /// Which certificate.
        position: CertPosition,
    },
    /// All individual checks passed but the final path validation (rustls-webpki) refused the chain.
    #[error("certificate chain rejected by path validation: {0}")]
    ChainRejected(String),

    // ---- TPM ----
    /// TPM attestation failed; see [`tpm::TpmAttestationError`] for its own code mapping.
    #[error(transparent)]
    Tpm(#[from] tpm::TpmAttestationError),
}

impl AttestationError {
    /// The 6-digit DPS `errorCode` for this failure (see the table on [`AttestationError`]).
    pub fn dps_error_code(&self) -> u32 {
        use AttestationError as E;
        match self {
            E::Tpm(e) => e.dps_error_code(),
            E::MalformedToken(_) => 400004,
            E::InvalidEnrollmentKey | E::InvalidEnrollmentCertificate { .. } => 500000,
            E::MissingToken
            | E::WrongResource
            | E::KeyNameNotAccepted
            | E::TokenExpired { .. }
            | E::SignatureMismatch
            | E::MissingCertificate
            | E::ChainTooLong(_)
            | E::UnparsableCertificate { .. }
            | E::CertificateNotEnrolled
            | E::UnknownIssuer
            | E::CertificateExpired { .. }
            | E::CertificateNotYetValid { .. }
            | E::MissingCommonName
            | E::CommonNameMismatch { .. }
            | E::IssuerMismatch { .. }
            | E::BadSignature { .. }
            | E::UnsupportedSignatureAlgorithm { .. }
            | E::NotACa { .. }
            | E::KeyCertSignNotAllowed { .. }
            | E::PathLenExceeded { .. }
            | E::ClientAuthNotAllowed { .. }
            | E::CaUsedAsLeaf
            | E::UnsupportedCriticalExtension { .. }
            | E::ChainRejected(_) => 401002,
        }
    }

    /// The HTTP status of the DPS answer (the first three digits of [`Self::dps_error_code`]).
    pub fn http_status(&self) -> u16 {
        // Codes are 6 digits by construction, so the quotient is a 3-digit status.
        u16::try_from(self.dps_error_code() / 1000).unwrap_or(500)
    }

    /// The gRPC status code for this failure.
    pub fn grpc_code(&self) -> tonic::Code {
        match self.http_status() {
            400 => tonic::Code::InvalidArgument,
            401 => tonic::Code::Unauthenticated,
            _ => tonic::Code::Internal,
        }
    }

    /// A short, stable label for metrics and events (one per variant).
    pub fn reason(&self) -> &'static str {
        use AttestationError as E;
        match self {
            E::Tpm(e) => e.reason(),
            E::MissingToken => "missing_token",
            E::MalformedToken(_) => "malformed_token",
            E::WrongResource => "wrong_resource",
            E::KeyNameNotAccepted => "key_name_not_accepted",
            E::TokenExpired { .. } => "token_expired",
            E::SignatureMismatch => "signature_mismatch",
            E::InvalidEnrollmentKey => "invalid_enrollment_key",
            E::MissingCertificate => "missing_certificate",
            E::ChainTooLong(_) => "chain_too_long",
            E::UnparsableCertificate { .. } => "unparsable_certificate",
            E::InvalidEnrollmentCertificate { .. } => "invalid_enrollment_certificate",
            E::CertificateNotEnrolled => "certificate_not_enrolled",
            E::UnknownIssuer => "unknown_issuer",
            E::CertificateExpired { .. } => "certificate_expired",
            E::CertificateNotYetValid { .. } => "certificate_not_yet_valid",
            E::MissingCommonName => "missing_common_name",
            E::CommonNameMismatch { .. } => "common_name_mismatch",
            E::IssuerMismatch { .. } => "issuer_mismatch",
            E::BadSignature { .. } => "bad_signature",
            E::UnsupportedSignatureAlgorithm { .. } => "unsupported_signature_algorithm",
            E::NotACa { .. } => "not_a_ca",
            E::KeyCertSignNotAllowed { .. } => "key_cert_sign_not_allowed",
            E::PathLenExceeded { .. } => "path_len_exceeded",
            E::ClientAuthNotAllowed { .. } => "client_auth_not_allowed",
            E::CaUsedAsLeaf => "ca_used_as_leaf",
            E::UnsupportedCriticalExtension { .. } => "unsupported_critical_extension",
            E::ChainRejected(_) => "chain_rejected",
        }
    }
}

impl From<AttestationError> for tonic::Status {
    fn from(err: AttestationError) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_consistent() {
        let cases = [
            (
                AttestationError::MissingToken,
                401002,
                tonic::Code::Unauthenticated,
            ),
            (
                AttestationError::MalformedToken(SasError::MissingPrefix),
                400004,
                tonic::Code::InvalidArgument,
            ),
            (
                AttestationError::InvalidEnrollmentKey,
                500000,
                tonic::Code::Internal,
            ),
            (
                AttestationError::BadSignature {
                    position: CertPosition::Leaf,
                },
                401002,
                tonic::Code::Unauthenticated,
            ),
        ];
        for (err, code, grpc) in cases {
            assert_eq!(err.dps_error_code(), code, "{err}");
            assert_eq!(err.http_status() as u32, code / 1000);
            assert_eq!(err.grpc_code(), grpc, "{err}");
            assert_eq!(tonic::Status::from(err).code(), grpc);
        }
    }

    #[test]
    fn tpm_errors_keep_their_mapping() {
        let inner = tpm::TpmAttestationError::EndorsementKeyMismatch;
        let (code, reason, message) = (inner.dps_error_code(), inner.reason(), inner.to_string());
        let err = AttestationError::from(inner);
        assert_eq!(err.dps_error_code(), code);
        assert_eq!(err.reason(), reason);
        assert_eq!(err.to_string(), message);
        let bad = AttestationError::from(tpm::TpmAttestationError::MissingEndorsementKey);
        assert_eq!(bad.grpc_code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn positions_read_well() {
        let err = AttestationError::NotACa {
            position: CertPosition::Presented(2),
        };
        assert_eq!(
            err.to_string(),
            "chain certificate 2 issues certificates but is not a CA (basicConstraints)"
        );
        assert_eq!(
            AttestationError::CertificateExpired {
                position: CertPosition::EnrolledSigningCertificate,
                not_after: "2020-01-01T00:00:00Z".into()
            }
            .to_string(),
            "enrolled signing certificate expired (not after 2020-01-01T00:00:00Z)"
        );
    }
}
