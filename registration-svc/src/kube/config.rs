//! The configuration of `serve` mode: kube-runtime reflectors over the ProvisioningService,
//! IoTHubLinks, IndividualEnrollments and EnrollmentGroups of the service's namespace, plus
//! the Secrets the enrollments reference, fetched by name, turned into a [`Catalog`] on every
//! change.
//!
//! - **Reflectors.** Every watched type is wrapped in [`DeserializeGuard`]: an object that
//!   does not decode is reported and left out instead of stopping its watch.
//! - **Secrets.** Only the Secrets an enrollment references are read, one `get` each (no
//!   list, no watch: the service's Role needs `get` on Secrets only). They are cached, read
//!   when an enrollment starts referencing them, and re-read once per refresh period (a bounded
//!   number per tick, so a hundred thousand enrollments do not burst the apiserver), which is
//!   how a rotated key reaches the service. A Secret that cannot be read right now keeps its
//!   last good value.
//! - **Rebuilds.** The catalog is rebuilt only when an object's identity or `generation`
//!   changes (status writes by the operator do not count), the ProvisioningService's
//!   generated ID scope changes, or a Secret's content changes. A configuration that yields no
//!   usable catalog keeps the last good one serving, as in standalone mode.
//! - **Readiness.** Ready once every reflector has listed its objects and a catalog exists.
//!
//! Validation is the same as standalone mode's (the operator's checks, from
//! [`kdps_api::validation`]); [`build`] is pure and unit-tested.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::kube::api::{Api, ListParams};
use ::kube::core::DeserializeGuard;
use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::{WatchStreamExt as _, reflector as reflect_stream};
use ::kube::{Client, Resource, ResourceExt as _};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kdps_api::v1alpha1::{EnrollmentGroup, IndividualEnrollment, IoTHubLink, ProvisioningService};
use kdps_api::validation;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, Problem, SecretData, SecretSource};
use crate::server::Readiness;

/// Errors that stop the configuration source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A kdps.io resource type is not served: the CRDs are not installed.
    #[error(
        "the {kind} API (kdps.io/v1alpha1) is not served by the cluster: install the CRDs first (kubectl apply --server-side -f crds/, or `kdps-operator crdgen | kubectl apply --server-side -f -`)"
    )]
    CrdMissing {
        /// The kind that is missing.
        kind: String,
    },
    /// The service may not read its configuration.
    #[error(
        "cannot {verb} {kind} in namespace {namespace}: {message} (grant the service's ServiceAccount get/list/watch on it; see tests/k8s/service-rbac.yaml)"
    )]
    Forbidden {
        /// What was refused.
        verb: &'static str,
        /// The kind.
        kind: String,
        /// The namespace.
        namespace: String,
        /// The apiserver's message.
        message: String,
    },
    /// The apiserver could not be reached or answered an unexpected error.
    #[error("reading {kind} in namespace {namespace}: {source}")]
    Api {
        /// The kind.
        kind: String,
        /// The namespace.
        namespace: String,
        /// The client error.
        source: ::kube::Error,
    },
}

/// Settings of the configuration source.
#[derive(Clone, Debug)]
pub struct ConfigSettings {
    /// The service's namespace (where its ProvisioningService, links, enrollments and their
    /// Secrets are).
    pub namespace: String,
    /// The ProvisioningService to serve; `None` when the namespace has exactly one.
    pub service_name: Option<String>,
    /// How often each referenced Secret is re-read.
    pub secret_refresh: Duration,
}

/// The typed objects of one namespace, as the reflectors hold them, plus the objects that did
/// not decode.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// ProvisioningServices.
    pub services: Vec<ProvisioningService>,
    /// IoTHubLinks.
    pub links: Vec<IoTHubLink>,
    /// IndividualEnrollments.
    pub individuals: Vec<IndividualEnrollment>,
    /// EnrollmentGroups.
    pub groups: Vec<EnrollmentGroup>,
    /// Objects whose content did not decode (`Kind namespace/name`, error).
    pub undecodable: Vec<Problem>,
}

impl Objects {
    /// Names of the Secrets the enrollments reference (all of them: which enrollments are
    /// usable is decided later, with the Secrets at hand).
    pub fn referenced_secrets(&self) -> BTreeSet<String> {
        let individual = self
            .individuals
            .iter()
            .filter_map(|e| e.spec.attestation.symmetric_key.as_ref());
        let group = self
            .groups
            .iter()
            .filter_map(|g| g.spec.attestation.symmetric_key.as_ref());
        individual
            .chain(group)
            .map(|s| s.secret_ref.name.clone())
            .collect()
    }

    /// Changes when anything the catalog is built from changes: object identities and
    /// generations (which move only with `spec` on kinds with a status subresource) and the
    /// ProvisioningService's generated ID scope. Status-only updates keep it.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        fn meta<K: Resource>(h: &mut DefaultHasher, kind: &str, objs: &[K]) {
            for o in objs {
                let m = o.meta();
                (kind, &m.name, &m.uid, m.generation).hash(h);
            }
        }
        meta(&mut h, "ProvisioningService", &self.services);
        for s in &self.services {
            s.status
                .as_ref()
                .and_then(|st| st.id_scope.as_ref())
                .hash(&mut h);
        }
        meta(&mut h, "IoTHubLink", &self.links);
        meta(&mut h, "IndividualEnrollment", &self.individuals);
        meta(&mut h, "EnrollmentGroup", &self.groups);
        for p in &self.undecodable {
            (&p.object, &p.reason).hash(&mut h);
        }
        h.finish()
    }
}

/// The result of [`build`].
#[derive(Debug)]
pub struct Built {
    /// The catalog, when the namespace holds a usable ProvisioningService.
    pub catalog: Option<Catalog>,
    /// Everything left out or unusable, with the reason.
    pub problems: Vec<Problem>,
}

fn obj_name<K: Resource<DynamicType = ()>>(namespace: &str, o: &K) -> String {
    format!(
        "{} {namespace}/{}",
        K::kind(&()),
        o.meta().name.as_deref().unwrap_or_default()
    )
}

/// Validates the objects of `namespace` and builds the catalog, with the checks of standalone
/// mode (and of the operator's Ready conditions): bad objects are reported and left out, an
/// invalid individual enrollment still blocks its registration ID. Objects are taken in name
/// order, so every replica builds the same catalog.
pub fn build(
    namespace: &str,
    service_name: Option<&str>,
    objects: &Objects,
    secrets: &dyn SecretSource,
    now: SystemTime,
) -> Built {
    let mut problems = objects.undecodable.clone();
    let report = |problems: &mut Vec<Problem>, object: String, p: &[validation::Problem]| {
        problems.push(Problem {
            object,
            reason: validation::summarize(p).1,
        });
    };
    let mut services: Vec<ProvisioningService> = objects.services.clone();
    services.sort_by_key(|s| s.name_any());
    let service = match service_name {
        Some(name) => services.iter().find(|s| s.name_any() == name),
        None if services.len() == 1 => services.first(),
        None => None,
    };
    let Some(service) = service else {
        let reason = match (service_name, services.len()) {
            (Some(name), _) => format!("ProvisioningService {namespace}/{name} does not exist"),
            (None, 0) => format!("no ProvisioningService in namespace {namespace}"),
            (None, n) => format!(
                "{n} ProvisioningServices in namespace {namespace} ({}); choose one with --service-name",
                services
                    .iter()
                    .map(|s| s.name_any())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        problems.push(Problem {
            object: format!("ProvisioningService in namespace {namespace}"),
            reason,
        });
        return Built {
            catalog: None,
            problems,
        };
    };
    if let Err(p) = validation::validate_provisioning_service(service, now) {
        report(&mut problems, obj_name(namespace, service), &p);
        return Built {
            catalog: None,
            problems,
        };
    }

    let mut links = Vec::new();
    let mut all_links: Vec<IoTHubLink> = objects.links.clone();
    all_links.sort_by_key(|l| l.name_any());
    for link in all_links {
        let checked = validation::validate_iot_hub_link(&link)
            .and_then(|()| validation::validate_link_references(&link, Some(&service.spec)));
        match checked {
            Ok(()) => links.push(link),
            Err(p) => report(&mut problems, obj_name(namespace, &link), &p),
        }
    }

    let mut rejected = HashMap::new();
    let mut individuals: Vec<IndividualEnrollment> = objects.individuals.clone();
    individuals.sort_by_key(|e| e.name_any());
    for ie in &individuals {
        let checked = validation::validate_individual_enrollment(ie, now).and_then(|()| {
            validation::validate_enrollment_references(
                &ie.spec.settings(),
                Some(&service.spec),
                &links,
            )
        });
        if let Err(p) = checked {
            let reason = validation::summarize(&p).1;
            problems.push(Problem {
                object: obj_name(namespace, ie),
                reason: reason.clone(),
            });
            // Kept, so that the broken enrollment blocks its device instead of a group
            // silently admitting it.
            rejected.insert(ie.name_any(), reason);
        }
    }

    let mut groups = Vec::new();
    let mut all_groups: Vec<EnrollmentGroup> = objects.groups.clone();
    all_groups.sort_by_key(|g| g.name_any());
    for g in all_groups {
        let checked = validation::validate_enrollment_group(&g, now).and_then(|()| {
            validation::validate_enrollment_references(
                &g.spec.settings(),
                Some(&service.spec),
                &links,
            )
        });
        match checked {
            Ok(()) => groups.push(g),
            Err(p) => report(&mut problems, obj_name(namespace, &g), &p),
        }
    }

    match Catalog::build(service, &links, &individuals, &groups, secrets, &rejected) {
        Ok(catalog) => {
            problems.extend(catalog.problems.iter().cloned());
            Built {
                catalog: Some(catalog),
                problems,
            }
        }
        Err(p) => {
            problems.push(p);
            Built {
                catalog: None,
                problems,
            }
        }
    }
}

/// One cached Secret.
#[derive(Clone, Debug)]
struct CachedSecret {
    /// `Ok(None)`: it does not exist. `Err`: it never could be read (the message).
    value: Result<Option<SecretData>, String>,
    fetched: Instant,
}

/// The referenced Secrets, by name. Never logs or prints values.
#[derive(Default)]
pub struct SecretCache {
    entries: HashMap<String, CachedSecret>,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCache")
            .field("names", &self.entries.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretSource for SecretCache {
    fn secret(&self, name: &str) -> Option<SecretData> {
        self.entries
            .get(name)
            .and_then(|e| e.value.as_ref().ok().cloned().flatten())
    }
}

/// Most Secrets re-read per refresh tick (a tick is a tenth of the refresh period).
const MAX_REFRESH_PER_TICK: usize = 500;
/// Concurrent Secret reads.
const SECRET_FETCH_CONCURRENCY: usize = 8;

fn secret_data(secret: &Secret) -> SecretData {
    let mut data: SecretData = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    // stringData is write-only in the API, but a client-side object may still carry it.
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    data
}

impl SecretCache {
    /// Problems reading referenced Secrets (name, message), for the logs.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out: Vec<Problem> = self
            .entries
            .iter()
            .filter_map(|(name, e)| {
                e.value.as_ref().err().map(|msg| Problem {
                    object: format!("Secret {name}"),
                    reason: msg.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.object.cmp(&b.object));
        out
    }

    /// Reads the Secrets in `wanted` that are not cached yet, re-reads up to a bounded number
    /// of those older than `max_age` (when given), and drops the ones no longer wanted.
    /// Returns whether any content changed.
    pub async fn sync(
        &mut self,
        api: &Api<Secret>,
        wanted: &BTreeSet<String>,
        max_age: Option<Duration>,
    ) -> bool {
        let before = self.entries.len();
        self.entries.retain(|name, _| wanted.contains(name));
        let mut changed = self.entries.len() != before;
        let now = Instant::now();
        let mut stale: Vec<(&String, Instant)> = match max_age {
            Some(age) => self
                .entries
                .iter()
                .filter(|(_, e)| now.duration_since(e.fetched) >= age)
                .map(|(n, e)| (n, e.fetched))
                .collect(),
            None => Vec::new(),
        };
        stale.sort_by_key(|(_, fetched)| *fetched);
        let missing = wanted.iter().filter(|n| !self.entries.contains_key(*n));
        let to_fetch: Vec<String> = missing
            .chain(stale.into_iter().take(MAX_REFRESH_PER_TICK).map(|(n, _)| n))
            .cloned()
            .collect();
        let fetched: Vec<(String, Result<Option<Secret>, ::kube::Error>)> =
            futures::stream::iter(to_fetch)
                .map(|name| async move {
                    let r = api.get_opt(&name).await;
                    (name, r)
                })
                .buffer_unordered(SECRET_FETCH_CONCURRENCY)
                .collect()
                .await;
        for (name, result) in fetched {
            let value = match result {
                Ok(found) => Ok(found.as_ref().map(secret_data)),
                Err(e) => {
                    let message = match &e {
                        ::kube::Error::Api(s) if s.is_forbidden() => format!(
                            "cannot read it: {} (the service needs `get` on Secrets in its namespace)",
                            s.message
                        ),
                        other => format!("cannot read it: {other}"),
                    };
                    match self.entries.get(&name) {
                        // A blip must not drop working keys.
                        Some(CachedSecret { value: Ok(_), .. }) => {
                            tracing::warn!(secret = %name, error = %message, "re-reading a Secret failed; keeping the last value");
                            if let Some(e) = self.entries.get_mut(&name) {
                                e.fetched = Instant::now();
                            }
                            continue;
                        }
                        _ => Err(message),
                    }
                }
            };
            let previous = self.entries.insert(
                name,
                CachedSecret {
                    value: value.clone(),
                    fetched: Instant::now(),
                },
            );
            if previous.map(|p| p.value) != Some(value) {
                changed = true;
            }
        }
        changed
    }
}

/// A reflector over `K` (guarded), driven by the returned future, which pings `changed` on
/// every change after the initial listing and logs watch errors (the watcher retries with
/// backoff).
fn reflect<K>(
    api: Api<DeserializeGuard<K>>,
    changed: Arc<Notify>,
) -> (
    Store<DeserializeGuard<K>>,
    impl std::future::Future<Output = ()> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflect_stream(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    let kind = K::kind(&()).into_owned();
    let drive = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init | Event::InitApply(_)) => {}
                Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_)) => changed.notify_one(),
                Err(e) => tracing::warn!(kind = %kind, error = %e, "watch failed; retrying"),
            }
        }
    };
    (reader, drive)
}

fn split<K: Clone + Resource<DynamicType = ()>>(
    store: &Store<DeserializeGuard<K>>,
    namespace: &str,
    undecodable: &mut Vec<Problem>,
) -> Vec<K> {
    let mut out = Vec::new();
    for guard in store.state() {
        match &guard.0 {
            Ok(obj) => out.push(obj.clone()),
            Err(invalid) => undecodable.push(Problem {
                object: format!(
                    "{} {namespace}/{}",
                    K::kind(&()),
                    invalid.metadata.name.as_deref().unwrap_or_default()
                ),
                reason: format!("cannot be decoded: {}", invalid.error),
            }),
        }
    }
    out
}

/// Checks that the four kinds are served and readable in `namespace`, so a missing CRD or
/// RBAC rule fails the start with a clear message instead of an endless watch retry.
pub async fn probe(client: &Client, namespace: &str) -> Result<(), ConfigError> {
    async fn one<K>(client: &Client, namespace: &str) -> Result<(), ConfigError>
    where
        K: Resource<DynamicType = (), Scope = ::kube::core::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let kind = K::kind(&()).into_owned();
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => Ok(()),
            Err(::kube::Error::Api(s)) if s.is_not_found() => Err(ConfigError::CrdMissing { kind }),
            Err(::kube::Error::Api(s)) if s.is_forbidden() => Err(ConfigError::Forbidden {
                verb: "list",
                kind,
                namespace: namespace.to_owned(),
                message: s.message.clone(),
            }),
            Err(source) => Err(ConfigError::Api {
                kind,
                namespace: namespace.to_owned(),
                source,
            }),
        }
    }
    one::<ProvisioningService>(client, namespace).await?;
    one::<IoTHubLink>(client, namespace).await?;
    one::<IndividualEnrollment>(client, namespace).await?;
    one::<EnrollmentGroup>(client, namespace).await?;
    // The Devices and DeviceRegistrations must exist too, or every write would fail.
    one::<kdps_api::v1alpha1::DeviceRegistration>(client, namespace).await
}

/// Pause after a change before rebuilding, so a burst of edits costs one rebuild.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Runs the configuration source until `shutdown`: keeps `catalog` current and sets
/// `readiness` once the reflectors have listed everything and a catalog exists.
pub async fn run(
    client: Client,
    settings: ConfigSettings,
    catalog: watch::Sender<Option<Arc<Catalog>>>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let ns = settings.namespace.as_str();
    let changed = Arc::new(Notify::new());
    let (services, drive_services) =
        reflect::<ProvisioningService>(Api::namespaced(client.clone(), ns), changed.clone());
    let (links, drive_links) =
        reflect::<IoTHubLink>(Api::namespaced(client.clone(), ns), changed.clone());
    let (individuals, drive_individuals) =
        reflect::<IndividualEnrollment>(Api::namespaced(client.clone(), ns), changed.clone());
    let (groups, drive_groups) =
        reflect::<EnrollmentGroup>(Api::namespaced(client.clone(), ns), changed.clone());
    let tasks = [
        tokio::spawn(drive_services),
        tokio::spawn(drive_links),
        tokio::spawn(drive_individuals),
        tokio::spawn(drive_groups),
    ];
    let abort_all = || {
        for t in &tasks {
            t.abort();
        }
    };

    let synced = async {
        services.wait_until_ready().await?;
        links.wait_until_ready().await?;
        individuals.wait_until_ready().await?;
        groups.wait_until_ready().await
    };
    tokio::select! {
        () = shutdown.cancelled() => { abort_all(); return; }
        r = synced => if r.is_err() {
            tracing::error!("a reflector stopped before its first listing");
            abort_all();
            return;
        }
    }
    tracing::info!(namespace = ns, "configuration reflectors synced");

    let secrets_api: Api<Secret> = Api::namespaced(client, ns);
    let mut secrets = SecretCache::default();
    let mut last_fingerprint = None;
    let mut last_problems: Vec<Problem> = Vec::new();
    let tick = (settings.secret_refresh / 10).max(Duration::from_secs(1));
    let mut refresh = tokio::time::interval_at(Instant::now() + tick, tick);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut max_age = None;
    loop {
        let mut undecodable = Vec::new();
        let objects = Objects {
            services: split(&services, ns, &mut undecodable),
            links: split(&links, ns, &mut undecodable),
            individuals: split(&individuals, ns, &mut undecodable),
            groups: split(&groups, ns, &mut undecodable),
            undecodable,
        };
        let secrets_changed = secrets
            .sync(&secrets_api, &objects.referenced_secrets(), max_age)
            .await;
        let fingerprint = objects.fingerprint();
        if secrets_changed || last_fingerprint != Some(fingerprint) {
            last_fingerprint = Some(fingerprint);
            let built = build(
                ns,
                settings.service_name.as_deref(),
                &objects,
                &secrets,
                SystemTime::now(),
            );
            let mut problems = secrets.problems();
            problems.extend(built.problems);
            if problems != last_problems {
                for p in &problems {
                    tracing::warn!(object = %p.object, reason = %p.reason, "configuration object not used");
                }
                last_problems = problems;
            }
            match built.catalog {
                Some(c) => {
                    let (individual, group) = c.enrollment_counts();
                    tracing::info!(
                        namespace = ns,
                        service = %c.service.name,
                        id_scope = %c.service.id_scope,
                        links = c.links.len(),
                        individual_enrollments = individual,
                        enrollment_groups = group,
                        "configuration loaded"
                    );
                    catalog.send_replace(Some(Arc::new(c)));
                    readiness.set_ready(true);
                }
                None if catalog.borrow().is_none() => {
                    tracing::error!(
                        namespace = ns,
                        "no usable configuration; registrations are refused until it is fixed"
                    );
                    readiness.set_ready(false);
                }
                None => tracing::error!(
                    namespace = ns,
                    "the configuration became unusable; keeping the previous one"
                ),
            }
        }
        max_age = None;
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = refresh.tick() => max_age = Some(settings.secret_refresh),
        }
    }
    abort_all();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const SCOPE: &str = "0ne00000A11";
    const KEY: &str =
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

    fn yaml<T: DeserializeOwned>(s: &str) -> T {
        serde_yaml::from_str(s).unwrap()
    }

    fn objects() -> Objects {
        Objects {
            services: vec![yaml(&format!(
                "{{apiVersion: kdps.io/v1alpha1, kind: ProvisioningService, metadata: {{name: dps, namespace: iot, uid: u1, generation: 1}}, spec: {{idScope: {SCOPE}}}}}"
            ))],
            links: vec![yaml(
                "{apiVersion: kdps.io/v1alpha1, kind: IoTHubLink, metadata: {name: west, namespace: iot}, spec: {hostName: west.example.com, deviceNamespace: hub-west}}",
            )],
            individuals: vec![yaml(
                "{apiVersion: kdps.io/v1alpha1, kind: IndividualEnrollment, metadata: {name: dev-1, namespace: iot}, spec: {attestation: {symmetricKey: {secretRef: {name: dev-1-keys}}}}}",
            )],
            groups: vec![yaml(
                "{apiVersion: kdps.io/v1alpha1, kind: EnrollmentGroup, metadata: {name: fleet, namespace: iot}, spec: {attestation: {symmetricKey: {secretRef: {name: fleet-keys}}}, iotHubs: [west]}}",
            )],
            undecodable: vec![],
        }
    }

    fn secrets(names: &[&str]) -> HashMap<String, SecretData> {
        names
            .iter()
            .map(|n| {
                (
                    (*n).to_owned(),
                    BTreeMap::from([("primaryKey".to_owned(), KEY.as_bytes().to_vec())]),
                )
            })
            .collect()
    }

    #[test]
    fn builds_a_catalog_from_valid_objects() {
        let o = objects();
        assert_eq!(
            o.referenced_secrets(),
            BTreeSet::from(["dev-1-keys".to_owned(), "fleet-keys".to_owned()])
        );
        let built = build(
            "iot",
            None,
            &o,
            &secrets(&["dev-1-keys", "fleet-keys"]),
            SystemTime::now(),
        );
        assert!(built.problems.is_empty(), "{:?}", built.problems);
        let c = built.catalog.unwrap();
        assert_eq!(c.service.id_scope, SCOPE);
        assert_eq!(c.enrollment_counts(), (1, 1));
        assert!(c.individual("DEV-1").is_some());
        assert_eq!(c.links["west"].device_namespace, "hub-west");
    }

    #[test]
    fn missing_secret_and_bad_objects_are_reported_not_fatal() {
        let mut o = objects();
        o.links.push(yaml(
            "{apiVersion: kdps.io/v1alpha1, kind: IoTHubLink, metadata: {name: bad, namespace: iot}, spec: {hostName: h, deviceNamespace: NOT_A_NAMESPACE}}",
        ));
        o.undecodable.push(Problem {
            object: "EnrollmentGroup iot/broken".into(),
            reason: "cannot be decoded".into(),
        });
        let built = build(
            "iot",
            None,
            &o,
            &secrets(&["fleet-keys"]),
            SystemTime::now(),
        );
        let c = built.catalog.unwrap();
        assert_eq!(c.links.len(), 1, "the invalid link is left out");
        let text = format!("{:?}", built.problems);
        assert!(text.contains("IoTHubLink iot/bad"), "{text}");
        assert!(text.contains("EnrollmentGroup iot/broken"), "{text}");
        assert!(text.contains("dev-1-keys"), "{text}");
        // The individual enrollment with the missing Secret still blocks its ID.
        assert!(c.individual("dev-1").unwrap().credentials.is_err());
        assert!(!text.contains(KEY), "keys never appear in problems");
    }

    #[test]
    fn service_selection() {
        let mut o = objects();
        let built = build("iot", Some("other"), &o, &secrets(&[]), SystemTime::now());
        assert!(built.catalog.is_none());
        assert!(format!("{:?}", built.problems).contains("iot/other does not exist"));
        o.services.push(yaml(
            "{apiVersion: kdps.io/v1alpha1, kind: ProvisioningService, metadata: {name: second, namespace: iot}, spec: {}}",
        ));
        let built = build("iot", None, &o, &secrets(&[]), SystemTime::now());
        assert!(built.catalog.is_none());
        assert!(format!("{:?}", built.problems).contains("--service-name"));
        let built = build("iot", Some("dps"), &o, &secrets(&[]), SystemTime::now());
        assert!(built.catalog.is_some());
        o.services.clear();
        let built = build("iot", None, &o, &secrets(&[]), SystemTime::now());
        assert!(format!("{:?}", built.problems).contains("no ProvisioningService"));
    }

    #[test]
    fn id_scope_comes_from_status_when_generated() {
        let mut o = objects();
        o.services = vec![yaml(
            "{apiVersion: kdps.io/v1alpha1, kind: ProvisioningService, metadata: {name: dps, namespace: iot}, spec: {}}",
        )];
        let none = build("iot", None, &o, &secrets(&[]), SystemTime::now());
        assert!(none.catalog.is_none());
        let before = o.fingerprint();
        o.services[0].status = Some(yaml("{idScope: 0ne0000FFFF}"));
        assert_ne!(
            o.fingerprint(),
            before,
            "a generated ID scope triggers a rebuild"
        );
        let built = build("iot", None, &o, &secrets(&[]), SystemTime::now());
        assert_eq!(built.catalog.unwrap().service.id_scope, "0ne0000FFFF");
    }

    #[test]
    fn fingerprint_ignores_status_but_not_generation() {
        let mut o = objects();
        let fp = o.fingerprint();
        o.groups[0].status = Some(yaml("{registrationCount: 5}"));
        assert_eq!(o.fingerprint(), fp);
        o.groups[0].metadata.generation = Some(2);
        assert_ne!(o.fingerprint(), fp);
    }

    #[test]
    fn secret_cache_never_shows_values() {
        let mut cache = SecretCache::default();
        cache.entries.insert(
            "k".into(),
            CachedSecret {
                value: Ok(Some(BTreeMap::from([(
                    "primaryKey".to_owned(),
                    KEY.as_bytes().to_vec(),
                )]))),
                fetched: Instant::now(),
            },
        );
        assert!(!format!("{cache:?}").contains(KEY));
        assert!(cache.secret("k").is_some());
        assert!(cache.secret("missing").is_none());
    }
}
