//! TPM access through tss-esapi.
