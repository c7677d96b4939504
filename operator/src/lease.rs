//! Leader election with a `coordination.k8s.io/v1` Lease, for running more than one operator
//! replica. kube-runtime has none (see docs/operator.md), so this is the usual loop: take the
//! Lease when it is absent, expired or released, renew it every `renew_every`, and report it
//! lost when a renewal fails for longer than the lease duration or another holder took it. The
//! caller stops the controllers (the process exits) when it is lost, so two operators never
//! reconcile at once for longer than one lease duration.
//!
//! Every write is a create or a replace carrying the last-seen `resourceVersion`, so two
//! candidates racing for the Lease cannot both win.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api,
    api::{PostParams, ResourceExt},
};
use tokio_util::sync::CancellationToken;

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another holder took the Lease, or renewals failed for longer than its duration.
    #[error("lost the leader Lease {namespace}/{name}: {why}")]
    Lost {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// What happened.
        why: String,
    },
}

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the operator's namespace).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This candidate's identity (the pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (and candidates retry).
    pub renew_every: Duration,
}

/// What a candidate should do with the Lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it.
    Create,
    /// The Lease is free (expired, released or never held): take it over.
    TakeOver,
    /// We hold it: renew it.
    Renew,
    /// Another candidate holds it until this time.
    Wait(Timestamp),
}

/// Decide from the Lease as read at `now`.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_some() {
            Decision::TakeOver
        } else {
            Decision::Create
        };
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match renewed.and_then(|t| t.checked_add(duration).ok()) {
        Some(expires) if expires > now => Decision::Wait(expires),
        _ => Decision::TakeOver,
    }
}

/// The Lease `identity` writes to hold it, based on what it read.
pub fn held_lease(
    cfg: &LeaseConfig,
    current: Option<&Lease>,
    now: Timestamp,
    renewal: bool,
) -> Lease {
    let spec = current.and_then(|l| l.spec.clone()).unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            resource_version: current.and_then(|l| l.metadata.resource_version.clone()),
            ..current.map(|l| l.metadata.clone()).unwrap_or_default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(cfg.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: if renewal {
                spec.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if renewal || current.is_none() {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        }),
    }
}

/// Try once to take or renew the Lease; returns whether this candidate holds it now.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    let now = Timestamp::now();
    let result = match decide(current.as_ref(), &cfg.identity, now) {
        Decision::Wait(_) => return Ok(false),
        Decision::Create => {
            api.create(&PostParams::default(), &held_lease(cfg, None, now, false))
                .await
        }
        Decision::TakeOver => {
            api.replace(
                &cfg.name,
                &PostParams::default(),
                &held_lease(cfg, current.as_ref(), now, false),
            )
            .await
        }
        Decision::Renew => {
            api.replace(
                &cfg.name,
                &PostParams::default(),
                &held_lease(cfg, current.as_ref(), now, true),
            )
            .await
        }
    };
    match result {
        Ok(_) => Ok(true),
        // Someone else wrote first (409 on replace, 409 AlreadyExists on create): not ours.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Wait until this candidate holds the Lease. Returns false when `shutdown` fires first.
pub async fn acquire(api: &Api<Lease>, cfg: &LeaseConfig, shutdown: &CancellationToken) -> bool {
    loop {
        match try_acquire_or_renew(api, cfg).await {
            Ok(true) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "acquired the leader Lease");
                return true;
            }
            Ok(false) => {
                tracing::debug!(lease = %cfg.name, "the leader Lease is held by another replica")
            }
            Err(e) => {
                tracing::warn!(lease = %cfg.name, error = %e, "reading or writing the leader Lease failed")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(cfg.renew_every) => {}
        }
    }
}

/// Renew the Lease until `shutdown` fires (then release it and return Ok) or it is lost.
pub async fn hold(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    shutdown: &CancellationToken,
) -> Result<(), LeaseError> {
    let mut last_renewal = tokio::time::Instant::now();
    let lost = |why: String| LeaseError::Lost {
        namespace: cfg.namespace.clone(),
        name: cfg.name.clone(),
        why,
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                release(api, cfg).await;
                return Ok(());
            }
            () = tokio::time::sleep(cfg.renew_every) => {}
        }
        match try_acquire_or_renew(api, cfg).await {
            Ok(true) => last_renewal = tokio::time::Instant::now(),
            Ok(false) => return Err(lost("another replica holds it".to_owned())),
            Err(e) => {
                tracing::warn!(lease = %cfg.name, error = %e, "renewing the leader Lease failed");
                if last_renewal.elapsed() >= cfg.duration {
                    return Err(lost(format!("no renewal for {:?}: {e}", cfg.duration)));
                }
            }
        }
    }
}

/// Give the Lease up (clear the holder) so a standby replica takes over without waiting for
/// it to expire. Best effort.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let ours = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        == Some(cfg.identity.as_str());
    if !ours {
        return;
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
    }
    match api
        .replace(&lease.name_any(), &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!(lease = %cfg.name, "released the leader Lease"),
        Err(e) => {
            tracing::warn!(lease = %cfg.name, error = %e, "releasing the leader Lease failed")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: "kdps-system".into(),
            name: "kdps-operator".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", t(100)), Decision::Create);
        let held_by_b = held_lease(&cfg("b"), None, t(100), false);
        assert_eq!(decide(Some(&held_by_b), "b", t(105)), Decision::Renew);
        assert_eq!(
            decide(Some(&held_by_b), "a", t(105)),
            Decision::Wait(t(115))
        );
        // Expired: anyone may take it.
        assert_eq!(decide(Some(&held_by_b), "a", t(115)), Decision::TakeOver);
        // Released (no holder).
        let mut released = held_by_b.clone();
        released.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(decide(Some(&released), "a", t(101)), Decision::TakeOver);
        // A Lease without spec is free.
        let empty = Lease::default();
        assert_eq!(decide(Some(&empty), "a", t(101)), Decision::TakeOver);
    }

    #[test]
    fn takeover_counts_a_transition_and_renewal_keeps_acquire_time() {
        let first = held_lease(&cfg("b"), None, t(100), false);
        let spec = first.spec.clone().unwrap();
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.acquire_time, Some(MicroTime(t(100))));

        let renewed = held_lease(&cfg("b"), Some(&first), t(105), true);
        let spec = renewed.spec.unwrap();
        assert_eq!(spec.acquire_time, Some(MicroTime(t(100))));
        assert_eq!(spec.renew_time, Some(MicroTime(t(105))));
        assert_eq!(spec.lease_transitions, Some(0));

        let taken = held_lease(&cfg("a"), Some(&first), t(200), false);
        let spec = taken.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.acquire_time, Some(MicroTime(t(200))));
        assert_eq!(spec.lease_transitions, Some(1));
    }
}
