//! The registration service's view of its configuration: one ProvisioningService, its links
//! and enrollments, with the key material and certificates they reference already resolved
//! and indexed for the registration path.
//!
//! A [`Catalog`] is an immutable snapshot; configuration sources (the manifest folder in
//! standalone mode, reflectors in Kubernetes mode) build a new one on every change and swap it
//! in. Nothing here does I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kdps_api::v1alpha1::{
    AllocationPolicy, CustomAllocation, EnrollmentGroup, IndividualEnrollment, IoTHubLink,
    ProvisioningService, RateLimits, SecretKeyRef,
};
use kube::ResourceExt as _;

use crate::attestation::symmetric::KeyPair;
use crate::attestation::x509::{ClientCertificates, EnrolledCertificate, SigningCerts};

/// Keys of a Secret, by key name.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Looks up a Secret (in the service namespace) by name.
pub trait SecretSource {
    /// The Secret's data, or `None` when it does not exist.
    fn secret(&self, name: &str) -> Option<SecretData>;
}

impl SecretSource for HashMap<String, SecretData> {
    fn secret(&self, name: &str) -> Option<SecretData> {
        self.get(name).cloned()
    }
}

/// Service-wide settings from the ProvisioningService.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// Namespace of the ProvisioningService (and of its links and enrollments).
    pub namespace: String,
    /// Name of the ProvisioningService.
    pub name: String,
    /// The ID scope devices must present.
    pub id_scope: String,
    /// Default allocation policy for enrollments that set none.
    pub allocation_policy: AllocationPolicy,
    /// Default custom-allocation webhook.
    pub custom_allocation: Option<CustomAllocation>,
    /// Client address → region, for geoLatency.
    pub regions: Vec<(String, Vec<ipnet::IpNet>)>,
    /// Rate limits.
    pub rate_limits: RateLimits,
}

/// A linked hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// IoTHubLink name.
    pub name: String,
    /// Host name devices are told.
    pub host_name: String,
    /// Namespace identities are written to.
    pub device_namespace: String,
    /// Allocation weight, 1..=1000.
    pub weight: u32,
    /// Whether allocation may choose this link.
    pub apply_allocation_policy: bool,
    /// Region, for geoLatency.
    pub region: Option<String>,
}

pub use crate::registry::EnrollmentKind;

/// The Kubernetes kind name of an enrollment kind.
pub fn kind_name(kind: EnrollmentKind) -> &'static str {
    match kind {
        EnrollmentKind::Individual => "IndividualEnrollment",
        EnrollmentKind::Group => "EnrollmentGroup",
    }
}

/// The attestation material of an enrollment, decoded.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// TPM: the enrolled endorsement key.
    Tpm {
        /// Base64 of the marshalled TPM2B_PUBLIC, as enrolled.
        endorsement_key: String,
    },
    /// X.509 individual: the device's own certificates.
    X509Client(ClientCertificates),
    /// X.509 group: the signing certificates (root or intermediate CA).
    X509Signing(SigningCerts),
    /// Symmetric keys (for a group: the group keys).
    SymmetricKey(KeyPair),
}

/// An enrollment, ready for the registration path.
#[derive(Debug)]
pub struct Enrollment {
    /// Individual or group.
    pub kind: EnrollmentKind,
    /// Object name.
    pub name: String,
    /// Individual only: the canonical registration ID.
    pub registration_id: Option<String>,
    /// Individual only: the device ID to create (defaults to the registration ID).
    pub device_id: Option<String>,
    /// Whether the enrollment admits devices.
    pub enabled: bool,
    /// Decoded attestation material, or why it is unusable. An unusable individual
    /// enrollment still blocks its registration ID: a broken enrollment must not silently
    /// hand the device to a group.
    pub credentials: Result<Credentials, String>,
    /// Effective allocation policy.
    pub allocation_policy: AllocationPolicy,
    /// Effective custom webhook.
    pub custom_allocation: Option<CustomAllocation>,
    /// Link names the device may go to (empty = all links with applyAllocationPolicy).
    pub iot_hubs: Vec<String>,
    /// Reprovision policy.
    pub reprovision: kdps_api::v1alpha1::ReprovisionPolicy,
    /// Initial twin.
    pub initial_twin: kdps_api::v1alpha1::Twin,
    /// IoT Edge capability.
    pub iot_edge: bool,
    /// The enrollment object as JSON (without status), for custom-allocation webhooks.
    pub object: serde_json::Value,
}

impl Enrollment {
    /// `Kind/name` for messages.
    pub fn display(&self) -> String {
        format!("{}/{}", kind_name(self.kind), self.name)
    }
}

/// An object the catalog could not use, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `Kind namespace/name`.
    pub object: String,
    /// Why.
    pub reason: String,
}

/// An immutable, indexed snapshot of the configuration.
#[derive(Debug)]
pub struct Catalog {
    /// Service-wide settings.
    pub service: ServiceSettings,
    /// Links by name.
    pub links: BTreeMap<String, Link>,
    individuals: HashMap<String, Arc<Enrollment>>,
    symmetric_groups: Vec<Arc<Enrollment>>,
    x509_groups: Vec<Arc<Enrollment>>,
    /// X.509 groups by the subject (DER) of their signing certificates: a device chain is
    /// only checked against the groups whose CA issued one of its certificates.
    x509_by_subject: HashMap<Vec<u8>, Vec<usize>>,
    /// Objects that were left out or are unusable.
    pub problems: Vec<Problem>,
}

/// Canonical form of a registration ID (DPS compares them case-insensitively).
pub fn canonical_id(id: &str) -> String {
    id.to_ascii_lowercase()
}

impl Catalog {
    /// Builds a catalog from the objects of one namespace. Objects whose credentials cannot
    /// be resolved are reported in `problems`; individual enrollments named in `rejected`
    /// (object name → why validation refused them) and those with unusable credentials are
    /// kept as blocking entries, so the device is refused instead of being admitted by a group.
    pub fn build(
        service: &ProvisioningService,
        links: &[IoTHubLink],
        individuals: &[IndividualEnrollment],
        groups: &[EnrollmentGroup],
        secrets: &dyn SecretSource,
        rejected: &HashMap<String, String>,
    ) -> Result<Catalog, Problem> {
        let namespace = service.namespace().unwrap_or_default();
        let service_name = service.name_any();
        let service_obj = format!("ProvisioningService {namespace}/{service_name}");
        let id_scope = service
            .spec
            .id_scope
            .clone()
            .or_else(|| service.status.as_ref().and_then(|s| s.id_scope.clone()))
            .ok_or_else(|| Problem {
                object: service_obj.clone(),
                reason: "spec.idScope is not set (standalone mode needs it in the manifest)".into(),
            })?;
        let mut problems = Vec::new();
        let mut regions = Vec::new();
        for region in &service.spec.regions {
            let mut nets = Vec::new();
            for cidr in &region.cidrs {
                match cidr.parse::<ipnet::IpNet>() {
                    Ok(n) => nets.push(n),
                    Err(_) => problems.push(Problem {
                        object: service_obj.clone(),
                        reason: format!("region {}: {cidr:?} is not a CIDR", region.name),
                    }),
                }
            }
            regions.push((region.name.clone(), nets));
        }
        let settings = ServiceSettings {
            namespace: namespace.clone(),
            name: service_name,
            id_scope,
            allocation_policy: service.spec.allocation_policy,
            custom_allocation: service.spec.custom_allocation.clone(),
            regions,
            rate_limits: service.spec.rate_limits,
        };

        let mut link_map = BTreeMap::new();
        for link in links {
            let name = link.name_any();
            let weight = u32::try_from(link.spec.allocation_weight)
                .ok()
                .filter(|w| (1..=1000).contains(w));
            let Some(weight) = weight else {
                problems.push(Problem {
                    object: format!("IoTHubLink {namespace}/{name}"),
                    reason: format!(
                        "allocationWeight {} is outside 1-1000",
                        link.spec.allocation_weight
                    ),
                });
                continue;
            };
            link_map.insert(
                name.clone(),
                Link {
                    name,
                    host_name: link.spec.host_name.clone(),
                    device_namespace: link.spec.device_namespace.clone(),
                    weight,
                    apply_allocation_policy: link.spec.apply_allocation_policy,
                    region: link.spec.region.clone(),
                },
            );
        }

        let mut individual_map = HashMap::new();
        for ie in individuals {
            let name = ie.name_any();
            let object = format!("IndividualEnrollment {namespace}/{name}");
            let Some(registration_id) = ie.canonical_registration_id() else {
                problems.push(Problem {
                    object,
                    reason: "no registration ID (spec.registrationId or metadata.name)".into(),
                });
                continue;
            };
            let att = &ie.spec.attestation;
            let credentials = match (&att.tpm, &att.x509, &att.symmetric_key) {
                (Some(tpm), None, None) => {
                    kdps_api::validation::check_endorsement_key(&tpm.endorsement_key)
                        .map(|_| Credentials::Tpm {
                            endorsement_key: tpm.endorsement_key.trim().to_owned(),
                        })
                        .map_err(|e| format!("attestation.tpm.endorsementKey: {e}"))
                }
                (None, Some(x), None) => {
                    let certs = &x.client_certificates;
                    let parse = |field: &str, pem: &str| {
                        EnrolledCertificate::from_pem(pem).map_err(|e| {
                            format!("attestation.x509.clientCertificates.{field}: {e}")
                        })
                    };
                    parse("primary", &certs.primary.certificate).and_then(|primary| {
                        let secondary = certs
                            .secondary
                            .as_ref()
                            .map(|c| parse("secondary", &c.certificate))
                            .transpose()?;
                        Ok(Credentials::X509Client(ClientCertificates {
                            primary,
                            secondary,
                        }))
                    })
                }
                (None, None, Some(sk)) => {
                    resolve_keys(secrets, &sk.secret_ref).map(Credentials::SymmetricKey)
                }
                _ => Err("exactly one of tpm, x509 or symmetricKey must be set".into()),
            };
            let credentials = match rejected.get(&name) {
                // Already reported by whoever rejected it.
                Some(reason) => Err(reason.clone()),
                None => {
                    if let Err(reason) = &credentials {
                        problems.push(Problem {
                            object: object.clone(),
                            reason: reason.clone(),
                        });
                    }
                    credentials
                }
            };
            let s = ie.spec.settings();
            let entry = Enrollment {
                kind: EnrollmentKind::Individual,
                name: name.clone(),
                registration_id: Some(registration_id.clone()),
                device_id: ie.device_id(),
                enabled: ie.is_enabled(),
                credentials,
                allocation_policy: s.effective_allocation_policy(settings.allocation_policy),
                custom_allocation: s
                    .effective_custom_allocation(settings.custom_allocation.as_ref())
                    .cloned(),
                iot_hubs: ie.spec.iot_hubs.clone(),
                reprovision: ie.spec.reprovision_policy,
                initial_twin: ie.spec.initial_twin.clone().unwrap_or_default(),
                iot_edge: ie.spec.capabilities.iot_edge,
                object: webhook_object(ie),
            };
            if let Some(previous) = individual_map.insert(registration_id.clone(), Arc::new(entry))
            {
                problems.push(Problem {
                    object,
                    reason: format!(
                        "registration ID {registration_id:?} is also enrolled by IndividualEnrollment {}; the one loaded last wins",
                        previous.name
                    ),
                });
            }
        }

        let mut symmetric_groups = Vec::new();
        let mut x509_groups = Vec::new();
        for g in groups {
            let name = g.name_any();
            let object = format!("EnrollmentGroup {namespace}/{name}");
            let att = &g.spec.attestation;
            let credentials = match (&att.x509, &att.symmetric_key) {
                (Some(x), None) => {
                    let certs = &x.signing_certificates;
                    SigningCerts::from_pem(
                        &certs.primary.certificate,
                        certs.secondary.as_ref().map(|c| c.certificate.as_str()),
                    )
                    .map(Credentials::X509Signing)
                    .map_err(|e| format!("attestation.x509.signingCertificates: {e}"))
                }
                (None, Some(sk)) => {
                    resolve_keys(secrets, &sk.secret_ref).map(Credentials::SymmetricKey)
                }
                _ => Err("exactly one of x509 or symmetricKey must be set".into()),
            };
            let credentials = match credentials {
                Ok(c) => c,
                Err(reason) => {
                    // An unusable group admits nobody; leaving it out has the same effect.
                    problems.push(Problem { object, reason });
                    continue;
                }
            };
            let s = g.spec.settings();
            let entry = Arc::new(Enrollment {
                kind: EnrollmentKind::Group,
                name,
                registration_id: None,
                device_id: None,
                enabled: g.is_enabled(),
                allocation_policy: s.effective_allocation_policy(settings.allocation_policy),
                custom_allocation: s
                    .effective_custom_allocation(settings.custom_allocation.as_ref())
                    .cloned(),
                iot_hubs: g.spec.iot_hubs.clone(),
                reprovision: g.spec.reprovision_policy,
                initial_twin: g.spec.initial_twin.clone().unwrap_or_default(),
                iot_edge: g.spec.capabilities.iot_edge,
                object: webhook_object(g),
                credentials: Ok(credentials.clone()),
            });
            match credentials {
                Credentials::X509Signing(_) => x509_groups.push(entry),
                _ => symmetric_groups.push(entry),
            }
        }
        // Deterministic group order on every replica.
        symmetric_groups.sort_by(|a, b| a.name.cmp(&b.name));
        x509_groups.sort_by(|a, b| a.name.cmp(&b.name));
        let mut x509_by_subject: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        for (i, g) in x509_groups.iter().enumerate() {
            if let Ok(Credentials::X509Signing(signing)) = &g.credentials {
                let certs = std::iter::once(&signing.primary).chain(signing.secondary.as_ref());
                for der in certs {
                    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) {
                        let slot = x509_by_subject
                            .entry(cert.subject().as_raw().to_vec())
                            .or_default();
                        if !slot.contains(&i) {
                            slot.push(i);
                        }
                    }
                }
            }
        }

        Ok(Catalog {
            service: settings,
            links: link_map,
            individuals: individual_map,
            symmetric_groups,
            x509_groups,
            x509_by_subject,
            problems,
        })
    }

    /// The individual enrollment for a registration ID (any case).
    pub fn individual(&self, registration_id: &str) -> Option<&Arc<Enrollment>> {
        self.individuals.get(&canonical_id(registration_id))
    }

    /// Symmetric-key enrollment groups, in name order.
    pub fn symmetric_groups(&self) -> &[Arc<Enrollment>] {
        &self.symmetric_groups
    }

    /// X.509 enrollment groups, in name order.
    pub fn x509_groups(&self) -> &[Arc<Enrollment>] {
        &self.x509_groups
    }

    /// The X.509 groups whose signing certificate's subject is one of `issuers` (raw DER
    /// names), in name order, each once.
    pub fn x509_groups_issuing<'a>(
        &self,
        issuers: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<&Arc<Enrollment>> {
        let mut idx: Vec<usize> = issuers
            .into_iter()
            .filter_map(|name| self.x509_by_subject.get(name))
            .flatten()
            .copied()
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .filter_map(|i| self.x509_groups.get(i))
            .collect()
    }

    /// A group by name.
    pub fn group(&self, name: &str) -> Option<&Arc<Enrollment>> {
        self.symmetric_groups
            .iter()
            .chain(&self.x509_groups)
            .find(|g| g.name == name)
    }

    /// Number of enrollments (individual, group).
    pub fn enrollment_counts(&self) -> (usize, usize) {
        (
            self.individuals.len(),
            self.symmetric_groups.len() + self.x509_groups.len(),
        )
    }

    /// The links an enrollment may be assigned to: its `iotHubs` (or every link) that exist
    /// and have applyAllocationPolicy, in name order.
    pub fn eligible_links(&self, enrollment: &Enrollment) -> Vec<&Link> {
        self.links
            .values()
            .filter(|l| l.apply_allocation_policy)
            .filter(|l| enrollment.iot_hubs.is_empty() || enrollment.iot_hubs.contains(&l.name))
            .collect()
    }
}

fn webhook_object<K: kube::Resource + serde::Serialize>(obj: &K) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).unwrap_or(serde_json::Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("managedFields");
        }
    }
    v
}

/// Reads and decodes the keys a SecretKeyRef points to. Messages name the Secret and key,
/// never the key material.
fn resolve_keys(secrets: &dyn SecretSource, r: &SecretKeyRef) -> Result<KeyPair, String> {
    let data = secrets
        .secret(&r.name)
        .ok_or_else(|| format!("Secret {:?} not found", r.name))?;
    let decode = |key_name: &str| -> Result<Option<Vec<u8>>, String> {
        match data.get(key_name) {
            None => Ok(None),
            Some(raw) => {
                let text = std::str::from_utf8(raw)
                    .map_err(|_| format!("Secret {:?} key {key_name:?} is not text", r.name))?;
                kdps_proto::keys::decode_key(text)
                    .map(Some)
                    .map_err(|e| format!("Secret {:?} key {key_name:?}: {e}", r.name))
            }
        }
    };
    let primary = decode(&r.primary_key_name)?
        .ok_or_else(|| format!("Secret {:?} has no key {:?}", r.name, r.primary_key_name))?;
    let secondary = decode(&r.secondary_key_name)?;
    Ok(KeyPair { primary, secondary })
}
