//! Server TLS: certificates and the client-certificate verifier.
//!
//! - [`ensure_self_managed`]: standalone mode without configured TLS. Creates (or reuses) a CA
//!   and a server certificate under `DATA/tls/` and returns the server identity; devices
//!   trust `DATA/tls/ca.pem`.
//! - [`ServerIdentity::from_pem_files`]: a user-supplied certificate chain and key.
//! - [`server_config`]: the rustls configuration of the device port: TLS 1.2/1.3 (ring),
//!   ALPN `h2` and `http/1.1`, and [`AcceptAnyClientCert`], which requests a client
//!   certificate without requiring one and accepts any issuer. The registration engine judges
//!   the chain against enrollments afterwards; the handshake still proves that the client
//!   holds the certificate's private key.

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::{self, Write as _},
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType, SerialNumber,
};
use rustls::{
    DigitallySignedStruct, DistinguishedName as HintName, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject as _},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer as _};

/// CA certificate (PEM) under the TLS directory; devices trust this file.
pub const CA_CERT_FILE: &str = "ca.pem";
/// CA private key (PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Server certificate (PEM).
pub const SERVER_CERT_FILE: &str = "server.pem";
/// Server private key (PEM, mode 0600).
pub const SERVER_KEY_FILE: &str = "server-key.pem";

/// ALPN protocols of the device port, in server preference order.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

const CA_VALIDITY_DAYS: i64 = 3650;
const SERVER_VALIDITY_DAYS: i64 = 365;
/// Certificates expiring within this many days are replaced on start.
const RENEW_BEFORE_DAYS: i64 = 30;
/// Longest client chain accepted at the TLS layer (leaf excluded). Device chains are short;
/// this only bounds the work the engine does per connection.
const MAX_CLIENT_INTERMEDIATES: usize = 8;
const KEY_FILE_MODE: u32 = 0o600;
const CERT_FILE_MODE: u32 = 0o644;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A PEM file holds no certificate or is malformed.
    #[error("{path}: no valid PEM certificate: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A PEM file holds no private key or is malformed.
    #[error("{path}: no valid PEM private key: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong (never key material).
        reason: String,
    },
    /// A requested server name is neither an IP address nor a valid DNS name.
    #[error("invalid server name {name:?}: must be an IP address or a DNS name")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// Certificate generation failed.
    #[error("generating certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The rustls configuration was rejected (e.g. key does not match certificate).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A server certificate chain and its private key. `Debug` never shows the key.
pub struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("chain_len", &self.chain.len())
            .field("key", &"[redacted]")
            .finish()
    }
}

impl ServerIdentity {
    /// Wraps a chain (leaf first) and its key.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self { chain, key }
    }

    /// Loads a user-supplied certificate chain (PEM, leaf first) and private key (PEM:
    /// PKCS#8, PKCS#1 or SEC1). Whether the key matches is checked by [`server_config`].
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let chain = parse_cert_chain(cert_path, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
            path: key_path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self { chain, key })
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

/// Result of [`ensure_self_managed`].
#[derive(Debug)]
pub struct SelfManagedTls {
    /// The server certificate and key to serve.
    pub identity: ServerIdentity,
    /// The CA certificate (PEM) devices must trust.
    pub ca_pem: String,
    /// Where the CA certificate is stored (`DATA/tls/ca.pem`).
    pub ca_path: PathBuf,
    /// A new CA was created (devices must be given the new `ca.pem`).
    pub ca_generated: bool,
    /// A new server certificate was issued.
    pub server_generated: bool,
}

/// The names the self-managed server certificate covers: `localhost`, `127.0.0.1`, `::1`,
/// the listen host (unless it is an unspecified address such as `0.0.0.0`) and `extra`.
/// Duplicates (DNS names compared case-insensitively) are removed; order is kept.
pub fn default_server_names(listen_host: &str, extra: &[String]) -> Vec<String> {
    let listen_host = listen_host.trim_start_matches('[').trim_end_matches(']');
    let mut names: Vec<String> = Vec::new();
    let candidates =
        ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(str::to_owned)
            .chain(Some(listen_host.to_owned()).filter(|h| {
                !h.is_empty() && !h.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified())
            }))
            .chain(extra.iter().cloned());
    for name in candidates {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            names.push(name);
        }
    }
    names
}

/// A subject alternative name we issue or look for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SanName {
    /// Lower-case DNS name (may start with `*.`).
    Dns(String),
    Ip(IpAddr),
}

fn parse_name(name: &str) -> Result<SanName, TlsError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanName::Ip(ip));
    }
    let invalid = || TlsError::InvalidName {
        name: name.to_owned(),
    };
    let host = name.strip_prefix("*.").unwrap_or(name);
    // DnsName accepts IP-looking strings too; those were handled above.
    rustls::pki_types::DnsName::try_from(host).map_err(|_| invalid())?;
    if host.is_empty() || host.contains('*') {
        return Err(invalid());
    }
    Ok(SanName::Dns(name.to_ascii_lowercase()))
}

/// Creates or reuses the standalone CA and server certificate in `tls_dir` (`DATA/tls`).
///
/// The CA (`ca.pem`, `ca-key.pem`) is reused while it parses, matches its key, is a CA and
/// stays valid for 30 more days; otherwise a new one is made. The server certificate
/// (`server.pem`, `server-key.pem`) is reused while it matches its key, was issued by the CA,
/// stays valid for 30 more days and covers every name in `names`; otherwise a new one is
/// issued by the CA. Key files get mode 0600; files are replaced atomically.
pub fn ensure_self_managed(tls_dir: &Path, names: &[String]) -> Result<SelfManagedTls, TlsError> {
    let wanted = names
        .iter()
        .map(|n| parse_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    if wanted.is_empty() {
        return Err(TlsError::InvalidName {
            name: String::new(),
        });
    }
    create_private_dir(tls_dir)?;

    let (ca, ca_generated) = match load_ca(tls_dir) {
        Some(ca) => (ca, false),
        None => {
            let ca = new_ca()?;
            // Key first: a crash in between leaves a mismatched pair, which the next start
            // detects and replaces.
            write_atomic(
                &tls_dir.join(CA_KEY_FILE),
                ca.key.serialize_pem().as_bytes(),
                KEY_FILE_MODE,
            )?;
            write_atomic(
                &tls_dir.join(CA_CERT_FILE),
                ca.cert_pem.as_bytes(),
                CERT_FILE_MODE,
            )?;
            tracing::info!(path = %tls_dir.join(CA_CERT_FILE).display(), "created a new TLS CA");
            (ca, true)
        }
    };

    let reused = if ca_generated {
        None
    } else {
        load_server(tls_dir, &ca, &wanted)
    };
    let (identity, server_generated) = match reused {
        Some(identity) => (identity, false),
        None => {
            let (cert_pem, key) = issue_server(&ca, names, &wanted)?;
            write_atomic(
                &tls_dir.join(SERVER_KEY_FILE),
                key.serialize_pem().as_bytes(),
                KEY_FILE_MODE,
            )?;
            write_atomic(
                &tls_dir.join(SERVER_CERT_FILE),
                cert_pem.as_bytes(),
                CERT_FILE_MODE,
            )?;
            tracing::info!(names = ?names, "issued a new TLS server certificate");
            let chain = parse_cert_chain(&tls_dir.join(SERVER_CERT_FILE), cert_pem.as_bytes())?;
            let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
            (ServerIdentity::new(chain, key_der), true)
        }
    };

    Ok(SelfManagedTls {
        identity,
        ca_pem: ca.cert_pem,
        ca_path: tls_dir.join(CA_CERT_FILE),
        ca_generated,
        server_generated,
    })
}

/// The rustls configuration of the device port (see the module docs).
pub fn server_config(identity: ServerIdentity) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AcceptAnyClientCert::new(&provider));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    // A device registers once per boot over a fresh connection and never resumes; the two
    // TLS 1.3 tickets rustls sends by default only cost server CPU, cache churn and bytes.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client-certificate verifier for devices: it asks every client for a certificate (with an
/// empty CA hint list, so devices send whatever they have), does not require one, and accepts
/// any well-formed chain at the TLS layer — the registration engine validates it against
/// enrollments. It does verify the handshake signature (CertificateVerify) with rustls's own
/// helpers: that signature proves the client holds the certificate's private key, so a copied
/// certificate is useless.
#[derive(Debug)]
pub struct AcceptAnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyClientCert {
    /// Uses the provider's signature verification algorithms.
    pub fn new(provider: &CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AcceptAnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[HintName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if intermediates.len() > MAX_CLIENT_INTERMEDIATES {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ));
        }
        // Reject garbage early; issuer, validity and name are judged by the engine.
        webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------
// self-managed CA and server certificate

struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
    /// Unix seconds.
    not_after: i64,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_cert_chain(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::BadCertificate {
            path: path.to_owned(),
            reason: "no CERTIFICATE block".to_owned(),
        });
    }
    Ok(chain)
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `contents` to `path` through a temporary file and a rename, so readers never see a
/// half-written file.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    // The umask may only clear bits; make the mode exact anyway.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        // Persist the rename; not all file systems support syncing a directory.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Sets `not_before`/`not_after` to whole UTC days relative to `from`.
fn set_validity(
    params: &mut CertificateParams,
    from: jiff::Timestamp,
    before_days: i64,
    after_days: i64,
) -> Result<(), TlsError> {
    let ymd = |days: i64| -> Result<_, TlsError> {
        let date = from
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date()
            .checked_add(jiff::Span::new().days(days))
            .map_err(|_| rcgen::Error::Time)?;
        Ok(rcgen::date_time_ymd(
            i32::from(date.year()),
            date.month().unsigned_abs(),
            date.day().unsigned_abs(),
        ))
    };
    params.not_before = ymd(-before_days)?;
    params.not_after = ymd(after_days)?;
    Ok(())
}

fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and non-zero, as RFC 5280 requires.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn new_ca() -> Result<Ca, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "kdps");
    dn.push(DnType::CommonName, "kdps standalone CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, jiff::Timestamp::now(), 1, CA_VALIDITY_DAYS)?;
    let cert = params.self_signed(&key)?;
    let not_after = parse_x509(cert.der())
        .map(|c| c.validity().not_after.timestamp())
        .unwrap_or(0);
    Ok(Ca {
        cert_pem: cert.pem(),
        cert_der: cert.der().clone(),
        key,
        not_after,
    })
}

fn parse_x509<'a>(der: &'a CertificateDer<'_>) -> Option<X509Certificate<'a>> {
    X509Certificate::from_der(der.as_ref())
        .ok()
        .map(|(_, cert)| cert)
}

/// Whether `cert` is valid now and for [`RENEW_BEFORE_DAYS`] more days.
fn fresh(cert: &X509Certificate<'_>) -> bool {
    let now = now_unix();
    let v = cert.validity();
    v.not_before.timestamp() <= now && v.not_after.timestamp() > now + RENEW_BEFORE_DAYS * 86_400
}

fn key_matches(cert: &X509Certificate<'_>, key: &KeyPair) -> bool {
    cert.tbs_certificate.subject_pki.raw == key.subject_public_key_info().as_slice()
}

/// Makes sure an existing key file is private; returns false when that fails.
fn tighten_key_file(path: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    if meta.permissions().mode() & 0o077 == 0 {
        return true;
    }
    tracing::warn!(path = %path.display(), "private key file was readable by others; setting mode 0600");
    fs::set_permissions(path, fs::Permissions::from_mode(KEY_FILE_MODE)).is_ok()
}

/// The stored CA, if it is usable. Problems are logged, not returned: the caller replaces it.
fn load_ca(dir: &Path) -> Option<Ca> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if !cert_path.exists() && !key_path.exists() {
        return None;
    }
    let unusable = |why: &str| {
        tracing::warn!(path = %cert_path.display(), reason = why, "stored TLS CA is not usable; creating a new one (devices must trust the new ca.pem)");
        None
    };
    let (Ok(cert_pem), Ok(key_pem)) = (
        fs::read_to_string(&cert_path),
        fs::read_to_string(&key_path),
    ) else {
        return unusable("cannot read ca.pem or ca-key.pem");
    };
    let Ok(cert_der) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) else {
        return unusable("ca.pem holds no certificate");
    };
    let Ok(key) = KeyPair::from_pem(&key_pem) else {
        return unusable("ca-key.pem holds no usable key");
    };
    let Some(cert) = parse_x509(&cert_der) else {
        return unusable("ca.pem does not parse");
    };
    if !cert.is_ca() {
        return unusable("ca.pem is not a CA certificate");
    }
    if !key_matches(&cert, &key) {
        return unusable("ca-key.pem does not match ca.pem");
    }
    if !fresh(&cert) {
        return unusable("CA certificate expired or expires within 30 days");
    }
    if !tighten_key_file(&key_path) {
        return unusable("cannot restrict ca-key.pem permissions");
    }
    let not_after = cert.validity().not_after.timestamp();
    Some(Ca {
        cert_der: cert_der.clone(),
        cert_pem,
        key,
        not_after,
    })
}

fn covers(cert: &X509Certificate<'_>, wanted: &[SanName]) -> bool {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let have: Vec<SanName> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(SanName::Dns(d.to_ascii_lowercase())),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(|a| SanName::Ip(a.into())),
                16 => <[u8; 16]>::try_from(*b).ok().map(|a| SanName::Ip(a.into())),
                _ => None,
            },
            _ => None,
        })
        .collect();
    wanted.iter().all(|w| have.contains(w))
}

/// The stored server identity, if it is usable with `ca` for `wanted`.
fn load_server(dir: &Path, ca: &Ca, wanted: &[SanName]) -> Option<ServerIdentity> {
    let cert_path = dir.join(SERVER_CERT_FILE);
    let key_path = dir.join(SERVER_KEY_FILE);
    let replace = |why: &str| {
        tracing::info!(reason = why, "replacing the TLS server certificate");
        None
    };
    let (Ok(cert_pem), Ok(key_pem)) = (
        fs::read_to_string(&cert_path),
        fs::read_to_string(&key_path),
    ) else {
        return replace("no stored server certificate");
    };
    let Ok(chain) = parse_cert_chain(&cert_path, cert_pem.as_bytes()) else {
        return replace("server.pem holds no certificate");
    };
    let Ok(key) = KeyPair::from_pem(&key_pem) else {
        return replace("server-key.pem holds no usable key");
    };
    let leaf_der = chain.first()?;
    let Some(leaf) = parse_x509(leaf_der) else {
        return replace("server.pem does not parse");
    };
    let Some(ca_cert) = parse_x509(&ca.cert_der) else {
        return replace("CA does not parse");
    };
    if leaf.issuer() != ca_cert.subject()
        || leaf.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return replace("not issued by the current CA");
    }
    if !key_matches(&leaf, &key) {
        return replace("server-key.pem does not match server.pem");
    }
    if !fresh(&leaf) {
        return replace("expired or expires within 30 days");
    }
    if !covers(&leaf, wanted) {
        return replace("does not cover every requested name");
    }
    if !tighten_key_file(&key_path) {
        return replace("cannot restrict server-key.pem permissions");
    }
    Some(ServerIdentity::new(
        chain,
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    ))
}

fn issue_server(
    ca: &Ca,
    names: &[String],
    wanted: &[SanName],
) -> Result<(String, KeyPair), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "kdps");
    dn.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("localhost"),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = wanted
        .iter()
        .map(|n| match n {
            SanName::Dns(d) => Ok(SanType::DnsName(d.as_str().try_into()?)),
            SanName::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        })
        .collect::<Result<Vec<_>, rcgen::Error>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let now = jiff::Timestamp::now();
    // Never outlive the CA.
    let ca_days_left = (ca.not_after - now.as_second()) / 86_400;
    set_validity(
        &mut params,
        now,
        1,
        SERVER_VALIDITY_DAYS.min(ca_days_left.max(1)),
    )?;
    let issuer = Issuer::from_ca_cert_der(&ca.cert_der, &ca.key)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::process::Command;

    use rustls::{
        ClientConfig, RootCertStore, SupportedProtocolVersion, client::ResolvesClientCert,
        pki_types::ServerName, sign::CertifiedKey,
    };
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A CA and a leaf for `cn` it issued (client auth), both made with rcgen.
    fn device_chain(cn: &str) -> (CertificateDer<'static>, CertificateDer<'static>, KeyPair) {
        let ca = new_ca().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, jiff::Timestamp::now(), 1, 30).unwrap();
        let issuer = Issuer::from_ca_cert_der(&ca.cert_der, &ca.key).unwrap();
        let leaf = params.signed_by(&key, &issuer).unwrap();
        (leaf.der().clone(), ca.cert_der, key)
    }

    fn server_identity(names: &[&str]) -> (Ca, ServerIdentity) {
        let ca = new_ca().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let wanted: Vec<SanName> = names.iter().map(|n| parse_name(n).unwrap()).collect();
        let (pem, key) = issue_server(&ca, &names, &wanted).unwrap();
        let chain = parse_cert_chain(Path::new("server.pem"), pem.as_bytes()).unwrap();
        let identity = ServerIdentity::new(chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()));
        (ca, identity)
    }

    fn roots(ca: &CertificateDer<'static>) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        roots
    }

    enum ClientAuth {
        None,
        Cert(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
        Resolver(Arc<dyn ResolvesClientCert>),
    }

    fn client_config(
        ca: &CertificateDer<'static>,
        version: &'static SupportedProtocolVersion,
        auth: ClientAuth,
        alpn: &[&[u8]],
    ) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots(ca));
        let mut config = match auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Cert(chain, key) => builder.with_client_auth_cert(chain, key).unwrap(),
            ClientAuth::Resolver(r) => builder.with_client_cert_resolver(r),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    struct Handshake {
        /// The server's view: the client chain and ALPN, or the handshake error.
        server: Result<(Vec<CertificateDer<'static>>, Option<Vec<u8>>), std::io::Error>,
        client: Result<(), std::io::Error>,
    }

    /// Runs a handshake over an in-memory pipe. On success the server sends one byte, which
    /// the client must read: in TLS 1.3 the client finishes before the server has checked its
    /// certificate, so only that read shows whether the server accepted it.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        server_name: &str,
    ) -> Handshake {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let accept = async {
            let mut stream = TlsAcceptor::from(server).accept(server_io).await?;
            let (_, conn) = stream.get_ref();
            let chain = conn
                .peer_certificates()
                .map(|c| c.to_vec())
                .unwrap_or_default();
            let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
            stream.write_all(b"!").await?;
            stream.flush().await?;
            Ok::<_, std::io::Error>((chain, alpn, stream))
        };
        let connect = async {
            let mut stream = TlsConnector::from(client).connect(name, client_io).await?;
            let mut buf = [0u8; 1];
            stream.read_exact(&mut buf).await?;
            Ok(())
        };
        let (server, client) = tokio::join!(accept, connect);
        Handshake {
            server: server.map(|(chain, alpn, _stream)| (chain, alpn)),
            client,
        }
    }

    const VERSIONS: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];

    #[tokio::test]
    async fn client_certificate_from_unknown_ca_is_accepted_and_visible() {
        let (server_ca, identity) = server_identity(&["localhost"]);
        let server = server_config(identity).unwrap();
        for version in VERSIONS {
            let (leaf, device_ca, key) = device_chain("device-1");
            let client = client_config(
                &server_ca.cert_der,
                version,
                ClientAuth::Cert(
                    vec![leaf.clone(), device_ca.clone()],
                    PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                ),
                &[b"h2"],
            );
            let h = handshake(server.clone(), client, "localhost").await;
            h.client.unwrap();
            let (chain, alpn) = h.server.unwrap();
            assert_eq!(chain, vec![leaf, device_ca], "{version:?}");
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        }
    }

    #[tokio::test]
    async fn client_without_certificate_is_accepted() {
        let (server_ca, identity) = server_identity(&["localhost"]);
        let server = server_config(identity).unwrap();
        for version in VERSIONS {
            let client = client_config(
                &server_ca.cert_der,
                version,
                ClientAuth::None,
                &[b"http/1.1"],
            );
            let h = handshake(server.clone(), client, "localhost").await;
            h.client.unwrap();
            let (chain, alpn) = h.server.unwrap();
            assert!(chain.is_empty());
            assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        }
    }

    /// Presents someone else's certificate but signs CertificateVerify with another key.
    #[derive(Debug)]
    struct StolenCertificate(Arc<CertifiedKey>);

    impl ResolvesClientCert for StolenCertificate {
        fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }

        fn has_certs(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn copied_certificate_with_wrong_private_key_fails_the_handshake() {
        let (server_ca, identity) = server_identity(&["localhost"]);
        let server = server_config(identity).unwrap();
        for version in VERSIONS {
            let (victim_leaf, victim_ca, _victim_key) = device_chain("victim");
            let attacker_key = KeyPair::generate().unwrap();
            let signer = provider()
                .key_provider
                .load_private_key(PrivateKeyDer::Pkcs8(attacker_key.serialize_der().into()))
                .unwrap();
            let stolen = CertifiedKey::new(vec![victim_leaf, victim_ca], signer);
            assert!(
                stolen.keys_match().is_err(),
                "the test must use a mismatched key"
            );
            let client = client_config(
                &server_ca.cert_der,
                version,
                ClientAuth::Resolver(Arc::new(StolenCertificate(Arc::new(stolen)))),
                &[b"h2"],
            );
            let h = handshake(server.clone(), client, "localhost").await;
            let err = h
                .server
                .expect_err("server must reject the forged CertificateVerify");
            assert!(
                err.to_string().contains("ignature") || err.to_string().contains("ecrypt"),
                "{version:?}: {err}"
            );
            assert!(
                h.client.is_err(),
                "{version:?}: client must see the rejection"
            );
        }
    }

    #[tokio::test]
    async fn garbage_client_certificate_is_rejected() {
        let (server_ca, identity) = server_identity(&["localhost"]);
        let server = server_config(identity).unwrap();
        let key = KeyPair::generate().unwrap();
        let signer = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .unwrap();
        let junk = CertifiedKey::new(
            vec![CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])],
            signer,
        );
        let client = client_config(
            &server_ca.cert_der,
            &rustls::version::TLS13,
            ClientAuth::Resolver(Arc::new(StolenCertificate(Arc::new(junk)))),
            &[b"h2"],
        );
        let h = handshake(server, client, "localhost").await;
        assert!(h.server.is_err());
    }

    fn openssl(args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("the openssl CLI is required for these tests (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[tokio::test]
    async fn openssl_rsa_client_certificate_verifies_in_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("dev.pem");
        let key = dir.path().join("dev.key");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=device-rsa",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        let chain = vec![CertificateDer::from_pem_file(&cert).unwrap()];
        let (server_ca, identity) = server_identity(&["localhost"]);
        let server = server_config(identity).unwrap();
        for version in VERSIONS {
            let client = client_config(
                &server_ca.cert_der,
                version,
                ClientAuth::Cert(chain.clone(), PrivateKeyDer::from_pem_file(&key).unwrap()),
                &[b"h2"],
            );
            let h = handshake(server.clone(), client, "localhost").await;
            h.client.unwrap();
            assert_eq!(h.server.unwrap().0, chain, "{version:?}");
        }
    }

    #[tokio::test]
    async fn user_supplied_openssl_ec_identity_loads_and_serves() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        let (cert, key) = (dir.path().join("srv.pem"), dir.path().join("srv.key"));
        let csr = dir.path().join("srv.csr");
        let ext = dir.path().join("ext.cnf");
        fs::write(&ext, "subjectAltName=DNS:dps.example.test,IP:127.0.0.1\n").unwrap();
        let p = |p: &PathBuf| p.to_str().unwrap().to_owned();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test CA",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&ca_cert),
        ]);
        // SEC1 ("EC PRIVATE KEY") server key.
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &p(&key),
        ]);
        openssl(&[
            "req",
            "-new",
            "-key",
            &p(&key),
            "-subj",
            "/CN=dps.example.test",
            "-out",
            &p(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca_cert),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&cert),
        ]);
        let identity = ServerIdentity::from_pem_files(&cert, &key).unwrap();
        assert_eq!(identity.chain().len(), 1);
        assert!(!format!("{identity:?}").contains("BEGIN"));
        let server = server_config(identity).unwrap();
        let ca_der = CertificateDer::from_pem_file(&ca_cert).unwrap();
        let client = client_config(&ca_der, &rustls::version::TLS12, ClientAuth::None, &[b"h2"]);
        let h = handshake(server, client, "dps.example.test").await;
        h.client.unwrap();
        h.server.unwrap();

        // A key that does not belong to the certificate is refused.
        let other = dir.path().join("other.key");
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &p(&other),
        ]);
        let mismatched = ServerIdentity::from_pem_files(&cert, &other).unwrap();
        assert!(matches!(
            server_config(mismatched),
            Err(TlsError::Config(_))
        ));

        // Missing and malformed files give specific errors.
        assert!(matches!(
            ServerIdentity::from_pem_files(&dir.path().join("nope.pem"), &key),
            Err(TlsError::Read { .. })
        ));
        assert!(matches!(
            ServerIdentity::from_pem_files(&ext, &key),
            Err(TlsError::BadCertificate { .. })
        ));
        assert!(matches!(
            ServerIdentity::from_pem_files(&cert, &ext),
            Err(TlsError::BadKey { .. })
        ));
    }

    #[test]
    fn default_names_skip_unspecified_and_duplicates() {
        assert_eq!(
            default_server_names("0.0.0.0", &[]),
            vec!["localhost", "127.0.0.1", "::1"]
        );
        assert_eq!(
            default_server_names("[::]", &["LOCALHOST".into()]),
            vec!["localhost", "127.0.0.1", "::1"]
        );
        assert_eq!(
            default_server_names("10.1.2.3", &["dps.example.test".into()]),
            vec![
                "localhost",
                "127.0.0.1",
                "::1",
                "10.1.2.3",
                "dps.example.test"
            ]
        );
        assert_eq!(
            default_server_names("dps.local", &[]),
            vec!["localhost", "127.0.0.1", "::1", "dps.local"]
        );
    }

    #[test]
    fn invalid_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "bad name", "a..b", "*", "x.*.y", "ümlaut.example"] {
            assert!(
                matches!(
                    ensure_self_managed(dir.path(), &[bad.to_owned()]),
                    Err(TlsError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(ensure_self_managed(dir.path(), &["*.example.test".to_owned()]).is_ok());
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    async fn assert_serves(tls: SelfManagedTls, server_name: &str) {
        let ca = CertificateDer::from_pem_slice(tls.ca_pem.as_bytes()).unwrap();
        let server = server_config(tls.identity).unwrap();
        let client = client_config(&ca, &rustls::version::TLS13, ClientAuth::None, &[b"h2"]);
        let h = handshake(server, client, server_name).await;
        h.client.unwrap();
        h.server.unwrap();
    }

    #[tokio::test]
    async fn self_managed_tls_is_created_persisted_and_reused() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("tls");
        let wanted = default_server_names("127.0.0.1", &["dps.example.test".into()]);

        let first = ensure_self_managed(&dir, &wanted).unwrap();
        assert!(first.ca_generated && first.server_generated);
        assert_eq!(first.ca_path, dir.join("ca.pem"));
        assert_eq!(
            fs::read_to_string(dir.join("ca.pem")).unwrap(),
            first.ca_pem
        );
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(SERVER_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let ca_der = CertificateDer::from_pem_slice(first.ca_pem.as_bytes()).unwrap();
        assert!(parse_x509(&ca_der).unwrap().is_ca());
        for name in ["localhost", "127.0.0.1", "::1", "dps.example.test"] {
            let again = ensure_self_managed(&dir, &wanted).unwrap();
            assert_serves(again, name).await;
        }
        let server_pem = fs::read(dir.join(SERVER_CERT_FILE)).unwrap();
        // No temporary files are left behind.
        let mut files: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            vec!["ca-key.pem", "ca.pem", "server-key.pem", "server.pem"]
        );

        // Restart with the same names: everything reused.
        let second = ensure_self_managed(&dir, &wanted).unwrap();
        assert!(!second.ca_generated && !second.server_generated);
        assert_eq!(second.ca_pem, first.ca_pem);
        assert_eq!(fs::read(dir.join(SERVER_CERT_FILE)).unwrap(), server_pem);

        // A subset of the names is covered too.
        let subset = ensure_self_managed(&dir, &names(&["localhost"])).unwrap();
        assert!(!subset.server_generated);

        // A new name: new server certificate from the same CA.
        let mut more = wanted.clone();
        more.push("other.example.test".into());
        let third = ensure_self_managed(&dir, &more).unwrap();
        assert!(!third.ca_generated && third.server_generated);
        assert_eq!(third.ca_pem, first.ca_pem);
        assert_serves(third, "other.example.test").await;
    }

    #[tokio::test]
    async fn broken_or_foreign_server_certificates_are_replaced() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("tls");
        let wanted = names(&["localhost", "127.0.0.1"]);
        let first = ensure_self_managed(&dir, &wanted).unwrap();

        // Corrupt key.
        fs::write(dir.join(SERVER_KEY_FILE), "not a key").unwrap();
        let r = ensure_self_managed(&dir, &wanted).unwrap();
        assert!(r.server_generated && !r.ca_generated);
        assert_eq!(mode(&dir.join(SERVER_KEY_FILE)), 0o600);

        // Key of another certificate.
        fs::write(
            dir.join(SERVER_KEY_FILE),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        assert!(ensure_self_managed(&dir, &wanted).unwrap().server_generated);

        // Certificate (with its key) issued by another CA.
        let other_ca = new_ca().unwrap();
        let (pem, key) = issue_server(
            &other_ca,
            &wanted,
            &wanted
                .iter()
                .map(|n| parse_name(n).unwrap())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        fs::write(dir.join(SERVER_CERT_FILE), pem).unwrap();
        fs::write(dir.join(SERVER_KEY_FILE), key.serialize_pem()).unwrap();
        assert!(ensure_self_managed(&dir, &wanted).unwrap().server_generated);

        // Expired certificate from the right CA.
        let ca = load_ca(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(wanted.clone()).unwrap();
        set_validity(&mut params, jiff::Timestamp::now(), 400, -5).unwrap();
        let issuer = Issuer::from_ca_cert_der(&ca.cert_der, &ca.key).unwrap();
        let expired = params.signed_by(&key, &issuer).unwrap();
        fs::write(dir.join(SERVER_CERT_FILE), expired.pem()).unwrap();
        fs::write(dir.join(SERVER_KEY_FILE), key.serialize_pem()).unwrap();
        let r = ensure_self_managed(&dir, &wanted).unwrap();
        assert!(r.server_generated && !r.ca_generated);
        assert_eq!(r.ca_pem, first.ca_pem);
        assert_serves(r, "localhost").await;

        // A loosened key file mode is tightened on reuse.
        fs::set_permissions(dir.join(SERVER_KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let r = ensure_self_managed(&dir, &wanted).unwrap();
        assert!(!r.server_generated);
        assert_eq!(mode(&dir.join(SERVER_KEY_FILE)), 0o600);

        // Losing the CA key means a new CA and a new server certificate.
        fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
        let r = ensure_self_managed(&dir, &wanted).unwrap();
        assert!(r.ca_generated && r.server_generated);
        assert_ne!(r.ca_pem, first.ca_pem);
        assert_eq!(
            fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap(),
            r.ca_pem
        );
        assert_serves(r, "127.0.0.1").await;
    }
}
