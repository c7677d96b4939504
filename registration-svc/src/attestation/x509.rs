//! x509 attestation.
