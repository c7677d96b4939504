//! The error type of the benchmark library.

use std::path::PathBuf;

/// What can stop a benchmark step. Device-side registration failures are not errors of the
/// benchmark: the load generator counts them by kind.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Bad arguments or fixtures.
    #[error("{0}")]
    Config(String),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The embedded registry failed.
    #[error("registry: {0}")]
    Registry(#[from] kdps_registration::registry::RegistryError),
    /// A TPM fixture is unusable.
    #[error("TPM fixture: {0}")]
    Tpm(String),
    /// The service did not get ready or did not register a device in time.
    #[error("{0}")]
    Timeout(String),
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(String),
    /// A result file holds something unexpected.
    #[error("results: {0}")]
    Results(String),
}

impl BenchError {
    /// An [`BenchError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BenchError {
        let path = path.into();
        move |source| BenchError::Io { path, source }
    }
}
