//! X.509 attestation against real chains, each scenario issued twice: by rcgen and by the openssl
//! CLI. Accepted: leaf/intermediate/root enrollments, secondary certificates, individual
//! enrollments; refused, each with its own error: unknown CA, expired, not yet valid, wrong CN,
//! forged signature, non-CA issuer, missing keyCertSign, path length, wrong EKU, CA leaf.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attestation_pki;

use attestation_pki::{Basic, Eku, Ku, Pki, Spec, openssl};
use kdps_registration::attestation::x509::{
    CertificateInfo, ClientCertificates, EnrolledCertificate, SigningCerts, leaf_common_name,
    matching_group, verify_group, verify_individual,
};
use kdps_registration::attestation::{AttestationError, CertPosition, MatchedCredential};
use rustls_pki_types::CertificateDer;

const ID: &str = "device-01";

/// root → intermediate → leaf, all valid now.
struct Chain {
    root: attestation_pki::Cred,
    intermediate: attestation_pki::Cred,
    leaf: attestation_pki::Cred,
}

fn chain(pki: &Pki) -> Chain {
    let root = pki.root(&Spec::ca("kdps Test Root"));
    let intermediate = pki.issue(&Spec::ca("kdps Test Intermediate"), &root);
    let leaf = pki.issue(&Spec::leaf(ID), &intermediate);
    Chain {
        root,
        intermediate,
        leaf,
    }
}

fn group(cert: &attestation_pki::Cred) -> SigningCerts {
    SigningCerts::from_pem(&cert.pem, None).unwrap()
}

fn ders(creds: &[&attestation_pki::Cred]) -> Vec<CertificateDer<'static>> {
    creds.iter().map(|c| c.der.clone()).collect()
}

fn each_backend(mut f: impl FnMut(&Pki)) {
    for pki in Pki::both() {
        eprintln!("backend: {:?}", pki.backend);
        f(&pki);
    }
}

#[test]
fn group_accepts_chains_to_the_enrolled_intermediate_or_root() {
    each_backend(|pki| {
        let c = chain(pki);
        let now = pki.now();
        let cases = [
            // (presented chain, enrolled signing cert)
            (ders(&[&c.leaf, &c.intermediate]), &c.intermediate),
            (ders(&[&c.leaf]), &c.intermediate),
            (ders(&[&c.leaf, &c.intermediate]), &c.root),
            (ders(&[&c.leaf, &c.intermediate, &c.root]), &c.root),
            (ders(&[&c.leaf, &c.intermediate, &c.root]), &c.intermediate),
        ];
        for (presented, enrolled) in cases {
            assert_eq!(
                verify_group(&presented, ID, &group(enrolled), now).unwrap(),
                MatchedCredential::Primary
            );
        }
        // The registration ID is compared case-insensitively with the CN.
        let presented = ders(&[&c.leaf, &c.intermediate]);
        assert!(verify_group(&presented, &ID.to_uppercase(), &group(&c.root), now).is_ok());
        assert_eq!(leaf_common_name(&presented).unwrap(), ID);
    });
}

#[test]
fn group_secondary_signing_certificate() {
    each_backend(|pki| {
        let c = chain(pki);
        let other = pki.root(&Spec::ca("Some Other Root"));
        let signing = SigningCerts::from_pem(&other.pem, Some(&c.root.pem)).unwrap();
        let presented = ders(&[&c.leaf, &c.intermediate]);
        assert_eq!(
            verify_group(&presented, ID, &signing, pki.now()).unwrap(),
            MatchedCredential::Secondary
        );
    });
}

#[test]
fn group_leaf_without_eku_is_accepted() {
    each_backend(|pki| {
        let root = pki.root(&Spec::ca("Root"));
        let leaf = pki.issue(&Spec::leaf(ID).eku(Eku::Absent), &root);
        assert!(verify_group(&ders(&[&leaf]), ID, &group(&root), pki.now()).is_ok());
    });
}

#[test]
fn refuses_unknown_ca() {
    each_backend(|pki| {
        let c = chain(pki);
        let stranger = pki.root(&Spec::ca("Stranger Root"));
        let presented = ders(&[&c.leaf, &c.intermediate, &c.root]);
        assert!(matches!(
            verify_group(&presented, ID, &group(&stranger), pki.now()),
            Err(AttestationError::UnknownIssuer)
        ));
        // Root enrolled but the intermediate is not presented: the path cannot be built.
        assert!(matches!(
            verify_group(&ders(&[&c.leaf]), ID, &group(&c.root), pki.now()),
            Err(AttestationError::UnknownIssuer)
        ));
    });
}

#[test]
fn refuses_expired_certificates() {
    each_backend(|pki| {
        let root = pki.root(&Spec::ca("Root").days(30));
        let intermediate = pki.issue(&Spec::ca("Intermediate").days(2), &root);
        let leaf = pki.issue(&Spec::leaf(ID).days(1), &intermediate);
        let long_leaf = pki.issue(&Spec::leaf(ID).days(365), &intermediate);

        let err = verify_group(
            &ders(&[&leaf, &intermediate]),
            ID,
            &group(&root),
            pki.after_days(1),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::CertificateExpired {
                    position: CertPosition::Leaf,
                    ..
                }
            ),
            "{err}"
        );

        let presented = ders(&[&long_leaf, &intermediate]);
        let err = verify_group(&presented, ID, &group(&root), pki.after_days(2)).unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::CertificateExpired {
                    position: CertPosition::Presented(1),
                    ..
                }
            ),
            "{err}"
        );
        let err =
            verify_group(&presented, ID, &group(&intermediate), pki.after_days(2)).unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::CertificateExpired {
                    position: CertPosition::EnrolledSigningCertificate,
                    ..
                }
            ),
            "{err}"
        );
        // The root expires while everything under it is still valid.
        let long_inter = pki.issue(&Spec::ca("Long Intermediate").days(365), &root);
        let under = pki.issue(&Spec::leaf(ID).days(365), &long_inter);
        let presented = ders(&[&under, &long_inter]);
        assert!(verify_group(&presented, ID, &group(&root), pki.now()).is_ok());
        let err = verify_group(&presented, ID, &group(&root), pki.after_days(30)).unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::CertificateExpired {
                    position: CertPosition::EnrolledSigningCertificate,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.dps_error_code(), 401002);
    });
}

#[test]
fn refuses_not_yet_valid() {
    each_backend(|pki| {
        let c = chain(pki);
        let err = verify_group(
            &ders(&[&c.leaf, &c.intermediate]),
            ID,
            &group(&c.root),
            pki.before_issuance(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::CertificateNotYetValid {
                    position: CertPosition::Leaf,
                    ..
                }
            ),
            "{err}"
        );
    });
}

#[test]
fn refuses_wrong_common_name() {
    each_backend(|pki| {
        let c = chain(pki);
        let err = verify_group(
            &ders(&[&c.leaf, &c.intermediate]),
            "device-02",
            &group(&c.root),
            pki.now(),
        )
        .unwrap_err();
        match err {
            AttestationError::CommonNameMismatch {
                common_name,
                registration_id,
            } => {
                assert_eq!(common_name, ID);
                assert_eq!(registration_id, "device-02");
            }
            other => panic!("{other}"),
        }
    });
}

#[test]
fn refuses_forged_signature_under_the_same_issuer_name() {
    each_backend(|pki| {
        let c = chain(pki);
        // Same subject name as the real intermediate, different key.
        let impostor = pki.issue(&Spec::ca("kdps Test Intermediate"), &c.root);
        let forged = pki.issue(&Spec::leaf(ID), &impostor);
        let err =
            verify_group(&ders(&[&forged]), ID, &group(&c.intermediate), pki.now()).unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::BadSignature {
                    position: CertPosition::Leaf
                }
            ),
            "{err}"
        );
        // Presenting the real intermediate after the forged leaf does not help.
        let err = verify_group(
            &ders(&[&forged, &c.intermediate]),
            ID,
            &group(&c.root),
            pki.now(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::BadSignature {
                    position: CertPosition::Leaf
                }
            ),
            "{err}"
        );
        // A self-issued impostor root with the real root's name.
        let fake_root = pki.root(&Spec::ca("kdps Test Root"));
        let fake_inter = pki.issue(&Spec::ca("kdps Test Intermediate"), &fake_root);
        let fake_leaf = pki.issue(&Spec::leaf(ID), &fake_inter);
        let err = verify_group(
            &ders(&[&fake_leaf, &fake_inter]),
            ID,
            &group(&c.root),
            pki.now(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::BadSignature {
                    position: CertPosition::Presented(1)
                }
            ),
            "{err}"
        );
    });
}

#[test]
fn refuses_non_ca_issuers() {
    each_backend(|pki| {
        let root = pki.root(&Spec::ca("Root"));
        for basic in [Basic::NotCa, Basic::Absent] {
            let not_ca = pki.issue(&Spec::ca("Not A CA").basic(basic), &root);
            let leaf = pki.issue(&Spec::leaf(ID), &not_ca);
            let err =
                verify_group(&ders(&[&leaf, &not_ca]), ID, &group(&root), pki.now()).unwrap_err();
            assert!(
                matches!(
                    err,
                    AttestationError::NotACa {
                        position: CertPosition::Presented(1)
                    }
                ),
                "{basic:?}: {err}"
            );
            // Enrolling the non-CA certificate itself is refused too.
            let err = verify_group(&ders(&[&leaf]), ID, &group(&not_ca), pki.now()).unwrap_err();
            assert!(
                matches!(
                    err,
                    AttestationError::NotACa {
                        position: CertPosition::EnrolledSigningCertificate
                    }
                ),
                "{basic:?}: {err}"
            );
        }
        let no_sign = pki.issue(&Spec::ca("No keyCertSign").ku(Ku::DigitalSignature), &root);
        let leaf = pki.issue(&Spec::leaf(ID), &no_sign);
        let err =
            verify_group(&ders(&[&leaf, &no_sign]), ID, &group(&root), pki.now()).unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::KeyCertSignNotAllowed {
                    position: CertPosition::Presented(1)
                }
            ),
            "{err}"
        );
    });
}

#[test]
fn refuses_path_length_violation() {
    each_backend(|pki| {
        let root = pki.root(&Spec::ca("Root pathlen 0").basic(Basic::Ca(Some(0))));
        let intermediate = pki.issue(&Spec::ca("Intermediate"), &root);
        let leaf = pki.issue(&Spec::leaf(ID), &intermediate);
        let err =
            verify_group(&ders(&[&leaf, &intermediate]), ID, &group(&root), pki.now()).unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::PathLenExceeded {
                    position: CertPosition::EnrolledSigningCertificate
                }
            ),
            "{err}"
        );
        // pathlen 0 still allows issuing the leaf directly.
        let direct = pki.issue(&Spec::leaf(ID), &root);
        assert!(verify_group(&ders(&[&direct]), ID, &group(&root), pki.now()).is_ok());
    });
}

#[test]
fn refuses_wrong_eku() {
    each_backend(|pki| {
        let c = chain(pki);
        let server = pki.issue(&Spec::leaf(ID).eku(Eku::ServerAuth), &c.intermediate);
        let err = verify_group(
            &ders(&[&server, &c.intermediate]),
            ID,
            &group(&c.root),
            pki.now(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::ClientAuthNotAllowed {
                    position: CertPosition::Leaf
                }
            ),
            "{err}"
        );
        let enrolled = ClientCertificates {
            primary: EnrolledCertificate::from_pem(&server.pem).unwrap(),
            secondary: None,
        };
        let err = verify_individual(&ders(&[&server]), ID, &enrolled, pki.now()).unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::ClientAuthNotAllowed {
                    position: CertPosition::Leaf
                }
            ),
            "{err}"
        );
    });
}

#[test]
fn refuses_ca_certificate_as_device_certificate() {
    each_backend(|pki| {
        let root = pki.root(&Spec::ca("Root"));
        let ca_leaf = pki.issue(&Spec::ca(ID), &root);
        let err = verify_group(&ders(&[&ca_leaf]), ID, &group(&root), pki.now()).unwrap_err();
        assert!(matches!(err, AttestationError::CaUsedAsLeaf), "{err}");
    });
}

#[test]
fn refuses_unparsable_chain_members() {
    each_backend(|pki| {
        let c = chain(pki);
        let presented = vec![
            c.leaf.der.clone(),
            CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]),
        ];
        let err = verify_group(&presented, ID, &group(&c.root), pki.now()).unwrap_err();
        assert!(
            matches!(
                err,
                AttestationError::UnparsableCertificate {
                    position: CertPosition::Presented(1)
                }
            ),
            "{err}"
        );
        assert!(matches!(
            verify_group(&[], ID, &group(&c.root), pki.now()),
            Err(AttestationError::MissingCertificate)
        ));
    });
}

#[test]
fn individual_enrollment() {
    each_backend(|pki| {
        let c = chain(pki);
        // A self-signed device certificate, as `openssl req -x509` makes them.
        let self_signed = pki.root(&Spec::leaf(ID));
        let other = pki.root(&Spec::leaf(ID));
        let now = pki.now();

        let enrolled = ClientCertificates {
            primary: EnrolledCertificate::from_pem(&self_signed.pem).unwrap(),
            secondary: Some(EnrolledCertificate::from_pem(&c.leaf.pem).unwrap()),
        };
        assert_eq!(
            verify_individual(&ders(&[&self_signed]), ID, &enrolled, now).unwrap(),
            MatchedCredential::Primary
        );
        assert_eq!(
            verify_individual(&ders(&[&c.leaf, &c.intermediate]), ID, &enrolled, now).unwrap(),
            MatchedCredential::Secondary
        );
        assert!(matches!(
            verify_individual(&ders(&[&other]), ID, &enrolled, now),
            Err(AttestationError::CertificateNotEnrolled)
        ));
        assert!(matches!(
            verify_individual(&ders(&[&self_signed]), "someone-else", &enrolled, now),
            Err(AttestationError::CommonNameMismatch { .. })
        ));
        assert!(matches!(
            verify_individual(&ders(&[&self_signed]), ID, &enrolled, pki.after_days(365)),
            Err(AttestationError::CertificateExpired {
                position: CertPosition::Leaf,
                ..
            })
        ));
        assert!(matches!(
            verify_individual(&[], ID, &enrolled, now),
            Err(AttestationError::MissingCertificate)
        ));

        // By thumbprint, as computed by openssl.
        let file = pki.write("self_signed.pem", &self_signed.pem);
        for digest in ["-sha1", "-sha256"] {
            let out = openssl(&[
                "x509",
                "-in",
                file.to_str().unwrap(),
                "-noout",
                "-fingerprint",
                digest,
            ]);
            let thumbprint = out.trim().split_once('=').unwrap().1;
            let enrolled = ClientCertificates {
                primary: EnrolledCertificate::from_thumbprint(thumbprint).unwrap(),
                secondary: None,
            };
            assert_eq!(
                verify_individual(&ders(&[&self_signed]), ID, &enrolled, now).unwrap(),
                MatchedCredential::Primary
            );
            assert!(verify_individual(&ders(&[&other]), ID, &enrolled, now).is_err());
        }
    });
}

#[test]
fn matching_group_follows_dps_precedence() {
    each_backend(|pki| {
        let c = chain(pki);
        let unrelated = pki.root(&Spec::ca("Unrelated Root"));
        let by_root = group(&c.root);
        let by_intermediate = group(&c.intermediate);
        let by_unrelated = group(&unrelated);
        let secondary_root = SigningCerts::from_pem(&unrelated.pem, Some(&c.root.pem)).unwrap();
        let full = ders(&[&c.leaf, &c.intermediate, &c.root]);

        // The intermediate is closer to the leaf, so its group wins even when listed last.
        let groups = [
            ("unrelated", &by_unrelated),
            ("root", &by_root),
            ("intermediate", &by_intermediate),
        ];
        assert_eq!(
            matching_group(&full, groups.into_iter()),
            Some(("intermediate", MatchedCredential::Primary))
        );
        let groups = [("unrelated", &by_unrelated), ("root", &by_root)];
        assert_eq!(
            matching_group(&full, groups.into_iter()),
            Some(("root", MatchedCredential::Primary))
        );
        // The root need not be presented.
        let partial = ders(&[&c.leaf, &c.intermediate]);
        assert_eq!(
            matching_group(&partial, [("secondary", &secondary_root)].into_iter()),
            Some(("secondary", MatchedCredential::Secondary))
        );
        assert_eq!(
            matching_group(&full, [("unrelated", &by_unrelated)].into_iter()),
            None
        );

        // A forged leaf under a look-alike issuer matches no group.
        let impostor = pki.issue(&Spec::ca("kdps Test Intermediate"), &unrelated);
        let forged = pki.issue(&Spec::leaf(ID), &impostor);
        assert_eq!(
            matching_group(
                &ders(&[&forged]),
                [("intermediate", &by_intermediate)].into_iter()
            ),
            None
        );
    });
}

#[test]
fn certificate_info_matches_openssl() {
    each_backend(|pki| {
        let c = chain(pki);
        let info = CertificateInfo::from_der(&c.leaf.der).unwrap();
        let file = pki.write("leaf.pem", &c.leaf.pem);
        let file = file.to_str().unwrap();
        let field = |args: &[&str]| {
            let mut all = vec!["x509", "-in", file, "-noout"];
            all.extend_from_slice(args);
            openssl(&all)
                .trim()
                .split_once('=')
                .unwrap()
                .1
                .trim()
                .to_owned()
        };
        assert_eq!(
            info.sha1_thumbprint,
            field(&["-fingerprint", "-sha1"]).replace(':', "")
        );
        assert_eq!(
            info.sha256_thumbprint,
            field(&["-fingerprint", "-sha256"]).replace(':', "")
        );
        assert_eq!(
            info.serial_number.trim_start_matches('0'),
            field(&["-serial"]).trim_start_matches('0')
        );
        // RFC 2253 order is most specific first, like ours.
        assert_eq!(
            info.subject_name.replace(", ", ","),
            field(&["-subject", "-nameopt", "RFC2253"])
        );
        assert_eq!(info.subject_name, format!("CN={ID}, O=kdps test"));
        assert_eq!(info.issuer_name, "CN=kdps Test Intermediate, O=kdps test");
        assert_eq!(info.version, 3);
        let not_after = field(&["-enddate"]);
        let year = info.not_after_utc.get(..4).unwrap();
        assert!(
            not_after.contains(year),
            "{not_after} vs {}",
            info.not_after_utc
        );
    });
}

/// `openssl x509 -req` without extensions makes v1 device certificates; Azure DPS accepts them and
/// so do we (rustls-webpki alone would not). They still get every other check.
#[test]
fn group_accepts_v1_device_certificate() {
    let pki = Pki::new(attestation_pki::Backend::Openssl);
    let c = chain(&pki);
    let v1 = pki.issue_v1(ID, &c.intermediate);
    let out = openssl(&[
        "x509",
        "-in",
        pki.write("v1.pem", &v1.pem).to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(out.contains("Version: 1 (0x0)"), "{out}");
    let presented = ders(&[&v1, &c.intermediate]);
    assert!(verify_group(&presented, ID, &group(&c.root), pki.now()).is_ok());
    assert!(verify_group(&ders(&[&v1]), ID, &group(&c.intermediate), pki.now()).is_ok());
    assert_eq!(CertificateInfo::from_der(&v1.der).unwrap().version, 1);
    assert!(matches!(
        verify_group(&presented, "other", &group(&c.root), pki.now()),
        Err(AttestationError::CommonNameMismatch { .. })
    ));
    let forged = pki.issue_v1(ID, &pki.issue(&Spec::ca("kdps Test Intermediate"), &c.root));
    assert!(matches!(
        verify_group(&ders(&[&forged]), ID, &group(&c.intermediate), pki.now()),
        Err(AttestationError::BadSignature {
            position: CertPosition::Leaf
        })
    ));
}

/// Under a name-constrained CA, v3 device certificates go through rustls-webpki's name-constraint
/// checks; v1 device certificates cannot, so they are refused.
#[test]
fn name_constrained_ca() {
    let pki = Pki::new(attestation_pki::Backend::Openssl);
    let root = pki.root(&Spec::ca("Root"));
    let constrained = pki.issue(&Spec::ca("Constrained").name_constrained(), &root);
    let v3 = pki.issue(&Spec::leaf(ID), &constrained);
    assert!(verify_group(&ders(&[&v3, &constrained]), ID, &group(&root), pki.now()).is_ok());
    let v1 = pki.issue_v1(ID, &constrained);
    let err = verify_group(&ders(&[&v1, &constrained]), ID, &group(&root), pki.now()).unwrap_err();
    assert!(matches!(err, AttestationError::ChainRejected(_)), "{err}");
}
