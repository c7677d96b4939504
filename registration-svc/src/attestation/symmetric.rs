//! Symmetric-key attestation: verifying a device's SAS token (dps-protocol §2).
//!
//! The caller parses the token once ([`parse_token`]), then checks it against an individual
//! enrollment ([`verify_individual`]) or enrollment groups ([`verify_group`], [`find_group`]).
//! Time is passed in (`now`, Unix seconds; `skew`) so that the checks are deterministic.
//!
//! Server rules implemented here: the signature is computed over `sr` and `se` exactly as
//! transmitted; the decoded `sr` must name this ID scope and registration ID (ASCII
//! case-insensitive); `skn` may be absent or `registration`; `se` must not be older than
//! `now - skew`; primary key first, then secondary; group devices sign with
//! `HMAC-SHA256(group key, registrationId)`; all comparisons are constant time.

use std::fmt;
use std::time::Duration;

use kdps_proto::keys::{MAX_KEY_LEN, MIN_KEY_LEN, derive_device_key};
use kdps_proto::sas::SasToken;

use super::{AttestationError, MatchedCredential};

/// An enrollment's primary and optional secondary symmetric key, decoded. `Debug` shows only lengths.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The primary key (16–64 bytes).
    pub primary: Vec<u8>,
    /// The secondary key, if the enrollment has one.
    pub secondary: Option<Vec<u8>>,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field(
                "primary",
                &format_args!("<{} bytes redacted>", self.primary.len()),
            )
            .field(
                "secondary",
                &self
                    .secondary
                    .as_ref()
                    .map(|k| format!("<{} bytes redacted>", k.len())),
            )
            .finish()
    }
}

impl KeyPair {
    /// A key pair from raw key bytes.
    pub fn new(primary: Vec<u8>, secondary: Option<Vec<u8>>) -> Self {
        KeyPair { primary, secondary }
    }

    /// A key pair from base64 text (as stored in enrollment Secrets); checks lengths.
    pub fn from_base64(
        primary: &str,
        secondary: Option<&str>,
    ) -> Result<Self, kdps_proto::keys::KeyError> {
        Ok(KeyPair {
            primary: kdps_proto::keys::decode_key(primary)?,
            secondary: secondary.map(kdps_proto::keys::decode_key).transpose()?,
        })
    }

    /// The keys a device of a group with these keys signs with.
    pub fn derive_for(&self, registration_id: &str) -> KeyPair {
        KeyPair {
            primary: derive_device_key(&self.primary, registration_id).to_vec(),
            secondary: self
                .secondary
                .as_ref()
                .map(|k| derive_device_key(k, registration_id).to_vec()),
        }
    }

    /// The keys in trial order with their slot, skipping keys of unusable length so that an
    /// empty or truncated key never verifies anything.
    fn usable(&self) -> impl Iterator<Item = (MatchedCredential, &[u8])> {
        std::iter::once((MatchedCredential::Primary, self.primary.as_slice()))
            .chain(
                self.secondary
                    .as_deref()
                    .map(|k| (MatchedCredential::Secondary, k)),
            )
            .filter(|(_, k)| (MIN_KEY_LEN..=MAX_KEY_LEN).contains(&k.len()))
    }

    fn has_usable_key(&self) -> bool {
        self.usable().next().is_some()
    }
}

/// Parses the token of a request; `None` (no header / no password) is [`AttestationError::MissingToken`].
pub fn parse_token(value: Option<&str>) -> Result<SasToken, AttestationError> {
    let value = value.ok_or(AttestationError::MissingToken)?;
    Ok(SasToken::parse(value)?)
}

/// Checks everything but the signature: key name, resource and expiry.
pub fn check_claims(
    token: &SasToken,
    id_scope: &str,
    registration_id: &str,
    now: u64,
    skew: Duration,
) -> Result<(), AttestationError> {
    if !token.has_registration_key_name() {
        return Err(AttestationError::KeyNameNotAccepted);
    }
    if !token.names(id_scope, registration_id) {
        return Err(AttestationError::WrongResource);
    }
    let skew_secs = skew.as_secs();
    if token.expiry().saturating_add(skew_secs) < now {
        return Err(AttestationError::TokenExpired {
            expiry: token.expiry(),
            now,
            skew_secs,
        });
    }
    Ok(())
}

/// Which key (primary first, then secondary) the token's signature verifies with, if any.
pub fn matching_key(token: &SasToken, keys: &KeyPair) -> Option<MatchedCredential> {
    keys.usable()
        .find(|(_, key)| token.verify_with_key(key))
        .map(|(slot, _)| slot)
}

/// Which group key the token was signed with (through the key derived for `registration_id`), if any.
pub fn matching_group_key(
    token: &SasToken,
    registration_id: &str,
    group_keys: &KeyPair,
) -> Option<MatchedCredential> {
    group_keys
        .usable()
        .find(|(_, group_key)| {
            token.verify_with_key(&derive_device_key(group_key, registration_id))
        })
        .map(|(slot, _)| slot)
}

/// Verifies a token against an individual enrollment's keys.
pub fn verify_individual(
    token: &SasToken,
    id_scope: &str,
    registration_id: &str,
    keys: &KeyPair,
    now: u64,
    skew: Duration,
) -> Result<MatchedCredential, AttestationError> {
    if !keys.has_usable_key() {
        return Err(AttestationError::InvalidEnrollmentKey);
    }
    check_claims(token, id_scope, registration_id, now, skew)?;
    matching_key(token, keys).ok_or(AttestationError::SignatureMismatch)
}

/// Verifies a token against one enrollment group's keys (the device signs with the derived key).
pub fn verify_group(
    token: &SasToken,
    id_scope: &str,
    registration_id: &str,
    group_keys: &KeyPair,
    now: u64,
    skew: Duration,
) -> Result<MatchedCredential, AttestationError> {
    if !group_keys.has_usable_key() {
        return Err(AttestationError::InvalidEnrollmentKey);
    }
    check_claims(token, id_scope, registration_id, now, skew)?;
    matching_group_key(token, registration_id, group_keys)
        .ok_or(AttestationError::SignatureMismatch)
}

/// Among symmetric-key enrollment groups, the first whose (derived) key verifies the token.
///
/// Does not check the claims: call [`check_claims`] first (once, not per group).
pub fn find_group<'a, G>(
    token: &SasToken,
    registration_id: &str,
    groups: impl IntoIterator<Item = (G, &'a KeyPair)>,
) -> Option<(G, MatchedCredential)> {
    groups.into_iter().find_map(|(group, keys)| {
        matching_group_key(token, registration_id, keys).map(|slot| (group, slot))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kdps_proto::sas::{SrEncoding, encode_sr, generate_token};

    const SCOPE: &str = "0ne00000A11";
    const ID: &str = "dev-1";
    const NOW: u64 = 1_800_000_000;
    const SKEW: Duration = Duration::from_secs(300);

    fn keys() -> KeyPair {
        KeyPair::new(vec![1; 32], Some(vec![2; 32]))
    }

    fn token(key: &[u8], se: u64) -> SasToken {
        let sr = encode_sr(SCOPE, ID, SrEncoding::UrlEncodedLower);
        SasToken::parse(&generate_token(key, &sr, se, Some("registration"))).unwrap()
    }

    #[test]
    fn debug_is_redacted() {
        let debug = format!("{:?}", keys());
        assert_eq!(
            debug,
            "KeyPair { primary: <32 bytes redacted>, secondary: Some(\"<32 bytes redacted>\") }"
        );
    }

    #[test]
    fn too_short_keys_never_match() {
        let empty = KeyPair::new(Vec::new(), None);
        let t = token(&[], NOW);
        assert!(t.verify_with_key(&[]), "HMAC itself accepts the empty key");
        assert_eq!(matching_key(&t, &empty), None);
        assert!(matches!(
            verify_individual(&t, SCOPE, ID, &empty, NOW, SKEW),
            Err(AttestationError::InvalidEnrollmentKey)
        ));
        // An unusable primary does not stop a usable secondary.
        let half = KeyPair::new(Vec::new(), Some(vec![2; 32]));
        assert_eq!(
            verify_individual(&token(&[2; 32], NOW), SCOPE, ID, &half, NOW, SKEW).unwrap(),
            MatchedCredential::Secondary
        );
    }

    #[test]
    fn expiry_boundaries() {
        let k = keys();
        assert!(
            verify_individual(&token(&k.primary, NOW), SCOPE, ID, &k, NOW, Duration::ZERO).is_ok()
        );
        assert!(matches!(
            verify_individual(&token(&k.primary, NOW - 1), SCOPE, ID, &k, NOW, Duration::ZERO),
            Err(AttestationError::TokenExpired { expiry, now: NOW, skew_secs: 0 }) if expiry == NOW - 1
        ));
        assert!(verify_individual(&token(&k.primary, NOW - 300), SCOPE, ID, &k, NOW, SKEW).is_ok());
        assert!(
            verify_individual(&token(&k.primary, NOW - 301), SCOPE, ID, &k, NOW, SKEW).is_err()
        );
        // No overflow at the top of the range.
        assert!(verify_individual(&token(&k.primary, u64::MAX), SCOPE, ID, &k, NOW, SKEW).is_ok());
    }
}
