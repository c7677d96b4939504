//! Validation beyond CEL.
