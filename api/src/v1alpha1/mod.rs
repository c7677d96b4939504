//! The `kdps.io/v1alpha1` resources.
//!
//! One file per kind; types shared by several kinds live in [`common`]. Every kind is
//! namespaced, has a status subresource with standard conditions, short names, printer
//! columns, and belongs to the `kdps` category (`kubectl get kdps`).

pub mod common;
pub mod device;
pub mod device_registration;
pub mod enrollment_group;
pub mod individual_enrollment;
pub mod iot_hub_link;
pub mod provisioning_service;

pub use common::*;
pub use device::*;
pub use device_registration::*;
pub use enrollment_group::*;
pub use individual_enrollment::*;
pub use iot_hub_link::*;
pub use provisioning_service::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The CustomResourceDefinitions of all six kinds, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        ProvisioningService::crd(),
        IoTHubLink::crd(),
        IndividualEnrollment::crd(),
        EnrollmentGroup::crd(),
        DeviceRegistration::crd(),
        Device::crd(),
    ]
}
