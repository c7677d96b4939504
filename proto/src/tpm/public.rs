//! `TPMT_PUBLIC` / `TPM2B_PUBLIC` (TPM 2.0 Part 2 §12.2).
//!
//! [`Public`] keeps the public-area bytes exactly as received: its Name is hashed over those
//! bytes (never over a re-encoding), and parsing fails unless the parsed structure re-encodes
//! to exactly those bytes (dps-protocol §4.5).

use sha2::{Digest, Sha256, Sha384, Sha512};

use super::marshal::{Reader, put_tpm2b, put_u16, put_u32};
use super::{TpmWireError, alg, attr};

/// Largest digest (SHA-512) a `TPM2B_DIGEST` may hold.
const MAX_DIGEST: usize = 64;
/// Largest RSA modulus (`MAX_RSA_KEY_BYTES`, 4096 bits).
const MAX_RSA_BYTES: usize = 512;
/// Largest ECC coordinate (`MAX_ECC_KEY_BYTES`).
const MAX_ECC_BYTES: usize = 128;

/// `TPMT_SYM_DEF_OBJECT`: the symmetric algorithm of a storage key (or a SYMCIPHER object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymmetricDefinition {
    /// Algorithm id (`alg::AES`, … or `alg::NULL`).
    pub algorithm: u16,
    /// Key size in bits; 0 when the algorithm is NULL.
    pub key_bits: u16,
    /// Mode (`alg::CFB`, …); 0 when the algorithm is NULL.
    pub mode: u16,
}

impl SymmetricDefinition {
    /// No symmetric algorithm (signing keys).
    pub const NULL: Self = Self {
        algorithm: alg::NULL,
        key_bits: 0,
        mode: 0,
    };
    /// AES-128 in CFB mode (EK and SRK templates).
    pub const AES_128_CFB: Self = Self {
        algorithm: alg::AES,
        key_bits: 128,
        mode: alg::CFB,
    };

    fn parse(r: &mut Reader<'_>, what: &'static str) -> Result<Self, TpmWireError> {
        let algorithm = r.u16(what)?;
        match algorithm {
            alg::NULL => Ok(Self::NULL),
            // AES, SM4, CAMELLIA: all carry keyBits and mode.
            alg::AES | 0x0013 | 0x0026 => Ok(Self {
                algorithm,
                key_bits: r.u16(what)?,
                mode: r.u16(what)?,
            }),
            other => Err(TpmWireError::UnsupportedAlgorithm { what, alg: other }),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u16(out, self.algorithm);
        if self.algorithm != alg::NULL {
            put_u16(out, self.key_bits);
            put_u16(out, self.mode);
        }
    }
}

/// A scheme selector with its details: `TPMT_RSA_SCHEME`, `TPMT_ECC_SCHEME`,
/// `TPMT_KEYEDHASH_SCHEME` or `TPMT_KDF_SCHEME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// Scheme algorithm id (`alg::NULL` for none).
    pub scheme: u16,
    /// Hash algorithm of the scheme, when it has one.
    pub hash: Option<u16>,
    /// Second detail: the ECDAA `count` or the XOR `kdf`.
    pub extra: Option<u16>,
}

impl Scheme {
    /// No scheme.
    pub const NULL: Self = Self {
        scheme: alg::NULL,
        hash: None,
        extra: None,
    };
    /// HMAC with SHA-256 (the DPS identity key).
    pub const HMAC_SHA256: Self = Self {
        scheme: alg::HMAC,
        hash: Some(alg::SHA256),
        extra: None,
    };

    /// Parses a scheme; `shape` maps a scheme id to its number of `u16` details (0, 1 or 2),
    /// or `None` when the id is not valid in this context.
    fn parse(
        r: &mut Reader<'_>,
        what: &'static str,
        shape: fn(u16) -> Option<u8>,
    ) -> Result<Self, TpmWireError> {
        let scheme = r.u16(what)?;
        let details =
            shape(scheme).ok_or(TpmWireError::UnsupportedAlgorithm { what, alg: scheme })?;
        let hash = if details >= 1 {
            Some(r.u16(what)?)
        } else {
            None
        };
        let extra = if details >= 2 {
            Some(r.u16(what)?)
        } else {
            None
        };
        Ok(Self {
            scheme,
            hash,
            extra,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u16(out, self.scheme);
        for v in [self.hash, self.extra].into_iter().flatten() {
            put_u16(out, v);
        }
    }
}

fn rsa_scheme_shape(id: u16) -> Option<u8> {
    match id {
        alg::NULL | alg::RSAES => Some(0),
        alg::RSASSA | alg::RSAPSS | alg::OAEP => Some(1),
        _ => None,
    }
}

fn ecc_scheme_shape(id: u16) -> Option<u8> {
    match id {
        alg::NULL => Some(0),
        alg::ECDSA | alg::ECDH | alg::SM2 | alg::ECSCHNORR | alg::ECMQV => Some(1),
        alg::ECDAA => Some(2),
        _ => None,
    }
}

fn kdf_scheme_shape(id: u16) -> Option<u8> {
    match id {
        alg::NULL => Some(0),
        alg::MGF1 | alg::KDF1_SP800_56A | alg::KDF2 | alg::KDF1_SP800_108 => Some(1),
        _ => None,
    }
}

fn keyed_hash_scheme_shape(id: u16) -> Option<u8> {
    match id {
        alg::NULL => Some(0),
        alg::HMAC => Some(1),
        alg::XOR => Some(2),
        _ => None,
    }
}

/// Type-specific parameters and unique field of a public area.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicParameters {
    /// `TPMS_RSA_PARMS` + `TPM2B_PUBLIC_KEY_RSA`.
    Rsa {
        /// Symmetric algorithm for child objects (storage keys).
        symmetric: SymmetricDefinition,
        /// Signing / encryption scheme.
        scheme: Scheme,
        /// Key size in bits.
        key_bits: u16,
        /// Public exponent; 0 means 65537.
        exponent: u32,
        /// Modulus (big-endian); empty or zeros in a creation template.
        modulus: Vec<u8>,
    },
    /// `TPMS_ECC_PARMS` + `TPMS_ECC_POINT`.
    Ecc {
        /// Symmetric algorithm for child objects.
        symmetric: SymmetricDefinition,
        /// Signing / key-exchange scheme.
        scheme: Scheme,
        /// Curve id.
        curve: u16,
        /// KDF scheme.
        kdf: Scheme,
        /// X coordinate.
        x: Vec<u8>,
        /// Y coordinate.
        y: Vec<u8>,
    },
    /// `TPMS_KEYEDHASH_PARMS` + `TPM2B_DIGEST` (HMAC keys, sealed data).
    KeyedHash {
        /// HMAC or XOR scheme, or NULL.
        scheme: Scheme,
        /// `unique`: H(seedValue ‖ key) for a loaded object.
        unique: Vec<u8>,
    },
    /// `TPMS_SYMCIPHER_PARMS` + `TPM2B_DIGEST`.
    SymCipher {
        /// Cipher definition.
        symmetric: SymmetricDefinition,
        /// `unique` digest.
        unique: Vec<u8>,
    },
}

impl std::fmt::Debug for PublicParameters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Public data only, but keep Debug short: lengths instead of key bytes.
        match self {
            Self::Rsa {
                symmetric,
                scheme,
                key_bits,
                exponent,
                modulus,
            } => f
                .debug_struct("Rsa")
                .field("symmetric", symmetric)
                .field("scheme", scheme)
                .field("key_bits", key_bits)
                .field("exponent", exponent)
                .field("modulus_len", &modulus.len())
                .finish(),
            Self::Ecc {
                symmetric,
                scheme,
                curve,
                kdf,
                x,
                y,
            } => f
                .debug_struct("Ecc")
                .field("symmetric", symmetric)
                .field("scheme", scheme)
                .field("curve", curve)
                .field("kdf", kdf)
                .field("x_len", &x.len())
                .field("y_len", &y.len())
                .finish(),
            Self::KeyedHash { scheme, unique } => f
                .debug_struct("KeyedHash")
                .field("scheme", scheme)
                .field("unique_len", &unique.len())
                .finish(),
            Self::SymCipher { symmetric, unique } => f
                .debug_struct("SymCipher")
                .field("symmetric", symmetric)
                .field("unique_len", &unique.len())
                .finish(),
        }
    }
}

impl PublicParameters {
    /// The `TPMI_ALG_PUBLIC` type of these parameters.
    pub fn object_type(&self) -> u16 {
        match self {
            Self::Rsa { .. } => alg::RSA,
            Self::Ecc { .. } => alg::ECC,
            Self::KeyedHash { .. } => alg::KEYEDHASH,
            Self::SymCipher { .. } => alg::SYMCIPHER,
        }
    }

    fn parse(r: &mut Reader<'_>, object_type: u16) -> Result<Self, TpmWireError> {
        match object_type {
            alg::RSA => {
                let symmetric = SymmetricDefinition::parse(r, "RSA symmetric definition")?;
                let scheme = Scheme::parse(r, "RSA scheme", rsa_scheme_shape)?;
                let key_bits = r.u16("RSA keyBits")?;
                let exponent = r.u32("RSA exponent")?;
                let modulus = r.tpm2b_max("RSA modulus", MAX_RSA_BYTES)?.to_vec();
                Ok(Self::Rsa {
                    symmetric,
                    scheme,
                    key_bits,
                    exponent,
                    modulus,
                })
            }
            alg::ECC => {
                let symmetric = SymmetricDefinition::parse(r, "ECC symmetric definition")?;
                let scheme = Scheme::parse(r, "ECC scheme", ecc_scheme_shape)?;
                let curve = r.u16("ECC curve")?;
                let kdf = Scheme::parse(r, "ECC KDF scheme", kdf_scheme_shape)?;
                let x = r.tpm2b_max("ECC point x", MAX_ECC_BYTES)?.to_vec();
                let y = r.tpm2b_max("ECC point y", MAX_ECC_BYTES)?.to_vec();
                Ok(Self::Ecc {
                    symmetric,
                    scheme,
                    curve,
                    kdf,
                    x,
                    y,
                })
            }
            alg::KEYEDHASH => {
                let scheme = Scheme::parse(r, "keyed-hash scheme", keyed_hash_scheme_shape)?;
                let unique = r.tpm2b_max("keyed-hash unique", MAX_DIGEST)?.to_vec();
                Ok(Self::KeyedHash { scheme, unique })
            }
            alg::SYMCIPHER => {
                let symmetric = SymmetricDefinition::parse(r, "symcipher definition")?;
                let unique = r.tpm2b_max("symcipher unique", MAX_DIGEST)?.to_vec();
                Ok(Self::SymCipher { symmetric, unique })
            }
            other => Err(TpmWireError::UnsupportedObjectType(other)),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), TpmWireError> {
        match self {
            Self::Rsa {
                symmetric,
                scheme,
                key_bits,
                exponent,
                modulus,
            } => {
                symmetric.encode(out);
                scheme.encode(out);
                put_u16(out, *key_bits);
                put_u32(out, *exponent);
                put_tpm2b(out, modulus, "RSA modulus")
            }
            Self::Ecc {
                symmetric,
                scheme,
                curve,
                kdf,
                x,
                y,
            } => {
                symmetric.encode(out);
                scheme.encode(out);
                put_u16(out, *curve);
                kdf.encode(out);
                put_tpm2b(out, x, "ECC point x")?;
                put_tpm2b(out, y, "ECC point y")
            }
            Self::KeyedHash { scheme, unique } => {
                scheme.encode(out);
                put_tpm2b(out, unique, "keyed-hash unique")
            }
            Self::SymCipher { symmetric, unique } => {
                symmetric.encode(out);
                put_tpm2b(out, unique, "symcipher unique")
            }
        }
    }
}

/// A TPM object's public area (`TPMT_PUBLIC`), kept together with the bytes it was read from.
#[derive(Clone, PartialEq, Eq)]
pub struct Public {
    /// `TPMT_PUBLIC` bytes (without the `TPM2B` size) exactly as received.
    area: Vec<u8>,
    name_alg: u16,
    attributes: u32,
    auth_policy: Vec<u8>,
    parameters: PublicParameters,
}

impl std::fmt::Debug for Public {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Public")
            .field("name_alg", &format_args!("0x{:04x}", self.name_alg))
            .field("attributes", &format_args!("0x{:08x}", self.attributes))
            .field("auth_policy_len", &self.auth_policy.len())
            .field("parameters", &self.parameters)
            .finish()
    }
}

impl Public {
    /// Parses a marshalled `TPM2B_PUBLIC` (2-byte size ‖ `TPMT_PUBLIC`), as DPS devices send
    /// the EK and SRK. The size must cover exactly the rest of `bytes`, and the parsed area
    /// must re-encode to exactly the bytes received.
    pub fn from_tpm2b(bytes: &[u8]) -> Result<Public, TpmWireError> {
        let mut r = Reader::new(bytes);
        let area = r.tpm2b("TPM2B_PUBLIC")?;
        r.finish("TPM2B_PUBLIC")?;
        Self::from_public_area(area)
    }

    /// Parses a `TPMT_PUBLIC` (no size prefix) that must span all of `area`.
    pub fn from_public_area(area: &[u8]) -> Result<Public, TpmWireError> {
        if area.is_empty() {
            return Err(TpmWireError::EmptyPublic);
        }
        let mut r = Reader::new(area);
        let object_type = r.u16("public type")?;
        let name_alg = r.u16("public nameAlg")?;
        if !matches!(name_alg, alg::SHA256 | alg::SHA384 | alg::SHA512) {
            return Err(TpmWireError::UnsupportedNameAlg {
                what: "public area",
                alg: name_alg,
            });
        }
        let attributes = r.u32("public objectAttributes")?;
        let auth_policy = r.tpm2b_max("public authPolicy", MAX_DIGEST)?.to_vec();
        let parameters = PublicParameters::parse(&mut r, object_type)?;
        r.finish("TPMT_PUBLIC")?;
        let public = Public {
            area: area.to_vec(),
            name_alg,
            attributes,
            auth_policy,
            parameters,
        };
        if public.encode_area()? != area {
            return Err(TpmWireError::NotCanonical);
        }
        Ok(public)
    }

    /// Builds a public area from its fields (e.g. the DPS identity key's).
    pub fn new(
        name_alg: u16,
        attributes: u32,
        auth_policy: &[u8],
        parameters: PublicParameters,
    ) -> Result<Public, TpmWireError> {
        let mut public = Public {
            area: Vec::new(),
            name_alg,
            attributes,
            auth_policy: auth_policy.to_vec(),
            parameters,
        };
        public.area = public.encode_area()?;
        // Round-trip through the parser so a built Public obeys the same limits as a parsed one.
        Self::from_public_area(&public.area)
    }

    fn encode_area(&self) -> Result<Vec<u8>, TpmWireError> {
        let mut out = Vec::with_capacity(self.area.len().max(64));
        put_u16(&mut out, self.parameters.object_type());
        put_u16(&mut out, self.name_alg);
        put_u32(&mut out, self.attributes);
        put_tpm2b(&mut out, &self.auth_policy, "public authPolicy")?;
        self.parameters.encode(&mut out)?;
        Ok(out)
    }

    /// The `TPMT_PUBLIC` bytes as received (no size prefix).
    pub fn public_area(&self) -> &[u8] {
        &self.area
    }

    /// The marshalled `TPM2B_PUBLIC`: 2-byte size ‖ [`public_area`](Self::public_area).
    pub fn to_tpm2b(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.area.len() + 2);
        // The area came from a TPM2B or was built within u16 limits, so it fits.
        let len = u16::try_from(self.area.len()).unwrap_or(u16::MAX);
        put_u16(&mut out, len);
        out.extend_from_slice(&self.area);
        out
    }

    /// The object's Name: nameAlg ‖ H(public area as received). For the SHA-256 name
    /// algorithm of EKs, SRKs and the DPS identity key this is `0x000B ‖ SHA-256(area)`
    /// (equal to `tpm2_readpublic -n`).
    pub fn name(&self) -> Vec<u8> {
        let digest: Vec<u8> = match self.name_alg {
            alg::SHA384 => Sha384::digest(&self.area).to_vec(),
            alg::SHA512 => Sha512::digest(&self.area).to_vec(),
            // Parsing admits only SHA-256/384/512.
            _ => Sha256::digest(&self.area).to_vec(),
        };
        let mut name = Vec::with_capacity(digest.len() + 2);
        put_u16(&mut name, self.name_alg);
        name.extend_from_slice(&digest);
        name
    }

    /// The object type (`alg::RSA`, `alg::ECC`, `alg::KEYEDHASH`, `alg::SYMCIPHER`).
    pub fn object_type(&self) -> u16 {
        self.parameters.object_type()
    }

    /// The name algorithm.
    pub fn name_alg(&self) -> u16 {
        self.name_alg
    }

    /// `TPMA_OBJECT` bits (see [`attr`](super::attr)).
    pub fn attributes(&self) -> u32 {
        self.attributes
    }

    /// The authPolicy digest (empty when none).
    pub fn auth_policy(&self) -> &[u8] {
        &self.auth_policy
    }

    /// Type-specific parameters and unique field.
    pub fn parameters(&self) -> &PublicParameters {
        &self.parameters
    }

    /// RSA key size in bits; `None` if this is not an RSA key.
    pub fn rsa_key_bits(&self) -> Option<u16> {
        match &self.parameters {
            PublicParameters::Rsa { key_bits, .. } => Some(*key_bits),
            _ => None,
        }
    }

    /// RSA modulus; `None` if this is not an RSA key.
    pub fn rsa_modulus(&self) -> Option<&[u8]> {
        match &self.parameters {
            PublicParameters::Rsa { modulus, .. } => Some(modulus),
            _ => None,
        }
    }

    /// RSA public exponent with 0 read as the default 65537; `None` if not RSA.
    pub fn rsa_exponent(&self) -> Option<u32> {
        match &self.parameters {
            PublicParameters::Rsa { exponent: 0, .. } => Some(65_537),
            PublicParameters::Rsa { exponent, .. } => Some(*exponent),
            _ => None,
        }
    }

    /// The symmetric definition of a storage key (RSA, ECC) or SYMCIPHER object.
    pub fn symmetric(&self) -> Option<SymmetricDefinition> {
        match &self.parameters {
            PublicParameters::Rsa { symmetric, .. }
            | PublicParameters::Ecc { symmetric, .. }
            | PublicParameters::SymCipher { symmetric, .. } => Some(*symmetric),
            PublicParameters::KeyedHash { .. } => None,
        }
    }

    /// True for a restricted decryption key (an EK or a storage key such as the SRK).
    pub fn is_restricted_decrypt(&self) -> bool {
        let want = attr::RESTRICTED | attr::DECRYPT;
        self.attributes & want == want && self.attributes & attr::SIGN_ENCRYPT == 0
    }

    /// True when both areas hold the same public key: same type and key material (RSA
    /// modulus and exponent, ECC curve and point, keyed-hash/symcipher unique). Attributes,
    /// policy and name algorithm are not compared. Used to match a request EK to the enrolled one.
    pub fn same_key_as(&self, other: &Public) -> bool {
        match (&self.parameters, &other.parameters) {
            (
                PublicParameters::Rsa { modulus: a, .. },
                PublicParameters::Rsa { modulus: b, .. },
            ) => !a.is_empty() && a == b && self.rsa_exponent() == other.rsa_exponent(),
            (
                PublicParameters::Ecc {
                    curve: ca,
                    x: xa,
                    y: ya,
                    ..
                },
                PublicParameters::Ecc {
                    curve: cb,
                    x: xb,
                    y: yb,
                    ..
                },
            ) => ca == cb && !xa.is_empty() && xa == xb && ya == yb,
            (
                PublicParameters::KeyedHash { unique: a, .. },
                PublicParameters::KeyedHash { unique: b, .. },
            )
            | (
                PublicParameters::SymCipher { unique: a, .. },
                PublicParameters::SymCipher { unique: b, .. },
            ) => !a.is_empty() && a == b,
            _ => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tpm::EK_AUTH_POLICY_SHA256;

    /// The TCG default RSA-2048 EK template (unique = 256 zero bytes) as `tpm2_createek`
    /// would send it, hand-marshalled from TPM 2.0 Part 2.
    fn ek_template_bytes(modulus: &[u8]) -> Vec<u8> {
        let mut area = vec![0x00, 0x01, 0x00, 0x0b, 0x00, 0x03, 0x00, 0xb2, 0x00, 0x20];
        area.extend_from_slice(&EK_AUTH_POLICY_SHA256);
        area.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43]); // AES 128 CFB
        area.extend_from_slice(&[0x00, 0x10]); // scheme NULL
        area.extend_from_slice(&[0x08, 0x00]); // 2048 bits
        area.extend_from_slice(&[0, 0, 0, 0]); // exponent 0
        area.extend_from_slice(&u16::try_from(modulus.len()).unwrap().to_be_bytes());
        area.extend_from_slice(modulus);
        let mut out = u16::try_from(area.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(&area);
        out
    }

    #[test]
    fn parses_the_ek_template_and_re_encodes_it() {
        let bytes = ek_template_bytes(&[0u8; 256]);
        assert_eq!(bytes.len(), 0x013a + 2);
        // Real RSA-2048 EK blobs start "AToAAQAL" in base64 (dps-protocol §4.1).
        assert_eq!(&bytes[..6], &[0x01, 0x3a, 0x00, 0x01, 0x00, 0x0b]);
        let p = Public::from_tpm2b(&bytes).unwrap();
        assert_eq!(p.rsa_key_bits(), Some(2048));
        assert_eq!(p.rsa_exponent(), Some(65_537));
        assert!(p.is_restricted_decrypt());
        assert_eq!(p.attributes(), attr::EK);
        assert_eq!(p.auth_policy(), EK_AUTH_POLICY_SHA256);
        assert_eq!(p.symmetric(), Some(SymmetricDefinition::AES_128_CFB));
        assert_eq!(p.to_tpm2b(), bytes);
        assert_eq!(p.public_area(), &bytes[2..]);
        let name = p.name();
        assert_eq!(&name[..2], &[0x00, 0x0b]);
        assert_eq!(&name[2..], Sha256::digest(&bytes[2..]).as_slice());
        // Debug shows lengths, not key bytes.
        assert!(format!("{p:?}").contains("modulus_len: 256"));
    }

    #[test]
    fn rejects_size_mismatch_trailing_and_truncation() {
        let bytes = ek_template_bytes(&[1u8; 256]);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Public::from_tpm2b(&longer),
            Err(TpmWireError::TrailingBytes { .. })
        ));
        assert!(matches!(
            Public::from_tpm2b(&bytes[..bytes.len() - 1]),
            Err(TpmWireError::Truncated { .. })
        ));
        // Outer size says one byte less: the area is cut inside the modulus.
        let mut short = bytes.clone();
        short[1] -= 1;
        assert!(Public::from_tpm2b(&short[..short.len() - 1]).is_err());
        assert_eq!(Public::from_tpm2b(&[0, 0]), Err(TpmWireError::EmptyPublic));
        assert!(Public::from_tpm2b(&[]).is_err());
    }

    #[test]
    fn rejects_unknown_type_name_alg_and_scheme() {
        let bytes = ek_template_bytes(&[1u8; 256]);
        let mut t = bytes.clone();
        t[3] = 0x42;
        assert_eq!(
            Public::from_tpm2b(&t),
            Err(TpmWireError::UnsupportedObjectType(0x0042))
        );
        let mut t = bytes.clone();
        t[5] = 0x04; // SHA-1 name algorithm
        assert!(matches!(
            Public::from_tpm2b(&t),
            Err(TpmWireError::UnsupportedNameAlg { alg: 0x0004, .. })
        ));
        let mut t = bytes.clone();
        let scheme_at = 2 + 10 + 32 + 6;
        t[scheme_at + 1] = 0x99;
        assert!(matches!(
            Public::from_tpm2b(&t),
            Err(TpmWireError::UnsupportedAlgorithm { alg: 0x0099, .. })
        ));
    }

    #[test]
    fn builds_the_identity_key_public_of_48_bytes() {
        let p = Public::new(
            alg::SHA256,
            attr::ID_KEY,
            &[],
            PublicParameters::KeyedHash {
                scheme: Scheme::HMAC_SHA256,
                unique: vec![7u8; 32],
            },
        )
        .unwrap();
        assert_eq!(p.public_area().len(), 48);
        assert_eq!(
            &p.public_area()[..12],
            &[0, 8, 0, 0x0b, 0, 4, 4, 0x40, 0, 0, 0, 5]
        );
        assert_eq!(p.rsa_key_bits(), None);
        assert!(!p.is_restricted_decrypt());
        assert_eq!(Public::from_tpm2b(&p.to_tpm2b()).unwrap(), p);
    }

    #[test]
    fn same_key_compares_key_material_only() {
        let a = Public::from_tpm2b(&ek_template_bytes(&[1u8; 256])).unwrap();
        let b = Public::from_tpm2b(&ek_template_bytes(&[2u8; 256])).unwrap();
        let mut other_attrs = ek_template_bytes(&[1u8; 256]);
        other_attrs[9] = 0xb0;
        let c = Public::from_tpm2b(&other_attrs).unwrap();
        assert!(a.same_key_as(&a));
        assert!(!a.same_key_as(&b));
        assert!(a.same_key_as(&c));
        let empty = Public::from_tpm2b(&ek_template_bytes(&[])).unwrap();
        assert!(!empty.same_key_as(&empty));
    }

    #[test]
    fn parses_ecc_and_symcipher_areas() {
        let ecc = Public::new(
            alg::SHA256,
            attr::EK,
            &EK_AUTH_POLICY_SHA256,
            PublicParameters::Ecc {
                symmetric: SymmetricDefinition::AES_128_CFB,
                scheme: Scheme {
                    scheme: alg::ECDAA,
                    hash: Some(alg::SHA256),
                    extra: Some(1),
                },
                curve: 0x0003,
                kdf: Scheme::NULL,
                x: vec![0; 32],
                y: vec![0; 32],
            },
        )
        .unwrap();
        assert_eq!(ecc.object_type(), alg::ECC);
        assert_eq!(ecc.rsa_key_bits(), None);
        let sym = Public::new(
            alg::SHA384,
            attr::DECRYPT,
            &[],
            PublicParameters::SymCipher {
                symmetric: SymmetricDefinition::AES_128_CFB,
                unique: vec![1; 48],
            },
        )
        .unwrap();
        assert_eq!(sym.name().len(), 2 + 48);
    }
}
