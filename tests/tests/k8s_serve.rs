//! Tier 3: `kdps-registration serve` and the Kubernetes registry against a real kube-apiserver
//! (tests/control-plane/up), with the service running as a least-privilege ServiceAccount
//! (tests/k8s/service-rbac.yaml, token from the TokenRequest API).
//!
//! - symmetric-key (individual and group), X.509 (group via an intermediate, individual) and
//!   TPM (swtpm) devices registered with the `kdps-device` CLI: the DeviceRegistration lands in
//!   the service namespace, the Device and key Secret in the link's device namespace, with the
//!   right labels, one field manager, and no key material outside the Secret;
//! - RBAC: the service cannot write outside its linked hub namespaces; a registration to an
//!   unlinked namespace fails with a clear error and writes nothing;
//! - two service processes racing on the same 200 devices leave exactly 200 identities;
//! - the registry contract (the embedded backend's tests, where they apply) against the
//!   apiserver, including crash-safety of the write order.
//!
//! When the control plane cannot start, every test fails with the harness's error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kdps_device::client::Credential;
use kdps_registration::kube::KubeRegistry;
use kdps_registration::registry::sample::{group_member as write_for, hub};
use kdps_registration::registry::{
    AttestationType, DeviceRef, EnrollmentKind, EnrollmentRef, IdentityWrite, LastError,
    RegistrationRecord, RegistrationStatus, Registry, RegistryError, device_secret_name,
};
use kdps_tests::k8s::{Serve, ServiceIdentity, TempNs, client_for, cluster};
use kdps_tests::pki::{Ca, Leaf, indent};
use kdps_tests::swtpm::Swtpm;
use serde_json::Value;

const SCOPE: &str = "0ne00000K8S";
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const DEVICE_KEY: &str = "c2Vuc29yLWtleS0wMDAwMDAwMDAwMDAwMDAwMDAwMDA=";

/// A service namespace, its hub namespaces (all linked and covered by the service's RBAC
/// unless listed in `unlinked`), and the service's identity.
struct Env {
    svc: TempNs,
    hubs: Vec<TempNs>,
    identity: ServiceIdentity,
}

impl Env {
    /// `hubs` hub namespaces; those with index in `without_rbac` get no RoleBinding.
    fn new(hubs: usize, without_rbac: &[usize]) -> Env {
        let svc = TempNs::new("kdps-svc");
        let hubs: Vec<TempNs> = (0..hubs).map(|_| TempNs::new("kdps-hub")).collect();
        let granted: Vec<&str> = hubs
            .iter()
            .enumerate()
            .filter(|(i, _)| !without_rbac.contains(i))
            .map(|(_, h)| h.name.as_str())
            .collect();
        let identity = ServiceIdentity::new(&svc.name, &granted);
        Env {
            svc,
            hubs,
            identity,
        }
    }

    fn hub(&self, i: usize) -> &str {
        &self.hubs[i].name
    }

    /// The ProvisioningService and one IoTHubLink `hub-<i>` per hub namespace.
    fn base(&self) -> String {
        let mut yaml = format!(
            r#"apiVersion: kdps.io/v1alpha1
kind: ProvisioningService
metadata: {{name: dps, namespace: {ns}}}
spec: {{idScope: {SCOPE}, rateLimits: {{perDevicePerMinute: 10000}}}}
"#,
            ns = self.svc.name
        );
        for (i, hub) in self.hubs.iter().enumerate() {
            yaml.push_str(&format!(
                r#"---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-{i}, namespace: {ns}}}
spec: {{hostName: hub-{i}.example.com, deviceNamespace: {hub}}}
"#,
                ns = self.svc.name,
                hub = hub.name
            ));
        }
        yaml
    }

    fn apply(&self, yaml: &str) {
        cluster().apply(yaml);
    }

    fn serve(&self) -> Serve {
        Serve::start(&self.identity.kubeconfig, &self.svc.name, &[])
    }

    fn get(&self, ns: &str, kind: &str, name: &str) -> Value {
        cluster()
            .get(ns, kind, name)
            .unwrap_or_else(|| panic!("{kind} {ns}/{name} does not exist"))
    }
}

fn secret_yaml(ns: &str, name: &str, key: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\nstringData: {{primaryKey: \"{key}\"}}\n"
    )
}

fn derived(registration_id: &str) -> String {
    let group = kdps_proto::keys::decode_key(GROUP_KEY).unwrap();
    B64.encode(kdps_proto::keys::derive_device_key(&group, registration_id))
}

fn labels(obj: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(obj["metadata"]["labels"].clone()).unwrap_or_default()
}

/// Every managedFields entry of `obj` is the service's one field manager, applying.
fn assert_one_apply_manager(obj: &Value) {
    let entries = obj["metadata"]["managedFields"].as_array().unwrap();
    let service: Vec<&Value> = entries
        .iter()
        .filter(|e| e["manager"] == "kdps-registration")
        .collect();
    assert!(
        !service.is_empty(),
        "no kdps-registration manager: {entries:?}"
    );
    for e in service {
        assert_eq!(
            e["operation"], "Apply",
            "writes are server-side applies: {e}"
        );
    }
}

fn secret_text(secret: &Value, key: &str) -> String {
    let b64 = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {secret}"));
    String::from_utf8(B64.decode(b64).unwrap()).unwrap()
}

fn admin_get(serve: &Serve, path: &str) -> (u16, Value) {
    let (status, body) = kdps_tests::http_get(serve.admin(), path).unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn symmetric_key_individual_and_group_write_objects_in_the_right_namespaces() {
    let env = Env::new(1, &[]);
    let (svc, hub) = (env.svc.name.clone(), env.hub(0).to_owned());
    env.apply(&format!(
        "{}{}{}---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: gateway-01, namespace: {svc}}}
spec:
  deviceId: gw-01
  attestation: {{symmetricKey: {{secretRef: {{name: gw-keys}}}}}}
  capabilities: {{iotEdge: true}}
---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: fleet, namespace: {svc}}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: fleet-keys}}}}}}
  initialTwin: {{tags: {{site: lab}}, properties: {{desired: {{interval: 30}}}}}}
",
        env.base(),
        secret_yaml(&svc, "gw-keys", DEVICE_KEY),
        secret_yaml(&svc, "fleet-keys", GROUP_KEY),
    ));
    let serve = env.serve();

    let gw = serve
        .register(SCOPE, "gateway-01", &["--symmetric-key", DEVICE_KEY])
        .json();
    assert_eq!(gw["status"], "assigned");
    assert_eq!(gw["deviceId"], "gw-01");
    assert_eq!(gw["assignedHub"], "hub-0.example.com");
    assert_eq!(gw["substatus"], "initialAssignment");
    let sensor = serve
        .register(SCOPE, "sensor-001", &["--group-key", GROUP_KEY])
        .json();
    assert_eq!(sensor["status"], "assigned");
    assert_eq!(sensor["deviceId"], "sensor-001");

    // DeviceRegistration: in the service namespace, named after the registration ID.
    let reg = env.get(&svc, "deviceregistrations.kdps.io", "gateway-01");
    assert_eq!(reg["spec"]["registrationId"], "gateway-01");
    assert_eq!(reg["spec"]["status"], "assigned");
    assert_eq!(reg["spec"]["deviceId"], "gw-01");
    assert_eq!(reg["spec"]["assignedHub"], "hub-0.example.com");
    assert_eq!(reg["spec"]["assignedHubLink"], "hub-0");
    assert_eq!(reg["spec"]["deviceNamespace"], hub.as_str());
    assert_eq!(reg["spec"]["attestationType"], "symmetricKey");
    assert_eq!(reg["spec"]["enrollment"]["kind"], "IndividualEnrollment");
    assert_eq!(reg["spec"]["etag"], gw["etag"]);
    let l = labels(&reg);
    assert_eq!(l["kdps.io/registration-id"], "gateway-01");
    assert_eq!(l["kdps.io/device-id"], "gw-01");
    assert_eq!(l["kdps.io/enrollment"], "individualenrollment.gateway-01");
    assert_eq!(l["kdps.io/hub-link"], "hub-0");
    assert_eq!(l["app.kubernetes.io/managed-by"], "kdps-registration");
    assert_one_apply_manager(&reg);
    let group_reg = env.get(&svc, "deviceregistrations.kdps.io", "sensor-001");
    assert_eq!(group_reg["spec"]["enrollment"]["kind"], "EnrollmentGroup");
    assert_eq!(
        labels(&group_reg)["kdps.io/enrollment"],
        "enrollmentgroup.fleet"
    );

    // Device: in the link's device namespace, back-referencing the registration.
    let dev = env.get(&hub, "devices.kdps.io", "gw-01");
    assert_eq!(dev["spec"]["deviceId"], "gw-01");
    assert_eq!(dev["spec"]["hub"]["hostName"], "hub-0.example.com");
    assert_eq!(dev["spec"]["hub"]["linkName"], "hub-0");
    assert_eq!(dev["spec"]["status"], "enabled");
    assert_eq!(dev["spec"]["capabilities"]["iotEdge"], true);
    assert_eq!(dev["spec"]["authentication"]["type"], "sas");
    assert_eq!(
        dev["spec"]["authentication"]["symmetricKey"]["secretRef"]["name"],
        device_secret_name("gw-01")
    );
    assert_eq!(dev["spec"]["registrationRef"]["namespace"], svc.as_str());
    assert_eq!(dev["spec"]["registrationRef"]["name"], "gateway-01");
    assert_eq!(labels(&dev)["kdps.io/hub-link"], "hub-0");
    assert_eq!(labels(&dev)["kdps.io/registration-id"], "gateway-01");
    assert_one_apply_manager(&dev);
    let sensor_dev = env.get(&hub, "devices.kdps.io", "sensor-001");
    assert_eq!(sensor_dev["spec"]["twin"]["tags"]["site"], "lab");
    assert_eq!(
        sensor_dev["spec"]["twin"]["properties"]["desired"]["interval"],
        30
    );

    // Key Secrets: Opaque, base64 text keys, next to the Device.
    let secret = env.get(&hub, "secret", &device_secret_name("gw-01"));
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret_text(&secret, "primaryKey"), DEVICE_KEY);
    assert_eq!(labels(&secret)["kdps.io/device-id"], "gw-01");
    assert_one_apply_manager(&secret);
    let sensor_secret = env.get(&hub, "secret", &device_secret_name("sensor-001"));
    assert_eq!(
        secret_text(&sensor_secret, "primaryKey"),
        derived("sensor-001")
    );

    // Nothing in the wrong namespace, and keys only in the Secrets.
    assert!(
        cluster()
            .get_items(&svc, "devices.kdps.io", None)
            .is_empty()
    );
    assert!(
        cluster()
            .get_items(&hub, "deviceregistrations.kdps.io", None)
            .is_empty()
    );
    for obj in [&reg, &group_reg, &dev, &sensor_dev] {
        let text = obj.to_string();
        for key in [
            DEVICE_KEY.to_owned(),
            derived("sensor-001"),
            GROUP_KEY.to_owned(),
        ] {
            assert!(!text.contains(&key), "key material in {text}");
        }
    }
    assert!(!serve.log().contains(DEVICE_KEY) && !serve.log().contains(&derived("sensor-001")));

    // Registering again converges on the same objects, with a new etag.
    let again = serve
        .register(SCOPE, "gateway-01", &["--symmetric-key", DEVICE_KEY])
        .json();
    assert_eq!(again["deviceId"], "gw-01");
    assert_ne!(again["etag"], gw["etag"]);
    let regs = cluster().get_items(
        &svc,
        "deviceregistrations.kdps.io",
        Some("kdps.io/registration-id=gateway-01"),
    );
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0]["spec"]["etag"], again["etag"]);
    assert_eq!(
        regs[0]["spec"]["createdDateTimeUtc"],
        reg["spec"]["createdDateTimeUtc"]
    );
    assert_eq!(cluster().get_items(&hub, "devices.kdps.io", None).len(), 2);

    // Admin listing pages through the apiserver; devices one namespace at a time.
    let (status, page) = admin_get(&serve, "/registrations?limit=1");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().expect("a second page");
    let (_, page2) = admin_get(
        &serve,
        &format!("/registrations?limit=1&after={}", urlencode(next)),
    );
    let ids: BTreeSet<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["items"].as_array().unwrap())
        .map(|r| r["registrationId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from(["gateway-01".into(), "sensor-001".into()])
    );
    let (status, devices) = admin_get(&serve, &format!("/devices?namespace={hub}"));
    assert_eq!(status, 200);
    assert_eq!(devices["items"].as_array().unwrap().len(), 2);
    let (status, err) = admin_get(&serve, "/devices");
    assert_eq!(status, 500);
    assert!(
        err["error"].as_str().unwrap().contains("namespace"),
        "{err}"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `openssl x509 -fingerprint -sha256` of a PEM file: upper-case hex without colons.
fn openssl_sha256(cert: &std::path::Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .expect("openssl (scripts/install-test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_uppercase()
}

#[test]
fn x509_group_via_intermediate_and_individual_certificate() {
    let env = Env::new(1, &[]);
    let (svc, hub) = (env.svc.name.clone(), env.hub(0).to_owned());
    let root = Ca::root("kdps k8s test root");
    let intermediate = root.intermediate("kdps k8s test intermediate");
    let solo = Leaf::self_signed("x509-solo");
    env.apply(&format!(
        "{}---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: x509-fleet, namespace: {svc}}}
spec:
  attestation:
    x509:
      signingCertificates:
        primary:
          certificate: |
{}---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: x509-solo, namespace: {svc}}}
spec:
  attestation:
    x509:
      clientCertificates:
        primary:
          certificate: |
{}",
        env.base(),
        indent(intermediate.pem(), 12),
        indent(&solo.cert_pem, 12),
    ));
    let serve = env.serve();
    let dir = tempfile::tempdir().unwrap();

    let leaf = intermediate.leaf("x509-dev-01");
    let (chain, _, key) = leaf.write(dir.path(), "dev");
    let out = serve
        .register(
            SCOPE,
            "x509-dev-01",
            &[
                "--cert",
                chain.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
        )
        .json();
    assert_eq!(out["status"], "assigned");
    assert_eq!(out["deviceId"], "x509-dev-01");
    let reg = env.get(&svc, "deviceregistrations.kdps.io", "x509-dev-01");
    assert_eq!(reg["spec"]["attestationType"], "x509");
    assert_eq!(reg["spec"]["enrollment"]["name"], "x509-fleet");
    let x509: Value = serde_json::from_str(
        reg["metadata"]["annotations"]["kdps.io/x509"]
            .as_str()
            .expect("x509 info annotation"),
    )
    .unwrap();
    assert!(x509.to_string().contains("x509-dev-01"), "{x509}");
    let dev = env.get(&hub, "devices.kdps.io", "x509-dev-01");
    assert_eq!(
        dev["spec"]["authentication"]["type"],
        "certificateAuthority"
    );
    assert!(dev["spec"]["authentication"].get("symmetricKey").is_none());
    // X.509 devices have no key Secret.
    assert!(
        cluster()
            .get_items(&hub, "secret", Some("kdps.io/device-id=x509-dev-01"))
            .is_empty()
    );

    let (_, solo_cert, solo_key) = solo.write(dir.path(), "solo");
    let out = serve
        .register(
            SCOPE,
            "x509-solo",
            &[
                "--cert",
                solo_cert.to_str().unwrap(),
                "--key",
                solo_key.to_str().unwrap(),
            ],
        )
        .json();
    assert_eq!(out["status"], "assigned");
    let dev = env.get(&hub, "devices.kdps.io", "x509-solo");
    assert_eq!(dev["spec"]["authentication"]["type"], "selfSigned");
    assert_eq!(
        dev["spec"]["authentication"]["x509Thumbprint"]["primarySha256"]
            .as_str()
            .unwrap()
            .to_ascii_uppercase(),
        openssl_sha256(&solo_cert)
    );

    // A certificate from another CA is refused and writes nothing.
    let stranger = Ca::root("stranger").leaf("x509-dev-02");
    let (chain, _, key) = stranger.write(dir.path(), "stranger");
    let run = serve.register(
        SCOPE,
        "x509-dev-02",
        &[
            "--cert",
            chain.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(!run.status.success(), "{run:?}");
    assert!(
        cluster()
            .get(&svc, "deviceregistrations.kdps.io", "x509-dev-02")
            .is_none()
    );
    assert!(
        cluster()
            .get(&hub, "devices.kdps.io", "x509-dev-02")
            .is_none()
    );
}

#[test]
fn tpm_device_with_swtpm_gets_a_device_and_key_secret() {
    let tpm = Swtpm::start();
    let ek = kdps_tests::kdps_device(&["tpm", "endorsement-key", "--tpm", &tpm.tcti()]).json();
    let (ek, registration_id) = (
        ek["endorsementKey"].as_str().unwrap().to_owned(),
        ek["registrationId"].as_str().unwrap().to_owned(),
    );
    let env = Env::new(1, &[]);
    let (svc, hub) = (env.svc.name.clone(), env.hub(0).to_owned());
    env.apply(&format!(
        "{}---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: tpm-device-01, namespace: {svc}}}
spec:
  registrationId: {registration_id}
  deviceId: tpm-device-01
  attestation: {{tpm: {{endorsementKey: \"{ek}\"}}}}
  initialTwin: {{tags: {{attestation: tpm}}}}
",
        env.base()
    ));
    let serve = env.serve();
    let out = serve
        .register(SCOPE, &registration_id, &["--tpm", &tpm.tcti()])
        .json();
    assert_eq!(out["status"], "assigned");
    assert_eq!(out["deviceId"], "tpm-device-01");
    assert_eq!(out["assignedHub"], "hub-0.example.com");

    let reg = env.get(&svc, "deviceregistrations.kdps.io", &registration_id);
    assert_eq!(reg["spec"]["attestationType"], "tpm");
    assert_eq!(reg["spec"]["deviceNamespace"], hub.as_str());
    assert!(
        reg["metadata"]["annotations"]["kdps.io/tpm-authentication-key"]
            .as_str()
            .is_some_and(|k| !k.is_empty()),
        "the activation blob (encrypted to the EK) is kept for status lookups"
    );
    let dev = env.get(&hub, "devices.kdps.io", "tpm-device-01");
    assert_eq!(dev["spec"]["authentication"]["type"], "sas");
    assert_eq!(dev["spec"]["twin"]["tags"]["attestation"], "tpm");
    assert_eq!(
        dev["spec"]["registrationRef"]["registrationId"],
        registration_id.as_str()
    );
    let secret = env.get(&hub, "secret", &device_secret_name("tpm-device-01"));
    let key = secret_text(&secret, "primaryKey");
    assert_eq!(B64.decode(&key).unwrap().len(), 32, "a 256-bit hub key");
    assert!(!reg.to_string().contains(&key) && !dev.to_string().contains(&key));
    assert!(!serve.log().contains(&key));

    // Registering again (a reboot) keeps the hub key: the device's hub credentials stay valid.
    let again = serve
        .register(SCOPE, &registration_id, &["--tpm", &tpm.tcti()])
        .json();
    assert_eq!(again["deviceId"], "tpm-device-01");
    let secret = env.get(&hub, "secret", &device_secret_name("tpm-device-01"));
    assert_eq!(secret_text(&secret, "primaryKey"), key);
    assert_eq!(cluster().get_items(&hub, "devices.kdps.io", None).len(), 1);
}

#[test]
fn rbac_confines_the_service_to_linked_hub_namespaces() {
    // hub 0 is covered by the service's RBAC; hub 1 has a link but no RoleBinding.
    let env = Env::new(2, &[1]);
    let (svc, ok_ns, denied_ns) = (
        env.svc.name.clone(),
        env.hub(0).to_owned(),
        env.hub(1).to_owned(),
    );
    let id = &env.identity;
    // What the ServiceAccount may and may not do, as the apiserver decides it.
    assert!(id.can_i("get", "secrets", &svc));
    assert!(!id.can_i("list", "secrets", &svc), "no listing of Secrets");
    assert!(!id.can_i("watch", "secrets", &svc));
    assert!(id.can_i("watch", "enrollmentgroups.kdps.io", &svc));
    assert!(!id.can_i("create", "enrollmentgroups.kdps.io", &svc));
    assert!(id.can_i("patch", "deviceregistrations.kdps.io", &svc));
    assert!(id.can_i("patch", "devices.kdps.io", &ok_ns));
    assert!(id.can_i("patch", "secrets", &ok_ns));
    assert!(
        !id.can_i("delete", "devices.kdps.io", &ok_ns),
        "never deletes identities"
    );
    assert!(!id.can_i("patch", "deviceregistrations.kdps.io", &ok_ns));
    assert!(!id.can_i("patch", "devices.kdps.io", &denied_ns));
    assert!(!id.can_i("patch", "secrets", &denied_ns));
    assert!(!id.can_i("get", "secrets", &denied_ns));
    assert!(!id.can_i("patch", "devices.kdps.io", "default"));
    assert!(!id.can_i_cluster_wide("list", "devices.kdps.io"));
    assert!(!id.can_i_cluster_wide("list", "secrets"));

    env.apply(&format!(
        "{}{}---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: to-ok, namespace: {svc}}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: group-keys}}}}}}
  allocationPolicy: static
  iotHubs: [hub-0]
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: denied-dev, namespace: {svc}}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: denied-keys}}}}}}
  allocationPolicy: static
  iotHubs: [hub-1]
{}",
        env.base(),
        secret_yaml(&svc, "group-keys", GROUP_KEY),
        secret_yaml(&svc, "denied-keys", DEVICE_KEY),
    ));
    let serve = env.serve();

    // To the linked namespace: works.
    let ok = serve
        .register(SCOPE, "allowed-dev", &["--group-key", GROUP_KEY])
        .json();
    assert_eq!(ok["assignedHub"], "hub-0.example.com");
    assert!(
        cluster()
            .get(&ok_ns, "devices.kdps.io", "allowed-dev")
            .is_some()
    );

    // To the namespace without RBAC: refused by the apiserver, a clear error, nothing written.
    let denied = serve.register(SCOPE, "denied-dev", &["--symmetric-key", DEVICE_KEY]);
    assert!(!denied.status.success(), "{denied:?}");
    let log = serve.log();
    let line = log
        .lines()
        .find(|l| l.contains("denied-dev") && l.contains("forbidden"))
        .unwrap_or_else(|| panic!("no clear forbidden error in the service log:\n{log}"));
    assert!(line.contains(&denied_ns), "{line}");
    assert!(line.contains("RBAC"), "{line}");
    assert!(!log.contains(DEVICE_KEY));
    assert!(
        cluster()
            .get(&svc, "deviceregistrations.kdps.io", "denied-dev")
            .is_none(),
        "no registration record for a refused write"
    );
    assert!(
        cluster()
            .get_items(&denied_ns, "devices.kdps.io", None)
            .is_empty()
    );
    assert!(
        cluster()
            .get_items(
                &denied_ns,
                "secret",
                Some("app.kubernetes.io/managed-by=kdps-registration")
            )
            .is_empty()
    );
}

/// Registers `id` with the group key `group_key` through the CLI; `Ok(json)` or `Err(stderr)`.
fn try_group_register(serve: &Serve, id: &str, group_key: &str) -> Result<Value, String> {
    let run = serve.register(SCOPE, id, &["--group-key", group_key]);
    if run.status.success() {
        Ok(run.json())
    } else {
        Err(run.stderr)
    }
}

/// Polls `f` every 200 ms for up to 30 s until it returns `Some`.
fn eventually<T>(what: &str, serve: &Serve, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 30 s\n{}",
            serve.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn readiness_and_live_changes_follow_the_cluster() {
    let env = Env::new(1, &[]);
    let svc = env.svc.name.clone();
    let serve = Serve::spawn(
        &env.identity.kubeconfig,
        &svc,
        &["--secret-refresh-seconds", "2"],
    );
    // No ProvisioningService yet: alive, not ready.
    let healthz = eventually("healthz", &serve, || {
        kdps_tests::http_get(serve.admin(), "/healthz").ok()
    });
    assert_eq!(healthz.0, 200);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(admin_get(&serve, "/readyz").0, 503);

    // A ProvisioningService without an ID scope: still not ready, until the operator
    // publishes the generated one in status.
    let base = env.base().replace(&format!("idScope: {SCOPE}, "), "");
    env.apply(&base);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(admin_get(&serve, "/readyz").0, 503, "{}", serve.log());
    cluster().kubectl_ok(&[
        "patch",
        "provisioningservice",
        "dps",
        "-n",
        &svc,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!("{{\"status\":{{\"idScope\":\"{SCOPE}\"}}}}"),
    ]);
    serve.wait_ready();

    // An enrollment created while serving is picked up by the reflectors, with its Secret.
    env.apply(&format!(
        "{}---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: fleet, namespace: {svc}}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: fleet-keys}}}}}}
",
        secret_yaml(&svc, "fleet-keys", GROUP_KEY)
    ));
    let first = eventually("new enrollment admits devices", &serve, || {
        try_group_register(&serve, "live-001", GROUP_KEY).ok()
    });
    assert_eq!(first["status"], "assigned");

    // Rotating the Secret's key reaches the service on its refresh: the old key stops
    // working, the new one works.
    const NEW_KEY: &str = "bmV3LWdyb3VwLWtleS0wMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMA==";
    env.apply(&secret_yaml(&svc, "fleet-keys", NEW_KEY));
    let rotated = eventually("rotated key in use", &serve, || {
        try_group_register(&serve, "live-002", NEW_KEY).ok()
    });
    assert_eq!(rotated["status"], "assigned");
    let refused = try_group_register(&serve, "live-003", GROUP_KEY).unwrap_err();
    assert!(refused.contains("unauthorized"), "{refused}");

    // Disabling the enrollment (a spec change) refuses its devices.
    cluster().kubectl_ok(&[
        "patch",
        "enrollmentgroup",
        "fleet",
        "-n",
        &svc,
        "--type=merge",
        "-p",
        "{\"spec\":{\"provisioningStatus\":\"disabled\"}}",
    ]);
    let mut attempt = 0;
    let (id, disabled) = eventually("disabled enrollment", &serve, || {
        // A fresh ID per attempt: attempts before the change reaches the service succeed.
        attempt += 1;
        let id = format!("live-disabled-{attempt}");
        try_group_register(&serve, &id, NEW_KEY)
            .err()
            .map(|e| (id, e))
    });
    assert!(disabled.contains("disabled"), "{disabled}");
    assert!(
        cluster()
            .get(&svc, "deviceregistrations.kdps.io", &id)
            .is_none(),
        "a disabled device gets no registration record"
    );
    assert!(!serve.log().contains(NEW_KEY) && !serve.log().contains(GROUP_KEY));
}

#[test]
fn serve_without_permissions_fails_to_start_with_a_clear_error() {
    let env = Env::new(1, &[]);
    env.apply(&env.base());
    // A ServiceAccount without any Role.
    let c = cluster();
    c.kubectl_ok(&["create", "serviceaccount", "nobody", "-n", &env.svc.name]);
    let token = c.kubectl_ok(&["create", "token", "nobody", "-n", &env.svc.name]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    c.write_token_kubeconfig(&kubeconfig, &token, &env.svc.name);
    let serve = Serve::spawn(&kubeconfig, &env.svc.name, &[]);
    let (status, log) = serve.wait_exit(std::time::Duration::from_secs(60));
    assert!(!status.success());
    assert!(
        log.contains("cannot list ProvisioningService") && log.contains("forbidden"),
        "{log}"
    );
}

#[test]
fn two_replicas_racing_on_200_devices_leave_exactly_200_identities() {
    const DEVICES: usize = 200;
    let env = Env::new(2, &[]);
    let svc = env.svc.name.clone();
    env.apply(&format!(
        "{}{}---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: fleet, namespace: {svc}}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: fleet-keys}}}}}}
  initialTwin: {{tags: {{site: race}}}}
",
        env.base(),
        secret_yaml(&svc, "fleet-keys", GROUP_KEY),
    ));
    let a = env.serve();
    let b = env.serve();

    let ids: Vec<String> = (0..DEVICES).map(|i| format!("race-{i:03}")).collect();
    // Each device registers through both replicas at the same time (adjacent in the stream),
    // alternating which one goes first.
    let mut opts = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let key = B64.decode(derived(id)).unwrap();
        let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        opts.push(first.options(SCOPE, id, Credential::SymmetricKey(key.clone())));
        opts.push(second.options(SCOPE, id, Credential::SymmetricKey(key)));
    }
    let results = kdps_tests::runtime().block_on(kdps_tests::register_all(opts, 32));
    let mut answers: BTreeMap<String, Vec<kdps_device::client::RegistrationResult>> =
        BTreeMap::new();
    for r in results {
        let r = r.unwrap_or_else(|e| {
            panic!(
                "a registration failed: {e}\n--- replica A ---\n{}\n--- replica B ---\n{}",
                a.log(),
                b.log()
            )
        });
        assert_eq!(r.status, "assigned");
        answers
            .entry(r.registration_id.clone())
            .or_default()
            .push(r);
    }
    assert_eq!(answers.len(), DEVICES);

    let regs = cluster().get_items(&svc, "deviceregistrations.kdps.io", None);
    assert_eq!(regs.len(), DEVICES, "exactly one registration per device");
    let mut devices = Vec::new();
    let mut secrets = Vec::new();
    for hub in &env.hubs {
        devices.extend(cluster().get_items(&hub.name, "devices.kdps.io", None));
        secrets.extend(cluster().get_items(
            &hub.name,
            "secret",
            Some("app.kubernetes.io/managed-by=kdps-registration"),
        ));
    }
    assert_eq!(devices.len(), DEVICES, "exactly one Device per device");
    assert_eq!(secrets.len(), DEVICES, "exactly one key Secret per device");
    let per_hub: BTreeSet<&str> = devices
        .iter()
        .map(|d| d["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(per_hub.len(), 2, "hashed allocation uses both hubs");

    let devices: BTreeMap<String, &Value> = devices
        .iter()
        .map(|d| (d["spec"]["deviceId"].as_str().unwrap().to_owned(), d))
        .collect();
    let secrets: BTreeMap<(String, String), &Value> = secrets
        .iter()
        .map(|s| {
            (
                (
                    s["metadata"]["namespace"].as_str().unwrap().to_owned(),
                    s["metadata"]["name"].as_str().unwrap().to_owned(),
                ),
                s,
            )
        })
        .collect();
    for reg in &regs {
        let id = reg["spec"]["registrationId"].as_str().unwrap();
        let both = &answers[id];
        assert_eq!(both.len(), 2);
        // Both replicas told the device the same assignment, and the record is one of them.
        assert_eq!(both[0].assigned_hub, both[1].assigned_hub, "{id}");
        assert_eq!(both[0].device_id, both[1].device_id, "{id}");
        assert_eq!(reg["spec"]["assignedHub"], both[0].assigned_hub.as_str());
        let etag = reg["spec"]["etag"].as_str().unwrap();
        assert!(
            both.iter().any(|r| r.etag == etag),
            "{id}: stored etag {etag} was answered to neither replica's caller"
        );
        assert_eq!(reg["spec"]["substatus"], "initialAssignment");
        let dev = devices[id];
        let ns = reg["spec"]["deviceNamespace"].as_str().unwrap();
        assert_eq!(dev["metadata"]["namespace"], ns);
        assert_eq!(dev["spec"]["status"], "enabled");
        assert_eq!(dev["spec"]["registrationRef"]["registrationId"], id);
        let secret = secrets[&(ns.to_owned(), device_secret_name(id))];
        assert_eq!(secret_text(secret, "primaryKey"), derived(id));
    }
    let conflicts = a.log().matches("changed concurrently").count()
        + b.log().matches("changed concurrently").count();
    eprintln!("replicas resolved {conflicts} write conflicts");
}

// ---------------------------------------------------------------------------------------------
// The registry contract against the apiserver (as registration-svc/tests/registry_embedded.rs
// checks it for the embedded backend, where it applies).

/// Two hub namespaces, the service's RBAC and a registry acting as the service.
struct RegistryEnv {
    env: Env,
    client: kube::Client,
}

impl RegistryEnv {
    async fn new() -> RegistryEnv {
        let env = tokio::task::spawn_blocking(|| Env::new(2, &[]))
            .await
            .unwrap();
        let client = client_for(&env.identity.kubeconfig).await;
        RegistryEnv { env, client }
    }

    /// A registry as one replica of the service (its own version cache).
    fn replica(&self) -> KubeRegistry {
        KubeRegistry::new(self.client.clone(), &self.env.svc.name, "kdps-registration")
    }

    fn a(&self) -> String {
        self.env.hub(0).to_owned()
    }

    fn b(&self) -> String {
        self.env.hub(1).to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_write_read_etags_and_conflicts() {
    let e = RegistryEnv::new().await;
    let (a, b) = (e.a(), e.b());
    let reg = e.replica();
    assert!(reg.get_registration("dev-1").await.unwrap().is_none());
    assert_eq!(reg.count_registrations().await.unwrap(), 0);

    let first = reg
        .write_identity(write_for("Dev-1", &a, None))
        .await
        .unwrap();
    assert_eq!(first.registration_id, "dev-1");
    assert!(!first.etag.is_empty());
    // Case-insensitive lookup returns exactly what was stored, also to another replica.
    assert_eq!(reg.get_registration("DEV-1").await.unwrap().unwrap(), first);
    assert_eq!(
        e.replica()
            .get_registration("dev-1")
            .await
            .unwrap()
            .unwrap(),
        first
    );
    let device = reg.get_device(&a, "dev-1").await.unwrap().unwrap();
    assert_eq!(device.registration.registration_id, "dev-1");
    assert_eq!(
        device.registration.namespace.as_deref(),
        Some(e.env.svc.name.as_str())
    );
    assert!(device.enabled);
    assert_eq!(device.twin.tags["site"], "lab");
    assert!(
        reg.get_device(&a, "DEV-1").await.unwrap().is_none(),
        "device IDs are case-sensitive"
    );
    let secret = reg
        .get_secret(&a, &device_secret_name("dev-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(secret.primary_key, vec![1; 32]);
    assert_eq!(secret.secondary_key, vec![2; 32]);

    // Rewriting with the right etag: new etag, same creation time.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let second = reg
        .write_identity(write_for("dev-1", &a, Some(first.etag.clone())))
        .await
        .unwrap();
    assert_ne!(second.etag, first.etag);
    assert_eq!(second.created_at, first.created_at);
    assert!(second.updated_at > first.updated_at);
    assert_eq!(reg.count_registrations().await.unwrap(), 1);

    // "Must not exist" but it does; a stale etag; an etag for a record that is not there.
    for (what, w) in [
        ("exists", write_for("dev-1", &b, None)),
        ("stale", write_for("dev-1", &b, Some(first.etag.clone()))),
        ("absent", write_for("other", &b, Some(first.etag.clone()))),
    ] {
        let err = reg.write_identity(w).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::Conflict { .. }),
            "{what}: {err}"
        );
        assert_eq!(err.dps_error_code(), 409_203);
    }
    // Detected before the first write: nothing of the refused writes exists.
    assert!(reg.get_device(&b, "dev-1").await.unwrap().is_none());
    assert!(reg.get_device(&b, "other").await.unwrap().is_none());
    assert_eq!(
        reg.get_registration("dev-1").await.unwrap().unwrap(),
        second
    );

    // Another replica's cache is stale: the apiserver's precondition still refuses it.
    let other = e.replica();
    let seen = other.get_registration("dev-1").await.unwrap().unwrap();
    reg.write_identity(write_for("dev-1", &a, Some(seen.etag.clone())))
        .await
        .unwrap();
    let err = other
        .write_identity(write_for("dev-1", &a, Some(seen.etag)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Conflict { found: Some(_), .. }),
        "{err}"
    );

    // The loser re-reads and moves the device: the old identity is kept, retired.
    let current = other.get_registration("dev-1").await.unwrap().unwrap();
    let mut retry = write_for("dev-1", &b, Some(current.etag));
    retry.previous_device = Some(DeviceRef {
        namespace: a.clone(),
        device_id: "dev-1".into(),
    });
    let moved = other.write_identity(retry).await.unwrap();
    assert_eq!(moved.assigned_hub, Some(hub(&b)));
    assert!(!reg.get_device(&a, "dev-1").await.unwrap().unwrap().enabled);
    assert!(reg.get_device(&b, "dev-1").await.unwrap().unwrap().enabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_racing_replicas_exactly_one_wins() {
    let e = RegistryEnv::new().await;
    let (a, b) = (e.a(), e.b());
    let replicas: Vec<Arc<dyn Registry>> = (0..4).map(|_| Arc::new(e.replica()) as _).collect();
    // 16 concurrent first registrations of one device on four replicas, half deciding for
    // each hub.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let reg = Arc::clone(&replicas[i % 4]);
            let ns = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { reg.write_identity(write_for("racy", &ns, None)).await })
        })
        .collect();
    let mut wins = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => wins.push(r),
            Err(RegistryError::Conflict { .. }) => conflicts += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(wins.len(), 1, "exactly one writer wins");
    assert_eq!(conflicts, 15);
    let stored = replicas[0].get_registration("racy").await.unwrap().unwrap();
    assert_eq!(stored, wins[0]);
    let winner_ns = stored.assigned_hub.unwrap().device_namespace;
    let loser_ns = if winner_ns == a { &b } else { &a };
    assert!(
        replicas[0]
            .get_device(&winner_ns, "racy")
            .await
            .unwrap()
            .unwrap()
            .enabled
    );
    // Losers may have applied their Device before losing the final write; they disable it,
    // so the device has exactly one enabled identity.
    if let Some(d) = replicas[0].get_device(loser_ns, "racy").await.unwrap() {
        assert!(!d.enabled, "a losing replica left an enabled identity");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_refuses_inconsistent_writes_and_records_failures() {
    let e = RegistryEnv::new().await;
    let a = e.a();
    let reg = e.replica();
    type Mutation = Box<dyn Fn(&mut IdentityWrite) + Send + Sync>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "namespace",
            Box::new(|w| w.device.namespace = "elsewhere".into()),
        ),
        ("host", Box::new(|w| w.device.hub_host_name = "x".into())),
        (
            "device id",
            Box::new(|w| w.registration.device_id = Some("x".into())),
        ),
        ("no secret", Box::new(|w| w.secret = None)),
        (
            "empty key",
            Box::new(|w| w.secret.as_mut().unwrap().secondary_key.clear()),
        ),
        (
            "status",
            Box::new(|w| w.registration.status = RegistrationStatus::Failed),
        ),
        (
            "twin",
            Box::new(|w| w.device.twin.tags = serde_json::json!("not an object")),
        ),
    ];
    for (name, mutate) in cases {
        let mut w = write_for("dev", &a, None);
        mutate(&mut w);
        let err = reg.write_identity(w).await.unwrap_err();
        assert!(matches!(err, RegistryError::Invalid(_)), "{name}: {err}");
    }
    assert!(reg.get_registration("dev").await.unwrap().is_none());
    assert!(
        reg.list_devices(Some(&a), None, 100)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Failures: recorded without identities, same precondition.
    let mut failed = RegistrationRecord::new(
        "Broken",
        EnrollmentRef {
            kind: EnrollmentKind::Individual,
            name: "broken".into(),
        },
        AttestationType::Tpm,
        RegistrationStatus::Failed,
    );
    failed.last_error = Some(LastError {
        code: 400_207,
        message: "Custom allocation failed with status code: 500".into(),
    });
    let stored = reg.record_failure(failed.clone(), None).await.unwrap();
    assert_eq!(stored.registration_id, "broken");
    assert_eq!(stored.last_error.as_ref().unwrap().code, 400_207);
    let err = reg.record_failure(failed.clone(), None).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict { .. }));
    let mut disabled = failed.clone();
    disabled.status = RegistrationStatus::Disabled;
    let d = reg
        .record_failure(disabled, Some(stored.etag.clone()))
        .await
        .unwrap();
    assert_eq!(d.status, RegistrationStatus::Disabled);
    assert_eq!(d.created_at, stored.created_at);
    assert_eq!(reg.get_registration("broken").await.unwrap().unwrap(), d);
    // A failed device can later be assigned.
    let ok = reg
        .write_identity(write_for("broken", &a, Some(d.etag)))
        .await
        .unwrap();
    assert_eq!(ok.status, RegistrationStatus::Assigned);
    assert_eq!(
        ok.last_error, None,
        "fields of the previous record do not linger"
    );
    assert_eq!(reg.get_registration("broken").await.unwrap().unwrap(), ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_write_order_survives_a_crash_before_the_registration() {
    let e = RegistryEnv::new().await;
    let a = e.a();
    // A replica whose registration namespace it may not write (no RBAC there) stops exactly
    // between Device and DeviceRegistration, as a crash would.
    let crashing = KubeRegistry::new(e.client.clone(), "default", "kdps-registration");
    let err = crashing
        .write_identity(write_for("crashy", &a, None))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::Storage { message, .. } if message.contains("forbidden")),
        "{err}"
    );
    let reg = e.replica();
    // Secret and Device were written first; the registration does not point at anything yet.
    assert!(reg.get_device(&a, "crashy").await.unwrap().is_some());
    assert!(reg.get_registration("crashy").await.unwrap().is_none());
    // The device's retry converges on the same objects.
    let done = reg
        .write_identity(write_for("crashy", &a, None))
        .await
        .unwrap();
    assert_eq!(done.device_id.as_deref(), Some("crashy"));
    assert_eq!(
        reg.list_devices(Some(&a), None, 100)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_lists_page_through_the_apiserver() {
    let e = RegistryEnv::new().await;
    let a = e.a();
    let reg = e.replica();
    let ids: Vec<String> = (0..25).map(|i| format!("page-{i:02}")).collect();
    for id in &ids {
        reg.write_identity(write_for(id, &a, None)).await.unwrap();
    }
    assert_eq!(reg.count_registrations().await.unwrap(), 25);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = reg.list_registrations(after.as_deref(), 10).await.unwrap();
        assert!(page.items.len() <= 10);
        seen.extend(page.items.into_iter().map(|r| r.registration_id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every record once, in name order");
    let mut devices = Vec::new();
    let mut after = None;
    loop {
        let page = reg
            .list_devices(Some(&a), after.as_deref(), 7)
            .await
            .unwrap();
        devices.extend(page.items.into_iter().map(|d| d.device_id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(devices, ids);
    let err = reg.list_devices(None, None, 10).await.unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(_)), "{err}");
}
