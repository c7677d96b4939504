//! Shared fixtures for the kdps-api tests: X.509 certificates made with rcgen at test time,
//! real TPM public keys read from swtpm, and a fixed "now".
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

/// The instant the tests validate at: 2025-06-01T00:00:00Z. Certificates below are valid from
/// 2020 to 2040 unless a test wants otherwise, so results never depend on the wall clock.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_748_736_000)
}

/// Validity window of a test certificate, as (year from, year to).
pub type Years = (i32, i32);
pub const VALID: Years = (2020, 2040);
pub const EXPIRED: Years = (2010, 2015);
pub const NOT_YET_VALID: Years = (2030, 2040);

/// A certificate and its key.
pub struct Cert {
    pub params: CertificateParams,
    pub key: KeyPair,
    pub pem: String,
}

impl Cert {
    pub fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

fn params(cn: &str, years: Years) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = date_time_ymd(years.0, 1, 1);
    p.not_after = date_time_ymd(years.1, 1, 1);
    p
}

fn ca_params(cn: &str, years: Years, usages: Vec<KeyUsagePurpose>) -> CertificateParams {
    let mut p = params(cn, years);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = usages;
    p
}

/// A self-signed root CA.
pub fn root_ca(cn: &str, years: Years) -> Cert {
    let params = ca_params(
        cn,
        years,
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
    );
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Cert { params, key, pem }
}

/// An intermediate CA signed by `issuer`.
pub fn intermediate_ca(cn: &str, years: Years, issuer: &Cert) -> Cert {
    let params = ca_params(
        cn,
        years,
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
    );
    let key = KeyPair::generate().unwrap();
    let pem = params.signed_by(&key, &issuer.issuer()).unwrap().pem();
    Cert { params, key, pem }
}

/// A CA certificate (basicConstraints CA=true) whose keyUsage does not allow certificate
/// signing.
pub fn ca_without_cert_sign(cn: &str) -> Cert {
    let params = ca_params(cn, VALID, vec![KeyUsagePurpose::DigitalSignature]);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Cert { params, key, pem }
}

/// A device (leaf) certificate with CN `cn`, signed by `issuer`.
pub fn leaf(cn: &str, years: Years, issuer: &Cert) -> Cert {
    let mut params = params(cn, years);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let pem = params.signed_by(&key, &issuer.issuer()).unwrap().pem();
    Cert { params, key, pem }
}

/// A self-signed device certificate with CN `cn`.
pub fn self_signed_leaf(cn: &str, years: Years) -> Cert {
    let mut params = params(cn, years);
    params.is_ca = IsCa::ExplicitNoCa;
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Cert { params, key, pem }
}

/// Indent a PEM for a YAML block scalar at `spaces`.
pub fn indent(pem: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    pem.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// Real TPM public areas (base64 of the marshalled TPM2B_PUBLIC), read once from a software TPM
// (swtpm 0.7, tpm2-tools 5.4) with:
//   swtpm socket --tpmstate dir=state --tpm2 --server type=tcp,port=2321 --ctrl type=tcp,port=2322 \
//     --flags not-need-init,startup-clear &
//   export TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=2321
//   tpm2_createek -G rsa -u ek_rsa.pub -c ek_rsa.ctx;  base64 -w0 ek_rsa.pub
//   tpm2_createek -G ecc -u ek_ecc.pub -c ek_ecc.ctx;  base64 -w0 ek_ecc.pub
//   tpm2_createprimary -C o -G rsa2048 -c srk.ctx && tpm2_readpublic -c srk.ctx -o srk.pub
//   tpm2_createprimary -C o -G rsa2048:rsassa:null \
//     -a "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign" -c sign.ctx \
//     && tpm2_readpublic -c sign.ctx -o sign.pub
// Public keys only: no secret is involved.

/// RSA 2048 endorsement key (attributes fixedtpm|fixedparent|sensitivedataorigin|
/// adminwithpolicy|restricted|decrypt, the TCG default EK policy).
pub const EK_RSA: &str = "AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEAy5k3i2vod7OUHAf1BOiofQGbMV2Bgd8LDIVJbUEWDn+igJ/5XPClRUy8X1vJPEQXGumuzSII0TpRiUX3s2tq/QO1V19EttBGmVUmaNoy5UH0WRfN4MPatH2DoVBRI2oINpw6J9yGqCDNSn7NcZ7fPhaU6s7G9kxOF6xwQZAiU5XZM6/2PdvpMx59izHxJN5Qlnrg2uGdah2VcUnlNWr57unIVer8YN/G+VO5Wtk6f+v/laiMBfLAnRxp1Nci/6liQylu8s4Wp/w7xox0A5zCd0uzZSW5MKZwiyr3NuW47JBcvPoz0qQIJ4LJMVrDIzHGdZJ7nbWgjYz7RF73aI24UQ==";
/// ECC NIST P-256 endorsement key.
pub const EK_ECC: &str = "AHoAIwALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAADABAAIPnvBWAXOwwllDFZZ8XL/oB8YxJmCHpv846QapnHb9BIACDH4bjQGISxBwEashySwUT12kp/3pzsdh7KaIld+1M0pg==";
/// RSA 2048 storage root key (owner hierarchy primary, restricted decrypt).
pub const SRK_RSA: &str = "ARoAAQALAAMAcgAAAAYAgABDABAIAAAAAAABAKH28D3/M7kHM2fpMgdzrI6XYPK3nbD6ZGP1DJDnUPFOyCsZ1+K566j5kMobGT/xUFTELtqFgMAIK1socbJ05zw4AikKBHkyKW2BpcvaXBNOxG0ZDebjE9JeREx+O2fsYQwLg55lk0nGqXfgfHofZB+PAUSxfU59FLY9vj0W5i4D/9P6JfTN3kGiEc7acvDSbHLinQw+f8KoqQcrdEwT08Mox7NA1HTxHcE9eStmohfxn69erKPKcSMlJgsxIPFM51Di8JgN+4gaGB3bkS6XV23wwvBsxAPlFNPBI/4z/ytOlZ5kabDnM7hKaBhVUBQhfmM7GGOZfvVj7+cXI9H1qs8=";
/// RSA 2048 unrestricted signing key (RSASSA): well-formed, but not an EK.
pub const SIGNING_KEY_RSA: &str = "ARgAAQALAAQAcgAAABAAFAALCAAAAAAAAQC8OTfGwyI5w8pCjaxxPI8Bk+lVEycpGwZcIHEY4kS/UQiwo5oC0LUPTbhfsB2ObrN6fGKpqTJZNXBxY6zpCG3XcpmP8QfbS0gEm6AOLy4NmPHCmX+iIJftBsJc8I3iu+sXVCdUEjfVN52E2Rmz1enRF0LwRjItMfLjT7s50aLw6kqJjyxXAdJR/kJgg4bkt0dkOazi4aQuIs9Vvuu6lf9bJtL167oLErjBCnpoMYZy4ZeP1PixcdwE3V6Hdaln2aO8X1ft5pppD3thbtxtPSsrGjcUTGJ0x80SFDDEj4KLt1bjzhnybTMpX3A023gVlEc9IN/6dzLuKzlhNb4lPzcx";

/// Random-looking but fixed 64-byte test key, base64.
pub const KEY_64: &str =
    "i5ajF7ohNASCnSxIOzQD5/Z5SB8i3H+SLY1/SJi1ReBSqb4efXkljASmlZMdpGGcecYv4JRTPHO95hu9UmorEQ==";
