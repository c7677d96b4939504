//! KDFa (TPM 2.0 Part 1 §11.4.10.2): SP 800-108 counter-mode KDF with HMAC-SHA-256.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::TpmWireError;

/// HMAC-SHA-256 over the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Result<[u8; 32], TpmWireError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .map_err(|_| TpmWireError::InvalidKeyLength("HMAC-SHA-256"))?;
    for part in parts {
        mac.update(part);
    }
    Ok(mac.finalize().into_bytes().into())
}

/// `KDFa(SHA-256, key, label, contextU, contextV, bits)`.
///
/// Concatenates `HMAC(key, BE32(i) ‖ label ‖ 0x00 ‖ contextU ‖ contextV ‖ BE32(bits))` for
/// i = 1, 2, … and keeps `ceil(bits / 8)` bytes; when `bits` is not a multiple of 8 the
/// unused high bits of the first byte are cleared, as the TPM reference code does.
/// `label` is given without its terminating NUL (KDFa adds it).
pub fn kdfa(
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Result<Vec<u8>, TpmWireError> {
    let bytes = usize::try_from(bits.div_ceil(8)).map_err(|_| TpmWireError::FieldTooLarge {
        what: "KDFa output",
        len: usize::MAX,
        max: usize::from(u16::MAX),
    })?;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let block = hmac_sha256(
            key,
            &[
                &counter.to_be_bytes(),
                label,
                &[0],
                context_u,
                context_v,
                &bits.to_be_bytes(),
            ],
        )?;
        out.extend_from_slice(&block);
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    if !bits.is_multiple_of(8)
        && let Some(first) = out.first_mut()
    {
        *first &= (1u8 << (bits % 8)) - 1;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn output_lengths_and_prefix_property() {
        let k128 = kdfa(b"seed", b"STORAGE", b"ctx", b"", 128).unwrap();
        let k256 = kdfa(b"seed", b"STORAGE", b"ctx", b"", 256).unwrap();
        let k520 = kdfa(b"seed", b"STORAGE", b"ctx", b"", 520).unwrap();
        assert_eq!(k128.len(), 16);
        assert_eq!(k256.len(), 32);
        assert_eq!(k520.len(), 65);
        // The bit count is part of every HMAC input, so outputs of different lengths differ.
        assert_ne!(&k256[..16], &k128[..]);
        assert!(kdfa(b"seed", b"STORAGE", b"", b"", 0).unwrap().is_empty());
    }

    #[test]
    fn context_u_and_v_concatenate() {
        // KDFa hashes contextU ‖ contextV, so splitting a context anywhere gives the same key.
        let a = kdfa(b"k", b"L", b"abcd", b"", 128).unwrap();
        let b = kdfa(b"k", b"L", b"ab", b"cd", 128).unwrap();
        let c = kdfa(b"k", b"L", b"", b"abcd", 128).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn odd_bit_counts_mask_the_first_byte() {
        let k = kdfa(b"k", b"L", b"", b"", 12).unwrap();
        assert_eq!(k.len(), 2);
        assert_eq!(k[0] & 0xf0, 0);
    }
}
