//! X.509 device identity: the certificate chain and private key a device presents in TLS
//! (dps-protocol §3).
//!
//! The certificate file holds the device certificate first, optionally followed by the
//! intermediates up to (but not necessarily including) the enrolled CA. The key file holds one
//! PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key. The registration ID is the device
//! certificate's subject CN.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// Why an X.509 identity could not be loaded or used. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The file does not exist.
    #[error("{} does not exist", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{} is not valid PEM: {reason}", path.display())]
    InvalidPem {
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint.
        reason: String,
    },
    /// The certificate file contains no `CERTIFICATE` block.
    #[error("{} contains no PEM CERTIFICATE", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A `CERTIFICATE` block is not valid X.509.
    #[error("certificate {index} in {} is not valid X.509", path.display())]
    InvalidCertificate {
        /// The file.
        path: PathBuf,
        /// Zero-based position in the file (0 = device certificate).
        index: usize,
    },
    /// The key file contains no private key in a supported form.
    #[error("{} contains no private key (PKCS#8, PKCS#1 RSA or SEC1 EC PEM)", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The key file contains more than one private key.
    #[error("{} contains more than one private key", path.display())]
    MultiplePrivateKeys {
        /// The file.
        path: PathBuf,
    },
    /// The private key's algorithm is not supported by the TLS stack.
    #[error("the private key is not supported: {0}")]
    UnsupportedKey(String),
    /// The private key is not the one of the device certificate.
    #[error("the private key does not match the device certificate")]
    KeyMismatch,
    /// The device certificate's subject has no common name (the registration ID).
    #[error("the device certificate has no subject common name")]
    MissingCommonName,
    /// rustls refused the configuration.
    #[error("TLS client configuration failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// A device certificate chain with its private key. `Debug` never shows the key.
pub struct X509Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    registration_id: String,
}

impl fmt::Debug for X509Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Identity")
            .field("registration_id", &self.registration_id)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Clone for X509Identity {
    fn clone(&self) -> Self {
        X509Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            registration_id: self.registration_id.clone(),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => IdentityError::NotFound {
            path: path.to_owned(),
        },
        _ => IdentityError::Read {
            path: path.to_owned(),
            source,
        },
    })
}

fn invalid_pem(path: &Path, err: pem::Error) -> IdentityError {
    IdentityError::InvalidPem {
        path: path.to_owned(),
        reason: err.to_string(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl X509Identity {
    /// Loads the chain (device certificate first) from `cert` and the private key from `key`.
    ///
    /// Checks that every certificate parses, the device certificate has a CN, and the key belongs
    /// to the device certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, IdentityError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        Self::from_pem_with_names(&cert_pem, cert, &key_pem, key)
    }

    /// [`Self::from_pem_files`] on PEM text already in memory.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, IdentityError> {
        Self::from_pem_with_names(
            cert_pem,
            Path::new("<certificate PEM>"),
            key_pem,
            Path::new("<key PEM>"),
        )
    }

    fn from_pem_with_names(
        cert_pem: &[u8],
        cert_path: &Path,
        key_pem: &[u8],
        key_path: &Path,
    ) -> Result<Self, IdentityError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid_pem(cert_path, e))?;
        if chain.is_empty() {
            return Err(IdentityError::NoCertificate {
                path: cert_path.to_owned(),
            });
        }
        let mut registration_id = None;
        for (index, der) in chain.iter().enumerate() {
            let (_, cert) =
                X509Certificate::from_der(der).map_err(|_| IdentityError::InvalidCertificate {
                    path: cert_path.to_owned(),
                    index,
                })?;
            if index == 0 {
                registration_id = cert
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .filter(|cn| !cn.is_empty())
                    .map(str::to_owned);
            }
        }
        let registration_id = registration_id.ok_or(IdentityError::MissingCommonName)?;

        let mut keys = PrivateKeyDer::pem_slice_iter(key_pem);
        let key = match keys.next() {
            None => {
                return Err(IdentityError::NoPrivateKey {
                    path: key_path.to_owned(),
                });
            }
            Some(key) => key.map_err(|e| invalid_pem(key_path, e))?,
        };
        if keys.next().is_some() {
            return Err(IdentityError::MultiplePrivateKeys {
                path: key_path.to_owned(),
            });
        }

        let signing_key = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| IdentityError::UnsupportedKey(e.to_string()))?;
        match CertifiedKey::new(chain.clone(), signing_key).keys_match() {
            Ok(()) => {}
            // The provider cannot say for this key type; rustls itself accepts that too.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => return Err(IdentityError::KeyMismatch),
            Err(e) => return Err(IdentityError::Tls(e)),
        }

        Ok(X509Identity {
            chain,
            key,
            registration_id,
        })
    }

    /// The registration ID: the device certificate's subject common name.
    pub fn registration_id(&self) -> &str {
        &self.registration_id
    }

    /// The certificate chain, device certificate first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// A rustls client configuration that trusts `roots` for the server and presents this
    /// identity for client authentication (TLS 1.2 and 1.3, ring provider).
    pub fn rustls_client_config(
        &self,
        roots: RootCertStore,
    ) -> Result<ClientConfig, IdentityError> {
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::process::Command;

    use rustls::ServerConfig;
    use rustls::server::WebPkiClientVerifier;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl is needed by these tests");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA and a device certificate signed by it, made by the openssl CLI, with the device key
    /// written in the requested format.
    struct OpensslDevice {
        dir: tempfile::TempDir,
    }

    impl OpensslDevice {
        /// `key_kind`: "pkcs8-ec", "sec1", "pkcs1", "pkcs8-rsa".
        fn new(cn: &str, key_kind: &str) -> OpensslDevice {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            std::fs::write(
                d.join("ext.cnf"),
                "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n\
                 [ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign\n\
                 [leaf]\nbasicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\n\
                 extendedKeyUsage = clientAuth\n",
            )
            .unwrap();
            openssl(
                d,
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    "ca.key",
                ],
            );
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-config",
                    "ext.cnf",
                    "-extensions",
                    "ca",
                    "-key",
                    "ca.key",
                    "-subj",
                    "/CN=Device CA",
                    "-days",
                    "30",
                    "-out",
                    "ca.pem",
                ],
            );
            match key_kind {
                "sec1" => openssl(
                    d,
                    &[
                        "ecparam",
                        "-name",
                        "prime256v1",
                        "-genkey",
                        "-noout",
                        "-out",
                        "device.key",
                    ],
                ),
                "pkcs8-ec" => openssl(
                    d,
                    &[
                        "genpkey",
                        "-algorithm",
                        "EC",
                        "-pkeyopt",
                        "ec_paramgen_curve:P-256",
                        "-out",
                        "device.key",
                    ],
                ),
                "pkcs8-rsa" => openssl(
                    d,
                    &[
                        "genpkey",
                        "-algorithm",
                        "RSA",
                        "-pkeyopt",
                        "rsa_keygen_bits:2048",
                        "-out",
                        "device.key",
                    ],
                ),
                "pkcs1" => {
                    openssl(
                        d,
                        &[
                            "genpkey",
                            "-algorithm",
                            "RSA",
                            "-pkeyopt",
                            "rsa_keygen_bits:2048",
                            "-out",
                            "rsa8.key",
                        ],
                    );
                    openssl(
                        d,
                        &[
                            "rsa",
                            "-in",
                            "rsa8.key",
                            "-traditional",
                            "-out",
                            "device.key",
                        ],
                    );
                }
                other => panic!("unknown key kind {other}"),
            }
            openssl(
                d,
                &[
                    "req",
                    "-new",
                    "-config",
                    "ext.cnf",
                    "-key",
                    "device.key",
                    "-subj",
                    &format!("/O=kdps/CN={cn}"),
                    "-out",
                    "device.csr",
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    "device.csr",
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-set_serial",
                    "7",
                    "-days",
                    "30",
                    "-extfile",
                    "ext.cnf",
                    "-extensions",
                    "leaf",
                    "-out",
                    "device.pem",
                ],
            );
            let chain = [
                std::fs::read_to_string(d.join("device.pem")).unwrap(),
                std::fs::read_to_string(d.join("ca.pem")).unwrap(),
            ]
            .concat();
            std::fs::write(d.join("chain.pem"), chain).unwrap();
            OpensslDevice { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn read(&self, name: &str) -> String {
            std::fs::read_to_string(self.path(name)).unwrap()
        }
    }

    #[test]
    fn loads_every_key_format() {
        for (kind, marker) in [
            ("pkcs8-ec", "BEGIN PRIVATE KEY"),
            ("sec1", "BEGIN EC PRIVATE KEY"),
            ("pkcs1", "BEGIN RSA PRIVATE KEY"),
            ("pkcs8-rsa", "BEGIN PRIVATE KEY"),
        ] {
            let dev = OpensslDevice::new("Device-01", kind);
            assert!(dev.read("device.key").contains(marker), "{kind}");
            let id = X509Identity::from_pem_files(&dev.path("device.pem"), &dev.path("device.key"))
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(id.registration_id(), "Device-01");
            assert_eq!(id.chain().len(), 1);
            let debug = format!("{id:?}");
            assert!(
                debug.contains("<redacted>") && !debug.contains("PRIVATE"),
                "{debug}"
            );
        }
    }

    #[test]
    fn loads_leaf_with_chain() {
        let dev = OpensslDevice::new("dev-chain", "pkcs8-ec");
        let id =
            X509Identity::from_pem_files(&dev.path("chain.pem"), &dev.path("device.key")).unwrap();
        assert_eq!(id.chain().len(), 2);
        let leaf = CertificateDer::from_pem_file(dev.path("device.pem")).unwrap();
        assert_eq!(id.chain()[0], leaf);
        // A combined file holding certificates and the key works as both arguments.
        let combined = [dev.read("chain.pem"), dev.read("device.key")].concat();
        let both = dev.dir.path().join("both.pem");
        std::fs::write(&both, combined).unwrap();
        assert!(X509Identity::from_pem_files(&both, &both).is_ok());
    }

    #[test]
    fn specific_errors() {
        let dev = OpensslDevice::new("dev-err", "pkcs8-ec");
        let other = OpensslDevice::new("dev-other", "sec1");
        let missing = dev.path("nope.pem");

        let err = X509Identity::from_pem_files(&missing, &dev.path("device.key")).unwrap_err();
        assert!(
            matches!(err, IdentityError::NotFound { ref path } if path == &missing),
            "{err}"
        );
        let err = X509Identity::from_pem_files(&dev.path("device.pem"), &missing).unwrap_err();
        assert!(matches!(err, IdentityError::NotFound { .. }), "{err}");

        // Certificate file holding only a key; key file holding only certificates.
        let err = X509Identity::from_pem_files(&dev.path("device.key"), &dev.path("device.key"))
            .unwrap_err();
        assert!(matches!(err, IdentityError::NoCertificate { .. }), "{err}");
        let err = X509Identity::from_pem_files(&dev.path("device.pem"), &dev.path("device.pem"))
            .unwrap_err();
        assert!(matches!(err, IdentityError::NoPrivateKey { .. }), "{err}");

        let err = X509Identity::from_pem_files(&dev.path("device.pem"), &other.path("device.key"))
            .unwrap_err();
        assert!(matches!(err, IdentityError::KeyMismatch), "{err}");

        let two_keys = dev.dir.path().join("two.key");
        std::fs::write(
            &two_keys,
            [dev.read("device.key"), other.read("device.key")].concat(),
        )
        .unwrap();
        let err = X509Identity::from_pem_files(&dev.path("device.pem"), &two_keys).unwrap_err();
        assert!(
            matches!(err, IdentityError::MultiplePrivateKeys { .. }),
            "{err}"
        );

        let broken = "-----BEGIN CERTIFICATE-----\nMIIB\n";
        let err = X509Identity::from_pem(broken.as_bytes(), dev.read("device.key").as_bytes())
            .unwrap_err();
        assert!(matches!(err, IdentityError::InvalidPem { .. }), "{err}");
        let not_x509 = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = X509Identity::from_pem(not_x509.as_bytes(), dev.read("device.key").as_bytes())
            .unwrap_err();
        assert!(
            matches!(err, IdentityError::InvalidCertificate { index: 0, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("PRIVATE"));
    }

    #[test]
    fn missing_common_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["device.example".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "kdps");
        let cert = params.self_signed(&key).unwrap();
        let err = X509Identity::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
            .unwrap_err();
        assert!(matches!(err, IdentityError::MissingCommonName), "{err}");
    }

    /// The identity authenticates in a real (in-memory) TLS handshake against a server that
    /// requires a client certificate issued by the device CA.
    #[tokio::test]
    async fn client_config_authenticates() {
        for kind in ["pkcs8-ec", "pkcs1"] {
            let dev = OpensslDevice::new("tls-device", kind);
            let id = X509Identity::from_pem_files(&dev.path("chain.pem"), &dev.path("device.key"))
                .unwrap();

            // Server: rcgen certificate for "localhost", trusting the device CA for clients.
            let server_key = rcgen::KeyPair::generate().unwrap();
            let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
                .unwrap()
                .self_signed(&server_key)
                .unwrap();
            let mut client_roots = RootCertStore::empty();
            client_roots
                .add(CertificateDer::from_pem_file(dev.path("ca.pem")).unwrap())
                .unwrap();
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider())
                    .build()
                    .unwrap();
            let server_config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![server_cert.der().clone()],
                    PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
                )
                .unwrap();

            let mut roots = RootCertStore::empty();
            roots.add(server_cert.der().clone()).unwrap();
            let client_config = id.rustls_client_config(roots).unwrap();

            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
            let server = tokio::spawn(async move {
                let mut tls = acceptor.accept(server_io).await.unwrap();
                let peer: Vec<CertificateDer<'static>> = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .unwrap()
                    .iter()
                    .map(|c| c.clone().into_owned())
                    .collect();
                let mut buf = [0u8; 5];
                tls.read_exact(&mut buf).await.unwrap();
                tls.write_all(b"world").await.unwrap();
                tls.shutdown().await.unwrap();
                peer
            });
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, client_io).await.unwrap();
            tls.write_all(b"hello").await.unwrap();
            let mut reply = [0u8; 5];
            tls.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"world");
            let peer = server.await.unwrap();
            assert_eq!(peer, id.chain(), "{kind}: the server saw the device chain");
        }
    }
}
