//! The `kdps.io/v1alpha1` API: custom resource types, defaults and validation shared by the
//! operator and the registration service.
//!
//! - [`v1alpha1`]: the six kinds (ProvisioningService, IoTHubLink, IndividualEnrollment,
//!   EnrollmentGroup, DeviceRegistration, Device), their CEL rules and helpers.
//! - [`validation`]: checks beyond CEL (certificates, endorsement keys, key material) and
//!   whole-object validators for standalone mode, which has no apiserver.
//! - [`names`]: deterministic object names and labels for registration and device IDs.

pub mod names;
pub mod v1alpha1;
pub mod validation;

pub use v1alpha1::crds;
