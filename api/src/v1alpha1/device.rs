//! `Device`: the hub-side identity of a provisioned device.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Capabilities, Condition, ID_CEL, ID_CEL_MESSAGE, SecretKeyRef, Twin};
use crate::names::device_object_name;

/// A device identity on a hub, written by the registration service into the IoTHubLink's
/// `deviceNamespace`: device ID, authentication, capabilities, twin and a back-reference to
/// the registration.
// clippy takes the repeated `type_ = ...` of the printcolumn entries for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kdps.io",
    version = "v1alpha1",
    kind = "Device",
    namespaced,
    status = "DeviceStatus",
    derive = "PartialEq",
    shortname = "kdev",
    category = "kdps",
    doc = "A device identity on an IoT hub, in the hub link's device namespace.",
    printcolumn(name = "Device ID", type_ = "string", json_path = ".spec.deviceId"),
    printcolumn(name = "Hub", type_ = "string", json_path = ".spec.hub.hostName"),
    printcolumn(
        name = "Auth",
        type_ = "string",
        json_path = ".spec.authentication.type"
    ),
    printcolumn(name = "Status", type_ = "string", json_path = ".spec.status"),
    printcolumn(
        name = "Edge",
        type_ = "boolean",
        json_path = ".spec.capabilities.iotEdge"
    ),
    printcolumn(
        name = "Registration",
        type_ = "string",
        priority = 1,
        json_path = ".spec.registrationRef.registrationId"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// The device ID on the hub (case-sensitive). The object name is derived from it.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = (ID_CEL, ID_CEL_MESSAGE))]
    pub device_id: String,

    /// The hub the identity belongs to.
    pub hub: DeviceHub,

    /// How the device authenticates to the hub.
    pub authentication: DeviceAuthentication,

    /// Capabilities of the identity.
    #[serde(default)]
    pub capabilities: Capabilities,

    /// The device twin: tags and desired properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<Twin>,

    /// `enabled` (default) or `disabled`: whether the device may connect to the hub.
    #[serde(default)]
    pub status: DeviceState,

    /// The registration that created this identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_ref: Option<RegistrationRef>,
}

/// The hub a device identity belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceHub {
    /// Host name of the hub.
    #[schemars(length(min = 1, max = 253))]
    pub host_name: String,
    /// Name of the IoTHubLink (in the ProvisioningService namespace).
    #[schemars(length(min = 1, max = 253))]
    pub link_name: String,
}

/// Authentication mechanism of a device identity (IoT Hub `authentication.type`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::v1alpha1::common::drop_description)]
pub enum AuthenticationType {
    /// Symmetric keys (SAS tokens); also used by TPM-attested devices.
    Sas,
    /// A self-signed (or individually enrolled) certificate, identified by thumbprint.
    SelfSigned,
    /// Any certificate issued by a CA the hub trusts, with CN = device ID.
    CertificateAuthority,
}

/// How a device authenticates to the hub.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = (
    "self.type != 'sas' || has(self.symmetricKey)",
    "type sas requires symmetricKey.secretRef"
))]
#[x_kube(validation = (
    "self.type != 'selfSigned' || (has(self.x509Thumbprint) && (has(self.x509Thumbprint.primarySha1) || has(self.x509Thumbprint.primarySha256)))",
    "type selfSigned requires x509Thumbprint.primarySha1 or primarySha256"
))]
pub struct DeviceAuthentication {
    /// `sas`, `selfSigned` or `certificateAuthority`.
    #[serde(rename = "type")]
    pub type_: AuthenticationType,
    /// The device's keys, for type `sas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<DeviceSymmetricKey>,
    /// Certificate thumbprints, for type `selfSigned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_thumbprint: Option<X509Thumbprint>,
}

/// The device's symmetric keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSymmetricKey {
    /// The Secret (in the Device's namespace) holding the base64 keys.
    pub secret_ref: SecretKeyRef,
}

/// Certificate thumbprints (hex) of a device's primary and secondary certificates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprint {
    /// SHA-1 thumbprint of the primary certificate (40 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 40, max = 40))]
    #[x_kube(validation = ("self.matches('^[0-9A-Fa-f]+$')", "must be hex"))]
    pub primary_sha1: Option<String>,
    /// SHA-256 thumbprint of the primary certificate (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 64, max = 64))]
    #[x_kube(validation = ("self.matches('^[0-9A-Fa-f]+$')", "must be hex"))]
    pub primary_sha256: Option<String>,
    /// SHA-1 thumbprint of the secondary certificate (40 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 40, max = 40))]
    #[x_kube(validation = ("self.matches('^[0-9A-Fa-f]+$')", "must be hex"))]
    pub secondary_sha1: Option<String>,
    /// SHA-256 thumbprint of the secondary certificate (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 64, max = 64))]
    #[x_kube(validation = ("self.matches('^[0-9A-Fa-f]+$')", "must be hex"))]
    pub secondary_sha256: Option<String>,
}

/// Whether a device may connect (IoT Hub device `status`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::v1alpha1::common::drop_description)]
pub enum DeviceState {
    /// The device may connect.
    #[default]
    Enabled,
    /// The device is blocked.
    Disabled,
}

/// Back-reference from a Device to its DeviceRegistration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRef {
    /// Namespace of the DeviceRegistration (the ProvisioningService namespace).
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the DeviceRegistration object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The registration ID (canonical).
    #[schemars(length(min = 1, max = 128))]
    pub registration_id: String,
}

impl Device {
    /// The object name for a device ID (see [`device_object_name`]).
    pub fn object_name(device_id: &str) -> String {
        device_object_name(device_id)
    }
}

/// Observed state of a Device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
