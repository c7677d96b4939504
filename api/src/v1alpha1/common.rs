//! Types shared by several kinds: allocation, keys, certificates, twins, conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The standard Kubernetes condition (type, status, reason, message, lastTransitionTime,
/// observedGeneration), used in the status of every kind.
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// The API group of every kind.
pub const GROUP: &str = "kdps.io";
/// The API version of this module.
pub const VERSION: &str = "v1alpha1";
/// The `kubectl get kdps` category every kind belongs to.
pub const CATEGORY: &str = "kdps";

/// Condition type that every kind's status carries.
pub const CONDITION_READY: &str = "Ready";

/// Label holding a registration ID, set when the ID is a valid label value.
pub const LABEL_REGISTRATION_ID: &str = "kdps.io/registration-id";
/// Label holding a hash of a registration ID, set when the ID itself is not a valid label value.
pub const LABEL_REGISTRATION_ID_HASH: &str = "kdps.io/registration-id-hash";
/// Label holding a device ID, set when the ID is a valid label value.
pub const LABEL_DEVICE_ID: &str = "kdps.io/device-id";
/// Label holding a hash of a device ID, set when the ID itself is not a valid label value.
pub const LABEL_DEVICE_ID_HASH: &str = "kdps.io/device-id-hash";
/// Label on DeviceRegistrations naming the enrollment (`<kind>.<name>`, e.g.
/// `EnrollmentGroup.sensors`, lower-cased) they were admitted by.
pub const LABEL_ENROLLMENT: &str = "kdps.io/enrollment";
/// Label on Devices and key Secrets naming the IoTHubLink they belong to.
pub const LABEL_HUB_LINK: &str = "kdps.io/hub-link";

/// Default Secret key holding the primary symmetric key.
pub const DEFAULT_PRIMARY_KEY_NAME: &str = "primaryKey";
/// Default Secret key holding the secondary symmetric key.
pub const DEFAULT_SECONDARY_KEY_NAME: &str = "secondaryKey";
/// Default custom-allocation webhook timeout.
pub const DEFAULT_WEBHOOK_TIMEOUT_SECONDS: u32 = 5;
/// DPS API version whose AllocationRequest schema is sent to custom-allocation webhooks when
/// `customAllocation.apiVersion` is not set.
pub const DEFAULT_CUSTOM_ALLOCATION_API_VERSION: &str = "2021-10-01";

/// Maximum length of a registration ID or device ID (DPS rules).
pub const MAX_ID_LEN: usize = 128;
/// Maximum number of IoT hubs an enrollment may list (the DPS linked-hub limit).
pub const MAX_IOT_HUBS: usize = 50;
/// Maximum size of one inline PEM field.
pub const MAX_PEM_LEN: usize = 65536;

/// CEL rule for registration IDs and device IDs (dps-protocol §3): alphanumerics and `- . _ :`,
/// last character alphanumeric or `-`. Length is bounded by `maxLength` on the field.
pub(crate) const ID_CEL: &str = "self.matches('^[A-Za-z0-9._:-]*[A-Za-z0-9-]$')";
pub(crate) const ID_CEL_MESSAGE: &str = "must be 1-128 characters: letters, digits and '-', '.', '_', ':', ending with a letter, digit or '-'";

/// How a device is assigned to one of the linked IoT hubs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::v1alpha1::common::drop_description)]
pub enum AllocationPolicy {
    /// Weighted hashing of the registration ID over the eligible links (evenly weighted
    /// distribution).
    #[default]
    Hashed,
    /// The link whose region matches the client address (see ProvisioningService `regions`),
    /// falling back to hashed.
    GeoLatency,
    /// The single link listed in `iotHubs`.
    Static,
    /// An HTTPS webhook chooses the hub (see `customAllocation`).
    Custom,
}

impl AllocationPolicy {
    /// The API name of the policy (`hashed`, `geoLatency`, `static`, `custom`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hashed => "hashed",
            Self::GeoLatency => "geoLatency",
            Self::Static => "static",
            Self::Custom => "custom",
        }
    }
}

impl std::fmt::Display for AllocationPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an enrollment admits devices.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::v1alpha1::common::drop_description)]
pub enum ProvisioningStatus {
    /// Devices matching the enrollment are provisioned.
    #[default]
    Enabled,
    /// Devices matching the enrollment are refused with status `disabled`.
    Disabled,
}

impl ProvisioningStatus {
    /// True for `enabled`.
    pub fn is_enabled(self) -> bool {
        self == Self::Enabled
    }
}

/// A reference to a Secret (in the same namespace) that holds base64 symmetric keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the namespace of the referring object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret whose value is the primary key (base64 text, 16-64 bytes decoded).
    #[serde(default = "default_primary_key_name")]
    #[schemars(length(min = 1, max = 253))]
    pub primary_key_name: String,
    /// Key in the Secret whose value is the secondary key (base64 text, 16-64 bytes decoded).
    /// Optional in the Secret: when the Secret has no such key only the primary key is used.
    #[serde(default = "default_secondary_key_name")]
    #[schemars(length(min = 1, max = 253))]
    pub secondary_key_name: String,
}

impl SecretKeyRef {
    /// A reference to `name` with the default key names.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            primary_key_name: default_primary_key_name(),
            secondary_key_name: default_secondary_key_name(),
        }
    }
}

fn default_primary_key_name() -> String {
    DEFAULT_PRIMARY_KEY_NAME.to_owned()
}

fn default_secondary_key_name() -> String {
    DEFAULT_SECONDARY_KEY_NAME.to_owned()
}

/// Symmetric-key attestation: devices prove possession of a key with a SAS token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyAttestation {
    /// The Secret holding the keys. For an enrollment group these are group keys from which
    /// each device key is derived (HMAC-SHA256 of the registration ID).
    pub secret_ref: SecretKeyRef,
}

/// One inline certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct X509Certificate {
    /// The certificate as PEM (`-----BEGIN CERTIFICATE-----`). Exactly one certificate;
    /// certificates are public, so they may be inlined.
    #[schemars(length(min = 1, max = 65536))]
    pub certificate: String,
}

/// A primary and an optional secondary certificate (for rolling certificates).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct X509Certificates {
    /// The primary certificate.
    pub primary: X509Certificate,
    /// The secondary certificate, accepted alongside the primary one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<X509Certificate>,
}

impl X509Certificates {
    /// The primary and, when set, the secondary certificate, each with its field name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &X509Certificate)> {
        std::iter::once(("primary", &self.primary))
            .chain(self.secondary.as_ref().map(|c| ("secondary", c)))
    }
}

/// A custom-allocation webhook (DPS custom allocation policy).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomAllocation {
    /// HTTPS URL the service POSTs the DPS `AllocationRequest` to; the response names the hub.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = (
        "isURL(self) && url(self).getScheme() == 'https'",
        "must be an absolute https:// URL"
    ))]
    pub webhook_url: String,
    /// PEM CA certificates that verify the webhook's TLS certificate; the service's system
    /// roots are used when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,
    /// Seconds to wait for the webhook before the registration fails.
    #[serde(default = "default_webhook_timeout")]
    #[schemars(range(min = 1, max = 60), extend("format" = "int32"))]
    pub timeout_seconds: u32,
    /// DPS API version whose AllocationRequest schema the webhook expects
    /// (`customAllocationDefinition.apiVersion`); defaults to `2021-10-01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub api_version: Option<String>,
}

fn default_webhook_timeout() -> u32 {
    DEFAULT_WEBHOOK_TIMEOUT_SECONDS
}

impl CustomAllocation {
    /// The webhook timeout (at least one second).
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.timeout_seconds.max(1)))
    }

    /// The API version to present to the webhook.
    pub fn effective_api_version(&self) -> &str {
        self.api_version
            .as_deref()
            .unwrap_or(DEFAULT_CUSTOM_ALLOCATION_API_VERSION)
    }
}

/// What happens when an already-registered device registers again.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    /// Re-evaluate the hub assignment on every registration after the first; false keeps the
    /// device on its current hub.
    #[serde(default = "default_true")]
    pub update_hub_assignment: bool,
    /// When the device moves to another hub, carry its twin and capabilities over; false
    /// resets it to the enrollment's initial twin.
    #[serde(default = "default_true")]
    pub migrate_device_data: bool,
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        Self {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

pub(crate) fn default_true() -> bool {
    true
}

/// Drop the type-level description of an enum schema. kube hoists the enum schema of an
/// `Option<Enum>` field over the field's own schema, so the type's doc comment would replace
/// the field's (and `kubectl explain` would show the wrong text).
pub(crate) fn drop_description(schema: &mut schemars::Schema) {
    schema.remove("description");
}

/// A free-form JSON object (twin tags or properties).
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Twin properties.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TwinProperties {
    /// Desired properties: any JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub desired: Option<JsonObject>,
}

/// A device twin: tags and desired properties, as free-form JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// Tags: any JSON object, visible to the back end only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub tags: Option<JsonObject>,
    /// Twin properties (only `desired` is set by provisioning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<TwinProperties>,
}

/// The twin a device starts with when it is first assigned to a hub (or when its data is reset).
pub type InitialTwin = Twin;

/// Device capabilities.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The device is an IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

/// Which attestation mechanism an enrollment (or a registration) uses.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::v1alpha1::common::drop_description)]
pub enum AttestationType {
    /// TPM 2.0 endorsement key (individual enrollments only).
    Tpm,
    /// X.509 certificates.
    X509,
    /// Symmetric keys (SAS tokens).
    SymmetricKey,
}

impl AttestationType {
    /// The API name (`tpm`, `x509`, `symmetricKey`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tpm => "tpm",
            Self::X509 => "x509",
            Self::SymmetricKey => "symmetricKey",
        }
    }
}

impl std::fmt::Display for AttestationType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The settings individual enrollments and enrollment groups have in common, borrowed from
/// either, so that allocation and reprovisioning code can treat both alike.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EnrollmentSettings<'a> {
    /// `spec.provisioningStatus`.
    pub provisioning_status: ProvisioningStatus,
    /// `spec.allocationPolicy` (None = inherit the ProvisioningService default).
    pub allocation_policy: Option<AllocationPolicy>,
    /// `spec.iotHubs` (empty = every link with applyAllocationPolicy).
    pub iot_hubs: &'a [String],
    /// `spec.customAllocation`.
    pub custom_allocation: Option<&'a CustomAllocation>,
    /// `spec.reprovisionPolicy`.
    pub reprovision_policy: ReprovisionPolicy,
    /// `spec.initialTwin`.
    pub initial_twin: Option<&'a InitialTwin>,
    /// `spec.capabilities`.
    pub capabilities: Capabilities,
}

impl<'a> EnrollmentSettings<'a> {
    /// The allocation policy in force: the enrollment's own, else the service default.
    pub fn effective_allocation_policy(
        &self,
        service_default: AllocationPolicy,
    ) -> AllocationPolicy {
        self.allocation_policy.unwrap_or(service_default)
    }

    /// The custom-allocation webhook in force: the enrollment's own, else the service's.
    pub fn effective_custom_allocation(
        &self,
        service: Option<&'a CustomAllocation>,
    ) -> Option<&'a CustomAllocation> {
        self.custom_allocation.or(service)
    }
}

/// The `Ready` condition, if present.
pub fn ready_condition(conditions: &[Condition]) -> Option<&Condition> {
    find_condition(conditions, CONDITION_READY)
}

/// The condition of type `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the `Ready` condition is present with status `True`.
pub fn is_ready(conditions: &[Condition]) -> bool {
    ready_condition(conditions).is_some_and(|c| c.status == "True")
}

/// Build a condition. `status` true/false maps to `True`/`False`.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Insert or replace the condition of the same type. `lastTransitionTime` is kept from the
/// existing condition when the status did not change, as the Kubernetes API conventions require.
/// Returns true when anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            let changed = *existing != new;
            *existing = new;
            changed
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_unchanged() {
        let mut conditions = vec![];
        assert!(set_condition(
            &mut conditions,
            condition("Ready", false, "Pending", "waiting", Some(1), t(10))
        ));
        assert!(set_condition(
            &mut conditions,
            condition("Ready", false, "Pending", "still waiting", Some(2), t(20))
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, t(10));
        assert_eq!(conditions[0].message, "still waiting");
        assert!(!is_ready(&conditions));

        assert!(set_condition(
            &mut conditions,
            condition("Ready", true, "Ready", "ok", Some(2), t(30))
        ));
        assert_eq!(conditions[0].last_transition_time, t(30));
        assert!(is_ready(&conditions));
        // identical update is not a change
        assert!(!set_condition(
            &mut conditions,
            condition("Ready", true, "Ready", "ok", Some(2), t(40))
        ));
    }

    #[test]
    fn reprovision_policy_defaults_true() {
        let p: ReprovisionPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, ReprovisionPolicy::default());
        assert!(p.update_hub_assignment && p.migrate_device_data);
    }

    #[test]
    fn secret_ref_default_key_names() {
        let r: SecretKeyRef = serde_json::from_str(r#"{"name":"k"}"#).unwrap();
        assert_eq!(r, SecretKeyRef::new("k"));
        assert_eq!(r.primary_key_name, "primaryKey");
        assert_eq!(r.secondary_key_name, "secondaryKey");
    }
}
