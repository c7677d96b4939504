//! The kdps operator.
//!
//! It runs a registration service for every `ProvisioningService` (Deployment, Service,
//! ServiceAccount, Roles in the service's namespace and in every linked hub namespace, a
//! serving certificate from its own CA), publishes the service's ID scope, endpoint and CA
//! bundle in status, and keeps `Ready` conditions with specific reasons on IoTHubLinks,
//! IndividualEnrollments and EnrollmentGroups. See docs/operator.md.
//!
//! - [`cli`]: command line and process wiring (`kdps-operator run`, `crdgen`).
//! - [`controller`]: the reconcilers.
//! - [`pki`], [`idscope`]: certificates and ID scopes.
//! - [`backoff`], [`lease`], [`metrics`], [`admin`], [`telemetry`]: operational plumbing.

pub mod admin;
pub mod backoff;
pub mod cli;
pub mod controller;
pub mod crdgen;
pub mod idscope;
pub mod lease;
pub mod metrics;
pub mod pki;
pub mod telemetry;
