//! kdps-device: the registration software a device runs.
//!
//! [`client::ProvisioningClient`] registers a device over gRPC (or the DPS HTTPS protocol) with
//! a symmetric key, an X.509 certificate or a TPM, and returns the assigned hub and device id.

pub mod client;
pub mod error;
pub mod https;
pub mod sas;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod x509;
