//! Validation beyond CEL: every rejection has a test with a bad input and its specific reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kdps_api::{
    crds,
    v1alpha1::{
        EnrollmentGroup, IndividualEnrollment, IoTHubLink, ProvisioningService, SecretKeyRef,
    },
    validation::*,
};
use kube::CustomResourceExt;

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml::from_str(s).unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{s}"))
}

fn reasons(result: Result<(), Vec<Problem>>) -> Vec<(String, Reason)> {
    result
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.field, p.reason))
        .collect()
}

/// Asserts that `result` failed with exactly one problem, at `field`, with `reason`.
#[track_caller]
fn assert_one(result: Result<(), Vec<Problem>>, field: &str, reason: Reason) -> Problem {
    let problems = result.expect_err("expected a validation failure");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = problems.into_iter().next().unwrap();
    assert_eq!((p.field.as_str(), p.reason), (field, reason), "{p:?}");
    assert!(!p.message.is_empty());
    p
}

// --- IDs ------------------------------------------------------------------------------------

#[test]
fn registration_id_rules() {
    for ok in [
        "a",
        "sensor-01",
        "Sensor-01",
        "a.b_c:d-",
        "0",
        &"x".repeat(128),
        "bq2hxsd7wwjrqxlaoziou6r7sjvh4g3izectd5ukpuy77r3wvfia",
    ] {
        assert_eq!(check_registration_id(ok), Ok(()), "{ok}");
        assert_eq!(check_device_id(ok), Ok(()), "{ok}");
    }
    for (bad, needle) in [
        ("", "empty"),
        (&"x".repeat(129) as &str, "129 characters"),
        ("bad id", "' '"),
        ("dev/1", "'/'"),
        ("dév", "'é'"),
        ("dev_", "must end"),
        ("dev.", "must end"),
        ("dev:", "must end"),
        ("a\nb", "'\\n'"),
    ] {
        let e = check_registration_id(bad).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidRegistrationId, "{bad:?}");
        assert!(e.message.contains(needle), "{bad:?}: {}", e.message);
        assert_eq!(
            check_device_id(bad).unwrap_err().reason,
            Reason::InvalidDeviceId
        );
    }
}

// --- certificates ---------------------------------------------------------------------------

#[test]
fn valid_certificates_are_described() {
    let root = root_ca("Test Root", VALID);
    let inter = intermediate_ca("Test Intermediate", VALID, &root);
    let device = leaf("device-01", VALID, &inter);

    let info = check_certificate(&device.pem, CertificateUse::Client, now()).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("device-01"));
    assert!(!info.is_ca);
    assert_eq!(info.sha1_thumbprint.len(), 40);
    assert_eq!(info.sha256_thumbprint.len(), 64);
    assert!(info.issuer.contains("Test Intermediate"), "{}", info.issuer);
    assert!(info.not_before < info.not_after);

    for ca in [&root, &inter] {
        let info = check_certificate(&ca.pem, CertificateUse::Signing, now()).unwrap();
        assert!(info.is_ca);
    }
    // A CA may also be a client certificate (DPS does not forbid it).
    check_certificate(&root.pem, CertificateUse::Client, now()).unwrap();
}

#[test]
fn certificate_validity_window() {
    let root = root_ca("Test Root", VALID);
    let expired = leaf("old", EXPIRED, &root);
    let e = check_certificate(&expired.pem, CertificateUse::Client, now()).unwrap_err();
    assert_eq!(e.reason, Reason::CertificateExpired);
    assert!(e.message.contains("2015-01-01T00:00:00Z"), "{}", e.message);
    assert!(e.message.contains("old"), "{}", e.message);

    let future = leaf("new", NOT_YET_VALID, &root);
    let e = check_certificate(&future.pem, CertificateUse::Client, now()).unwrap_err();
    assert_eq!(e.reason, Reason::CertificateNotYetValid);
    assert!(e.message.contains("2030-01-01T00:00:00Z"), "{}", e.message);

    let expired_ca = root_ca("Old Root", EXPIRED);
    assert_eq!(
        check_certificate(&expired_ca.pem, CertificateUse::Signing, now())
            .unwrap_err()
            .reason,
        Reason::CertificateExpired
    );
}

#[test]
fn signing_certificates_must_be_cas() {
    let root = root_ca("Test Root", VALID);
    let device = leaf("device-01", VALID, &root);
    let e = check_certificate(&device.pem, CertificateUse::Signing, now()).unwrap_err();
    assert_eq!(e.reason, Reason::NotACertificateAuthority);
    assert!(e.message.contains("device-01"), "{}", e.message);

    let self_signed = self_signed_leaf("lonely", VALID);
    assert_eq!(
        check_certificate(&self_signed.pem, CertificateUse::Signing, now())
            .unwrap_err()
            .reason,
        Reason::NotACertificateAuthority
    );

    let no_cert_sign = ca_without_cert_sign("Not Signing");
    let e = check_certificate(&no_cert_sign.pem, CertificateUse::Signing, now()).unwrap_err();
    assert_eq!(e.reason, Reason::NotACertificateAuthority);
    assert!(e.message.contains("keyCertSign"), "{}", e.message);
}

#[test]
fn garbage_certificates_are_rejected() {
    let root = root_ca("Test Root", VALID);
    let device = leaf("device-01", VALID, &root);
    let two = format!("{}{}", device.pem, root.pem);
    let key_pem = device.key.serialize_pem();
    let with_key = format!("{}{}", device.pem, key_pem);
    let truncated: String =
        device.pem.lines().take(4).collect::<Vec<_>>().join("\n") + "\n-----END CERTIFICATE-----\n";
    let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!not base64!!!!\n-----END CERTIFICATE-----\n";
    let too_big = "x".repeat(70_000);
    for (name, pem, needle) in [
        ("empty", "", "no PEM certificate"),
        ("text", "hello world", "no PEM certificate"),
        ("two certificates", two.as_str(), "exactly one"),
        ("private key", with_key.as_str(), "private key"),
        ("truncated", truncated.as_str(), "not a valid X.509"),
        ("not DER", not_der, "not a valid X.509"),
        ("bad base64", bad_base64, "not valid PEM"),
        ("too big", too_big.as_str(), "at most"),
    ] {
        let e = check_certificate(pem, CertificateUse::Client, now()).unwrap_err();
        assert_eq!(
            e.reason,
            Reason::InvalidCertificate,
            "{name}: {}",
            e.message
        );
        assert!(e.message.contains(needle), "{name}: {}", e.message);
    }
    // Never echo key material.
    let e = check_certificate(&with_key, CertificateUse::Client, now()).unwrap_err();
    let key_body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for line in key_body {
        assert!(!e.message.contains(line));
    }
}

#[test]
fn ca_bundles() {
    let root = root_ca("Root A", VALID);
    let other = root_ca("Root B", VALID);
    let bundle = format!("{}{}", root.pem, other.pem);
    assert_eq!(check_ca_bundle(&bundle, now()).unwrap().len(), 2);
    let expired = root_ca("Old", EXPIRED);
    let e = check_ca_bundle(&format!("{}{}", root.pem, expired.pem), now()).unwrap_err();
    assert_eq!(e.reason, Reason::CertificateExpired);
    assert!(e.message.contains("#2"), "{}", e.message);
    assert_eq!(
        check_ca_bundle("nope", now()).unwrap_err().reason,
        Reason::InvalidCertificate
    );
}

#[test]
fn thumbprints_match_openssl() {
    use std::process::Command;
    let root = root_ca("Test Root", VALID);
    let info = check_certificate(&root.pem, CertificateUse::Signing, now()).unwrap();
    let dir = std::env::temp_dir().join(format!("kdps-api-thumb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("root.pem");
    std::fs::write(&path, &root.pem).unwrap();
    for (alg, expected) in [
        ("-sha1", &info.sha1_thumbprint),
        ("-sha256", &info.sha256_thumbprint),
    ] {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", alg, "-in"])
            .arg(&path)
            .output()
            .expect("openssl CLI is needed for this test (apt-get install -y openssl)");
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let hex: String = text
            .trim()
            .split('=')
            .nth(1)
            .unwrap()
            .chars()
            .filter(|c| *c != ':')
            .collect();
        assert_eq!(&hex, expected, "{alg}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- TPM ------------------------------------------------------------------------------------

#[test]
fn endorsement_keys() {
    let ek = check_endorsement_key(EK_RSA).unwrap();
    assert_eq!(ek.rsa_key_bits(), Some(2048));
    assert!(ek.is_restricted_decrypt());
    // Whitespace around the base64 (e.g. a trailing newline from a file) is fine.
    check_endorsement_key(&format!("  {EK_RSA}\n")).unwrap();

    let e = check_endorsement_key(EK_ECC).unwrap_err();
    assert_eq!(e.reason, Reason::UnsupportedEndorsementKey);
    assert!(e.message.contains("not an RSA key"), "{}", e.message);

    let e = check_endorsement_key(SIGNING_KEY_RSA).unwrap_err();
    assert_eq!(e.reason, Reason::InvalidEndorsementKey);
    assert!(e.message.contains("restricted decryption"), "{}", e.message);

    let e = check_endorsement_key("not base64 at all!").unwrap_err();
    assert_eq!(e.reason, Reason::InvalidEndorsementKey);
    assert!(e.message.contains("base64"), "{}", e.message);

    // Truncated structure: valid base64 of the first 100 bytes.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = b64.decode(EK_RSA).unwrap();
    let e = check_endorsement_key(&b64.encode(&bytes[..100])).unwrap_err();
    assert_eq!(e.reason, Reason::InvalidEndorsementKey);
    assert!(e.message.contains("TPM2B_PUBLIC"), "{}", e.message);
    // Trailing bytes.
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(
        check_endorsement_key(&b64.encode(&long))
            .unwrap_err()
            .reason,
        Reason::InvalidEndorsementKey
    );
    // The EK is public data, but the message need not repeat it either.
    assert!(!e.message.contains(&EK_RSA[..40]));
}

#[test]
fn storage_root_keys() {
    let srk = check_storage_root_key(SRK_RSA).unwrap();
    assert_eq!(srk.rsa_key_bits(), Some(2048));
    assert_eq!(
        check_storage_root_key("AAAA").unwrap_err().reason,
        Reason::InvalidStorageRootKey
    );
}

// --- symmetric keys -------------------------------------------------------------------------

#[test]
fn symmetric_keys() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = decode_symmetric_key(KEY_64.as_bytes()).unwrap();
    assert_eq!(key.as_bytes().len(), 64);
    assert!(!format!("{key:?}").contains(&format!("{:?}", &key.as_bytes()[..4])));
    assert_eq!(format!("{key:?}"), "SymmetricKey(64 bytes, redacted)");
    decode_symmetric_key(format!("{KEY_64}\n").as_bytes()).unwrap();
    decode_symmetric_key(b64.encode([7u8; 16]).as_bytes()).unwrap();

    for (bad, needle) in [
        (b64.encode([7u8; 15]), "15 bytes"),
        (b64.encode([7u8; 65]), "65 bytes"),
        ("not*base64".to_owned(), "base64"),
        (String::new(), "0 bytes"),
    ] {
        let e = decode_symmetric_key(bad.as_bytes()).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidKey, "{bad}");
        assert!(e.message.contains(needle), "{bad}: {}", e.message);
        if !bad.is_empty() {
            assert!(!e.message.contains(&bad), "message leaks the key");
        }
    }
    let e = decode_symmetric_key(&[0xff, 0xfe, 0x00]).unwrap_err();
    assert_eq!(e.reason, Reason::InvalidKey);
}

fn secret(data: &[(&str, &str)], string_data: &[(&str, &str)]) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some("keys".into());
    if !data.is_empty() {
        s.data = Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
    }
    if !string_data.is_empty() {
        s.string_data = Some(
            string_data
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        );
    }
    s
}

#[test]
fn symmetric_key_secrets() {
    let r = SecretKeyRef::new("keys");
    let keys = validate_symmetric_key_secret(&secret(&[("primaryKey", KEY_64)], &[]), &r).unwrap();
    assert_eq!(keys.primary.as_bytes().len(), 64);
    assert!(keys.secondary.is_none());

    let keys = validate_symmetric_key_secret(
        &secret(&[], &[("primaryKey", KEY_64), ("secondaryKey", KEY_64)]),
        &r,
    )
    .unwrap();
    assert!(keys.secondary.is_some());
    assert!(!format!("{keys:?}").contains("i5aj"));

    let custom = SecretKeyRef {
        name: "keys".into(),
        primary_key_name: "a".into(),
        secondary_key_name: "b".into(),
    };
    validate_symmetric_key_secret(&secret(&[("a", KEY_64)], &[]), &custom).unwrap();

    let problems =
        validate_symmetric_key_secret(&secret(&[("other", KEY_64)], &[]), &r).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].reason, Reason::KeyNotFound);
    assert!(problems[0].message.contains("primaryKey"));

    let problems = validate_symmetric_key_secret(
        &secret(&[("primaryKey", KEY_64), ("secondaryKey", "short")], &[]),
        &r,
    )
    .unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(
        (problems[0].field.as_str(), problems[0].reason),
        ("secretRef.secondaryKeyName", Reason::InvalidKey)
    );
}

// --- IndividualEnrollment -------------------------------------------------------------------

fn ie_symmetric(extra_spec: &str) -> IndividualEnrollment {
    yaml(&format!(
        r#"
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: gateway-01, namespace: iot}}
spec:
  attestation:
    symmetricKey: {{secretRef: {{name: gateway-01-keys}}}}
{extra_spec}
"#
    ))
}

#[test]
fn individual_enrollment_symmetric_key() {
    let ie = ie_symmetric("");
    validate_individual_enrollment(&ie, now()).unwrap();
    assert_eq!(ie.registration_id(), Some("gateway-01"));
    assert_eq!(ie.device_id().as_deref(), Some("gateway-01"));
    assert_eq!(
        ie.attestation_type(),
        Some(kdps_api::v1alpha1::AttestationType::SymmetricKey)
    );
    // defaults
    assert!(ie.spec.reprovision_policy.update_hub_assignment);
    assert!(ie.spec.reprovision_policy.migrate_device_data);
    assert!(ie.is_enabled());
    assert_eq!(
        ie.spec
            .attestation
            .symmetric_key
            .as_ref()
            .unwrap()
            .secret_ref
            .primary_key_name,
        "primaryKey"
    );

    let ie = ie_symmetric("  registrationId: Gateway_01.A\n  deviceId: GW-01\n");
    validate_individual_enrollment(&ie, now()).unwrap();
    assert_eq!(
        ie.canonical_registration_id().as_deref(),
        Some("gateway_01.a")
    );
    assert_eq!(ie.device_id().as_deref(), Some("GW-01"));
}

#[test]
fn individual_enrollment_rejections() {
    assert_one(
        validate_individual_enrollment(&ie_symmetric("  registrationId: 'bad id'\n"), now()),
        "spec.registrationId",
        Reason::InvalidRegistrationId,
    );
    assert_one(
        validate_individual_enrollment(&ie_symmetric("  deviceId: 'dev_'\n"), now()),
        "spec.deviceId",
        Reason::InvalidDeviceId,
    );
    let mut long_name = ie_symmetric("");
    long_name.metadata.name = Some("a".repeat(129));
    let p = assert_one(
        validate_individual_enrollment(&long_name, now()),
        "metadata.name",
        Reason::InvalidRegistrationId,
    );
    assert!(p.message.contains("spec.registrationId"), "{}", p.message);
    let mut nameless = ie_symmetric("");
    nameless.metadata.name = None;
    assert_one(
        validate_individual_enrollment(&nameless, now()),
        "spec.registrationId",
        Reason::InvalidRegistrationId,
    );

    assert_one(
        validate_individual_enrollment(
            &ie_symmetric("  allocationPolicy: static\n  iotHubs: [a, b]\n"),
            now(),
        ),
        "spec.iotHubs",
        Reason::InvalidAllocationPolicy,
    );
    assert_one(
        validate_individual_enrollment(&ie_symmetric("  allocationPolicy: static\n"), now()),
        "spec.iotHubs",
        Reason::InvalidAllocationPolicy,
    );
    validate_individual_enrollment(
        &ie_symmetric("  allocationPolicy: static\n  iotHubs: [a]\n"),
        now(),
    )
    .unwrap();
    assert_one(
        validate_individual_enrollment(&ie_symmetric("  allocationPolicy: custom\n"), now()),
        "spec.customAllocation",
        Reason::InvalidAllocationPolicy,
    );
    validate_individual_enrollment(
        &ie_symmetric(
            "  allocationPolicy: custom\n  customAllocation: {webhookUrl: 'https://alloc.example:9443/allocate'}\n",
        ),
        now(),
    )
    .unwrap();
    assert_one(
        validate_individual_enrollment(
            &ie_symmetric("  customAllocation: {webhookUrl: 'http://alloc.example/allocate'}\n"),
            now(),
        ),
        "spec.customAllocation.webhookUrl",
        Reason::InvalidCustomAllocation,
    );
    assert_one(
        validate_individual_enrollment(
            &ie_symmetric("  customAllocation: {webhookUrl: 'not a url'}\n"),
            now(),
        ),
        "spec.customAllocation.webhookUrl",
        Reason::InvalidCustomAllocation,
    );
    assert_one(
        validate_individual_enrollment(
            &ie_symmetric(
                "  customAllocation: {webhookUrl: 'https://a.example/x', timeoutSeconds: 0}\n",
            ),
            now(),
        ),
        "spec.customAllocation.timeoutSeconds",
        Reason::InvalidCustomAllocation,
    );
    assert_one(
        validate_individual_enrollment(
            &ie_symmetric(
                "  customAllocation: {webhookUrl: 'https://a.example/x', caBundle: 'garbage'}\n",
            ),
            now(),
        ),
        "spec.customAllocation.caBundle",
        Reason::InvalidCertificate,
    );
    assert_one(
        validate_individual_enrollment(&ie_symmetric("  iotHubs: [a, b, a]\n"), now()),
        "spec.iotHubs[2]",
        Reason::InvalidIoTHubs,
    );
    let many: Vec<String> = (0..51).map(|i| format!("hub-{i}")).collect();
    assert_one(
        validate_individual_enrollment(
            &ie_symmetric(&format!("  iotHubs: [{}]\n", many.join(", "))),
            now(),
        ),
        "spec.iotHubs",
        Reason::InvalidIoTHubs,
    );
    let mut ie = ie_symmetric("");
    ie.spec
        .attestation
        .symmetric_key
        .as_mut()
        .unwrap()
        .secret_ref
        .name = String::new();
    assert_one(
        validate_individual_enrollment(&ie, now()),
        "spec.attestation.symmetricKey.secretRef.name",
        Reason::InvalidSecretRef,
    );
}

fn ie_attestation(attestation: &str, name: &str) -> IndividualEnrollment {
    yaml(&format!(
        "apiVersion: kdps.io/v1alpha1\nkind: IndividualEnrollment\nmetadata: {{name: {name}, namespace: iot}}\nspec:\n  attestation:\n{attestation}\n"
    ))
}

#[test]
fn individual_enrollment_attestation_count() {
    let none = ie_attestation("    {}", "d1");
    let p = assert_one(
        validate_individual_enrollment(&none, now()),
        "spec.attestation",
        Reason::InvalidAttestation,
    );
    assert!(p.message.contains("0 are"), "{}", p.message);
    let two = ie_attestation(
        &format!(
            "    tpm: {{endorsementKey: '{EK_RSA}'}}\n    symmetricKey: {{secretRef: {{name: k}}}}"
        ),
        "d1",
    );
    assert_one(
        validate_individual_enrollment(&two, now()),
        "spec.attestation",
        Reason::InvalidAttestation,
    );
}

#[test]
fn individual_enrollment_tpm() {
    let ok = ie_attestation(
        &format!("    tpm: {{endorsementKey: '{EK_RSA}', storageRootKey: '{SRK_RSA}'}}"),
        "tpm-01",
    );
    validate_individual_enrollment(&ok, now()).unwrap();
    assert_one(
        validate_individual_enrollment(
            &ie_attestation(
                &format!("    tpm: {{endorsementKey: '{EK_ECC}'}}"),
                "tpm-01",
            ),
            now(),
        ),
        "spec.attestation.tpm.endorsementKey",
        Reason::UnsupportedEndorsementKey,
    );
    assert_one(
        validate_individual_enrollment(
            &ie_attestation("    tpm: {endorsementKey: 'garbage!'}", "tpm-01"),
            now(),
        ),
        "spec.attestation.tpm.endorsementKey",
        Reason::InvalidEndorsementKey,
    );
    assert_one(
        validate_individual_enrollment(
            &ie_attestation(
                &format!("    tpm: {{endorsementKey: '{EK_RSA}', storageRootKey: 'AAAA'}}"),
                "tpm-01",
            ),
            now(),
        ),
        "spec.attestation.tpm.storageRootKey",
        Reason::InvalidStorageRootKey,
    );
}

fn ie_x509(name: &str, primary: &str, secondary: Option<&str>) -> IndividualEnrollment {
    let mut att = format!(
        "    x509:\n      clientCertificates:\n        primary:\n          certificate: |\n{}\n",
        indent(primary, 12)
    );
    if let Some(s) = secondary {
        att.push_str(&format!(
            "        secondary:\n          certificate: |\n{}\n",
            indent(s, 12)
        ));
    }
    ie_attestation(&att, name)
}

#[test]
fn individual_enrollment_x509() {
    let root = root_ca("Root", VALID);
    let dev = leaf("device-01", VALID, &root);
    let dev2 = leaf("DEVICE-01", VALID, &root);
    validate_individual_enrollment(&ie_x509("device-01", &dev.pem, Some(&dev2.pem)), now())
        .unwrap();

    let p = assert_one(
        validate_individual_enrollment(&ie_x509("device-02", &dev.pem, None), now()),
        "spec.attestation.x509.clientCertificates.primary.certificate",
        Reason::RegistrationIdMismatch,
    );
    assert!(p.message.contains("device-01") && p.message.contains("device-02"));

    let expired = leaf("device-01", EXPIRED, &root);
    assert_one(
        validate_individual_enrollment(&ie_x509("device-01", &dev.pem, Some(&expired.pem)), now()),
        "spec.attestation.x509.clientCertificates.secondary.certificate",
        Reason::CertificateExpired,
    );
    let future = leaf("device-01", NOT_YET_VALID, &root);
    assert_one(
        validate_individual_enrollment(&ie_x509("device-01", &future.pem, None), now()),
        "spec.attestation.x509.clientCertificates.primary.certificate",
        Reason::CertificateNotYetValid,
    );
    assert_one(
        validate_individual_enrollment(&ie_x509("device-01", "garbage", None), now()),
        "spec.attestation.x509.clientCertificates.primary.certificate",
        Reason::InvalidCertificate,
    );
}

// --- EnrollmentGroup ------------------------------------------------------------------------

fn eg(attestation: &str, extra: &str) -> EnrollmentGroup {
    yaml(&format!(
        "apiVersion: kdps.io/v1alpha1\nkind: EnrollmentGroup\nmetadata: {{name: g, namespace: iot}}\nspec:\n  attestation:\n{attestation}\n{extra}"
    ))
}

fn eg_x509(primary: &str) -> EnrollmentGroup {
    eg(
        &format!(
            "    x509:\n      signingCertificates:\n        primary:\n          certificate: |\n{}\n",
            indent(primary, 12)
        ),
        "",
    )
}

#[test]
fn enrollment_groups() {
    validate_enrollment_group(
        &eg(
            "    symmetricKey: {secretRef: {name: sensors-keys}}",
            "  iotHubs: [hub-west]\n",
        ),
        now(),
    )
    .unwrap();
    let root = root_ca("Root", VALID);
    let inter = intermediate_ca("Intermediate", VALID, &root);
    validate_enrollment_group(&eg_x509(&root.pem), now()).unwrap();
    validate_enrollment_group(&eg_x509(&inter.pem), now()).unwrap();

    let dev = leaf("device-01", VALID, &inter);
    assert_one(
        validate_enrollment_group(&eg_x509(&dev.pem), now()),
        "spec.attestation.x509.signingCertificates.primary.certificate",
        Reason::NotACertificateAuthority,
    );
    assert_one(
        validate_enrollment_group(&eg_x509(&root_ca("Old", EXPIRED).pem), now()),
        "spec.attestation.x509.signingCertificates.primary.certificate",
        Reason::CertificateExpired,
    );
    assert_one(
        validate_enrollment_group(&eg("    {}", ""), now()),
        "spec.attestation",
        Reason::InvalidAttestation,
    );
    assert_one(
        validate_enrollment_group(
            &eg(
                "    symmetricKey: {secretRef: {name: k}}",
                "  allocationPolicy: custom\n",
            ),
            now(),
        ),
        "spec.customAllocation",
        Reason::InvalidAllocationPolicy,
    );
}

#[test]
fn tpm_on_a_group_is_rejected() {
    let text = format!(
        "apiVersion: kdps.io/v1alpha1\nkind: EnrollmentGroup\nmetadata: {{name: g, namespace: iot}}\nspec:\n  attestation:\n    tpm: {{endorsementKey: '{EK_RSA}'}}\n"
    );
    // The typed object has no tpm field, so exactly-one fails...
    let group: EnrollmentGroup = yaml(&text);
    let p = assert_one(
        validate_enrollment_group(&group, now()),
        "spec.attestation",
        Reason::InvalidAttestation,
    );
    assert!(p.message.contains("tpm"), "{}", p.message);
    // ...and the raw object has a field the schema does not know.
    let raw: serde_json::Value = yaml(&text);
    let unknown = check_unknown_fields(&EnrollmentGroup::crd(), &raw);
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert_eq!(
        (unknown[0].field.as_str(), unknown[0].reason),
        ("spec.attestation.tpm", Reason::UnknownField)
    );
}

#[test]
fn unknown_fields_are_found_everywhere_but_free_form_objects() {
    let raw: serde_json::Value = yaml(
        r#"
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {name: d, namespace: iot, labels: {anything: goes}}
spec:
  registrationID: typo
  attestation:
    symmetricKey: {secretRef: {name: k, primaryKey: typo}}
  initialTwin:
    tags: {free: {form: [1, 2]}}
    properties: {desired: {also: free}, reported: {not: allowed}}
  iotHubs: [a]
status:
  conditions: [{type: Ready, status: "True", reason: R, message: m, lastTransitionTime: "2025-01-01T00:00:00Z", extra: 1}]
"#,
    );
    let crd = crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "IndividualEnrollment")
        .unwrap();
    let mut fields: Vec<String> = check_unknown_fields(&crd, &raw)
        .into_iter()
        .map(|p| p.field)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "spec.attestation.symmetricKey.secretRef.primaryKey",
            "spec.initialTwin.properties.reported",
            "spec.registrationID",
            "status.conditions[0].extra",
        ]
    );
}

// --- IoTHubLink -----------------------------------------------------------------------------

fn link(spec: &str) -> IoTHubLink {
    yaml(&format!(
        "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: hub-west, namespace: iot}}\nspec: {spec}\n"
    ))
}

#[test]
fn iot_hub_links() {
    let l = link("{hostName: hub-west.example.com, deviceNamespace: hub-west}");
    validate_iot_hub_link(&l).unwrap();
    assert_eq!(l.spec.allocation_weight, 1);
    assert!(l.spec.apply_allocation_policy);
    validate_iot_hub_link(&link(
        "{hostName: Hub1.Example.com, deviceNamespace: h, allocationWeight: 1000, region: west}",
    ))
    .unwrap();

    for (spec, field, reason) in [
        (
            "{hostName: 'hub_west', deviceNamespace: h}",
            "spec.hostName",
            Reason::InvalidHostName,
        ),
        (
            "{hostName: 'hub.', deviceNamespace: h}",
            "spec.hostName",
            Reason::InvalidHostName,
        ),
        (
            "{hostName: 'https://hub', deviceNamespace: h}",
            "spec.hostName",
            Reason::InvalidHostName,
        ),
        (
            "{hostName: '', deviceNamespace: h}",
            "spec.hostName",
            Reason::InvalidHostName,
        ),
        (
            "{hostName: h, deviceNamespace: Hub-West}",
            "spec.deviceNamespace",
            Reason::InvalidNamespace,
        ),
        (
            "{hostName: h, deviceNamespace: ''}",
            "spec.deviceNamespace",
            Reason::InvalidNamespace,
        ),
        (
            "{hostName: h, deviceNamespace: h, allocationWeight: 0}",
            "spec.allocationWeight",
            Reason::InvalidAllocationWeight,
        ),
        (
            "{hostName: h, deviceNamespace: h, allocationWeight: 1001}",
            "spec.allocationWeight",
            Reason::InvalidAllocationWeight,
        ),
        (
            "{hostName: h, deviceNamespace: h, region: West}",
            "spec.region",
            Reason::InvalidRegion,
        ),
    ] {
        assert_one(validate_iot_hub_link(&link(spec)), field, reason);
    }
}

// --- ProvisioningService --------------------------------------------------------------------

fn service(spec: &str) -> ProvisioningService {
    yaml(&format!(
        "apiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {{name: dps, namespace: iot}}\nspec:\n{spec}\n"
    ))
}

#[test]
fn provisioning_services() {
    let s = service("  {}");
    validate_provisioning_service(&s, now()).unwrap();
    assert_eq!(s.spec.replicas, 1);
    assert_eq!(s.spec.endpoint.port, 8443);
    assert_eq!(s.spec.rate_limits.per_device_per_minute(), Some(30));
    assert_eq!(s.spec.rate_limits.global_per_second(), None);
    let s = service(
        "  idScope: 0ne00000A11\n  allocationPolicy: custom\n  customAllocation: {webhookUrl: 'https://a.example/x'}\n  endpoint: {serviceType: LoadBalancer, port: 443, dnsNames: [dps.example.com, '*.dps.example.com']}\n  tls: {secretName: dps-tls}\n  rateLimits: {perDevicePerMinute: 0, globalPerSecond: 100}\n  regions:\n    - {name: west, cidrs: [10.0.0.0/8, 'fd00::/8']}\n    - {name: east, cidrs: [192.168.1.0/24]}",
    );
    validate_provisioning_service(&s, now()).unwrap();
    assert_eq!(s.spec.rate_limits.per_device_per_minute(), None);
    assert_eq!(s.spec.rate_limits.global_per_second(), Some(100));

    for (spec, field, reason) in [
        ("  idScope: '0ne-1'", "spec.idScope", Reason::InvalidIdScope),
        ("  idScope: 'ab'", "spec.idScope", Reason::InvalidIdScope),
        ("  replicas: 101", "spec.replicas", Reason::InvalidReplicas),
        (
            "  allocationPolicy: custom",
            "spec.customAllocation",
            Reason::InvalidAllocationPolicy,
        ),
        (
            "  customAllocation: {webhookUrl: 'ftp://x'}",
            "spec.customAllocation.webhookUrl",
            Reason::InvalidCustomAllocation,
        ),
        (
            "  endpoint: {port: 0}",
            "spec.endpoint.port",
            Reason::InvalidEndpoint,
        ),
        (
            "  endpoint: {dnsNames: [DPS.example.com]}",
            "spec.endpoint.dnsNames[0]",
            Reason::InvalidEndpoint,
        ),
        (
            "  tls: {secretName: ''}",
            "spec.tls.secretName",
            Reason::InvalidSecretRef,
        ),
        (
            "  rateLimits: {globalPerSecond: 2000000}",
            "spec.rateLimits.globalPerSecond",
            Reason::InvalidRateLimit,
        ),
        (
            "  regions: [{name: west, cidrs: [10.0.0.0/33]}]",
            "spec.regions[0].cidrs[0]",
            Reason::InvalidRegion,
        ),
        (
            "  regions: [{name: west, cidrs: [not-a-cidr]}]",
            "spec.regions[0].cidrs[0]",
            Reason::InvalidRegion,
        ),
        (
            "  regions: [{name: west, cidrs: []}]",
            "spec.regions[0].cidrs",
            Reason::InvalidRegion,
        ),
        (
            "  regions: [{name: West, cidrs: [10.0.0.0/8]}]",
            "spec.regions[0].name",
            Reason::InvalidRegion,
        ),
        (
            "  regions: [{name: w, cidrs: [10.0.0.0/8]}, {name: w, cidrs: [11.0.0.0/8]}]",
            "spec.regions[1].name",
            Reason::InvalidRegion,
        ),
    ] {
        assert_one(
            validate_provisioning_service(&service(spec), now()),
            field,
            reason,
        );
    }
}

#[test]
fn region_lookup_prefers_the_most_specific_cidr() {
    let s = service(
        "  regions:\n    - {name: wide, cidrs: [10.0.0.0/8]}\n    - {name: narrow, cidrs: [10.1.0.0/16]}\n    - {name: v6, cidrs: ['::1/128']}",
    );
    let r = |a: &str| region_for_address(&s.spec, a.parse().unwrap());
    assert_eq!(r("10.1.2.3"), Some("narrow"));
    assert_eq!(r("10.2.0.1"), Some("wide"));
    assert_eq!(r("::1"), Some("v6"));
    assert_eq!(r("192.168.0.1"), None);
}

// --- cross-object ---------------------------------------------------------------------------

#[test]
fn enrollment_references() {
    let links = vec![
        link("{hostName: a.example.com, deviceNamespace: a}"),
        link("{hostName: b.example.com, deviceNamespace: b}"),
    ];
    let ie = ie_symmetric("  iotHubs: [hub-west]\n");
    validate_enrollment_references(&ie.spec.settings(), None, &links).unwrap();

    let ie = ie_symmetric("  iotHubs: [hub-west, hub-north]\n");
    assert_one(
        validate_enrollment_references(&ie.spec.settings(), None, &links),
        "spec.iotHubs[1]",
        Reason::UnknownIoTHub,
    );

    let static_default = service("  allocationPolicy: static").spec;
    let ie = ie_symmetric("");
    assert_one(
        validate_enrollment_references(&ie.spec.settings(), Some(&static_default), &links),
        "spec.iotHubs",
        Reason::InvalidAllocationPolicy,
    );
    let ie = ie_symmetric("  iotHubs: [hub-west]\n");
    validate_enrollment_references(&ie.spec.settings(), Some(&static_default), &links).unwrap();

    // A service default of custom needs a webhook somewhere.
    let mut custom_default = service("  allocationPolicy: custom").spec;
    let ie = ie_symmetric("");
    assert_one(
        validate_enrollment_references(&ie.spec.settings(), Some(&custom_default), &links),
        "spec.customAllocation",
        Reason::InvalidAllocationPolicy,
    );
    custom_default.custom_allocation =
        service("  customAllocation: {webhookUrl: 'https://a.example/x'}")
            .spec
            .custom_allocation;
    validate_enrollment_references(&ie.spec.settings(), Some(&custom_default), &links).unwrap();
}

#[test]
fn link_references() {
    let svc = service("  regions: [{name: west, cidrs: [10.0.0.0/8]}]").spec;
    validate_link_references(
        &link("{hostName: h, deviceNamespace: h, region: west}"),
        Some(&svc),
    )
    .unwrap();
    validate_link_references(&link("{hostName: h, deviceNamespace: h}"), None).unwrap();
    assert_one(
        validate_link_references(
            &link("{hostName: h, deviceNamespace: h, region: east}"),
            Some(&svc),
        ),
        "spec.region",
        Reason::UnknownRegion,
    );
}

#[test]
fn summaries_and_reasons() {
    let problems = reasons(validate_iot_hub_link(&link(
        "{hostName: 'x_y', deviceNamespace: 'A', allocationWeight: 0}",
    )));
    assert_eq!(problems.len(), 3);
    let problems =
        validate_iot_hub_link(&link("{hostName: 'x_y', deviceNamespace: 'A'}")).unwrap_err();
    let (reason, message) = summarize(&problems);
    assert_eq!(reason, Reason::InvalidHostName);
    assert!(message.contains("spec.hostName: ") && message.contains("; spec.deviceNamespace: "));
    // Reason strings are CamelCase and unique.
    let mut seen = std::collections::BTreeSet::new();
    for r in Reason::ALL {
        let s = r.as_str();
        assert!(
            s.chars().next().unwrap().is_ascii_uppercase()
                && s.chars().all(|c| c.is_ascii_alphanumeric())
        );
        assert!(seen.insert(s), "duplicate {s}");
        assert_eq!(r.to_string(), s);
    }
}
