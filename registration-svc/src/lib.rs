//! The kdps registration service: attestation, allocation and identity writes.

pub mod admin_api;
pub mod allocation;
pub mod attestation;
pub mod catalog;
pub mod dps_https;
pub mod engine;
pub mod kube;
pub mod manifests;
pub mod metrics;
pub mod ratelimit;
pub mod registry;
pub mod server;
pub mod standalone;
pub mod tls;
