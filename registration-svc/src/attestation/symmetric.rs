//! symmetric attestation.
