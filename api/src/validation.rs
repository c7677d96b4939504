//! Validation beyond CEL, as pure functions shared by the operator and the registration service.
//!
//! - Single checks ([`check_registration_id`], [`check_certificate`], [`check_endorsement_key`],
//!   [`decode_symmetric_key`], ...) return an [`Invalid`]: a CamelCase [`Reason`] (used as a
//!   condition reason) and a human-readable message.
//! - Whole-object validators ([`validate_individual_enrollment`], [`validate_enrollment_group`],
//!   [`validate_iot_hub_link`], [`validate_provisioning_service`]) run every rule the CRD
//!   schema and its CEL rules enforce in a cluster, plus the checks above, and return every
//!   [`Problem`] found with its field path. Standalone mode, which has no apiserver, relies on
//!   them; the operator uses them for `Ready` conditions.
//! - Cross-object checks ([`validate_enrollment_references`], [`validate_link_references`],
//!   [`validate_symmetric_key_secret`]) need the other objects and are run by the callers that
//!   have them.
//!
//! No message ever contains key material: key values are only described by their length.

use std::{collections::BTreeSet, fmt, time::SystemTime};

use k8s_openapi::{
    api::core::v1::Secret,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceDefinition, JSONSchemaProps,
    },
    jiff::Timestamp,
};
use kube::ResourceExt;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_parser::{certificate::X509Certificate as ParsedCertificate, pem::Pem};

use crate::{
    names::{canonical_registration_id, is_dns1123_label},
    v1alpha1::{
        AllocationPolicy, CustomAllocation, EnrollmentGroup, EnrollmentSettings,
        IndividualEnrollment, IoTHubLink, MAX_ALLOCATION_WEIGHT, MAX_ID_LEN, MAX_IOT_HUBS,
        MAX_PEM_LEN, MIN_ALLOCATION_WEIGHT, ProvisioningService, ProvisioningServiceSpec,
        SecretKeyRef, X509Certificates,
    },
};

/// Why an object is invalid. [`Reason::as_str`] is the CamelCase condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A PEM field does not hold exactly one parseable X.509 certificate.
    InvalidCertificate,
    /// A certificate's notAfter is in the past.
    CertificateExpired,
    /// A certificate's notBefore is in the future.
    CertificateNotYetValid,
    /// A signing certificate is not a CA (basicConstraints CA=false or no keyCertSign).
    NotACertificateAuthority,
    /// An individual X.509 certificate's subject CN differs from the registration ID.
    RegistrationIdMismatch,
    /// The endorsement key is not base64 of a well-formed TPM2B_PUBLIC restricted decryption
    /// key.
    InvalidEndorsementKey,
    /// The endorsement key is well-formed but not RSA 2048.
    UnsupportedEndorsementKey,
    /// The storage root key is not base64 of a well-formed TPM2B_PUBLIC.
    InvalidStorageRootKey,
    /// A symmetric key is not base64 or not 16-64 bytes decoded.
    InvalidKey,
    /// A referenced Secret does not exist.
    SecretNotFound,
    /// A referenced Secret lacks the key.
    KeyNotFound,
    /// A registration ID breaks the DPS syntax rules.
    InvalidRegistrationId,
    /// A device ID breaks the syntax rules.
    InvalidDeviceId,
    /// Not exactly one attestation mechanism.
    InvalidAttestation,
    /// An allocation policy's requirements are not met (static: one hub; custom: a webhook).
    InvalidAllocationPolicy,
    /// A custom-allocation webhook definition is invalid.
    InvalidCustomAllocation,
    /// The `iotHubs` list is invalid (too long, duplicates, bad names).
    InvalidIoTHubs,
    /// `iotHubs` names a link that does not exist.
    UnknownIoTHub,
    /// An IoTHubLink `hostName` is not a DNS host name.
    InvalidHostName,
    /// A namespace name is invalid.
    InvalidNamespace,
    /// An allocation weight is outside 1-1000.
    InvalidAllocationWeight,
    /// A region (name or CIDR) is invalid.
    InvalidRegion,
    /// An IoTHubLink names a region the ProvisioningService does not define.
    UnknownRegion,
    /// An ID scope is invalid.
    InvalidIdScope,
    /// A replica count is out of range.
    InvalidReplicas,
    /// The endpoint (port, DNS names) is invalid.
    InvalidEndpoint,
    /// A rate limit is out of range.
    InvalidRateLimit,
    /// A Secret reference is invalid.
    InvalidSecretRef,
    /// Any other field value is invalid (length limits, missing name).
    InvalidField,
    /// The object has a field the schema does not define.
    UnknownField,
}

impl Reason {
    /// The CamelCase reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidCertificate => "InvalidCertificate",
            Self::CertificateExpired => "CertificateExpired",
            Self::CertificateNotYetValid => "CertificateNotYetValid",
            Self::NotACertificateAuthority => "NotACertificateAuthority",
            Self::RegistrationIdMismatch => "RegistrationIdMismatch",
            Self::InvalidEndorsementKey => "InvalidEndorsementKey",
            Self::UnsupportedEndorsementKey => "UnsupportedEndorsementKey",
            Self::InvalidStorageRootKey => "InvalidStorageRootKey",
            Self::InvalidKey => "InvalidKey",
            Self::SecretNotFound => "SecretNotFound",
            Self::KeyNotFound => "KeyNotFound",
            Self::InvalidRegistrationId => "InvalidRegistrationId",
            Self::InvalidDeviceId => "InvalidDeviceId",
            Self::InvalidAttestation => "InvalidAttestation",
            Self::InvalidAllocationPolicy => "InvalidAllocationPolicy",
            Self::InvalidCustomAllocation => "InvalidCustomAllocation",
            Self::InvalidIoTHubs => "InvalidIoTHubs",
            Self::UnknownIoTHub => "UnknownIoTHub",
            Self::InvalidHostName => "InvalidHostName",
            Self::InvalidNamespace => "InvalidNamespace",
            Self::InvalidAllocationWeight => "InvalidAllocationWeight",
            Self::InvalidRegion => "InvalidRegion",
            Self::UnknownRegion => "UnknownRegion",
            Self::InvalidIdScope => "InvalidIdScope",
            Self::InvalidReplicas => "InvalidReplicas",
            Self::InvalidEndpoint => "InvalidEndpoint",
            Self::InvalidRateLimit => "InvalidRateLimit",
            Self::InvalidSecretRef => "InvalidSecretRef",
            Self::InvalidField => "InvalidField",
            Self::UnknownField => "UnknownField",
        }
    }

    /// Every reason, for documentation and tests.
    pub const ALL: [Reason; 30] = [
        Self::InvalidCertificate,
        Self::CertificateExpired,
        Self::CertificateNotYetValid,
        Self::NotACertificateAuthority,
        Self::RegistrationIdMismatch,
        Self::InvalidEndorsementKey,
        Self::UnsupportedEndorsementKey,
        Self::InvalidStorageRootKey,
        Self::InvalidKey,
        Self::SecretNotFound,
        Self::KeyNotFound,
        Self::InvalidRegistrationId,
        Self::InvalidDeviceId,
        Self::InvalidAttestation,
        Self::InvalidAllocationPolicy,
        Self::InvalidCustomAllocation,
        Self::InvalidIoTHubs,
        Self::UnknownIoTHub,
        Self::InvalidHostName,
        Self::InvalidNamespace,
        Self::InvalidAllocationWeight,
        Self::InvalidRegion,
        Self::UnknownRegion,
        Self::InvalidIdScope,
        Self::InvalidReplicas,
        Self::InvalidEndpoint,
        Self::InvalidRateLimit,
        Self::InvalidSecretRef,
        Self::InvalidField,
        Self::UnknownField,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed single check: a reason and a message (which never contains key material).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// Condition reason.
    pub reason: Reason,
    /// Human-readable explanation.
    pub message: String,
}

impl Invalid {
    /// A new failure.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    /// The failure located at `field` (a dotted path such as `spec.attestation.tpm`).
    pub fn at(self, field: impl Into<String>) -> Problem {
        Problem {
            field: field.into(),
            reason: self.reason,
            message: self.message,
        }
    }
}

/// One problem of an object: where, why, and an explanation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Problem {
    /// Dotted field path, e.g. `spec.attestation.x509.clientCertificates.primary.certificate`.
    pub field: String,
    /// Condition reason.
    pub reason: Reason,
    /// Human-readable explanation.
    pub message: String,
}

/// Reason and message for a `Ready=False` condition from a list of problems: the first
/// problem's reason and every problem as `field: message`, joined with `; `.
pub fn summarize(problems: &[Problem]) -> (Reason, String) {
    let reason = problems.first().map_or(Reason::InvalidField, |p| p.reason);
    let message = problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    (reason, message)
}

fn into_result(problems: Vec<Problem>) -> Result<(), Vec<Problem>> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

// ---------------------------------------------------------------------------------------------
// IDs

fn check_id(id: &str, what: &str, reason: Reason) -> Result<(), Invalid> {
    if id.is_empty() {
        return Err(Invalid::new(reason, format!("{what} must not be empty")));
    }
    let len = id.chars().count();
    if len > MAX_ID_LEN {
        return Err(Invalid::new(
            reason,
            format!("{what} is {len} characters long; at most {MAX_ID_LEN} are allowed"),
        ));
    }
    if let Some((pos, c)) = id
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
    {
        return Err(Invalid::new(
            reason,
            format!(
                "{what} {id:?} contains {:?} at position {pos}; only letters, digits and '-', '.', '_', ':' are allowed",
                c
            ),
        ));
    }
    if !id
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(Invalid::new(
            reason,
            format!("{what} {id:?} must end with a letter, a digit or '-'"),
        ));
    }
    Ok(())
}

/// Check a registration ID against the DPS rules: 1-128 characters, letters, digits and
/// `- . _ :`, the last one a letter, digit or `-`. (Comparison is case-insensitive; see
/// [`canonical_registration_id`].) Reason: `InvalidRegistrationId`.
pub fn check_registration_id(registration_id: &str) -> Result<(), Invalid> {
    check_id(
        registration_id,
        "registration ID",
        Reason::InvalidRegistrationId,
    )
}

/// Check a device ID against the same rules as a registration ID (a subset of what IoT Hub
/// allows, so every kdps device ID is a valid IoT Hub device ID). Reason: `InvalidDeviceId`.
pub fn check_device_id(device_id: &str) -> Result<(), Invalid> {
    check_id(device_id, "device ID", Reason::InvalidDeviceId)
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// What a certificate is used for, which decides the checks beyond parsing and validity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateUse {
    /// A device's own certificate in an individual enrollment.
    Client,
    /// A group's signing certificate: must be a CA that may sign certificates.
    Signing,
    /// A trust anchor in a CA bundle (e.g. `customAllocation.caBundle`).
    TrustAnchor,
}

/// Facts about a valid certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Subject distinguished name (RFC 4514 style).
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// The subject common name, if any.
    pub common_name: Option<String>,
    /// notBefore, seconds since the Unix epoch.
    pub not_before: i64,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// basicConstraints CA=true.
    pub is_ca: bool,
    /// SHA-1 of the DER, upper-case hex (IoT Hub `x509Thumbprint`).
    pub sha1_thumbprint: String,
    /// SHA-256 of the DER, upper-case hex.
    pub sha256_thumbprint: String,
    /// The DER encoding.
    pub der: Vec<u8>,
}

impl fmt::Debug for CertificateInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateInfo")
            .field("subject", &self.subject)
            .field("issuer", &self.issuer)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("is_ca", &self.is_ca)
            .field("sha256_thumbprint", &self.sha256_thumbprint)
            .finish_non_exhaustive()
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn format_time(unix: i64) -> String {
    Timestamp::from_second(unix).map_or_else(|_| format!("{unix} (Unix time)"), |t| t.to_string())
}

/// Split a PEM text into its blocks, rejecting anything that is not a certificate.
fn pem_certificates(pem: &str, what: &str) -> Result<Vec<Pem>, Invalid> {
    let mut blocks = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| {
            Invalid::new(
                Reason::InvalidCertificate,
                format!("{what} is not valid PEM: {e}"),
            )
        })?;
        if block.label.contains("PRIVATE KEY") {
            return Err(Invalid::new(
                Reason::InvalidCertificate,
                format!(
                    "{what} contains a private key ({}); remove it: only the certificate belongs here, and the key must stay on the device",
                    block.label
                ),
            ));
        }
        if block.label != "CERTIFICATE" {
            return Err(Invalid::new(
                Reason::InvalidCertificate,
                format!(
                    "{what} contains a PEM block of type {:?}; expected CERTIFICATE",
                    block.label
                ),
            ));
        }
        blocks.push(block);
    }
    if blocks.is_empty() {
        return Err(Invalid::new(
            Reason::InvalidCertificate,
            format!("{what} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"),
        ));
    }
    Ok(blocks)
}

fn describe(cert: &ParsedCertificate<'_>) -> String {
    let subject = cert.subject().to_string();
    if subject.is_empty() {
        "certificate with an empty subject".to_owned()
    } else {
        format!("certificate {subject:?}")
    }
}

fn inspect(
    block: &Pem,
    usage: CertificateUse,
    now: i64,
    what: &str,
) -> Result<CertificateInfo, Invalid> {
    let cert = block.parse_x509().map_err(|e| {
        Invalid::new(
            Reason::InvalidCertificate,
            format!("{what} is not a valid X.509 certificate: {e}"),
        )
    })?;
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return Err(Invalid::new(
            Reason::CertificateNotYetValid,
            format!(
                "{what}: {} is not valid before {}",
                describe(&cert),
                format_time(not_before)
            ),
        ));
    }
    if now > not_after {
        return Err(Invalid::new(
            Reason::CertificateExpired,
            format!(
                "{what}: {} expired at {}",
                describe(&cert),
                format_time(not_after)
            ),
        ));
    }
    let basic_constraints = cert.basic_constraints().map_err(|e| {
        Invalid::new(
            Reason::InvalidCertificate,
            format!("{what}: invalid basicConstraints extension: {e}"),
        )
    })?;
    let is_ca = basic_constraints.is_some_and(|bc| bc.value.ca);
    if usage == CertificateUse::Signing {
        if !is_ca {
            return Err(Invalid::new(
                Reason::NotACertificateAuthority,
                format!(
                    "{what}: {} is not a CA (basicConstraints CA is not true); a signing certificate must be the root or an intermediate CA that issued the device certificates",
                    describe(&cert)
                ),
            ));
        }
        let key_usage = cert.key_usage().map_err(|e| {
            Invalid::new(
                Reason::InvalidCertificate,
                format!("{what}: invalid keyUsage extension: {e}"),
            )
        })?;
        if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(Invalid::new(
                Reason::NotACertificateAuthority,
                format!(
                    "{what}: {} may not sign certificates (keyUsage lacks keyCertSign)",
                    describe(&cert)
                ),
            ));
        }
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Ok(CertificateInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        common_name,
        not_before,
        not_after,
        is_ca,
        sha1_thumbprint: hex::encode_upper(Sha1::digest(&block.contents)),
        sha256_thumbprint: hex::encode_upper(Sha256::digest(&block.contents)),
        der: block.contents.clone(),
    })
}

/// Parse a PEM field that must hold exactly one certificate and check it for `usage` at `now`:
/// validity window always; for [`CertificateUse::Signing`] also that it is a CA allowed to
/// sign certificates. Reasons: `InvalidCertificate`, `CertificateExpired`,
/// `CertificateNotYetValid`, `NotACertificateAuthority`.
pub fn check_certificate(
    pem: &str,
    usage: CertificateUse,
    now: SystemTime,
) -> Result<CertificateInfo, Invalid> {
    let what = "certificate";
    if pem.len() > MAX_PEM_LEN {
        return Err(Invalid::new(
            Reason::InvalidCertificate,
            format!(
                "{what} is {} bytes; at most {MAX_PEM_LEN} are allowed",
                pem.len()
            ),
        ));
    }
    let blocks = pem_certificates(pem, what)?;
    let [block] = blocks.as_slice() else {
        return Err(Invalid::new(
            Reason::InvalidCertificate,
            format!(
                "{what} holds {} PEM certificates; exactly one is expected (put a second one in `secondary`)",
                blocks.len()
            ),
        ));
    };
    inspect(block, usage, unix_seconds(now), what)
}

/// Parse a PEM CA bundle (one or more certificates) and check each one's validity window.
/// Reasons as [`check_certificate`].
pub fn check_ca_bundle(pem: &str, now: SystemTime) -> Result<Vec<CertificateInfo>, Invalid> {
    if pem.len() > MAX_PEM_LEN {
        return Err(Invalid::new(
            Reason::InvalidCertificate,
            format!(
                "CA bundle is {} bytes; at most {MAX_PEM_LEN} are allowed",
                pem.len()
            ),
        ));
    }
    let now = unix_seconds(now);
    pem_certificates(pem, "CA bundle")?
        .iter()
        .enumerate()
        .map(|(i, block)| {
            inspect(
                block,
                CertificateUse::TrustAnchor,
                now,
                &format!("CA bundle certificate #{}", i + 1),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// TPM

fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text.trim_ascii())
}

fn tpm_public(b64: &str, what: &str, reason: Reason) -> Result<kdps_proto::tpm::Public, Invalid> {
    let bytes = decode_base64(b64).map_err(|_| {
        Invalid::new(
            reason,
            format!("{what} is not valid base64 (expected base64 of a TPM2B_PUBLIC)"),
        )
    })?;
    kdps_proto::tpm::Public::from_tpm2b(&bytes).map_err(|e| {
        Invalid::new(
            reason,
            format!(
                "{what} is not a valid TPM2B_PUBLIC ({} bytes): {e}",
                bytes.len()
            ),
        )
    })
}

/// Decode an endorsement key: base64 of a marshalled TPM2B_PUBLIC that is an RSA 2048
/// restricted decryption key. Reasons: `InvalidEndorsementKey`, `UnsupportedEndorsementKey`.
pub fn check_endorsement_key(b64: &str) -> Result<kdps_proto::tpm::Public, Invalid> {
    let public = tpm_public(b64, "endorsement key", Reason::InvalidEndorsementKey)?;
    match public.rsa_key_bits() {
        Some(2048) => {}
        Some(bits) => {
            return Err(Invalid::new(
                Reason::UnsupportedEndorsementKey,
                format!("endorsement key is RSA {bits}; kdps supports RSA 2048 endorsement keys"),
            ));
        }
        None => {
            return Err(Invalid::new(
                Reason::UnsupportedEndorsementKey,
                format!(
                    "endorsement key is not an RSA key (TPM object type 0x{:04x}); kdps supports RSA 2048 endorsement keys (tpm2_createek -G rsa)",
                    public.object_type()
                ),
            ));
        }
    }
    if !public.is_restricted_decrypt() {
        return Err(Invalid::new(
            Reason::InvalidEndorsementKey,
            "endorsement key is not a restricted decryption key; this does not look like an EK (read it with `kdps-device tpm endorsement-key`)",
        ));
    }
    Ok(public)
}

/// Decode a storage root key: base64 of a marshalled TPM2B_PUBLIC. Reason:
/// `InvalidStorageRootKey`.
pub fn check_storage_root_key(b64: &str) -> Result<kdps_proto::tpm::Public, Invalid> {
    tpm_public(b64, "storage root key", Reason::InvalidStorageRootKey)
}

// ---------------------------------------------------------------------------------------------
// Symmetric keys

/// Decoded symmetric key bytes; `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct SymmetricKey(Vec<u8>);

impl SymmetricKey {
    /// The raw key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SymmetricKey({} bytes, redacted)", self.0.len())
    }
}

/// The keys of a symmetric-key attestation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymmetricKeys {
    /// Primary key.
    pub primary: SymmetricKey,
    /// Secondary key, when the Secret has one.
    pub secondary: Option<SymmetricKey>,
}

/// Decode a symmetric key as stored in a Secret value: base64 text (surrounding whitespace
/// ignored), 16-64 bytes decoded. Reason: `InvalidKey`. The message never contains the key.
pub fn decode_symmetric_key(value: &[u8]) -> Result<SymmetricKey, Invalid> {
    let text = std::str::from_utf8(value).map_err(|_| {
        Invalid::new(
            Reason::InvalidKey,
            "key is not base64 text (it contains non-UTF-8 bytes); store the key base64-encoded",
        )
    })?;
    kdps_proto::keys::decode_key(text)
        .map(SymmetricKey)
        .map_err(|e| Invalid::new(Reason::InvalidKey, e.to_string()))
}

/// The value of `key` in a Secret: `data` first, then `stringData` (which manifests loaded
/// without an apiserver may still use).
pub fn secret_value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.as_slice())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.as_bytes())
        })
}

/// Check and decode the keys `key_ref` points at in `secret` (the caller fetched the Secret
/// named `key_ref.name`; a missing Secret is `Reason::SecretNotFound`). The primary key must
/// exist; the secondary key is optional. Reasons: `KeyNotFound`, `InvalidKey`.
pub fn validate_symmetric_key_secret(
    secret: &Secret,
    key_ref: &SecretKeyRef,
) -> Result<SymmetricKeys, Vec<Problem>> {
    let name = secret.name_any();
    let mut problems = Vec::new();
    let primary = match secret_value(secret, &key_ref.primary_key_name) {
        None => {
            problems.push(
                Invalid::new(
                    Reason::KeyNotFound,
                    format!("Secret {name:?} has no key {:?}", key_ref.primary_key_name),
                )
                .at("secretRef.primaryKeyName"),
            );
            None
        }
        Some(v) => match decode_symmetric_key(v) {
            Ok(k) => Some(k),
            Err(e) => {
                problems.push(
                    Invalid::new(
                        e.reason,
                        format!(
                            "Secret {name:?} key {:?}: {}",
                            key_ref.primary_key_name, e.message
                        ),
                    )
                    .at("secretRef.primaryKeyName"),
                );
                None
            }
        },
    };
    let secondary = match secret_value(secret, &key_ref.secondary_key_name) {
        None => None,
        Some(v) => match decode_symmetric_key(v) {
            Ok(k) => Some(k),
            Err(e) => {
                problems.push(
                    Invalid::new(
                        e.reason,
                        format!(
                            "Secret {name:?} key {:?}: {}",
                            key_ref.secondary_key_name, e.message
                        ),
                    )
                    .at("secretRef.secondaryKeyName"),
                );
                None
            }
        },
    };
    match primary {
        Some(primary) if problems.is_empty() => Ok(SymmetricKeys { primary, secondary }),
        _ => Err(problems),
    }
}

// ---------------------------------------------------------------------------------------------
// Field helpers mirroring the OpenAPI constraints of the CRDs

fn check_len(
    problems: &mut Vec<Problem>,
    field: &str,
    value: &str,
    min: usize,
    max: usize,
    reason: Reason,
) -> bool {
    let len = value.chars().count();
    if len < min {
        problems.push(Invalid::new(reason, "must not be empty").at(field));
        false
    } else if len > max {
        problems.push(
            Invalid::new(
                reason,
                format!("is {len} characters long; at most {max} are allowed"),
            )
            .at(field),
        );
        false
    } else {
        true
    }
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            matches!((b.first(), b.last()), (Some(f), Some(l)) if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric())
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

fn is_dns_name_lower(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty() && s.split('.').all(|l| is_dns1123_label(l) && !l.is_empty())
}

fn check_secret_ref(problems: &mut Vec<Problem>, field: &str, r: &SecretKeyRef) {
    check_len(
        problems,
        &format!("{field}.name"),
        &r.name,
        1,
        253,
        Reason::InvalidSecretRef,
    );
    check_len(
        problems,
        &format!("{field}.primaryKeyName"),
        &r.primary_key_name,
        1,
        253,
        Reason::InvalidSecretRef,
    );
    check_len(
        problems,
        &format!("{field}.secondaryKeyName"),
        &r.secondary_key_name,
        1,
        253,
        Reason::InvalidSecretRef,
    );
}

fn check_certificates(
    problems: &mut Vec<Problem>,
    field: &str,
    certs: &X509Certificates,
    usage: CertificateUse,
    now: SystemTime,
) -> Vec<CertificateInfo> {
    let mut infos = Vec::new();
    for (slot, cert) in certs.iter() {
        let path = format!("{field}.{slot}.certificate");
        match check_certificate(&cert.certificate, usage, now) {
            Ok(info) => infos.push(info),
            Err(e) => problems.push(e.at(path)),
        }
    }
    infos
}

/// Check a custom-allocation webhook: absolute https URL (at most 2048 characters), a
/// parseable CA bundle, timeout 1-60 s, apiVersion 1-64 characters.
pub fn check_custom_allocation(
    problems: &mut Vec<Problem>,
    field: &str,
    ca: &CustomAllocation,
    now: SystemTime,
) {
    let url_field = format!("{field}.webhookUrl");
    if check_len(
        problems,
        &url_field,
        &ca.webhook_url,
        1,
        2048,
        Reason::InvalidCustomAllocation,
    ) {
        match url::Url::parse(&ca.webhook_url) {
            Ok(u) if u.scheme() == "https" && u.host_str().is_some_and(|h| !h.is_empty()) => {}
            Ok(u) => problems.push(
                Invalid::new(
                    Reason::InvalidCustomAllocation,
                    format!(
                        "must be an absolute https:// URL (scheme is {:?})",
                        u.scheme()
                    ),
                )
                .at(url_field),
            ),
            Err(e) => problems.push(
                Invalid::new(
                    Reason::InvalidCustomAllocation,
                    format!("is not a valid URL: {e}"),
                )
                .at(url_field),
            ),
        }
    }
    if let Some(bundle) = &ca.ca_bundle
        && let Err(e) = check_ca_bundle(bundle, now)
    {
        problems.push(e.at(format!("{field}.caBundle")));
    }
    if !(1..=60).contains(&ca.timeout_seconds) {
        problems.push(
            Invalid::new(
                Reason::InvalidCustomAllocation,
                format!("is {}; must be 1 to 60 seconds", ca.timeout_seconds),
            )
            .at(format!("{field}.timeoutSeconds")),
        );
    }
    if let Some(v) = &ca.api_version {
        check_len(
            problems,
            &format!("{field}.apiVersion"),
            v,
            1,
            64,
            Reason::InvalidCustomAllocation,
        );
    }
}

fn check_settings(problems: &mut Vec<Problem>, s: &EnrollmentSettings<'_>, now: SystemTime) {
    if s.iot_hubs.len() > MAX_IOT_HUBS {
        problems.push(
            Invalid::new(
                Reason::InvalidIoTHubs,
                format!(
                    "lists {} hubs; at most {MAX_IOT_HUBS} are allowed",
                    s.iot_hubs.len()
                ),
            )
            .at("spec.iotHubs"),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, hub) in s.iot_hubs.iter().enumerate() {
        let field = format!("spec.iotHubs[{i}]");
        check_len(problems, &field, hub, 1, 253, Reason::InvalidIoTHubs);
        if !seen.insert(hub.as_str()) {
            problems.push(
                Invalid::new(Reason::InvalidIoTHubs, format!("{hub:?} is listed twice")).at(field),
            );
        }
    }
    match s.allocation_policy {
        Some(AllocationPolicy::Static) if s.iot_hubs.len() != 1 => problems.push(
            Invalid::new(
                Reason::InvalidAllocationPolicy,
                format!(
                    "allocationPolicy static requires exactly one hub in iotHubs ({} listed)",
                    s.iot_hubs.len()
                ),
            )
            .at("spec.iotHubs"),
        ),
        Some(AllocationPolicy::Custom) if s.custom_allocation.is_none() => problems.push(
            Invalid::new(
                Reason::InvalidAllocationPolicy,
                "allocationPolicy custom requires customAllocation.webhookUrl",
            )
            .at("spec.customAllocation"),
        ),
        _ => {}
    }
    if let Some(ca) = s.custom_allocation {
        check_custom_allocation(problems, "spec.customAllocation", ca, now);
    }
}

// ---------------------------------------------------------------------------------------------
// Whole objects

/// Validate an IndividualEnrollment as the apiserver would (schema and CEL rules), plus: the
/// X.509 certificates parse, are in their validity window at `now`, and their CN is the
/// registration ID; the TPM endorsement key decodes to an RSA 2048 EK; the storage root key
/// decodes. Secrets and links are checked by [`validate_symmetric_key_secret`] and
/// [`validate_enrollment_references`].
pub fn validate_individual_enrollment(
    enrollment: &IndividualEnrollment,
    now: SystemTime,
) -> Result<(), Vec<Problem>> {
    let spec = &enrollment.spec;
    let mut problems = Vec::new();

    let registration_id = match (&spec.registration_id, &enrollment.metadata.name) {
        (Some(id), _) => match check_registration_id(id) {
            Ok(()) => Some(id.as_str()),
            Err(e) => {
                problems.push(e.at("spec.registrationId"));
                None
            }
        },
        (None, Some(name)) => match check_registration_id(name) {
            Ok(()) => Some(name.as_str()),
            Err(e) => {
                problems.push(
                    Invalid::new(
                        e.reason,
                        format!(
                            "{} (metadata.name is the registration ID when spec.registrationId is not set)",
                            e.message
                        ),
                    )
                    .at("metadata.name"),
                );
                None
            }
        },
        (None, None) => {
            problems.push(
                Invalid::new(
                    Reason::InvalidRegistrationId,
                    "no registration ID: set spec.registrationId or metadata.name",
                )
                .at("spec.registrationId"),
            );
            None
        }
    };
    if let Some(device_id) = &spec.device_id
        && let Err(e) = check_device_id(device_id)
    {
        problems.push(e.at("spec.deviceId"));
    }

    let att = &spec.attestation;
    let set = [
        att.tpm.is_some(),
        att.x509.is_some(),
        att.symmetric_key.is_some(),
    ]
    .into_iter()
    .filter(|x| *x)
    .count();
    if set != 1 {
        problems.push(
            Invalid::new(
                Reason::InvalidAttestation,
                format!("exactly one of tpm, x509 or symmetricKey must be set ({set} are)"),
            )
            .at("spec.attestation"),
        );
    }
    if let Some(tpm) = &att.tpm {
        if check_len(
            &mut problems,
            "spec.attestation.tpm.endorsementKey",
            &tpm.endorsement_key,
            1,
            4096,
            Reason::InvalidEndorsementKey,
        ) && let Err(e) = check_endorsement_key(&tpm.endorsement_key)
        {
            problems.push(e.at("spec.attestation.tpm.endorsementKey"));
        }
        if let Some(srk) = &tpm.storage_root_key
            && check_len(
                &mut problems,
                "spec.attestation.tpm.storageRootKey",
                srk,
                1,
                4096,
                Reason::InvalidStorageRootKey,
            )
            && let Err(e) = check_storage_root_key(srk)
        {
            problems.push(e.at("spec.attestation.tpm.storageRootKey"));
        }
    }
    if let Some(x509) = &att.x509 {
        let field = "spec.attestation.x509.clientCertificates";
        let infos = check_certificates(
            &mut problems,
            field,
            &x509.client_certificates,
            CertificateUse::Client,
            now,
        );
        for (info, (slot, _)) in infos.iter().zip(x509.client_certificates.iter()) {
            let path = format!("{field}.{slot}.certificate");
            match (&info.common_name, registration_id) {
                (None, _) => problems.push(
                    Invalid::new(
                        Reason::InvalidCertificate,
                        format!(
                            "certificate {:?} has no subject CN; X.509 devices register with their CN as registration ID",
                            info.subject
                        ),
                    )
                    .at(path),
                ),
                (Some(cn), Some(id))
                    if canonical_registration_id(cn) != canonical_registration_id(id) =>
                {
                    problems.push(
                        Invalid::new(
                            Reason::RegistrationIdMismatch,
                            format!(
                                "certificate subject CN {cn:?} does not match the registration ID {id:?}; X.509 devices register with their CN"
                            ),
                        )
                        .at(path),
                    )
                }
                _ => {}
            }
        }
    }
    if let Some(sk) = &att.symmetric_key {
        check_secret_ref(
            &mut problems,
            "spec.attestation.symmetricKey.secretRef",
            &sk.secret_ref,
        );
    }

    check_settings(&mut problems, &spec.settings(), now);
    into_result(problems)
}

/// Validate an EnrollmentGroup as the apiserver would (schema and CEL rules), plus: each
/// signing certificate parses, is in its validity window at `now`, and is a CA allowed to
/// sign certificates.
pub fn validate_enrollment_group(
    group: &EnrollmentGroup,
    now: SystemTime,
) -> Result<(), Vec<Problem>> {
    let spec = &group.spec;
    let mut problems = Vec::new();
    let att = &spec.attestation;
    let set = [att.x509.is_some(), att.symmetric_key.is_some()]
        .into_iter()
        .filter(|x| *x)
        .count();
    if set != 1 {
        problems.push(
            Invalid::new(
                Reason::InvalidAttestation,
                format!(
                    "exactly one of x509 or symmetricKey must be set ({set} are; enrollment groups do not support tpm)"
                ),
            )
            .at("spec.attestation"),
        );
    }
    if let Some(x509) = &att.x509 {
        check_certificates(
            &mut problems,
            "spec.attestation.x509.signingCertificates",
            &x509.signing_certificates,
            CertificateUse::Signing,
            now,
        );
    }
    if let Some(sk) = &att.symmetric_key {
        check_secret_ref(
            &mut problems,
            "spec.attestation.symmetricKey.secretRef",
            &sk.secret_ref,
        );
    }
    check_settings(&mut problems, &spec.settings(), now);
    into_result(problems)
}

/// Validate an IoTHubLink as the apiserver would (schema and CEL rules).
pub fn validate_iot_hub_link(link: &IoTHubLink) -> Result<(), Vec<Problem>> {
    let spec = &link.spec;
    let mut problems = Vec::new();
    if check_len(
        &mut problems,
        "spec.hostName",
        &spec.host_name,
        1,
        253,
        Reason::InvalidHostName,
    ) && !is_host_name(&spec.host_name)
    {
        problems.push(
            Invalid::new(
                Reason::InvalidHostName,
                format!("{:?} is not a DNS host name", spec.host_name),
            )
            .at("spec.hostName"),
        );
    }
    if !is_dns1123_label(&spec.device_namespace) {
        problems.push(
            Invalid::new(
                Reason::InvalidNamespace,
                format!(
                    "{:?} is not a namespace name (at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit)",
                    spec.device_namespace
                ),
            )
            .at("spec.deviceNamespace"),
        );
    }
    if !(MIN_ALLOCATION_WEIGHT..=MAX_ALLOCATION_WEIGHT).contains(&spec.allocation_weight) {
        problems.push(
            Invalid::new(
                Reason::InvalidAllocationWeight,
                format!(
                    "is {}; must be {MIN_ALLOCATION_WEIGHT} to {MAX_ALLOCATION_WEIGHT}",
                    spec.allocation_weight
                ),
            )
            .at("spec.allocationWeight"),
        );
    }
    if let Some(region) = &spec.region
        && !is_dns1123_label(region)
    {
        problems.push(
            Invalid::new(
                Reason::InvalidRegion,
                format!("{region:?} is not a region name (DNS label)"),
            )
            .at("spec.region"),
        );
    }
    into_result(problems)
}

/// Validate a ProvisioningService as the apiserver would (schema and CEL rules, except the
/// idScope immutability transition rule), plus the custom-allocation CA bundle.
pub fn validate_provisioning_service(
    service: &ProvisioningService,
    now: SystemTime,
) -> Result<(), Vec<Problem>> {
    let spec = &service.spec;
    let mut problems = Vec::new();
    if let Some(scope) = &spec.id_scope
        && check_len(
            &mut problems,
            "spec.idScope",
            scope,
            4,
            32,
            Reason::InvalidIdScope,
        )
        && !scope.chars().all(|c| c.is_ascii_alphanumeric())
    {
        problems.push(
            Invalid::new(
                Reason::InvalidIdScope,
                format!("{scope:?} must be 4-32 letters and digits"),
            )
            .at("spec.idScope"),
        );
    }
    if !(0..=100).contains(&spec.replicas) {
        problems.push(
            Invalid::new(
                Reason::InvalidReplicas,
                format!("is {}; must be 0 to 100", spec.replicas),
            )
            .at("spec.replicas"),
        );
    }
    if let Some(image) = &spec.image {
        check_len(
            &mut problems,
            "spec.image",
            image,
            1,
            1024,
            Reason::InvalidField,
        );
    }
    if spec.allocation_policy == AllocationPolicy::Custom && spec.custom_allocation.is_none() {
        problems.push(
            Invalid::new(
                Reason::InvalidAllocationPolicy,
                "allocationPolicy custom requires customAllocation.webhookUrl",
            )
            .at("spec.customAllocation"),
        );
    }
    if let Some(ca) = &spec.custom_allocation {
        check_custom_allocation(&mut problems, "spec.customAllocation", ca, now);
    }
    if !(1..=65535).contains(&spec.endpoint.port) {
        problems.push(
            Invalid::new(
                Reason::InvalidEndpoint,
                format!("is {}; must be 1 to 65535", spec.endpoint.port),
            )
            .at("spec.endpoint.port"),
        );
    }
    if spec.endpoint.dns_names.len() > 32 {
        problems.push(
            Invalid::new(
                Reason::InvalidEndpoint,
                format!(
                    "lists {} names; at most 32 are allowed",
                    spec.endpoint.dns_names.len()
                ),
            )
            .at("spec.endpoint.dnsNames"),
        );
    }
    for (i, name) in spec.endpoint.dns_names.iter().enumerate() {
        let field = format!("spec.endpoint.dnsNames[{i}]");
        if check_len(&mut problems, &field, name, 1, 253, Reason::InvalidEndpoint)
            && !is_dns_name_lower(name)
        {
            problems.push(
                Invalid::new(
                    Reason::InvalidEndpoint,
                    format!("{name:?} is not a lower-case DNS name (a leading '*.' is allowed)"),
                )
                .at(field),
            );
        }
    }
    if let Some(tls) = &spec.tls {
        check_len(
            &mut problems,
            "spec.tls.secretName",
            &tls.secret_name,
            1,
            253,
            Reason::InvalidSecretRef,
        );
    }
    if spec
        .rate_limits
        .per_device_per_minute
        .is_some_and(|n| n > 100_000)
    {
        problems.push(
            Invalid::new(Reason::InvalidRateLimit, "must be at most 100000")
                .at("spec.rateLimits.perDevicePerMinute"),
        );
    }
    if spec
        .rate_limits
        .global_per_second
        .is_some_and(|n| n > 1_000_000)
    {
        problems.push(
            Invalid::new(Reason::InvalidRateLimit, "must be at most 1000000")
                .at("spec.rateLimits.globalPerSecond"),
        );
    }
    if spec.regions.len() > 64 {
        problems.push(
            Invalid::new(
                Reason::InvalidRegion,
                format!(
                    "lists {} regions; at most 64 are allowed",
                    spec.regions.len()
                ),
            )
            .at("spec.regions"),
        );
    }
    let mut names = BTreeSet::new();
    for (i, region) in spec.regions.iter().enumerate() {
        let field = format!("spec.regions[{i}]");
        if !is_dns1123_label(&region.name) {
            problems.push(
                Invalid::new(
                    Reason::InvalidRegion,
                    format!("{:?} is not a region name (DNS label)", region.name),
                )
                .at(format!("{field}.name")),
            );
        }
        if !names.insert(region.name.as_str()) {
            problems.push(
                Invalid::new(
                    Reason::InvalidRegion,
                    format!("region {:?} is defined twice", region.name),
                )
                .at(format!("{field}.name")),
            );
        }
        if region.cidrs.is_empty() || region.cidrs.len() > 256 {
            problems.push(
                Invalid::new(
                    Reason::InvalidRegion,
                    format!("lists {} CIDRs; 1 to 256 are required", region.cidrs.len()),
                )
                .at(format!("{field}.cidrs")),
            );
        }
        for (j, cidr) in region.cidrs.iter().enumerate() {
            if cidr.len() > 43 || cidr.parse::<ipnet::IpNet>().is_err() {
                problems.push(
                    Invalid::new(
                        Reason::InvalidRegion,
                        format!("{cidr:?} is not a CIDR such as 10.0.0.0/8 or fd00::/8"),
                    )
                    .at(format!("{field}.cidrs[{j}]")),
                );
            }
        }
    }
    into_result(problems)
}

/// Parsed region map of a ProvisioningService, for geo-latency allocation: the region of the
/// most specific CIDR containing `addr`.
pub fn region_for_address(
    service: &ProvisioningServiceSpec,
    addr: std::net::IpAddr,
) -> Option<&str> {
    service
        .regions
        .iter()
        .flat_map(|r| {
            r.cidrs
                .iter()
                .filter_map(|c| c.parse::<ipnet::IpNet>().ok())
                .map(move |net| (net, r.name.as_str()))
        })
        .filter(|(net, _)| net.contains(&addr))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, name)| name)
}

// ---------------------------------------------------------------------------------------------
// Cross-object checks

/// Check an enrollment's references against its namespace: every `iotHubs` entry names an
/// existing link; an inherited `static` policy has exactly one hub; an inherited or own
/// `custom` policy has a webhook (its own or the service's). `service` is the namespace's
/// ProvisioningService spec, if any. Reasons: `UnknownIoTHub`, `InvalidAllocationPolicy`.
pub fn validate_enrollment_references(
    settings: &EnrollmentSettings<'_>,
    service: Option<&ProvisioningServiceSpec>,
    links: &[IoTHubLink],
) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    for (i, hub) in settings.iot_hubs.iter().enumerate() {
        if !links
            .iter()
            .any(|l| l.metadata.name.as_deref() == Some(hub))
        {
            problems.push(
                Invalid::new(
                    Reason::UnknownIoTHub,
                    format!("IoTHubLink {hub:?} does not exist in this namespace"),
                )
                .at(format!("spec.iotHubs[{i}]")),
            );
        }
    }
    let default = service.map_or(AllocationPolicy::default(), |s| s.allocation_policy);
    let policy = settings.effective_allocation_policy(default);
    if settings.allocation_policy.is_none() {
        match policy {
            AllocationPolicy::Static if settings.iot_hubs.len() != 1 => problems.push(
                Invalid::new(
                    Reason::InvalidAllocationPolicy,
                    format!(
                        "the inherited allocationPolicy static requires exactly one hub in iotHubs ({} listed)",
                        settings.iot_hubs.len()
                    ),
                )
                .at("spec.iotHubs"),
            ),
            AllocationPolicy::Custom
                if settings
                    .effective_custom_allocation(service.and_then(|s| s.custom_allocation.as_ref()))
                    .is_none() =>
            {
                problems.push(
                    Invalid::new(
                        Reason::InvalidAllocationPolicy,
                        "the inherited allocationPolicy custom needs a customAllocation webhook on the enrollment or the ProvisioningService",
                    )
                    .at("spec.customAllocation"),
                )
            }
            _ => {}
        }
    }
    into_result(problems)
}

/// Check a link against its namespace's ProvisioningService: its region must be one the
/// service defines. Reason: `UnknownRegion`.
pub fn validate_link_references(
    link: &IoTHubLink,
    service: Option<&ProvisioningServiceSpec>,
) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    if let Some(region) = &link.spec.region {
        let known = service.is_some_and(|s| s.regions.iter().any(|r| &r.name == region));
        if !known {
            problems.push(
                Invalid::new(
                    Reason::UnknownRegion,
                    format!(
                        "region {region:?} is not defined in the ProvisioningService's regions"
                    ),
                )
                .at("spec.region"),
            );
        }
    }
    into_result(problems)
}

// ---------------------------------------------------------------------------------------------
// Unknown fields

/// Report fields of `object` (a whole resource as JSON) that the CRD schema does not define,
/// as the apiserver's strict field validation would (`kubectl apply` rejects them; without it
/// they would be silently pruned). `metadata` is not inspected. Reason: `UnknownField`.
pub fn check_unknown_fields(
    crd: &CustomResourceDefinition,
    object: &serde_json::Value,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let schema = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref());
    if let (Some(schema), serde_json::Value::Object(map)) = (schema, object) {
        for (key, value) in map {
            match key.as_str() {
                "apiVersion" | "kind" | "metadata" => {}
                _ => walk_unknown(schema, key, value, key, &mut problems),
            }
        }
    }
    problems
}

fn walk_unknown(
    parent: &JSONSchemaProps,
    key: &str,
    value: &serde_json::Value,
    path: &str,
    problems: &mut Vec<Problem>,
) {
    if parent.x_kubernetes_preserve_unknown_fields == Some(true) {
        return;
    }
    let Some(props) = &parent.properties else {
        return;
    };
    let Some(schema) = props.get(key) else {
        problems
            .push(Invalid::new(Reason::UnknownField, format!("unknown field {key:?}")).at(path));
        return;
    };
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                walk_unknown(schema, k, v, &format!("{path}.{k}"), problems);
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
                for (i, v) in items.iter().enumerate() {
                    if let serde_json::Value::Object(map) = v {
                        for (k, vv) in map {
                            walk_unknown(item, k, vv, &format!("{path}[{i}].{k}"), problems);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}
