//! Device-side SAS signing.
