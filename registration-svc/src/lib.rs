//! The kdps registration service: attestation, allocation and identity writes.

pub mod allocation;
pub mod attestation;
pub mod metrics;
pub mod ratelimit;
pub mod registry;
pub mod server;
pub mod tls;
