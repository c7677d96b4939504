//! The ProvisioningService controller, a pipeline (as Stackable's operators):
//!
//! 1. **dereference** — read what the service depends on: sibling ProvisioningServices,
//!    IoTHubLinks and their hub namespaces, the user's TLS Secret.
//! 2. **validate** ([`validate`]) — pure: field rules, one service per namespace, the TLS
//!    Secret, which hub namespaces get RBAC, the ID scope.
//! 3. **prepare TLS** — the operator CA and the serving certificate (kept until renewal).
//! 4. **build** ([`build`]) — pure: every child object.
//! 5. **apply** — server-side apply (field manager `kdps-operator`, forced), then delete hub
//!    RBAC in namespaces no longer linked.
//! 6. **status** — `idScope`, `endpoint`, `caBundle`, `readyReplicas`, conditions `Ready`
//!    and `Reconciled`, and an Event when `Ready` changes.
//!
//! Same-namespace children carry a controller owner reference, so the garbage collector
//! removes them with the ProvisioningService. Hub-namespace Roles cannot (owners must share
//! the namespace); they are labelled with the service's UID and removed here when a link
//! goes away and by [`crate::controller::hub_rbac`] when the service is deleted. Devices,
//! DeviceRegistrations and device key Secrets belong to the registration service and are
//! never touched.

pub mod build;
pub mod validate;

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Secret, Service, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time},
    jiff::Timestamp,
};
use kdps_api::v1alpha1::{CONDITION_READY, IoTHubLink, ProvisioningService, condition};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    core::DeserializeGuard,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use self::{
    build::{Children, TlsMaterial, endpoint, tls_secret_name},
    validate::{Dereferenced, Validated},
};
use crate::{
    controller::{
        ANNOTATION_SERVICE, Context, Error, Issue, LABEL_MANAGED_BY, LABEL_SERVICE_NAMESPACE,
        LABEL_SERVICE_UID, MANAGED_BY, MANAGED_SELECTOR, SECRET_FIELD_SELECTOR,
        SECRET_LABEL_SELECTOR, apply, apply_status, error_policy, invalid_object, kube_err,
        merge_conditions, namespace_state, object_key, publish_ready, ready_from_issues,
        status_unchanged,
    },
    idscope,
    pki::{CA_SECRET_NAME, Ca, ServingCert},
};

/// Controller name (metrics label).
pub const CONTROLLER: &str = "provisioningservice";
/// Condition type: every child was applied.
pub const CONDITION_RECONCILED: &str = "Reconciled";
/// How often a healthy service is re-checked (certificate renewal, drift).
pub const RECHECK: Duration = Duration::from_secs(1800);

/// Reconcile one ProvisioningService.
pub async fn reconcile(
    guard: Arc<DeserializeGuard<ProvisioningService>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ps = match &guard.0 {
        Ok(ps) => ps,
        Err(e) => return Err(invalid_object(&ctx, guard.as_ref(), e).await),
    };
    let action = reconcile_service(ps, &ctx).await?;
    ctx.backoff.reset(&object_key(guard.as_ref()));
    Ok(action)
}

fn identity(ps: &ProvisioningService) -> Result<(String, String, String), Error> {
    let key = object_key(ps);
    let missing = |field| Error::MissingField {
        key: key.clone(),
        field,
    };
    Ok((
        ps.metadata
            .name
            .clone()
            .ok_or_else(|| missing("metadata.name"))?,
        ps.metadata
            .namespace
            .clone()
            .ok_or_else(|| missing("metadata.namespace"))?,
        ps.metadata
            .uid
            .clone()
            .ok_or_else(|| missing("metadata.uid"))?,
    ))
}

async fn reconcile_service(ps: &ProvisioningService, ctx: &Context) -> Result<Action, Error> {
    let (name, namespace, uid) = identity(ps)?;
    let api: Api<DeserializeGuard<ProvisioningService>> =
        Api::namespaced(ctx.client.clone(), &namespace);

    // A generated ID scope is recorded before anything else, so it is in status from the
    // first moment the service could run.
    let (id_scope, source) = validate::id_scope(ps, &uid);
    if source == idscope::Source::Generated {
        tracing::info!(service = %format!("{namespace}/{name}"), %id_scope, "generated ID scope");
        apply_status::<ProvisioningService>(&api, &name, json!({ "idScope": id_scope })).await?;
    }

    let deref = dereference(ps, &namespace, ctx).await?;
    let valid = match validate::validate(ps, &name, &namespace, &uid, &deref, SystemTime::now()) {
        Ok(v) => v,
        Err(issues) => {
            update_status(
                ps,
                ctx,
                &api,
                &name,
                StatusInput::Invalid { id_scope, issues },
            )
            .await?;
            // Fixes arrive as watch events (spec, Secrets, siblings); re-check now and then.
            return Ok(Action::requeue(RECHECK));
        }
    };

    let now = Timestamp::now();
    let (tls, ca_bundle, renew_at) = prepare_tls(
        ps,
        &valid,
        deref.managed_tls_secret.as_ref(),
        ctx,
        now.as_second(),
    )
    .await?;
    let children = build::build(ps, &valid, &tls, &ctx.settings)?;
    let deployment = apply_children(ctx, &valid, &children).await?;
    update_status(
        ps,
        ctx,
        &api,
        &name,
        StatusInput::Applied {
            valid: &valid,
            ca_bundle,
            deployment: &deployment,
        },
    )
    .await?;
    let until_renewal = renew_at
        .map(|t| Duration::from_secs(u64::try_from(t - now.as_second()).unwrap_or(0).max(60)));
    Ok(Action::requeue(
        until_renewal.map_or(RECHECK, |d| d.min(RECHECK)),
    ))
}

async fn dereference(
    ps: &ProvisioningService,
    namespace: &str,
    ctx: &Context,
) -> Result<Dereferenced, Error> {
    let client = &ctx.client;
    let services: Api<DeserializeGuard<ProvisioningService>> =
        Api::namespaced(client.clone(), namespace);
    let siblings = services
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!(
            "listing ProvisioningServices in {namespace}"
        )))?
        .items
        .into_iter()
        .filter_map(|g| g.0.ok())
        .collect();
    let links_api: Api<DeserializeGuard<IoTHubLink>> = Api::namespaced(client.clone(), namespace);
    let links: Vec<IoTHubLink> = links_api
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!("listing IoTHubLinks in {namespace}")))?
        .items
        .into_iter()
        .filter_map(|g| g.0.ok())
        .collect();
    let mut namespaces = std::collections::BTreeMap::new();
    let wanted: BTreeSet<&String> = links.iter().map(|l| &l.spec.device_namespace).collect();
    for ns in wanted {
        if kdps_api::names::is_dns1123_label(ns) {
            namespaces.insert(ns.clone(), namespace_state(client, ns).await?);
        }
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret_name = match &ps.spec.tls {
        Some(tls) => tls.secret_name.clone(),
        None => tls_secret_name(&ps.name_any()),
    };
    let secret = secrets
        .get_opt(&secret_name)
        .await
        .map_err(kube_err(format!(
            "reading Secret {namespace}/{secret_name}"
        )))?;
    let (user_tls_secret, managed_tls_secret) = match &ps.spec.tls {
        Some(_) => (Some(secret), None),
        None => (None, secret),
    };
    Ok(Dereferenced {
        siblings,
        links,
        namespaces,
        user_tls_secret,
        managed_tls_secret,
    })
}

/// The operator CA from its Secret, created (or replaced when unusable) as needed.
pub async fn operator_ca(ctx: &Context, now: i64) -> Result<Ca, Error> {
    let _guard = ctx.ca_lock.lock().await;
    let ns = &ctx.settings.operator_namespace;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let existing = api
        .get_opt(CA_SECRET_NAME)
        .await
        .map_err(kube_err(format!("reading Secret {ns}/{CA_SECRET_NAME}")))?;
    if let Some(secret) = &existing {
        match Ca::from_secret(secret, now) {
            Ok(ca) => return Ok(ca),
            Err(why) => tracing::warn!(
                secret = %format!("{ns}/{CA_SECRET_NAME}"),
                reason = why,
                "the operator CA is not usable; replacing it (devices must trust the new status.caBundle)"
            ),
        }
    }
    let ca = Ca::generate(now)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET_NAME.to_owned()),
            namespace: Some(ns.clone()),
            labels: Some(
                [(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned())]
                    .into_iter()
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(ca.secret_data()),
        ..Secret::default()
    };
    if existing.is_some() {
        apply(&api, &secret).await?;
        return Ok(ca);
    }
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{ns}/{CA_SECRET_NAME}"), "created the operator CA");
            Ok(ca)
        }
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let stored = api
                .get(CA_SECRET_NAME)
                .await
                .map_err(kube_err(format!("reading Secret {ns}/{CA_SECRET_NAME}")))?;
            Ca::from_secret(&stored, now).map_err(|why| Error::Kube {
                action: format!("reading the CA another replica created: {why}"),
                source: kube::Error::Api(e),
            })
        }
        Err(e) => Err(kube_err(format!("creating Secret {ns}/{CA_SECRET_NAME}"))(
            e,
        )),
    }
}

/// The serving certificate to mount, the CA bundle to publish and when to renew.
async fn prepare_tls(
    ps: &ProvisioningService,
    v: &Validated,
    existing: Option<&Secret>,
    ctx: &Context,
    now: i64,
) -> Result<(TlsMaterial, Option<String>, Option<i64>), Error> {
    if let (Some(tls), Some(user)) = (&ps.spec.tls, &v.user_tls) {
        return Ok((
            TlsMaterial {
                secret_name: tls.secret_name.clone(),
                managed: None,
                cert_sha256: user.cert_sha256.clone(),
            },
            user.ca_bundle.clone(),
            None,
        ));
    }
    let ca = operator_ca(ctx, now).await?;
    let names = crate::pki::serving_names(&v.name, &v.namespace, &ps.spec.endpoint.dns_names);
    let secret_name = tls_secret_name(&v.name);
    let kept = existing.and_then(|s| {
        ServingCert::from_secret(s, &ca, &names, now)
            .map_err(|why| {
                tracing::info!(secret = %format!("{}/{secret_name}", v.namespace), reason = why, "issuing a new serving certificate");
            })
            .ok()
    });
    let cert = match kept {
        Some(c) => c,
        None => ca.issue_serving(&names, now)?,
    };
    let renew_at = cert.renew_at();
    let sha = crate::pki::sha256_hex(cert.cert_pem.as_bytes());
    Ok((
        TlsMaterial {
            secret_name,
            managed: Some((cert, ca.cert_pem.clone())),
            cert_sha256: sha,
        },
        Some(ca.cert_pem),
        Some(renew_at),
    ))
}

/// Apply every child; delete hub RBAC in namespaces that are no longer linked. Returns the
/// Deployment as stored (with status).
async fn apply_children(
    ctx: &Context,
    v: &Validated,
    children: &Children,
) -> Result<Deployment, Error> {
    let client = &ctx.client;
    let ns = &v.namespace;
    apply(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        &children.service_account,
    )
    .await?;
    apply(&Api::<Role>::namespaced(client.clone(), ns), &children.role).await?;
    apply(
        &Api::<RoleBinding>::namespaced(client.clone(), ns),
        &children.role_binding,
    )
    .await?;
    for (role, binding) in &children.hub_rbac {
        let hub_ns = role.metadata.namespace.as_deref().unwrap_or_default();
        apply(&Api::<Role>::namespaced(client.clone(), hub_ns), role).await?;
        apply(
            &Api::<RoleBinding>::namespaced(client.clone(), hub_ns),
            binding,
        )
        .await?;
    }
    delete_stale_hub_rbac::<RoleBinding>(ctx, v).await?;
    delete_stale_hub_rbac::<Role>(ctx, v).await?;
    if let Some(secret) = &children.tls_secret {
        apply(&Api::<Secret>::namespaced(client.clone(), ns), secret).await?;
    }
    apply(
        &Api::<Service>::namespaced(client.clone(), ns),
        &children.service,
    )
    .await?;
    apply(
        &Api::<Deployment>::namespaced(client.clone(), ns),
        &children.deployment,
    )
    .await
}

/// Delete this service's hub-namespace `K` (Role or RoleBinding) outside the linked hub
/// namespaces. Objects in the service's own namespace are left to owner references.
async fn delete_stale_hub_rbac<K>(ctx: &Context, v: &Validated) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(ctx.client.clone());
    let selector = format!("{LABEL_SERVICE_UID}={}", v.uid);
    let list = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(format!(
            "listing {}s of {}/{}",
            K::kind(&()),
            v.namespace,
            v.name
        )))?;
    for obj in list.items {
        let obj_ns = obj.metadata.namespace.clone().unwrap_or_default();
        if obj_ns == v.namespace || v.hub_namespaces.contains(&obj_ns) {
            continue;
        }
        let name = obj.name_any();
        tracing::info!(kind = %K::kind(&()), object = %format!("{obj_ns}/{name}"), "deleting RBAC of a hub namespace that is no longer linked");
        match Api::<K>::namespaced(ctx.client.clone(), &obj_ns)
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(kube_err(format!(
                    "deleting {} {obj_ns}/{name}",
                    K::kind(&())
                ))(e));
            }
        }
    }
    Ok(())
}

enum StatusInput<'a> {
    Invalid {
        id_scope: String,
        issues: Vec<Issue>,
    },
    Applied {
        valid: &'a Validated,
        ca_bundle: Option<String>,
        deployment: &'a Deployment,
    },
}

/// The `Ready` condition from the Deployment.
pub fn ready_from_deployment(
    desired: i32,
    deployment: &Deployment,
    generation: Option<i64>,
    now: Timestamp,
) -> (Condition, i32) {
    let ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let name = deployment.metadata.name.as_deref().unwrap_or_default();
    let c = if desired == 0 {
        condition(
            CONDITION_READY,
            false,
            "ScaledToZero",
            "spec.replicas is 0",
            generation,
            Time(now),
        )
    } else if ready > 0 {
        condition(
            CONDITION_READY,
            true,
            "Available",
            format!("{ready} of {desired} replicas of Deployment {name} are ready"),
            generation,
            Time(now),
        )
    } else {
        condition(
            CONDITION_READY,
            false,
            "ReplicasNotReady",
            format!("0 of {desired} replicas of Deployment {name} are ready"),
            generation,
            Time(now),
        )
    };
    (c, ready)
}

async fn update_status(
    ps: &ProvisioningService,
    ctx: &Context,
    api: &Api<DeserializeGuard<ProvisioningService>>,
    name: &str,
    input: StatusInput<'_>,
) -> Result<(), Error> {
    let now = Timestamp::now();
    let generation = ps.metadata.generation;
    let current = ps.status.clone().unwrap_or_default();
    let (status, conditions, ready) = match input {
        StatusInput::Invalid { id_scope, issues } => {
            let ready = ready_from_issues(&issues, &Issue::new("Valid", ""), generation, now);
            let mut reconciled = ready.clone();
            reconciled.type_ = CONDITION_RECONCILED.to_owned();
            let (conditions, changed) =
                merge_conditions(&current.conditions, vec![ready, reconciled]);
            // Keep what devices already rely on while the spec is being fixed.
            (
                json!({
                    "idScope": id_scope,
                    "endpoint": current.endpoint,
                    "caBundle": current.ca_bundle,
                    "readyReplicas": current.ready_replicas,
                    "observedGeneration": generation,
                }),
                (conditions, changed),
                false,
            )
        }
        StatusInput::Applied {
            valid,
            ca_bundle,
            deployment,
        } => {
            let (ready, ready_replicas) =
                ready_from_deployment(ps.spec.replicas, deployment, generation, now);
            let mut message = format!(
                "ServiceAccount, Roles, TLS Secret, Deployment and Service are up to date; hub namespaces: {}",
                if valid.hub_namespaces.is_empty() {
                    "none".to_owned()
                } else {
                    valid
                        .hub_namespaces
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            if !valid.waiting_links.is_empty() {
                message.push_str(&format!(
                    "; waiting for the device namespaces of IoTHubLinks {}",
                    valid.waiting_links.join(", ")
                ));
            }
            let reconciled = condition(
                CONDITION_RECONCILED,
                true,
                "Applied",
                message,
                generation,
                Time(now),
            );
            let is_ready = ready.status == "True";
            let (conditions, changed) =
                merge_conditions(&current.conditions, vec![ready, reconciled]);
            (
                json!({
                    "idScope": valid.id_scope,
                    "endpoint": endpoint(&valid.name, &valid.namespace, ps.spec.endpoint.port),
                    "caBundle": ca_bundle,
                    "readyReplicas": ready_replicas,
                    "observedGeneration": generation,
                }),
                (conditions, changed),
                is_ready,
            )
        }
    };
    let (conditions, changed) = conditions;
    let mut status = status;
    if let Some(map) = status.as_object_mut() {
        map.retain(|_, v| !v.is_null());
        map.insert("conditions".to_owned(), json!(conditions));
    }
    if !status_unchanged(ps.status.as_ref(), &status) {
        apply_status::<ProvisioningService>(api, name, status).await?;
    }
    ctx.record_ready(CONTROLLER, &object_key(ps), ready);
    if changed && let Some(c) = kdps_api::v1alpha1::ready_condition(&conditions) {
        publish_ready(ctx, &ps.object_ref(&()), c, "Reconcile").await;
    }
    Ok(())
}

/// Run the controller until `shutdown` fires.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let services: Api<DeserializeGuard<ProvisioningService>> = ctx.scoped_api();
    let managed = match &ctx.settings.watch_namespace {
        Some(ns) => watcher::Config::default().labels(&format!(
            "{MANAGED_SELECTOR},{LABEL_SERVICE_NAMESPACE}={ns}"
        )),
        None => watcher::Config::default().labels(MANAGED_SELECTOR),
    };
    let controller = Controller::new(services, watcher::Config::default()).with_config(
        kube::runtime::controller::Config::default().concurrency(ctx.settings.concurrency),
    );
    let store = controller.store();
    let by_namespace = {
        let store = store.clone();
        move |ns: Option<String>| {
            store
                .state()
                .into_iter()
                .filter(|g| g.namespace() == ns)
                .map(|g| ObjectRef::from_obj(g.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let secret_refs = {
        let store = store.clone();
        move |secret: DeserializeGuard<Secret>| {
            let ns = secret.namespace();
            let name = secret.name_any();
            let mut refs: Vec<ObjectRef<DeserializeGuard<ProvisioningService>>> = store
                .state()
                .into_iter()
                .filter(|g| g.namespace() == ns)
                .filter(|g| {
                    g.0.as_ref()
                        .ok()
                        .and_then(|ps| ps.spec.tls.as_ref())
                        .is_some_and(|t| t.secret_name == name)
                })
                .map(|g| ObjectRef::from_obj(g.as_ref()))
                .collect();
            refs.extend(owner_service(secret.meta(), ns.as_deref()));
            refs
        }
    };
    let links_by_ns = by_namespace.clone();
    let all_services = {
        let store = store.clone();
        move |_: DeserializeGuard<Namespace>| {
            store
                .state()
                .into_iter()
                .map(|g| ObjectRef::from_obj(g.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let secrets_api: Api<DeserializeGuard<Secret>> = match &ctx.settings.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let scoped = |c: &kube::Client| -> Api<DeserializeGuard<Deployment>> {
        match &ctx.settings.watch_namespace {
            Some(ns) => Api::namespaced(c.clone(), ns),
            None => Api::all(c.clone()),
        }
    };
    let links_api: Api<DeserializeGuard<IoTHubLink>> = ctx.scoped_api();
    let shutdown_signal = shutdown.clone();
    controller
        .owns(scoped(&client), managed.clone())
        .owns(
            match &ctx.settings.watch_namespace {
                Some(ns) => Api::<DeserializeGuard<Service>>::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            },
            managed.clone(),
        )
        .owns(
            match &ctx.settings.watch_namespace {
                Some(ns) => Api::<DeserializeGuard<ServiceAccount>>::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            },
            managed.clone(),
        )
        // Roles and RoleBindings also live in hub namespaces, without owner references: map
        // them by annotation (cluster-wide, selected by label).
        .watches(
            Api::<DeserializeGuard<Role>>::all(client.clone()),
            managed.clone(),
            |r| service_by_annotation(r.meta()),
        )
        .watches(
            Api::<DeserializeGuard<RoleBinding>>::all(client.clone()),
            managed.clone(),
            |r| service_by_annotation(r.meta()),
        )
        .watches(
            secrets_api,
            watcher::Config::default()
                .labels(SECRET_LABEL_SELECTOR)
                .fields(SECRET_FIELD_SELECTOR),
            secret_refs,
        )
        .watches(links_api, watcher::Config::default(), move |l| {
            links_by_ns(l.namespace())
        })
        .watches(
            Api::<DeserializeGuard<Namespace>>::all(client.clone()),
            watcher::Config::default(),
            all_services,
        )
        .graceful_shutdown_on(async move { shutdown_signal.cancelled().await })
        .run(
            reconcile,
            error_policy::<ProvisioningService>(CONTROLLER),
            ctx,
        )
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

fn owner_service(
    meta: &ObjectMeta,
    namespace: Option<&str>,
) -> Option<ObjectRef<DeserializeGuard<ProvisioningService>>> {
    let ns = namespace?;
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "ProvisioningService" && o.api_version.starts_with("kdps.io/"))
        .map(|o| ObjectRef::new(&o.name).within(ns))
}

/// The owning service named by the `kdps.io/provisioning-service` annotation.
pub fn service_by_annotation(
    meta: &ObjectMeta,
) -> Option<ObjectRef<DeserializeGuard<ProvisioningService>>> {
    let value = meta.annotations.as_ref()?.get(ANNOTATION_SERVICE)?;
    let (ns, name) = value.split_once('/')?;
    Some(ObjectRef::new(name).within(ns))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    use super::*;

    #[test]
    fn ready_follows_ready_replicas() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut d = Deployment {
            metadata: ObjectMeta {
                name: Some("dps".into()),
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        };
        let (c, n) = ready_from_deployment(2, &d, Some(1), now);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), n),
            ("False", "ReplicasNotReady", 0)
        );
        d.status = Some(DeploymentStatus {
            ready_replicas: Some(1),
            ..DeploymentStatus::default()
        });
        let (c, n) = ready_from_deployment(2, &d, Some(1), now);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), n),
            ("True", "Available", 1)
        );
        assert_eq!(c.message, "1 of 2 replicas of Deployment dps are ready");
        let (c, _) = ready_from_deployment(0, &d, Some(1), now);
        assert_eq!(c.reason, "ScaledToZero");
    }

    #[test]
    fn annotation_maps_to_the_service() {
        let meta = ObjectMeta {
            annotations: Some([(ANNOTATION_SERVICE.to_owned(), "iot/dps".to_owned())].into()),
            ..ObjectMeta::default()
        };
        let r = service_by_annotation(&meta).unwrap();
        assert_eq!(
            (r.name.as_str(), r.namespace.as_deref()),
            ("dps", Some("iot"))
        );
        assert!(service_by_annotation(&ObjectMeta::default()).is_none());
    }
}
