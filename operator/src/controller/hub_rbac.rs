//! Removes the hub-namespace Roles and RoleBindings of deleted ProvisioningServices.
//!
//! Owner references cannot cross namespaces, so these objects carry the service's UID as a
//! label instead. This task watches ProvisioningServices: when one is deleted it deletes the
//! RBAC with its UID, and after every (re)list it deletes RBAC whose service no longer exists
//! (deletions that happened while the operator was down). No finalizer is involved, so
//! deleting a namespace or uninstalling the operator never leaves objects stuck.

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    NamespaceResourceScope,
    api::rbac::v1::{Role, RoleBinding},
};
use kdps_api::v1alpha1::ProvisioningService;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams},
    core::DeserializeGuard,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::controller::{LABEL_SERVICE_NAMESPACE, LABEL_SERVICE_UID, MANAGED_SELECTOR};

/// Delete every `K` labelled with a service UID for which `keep` returns false.
async fn sweep<K>(
    client: &Client,
    watch_namespace: Option<&str>,
    keep: impl Fn(&str) -> bool,
) -> Result<usize, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let mut selector = format!("{MANAGED_SELECTOR},{LABEL_SERVICE_UID}");
    if let Some(ns) = watch_namespace {
        selector.push_str(&format!(",{LABEL_SERVICE_NAMESPACE}={ns}"));
    }
    let api: Api<K> = Api::all(client.clone());
    let list = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await?;
    let mut deleted = 0;
    for obj in list.items {
        let uid = obj
            .labels()
            .get(LABEL_SERVICE_UID)
            .cloned()
            .unwrap_or_default();
        if keep(&uid) {
            continue;
        }
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        match Api::<K>::namespaced(client.clone(), &ns)
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => {
                deleted += 1;
                tracing::info!(kind = %K::kind(&()), object = %format!("{ns}/{name}"), "deleted RBAC of a deleted ProvisioningService");
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

async fn sweep_both(client: &Client, watch_namespace: Option<&str>, keep: impl Fn(&str) -> bool) {
    for result in [
        sweep::<RoleBinding>(client, watch_namespace, &keep).await,
        sweep::<Role>(client, watch_namespace, &keep).await,
    ] {
        if let Err(e) = result {
            tracing::warn!(error = %e, "removing RBAC of deleted ProvisioningServices failed; retrying on the next event");
        }
    }
}

/// Watch ProvisioningServices and remove RBAC of deleted ones until `shutdown` fires.
pub async fn run(client: Client, watch_namespace: Option<String>, shutdown: CancellationToken) {
    let api: Api<DeserializeGuard<ProvisioningService>> = match &watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut relisting: BTreeSet<String> = BTreeSet::new();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            e = events.try_next() => e,
        };
        match event {
            Ok(Some(watcher::Event::Init)) => relisting.clear(),
            Ok(Some(watcher::Event::InitApply(ps))) => {
                relisting.extend(ps.uid());
            }
            Ok(Some(watcher::Event::InitDone)) => {
                live = std::mem::take(&mut relisting);
                sweep_both(&client, watch_namespace.as_deref(), |uid| {
                    live.contains(uid)
                })
                .await;
            }
            Ok(Some(watcher::Event::Apply(ps))) => {
                live.extend(ps.uid());
            }
            Ok(Some(watcher::Event::Delete(ps))) => {
                if let Some(uid) = ps.uid() {
                    live.remove(&uid);
                    sweep_both(&client, watch_namespace.as_deref(), |u| u != uid).await;
                }
            }
            Ok(None) => return,
            Err(e) => tracing::warn!(error = %e, "watching ProvisioningServices failed"),
        }
    }
}
