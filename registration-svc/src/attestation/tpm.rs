//! TPM attestation: the endorsement-key challenge (dps-protocol §4.1, §4.4).
//!
//! 1. The device sends its EK and SRK (base64 `TPM2B_PUBLIC`) without `Authorization`.
//!    [`TpmChallenges::issue`] checks the EK against the enrolled one, builds a fresh HMAC
//!    identity key K, duplicates it to the SRK and seals the inner wrapper key to the EK with
//!    MakeCredential ([`kdps_proto::tpm::new_challenge`]), remembers K bound to the
//!    registration ID and EK, and returns the blob for the `401` body ([`TpmChallenge`]).
//! 2. The device imports the blob into its TPM and repeats the request with a SAS token
//!    HMAC-signed by the TPM with K. [`TpmChallenges::verify`] checks it (resource, key name,
//!    expiry, signature with a remembered K). Polls carry the same token, so a challenge stays
//!    usable until it expires rather than being consumed.
//! 3. On `assigned`, [`assignment_activation`] builds a second blob carrying the key the
//!    device will use for IoT hub SAS (`registrationState.tpm.authenticationKey`).
//!
//! Only a TPM that holds the EK's private key (to run ActivateCredential) and the SRK can
//! import K, so a valid signature proves possession of the enrolled EK. Keys never appear in
//! `Debug` output, logs or errors.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use kdps_proto::sas::{SasError, SasToken};
use kdps_proto::tpm::{self, IdentityKey, Public, TpmWireError};
use serde::Serialize;

/// The `keyName` DPS returns with a TPM challenge; clients use it as the token's `skn`.
pub const KEY_NAME: &str = "registration";

/// The `message` of the real DPS challenge response (dps-protocol §4.1 step 3).
pub const CHALLENGE_MESSAGE: &str = "Authorization required, resend request using supplied key";

/// How long an issued challenge can be answered by default. Covers the SAS lifetime SDKs
/// use (C: 2400 s, Node: 1 h) so the polls that reuse the token keep verifying.
pub const DEFAULT_CHALLENGE_TTL: Duration = Duration::from_secs(3600);

/// Default bound on remembered registrations.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Outstanding challenges kept per registration ID: a device that sent two unauthenticated
/// requests may answer either challenge.
const MAX_PER_REGISTRATION: usize = 4;

/// Base64 text longer than this is refused before decoding (a TPM2B_PUBLIC is < 1 KiB).
const MAX_PUBLIC_B64_LEN: usize = 4096;

/// Why TPM attestation failed. Messages never contain key material or tokens.
///
/// | code | gRPC | variants |
/// |---|---|---|
/// | 400004 | `InvalidArgument` | malformed request data: [`MissingEndorsementKey`](Self::MissingEndorsementKey), [`MissingStorageRootKey`](Self::MissingStorageRootKey), [`InvalidBase64`](Self::InvalidBase64), [`InvalidPublic`](Self::InvalidPublic), [`UnsupportedKey`](Self::UnsupportedKey), [`MalformedToken`](Self::MalformedToken) |
/// | 401002 | `Unauthenticated` | the device did not prove the enrolled EK: [`EndorsementKeyMismatch`](Self::EndorsementKeyMismatch), [`NoPendingChallenge`](Self::NoPendingChallenge), [`WrongResource`](Self::WrongResource), [`KeyNameNotAccepted`](Self::KeyNameNotAccepted), [`TokenExpired`](Self::TokenExpired), [`SignatureMismatch`](Self::SignatureMismatch) |
/// | 500000 | `Internal` | [`InvalidEnrolledKey`](Self::InvalidEnrolledKey), [`ChallengeConstruction`](Self::ChallengeConstruction) |
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmAttestationError {
    /// The request has no `tpm.endorsementKey`.
    #[error("request has no TPM endorsement key")]
    MissingEndorsementKey,
    /// The request has no `tpm.storageRootKey` (needed to build a challenge).
    #[error("request has no TPM storage root key")]
    MissingStorageRootKey,
    /// A field is not base64.
    #[error("{field} is not valid base64")]
    InvalidBase64 {
        /// Which field.
        field: &'static str,
    },
    /// A field is not a well-formed `TPM2B_PUBLIC`.
    #[error("{field} is not a valid TPM2B_PUBLIC: {source}")]
    InvalidPublic {
        /// Which field.
        field: &'static str,
        /// The parse error.
        source: TpmWireError,
    },
    /// The EK or SRK cannot receive a challenge (not RSA, not a storage key, …).
    #[error("TPM key cannot be used for a challenge: {0}")]
    UnsupportedKey(TpmWireError),
    /// The enrollment's endorsement key cannot be parsed (nothing the device can fix).
    #[error("enrolled TPM endorsement key is unusable: {0}")]
    InvalidEnrolledKey(TpmWireError),
    /// The request's EK is not the enrolled one.
    #[error("TPM endorsement key does not match the enrollment")]
    EndorsementKeyMismatch,
    /// A token was presented but no unexpired challenge exists for this device and EK.
    #[error("no outstanding TPM challenge for this registration (expired or never issued)")]
    NoPendingChallenge,
    /// The `Authorization` value is not a SAS token.
    #[error("malformed SAS token: {0}")]
    MalformedToken(#[from] SasError),
    /// The token's `sr` does not name this ID scope and registration ID.
    #[error("SAS token resource does not name this ID scope and registration ID")]
    WrongResource,
    /// The token has an `skn` other than `registration`.
    #[error("SAS token key name is not accepted (only \"registration\" or none)")]
    KeyNameNotAccepted,
    /// `se` lies in the past, beyond the allowed clock skew.
    #[error("SAS token expired at {expiry} (now {now}, allowed clock skew {skew_secs} s)")]
    TokenExpired {
        /// The token's `se`.
        expiry: u64,
        /// The time of the check.
        now: u64,
        /// The allowed skew in seconds.
        skew_secs: u64,
    },
    /// The signature does not verify with any outstanding challenge key.
    #[error("SAS token signature does not match the TPM challenge key")]
    SignatureMismatch,
    /// Building the challenge failed (e.g. RSA encryption).
    #[error("building the TPM challenge failed: {0}")]
    ChallengeConstruction(TpmWireError),
}

impl TpmAttestationError {
    /// The 6-digit DPS `errorCode` (first three digits = HTTP status).
    pub fn dps_error_code(&self) -> u32 {
        use TpmAttestationError as E;
        match self {
            E::MissingEndorsementKey
            | E::MissingStorageRootKey
            | E::InvalidBase64 { .. }
            | E::InvalidPublic { .. }
            | E::UnsupportedKey(_)
            | E::MalformedToken(_) => 400004,
            E::EndorsementKeyMismatch
            | E::NoPendingChallenge
            | E::WrongResource
            | E::KeyNameNotAccepted
            | E::TokenExpired { .. }
            | E::SignatureMismatch => 401002,
            E::InvalidEnrolledKey(_) | E::ChallengeConstruction(_) => 500000,
        }
    }

    /// The HTTP status (first three digits of [`Self::dps_error_code`]).
    pub fn http_status(&self) -> u16 {
        u16::try_from(self.dps_error_code() / 1000).unwrap_or(500)
    }

    /// The gRPC status code.
    pub fn grpc_code(&self) -> tonic::Code {
        match self.http_status() {
            400 => tonic::Code::InvalidArgument,
            401 => tonic::Code::Unauthenticated,
            _ => tonic::Code::Internal,
        }
    }

    /// A short, stable label for metrics and events.
    pub fn reason(&self) -> &'static str {
        use TpmAttestationError as E;
        match self {
            E::MissingEndorsementKey => "tpm_missing_endorsement_key",
            E::MissingStorageRootKey => "tpm_missing_storage_root_key",
            E::InvalidBase64 { .. } => "tpm_invalid_base64",
            E::InvalidPublic { .. } => "tpm_invalid_public",
            E::UnsupportedKey(_) => "tpm_unsupported_key",
            E::InvalidEnrolledKey(_) => "tpm_invalid_enrolled_key",
            E::EndorsementKeyMismatch => "tpm_endorsement_key_mismatch",
            E::NoPendingChallenge => "tpm_no_pending_challenge",
            E::MalformedToken(_) => "tpm_malformed_token",
            E::WrongResource => "tpm_wrong_resource",
            E::KeyNameNotAccepted => "tpm_key_name_not_accepted",
            E::TokenExpired { .. } => "tpm_token_expired",
            E::SignatureMismatch => "tpm_signature_mismatch",
            E::ChallengeConstruction(_) => "tpm_challenge_construction",
        }
    }
}

/// Decodes a base64 `TPM2B_PUBLIC` field (standard alphabet, padding optional).
pub fn decode_public(field: &'static str, b64: &str) -> Result<Public, TpmAttestationError> {
    let b64 = b64.trim();
    if b64.len() > MAX_PUBLIC_B64_LEN {
        return Err(TpmAttestationError::InvalidPublic {
            field,
            source: TpmWireError::FieldTooLarge {
                what: "base64 TPM2B_PUBLIC",
                len: b64.len(),
                max: MAX_PUBLIC_B64_LEN,
            },
        });
    }
    let bytes = STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64))
        .map_err(|_| TpmAttestationError::InvalidBase64 { field })?;
    Public::from_tpm2b(&bytes)
        .map_err(|source| TpmAttestationError::InvalidPublic { field, source })
}

/// Parses the enrollment's EK; failures are the operator's, not the device's.
fn enrolled_public(b64: &str) -> Result<Public, TpmAttestationError> {
    decode_public("enrollment endorsementKey", b64).map_err(|e| match e {
        TpmAttestationError::InvalidPublic { source, .. } => {
            TpmAttestationError::InvalidEnrolledKey(source)
        }
        _ => TpmAttestationError::InvalidEnrolledKey(TpmWireError::NotCanonical),
    })
}

/// Parses the request EK and checks it holds the enrolled key (RSA modulus and exponent).
fn matching_ek(enrolled_ek: &str, request_ek: Option<&str>) -> Result<Public, TpmAttestationError> {
    let enrolled = enrolled_public(enrolled_ek)?;
    let request = decode_public(
        "tpm.endorsementKey",
        request_ek.ok_or(TpmAttestationError::MissingEndorsementKey)?,
    )?;
    if !request.same_key_as(&enrolled) {
        return Err(TpmAttestationError::EndorsementKeyMismatch);
    }
    Ok(request)
}

/// The `401` body of a TPM challenge, serialised exactly as DPS does (dps-protocol §4.1):
/// `{"message":…,"authenticationKey":"<base64>","unencryptedAuthenticationKey":null,"keyName":"registration"}`.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmChallenge {
    /// Always [`CHALLENGE_MESSAGE`].
    pub message: &'static str,
    /// Base64 of the activation blob.
    pub authentication_key: String,
    /// Always `null`.
    pub unencrypted_authentication_key: Option<String>,
    /// Always [`KEY_NAME`].
    pub key_name: &'static str,
}

impl fmt::Debug for TpmChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmChallenge")
            .field("authentication_key_len", &self.authentication_key.len())
            .field("key_name", &self.key_name)
            .finish()
    }
}

/// One issued, unexpired challenge.
struct Pending {
    /// The request EK the blob was sealed to (same key as the enrolled one at issue time).
    ek: Public,
    key: IdentityKey,
    expires_at: u64,
}

/// In-memory store of outstanding TPM challenges, bounded in size and time.
///
/// Keyed by the lower-cased registration ID (DPS IDs are case-insensitive); each entry holds
/// up to four most recent challenges. On insert, expired entries are dropped; when the store is
/// still full, the registration whose newest challenge expires first is evicted.
/// The engine owns one instance and shares it between requests (`Arc<TpmChallenges>`).
pub struct TpmChallenges {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, Vec<Pending>>>,
}

impl fmt::Debug for TpmChallenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmChallenges")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("registrations", &self.len())
            .finish()
    }
}

impl Default for TpmChallenges {
    fn default() -> Self {
        Self::new(DEFAULT_CHALLENGE_TTL, DEFAULT_CAPACITY)
    }
}

impl TpmChallenges {
    /// A store whose challenges live `ttl` and that remembers at most `capacity` registrations.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Pending>>> {
        // A panic while holding the lock cannot leave the map inconsistent (every mutation
        // is a single insert/remove/retain), so keep serving after poisoning.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Number of registrations with outstanding challenges (expired ones included until the
    /// next insert prunes them).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no challenge is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets all challenges of a registration (e.g. after the enrollment was deleted).
    pub fn forget(&self, registration_id: &str) {
        self.lock().remove(&registration_id.to_ascii_lowercase());
    }

    /// Builds a challenge for a device whose request carries `request_ek` / `request_srk`
    /// (base64 `TPM2B_PUBLIC`) and whose enrollment holds `enrolled_ek` (base64), and
    /// remembers its key for `registration_id`.
    ///
    /// A request EK that is not the enrolled key gets no challenge
    /// ([`TpmAttestationError::EndorsementKeyMismatch`]). `now` is Unix seconds.
    pub fn issue(
        &self,
        registration_id: &str,
        enrolled_ek: &str,
        request_ek: Option<&str>,
        request_srk: Option<&str>,
        now: u64,
    ) -> Result<TpmChallenge, TpmAttestationError> {
        let ek = matching_ek(enrolled_ek, request_ek)?;
        let srk = decode_public(
            "tpm.storageRootKey",
            request_srk.ok_or(TpmAttestationError::MissingStorageRootKey)?,
        )?;
        let challenge =
            tpm::new_challenge(&ek, &srk, &mut rand::rngs::OsRng).map_err(classify_build_error)?;
        let pending = Pending {
            ek,
            key: challenge.key.clone(),
            expires_at: now.saturating_add(self.ttl.as_secs()),
        };
        self.insert(registration_id.to_ascii_lowercase(), pending, now);
        tracing::debug!(registration_id, "issued TPM challenge");
        Ok(TpmChallenge {
            message: CHALLENGE_MESSAGE,
            authentication_key: STANDARD.encode(&challenge.blob),
            unencrypted_authentication_key: None,
            key_name: KEY_NAME,
        })
    }

    fn insert(&self, id: String, pending: Pending, now: u64) {
        let mut map = self.lock();
        if !map.contains_key(&id) && map.len() >= self.capacity {
            map.retain(|_, list| {
                list.retain(|p| p.expires_at > now);
                !list.is_empty()
            });
            if map.len() >= self.capacity {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, list)| list.iter().map(|p| p.expires_at).max())
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    map.remove(&oldest);
                }
            }
        }
        let list = map.entry(id).or_default();
        list.retain(|p| p.expires_at > now);
        list.insert(0, pending);
        list.truncate(MAX_PER_REGISTRATION);
    }

    /// Verifies the SAS token a device sent after importing a challenge.
    ///
    /// Checks, in order: the request EK (if the body carries one) is the enrolled key; the
    /// token's key name, resource and expiry (`se + skew >= now`); then that its signature
    /// verifies with an unexpired challenge key issued to this registration for this EK.
    /// `request_ek` is the body's `tpm.endorsementKey` (base64), if it has one.
    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &self,
        id_scope: &str,
        registration_id: &str,
        enrolled_ek: &str,
        request_ek: Option<&str>,
        token: &SasToken,
        now: u64,
        skew: Duration,
    ) -> Result<(), TpmAttestationError> {
        let enrolled = enrolled_public(enrolled_ek)?;
        if let Some(request_ek) = request_ek {
            let request = decode_public("tpm.endorsementKey", request_ek)?;
            if !request.same_key_as(&enrolled) {
                return Err(TpmAttestationError::EndorsementKeyMismatch);
            }
        }
        check_claims(token, id_scope, registration_id, now, skew)?;
        let map = self.lock();
        let live: Vec<&Pending> = map
            .get(&registration_id.to_ascii_lowercase())
            .into_iter()
            .flatten()
            .filter(|p| p.expires_at > now && p.ek.same_key_as(&enrolled))
            .collect();
        if live.is_empty() {
            return Err(TpmAttestationError::NoPendingChallenge);
        }
        if live.iter().any(|p| token.verify_with_key(p.key.as_bytes())) {
            Ok(())
        } else {
            Err(TpmAttestationError::SignatureMismatch)
        }
    }
}

/// Parses the `Authorization` value of a TPM request that answers a challenge.
pub fn parse_token(value: &str) -> Result<SasToken, TpmAttestationError> {
    Ok(SasToken::parse(value)?)
}

/// Checks key name, resource and expiry of a token.
fn check_claims(
    token: &SasToken,
    id_scope: &str,
    registration_id: &str,
    now: u64,
    skew: Duration,
) -> Result<(), TpmAttestationError> {
    if !token.has_registration_key_name() {
        return Err(TpmAttestationError::KeyNameNotAccepted);
    }
    if !token.names(id_scope, registration_id) {
        return Err(TpmAttestationError::WrongResource);
    }
    let skew_secs = skew.as_secs();
    if token.expiry().saturating_add(skew_secs) < now {
        return Err(TpmAttestationError::TokenExpired {
            expiry: token.expiry(),
            now,
            skew_secs,
        });
    }
    Ok(())
}

/// Errors from [`tpm::build_activation`]: unusable device keys are bad input, the rest internal.
fn classify_build_error(e: TpmWireError) -> TpmAttestationError {
    match e {
        TpmWireError::NotRsa(_)
        | TpmWireError::NotRestrictedDecrypt(_)
        | TpmWireError::UnsupportedNameAlg { .. }
        | TpmWireError::UnsupportedSymmetric { .. }
        | TpmWireError::InvalidRsaKey { .. } => TpmAttestationError::UnsupportedKey(e),
        other => TpmAttestationError::ChallengeConstruction(other),
    }
}

/// The `registrationState.tpm.authenticationKey` of an `assigned` TPM device and the key it
/// carries (dps-protocol §4.1 step 6).
#[derive(Clone)]
pub struct AssignedTpmKey {
    /// Base64 activation blob for `registrationState.tpm.authenticationKey`.
    pub authentication_key: String,
    /// The key the device imports and then uses for IoT hub SAS; create the hub device
    /// identity with it as its symmetric key (see [`AssignedTpmKey::device_key_base64`]).
    pub device_key: IdentityKey,
}

impl AssignedTpmKey {
    /// The device key in base64, the form IoT hub identities store symmetric keys in.
    pub fn device_key_base64(&self) -> String {
        STANDARD.encode(self.device_key.as_bytes())
    }
}

impl fmt::Debug for AssignedTpmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssignedTpmKey")
            .field("authentication_key_len", &self.authentication_key.len())
            .field("device_key", &self.device_key)
            .finish()
    }
}

/// Builds the `assigned` activation blob with a fresh 32-byte hub key, for the TPM whose
/// EK/SRK (base64 `TPM2B_PUBLIC`, as in the request) the device sent.
pub fn assignment_activation(
    request_ek: &str,
    request_srk: &str,
) -> Result<AssignedTpmKey, TpmAttestationError> {
    let key = IdentityKey::generate(&mut rand::rngs::OsRng);
    assignment_activation_with_key(request_ek, request_srk, key.as_bytes())
}

/// Like [`assignment_activation`] but carrying an existing hub key (e.g. the key the hub
/// identity already has, on re-provisioning). The key must be 1 to 64 bytes.
pub fn assignment_activation_with_key(
    request_ek: &str,
    request_srk: &str,
    device_key: &[u8],
) -> Result<AssignedTpmKey, TpmAttestationError> {
    let ek = decode_public("tpm.endorsementKey", request_ek)?;
    let srk = decode_public("tpm.storageRootKey", request_srk)?;
    let device_key =
        IdentityKey::from_bytes(device_key).map_err(TpmAttestationError::ChallengeConstruction)?;
    let blob = tpm::build_activation(&ek, &srk, device_key.as_bytes(), &mut rand::rngs::OsRng)
        .map_err(classify_build_error)?;
    Ok(AssignedTpmKey {
        authentication_key: STANDARD.encode(blob),
        device_key,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Software-only checks of the store and the error mapping against
    //! [`SoftTpm`](kdps_proto::tpm::SoftTpm); the round trip through a real TPM (swtpm) is in
    //! `tests/tpm_swtpm.rs`.
    use super::*;
    use kdps_proto::sas;
    use kdps_proto::tpm::{PublicParameters, Scheme, SoftTpm, SymmetricDefinition, alg, attr};
    use rsa::RsaPrivateKey;
    use std::sync::OnceLock;

    const SCOPE: &str = "0ne00000A11";
    const REG: &str = "Device-1";
    const NOW: u64 = 1_800_000_000;
    const SKEW: Duration = Duration::from_secs(60);

    /// Two software TPMs sharing an SRK (RSA key generation is slow in debug builds, so once).
    fn tpms() -> &'static [SoftTpm; 2] {
        static TPMS: OnceLock<[SoftTpm; 2]> = OnceLock::new();
        TPMS.get_or_init(|| {
            let mut rng = rand::thread_rng();
            let mut key = || RsaPrivateKey::new(&mut rng, 2048).unwrap();
            let (a, b, c) = (key(), key(), key());
            [
                SoftTpm::from_keys(a, b.clone()).unwrap(),
                SoftTpm::from_keys(c, b).unwrap(),
            ]
        })
    }

    fn b64(p: &Public) -> String {
        STANDARD.encode(p.to_tpm2b())
    }
    fn ek() -> String {
        b64(tpms()[0].endorsement_key())
    }
    fn srk() -> String {
        b64(tpms()[0].storage_root_key())
    }
    fn other_ek() -> String {
        b64(tpms()[1].endorsement_key())
    }

    /// The key a challenge delivers, recovered by the device's (software) TPM.
    fn key_from(auth_key_b64: &str) -> Vec<u8> {
        tpms()[0]
            .activate(&STANDARD.decode(auth_key_b64).unwrap())
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    fn token(key: &[u8], se: u64) -> SasToken {
        let sr = sas::encode_sr(SCOPE, REG, sas::SrEncoding::UrlEncodedUpper);
        SasToken::parse(&sas::generate_token(key, &sr, se, Some(KEY_NAME))).unwrap()
    }

    #[test]
    fn challenge_then_signed_token_verifies() {
        let store = TpmChallenges::default();
        let c = store
            .issue(REG, &ek(), Some(&ek()), Some(&srk()), NOW)
            .unwrap();
        let body = serde_json::to_value(&c).unwrap();
        assert_eq!(body["keyName"], "registration");
        assert!(body["unencryptedAuthenticationKey"].is_null());
        assert_eq!(body["message"], CHALLENGE_MESSAGE);
        assert!(body["authenticationKey"].is_string());
        let k = key_from(&c.authentication_key);
        assert_eq!(k.len(), 32);
        let t = token(&k, NOW + 3600);
        // Case-insensitive registration ID; the request body may repeat the EK or omit it.
        store
            .verify(SCOPE, "device-1", &ek(), Some(&ek()), &t, NOW + 5, SKEW)
            .unwrap();
        store
            .verify(SCOPE, REG, &ek(), None, &t, NOW + 10, SKEW)
            .unwrap();
        assert!(!format!("{c:?}").contains(&c.authentication_key));
        // The other TPM (different EK, same SRK) cannot open the challenge.
        assert!(
            tpms()[1]
                .activate(&STANDARD.decode(&c.authentication_key).unwrap())
                .is_err()
        );
    }

    #[test]
    fn refusals_are_specific() {
        let store = TpmChallenges::default();
        let c = store
            .issue(REG, &ek(), Some(&ek()), Some(&srk()), NOW)
            .unwrap();
        let k = key_from(&c.authentication_key);
        // Different EK: no challenge, and no verification either.
        let e = store
            .issue(REG, &ek(), Some(&other_ek()), Some(&srk()), NOW)
            .unwrap_err();
        assert!(matches!(e, TpmAttestationError::EndorsementKeyMismatch));
        assert_eq!(e.dps_error_code(), 401002);
        assert_eq!(e.grpc_code(), tonic::Code::Unauthenticated);
        let t = token(&k, NOW + 60);
        assert!(matches!(
            store.verify(SCOPE, REG, &ek(), Some(&other_ek()), &t, NOW, SKEW),
            Err(TpmAttestationError::EndorsementKeyMismatch)
        ));
        // Expired token; within the skew it is still accepted.
        let err = store
            .verify(SCOPE, REG, &ek(), None, &token(&k, NOW - 61), NOW, SKEW)
            .unwrap_err();
        assert!(matches!(err, TpmAttestationError::TokenExpired { .. }));
        assert_eq!(err.dps_error_code(), 401002);
        store
            .verify(SCOPE, REG, &ek(), None, &token(&k, NOW - 59), NOW, SKEW)
            .unwrap();
        // Wrong key.
        let wrong = token(&[7; 32], NOW + 60);
        assert!(matches!(
            store.verify(SCOPE, REG, &ek(), None, &wrong, NOW, SKEW),
            Err(TpmAttestationError::SignatureMismatch)
        ));
        // Challenge expired.
        let later = NOW + DEFAULT_CHALLENGE_TTL.as_secs() + 1;
        let t_later = token(&k, later + 60);
        assert!(matches!(
            store.verify(SCOPE, REG, &ek(), None, &t_later, later, SKEW),
            Err(TpmAttestationError::NoPendingChallenge)
        ));
        // The enrollment now holds another EK: the old challenge no longer counts.
        assert!(matches!(
            store.verify(SCOPE, REG, &other_ek(), None, &t, NOW, SKEW),
            Err(TpmAttestationError::NoPendingChallenge)
        ));
        // Another registration ID has no challenge; this one refuses its token's resource.
        let sr = sas::encode_sr(SCOPE, "device-2", sas::SrEncoding::Raw);
        let t2 = SasToken::parse(&sas::generate_token(&k, &sr, NOW + 60, None)).unwrap();
        assert!(matches!(
            store.verify(SCOPE, "device-2", &ek(), None, &t2, NOW, SKEW),
            Err(TpmAttestationError::NoPendingChallenge)
        ));
        assert!(matches!(
            store.verify(SCOPE, REG, &ek(), None, &t2, NOW, SKEW),
            Err(TpmAttestationError::WrongResource)
        ));
        let sr = sas::encode_sr(SCOPE, REG, sas::SrEncoding::Raw);
        let t3 = SasToken::parse(&sas::generate_token(&k, &sr, NOW + 60, Some("owner"))).unwrap();
        assert!(matches!(
            store.verify(SCOPE, REG, &ek(), None, &t3, NOW, SKEW),
            Err(TpmAttestationError::KeyNameNotAccepted)
        ));
    }

    #[test]
    fn bad_input_is_400_and_bad_enrollment_500() {
        let store = TpmChallenges::default();
        let e = store
            .issue(REG, &ek(), None, Some(&srk()), NOW)
            .unwrap_err();
        assert!(matches!(e, TpmAttestationError::MissingEndorsementKey));
        assert_eq!(e.dps_error_code(), 400004);
        let e = store.issue(REG, &ek(), Some(&ek()), None, NOW).unwrap_err();
        assert!(matches!(e, TpmAttestationError::MissingStorageRootKey));
        let e = store
            .issue(REG, &ek(), Some("%%%"), Some(&srk()), NOW)
            .unwrap_err();
        assert!(matches!(
            e,
            TpmAttestationError::InvalidBase64 {
                field: "tpm.endorsementKey"
            }
        ));
        assert_eq!(e.grpc_code(), tonic::Code::InvalidArgument);
        let e = store
            .issue(REG, &ek(), Some(&ek()), Some("AAA="), NOW)
            .unwrap_err();
        assert!(matches!(
            e,
            TpmAttestationError::InvalidPublic {
                field: "tpm.storageRootKey",
                ..
            }
        ));
        // A signing key cannot be the SRK.
        let PublicParameters::Rsa { modulus, .. } =
            tpms()[0].storage_root_key().parameters().clone()
        else {
            panic!("RSA SRK")
        };
        let signing = Public::new(
            alg::SHA256,
            attr::SIGN_ENCRYPT | attr::USER_WITH_AUTH,
            &[],
            PublicParameters::Rsa {
                symmetric: SymmetricDefinition::NULL,
                scheme: Scheme::NULL,
                key_bits: 2048,
                exponent: 0,
                modulus,
            },
        )
        .unwrap();
        let e = store
            .issue(REG, &ek(), Some(&ek()), Some(&b64(&signing)), NOW)
            .unwrap_err();
        assert!(matches!(e, TpmAttestationError::UnsupportedKey(_)), "{e}");
        assert_eq!(e.dps_error_code(), 400004);
        let e = store
            .issue(REG, "AAA=", Some(&ek()), Some(&srk()), NOW)
            .unwrap_err();
        assert!(matches!(e, TpmAttestationError::InvalidEnrolledKey(_)));
        assert_eq!(e.grpc_code(), tonic::Code::Internal);
        let e = parse_token("Bearer x").unwrap_err();
        assert_eq!(e.dps_error_code(), 400004);
        assert_eq!(e.reason(), "tpm_malformed_token");
        assert!(store.is_empty());
    }

    #[test]
    fn store_is_bounded() {
        let store = TpmChallenges::new(Duration::from_secs(100), 3);
        for i in 0..5u64 {
            store
                .issue(&format!("d{i}"), &ek(), Some(&ek()), Some(&srk()), NOW + i)
                .unwrap();
        }
        assert_eq!(store.len(), 3);
        // The earliest-expiring registrations were evicted.
        let ids: Vec<String> = store.lock().keys().cloned().collect();
        assert!(!ids.contains(&"d0".to_string()) && !ids.contains(&"d1".to_string()));
        // Expired entries are pruned before anything live is evicted.
        store
            .issue("late", &ek(), Some(&ek()), Some(&srk()), NOW + 1000)
            .unwrap();
        assert_eq!(store.len(), 1);
        // Several challenges per registration: the newest MAX_PER_REGISTRATION verify.
        let store = TpmChallenges::default();
        let keys: Vec<Vec<u8>> = (0..6)
            .map(|_| {
                let c = store
                    .issue(REG, &ek(), Some(&ek()), Some(&srk()), NOW)
                    .unwrap();
                key_from(&c.authentication_key)
            })
            .collect();
        assert_eq!(
            store.lock()[&REG.to_ascii_lowercase()].len(),
            MAX_PER_REGISTRATION
        );
        for (i, k) in keys.iter().enumerate() {
            let r = store.verify(SCOPE, REG, &ek(), None, &token(k, NOW + 60), NOW, SKEW);
            assert_eq!(r.is_ok(), i >= 6 - MAX_PER_REGISTRATION, "challenge {i}");
        }
        store.forget(REG);
        assert!(store.is_empty());
    }

    #[test]
    fn assignment_blob_carries_the_hub_key() {
        let a = assignment_activation(&ek(), &srk()).unwrap();
        assert_eq!(key_from(&a.authentication_key), a.device_key.as_bytes());
        assert_eq!(
            STANDARD.decode(a.device_key_base64()).unwrap(),
            a.device_key.as_bytes()
        );
        assert!(!format!("{a:?}").contains(&a.device_key_base64()));
        let b = assignment_activation_with_key(&ek(), &srk(), &[9; 32]).unwrap();
        assert_eq!(key_from(&b.authentication_key), vec![9; 32]);
        assert!(assignment_activation_with_key(&ek(), &srk(), &[]).is_err());
    }
}
