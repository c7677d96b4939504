//! Registry: where registrations and device identities are stored.
//!
//! The registration engine talks to storage only through the [`Registry`] trait. Two backends
//! implement it: [`embedded::EmbeddedRegistry`] (a single redb file, for `standalone` mode) and,
//! later, a Kubernetes backend (`serve` mode) that keeps the same records as objects.
//!
//! # Records
//!
//! * [`RegistrationRecord`] — one per registration ID (the `DeviceRegistration` object): which
//!   enrollment admitted the device, where it was assigned, status/substatus, etag, last error.
//! * [`DeviceRecord`] — the hub-side identity in a link's device namespace (the `Device` object).
//! * [`DeviceSecret`] — the device's symmetric keys (a `Secret` in the device namespace).
//!
//! # Write order and the Kubernetes backend
//!
//! [`Registry::write_identity`] takes the *complete desired state* of all three objects and
//! writes them in the order key Secret → Device → (retire the previous Device) →
//! DeviceRegistration. Every object has a deterministic name (see [`object_name`] and
//! [`device_secret_name`]), so a Kubernetes backend can implement each step as one server-side
//! apply of a full object: a crash after any step leaves objects that the retry re-applies to
//! the same content, and the registration (the record the device's status is read from) is
//! written last, so it never points at an identity that does not exist yet.
//!
//! Optimistic concurrency: the caller passes the etag of the registration it read (or `None` if
//! there was none). The backend refuses the write with [`RegistryError::Conflict`] when the
//! stored registration has changed since, so of two replicas racing on one device exactly one
//! wins; the loser re-reads and converges (the Kubernetes backend can carry the check as the
//! `resourceVersion` precondition of the final apply). The backend owns `etag`, `created_at`
//! and `updated_at` of the registration: it generates a new etag on every write, keeps the
//! creation time of an existing record and stamps the update time.
//!
//! # Async shape
//!
//! The trait is dyn-compatible: methods return [`BoxFuture`]s (`Pin<Box<dyn Future + Send>>`),
//! so the engine can hold an `Arc<dyn Registry>` and pick the backend at run time. One
//! allocation per call is negligible next to a storage round trip.

pub mod embedded;
pub mod sample;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A boxed, `Send` future, the return type of every [`Registry`] method.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Largest page [`Registry::list_registrations`] and [`Registry::list_devices`] return;
/// larger `limit`s are clamped to it.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Storage for registrations and device identities. See the [module docs](self).
pub trait Registry: Send + Sync {
    /// Reads the registration of `registration_id` (compared case-insensitively).
    /// `Ok(None)` when the device never registered.
    fn get_registration<'a>(
        &'a self,
        registration_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RegistrationRecord>, RegistryError>>;

    /// Writes a successful assignment: key Secret → Device → retire the previous Device →
    /// DeviceRegistration, all or nothing as far as the backend can guarantee it, refused with
    /// [`RegistryError::Conflict`] when the stored registration's etag is not
    /// `write.expected_etag`. Returns the registration as stored (new etag and timestamps).
    fn write_identity(
        &self,
        write: IdentityWrite,
    ) -> BoxFuture<'_, Result<RegistrationRecord, RegistryError>>;

    /// Records a registration that ended `failed` or `disabled`, without touching any device
    /// identity. Same etag precondition and backend-owned fields as
    /// [`write_identity`](Registry::write_identity).
    fn record_failure(
        &self,
        registration: RegistrationRecord,
        expected_etag: Option<String>,
    ) -> BoxFuture<'_, Result<RegistrationRecord, RegistryError>>;

    /// Reads the device identity `device_id` (case-sensitive, as in IoT Hub) in `namespace`.
    fn get_device<'a>(
        &'a self,
        namespace: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<DeviceRecord>, RegistryError>>;

    /// Reads a device key Secret (for tests and the CLI; the engine never needs to).
    fn get_secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<DeviceSecret>, RegistryError>>;

    /// Lists registrations ordered by canonical registration ID, starting after the
    /// continuation token `after` (the [`Page::next`] of the previous page), at most `limit`
    /// (clamped to `1..=MAX_PAGE_SIZE`).
    fn list_registrations<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<RegistrationRecord>, RegistryError>>;

    /// Lists devices ordered by (namespace, device ID), in one namespace or in all, starting
    /// after the continuation token `after` (the [`Page::next`] of the previous page).
    fn list_devices<'a>(
        &'a self,
        namespace: Option<&'a str>,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<DeviceRecord>, RegistryError>>;

    /// Number of registration records.
    fn count_registrations(&self) -> BoxFuture<'_, Result<u64, RegistryError>>;
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The records, in key order.
    pub items: Vec<T>,
    /// Opaque continuation token to pass as `after` for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Errors of the registry. Storage failures carry the operation they interrupted; none of
/// the messages contains key material.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RegistryError {
    /// The stored registration changed since the caller read it (or appeared / was expected
    /// but is absent). Re-read and retry; DPS reports this as 409203 "Precondition failed.".
    #[error(
        "registration '{registration_id}' was changed concurrently (expected etag {}, stored etag {}); re-read it and retry",
        .expected.as_deref().unwrap_or("<none: record must not exist>"),
        .found.as_deref().unwrap_or("<none: no record>")
    )]
    Conflict {
        /// Canonical registration ID.
        registration_id: String,
        /// The etag the caller expected.
        expected: Option<String>,
        /// The etag actually stored.
        found: Option<String>,
    },
    /// The write request is inconsistent (for example the Device is in another namespace than
    /// the registration's hub). A bug in the caller, never retried.
    #[error("invalid registry write: {0}")]
    Invalid(String),
    /// The storage layer failed (I/O, locking, a full disk, the store being closed).
    #[error("registry storage error during {operation}: {message}")]
    Storage {
        /// What the registry was doing.
        operation: &'static str,
        /// The underlying error.
        message: String,
    },
    /// A stored record could not be decoded.
    #[error("registry record {key} is corrupt: {reason}")]
    Corrupt {
        /// Which record (table and key).
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
}

impl RegistryError {
    /// DPS error code for a registry failure seen by a device: 409203 for a conflict, 500000
    /// otherwise.
    pub fn dps_error_code(&self) -> u32 {
        match self {
            Self::Conflict { .. } => 409_203,
            _ => 500_000,
        }
    }

    /// Whether retrying the same request can succeed (after re-reading, for a conflict).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Conflict { .. } | Self::Storage { .. })
    }
}

/// The registration ID as registries store and compare it: DPS registration IDs are
/// case-insensitive, kdps keys them in ASCII lower case.
pub use kdps_api::names::canonical_registration_id;

/// A deterministic Kubernetes object name (DNS-1123 subdomain) for a device ID; see
/// [`kdps_api::names::device_object_name`] (one naming scheme for both backends and the API).
pub fn object_name(id: &str) -> String {
    kdps_api::names::device_object_name(id)
}

/// The deterministic name of a device's key Secret in its device namespace; see
/// [`kdps_api::names::device_key_secret_name`].
pub fn device_secret_name(device_id: &str) -> String {
    kdps_api::names::device_key_secret_name(device_id)
}

/// Which kind of enrollment admitted a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrollmentKind {
    /// An `IndividualEnrollment` (serialized as its Kubernetes kind).
    #[serde(rename = "IndividualEnrollment")]
    Individual,
    /// An `EnrollmentGroup` (serialized as its Kubernetes kind).
    #[serde(rename = "EnrollmentGroup")]
    Group,
}

/// Reference to the enrollment (in the service's namespace) that admitted a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentRef {
    /// Individual enrollment or group.
    pub kind: EnrollmentKind,
    /// Object name of the enrollment.
    pub name: String,
}

/// How the device proved its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AttestationType {
    /// TPM endorsement key challenge.
    Tpm,
    /// X.509 client certificate.
    X509,
    /// Symmetric key (SAS token).
    SymmetricKey,
}

/// Registration status, with DPS's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RegistrationStatus {
    /// Not assigned (DPS reports it for records that never got a hub).
    Unassigned,
    /// Assignment in progress.
    Assigning,
    /// Assigned to a hub; the identity exists.
    Assigned,
    /// The last attempt failed; see `last_error`.
    Failed,
    /// The enrollment is disabled.
    Disabled,
}

/// Substatus of an assigned registration, with DPS's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Substatus {
    /// Assigned to a hub for the first time.
    InitialAssignment,
    /// Moved to another hub; the device data (twin, capabilities) was migrated.
    DeviceDataMigrated,
    /// Moved to another hub; the device data was reset to the enrollment's initial state.
    DeviceDataReset,
    /// Moved back to the hub of the initial assignment.
    ReprovisionedToInitialAssignment,
}

/// A hub a registration is assigned to: the link it came from and where identities live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubAssignment {
    /// Hub host name told to the device (`assignedHub`).
    pub host_name: String,
    /// Name of the `IoTHubLink`.
    pub link_name: String,
    /// Namespace the link writes Device objects to.
    pub device_namespace: String,
}

impl HubAssignment {
    /// Whether two assignments are the same hub: same device namespace and same host name
    /// (host names compared case-insensitively). The link's name is only a label.
    pub fn same_hub(&self, other: &HubAssignment) -> bool {
        self.device_namespace == other.device_namespace
            && self.host_name.eq_ignore_ascii_case(&other.host_name)
    }
}

/// The error of a failed registration, as reported to the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    /// Six-digit DPS error code (first three digits are the HTTP status).
    pub code: u32,
    /// Human-readable message.
    pub message: String,
}

/// The registration record of one registration ID (the `DeviceRegistration` object).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRecord {
    /// Registration ID, canonical lower case (see [`canonical_registration_id`]).
    pub registration_id: String,
    /// The enrollment that admitted (or refused) the device.
    pub enrollment: EnrollmentRef,
    /// How the device attested.
    pub attestation: AttestationType,
    /// Assigned hub; `None` when the device was never assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<HubAssignment>,
    /// Device ID on the assigned hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Status.
    pub status: RegistrationStatus,
    /// Substatus of an assigned registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<Substatus>,
    /// Opaque version, set by the backend on every write (input value ignored).
    #[serde(default)]
    pub etag: String,
    /// First write (set by the backend).
    pub created_at: Timestamp,
    /// Last write (set by the backend).
    pub updated_at: Timestamp,
    /// Error of the last attempt when `status` is `failed` (or `disabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    /// The hub of the first assignment, to detect `reprovisionedToInitialAssignment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_hub: Option<HubAssignment>,
    /// Payload returned by a custom-allocation webhook, handed back to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// TPM `authenticationKey` blob (base64), returned again to TPM devices. Not secret (only
    /// the device's TPM can open it) but redacted from `Debug` anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_authentication_key: Option<String>,
    /// X.509 certificate information returned in `registrationState.x509`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<Value>,
}

impl RegistrationRecord {
    /// A new record with the given identity fields, status and substatus; every optional
    /// field empty, timestamps `now`, no etag yet.
    pub fn new(
        registration_id: &str,
        enrollment: EnrollmentRef,
        attestation: AttestationType,
        status: RegistrationStatus,
    ) -> Self {
        let now = Timestamp::now();
        Self {
            registration_id: canonical_registration_id(registration_id),
            enrollment,
            attestation,
            assigned_hub: None,
            device_id: None,
            status,
            substatus: None,
            etag: String::new(),
            created_at: now,
            updated_at: now,
            last_error: None,
            initial_hub: None,
            payload: None,
            tpm_authentication_key: None,
            x509: None,
        }
    }
}

impl fmt::Debug for RegistrationRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationRecord")
            .field("registration_id", &self.registration_id)
            .field("enrollment", &self.enrollment)
            .field("attestation", &self.attestation)
            .field("assigned_hub", &self.assigned_hub)
            .field("device_id", &self.device_id)
            .field("status", &self.status)
            .field("substatus", &self.substatus)
            .field("etag", &self.etag)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("last_error", &self.last_error)
            .field("initial_hub", &self.initial_hub)
            .field("payload", &self.payload)
            .field(
                "tpm_authentication_key",
                &self.tpm_authentication_key.as_ref().map(|_| "<redacted>"),
            )
            .field("x509", &self.x509)
            .finish()
    }
}

/// How a device authenticates to its hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceAuthentication {
    /// SAS tokens signed with the keys in a Secret in the device namespace.
    #[serde(rename_all = "camelCase")]
    SymmetricKey {
        /// Name of the key Secret (same namespace as the Device).
        secret_name: String,
    },
    /// A self-signed / individually enrolled certificate, pinned by thumbprint (hex).
    #[serde(rename_all = "camelCase")]
    X509 {
        /// SHA-1 thumbprint of the primary certificate.
        primary_sha1: String,
        /// SHA-256 thumbprint of the primary certificate.
        primary_sha256: String,
        /// SHA-1 thumbprint of the secondary certificate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secondary_sha1: Option<String>,
        /// SHA-256 thumbprint of the secondary certificate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secondary_sha256: Option<String>,
    },
    /// Any certificate chaining to a CA the hub trusts (enrollment groups with X.509).
    CertificateAuthority {},
}

/// Device capabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilities {
    /// IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

/// The twin state kdps writes (tags and desired properties; both JSON objects).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTwin {
    /// Twin tags.
    #[serde(default = "empty_object")]
    pub tags: Value,
    /// Desired properties.
    #[serde(default = "empty_object")]
    pub desired: Value,
}

impl Default for DeviceTwin {
    fn default() -> Self {
        Self {
            tags: empty_object(),
            desired: empty_object(),
        }
    }
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// Back-reference from a Device to its registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRef {
    /// Namespace of the `DeviceRegistration` (the service's namespace); `None` in standalone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Canonical registration ID.
    pub registration_id: String,
}

/// A hub-side device identity (the `Device` object).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRecord {
    /// Device ID (case-sensitive).
    pub device_id: String,
    /// Device namespace of the link (where the Device and its Secret live).
    pub namespace: String,
    /// Hub host name.
    pub hub_host_name: String,
    /// Name of the `IoTHubLink`.
    pub link_name: String,
    /// How the device authenticates to the hub.
    pub authentication: DeviceAuthentication,
    /// Capabilities.
    #[serde(default)]
    pub capabilities: DeviceCapabilities,
    /// Initial / migrated twin.
    #[serde(default)]
    pub twin: DeviceTwin,
    /// Whether the device may connect. Retired identities (the device moved to another hub)
    /// are kept with `enabled: false`.
    pub enabled: bool,
    /// The registration this identity belongs to.
    pub registration: RegistrationRef,
}

/// A device's symmetric keys (a `Secret`). `Debug` never shows the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceSecret {
    /// Namespace (the Device's namespace).
    pub namespace: String,
    /// Secret name (see [`device_secret_name`]).
    pub name: String,
    /// Primary key bytes (decoded, not base64).
    pub primary_key: Vec<u8>,
    /// Secondary key bytes (decoded, not base64).
    pub secondary_key: Vec<u8>,
}

impl fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSecret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field(
                "primary_key",
                &format_args!("<{} bytes>", self.primary_key.len()),
            )
            .field(
                "secondary_key",
                &format_args!("<{} bytes>", self.secondary_key.len()),
            )
            .finish()
    }
}

/// Namespace and ID of a Device.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRef {
    /// Device namespace.
    pub namespace: String,
    /// Device ID.
    pub device_id: String,
}

/// Everything [`Registry::write_identity`] writes for one successful assignment.
#[derive(Clone, Debug)]
pub struct IdentityWrite {
    /// The device's key Secret; required when `device.authentication` is
    /// [`DeviceAuthentication::SymmetricKey`] (and must match its name and namespace), and
    /// must be `None` otherwise.
    pub secret: Option<DeviceSecret>,
    /// The Device, complete (it replaces whatever is stored).
    pub device: DeviceRecord,
    /// The Device the registration pointed at before, when the device moved (other
    /// namespace or ID). The backend retires it — keeps it with `enabled: false` — after the
    /// new Device is written. Ignored when it names `device` itself or does not exist.
    pub previous_device: Option<DeviceRef>,
    /// The registration, status `assigned`, with `assigned_hub` and `device_id` matching
    /// `device`. `etag`, `created_at` and `updated_at` are set by the backend.
    pub registration: RegistrationRecord,
    /// The etag of the registration the caller read, `None` if it read none.
    pub expected_etag: Option<String>,
}

impl IdentityWrite {
    /// Checks that the parts of the write agree with each other. Backends call it before
    /// writing anything.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let reg = &self.registration;
        let dev = &self.device;
        let invalid = |msg: String| Err(RegistryError::Invalid(msg));
        if reg.registration_id.is_empty() {
            return invalid("registration ID is empty".into());
        }
        if reg.status != RegistrationStatus::Assigned {
            return invalid(format!(
                "registration '{}' has status {:?}; write_identity writes assigned registrations only",
                reg.registration_id, reg.status
            ));
        }
        if dev.device_id.is_empty() || dev.namespace.is_empty() {
            return invalid("device ID and namespace must not be empty".into());
        }
        let Some(hub) = &reg.assigned_hub else {
            return invalid(format!(
                "registration '{}' has no assigned hub",
                reg.registration_id
            ));
        };
        if hub.device_namespace != dev.namespace
            || hub.host_name != dev.hub_host_name
            || hub.link_name != dev.link_name
        {
            return invalid(format!(
                "registration '{}' is assigned to {}/{} (namespace {}) but the device is for {}/{} (namespace {})",
                reg.registration_id,
                hub.link_name,
                hub.host_name,
                hub.device_namespace,
                dev.link_name,
                dev.hub_host_name,
                dev.namespace
            ));
        }
        if reg.device_id.as_deref() != Some(dev.device_id.as_str()) {
            return invalid(format!(
                "registration '{}' names device {:?} but the device record is '{}'",
                reg.registration_id, reg.device_id, dev.device_id
            ));
        }
        if canonical_registration_id(&dev.registration.registration_id)
            != canonical_registration_id(&reg.registration_id)
        {
            return invalid(format!(
                "device '{}' refers back to registration '{}', not '{}'",
                dev.device_id, dev.registration.registration_id, reg.registration_id
            ));
        }
        match (&dev.authentication, &self.secret) {
            (DeviceAuthentication::SymmetricKey { secret_name }, Some(secret)) => {
                if secret.name != *secret_name || secret.namespace != dev.namespace {
                    return invalid(format!(
                        "device '{}' uses Secret {}/{} but the write carries Secret {}/{}",
                        dev.device_id, dev.namespace, secret_name, secret.namespace, secret.name
                    ));
                }
                if secret.primary_key.is_empty() || secret.secondary_key.is_empty() {
                    return invalid(format!(
                        "Secret {}/{} has an empty key",
                        secret.namespace, secret.name
                    ));
                }
            }
            (DeviceAuthentication::SymmetricKey { .. }, None) => {
                return invalid(format!(
                    "device '{}' authenticates with a symmetric key but the write carries no Secret",
                    dev.device_id
                ));
            }
            (_, Some(_)) => {
                return invalid(format!(
                    "device '{}' does not use a symmetric key but the write carries a Secret",
                    dev.device_id
                ));
            }
            (_, None) => {}
        }
        Ok(())
    }
}

/// Checks a record passed to [`Registry::record_failure`].
pub fn validate_failure(registration: &RegistrationRecord) -> Result<(), RegistryError> {
    if registration.registration_id.is_empty() {
        return Err(RegistryError::Invalid("registration ID is empty".into()));
    }
    match registration.status {
        RegistrationStatus::Failed | RegistrationStatus::Disabled => Ok(()),
        other => Err(RegistryError::Invalid(format!(
            "record_failure needs status failed or disabled, got {other:?} for '{}'",
            registration.registration_id
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_valid_and_distinct() {
        assert_eq!(object_name("gateway-01"), "gateway-01");
        assert_eq!(object_name("a.b.c"), "a.b.c");
        let upper = object_name("Gateway-01");
        let lower = object_name("gateway-01");
        assert_ne!(upper, lower);
        assert!(upper.starts_with("gateway-01-"), "{upper}");
        for id in [
            "Dev_1",
            "dev:1",
            "-x-",
            "___",
            "a..b",
            "a.-b",
            ".x",
            &"x".repeat(300),
            "ünïcode",
            "$edgeHub",
        ] {
            let name = object_name(id);
            assert!(
                kdps_api::names::is_dns1123_subdomain(&name),
                "{id} -> {name}"
            );
            assert_eq!(name, object_name(id), "deterministic");
            let secret = device_secret_name(id);
            assert!(
                kdps_api::names::is_dns1123_subdomain(&secret),
                "{id} -> {secret}"
            );
        }
        assert_ne!(object_name("dev:1"), object_name("dev_1"));
        assert_eq!(device_secret_name("gw"), "gw-keys");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = DeviceSecret {
            namespace: "ns".into(),
            name: "n".into(),
            primary_key: b"supersecretkey-primary".to_vec(),
            secondary_key: b"supersecretkey-secondary".to_vec(),
        };
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("supersecret"), "{dbg}");
        assert!(dbg.contains("<22 bytes>"), "{dbg}");
    }

    #[test]
    fn record_serializes_with_dps_names() {
        let mut r = RegistrationRecord::new(
            "Dev-1",
            EnrollmentRef {
                kind: EnrollmentKind::Group,
                name: "g".into(),
            },
            AttestationType::SymmetricKey,
            RegistrationStatus::Assigned,
        );
        r.substatus = Some(Substatus::ReprovisionedToInitialAssignment);
        r.tpm_authentication_key = Some("c2VjcmV0".into());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["registrationId"], "dev-1");
        assert_eq!(v["attestation"], "symmetricKey");
        assert_eq!(v["status"], "assigned");
        assert_eq!(v["substatus"], "reprovisionedToInitialAssignment");
        assert_eq!(v["enrollment"]["kind"], "EnrollmentGroup");
        assert!(v["createdAt"].as_str().unwrap().ends_with('Z'));
        let back: RegistrationRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        assert!(!format!("{r:?}").contains("c2VjcmV0"));

        let auth = DeviceAuthentication::SymmetricKey {
            secret_name: "s".into(),
        };
        assert_eq!(
            serde_json::to_value(&auth).unwrap(),
            serde_json::json!({"symmetricKey": {"secretName": "s"}})
        );
        assert_eq!(
            serde_json::to_value(DeviceAuthentication::CertificateAuthority {}).unwrap(),
            serde_json::json!({"certificateAuthority": {}})
        );
    }
}
