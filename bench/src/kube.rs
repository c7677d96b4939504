//! The apiserver baseline: raw creates of the objects the Kubernetes backend writes for one
//! registration — the key Secret, the Device and the DeviceRegistration, in that order, built
//! by the backend's own mapping ([`kdps_registration::kube::objects`]) from the records the
//! engine writes for a symmetric-key group member ([`crate::populate::identity`]).
//!
//! One operation is the three creates of one device, one after the other (as the backend's
//! write order requires), so "operations per second" compares directly with registrations
//! per second. The same call pre-creates the devices of the 100k-device scale row.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kdps_api::v1alpha1::{Device, DeviceRegistration};
use kdps_registration::kube::objects::{device_object, registration_object, secret_object};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::error::BenchError;
use crate::stats::{Row, RowKind, Summary};

/// Settings of one raw-create row.
#[derive(Clone, Debug)]
pub struct CreateConfig {
    /// Row name.
    pub label: String,
    /// Namespace of the DeviceRegistrations (the ProvisioningService's).
    pub namespace: String,
    /// Devices to create.
    pub devices: usize,
    /// Devices in flight at once.
    pub concurrency: usize,
    /// Registration IDs are `PREFIX-NNNNNNNN`.
    pub prefix: String,
    /// Process to sample as "the server" (kube-apiserver).
    pub server_pid: Option<u32>,
}

fn kind_of(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.is_already_exists() => "already_exists".to_owned(),
        kube::Error::Api(s) => format!("api_{}", s.code),
        _ => "transport".to_owned(),
    }
}

async fn create_one(
    client: &Client,
    namespace: &str,
    id: &str,
    i: usize,
) -> Result<(), BenchError> {
    let write = crate::populate::identity(id, i);
    let device = &write.device;
    let bad = |e: &dyn std::fmt::Display| BenchError::Kube(e.to_string());
    // The backend stamps etag and times on the registration; do the same.
    let mut record = write.registration.clone();
    record.etag = base64_etag(i);
    let registration = registration_object(&record, namespace).map_err(|e| bad(&e))?;
    let device_obj = device_object(device, namespace).map_err(|e| bad(&e))?;
    let pp = PostParams::default();
    if let Some(secret) = &write.secret {
        let obj = secret_object(secret, device);
        Api::<Secret>::namespaced(client.clone(), &secret.namespace)
            .create(&pp, &obj)
            .await
            .map_err(|e| BenchError::Kube(kind_of(&e)))?;
    }
    Api::<Device>::namespaced(client.clone(), &device.namespace)
        .create(&pp, &device_obj)
        .await
        .map_err(|e| BenchError::Kube(kind_of(&e)))?;
    Api::<DeviceRegistration>::namespaced(client.clone(), namespace)
        .create(&pp, &registration)
        .await
        .map_err(|e| BenchError::Kube(kind_of(&e)))?;
    Ok(())
}

/// An etag of the form the backend writes (base64 of a quoted UUID-sized string).
fn base64_etag(i: usize) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .encode(format!("\"{i:08x}-0000-4000-8000-000000000000\""))
}

/// Creates the objects of `config.devices` devices with `config.concurrency` in flight.
pub async fn raw_create(config: CreateConfig) -> Result<Summary, BenchError> {
    let client = Client::try_default()
        .await
        .map_err(|e| BenchError::Kube(format!("no Kubernetes client (set KUBECONFIG): {e}")))?;
    let next = Arc::new(AtomicUsize::new(0));
    let row = Row::start(config.server_pid);
    let tasks: Vec<_> = (0..config.concurrency.max(1))
        .map(|_| {
            let client = client.clone();
            let next = Arc::clone(&next);
            let namespace = config.namespace.clone();
            let prefix = config.prefix.clone();
            let total = config.devices;
            tokio::spawn(async move {
                let mut out: Vec<Result<Duration, String>> = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return out;
                    }
                    let id = format!("{prefix}-{i:08}");
                    let t = Instant::now();
                    out.push(match create_one(&client, &namespace, &id, i).await {
                        Ok(()) => Ok(t.elapsed()),
                        Err(BenchError::Kube(kind)) => Err(kind),
                        Err(e) => Err(e.to_string()),
                    });
                }
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(config.devices);
    for t in tasks {
        outcomes.extend(t.await.map_err(|e| BenchError::Kube(e.to_string()))?);
    }
    row.finish(
        RowKind {
            label: config.label,
            operation: "create Secret+Device+DeviceRegistration".to_owned(),
            protocol: "kube-api".to_owned(),
            concurrency: config.concurrency,
        },
        outcomes,
    )
}
