//! The unmodified Azure IoT device provisioning SDK for Node (npm packages pinned in
//! `tests/azure-sdk/package-lock.json`, installed by `scripts/install-test-deps.sh`) against a
//! standalone kdps over the DPS HTTPS protocol.
//!
//! The SDK's HTTP transport always dials `https://<host>:443` and has no CA option, so kdps
//! listens on 127.0.0.1:443 (needs root, as in CI), the SDK connects to `localhost`, and Node
//! trusts the kdps CA through `NODE_EXTRA_CA_CERTS`. One test function runs every case in turn:
//! only one process can hold :443 (a file lock also keeps other test binaries off it).
//!
//! Cases: individual symmetric key, group symmetric key (derived key), X.509 individual, X.509
//! group through an intermediate, a disabled enrollment, a wrong key, a custom-allocation
//! webhook payload, and TPM (`azure-iot-security-tpm` on swtpm through a simulator-protocol
//! bridge in `register.js`). Finally the gRPC front end sees what the SDK registered: one engine
//! and one store behind both front ends.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kdps_tests::pki::{Ca, Leaf, indent};
use kdps_tests::swtpm::Swtpm;
use kdps_tests::webhook::Webhook;
use kdps_tests::{Standalone, repo_path};
use serde_json::{Value, json};

const SCOPE: &str = "0ne00000A11";
const HUB: &str = "hub-west.example.com";
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const DEVICE_KEY: &str = "c2Vuc29yLWtleS0wMDAwMDAwMDAwMDAwMDAwMDAwMDA=";
const WRONG_KEY: &str = "d3Jvbmcta2V5LTAwMDAwMDAwMDAwMDAwMDAwMDAwMDA=";

/// Fails (never skips) when Node or the SDK is missing.
fn node_project() -> PathBuf {
    let dir = repo_path("tests/azure-sdk");
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`node --version` failed ({}): install Node.js (scripts/install-test-deps.sh does)",
            o.status
        ),
        Err(e) => panic!(
            "Node.js is required by the Azure SDK compatibility test but `node` cannot be run ({e}): \
             install it with scripts/install-test-deps.sh"
        ),
    }
    for package in [
        "azure-iot-provisioning-device",
        "azure-iot-provisioning-device-http",
        "azure-iot-security-symmetric-key",
        "azure-iot-security-x509",
        "azure-iot-security-tpm",
    ] {
        assert!(
            dir.join("node_modules").join(package).is_dir(),
            "the npm package {package} is not installed in {}: run scripts/install-test-deps.sh \
             (npm ci --prefix tests/azure-sdk)",
            dir.display()
        );
    }
    dir
}

/// Holds :443 for this process: a lock file against other test processes, and a bind probe
/// that turns "not root" and "port taken" into clear failures.
fn lock_port_443() -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("kdps-tests-port-443.lock"))
        .unwrap();
    lock.lock().unwrap();
    match std::net::TcpListener::bind("127.0.0.1:443") {
        Ok(probe) => drop(probe),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => panic!(
            "cannot listen on 127.0.0.1:443 ({e}): the Azure Node SDK only dials port 443, so this \
             test needs root (as in CI) or CAP_NET_BIND_SERVICE"
        ),
        Err(e) => panic!("cannot listen on 127.0.0.1:443 ({e}): is another process using it?"),
    }
    lock
}

/// Runs `register.js` with `options`; returns its one JSON line.
fn run_sdk(project: &Path, ca: &Path, options: &Value) -> Value {
    let out = Command::new("node")
        .arg(project.join("register.js"))
        .arg(options.to_string())
        .current_dir(project)
        .env("NODE_EXTRA_CA_CERTS", ca)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "register.js failed ({}) for {options}:\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("register.js printed no JSON ({e}):\nstdout: {stdout}\nstderr: {stderr}")
    })
}

fn assigned(out: &Value, what: &str, log: &str) -> Value {
    assert_eq!(
        out["ok"], true,
        "{what}: the SDK reported an error: {out}\nservice log:\n{log}"
    );
    let result = out["result"].clone();
    assert_eq!(result["status"], "assigned", "{what}: {result}");
    assert_eq!(result["assignedHub"], HUB, "{what}: {result}");
    result
}

fn manifests(individual_x509: &Leaf, root: &Ca, hook: &Webhook, tpm: &(String, String)) -> String {
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
spec: {{hostName: {HUB}, deviceNamespace: hub-west}}
---
apiVersion: v1
kind: Secret
metadata: {{name: group-keys, namespace: iot}}
stringData: {{primaryKey: "{GROUP_KEY}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: device-keys, namespace: iot}}
stringData: {{primaryKey: "{DEVICE_KEY}"}}
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: node-sym-01, namespace: iot}}
spec:
  deviceId: node-sym-device
  attestation: {{symmetricKey: {{secretRef: {{name: device-keys}}}}}}
---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: node-sensors, namespace: iot}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: group-keys}}}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: node-disabled, namespace: iot}}
spec:
  provisioningStatus: disabled
  attestation: {{symmetricKey: {{secretRef: {{name: device-keys}}}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: node-custom, namespace: iot}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: device-keys}}}}}}
  allocationPolicy: custom
  customAllocation:
    webhookUrl: "{webhook}"
    timeoutSeconds: 10
    caBundle: |
{hook_ca}---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: node-x509-01, namespace: iot}}
spec:
  attestation:
    x509:
      clientCertificates:
        primary:
          certificate: |
{leaf}---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: node-x509-fleet, namespace: iot}}
spec:
  attestation:
    x509:
      signingCertificates:
        primary:
          certificate: |
{root_pem}---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: node-tpm, namespace: iot}}
spec:
  registrationId: "{tpm_id}"
  attestation:
    tpm: {{endorsementKey: "{tpm_ek}"}}
"#,
        webhook = hook.url(),
        hook_ca = indent(hook.ca_pem(), 6),
        leaf = indent(&individual_x509.cert_pem, 12),
        root_pem = indent(root.pem(), 12),
        tpm_id = tpm.1,
        tpm_ek = tpm.0,
    )
}

#[test]
fn azure_node_sdk_provisions_against_kdps() {
    let project = node_project();
    let work = tempfile::tempdir().unwrap();

    // X.509: a self-signed device certificate for the individual enrollment; a root CA
    // enrolled as the group's signing certificate and a device signed by an intermediate
    // (the device presents leaf + intermediate).
    let individual = Leaf::self_signed("node-x509-01");
    let (_, individual_cert, individual_key) = individual.write(work.path(), "individual");
    let root = Ca::root("kdps node test root");
    let intermediate = root.intermediate("kdps node test intermediate");
    let grouped = intermediate.leaf("node-x509-group-07");
    let (grouped_chain, _, grouped_key) = grouped.write(work.path(), "grouped");

    // Custom allocation: the webhook returns a payload for the device.
    let hook = Webhook::start(|request| {
        let device_payload = request["deviceRuntimeContext"]["payload"].clone();
        (
            200,
            json!({
                "iotHubHostName": HUB,
                "payload": {"from": "webhook", "echo": device_payload},
            }),
        )
    });

    // TPM: the SDK reads the EK from swtpm (it creates the EK and SRK on first use).
    let tpm = Swtpm::start();
    let ek = run_sdk(
        &project,
        Path::new("/dev/null"),
        &json!({"attestation": "tpm-ek", "swtpmPort": tpm.port()}),
    );
    assert_eq!(ek["ok"], true, "reading the EK through the SDK: {ek}");
    let tpm_identity = (
        ek["result"]["endorsementKey"].as_str().unwrap().to_owned(),
        ek["result"]["registrationId"].as_str().unwrap().to_owned(),
    );

    let _port = lock_port_443();
    let svc = Standalone::start_on(
        &manifests(&individual, &root, &hook, &tpm_identity),
        443,
        &[],
    );
    let ca = svc.ca();
    let sdk = |options: Value| {
        let mut options = options;
        options["host"] = json!("localhost");
        options["idScope"] = json!(SCOPE);
        run_sdk(&project, &ca, &options)
    };

    // 1. Individual symmetric key.
    let r = assigned(
        &sdk(
            json!({"attestation": "symmetricKey", "registrationId": "node-sym-01", "key": DEVICE_KEY}),
        ),
        "individual symmetric key",
        &svc.log(),
    );
    assert_eq!(r["registrationId"], "node-sym-01");
    assert_eq!(r["deviceId"], "node-sym-device");
    assert_eq!(r["substatus"], "initialAssignment");
    for field in ["createdDateTimeUtc", "lastUpdatedDateTimeUtc"] {
        let t = r[field].as_str().unwrap();
        assert!(t.ends_with('Z') && t.len() == 28, "{field}: {t}");
    }
    assert!(r["etag"].as_str().is_some_and(|e| !e.is_empty()), "{r}");

    // 2. Group symmetric key: the device key derived from the group key.
    let r = assigned(
        &sdk(
            json!({"attestation": "symmetricKey", "registrationId": "node-sensor-42", "groupKey": GROUP_KEY}),
        ),
        "group symmetric key",
        &svc.log(),
    );
    assert_eq!(r["deviceId"], "node-sensor-42");
    assert_eq!(r["symmetricKey"]["enrollmentGroupId"], "node-sensors");

    // 3. X.509 individual enrollment.
    let r = assigned(
        &sdk(json!({
            "attestation": "x509", "registrationId": "node-x509-01",
            "certFile": individual_cert, "keyFile": individual_key,
        })),
        "X.509 individual",
        &svc.log(),
    );
    assert_eq!(r["deviceId"], "node-x509-01");
    assert_eq!(
        r["x509"]["certificateInfo"]["subjectName"]
            .as_str()
            .map(|s| s.contains("node-x509-01")),
        Some(true),
        "{r}"
    );

    // 4. X.509 group, the device certificate signed by an intermediate of the enrolled root.
    let r = assigned(
        &sdk(json!({
            "attestation": "x509", "registrationId": "node-x509-group-07",
            "certFile": grouped_chain, "keyFile": grouped_key,
        })),
        "X.509 group through an intermediate",
        &svc.log(),
    );
    assert_eq!(r["deviceId"], "node-x509-group-07");
    assert_eq!(r["x509"]["enrollmentGroupId"], "node-x509-fleet");

    // 5. A disabled enrollment: DPS's terminal status `disabled`, which the Node SDK does not
    //    know and reports as an error.
    let out = sdk(
        json!({"attestation": "symmetricKey", "registrationId": "node-disabled", "key": DEVICE_KEY}),
    );
    assert_eq!(
        out["ok"], false,
        "disabled enrollment must not provision: {out}"
    );
    assert!(
        out["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled")),
        "{out}"
    );

    // 6. A wrong key: 401, which the SDK reports as UnauthorizedError.
    let out = sdk(
        json!({"attestation": "symmetricKey", "registrationId": "node-sym-01", "key": WRONG_KEY}),
    );
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["error"]["name"], "UnauthorizedError", "{out}");
    assert_eq!(out["error"]["statusCode"], 401, "{out}");

    // 7. Custom allocation: the device's payload reaches the webhook, the webhook's payload
    //    reaches the device.
    let r = assigned(
        &sdk(json!({
            "attestation": "symmetricKey", "registrationId": "node-custom", "key": DEVICE_KEY,
            "payload": {"model": "thermostat", "fw": 3},
        })),
        "custom allocation payload",
        &svc.log(),
    );
    assert_eq!(
        r["payload"],
        json!({"from": "webhook", "echo": {"model": "thermostat", "fw": 3}})
    );
    let requests = hook.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0]["deviceRuntimeContext"]["payload"],
        json!({"model": "thermostat", "fw": 3})
    );

    // 8. TPM: 401 challenge, the SDK imports the key into swtpm, signs the SAS with it, and
    //    re-activates `registrationState.tpm.authenticationKey`. (TpmRegistration hands back the
    //    whole operation result, not just the registrationState.)
    let mut out = sdk(json!({"attestation": "tpm", "swtpmPort": tpm.port()}));
    assert_eq!(out["result"]["status"], "assigned", "{out}");
    out["result"] = out["result"]["registrationState"].clone();
    let r = assigned(&out, "TPM", &svc.log());
    assert_eq!(r["registrationId"], tpm_identity.1);
    assert!(
        r["tpm"]["authenticationKey"]
            .as_str()
            .is_some_and(|k| k.len() > 100),
        "{r}"
    );

    // One engine, one store: the registrations the SDK made are the service's records, and the
    // gRPC front end re-registers the same device to the same identity.
    let records = svc.registrations();
    for id in [
        "node-sym-01",
        "node-sensor-42",
        "node-x509-01",
        "node-x509-group-07",
        "node-custom",
        tpm_identity.1.as_str(),
    ] {
        assert!(
            records
                .iter()
                .any(|r| r["registrationId"] == id && r["status"] == "assigned"),
            "no assigned record for {id}: {records:?}"
        );
    }
    let grpc = svc
        .register(SCOPE, "node-sensor-42", &["--group-key", GROUP_KEY])
        .json();
    assert_eq!(grpc["deviceId"], "node-sensor-42");
    assert_eq!(grpc["assignedHub"], HUB);
    assert_eq!(grpc["substatus"], "initialAssignment");
}
