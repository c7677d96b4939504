//! Property tests: the token parser and key decoder never panic, and build → parse round-trips.
#![allow(clippy::unwrap_used)]

use kdps_proto::keys::{decode_key, derive_device_key, encode_key};
use kdps_proto::sas::{SasToken, SrEncoding, encode_sr, generate_token};
use proptest::prelude::*;

fn encoding() -> impl Strategy<Value = SrEncoding> {
    prop::sample::select(SrEncoding::ALL.to_vec())
}

/// DPS registration IDs: alphanumerics and `- . _ :`, last character alphanumeric or `-`.
fn registration_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{0,127}[A-Za-z0-9-]"
}

/// Token-shaped strings: the prefix and a random mix of field names, separators and escapes.
fn token_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("sr=".to_owned()),
        Just("sig=".to_owned()),
        Just("se=".to_owned()),
        Just("skn=".to_owned()),
        Just("&".to_owned()),
        Just("=".to_owned()),
        Just("%".to_owned()),
        Just("%2F".to_owned()),
        Just("%FF".to_owned()),
        "[A-Za-z0-9+/=]{0,48}",
        "\\PC{0,8}",
    ];
    prop::collection::vec(piece, 0..16)
        .prop_map(|pieces| format!("SharedAccessSignature {}", pieces.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics_on_any_string(s in "\\PC*") {
        let _ = SasToken::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_token_like_strings(s in token_like()) {
        if let Ok(token) = SasToken::parse(&s) {
            // Whatever parsed must be self-consistent.
            prop_assert_eq!(token.signature().len(), 32);
            let _ = token.verify_with_key(b"k");
            let _ = token.names("scope", "id");
        }
    }

    #[test]
    fn decode_key_never_panics(s in "\\PC*") {
        if let Ok(key) = decode_key(&s) {
            prop_assert!((16..=64).contains(&key.len()));
        }
    }

    #[test]
    fn decode_key_round_trip(key in prop::collection::vec(any::<u8>(), 0..80)) {
        let decoded = decode_key(&encode_key(&key));
        if (16..=64).contains(&key.len()) {
            prop_assert_eq!(decoded.unwrap(), key);
        } else {
            prop_assert!(decoded.is_err());
        }
    }

    #[test]
    fn build_parse_round_trip(
        scope in "0ne[0-9A-F]{8}",
        id in registration_id(),
        key in prop::collection::vec(any::<u8>(), 16..=64),
        se in any::<u64>(),
        enc in encoding(),
        skn in prop::option::of(Just("registration")),
        group in any::<bool>(),
    ) {
        let key = if group { derive_device_key(&key, &id).to_vec() } else { key };
        let sr = encode_sr(&scope, &id, enc);
        let token = generate_token(&key, &sr, se, skn);
        let parsed = SasToken::parse(&token).unwrap();
        prop_assert_eq!(parsed.sr_as_transmitted(), sr.as_str());
        prop_assert_eq!(parsed.expiry(), se);
        prop_assert_eq!(parsed.key_name(), skn);
        prop_assert!(parsed.verify_with_key(&key));
        prop_assert!(parsed.names(&scope, &id));
        prop_assert!(parsed.names(&scope.to_lowercase(), &id.to_uppercase()));
        let longer = format!("{id}x");
        prop_assert!(!parsed.names(&scope, &longer));
        let mut other = key.clone();
        other[0] ^= 1;
        prop_assert!(!parsed.verify_with_key(&other));
    }

    #[test]
    fn tampering_with_the_signed_fields_breaks_verification(
        id in registration_id(),
        key in prop::collection::vec(any::<u8>(), 16..=64),
        se in 1u64..u64::MAX,
        enc in encoding(),
    ) {
        let sr = encode_sr("0ne00000A11", &id, enc);
        let token = generate_token(&key, &sr, se, Some("registration"));
        let later = token.replace(&format!("se={se}"), &format!("se={}", se - 1));
        prop_assert!(!SasToken::parse(&later).unwrap().verify_with_key(&key));
        let other_sr = encode_sr("0ne00000A12", &id, enc);
        let moved = token.replace(&sr, &other_sr);
        prop_assert!(!SasToken::parse(&moved).unwrap().verify_with_key(&key));
    }
}
