//! Read caches of IoTHubLinks and ProvisioningServices, and the change notifications that
//! trigger the enrollment and link controllers.
//!
//! Every enrollment reconcile needs its namespace's links and ProvisioningService. Listing
//! them from the apiserver for each of (potentially) 100 000 individual enrollments would be
//! most of the operator's API traffic, so they are read from reflector stores instead. The same
//! reflector streams produce the change notifications that trigger those controllers
//! (`Controller::reconcile_on`): a reflector updates its store *before* it yields an event, so
//! a reconcile triggered by a change always sees that change in the cache. (A separate
//! `Controller::watches` would race with the store.) Deletions are notified too.
//!
//! Both stores hold [`DeserializeGuard`]s, like every other watch.

use futures::TryStreamExt;
use kdps_api::v1alpha1::{IoTHubLink, ProvisioningService};
use kube::{
    Api, Client, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store, store::Writer},
        watcher,
    },
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A link or service changed (created, updated or deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An IoTHubLink in `namespace`, writing to `device_namespace` (when readable).
    Link {
        /// Namespace of the link.
        namespace: String,
        /// Its `spec.deviceNamespace`.
        device_namespace: Option<String>,
    },
    /// A ProvisioningService in `namespace`.
    Service {
        /// Namespace of the service.
        namespace: String,
    },
    /// Notifications were lost (a slow subscriber): reconcile everything.
    Lagged,
}

/// Readers of the caches, shared by all controllers.
#[derive(Clone)]
pub struct Caches {
    links: Store<DeserializeGuard<IoTHubLink>>,
    services: Store<DeserializeGuard<ProvisioningService>>,
    changes: broadcast::Sender<Change>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("links", &self.links.len())
            .field("services", &self.services.len())
            .finish()
    }
}

/// The writing side, driven by [`CacheWriters::run`].
pub struct CacheWriters {
    links: Writer<DeserializeGuard<IoTHubLink>>,
    services: Writer<DeserializeGuard<ProvisioningService>>,
    changes: broadcast::Sender<Change>,
}

/// New, empty caches.
pub fn caches() -> (Caches, CacheWriters) {
    let (links, links_writer) = reflector::store();
    let (services, services_writer) = reflector::store();
    let (changes, _) = broadcast::channel(4096);
    (
        Caches {
            links,
            services,
            changes: changes.clone(),
        },
        CacheWriters {
            links: links_writer,
            services: services_writer,
            changes,
        },
    )
}

impl Caches {
    /// Wait until both stores hold a complete list.
    pub async fn ready(&self) {
        let _ = self.links.wait_until_ready().await;
        let _ = self.services.wait_until_ready().await;
    }

    /// The IoTHubLinks of `namespace` that deserialize.
    pub fn links_in(&self, namespace: &str) -> Vec<IoTHubLink> {
        self.links
            .state()
            .iter()
            .filter(|g| g.namespace().as_deref() == Some(namespace))
            .filter_map(|g| g.0.as_ref().ok().cloned())
            .collect()
    }

    /// The ProvisioningService that owns `namespace` (the oldest one).
    pub fn service_of(&self, namespace: &str) -> Option<ProvisioningService> {
        crate::controller::oldest(
            self.services
                .state()
                .iter()
                .filter(|g| g.namespace().as_deref() == Some(namespace))
                .filter_map(|g| g.0.as_ref().ok().cloned()),
        )
    }

    /// A stream of changes (from now on).
    pub fn subscribe(&self) -> impl futures::Stream<Item = Change> + Send + 'static {
        let rx = self.changes.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(c) => Some((c, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some((Change::Lagged, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }
}

fn link_change(link: &DeserializeGuard<IoTHubLink>) -> Change {
    Change::Link {
        namespace: link.namespace().unwrap_or_default(),
        device_namespace: link
            .0
            .as_ref()
            .ok()
            .map(|l| l.spec.device_namespace.clone()),
    }
}

fn service_change(service: &DeserializeGuard<ProvisioningService>) -> Change {
    Change::Service {
        namespace: service.namespace().unwrap_or_default(),
    }
}

impl CacheWriters {
    /// Keep both stores up to date and publish changes until `shutdown` fires.
    pub async fn run(
        self,
        client: Client,
        watch_namespace: Option<String>,
        shutdown: CancellationToken,
    ) {
        let Self {
            links,
            services,
            changes,
        } = self;
        let (links_api, services_api): (
            Api<DeserializeGuard<IoTHubLink>>,
            Api<DeserializeGuard<ProvisioningService>>,
        ) = match &watch_namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client)),
        };
        let mut link_notifier = Notifier::new(changes.clone(), link_change);
        let mut service_notifier = Notifier::new(changes, service_change);
        let links_task = drive(
            reflector::reflector(
                links,
                watcher(links_api, watcher::Config::default()).default_backoff(),
            ),
            move |ev| link_notifier.on_event(ev),
        );
        let services_task = drive(
            reflector::reflector(
                services,
                watcher(services_api, watcher::Config::default()).default_backoff(),
            ),
            move |ev| service_notifier.on_event(ev),
        );
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = links_task => {}
            () = services_task => {}
        }
    }
}

/// Publishes a [`Change`] when an object appears, is deleted, or its spec changes
/// (`metadata.generation`). Status-only updates (a link's `deviceCount`, a service's
/// `readyReplicas`) are not published: they would re-validate every enrollment of the
/// namespace for nothing.
struct Notifier<K> {
    changes: broadcast::Sender<Change>,
    to_change: fn(&K) -> Change,
    generations: std::collections::HashMap<(String, String), Option<i64>>,
}

impl<K: kube::Resource> Notifier<K> {
    fn new(changes: broadcast::Sender<Change>, to_change: fn(&K) -> Change) -> Self {
        Self {
            changes,
            to_change,
            generations: std::collections::HashMap::new(),
        }
    }

    fn on_event(&mut self, event: &watcher::Event<K>) {
        let publish = match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let key = (obj.namespace().unwrap_or_default(), obj.name_any());
                let generation = obj.meta().generation;
                let previous = self.generations.insert(key, generation);
                // Initial lists only fill the table: controllers reconcile everything at start.
                matches!(event, watcher::Event::Apply(_)) && previous != Some(generation)
            }
            watcher::Event::Delete(obj) => {
                self.generations
                    .remove(&(obj.namespace().unwrap_or_default(), obj.name_any()));
                true
            }
            watcher::Event::Init | watcher::Event::InitDone => false,
        };
        if let (true, watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) = (publish, event) {
            // No subscribers is not an error (controllers not started yet).
            let _ = self.changes.send((self.to_change)(obj));
        }
    }
}

async fn drive<K, S>(stream: S, mut on_event: impl FnMut(&watcher::Event<K>))
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        match stream.try_next().await {
            Ok(Some(event)) => on_event(&event),
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "watching for the operator's caches failed; retrying")
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn link(generation: i64, device_count: i64) -> IoTHubLink {
        let mut l: IoTHubLink = serde_yaml::from_str(&format!(
            "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: a, namespace: iot, generation: {generation}}}\nspec: {{hostName: h.example.com, deviceNamespace: hub}}\nstatus: {{deviceCount: {device_count}}}"
        ))
        .unwrap();
        l.metadata.generation = Some(generation);
        l
    }

    fn guard(l: IoTHubLink) -> DeserializeGuard<IoTHubLink> {
        DeserializeGuard(Ok(l))
    }

    #[test]
    fn only_spec_changes_and_deletions_are_published() {
        let (tx, mut rx) = broadcast::channel(16);
        let mut n = Notifier::new(tx, link_change);
        n.on_event(&watcher::Event::Init);
        n.on_event(&watcher::Event::InitApply(guard(link(1, 0))));
        n.on_event(&watcher::Event::InitDone);
        // Status-only update: same generation.
        n.on_event(&watcher::Event::Apply(guard(link(1, 5))));
        assert!(rx.try_recv().is_err());
        // Spec change.
        n.on_event(&watcher::Event::Apply(guard(link(2, 5))));
        assert_eq!(
            rx.try_recv().unwrap(),
            Change::Link {
                namespace: "iot".into(),
                device_namespace: Some("hub".into())
            }
        );
        n.on_event(&watcher::Event::Delete(guard(link(2, 5))));
        assert!(rx.try_recv().is_ok());
        // Re-created with generation 1: a new object, published.
        n.on_event(&watcher::Event::Apply(guard(link(1, 0))));
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }
}
