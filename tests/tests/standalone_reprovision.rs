//! Standalone server + `kdps-device` CLI, re-provisioning: the enrollments' hubs change in the
//! manifests (reloaded by the running service) and the devices register again. One enrollment
//! per reprovision policy: keep the hub (`updateHubAssignment: false`), move and migrate the
//! twin, move and reset the twin; then back to the first hub.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use kdps_tests::Standalone;

const SCOPE: &str = "0ne00000A11";

fn key(id: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("reprovision-test-key-of-{id:>16}"))
}

/// `(registration ID, reprovisionPolicy, allocation settings)` of the four enrollments.
fn manifests(keep_hubs: &str, moving_hub: &str, twin_version: u32) -> String {
    let mut y = format!(
        r#"
apiVersion: kdps.io/v1alpha1
kind: ProvisioningService
metadata: {{name: dps, namespace: iot}}
spec: {{idScope: {SCOPE}, rateLimits: {{perDevicePerMinute: 1000}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-a, namespace: iot}}
spec: {{hostName: hub-a.example.com, deviceNamespace: hub-a, allocationWeight: 1}}
---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-b, namespace: iot}}
spec: {{hostName: hub-b.example.com, deviceNamespace: hub-b, allocationWeight: 1000}}
"#
    );
    let enrollments = [
        (
            "dev-keep",
            "{updateHubAssignment: false, migrateDeviceData: true}",
            format!("allocationPolicy: hashed, iotHubs: {keep_hubs}"),
        ),
        (
            "dev-control",
            "{updateHubAssignment: true, migrateDeviceData: true}",
            format!("allocationPolicy: hashed, iotHubs: {keep_hubs}"),
        ),
        (
            "dev-migrate",
            "{updateHubAssignment: true, migrateDeviceData: true}",
            format!("allocationPolicy: static, iotHubs: [{moving_hub}]"),
        ),
        (
            "dev-reset",
            "{updateHubAssignment: true, migrateDeviceData: false}",
            format!("allocationPolicy: static, iotHubs: [{moving_hub}]"),
        ),
    ];
    for (id, policy, allocation) in enrollments {
        y.push_str(&format!(
            r#"---
apiVersion: v1
kind: Secret
metadata: {{name: {id}-keys, namespace: iot}}
stringData: {{primaryKey: "{key}"}}
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: {id}, namespace: iot}}
spec: {{attestation: {{symmetricKey: {{secretRef: {{name: {id}-keys}}}}}}, reprovisionPolicy: {policy}, {allocation}, initialTwin: {{tags: {{version: {twin_version}}}}}}}
"#,
            key = key(id)
        ));
    }
    y
}

fn register(svc: &Standalone, id: &str) -> serde_json::Value {
    svc.register(SCOPE, id, &["--symmetric-key", &key(id)])
        .json()
}

/// The enabled Device of `id` (exactly one), and how many retired ones it has.
fn device(svc: &Standalone, id: &str) -> (serde_json::Value, usize) {
    let all: Vec<_> = svc
        .devices()
        .into_iter()
        .filter(|d| d["deviceId"] == id)
        .collect();
    let enabled: Vec<_> = all.iter().filter(|d| d["enabled"] == true).collect();
    assert_eq!(enabled.len(), 1, "{id}: {all:?}");
    (enabled[0].clone(), all.len() - 1)
}

fn check(svc: &Standalone, id: &str, hub: &str, substatus: &str, twin_version: u32) {
    let out = register(svc, id);
    assert_eq!(
        out["assignedHub"],
        format!("{hub}.example.com"),
        "{id}: {out}"
    );
    assert_eq!(out["substatus"], substatus, "{id}: {out}");
    let (d, _) = device(svc, id);
    assert_eq!(d["namespace"], hub, "{id}: {d}");
    assert_eq!(d["twin"]["tags"]["version"], twin_version, "{id}: {d}");
}

#[test]
fn reprovisioning_follows_each_enrollments_policy_when_its_hubs_change() {
    let svc = Standalone::start(&manifests("[hub-a]", "hub-a", 1));
    for id in ["dev-keep", "dev-control", "dev-migrate", "dev-reset"] {
        check(&svc, id, "hub-a", "initialAssignment", 1);
    }

    // hub-b joins (weight 1000) / becomes the static hub; the enrollments' twin is now v2.
    svc.write_manifest("service.yaml", &manifests("[hub-a, hub-b]", "hub-b", 2));
    // updateHubAssignment false: stays, keeps its substatus and twin.
    check(&svc, "dev-keep", "hub-a", "initialAssignment", 1);
    // The same change moves a device whose policy allows it.
    check(&svc, "dev-control", "hub-b", "deviceDataMigrated", 1);
    // Moved and migrated: the twin of the old identity is carried over, not the new initial one.
    check(&svc, "dev-migrate", "hub-b", "deviceDataMigrated", 1);
    // Moved and reset: the enrollment's (new) initial twin.
    check(&svc, "dev-reset", "hub-b", "deviceDataReset", 2);
    // The old identities are kept, disabled.
    for id in ["dev-control", "dev-migrate", "dev-reset"] {
        let (_, retired) = device(&svc, id);
        assert_eq!(retired, 1, "{id}");
    }
    let retired = svc
        .devices()
        .into_iter()
        .find(|d| d["deviceId"] == "dev-migrate" && d["enabled"] == false)
        .unwrap();
    assert_eq!(retired["namespace"], "hub-a");

    // Registering again without a change is idempotent: same hub, same substatus.
    check(&svc, "dev-migrate", "hub-b", "deviceDataMigrated", 1);
    check(&svc, "dev-reset", "hub-b", "deviceDataReset", 2);

    // Back to the first hub; hub-a is no longer a hub of dev-keep, which must move.
    svc.write_manifest("service.yaml", &manifests("[hub-b]", "hub-a", 3));
    check(
        &svc,
        "dev-migrate",
        "hub-a",
        "reprovisionedToInitialAssignment",
        1,
    );
    check(
        &svc,
        "dev-reset",
        "hub-a",
        "reprovisionedToInitialAssignment",
        3,
    );
    check(&svc, "dev-keep", "hub-b", "deviceDataMigrated", 1);

    // Still one registration per device, and exactly one enabled identity each.
    let regs = svc.registrations();
    assert_eq!(regs.len(), 4);
    for r in &regs {
        assert_eq!(r["status"], "assigned");
        assert_eq!(r["initialHub"]["linkName"], "hub-a", "{r}");
    }
    let enabled = svc
        .devices()
        .into_iter()
        .filter(|d| d["enabled"] == true)
        .count();
    assert_eq!(enabled, 4);
}
