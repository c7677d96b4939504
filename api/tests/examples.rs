//! Every YAML document under `examples/` is valid: each kdps.io object passes the CEL rules
//! (kube-cel), the schema's known fields, and the Rust validators; every referenced Secret and
//! link exists in the same example set, and referenced keys are valid.
//!
//! Documents annotated `kdps.io/example-placeholder` carry a value a script fills in (the X.509
//! group's CA certificate, created by `examples/x509/make-certs.sh` because its private key must
//! not be committed). They are skipped, but only after checking that they fail exactly because
//! of the placeholder; `make_certs_script_output_is_valid` runs the script and validates what it
//! writes instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use k8s_openapi::api::core::v1::Secret;
use kdps_api::{
    crds,
    v1alpha1::{
        AttestationType, EnrollmentGroup, IndividualEnrollment, IoTHubLink, ProvisioningService,
        ProvisioningStatus, SecretKeyRef,
    },
    validation::{self, Reason},
};
use kube::{ResourceExt, core::cel::Validator};
use serde::Deserialize;
use serde_json::Value;

const PLACEHOLDER: &str = "kdps.io/example-placeholder";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            // `out/` holds make-certs.sh output (git-ignored), validated by its own test.
            if path.file_name().is_some_and(|n| n == "out") {
                continue;
            }
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// The objects of one example set (a directory tree that is applied or loaded together).
#[derive(Default)]
struct Set {
    services: Vec<ProvisioningService>,
    links: Vec<IoTHubLink>,
    individual: Vec<IndividualEnrollment>,
    groups: Vec<EnrollmentGroup>,
    secrets: BTreeMap<(String, String), Secret>,
    placeholders: Vec<String>,
    namespaces: Vec<String>,
}

fn typed<T: serde::de::DeserializeOwned>(value: &Value, origin: &str) -> T {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{origin}: {e}"))
}

fn fail(origin: &str, problems: Vec<validation::Problem>) -> ! {
    panic!(
        "{origin} is invalid:\n{}",
        problems
            .iter()
            .map(|p| format!("  {} ({}): {}", p.field, p.reason, p.message))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn load(files: &[PathBuf], now: SystemTime) -> Set {
    let crds = crds();
    let mut set = Set::default();
    for file in files {
        for (i, doc) in documents(file).into_iter().enumerate() {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            let origin = format!("{} #{i} ({kind} {name})", file.display());
            if let Some(ns) = doc["metadata"]["namespace"].as_str() {
                set.namespaces.push(ns.to_owned());
            }
            if doc["apiVersion"] == "v1" {
                match kind.as_str() {
                    "Secret" => {
                        let s: Secret = typed(&doc, &origin);
                        set.secrets
                            .insert((s.namespace().unwrap(), s.name_any()), s);
                    }
                    "Namespace" => {}
                    other => panic!("{origin}: unexpected kind {other}"),
                }
                continue;
            }
            assert_eq!(doc["apiVersion"], "kdps.io/v1alpha1", "{origin}");
            assert!(
                doc["metadata"]["namespace"].is_string(),
                "{origin}: no namespace"
            );
            let crd = crds
                .iter()
                .find(|c| c.spec.names.kind == kind)
                .unwrap_or_else(|| panic!("{origin}: unknown kind"));

            if let Some(reason) = doc["metadata"]["annotations"][PLACEHOLDER].as_str() {
                // Honest skip: the placeholder is the one and only problem.
                let group: EnrollmentGroup = typed(&doc, &origin);
                let problems = validation::validate_enrollment_group(&group, now).unwrap_err();
                assert!(
                    problems
                        .iter()
                        .all(|p| p.reason == Reason::InvalidCertificate),
                    "{origin}: placeholder document has other problems: {problems:?}"
                );
                set.placeholders.push(format!("{origin}: {reason}"));
                continue;
            }

            let unknown = validation::check_unknown_fields(crd, &doc);
            if !unknown.is_empty() {
                fail(&origin, unknown);
            }
            let schema = serde_json::to_value(
                crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            if let Err(errors) = Validator::new().validate(&schema, &doc, None) {
                panic!("{origin}: CEL rules reject it: {errors}");
            }
            match kind.as_str() {
                "ProvisioningService" => {
                    let o: ProvisioningService = typed(&doc, &origin);
                    validation::validate_provisioning_service(&o, now)
                        .unwrap_or_else(|p| fail(&origin, p));
                    set.services.push(o);
                }
                "IoTHubLink" => {
                    let o: IoTHubLink = typed(&doc, &origin);
                    validation::validate_iot_hub_link(&o).unwrap_or_else(|p| fail(&origin, p));
                    set.links.push(o);
                }
                "IndividualEnrollment" => {
                    let o: IndividualEnrollment = typed(&doc, &origin);
                    validation::validate_individual_enrollment(&o, now)
                        .unwrap_or_else(|p| fail(&origin, p));
                    set.individual.push(o);
                }
                "EnrollmentGroup" => {
                    let o: EnrollmentGroup = typed(&doc, &origin);
                    validation::validate_enrollment_group(&o, now)
                        .unwrap_or_else(|p| fail(&origin, p));
                    set.groups.push(o);
                }
                other => {
                    panic!("{origin}: examples should not contain {other} (written by the service)")
                }
            }
        }
    }
    set
}

fn check_secret(set: &Set, ns: &str, key_ref: &SecretKeyRef, origin: &str) {
    let secret = set
        .secrets
        .get(&(ns.to_owned(), key_ref.name.clone()))
        .unwrap_or_else(|| {
            panic!(
                "{origin}: Secret {ns}/{} is not in the example set",
                key_ref.name
            )
        });
    let keys = validation::validate_symmetric_key_secret(secret, key_ref)
        .unwrap_or_else(|p| fail(origin, p));
    assert!(
        keys.secondary.is_some(),
        "{origin}: examples carry both keys"
    );
}

/// Cross-object checks within a set: Secrets, links, regions.
fn check_references(set: &Set) {
    for link in &set.links {
        let ns = link.namespace().unwrap();
        let service = set.services.iter().find(|s| s.namespace().unwrap() == ns);
        validation::validate_link_references(link, service.map(|s| &s.spec))
            .unwrap_or_else(|p| fail(&link.name_any(), p));
    }
    let links_in = |ns: &str| -> Vec<IoTHubLink> {
        set.links
            .iter()
            .filter(|l| l.namespace().as_deref() == Some(ns))
            .cloned()
            .collect()
    };
    for ie in &set.individual {
        let ns = ie.namespace().unwrap();
        let service = set.services.iter().find(|s| s.namespace().unwrap() == ns);
        validation::validate_enrollment_references(
            &ie.spec.settings(),
            service.map(|s| &s.spec),
            &links_in(&ns),
        )
        .unwrap_or_else(|p| fail(&ie.name_any(), p));
        if let Some(sk) = &ie.spec.attestation.symmetric_key {
            check_secret(set, &ns, &sk.secret_ref, &ie.name_any());
        }
    }
    for eg in &set.groups {
        let ns = eg.namespace().unwrap();
        let service = set.services.iter().find(|s| s.namespace().unwrap() == ns);
        validation::validate_enrollment_references(
            &eg.spec.settings(),
            service.map(|s| &s.spec),
            &links_in(&ns),
        )
        .unwrap_or_else(|p| fail(&eg.name_any(), p));
        if let Some(sk) = &eg.spec.attestation.symmetric_key {
            check_secret(set, &ns, &sk.secret_ref, &eg.name_any());
        }
    }
}

/// The example claims that hold beyond validity: the disabled enrollment really blocks a device
/// of the group (its keys are the group-derived device keys), and the TPM example's registration
/// ID is the one derived from its EK.
fn check_claims(set: &Set) {
    let disabled: Vec<_> = set
        .individual
        .iter()
        .filter(|ie| ie.spec.provisioning_status == ProvisioningStatus::Disabled)
        .collect();
    assert_eq!(disabled.len(), 1, "one disabled individual enrollment");
    let blocked = disabled[0];
    let group = set
        .groups
        .iter()
        .find(|g| g.spec.attestation.symmetric_key.is_some())
        .expect("a symmetric-key group");
    let ns = group.namespace().unwrap();
    let secret_of = |r: &SecretKeyRef, key: &str| -> String {
        let s = &set.secrets[&(ns.clone(), r.name.clone())];
        String::from_utf8(validation::secret_value(s, key).unwrap().to_vec()).unwrap()
    };
    let group_ref = &group
        .spec
        .attestation
        .symmetric_key
        .as_ref()
        .unwrap()
        .secret_ref;
    let device_ref = &blocked
        .spec
        .attestation
        .symmetric_key
        .as_ref()
        .unwrap()
        .secret_ref;
    let id = blocked.canonical_registration_id().unwrap();
    for (group_key, device_key) in [
        (&group_ref.primary_key_name, &device_ref.primary_key_name),
        (
            &group_ref.secondary_key_name,
            &device_ref.secondary_key_name,
        ),
    ] {
        let derived =
            kdps_proto::keys::derive_device_key_b64(&secret_of(group_ref, group_key), &id).unwrap();
        assert_eq!(
            derived,
            secret_of(device_ref, device_key),
            "derived key of {id}"
        );
    }

    let tpm = set
        .individual
        .iter()
        .find(|ie| ie.attestation_type() == Some(AttestationType::Tpm))
        .expect("a TPM enrollment");
    use base64::Engine as _;
    let ek = base64::engine::general_purpose::STANDARD
        .decode(&tpm.spec.attestation.tpm.as_ref().unwrap().endorsement_key)
        .unwrap();
    assert_eq!(
        tpm.registration_id(),
        Some(kdps_proto::tpm::registration_id_from_ek(&ek).as_str())
    );
}

#[test]
fn examples_are_valid() {
    let dir = examples_dir();
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    let (standalone, cluster): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|f| f.starts_with(dir.join("standalone")));
    let now = SystemTime::now();

    let set = load(&cluster, now);
    check_references(&set);
    check_claims(&set);
    assert_eq!(set.services.len(), 1);
    let mut weights: Vec<i32> = set.links.iter().map(|l| l.spec.allocation_weight).collect();
    weights.sort();
    assert_eq!(weights, [1, 3]);
    let namespaces: std::collections::BTreeSet<_> = set
        .links
        .iter()
        .map(|l| l.spec.device_namespace.clone())
        .collect();
    assert_eq!(namespaces.len(), 2, "links use different device namespaces");
    assert!(
        set.groups
            .iter()
            .any(|g| g.spec.attestation.symmetric_key.is_some())
    );
    let kinds: Vec<_> = set
        .individual
        .iter()
        .map(|i| i.attestation_type())
        .collect();
    assert!(kinds.contains(&Some(AttestationType::Tpm)));
    assert!(kinds.contains(&Some(AttestationType::SymmetricKey)));
    assert_eq!(set.placeholders.len(), 1, "{:?}", set.placeholders);
    assert!(set.placeholders[0].contains("make-certs.sh"));

    let set = load(&standalone, now);
    check_references(&set);
    check_claims(&set);
    assert_eq!(set.services.len(), 1);
    assert_eq!(set.links.len(), 2);
    assert!(
        set.placeholders.is_empty(),
        "standalone mode loads every object"
    );
    assert!(
        set.namespaces.iter().all(|ns| ns == "iot"),
        "standalone objects share one namespace: {:?}",
        set.namespaces
    );
}

#[test]
fn make_certs_script_output_is_valid() {
    let dir = examples_dir();
    let out = std::env::temp_dir().join(format!("kdps-make-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new("bash")
        .arg(dir.join("x509/make-certs.sh"))
        .arg("--out")
        .arg(&out)
        .args(["device-a", "Device_B"])
        .output()
        .expect("bash is needed to run examples/x509/make-certs.sh");
    assert!(
        status.status.success(),
        "make-certs.sh failed (it needs the openssl CLI: apt-get install -y openssl):\n{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let now = SystemTime::now();
    let enrollment = out.join("enrollment-group.yaml");
    let text = std::fs::read_to_string(&enrollment).unwrap();
    assert!(!text.contains(PLACEHOLDER) && !text.contains("PLACEHOLDER"));
    assert!(!text.contains("PRIVATE KEY"));

    // The generated group, together with the other examples, forms a valid set.
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    files.retain(|f| {
        !f.starts_with(dir.join("standalone")) && !f.ends_with("x509/enrollment-group.yaml")
    });
    files.push(enrollment);
    let set = load(&files, now);
    check_references(&set);
    let group = set
        .groups
        .iter()
        .find(|g| g.attestation_type() == Some(AttestationType::X509))
        .expect("the generated X.509 group");
    let ca = &group
        .spec
        .attestation
        .x509
        .as_ref()
        .unwrap()
        .signing_certificates
        .primary;
    let info =
        validation::check_certificate(&ca.certificate, validation::CertificateUse::Signing, now)
            .unwrap();
    assert!(info.subject.contains("intermediate"), "{}", info.subject);

    for id in ["device-a", "Device_B"] {
        let pem = std::fs::read_to_string(out.join(format!("{id}.cert.pem"))).unwrap();
        let leaf =
            validation::check_certificate(&pem, validation::CertificateUse::Client, now).unwrap();
        assert_eq!(leaf.common_name.as_deref(), Some(id));
        assert_eq!(leaf.issuer, info.subject);
        assert!(!leaf.is_ca);
        // The device certificate must not pass as a signing certificate.
        assert_eq!(
            validation::check_certificate(&pem, validation::CertificateUse::Signing, now)
                .unwrap_err()
                .reason,
            Reason::NotACertificateAuthority
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(out.join(format!("{id}.key.pem")))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "private key readable by others");
        }
    }
    std::fs::remove_dir_all(&out).unwrap();

    // Bad registration IDs are refused before anything is written.
    let bad = Command::new("bash")
        .arg(dir.join("x509/make-certs.sh"))
        .arg("--out")
        .arg(&out)
        .arg("bad id")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(!out.exists());
}

#[test]
fn generated_output_is_git_ignored() {
    let ignore = std::fs::read_to_string(examples_dir().join("x509/.gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "/out/"));
}
