//! The `kdps.io/v1alpha1` API: custom resource types, defaults and validation shared by the
//! operator and the registration service.

pub mod v1alpha1;
pub mod validation;
