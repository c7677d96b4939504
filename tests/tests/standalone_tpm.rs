//! Standalone server + `kdps-device` CLI, TPM: an individual enrollment for the endorsement key
//! of a real software TPM (swtpm), read with `kdps-device tpm endorsement-key`; the device
//! answers the service's challenge with tss-esapi. Missing swtpm fails the test (run
//! scripts/install-test-deps.sh).
#![allow(clippy::unwrap_used)]

use kdps_tests::Standalone;
use kdps_tests::swtpm::Swtpm;

const SCOPE: &str = "0ne00000A11";

fn base() -> String {
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
"#
    )
}

/// `kdps-device tpm endorsement-key` → (endorsementKey, registrationId).
fn endorsement_key(tpm: &Swtpm) -> (String, String) {
    let out = kdps_tests::kdps_device(&["tpm", "endorsement-key", "--tpm", &tpm.tcti()]).json();
    (
        out["endorsementKey"].as_str().unwrap().to_owned(),
        out["registrationId"].as_str().unwrap().to_owned(),
    )
}

fn tpm_enrollment(name: &str, registration_id: &str, ek: &str) -> String {
    format!(
        r#"
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: {name}, namespace: iot}}
spec:
  registrationId: {registration_id}
  deviceId: {name}
  attestation: {{tpm: {{endorsementKey: "{ek}"}}}}
  initialTwin: {{tags: {{attestation: tpm}}}}
"#
    )
}

#[test]
fn tpm_individual_enrollment_with_swtpm() {
    let tpm = Swtpm::start();
    let (ek, registration_id) = endorsement_key(&tpm);
    assert!(
        ek.starts_with("AToAAQAL"),
        "an RSA-2048 EK TPM2B_PUBLIC: {ek}"
    );
    // The registration ID the Azure SDKs derive: base32(SHA-256(EK)), lower case, no padding.
    assert_eq!(registration_id.len(), 52);

    let mut svc = Standalone::start(&base());
    // Not enrolled yet: refused, nothing written.
    svc.register(SCOPE, &registration_id, &["--tpm", &tpm.tcti()])
        .assert_error(3, "TPM devices need one");
    assert!(svc.registrations().is_empty());

    svc.write_manifest(
        "tpm.yaml",
        &tpm_enrollment("tpm-device-01", &registration_id, &ek),
    );
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("tpm.json");
    let out = svc
        .register(
            SCOPE,
            &registration_id,
            &["--tpm", &tpm.tcti(), "--out", out_file.to_str().unwrap()],
        )
        .json();
    assert_eq!(out["status"], "assigned");
    assert_eq!(out["assignedHub"], "hub-west.example.com");
    assert_eq!(out["deviceId"], "tpm-device-01");
    assert_eq!(out["substatus"], "initialAssignment");
    // The hub key was sent encrypted to the TPM (authenticationKey), never in clear.
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert!(
        written["tpmAuthenticationKey"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );
    assert!(written.get("symmetricKey").is_none());

    let regs = svc.registrations();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0]["attestation"], "tpm");
    let devices = svc.devices();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["deviceId"], "tpm-device-01");
    assert_eq!(devices[0]["twin"]["tags"]["attestation"], "tpm");

    // Registering again (e.g. after a reboot) keeps the identity; so does a restart.
    svc.restart();
    let again = svc
        .register(SCOPE, &registration_id, &["--tpm", &tpm.tcti()])
        .json();
    assert_eq!(again["deviceId"], "tpm-device-01");
    assert_eq!(again["assignedHub"], "hub-west.example.com");
    assert_eq!(svc.registrations().len(), 1);
    assert_eq!(svc.devices().len(), 1);
}

#[test]
fn another_tpm_cannot_use_an_enrolled_registration_id() {
    let enrolled = Swtpm::start();
    let other = Swtpm::start();
    let (ek, registration_id) = endorsement_key(&enrolled);
    let (other_ek, _) = endorsement_key(&other);
    assert_ne!(ek, other_ek, "every swtpm has its own endorsement seed");
    let svc = Standalone::start(
        &(base() + "---\n" + &tpm_enrollment("tpm-device-02", &registration_id, &ek)),
    );
    // The other TPM presents its own EK for the enrolled registration ID: refused.
    svc.register(SCOPE, &registration_id, &["--tpm", &other.tcti()])
        .assert_error(3, "TPM endorsement key does not match the enrollment");
    assert!(svc.registrations().is_empty());
    assert!(svc.devices().is_empty());
    // The enrolled TPM works.
    let out = svc
        .register(SCOPE, &registration_id, &["--tpm", &enrolled.tcti()])
        .json();
    assert_eq!(out["deviceId"], "tpm-device-02");
}
