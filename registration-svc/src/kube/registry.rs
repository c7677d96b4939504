//! The Kubernetes [`Registry`]: registrations, devices and device keys as objects.
//!
//! | record                  | object                                  | namespace             |
//! |-------------------------|-----------------------------------------|-----------------------|
//! | [`RegistrationRecord`]  | `DeviceRegistration` (kdps.io)          | the service's         |
//! | [`DeviceRecord`]        | `Device` (kdps.io)                      | link `deviceNamespace`|
//! | [`DeviceSecret`]        | `Secret` (Opaque, primaryKey/secondaryKey) | link `deviceNamespace`|
//!
//! # Writes
//!
//! Every write is one server-side apply of a complete object, under one field manager, with
//! `force` (the service is the only writer of these fields). [`Registry::write_identity`]
//! applies key Secret → Device → (retire the previous Device) → DeviceRegistration. The names
//! are deterministic and the content is the full desired state, so a crash after any step
//! leaves objects that the device's retry re-applies to the same content, and the
//! registration — what the device's status is read from — is written last.
//!
//! # Optimistic concurrency
//!
//! The final apply of the DeviceRegistration carries `metadata.resourceVersion` as a
//! precondition: the apiserver refuses it with 409 Conflict when the object changed since the
//! version the caller's etag belongs to. For a registration the caller read as absent, the
//! precondition is a resource version no live object can have ([`ABSENT_RESOURCE_VERSION`]):
//! the apiserver wipes it when the apply creates the object, and refuses the apply when the
//! object exists — create-if-absent in one apply. Of two replicas racing on one device, exactly
//! one wins each round; the loser gets [`RegistryError::Conflict`], re-reads and converges to
//! the same deterministic objects.
//!
//! The resource version belonging to an etag comes from a small cache filled by every read
//! and write of this process, so a registration costs one read and three applies; when the
//! cache does not know the etag the object is read again.
//!
//! # What is never done
//!
//! No Device, Secret or DeviceRegistration is ever listed on the registration path: reads
//! are by name. Listing (the admin port) pages through the apiserver.

use std::collections::HashMap;
use std::sync::Mutex;

use ::kube::api::{Api, ListParams, Patch, PatchParams};
use ::kube::{Client, Resource, ResourceExt as _};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kdps_api::names::{device_object_name, registration_object_name};
use kdps_api::v1alpha1::{Device, DeviceRegistration};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::objects::{
    device_object, device_secret_from, record_from_device, record_from_registration,
    registration_object, secret_object, to_seconds,
};
use crate::registry::{
    BoxFuture, DeviceRecord, DeviceRef, DeviceSecret, IdentityWrite, MAX_PAGE_SIZE, Page,
    RegistrationRecord, Registry, RegistryError, canonical_registration_id, validate_failure,
};

/// Default field manager of every write.
pub const DEFAULT_FIELD_MANAGER: &str = "kdps-registration";

/// The resource version used as the precondition "the object must not exist": the
/// apiserver's resource versions are etcd revisions, and revision 1 is the first write of the
/// cluster's store, long before any DeviceRegistration. On create the apiserver wipes it.
pub const ABSENT_RESOURCE_VERSION: &str = "1";

/// Entries kept in the etag → resource version cache before it is cleared.
const VERSION_CACHE_SIZE: usize = 20_000;

/// What this process last saw of a DeviceRegistration.
#[derive(Clone, Debug)]
struct SeenVersion {
    etag: String,
    resource_version: String,
    created_at: Timestamp,
}

/// The Kubernetes-backed [`Registry`]. See the [module docs](self).
pub struct KubeRegistry {
    client: Client,
    namespace: String,
    field_manager: String,
    registrations: Api<DeviceRegistration>,
    seen: Mutex<HashMap<String, SeenVersion>>,
}

impl std::fmt::Debug for KubeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRegistry")
            .field("namespace", &self.namespace)
            .field("field_manager", &self.field_manager)
            .finish_non_exhaustive()
    }
}

/// A failed API call as a registry error: 409 is a [`RegistryError::Conflict`] only where the
/// caller says so; everything else is a [`RegistryError::Storage`] naming the object, the
/// status code and the apiserver's message (never object content).
fn api_error(operation: &'static str, object: &str, e: ::kube::Error) -> RegistryError {
    let message = match &e {
        ::kube::Error::Api(status) => {
            let hint = if status.is_forbidden() {
                " (the service's RBAC does not allow this: is the namespace linked, and does the service's Role cover it?)"
            } else if status.is_not_found() && status.message.contains("the server could not find")
            {
                " (are the kdps.io CRDs installed?)"
            } else {
                ""
            };
            format!(
                "{object}: {} (HTTP {} {}){hint}",
                status.message, status.code, status.reason
            )
        }
        other => format!("{object}: {other}"),
    };
    RegistryError::Storage { operation, message }
}

fn is_status(e: &::kube::Error, check: fn(&::kube::core::Status) -> bool) -> bool {
    matches!(e, ::kube::Error::Api(s) if check(s))
}

impl KubeRegistry {
    /// A registry writing DeviceRegistrations to `namespace` (the service's) and Devices and
    /// key Secrets to the namespaces the writes name, as `field_manager`.
    pub fn new(client: Client, namespace: &str, field_manager: &str) -> Self {
        Self {
            registrations: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_owned(),
            field_manager: field_manager.to_owned(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The namespace of the DeviceRegistrations.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn apply_params(&self) -> PatchParams {
        PatchParams::apply(&self.field_manager).force()
    }

    /// Server-side apply of a complete object.
    async fn apply<K>(&self, operation: &'static str, obj: &K) -> Result<K, RegistryError>
    where
        K: Resource<Scope = ::kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        api.patch(&name, &self.apply_params(), &Patch::Apply(obj))
            .await
            .map_err(|e| api_error(operation, &describe::<K>(&ns, &name), e))
    }

    fn remember(&self, obj: &DeviceRegistration, record: &RegistrationRecord) {
        let Some(rv) = obj.resource_version() else {
            return;
        };
        let mut seen = lock(&self.seen);
        if seen.len() >= VERSION_CACHE_SIZE {
            seen.clear();
        }
        seen.insert(
            obj.name_any(),
            SeenVersion {
                etag: record.etag.clone(),
                resource_version: rv,
                created_at: record.created_at,
            },
        );
    }

    fn forget(&self, name: &str) {
        lock(&self.seen).remove(name);
    }

    /// Reads the DeviceRegistration `name` for `registration_id` and remembers its version.
    async fn read_registration(
        &self,
        registration_id: &str,
    ) -> Result<Option<RegistrationRecord>, RegistryError> {
        let name = registration_object_name(registration_id);
        let found = self.registrations.get_opt(&name).await.map_err(|e| {
            api_error(
                "read registration",
                &describe::<DeviceRegistration>(&self.namespace, &name),
                e,
            )
        })?;
        let Some(obj) = found else {
            self.forget(&name);
            return Ok(None);
        };
        if !obj.is_for(registration_id) {
            // Two IDs mapped to one name (a 64-bit hash collision): refuse rather than
            // hand one device's record to another.
            return Err(RegistryError::Corrupt {
                key: describe::<DeviceRegistration>(&self.namespace, &name),
                reason: format!(
                    "holds registration '{}', not '{}'",
                    obj.spec.registration_id,
                    canonical_registration_id(registration_id)
                ),
            });
        }
        let record = record_from_registration(&obj)?;
        self.remember(&obj, &record);
        Ok(Some(record))
    }

    /// The resource version precondition for a write expecting `expected` (and the creation
    /// time to keep), or a conflict when the stored etag is known to differ.
    async fn precondition(
        &self,
        registration_id: &str,
        expected: Option<&str>,
    ) -> Result<(String, Option<Timestamp>), RegistryError> {
        let name = registration_object_name(registration_id);
        let cached = lock(&self.seen).get(&name).cloned();
        if let (Some(seen), Some(etag)) = (&cached, expected)
            && seen.etag == etag
        {
            return Ok((seen.resource_version.clone(), Some(seen.created_at)));
        }
        if cached.is_none() && expected.is_none() {
            return Ok((ABSENT_RESOURCE_VERSION.to_owned(), None));
        }
        // The cache does not know this etag (or believes the record exists when the caller
        // read none): read the object to decide.
        let stored = self.read_registration(registration_id).await?;
        let found = stored.as_ref().map(|r| r.etag.clone());
        if found.as_deref() != expected {
            return Err(RegistryError::Conflict {
                registration_id: canonical_registration_id(registration_id),
                expected: expected.map(str::to_owned),
                found,
            });
        }
        match lock(&self.seen).get(&name) {
            Some(seen) if stored.is_some() => {
                Ok((seen.resource_version.clone(), Some(seen.created_at)))
            }
            _ => Ok((ABSENT_RESOURCE_VERSION.to_owned(), None)),
        }
    }

    /// Writes `record` (its etag and timestamps set here) as the final step of a write, with
    /// the resource-version precondition for `expected_etag`.
    async fn write_registration(
        &self,
        mut record: RegistrationRecord,
        resource_version: String,
        created_at: Option<Timestamp>,
        expected_etag: Option<String>,
    ) -> Result<RegistrationRecord, RegistryError> {
        let now = to_seconds(Timestamp::now());
        record.registration_id = canonical_registration_id(&record.registration_id);
        record.etag = new_etag();
        record.created_at = created_at.map_or(now, to_seconds);
        record.updated_at = now;
        let mut obj = registration_object(&record, &self.namespace)?;
        obj.metadata.resource_version = Some(resource_version);
        let name = obj.name_any();
        let written = self
            .registrations
            .patch(&name, &self.apply_params(), &Patch::Apply(&obj))
            .await;
        match written {
            Ok(stored) => {
                let stored_record = record_from_registration(&stored)?;
                self.remember(&stored, &stored_record);
                Ok(stored_record)
            }
            Err(e) if is_status(&e, ::kube::core::Status::is_conflict) => {
                self.forget(&name);
                // Report what is stored now; a failure to read it does not change the verdict.
                let found = self
                    .read_registration(&record.registration_id)
                    .await
                    .ok()
                    .flatten()
                    .map(|r| r.etag);
                Err(RegistryError::Conflict {
                    registration_id: record.registration_id,
                    expected: expected_etag,
                    found,
                })
            }
            Err(e) => Err(api_error(
                "write registration",
                &describe::<DeviceRegistration>(&self.namespace, &name),
                e,
            )),
        }
    }

    /// Disables the Device the registration pointed at before, when it still exists, still
    /// belongs to this registration and is enabled.
    async fn retire(
        &self,
        previous: &DeviceRef,
        new: &DeviceRecord,
        registration_id: &str,
    ) -> Result<(), RegistryError> {
        if previous.namespace == new.namespace && previous.device_id == new.device_id {
            return Ok(());
        }
        let Some(mut old) = self
            .get_device(&previous.namespace, &previous.device_id)
            .await?
        else {
            return Ok(());
        };
        if !old.enabled
            || canonical_registration_id(&old.registration.registration_id)
                != canonical_registration_id(registration_id)
        {
            return Ok(());
        }
        old.enabled = false;
        let obj = device_object(&old, &self.namespace)?;
        self.apply("retire previous device", &obj).await.map(drop)
    }

    /// After losing the final write to another replica: when the winner's registration points
    /// at another Device than the one this write applied, disable ours — unless someone wrote
    /// it since (resource-version precondition) — so a race never leaves two enabled
    /// identities for one device. Best effort: the caller reports the conflict either way and
    /// the engine's retry converges.
    async fn disable_losing_device(
        &self,
        device: &DeviceRecord,
        written: &Device,
        registration_id: &str,
    ) {
        let Ok(stored) = self.read_registration(registration_id).await else {
            return;
        };
        let points_here = stored.as_ref().is_some_and(|r| {
            r.device_id.as_deref() == Some(device.device_id.as_str())
                && r.assigned_hub
                    .as_ref()
                    .is_some_and(|h| h.device_namespace == device.namespace)
        });
        let Some(rv) = written.resource_version() else {
            return;
        };
        if points_here || !device.enabled {
            return;
        }
        let mut disabled = device.clone();
        disabled.enabled = false;
        let Ok(mut obj) = device_object(&disabled, &self.namespace) else {
            return;
        };
        obj.metadata.resource_version = Some(rv);
        match self.apply("disable losing device", &obj).await {
            Ok(_) => tracing::info!(
                registration_id,
                namespace = %device.namespace,
                device_id = %device.device_id,
                "another replica assigned this device elsewhere first; disabled the identity this attempt wrote"
            ),
            Err(e) => {
                tracing::debug!(registration_id, error = %e, "not disabling the losing device")
            }
        }
    }

    async fn list_page<K>(
        &self,
        api: Api<K>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<K>, Option<String>), RegistryError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let limit = u32::try_from(limit.clamp(1, MAX_PAGE_SIZE)).unwrap_or(1);
        let mut params = ListParams::default().limit(limit);
        if let Some(token) = after {
            params = params.continue_token(token);
        }
        let list = api.list(&params).await.map_err(|e| {
            api_error(
                "list",
                &format!("{} list", K::kind(&K::DynamicType::default())),
                e,
            )
        })?;
        let next = list.metadata.continue_.filter(|c| !c.is_empty());
        Ok((list.items, next))
    }
}

fn describe<K: Resource>(namespace: &str, name: &str) -> String
where
    K::DynamicType: Default,
{
    format!("{} {namespace}/{name}", K::kind(&K::DynamicType::default()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn new_etag() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\"{}\"", uuid::Uuid::new_v4()))
}

impl Registry for KubeRegistry {
    fn get_registration<'a>(
        &'a self,
        registration_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RegistrationRecord>, RegistryError>> {
        Box::pin(self.read_registration(registration_id))
    }

    fn write_identity(
        &self,
        write: IdentityWrite,
    ) -> BoxFuture<'_, Result<RegistrationRecord, RegistryError>> {
        Box::pin(async move {
            write.validate()?;
            let IdentityWrite {
                secret,
                device,
                previous_device,
                registration,
                expected_etag,
            } = write;
            // Build every object before the first write: bad input writes nothing.
            let secret_obj = secret.as_ref().map(|s| secret_object(s, &device));
            let device_obj = device_object(&device, &self.namespace)?;
            registration_object(&registration, &self.namespace)?;
            let (resource_version, created_at) = self
                .precondition(&registration.registration_id, expected_etag.as_deref())
                .await?;

            // Secret → Device → retire previous Device → DeviceRegistration.
            if let Some(obj) = &secret_obj {
                self.apply("write device key secret", obj).await?;
            }
            let written_device = self.apply("write device", &device_obj).await?;
            if let Some(previous) = &previous_device {
                self.retire(previous, &device, &registration.registration_id)
                    .await?;
            }
            let registration_id = registration.registration_id.clone();
            let result = self
                .write_registration(registration, resource_version, created_at, expected_etag)
                .await;
            if matches!(result, Err(RegistryError::Conflict { .. })) {
                self.disable_losing_device(&device, &written_device, &registration_id)
                    .await;
            }
            result
        })
    }

    fn record_failure(
        &self,
        registration: RegistrationRecord,
        expected_etag: Option<String>,
    ) -> BoxFuture<'_, Result<RegistrationRecord, RegistryError>> {
        Box::pin(async move {
            validate_failure(&registration)?;
            registration_object(&registration, &self.namespace)?;
            let (resource_version, created_at) = self
                .precondition(&registration.registration_id, expected_etag.as_deref())
                .await?;
            self.write_registration(registration, resource_version, created_at, expected_etag)
                .await
        })
    }

    fn get_device<'a>(
        &'a self,
        namespace: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<DeviceRecord>, RegistryError>> {
        Box::pin(async move {
            let name = device_object_name(device_id);
            let api: Api<Device> = Api::namespaced(self.client.clone(), namespace);
            let found = api
                .get_opt(&name)
                .await
                .map_err(|e| api_error("read device", &describe::<Device>(namespace, &name), e))?;
            let Some(obj) = found else {
                return Ok(None);
            };
            if obj.spec.device_id != device_id {
                return Err(RegistryError::Corrupt {
                    key: describe::<Device>(namespace, &name),
                    reason: format!("holds device '{}', not '{device_id}'", obj.spec.device_id),
                });
            }
            record_from_device(&obj).map(Some)
        })
    }

    fn get_secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<DeviceSecret>, RegistryError>> {
        Box::pin(async move {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            let found = api.get_opt(name).await.map_err(|e| {
                api_error(
                    "read device key secret",
                    &describe::<Secret>(namespace, name),
                    e,
                )
            })?;
            found.as_ref().map(device_secret_from).transpose()
        })
    }

    fn list_registrations<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<RegistrationRecord>, RegistryError>> {
        Box::pin(async move {
            let (items, next) = self
                .list_page(self.registrations.clone(), after, limit)
                .await?;
            let items = items
                .iter()
                .map(record_from_registration)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page { items, next })
        })
    }

    fn list_devices<'a>(
        &'a self,
        namespace: Option<&'a str>,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<DeviceRecord>, RegistryError>> {
        Box::pin(async move {
            // Devices live in every linked namespace; listing them all at once would need a
            // cluster-wide list permission the service deliberately does not have.
            let namespace = namespace.ok_or_else(|| {
                RegistryError::Invalid(
                    "the Kubernetes registry lists devices one namespace at a time: pass ?namespace= (or use `kubectl get devices -A`)".into(),
                )
            })?;
            let api: Api<Device> = Api::namespaced(self.client.clone(), namespace);
            let (items, next) = self.list_page(api, after, limit).await?;
            let items = items
                .iter()
                .map(record_from_device)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page { items, next })
        })
    }

    fn count_registrations(&self) -> BoxFuture<'_, Result<u64, RegistryError>> {
        Box::pin(async move {
            // One object and the server's count of the rest: no full listing.
            let list = self
                .registrations
                .list_metadata(&ListParams::default().limit(1))
                .await
                .map_err(|e| api_error("count registrations", "DeviceRegistration list", e))?;
            let rest = list
                .metadata
                .remaining_item_count
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0);
            Ok(list.items.len() as u64 + rest)
        })
    }
}
