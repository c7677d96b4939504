//! Device-side SAS signing for symmetric-key attestation (dps-protocol §2).
//!
//! The device signs a token for `{idScope}/registrations/{registrationId}` with its key — for
//! enrollment groups the key derived from the group key ([`derive_device_key`]). The resource is
//! URL-encoded with lower-case escapes and `skn=registration`, exactly like azure-iot-sdk-c, so the
//! token is also accepted by Azure DPS itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use kdps_proto::keys::{
    KeyError, decode_key, derive_device_key, derive_device_key_b64, encode_key,
};
use kdps_proto::sas::{REGISTRATION_KEY_NAME, SrEncoding, encode_sr, generate_token};

/// Token lifetime the Azure SDKs use by default (Node and Python: one hour).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Seconds since the Unix epoch at `time` (0 for times before the epoch).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A registration SAS token for `registration_id` in `id_scope`, signed with `key` (raw bytes),
/// valid for `ttl` from `now`.
///
/// `SharedAccessSignature sr=<scope>%2fregistrations%2f<id>&sig=<sig>&se=<now + ttl>&skn=registration`.
pub fn registration_token(
    id_scope: &str,
    registration_id: &str,
    key: &[u8],
    ttl: Duration,
    now: SystemTime,
) -> String {
    let se = unix_seconds(now).saturating_add(ttl.as_secs());
    let sr = encode_sr(id_scope, registration_id, SrEncoding::UrlEncodedLower);
    generate_token(key, &sr, se, Some(REGISTRATION_KEY_NAME))
}

/// [`registration_token`] for a member of a symmetric-key enrollment group: signs with the key
/// derived from `group_key` for `registration_id`.
pub fn group_registration_token(
    id_scope: &str,
    registration_id: &str,
    group_key: &[u8],
    ttl: Duration,
    now: SystemTime,
) -> String {
    let key = derive_device_key(group_key, registration_id);
    registration_token(id_scope, registration_id, &key, ttl, now)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kdps_proto::sas::SasToken;

    const SCOPE: &str = "0ne00000A11";
    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn token_shape_matches_the_c_sdk() {
        let key = [7u8; 32];
        let token = registration_token(SCOPE, "dev:1", &key, DEFAULT_TTL, at(NOW));
        assert!(
            token
                .starts_with("SharedAccessSignature sr=0ne00000A11%2fregistrations%2fdev%3a1&sig="),
            "{token}"
        );
        assert!(
            token.ends_with(&format!("&se={}&skn=registration", NOW + 3600)),
            "{token}"
        );
        let parsed = SasToken::parse(&token).unwrap();
        assert!(parsed.verify_with_key(&key));
        assert!(parsed.names(SCOPE, "dev:1"));
        assert_eq!(parsed.expiry(), NOW + 3600);
    }

    /// The signature checked against python3's hmac over the exact string-to-sign.
    #[test]
    fn signature_matches_python() {
        let key = [9u8; 48];
        let token = registration_token(SCOPE, "sensor-1", &key, Duration::from_secs(60), at(NOW));
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import base64,hashlib,hmac,sys\n\
                 print(base64.b64encode(hmac.new(bytes([9]*48), sys.argv[1].encode(), hashlib.sha256).digest()).decode())",
                &format!("0ne00000A11%2fregistrations%2fsensor-1\n{}", NOW + 60),
            ])
            .output()
            .expect("python3 is needed by this test");
        assert!(out.status.success());
        let expected = String::from_utf8(out.stdout).unwrap();
        let parsed = SasToken::parse(&token).unwrap();
        assert_eq!(
            encode_key(parsed.signature()),
            expected.trim(),
            "signature differs from python's"
        );
    }

    #[test]
    fn group_token_uses_the_derived_key() {
        let group = decode_key(
            "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
        )
        .unwrap();
        let id = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
        let token = group_registration_token(SCOPE, id, &group, DEFAULT_TTL, at(NOW));
        let parsed = SasToken::parse(&token).unwrap();
        let derived = decode_key("Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=").unwrap();
        assert!(parsed.verify_with_key(&derived));
        assert!(!parsed.verify_with_key(&group));
    }

    #[test]
    fn expiry_saturates_and_pre_epoch_is_zero() {
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), 0);
        let token = registration_token(SCOPE, "d", &[1; 16], Duration::MAX, at(NOW));
        assert_eq!(SasToken::parse(&token).unwrap().expiry(), u64::MAX);
    }
}
