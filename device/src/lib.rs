//! kdps-device: the registration software a device runs.

pub mod sas;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod x509;
