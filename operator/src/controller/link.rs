//! IoTHubLink: `Ready` condition and `deviceCount`.
//!
//! A link is Ready when its fields are valid, its region is one the namespace's
//! ProvisioningService defines, and its `deviceNamespace` exists (reason
//! `HubNamespaceMissing` otherwise: the registration service could not write identities
//! there). The controller watches Namespaces, so creating the namespace flips `Ready`.
//! Removing a link never deletes Devices: identities stay in the hub namespace.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::{api::core::v1::Namespace, jiff::Timestamp};
use kdps_api::{
    v1alpha1::{IoTHubLink, ProvisioningService, ready_condition},
    validation::{validate_iot_hub_link, validate_link_references},
};
use kube::{
    Api, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::controller::{
    Context, Error, Issue, NamespaceState, REASON_VALID, RECHECK, apply_status, cache::Change,
    error_policy, invalid_object, merge_conditions, namespace_state, object_key, publish_ready,
    ready_from_issues, status_unchanged,
};

/// Controller name (metrics label).
pub const CONTROLLER: &str = "iothublink";
/// Condition reason: the device namespace does not exist.
pub const REASON_HUB_NAMESPACE_MISSING: &str = "HubNamespaceMissing";
/// Condition reason: the device namespace is being deleted.
pub const REASON_HUB_NAMESPACE_TERMINATING: &str = "HubNamespaceTerminating";

/// Every issue of `link` (pure).
pub fn validate(
    link: &IoTHubLink,
    service: Option<&ProvisioningService>,
    namespace: Option<NamespaceState>,
) -> Vec<Issue> {
    let mut issues: Vec<Issue> = Vec::new();
    let fields_ok = match validate_iot_hub_link(link) {
        Ok(()) => true,
        Err(problems) => {
            issues.extend(problems.into_iter().map(Issue::from));
            false
        }
    };
    if let Err(problems) = validate_link_references(link, service.map(|s| &s.spec)) {
        issues.extend(problems.into_iter().map(Issue::from));
    }
    let ns = &link.spec.device_namespace;
    if fields_ok {
        match namespace {
            Some(NamespaceState::Missing) => issues.push(Issue::new(
                REASON_HUB_NAMESPACE_MISSING,
                format!(
                    "spec.deviceNamespace: namespace {ns:?} does not exist; create it so identities of devices assigned to this hub can be written"
                ),
            )),
            Some(NamespaceState::Terminating) => issues.push(Issue::new(
                REASON_HUB_NAMESPACE_TERMINATING,
                format!("spec.deviceNamespace: namespace {ns:?} is being deleted"),
            )),
            Some(NamespaceState::Active) | None => {}
        }
    }
    issues
}

/// Reconcile one link.
pub async fn reconcile(
    guard: Arc<DeserializeGuard<IoTHubLink>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let link = match &guard.0 {
        Ok(l) => l,
        Err(e) => return Err(invalid_object(&ctx, guard.as_ref(), e).await),
    };
    let key = object_key(link);
    let namespace = link.namespace().ok_or_else(|| Error::MissingField {
        key: key.clone(),
        field: "metadata.namespace",
    })?;
    let name = link.name_any();
    // From the cache the service triggers come from (see cache.rs).
    let service = ctx.caches.service_of(&namespace);
    let device_ns = &link.spec.device_namespace;
    let ns_state = if kdps_api::names::is_dns1123_label(device_ns) {
        Some(namespace_state(&ctx.client, device_ns).await?)
    } else {
        None
    };
    let issues = validate(link, service.as_ref(), ns_state);
    let now = Timestamp::now();
    let generation = link.meta().generation;
    let ready = ready_from_issues(
        &issues,
        &Issue::new(
            REASON_VALID,
            format!(
                "devices assigned to {} are written to namespace {device_ns}",
                link.spec.host_name
            ),
        ),
        generation,
        now,
    );
    let current = link
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let (conditions, changed) = merge_conditions(&current, vec![ready]);
    let mut status = serde_json::Map::new();
    status.insert("observedGeneration".to_owned(), json!(generation));
    status.insert("conditions".to_owned(), json!(conditions));
    let mut recheck = RECHECK;
    if ns_state == Some(NamespaceState::Active) {
        let published = ctx.counts.publish(
            &format!("{CONTROLLER}/{key}"),
            ctx.counts.devices.count(device_ns, &name),
            link.status.as_ref().and_then(|s| s.device_count),
        );
        if let Some(n) = published.value {
            status.insert("deviceCount".to_owned(), json!(n));
        }
        recheck = published.recheck.map_or(recheck, |d| d.min(recheck));
    }
    let status = serde_json::Value::Object(status);
    if !status_unchanged(link.status.as_ref(), &status) {
        let api: Api<DeserializeGuard<IoTHubLink>> =
            Api::namespaced(ctx.client.clone(), &namespace);
        apply_status::<IoTHubLink>(&api, &name, status).await?;
    }
    ctx.record_ready(CONTROLLER, &key, issues.is_empty());
    if changed && let Some(c) = ready_condition(&conditions) {
        publish_ready(&ctx, &link.object_ref(&()), c, "Validate").await;
    }
    ctx.backoff.reset(&key);
    Ok(Action::requeue(recheck))
}

/// Run the controller until `shutdown` fires.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let changes = ctx.caches.subscribe();
    ctx.caches.ready().await;
    let api: Api<DeserializeGuard<IoTHubLink>> = ctx.scoped_api();
    let controller = Controller::new(api, watcher::Config::default()).with_config(
        kube::runtime::controller::Config::default().concurrency(ctx.settings.concurrency),
    );
    let store = controller.store();
    let by_device_namespace = {
        let store = store.clone();
        move |ns: DeserializeGuard<Namespace>| {
            let name = ns.name_any();
            store
                .state()
                .into_iter()
                .filter(|g| g.0.as_ref().is_ok_and(|l| l.spec.device_namespace == name))
                .map(|g| ObjectRef::from_obj(g.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    // Links depend on their namespace's ProvisioningService (regions).
    let triggers = changes.flat_map(move |change| {
        let refs: Vec<_> = match change {
            Change::Service { namespace } => store
                .state()
                .into_iter()
                .filter(|g| g.namespace().as_deref() == Some(namespace.as_str()))
                .map(|g| ObjectRef::from_obj(g.as_ref()))
                .collect(),
            Change::Lagged => store
                .state()
                .into_iter()
                .map(|g| ObjectRef::from_obj(g.as_ref()))
                .collect(),
            // A link's own changes come from the controller's primary watch.
            Change::Link { .. } => Vec::new(),
        };
        futures::stream::iter(refs)
    });
    let shutdown_signal = shutdown.clone();
    controller
        .watches(
            Api::<DeserializeGuard<Namespace>>::all(ctx.client.clone()),
            watcher::Config::default(),
            by_device_namespace,
        )
        .reconcile_on(triggers)
        .graceful_shutdown_on(async move { shutdown_signal.cancelled().await })
        .run(reconcile, error_policy::<IoTHubLink>(CONTROLLER), ctx)
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
    use super::*;

    fn link(spec: &str) -> IoTHubLink {
        serde_yaml::from_str(&format!(
            "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: hub-west, namespace: iot}}\nspec: {spec}"
        ))
        .unwrap()
    }

    #[test]
    fn missing_namespace_is_reported() {
        let l = link("{hostName: hub-west.example.com, deviceNamespace: hub-west}");
        let issues = validate(&l, None, Some(NamespaceState::Missing));
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].reason, "HubNamespaceMissing");
        assert!(
            issues[0]
                .message
                .contains("namespace \"hub-west\" does not exist")
        );
        assert_eq!(
            validate(&l, None, Some(NamespaceState::Terminating))[0].reason,
            "HubNamespaceTerminating"
        );
        assert!(validate(&l, None, Some(NamespaceState::Active)).is_empty());
    }

    #[test]
    fn unknown_region_and_bad_weight_are_reported() {
        let l = link(
            "{hostName: hub-west.example.com, deviceNamespace: hub-west, region: west, allocationWeight: 0}",
        );
        let service: ProvisioningService = serde_yaml::from_str(
            "apiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {name: dps, namespace: iot}\nspec: {regions: [{name: east, cidrs: [10.0.0.0/8]}]}",
        )
        .unwrap();
        let issues = validate(&l, Some(&service), Some(NamespaceState::Active));
        let reasons: Vec<_> = issues.iter().map(|i| i.reason.as_str()).collect();
        assert_eq!(reasons, ["InvalidAllocationWeight", "UnknownRegion"]);
    }
}
