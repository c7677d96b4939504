//! Per-device keys derived from enrollment-group keys (dps-protocol §2).
//!
//! A device in a symmetric-key enrollment group signs with
//! `HMAC-SHA256(key = group key, message = UTF-8 registration ID)`; the service derives the same
//! key from the group's primary and secondary keys. Enrollment keys travel as base64 and are
//! 16–64 bytes once decoded.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Smallest accepted symmetric key, in bytes (DPS rule).
pub const MIN_KEY_LEN: usize = 16;
/// Largest accepted symmetric key, in bytes (DPS rule; generated keys have this length).
pub const MAX_KEY_LEN: usize = 64;

/// Why a key could not be used. Messages never contain the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not standard (padded) base64.
    #[error("symmetric key is not valid base64")]
    InvalidBase64,
    /// The decoded key is shorter than 16 or longer than 64 bytes.
    #[error("symmetric key is {0} bytes, expected {MIN_KEY_LEN} to {MAX_KEY_LEN}")]
    InvalidLength(usize),
}

/// Derives the device key for `registration_id` from a group key (both raw bytes).
pub fn derive_device_key(group_key: &[u8], registration_id: &str) -> [u8; 32] {
    crate::sas::hmac_sha256(group_key, registration_id.as_bytes())
}

/// [`derive_device_key`] on base64 text: decodes and checks the group key with [`decode_key`],
/// returns the derived key as base64.
pub fn derive_device_key_b64(
    group_key_b64: &str,
    registration_id: &str,
) -> Result<String, KeyError> {
    let group_key = decode_key(group_key_b64)?;
    Ok(BASE64.encode(derive_device_key(&group_key, registration_id)))
}

/// Decodes a base64 symmetric key and checks its length (16–64 bytes).
///
/// Surrounding ASCII whitespace is ignored, because keys read from files and Secrets often end in
/// a newline.
pub fn decode_key(b64: &str) -> Result<Vec<u8>, KeyError> {
    let key = BASE64
        .decode(b64.trim_ascii())
        .map_err(|_| KeyError::InvalidBase64)?;
    if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
        return Err(KeyError::InvalidLength(key.len()));
    }
    Ok(key)
}

/// Encodes a key as standard base64, the form enrollment Secrets and devices use.
pub fn encode_key(key: &[u8]) -> String {
    BASE64.encode(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Worked example from the DPS symmetric-key attestation documentation.
    #[test]
    fn documented_group_key_derivation() {
        let derived = derive_device_key_b64(
            "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
            "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
        )
        .unwrap();
        assert_eq!(derived, "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=");
    }

    #[test]
    fn decode_key_bounds() {
        assert_eq!(decode_key(&encode_key(&[7; 16])).unwrap(), vec![7; 16]);
        assert_eq!(decode_key(&encode_key(&[7; 64])).unwrap(), vec![7; 64]);
        assert_eq!(
            decode_key(&format!("{}\n", encode_key(&[7; 32])))
                .unwrap()
                .len(),
            32
        );
        assert_eq!(
            decode_key(&encode_key(&[7; 15])),
            Err(KeyError::InvalidLength(15))
        );
        assert_eq!(
            decode_key(&encode_key(&[7; 65])),
            Err(KeyError::InvalidLength(65))
        );
        assert_eq!(decode_key(""), Err(KeyError::InvalidLength(0)));
        assert_eq!(decode_key("not base64!"), Err(KeyError::InvalidBase64));
        assert_eq!(decode_key("AAAA AAAA"), Err(KeyError::InvalidBase64));
    }

    #[test]
    fn derive_b64_rejects_bad_group_key() {
        assert_eq!(
            derive_device_key_b64("@@", "x"),
            Err(KeyError::InvalidBase64)
        );
        assert_eq!(
            derive_device_key_b64(&encode_key(&[1; 8]), "x"),
            Err(KeyError::InvalidLength(8))
        );
    }
}
