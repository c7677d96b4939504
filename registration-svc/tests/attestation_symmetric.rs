//! Symmetric-key attestation: tokens as each device SDK writes them (built here by python3, an
//! implementation independent of ours, and by our own builders), checked against individual and
//! group enrollments.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kdps_proto::sas::{SasToken, SrEncoding, encode_sr, generate_token};
use kdps_registration::attestation::symmetric::{
    KeyPair, check_claims, find_group, parse_token, verify_group, verify_individual,
};
use kdps_registration::attestation::{AttestationError, MatchedCredential};

const SCOPE: &str = "0ne00000A11";
const ID: &str = "sensor-42";
const NOW: u64 = 1_800_000_000;
const SKEW: Duration = Duration::from_secs(300);

fn individual() -> KeyPair {
    KeyPair::from_base64(&BASE64.encode([0x11; 32]), Some(&BASE64.encode([0x22; 64]))).unwrap()
}

/// The DPS documentation's group key, plus a secondary.
fn group_keys() -> KeyPair {
    KeyPair::from_base64(
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
        Some(&BASE64.encode([0x33; 16])),
    )
    .unwrap()
}

/// A token as the Python SDK builds it (`quote(uri, safe="")`, no skn), computed by python3.
fn python_token(key: &[u8], scope: &str, id: &str, se: u64) -> String {
    const PROGRAM: &str = r#"
import base64, hashlib, hmac, sys
from urllib.parse import quote
key_b64, scope, reg_id, se = sys.argv[1:]
sr = quote(scope + "/registrations/" + reg_id, safe="")
sig = base64.b64encode(hmac.new(base64.b64decode(key_b64), (sr + "\n" + se).encode(), hashlib.sha256).digest()).decode()
print("SharedAccessSignature sr={}&sig={}&se={}".format(sr, quote(sig, safe=""), se))
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            PROGRAM,
            &BASE64.encode(key),
            scope,
            id,
            &se.to_string(),
        ])
        .output()
        .expect("python3 is needed by this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The same group-key derivation, computed by python3.
fn python_derive(group_key: &[u8], id: &str) -> Vec<u8> {
    const PROGRAM: &str = r#"
import base64, hashlib, hmac, sys
print(base64.b64encode(hmac.new(base64.b64decode(sys.argv[1]), sys.argv[2].encode(), hashlib.sha256).digest()).decode())
"#;
    let out = Command::new("python3")
        .args(["-c", PROGRAM, &BASE64.encode(group_key), id])
        .output()
        .expect("python3 is needed by this test");
    assert!(out.status.success());
    BASE64
        .decode(String::from_utf8(out.stdout).unwrap().trim())
        .unwrap()
}

/// Tokens in every client form for `key`.
fn all_forms(key: &[u8], se: u64) -> Vec<SasToken> {
    let mut tokens: Vec<String> = SrEncoding::ALL
        .iter()
        .map(|enc| generate_token(key, &encode_sr(SCOPE, ID, *enc), se, Some("registration")))
        .collect();
    tokens.push(python_token(key, SCOPE, ID, se));
    tokens
        .iter()
        .map(|t| parse_token(Some(t)).unwrap())
        .collect()
}

#[test]
fn individual_primary_and_secondary() {
    let keys = individual();
    for token in all_forms(&keys.primary, NOW + 3600) {
        assert_eq!(
            verify_individual(&token, SCOPE, ID, &keys, NOW, SKEW).unwrap(),
            MatchedCredential::Primary
        );
    }
    for token in all_forms(keys.secondary.as_ref().unwrap(), NOW + 3600) {
        assert_eq!(
            verify_individual(&token, SCOPE, ID, &keys, NOW, SKEW).unwrap(),
            MatchedCredential::Secondary
        );
    }
    // Scope and ID compare case-insensitively.
    let token = &all_forms(&keys.primary, NOW)[0];
    assert!(
        verify_individual(
            token,
            &SCOPE.to_lowercase(),
            &ID.to_uppercase(),
            &keys,
            NOW,
            SKEW
        )
        .is_ok()
    );
}

#[test]
fn group_derived_keys() {
    let group = group_keys();
    let derived = group.derive_for(ID);
    assert_eq!(derived.primary, python_derive(&group.primary, ID));
    assert_eq!(
        derived.secondary.clone().unwrap(),
        python_derive(group.secondary.as_ref().unwrap(), ID)
    );

    for token in all_forms(&derived.primary, NOW + 60) {
        assert_eq!(
            verify_group(&token, SCOPE, ID, &group, NOW, SKEW).unwrap(),
            MatchedCredential::Primary
        );
        // A group token is not an individual token for the group key.
        assert!(matches!(
            verify_individual(&token, SCOPE, ID, &group, NOW, SKEW),
            Err(AttestationError::SignatureMismatch)
        ));
    }
    for token in all_forms(derived.secondary.as_ref().unwrap(), NOW + 60) {
        assert_eq!(
            verify_group(&token, SCOPE, ID, &group, NOW, SKEW).unwrap(),
            MatchedCredential::Secondary
        );
    }
    // Signing with the group key itself (a common device mistake) fails.
    for token in all_forms(&group.primary, NOW + 60) {
        assert!(matches!(
            verify_group(&token, SCOPE, ID, &group, NOW, SKEW),
            Err(AttestationError::SignatureMismatch)
        ));
    }
}

#[test]
fn find_group_tries_every_group() {
    let a = KeyPair::new(vec![1; 32], None);
    let b = KeyPair::new(vec![2; 32], Some(vec![3; 32]));
    let groups = [("a", &a), ("b", &b)];
    let token = parse_token(Some(&python_token(
        &b.derive_for(ID).secondary.unwrap(),
        SCOPE,
        ID,
        NOW,
    )))
    .unwrap();
    check_claims(&token, SCOPE, ID, NOW, SKEW).unwrap();
    assert_eq!(
        find_group(&token, ID, groups),
        Some(("b", MatchedCredential::Secondary))
    );
    let stranger = parse_token(Some(&python_token(&[9; 32], SCOPE, ID, NOW))).unwrap();
    assert_eq!(find_group(&stranger, ID, groups), None);
}

#[test]
fn expiry_and_skew() {
    let keys = individual();
    for token in all_forms(&keys.primary, NOW - 200) {
        // Within the skew allowance.
        assert!(verify_individual(&token, SCOPE, ID, &keys, NOW, SKEW).is_ok());
        // Without it.
        let err = verify_individual(&token, SCOPE, ID, &keys, NOW, Duration::ZERO).unwrap_err();
        assert!(
            matches!(err, AttestationError::TokenExpired { expiry, now: NOW, skew_secs: 0 } if expiry == NOW - 200),
            "{err}"
        );
        assert_eq!(err.dps_error_code(), 401002);
        assert_eq!(err.grpc_code(), tonic::Code::Unauthenticated);
    }
    for token in all_forms(&keys.primary, NOW - 301) {
        assert!(matches!(
            verify_individual(&token, SCOPE, ID, &keys, NOW, SKEW),
            Err(AttestationError::TokenExpired { .. })
        ));
    }
}

#[test]
fn wrong_scope_or_registration_id() {
    let keys = individual();
    for (scope, id) in [
        ("0ne00000A12", ID),
        (SCOPE, "sensor-43"),
        (SCOPE, "sensor-4"),
    ] {
        let token = parse_token(Some(&python_token(&keys.primary, scope, id, NOW))).unwrap();
        assert!(
            token.verify_with_key(&keys.primary),
            "signature itself is fine"
        );
        let err = verify_individual(&token, SCOPE, ID, &keys, NOW, SKEW).unwrap_err();
        assert!(matches!(err, AttestationError::WrongResource), "{err}");
    }
}

#[test]
fn key_name_rules() {
    let keys = individual();
    let sr = encode_sr(SCOPE, ID, SrEncoding::UrlEncodedUpper);
    let none = parse_token(Some(&generate_token(&keys.primary, &sr, NOW, None))).unwrap();
    assert!(verify_individual(&none, SCOPE, ID, &keys, NOW, SKEW).is_ok());
    for skn in ["iothubowner", "Registration", "provisioningserviceowner"] {
        let token = parse_token(Some(&generate_token(&keys.primary, &sr, NOW, Some(skn)))).unwrap();
        let err = verify_individual(&token, SCOPE, ID, &keys, NOW, SKEW).unwrap_err();
        assert!(
            matches!(err, AttestationError::KeyNameNotAccepted),
            "{skn}: {err}"
        );
    }
}

#[test]
fn tampered_signature() {
    let keys = individual();
    let sr = encode_sr(SCOPE, ID, SrEncoding::UrlEncodedLower);
    let token = generate_token(&keys.primary, &sr, NOW, Some("registration"));
    let parsed = parse_token(Some(&token)).unwrap();
    let mut sig = parsed.signature().to_vec();
    sig[0] ^= 0x01;
    let tampered = kdps_proto::sas::format_token(&sr, &sig, NOW, Some("registration"));
    let err = verify_individual(
        &parse_token(Some(&tampered)).unwrap(),
        SCOPE,
        ID,
        &keys,
        NOW,
        SKEW,
    )
    .unwrap_err();
    assert!(matches!(err, AttestationError::SignatureMismatch), "{err}");

    // Re-encoding sr differently after signing breaks the signature (it is over sr as sent).
    let reencoded = token.replace(&sr, &encode_sr(SCOPE, ID, SrEncoding::UrlEncodedUpper));
    let err = verify_individual(
        &parse_token(Some(&reencoded)).unwrap(),
        SCOPE,
        ID,
        &keys,
        NOW,
        SKEW,
    )
    .unwrap_err();
    assert!(matches!(err, AttestationError::SignatureMismatch), "{err}");

    // A later expiry with the old signature.
    let extended = token.replace(&format!("se={NOW}"), &format!("se={}", NOW + 86_400));
    let err = verify_individual(
        &parse_token(Some(&extended)).unwrap(),
        SCOPE,
        ID,
        &keys,
        NOW,
        SKEW,
    )
    .unwrap_err();
    assert!(matches!(err, AttestationError::SignatureMismatch), "{err}");
}

#[test]
fn missing_and_malformed_tokens() {
    assert!(matches!(
        parse_token(None),
        Err(AttestationError::MissingToken)
    ));
    let err = parse_token(Some("SharedAccessSignature sr=a&se=1")).unwrap_err();
    assert!(matches!(err, AttestationError::MalformedToken(_)), "{err}");
    assert_eq!(err.dps_error_code(), 400004);
    assert_eq!(err.grpc_code(), tonic::Code::InvalidArgument);
    // Messages never echo the token.
    let secretish = "SharedAccessSignature sr=x&sig=c2VjcmV0&se=1";
    let err = parse_token(Some(secretish)).unwrap_err();
    assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
}

#[test]
fn unusable_enrollment_keys() {
    let empty = KeyPair::new(Vec::new(), None);
    let token = parse_token(Some(&python_token(&[], SCOPE, ID, NOW))).unwrap();
    assert!(matches!(
        verify_individual(&token, SCOPE, ID, &empty, NOW, SKEW),
        Err(AttestationError::InvalidEnrollmentKey)
    ));
    assert!(matches!(
        verify_group(&token, SCOPE, ID, &empty, NOW, SKEW),
        Err(AttestationError::InvalidEnrollmentKey)
    ));
    assert!(
        !format!("{:?}", individual()).contains("17"),
        "Debug must not print key bytes"
    );
}
