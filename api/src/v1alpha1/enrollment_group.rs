//! `EnrollmentGroup`: many devices sharing an X.509 signing certificate or a group key.

use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    AllocationPolicy, AttestationType, Capabilities, Condition, CustomAllocation,
    EnrollmentSettings, InitialTwin, ProvisioningStatus, ReprovisionPolicy,
    SymmetricKeyAttestation, X509Certificates,
};

/// An enrollment for a group of devices: every device whose certificate chains to one of the
/// group's signing certificates, or whose key is derived from the group key. Each device
/// registers with its own registration ID, which also becomes its device ID.
// clippy takes the repeated `type_ = ...` of the printcolumn entries for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kdps.io",
    version = "v1alpha1",
    kind = "EnrollmentGroup",
    namespaced,
    status = "EnrollmentGroupStatus",
    derive = "PartialEq",
    shortname = "egrp",
    shortname = "eg",
    category = "kdps",
    doc = "An enrollment for a group of devices sharing an X.509 signing certificate or a symmetric group key.",
    printcolumn(
        name = "Attestation",
        type_ = "string",
        json_path = ".status.attestationType"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".spec.provisioningStatus"
    ),
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".spec.allocationPolicy"
    ),
    printcolumn(
        name = "Registrations",
        type_ = "integer",
        json_path = ".status.registrationCount"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
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
pub struct EnrollmentGroupSpec {
    /// How devices prove membership: exactly one of `x509` (signing certificates) or
    /// `symmetricKey` (group keys). TPM is not supported on groups.
    pub attestation: GroupAttestation,

    /// `enabled` (default) or `disabled`; a disabled group admits no device.
    #[serde(default)]
    pub provisioning_status: ProvisioningStatus,

    /// Allocation policy (`hashed`, `geoLatency`, `static`, `custom`); inherits the
    /// ProvisioningService default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<AllocationPolicy>,

    /// Names of the IoTHubLinks devices may be assigned to; empty means every link with
    /// `applyAllocationPolicy`. Exactly one for `static`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub iot_hubs: Vec<String>,

    /// Custom-allocation webhook for policy `custom`; the ProvisioningService's is used when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation: Option<CustomAllocation>,

    /// What happens when a device registers again.
    #[serde(default)]
    pub reprovision_policy: ReprovisionPolicy,

    /// Twin each device identity starts with (tags and desired properties).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<InitialTwin>,

    /// Capabilities of the device identities.
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// Attestation of an enrollment group: exactly one of `x509` or `symmetricKey`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "[has(self.x509), has(self.symmetricKey)].exists_one(x, x)",
    "exactly one of x509 or symmetricKey must be set (enrollment groups do not support tpm)"
))]
pub struct GroupAttestation {
    /// X.509 attestation: devices present a chain to one of the signing certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<GroupX509Attestation>,
    /// Symmetric-key attestation: each device key is HMAC-SHA256(group key, registration ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyAttestation>,
}

impl GroupAttestation {
    /// The attestation type, when exactly one mechanism is set.
    pub fn attestation_type(&self) -> Option<AttestationType> {
        match (&self.x509, &self.symmetric_key) {
            (Some(_), None) => Some(AttestationType::X509),
            (None, Some(_)) => Some(AttestationType::SymmetricKey),
            _ => None,
        }
    }
}

/// X.509 attestation of a group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupX509Attestation {
    /// Root or intermediate CA certificate(s) that device chains must lead to; each must be a
    /// CA (basicConstraints CA=true).
    pub signing_certificates: X509Certificates,
}

impl EnrollmentGroupSpec {
    /// The settings shared with individual enrollments.
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

impl EnrollmentGroup {
    /// The attestation type, when exactly one mechanism is set.
    pub fn attestation_type(&self) -> Option<AttestationType> {
        self.spec.attestation.attestation_type()
    }

    /// True when the group admits devices.
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

/// Observed state of an EnrollmentGroup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroupStatus {
    /// The attestation type in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation_type: Option<AttestationType>,
    /// DeviceRegistrations admitted by this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_count: Option<i64>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions; `Ready` is true when the group is valid (signing certificates are
    /// CAs in their validity window, the key Secret exists and holds valid keys, links exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
