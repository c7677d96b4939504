//! The controllers and what they share.
//!
//! - [`provisioning_service`]: ProvisioningService → the registration service's
//!   ServiceAccount, Roles/RoleBindings (own namespace and every linked hub namespace),
//!   serving-certificate Secret, Deployment and Service; status `idScope`, `endpoint`,
//!   `caBundle`, `readyReplicas`, conditions. A pipeline: dereference → validate → build
//!   (pure) → apply → status.
//! - [`enrollment`]: IndividualEnrollment and EnrollmentGroup `Ready` conditions.
//! - [`link`]: IoTHubLink `Ready` conditions and device counts.
//! - [`hub_rbac`]: removes hub-namespace RBAC of deleted ProvisioningServices (cross-namespace
//!   objects cannot carry owner references).
//!
//! Every watch is wrapped in [`DeserializeGuard`], so one malformed object never stops a
//! watch: such an object gets a Warning Event and waits for its next change. Failed reconciles
//! are retried with per-object exponential backoff ([`crate::backoff`]).

pub mod cache;
pub mod counts;
pub mod enrollment;
pub mod hub_rbac;
pub mod link;
pub mod provisioning_service;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Debug,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::{Namespace, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kdps_api::{
    v1alpha1::{CONDITION_READY, ready_condition},
    validation::Problem,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
    },
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{backoff::Backoff, metrics::Metrics, pki::PkiError};

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "kdps-operator";
/// Name of the reporting controller in Events.
pub const REPORTER: &str = "kdps-operator";

/// `app.kubernetes.io/name` of the registration service's objects.
pub const APP_NAME: &str = "kdps-registration";
/// Label: application name.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label: instance (the ProvisioningService name).
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// Label: component.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Label: part of.
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// Label: who manages the object; the operator's watches select on it.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "kdps-operator";
/// Label: namespace of the owning ProvisioningService (on every object the operator makes).
pub const LABEL_SERVICE_NAMESPACE: &str = "kdps.io/service-namespace";
/// Label: UID of the owning ProvisioningService (on every object the operator makes).
pub const LABEL_SERVICE_UID: &str = "kdps.io/provisioning-service-uid";
/// Annotation: `<namespace>/<name>` of the owning ProvisioningService.
pub const ANNOTATION_SERVICE: &str = "kdps.io/provisioning-service";
/// Label selector of everything the operator makes.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=kdps-operator";
/// Secrets the operator never needs to watch: device key Secrets (written by the service,
/// labelled with their hub link), service-account tokens and Helm release records.
pub const SECRET_LABEL_SELECTOR: &str = "!kdps.io/hub-link";
/// Field selector matching [`SECRET_LABEL_SELECTOR`].
pub const SECRET_FIELD_SELECTOR: &str =
    "type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1";

/// Reason of `Ready=True` on enrollments and links.
pub const REASON_VALID: &str = "Valid";
/// Reason for objects that do not deserialize.
pub const REASON_INVALID_OBJECT: &str = "InvalidObject";

/// Operator settings that reconcilers need.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace the operator runs in: holds the CA Secret and the leader Lease.
    pub operator_namespace: String,
    /// Only reconcile kdps.io objects in this namespace (all when None).
    pub watch_namespace: Option<String>,
    /// Registration service image, when a ProvisioningService does not name one.
    pub registration_image: String,
    /// Pull policy of the registration service image.
    pub registration_image_pull_policy: String,
    /// Reconciles running at once per controller.
    pub concurrency: u16,
    /// How long a published device/registration count stands.
    pub count_interval: Duration,
}

/// Shared state of all controllers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// One Event recorder for all controllers, so Events are aggregated.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Per-object backoff of failed reconciles.
    pub backoff: Backoff,
    /// Serialises creation of the CA Secret between concurrent reconciles.
    pub ca_lock: tokio::sync::Mutex<()>,
    /// Cached IoTHubLinks and ProvisioningServices, and their change notifications.
    pub caches: cache::Caches,
    /// Devices per link and DeviceRegistrations per group, from metadata watches.
    pub counts: counts::Counts,
    ready: Mutex<HashMap<&'static str, HashSet<String>>>,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// New shared state.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        instance: String,
        caches: cache::Caches,
    ) -> Self {
        let count_interval = settings.count_interval;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: REPORTER.to_owned(),
                instance: Some(instance),
            },
        );
        Self {
            client,
            settings,
            recorder,
            metrics,
            backoff: Backoff::default(),
            ca_lock: tokio::sync::Mutex::new(()),
            caches,
            counts: counts::Counts::new(
                kdps_api::v1alpha1::LABEL_HUB_LINK,
                kdps_api::v1alpha1::LABEL_ENROLLMENT,
                count_interval,
            ),
            ready: Mutex::default(),
        }
    }

    /// An Api for kdps.io objects: namespaced when the operator watches one namespace.
    pub fn scoped_api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.settings.watch_namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// Record whether the object `key` of `controller` is Ready (for the metric).
    pub fn record_ready(&self, controller: &'static str, key: &str, ready: bool) {
        let mut all = self
            .ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let set = all.entry(controller).or_default();
        if ready {
            set.insert(key.to_owned());
        } else {
            set.remove(key);
        }
        self.metrics.set_ready(controller, set.len());
    }
}

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not deserialize into its type (kept by [`DeserializeGuard`]).
    #[error("{key} cannot be read: {message}")]
    InvalidObject {
        /// `Kind/namespace/name`.
        key: String,
        /// The deserialization error.
        message: String,
    },
    /// An API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Issuing a certificate failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The object lacks a field the apiserver always sets.
    #[error("{key} has no {field}")]
    MissingField {
        /// `Kind/namespace/name`.
        key: String,
        /// The field.
        field: &'static str,
    },
    /// Building a child object failed.
    #[error("serialising {what}: {source}")]
    Serialize {
        /// What.
        what: String,
        /// Cause.
        source: serde_json::Error,
    },
}

impl Error {
    /// Stable category for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidObject { .. } => "InvalidObject",
            Self::Kube { .. } => "KubeApi",
            Self::Pki(_) => "Certificate",
            Self::MissingField { .. } => "MissingField",
            Self::Serialize { .. } => "Serialize",
        }
    }
}

/// A closure that wraps a kube error with what was being done.
pub(crate) fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// `Kind/namespace/name` of an object, for logs, backoff and metrics.
pub fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// Why a `Ready` condition is false (or what it says when true): a reason and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message (never key material).
    pub message: String,
}

impl Issue {
    /// A new issue.
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

impl From<Problem> for Issue {
    fn from(p: Problem) -> Self {
        Self::new(p.reason.as_str(), p.to_string())
    }
}

/// The `Ready` condition for a list of issues: True with `ok` when there are none, else
/// False with the first issue's reason and every message joined with `; `.
pub fn ready_from_issues(
    issues: &[Issue],
    ok: &Issue,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    match issues.first() {
        None => kdps_api::v1alpha1::condition(
            CONDITION_READY,
            true,
            &ok.reason,
            ok.message.clone(),
            generation,
            Time(now),
        ),
        Some(first) => kdps_api::v1alpha1::condition(
            CONDITION_READY,
            false,
            &first.reason,
            truncate(
                &issues
                    .iter()
                    .map(|i| i.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                MAX_MESSAGE,
            ),
            generation,
            Time(now),
        ),
    }
}

/// Condition messages and Event notes stay well below the API limits (32 KiB / 1 KiB).
const MAX_MESSAGE: usize = 1000;

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Merge `new` into `existing` conditions (keeping lastTransitionTime when the status did not
/// change); returns the merged list and whether Ready changed status or reason.
pub fn merge_conditions(existing: &[Condition], new: Vec<Condition>) -> (Vec<Condition>, bool) {
    let before = ready_condition(existing).map(|c| (c.status.clone(), c.reason.clone()));
    let mut merged = existing.to_vec();
    for c in new {
        kdps_api::v1alpha1::set_condition(&mut merged, c);
    }
    let after = ready_condition(&merged).map(|c| (c.status.clone(), c.reason.clone()));
    (merged, before != after)
}

/// Server-side apply `obj` with the operator's field manager, forcing ownership (the
/// operator is the only writer of these fields).
pub(crate) async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(kube_err(format!(
        "applying {} {}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        name
    )))
}

/// Server-side apply a status (`{"apiVersion", "kind", "status"}`) to `name`.
pub(crate) async fn apply_status<K>(
    api: &Api<DeserializeGuard<K>>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|_| ())
    .map_err(kube_err(format!(
        "updating the status of {} {name}",
        K::kind(&())
    )))
}

/// Whether `desired` (a status as JSON, nulls meaning absent) equals the current status, so
/// the write can be skipped: most periodic reconciles change nothing.
pub(crate) fn status_unchanged<S: Serialize>(
    current: Option<&S>,
    desired: &serde_json::Value,
) -> bool {
    let Some(current) = current.and_then(|c| serde_json::to_value(c).ok()) else {
        return false;
    };
    let mut desired = desired.clone();
    if let Some(map) = desired.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    current == desired
}

/// A Secret for Debug output: its name and key names, never its values.
pub(crate) fn describe_secret(secret: &k8s_openapi::api::core::v1::Secret) -> String {
    let keys: Vec<&str> = secret
        .data
        .iter()
        .flat_map(|d| d.keys())
        .map(String::as_str)
        .collect();
    format!(
        "Secret {}/{} (keys {keys:?}, values redacted)",
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Publish an Event about `reference`; failures are logged, never fatal.
pub(crate) async fn publish(
    ctx: &Context,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
    action: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(truncate(note, MAX_MESSAGE)),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(
            object = reference.name.as_deref().unwrap_or_default(),
            error = %e,
            "publishing an Event failed"
        );
    }
}

/// Publish the Event for a changed `Ready` condition.
pub(crate) async fn publish_ready(
    ctx: &Context,
    reference: &ObjectReference,
    ready: &Condition,
    action: &str,
) {
    let type_ = if ready.status == "True" {
        EventType::Normal
    } else {
        EventType::Warning
    };
    publish(ctx, reference, type_, &ready.reason, &ready.message, action).await;
}

/// Shared handling of an object that failed to deserialize: a Warning Event, then an error
/// that makes the controller wait for the object's next change.
pub(crate) async fn invalid_object<K>(
    ctx: &Context,
    guard: &DeserializeGuard<K>,
    error: &kube::core::error_boundary::InvalidObject,
) -> Error
where
    K: Resource<DynamicType = ()>,
{
    let key = object_key(guard);
    tracing::warn!(object = %key, error = %error.error, "object does not deserialize");
    publish(
        ctx,
        &guard.object_ref(&()),
        EventType::Warning,
        REASON_INVALID_OBJECT,
        &format!("the object cannot be read: {}", error.error),
        "Validate",
    )
    .await;
    Error::InvalidObject {
        key,
        message: error.error.clone(),
    }
}

/// The error policy of every controller: log, count, and retry with per-object exponential
/// backoff; an object that does not deserialize waits for its next change.
pub fn error_policy<K>(
    controller: &'static str,
) -> impl Fn(Arc<DeserializeGuard<K>>, &Error, Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    move |obj, error, ctx| {
        let key = object_key(obj.as_ref());
        ctx.metrics.failure(controller, error.category());
        if matches!(error, Error::InvalidObject { .. }) {
            return Action::await_change();
        }
        let delay = ctx.backoff.next_delay(&key);
        tracing::warn!(object = %key, error = %error, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    }
}

/// The oldest object (by creation time, then name).
pub(crate) fn oldest<K: Resource>(items: impl IntoIterator<Item = K>) -> Option<K> {
    items.into_iter().min_by(|a, b| {
        let ka = (a.meta().creation_timestamp.clone(), a.meta().name.clone());
        let kb = (b.meta().creation_timestamp.clone(), b.meta().name.clone());
        ka.cmp(&kb)
    })
}

/// Whether namespace `name` exists and is not being deleted.
pub(crate) async fn namespace_state(client: &Client, name: &str) -> Result<NamespaceState, Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = api
        .get_metadata_opt(name)
        .await
        .map_err(kube_err(format!("reading namespace {name}")))?;
    Ok(match ns {
        None => NamespaceState::Missing,
        Some(m) if m.metadata.deletion_timestamp.is_some() => NamespaceState::Terminating,
        Some(_) => NamespaceState::Active,
    })
}

/// State of a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceState {
    /// Exists.
    Active,
    /// Being deleted.
    Terminating,
    /// Does not exist.
    Missing,
}

/// Labels on every object the operator makes for a ProvisioningService.
pub fn common_labels(
    service_name: &str,
    service_namespace: &str,
    uid: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_INSTANCE.to_owned(), service_name.to_owned()),
        (LABEL_COMPONENT.to_owned(), "registration".to_owned()),
        (LABEL_PART_OF.to_owned(), "kdps".to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (
            LABEL_SERVICE_NAMESPACE.to_owned(),
            service_namespace.to_owned(),
        ),
        (LABEL_SERVICE_UID.to_owned(), uid.to_owned()),
    ])
}

/// Requeue delay for objects that are fine (certificate validity and counts are re-checked).
pub const RECHECK: Duration = Duration::from_secs(300);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn ready_condition_from_issues() {
        let ok = Issue::new("Valid", "all good");
        let c = ready_from_issues(&[], &ok, Some(3), now());
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Valid"));
        assert_eq!(c.observed_generation, Some(3));
        let issues = [
            Issue::new("SecretNotFound", "Secret \"k\" does not exist"),
            Issue::new("UnknownIoTHub", "IoTHubLink \"x\" does not exist"),
        ];
        let c = ready_from_issues(&issues, &ok, Some(3), now());
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert_eq!(
            c.message,
            "Secret \"k\" does not exist; IoTHubLink \"x\" does not exist"
        );
    }

    #[test]
    fn merge_reports_ready_changes_only() {
        let ok = Issue::new("Valid", "ok");
        let first = ready_from_issues(&[], &ok, Some(1), now());
        let (merged, changed) = merge_conditions(&[], vec![first.clone()]);
        assert!(changed);
        // Same status and reason, new message: not an Event-worthy change.
        let again = ready_from_issues(&[], &Issue::new("Valid", "still ok"), Some(2), now());
        let (merged2, changed) = merge_conditions(&merged, vec![again]);
        assert!(!changed);
        assert_eq!(merged2[0].message, "still ok");
        let bad = ready_from_issues(&[Issue::new("InvalidKey", "bad")], &ok, Some(2), now());
        assert!(merge_conditions(&merged2, vec![bad]).1);
    }

    fn offline_context() -> Arc<Context> {
        // Never contacted: error_policy does no API calls.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        Arc::new(Context::new(
            client,
            Settings {
                operator_namespace: "kdps-system".into(),
                watch_namespace: None,
                registration_image: "img".into(),
                registration_image_pull_policy: "IfNotPresent".into(),
                concurrency: 1,
                count_interval: Duration::from_secs(60),
            },
            Arc::new(Metrics::new()),
            "test".into(),
            cache::caches().0,
        ))
    }

    #[tokio::test]
    async fn error_policy_backs_off_per_object_and_waits_for_invalid_objects() {
        let ctx = offline_context();
        let policy = error_policy::<kdps_api::v1alpha1::IoTHubLink>("iothublink");
        let link = |name: &str| {
            let yaml = format!(
                "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: {name}, namespace: iot}}\nspec: {{hostName: h.example.com, deviceNamespace: hub}}"
            );
            Arc::new(
                serde_yaml::from_str::<DeserializeGuard<kdps_api::v1alpha1::IoTHubLink>>(&yaml)
                    .unwrap(),
            )
        };
        let api_error = || Error::MissingField {
            key: "k".into(),
            field: "metadata.uid",
        };
        let a = link("a");
        let delays: Vec<Action> = (0..3)
            .map(|_| policy(a.clone(), &api_error(), ctx.clone()))
            .collect();
        assert_eq!(
            delays,
            [
                Action::requeue(Duration::from_millis(500)),
                Action::requeue(Duration::from_secs(1)),
                Action::requeue(Duration::from_secs(2)),
            ]
        );
        // Another object starts from the beginning; success resets.
        assert_eq!(
            policy(link("b"), &api_error(), ctx.clone()),
            Action::requeue(Duration::from_millis(500))
        );
        ctx.backoff.reset(&object_key(a.as_ref()));
        assert_eq!(
            policy(a.clone(), &api_error(), ctx.clone()),
            Action::requeue(Duration::from_millis(500))
        );
        // An object that does not deserialize waits for its next change.
        let invalid = Error::InvalidObject {
            key: "IoTHubLink/iot/a".into(),
            message: "bad".into(),
        };
        assert_eq!(policy(a, &invalid, ctx.clone()), Action::await_change());
        let metrics = ctx.metrics.encode();
        assert!(metrics.contains("error=\"MissingField\"} 5"), "{metrics}");
        assert!(metrics.contains("error=\"InvalidObject\"} 1"), "{metrics}");
    }

    #[test]
    fn malformed_objects_are_kept_by_the_guard() {
        // A link whose weight is a string: the guard keeps the metadata for Events.
        let guard: DeserializeGuard<kdps_api::v1alpha1::IoTHubLink> = serde_yaml::from_str(
            "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {name: a, namespace: iot}\nspec: {hostName: h, deviceNamespace: hub, allocationWeight: heavy}",
        )
        .unwrap();
        let err = guard.0.as_ref().unwrap_err();
        assert!(
            err.error.contains("Invalid type string \"heavy\""),
            "{}",
            err.error
        );
        assert_eq!(object_key(&guard), "IoTHubLink/iot/a");
    }

    #[test]
    fn unchanged_status_is_detected() {
        let ok = Issue::new("Valid", "ok");
        let c = ready_from_issues(&[], &ok, Some(1), now());
        let current = kdps_api::v1alpha1::IoTHubLinkStatus {
            device_count: Some(2),
            observed_generation: Some(1),
            conditions: vec![c.clone()],
        };
        let same = serde_json::json!({"deviceCount": 2, "observedGeneration": 1, "conditions": [c], "x": null});
        assert!(status_unchanged(Some(&current), &same));
        let other =
            serde_json::json!({"deviceCount": 3, "observedGeneration": 1, "conditions": [c]});
        assert!(!status_unchanged(Some(&current), &other));
        assert!(!status_unchanged::<kdps_api::v1alpha1::IoTHubLinkStatus>(
            None, &same
        ));
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let s = "é".repeat(800);
        let t = truncate(&s, 1001);
        assert!(t.len() <= 1004);
        assert!(t.ends_with('…'));
    }
}
