//! The 6-part DPS activation blob (`authenticationKey`, dps-protocol §4.2).

use super::marshal::{Reader, put_tpm2b};
use super::{Public, TpmWireError};

/// Largest TPM digest / HMAC in a `TPM2B_DIGEST`.
const MAX_DIGEST: usize = 64;
/// `sizeof(TPMU_ENCRYPTED_SECRET)`: an RSA-4096 ciphertext.
const MAX_ENCRYPTED_SECRET: usize = 512;

/// The DPS activation blob: six `TPM2B`s, in this order.
///
/// | # | field | structure |
/// |---|---|---|
/// | 1 | [`credential_blob`](Self::credential_blob) | `TPM2B_ID_OBJECT` (MakeCredential output for the EK) |
/// | 2 | [`encrypted_secret`](Self::encrypted_secret) | `TPM2B_ENCRYPTED_SECRET` (credential seed, RSA-OAEP to the EK) |
/// | 3 | [`duplicate`](Self::duplicate) | `TPM2B_PRIVATE` (identity key duplicated to the SRK) |
/// | 4 | [`sym_seed`](Self::sym_seed) | `TPM2B_ENCRYPTED_SECRET` (duplication seed, RSA-OAEP to the SRK) |
/// | 5 | [`public`](Self::public) | `TPM2B_PUBLIC` of the identity key |
/// | 6 | [`encrypted_data`](Self::encrypted_data) | `TPM2B` of data AES-CFB-encrypted with the inner wrapper key |
///
/// The fields hold the `TPM2B` contents without their 2-byte sizes. Decoding also checks the
/// inner `TPM2B_DIGEST` of items 1 and 3, so a decoded blob has the shape the TPM expects.
#[derive(Clone, PartialEq, Eq)]
pub struct ActivationBlob {
    /// Item 1: `TPMS_ID_OBJECT` = `TPM2B_DIGEST` integrityHMAC ‖ encIdentity.
    pub credential_blob: Vec<u8>,
    /// Item 2: the MakeCredential seed encrypted to the EK.
    pub encrypted_secret: Vec<u8>,
    /// Item 3: `TPM2B_DIGEST` outerHMAC ‖ dupSensitive.
    pub duplicate: Vec<u8>,
    /// Item 4: the duplication seed encrypted to the SRK (`inSymSeed`).
    pub sym_seed: Vec<u8>,
    /// Item 5: the identity key's public area.
    pub public: Public,
    /// Item 6: "encrypted URI data" (no integrity protection; may be empty).
    pub encrypted_data: Vec<u8>,
}

impl std::fmt::Debug for ActivationBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ciphertexts only, but nothing useful to a reader either: show sizes.
        f.debug_struct("ActivationBlob")
            .field("credential_blob_len", &self.credential_blob.len())
            .field("encrypted_secret_len", &self.encrypted_secret.len())
            .field("duplicate_len", &self.duplicate.len())
            .field("sym_seed_len", &self.sym_seed.len())
            .field("public", &self.public)
            .field("encrypted_data_len", &self.encrypted_data.len())
            .finish()
    }
}

/// Checks that `bytes` is `TPM2B_DIGEST ‖ rest` with a non-empty rest.
fn check_digest_prefixed(bytes: &[u8], what: &'static str) -> Result<(), TpmWireError> {
    let mut r = Reader::new(bytes);
    r.tpm2b_max(what, MAX_DIGEST)?;
    if r.remaining() == 0 {
        return Err(TpmWireError::Truncated {
            what,
            needed: 1,
            available: 0,
        });
    }
    Ok(())
}

impl ActivationBlob {
    /// Parses a blob. All six items must be present (item 6 may be empty) and nothing may follow.
    pub fn decode(bytes: &[u8]) -> Result<ActivationBlob, TpmWireError> {
        let mut r = Reader::new(bytes);
        let credential_blob = r.tpm2b("item 1 (TPM2B_ID_OBJECT)")?.to_vec();
        check_digest_prefixed(&credential_blob, "item 1 integrityHMAC")?;
        let encrypted_secret = r
            .tpm2b_max("item 2 (TPM2B_ENCRYPTED_SECRET)", MAX_ENCRYPTED_SECRET)?
            .to_vec();
        let duplicate = r.tpm2b("item 3 (TPM2B_PRIVATE)")?.to_vec();
        check_digest_prefixed(&duplicate, "item 3 outerHMAC")?;
        let sym_seed = r
            .tpm2b_max("item 4 (TPM2B_ENCRYPTED_SECRET)", MAX_ENCRYPTED_SECRET)?
            .to_vec();
        let public = Public::from_public_area(r.tpm2b("item 5 (TPM2B_PUBLIC)")?)?;
        let encrypted_data = r.tpm2b("item 6 (encrypted data)")?.to_vec();
        r.finish("activation blob")?;
        Ok(ActivationBlob {
            credential_blob,
            encrypted_secret,
            duplicate,
            sym_seed,
            public,
            encrypted_data,
        })
    }

    /// Marshals the blob (six `TPM2B`s).
    pub fn encode(&self) -> Result<Vec<u8>, TpmWireError> {
        let mut out = Vec::with_capacity(
            12 + self.credential_blob.len()
                + self.encrypted_secret.len()
                + self.duplicate.len()
                + self.sym_seed.len()
                + self.public.public_area().len()
                + self.encrypted_data.len(),
        );
        put_tpm2b(&mut out, &self.credential_blob, "item 1")?;
        put_tpm2b(&mut out, &self.encrypted_secret, "item 2")?;
        put_tpm2b(&mut out, &self.duplicate, "item 3")?;
        put_tpm2b(&mut out, &self.sym_seed, "item 4")?;
        put_tpm2b(&mut out, self.public.public_area(), "item 5")?;
        put_tpm2b(&mut out, &self.encrypted_data, "item 6")?;
        Ok(out)
    }
}
