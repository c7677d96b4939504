//! The registration engine (design.md §3): find the enrollment, attest, allocate, write the
//! identity, answer. One engine serves both front ends (gRPC and DPS HTTPS) through
//! [`RegistrationBackend`], and both registry backends through [`Registry`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::allocation::{
    self, AllocationError, AllocationInput, CustomAllocationRequest, EnrollmentDocument,
    LinkCandidate, RegionMap, RuntimeAttestation, TwinSource, WebhookClient, WebhookConfig,
};
use crate::attestation::{AttestationError, symmetric, tpm, x509};
use crate::catalog::{Catalog, Credentials, Enrollment, EnrollmentKind, canonical_id};
use crate::ratelimit::{Quota, RateLimitConfig, RateLimiter};
use crate::registry::{
    self, DeviceAuthentication, DeviceCapabilities, DeviceRecord, DeviceRef, DeviceSecret,
    DeviceTwin, EnrollmentRef, IdentityWrite, RegistrationRecord, RegistrationRef, Registry,
    RegistryError,
};
use crate::server::PeerInfo;
use crate::server::backend::{
    BackendError, DeviceAttestation, OperationOutcome, OperationStatusRequest, PendingOperation,
    RegisterOutcome, RegisterRequest, RegistrationBackend, RegistrationError, RegistrationState,
    RegistrationStateRequest, RegistrationStatus, TpmChallenge,
};

/// Engine settings that do not come from the manifests.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Clock skew allowed on SAS token expiry.
    pub clock_skew: Duration,
    /// How long a device waits before polling a pending operation.
    pub poll_interval: Duration,
    /// How long finished operations stay pollable.
    pub operation_ttl: Duration,
    /// How long a TPM challenge stays valid.
    pub tpm_challenge_ttl: Duration,
    /// Registration IDs tracked by the rate limiters (memory bound).
    pub max_tracked_ids: usize,
    /// Attempts when a concurrent writer changed the registration under us.
    pub conflict_retries: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            clock_skew: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            operation_ttl: Duration::from_secs(600),
            tpm_challenge_ttl: Duration::from_secs(300),
            max_tracked_ids: 100_000,
            conflict_retries: 5,
        }
    }
}

/// The current configuration: `None` until the first successful load.
pub type CatalogWatch = watch::Receiver<Option<Arc<Catalog>>>;

/// The registration engine. Cheap to share (`Arc`).
pub struct Engine {
    catalog: CatalogWatch,
    registry: Arc<dyn Registry>,
    config: EngineConfig,
    limiter: Mutex<(RateLimitConfig, Arc<RateLimiter>)>,
    poll_limiter: RateLimiter,
    tpm: tpm::TpmChallenges,
    webhooks: Mutex<HashMap<String, WebhookClient>>,
    device_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    operations: Mutex<HashMap<String, Operation>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Operation {
    registration_id: String,
    id_scope: String,
    created: Instant,
    state: OperationState,
}

enum OperationState {
    Running,
    Done(Box<Result<RegisterOutcome, BackendError>>),
}

/// The result of finding and attesting the enrollment.
struct Admitted {
    enrollment: Arc<Enrollment>,
    /// Device keys (individual key or keys derived from the group's) for symmetric-key devices.
    device_keys: Option<symmetric::KeyPair>,
    /// X.509: the certificate info for the DPS answer.
    x509_info: Option<serde_json::Value>,
}

impl Engine {
    /// Creates an engine over a configuration watch and a registry.
    pub fn new(catalog: CatalogWatch, registry: Arc<dyn Registry>, config: EngineConfig) -> Self {
        let limit_config = RateLimitConfig {
            max_tracked_ids: config.max_tracked_ids,
            ..RateLimitConfig::default()
        };
        Self {
            poll_limiter: RateLimiter::status_polls(config.max_tracked_ids),
            tpm: tpm::TpmChallenges::new(config.tpm_challenge_ttl, config.max_tracked_ids),
            limiter: Mutex::new((limit_config, Arc::new(RateLimiter::new(limit_config)))),
            catalog,
            registry,
            config,
            webhooks: Mutex::new(HashMap::new()),
            device_locks: Mutex::new(HashMap::new()),
            operations: Mutex::new(HashMap::new()),
        }
    }

    /// The registry the engine writes to.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    fn catalog(&self) -> Result<Arc<Catalog>, BackendError> {
        self.catalog
            .borrow()
            .clone()
            .ok_or_else(|| BackendError::Unavailable("configuration not loaded yet".into()))
    }

    /// The rate limiter for the current configuration (rebuilt when the limits change).
    fn limiter(&self, catalog: &Catalog) -> Arc<RateLimiter> {
        let limits = catalog.service.rate_limits;
        let wanted = RateLimitConfig {
            per_id: limits.per_device_per_minute().map(Quota::per_minute),
            global: limits.global_per_second().map(Quota::per_second),
            max_tracked_ids: self.config.max_tracked_ids,
        };
        let mut guard = lock(&self.limiter);
        if guard.0 != wanted {
            *guard = (wanted, Arc::new(RateLimiter::new(wanted)));
        }
        guard.1.clone()
    }

    /// The configuration, and the request's canonical registration ID once the ID scope and ID
    /// are valid and `limiter` lets the request through.
    fn accept(
        &self,
        limiter: &RateLimiter,
        id_scope: &str,
        registration_id: &str,
    ) -> Result<(Arc<Catalog>, String), BackendError> {
        let catalog = self.catalog()?;
        let registration_id = check_request(&catalog, id_scope, registration_id)?;
        limiter
            .check(&registration_id)
            .map_err(|r| BackendError::Throttled {
                retry_after: Duration::from_secs(r.retry_after_secs()),
            })?;
        Ok((catalog, registration_id))
    }

    fn device_lock(&self, registration_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.device_locks);
        if locks.len() > 10_000 {
            // Drop locks nobody holds; a held lock has more than our map's reference.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks
            .entry(registration_id.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    fn expire_operations(&self) {
        let ttl = self.config.operation_ttl;
        lock(&self.operations).retain(|_, op| op.created.elapsed() < ttl);
    }

    /// Registers a device (see [`RegistrationBackend::register`]).
    pub async fn register_device(
        self: &Arc<Self>,
        request: RegisterRequest,
        peer: PeerInfo,
    ) -> Result<RegisterOutcome, BackendError> {
        let catalog = self.catalog()?;
        let limiter = self.limiter(&catalog);
        let (catalog, registration_id) =
            self.accept(&limiter, &request.id_scope, &request.registration_id)?;
        self.expire_operations();

        let operation_id = new_operation_id();
        lock(&self.operations).insert(
            operation_id.clone(),
            Operation {
                registration_id: registration_id.clone(),
                id_scope: request.id_scope.clone(),
                created: Instant::now(),
                state: OperationState::Running,
            },
        );
        let deadline = request.deadline;
        let engine = self.clone();
        let op = operation_id.clone();
        // The work runs in its own task so that a device whose call times out can poll for the
        // result instead of starting over.
        let task = tokio::spawn(async move {
            let result = engine
                .run_registration(catalog, registration_id, request, peer)
                .await;
            if let Some(entry) = lock(&engine.operations).get_mut(&op) {
                entry.state = OperationState::Done(Box::new(result.clone()));
            }
            result
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(result)) => {
                // Only pending work needs to stay pollable.
                lock(&self.operations).remove(&operation_id);
                result
            }
            Ok(Err(join_error)) => {
                lock(&self.operations).remove(&operation_id);
                Err(BackendError::Internal(format!(
                    "registration task failed: {join_error}"
                )))
            }
            Err(_) => Ok(RegisterOutcome::Pending(PendingOperation {
                operation_id,
                retry_after: self.config.poll_interval,
                status: RegistrationStatus::Assigning,
            })),
        }
    }

    async fn run_registration(
        &self,
        catalog: Arc<Catalog>,
        registration_id: String,
        request: RegisterRequest,
        peer: PeerInfo,
    ) -> Result<RegisterOutcome, BackendError> {
        let now = unix_now();
        let admitted = match self.admit(&catalog, &registration_id, &request, &peer, now)? {
            Admission::Admitted(a) => a,
            Admission::Challenge(c) => return Ok(RegisterOutcome::TpmChallenge(c)),
            Admission::Disabled(enrollment) => {
                tracing::info!(registration_id, enrollment = %enrollment.display(), "enrollment disabled");
                return Ok(RegisterOutcome::Done(disabled_state(
                    &registration_id,
                    &enrollment,
                )));
            }
        };

        // One registration of a device at a time in this process; across replicas the etag
        // precondition of the write decides.
        let device_lock = self.device_lock(&registration_id);
        let _held = device_lock.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .assign(&catalog, &registration_id, &request, &peer, &admitted)
                .await
            {
                Err(Failure::Registry(RegistryError::Conflict { .. }))
                    if attempt < self.config.conflict_retries =>
                {
                    tracing::debug!(
                        registration_id,
                        attempt,
                        "registration changed concurrently; retrying"
                    );
                    continue;
                }
                Err(Failure::Registry(RegistryError::Conflict { .. })) => {
                    return Err(BackendError::Conflict(
                        "the device is being registered concurrently; retry".into(),
                    ));
                }
                Err(Failure::Registry(e)) => {
                    return Err(BackendError::Internal(format!(
                        "registry error for {registration_id}: {e}"
                    )));
                }
                Err(Failure::Allocation(e)) => {
                    tracing::warn!(registration_id, enrollment = %admitted.enrollment.display(), error = %e, "allocation failed");
                    return Ok(RegisterOutcome::Done(failed_state(
                        &registration_id,
                        &admitted.enrollment,
                        e.dps_error_code(),
                        e.to_string(),
                    )));
                }
                Err(Failure::Backend(e)) => return Err(e),
                Ok(state) => return Ok(RegisterOutcome::Done(state)),
            }
        }
    }

    /// Finds the enrollment and checks the device's proof of identity (design.md §3 steps 2-3).
    fn admit(
        &self,
        catalog: &Catalog,
        registration_id: &str,
        request: &RegisterRequest,
        peer: &PeerInfo,
        now: u64,
    ) -> Result<Admission, BackendError> {
        if let Some(enrollment) = catalog.individual(registration_id) {
            let individual =
                self.admit_individual(catalog, enrollment, registration_id, request, peer, now);
            if enrollment.enabled {
                return individual;
            }
            return match individual {
                Ok(Admission::Admitted(_)) => Ok(Admission::Disabled(enrollment.clone())),
                Ok(other) => Ok(other),
                // A disabled individual enrollment blocks the device also when it proves
                // itself to a group instead (e.g. with a key derived from the group key).
                Err(e) => match self.admit_group(catalog, registration_id, request, peer, now) {
                    Ok(Admission::Admitted(_) | Admission::Disabled(_)) => {
                        Ok(Admission::Disabled(enrollment.clone()))
                    }
                    _ => Err(e),
                },
            };
        }
        self.admit_group(catalog, registration_id, request, peer, now)
    }

    /// Attests the device against its individual enrollment.
    fn admit_individual(
        &self,
        catalog: &Catalog,
        enrollment: &Arc<Enrollment>,
        registration_id: &str,
        request: &RegisterRequest,
        peer: &PeerInfo,
        now: u64,
    ) -> Result<Admission, BackendError> {
        let id_scope = &catalog.service.id_scope;
        let skew = self.config.clock_skew;
        let credentials = enrollment.credentials.as_ref().map_err(|reason| {
            tracing::warn!(registration_id, enrollment = %enrollment.display(), reason, "enrollment is not usable");
            BackendError::Unauthorized {
                message: format!(
                    "the enrollment of this device is not usable ({}); see the service's logs",
                    enrollment.display()
                ),
                dps_code: Some(401_002),
            }
        })?;
        let admitted = match (credentials, &request.attestation) {
            (Credentials::SymmetricKey(keys), DeviceAttestation::SymmetricKey { sas_token }) => {
                let token = symmetric::parse_token(Some(sas_token)).map_err(attestation_error)?;
                symmetric::verify_individual(&token, id_scope, registration_id, keys, now, skew)
                    .map_err(attestation_error)?;
                Admitted {
                    enrollment: enrollment.clone(),
                    device_keys: Some(keys.clone()),
                    x509_info: None,
                }
            }
            (Credentials::X509Client(certs), DeviceAttestation::X509) => {
                x509::verify_individual(&peer.chain, registration_id, certs, now)
                    .map_err(attestation_error)?;
                Admitted {
                    enrollment: enrollment.clone(),
                    device_keys: None,
                    x509_info: x509_info(&peer.chain, None),
                }
            }
            (
                Credentials::Tpm { endorsement_key },
                DeviceAttestation::Tpm {
                    endorsement_key: request_ek,
                    storage_root_key,
                    sas_token,
                },
            ) => {
                let request_ek = B64.encode(request_ek);
                match sas_token {
                    None => {
                        let srk = B64.encode(storage_root_key);
                        let challenge = self
                            .tpm
                            .issue(
                                registration_id,
                                endorsement_key,
                                Some(&request_ek),
                                Some(&srk),
                                now,
                            )
                            .map_err(tpm_error)?;
                        let authentication_key =
                            B64.decode(&challenge.authentication_key).map_err(|e| {
                                BackendError::Internal(format!("challenge encoding: {e}"))
                            })?;
                        return Ok(Admission::Challenge(TpmChallenge {
                            authentication_key,
                            key_name: challenge.key_name.to_owned(),
                        }));
                    }
                    Some(token) => {
                        let token = tpm::parse_token(token).map_err(tpm_error)?;
                        self.tpm
                            .verify(
                                id_scope,
                                registration_id,
                                endorsement_key,
                                Some(&request_ek),
                                &token,
                                now,
                                skew,
                            )
                            .map_err(tpm_error)?;
                        Admitted {
                            enrollment: enrollment.clone(),
                            device_keys: None,
                            x509_info: None,
                        }
                    }
                }
            }
            (_, presented) => {
                return Err(BackendError::Unauthorized {
                    message: format!(
                        "the device presented {} attestation but its enrollment uses {}",
                        attestation_name(presented.kind()),
                        credentials_name(credentials)
                    ),
                    dps_code: Some(401_002),
                });
            }
        };
        Ok(Admission::Admitted(admitted))
    }

    /// Finds the enrollment group that admits the device, by its credential.
    fn admit_group(
        &self,
        catalog: &Catalog,
        registration_id: &str,
        request: &RegisterRequest,
        peer: &PeerInfo,
        now: u64,
    ) -> Result<Admission, BackendError> {
        let id_scope = &catalog.service.id_scope;
        let skew = self.config.clock_skew;
        // No individual enrollment: an enrollment group, matched by the credential itself.
        let admitted = match &request.attestation {
            DeviceAttestation::SymmetricKey { sas_token } => {
                let token = symmetric::parse_token(Some(sas_token)).map_err(attestation_error)?;
                symmetric::check_claims(&token, id_scope, registration_id, now, skew)
                    .map_err(attestation_error)?;
                let groups =
                    catalog
                        .symmetric_groups()
                        .iter()
                        .filter_map(|g| match &g.credentials {
                            Ok(Credentials::SymmetricKey(keys)) => Some((g, keys)),
                            _ => None,
                        });
                let (group, _slot) = symmetric::find_group(&token, registration_id, groups)
                    .ok_or_else(|| BackendError::Unauthorized {
                        message: "no enrollment admits this device: the SAS token does not match an individual enrollment or any enrollment group key".into(),
                        dps_code: Some(401_002),
                    })?;
                let keys = match &group.credentials {
                    Ok(Credentials::SymmetricKey(k)) => k.derive_for(registration_id),
                    _ => return Err(BackendError::Internal("group credentials changed".into())),
                };
                Admitted {
                    enrollment: group.clone(),
                    device_keys: Some(keys),
                    x509_info: None,
                }
            }
            DeviceAttestation::X509 => {
                if peer.chain.is_empty() {
                    return Err(attestation_error(AttestationError::MissingCertificate));
                }
                // Only the groups whose CA issued a certificate of this chain (indexed by
                // subject) are candidates; the chain walk then checks names and signatures.
                let parsed: Vec<_> = peer
                    .chain
                    .iter()
                    .filter_map(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
                    .map(|(_, cert)| cert)
                    .collect();
                let candidates =
                    catalog.x509_groups_issuing(parsed.iter().map(|c| c.issuer().as_raw()));
                let groups: Vec<(&str, &x509::SigningCerts)> = candidates
                    .into_iter()
                    .filter_map(|g| match &g.credentials {
                        Ok(Credentials::X509Signing(s)) => Some((g.name.as_str(), s)),
                        _ => None,
                    })
                    .collect();
                let (name, _) = x509::matching_group(&peer.chain, groups.iter().copied())
                    .ok_or_else(|| attestation_error(AttestationError::UnknownIssuer))?;
                let group = catalog
                    .group(name)
                    .ok_or_else(|| BackendError::Internal("matched group vanished".into()))?;
                let Ok(Credentials::X509Signing(signing)) = &group.credentials else {
                    return Err(BackendError::Internal("group credentials changed".into()));
                };
                x509::verify_group(&peer.chain, registration_id, signing, now)
                    .map_err(attestation_error)?;
                Admitted {
                    enrollment: group.clone(),
                    device_keys: None,
                    x509_info: x509_info(&peer.chain, Some(&group.name)),
                }
            }
            DeviceAttestation::Tpm { .. } => {
                return Err(BackendError::Unauthorized {
                    message:
                        "no individual enrollment for this registration ID (TPM devices need one)"
                            .into(),
                    dps_code: Some(401_002),
                });
            }
        };
        if !admitted.enrollment.enabled {
            return Ok(Admission::Disabled(admitted.enrollment));
        }
        Ok(Admission::Admitted(admitted))
    }

    /// Allocates a hub and writes the identity (design.md §3 steps 4-7).
    async fn assign(
        &self,
        catalog: &Catalog,
        registration_id: &str,
        request: &RegisterRequest,
        peer: &PeerInfo,
        admitted: &Admitted,
    ) -> Result<RegistrationState, Failure> {
        let enrollment = &admitted.enrollment;
        let stored_previous = self
            .registry
            .get_registration(registration_id)
            .await
            .map_err(Failure::Registry)?;
        // The etag guards the write whatever the record says; only an assignment counts as a
        // previous hub for reprovisioning.
        let expected_etag = stored_previous.as_ref().map(|p| p.etag.clone());
        let previous = stored_previous.filter(|p| p.status == RegistrationStatus::Assigned);

        let links: Vec<LinkCandidate> = catalog
            .eligible_links(enrollment)
            .into_iter()
            .map(|l| LinkCandidate {
                name: l.name.clone(),
                host_name: l.host_name.clone(),
                device_namespace: l.device_namespace.clone(),
                weight: l.weight,
                region: l.region.clone(),
            })
            .collect();
        if links.is_empty() {
            return Err(Failure::Allocation(AllocationError::NoEligibleLinks));
        }
        let previous_hub_eligible = previous
            .as_ref()
            .and_then(|p| p.assigned_hub.as_ref())
            .is_some_and(|hub| links.iter().any(|l| l.assignment().same_hub(hub)));
        let policy = reprovision_policy(enrollment);
        let sticky = policy
            .sticky_hub(previous.as_ref(), previous_hub_eligible)
            .cloned();

        let mut webhook_twin = None;
        let mut payload = None;
        let allocated = match sticky {
            Some(hub) => hub,
            None => {
                let regions = RegionMap::new(catalog.service.regions.iter().cloned());
                match enrollment.allocation_policy {
                    kdps_api::v1alpha1::AllocationPolicy::Custom => {
                        let custom = self
                            .custom_allocation(
                                enrollment,
                                registration_id,
                                request,
                                peer,
                                previous.as_ref(),
                                admitted,
                                &links,
                            )
                            .await
                            .map_err(Failure::Allocation)?;
                        webhook_twin = custom.initial_twin.clone();
                        payload = custom.payload.clone();
                        custom.link.assignment()
                    }
                    other => {
                        let input = AllocationInput {
                            links: &links,
                            registration_id,
                            client_ip: Some(peer.addr.ip()),
                            regions: &regions,
                        };
                        allocation::allocate(policy_of(other), &input)
                            .map_err(Failure::Allocation)?
                            .assignment()
                    }
                }
            }
        };
        let decision = allocation::decide_reprovision(
            previous.as_ref(),
            &allocated,
            previous_hub_eligible,
            policy,
        );

        let device_id = enrollment
            .device_id
            .clone()
            .unwrap_or_else(|| registration_id.to_owned());
        let namespace = decision.hub.device_namespace.clone();
        let previous_device = previous.as_ref().and_then(|p| {
            let hub = p.assigned_hub.as_ref()?;
            Some(DeviceRef {
                namespace: hub.device_namespace.clone(),
                device_id: p.device_id.clone()?,
            })
        });

        // Twin: a webhook's initial twin wins; else migrate the existing twin or start over.
        let twin = match (webhook_twin, decision.twin, &previous_device) {
            (Some(t), _, _) => t,
            (None, TwinSource::Migrate, Some(prev)) => {
                match self
                    .registry
                    .get_device(&prev.namespace, &prev.device_id)
                    .await
                    .map_err(Failure::Registry)?
                {
                    Some(d) => d.twin,
                    None => initial_twin(enrollment),
                }
            }
            _ => initial_twin(enrollment),
        };

        // Credentials of the hub identity.
        let mut tpm_key = None;
        let (authentication, secret) = match (&admitted.device_keys, &request.attestation) {
            (Some(keys), _) => {
                let name = registry::device_secret_name(&device_id);
                let secret = DeviceSecret {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    primary_key: keys.primary.clone(),
                    secondary_key: keys
                        .secondary
                        .clone()
                        .unwrap_or_else(|| keys.primary.clone()),
                };
                (
                    DeviceAuthentication::SymmetricKey { secret_name: name },
                    Some(secret),
                )
            }
            (
                None,
                DeviceAttestation::Tpm {
                    endorsement_key,
                    storage_root_key,
                    ..
                },
            ) => {
                let name = registry::device_secret_name(&device_id);
                // Keep the hub key the device already has, so re-registering does not
                // invalidate its hub credentials.
                let existing = self
                    .registry
                    .get_secret(&namespace, &name)
                    .await
                    .map_err(Failure::Registry)?;
                let ek = B64.encode(endorsement_key);
                let srk = B64.encode(storage_root_key);
                let assigned = match &existing {
                    Some(s) => tpm::assignment_activation_with_key(&ek, &srk, &s.primary_key),
                    None => tpm::assignment_activation(&ek, &srk),
                }
                .map_err(|e| Failure::Backend(tpm_error(e)))?;
                let key = assigned.device_key.as_bytes().to_vec();
                let secret = DeviceSecret {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    primary_key: key.clone(),
                    secondary_key: existing.map_or(key, |s| s.secondary_key),
                };
                tpm_key = Some(assigned.authentication_key);
                (
                    DeviceAuthentication::SymmetricKey { secret_name: name },
                    Some(secret),
                )
            }
            (None, _) => match &enrollment.credentials {
                Ok(Credentials::X509Client(_)) => {
                    let leaf = peer.chain.first().map(|c| c.as_ref()).unwrap_or_default();
                    (
                        DeviceAuthentication::X509 {
                            primary_sha1: hex::encode_upper(Sha1::digest(leaf)),
                            primary_sha256: hex::encode_upper(Sha256::digest(leaf)),
                            secondary_sha1: None,
                            secondary_sha256: None,
                        },
                        None,
                    )
                }
                _ => (DeviceAuthentication::CertificateAuthority {}, None),
            },
        };

        let device = DeviceRecord {
            device_id: device_id.clone(),
            namespace: namespace.clone(),
            hub_host_name: decision.hub.host_name.clone(),
            link_name: decision.hub.link_name.clone(),
            authentication,
            capabilities: DeviceCapabilities {
                iot_edge: enrollment.iot_edge,
            },
            twin,
            enabled: true,
            registration: RegistrationRef {
                namespace: Some(catalog.service.namespace.clone()),
                registration_id: registration_id.to_owned(),
            },
        };
        let mut record = RegistrationRecord::new(
            registration_id,
            EnrollmentRef {
                kind: enrollment.kind,
                name: enrollment.name.clone(),
            },
            request.attestation.kind(),
            RegistrationStatus::Assigned,
        );
        record.assigned_hub = Some(decision.hub.clone());
        record.device_id = Some(device_id);
        record.substatus = Some(decision.substatus);
        record.initial_hub = Some(decision.initial_hub.clone());
        record.payload = payload;
        record.tpm_authentication_key = tpm_key;
        record.x509 = admitted.x509_info.clone();
        let write = IdentityWrite {
            secret,
            device,
            previous_device,
            expected_etag,
            registration: record,
        };
        let stored = self
            .registry
            .write_identity(write)
            .await
            .map_err(Failure::Registry)?;
        if request.attestation.kind() == registry::AttestationType::Tpm {
            self.tpm.forget(registration_id);
        }
        tracing::info!(
            registration_id,
            enrollment = %enrollment.display(),
            hub = %decision.hub.host_name,
            substatus = ?decision.substatus,
            "device assigned"
        );
        Ok(state_of(&stored))
    }

    #[allow(clippy::too_many_arguments)]
    async fn custom_allocation<'l>(
        &self,
        enrollment: &Enrollment,
        registration_id: &str,
        request: &RegisterRequest,
        _peer: &PeerInfo,
        previous: Option<&RegistrationRecord>,
        admitted: &Admitted,
        links: &'l [LinkCandidate],
    ) -> Result<allocation::CustomAllocation<'l>, AllocationError> {
        let custom = enrollment
            .custom_allocation
            .as_ref()
            .ok_or(AllocationError::CustomNeedsWebhook)?;
        let client = self.webhook_client(custom)?;
        let attestation = match &request.attestation {
            DeviceAttestation::SymmetricKey { .. } => RuntimeAttestation::SymmetricKey,
            DeviceAttestation::X509 => RuntimeAttestation::X509(
                admitted
                    .x509_info
                    .clone()
                    .unwrap_or(serde_json::Value::Null),
            ),
            DeviceAttestation::Tpm {
                endorsement_key,
                storage_root_key,
                ..
            } => RuntimeAttestation::Tpm {
                endorsement_key: B64.encode(endorsement_key),
                storage_root_key: Some(B64.encode(storage_root_key)),
            },
        };
        let req = CustomAllocationRequest {
            enrollment: EnrollmentDocument {
                kind: enrollment.kind,
                document: enrollment.object.clone(),
            },
            registration_id: registration_id.to_owned(),
            current_hub_host_name: previous
                .and_then(|p| p.assigned_hub.as_ref())
                .map(|h| h.host_name.clone()),
            current_device_id: previous.and_then(|p| p.device_id.clone()),
            attestation,
            payload: request.payload.clone(),
        };
        client.allocate(&req, links).await
    }

    fn webhook_client(
        &self,
        custom: &kdps_api::v1alpha1::CustomAllocation,
    ) -> Result<WebhookClient, AllocationError> {
        let key = format!(
            "{}\n{}\n{}",
            custom.webhook_url,
            custom.timeout_seconds,
            custom.ca_bundle.as_deref().unwrap_or_default()
        );
        if let Some(c) = lock(&self.webhooks).get(&key) {
            return Ok(c.clone());
        }
        let url = url::Url::parse(&custom.webhook_url)
            .map_err(|e| AllocationError::WebhookConfig(format!("invalid webhook URL: {e}")))?;
        let client = WebhookClient::new(&WebhookConfig {
            url,
            ca_bundle_pem: custom.ca_bundle.clone().unwrap_or_default(),
            timeout: Duration::from_secs(u64::from(custom.timeout_seconds.max(1))),
        })?;
        let mut cache = lock(&self.webhooks);
        if cache.len() > 256 {
            cache.clear();
        }
        cache.insert(key, client.clone());
        Ok(client)
    }

    /// Reports a pending operation (see [`RegistrationBackend::operation_status`]).
    pub async fn poll_operation(
        &self,
        request: OperationStatusRequest,
    ) -> Result<OperationOutcome, BackendError> {
        let (_, registration_id) = self.accept(
            &self.poll_limiter,
            &request.id_scope,
            &request.registration_id,
        )?;
        let ops = lock(&self.operations);
        // The operation id is a 128-bit random value bound to the registration ID and scope.
        let op = ops
            .get(&request.operation_id)
            .filter(|op| op.registration_id == registration_id)
            .filter(|op| op.id_scope.eq_ignore_ascii_case(&request.id_scope))
            .ok_or_else(|| {
                BackendError::NotFound(format!(
                    "no operation {:?} for this registration ID (operations expire after {} s)",
                    request.operation_id,
                    self.config.operation_ttl.as_secs()
                ))
            })?;
        match &op.state {
            OperationState::Done(result) => match result.as_ref() {
                Ok(RegisterOutcome::Done(state)) => Ok(OperationOutcome::Done(state.clone())),
                Ok(other) => Err(BackendError::Internal(format!(
                    "operation ended with {other:?}, which cannot be polled"
                ))),
                Err(e) => Err(e.clone()),
            },
            OperationState::Running => Ok(OperationOutcome::Pending(PendingOperation {
                operation_id: request.operation_id.clone(),
                retry_after: self.config.poll_interval,
                status: RegistrationStatus::Assigning,
            })),
        }
    }

    /// Looks up the registration state (see [`RegistrationBackend::registration_state`]). The
    /// device must prove its identity exactly as for a registration.
    pub async fn lookup(
        &self,
        request: RegistrationStateRequest,
        peer: PeerInfo,
    ) -> Result<RegistrationState, BackendError> {
        let (catalog, registration_id) = self.accept(
            &self.poll_limiter,
            &request.id_scope,
            &request.registration_id,
        )?;
        let as_register = RegisterRequest {
            id_scope: request.id_scope,
            registration_id: request.registration_id,
            attestation: request.attestation,
            payload: None,
            deadline: Instant::now(),
        };
        match self.admit(&catalog, &registration_id, &as_register, &peer, unix_now())? {
            Admission::Admitted(_) | Admission::Disabled(_) => {}
            Admission::Challenge(_) => {
                return Err(BackendError::unauthorized(
                    "TPM devices look up their state with a SAS token signed by the imported key",
                ));
            }
        }
        let record = self
            .registry
            .get_registration(&registration_id)
            .await
            .map_err(|e| BackendError::Internal(format!("registry: {e}")))?
            .ok_or_else(|| BackendError::NotFound("the device has not registered".into()))?;
        Ok(state_of(&record))
    }
}

impl RegistrationBackend for Arc<Engine> {
    async fn register(
        &self,
        request: RegisterRequest,
        peer: PeerInfo,
    ) -> Result<RegisterOutcome, BackendError> {
        self.register_device(request, peer).await
    }

    async fn operation_status(
        &self,
        request: OperationStatusRequest,
        _peer: PeerInfo,
    ) -> Result<OperationOutcome, BackendError> {
        self.poll_operation(request).await
    }

    async fn registration_state(
        &self,
        request: RegistrationStateRequest,
        peer: PeerInfo,
    ) -> Result<RegistrationState, BackendError> {
        self.lookup(request, peer).await
    }
}

enum Admission {
    Admitted(Admitted),
    Challenge(TpmChallenge),
    Disabled(Arc<Enrollment>),
}

enum Failure {
    Registry(RegistryError),
    Allocation(AllocationError),
    Backend(BackendError),
}

/// Checks the request's ID scope and registration ID; returns the canonical registration ID.
fn check_request(
    catalog: &Catalog,
    id_scope: &str,
    registration_id: &str,
) -> Result<String, BackendError> {
    if !id_scope.eq_ignore_ascii_case(&catalog.service.id_scope) {
        return Err(BackendError::NotFound(format!(
            "unknown ID scope {:?}",
            truncate(id_scope, 64)
        )));
    }
    kdps_api::validation::check_registration_id(registration_id)
        .map_err(|e| BackendError::InvalidArgument(e.to_string()))?;
    Ok(canonical_id(registration_id))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn attestation_error(e: AttestationError) -> BackendError {
    match e.grpc_code() {
        tonic::Code::InvalidArgument => BackendError::InvalidArgument(e.to_string()),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            BackendError::Unauthorized {
                message: e.to_string(),
                dps_code: Some(e.dps_error_code()),
            }
        }
        _ => BackendError::Internal(e.to_string()),
    }
}

fn tpm_error(e: tpm::TpmAttestationError) -> BackendError {
    attestation_error(AttestationError::Tpm(e))
}

fn attestation_name(kind: registry::AttestationType) -> &'static str {
    match kind {
        registry::AttestationType::Tpm => "TPM",
        registry::AttestationType::X509 => "X.509",
        registry::AttestationType::SymmetricKey => "symmetric-key",
    }
}

fn credentials_name(c: &Credentials) -> &'static str {
    match c {
        Credentials::Tpm { .. } => "TPM",
        Credentials::X509Client(_) | Credentials::X509Signing(_) => "X.509",
        Credentials::SymmetricKey(_) => "symmetric-key",
    }
}

fn x509_info(
    chain: &[rustls_pki_types::CertificateDer<'static>],
    group: Option<&str>,
) -> Option<serde_json::Value> {
    let leaf = chain.first()?;
    let info = x509::CertificateInfo::from_der(leaf.as_ref()).ok()?;
    let mut obj = serde_json::json!({ "certificateInfo": info });
    if let (Some(group), Some(map)) = (group, obj.as_object_mut()) {
        map.insert("enrollmentGroupId".into(), group.into());
        if let Some(issuer) = chain.get(1)
            && let Ok(info) = x509::CertificateInfo::from_der(issuer.as_ref())
        {
            map.insert(
                "signingCertificateInfo".into(),
                serde_json::to_value(info).unwrap_or_default(),
            );
        }
    }
    Some(obj)
}

fn reprovision_policy(e: &Enrollment) -> allocation::ReprovisionPolicy {
    allocation::ReprovisionPolicy {
        update_hub_assignment: e.reprovision.update_hub_assignment,
        migrate_device_data: e.reprovision.migrate_device_data,
    }
}

fn policy_of(p: kdps_api::v1alpha1::AllocationPolicy) -> allocation::AllocationPolicy {
    use kdps_api::v1alpha1::AllocationPolicy as A;
    match p {
        A::Hashed => allocation::AllocationPolicy::Hashed,
        A::GeoLatency => allocation::AllocationPolicy::GeoLatency,
        A::Static => allocation::AllocationPolicy::Static,
        A::Custom => allocation::AllocationPolicy::Custom,
    }
}

fn initial_twin(e: &Enrollment) -> DeviceTwin {
    let object = |m: &Option<kdps_api::v1alpha1::JsonObject>| {
        serde_json::Value::Object(m.clone().unwrap_or_default())
    };
    DeviceTwin {
        tags: object(&e.initial_twin.tags),
        desired: object(
            &e.initial_twin
                .properties
                .as_ref()
                .and_then(|p| p.desired.clone()),
        ),
    }
}

/// The answer for a registration record.
pub fn state_of(r: &RegistrationRecord) -> RegistrationState {
    RegistrationState {
        registration_id: r.registration_id.clone(),
        assigned_hub: r.assigned_hub.as_ref().map(|h| h.host_name.clone()),
        device_id: r.device_id.clone(),
        status: r.status,
        substatus: r.substatus,
        etag: Some(r.etag.clone()).filter(|e| !e.is_empty()),
        created: Some(r.created_at),
        last_updated: Some(r.updated_at),
        error: r.last_error.as_ref().map(|e| RegistrationError {
            code: e.code,
            message: e.message.clone(),
        }),
        payload: r.payload.clone(),
        tpm_authentication_key: r
            .tpm_authentication_key
            .as_ref()
            .and_then(|k| B64.decode(k).ok()),
        enrollment_group_id: (r.enrollment.kind == EnrollmentKind::Group)
            .then(|| r.enrollment.name.clone()),
        x509: r.x509.clone(),
    }
}

fn terminal_state(
    registration_id: &str,
    enrollment: &Enrollment,
    status: RegistrationStatus,
    error: Option<RegistrationError>,
) -> RegistrationState {
    let now = jiff::Timestamp::now();
    RegistrationState {
        registration_id: registration_id.to_owned(),
        assigned_hub: None,
        device_id: None,
        status,
        substatus: None,
        etag: None,
        created: Some(now),
        last_updated: Some(now),
        error,
        payload: None,
        tpm_authentication_key: None,
        enrollment_group_id: (enrollment.kind == EnrollmentKind::Group)
            .then(|| enrollment.name.clone()),
        x509: None,
    }
}

fn disabled_state(registration_id: &str, enrollment: &Enrollment) -> RegistrationState {
    terminal_state(
        registration_id,
        enrollment,
        RegistrationStatus::Disabled,
        Some(RegistrationError {
            code: 401_003,
            message: format!(
                "the enrollment record is disabled ({})",
                enrollment.display()
            ),
        }),
    )
}

fn failed_state(
    registration_id: &str,
    enrollment: &Enrollment,
    code: u32,
    message: String,
) -> RegistrationState {
    terminal_state(
        registration_id,
        enrollment,
        RegistrationStatus::Failed,
        Some(RegistrationError { code, message }),
    )
}

fn new_operation_id() -> String {
    format!("kdps.{}", uuid::Uuid::new_v4())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Locks a std mutex, recovering from poisoning (every critical section here leaves the
/// data consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
