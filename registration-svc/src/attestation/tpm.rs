//! tpm attestation.
