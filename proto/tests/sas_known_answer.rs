//! SAS tokens built by independent implementations of each device SDK's algorithm (python3, node,
//! openssl) must parse and verify with [`kdps_proto::sas`], and our builders must reproduce them.
//!
//! The scripts restate each SDK's token construction (dps-protocol §2 table) in that SDK's own
//! language and standard library; see the comment above each one for the source it follows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sas_support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kdps_proto::keys::derive_device_key;
use kdps_proto::sas::{
    SasToken, SrEncoding, encode_sr, format_token, generate_token, resource_uri, sign,
    string_to_sign,
};
use sas_support::{node, openssl_hmac_sha256, python};

const SCOPE: &str = "0ne0045B3C6";
/// The group key from the DPS documentation's worked example (64 bytes).
const GROUP_KEY_B64: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const SE: u64 = 1_767_225_600;

/// Registration IDs exercising the whole DPS alphabet (`- . _ :`, mixed case) and the docs' example.
const IDS: &[&str] = &[
    "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
    "Device:01.a_b-C",
    "x",
];

fn keys() -> Vec<(String, Vec<u8>)> {
    let group = BASE64.decode(GROUP_KEY_B64).unwrap();
    vec![
        (GROUP_KEY_B64.to_owned(), group),
        // A 32-byte individual key and a 16-byte minimum-length key.
        (BASE64.encode([0x5a; 32]), vec![0x5a; 32]),
        (
            BASE64.encode(*b"0123456789abcdef"),
            b"0123456789abcdef".to_vec(),
        ),
    ]
}

/// Checks a token an SDK would send: it parses, names the right resource, verifies under the right
/// key only, and its signature equals openssl's HMAC over the `sr` as transmitted.
fn check_foreign_token(token: &str, key: &[u8], id: &str, skn: Option<&str>) -> SasToken {
    let parsed = SasToken::parse(token).unwrap_or_else(|e| panic!("{token}: {e}"));
    assert!(parsed.verify_with_key(key), "{token}");
    assert!(
        !parsed.verify_with_key(b"a different key of 32 bytes....."),
        "{token}"
    );
    assert!(parsed.names(SCOPE, id), "{token}");
    assert!(
        parsed.names(&SCOPE.to_lowercase(), &id.to_uppercase()),
        "{token}"
    );
    assert!(!parsed.names(SCOPE, &format!("{id}0")), "{token}");
    assert_eq!(parsed.decoded_sr().unwrap(), resource_uri(SCOPE, id));
    assert_eq!(parsed.expiry(), SE);
    assert_eq!(parsed.key_name(), skn);
    let expected = openssl_hmac_sha256(
        key,
        string_to_sign(parsed.sr_as_transmitted(), SE).as_bytes(),
    );
    assert_eq!(parsed.signature(), expected.as_slice(), "{token}");
    assert_eq!(
        sign(key, parsed.sr_as_transmitted(), SE).as_slice(),
        expected
    );
    parsed
}

/// Node (azure-iot-common `SharedAccessSignature.create`, used by the symmetric-key security
/// client): `sr` raw, signature over the raw `sr`, fields in the order sr, sig, skn, se,
/// `encodeUriComponentStrict` on sig and skn.
const NODE_SYMMETRIC: &str = r#"
const crypto = require('crypto');
const [keyB64, scope, id, se] = process.argv.slice(1);
const strict = (s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
const sr = scope + '/registrations/' + id;
const sig = crypto.createHmac('sha256', Buffer.from(keyB64, 'base64')).update(sr + '\n' + se).digest('base64');
console.log('SharedAccessSignature sr=' + sr + '&sig=' + strict(sig) + '&skn=' + strict('registration') + '&se=' + se);
"#;

/// Node TPM registration step 2: the same, with `sr = encodeURIComponent(uri)`.
const NODE_TPM: &str = r#"
const crypto = require('crypto');
const [keyB64, scope, id, se] = process.argv.slice(1);
const strict = (s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
const sr = encodeURIComponent(scope + '/registrations/' + id);
const sig = crypto.createHmac('sha256', Buffer.from(keyB64, 'base64')).update(sr + '\n' + se).digest('base64');
console.log('SharedAccessSignature sr=' + sr + '&sig=' + strict(sig) + '&skn=' + strict('registration') + '&se=' + se);
"#;

/// Python SDK (`azure.iot.device.common.auth.sastoken`): `quote(uri, safe="")`, signature over the
/// quoted `sr`, `quote(sig, safe="")`, no `skn` for provisioning.
const PYTHON_SDK: &str = r#"
import base64, hashlib, hmac, sys
from urllib.parse import quote
key_b64, scope, reg_id, se = sys.argv[1:]
sr = quote(scope + "/registrations/" + reg_id, safe="")
sig = base64.b64encode(hmac.new(base64.b64decode(key_b64), (sr + "\n" + se).encode("utf-8"), hashlib.sha256).digest()).decode()
print("SharedAccessSignature sr={}&sig={}&se={}".format(sr, quote(sig, safe=""), se))
"#;

/// azure-iot-sdk-c (`URL_EncodeString` from azure-c-shared-utility): alphanumerics and `!()*-._`
/// kept, everything else as lower-case `%xx`; applied to the resource and to the base64 signature;
/// `skn=registration` last.
const C_SDK: &str = r#"
import base64, hashlib, hmac, sys
key_b64, scope, reg_id, se = sys.argv[1:]
def url_encode(s):
    keep = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!()*-._")
    return "".join(c if c in keep else "%{:02x}".format(ord(c)) for c in s)
sr = url_encode(scope + "/registrations/" + reg_id)
sig = base64.b64encode(hmac.new(base64.b64decode(key_b64), (sr + "\n" + se).encode(), hashlib.sha256).digest()).decode()
print("SharedAccessSignature sr={}&sig={}&se={}&skn=registration".format(sr, url_encode(sig), se))
"#;

/// azure-sdk-for-c (`az_iot_provisioning_client_sas_get_signature` / `_get_password`): scope and
/// ID each URL-encoded, joined by a literal `%2fregistrations%2f`; `skn` optional (samples pass
/// `registration`).
const AZURE_SDK_FOR_C: &str = r#"
import base64, hashlib, hmac, sys
from urllib.parse import quote
key_b64, scope, reg_id, se = sys.argv[1:]
sr = quote(scope, safe="") + "%2fregistrations%2f" + quote(reg_id, safe="")
sig = base64.b64encode(hmac.new(base64.b64decode(key_b64), (sr + "\n" + se).encode(), hashlib.sha256).digest()).decode()
print("SharedAccessSignature sr={}&sig={}&se={}&skn=registration".format(sr, quote(sig, safe=""), se))
"#;

/// The Python sample in the DPS HTTPS symmetric-key article: signs over `quote_plus(uri)` and
/// builds the token with `urlencode()` of `{sr: uri, sig, se, skn}`.
const DOCS_PYTHON_SAMPLE: &str = r#"
import sys
from base64 import b64encode, b64decode
from hashlib import sha256
from hmac import HMAC
from urllib import parse
key_b64, scope, reg_id, se = sys.argv[1:]
uri = scope + "/registrations/" + reg_id
sign_key = "%s\n%d" % (parse.quote_plus(uri), int(se))
signature = b64encode(HMAC(b64decode(key_b64), sign_key.encode("utf-8"), sha256).digest())
rawtoken = {"sr": uri, "sig": signature, "se": str(int(se)), "skn": "registration"}
print("SharedAccessSignature " + parse.urlencode(rawtoken))
"#;

fn for_each_case(mut f: impl FnMut(&str, &[u8], &str)) {
    for (key_b64, key) in keys() {
        for id in IDS {
            f(&key_b64, &key, id);
        }
    }
}

#[test]
fn node_symmetric_key_tokens() {
    for_each_case(|key_b64, key, id| {
        let token = node(NODE_SYMMETRIC, &[key_b64, SCOPE, id, &SE.to_string()]);
        let parsed = check_foreign_token(&token, key, id, Some("registration"));
        assert_eq!(
            parsed.sr_as_transmitted(),
            encode_sr(SCOPE, id, SrEncoding::Raw)
        );
    });
}

#[test]
fn node_tpm_tokens() {
    for_each_case(|key_b64, key, id| {
        let token = node(NODE_TPM, &[key_b64, SCOPE, id, &SE.to_string()]);
        let parsed = check_foreign_token(&token, key, id, Some("registration"));
        assert!(parsed.sr_as_transmitted().contains("%2F"));
        assert_eq!(
            parsed.sr_as_transmitted(),
            encode_sr(SCOPE, id, SrEncoding::UrlEncodedUpper)
        );
    });
}

#[test]
fn python_sdk_tokens() {
    for_each_case(|key_b64, key, id| {
        let token = python(PYTHON_SDK, &[key_b64, SCOPE, id, &SE.to_string()]);
        check_foreign_token(&token, key, id, None);
        // Same field order and encoding as ours: the whole token must match byte for byte.
        let sr = encode_sr(SCOPE, id, SrEncoding::UrlEncodedUpper);
        assert_eq!(generate_token(key, &sr, SE, None), token);
    });
}

#[test]
fn azure_iot_sdk_c_tokens() {
    for_each_case(|key_b64, key, id| {
        let token = python(C_SDK, &[key_b64, SCOPE, id, &SE.to_string()]);
        let parsed = check_foreign_token(&token, key, id, Some("registration"));
        assert!(parsed.sr_as_transmitted().contains("%2f"));
        assert_eq!(
            parsed.sr_as_transmitted(),
            encode_sr(SCOPE, id, SrEncoding::UrlEncodedLower)
        );
    });
}

#[test]
fn azure_sdk_for_c_tokens() {
    for_each_case(|key_b64, key, id| {
        let token = python(AZURE_SDK_FOR_C, &[key_b64, SCOPE, id, &SE.to_string()]);
        check_foreign_token(&token, key, id, Some("registration"));
        let sr = encode_sr(SCOPE, id, SrEncoding::AzureSdkForC);
        assert_eq!(generate_token(key, &sr, SE, Some("registration")), token);
    });
}

#[test]
fn docs_python_sample_tokens() {
    for_each_case(|key_b64, key, id| {
        let token = python(DOCS_PYTHON_SAMPLE, &[key_b64, SCOPE, id, &SE.to_string()]);
        check_foreign_token(&token, key, id, Some("registration"));
        let sr = encode_sr(SCOPE, id, SrEncoding::UrlEncodedUpper);
        assert_eq!(generate_token(key, &sr, SE, Some("registration")), token);
    });
}

/// Group enrollment: the device signs with the key derived from the group key; the derivation is
/// checked against openssl and the token against python's HMAC.
#[test]
fn group_derived_key_tokens() {
    let group = BASE64.decode(GROUP_KEY_B64).unwrap();
    for id in IDS {
        let derived = derive_device_key(&group, id);
        assert_eq!(
            derived.as_slice(),
            openssl_hmac_sha256(&group, id.as_bytes()).as_slice()
        );
        let token = python(
            PYTHON_SDK,
            &[&BASE64.encode(derived), SCOPE, id, &SE.to_string()],
        );
        let parsed = check_foreign_token(&token, &derived, id, None);
        assert!(
            !parsed.verify_with_key(&group),
            "the group key itself must not verify"
        );
    }
}

/// Every builder form signed by us verifies under openssl's HMAC of the transmitted `sr`.
#[test]
fn our_tokens_match_openssl() {
    for (_, key) in keys() {
        for id in IDS {
            for enc in SrEncoding::ALL {
                let sr = encode_sr(SCOPE, id, enc);
                let expected = openssl_hmac_sha256(&key, format!("{sr}\n{SE}").as_bytes());
                assert_eq!(sign(&key, &sr, SE).as_slice(), expected.as_slice());
                let token = format_token(&sr, &expected, SE, Some("registration"));
                assert_eq!(token, generate_token(&key, &sr, SE, Some("registration")));
                check_foreign_token(&token, &key, id, Some("registration"));
            }
        }
    }
}
