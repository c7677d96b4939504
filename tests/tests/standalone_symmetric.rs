//! Standalone server + `kdps-device` CLI, symmetric keys: individual and group enrollments,
//! a disabled individual enrollment blocking a group device, refusals, restart.
#![allow(clippy::unwrap_used)]

use kdps_tests::Standalone;

const SCOPE: &str = "0ne00000A11";
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const DEVICE_KEY: &str = "c2Vuc29yLWtleS0wMDAwMDAwMDAwMDAwMDAwMDAwMDA=";

fn manifests() -> String {
    format!(
        r#"
apiVersion: kdps.io/v1alpha1
kind: ProvisioningService
metadata: {{name: dps, namespace: iot}}
spec: {{idScope: {SCOPE}, rateLimits: {{perDevicePerMinute: 1000}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-west, namespace: iot}}
spec: {{hostName: hub-west.example.com, deviceNamespace: hub-west}}
---
apiVersion: v1
kind: Secret
metadata: {{name: sensors-keys, namespace: iot}}
stringData: {{primaryKey: "{GROUP_KEY}"}}
---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: sensors, namespace: iot}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: sensors-keys}}}}}}
  initialTwin: {{tags: {{site: lab}}, properties: {{desired: {{interval: 30}}}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: gw-keys, namespace: iot}}
stringData: {{primaryKey: "{DEVICE_KEY}"}}
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: gateway-01, namespace: iot}}
spec:
  deviceId: gw-01
  attestation: {{symmetricKey: {{secretRef: {{name: gw-keys}}}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: sensor-blocked, namespace: iot}}
spec:
  provisioningStatus: disabled
  attestation: {{symmetricKey: {{secretRef: {{name: sensors-keys}}}}}}
"#
    )
}

#[test]
fn group_device_registers_with_a_derived_key() {
    let svc = Standalone::start(&manifests());
    let out = svc
        .register(SCOPE, "sensor-001", &["--group-key", GROUP_KEY])
        .json();
    assert_eq!(out["status"], "assigned");
    assert_eq!(out["assignedHub"], "hub-west.example.com");
    assert_eq!(out["deviceId"], "sensor-001");
    assert_eq!(out["substatus"], "initialAssignment");
    assert_eq!(out["registrationId"], "sensor-001");
    assert_eq!(out["enrollmentGroupId"], "sensors");
    let devices = svc.devices();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["namespace"], "hub-west");
    assert_eq!(devices[0]["twin"]["tags"]["site"], "lab");
    assert_eq!(devices[0]["twin"]["desired"]["interval"], 30);

    // The same derived key, computed by the caller, works as an individual key too.
    let derived = kdps_proto::keys::derive_device_key_b64(GROUP_KEY, "sensor-002").unwrap();
    let out = svc
        .register(SCOPE, "sensor-002", &["--symmetric-key", &derived])
        .json();
    assert_eq!(out["status"], "assigned");
}

#[test]
fn individual_enrollment_uses_its_device_id() {
    let svc = Standalone::start(&manifests());
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("gw.json");
    let out = svc
        .register(
            SCOPE,
            "gateway-01",
            &[
                "--symmetric-key",
                DEVICE_KEY,
                "--out",
                out_file.to_str().unwrap(),
            ],
        )
        .json();
    assert_eq!(out["deviceId"], "gw-01");
    assert!(out.get("enrollmentGroupId").is_none());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&out_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "--out must be private");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(written["assignedHub"], "hub-west.example.com");
    assert!(
        written["connectionString"]
            .as_str()
            .unwrap()
            .starts_with("HostName=hub-west.example.com;DeviceId=gw-01;SharedAccessKey=")
    );
}

#[test]
fn disabled_individual_enrollment_blocks_a_group_device() {
    let svc = Standalone::start(&manifests());
    // The group key would admit the device, but its individual enrollment is disabled.
    let run = svc.register(SCOPE, "sensor-blocked", &["--group-key", GROUP_KEY]);
    run.assert_error(4, "disabled");
    assert!(svc.registrations().is_empty());
    assert!(svc.devices().is_empty());
}

#[test]
fn refusals_write_nothing_and_say_why() {
    let svc = Standalone::start(&manifests());
    let wrong = "d3Jvbmcta2V5LTAwMDAwMDAwMDAwMDAwMDAwMDAwMDA=";
    svc.register(SCOPE, "sensor-009", &["--symmetric-key", wrong])
        .assert_error(3, "unauthorized");
    svc.register(SCOPE, "gateway-01", &["--symmetric-key", wrong])
        .assert_error(3, "signature does not match");
    svc.register("0ne0000FFFF", "sensor-009", &["--group-key", GROUP_KEY])
        .assert_error(1, "unknown ID scope");
    svc.register(SCOPE, "Bad/Id", &["--group-key", GROUP_KEY])
        .assert_error(1, "registration ID");
    // An untrusted server is reported as such, not as a generic failure.
    let other_ca = rcgen::generate_simple_self_signed(vec!["other-ca".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other_ca_path = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_path, other_ca.cert.pem()).unwrap();
    kdps_tests::kdps_device(&[
        "register",
        "--endpoint",
        &svc.endpoint(),
        "--id-scope",
        SCOPE,
        "--registration-id",
        "sensor-009",
        "--group-key",
        GROUP_KEY,
        "--ca-cert",
        other_ca_path.to_str().unwrap(),
    ])
    .assert_error(7, "server not trusted");
    assert!(svc.registrations().is_empty());
    assert!(svc.devices().is_empty());
}

#[test]
fn restart_keeps_every_registration() {
    let mut svc = Standalone::start(&manifests());
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = format!("sensor-r{i}");
        svc.register(SCOPE, &id, &["--group-key", GROUP_KEY]).json();
        ids.push(id);
    }
    let before = svc.registrations();
    svc.restart();
    let after = svc.registrations();
    assert_eq!(before, after);
    assert_eq!(after.len(), 5);
    // Registering again after the restart is a re-registration of the same identity.
    let out = svc
        .register(SCOPE, "sensor-r0", &["--group-key", GROUP_KEY])
        .json();
    assert_eq!(out["deviceId"], "sensor-r0");
    assert_eq!(svc.devices().len(), 5);
}
