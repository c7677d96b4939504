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

/// The hub of device namespace `namespace` in the samples: host `<namespace>.example.com`,
/// link `link-<namespace>`.
pub fn hub(namespace: &str) -> HubAssignment {
    HubAssignment {
        host_name: format!("{namespace}.example.com"),
        link_name: format!("link-{namespace}"),
        device_namespace: namespace.into(),
    }
}

/// [`symmetric_key_write`] for a member of group `sensors` on [`hub`]`(namespace)`, with the
/// keys `[1; 32]` / `[2; 32]`: the write the registry contract tests of both backends use.
pub fn group_member(
    registration_id: &str,
    namespace: &str,
    expected_etag: Option<String>,
) -> IdentityWrite {
    symmetric_key_write(
        registration_id,
        "sensors",
        hub(namespace),
        (vec![1; 32], vec![2; 32]),
        expected_etag,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_a_valid_write() {
        let w = group_member("Dev-1", "hub-a", None);
        w.validate().expect("consistent");
        assert_eq!(w.device.device_id, "dev-1");
    }
}
