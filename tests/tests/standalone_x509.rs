//! Standalone server + `kdps-device` CLI, X.509: an individual enrollment, enrollment groups
//! signed by a root CA (the device presents its intermediate) and by an intermediate CA, with
//! chains made by rcgen and by the openssl CLI (`examples/x509/make-certs.sh`), and refusals.
#![allow(clippy::unwrap_used)]

use kdps_tests::Standalone;
use kdps_tests::pki::{Ca, Leaf, indent};

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
---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-east, namespace: iot}}
spec: {{hostName: hub-east.example.com, deviceNamespace: hub-east}}
"#
    )
}

fn individual(name: &str, cert_pem: &str) -> String {
    format!(
        r#"
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: {name}, namespace: iot}}
spec:
  attestation:
    x509:
      clientCertificates:
        primary:
          certificate: |
{}"#,
        indent(cert_pem, 12)
    )
}

fn group(name: &str, signing_pem: &str) -> String {
    format!(
        r#"
---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: {name}, namespace: iot}}
spec:
  attestation:
    x509:
      signingCertificates:
        primary:
          certificate: |
{}  initialTwin: {{tags: {{group: {name}}}}}
"#,
        indent(signing_pem, 12)
    )
}

fn sha256_hex_of_pem(pem: &str) -> String {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hex"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(der.as_ref())?;
            child.wait_with_output()
        })
        .unwrap();
    // "SHA2-256(stdin)= ab12..." → the hex digits, upper case as the service stores them.
    String::from_utf8(out.stdout)
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .trim()
        .to_ascii_uppercase()
}

fn cert_args<'a>(cert: &'a std::path::Path, key: &'a std::path::Path) -> [&'a str; 4] {
    [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]
}

#[test]
fn individual_enrollment_admits_exactly_its_certificate() {
    let leaf = Leaf::self_signed("x509-gw-01");
    let svc = Standalone::start(&(base() + &individual("x509-gw-01", &leaf.cert_pem)));
    let dir = tempfile::tempdir().unwrap();
    let (chain, _, key) = leaf.write(dir.path(), "gw");

    // The same CN, but not the enrolled certificate: refused, nothing written.
    let impostor = Leaf::self_signed("x509-gw-01");
    let (imp_chain, _, imp_key) = impostor.write(dir.path(), "impostor");
    svc.register(SCOPE, "x509-gw-01", &cert_args(&imp_chain, &imp_key))
        .assert_error(3, "device certificate is not the enrolled certificate");
    // The enrolled certificate, but for another registration ID: refused.
    svc.register(SCOPE, "x509-gw-02", &cert_args(&chain, &key))
        .assert_error(3, "unauthorized");
    assert!(svc.registrations().is_empty());
    assert!(svc.devices().is_empty());

    let out = svc
        .register(SCOPE, "x509-gw-01", &cert_args(&chain, &key))
        .json();
    assert_eq!(out["status"], "assigned");
    assert_eq!(out["deviceId"], "x509-gw-01");
    assert_eq!(out["substatus"], "initialAssignment");
    assert!(out.get("enrollmentGroupId").is_none());
    let devices = svc.devices();
    assert_eq!(devices.len(), 1);
    // The hub identity pins the device certificate by thumbprint (checked with openssl).
    assert_eq!(
        devices[0]["authentication"]["x509"]["primarySha256"],
        sha256_hex_of_pem(&leaf.cert_pem)
    );
    let regs = svc.registrations();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0]["attestation"], "x509");
    assert_eq!(regs[0]["enrollment"]["kind"], "IndividualEnrollment");
}

#[test]
fn group_signed_by_a_root_ca_admits_devices_presenting_their_intermediate() {
    let root = Ca::root("kdps test root CA");
    let intermediate = root.intermediate("kdps test intermediate CA");
    // x509-dev-03 is blocked by a disabled individual enrollment (for another certificate).
    let blocked_cert = Leaf::self_signed("x509-dev-03");
    let blocked = individual("x509-dev-03", &blocked_cert.cert_pem)
        .replace("spec:\n", "spec:\n  provisioningStatus: disabled\n");
    let svc = Standalone::start(&(base() + &group("fleet-root", root.pem()) + &blocked));
    let dir = tempfile::tempdir().unwrap();

    let leaf = intermediate.leaf("x509-dev-01");
    assert_eq!(leaf.intermediates.len(), 1);
    let (chain, cert_only, key) = leaf.write(dir.path(), "dev1");

    // Without its intermediate the chain cannot reach the enrolled root.
    svc.register(SCOPE, "x509-dev-01", &cert_args(&cert_only, &key))
        .assert_error(
            3,
            "certificate chain does not lead to the enrollment group's signing certificate",
        );
    // CN and registration ID must agree.
    svc.register(SCOPE, "x509-dev-99", &cert_args(&chain, &key))
        .assert_error(3, "does not match registration ID");
    assert!(svc.registrations().is_empty());

    let out = svc
        .register(SCOPE, "x509-dev-01", &cert_args(&chain, &key))
        .json();
    assert_eq!(out["status"], "assigned");
    assert_eq!(out["deviceId"], "x509-dev-01");
    assert_eq!(out["enrollmentGroupId"], "fleet-root");
    // A device signed directly by the root works too (nothing to present but itself).
    let direct = root.leaf("x509-dev-02");
    let (chain2, _, key2) = direct.write(dir.path(), "dev2");
    let out = svc
        .register(SCOPE, "x509-dev-02", &cert_args(&chain2, &key2))
        .json();
    assert_eq!(out["enrollmentGroupId"], "fleet-root");

    // The group would admit x509-dev-03, but its disabled individual enrollment wins.
    let (chain3, _, key3) = intermediate.leaf("x509-dev-03").write(dir.path(), "dev3");
    svc.register(SCOPE, "x509-dev-03", &cert_args(&chain3, &key3))
        .assert_error(4, "disabled");

    let devices = svc.devices();
    assert_eq!(devices.len(), 2);
    assert_eq!(svc.registrations().len(), 2);
    for d in &devices {
        assert!(
            d["authentication"].get("certificateAuthority").is_some(),
            "{d}"
        );
        assert_eq!(d["twin"]["tags"]["group"], "fleet-root");
    }
}

#[test]
fn group_signed_by_an_intermediate_ca_rcgen_and_openssl_chains() {
    // rcgen: the group enrolls an intermediate; its devices may present the leaf alone.
    let root = Ca::root("kdps test root CA 2");
    let intermediate = root.intermediate("kdps test intermediate CA 2");
    let mut manifests = base() + &group("fleet-int", intermediate.pem());

    // openssl CLI: the example script makes root -> intermediate -> devices and writes the
    // example EnrollmentGroup (x509-devices) with the intermediate filled in.
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("openssl");
    let status = std::process::Command::new("bash")
        .arg(kdps_tests::repo_path("examples/x509/make-certs.sh"))
        .args(["--out", out_dir.to_str().unwrap()])
        .args(["ossl-dev-01", "ossl-dev-02"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "make-certs.sh failed");
    manifests.push_str("\n---\n");
    manifests.push_str(&std::fs::read_to_string(out_dir.join("enrollment-group.yaml")).unwrap());
    let svc = Standalone::start(&manifests);
    assert!(
        !svc.log().contains("manifest not used"),
        "every manifest must load:\n{}",
        svc.log()
    );

    let leaf = intermediate.leaf("x509-int-01");
    let (chain, cert_only, key) = leaf.write(dir.path(), "int1");
    // The enrolled intermediate is the anchor: the device certificate alone suffices...
    let out = svc
        .register(SCOPE, "x509-int-01", &cert_args(&cert_only, &key))
        .json();
    assert_eq!(out["enrollmentGroupId"], "fleet-int");
    // ...and presenting the intermediate as well changes nothing.
    let out = svc
        .register(SCOPE, "x509-int-01", &cert_args(&chain, &key))
        .json();
    assert_eq!(out["enrollmentGroupId"], "fleet-int");

    // openssl-made devices: with the chain file and with the certificate alone.
    let o = |f: &str| out_dir.join(f);
    let out = svc
        .register(
            SCOPE,
            "ossl-dev-01",
            &cert_args(&o("ossl-dev-01.chain.pem"), &o("ossl-dev-01.key.pem")),
        )
        .json();
    assert_eq!(out["status"], "assigned");
    assert_eq!(out["enrollmentGroupId"], "x509-devices");
    let out = svc
        .register(
            SCOPE,
            "ossl-dev-02",
            &cert_args(&o("ossl-dev-02.cert.pem"), &o("ossl-dev-02.key.pem")),
        )
        .json();
    assert_eq!(out["enrollmentGroupId"], "x509-devices");

    // A device of an unrelated CA is refused.
    let stranger = Ca::root("stranger CA").leaf("x509-stranger");
    let (schain, _, skey) = stranger.write(dir.path(), "stranger");
    svc.register(SCOPE, "x509-stranger", &cert_args(&schain, &skey))
        .assert_error(
            3,
            "does not lead to the enrollment group's signing certificate",
        );
    assert_eq!(svc.registrations().len(), 3);
    assert_eq!(svc.devices().len(), 3);
}
