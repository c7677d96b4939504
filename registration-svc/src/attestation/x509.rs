//! X.509 attestation: judging the client certificate chain a device presented in TLS against an
//! enrollment (dps-protocol §3).
//!
//! The TLS layer accepts any chain (after checking the handshake signature, i.e. possession of the
//! leaf key); these functions decide whether it belongs to an enrollment:
//!
//! - individual enrollment ([`verify_individual`]): the leaf is the enrolled primary or secondary
//!   certificate (DER equality or thumbprint), is within its validity window, its CN is the
//!   registration ID and its EKU (if any) allows clientAuth;
//! - enrollment group ([`verify_group`]): the same leaf checks, then the chain from the leaf up to
//!   the certificate issued by the enrolled signing certificate is checked link by link (issuer
//!   names, signatures, validity, CA basic constraints, keyCertSign, path length, EKU, unknown
//!   critical extensions), each failure with its own error, and the whole path is validated by
//!   rustls-webpki with the signing certificate as the only trust anchor (for v3 device
//!   certificates; v1 device certificates, which webpki does not support, are accepted unless a
//!   CA on the path has name constraints). Each signature is verified once on success: by webpki
//!   for v3 chains, by the link checks for v1 ones.
//!
//! [`matching_group`] finds the group a chain belongs to, [`CertificateInfo`] describes a
//! certificate for `registrationState.x509`. Time is passed in as Unix seconds.

use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::prelude::FromDer;
use x509_parser::x509::{X509Name, X509Version};

use super::{AttestationError, CertPosition, MatchedCredential};

/// The longest chain (leaf included) we walk; real device chains have 1–4 certificates.
pub const MAX_CHAIN_LEN: usize = 10;

/// Longest common name echoed back in an error message.
const MAX_ECHOED_CN: usize = 64;

/// A certificate held by an individual enrollment, by value or by thumbprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrolledCertificate {
    /// The DER certificate; the device must present exactly this certificate.
    Certificate(CertificateDer<'static>),
    /// SHA-1 of the DER certificate.
    Sha1Thumbprint([u8; 20]),
    /// SHA-256 of the DER certificate.
    Sha256Thumbprint([u8; 32]),
}

impl EnrolledCertificate {
    /// The first `CERTIFICATE` in a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, AttestationError> {
        parse_pem_certificate(pem).map(EnrolledCertificate::Certificate)
    }

    /// A SHA-1 (40 hex digits) or SHA-256 (64 hex digits) thumbprint; case-insensitive, `:` and
    /// spaces between bytes are ignored.
    pub fn from_thumbprint(text: &str) -> Result<Self, AttestationError> {
        let digits: String = text.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
        let bytes =
            hex::decode(&digits).map_err(|_| invalid_enrollment("thumbprint is not hex"))?;
        if let Ok(sha1) = <[u8; 20]>::try_from(bytes.as_slice()) {
            Ok(EnrolledCertificate::Sha1Thumbprint(sha1))
        } else if let Ok(sha256) = <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(EnrolledCertificate::Sha256Thumbprint(sha256))
        } else {
            Err(invalid_enrollment(
                "thumbprint is neither 20 (SHA-1) nor 32 (SHA-256) bytes",
            ))
        }
    }

    /// Whether `der` is this certificate.
    pub fn matches(&self, der: &[u8]) -> bool {
        match self {
            EnrolledCertificate::Certificate(cert) => cert.as_ref() == der,
            EnrolledCertificate::Sha1Thumbprint(t) => Sha1::digest(der).as_slice() == t,
            EnrolledCertificate::Sha256Thumbprint(t) => Sha256::digest(der).as_slice() == t,
        }
    }
}

/// An individual enrollment's device certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificates {
    /// The primary certificate.
    pub primary: EnrolledCertificate,
    /// The optional secondary certificate.
    pub secondary: Option<EnrolledCertificate>,
}

/// An enrollment group's signing certificates (root or intermediate CAs), DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningCerts {
    /// The primary signing certificate.
    pub primary: CertificateDer<'static>,
    /// The optional secondary signing certificate.
    pub secondary: Option<CertificateDer<'static>>,
}

impl SigningCerts {
    /// Signing certificates from PEM text (the first `CERTIFICATE` of each).
    pub fn from_pem(primary: &str, secondary: Option<&str>) -> Result<Self, AttestationError> {
        Ok(SigningCerts {
            primary: parse_pem_certificate(primary)?,
            secondary: secondary.map(parse_pem_certificate).transpose()?,
        })
    }

    fn iter(&self) -> impl Iterator<Item = (MatchedCredential, &CertificateDer<'static>)> {
        std::iter::once((MatchedCredential::Primary, &self.primary)).chain(
            self.secondary
                .iter()
                .map(|c| (MatchedCredential::Secondary, c)),
        )
    }
}

/// The first `CERTIFICATE` block of a PEM text, checked to be parseable X.509.
pub fn parse_pem_certificate(pem: &str) -> Result<CertificateDer<'static>, AttestationError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| invalid_enrollment(&format!("no PEM certificate: {e}")))?;
    X509Certificate::from_der(&der)
        .map_err(|_| invalid_enrollment("PEM certificate is not valid X.509"))?;
    Ok(der)
}

fn invalid_enrollment(reason: &str) -> AttestationError {
    AttestationError::InvalidEnrollmentCertificate {
        reason: reason.to_owned(),
    }
}

fn position(index: usize) -> CertPosition {
    if index == 0 {
        CertPosition::Leaf
    } else {
        CertPosition::Presented(index)
    }
}

/// Parses the presented chain, leaf first.
fn parse_chain<'a>(
    chain: &'a [CertificateDer<'_>],
) -> Result<Vec<X509Certificate<'a>>, AttestationError> {
    if chain.is_empty() {
        return Err(AttestationError::MissingCertificate);
    }
    if chain.len() > MAX_CHAIN_LEN {
        return Err(AttestationError::ChainTooLong(chain.len()));
    }
    chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            X509Certificate::from_der(der.as_ref())
                .map(|(_, cert)| cert)
                .map_err(|_| AttestationError::UnparsableCertificate {
                    position: position(i),
                })
        })
        .collect()
}

/// The device certificate's subject common name (the first CN attribute).
pub fn leaf_common_name(chain: &[CertificateDer<'_>]) -> Result<String, AttestationError> {
    let leaf_der = chain.first().ok_or(AttestationError::MissingCertificate)?;
    let (_, leaf) = X509Certificate::from_der(leaf_der.as_ref()).map_err(|_| {
        AttestationError::UnparsableCertificate {
            position: CertPosition::Leaf,
        }
    })?;
    common_name(&leaf)
}

fn common_name(cert: &X509Certificate<'_>) -> Result<String, AttestationError> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_owned)
        .ok_or(AttestationError::MissingCommonName)
}

fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| unix.to_string())
}

fn check_validity(
    cert: &X509Certificate<'_>,
    position: CertPosition,
    now: u64,
) -> Result<(), AttestationError> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return Err(AttestationError::CertificateNotYetValid {
            position,
            not_before: rfc3339(not_before),
        });
    }
    if now > not_after {
        return Err(AttestationError::CertificateExpired {
            position,
            not_after: rfc3339(not_after),
        });
    }
    Ok(())
}

/// When an EKU extension is present it must list clientAuth (as rustls-webpki requires).
fn check_eku(cert: &X509Certificate<'_>, position: CertPosition) -> Result<(), AttestationError> {
    match cert.extended_key_usage() {
        Ok(None) => Ok(()),
        Ok(Some(eku)) if eku.value.client_auth => Ok(()),
        Ok(Some(_)) | Err(_) => Err(AttestationError::ClientAuthNotAllowed { position }),
    }
}

fn check_critical_extensions(
    cert: &X509Certificate<'_>,
    position: CertPosition,
) -> Result<(), AttestationError> {
    let unknown_critical = cert.extensions().iter().any(|ext| {
        ext.critical
            && (ext.parsed_extension().unsupported() || ext.parsed_extension().error().is_some())
    });
    if unknown_critical {
        return Err(AttestationError::UnsupportedCriticalExtension { position });
    }
    Ok(())
}

/// Checks shared by individual and group enrollments: validity, CN, EKU, critical extensions.
fn check_leaf(
    leaf: &X509Certificate<'_>,
    registration_id: &str,
    now: u64,
) -> Result<(), AttestationError> {
    check_validity(leaf, CertPosition::Leaf, now)?;
    let cn = common_name(leaf)?;
    if !cn.eq_ignore_ascii_case(registration_id) {
        return Err(AttestationError::CommonNameMismatch {
            common_name: cn.chars().take(MAX_ECHOED_CN).collect(),
            registration_id: registration_id.to_owned(),
        });
    }
    check_eku(leaf, CertPosition::Leaf)?;
    check_critical_extensions(leaf, CertPosition::Leaf)
}

/// Checks that `issuer` may issue a certificate with `below` CA certificates under it (not
/// counting the leaf).
fn check_issuer(
    issuer: &X509Certificate<'_>,
    position: CertPosition,
    below: usize,
) -> Result<(), AttestationError> {
    let constraints = match issuer.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => bc.value.path_len_constraint,
        _ => return Err(AttestationError::NotACa { position }),
    };
    if let Some(max) = constraints
        && usize::try_from(max).is_ok_and(|max| below > max)
    {
        return Err(AttestationError::PathLenExceeded { position });
    }
    match issuer.key_usage() {
        Ok(None) => {}
        Ok(Some(ku)) if ku.value.key_cert_sign() => {}
        Ok(Some(_)) | Err(_) => return Err(AttestationError::KeyCertSignNotAllowed { position }),
    }
    Ok(())
}

/// Checks that `issuer` signed `cert`.
fn check_signature(
    cert: &X509Certificate<'_>,
    position: CertPosition,
    issuer: &X509Certificate<'_>,
) -> Result<(), AttestationError> {
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(AttestationError::IssuerMismatch { position });
    }
    match cert.verify_signature(Some(issuer.public_key())) {
        Ok(()) => Ok(()),
        Err(X509Error::SignatureUnsupportedAlgorithm) => {
            Err(AttestationError::UnsupportedSignatureAlgorithm { position })
        }
        Err(_) => Err(AttestationError::BadSignature { position }),
    }
}

fn issued_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw()
}

/// Verifies a chain against an individual enrollment's certificates.
///
/// Only the leaf matters: the enrolled certificate is the trust anchor itself, so certificates
/// after it in the chain are ignored.
pub fn verify_individual(
    chain: &[CertificateDer<'_>],
    registration_id: &str,
    enrolled: &ClientCertificates,
    now: u64,
) -> Result<MatchedCredential, AttestationError> {
    let leaf_der = chain.first().ok_or(AttestationError::MissingCertificate)?;
    if chain.len() > MAX_CHAIN_LEN {
        return Err(AttestationError::ChainTooLong(chain.len()));
    }
    let (_, leaf) = X509Certificate::from_der(leaf_der.as_ref()).map_err(|_| {
        AttestationError::UnparsableCertificate {
            position: CertPosition::Leaf,
        }
    })?;
    let matched = if enrolled.primary.matches(leaf_der) {
        MatchedCredential::Primary
    } else if enrolled
        .secondary
        .as_ref()
        .is_some_and(|c| c.matches(leaf_der))
    {
        MatchedCredential::Secondary
    } else {
        return Err(AttestationError::CertificateNotEnrolled);
    };
    check_leaf(&leaf, registration_id, now)?;
    Ok(matched)
}

/// Verifies a chain against an enrollment group's signing certificates (primary, then secondary).
///
/// When neither signing certificate issued any certificate of the chain the result is
/// [`AttestationError::UnknownIssuer`]; when one did but a check on the way failed, that check's
/// error.
pub fn verify_group(
    chain: &[CertificateDer<'_>],
    registration_id: &str,
    signing: &SigningCerts,
    now: u64,
) -> Result<MatchedCredential, AttestationError> {
    let certs = parse_chain(chain)?;
    let leaf = certs.first().ok_or(AttestationError::MissingCertificate)?;
    check_leaf(leaf, registration_id, now)?;
    if leaf.is_ca() {
        return Err(AttestationError::CaUsedAsLeaf);
    }

    let mut first_error = None;
    for (slot, anchor_der) in signing.iter() {
        let (_, anchor) = X509Certificate::from_der(anchor_der.as_ref())
            .map_err(|_| invalid_enrollment("signing certificate is not valid X.509"))?;
        match verify_path(chain, &certs, anchor_der, &anchor, now) {
            Ok(()) => return Ok(slot),
            Err(AttestationError::UnknownIssuer) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(AttestationError::UnknownIssuer))
}

/// Validates `certs[0..=i]` + `anchor`, where `certs[i]` is the first certificate whose issuer name
/// is the anchor's subject.
fn verify_path(
    chain: &[CertificateDer<'_>],
    certs: &[X509Certificate<'_>],
    anchor_der: &CertificateDer<'_>,
    anchor: &X509Certificate<'_>,
    now: u64,
) -> Result<(), AttestationError> {
    let top = certs
        .iter()
        .position(|c| issued_by(c, anchor))
        .ok_or(AttestationError::UnknownIssuer)?;

    // rustls-webpki accepts only v3 certificates, but `openssl x509 -req` without extensions
    // issues v1 device certificates and Azure DPS accepts them. A v1 certificate has no
    // extensions, so the link checks cover it; the only webpki check it would miss is name
    // constraints, hence v1 device certificates are refused under a name-constrained CA.
    let leaf = certs.first().ok_or(AttestationError::MissingCertificate)?;
    if leaf.version() != X509Version::V3 {
        check_links(certs, top, anchor, now, Signatures::Verify)?;
        let constrained = certs
            .get(1..=top)
            .unwrap_or(&[])
            .iter()
            .chain(std::iter::once(anchor))
            .any(|c| !matches!(c.name_constraints(), Ok(None)));
        if constrained {
            return Err(AttestationError::ChainRejected(
                "a v1 device certificate cannot be checked against name constraints".to_owned(),
            ));
        }
        return Ok(());
    }

    // Signature checks are the expensive part of X.509 attestation (profiled: two per link when
    // both the link checks and webpki verified them). webpki verifies every signature on the
    // path (plus name constraints and encoding rules); the link checks then add our own rules
    // without verifying signatures again. When webpki refuses the path, the link checks run
    // with signatures to name the specific reason, and webpki's verdict stands otherwise.
    match webpki_path(chain, top, anchor_der, now) {
        Ok(()) => check_links(certs, top, anchor, now, Signatures::VerifiedByWebpki),
        Err(rejected) => {
            check_links(certs, top, anchor, now, Signatures::Verify)?;
            Err(rejected)
        }
    }
}

/// Whether [`check_links`] verifies signatures itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signatures {
    Verify,
    VerifiedByWebpki,
}

/// The link-by-link checks of `certs[0..=top]` + `anchor`, each failure with its own error.
fn check_links(
    certs: &[X509Certificate<'_>],
    top: usize,
    anchor: &X509Certificate<'_>,
    now: u64,
    signatures: Signatures,
) -> Result<(), AttestationError> {
    let link = |cert: &X509Certificate<'_>, pos: CertPosition, issuer: &X509Certificate<'_>| {
        if signatures == Signatures::Verify {
            check_signature(cert, pos, issuer)
        } else if cert.issuer().as_raw() != issuer.subject().as_raw() {
            Err(AttestationError::IssuerMismatch { position: pos })
        } else {
            Ok(())
        }
    };
    // Links inside the presented chain: certs[j] issued by certs[j + 1].
    for j in 0..top {
        let (Some(cert), Some(issuer)) = (certs.get(j), certs.get(j + 1)) else {
            return Err(AttestationError::UnknownIssuer);
        };
        let issuer_pos = position(j + 1);
        link(cert, position(j), issuer)?;
        check_validity(issuer, issuer_pos, now)?;
        // `j` CA certificates lie between this issuer and the leaf.
        check_issuer(issuer, issuer_pos, j)?;
        check_eku(issuer, issuer_pos)?;
        check_critical_extensions(issuer, issuer_pos)?;
    }

    // The last link: certs[top] issued by the enrolled certificate.
    let top_cert = certs.get(top).ok_or(AttestationError::UnknownIssuer)?;
    link(top_cert, position(top), anchor)?;
    let anchor_pos = CertPosition::EnrolledSigningCertificate;
    check_validity(anchor, anchor_pos, now)?;
    check_issuer(anchor, anchor_pos, top)
}

/// The path `chain[0..=top]` through rustls-webpki with `anchor_der` as the only trust anchor.
fn webpki_path(
    chain: &[CertificateDer<'_>],
    top: usize,
    anchor_der: &CertificateDer<'_>,
    now: u64,
) -> Result<(), AttestationError> {
    let trust_anchor = webpki::anchor_from_trusted_cert(anchor_der)
        .map_err(|e| invalid_enrollment(&format!("signing certificate rejected: {e}")))?;
    let leaf_der = chain.first().ok_or(AttestationError::MissingCertificate)?;
    let end_entity = webpki::EndEntityCert::try_from(leaf_der)
        .map_err(|e| AttestationError::ChainRejected(e.to_string()))?;
    let intermediates = chain.get(1..=top).unwrap_or(&[]);
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[trust_anchor],
            intermediates,
            UnixTime::since_unix_epoch(Duration::from_secs(now)),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| AttestationError::ChainRejected(e.to_string()))?;
    Ok(())
}

/// The enrollment group a chain belongs to (dps-protocol §3 precedence).
///
/// Walks the chain from the leaf's issuer (the first intermediate) up to the root — including the
/// issuer of the last presented certificate, which the device need not send — and returns the
/// first group whose primary or secondary signing certificate issued the certificate at that
/// level (issuer name and signature). Groups are tried in iteration order at each level. Returns
/// `None` when the chain cannot be parsed or no group matches; call [`verify_group`] on the result
/// for the full checks.
pub fn matching_group<'a>(
    chain: &[CertificateDer<'_>],
    groups: impl Iterator<Item = (&'a str, &'a SigningCerts)>,
) -> Option<(&'a str, MatchedCredential)> {
    let certs = parse_chain(chain).ok()?;
    let anchors: Vec<(&'a str, MatchedCredential, X509Certificate<'a>)> = groups
        .flat_map(|(name, signing)| {
            signing.iter().filter_map(move |(slot, der)| {
                X509Certificate::from_der(der.as_ref())
                    .ok()
                    .map(|(_, cert)| (name, slot, cert))
            })
        })
        .collect();
    certs.iter().find_map(|cert| {
        anchors.iter().find_map(|(name, slot, anchor)| {
            (issued_by(cert, anchor) && cert.verify_signature(Some(anchor.public_key())).is_ok())
                .then_some((*name, *slot))
        })
    })
}

/// A certificate's description in a DPS answer (`registrationState.x509.certificateInfo` and
/// `signingCertificateInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// Subject distinguished name, most specific RDN first (`CN=dev, O=Org`).
    pub subject_name: String,
    /// SHA-1 of the DER certificate, upper-case hex.
    pub sha1_thumbprint: String,
    /// SHA-256 of the DER certificate, upper-case hex.
    pub sha256_thumbprint: String,
    /// Issuer distinguished name, most specific RDN first.
    pub issuer_name: String,
    /// Start of validity, RFC 3339 UTC.
    pub not_before_utc: String,
    /// End of validity, RFC 3339 UTC.
    pub not_after_utc: String,
    /// Serial number, upper-case hex of its DER bytes.
    pub serial_number: String,
    /// X.509 version (3 for v3).
    pub version: u32,
}

impl CertificateInfo {
    /// Describes a DER certificate. A parse failure is reported as an unparsable device certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, AttestationError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| {
            AttestationError::UnparsableCertificate {
                position: CertPosition::Leaf,
            }
        })?;
        let validity = cert.validity();
        Ok(CertificateInfo {
            subject_name: display_name(cert.subject()),
            sha1_thumbprint: hex::encode_upper(Sha1::digest(der)),
            sha256_thumbprint: hex::encode_upper(Sha256::digest(der)),
            issuer_name: display_name(cert.issuer()),
            not_before_utc: rfc3339(validity.not_before.timestamp()),
            not_after_utc: rfc3339(validity.not_after.timestamp()),
            serial_number: hex::encode_upper(cert.raw_serial()),
            version: cert.version().0.saturating_add(1),
        })
    }
}

/// A distinguished name in the order Windows/.NET (and thus DPS) print it: last RDN first.
fn display_name(name: &X509Name<'_>) -> String {
    let mut reversed: Vec<_> = name.iter_rdn().cloned().collect();
    reversed.reverse();
    X509Name::new(reversed, name.as_raw()).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn self_signed(cn: &str) -> (CertificateDer<'static>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        // Encoded most general first (O, then CN), as CAs usually do.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "kdps test");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        (cert.der().clone(), cert.pem())
    }

    #[test]
    fn thumbprints() {
        let (der, pem) = self_signed("dev");
        let sha1 = hex::encode(Sha1::digest(&der));
        let sha256 = hex::encode_upper(Sha256::digest(&der));
        let colons: Vec<String> = sha1
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        for enrolled in [
            EnrolledCertificate::from_pem(&pem).unwrap(),
            EnrolledCertificate::from_thumbprint(&sha1).unwrap(),
            EnrolledCertificate::from_thumbprint(&colons.join(":")).unwrap(),
            EnrolledCertificate::from_thumbprint(&sha256).unwrap(),
        ] {
            assert!(enrolled.matches(&der), "{enrolled:?}");
            assert!(!enrolled.matches(&self_signed("dev").0));
        }
        assert!(matches!(
            EnrolledCertificate::from_thumbprint("abcd"),
            Err(AttestationError::InvalidEnrollmentCertificate { .. })
        ));
        assert!(matches!(
            EnrolledCertificate::from_thumbprint("zz"),
            Err(AttestationError::InvalidEnrollmentCertificate { .. })
        ));
    }

    #[test]
    fn bad_pem() {
        for pem in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            assert!(matches!(
                parse_pem_certificate(pem),
                Err(AttestationError::InvalidEnrollmentCertificate { .. })
            ));
        }
    }

    #[test]
    fn certificate_info_fields() {
        let (der, _) = self_signed("dev-7");
        let info = CertificateInfo::from_der(&der).unwrap();
        assert_eq!(info.subject_name, "CN=dev-7, O=kdps test");
        assert_eq!(info.issuer_name, info.subject_name);
        assert_eq!(info.version, 3);
        assert_eq!(info.sha1_thumbprint.len(), 40);
        assert_eq!(
            info.sha256_thumbprint,
            hex::encode_upper(Sha256::digest(&der))
        );
        assert!(info.not_before_utc.ends_with('Z'));
        let json = serde_json::to_value(&info).unwrap();
        for key in [
            "subjectName",
            "sha1Thumbprint",
            "sha256Thumbprint",
            "issuerName",
            "notBeforeUtc",
            "notAfterUtc",
            "serialNumber",
            "version",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn empty_and_garbage_chains() {
        assert!(matches!(
            leaf_common_name(&[]),
            Err(AttestationError::MissingCertificate)
        ));
        let garbage = [CertificateDer::from(vec![1u8, 2, 3])];
        assert!(matches!(
            leaf_common_name(&garbage),
            Err(AttestationError::UnparsableCertificate {
                position: CertPosition::Leaf
            })
        ));
        let (der, _) = self_signed("dev");
        let too_long = vec![der; MAX_CHAIN_LEN + 1];
        assert!(matches!(
            verify_group(
                &too_long,
                "dev",
                &SigningCerts {
                    primary: too_long[0].clone(),
                    secondary: None
                },
                0
            ),
            Err(AttestationError::ChainTooLong(11))
        ));
        assert_eq!(matching_group(&garbage, std::iter::empty()), None);
    }
}
