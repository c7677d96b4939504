//! TPM 2.0 structures, KDFa and the DPS activation blob (dps-protocol §4).
//!
//! - [`Public`]: a parsed `TPM2B_PUBLIC` that keeps the bytes exactly as received, so its
//!   [`Name`](Public::name) is hashed over those bytes and never over a re-encoding.
//! - [`kdfa`]: the TPM key derivation function (SP 800-108 counter mode, HMAC-SHA-256).
//! - [`ActivationBlob`]: the 6-part `authenticationKey` blob DPS sends to a TPM device (§4.2).
//! - [`build_activation`] / [`new_challenge`]: the software construction of that blob (§4.4):
//!   an HMAC identity key duplicated to the device's SRK, its inner wrapper key sealed to the
//!   EK with MakeCredential.
//! - [`SoftTpm`]: a software stand-in for the device TPM, for tests that cannot run swtpm.
//!
//! Nothing here does I/O; the TPM-side counterpart lives in `kdps-device` (feature `tpm`).

mod activation;
mod blob;
mod kdf;
pub mod marshal;
mod public;
pub mod soft;

pub use activation::{
    Challenge, IdentityKey, build_activation, build_activation_with_data, new_challenge,
};
pub use blob::ActivationBlob;
pub use kdf::kdfa;
pub use public::{Public, PublicParameters, Scheme, SymmetricDefinition};
pub use soft::SoftTpm;

use sha2::{Digest, Sha256};

/// TPM algorithm identifiers (`TPM_ALG_ID`, TPM 2.0 Part 2 §6.3) used by kdps.
pub mod alg {
    /// RSA.
    pub const RSA: u16 = 0x0001;
    /// SHA-1.
    pub const SHA1: u16 = 0x0004;
    /// HMAC.
    pub const HMAC: u16 = 0x0005;
    /// AES.
    pub const AES: u16 = 0x0006;
    /// MGF1 (mask generation function).
    pub const MGF1: u16 = 0x0007;
    /// Keyed-hash object.
    pub const KEYEDHASH: u16 = 0x0008;
    /// XOR obfuscation.
    pub const XOR: u16 = 0x000A;
    /// SHA-256.
    pub const SHA256: u16 = 0x000B;
    /// SHA-384.
    pub const SHA384: u16 = 0x000C;
    /// SHA-512.
    pub const SHA512: u16 = 0x000D;
    /// The null algorithm.
    pub const NULL: u16 = 0x0010;
    /// RSASSA-PKCS1-v1_5 signatures.
    pub const RSASSA: u16 = 0x0014;
    /// RSAES-PKCS1-v1_5 encryption.
    pub const RSAES: u16 = 0x0015;
    /// RSASSA-PSS signatures.
    pub const RSAPSS: u16 = 0x0016;
    /// RSAES-OAEP encryption.
    pub const OAEP: u16 = 0x0017;
    /// ECDSA.
    pub const ECDSA: u16 = 0x0018;
    /// ECDH.
    pub const ECDH: u16 = 0x0019;
    /// ECDAA.
    pub const ECDAA: u16 = 0x001A;
    /// SM2.
    pub const SM2: u16 = 0x001B;
    /// EC-Schnorr.
    pub const ECSCHNORR: u16 = 0x001C;
    /// ECMQV.
    pub const ECMQV: u16 = 0x001D;
    /// KDF1 (SP 800-56A).
    pub const KDF1_SP800_56A: u16 = 0x0020;
    /// KDF2.
    pub const KDF2: u16 = 0x0021;
    /// KDF1 (SP 800-108).
    pub const KDF1_SP800_108: u16 = 0x0022;
    /// Elliptic-curve object.
    pub const ECC: u16 = 0x0023;
    /// Symmetric-cipher object.
    pub const SYMCIPHER: u16 = 0x0025;
    /// Cipher feedback mode.
    pub const CFB: u16 = 0x0043;
}

/// `TPMA_OBJECT` bits (TPM 2.0 Part 2 §8.3).
pub mod attr {
    /// fixedTPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// stClear.
    pub const ST_CLEAR: u32 = 1 << 2;
    /// fixedParent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// sensitiveDataOrigin.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// userWithAuth.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// adminWithPolicy.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// noDA.
    pub const NO_DA: u32 = 1 << 10;
    /// encryptedDuplication.
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    /// restricted.
    pub const RESTRICTED: u32 = 1 << 16;
    /// decrypt.
    pub const DECRYPT: u32 = 1 << 17;
    /// sign / encrypt.
    pub const SIGN_ENCRYPT: u32 = 1 << 18;

    /// Attributes of the TCG default EK template (and the Azure SDKs' EK).
    pub const EK: u32 =
        FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | ADMIN_WITH_POLICY | RESTRICTED | DECRYPT;
    /// Attributes of the SRK template used by the Azure C SDK and kdps-device.
    pub const SRK: u32 = FIXED_TPM
        | FIXED_PARENT
        | SENSITIVE_DATA_ORIGIN
        | USER_WITH_AUTH
        | NO_DA
        | RESTRICTED
        | DECRYPT;
    /// Attributes of the DPS identity (HMAC) key: sign | noDA | userWithAuth = `0x00040440`.
    pub const ID_KEY: u32 = SIGN_ENCRYPT | NO_DA | USER_WITH_AUTH;
}

/// Persistent handles used by the DPS device SDKs (dps-protocol §4.3).
pub mod handle {
    /// Endorsement key.
    pub const EK: u32 = 0x8101_0001;
    /// Storage root key.
    pub const SRK: u32 = 0x8100_0001;
    /// Imported DPS identity (HMAC) key.
    pub const ID_KEY: u32 = 0x8100_0100;
}

/// The authPolicy of the TCG default EK templates (PolicySecret(TPM_RH_ENDORSEMENT), SHA-256).
pub const EK_AUTH_POLICY_SHA256: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];

/// Errors from parsing or building TPM wire structures. Messages never contain key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TpmWireError {
    /// Fewer bytes than the structure needs.
    #[error("truncated {what}: needs {needed} more bytes, {available} available")]
    Truncated {
        /// Field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// Bytes left over after a complete structure.
    #[error("{count} unexpected trailing bytes after {what}")]
    TrailingBytes {
        /// Structure that ended early.
        what: &'static str,
        /// Number of extra bytes.
        count: usize,
    },
    /// A sized field is larger than the TPM allows.
    #[error("{what} is {len} bytes, at most {max} allowed")]
    FieldTooLarge {
        /// Field name.
        what: &'static str,
        /// Actual length.
        len: usize,
        /// Maximum length.
        max: usize,
    },
    /// A `TPM2B_PUBLIC` with size 0.
    #[error("empty public area")]
    EmptyPublic,
    /// Object type other than RSA, ECC, KEYEDHASH or SYMCIPHER.
    #[error("unsupported TPM object type 0x{0:04x}")]
    UnsupportedObjectType(u16),
    /// Name algorithm kdps does not support for this use.
    #[error("unsupported name algorithm 0x{alg:04x} for {what}")]
    UnsupportedNameAlg {
        /// Object the name algorithm belongs to.
        what: &'static str,
        /// The algorithm id.
        alg: u16,
    },
    /// Unknown or unsupported scheme / algorithm selector in a field.
    #[error("unsupported algorithm 0x{alg:04x} in {what}")]
    UnsupportedAlgorithm {
        /// Field name.
        what: &'static str,
        /// The algorithm id.
        alg: u16,
    },
    /// The parsed public area does not re-encode to the bytes received (dps-protocol §4.5).
    #[error("public area does not re-encode to the bytes received")]
    NotCanonical,
    /// An RSA key was required.
    #[error("{0} is not an RSA key")]
    NotRsa(&'static str),
    /// A restricted decryption (storage) key was required.
    #[error("{0} is not a restricted decryption key")]
    NotRestrictedDecrypt(&'static str),
    /// The key's symmetric definition is not AES-128/192/256-CFB.
    #[error("{what}: symmetric algorithm 0x{alg:04x}/{bits} bits/mode 0x{mode:04x} is not AES-CFB")]
    UnsupportedSymmetric {
        /// Key the definition belongs to.
        what: &'static str,
        /// Algorithm id.
        alg: u16,
        /// Key bits.
        bits: u16,
        /// Mode id.
        mode: u16,
    },
    /// The RSA public key in a public area is unusable.
    #[error("{what}: invalid RSA public key: {reason}")]
    InvalidRsaKey {
        /// Key name.
        what: &'static str,
        /// Why (from the RSA library; contains no secret).
        reason: String,
    },
    /// RSA-OAEP encryption failed.
    #[error("RSA-OAEP encryption to the {what} failed: {reason}")]
    Encryption {
        /// Key name.
        what: &'static str,
        /// Why (from the RSA library; contains no secret).
        reason: String,
    },
    /// The HMAC identity key length is outside 1..=64 bytes.
    #[error("HMAC identity key must be 1 to 64 bytes, got {0}")]
    InvalidHmacKeyLength(usize),
    /// A key of the wrong size was passed to a cipher (internal invariant).
    #[error("invalid key length for {0}")]
    InvalidKeyLength(&'static str),
    /// [`SoftTpm`] could not import a blob; names the TPM step that would fail.
    #[error("software TPM activation failed at {0}")]
    ActivationFailed(&'static str),
    /// [`SoftTpm::hmac`] before any key was imported.
    #[error("no identity key has been imported")]
    NoIdentityKey,
}

/// The Name of an object with a SHA-256 name algorithm: `0x000B ‖ SHA-256(public area)`.
///
/// `public_area` is the `TPMT_PUBLIC` bytes *without* the 2-byte `TPM2B` size, as received.
pub fn name_sha256(public_area: &[u8]) -> Vec<u8> {
    let mut name = Vec::with_capacity(34);
    name.extend_from_slice(&alg::SHA256.to_be_bytes());
    name.extend_from_slice(&Sha256::digest(public_area));
    name
}

/// The DPS registration id of a TPM device: lower-case RFC 4648 base32 (no padding) of
/// SHA-256 over the EK's marshalled `TPM2B_PUBLIC` (including its 2-byte size) (§4.1).
pub fn registration_id_from_ek(ek_tpm2b: &[u8]) -> String {
    data_encoding::BASE32_NOPAD
        .encode(&Sha256::digest(ek_tpm2b))
        .to_ascii_lowercase()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn attribute_constants_match_the_protocol() {
        assert_eq!(attr::ID_KEY, 0x0004_0440);
        assert_eq!(attr::EK, 0x0003_00b2);
        assert_eq!(attr::SRK, 0x0003_0472);
    }

    #[test]
    fn registration_id_is_lower_case_unpadded_base32_of_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad;
        // RFC 4648 base32 of it computed with Python's base64.b32encode.
        let id = registration_id_from_ek(b"abc");
        assert_eq!(id, "xj4bnp4pahh6uqkbidpf3lrceoyagyndsylxvhfucd7wd4qacwwq");
        assert_eq!(id.len(), 52);
        assert!(!id.contains('='));
    }

    #[test]
    fn name_is_alg_id_then_digest() {
        let n = name_sha256(b"abc");
        assert_eq!(&n[..2], &[0x00, 0x0b]);
        assert_eq!(n.len(), 34);
    }
}
