//! ID scopes: the value devices send with every registration (`0ne` + 8 upper-case hex digits,
//! like Azure DPS).
//!
//! A ProvisioningService without `spec.idScope` gets one derived from its UID, so the value is
//! stable across operator restarts and replicas without coordination, and it is written to
//! `status.idScope` once. Precedence: `spec.idScope`, then an existing `status.idScope`, then
//! the derived value.

use sha2::{Digest, Sha256};

/// Prefix of generated ID scopes (as Azure DPS).
pub const PREFIX: &str = "0ne";

/// Where the ID scope in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `spec.idScope`.
    Spec,
    /// An earlier `status.idScope`.
    Status,
    /// Derived from the object's UID now.
    Generated,
}

/// The ID scope for a ProvisioningService with these values.
pub fn resolve<'a>(spec: Option<&'a str>, status: Option<&'a str>, uid: &str) -> (String, Source) {
    if let Some(s) = spec.filter(|s| !s.is_empty()) {
        return (s.to_owned(), Source::Spec);
    }
    if let Some(s) = status.filter(|s| is_valid(s)) {
        return (s.to_owned(), Source::Status);
    }
    (generate(uid), Source::Generated)
}

/// `0ne` followed by the first 8 hex digits (upper case) of SHA-256 of the UID.
pub fn generate(uid: &str) -> String {
    let digest = Sha256::digest(uid.as_bytes());
    let hex = hex::encode_upper(digest);
    format!("{PREFIX}{}", &hex[..8])
}

/// The syntax the CRD enforces on `spec.idScope`: 4-32 letters and digits.
pub fn is_valid(s: &str) -> bool {
    (4..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_scope_has_azure_shape_and_is_deterministic() {
        let a = generate("0b9a6c3e-1f2d-4c55-9d0e-111111111111");
        assert_eq!(a.len(), 11);
        assert!(a.starts_with("0ne"));
        assert!(
            a[3..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        );
        assert_eq!(a, generate("0b9a6c3e-1f2d-4c55-9d0e-111111111111"));
        assert_ne!(a, generate("0b9a6c3e-1f2d-4c55-9d0e-222222222222"));
        assert!(is_valid(&a));
    }

    #[test]
    fn spec_wins_then_status_then_generated() {
        assert_eq!(
            resolve(Some("0ne00000A11"), Some("0neFFFFFFFF"), "u"),
            ("0ne00000A11".to_owned(), Source::Spec)
        );
        assert_eq!(
            resolve(None, Some("0neFFFFFFFF"), "u"),
            ("0neFFFFFFFF".to_owned(), Source::Status)
        );
        assert_eq!(resolve(None, None, "u"), (generate("u"), Source::Generated));
        // A status value the CRD would not accept is not carried over.
        assert_eq!(
            resolve(None, Some("bad scope!"), "u"),
            (generate("u"), Source::Generated)
        );
    }
}
