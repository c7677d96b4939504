//! The load generator: many simulated devices, each registering over a new TLS connection
//! through the device SDK ([`kdps_device::client::ProvisioningClient`]), at a fixed
//! concurrency; or, for the baseline, bare TLS handshakes with the same client configuration.
//!
//! Work is handed out by a shared counter to `concurrency` tasks, so exactly that many
//! operations are in flight until the end. Registrations are not retried
//! (`RetryPolicy::max_attempts = 1`): a failure is counted under its kind instead of being
//! hidden in a longer latency. Latency is measured around the operation only (a new
//! connection, the handshake and every request of the registration); the device's credential
//! is prepared before the clock starts.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kdps_device::client::{Credential, Protocol, ProvisioningClient, RegisterOptions, RetryPolicy};
use kdps_device::x509::X509Identity;

use crate::error::BenchError;
use crate::fixtures::DeviceCa;
use crate::stats::{Row, RowKind, Summary};
use crate::tls::ClientIdentity;
use crate::tpm::SoftTpmDevice;

/// What each simulated device does.
pub enum Workload {
    /// Symmetric-key registration as a member of an enrollment group: the device key is derived
    /// from the group key for each registration ID.
    SymmetricKey {
        /// The group's primary key (raw bytes).
        group_key: Vec<u8>,
    },
    /// X.509 registration: certificate chains made before the run.
    X509 {
        /// (chain PEM, key PEM) per device.
        devices: Vec<(String, String)>,
    },
    /// TPM registration with software TPMs (device `i` uses TPM `i % len`).
    Tpm {
        /// The enrolled software TPMs.
        devices: Vec<SoftTpmDevice>,
    },
    /// Baseline: new connection + TLS handshake, nothing else; with a client certificate when
    /// given (to compare with X.509 registrations).
    Handshake {
        /// Client certificate to present.
        identity: Option<ClientIdentity>,
    },
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.operation())
    }
}

impl Workload {
    /// Operation name in the summary.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::SymmetricKey { .. } => "symmetricKey",
            Self::X509 { .. } => "x509",
            Self::Tpm { .. } => "tpm",
            Self::Handshake { identity: None } => "handshake",
            Self::Handshake { identity: Some(_) } => "handshake+clientcert",
        }
    }

    /// X.509 devices `prefix-0000000 …` signed by `ca`, made now (before timing).
    pub fn x509(ca: &DeviceCa, prefix: &str, count: usize) -> Result<Workload, BenchError> {
        let devices = (0..count)
            .map(|i| ca.device(&registration_id(prefix, i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Workload::X509 { devices })
    }
}

/// The registration ID of device `i` of a row.
pub fn registration_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:07}")
}

/// Settings of one row.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Row name in the summary.
    pub label: String,
    /// `https://host:port` of the service (or the handshake server).
    pub endpoint: String,
    /// CA that signs the server certificate.
    pub ca_cert: PathBuf,
    /// ID scope of the service.
    pub id_scope: String,
    /// Operations in the measured phase.
    pub devices: usize,
    /// Operations in flight at once.
    pub concurrency: usize,
    /// Operations before the measured phase (same concurrency, not counted).
    pub warmup: usize,
    /// Registration protocol.
    pub protocol: Protocol,
    /// Registration IDs are `PREFIX-NNNNNNN` (warm-up: `PREFIX-wNNNNNNN`).
    pub prefix: String,
    /// Time allowed for one call.
    pub timeout: Duration,
    /// The server process to sample (`/proc/PID`).
    pub server_pid: Option<u32>,
}

/// Result of one operation: its latency, or the error kind.
type OpResult = Result<Duration, &'static str>;

struct Shared {
    config: LoadConfig,
    workload: Workload,
    roots: Arc<rustls::RootCertStore>,
    host: String,
    port: u16,
}

impl Shared {
    async fn op(&self, i: usize, warmup: bool) -> OpResult {
        let id = if warmup {
            format!("{}-w{i:07}", self.config.prefix)
        } else {
            registration_id(&self.config.prefix, i)
        };
        let credential = match &self.workload {
            Workload::SymmetricKey { group_key } => Credential::SymmetricKey(
                kdps_proto::keys::derive_device_key(group_key, &id).to_vec(),
            ),
            Workload::X509 { devices } => {
                let (chain, key) = devices.get(i % devices.len().max(1)).ok_or("config")?;
                Credential::X509(
                    X509Identity::from_pem(chain.as_bytes(), key.as_bytes())
                        .map_err(|_| "identity")?,
                )
            }
            Workload::Tpm { devices } => {
                let device = devices.get(i % devices.len().max(1)).ok_or("config")?;
                let config = crate::tls::client_config(&self.roots, None).map_err(|_| "config")?;
                let started = Instant::now();
                return match device
                    .register(
                        &self.host,
                        self.port,
                        config,
                        &self.config.id_scope,
                        self.config.timeout,
                    )
                    .await
                {
                    Ok(_) => Ok(started.elapsed()),
                    Err(e) => {
                        log_first_error(&e);
                        Err(e.kind())
                    }
                };
            }
            Workload::Handshake { identity } => {
                let config = crate::tls::client_config(&self.roots, identity.as_ref())
                    .map_err(|_| "config")?;
                let started = Instant::now();
                return match crate::handshake::handshake_once(
                    &self.host,
                    self.port,
                    config,
                    self.config.timeout,
                )
                .await
                {
                    Ok(()) => Ok(started.elapsed()),
                    Err(e) => {
                        log_first_error(&e);
                        Err(e.kind())
                    }
                };
            }
        };
        let x509_id = match &credential {
            Credential::X509(x) => Some(x.registration_id().to_owned()),
            _ => None,
        };
        let options = RegisterOptions {
            endpoint: self.config.endpoint.clone(),
            id_scope: self.config.id_scope.clone(),
            registration_id: x509_id.unwrap_or(id),
            ca_cert: Some(self.config.ca_cert.clone()),
            credential,
            payload: None,
            protocol: self.config.protocol,
            retry: RetryPolicy {
                max_attempts: 1,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                max_polls: 60,
            },
            call_timeout: self.config.timeout,
        };
        let mut client = ProvisioningClient::new(options).map_err(|e| e.kind())?;
        let started = Instant::now();
        match client.register().await {
            Ok(_) => Ok(started.elapsed()),
            Err(e) => {
                log_first_error(&e);
                Err(e.kind())
            }
        }
    }
}

/// Prints the first error of each run to stderr, so a broken setup is visible at once.
fn log_first_error(e: &dyn std::fmt::Display) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| eprintln!("first error: {e}"));
}

async fn phase(shared: &Arc<Shared>, count: usize, warmup: bool) -> Vec<OpResult> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..shared.config.concurrency.max(1))
        .map(|_| {
            let shared = Arc::clone(shared);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut results = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return results;
                    }
                    results.push(shared.op(i, warmup).await);
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    for t in tasks {
        match t.await {
            Ok(r) => all.extend(r),
            Err(_) => all.push(Err("panic")),
        }
    }
    all
}

/// Runs one row: warm-up, then the measured phase; samples the server before and after.
pub async fn run(config: LoadConfig, workload: Workload) -> Result<Summary, BenchError> {
    if config.devices == 0 {
        return Err(BenchError::Config("--devices must be at least 1".into()));
    }
    let (host, port) = crate::tls::host_port(&config.endpoint)?;
    let roots = crate::tls::load_roots(&config.ca_cert)?;
    let operation = workload.operation().to_owned();
    let protocol = match (&workload, config.protocol) {
        (Workload::Handshake { .. }, _) => "tls",
        (Workload::Tpm { .. }, _) => "grpc",
        (_, Protocol::Grpc) => "grpc",
        (_, Protocol::Https) => "https",
    };
    let shared = Arc::new(Shared {
        config: config.clone(),
        workload,
        roots,
        host,
        port,
    });
    if config.warmup > 0 {
        phase(&shared, config.warmup, true).await;
    }

    let row = Row::start(config.server_pid);
    let results = phase(&shared, config.devices, false).await;
    row.finish(
        RowKind {
            label: config.label,
            operation,
            protocol: protocol.to_owned(),
            concurrency: config.concurrency,
        },
        results.into_iter().map(|r| r.map_err(str::to_owned)),
    )
}
