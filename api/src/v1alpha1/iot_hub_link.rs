//! `IoTHubLink`: a hub devices can be assigned to.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, default_true};

/// Default allocation weight of a link.
pub const DEFAULT_ALLOCATION_WEIGHT: i32 = 1;
/// Smallest allocation weight.
pub const MIN_ALLOCATION_WEIGHT: i32 = 1;
/// Largest allocation weight (DPS limit).
pub const MAX_ALLOCATION_WEIGHT: i32 = 1000;

/// A linked IoT hub: devices assigned to it are told `hostName`, and their identities (Device
/// objects and key Secrets) are written to `deviceNamespace`.
// clippy takes the repeated `type_ = ...` of the printcolumn entries for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kdps.io",
    version = "v1alpha1",
    kind = "IoTHubLink",
    namespaced,
    status = "IoTHubLinkStatus",
    derive = "PartialEq",
    shortname = "hublink",
    shortname = "hubl",
    category = "kdps",
    doc = "A linked IoT hub that the ProvisioningService in this namespace can assign devices to.",
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.hostName"),
    printcolumn(
        name = "Device Namespace",
        type_ = "string",
        json_path = ".spec.deviceNamespace"
    ),
    printcolumn(
        name = "Weight",
        type_ = "integer",
        json_path = ".spec.allocationWeight"
    ),
    printcolumn(
        name = "Apply",
        type_ = "boolean",
        json_path = ".spec.applyAllocationPolicy"
    ),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Devices", type_ = "integer", json_path = ".status.deviceCount"),
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
#[serde(rename_all = "camelCase")]
pub struct IoTHubLinkSpec {
    /// Host name of the hub, returned to devices as `assignedHub` (e.g.
    /// `hub-west.example.com`).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = (
        "self.matches('^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?([.][A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$')",
        "must be a DNS host name"
    ))]
    pub host_name: String,

    /// Namespace where the identities of devices assigned to this hub are written (Device
    /// objects and their key Secrets).
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = (
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "must be a namespace name (DNS label)"
    ))]
    pub device_namespace: String,

    /// Relative share of devices hashed to this hub, 1-1000.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub allocation_weight: i32,

    /// Whether allocation policies may pick this hub; false excludes it from allocation
    /// (devices already on it stay).
    #[serde(default = "default_true")]
    pub apply_allocation_policy: bool,

    /// Region of the hub for `geoLatency` allocation; a region name of the
    /// ProvisioningService `regions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = (
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "must be a DNS label: lower-case letters, digits and '-'"
    ))]
    pub region: Option<String>,
}

fn default_weight() -> i32 {
    DEFAULT_ALLOCATION_WEIGHT
}

/// Observed state of an IoTHubLink.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IoTHubLinkStatus {
    /// Devices whose identity is in `deviceNamespace` for this hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_count: Option<i64>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions; `Ready` is true when the link is valid (its namespace exists and
    /// its region is known).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
