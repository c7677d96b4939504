//! Pure mapping between the registry's records and the Kubernetes objects that hold them:
//! [`RegistrationRecord`] ↔ `DeviceRegistration`, [`DeviceRecord`] ↔ `Device`,
//! [`DeviceSecret`] ↔ `Secret`. No I/O; every function here is unit-tested.
//!
//! Names are deterministic (see [`kdps_api::names`]): the DeviceRegistration is named after
//! the canonical registration ID, the Device after the device ID, the key Secret is named by
//! the engine ([`crate::registry::device_secret_name`]). Record fields the `DeviceRegistration`
//! CRD has no field for (the full initial hub, the TPM activation blob, the X.509 certificate
//! info returned to devices) travel in `kdps.io/…` annotations.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kdps_api::names::{
    device_id_labels, device_object_name, is_label_value, registration_id_labels,
    registration_object_name,
};
use kdps_api::v1alpha1 as api;
use serde_json::Value;

use crate::registry::{
    AttestationType, DeviceAuthentication, DeviceCapabilities, DeviceRecord, DeviceSecret,
    DeviceTwin, EnrollmentKind, EnrollmentRef, HubAssignment, LastError, RegistrationRecord,
    RegistrationRef, RegistrationStatus, RegistryError, Substatus, canonical_registration_id,
};

/// Label every object the service writes carries (`app.kubernetes.io/managed-by`).
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "kdps-registration";
/// Annotation holding the hub of the first assignment (JSON [`HubAssignment`]); the CRD's
/// `spec.initialHub` only has the host name, reprovisioning needs the namespace too.
pub const ANNOTATION_INITIAL_HUB: &str = "kdps.io/initial-hub";
/// Annotation holding the TPM `authenticationKey` blob (base64) returned to TPM devices. It is
/// the hub key encrypted to the device's endorsement key: only that TPM can open it, as in DPS,
/// which returns it in `registrationState`.
pub const ANNOTATION_TPM_AUTHENTICATION_KEY: &str = "kdps.io/tpm-authentication-key";
/// Annotation holding the X.509 certificate info returned in `registrationState.x509` (JSON).
pub const ANNOTATION_X509: &str = "kdps.io/x509";
/// Secret data key of the primary device key (base64 text, as enrollment key Secrets).
pub const SECRET_PRIMARY_KEY: &str = api::DEFAULT_PRIMARY_KEY_NAME;
/// Secret data key of the secondary device key.
pub const SECRET_SECONDARY_KEY: &str = api::DEFAULT_SECONDARY_KEY_NAME;

fn invalid(msg: String) -> RegistryError {
    RegistryError::Invalid(msg)
}

fn corrupt(key: String, reason: impl Into<String>) -> RegistryError {
    RegistryError::Corrupt {
        key,
        reason: reason.into(),
    }
}

/// A timestamp as the apiserver stores it: `metav1.Time` has whole seconds.
pub fn to_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn enrollment_label(enrollment: &EnrollmentRef) -> Option<String> {
    let kind = match enrollment.kind {
        EnrollmentKind::Individual => "individualenrollment",
        EnrollmentKind::Group => "enrollmentgroup",
    };
    let value = format!("{kind}.{}", enrollment.name.to_ascii_lowercase());
    is_label_value(&value).then_some(value)
}

fn base_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned())])
}

fn hub_link_label(labels: &mut BTreeMap<String, String>, link: &str) {
    if is_label_value(link) && !link.is_empty() {
        labels.insert(api::LABEL_HUB_LINK.to_owned(), link.to_owned());
    }
}

/// The `DeviceRegistration` object (in `namespace`, the service's) holding `record`. The
/// record's `etag`, `created_at` and `updated_at` are written as given.
pub fn registration_object(
    record: &RegistrationRecord,
    namespace: &str,
) -> Result<api::DeviceRegistration, RegistryError> {
    let id = canonical_registration_id(&record.registration_id);
    if id.is_empty() {
        return Err(invalid("registration ID is empty".into()));
    }
    let status = match record.status {
        RegistrationStatus::Assigned => api::RegistrationStatus::Assigned,
        RegistrationStatus::Assigning => api::RegistrationStatus::Assigning,
        RegistrationStatus::Failed => api::RegistrationStatus::Failed,
        RegistrationStatus::Disabled => api::RegistrationStatus::Disabled,
        RegistrationStatus::Unassigned => {
            return Err(invalid(format!(
                "registration '{id}': status unassigned is never stored"
            )));
        }
    };
    let mut labels = base_labels();
    labels.extend(registration_id_labels(&id));
    if let Some(device_id) = &record.device_id {
        labels.extend(device_id_labels(device_id));
    }
    if let Some(value) = enrollment_label(&record.enrollment) {
        labels.insert(api::LABEL_ENROLLMENT.to_owned(), value);
    }
    if let Some(hub) = &record.assigned_hub {
        hub_link_label(&mut labels, &hub.link_name);
    }
    let mut annotations = BTreeMap::new();
    let encode = |what: &str, v: Result<String, serde_json::Error>| {
        v.map_err(|e| invalid(format!("registration '{id}': cannot encode {what}: {e}")))
    };
    if let Some(hub) = &record.initial_hub {
        annotations.insert(
            ANNOTATION_INITIAL_HUB.to_owned(),
            encode("initial hub", serde_json::to_string(hub))?,
        );
    }
    if let Some(key) = &record.tpm_authentication_key {
        annotations.insert(ANNOTATION_TPM_AUTHENTICATION_KEY.to_owned(), key.clone());
    }
    if let Some(x509) = &record.x509 {
        annotations.insert(
            ANNOTATION_X509.to_owned(),
            encode("x509 info", serde_json::to_string(x509))?,
        );
    }
    let hub = record.assigned_hub.as_ref();
    let spec = api::DeviceRegistrationSpec {
        registration_id: id.clone(),
        enrollment: api::EnrollmentReference {
            kind: match record.enrollment.kind {
                EnrollmentKind::Individual => api::EnrollmentKind::IndividualEnrollment,
                EnrollmentKind::Group => api::EnrollmentKind::EnrollmentGroup,
            },
            name: record.enrollment.name.clone(),
        },
        attestation_type: match record.attestation {
            AttestationType::Tpm => api::AttestationType::Tpm,
            AttestationType::X509 => api::AttestationType::X509,
            AttestationType::SymmetricKey => api::AttestationType::SymmetricKey,
        },
        status,
        substatus: record.substatus.map(|s| match s {
            Substatus::InitialAssignment => api::RegistrationSubstatus::InitialAssignment,
            Substatus::DeviceDataMigrated => api::RegistrationSubstatus::DeviceDataMigrated,
            Substatus::DeviceDataReset => api::RegistrationSubstatus::DeviceDataReset,
            Substatus::ReprovisionedToInitialAssignment => {
                api::RegistrationSubstatus::ReprovisionedToInitialAssignment
            }
        }),
        assigned_hub: hub.map(|h| h.host_name.clone()),
        assigned_hub_link: hub.map(|h| h.link_name.clone()),
        device_namespace: hub.map(|h| h.device_namespace.clone()),
        device_id: record.device_id.clone(),
        initial_hub: record.initial_hub.as_ref().map(|h| h.host_name.clone()),
        etag: Some(record.etag.clone()).filter(|e| !e.is_empty()),
        created_date_time_utc: Some(Time(record.created_at)),
        last_updated_date_time_utc: Some(Time(record.updated_at)),
        last_error: record.last_error.as_ref().map(|e| api::RegistrationError {
            code: i32::try_from(e.code).unwrap_or(i32::MAX),
            message: e.message.clone(),
        }),
        payload: record.payload.clone(),
    };
    let mut obj = api::DeviceRegistration::new(&registration_object_name(&id), spec);
    obj.metadata.namespace = Some(namespace.to_owned());
    obj.metadata.labels = Some(labels);
    obj.metadata.annotations = Some(annotations).filter(|a| !a.is_empty());
    Ok(obj)
}

/// The record a `DeviceRegistration` holds. Fails with [`RegistryError::Corrupt`] when the
/// object is inconsistent (an assigned hub without its link or namespace, a bad annotation).
pub fn record_from_registration(
    obj: &api::DeviceRegistration,
) -> Result<RegistrationRecord, RegistryError> {
    let spec = &obj.spec;
    let key = format!(
        "DeviceRegistration {}/{}",
        obj.metadata.namespace.as_deref().unwrap_or_default(),
        obj.metadata.name.as_deref().unwrap_or_default()
    );
    let annotations = obj.metadata.annotations.clone().unwrap_or_default();
    let assigned_hub = match (
        &spec.assigned_hub,
        &spec.assigned_hub_link,
        &spec.device_namespace,
    ) {
        (None, _, _) => None,
        (Some(host), Some(link), Some(ns)) => Some(HubAssignment {
            host_name: host.clone(),
            link_name: link.clone(),
            device_namespace: ns.clone(),
        }),
        (Some(_), _, _) => {
            return Err(corrupt(
                key,
                "spec.assignedHub is set without assignedHubLink and deviceNamespace",
            ));
        }
    };
    let initial_hub = match annotations.get(ANNOTATION_INITIAL_HUB) {
        Some(json) => Some(serde_json::from_str::<HubAssignment>(json).map_err(|e| {
            corrupt(
                key.clone(),
                format!("annotation {ANNOTATION_INITIAL_HUB}: {e}"),
            )
        })?),
        // Written by hand or by an older service: the host is all we know; when it is the
        // assigned hub, the assignment is the initial hub.
        None => match (&spec.initial_hub, &assigned_hub) {
            (Some(host), Some(hub)) if hub.host_name.eq_ignore_ascii_case(host) => {
                Some(hub.clone())
            }
            _ => None,
        },
    };
    let x509 = annotations
        .get(ANNOTATION_X509)
        .map(|json| {
            serde_json::from_str::<Value>(json)
                .map_err(|e| corrupt(key.clone(), format!("annotation {ANNOTATION_X509}: {e}")))
        })
        .transpose()?;
    let now = Timestamp::now();
    let created_at = spec
        .created_date_time_utc
        .as_ref()
        .or(obj.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    Ok(RegistrationRecord {
        registration_id: canonical_registration_id(&spec.registration_id),
        enrollment: EnrollmentRef {
            kind: match spec.enrollment.kind {
                api::EnrollmentKind::IndividualEnrollment => EnrollmentKind::Individual,
                api::EnrollmentKind::EnrollmentGroup => EnrollmentKind::Group,
            },
            name: spec.enrollment.name.clone(),
        },
        attestation: match spec.attestation_type {
            api::AttestationType::Tpm => AttestationType::Tpm,
            api::AttestationType::X509 => AttestationType::X509,
            api::AttestationType::SymmetricKey => AttestationType::SymmetricKey,
        },
        assigned_hub,
        device_id: spec.device_id.clone(),
        status: match spec.status {
            api::RegistrationStatus::Assigned => RegistrationStatus::Assigned,
            api::RegistrationStatus::Assigning => RegistrationStatus::Assigning,
            api::RegistrationStatus::Failed => RegistrationStatus::Failed,
            api::RegistrationStatus::Disabled => RegistrationStatus::Disabled,
        },
        substatus: spec.substatus.map(|s| match s {
            api::RegistrationSubstatus::InitialAssignment => Substatus::InitialAssignment,
            api::RegistrationSubstatus::DeviceDataMigrated => Substatus::DeviceDataMigrated,
            api::RegistrationSubstatus::DeviceDataReset => Substatus::DeviceDataReset,
            api::RegistrationSubstatus::ReprovisionedToInitialAssignment => {
                Substatus::ReprovisionedToInitialAssignment
            }
        }),
        etag: spec.etag.clone().unwrap_or_default(),
        created_at,
        updated_at: spec
            .last_updated_date_time_utc
            .as_ref()
            .map_or(created_at, |t| t.0),
        last_error: spec.last_error.as_ref().map(|e| LastError {
            code: u32::try_from(e.code).unwrap_or_default(),
            message: e.message.clone(),
        }),
        initial_hub,
        payload: spec.payload.clone(),
        tpm_authentication_key: annotations.get(ANNOTATION_TPM_AUTHENTICATION_KEY).cloned(),
        x509,
    })
}

fn json_object(what: &str, device_id: &str, v: &Value) -> Result<api::JsonObject, RegistryError> {
    match v {
        Value::Object(m) => Ok(m.clone()),
        Value::Null => Ok(api::JsonObject::new()),
        other => Err(invalid(format!(
            "device '{device_id}': twin {what} must be a JSON object, not {other}"
        ))),
    }
}

/// Labels of a Device and its key Secret.
fn device_labels(device: &DeviceRecord) -> BTreeMap<String, String> {
    let mut labels = base_labels();
    labels.extend(device_id_labels(&device.device_id));
    if !device.registration.registration_id.is_empty() {
        labels.extend(registration_id_labels(&device.registration.registration_id));
    }
    hub_link_label(&mut labels, &device.link_name);
    labels
}

/// The `Device` object for `device`, in its namespace. `registration_namespace` is used when
/// the record's back-reference has no namespace.
pub fn device_object(
    device: &DeviceRecord,
    registration_namespace: &str,
) -> Result<api::Device, RegistryError> {
    let authentication = match &device.authentication {
        DeviceAuthentication::SymmetricKey { secret_name } => api::DeviceAuthentication {
            type_: api::AuthenticationType::Sas,
            symmetric_key: Some(api::DeviceSymmetricKey {
                secret_ref: api::SecretKeyRef::new(secret_name.clone()),
            }),
            x509_thumbprint: None,
        },
        DeviceAuthentication::X509 {
            primary_sha1,
            primary_sha256,
            secondary_sha1,
            secondary_sha256,
        } => api::DeviceAuthentication {
            type_: api::AuthenticationType::SelfSigned,
            symmetric_key: None,
            x509_thumbprint: Some(api::X509Thumbprint {
                primary_sha1: Some(primary_sha1.clone()).filter(|s| !s.is_empty()),
                primary_sha256: Some(primary_sha256.clone()).filter(|s| !s.is_empty()),
                secondary_sha1: secondary_sha1.clone(),
                secondary_sha256: secondary_sha256.clone(),
            }),
        },
        DeviceAuthentication::CertificateAuthority {} => api::DeviceAuthentication {
            type_: api::AuthenticationType::CertificateAuthority,
            symmetric_key: None,
            x509_thumbprint: None,
        },
    };
    let registration_ref = (!device.registration.registration_id.is_empty()).then(|| {
        let id = canonical_registration_id(&device.registration.registration_id);
        api::RegistrationRef {
            namespace: device
                .registration
                .namespace
                .clone()
                .unwrap_or_else(|| registration_namespace.to_owned()),
            name: registration_object_name(&id),
            registration_id: id,
        }
    });
    let spec = api::DeviceSpec {
        device_id: device.device_id.clone(),
        hub: api::DeviceHub {
            host_name: device.hub_host_name.clone(),
            link_name: device.link_name.clone(),
        },
        authentication,
        capabilities: api::Capabilities {
            iot_edge: device.capabilities.iot_edge,
        },
        twin: Some(api::Twin {
            tags: Some(json_object("tags", &device.device_id, &device.twin.tags)?),
            properties: Some(api::TwinProperties {
                desired: Some(json_object(
                    "desired properties",
                    &device.device_id,
                    &device.twin.desired,
                )?),
            }),
        }),
        status: if device.enabled {
            api::DeviceState::Enabled
        } else {
            api::DeviceState::Disabled
        },
        registration_ref,
    };
    let mut obj = api::Device::new(&device_object_name(&device.device_id), spec);
    obj.metadata.namespace = Some(device.namespace.clone());
    obj.metadata.labels = Some(device_labels(device));
    Ok(obj)
}

/// The record a `Device` holds.
pub fn record_from_device(obj: &api::Device) -> Result<DeviceRecord, RegistryError> {
    let spec = &obj.spec;
    let namespace = obj.metadata.namespace.clone().unwrap_or_default();
    let key = format!(
        "Device {namespace}/{}",
        obj.metadata.name.as_deref().unwrap_or_default()
    );
    let auth = &spec.authentication;
    let authentication = match auth.type_ {
        api::AuthenticationType::Sas => {
            let secret = auth
                .symmetric_key
                .as_ref()
                .ok_or_else(|| corrupt(key.clone(), "type sas without symmetricKey"))?;
            DeviceAuthentication::SymmetricKey {
                secret_name: secret.secret_ref.name.clone(),
            }
        }
        api::AuthenticationType::SelfSigned => {
            let t = auth.x509_thumbprint.clone().unwrap_or_default();
            DeviceAuthentication::X509 {
                primary_sha1: t.primary_sha1.unwrap_or_default(),
                primary_sha256: t.primary_sha256.unwrap_or_default(),
                secondary_sha1: t.secondary_sha1,
                secondary_sha256: t.secondary_sha256,
            }
        }
        api::AuthenticationType::CertificateAuthority => {
            DeviceAuthentication::CertificateAuthority {}
        }
    };
    let twin = spec.twin.clone().unwrap_or_default();
    let object = |m: Option<api::JsonObject>| Value::Object(m.unwrap_or_default());
    Ok(DeviceRecord {
        device_id: spec.device_id.clone(),
        namespace: namespace.clone(),
        hub_host_name: spec.hub.host_name.clone(),
        link_name: spec.hub.link_name.clone(),
        authentication,
        capabilities: DeviceCapabilities {
            iot_edge: spec.capabilities.iot_edge,
        },
        twin: DeviceTwin {
            tags: object(twin.tags),
            desired: object(twin.properties.and_then(|p| p.desired)),
        },
        enabled: spec.status == api::DeviceState::Enabled,
        registration: match &spec.registration_ref {
            Some(r) => RegistrationRef {
                namespace: Some(r.namespace.clone()),
                registration_id: r.registration_id.clone(),
            },
            None => RegistrationRef {
                namespace: None,
                registration_id: String::new(),
            },
        },
    })
}

/// The key `Secret` of `device`: type Opaque, `primaryKey`/`secondaryKey` as base64 text
/// (the form enrollment key Secrets use), labelled like the Device.
pub fn secret_object(secret: &DeviceSecret, device: &DeviceRecord) -> Secret {
    let data = BTreeMap::from([
        (
            SECRET_PRIMARY_KEY.to_owned(),
            ByteString(B64.encode(&secret.primary_key).into_bytes()),
        ),
        (
            SECRET_SECONDARY_KEY.to_owned(),
            ByteString(B64.encode(&secret.secondary_key).into_bytes()),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(secret.name.clone()),
            namespace: Some(secret.namespace.clone()),
            labels: Some(device_labels(device)),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The device keys a key `Secret` holds. Messages name the Secret and key, never the value.
pub fn device_secret_from(obj: &Secret) -> Result<DeviceSecret, RegistryError> {
    let namespace = obj.metadata.namespace.clone().unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    let key = format!("Secret {namespace}/{name}");
    let data = obj.data.as_ref();
    let decode = |k: &str| -> Result<Vec<u8>, RegistryError> {
        let raw = data
            .and_then(|d| d.get(k))
            .ok_or_else(|| corrupt(key.clone(), format!("has no key {k:?}")))?;
        let text = std::str::from_utf8(&raw.0)
            .map_err(|_| corrupt(key.clone(), format!("key {k:?} is not text")))?;
        B64.decode(text.trim())
            .map_err(|_| corrupt(key.clone(), format!("key {k:?} is not valid base64")))
    };
    Ok(DeviceSecret {
        primary_key: decode(SECRET_PRIMARY_KEY)?,
        secondary_key: decode(SECRET_SECONDARY_KEY)?,
        namespace,
        name,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hub(name: &str) -> HubAssignment {
        HubAssignment {
            host_name: format!("{name}.example.com"),
            link_name: name.to_owned(),
            device_namespace: format!("ns-{name}"),
        }
    }

    fn record() -> RegistrationRecord {
        let mut r = RegistrationRecord::new(
            "Dev_01",
            EnrollmentRef {
                kind: EnrollmentKind::Group,
                name: "Sensors".into(),
            },
            AttestationType::Tpm,
            RegistrationStatus::Assigned,
        );
        r.assigned_hub = Some(hub("west"));
        r.initial_hub = Some(hub("east"));
        r.device_id = Some("Dev_01".into());
        r.substatus = Some(Substatus::DeviceDataMigrated);
        r.etag = "ImV0YWci".into();
        r.created_at = Timestamp::from_second(1_700_000_000).unwrap();
        r.updated_at = Timestamp::from_second(1_700_000_100).unwrap();
        r.payload = Some(serde_json::json!({"a": [1, 2]}));
        r.tpm_authentication_key = Some("YmxvYg==".into());
        r.x509 = Some(serde_json::json!({"enrollmentGroupId": "g"}));
        r
    }

    #[test]
    fn registration_round_trips() {
        let r = record();
        let obj = registration_object(&r, "iot").unwrap();
        assert_eq!(
            obj.metadata.name.as_deref(),
            Some("dev-01-e443b7f56a19b702")
        );
        assert_eq!(
            obj.metadata.name.as_deref().unwrap(),
            registration_object_name("dev_01")
        );
        assert_eq!(obj.metadata.namespace.as_deref(), Some("iot"));
        let labels = obj.metadata.labels.clone().unwrap();
        assert_eq!(labels[api::LABEL_REGISTRATION_ID], "dev_01");
        assert_eq!(labels[api::LABEL_DEVICE_ID], "Dev_01");
        assert_eq!(labels[api::LABEL_ENROLLMENT], "enrollmentgroup.sensors");
        assert_eq!(labels[api::LABEL_HUB_LINK], "west");
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY);
        assert_eq!(obj.spec.registration_id, "dev_01");
        assert_eq!(obj.spec.assigned_hub.as_deref(), Some("west.example.com"));
        assert_eq!(obj.spec.initial_hub.as_deref(), Some("east.example.com"));
        assert_eq!(obj.spec.device_namespace.as_deref(), Some("ns-west"));
        // The apiserver sees valid JSON with the CRD's field names.
        let json = serde_json::to_value(&obj).unwrap();
        assert_eq!(json["apiVersion"], "kdps.io/v1alpha1");
        assert_eq!(json["kind"], "DeviceRegistration");
        assert_eq!(json["spec"]["attestationType"], "tpm");
        assert_eq!(json["spec"]["substatus"], "deviceDataMigrated");
        assert_eq!(json["spec"]["createdDateTimeUtc"], "2023-11-14T22:13:20Z");
        assert!(json.get("status").is_none_or(Value::is_null));
        let back = record_from_registration(&obj).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn failed_registration_round_trips_without_a_hub() {
        let mut r = RegistrationRecord::new(
            "x",
            EnrollmentRef {
                kind: EnrollmentKind::Individual,
                name: "x".into(),
            },
            AttestationType::SymmetricKey,
            RegistrationStatus::Failed,
        );
        r.created_at = to_seconds(r.created_at);
        r.updated_at = to_seconds(r.updated_at);
        r.last_error = Some(LastError {
            code: 400_209,
            message: "no hub".into(),
        });
        let obj = registration_object(&r, "iot").unwrap();
        assert!(obj.metadata.annotations.is_none());
        assert_eq!(
            obj.metadata.labels.as_ref().unwrap()[api::LABEL_ENROLLMENT],
            "individualenrollment.x"
        );
        assert_eq!(record_from_registration(&obj).unwrap(), r);
    }

    #[test]
    fn unassigned_is_refused_and_corrupt_objects_are_reported() {
        let mut r = record();
        r.status = RegistrationStatus::Unassigned;
        assert!(matches!(
            registration_object(&r, "iot"),
            Err(RegistryError::Invalid(_))
        ));
        let mut obj = registration_object(&record(), "iot").unwrap();
        obj.spec.assigned_hub_link = None;
        let err = record_from_registration(&obj).unwrap_err();
        assert!(err.to_string().contains("assignedHubLink"), "{err}");
        let mut obj = registration_object(&record(), "iot").unwrap();
        obj.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANNOTATION_INITIAL_HUB.into(), "{".into());
        assert!(matches!(
            record_from_registration(&obj),
            Err(RegistryError::Corrupt { .. })
        ));
    }

    #[test]
    fn registration_without_annotations_infers_initial_hub() {
        let mut obj = registration_object(&record(), "iot").unwrap();
        obj.metadata.annotations = None;
        obj.spec.initial_hub = Some("WEST.example.com".into());
        let back = record_from_registration(&obj).unwrap();
        assert_eq!(back.initial_hub, Some(hub("west")));
        assert_eq!(back.tpm_authentication_key, None);
        obj.spec.initial_hub = Some("other.example.com".into());
        assert_eq!(record_from_registration(&obj).unwrap().initial_hub, None);
    }

    fn device(auth: DeviceAuthentication) -> DeviceRecord {
        DeviceRecord {
            device_id: "Dev:1".into(),
            namespace: "hub-west".into(),
            hub_host_name: "west.example.com".into(),
            link_name: "west".into(),
            authentication: auth,
            capabilities: DeviceCapabilities { iot_edge: true },
            twin: DeviceTwin {
                tags: serde_json::json!({"site": "lab"}),
                desired: serde_json::json!({"interval": 30}),
            },
            enabled: true,
            registration: RegistrationRef {
                namespace: Some("iot".into()),
                registration_id: "dev:1".into(),
            },
        }
    }

    #[test]
    fn devices_round_trip_for_every_authentication() {
        for auth in [
            DeviceAuthentication::SymmetricKey {
                secret_name: "kdps-device-x".into(),
            },
            DeviceAuthentication::X509 {
                primary_sha1: "A".repeat(40),
                primary_sha256: "B".repeat(64),
                secondary_sha1: None,
                secondary_sha256: Some("C".repeat(64)),
            },
            DeviceAuthentication::CertificateAuthority {},
        ] {
            let d = device(auth);
            let obj = device_object(&d, "ignored").unwrap();
            assert_eq!(
                obj.metadata.name.as_deref().unwrap(),
                device_object_name("Dev:1")
            );
            assert_eq!(obj.metadata.namespace.as_deref(), Some("hub-west"));
            let labels = obj.metadata.labels.clone().unwrap();
            assert!(labels.contains_key(api::LABEL_DEVICE_ID_HASH), "{labels:?}");
            assert!(labels.contains_key(api::LABEL_REGISTRATION_ID_HASH));
            assert_eq!(labels[api::LABEL_HUB_LINK], "west");
            let reg = obj.spec.registration_ref.clone().unwrap();
            assert_eq!(reg.name, registration_object_name("dev:1"));
            assert_eq!(reg.namespace, "iot");
            assert_eq!(record_from_device(&obj).unwrap(), d);
        }
        let json = serde_json::to_value(
            device_object(
                &device(DeviceAuthentication::SymmetricKey {
                    secret_name: "s".into(),
                }),
                "iot",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(json["spec"]["authentication"]["type"], "sas");
        assert_eq!(
            json["spec"]["authentication"]["symmetricKey"]["secretRef"]["name"],
            "s"
        );
        assert_eq!(
            json["spec"]["twin"]["properties"]["desired"]["interval"],
            30
        );
        assert_eq!(json["spec"]["status"], "enabled");
    }

    #[test]
    fn device_without_namespace_in_back_reference_uses_the_service_namespace() {
        let mut d = device(DeviceAuthentication::CertificateAuthority {});
        d.registration.namespace = None;
        d.enabled = false;
        let obj = device_object(&d, "iot").unwrap();
        assert_eq!(obj.spec.registration_ref.unwrap().namespace, "iot");
        assert_eq!(obj.spec.status, api::DeviceState::Disabled);
        let mut bad = device(DeviceAuthentication::CertificateAuthority {});
        bad.twin.tags = serde_json::json!([1]);
        assert!(matches!(
            device_object(&bad, "iot"),
            Err(RegistryError::Invalid(_))
        ));
    }

    #[test]
    fn secrets_hold_base64_text_and_never_show_keys() {
        let d = device(DeviceAuthentication::SymmetricKey {
            secret_name: "kdps-device-x".into(),
        });
        let s = DeviceSecret {
            namespace: "hub-west".into(),
            name: "kdps-device-x".into(),
            primary_key: vec![1; 32],
            secondary_key: vec![2; 32],
        };
        let obj = secret_object(&s, &d);
        assert_eq!(obj.type_.as_deref(), Some("Opaque"));
        let data = obj.data.clone().unwrap();
        assert_eq!(
            String::from_utf8(data[SECRET_PRIMARY_KEY].0.clone()).unwrap(),
            B64.encode([1u8; 32])
        );
        assert_eq!(
            obj.metadata.labels.as_ref().unwrap()[api::LABEL_HUB_LINK],
            "west"
        );
        assert_eq!(device_secret_from(&obj).unwrap(), s);

        let mut broken = obj.clone();
        broken.data.as_mut().unwrap().insert(
            SECRET_SECONDARY_KEY.into(),
            ByteString(b"not base64!!".to_vec()),
        );
        let err = device_secret_from(&broken).unwrap_err().to_string();
        assert!(
            err.contains("secondaryKey") && !err.contains("not base64!!"),
            "{err}"
        );
        broken.data.as_mut().unwrap().remove(SECRET_PRIMARY_KEY);
        assert!(device_secret_from(&broken).is_err());
    }
}
