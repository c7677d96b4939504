//! Deterministic Kubernetes object names and labels for registration IDs and device IDs.
//!
//! Registration IDs and device IDs allow characters (`_`, `:`, upper case, a trailing `-`) that
//! object names do not. An ID that is already a valid object name is used as it is; any other
//! ID gets a readable, sanitised prefix plus a hash of the ID, so every replica derives the same
//! name without coordination. The real ID is always kept in the object's spec (which callers
//! must compare, since two IDs could in theory map to one name) and in a label: the ID itself
//! when it is a valid label value, else a hash label.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::v1alpha1::{
    LABEL_DEVICE_ID, LABEL_DEVICE_ID_HASH, LABEL_REGISTRATION_ID, LABEL_REGISTRATION_ID_HASH,
};

/// Longest readable prefix kept in a hashed name.
const PREFIX_LEN: usize = 40;
/// Hex digits of SHA-256 in a hashed object name (64 bits).
const NAME_HASH_LEN: usize = 16;
/// Hex digits of SHA-256 in a hash label value (128 bits).
const LABEL_HASH_LEN: usize = 32;

/// The canonical form of a registration ID: DPS compares registration IDs case-insensitively,
/// so kdps stores and compares them lower-cased.
pub fn canonical_registration_id(registration_id: &str) -> String {
    registration_id.to_ascii_lowercase()
}

/// True for a valid DNS-1123 subdomain (the rule for most object names): at most 253
/// characters, dot-separated labels of lower-case alphanumerics and `-`, each starting and
/// ending with an alphanumeric.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label_body)
}

/// True for a valid DNS-1123 label (namespace names, region names): at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_body(s)
}

fn is_label_body(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            is_lower_alnum(*first)
                && is_lower_alnum(*last)
                && bytes.iter().all(|b| is_lower_alnum(*b) || *b == b'-')
        }
        _ => false,
    }
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// True for a valid label value: empty, or at most 63 characters of alphanumerics, `-`, `_`,
/// `.`, starting and ending with an alphanumeric.
pub fn is_label_value(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (None, _) | (_, None) => true,
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
    }
}

fn sha256_hex(input: &str, len: usize) -> String {
    let digest = hex::encode(Sha256::digest(input.as_bytes()));
    digest.chars().take(len).collect()
}

/// Object name for `id` (hashed exactly as given): `id` itself when valid, else a sanitised
/// prefix and a hash.
fn object_name(id: &str) -> String {
    if is_dns1123_subdomain(id) {
        return id.to_owned();
    }
    let mut prefix = String::with_capacity(PREFIX_LEN);
    for c in id.chars() {
        if prefix.len() >= PREFIX_LEN {
            break;
        }
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            prefix.push(c);
        } else if !prefix.is_empty() && !prefix.ends_with('-') {
            prefix.push('-');
        }
    }
    let prefix = prefix.trim_end_matches('-');
    let hash = sha256_hex(id, NAME_HASH_LEN);
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

/// The name of the DeviceRegistration object for a registration ID. Case-insensitive:
/// `Dev_1` and `dev_1` map to the same name.
pub fn registration_object_name(registration_id: &str) -> String {
    object_name(&canonical_registration_id(registration_id))
}

/// The name of the Device object for a device ID. Device IDs are case-sensitive in IoT Hub, so
/// an ID with upper-case letters gets a hashed name that keeps `Dev1` and `dev1` apart.
pub fn device_object_name(device_id: &str) -> String {
    object_name(device_id)
}

/// The name of the Secret holding a device's symmetric keys (next to its Device object).
pub fn device_key_secret_name(device_id: &str) -> String {
    format!("{}-keys", device_object_name(device_id))
}

fn id_labels(id: &str, label: &str, hash_label: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    if is_label_value(id) && !id.is_empty() {
        labels.insert(label.to_owned(), id.to_owned());
    } else {
        labels.insert(hash_label.to_owned(), sha256_hex(id, LABEL_HASH_LEN));
    }
    labels
}

fn selector(labels: BTreeMap<String, String>) -> String {
    labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels identifying a registration ID (canonical form): `kdps.io/registration-id=<id>` or,
/// when the ID is not a valid label value, `kdps.io/registration-id-hash=<hash>`.
pub fn registration_id_labels(registration_id: &str) -> BTreeMap<String, String> {
    id_labels(
        &canonical_registration_id(registration_id),
        LABEL_REGISTRATION_ID,
        LABEL_REGISTRATION_ID_HASH,
    )
}

/// The label selector matching [`registration_id_labels`].
pub fn registration_id_selector(registration_id: &str) -> String {
    selector(registration_id_labels(registration_id))
}

/// Labels identifying a device ID (case-preserving): `kdps.io/device-id=<id>` or
/// `kdps.io/device-id-hash=<hash>`.
pub fn device_id_labels(device_id: &str) -> BTreeMap<String, String> {
    id_labels(device_id, LABEL_DEVICE_ID, LABEL_DEVICE_ID_HASH)
}

/// The label selector matching [`device_id_labels`].
pub fn device_id_selector(device_id: &str) -> String {
    selector(device_id_labels(device_id))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_are_kept() {
        assert_eq!(registration_object_name("sensor-01"), "sensor-01");
        assert_eq!(registration_object_name("Sensor-01"), "sensor-01");
        assert_eq!(registration_object_name("a.b.c"), "a.b.c");
        assert_eq!(device_object_name("gw-01"), "gw-01");
    }

    #[test]
    fn invalid_names_are_hashed_deterministically() {
        for id in [
            "dev_1",
            "dev:1",
            "dev-",
            "-dev",
            "a..b",
            ".x",
            "___",
            &"x".repeat(300),
        ] {
            let name = registration_object_name(id);
            assert!(is_dns1123_subdomain(&name), "{id} -> {name}");
            assert!(name.len() <= PREFIX_LEN + 1 + NAME_HASH_LEN, "{name}");
            assert_eq!(name, registration_object_name(id));
            assert_ne!(name, id);
        }
        assert!(registration_object_name("dev_1").starts_with("dev-1-"));
        assert_eq!(registration_object_name("___").len(), NAME_HASH_LEN);
        // case-insensitive for registrations, case-sensitive for devices
        assert_eq!(
            registration_object_name("Dev_1"),
            registration_object_name("dev_1")
        );
        assert_ne!(device_object_name("Dev1"), device_object_name("dev1"));
        assert_eq!(device_object_name("dev1"), "dev1");
        assert!(is_dns1123_subdomain(&device_object_name("Dev1")));
        // distinct IDs with the same sanitised prefix get distinct names
        assert_ne!(
            registration_object_name("a_b"),
            registration_object_name("a:b")
        );
    }

    #[test]
    fn key_secret_names_are_valid() {
        for id in ["gw-01", "Dev_1", &"y".repeat(128)] {
            assert!(is_dns1123_subdomain(&device_key_secret_name(id)), "{id}");
        }
    }

    #[test]
    fn labels_use_id_or_hash() {
        let l = registration_id_labels("Sensor-01");
        assert_eq!(l.get(LABEL_REGISTRATION_ID).unwrap(), "sensor-01");
        assert_eq!(
            registration_id_selector("Sensor-01"),
            "kdps.io/registration-id=sensor-01"
        );
        let l = registration_id_labels("sensor:01");
        assert!(l.contains_key(LABEL_REGISTRATION_ID_HASH));
        assert!(!l.contains_key(LABEL_REGISTRATION_ID));
        let long = "a".repeat(100);
        let l = registration_id_labels(&long);
        let hash = l.get(LABEL_REGISTRATION_ID_HASH).unwrap();
        assert!(is_label_value(hash));
        assert_eq!(hash.len(), LABEL_HASH_LEN);
        let l = device_id_labels("Dev_1");
        assert_eq!(l.get(LABEL_DEVICE_ID).unwrap(), "Dev_1");
        let l = device_id_labels("dev-");
        assert!(l.contains_key(LABEL_DEVICE_ID_HASH));
    }

    #[test]
    fn dns_and_label_rules() {
        assert!(is_dns1123_label("hub-west"));
        assert!(!is_dns1123_label("Hub"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_label_value(""));
        assert!(is_label_value("A_b.c-1"));
        assert!(!is_label_value("a:b"));
        assert!(!is_label_value("a-"));
    }
}
