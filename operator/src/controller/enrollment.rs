//! IndividualEnrollment and EnrollmentGroup: `Ready` conditions with specific reasons, and
//! Events when they change.
//!
//! An enrollment is Ready when it passes [`kdps_api::validation`] (certificates parse and are
//! in their validity window, the endorsement key is well formed, IDs follow the DPS rules),
//! its key Secret exists and holds valid keys, and its `iotHubs` and inherited allocation
//! policy fit the namespace's links and ProvisioningService. The controller watches Secrets,
//! IoTHubLinks and ProvisioningServices, so a Secret that appears flips `Ready` to True
//! without waiting for a resync. Groups also get `registrationCount`.

use std::{
    fmt::Debug,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use k8s_openapi::{
    NamespaceResourceScope, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Condition,
    jiff::Timestamp,
};
use kdps_api::{
    v1alpha1::{
        EnrollmentGroup, EnrollmentSettings, IndividualEnrollment, IoTHubLink, ProvisioningService,
        SecretKeyRef, ready_condition,
    },
    validation::{
        Reason, validate_enrollment_group, validate_enrollment_references,
        validate_individual_enrollment, validate_symmetric_key_secret,
    },
};
use kube::{
    Api, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use x509_parser::{certificate::X509Certificate, pem::Pem, prelude::FromDer};

use crate::controller::{
    Context, Error, Issue, REASON_VALID, RECHECK, SECRET_FIELD_SELECTOR, SECRET_LABEL_SELECTOR,
    apply_status, cache::Change, error_policy, invalid_object, kube_err, merge_conditions,
    object_key, publish_ready, ready_from_issues, status_unchanged,
};

/// What the controller needs from either enrollment kind.
pub trait Enrollment:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Controller name (metrics label).
    const CONTROLLER: &'static str;
    /// Rules that need no other object.
    fn validate_self(&self, now: SystemTime) -> Result<(), Vec<kdps_api::validation::Problem>>;
    /// The key Secret reference, for symmetric-key attestation.
    fn secret_ref(&self) -> Option<&SecretKeyRef>;
    /// Allocation settings.
    fn settings(&self) -> EnrollmentSettings<'_>;
    /// Current conditions.
    fn conditions(&self) -> &[Condition];
    /// Kind-specific status fields (besides conditions and observedGeneration).
    fn status_fields(&self) -> serde_json::Map<String, serde_json::Value>;
    /// The current status as JSON (to skip writes that change nothing).
    fn current_status(&self) -> Option<serde_json::Value>;
    /// PEM fields whose certificates' validity windows decide `Ready` over time.
    fn certificate_pems(&self) -> Vec<&str>;
    /// Whether `registrationCount` is kept.
    const COUNTS_REGISTRATIONS: bool;
    /// Longest time between two checks of a valid object.
    const RECHECK: Duration;
}

impl Enrollment for IndividualEnrollment {
    const CONTROLLER: &'static str = "individualenrollment";
    const COUNTS_REGISTRATIONS: bool = false;
    // Individual enrollments can number one per device: besides watch events, they are only
    // re-checked when a certificate's validity window opens or closes, or every 6 hours.
    const RECHECK: Duration = Duration::from_secs(6 * 3600);

    fn current_status(&self) -> Option<serde_json::Value> {
        self.status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
    }

    fn certificate_pems(&self) -> Vec<&str> {
        let mut pems: Vec<&str> = self
            .spec
            .attestation
            .x509
            .iter()
            .flat_map(|x| {
                x.client_certificates
                    .iter()
                    .map(|(_, c)| c.certificate.as_str())
            })
            .collect();
        pems.extend(
            self.spec
                .custom_allocation
                .as_ref()
                .and_then(|c| c.ca_bundle.as_deref()),
        );
        pems
    }

    fn validate_self(&self, now: SystemTime) -> Result<(), Vec<kdps_api::validation::Problem>> {
        validate_individual_enrollment(self, now)
    }

    fn secret_ref(&self) -> Option<&SecretKeyRef> {
        self.spec
            .attestation
            .symmetric_key
            .as_ref()
            .map(|s| &s.secret_ref)
    }

    fn settings(&self) -> EnrollmentSettings<'_> {
        self.spec.settings()
    }

    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }

    fn status_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Some(id) = self.canonical_registration_id() {
            m.insert("registrationId".to_owned(), json!(id));
        }
        if let Some(t) = self.attestation_type() {
            m.insert("attestationType".to_owned(), json!(t));
        }
        m
    }
}

impl Enrollment for EnrollmentGroup {
    const CONTROLLER: &'static str = "enrollmentgroup";
    const COUNTS_REGISTRATIONS: bool = true;
    // Groups are few; they are re-validated (and registrationCount refreshed) every 5 minutes.
    const RECHECK: Duration = RECHECK;

    fn current_status(&self) -> Option<serde_json::Value> {
        self.status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
    }

    fn certificate_pems(&self) -> Vec<&str> {
        let mut pems: Vec<&str> = self
            .spec
            .attestation
            .x509
            .iter()
            .flat_map(|x| {
                x.signing_certificates
                    .iter()
                    .map(|(_, c)| c.certificate.as_str())
            })
            .collect();
        pems.extend(
            self.spec
                .custom_allocation
                .as_ref()
                .and_then(|c| c.ca_bundle.as_deref()),
        );
        pems
    }

    fn validate_self(&self, now: SystemTime) -> Result<(), Vec<kdps_api::validation::Problem>> {
        validate_enrollment_group(self, now)
    }

    fn secret_ref(&self) -> Option<&SecretKeyRef> {
        self.spec
            .attestation
            .symmetric_key
            .as_ref()
            .map(|s| &s.secret_ref)
    }

    fn settings(&self) -> EnrollmentSettings<'_> {
        self.spec.settings()
    }

    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }

    fn status_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Some(t) = self.attestation_type() {
            m.insert("attestationType".to_owned(), json!(t));
        }
        m
    }
}

/// What validation needs besides the enrollment.
#[derive(Clone, Default)]
pub struct Dereferenced {
    /// The key Secret, when the enrollment references one: `Some(None)` when it is missing.
    pub secret: Option<Option<Secret>>,
    /// The namespace's ProvisioningService.
    pub service: Option<ProvisioningService>,
    /// The namespace's IoTHubLinks.
    pub links: Vec<IoTHubLink>,
}

impl Debug for Dereferenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dereferenced")
            .field(
                "secret",
                &self
                    .secret
                    .as_ref()
                    .map(|s| s.as_ref().map(crate::controller::describe_secret)),
            )
            .field(
                "service",
                &self.service.as_ref().map(|s| s.metadata.name.clone()),
            )
            .field("links", &self.links.len())
            .finish()
    }
}

/// Every issue of `enrollment` in `namespace` (pure).
pub fn validate<E: Enrollment>(
    enrollment: &E,
    namespace: &str,
    deref: &Dereferenced,
    now: SystemTime,
) -> Vec<Issue> {
    let mut issues: Vec<Issue> = enrollment
        .validate_self(now)
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(Issue::from)
        .collect();
    if let Some(secret_ref) = enrollment.secret_ref() {
        let field = "spec.attestation.symmetricKey.secretRef";
        match &deref.secret {
            Some(Some(secret)) => {
                if let Err(problems) = validate_symmetric_key_secret(secret, secret_ref) {
                    issues.extend(problems.into_iter().map(|p| {
                        Issue::new(
                            p.reason.as_str(),
                            format!("spec.attestation.symmetricKey.{p}"),
                        )
                    }));
                }
            }
            _ => issues.push(Issue::new(
                Reason::SecretNotFound.as_str(),
                format!(
                    "{field}.name: Secret {:?} does not exist in namespace {namespace:?}",
                    secret_ref.name
                ),
            )),
        }
    }
    if let Err(problems) = validate_enrollment_references(
        &enrollment.settings(),
        deref.service.as_ref().map(|s| &s.spec),
        &deref.links,
    ) {
        issues.extend(problems.into_iter().map(Issue::from));
    }
    issues
}

async fn dereference<E: Enrollment>(
    enrollment: &E,
    namespace: &str,
    ctx: &Context,
) -> Result<Dereferenced, Error> {
    let secret = match enrollment.secret_ref() {
        Some(r) => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            Some(
                api.get_opt(&r.name)
                    .await
                    .map_err(kube_err(format!("reading Secret {namespace}/{}", r.name)))?,
            )
        }
        None => None,
    };
    // Links and the service come from the caches the triggers come from (see cache.rs).
    Ok(Dereferenced {
        secret,
        service: ctx.caches.service_of(namespace),
        links: ctx.caches.links_in(namespace),
    })
}

/// The next time after `now` (Unix seconds) at which a certificate in `pems` becomes valid or
/// expires: `Ready` can change then without any edit.
pub fn next_validity_change(pems: &[&str], now: i64) -> Option<i64> {
    pems.iter()
        .flat_map(|pem| Pem::iter_from_buffer(pem.as_bytes()).filter_map(Result::ok))
        .filter(|p| p.label == "CERTIFICATE")
        .filter_map(|p| {
            X509Certificate::from_der(&p.contents).ok().map(|(_, c)| {
                let v = c.validity();
                [v.not_before.timestamp(), v.not_after.timestamp()]
            })
        })
        .flatten()
        .filter(|t| *t > now)
        .min()
}

/// Reconcile one enrollment.
pub async fn reconcile<E: Enrollment>(
    guard: Arc<DeserializeGuard<E>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(E::CONTROLLER);
    let enrollment = match &guard.0 {
        Ok(e) => e,
        Err(e) => return Err(invalid_object(&ctx, guard.as_ref(), e).await),
    };
    let key = object_key(enrollment);
    let namespace = enrollment.namespace().ok_or_else(|| Error::MissingField {
        key: key.clone(),
        field: "metadata.namespace",
    })?;
    let name = enrollment.name_any();
    let deref = dereference(enrollment, &namespace, &ctx).await?;
    let issues = validate(enrollment, &namespace, &deref, SystemTime::now());
    let now = Timestamp::now();
    let generation = enrollment.meta().generation;
    let ready = ready_from_issues(
        &issues,
        &Issue::new(
            REASON_VALID,
            "the enrollment is valid and its references resolve",
        ),
        generation,
        now,
    );
    let is_ready = issues.is_empty();
    let (conditions, changed) = merge_conditions(enrollment.conditions(), vec![ready]);
    let mut status = enrollment.status_fields();
    status.insert("observedGeneration".to_owned(), json!(generation));
    status.insert("conditions".to_owned(), json!(conditions));
    let mut recheck = E::RECHECK;
    if E::COUNTS_REGISTRATIONS {
        let label = format!("{}.{name}", E::kind(&())).to_ascii_lowercase();
        let published = ctx.counts.publish(
            &format!("{}/{key}", E::CONTROLLER),
            ctx.counts.registrations.count(&namespace, &label),
            enrollment
                .current_status()
                .and_then(|s| s.get("registrationCount")?.as_i64()),
        );
        if let Some(n) = published.value {
            status.insert("registrationCount".to_owned(), json!(n));
        }
        recheck = published.recheck.map_or(recheck, |d| d.min(recheck));
    }
    let status = serde_json::Value::Object(status);
    if !status_unchanged(enrollment.current_status().as_ref(), &status) {
        let api: Api<DeserializeGuard<E>> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_status::<E>(&api, &name, status).await?;
    }
    ctx.record_ready(E::CONTROLLER, &key, is_ready);
    if changed && let Some(c) = ready_condition(&conditions) {
        publish_ready(&ctx, &enrollment.object_ref(&()), c, "Validate").await;
    }
    ctx.backoff.reset(&key);
    // Certificates become valid or expire without any watch event.
    let next = next_validity_change(&enrollment.certificate_pems(), now.as_second())
        .map(|t| Duration::from_secs(u64::try_from(t - now.as_second()).unwrap_or(0) + 1));
    Ok(Action::requeue(next.map_or(recheck, |d| d.min(recheck))))
}

/// The enrollments of the controller's store that a cache change can affect.
fn affected<E: Enrollment>(
    store: &Store<DeserializeGuard<E>>,
    change: &Change,
) -> Vec<ObjectRef<DeserializeGuard<E>>> {
    store
        .state()
        .into_iter()
        .filter(|g| match change {
            Change::Link { namespace, .. } | Change::Service { namespace } => {
                g.namespace().as_deref() == Some(namespace.as_str())
            }
            Change::Lagged => true,
        })
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// Run the controller of enrollment kind `E` until `shutdown` fires.
pub async fn run<E: Enrollment>(ctx: Arc<Context>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let changes = ctx.caches.subscribe();
    ctx.caches.ready().await;
    let api: Api<DeserializeGuard<E>> = ctx.scoped_api();
    let controller = Controller::new(api, watcher::Config::default()).with_config(
        kube::runtime::controller::Config::default().concurrency(ctx.settings.concurrency),
    );
    let store = controller.store();
    let by_secret = {
        let store = store.clone();
        move |secret: DeserializeGuard<Secret>| {
            let ns = secret.namespace();
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|g| g.namespace() == ns)
                .filter(|g| {
                    g.0.as_ref()
                        .ok()
                        .and_then(|e| e.secret_ref())
                        .is_some_and(|r| r.name == name)
                })
                .map(|g| ObjectRef::from_obj(g.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let triggers = changes.flat_map(move |change| futures::stream::iter(affected(&store, &change)));
    let secrets: Api<DeserializeGuard<Secret>> = match &ctx.settings.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let shutdown_signal = shutdown.clone();
    controller
        .watches(
            secrets,
            watcher::Config::default()
                .labels(SECRET_LABEL_SELECTOR)
                .fields(SECRET_FIELD_SELECTOR),
            by_secret,
        )
        .reconcile_on(triggers)
        .graceful_shutdown_on(async move { shutdown_signal.cancelled().await })
        .run(reconcile::<E>, error_policy::<E>(E::CONTROLLER), ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{ByteString, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    use super::*;

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("iot".into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        }
    }

    fn link(name: &str) -> IoTHubLink {
        serde_yaml::from_str(&format!(
            "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: {name}, namespace: iot}}\nspec: {{hostName: {name}.example.com, deviceNamespace: {name}}}"
        ))
        .unwrap()
    }

    const GROUP: &str = "apiVersion: kdps.io/v1alpha1\nkind: EnrollmentGroup\nmetadata: {name: sensors, namespace: iot}\nspec:\n  attestation: {symmetricKey: {secretRef: {name: sensors-keys}}}\n  iotHubs: [hub-west]";
    // 32 bytes, base64.
    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn missing_secret_is_secret_not_found_and_a_good_one_is_valid() {
        let group: EnrollmentGroup = serde_yaml::from_str(GROUP).unwrap();
        let mut deref = Dereferenced {
            secret: Some(None),
            service: None,
            links: vec![link("hub-west")],
        };
        let issues = validate(&group, "iot", &deref, SystemTime::now());
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].reason, "SecretNotFound");
        assert_eq!(
            issues[0].message,
            "spec.attestation.symmetricKey.secretRef.name: Secret \"sensors-keys\" does not exist in namespace \"iot\""
        );
        deref.secret = Some(Some(secret("sensors-keys", &[("primaryKey", KEY)])));
        assert_eq!(validate(&group, "iot", &deref, SystemTime::now()), vec![]);
    }

    #[test]
    fn debug_output_never_shows_keys() {
        let deref = Dereferenced {
            secret: Some(Some(secret("k", &[("primaryKey", KEY)]))),
            service: None,
            links: vec![],
        };
        let text = format!("{deref:?}");
        assert!(
            text.contains("Secret iot/k (keys") && text.contains("values redacted"),
            "{text}"
        );
        assert!(
            !text.contains(KEY) && !text.contains("77, 68, 69"),
            "{text}"
        );
    }

    #[test]
    fn bad_key_and_unknown_hub_are_reported_without_key_material() {
        let group: EnrollmentGroup = serde_yaml::from_str(GROUP).unwrap();
        let deref = Dereferenced {
            secret: Some(Some(secret("sensors-keys", &[("primaryKey", "c2hvcnQ=")]))),
            service: None,
            links: vec![],
        };
        let issues = validate(&group, "iot", &deref, SystemTime::now());
        let reasons: Vec<_> = issues.iter().map(|i| i.reason.as_str()).collect();
        assert_eq!(reasons, ["InvalidKey", "UnknownIoTHub"]);
        assert!(issues.iter().all(|i| !i.message.contains("c2hvcnQ")));
        assert!(
            issues[1]
                .message
                .contains("IoTHubLink \"hub-west\" does not exist")
        );
    }

    #[test]
    fn individual_certificate_problems_use_api_reasons() {
        let ie: IndividualEnrollment = serde_yaml::from_str(
            "apiVersion: kdps.io/v1alpha1\nkind: IndividualEnrollment\nmetadata: {name: dev-1, namespace: iot}\nspec:\n  attestation: {x509: {clientCertificates: {primary: {certificate: 'not a pem'}}}}",
        )
        .unwrap();
        let issues = validate(&ie, "iot", &Dereferenced::default(), SystemTime::now());
        assert_eq!(issues[0].reason, "InvalidCertificate");
        let fields = ie.status_fields();
        assert_eq!(fields["registrationId"], "dev-1");
        assert_eq!(fields["attestationType"], "x509");
    }

    #[test]
    fn requeue_follows_certificate_validity_windows() {
        let now = 1_800_000_000;
        let ca = crate::pki::Ca::generate(now).unwrap();
        let before = now - 3 * 86_400;
        // Not yet valid: the next change is notBefore; valid: notAfter; garbage is ignored.
        let next_from_before = next_validity_change(&[&ca.cert_pem, "garbage"], before).unwrap();
        assert!(next_from_before > before && next_from_before <= now);
        assert_eq!(
            next_validity_change(&[&ca.cert_pem], now),
            Some(ca.not_after)
        );
        assert_eq!(next_validity_change(&[&ca.cert_pem], ca.not_after), None);
        assert_eq!(next_validity_change(&[], now), None);
    }

    #[test]
    fn inherited_static_policy_needs_one_hub() {
        let ie: IndividualEnrollment = serde_yaml::from_str(
            "apiVersion: kdps.io/v1alpha1\nkind: IndividualEnrollment\nmetadata: {name: dev-1, namespace: iot}\nspec:\n  attestation: {symmetricKey: {secretRef: {name: k}}}",
        )
        .unwrap();
        let service: ProvisioningService = serde_yaml::from_str(
            "apiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {name: dps, namespace: iot}\nspec: {allocationPolicy: static}",
        )
        .unwrap();
        let deref = Dereferenced {
            secret: Some(Some(secret("k", &[("primaryKey", KEY)]))),
            service: Some(service),
            links: vec![link("a")],
        };
        let issues = validate(&ie, "iot", &deref, SystemTime::now());
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].reason, "InvalidAllocationPolicy");
    }
}
