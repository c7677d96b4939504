//! `DeviceRegistration`: the registration record of one registration ID.
//!
//! Spec/status split: the registration service is the only writer and must write the whole
//! record in one request (server-side apply), so that a crash can never leave half a record
//! and one registration costs one write. The record therefore lives in `spec`, with the field
//! names of the DPS `registrationState` it is answered from. `status` carries only standard
//! conditions, for controllers that judge the record (e.g. an orphaned registration whose
//! enrollment was deleted).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{AttestationType, Condition, ID_CEL, ID_CEL_MESSAGE};
use crate::names::{canonical_registration_id, registration_object_name};

/// The registration record of one registration ID, written only by the registration service:
/// which enrollment admitted the device, where it was assigned, and the outcome.
// clippy takes the repeated `type_ = ...` of the printcolumn entries for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kdps.io",
    version = "v1alpha1",
    kind = "DeviceRegistration",
    namespaced,
    status = "DeviceRegistrationStatus",
    derive = "PartialEq",
    shortname = "devreg",
    shortname = "dreg",
    category = "kdps",
    doc = "The registration record of one registration ID, written by the registration service (one object per device, never one per attempt).",
    printcolumn(
        name = "Registration ID",
        type_ = "string",
        json_path = ".spec.registrationId"
    ),
    printcolumn(name = "Status", type_ = "string", json_path = ".spec.status"),
    printcolumn(
        name = "Substatus",
        type_ = "string",
        priority = 1,
        json_path = ".spec.substatus"
    ),
    printcolumn(
        name = "Assigned Hub",
        type_ = "string",
        json_path = ".spec.assignedHub"
    ),
    printcolumn(name = "Device ID", type_ = "string", json_path = ".spec.deviceId"),
    printcolumn(
        name = "Enrollment",
        type_ = "string",
        json_path = ".spec.enrollment.name"
    ),
    printcolumn(
        name = "Attestation",
        type_ = "string",
        priority = 1,
        json_path = ".spec.attestationType"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = (
    "self.status != 'assigned' || (has(self.assignedHub) && has(self.deviceId))",
    "an assigned registration needs assignedHub and deviceId"
))]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationSpec {
    /// The registration ID, canonical (lower-case). The object name is derived from it
    /// (the ID itself when it is a valid name, else a sanitised prefix plus a hash).
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = (ID_CEL, ID_CEL_MESSAGE))]
    pub registration_id: String,

    /// The enrollment that admitted the device.
    pub enrollment: EnrollmentReference,

    /// How the device was attested.
    pub attestation_type: AttestationType,

    /// Outcome: `assigned`, `assigning` (hub being changed), `failed` or `disabled`.
    pub status: RegistrationStatus,

    /// How the assignment came about: `initialAssignment`, `deviceDataMigrated`,
    /// `deviceDataReset` or `reprovisionedToInitialAssignment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<RegistrationSubstatus>,

    /// Host name of the assigned hub (the IoTHubLink `hostName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub assigned_hub: Option<String>,

    /// Name of the IoTHubLink of the assigned hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub assigned_hub_link: Option<String>,

    /// Namespace of the Device object (the link's `deviceNamespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub device_namespace: Option<String>,

    /// The device ID on the assigned hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = (ID_CEL, ID_CEL_MESSAGE))]
    pub device_id: Option<String>,

    /// Host name of the hub of the first assignment, kept across reprovisioning to report
    /// `reprovisionedToInitialAssignment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub initial_hub: Option<String>,

    /// Opaque version of the record, returned to devices as `etag`; changes on every
    /// assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub etag: Option<String>,

    /// When the registration was first created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<Time>,

    /// When the registration was last updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<Time>,

    /// The error of the last failed attempt (status `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<RegistrationError>,

    /// Data returned to the device with the assignment (`registrationState.payload`, from a
    /// custom-allocation webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_value")]
    pub payload: Option<serde_json::Value>,
}

fn free_form_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Kind of enrollment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(transform = crate::v1alpha1::common::drop_description)]
pub enum EnrollmentKind {
    /// An IndividualEnrollment.
    IndividualEnrollment,
    /// An EnrollmentGroup.
    EnrollmentGroup,
}

impl EnrollmentKind {
    /// The kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IndividualEnrollment => "IndividualEnrollment",
            Self::EnrollmentGroup => "EnrollmentGroup",
        }
    }
}

/// A reference to an enrollment in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentReference {
    /// `IndividualEnrollment` or `EnrollmentGroup`.
    pub kind: EnrollmentKind,
    /// Name of the enrollment object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Registration outcome (DPS `registrationState.status`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::v1alpha1::common::drop_description)]
pub enum RegistrationStatus {
    /// The device is assigned to a hub and its identity exists.
    Assigned,
    /// The device is being moved to another hub.
    Assigning,
    /// The last attempt failed (see `lastError`).
    Failed,
    /// The enrollment is disabled.
    Disabled,
}

impl RegistrationStatus {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assigned => "assigned",
            Self::Assigning => "assigning",
            Self::Failed => "failed",
            Self::Disabled => "disabled",
        }
    }
}

/// How an assignment came about (DPS `registrationState.substatus`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::v1alpha1::common::drop_description)]
pub enum RegistrationSubstatus {
    /// First assignment of the device.
    InitialAssignment,
    /// Moved to another hub with its twin and capabilities.
    DeviceDataMigrated,
    /// Moved to another hub and reset to the enrollment's initial twin.
    DeviceDataReset,
    /// Moved back to the hub of its first assignment.
    ReprovisionedToInitialAssignment,
}

impl RegistrationSubstatus {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InitialAssignment => "initialAssignment",
            Self::DeviceDataMigrated => "deviceDataMigrated",
            Self::DeviceDataReset => "deviceDataReset",
            Self::ReprovisionedToInitialAssignment => "reprovisionedToInitialAssignment",
        }
    }
}

/// The error of a failed registration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationError {
    /// DPS six-digit error code (the first three digits are the HTTP status), e.g. 400207.
    pub code: i32,
    /// Human-readable message.
    #[schemars(length(max = 1024))]
    pub message: String,
}

impl DeviceRegistration {
    /// The object name for a registration ID (see [`registration_object_name`]).
    pub fn object_name(registration_id: &str) -> String {
        registration_object_name(registration_id)
    }

    /// True when this record belongs to `registration_id` (case-insensitive).
    pub fn is_for(&self, registration_id: &str) -> bool {
        self.spec.registration_id == canonical_registration_id(registration_id)
    }
}

/// Observed state of a DeviceRegistration (the record itself is in `spec`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions set by controllers that judge the record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
