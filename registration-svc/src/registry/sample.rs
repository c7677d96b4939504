//! A complete, consistent [`IdentityWrite`] for a symmetric-key group member: what the engine
//! writes for one assignment, for the registry contract tests of both backends, the scale tests
//! and the benchmarks' pre-population, which must all store the same shape the engine does.

use super::{
    AttestationType, DeviceAuthentication, DeviceCapabilities, DeviceRecord, DeviceSecret,
    DeviceTwin, EnrollmentKind, EnrollmentRef, HubAssignment, IdentityWrite, RegistrationRecord,
    RegistrationRef, RegistrationStatus, Substatus, device_secret_name,
};

/// The write for `registration_id` as a member of group `group`, assigned (initial assignment)
/// to `hub` with the device keys `keys` (primary, secondary). The device ID is the lowercase
/// registration ID; the Device carries a small twin (`tags.site`, `desired.interval`) and no
/// namespace in its back-reference. Callers adjust fields for their case.
pub fn symmetric_key_write(
    registration_id: &str,
    group: &str,
    hub: HubAssignment,
    keys: (Vec<u8>, Vec<u8>),
    expected_etag: Option<String>,
) -> IdentityWrite {
    let device_id = registration_id.to_ascii_lowercase();
    let secret_name = device_secret_name(&device_id);
    let mut registration = RegistrationRecord::new(
        registration_id,
        EnrollmentRef {
            kind: EnrollmentKind::Group,
            name: group.into(),
        },
        AttestationType::SymmetricKey,
        RegistrationStatus::Assigned,
    );
    registration.assigned_hub = Some(hub.clone());
    registration.initial_hub = Some(hub.clone());
    registration.device_id = Some(device_id.clone());
    registration.substatus = Some(Substatus::InitialAssignment);
    IdentityWrite {
        secret: Some(DeviceSecret {
            namespace: hub.device_namespace.clone(),
            name: secret_name.clone(),
            primary_key: keys.0,
            secondary_key: keys.1,
        }),
        device: DeviceRecord {
            device_id,
            namespace: hub.device_namespace.clone(),
            hub_host_name: hub.host_name.clone(),
            link_name: hub.link_name.clone(),
            authentication: DeviceAuthentication::SymmetricKey { secret_name },
            capabilities: DeviceCapabilities::default(),
            twin: DeviceTwin {
                tags: serde_json::json!({"site": "lab"}),
                desired: serde_json::json!({"interval": 30}),
            },
            enabled: true,
            registration: RegistrationRef {
                namespace: None,
                registration_id: registration_id.into(),
            },
        },
        previous_device: None,
        registration,
        expected_etag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_a_valid_write() {
        let hub = HubAssignment {
            host_name: "a.example.com".into(),
            link_name: "a".into(),
            device_namespace: "hub-a".into(),
        };
        let w = symmetric_key_write("Dev-1", "sensors", hub, (vec![1; 32], vec![2; 32]), None);
        w.validate().expect("consistent");
        assert_eq!(w.device.device_id, "dev-1");
    }
}
