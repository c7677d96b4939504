//! Standalone server: the manifest folder is reloaded while the service runs. Enrollments added,
//! disabled and removed, a rotated group key, a new hub link, and a broken file that must not
//! take the working configuration down.
#![allow(clippy::unwrap_used)]

use kdps_tests::Standalone;

const SCOPE: &str = "0ne00000A11";
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const ROTATED_KEY: &str = "cm90YXRlZC1ncm91cC1rZXktMDAwMDAwMDAwMDAwMDAwMDAwMDA=";
const LATE_KEY: &str = "bGF0ZS1kZXZpY2Uta2V5LTAwMDAwMDAwMDAwMDAwMDA=";

fn service() -> String {
    format!(
        r#"
apiVersion: kdps.io/v1alpha1
kind: ProvisioningService
metadata: {{name: dps, namespace: iot}}
spec: {{idScope: {SCOPE}, rateLimits: {{perDevicePerMinute: 1000}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-a, namespace: iot}}
spec: {{hostName: hub-a.example.com, deviceNamespace: hub-a}}
"#
    )
}

fn group(key: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: group-keys, namespace: iot}}
stringData: {{primaryKey: "{key}"}}
---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: fleet, namespace: iot}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: group-keys}}}}}}
"#
    )
}

fn late(status: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: late-keys, namespace: iot}}
stringData: {{primaryKey: "{LATE_KEY}"}}
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: late-01, namespace: iot}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: late-keys}}}}}}
  provisioningStatus: {status}
  iotHubs: [hub-b]
"#
    )
}

#[test]
fn manifest_changes_apply_without_a_restart() {
    let svc = Standalone::start(&service());
    svc.register(SCOPE, "fleet-01", &["--group-key", GROUP_KEY])
        .assert_error(3, "no enrollment admits this device");
    svc.write_manifest("fleet.yaml", &group(GROUP_KEY));
    svc.register(SCOPE, "fleet-01", &["--group-key", GROUP_KEY])
        .json();

    // A new enrollment that needs a new hub: refused until both exist.
    svc.register(SCOPE, "late-01", &["--symmetric-key", LATE_KEY])
        .assert_error(3, "unauthorized");
    svc.write_manifest(
        "hub-b.yaml",
        r#"
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {name: hub-b, namespace: iot}
spec: {hostName: hub-b.example.com, deviceNamespace: hub-b}
"#,
    );
    svc.write_manifest("late.yaml", &late("enabled"));
    let out = svc
        .register(SCOPE, "late-01", &["--symmetric-key", LATE_KEY])
        .json();
    assert_eq!(out["assignedHub"], "hub-b.example.com");

    // Disabled: the device is told so, and its registration is kept.
    svc.write_manifest("late.yaml", &late("disabled"));
    svc.register(SCOPE, "late-01", &["--symmetric-key", LATE_KEY])
        .assert_error(4, "disabled");
    assert_eq!(svc.registrations().len(), 2);

    // A broken file is reported and ignored; the rest keeps working.
    svc.write_manifest("broken.yaml", "kind: [this is not\n  valid: yaml");
    assert!(svc.log().contains("broken.yaml"), "{}", svc.log());
    svc.register(SCOPE, "fleet-02", &["--group-key", GROUP_KEY])
        .json();
    // A broken ProvisioningService keeps the last good configuration serving.
    svc.write_manifest("service.yaml", "apiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {name: dps, namespace: iot}\nspec: {idScope: \"not a scope!\"}\n");
    assert!(
        svc.log().contains("no usable configuration") || svc.log().contains("idScope"),
        "{}",
        svc.log()
    );
    svc.register(SCOPE, "fleet-03", &["--group-key", GROUP_KEY])
        .json();
    let (status, _) = kdps_tests::http_get(svc.admin(), "/readyz").unwrap();
    assert_eq!(status, 200, "the last good configuration still serves");
    svc.write_manifest("service.yaml", &service());
    svc.remove_manifest("broken.yaml");

    // Rotated group key: the old key stops working, the new one works, records stay.
    svc.write_manifest("fleet.yaml", &group(ROTATED_KEY));
    svc.register(SCOPE, "fleet-04", &["--group-key", GROUP_KEY])
        .assert_error(3, "unauthorized");
    svc.register(SCOPE, "fleet-04", &["--group-key", ROTATED_KEY])
        .json();

    // The group is removed: its devices are refused; nothing is deleted.
    svc.remove_manifest("fleet.yaml");
    svc.register(SCOPE, "fleet-05", &["--group-key", ROTATED_KEY])
        .assert_error(3, "no enrollment admits this device");
    let regs = svc.registrations();
    let ids: Vec<_> = regs
        .iter()
        .map(|r| r["registrationId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["fleet-01", "fleet-02", "fleet-03", "fleet-04", "late-01"]
    );
    assert_eq!(svc.devices().len(), 5);
}
