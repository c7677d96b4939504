//! Restart-to-serving time: from the moment the service process was started to `/readyz`
//! answering 200, and to the first successful registration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kdps_device::client::{Credential, Protocol, ProvisioningClient, RegisterOptions, RetryPolicy};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::error::BenchError;

/// Seconds from process start.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ServingTimes {
    /// To the first `/readyz` 200.
    pub ready_seconds: f64,
    /// To the first successful registration.
    pub first_registration_seconds: f64,
}

/// What to probe with.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Admin address (`/readyz`).
    pub admin: SocketAddr,
    /// Device endpoint.
    pub endpoint: String,
    /// CA of the server certificate (may appear only once the service is up).
    pub ca_cert: PathBuf,
    /// ID scope.
    pub id_scope: String,
    /// Key of the symmetric-key group the probe device belongs to.
    pub group_key: Vec<u8>,
    /// Give up after this long.
    pub timeout: Duration,
}

async fn readyz(admin: SocketAddr) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        s.write_all(
            format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Waits for readiness, then registers one new device; times are measured from
/// `started_unix_nanos` (when the caller started the service process).
pub async fn wait_serving(
    probe: &Probe,
    started_unix_nanos: u128,
) -> Result<ServingTimes, BenchError> {
    let since = |now: SystemTime| {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        now.saturating_sub(started_unix_nanos) as f64 / 1e9
    };
    let deadline = Instant::now() + probe.timeout;
    while !readyz(probe.admin).await {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "{} did not answer /readyz 200 within {:?}",
                probe.admin, probe.timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready_seconds = since(SystemTime::now());
    let id = format!(
        "startup-probe-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut last_error = String::new();
    loop {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "no successful registration within {:?}: {last_error}",
                probe.timeout
            )));
        }
        let options = RegisterOptions {
            endpoint: probe.endpoint.clone(),
            id_scope: probe.id_scope.clone(),
            registration_id: id.clone(),
            ca_cert: Some(probe.ca_cert.clone()),
            credential: Credential::SymmetricKey(
                kdps_proto::keys::derive_device_key(&probe.group_key, &id).to_vec(),
            ),
            payload: None,
            protocol: Protocol::Grpc,
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            call_timeout: Duration::from_secs(30),
        };
        match ProvisioningClient::new(options) {
            Ok(mut client) => match client.register().await {
                Ok(_) => break,
                Err(e) => last_error = e.to_string(),
            },
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(ServingTimes {
        ready_seconds,
        first_registration_seconds: since(SystemTime::now()),
    })
}
