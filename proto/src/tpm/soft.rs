//! A software stand-in for the device's TPM, for tests without swtpm.
//!
//! [`SoftTpm`] holds an EK and an SRK as plain RSA keys and performs what the TPM does with a
//! DPS activation blob (ActivateCredential, Import with its integrity checks, the Load binding
//! check) and TPM2_HMAC with the imported key. It is a test double: the real path is
//! `kdps-device` against a TPM, which the swtpm integration tests exercise.

use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use rand::{CryptoRng, RngCore};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::kdf::hmac_sha256;
use super::marshal::Reader;
use super::{
    ActivationBlob, EK_AUTH_POLICY_SHA256, IdentityKey, Public, PublicParameters, Scheme,
    SymmetricDefinition, TpmWireError, alg, attr, kdfa,
};

fn failed(step: &'static str) -> TpmWireError {
    TpmWireError::ActivationFailed(step)
}

fn aes_cfb_decrypt(key: &[u8], data: &mut [u8]) -> Result<(), TpmWireError> {
    let iv = [0u8; 16];
    let bad = |_| TpmWireError::InvalidKeyLength("AES-CFB");
    match key.len() {
        16 => cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(key, &iv)
            .map_err(bad)?
            .decrypt(data),
        24 => cfb_mode::Decryptor::<aes::Aes192>::new_from_slices(key, &iv)
            .map_err(bad)?
            .decrypt(data),
        32 => cfb_mode::Decryptor::<aes::Aes256>::new_from_slices(key, &iv)
            .map_err(bad)?
            .decrypt(data),
        _ => return Err(TpmWireError::InvalidKeyLength("AES-CFB")),
    }
    Ok(())
}

fn sym_bits(public: &Public) -> u32 {
    u32::from(public.symmetric().map_or(128, |s| s.key_bits))
}

/// Splits `TPM2B ‖ rest`.
fn split_tpm2b<'a>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), TpmWireError> {
    let mut r = Reader::new(bytes);
    let head = r.tpm2b(what)?;
    let rest = r.take(r.remaining(), what)?;
    Ok((head, rest))
}

/// Recovers the identity key from `blob` with the EK and SRK private keys, running every check
/// the TPM runs; the error names the failing step.
pub fn activate_in_software(
    blob: &[u8],
    ek: &RsaPrivateKey,
    ek_public: &Public,
    srk: &RsaPrivateKey,
    srk_public: &Public,
) -> Result<IdentityKey, TpmWireError> {
    let b = ActivationBlob::decode(blob)?;

    // ActivateCredential(activateHandle = SRK, keyHandle = EK).
    let seed = ek
        .decrypt(
            Oaep::new_with_label::<Sha256, _>("IDENTITY\0"),
            &b.encrypted_secret,
        )
        .map_err(|_| failed("ActivateCredential: secret decryption"))?;
    let (integrity, enc_identity) = split_tpm2b(&b.credential_blob, "credential blob")?;
    let srk_name = srk_public.name();
    let hk = kdfa(&seed, b"INTEGRITY", &[], &[], 256)?;
    let expect = hmac_sha256(&hk, &[enc_identity, &srk_name])?;
    if !bool::from(expect.ct_eq(integrity)) {
        return Err(failed("ActivateCredential: integrity"));
    }
    let sk = kdfa(&seed, b"STORAGE", &srk_name, &[], sym_bits(ek_public))?;
    let mut identity = enc_identity.to_vec();
    aes_cfb_decrypt(&sk, &mut identity)?;
    let (inner_key, rest) = split_tpm2b(&identity, "credential")?;
    if !rest.is_empty() || inner_key.len() != 16 {
        return Err(failed("ActivateCredential: credential size"));
    }

    // Import(parent = SRK, encryptionKey = inner key, AES-128-CFB).
    let dup_seed = srk
        .decrypt(
            Oaep::new_with_label::<Sha256, _>("DUPLICATE\0"),
            &b.sym_seed,
        )
        .map_err(|_| failed("Import: seed decryption"))?;
    let id_name = b.public.name();
    let (outer, dup_sensitive) = split_tpm2b(&b.duplicate, "duplicate")?;
    let hk = kdfa(&dup_seed, b"INTEGRITY", &[], &[], 256)?;
    let expect = hmac_sha256(&hk, &[dup_sensitive, &id_name])?;
    if !bool::from(expect.ct_eq(outer)) {
        return Err(failed("Import: outer integrity"));
    }
    let k = kdfa(&dup_seed, b"STORAGE", &id_name, &[], sym_bits(srk_public))?;
    let mut inner = dup_sensitive.to_vec();
    aes_cfb_decrypt(&k, &mut inner)?;
    aes_cfb_decrypt(inner_key, &mut inner)?;
    let (inner_integrity, sensitive2b) = split_tpm2b(&inner, "inner integrity")?;
    let expect = Sha256::new()
        .chain_update(sensitive2b)
        .chain_update(&id_name)
        .finalize();
    if !bool::from(expect.as_slice().ct_eq(inner_integrity)) {
        return Err(failed("Import: inner integrity"));
    }
    let mut r = Reader::new(sensitive2b);
    let sensitive = r.tpm2b("TPM2B_SENSITIVE")?;
    r.finish("TPM2B_SENSITIVE")?;
    let mut r = Reader::new(sensitive);
    if r.u16("sensitiveType")? != alg::KEYEDHASH {
        return Err(failed("Import: sensitive type"));
    }
    let auth = r.tpm2b("authValue")?;
    let seed_value = r.tpm2b("seedValue")?;
    let key = r.tpm2b("sensitive key")?;
    r.finish("TPMT_SENSITIVE")?;
    if !auth.is_empty() || seed_value.len() != 32 {
        return Err(failed("Import: sensitive sizes"));
    }

    // Load: the public area must be an HMAC key bound to this sensitive area.
    let unique = Sha256::new()
        .chain_update(seed_value)
        .chain_update(key)
        .finalize();
    match b.public.parameters() {
        PublicParameters::KeyedHash { scheme, unique: u }
            if *scheme == Scheme::HMAC_SHA256 && u.as_slice() == unique.as_slice() => {}
        _ => return Err(failed("Load: binding")),
    }
    if b.public.attributes() & (attr::FIXED_TPM | attr::FIXED_PARENT) != 0 {
        return Err(failed("Import: fixedTPM/fixedParent"));
    }
    IdentityKey::from_bytes(key)
}

/// A software TPM with an RSA-2048 EK and SRK (templates as in dps-protocol §4.3) and one
/// imported identity key. `Debug` shows no key material.
pub struct SoftTpm {
    ek: RsaPrivateKey,
    srk: RsaPrivateKey,
    ek_public: Public,
    srk_public: Public,
    identity: Option<IdentityKey>,
}

impl std::fmt::Debug for SoftTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftTpm")
            .field("ek", &self.ek_public)
            .field("srk", &self.srk_public)
            .field("identity", &self.identity)
            .finish()
    }
}

fn storage_public(
    key: &RsaPrivateKey,
    attributes: u32,
    policy: &[u8],
) -> Result<Public, TpmWireError> {
    // 0 encodes the default exponent 65537.
    let e = key.e().to_bytes_be();
    let exponent = match e.len() {
        1..=4 => e.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)),
        _ => {
            return Err(TpmWireError::InvalidRsaKey {
                what: "soft TPM key",
                reason: "exponent does not fit 32 bits".into(),
            });
        }
    };
    let exponent = if exponent == 65_537 { 0 } else { exponent };
    Public::new(
        alg::SHA256,
        attributes,
        policy,
        PublicParameters::Rsa {
            symmetric: SymmetricDefinition::AES_128_CFB,
            scheme: Scheme::NULL,
            key_bits: u16::try_from(key.size() * 8).map_err(|_| TpmWireError::InvalidRsaKey {
                what: "soft TPM key",
                reason: "too large".into(),
            })?,
            exponent,
            modulus: key.n().to_bytes_be(),
        },
    )
}

impl SoftTpm {
    /// Generates a fresh EK and SRK (RSA-2048; slow in unoptimised builds).
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Result<Self, TpmWireError> {
        let gen_key = |rng: &mut R, what| {
            RsaPrivateKey::new(rng, 2048).map_err(|e| TpmWireError::InvalidRsaKey {
                what,
                reason: e.to_string(),
            })
        };
        let ek = gen_key(rng, "EK")?;
        let srk = gen_key(rng, "SRK")?;
        Self::from_keys(ek, srk)
    }

    /// Uses existing RSA keys as EK and SRK.
    pub fn from_keys(ek: RsaPrivateKey, srk: RsaPrivateKey) -> Result<Self, TpmWireError> {
        let ek_public = storage_public(&ek, attr::EK, &EK_AUTH_POLICY_SHA256)?;
        let srk_public = storage_public(&srk, attr::SRK, &[])?;
        Ok(Self {
            ek,
            srk,
            ek_public,
            srk_public,
            identity: None,
        })
    }

    /// The EK public area.
    pub fn endorsement_key(&self) -> &Public {
        &self.ek_public
    }

    /// The SRK public area.
    pub fn storage_root_key(&self) -> &Public {
        &self.srk_public
    }

    /// Recovers the identity key from an activation blob without keeping it.
    pub fn activate(&self, blob: &[u8]) -> Result<IdentityKey, TpmWireError> {
        activate_in_software(blob, &self.ek, &self.ek_public, &self.srk, &self.srk_public)
    }

    /// Imports the identity key from an activation blob, replacing any previous one.
    pub fn import_activation(&mut self, blob: &[u8]) -> Result<(), TpmWireError> {
        self.identity = Some(self.activate(blob)?);
        Ok(())
    }

    /// HMAC-SHA-256 with the imported identity key.
    pub fn hmac(&self, data: &[u8]) -> Result<[u8; 32], TpmWireError> {
        let key = self.identity.as_ref().ok_or(TpmWireError::NoIdentityKey)?;
        hmac_sha256(key.as_bytes(), &[data])
    }
}
