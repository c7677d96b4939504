//! Wire formats that a kdps device and the kdps registration service must agree on.
//!
//! Nothing in this crate does I/O: it builds and parses bytes and strings.
//! - [`sas`]: DPS shared-access-signature tokens (dps-protocol §2).
//! - [`keys`]: per-device keys derived from enrollment-group keys.
//! - [`tpm`]: TPM 2.0 structures, KDFa and the DPS activation blob (§4).

pub mod keys;
pub mod sas;
pub mod tpm;
