//! `IndividualEnrollment`: one device, identified by its registration ID.

use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    AllocationPolicy, AttestationType, Capabilities, Condition, CustomAllocation,
    EnrollmentSettings, ID_CEL, ID_CEL_MESSAGE, InitialTwin, ProvisioningStatus, ReprovisionPolicy,
    SymmetricKeyAttestation, X509Certificates,
};
use crate::names::canonical_registration_id;

/// An enrollment for a single device. The device registers with `registrationId` (default:
/// the object name) and is attested with exactly one of `tpm`, `x509` or `symmetricKey`.
// clippy takes the repeated `type_ = ...` of the printcolumn entries for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kdps.io",
    version = "v1alpha1",
    kind = "IndividualEnrollment",
    namespaced,
    status = "IndividualEnrollmentStatus",
    derive = "PartialEq",
    shortname = "ienr",
    shortname = "ie",
    category = "kdps",
    doc = "An enrollment for one device, identified by its registration ID.",
    validation = (
        "has(self.spec.registrationId) || size(self.metadata.name) <= 128",
        "metadata.name is the registration ID when spec.registrationId is not set, so it must be at most 128 characters"
    ),
    printcolumn(name = "Registration ID", type_ = "string", json_path = ".status.registrationId"),
    printcolumn(name = "Attestation", type_ = "string", json_path = ".status.attestationType"),
    printcolumn(name = "Status", type_ = "string", json_path = ".spec.provisioningStatus"),
    printcolumn(name = "Policy", type_ = "string", priority = 1, json_path = ".spec.allocationPolicy"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", priority = 1, json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = (
    "!has(self.allocationPolicy) || self.allocationPolicy != 'static' || (has(self.iotHubs) && size(self.iotHubs) == 1)",
    "allocationPolicy static requires exactly one hub in iotHubs"
))]
#[x_kube(validation = (
    "!has(self.allocationPolicy) || self.allocationPolicy != 'custom' || has(self.customAllocation)",
    "allocationPolicy custom requires customAllocation.webhookUrl"
))]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollmentSpec {
    /// The registration ID the device presents (for X.509, the certificate subject CN).
    /// Defaults to metadata.name. At most 128 characters: letters, digits and `- . _ :`,
    /// ending with a letter, digit or `-`; compared case-insensitively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = (ID_CEL, ID_CEL_MESSAGE))]
    pub registration_id: Option<String>,

    /// The IoT hub device ID to create. Defaults to the registration ID. Same syntax as a
    /// registration ID; case-sensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = (ID_CEL, ID_CEL_MESSAGE))]
    pub device_id: Option<String>,

    /// How the device proves its identity: exactly one of `tpm`, `x509`, `symmetricKey`.
    pub attestation: IndividualAttestation,

    /// `enabled` (default) or `disabled`. A disabled individual enrollment blocks the device
    /// even when an enrollment group would admit it.
    #[serde(default)]
    pub provisioning_status: ProvisioningStatus,

    /// Allocation policy (`hashed`, `geoLatency`, `static`, `custom`); inherits the
    /// ProvisioningService default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<AllocationPolicy>,

    /// Names of the IoTHubLinks the device may be assigned to; empty means every link with
    /// `applyAllocationPolicy`. Exactly one for `static`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub iot_hubs: Vec<String>,

    /// Custom-allocation webhook for policy `custom`; the ProvisioningService's is used when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation: Option<CustomAllocation>,

    /// What happens when the device registers again.
    #[serde(default)]
    pub reprovision_policy: ReprovisionPolicy,

    /// Twin the device identity starts with (tags and desired properties).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<InitialTwin>,

    /// Capabilities of the device identity.
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// Attestation of an individual enrollment: exactly one of `tpm`, `x509`, `symmetricKey`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "[has(self.tpm), has(self.x509), has(self.symmetricKey)].exists_one(x, x)",
    "exactly one of tpm, x509 or symmetricKey must be set"
))]
pub struct IndividualAttestation {
    /// TPM 2.0 attestation with the device's endorsement key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmAttestation>,
    /// X.509 attestation with the device's own (leaf) certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<IndividualX509Attestation>,
    /// Symmetric-key attestation with the device's own keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyAttestation>,
}

impl IndividualAttestation {
    /// The attestation type, when exactly one mechanism is set.
    pub fn attestation_type(&self) -> Option<AttestationType> {
        match (&self.tpm, &self.x509, &self.symmetric_key) {
            (Some(_), None, None) => Some(AttestationType::Tpm),
            (None, Some(_), None) => Some(AttestationType::X509),
            (None, None, Some(_)) => Some(AttestationType::SymmetricKey),
            _ => None,
        }
    }
}

/// TPM attestation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TpmAttestation {
    /// The endorsement key: base64 of the marshalled TPM2B_PUBLIC (RSA 2048), as printed by
    /// `kdps-device tpm endorsement-key`.
    #[schemars(length(min = 1, max = 4096))]
    pub endorsement_key: String,
    /// The storage root key (base64 TPM2B_PUBLIC); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub storage_root_key: Option<String>,
}

/// X.509 attestation of one device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndividualX509Attestation {
    /// The device's leaf certificate(s); the subject CN is the registration ID.
    pub client_certificates: X509Certificates,
}

impl IndividualEnrollmentSpec {
    /// The settings shared with enrollment groups.
    pub fn settings(&self) -> EnrollmentSettings<'_> {
        EnrollmentSettings {
            provisioning_status: self.provisioning_status,
            allocation_policy: self.allocation_policy,
            iot_hubs: &self.iot_hubs,
            custom_allocation: self.custom_allocation.as_ref(),
            reprovision_policy: self.reprovision_policy,
            initial_twin: self.initial_twin.as_ref(),
            capabilities: self.capabilities,
        }
    }
}

impl IndividualEnrollment {
    /// The registration ID as written: `spec.registrationId`, else `metadata.name`.
    pub fn registration_id(&self) -> Option<&str> {
        self.spec
            .registration_id
            .as_deref()
            .or(self.metadata.name.as_deref())
    }

    /// The registration ID in canonical (lower-case) form, for lookups and comparisons.
    pub fn canonical_registration_id(&self) -> Option<String> {
        self.registration_id().map(canonical_registration_id)
    }

    /// The device ID to create: `spec.deviceId`, else the canonical registration ID.
    pub fn device_id(&self) -> Option<String> {
        self.spec
            .device_id
            .clone()
            .or_else(|| self.canonical_registration_id())
    }

    /// The attestation type, when exactly one mechanism is set.
    pub fn attestation_type(&self) -> Option<AttestationType> {
        self.spec.attestation.attestation_type()
    }

    /// True when the enrollment admits its device.
    pub fn is_enabled(&self) -> bool {
        self.spec.provisioning_status.is_enabled()
    }

    /// `namespace/name` for logs and errors.
    pub fn display_name(&self) -> String {
        format!(
            "{}/{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        )
    }
}

/// Observed state of an IndividualEnrollment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollmentStatus {
    /// The effective registration ID (canonical, lower-case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    /// The attestation type in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation_type: Option<AttestationType>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions; `Ready` is true when the enrollment is valid (certificates parse
    /// and are in their validity window, the endorsement key decodes, referenced Secrets and
    /// links exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
