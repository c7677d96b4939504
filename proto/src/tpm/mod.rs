//! TPM 2.0 structures, KDFa and the DPS activation blob (dps-protocol §4).
