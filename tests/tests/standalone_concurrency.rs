//! Standalone server, concurrency: 100 registrations of one device at the same time (in-process
//! kdps-device clients, each on its own TLS connection to the real service) end with one
//! registration record and one device identity, and every call is answered `assigned`.
#![allow(clippy::unwrap_used)]

use kdps_device::client::Credential;
use kdps_tests::Standalone;

const SCOPE: &str = "0ne00000A11";
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

fn manifests() -> String {
    format!(
        r#"
apiVersion: kdps.io/v1alpha1
kind: ProvisioningService
metadata: {{name: dps, namespace: iot}}
spec: {{idScope: {SCOPE}, rateLimits: {{perDevicePerMinute: 10000}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-a, namespace: iot}}
spec: {{hostName: hub-a.example.com, deviceNamespace: hub-a}}
---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-b, namespace: iot}}
spec: {{hostName: hub-b.example.com, deviceNamespace: hub-b}}
---
apiVersion: v1
kind: Secret
metadata: {{name: group-keys, namespace: iot}}
stringData: {{primaryKey: "{GROUP_KEY}"}}
---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: fleet, namespace: iot}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: group-keys}}}}}}
  initialTwin: {{tags: {{site: lab}}}}
"#
    )
}

#[test]
fn hundred_concurrent_registrations_of_one_device_end_with_one_identity() {
    let svc = Standalone::start(&manifests());
    let id = "racer-01";
    let group = kdps_proto::keys::decode_key(GROUP_KEY).unwrap();
    let key = kdps_proto::keys::derive_device_key(&group, id).to_vec();
    let opts = (0..100)
        .map(|_| svc.options(SCOPE, id, Credential::SymmetricKey(key.clone())))
        .collect();
    // All 100 at once.
    let results = kdps_tests::runtime().block_on(kdps_tests::register_all(opts, 100));

    let mut hubs = std::collections::BTreeSet::new();
    for r in &results {
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("a concurrent registration failed: {e}\n{}", svc.log()));
        assert_eq!(r.status, "assigned");
        assert_eq!(r.device_id, id);
        assert_eq!(r.registration_id, id);
        hubs.insert(r.assigned_hub.clone());
    }
    assert_eq!(hubs.len(), 1, "one hub for one device: {hubs:?}");
    let substatuses: std::collections::BTreeSet<_> = results
        .iter()
        .map(|r| r.as_ref().unwrap().substatus.clone())
        .collect();
    assert_eq!(
        substatuses,
        ["initialAssignment".to_owned()].into(),
        "repeats on the same hub keep the first substatus"
    );

    let regs = svc.registrations();
    assert_eq!(regs.len(), 1, "{regs:?}");
    assert_eq!(regs[0]["status"], "assigned");
    let devices = svc.devices();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["deviceId"], id);
    assert_eq!(devices[0]["enabled"], true);
    assert_eq!(devices[0]["twin"]["tags"]["site"], "lab");
    assert_eq!(
        regs[0]["assignedHub"]["hostName"],
        hubs.into_iter().next().unwrap()
    );
}
