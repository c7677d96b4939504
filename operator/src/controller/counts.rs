//! Device and registration counts for status (`IoTHubLink.status.deviceCount`,
//! `EnrollmentGroup.status.registrationCount`), kept from two metadata-only watches instead of
//! listing on every reconcile.
//!
//! The 100k-device benchmark showed why: a paged list of 100k DeviceRegistrations costs the
//! apiserver ~18 CPU-seconds, and reconciles (each status write triggers one) listed on every
//! new device. A watch costs one list at start and then only its events; the tally keeps one
//! short entry per object (its name and label), about 100 bytes, not the objects. Published
//! counts are refreshed at most once per interval (`--count-interval-seconds`, default 60), so
//! a registration burst does not turn into a status write per device.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::Resource;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Objects of one kind counted by the value of one label, per namespace.
#[derive(Debug)]
pub struct Tally {
    label: &'static str,
    state: Mutex<TallyState>,
}

#[derive(Debug, Default)]
struct TallyState {
    /// Whether a complete listing has been seen.
    ready: bool,
    live: Counted,
    /// Being rebuilt after a watch restart (`Init` … `InitDone`).
    rebuilding: Option<Counted>,
}

#[derive(Debug, Default)]
struct Counted {
    /// `namespace/name` → `namespace/label value`.
    objects: HashMap<String, String>,
    /// `namespace/label value` → objects.
    counts: HashMap<String, i64>,
}

impl Counted {
    fn apply(&mut self, object: String, group: Option<String>) {
        let previous = match group {
            Some(g) => {
                *self.counts.entry(g.clone()).or_default() += 1;
                self.objects.insert(object, g)
            }
            None => self.objects.remove(&object),
        };
        if let Some(p) = previous {
            self.forget(&p);
        }
    }

    fn delete(&mut self, object: &str) {
        if let Some(p) = self.objects.remove(object) {
            self.forget(&p);
        }
    }

    fn forget(&mut self, group: &str) {
        if let Some(n) = self.counts.get_mut(group) {
            *n -= 1;
            if *n <= 0 {
                self.counts.remove(group);
            }
        }
    }
}

impl Tally {
    /// Counts objects by the value of `label`.
    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TallyState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key<K: Resource>(&self, obj: &PartialObjectMeta<K>) -> (String, Option<String>) {
        let meta = obj.meta();
        let ns = meta.namespace.as_deref().unwrap_or_default();
        let name = meta.name.as_deref().unwrap_or_default();
        let group = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(self.label))
            .map(|v| format!("{ns}/{v}"));
        (format!("{ns}/{name}"), group)
    }

    /// Applies one watch event.
    pub fn observe<K: Resource>(&self, event: watcher::Event<PartialObjectMeta<K>>) {
        let mut state = self.lock();
        match event {
            watcher::Event::Apply(obj) => {
                let (object, group) = self.key(&obj);
                state.live.apply(object.clone(), group.clone());
                // Events during a rebuild land in both, so nothing is lost at the swap.
                if let Some(r) = state.rebuilding.as_mut() {
                    r.apply(object, group);
                }
            }
            watcher::Event::Delete(obj) => {
                let (object, _) = self.key(&obj);
                state.live.delete(&object);
                if let Some(r) = state.rebuilding.as_mut() {
                    r.delete(&object);
                }
            }
            watcher::Event::Init => state.rebuilding = Some(Counted::default()),
            watcher::Event::InitApply(obj) => {
                let (object, group) = self.key(&obj);
                state
                    .rebuilding
                    .get_or_insert_with(Counted::default)
                    .apply(object, group);
            }
            watcher::Event::InitDone => {
                if let Some(r) = state.rebuilding.take() {
                    state.live = r;
                }
                state.ready = true;
            }
        }
    }

    /// Objects in `namespace` whose label is `value`; `None` until the first listing completed.
    pub fn count(&self, namespace: &str, value: &str) -> Option<i64> {
        let state = self.lock();
        state.ready.then(|| {
            state
                .live
                .counts
                .get(&format!("{namespace}/{value}"))
                .copied()
                .unwrap_or(0)
        })
    }

    /// Keeps the tally from a metadata-only watch of `api` (objects carrying the label) until
    /// `shutdown`.
    pub async fn run<K>(&self, api: Api<PartialObjectMeta<K>>, shutdown: CancellationToken)
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        K::DynamicType: Default,
    {
        let config = watcher::Config::default().labels(self.label);
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.next() => match event {
                    Some(Ok(event)) => self.observe(event),
                    Some(Err(e)) => tracing::warn!(label = self.label, error = %e, "count watch failed; retrying"),
                    None => return,
                },
            }
        }
    }
}

/// How soon to look again while a tally has not listed yet.
const NOT_READY_RECHECK: Duration = Duration::from_secs(10);

/// What [`Counts::publish`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The count for status (`None`: leave it out).
    pub value: Option<i64>,
    /// Reconcile again after this long, when the count shown is not the current one.
    pub recheck: Option<Duration>,
}

/// The counts the operator publishes in status.
#[derive(Debug)]
pub struct Counts {
    /// Devices by `kdps.io/hub-link`.
    pub devices: Tally,
    /// DeviceRegistrations by `kdps.io/enrollment`.
    pub registrations: Tally,
    published: Mutex<HashMap<String, (Instant, i64)>>,
    interval: Duration,
}

impl Counts {
    /// Tallies by the given labels; a published count stands for `interval`.
    pub fn new(
        device_label: &'static str,
        registration_label: &'static str,
        interval: Duration,
    ) -> Self {
        Self {
            devices: Tally::new(device_label),
            registrations: Tally::new(registration_label),
            published: Mutex::default(),
            interval,
        }
    }

    /// The count to publish for status key `key`, and how soon to look again.
    ///
    /// `current` is the tally's count (`None` until its first listing), `shown` what status says
    /// now. A published count stands for the interval; when the tally differs meanwhile, or is
    /// not ready yet, [`Published::recheck`] says when the object should be reconciled again so
    /// the count does not wait for the next unrelated change.
    pub fn publish(&self, key: &str, current: Option<i64>, shown: Option<i64>) -> Published {
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(n) = current else {
            return Published {
                value: shown,
                recheck: Some(NOT_READY_RECHECK),
            };
        };
        if let Some((at, last)) = published.get(key) {
            let age = at.elapsed();
            if age < self.interval {
                return Published {
                    value: Some(*last),
                    recheck: (*last != n).then(|| self.interval - age),
                };
            }
        }
        if published.len() >= 10_000 {
            published.clear();
        }
        published.insert(key.to_owned(), (Instant::now(), n));
        Published {
            value: Some(n),
            recheck: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kdps_api::v1alpha1::Device;
    use kube::api::ObjectMeta;

    fn meta(ns: &str, name: &str, link: Option<&str>) -> PartialObjectMeta<Device> {
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: link.map(|l| [("kdps.io/hub-link".to_owned(), l.to_owned())].into()),
                ..ObjectMeta::default()
            },
            _phantom: std::marker::PhantomData,
        }
    }

    #[test]
    fn counts_follow_watch_events_and_restarts() {
        let t = Tally::new("kdps.io/hub-link");
        assert_eq!(
            t.count("hub", "a"),
            None,
            "unknown before the first listing"
        );
        t.observe::<Device>(watcher::Event::Init);
        t.observe(watcher::Event::InitApply(meta("hub", "d1", Some("a"))));
        t.observe(watcher::Event::InitApply(meta("hub", "d2", Some("a"))));
        t.observe(watcher::Event::InitApply(meta("other", "d3", Some("a"))));
        t.observe::<Device>(watcher::Event::InitDone);
        assert_eq!(t.count("hub", "a"), Some(2));
        assert_eq!(t.count("other", "a"), Some(1));
        assert_eq!(t.count("hub", "b"), Some(0));
        // Modified twice, relabelled, deleted.
        t.observe(watcher::Event::Apply(meta("hub", "d1", Some("a"))));
        t.observe(watcher::Event::Apply(meta("hub", "d4", Some("a"))));
        assert_eq!(t.count("hub", "a"), Some(3));
        t.observe(watcher::Event::Apply(meta("hub", "d2", Some("b"))));
        assert_eq!(
            (t.count("hub", "a"), t.count("hub", "b")),
            (Some(2), Some(1))
        );
        t.observe(watcher::Event::Delete(meta("hub", "d4", Some("a"))));
        t.observe(watcher::Event::Apply(meta("hub", "d1", None)));
        assert_eq!(t.count("hub", "a"), Some(0));
        // A restart replaces the state with the new listing, keeping events seen meanwhile.
        t.observe::<Device>(watcher::Event::Init);
        t.observe(watcher::Event::InitApply(meta("hub", "d5", Some("a"))));
        t.observe(watcher::Event::Apply(meta("hub", "d6", Some("a"))));
        assert_eq!(t.count("hub", "a"), Some(1), "old state until InitDone");
        t.observe::<Device>(watcher::Event::InitDone);
        assert_eq!(t.count("hub", "a"), Some(2));
        assert_eq!(t.count("hub", "b"), Some(0));
    }

    #[test]
    fn published_counts_change_at_most_once_per_interval() {
        let c = Counts::new("l", "e", Duration::from_secs(60));
        let p = c.publish("k", None, Some(7));
        assert_eq!(
            p.value,
            Some(7),
            "keeps what status shows until the tally is ready"
        );
        assert_eq!(p.recheck, Some(NOT_READY_RECHECK));
        assert_eq!(c.publish("k", Some(1), Some(7)).value, Some(1));
        let p = c.publish("k", Some(5), Some(1));
        assert_eq!(p.value, Some(1));
        assert!(p.recheck.is_some_and(|d| d <= Duration::from_secs(60)));
        assert_eq!(c.publish("k", Some(1), Some(1)).recheck, None);
        let short = Counts::new("l", "e", Duration::from_millis(1));
        short.publish("k", Some(1), None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.publish("k", Some(2), Some(1)).value, Some(2));
    }
}
