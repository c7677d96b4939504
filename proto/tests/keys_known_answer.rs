//! Group-key derivation checked against the DPS documentation's worked example and against
//! independent HMAC implementations (openssl CLI, python3 `hmac`).
#![allow(clippy::unwrap_used)]

mod sas_support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kdps_proto::keys::{KeyError, decode_key, derive_device_key, derive_device_key_b64};
use sas_support::{openssl_hmac_sha256, python};

const DOCS_GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const DOCS_ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
const DOCS_DERIVED: &str = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=";

/// The DPS docs' `az iot dps enrollment-group compute-device-key` / PowerShell / Python sample.
const PYTHON_DERIVE: &str = r#"
import base64, hashlib, hmac, sys
key_b64, reg_id = sys.argv[1:]
print(base64.b64encode(hmac.new(base64.b64decode(key_b64), reg_id.encode("utf-8"), hashlib.sha256).digest()).decode())
"#;

#[test]
fn documented_example() {
    assert_eq!(
        derive_device_key_b64(DOCS_GROUP_KEY, DOCS_ID).unwrap(),
        DOCS_DERIVED
    );
    let group = decode_key(DOCS_GROUP_KEY).unwrap();
    assert_eq!(group.len(), 64);
    assert_eq!(
        BASE64.encode(openssl_hmac_sha256(&group, DOCS_ID.as_bytes())),
        DOCS_DERIVED
    );
    assert_eq!(
        python(PYTHON_DERIVE, &[DOCS_GROUP_KEY, DOCS_ID]),
        DOCS_DERIVED
    );
}

#[test]
fn derivation_matches_openssl_and_python() {
    let keys = [vec![0u8; 16], (0u8..32).collect::<Vec<_>>(), vec![0xff; 64]];
    for key in keys {
        let key_b64 = BASE64.encode(&key);
        for id in ["a", "Device:01.a_b-C", &"z".repeat(128)] {
            let ours = derive_device_key(&key, id);
            assert_eq!(
                ours.as_slice(),
                openssl_hmac_sha256(&key, id.as_bytes()).as_slice()
            );
            assert_eq!(BASE64.encode(ours), python(PYTHON_DERIVE, &[&key_b64, id]));
            assert_eq!(
                derive_device_key_b64(&key_b64, id).unwrap(),
                BASE64.encode(ours)
            );
        }
    }
}

#[test]
fn derivation_is_case_sensitive_in_the_id() {
    // DPS compares IDs case-insensitively, but the device derives from the exact bytes it uses.
    let key = decode_key(DOCS_GROUP_KEY).unwrap();
    assert_ne!(
        derive_device_key(&key, "device-a"),
        derive_device_key(&key, "DEVICE-A")
    );
}

#[test]
fn bad_group_keys() {
    assert_eq!(
        derive_device_key_b64("%%%", DOCS_ID),
        Err(KeyError::InvalidBase64)
    );
    assert_eq!(
        derive_device_key_b64(&BASE64.encode([1u8; 15]), DOCS_ID),
        Err(KeyError::InvalidLength(15))
    );
}
