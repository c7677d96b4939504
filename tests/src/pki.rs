//! X.509 test hierarchies made with rcgen at test time: CAs (root, intermediate) and device
//! certificates whose subject CN is the registration ID. (The openssl-CLI hierarchy comes from
//! `examples/x509/make-certs.sh`.)

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate authority that can sign intermediates and device certificates.
pub struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the CAs above this one, nearest first (empty for a root).
    parents: Vec<String>,
}

/// A device certificate and its key.
pub struct Leaf {
    /// The device certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
    /// The intermediates between the device certificate and the root, nearest first (PEM).
    pub intermediates: Vec<String>,
}

fn ca_params(cn: &str, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

impl Ca {
    /// A self-signed root CA.
    pub fn root(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let params = ca_params(cn, None);
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            parents: Vec::new(),
        }
    }

    /// An intermediate CA signed by this CA.
    pub fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().expect("intermediate key");
        let params = ca_params(cn, Some(0));
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("intermediate certificate");
        let mut parents = vec![self.pem.clone()];
        parents.extend(self.parents.iter().cloned());
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            parents,
        }
    }

    /// This CA's certificate (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A device certificate with subject CN `cn`, for TLS client authentication.
    pub fn leaf(&self, cn: &str) -> Leaf {
        let key = KeyPair::generate().expect("device key");
        let cert = leaf_params(cn)
            .signed_by(&key, &self.issuer)
            .expect("device certificate");
        // The device presents every CA below the root; a root is the enrollment's anchor.
        let mut intermediates = Vec::new();
        if !self.parents.is_empty() {
            intermediates.push(self.pem.clone());
            intermediates.extend(self.parents.iter().take(self.parents.len() - 1).cloned());
        }
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            intermediates,
        }
    }
}

impl Leaf {
    /// A self-signed device certificate (for individual enrollments).
    pub fn self_signed(cn: &str) -> Leaf {
        let key = KeyPair::generate().expect("device key");
        let cert = leaf_params(cn).self_signed(&key).expect("self-signed");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            intermediates: Vec::new(),
        }
    }

    /// Writes `NAME.chain.pem` (device certificate followed by the intermediates),
    /// `NAME.cert.pem` (device certificate only) and `NAME.key.pem` (mode 0600) into `dir`;
    /// returns (chain, cert, key) paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let chain = dir.join(format!("{name}.chain.pem"));
        let cert = dir.join(format!("{name}.cert.pem"));
        let key = dir.join(format!("{name}.key.pem"));
        let mut chain_pem = self.cert_pem.clone();
        for i in &self.intermediates {
            chain_pem.push_str(i);
        }
        std::fs::write(&chain, chain_pem).expect("write chain");
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        (chain, cert, key)
    }
}

/// Indents every line of `pem` by `spaces` (for a YAML block scalar).
pub fn indent(pem: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    pem.lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect::<String>()
}
