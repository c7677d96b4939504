//! Device attestation: symmetric-key SAS tokens, X.509 client certificates and the TPM
//! endorsement-key challenge.

pub mod symmetric;
pub mod tpm;
pub mod x509;
