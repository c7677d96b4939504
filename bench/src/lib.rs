//! kdps benchmarks (design.md §7): a load generator that simulates devices registering over
//! new TLS connections through the device SDK, the baselines they are compared with (a bare
//! TLS-handshake server with the service's own TLS configuration; raw apiserver creates of the
//! objects the Kubernetes backend writes), store pre-population for the scale rows,
//! restart-to-serving timing and the report. `bench/run` drives it; BENCHMARKS.md has results.

pub mod error;
pub mod fixtures;
pub mod handshake;
pub mod kube;
pub mod load;
pub mod populate;
pub mod procfs;
pub mod report;
pub mod serving;
pub mod stats;
pub mod tls;
pub mod tpm;
