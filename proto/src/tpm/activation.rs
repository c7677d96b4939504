//! Software construction of the DPS TPM challenge (dps-protocol §4.4, constraints in §4.5).
//!
//! The service never talks to a TPM. It creates an HMAC identity key K, wraps it so only the
//! device's SRK can import it (a TPM "duplication" blob), and seals the inner wrapper key W
//! with MakeCredential to the EK, bound to the SRK's Name. Only the TPM that holds both the
//! EK and the SRK can recover W and import K; it then proves possession by HMAC-signing a
//! SAS token with K.

use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use rand::{CryptoRng, RngCore};
use rsa::{BigUint, Oaep, RsaPublicKey};
use sha2::{Digest, Sha256};

use super::kdf::hmac_sha256;
use super::marshal::{put_tpm2b, put_u16, tpm2b};
use super::{ActivationBlob, Public, PublicParameters, Scheme, TpmWireError, alg, attr, kdfa};

/// Length of the identity key kdps generates.
const IDENTITY_KEY_LEN: usize = 32;
/// seedValue of the identity key: must equal the SHA-256 digest size (§4.5).
const SEED_VALUE_LEN: usize = 32;
/// Inner wrapper key: AES-128, which the Azure C SDK hard-codes for Import (§4.5).
const INNER_WRAPPER_LEN: usize = 16;
/// Duplication and credential seeds: the nameAlg digest size (at most 32 for SHA-256).
const SEED_LEN: usize = 32;

/// An HMAC identity key (the key a TPM device signs its SAS tokens with). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityKey(Vec<u8>);

impl IdentityKey {
    /// A fresh random 32-byte key.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        let mut key = vec![0u8; IDENTITY_KEY_LEN];
        rng.fill_bytes(&mut key);
        Self(key)
    }

    /// Wraps existing key bytes (1 to 64 bytes, the TPM's limit for a keyed-hash key).
    pub fn from_bytes(key: &[u8]) -> Result<Self, TpmWireError> {
        if key.is_empty() || key.len() > 64 {
            return Err(TpmWireError::InvalidHmacKeyLength(key.len()));
        }
        Ok(Self(key.to_vec()))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// HMAC-SHA-256 of `data` with this key: what `TPM2_HMAC` returns once the key is imported.
    pub fn hmac_sha256(&self, data: &[u8]) -> [u8; 32] {
        match hmac_sha256(&self.0, &[data]) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA-256 accepts keys of every length"),
        }
    }
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityKey(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for IdentityKey {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// A TPM challenge: the activation blob for the device and the identity key it carries.
#[derive(Clone)]
pub struct Challenge {
    /// The marshalled activation blob (`authenticationKey`, before base64).
    pub blob: Vec<u8>,
    /// The identity key inside the blob; the device's SAS tokens are HMACs with this key.
    pub key: IdentityKey,
}

impl std::fmt::Debug for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenge")
            .field("blob_len", &self.blob.len())
            .field("key", &self.key)
            .finish()
    }
}

/// An RSA storage key (EK or SRK) checked for use as a duplication / credential target.
struct Target {
    what: &'static str,
    rsa: RsaPublicKey,
    /// AES key size (bytes) of the key's symmetric definition.
    sym_bytes: usize,
}

impl Target {
    fn new(public: &Public, what: &'static str) -> Result<Self, TpmWireError> {
        let (Some(key_bits), Some(modulus), Some(exponent)) = (
            public.rsa_key_bits(),
            public.rsa_modulus(),
            public.rsa_exponent(),
        ) else {
            return Err(TpmWireError::NotRsa(what));
        };
        if !public.is_restricted_decrypt() {
            return Err(TpmWireError::NotRestrictedDecrypt(what));
        }
        if public.name_alg() != alg::SHA256 {
            return Err(TpmWireError::UnsupportedNameAlg {
                what,
                alg: public.name_alg(),
            });
        }
        let sym = public
            .symmetric()
            .unwrap_or(super::SymmetricDefinition::NULL);
        let sym_bytes = match (sym.algorithm, sym.mode, sym.key_bits) {
            (alg::AES, alg::CFB, bits @ (128 | 192 | 256)) => usize::from(bits / 8),
            _ => {
                return Err(TpmWireError::UnsupportedSymmetric {
                    what,
                    alg: sym.algorithm,
                    bits: sym.key_bits,
                    mode: sym.mode,
                });
            }
        };
        if modulus.len() * 8 != usize::from(key_bits) {
            return Err(TpmWireError::InvalidRsaKey {
                what,
                reason: format!(
                    "modulus is {} bits but keyBits is {key_bits}",
                    modulus.len() * 8
                ),
            });
        }
        let rsa = RsaPublicKey::new(BigUint::from_bytes_be(modulus), BigUint::from(exponent))
            .map_err(|e| TpmWireError::InvalidRsaKey {
                what,
                reason: e.to_string(),
            })?;
        Ok(Self {
            what,
            rsa,
            sym_bytes,
        })
    }

    /// RSA-OAEP(SHA-256, MGF1-SHA-256) of `seed` with `label` (which includes its NUL).
    fn encrypt_seed<R: CryptoRng + RngCore>(
        &self,
        rng: &mut R,
        label: &str,
        seed: &[u8],
    ) -> Result<Vec<u8>, TpmWireError> {
        self.rsa
            .encrypt(rng, Oaep::new_with_label::<Sha256, _>(label), seed)
            .map_err(|e| TpmWireError::Encryption {
                what: self.what,
                reason: e.to_string(),
            })
    }

    fn sym_bits(&self) -> u32 {
        // At most 32 bytes (see `new`).
        u32::try_from(self.sym_bytes * 8).unwrap_or(256)
    }
}

/// AES-CFB-128 (full-block feedback) with a zero IV, in place; the key size picks AES-128/192/256.
pub(crate) fn aes_cfb_encrypt(key: &[u8], data: &mut [u8]) -> Result<(), TpmWireError> {
    let iv = [0u8; 16];
    let bad = |_| TpmWireError::InvalidKeyLength("AES-CFB");
    match key.len() {
        16 => cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(key, &iv)
            .map_err(bad)?
            .encrypt(data),
        24 => cfb_mode::Encryptor::<aes::Aes192>::new_from_slices(key, &iv)
            .map_err(bad)?
            .encrypt(data),
        32 => cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(key, &iv)
            .map_err(bad)?
            .encrypt(data),
        _ => return Err(TpmWireError::InvalidKeyLength("AES-CFB")),
    }
    Ok(())
}

/// Generates a fresh identity key and the activation blob that delivers it to the TPM
/// holding `ek` and `srk` (both as received from the device).
pub fn new_challenge<R: CryptoRng + RngCore>(
    ek: &Public,
    srk: &Public,
    rng: &mut R,
) -> Result<Challenge, TpmWireError> {
    let key = IdentityKey::generate(rng);
    let blob = build_activation(ek, srk, key.as_bytes(), rng)?;
    Ok(Challenge { blob, key })
}

/// Builds the activation blob that delivers `hmac_key` to the TPM holding `ek` and `srk`,
/// with an empty item 6.
pub fn build_activation<R: CryptoRng + RngCore>(
    ek: &Public,
    srk: &Public,
    hmac_key: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, TpmWireError> {
    build_activation_with_data(ek, srk, hmac_key, &[], rng)
}

/// Like [`build_activation`], with `data` AES-CFB-encrypted under the inner wrapper key as
/// item 6 (the DPS sample puts a URI there; devices do not need it).
pub fn build_activation_with_data<R: CryptoRng + RngCore>(
    ek: &Public,
    srk: &Public,
    hmac_key: &[u8],
    data: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, TpmWireError> {
    let ek_target = Target::new(ek, "EK")?;
    let srk_target = Target::new(srk, "SRK")?;
    if hmac_key.is_empty() || hmac_key.len() > 64 {
        return Err(TpmWireError::InvalidHmacKeyLength(hmac_key.len()));
    }

    let mut seed_value = [0u8; SEED_VALUE_LEN];
    let mut inner_key = [0u8; INNER_WRAPPER_LEN];
    let mut dup_seed = [0u8; SEED_LEN];
    let mut cred_seed = [0u8; SEED_LEN];
    rng.fill_bytes(&mut seed_value);
    rng.fill_bytes(&mut inner_key);
    rng.fill_bytes(&mut dup_seed);
    rng.fill_bytes(&mut cred_seed);

    let result = assemble(
        &ek_target,
        &srk_target,
        srk,
        hmac_key,
        data,
        &Secrets {
            seed_value: &seed_value,
            inner_key: &inner_key,
            dup_seed: &dup_seed,
            cred_seed: &cred_seed,
        },
        rng,
    );
    for secret in [
        &mut seed_value[..],
        &mut inner_key,
        &mut dup_seed,
        &mut cred_seed,
    ] {
        secret.fill(0);
        std::hint::black_box(secret);
    }
    result
}

struct Secrets<'a> {
    seed_value: &'a [u8],
    inner_key: &'a [u8],
    dup_seed: &'a [u8],
    cred_seed: &'a [u8],
}

fn assemble<R: CryptoRng + RngCore>(
    ek: &Target,
    srk: &Target,
    srk_public: &Public,
    hmac_key: &[u8],
    data: &[u8],
    s: &Secrets<'_>,
    rng: &mut R,
) -> Result<Vec<u8>, TpmWireError> {
    // 1. Identity key public area; unique = SHA-256(seedValue ‖ key) (§4.5: not key ‖ seed).
    let unique = Sha256::new()
        .chain_update(s.seed_value)
        .chain_update(hmac_key)
        .finalize()
        .to_vec();
    let id_public = Public::new(
        alg::SHA256,
        attr::ID_KEY,
        &[],
        PublicParameters::KeyedHash {
            scheme: Scheme::HMAC_SHA256,
            unique,
        },
    )?;
    let id_name = id_public.name();

    // 2. Inner wrapper: TPM2B(innerIntegrity) ‖ TPM2B_SENSITIVE, AES-128-CFB under W.
    let mut sensitive = Vec::with_capacity(8 + s.seed_value.len() + hmac_key.len());
    put_u16(&mut sensitive, alg::KEYEDHASH);
    put_tpm2b(&mut sensitive, &[], "authValue")?;
    put_tpm2b(&mut sensitive, s.seed_value, "seedValue")?;
    put_tpm2b(&mut sensitive, hmac_key, "sensitive key")?;
    let sensitive = tpm2b(&sensitive, "TPM2B_SENSITIVE")?;
    // innerIntegrity covers the TPM2B_SENSITIVE *with* its size (§4.5).
    let inner_integrity = Sha256::new()
        .chain_update(&sensitive)
        .chain_update(&id_name)
        .finalize();
    let mut dup_sensitive = tpm2b(&inner_integrity, "innerIntegrity")?;
    dup_sensitive.extend_from_slice(&sensitive);
    aes_cfb_encrypt(s.inner_key, &mut dup_sensitive)?;

    // 3. Outer wrapper to the SRK.
    let sym_seed = srk.encrypt_seed(rng, "DUPLICATE\0", s.dup_seed)?;
    let storage_key = kdfa(s.dup_seed, b"STORAGE", &id_name, &[], srk.sym_bits())?;
    aes_cfb_encrypt(&storage_key, &mut dup_sensitive)?;
    let hmac_key_outer = kdfa(s.dup_seed, b"INTEGRITY", &[], &[], 256)?;
    let outer_hmac = hmac_sha256(&hmac_key_outer, &[&dup_sensitive, &id_name])?;
    let mut duplicate = tpm2b(&outer_hmac, "outerHMAC")?;
    duplicate.extend_from_slice(&dup_sensitive);

    // 4. MakeCredential to the EK for W, bound to Name(SRK) (the activate handle).
    let srk_name = srk_public.name();
    let encrypted_secret = ek.encrypt_seed(rng, "IDENTITY\0", s.cred_seed)?;
    let cred_key = kdfa(s.cred_seed, b"STORAGE", &srk_name, &[], ek.sym_bits())?;
    let mut enc_identity = tpm2b(s.inner_key, "credential")?;
    aes_cfb_encrypt(&cred_key, &mut enc_identity)?;
    let hmac_key_cred = kdfa(s.cred_seed, b"INTEGRITY", &[], &[], 256)?;
    let integrity = hmac_sha256(&hmac_key_cred, &[&enc_identity, &srk_name])?;
    let mut credential_blob = tpm2b(&integrity, "integrityHMAC")?;
    credential_blob.extend_from_slice(&enc_identity);

    // 5. Item 6: data under W, zero IV.
    let mut encrypted_data = data.to_vec();
    aes_cfb_encrypt(s.inner_key, &mut encrypted_data)?;

    ActivationBlob {
        credential_blob,
        encrypted_secret,
        duplicate,
        sym_seed,
        public: id_public,
        encrypted_data,
    }
    .encode()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The software TPM model ([`SoftTpm`](crate::tpm::SoftTpm)) checks the blob here; the
    //! real check is the swtpm integration test in kdps-device.
    use super::*;
    use rsa::RsaPrivateKey;
    use std::sync::OnceLock;

    use crate::tpm::{EK_AUTH_POLICY_SHA256, SoftTpm, SymmetricDefinition};

    fn keys() -> &'static (RsaPrivateKey, RsaPrivateKey) {
        static KEYS: OnceLock<(RsaPrivateKey, RsaPrivateKey)> = OnceLock::new();
        KEYS.get_or_init(|| {
            let mut rng = rand::thread_rng();
            (
                RsaPrivateKey::new(&mut rng, 2048).unwrap(),
                RsaPrivateKey::new(&mut rng, 2048).unwrap(),
            )
        })
    }

    fn soft_tpm() -> SoftTpm {
        SoftTpm::from_keys(keys().0.clone(), keys().1.clone()).unwrap()
    }

    fn ek_srk() -> (Public, Public) {
        let t = soft_tpm();
        (t.endorsement_key().clone(), t.storage_root_key().clone())
    }

    #[test]
    fn blob_has_the_sizes_of_the_real_dps_blob() {
        let (ek, srk) = ek_srk();
        let mut rng = rand::thread_rng();
        let key = IdentityKey::generate(&mut rng);
        let blob =
            build_activation_with_data(&ek, &srk, key.as_bytes(), &[0x5a; 154], &mut rng).unwrap();
        assert_eq!(blob.len(), 920);
        let b = ActivationBlob::decode(&blob).unwrap();
        assert_eq!(b.credential_blob.len(), 52);
        assert_eq!(b.encrypted_secret.len(), 256);
        assert_eq!(b.duplicate.len(), 142);
        assert_eq!(b.sym_seed.len(), 256);
        assert_eq!(b.public.public_area().len(), 48);
        assert_eq!(b.encrypted_data.len(), 154);
        assert_eq!(b.public.attributes(), 0x0004_0440);
        assert!(b.public.auth_policy().is_empty());
        assert_eq!(b.encode().unwrap(), blob);
        // Item 6 is the data under W with a zero IV; without W it is not the plaintext.
        assert_ne!(b.encrypted_data, vec![0x5a; 154]);
    }

    #[test]
    fn software_tpm_recovers_the_key() {
        let mut tpm = soft_tpm();
        let mut rng = rand::thread_rng();
        let challenge =
            new_challenge(tpm.endorsement_key(), tpm.storage_root_key(), &mut rng).unwrap();
        assert_eq!(challenge.key.as_bytes().len(), 32);
        assert_eq!(tpm.hmac(b"x"), Err(TpmWireError::NoIdentityKey));
        tpm.import_activation(&challenge.blob).unwrap();
        assert_eq!(
            tpm.hmac(b"data").unwrap(),
            crate::tpm::kdf::hmac_sha256(challenge.key.as_bytes(), &[b"data"]).unwrap()
        );
        // Default item 6 is an empty TPM2B, still present.
        let b = ActivationBlob::decode(&challenge.blob).unwrap();
        assert!(b.encrypted_data.is_empty());
        assert_eq!(challenge.blob.len(), 920 - 154);
        let dbg = format!("{challenge:?} {tpm:?}");
        assert!(dbg.contains("redacted"), "{dbg}");
    }

    #[test]
    fn bit_flips_in_items_1_to_5_are_detected() {
        let mut tpm = soft_tpm();
        let mut rng = rand::thread_rng();
        let challenge =
            new_challenge(tpm.endorsement_key(), tpm.storage_root_key(), &mut rng).unwrap();
        // A sample of positions across items 1-5 (all of them would be slow with RSA in debug).
        let end_of_5 = challenge.blob.len() - 2;
        for pos in (0..end_of_5)
            .step_by(37)
            .chain([0, 1, 2, 3, 53, 54, end_of_5 - 1])
        {
            let mut bad = challenge.blob.clone();
            bad[pos] ^= 0x01;
            assert!(
                tpm.import_activation(&bad).is_err(),
                "flip at byte {pos} undetected"
            );
        }
        // Item 6 carries no integrity protection (dps-protocol §4.5).
        let blob = build_activation_with_data(
            tpm.endorsement_key(),
            tpm.storage_root_key(),
            &[1; 32],
            b"uri",
            &mut rng,
        )
        .unwrap();
        let mut bad = blob.clone();
        *bad.last_mut().unwrap() ^= 0x01;
        tpm.import_activation(&bad).unwrap();
    }

    #[test]
    fn a_blob_for_another_srk_fails() {
        let tpm = soft_tpm();
        let mut other = SoftTpm::from_keys(keys().1.clone(), keys().0.clone()).unwrap();
        let mut rng = rand::thread_rng();
        let blob = build_activation(
            tpm.endorsement_key(),
            tpm.storage_root_key(),
            &[1; 32],
            &mut rng,
        )
        .unwrap();
        assert!(matches!(
            other.import_activation(&blob),
            Err(TpmWireError::ActivationFailed(_))
        ));
    }

    #[test]
    fn rejects_unsuitable_targets_and_keys() {
        let (ek, srk) = ek_srk();
        let mut rng = rand::thread_rng();
        let id_key =
            ActivationBlob::decode(&build_activation(&ek, &srk, &[1; 32], &mut rng).unwrap())
                .unwrap()
                .public;
        assert_eq!(
            build_activation(&id_key, &srk, &[1; 32], &mut rng),
            Err(TpmWireError::NotRsa("EK"))
        );
        let PublicParameters::Rsa { modulus, .. } = srk.parameters().clone() else {
            panic!("SRK is RSA")
        };
        let rsa_params = |modulus: Vec<u8>| PublicParameters::Rsa {
            symmetric: SymmetricDefinition::AES_128_CFB,
            scheme: Scheme::NULL,
            key_bits: 2048,
            exponent: 0,
            modulus,
        };
        let signing = Public::new(
            alg::SHA256,
            attr::SIGN_ENCRYPT | attr::USER_WITH_AUTH,
            &[],
            rsa_params(modulus.clone()),
        )
        .unwrap();
        assert_eq!(
            build_activation(&ek, &signing, &[1; 32], &mut rng),
            Err(TpmWireError::NotRestrictedDecrypt("SRK"))
        );
        assert_eq!(
            build_activation(&ek, &srk, &[], &mut rng),
            Err(TpmWireError::InvalidHmacKeyLength(0))
        );
        assert_eq!(
            build_activation(&ek, &srk, &[0; 65], &mut rng),
            Err(TpmWireError::InvalidHmacKeyLength(65))
        );
        // A creation template (zero modulus) is not a usable key.
        let template = Public::new(
            alg::SHA256,
            attr::EK,
            &EK_AUTH_POLICY_SHA256,
            rsa_params(vec![0; 256]),
        )
        .unwrap();
        assert!(matches!(
            build_activation(&template, &srk, &[1; 32], &mut rng),
            Err(TpmWireError::InvalidRsaKey { what: "EK", .. })
        ));
        // keyBits must match the modulus.
        let short = Public::new(
            alg::SHA256,
            attr::SRK,
            &[],
            rsa_params(modulus[..128].to_vec()),
        )
        .unwrap();
        assert!(matches!(
            build_activation(&ek, &short, &[1; 32], &mut rng),
            Err(TpmWireError::InvalidRsaKey { what: "SRK", .. })
        ));
        assert!(IdentityKey::from_bytes(&[]).is_err());
        assert!(!format!("{:?}", IdentityKey::from_bytes(&[0xab; 32]).unwrap()).contains("ab"));
    }
}
