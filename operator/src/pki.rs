//! Serving certificates for registration services.
//!
//! Unless a ProvisioningService names its own `spec.tls.secretName`, the operator issues the
//! service's serving certificate from an operator-managed CA. The CA lives in the Secret
//! [`CA_SECRET_NAME`] in the operator's namespace, which registration services cannot read
//! (their Roles are in their own namespaces), and is published to devices as
//! `status.caBundle`. Serving certificates cover `<service>.<namespace>.svc`, the
//! `.cluster.local` form, the short name and `spec.endpoint.dnsNames`; they are renewed a
//! third of their lifetime before they expire, when the CA changes or when the names change.
//!
//! Everything here is pure (time is a parameter) apart from key generation.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use x509_parser::{
    certificate::X509Certificate, extensions::GeneralName, pem::Pem, prelude::FromDer,
};

/// Name of the Secret holding the operator-managed CA (in the operator's namespace).
pub const CA_SECRET_NAME: &str = "kdps-ca";
/// Secret key of a certificate (PEM), as in `kubernetes.io/tls` Secrets.
pub const TLS_CRT: &str = "tls.crt";
/// Secret key of a private key (PEM).
pub const TLS_KEY: &str = "tls.key";
/// Secret key of the CA bundle (PEM).
pub const CA_CRT: &str = "ca.crt";
/// Lifetime of a new CA, in days.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// A CA with fewer days left is replaced (devices must then trust the new `caBundle`).
pub const CA_MIN_REMAINING_DAYS: i64 = 90;
/// Lifetime of a serving certificate, in days.
pub const SERVING_VALIDITY_DAYS: i64 = 90;

const DAY: i64 = 86_400;

/// Errors from creating certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen failed (key generation, encoding, a name that is not a valid SAN).
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A date is out of range.
    #[error("certificate validity is out of range")]
    Time,
}

/// The operator's CA: certificate and key.
pub struct Ca {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    key: KeyPair,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Create a new CA valid from a day before `now` for [`CA_VALIDITY_DAYS`].
    pub fn generate(now: i64) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "kdps");
        dn.push(DnType::CommonName, "kdps operator CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, now, 1, CA_VALIDITY_DAYS)?;
        let cert = params.self_signed(&key)?;
        let not_after = parse_der(cert.der()).map_or(0, |c| c.validity().not_after.timestamp());
        Ok(Self {
            cert_pem: cert.pem(),
            key,
            not_after,
        })
    }

    /// The CA stored in `secret`, when it is usable at `now`; else why not.
    pub fn from_secret(secret: &Secret, now: i64) -> Result<Self, &'static str> {
        let cert_pem = secret_str(secret, TLS_CRT).ok_or("no tls.crt")?;
        let key_pem = secret_str(secret, TLS_KEY).ok_or("no tls.key")?;
        let key = KeyPair::from_pem(key_pem).map_err(|_| "tls.key is not a usable key")?;
        let der = first_pem_der(cert_pem).ok_or("tls.crt holds no certificate")?;
        let cert = parse_der(&der).ok_or("tls.crt does not parse")?;
        if !cert.is_ca() {
            return Err("tls.crt is not a CA certificate");
        }
        if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err("tls.key does not match tls.crt");
        }
        let not_after = cert.validity().not_after.timestamp();
        if cert.validity().not_before.timestamp() > now {
            return Err("the CA is not valid yet");
        }
        if not_after - now < CA_MIN_REMAINING_DAYS * DAY {
            return Err("the CA expires within 90 days");
        }
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key,
            not_after,
        })
    }

    /// The Secret data that stores this CA (`tls.crt`, `tls.key`).
    pub fn secret_data(&self) -> BTreeMap<String, ByteString> {
        BTreeMap::from([
            (
                TLS_CRT.to_owned(),
                ByteString(self.cert_pem.clone().into_bytes()),
            ),
            (
                TLS_KEY.to_owned(),
                ByteString(self.key.serialize_pem().into_bytes()),
            ),
        ])
    }

    /// Issue a serving certificate for `names` (DNS names), valid from a day before `now` for
    /// [`SERVING_VALIDITY_DAYS`] but never longer than the CA.
    pub fn issue_serving(&self, names: &[String], now: i64) -> Result<ServingCert, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "kdps");
        dn.push(
            DnType::CommonName,
            names.first().map_or("kdps-registration", String::as_str),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| Ok(SanType::DnsName(n.as_str().try_into()?)))
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let ca_days_left = (self.not_after - now) / DAY;
        set_validity(
            &mut params,
            now,
            1,
            SERVING_VALIDITY_DAYS.min(ca_days_left.max(1)),
        )?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        let not_after = parse_der(cert.der()).map_or(0, |c| c.validity().not_after.timestamp());
        Ok(ServingCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }
}

/// A serving certificate and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct ServingCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (never logged).
    pub key_pem: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// When to renew: a third of the lifetime before notAfter (30 days for 90-day
    /// certificates).
    pub fn renew_at(&self) -> i64 {
        self.not_after - SERVING_VALIDITY_DAYS * DAY / 3
    }

    /// The certificate in `secret` (as the operator wrote it), when it can be kept at `now`:
    /// issued by `ca`, matching its key, covering exactly `names`, and not due for renewal.
    pub fn from_secret(
        secret: &Secret,
        ca: &Ca,
        names: &[String],
        now: i64,
    ) -> Result<Self, &'static str> {
        let cert_pem = secret_str(secret, TLS_CRT).ok_or("no tls.crt")?;
        let key_pem = secret_str(secret, TLS_KEY).ok_or("no tls.key")?;
        let key = KeyPair::from_pem(key_pem).map_err(|_| "tls.key is not a usable key")?;
        let der = first_pem_der(cert_pem).ok_or("tls.crt holds no certificate")?;
        let leaf = parse_der(&der).ok_or("tls.crt does not parse")?;
        let ca_der = first_pem_der(&ca.cert_pem).ok_or("the CA holds no certificate")?;
        let ca_cert = parse_der(&ca_der).ok_or("the CA does not parse")?;
        if leaf.issuer() != ca_cert.subject()
            || leaf.verify_signature(Some(ca_cert.public_key())).is_err()
        {
            return Err("not issued by the current CA");
        }
        if leaf.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err("tls.key does not match tls.crt");
        }
        let mut have = dns_names(&leaf);
        have.sort();
        let mut want: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        want.sort();
        if have != want {
            return Err("the DNS names changed");
        }
        let cert = Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            not_after: leaf.validity().not_after.timestamp(),
        };
        if leaf.validity().not_before.timestamp() > now || now >= cert.renew_at() {
            return Err("due for renewal");
        }
        Ok(cert)
    }
}

/// The DNS names of the serving certificate of Service `name` in `namespace`: the in-cluster
/// names first, then `extra` (spec.endpoint.dnsNames), lower-cased and without duplicates.
pub fn serving_names(name: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
        format!("{name}.{namespace}"),
        name.to_owned(),
    ];
    for n in extra {
        let n = n.to_ascii_lowercase();
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// Facts about a user-supplied `kubernetes.io/tls` Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserTls {
    /// `ca.crt`, when present: published as `status.caBundle`.
    pub ca_bundle: Option<String>,
    /// SHA-256 of `tls.crt` (hex), to roll the Deployment when the certificate changes.
    pub cert_sha256: String,
}

/// Check a user-supplied serving-certificate Secret: `tls.crt` parses and is valid at `now`,
/// `tls.key` is present. Returns a readable problem otherwise (never key material).
pub fn check_user_tls(secret: &Secret, now: i64) -> Result<UserTls, String> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let cert_pem = secret_str(secret, TLS_CRT)
        .ok_or_else(|| format!("Secret {name:?} has no tls.crt (text PEM)"))?;
    if secret_str(secret, TLS_KEY).is_none() {
        return Err(format!("Secret {name:?} has no tls.key (text PEM)"));
    }
    let der = first_pem_der(cert_pem)
        .ok_or_else(|| format!("Secret {name:?} tls.crt holds no PEM certificate"))?;
    let cert = parse_der(&der)
        .ok_or_else(|| format!("Secret {name:?} tls.crt is not a valid X.509 certificate"))?;
    let v = cert.validity();
    if v.not_after.timestamp() <= now {
        return Err(format!(
            "Secret {name:?} tls.crt expired at {}",
            v.not_after
        ));
    }
    if v.not_before.timestamp() > now {
        return Err(format!(
            "Secret {name:?} tls.crt is not valid before {}",
            v.not_before
        ));
    }
    Ok(UserTls {
        ca_bundle: secret_str(secret, CA_CRT)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned),
        cert_sha256: sha256_hex(cert_pem.as_bytes()),
    })
}

/// SHA-256 of `data` as lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn secret_str<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| std::str::from_utf8(&b.0).ok())
}

fn first_pem_der(pem: &str) -> Option<Vec<u8>> {
    Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .find(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
}

fn parse_der(der: &[u8]) -> Option<X509Certificate<'_>> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c)
}

fn dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and non-zero, as RFC 5280 requires.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Sets notBefore/notAfter to whole UTC days relative to `now`.
fn set_validity(
    params: &mut CertificateParams,
    now: i64,
    before_days: i64,
    after_days: i64,
) -> Result<(), PkiError> {
    let day = |offset: i64| -> Result<_, PkiError> {
        let date = jiff::Timestamp::from_second(now)
            .map_err(|_| PkiError::Time)?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date()
            .checked_add(jiff::Span::new().days(offset))
            .map_err(|_| PkiError::Time)?;
        Ok(rcgen::date_time_ymd(
            i32::from(date.year()),
            date.month().unsigned_abs(),
            date.day().unsigned_abs(),
        ))
    };
    params.not_before = day(-before_days)?;
    params.not_after = day(after_days)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("s".into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn ca_secret(ca: &Ca) -> Secret {
        Secret {
            data: Some(ca.secret_data()),
            ..Secret::default()
        }
    }

    #[test]
    fn ca_round_trips_through_its_secret() {
        let ca = Ca::generate(NOW).unwrap();
        let back = Ca::from_secret(&ca_secret(&ca), NOW).unwrap();
        assert_eq!(back.cert_pem, ca.cert_pem);
        assert!(ca.not_after > NOW + 3000 * DAY);
        // Debug never shows the key.
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn unusable_cas_are_reported() {
        let ca = Ca::generate(NOW).unwrap();
        let other = Ca::generate(NOW).unwrap();
        let mismatched = secret(&[
            (TLS_CRT, &ca.cert_pem),
            (TLS_KEY, &other.key.serialize_pem()),
        ]);
        assert_eq!(
            Ca::from_secret(&mismatched, NOW).unwrap_err(),
            "tls.key does not match tls.crt"
        );
        assert_eq!(
            Ca::from_secret(&ca_secret(&ca), ca.not_after - DAY).unwrap_err(),
            "the CA expires within 90 days"
        );
        assert_eq!(
            Ca::from_secret(&secret(&[]), NOW).unwrap_err(),
            "no tls.crt"
        );
        // A leaf is not a CA.
        let leaf = ca.issue_serving(&["a.b.svc".into()], NOW).unwrap();
        let not_ca = secret(&[(TLS_CRT, &leaf.cert_pem), (TLS_KEY, &leaf.key_pem)]);
        assert_eq!(
            Ca::from_secret(&not_ca, NOW).unwrap_err(),
            "tls.crt is not a CA certificate"
        );
    }

    #[test]
    fn serving_cert_is_kept_until_renewal_and_replaced_on_changes() {
        let ca = Ca::generate(NOW).unwrap();
        let names = serving_names("dps", "iot", &["dps.example.com".into()]);
        assert_eq!(
            names,
            [
                "dps.iot.svc",
                "dps.iot.svc.cluster.local",
                "dps.iot",
                "dps",
                "dps.example.com"
            ]
        );
        let cert = ca.issue_serving(&names, NOW).unwrap();
        let stored = secret(&[(TLS_CRT, &cert.cert_pem), (TLS_KEY, &cert.key_pem)]);
        assert_eq!(
            ServingCert::from_secret(&stored, &ca, &names, NOW).unwrap(),
            cert
        );
        // Order of names does not matter, content does.
        let mut reordered = names.clone();
        reordered.reverse();
        assert!(ServingCert::from_secret(&stored, &ca, &reordered, NOW).is_ok());
        let fewer = &names[..4];
        assert_eq!(
            ServingCert::from_secret(&stored, &ca, fewer, NOW).unwrap_err(),
            "the DNS names changed"
        );
        // Renewal: 60 days in (a third of 90 days before notAfter).
        assert_eq!(cert.renew_at(), cert.not_after - 30 * DAY);
        assert_eq!(
            ServingCert::from_secret(&stored, &ca, &names, cert.renew_at()).unwrap_err(),
            "due for renewal"
        );
        // A new CA invalidates it.
        let new_ca = Ca::generate(NOW).unwrap();
        assert_eq!(
            ServingCert::from_secret(&stored, &new_ca, &names, NOW).unwrap_err(),
            "not issued by the current CA"
        );
        assert!(!format!("{cert:?}").contains("PRIVATE"));
    }

    #[test]
    fn serving_cert_verifies_with_openssl() {
        // Cross-check with an independent implementation: the openssl CLI.
        let dir = tempfile::tempdir().unwrap();
        let now = jiff::Timestamp::now().as_second();
        let ca = Ca::generate(now).unwrap();
        let cert = ca
            .issue_serving(&serving_names("dps", "iot", &[]), now)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.path().join("leaf.pem"), &cert.cert_pem).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-purpose", "sslserver", "-verify_hostname"])
            .arg("dps.iot.svc")
            .arg("-CAfile")
            .arg(dir.path().join("ca.pem"))
            .arg(dir.path().join("leaf.pem"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn user_tls_secrets_are_checked() {
        let now = jiff::Timestamp::now().as_second();
        let ca = Ca::generate(now).unwrap();
        let cert = ca.issue_serving(&["dps.example.com".into()], now).unwrap();
        let ok = secret(&[
            (TLS_CRT, &cert.cert_pem),
            (TLS_KEY, &cert.key_pem),
            (CA_CRT, &ca.cert_pem),
        ]);
        let info = check_user_tls(&ok, now).unwrap();
        assert_eq!(info.ca_bundle.as_deref(), Some(ca.cert_pem.as_str()));
        assert_eq!(info.cert_sha256, sha256_hex(cert.cert_pem.as_bytes()));

        let no_key = secret(&[(TLS_CRT, &cert.cert_pem)]);
        assert!(
            check_user_tls(&no_key, now)
                .unwrap_err()
                .contains("no tls.key")
        );
        let garbage = secret(&[(TLS_CRT, "hello"), (TLS_KEY, "k")]);
        assert!(
            check_user_tls(&garbage, now)
                .unwrap_err()
                .contains("holds no PEM certificate")
        );
        let expired = check_user_tls(&ok, cert.not_after + 1).unwrap_err();
        assert!(expired.contains("expired"), "{expired}");
        assert!(!expired.contains("PRIVATE"));
    }
}
