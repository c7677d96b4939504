//! Pre-populates an embedded store with registered devices, through the store's own API
//! ([`EmbeddedRegistry::write_identity`], the call the engine makes), instead of a million TLS
//! registrations. The records are those the engine writes for a member of the bench's
//! symmetric-key group: a key Secret, a Device and an assigned DeviceRegistration.
//!
//! The store has no bulk-load API; `write_identity` calls from many tasks are group-committed
//! by its writer thread (up to 256 writes per transaction). Bulk loading runs with
//! `durable: false` (no fsync per transaction); one durable write at the end makes everything
//! durable, and the store is reopened to check the count.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kdps_registration::registry::embedded::{EmbeddedOptions, EmbeddedRegistry};
use kdps_registration::registry::sample::symmetric_key_write;
use kdps_registration::registry::{DeviceTwin, HubAssignment, IdentityWrite, Registry as _};
use serde::Serialize;

use crate::error::BenchError;
use crate::fixtures::NAMESPACE;

/// Hubs of `bench/manifests/iot-hub-links.yaml`: (link name, host name, device namespace).
const HUBS: [(&str, &str, &str); 2] = [
    ("hub-a", "hub-a.bench.example.com", "bench-hub-a"),
    ("hub-b", "hub-b.bench.example.com", "bench-hub-b"),
];
/// The symmetric-key group of `bench/manifests/enrollments.yaml`.
const GROUP: &str = "bench-symkey";

/// What a population run did.
#[derive(Clone, Debug, Serialize)]
pub struct PopulateReport {
    /// Devices written.
    pub devices: u64,
    /// Registrations in the store after reopening.
    pub registrations_in_store: u64,
    /// Wall time of the bulk load, seconds.
    pub seconds: f64,
    /// Devices per second.
    pub per_second: f64,
    /// Store file size, MiB.
    pub file_mib: f64,
}

/// The identity the engine writes for group member `registration_id` (keys are placeholders:
/// the store does not care about their value).
pub fn identity(registration_id: &str, i: usize) -> IdentityWrite {
    let (link, host, namespace) = HUBS[i % HUBS.len()];
    let hub = HubAssignment {
        host_name: host.into(),
        link_name: link.into(),
        device_namespace: namespace.into(),
    };
    let mut key = [0u8; 32];
    for (k, b) in key.iter_mut().zip(registration_id.bytes().cycle()) {
        *k = b;
    }
    let keys = (key.to_vec(), key.iter().rev().copied().collect());
    let mut write = symmetric_key_write(registration_id, GROUP, hub, keys, None);
    // What the engine writes for this group: no initial twin, the service's namespace.
    write.device.twin = DeviceTwin::default();
    write.device.registration.namespace = Some(NAMESPACE.into());
    write
}

/// Writes `count` devices `PREFIX-NNNNNNNN` into the store at `path` (created if missing).
pub async fn populate(
    path: &Path,
    count: usize,
    prefix: &str,
    tasks: usize,
) -> Result<PopulateReport, BenchError> {
    let started = Instant::now();
    {
        let path = path.to_path_buf();
        let registry = tokio::task::spawn_blocking(move || {
            EmbeddedRegistry::open_with(
                path,
                EmbeddedOptions {
                    durable: false,
                    max_batch: 1024,
                    ..EmbeddedOptions::default()
                },
            )
        })
        .await
        .map_err(|e| BenchError::Config(e.to_string()))??;
        let registry = Arc::new(registry);
        let tasks = tasks.max(1);
        let workers: Vec<_> = (0..tasks)
            .map(|w| {
                let registry = Arc::clone(&registry);
                let prefix = prefix.to_owned();
                tokio::spawn(async move {
                    for i in (w..count).step_by(tasks) {
                        let id = format!("{prefix}-{i:08}");
                        registry.write_identity(identity(&id, i)).await?;
                    }
                    Ok::<_, BenchError>(())
                })
            })
            .collect();
        for w in workers {
            w.await.map_err(|e| BenchError::Config(e.to_string()))??;
        }
        // Closing joins the writer thread.
        tokio::task::spawn_blocking(move || drop(registry))
            .await
            .map_err(|e| BenchError::Config(e.to_string()))?;
    }
    // One durable commit makes the non-durable ones before it durable.
    let durable = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || EmbeddedRegistry::open(path))
            .await
            .map_err(|e| BenchError::Config(e.to_string()))??
    };
    let id = format!("{prefix}-sync");
    durable.write_identity(identity(&id, 0)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let registrations_in_store = durable.count_registrations().await?;
    tokio::task::spawn_blocking(move || drop(durable))
        .await
        .map_err(|e| BenchError::Config(e.to_string()))?;
    let file_mib = std::fs::metadata(path).map_err(BenchError::io(path))?.len() as f64 / 1048576.0;
    Ok(PopulateReport {
        devices: count as u64 + 1,
        registrations_in_store,
        seconds,
        per_second: count as f64 / seconds,
        file_mib,
    })
}
