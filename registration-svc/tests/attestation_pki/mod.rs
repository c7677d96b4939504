//! Test PKI for the attestation tests: the same certificate specifications issued either by rcgen
//! or by the `openssl` CLI (run at test time into a temporary directory), so every scenario is
//! checked against chains from two independent generators.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Which generator issues the certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Rcgen,
    Openssl,
}

/// `basicConstraints` of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basic {
    /// `CA:TRUE`, optionally with a path length.
    Ca(Option<u8>),
    /// Explicit `CA:FALSE`.
    NotCa,
    /// No extension.
    Absent,
}

/// `keyUsage` of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ku {
    /// `keyCertSign, cRLSign, digitalSignature`.
    CertSign,
    /// `digitalSignature` only.
    DigitalSignature,
}

/// `extendedKeyUsage` of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eku {
    Absent,
    ClientAuth,
    ServerAuth,
}

/// What to put in a certificate.
#[derive(Debug, Clone)]
pub struct Spec {
    pub cn: String,
    pub basic: Basic,
    pub ku: Ku,
    pub eku: Eku,
    /// Validity, counted from the moment of issuance.
    pub days: u32,
    /// Adds `nameConstraints: permitted DNS .example.com` (for CAs).
    pub name_constraints: bool,
}

impl Spec {
    pub fn ca(cn: &str) -> Spec {
        Spec {
            cn: cn.to_owned(),
            basic: Basic::Ca(None),
            ku: Ku::CertSign,
            eku: Eku::Absent,
            days: 3650,
            name_constraints: false,
        }
    }

    pub fn leaf(cn: &str) -> Spec {
        Spec {
            cn: cn.to_owned(),
            basic: Basic::NotCa,
            ku: Ku::DigitalSignature,
            eku: Eku::ClientAuth,
            days: 365,
            name_constraints: false,
        }
    }

    pub fn basic(mut self, basic: Basic) -> Spec {
        self.basic = basic;
        self
    }

    pub fn ku(mut self, ku: Ku) -> Spec {
        self.ku = ku;
        self
    }

    pub fn eku(mut self, eku: Eku) -> Spec {
        self.eku = eku;
        self
    }

    pub fn days(mut self, days: u32) -> Spec {
        self.days = days;
        self
    }

    pub fn name_constrained(mut self) -> Spec {
        self.name_constraints = true;
        self
    }
}

/// An issued certificate with its private key.
#[derive(Debug, Clone)]
pub struct Cred {
    pub der: CertificateDer<'static>,
    pub pem: String,
    pub key_pem: String,
}

/// A certificate factory on one backend.
pub struct Pki {
    pub backend: Backend,
    dir: tempfile::TempDir,
    /// Unix time when the factory was made; every certificate's validity starts within a few
    /// seconds of it (openssl: at issuance; rcgen: one minute before).
    created: u64,
    counter: AtomicU64,
}

impl Pki {
    pub fn new(backend: Backend) -> Pki {
        Pki {
            backend,
            dir: tempfile::tempdir().unwrap(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            counter: AtomicU64::new(1),
        }
    }

    /// Both backends, for tests that run every scenario twice.
    pub fn both() -> [Pki; 2] {
        [Pki::new(Backend::Rcgen), Pki::new(Backend::Openssl)]
    }

    /// A time at which every certificate issued with `days >= 1` is valid.
    pub fn now(&self) -> u64 {
        self.created + 120
    }

    /// A time `days` days (plus an hour) after issuance.
    pub fn after_days(&self, days: u32) -> u64 {
        self.created + u64::from(days) * 86_400 + 3_600
    }

    /// A time one day before issuance.
    pub fn before_issuance(&self) -> u64 {
        self.created - 86_400
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A self-signed certificate.
    pub fn root(&self, spec: &Spec) -> Cred {
        match self.backend {
            Backend::Rcgen => self.rcgen_issue(spec, None),
            Backend::Openssl => self.openssl_issue(spec, None),
        }
    }

    /// A certificate for `spec` signed by `issuer`.
    pub fn issue(&self, spec: &Spec, issuer: &Cred) -> Cred {
        match self.backend {
            Backend::Rcgen => self.rcgen_issue(spec, Some(issuer)),
            Backend::Openssl => self.openssl_issue(spec, Some(issuer)),
        }
    }

    /// Writes a PEM file (for tests that load files) and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// A version 1 certificate (no extensions) signed by `issuer`, as `openssl x509 -req` makes
    /// them without `-extfile`. openssl backend only.
    pub fn issue_v1(&self, cn: &str, issuer: &Cred) -> Cred {
        assert_eq!(
            self.backend,
            Backend::Openssl,
            "rcgen cannot make v1 certificates"
        );
        let n = self.next();
        let dir = self.dir.path();
        let key = dir.join(format!("{n}.key.pem"));
        let csr = dir.join(format!("{n}.csr.pem"));
        let cert = dir.join(format!("{n}.cert.pem"));
        let cnf = dir.join(format!("{n}.cnf"));
        let ca_cert = dir.join(format!("{n}.issuer.pem"));
        let ca_key = dir.join(format!("{n}.issuer.key.pem"));
        std::fs::write(&cnf, "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n").unwrap();
        std::fs::write(&ca_cert, &issuer.pem).unwrap();
        std::fs::write(&ca_key, &issuer.key_pem).unwrap();
        let subject = format!("/O=kdps test/CN={cn}");
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path(&key),
        ]);
        openssl(&[
            "req",
            "-new",
            "-config",
            path(&cnf),
            "-key",
            path(&key),
            "-subj",
            &subject,
            "-out",
            path(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&ca_cert),
            "-CAkey",
            path(&ca_key),
            "-set_serial",
            &n.to_string(),
            "-days",
            "30",
            "-sha256",
            "-out",
            path(&cert),
        ]);
        let pem = std::fs::read_to_string(&cert).unwrap();
        Cred {
            der: CertificateDer::from_pem_slice(pem.as_bytes()).unwrap(),
            pem,
            key_pem: std::fs::read_to_string(&key).unwrap(),
        }
    }

    fn rcgen_issue(&self, spec: &Spec, issuer: Option<&Cred>) -> Cred {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        // Self-signed roots use P-384, everything else P-256.
        let key = if issuer.is_none() {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap()
        } else {
            KeyPair::generate().unwrap()
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "kdps test");
        dn.push(DnType::CommonName, spec.cn.as_str());
        params.distinguished_name = dn;
        params.serial_number = Some(self.next().into());
        let start = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(self.created - 60);
        params.not_before = start;
        params.not_after = start + Duration::from_secs(u64::from(spec.days) * 86_400 + 60);
        params.is_ca = match spec.basic {
            Basic::Ca(None) => IsCa::Ca(BasicConstraints::Unconstrained),
            Basic::Ca(Some(n)) => IsCa::Ca(BasicConstraints::Constrained(n)),
            Basic::NotCa => IsCa::ExplicitNoCa,
            Basic::Absent => IsCa::NoCa,
        };
        params.key_usages = match spec.ku {
            Ku::CertSign => vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ],
            Ku::DigitalSignature => vec![KeyUsagePurpose::DigitalSignature],
        };
        params.extended_key_usages = match spec.eku {
            Eku::Absent => vec![],
            Eku::ClientAuth => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Eku::ServerAuth => vec![ExtendedKeyUsagePurpose::ServerAuth],
        };
        if spec.name_constraints {
            params.name_constraints = Some(rcgen::NameConstraints {
                permitted_subtrees: vec![rcgen::GeneralSubtree::DnsName(".example.com".into())],
                excluded_subtrees: vec![],
            });
        }
        let cert = match issuer {
            None => params.self_signed(&key).unwrap(),
            Some(issuer) => {
                params.use_authority_key_identifier_extension = true;
                let issuer_key = KeyPair::from_pem(&issuer.key_pem).unwrap();
                let issuer = Issuer::from_ca_cert_der(&issuer.der, issuer_key).unwrap();
                params.signed_by(&key, &issuer).unwrap()
            }
        };
        Cred {
            der: cert.der().clone(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn openssl_issue(&self, spec: &Spec, issuer: Option<&Cred>) -> Cred {
        let n = self.next();
        let dir = self.dir.path();
        let key = dir.join(format!("{n}.key.pem"));
        let csr = dir.join(format!("{n}.csr.pem"));
        let cert = dir.join(format!("{n}.cert.pem"));
        let cnf = dir.join(format!("{n}.cnf"));
        std::fs::write(&cnf, openssl_config(spec, issuer.is_some())).unwrap();
        let subject = format!("/O=kdps test/CN={}", spec.cn);
        let days = spec.days.to_string();
        let serial = format!("0x{:x}{n:04x}", self.created);

        // Roots are RSA-2048, everything else P-256.
        if issuer.is_none() {
            openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                path(&key),
            ]);
        } else {
            openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                path(&key),
            ]);
        }
        let _ = match issuer {
            None => openssl(&[
                "req",
                "-x509",
                "-new",
                "-config",
                path(&cnf),
                "-extensions",
                "ext",
                "-key",
                path(&key),
                "-subj",
                &subject,
                "-days",
                &days,
                "-set_serial",
                &serial,
                "-sha256",
                "-out",
                path(&cert),
            ]),
            Some(issuer) => {
                let ca_cert = dir.join(format!("{n}.issuer.pem"));
                let ca_key = dir.join(format!("{n}.issuer.key.pem"));
                std::fs::write(&ca_cert, &issuer.pem).unwrap();
                std::fs::write(&ca_key, &issuer.key_pem).unwrap();
                openssl(&[
                    "req",
                    "-new",
                    "-config",
                    path(&cnf),
                    "-key",
                    path(&key),
                    "-subj",
                    &subject,
                    "-out",
                    path(&csr),
                ]);
                openssl(&[
                    "x509",
                    "-req",
                    "-in",
                    path(&csr),
                    "-CA",
                    path(&ca_cert),
                    "-CAkey",
                    path(&ca_key),
                    "-set_serial",
                    &serial,
                    "-days",
                    &days,
                    "-sha256",
                    "-extfile",
                    path(&cnf),
                    "-extensions",
                    "ext",
                    "-out",
                    path(&cert),
                ])
            }
        };
        let pem = std::fs::read_to_string(&cert).unwrap();
        Cred {
            der: CertificateDer::from_pem_slice(pem.as_bytes()).unwrap(),
            pem,
            key_pem: std::fs::read_to_string(&key).unwrap(),
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An openssl config with an empty `[dn]` (the subject comes from `-subj`) and the extensions in
/// `[ext]`.
fn openssl_config(spec: &Spec, issued: bool) -> String {
    let mut s = String::from(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n[ext]\nsubjectKeyIdentifier = hash\n",
    );
    if issued {
        s.push_str("authorityKeyIdentifier = keyid\n");
    }
    match spec.basic {
        Basic::Ca(None) => s.push_str("basicConstraints = critical, CA:TRUE\n"),
        Basic::Ca(Some(n)) => {
            writeln!(s, "basicConstraints = critical, CA:TRUE, pathlen:{n}").unwrap();
        }
        Basic::NotCa => s.push_str("basicConstraints = critical, CA:FALSE\n"),
        Basic::Absent => {}
    }
    match spec.ku {
        Ku::CertSign => s.push_str("keyUsage = critical, keyCertSign, cRLSign, digitalSignature\n"),
        Ku::DigitalSignature => s.push_str("keyUsage = critical, digitalSignature\n"),
    }
    if spec.name_constraints {
        s.push_str("nameConstraints = critical, permitted;DNS:.example.com\n");
    }
    match spec.eku {
        Eku::Absent => {}
        Eku::ClientAuth => s.push_str("extendedKeyUsage = clientAuth\n"),
        Eku::ServerAuth => s.push_str("extendedKeyUsage = serverAuth\n"),
    }
    s
}

/// Runs the openssl CLI; fails the test with its stderr when it fails or is missing.
pub fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (needed by the X.509 tests): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
