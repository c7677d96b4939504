//! DPS shared-access-signature tokens (dps-protocol §2).
//!
//! A token looks like
//! `SharedAccessSignature sr=<resource>&sig=<url-encoded base64>&se=<unix seconds>[&skn=registration]`.
//! The signature is `base64(HMAC-SHA256(key, sr-as-transmitted + "\n" + se))`. Device SDKs disagree on
//! how `sr` is written (raw, `%2F`, `%2f`, mixed), so the service always signs over the `sr` exactly as it
//! arrived and compares the *decoded* `sr` with the expected resource separately.
//!
//! Building: [`resource_uri`], [`encode_sr`], [`string_to_sign`], [`sign`], [`format_token`],
//! [`generate_token`]. Parsing and checking: [`SasToken`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The `SharedAccessSignature ` prefix every token starts with.
pub const TOKEN_PREFIX: &str = "SharedAccessSignature ";

/// The only key name (`skn`) the DPS registration endpoint accepts.
pub const REGISTRATION_KEY_NAME: &str = "registration";

/// Upper bound on the token length we are willing to parse. A real token for a 128-character
/// registration ID, fully percent-encoded, stays well below 1 KiB.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Length of an HMAC-SHA256 signature in bytes.
pub const SIGNATURE_LEN: usize = 32;

/// RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) stay, everything else is encoded.
/// This is what Python's `quote(safe="")` and azure-sdk-for-c's URL encoder produce.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// JavaScript `encodeURIComponent`: unreserved plus `! ' ( ) *`.
const URI_COMPONENT: &AsciiSet = &UNRESERVED
    .remove(b'!')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*');

/// azure-iot-sdk-c `URL_EncodeString` (azure-c-shared-utility): alphanumerics and `! ( ) * - . _`
/// stay; everything else is written with **lower-case** hex.
const C_SDK_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// How a client writes the `sr` value of its token (dps-protocol §2 table).
///
/// The server never needs this — it signs over whatever arrived — but devices and tests use it to
/// produce each SDK's exact form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrEncoding {
    /// Not encoded: `0ne00000A11/registrations/dev-1` (Node symmetric key).
    Raw,
    /// Percent-encoded with upper-case hex, `%2F` (Python `quote(uri, safe="")`, Node
    /// `encodeURIComponent` for the TPM step, the docs' `quote_plus` sample). For the DPS registration
    /// ID alphabet these three encoders give identical output.
    UrlEncodedUpper,
    /// Percent-encoded with lower-case hex, `%2f` (azure-iot-sdk-c `URL_EncodeString`).
    UrlEncodedLower,
    /// azure-sdk-for-c: scope and ID each percent-encoded (upper-case hex), joined by a literal
    /// lower-case `%2fregistrations%2f`.
    AzureSdkForC,
}

impl SrEncoding {
    /// Every variant, for tests that must cover all client forms.
    pub const ALL: [SrEncoding; 4] = [
        SrEncoding::Raw,
        SrEncoding::UrlEncodedUpper,
        SrEncoding::UrlEncodedLower,
        SrEncoding::AzureSdkForC,
    ];
}

/// The resource URI a registration token is scoped to: `{idScope}/registrations/{registrationId}` (raw).
pub fn resource_uri(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// The `sr` value for `id_scope`/`registration_id`, written the way the given client writes it.
pub fn encode_sr(id_scope: &str, registration_id: &str, encoding: SrEncoding) -> String {
    match encoding {
        SrEncoding::Raw => resource_uri(id_scope, registration_id),
        SrEncoding::UrlEncodedUpper => {
            utf8_percent_encode(&resource_uri(id_scope, registration_id), UNRESERVED).to_string()
        }
        SrEncoding::UrlEncodedLower => lower_hex_escapes(
            &utf8_percent_encode(&resource_uri(id_scope, registration_id), C_SDK_SAFE).to_string(),
        ),
        SrEncoding::AzureSdkForC => format!(
            "{}%2fregistrations%2f{}",
            utf8_percent_encode(id_scope, UNRESERVED),
            utf8_percent_encode(registration_id, UNRESERVED)
        ),
    }
}

/// Percent-encode a value the way JavaScript's `encodeURIComponent` does (used by the Node TPM flow).
pub fn encode_uri_component(value: &str) -> String {
    utf8_percent_encode(value, URI_COMPONENT).to_string()
}

/// Rewrites the two hex digits after every `%` in lower case. Only used on encoder output, where
/// every `%` starts an escape.
fn lower_hex_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut hex_left = 0u8;
    for c in encoded.chars() {
        if hex_left > 0 {
            out.push(c.to_ascii_lowercase());
            hex_left -= 1;
        } else {
            if c == '%' {
                hex_left = 2;
            }
            out.push(c);
        }
    }
    out
}

/// The message that gets signed: `sr` exactly as it appears in the token, a line feed, and `se`.
pub fn string_to_sign(sr: &str, se: u64) -> String {
    format!("{sr}\n{se}")
}

/// HMAC-SHA256 of [`string_to_sign`]`(sr, se)` under `key` (the base64-decoded device key).
pub fn sign(key: &[u8], sr: &str, se: u64) -> [u8; 32] {
    hmac_sha256(key, string_to_sign(sr, se).as_bytes())
}

/// HMAC-SHA256 of `message` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this constructor cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 accepts keys of every length"),
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Formats a token: `SharedAccessSignature sr=<sr>&sig=<url-encoded base64(signature)>&se=<se>[&skn=<skn>]`.
///
/// `sr` is inserted verbatim — encode it first with [`encode_sr`] if the client form needs it.
pub fn format_token(sr: &str, signature: &[u8], se: u64, skn: Option<&str>) -> String {
    let sig = utf8_percent_encode(&BASE64.encode(signature), UNRESERVED).to_string();
    let mut token = format!("{TOKEN_PREFIX}sr={sr}&sig={sig}&se={se}");
    if let Some(skn) = skn {
        token.push_str("&skn=");
        token.push_str(&utf8_percent_encode(skn, UNRESERVED).to_string());
    }
    token
}

/// Signs and formats a token in one step (see [`sign`] and [`format_token`]).
pub fn generate_token(key: &[u8], sr: &str, se: u64, skn: Option<&str>) -> String {
    format_token(sr, &sign(key, sr, se), se, skn)
}

/// Why a token could not be parsed. Messages never contain the token or its signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// The value does not start with `SharedAccessSignature `.
    #[error("token does not start with \"SharedAccessSignature \"")]
    MissingPrefix,
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// A `&`-separated field has no `=`, or is empty.
    #[error("token field {index} is not of the form name=value")]
    MalformedField {
        /// Zero-based position of the field after the prefix.
        index: usize,
    },
    /// A field name other than `sr`, `sig`, `se`, `skn`.
    #[error("unknown token field {name:?}")]
    UnknownField {
        /// The field name, shortened to at most 16 printable characters.
        name: String,
    },
    /// A field appears more than once.
    #[error("token field {0} appears more than once")]
    DuplicateField(&'static str),
    /// A field has an empty value.
    #[error("token field {0} is empty")]
    EmptyField(&'static str),
    /// A required field (`sr`, `sig`, `se`) is absent.
    #[error("token field {0} is missing")]
    MissingField(&'static str),
    /// `se` is not a non-negative decimal integer that fits in 64 bits.
    #[error("token expiry (se) is not a decimal number of seconds")]
    InvalidExpiry,
    /// `sig` is not URL-encoded base64.
    #[error("token signature (sig) is not URL-encoded base64")]
    InvalidSignatureEncoding,
    /// `sig` decodes to something other than a 32-byte HMAC-SHA256.
    #[error("token signature (sig) is {0} bytes, expected 32")]
    InvalidSignatureLength(usize),
    /// `sr` or `skn` contains a percent escape that is not valid UTF-8.
    #[error("token field {0} is not valid URL-encoded UTF-8")]
    InvalidEncoding(&'static str),
}

/// A parsed SAS token. Holds no key material; the signature is redacted from `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    sr: String,
    decoded_sr: String,
    signature: Vec<u8>,
    se: u64,
    se_raw: String,
    skn: Option<String>,
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasToken")
            .field("sr", &self.sr)
            .field("se", &self.se)
            .field("skn", &self.skn)
            .field("signature", &"<redacted>")
            .finish()
    }
}

impl SasToken {
    /// Parses a token (the value of an `Authorization` header or an MQTT password).
    ///
    /// Fields may come in any order; `sr`, `sig` and `se` are required, `skn` is optional. Every
    /// value must be non-empty and appear once. Whether `skn` is acceptable is for the caller to
    /// decide (see [`REGISTRATION_KEY_NAME`]).
    pub fn parse(header: &str) -> Result<SasToken, SasError> {
        if header.len() > MAX_TOKEN_LEN {
            return Err(SasError::TooLong);
        }
        let body = header
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(SasError::MissingPrefix)?;

        let mut sr = None;
        let mut sig = None;
        let mut se = None;
        let mut skn = None;
        for (index, field) in body.split('&').enumerate() {
            let (name, value) = field
                .split_once('=')
                .ok_or(SasError::MalformedField { index })?;
            let (slot, name): (&mut Option<&str>, &'static str) = match name {
                "sr" => (&mut sr, "sr"),
                "sig" => (&mut sig, "sig"),
                "se" => (&mut se, "se"),
                "skn" => (&mut skn, "skn"),
                "" => return Err(SasError::MalformedField { index }),
                other => {
                    return Err(SasError::UnknownField {
                        name: sanitize_name(other),
                    });
                }
            };
            if slot.is_some() {
                return Err(SasError::DuplicateField(name));
            }
            if value.is_empty() {
                return Err(SasError::EmptyField(name));
            }
            *slot = Some(value);
        }

        let sr = sr.ok_or(SasError::MissingField("sr"))?;
        let sig = sig.ok_or(SasError::MissingField("sig"))?;
        let se_raw = se.ok_or(SasError::MissingField("se"))?;

        // `u64::from_str` accepts a leading '+'; the wire format does not.
        if !se_raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SasError::InvalidExpiry);
        }
        let se: u64 = se_raw.parse().map_err(|_| SasError::InvalidExpiry)?;

        let decoded_sr = percent_decode_str(sr)
            .decode_utf8()
            .map_err(|_| SasError::InvalidEncoding("sr"))?
            .into_owned();

        // Plain percent-decoding (not form decoding): a raw '+' in base64 must stay a '+'.
        let sig_b64 = percent_decode_str(sig)
            .decode_utf8()
            .map_err(|_| SasError::InvalidSignatureEncoding)?;
        let signature = BASE64
            .decode(sig_b64.as_bytes())
            .map_err(|_| SasError::InvalidSignatureEncoding)?;
        if signature.len() != SIGNATURE_LEN {
            return Err(SasError::InvalidSignatureLength(signature.len()));
        }

        let skn = skn
            .map(|v| {
                percent_decode_str(v)
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| SasError::InvalidEncoding("skn"))
            })
            .transpose()?;

        Ok(SasToken {
            sr: sr.to_owned(),
            decoded_sr,
            signature,
            se,
            se_raw: se_raw.to_owned(),
            skn,
        })
    }

    /// The `sr` value exactly as transmitted (this is what was signed).
    pub fn sr_as_transmitted(&self) -> &str {
        &self.sr
    }

    /// The URL-decoded `sr` value.
    ///
    /// Decoding already succeeded during [`SasToken::parse`], so this never fails today; the
    /// `Result` keeps the signature stable should decoding become lazy.
    pub fn decoded_sr(&self) -> Result<String, SasError> {
        Ok(self.decoded_sr.clone())
    }

    /// The expiry (`se`), in seconds since the Unix epoch.
    pub fn expiry(&self) -> u64 {
        self.se
    }

    /// The URL-decoded key name (`skn`), if the token has one.
    pub fn key_name(&self) -> Option<&str> {
        self.skn.as_deref()
    }

    /// The raw HMAC-SHA256 signature bytes (always 32).
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// Whether the signature is valid under `key`, computed over `sr` and `se` exactly as
    /// transmitted. Comparison is constant time.
    pub fn verify_with_key(&self, key: &[u8]) -> bool {
        let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
            return false;
        };
        mac.update(self.sr.as_bytes());
        mac.update(b"\n");
        mac.update(self.se_raw.as_bytes());
        mac.verify_slice(&self.signature).is_ok()
    }

    /// Whether the decoded `sr` names `{id_scope}/registrations/{registration_id}` (ASCII
    /// case-insensitive, as DPS IDs are).
    pub fn names(&self, id_scope: &str, registration_id: &str) -> bool {
        self.decoded_sr
            .eq_ignore_ascii_case(&resource_uri(id_scope, registration_id))
    }

    /// Whether the token has no `skn` or `skn=registration`, the two forms DPS clients send.
    pub fn has_registration_key_name(&self) -> bool {
        self.skn
            .as_deref()
            .is_none_or(|skn| skn == REGISTRATION_KEY_NAME)
    }
}

/// Keeps error messages short and printable when echoing an unexpected field name.
fn sanitize_name(name: &str) -> String {
    name.chars()
        .take(16)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SCOPE: &str = "0ne00000A11";
    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn resource_uri_is_raw() {
        assert_eq!(
            resource_uri(SCOPE, "dev:1"),
            "0ne00000A11/registrations/dev:1"
        );
    }

    #[test]
    fn every_sr_encoding() {
        let id = "Dev-1.a_b:c";
        assert_eq!(
            encode_sr(SCOPE, id, SrEncoding::Raw),
            "0ne00000A11/registrations/Dev-1.a_b:c"
        );
        assert_eq!(
            encode_sr(SCOPE, id, SrEncoding::UrlEncodedUpper),
            "0ne00000A11%2Fregistrations%2FDev-1.a_b%3Ac"
        );
        assert_eq!(
            encode_sr(SCOPE, id, SrEncoding::UrlEncodedLower),
            "0ne00000A11%2fregistrations%2fDev-1.a_b%3ac"
        );
        assert_eq!(
            encode_sr(SCOPE, id, SrEncoding::AzureSdkForC),
            "0ne00000A11%2fregistrations%2fDev-1.a_b%3Ac"
        );
        assert_eq!(
            encode_uri_component(&resource_uri(SCOPE, id)),
            encode_sr(SCOPE, id, SrEncoding::UrlEncodedUpper)
        );
    }

    #[test]
    fn format_then_parse() {
        for enc in SrEncoding::ALL {
            let sr = encode_sr(SCOPE, "dev-1", enc);
            let token = generate_token(KEY, &sr, 1_700_000_000, Some("registration"));
            let parsed = SasToken::parse(&token).unwrap();
            assert_eq!(parsed.sr_as_transmitted(), sr);
            assert_eq!(
                parsed.decoded_sr().unwrap(),
                "0ne00000A11/registrations/dev-1"
            );
            assert_eq!(parsed.expiry(), 1_700_000_000);
            assert_eq!(parsed.key_name(), Some("registration"));
            assert!(parsed.verify_with_key(KEY));
            assert!(!parsed.verify_with_key(b"another key"));
            assert!(parsed.names(SCOPE, "DEV-1"));
            assert!(parsed.names("0NE00000a11", "dev-1"));
            assert!(!parsed.names(SCOPE, "dev-2"));
            assert!(!parsed.names("0ne00000A12", "dev-1"));
        }
    }

    #[test]
    fn signature_is_url_encoded() {
        // Find an se whose signature contains all of '+', '/' and '=' after base64 to make sure each
        // is escaped; '=' is always present for 32 bytes.
        let token = format_token("a", &[0xfb; 32], 1, None);
        let sig = token
            .split("sig=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        assert!(!sig.contains('+') && !sig.contains('/') && !sig.contains('='));
        assert!(sig.contains("%2B") && sig.contains("%2F") && sig.ends_with("%3D"));
    }

    #[test]
    fn any_field_order_and_optional_skn() {
        let sig =
            utf8_percent_encode(&BASE64.encode(sign(KEY, "x%2Fy", 5)), UNRESERVED).to_string();
        for body in [
            format!("sig={sig}&se=5&skn=registration&sr=x%2Fy"),
            format!("se=5&sr=x%2Fy&sig={sig}"),
            format!("skn=registration&sig={sig}&sr=x%2Fy&se=5"),
        ] {
            let token = SasToken::parse(&format!("SharedAccessSignature {body}")).unwrap();
            assert!(token.verify_with_key(KEY), "{body}");
            assert!(token.has_registration_key_name());
        }
    }

    #[test]
    fn unencoded_signature_is_accepted() {
        // A raw base64 signature (with '+', '/' and '=') is also accepted: percent-decoding leaves it alone.
        let raw = BASE64.encode(sign(KEY, "s", 9));
        let token = SasToken::parse(&format!("SharedAccessSignature sr=s&sig={raw}&se=9")).unwrap();
        assert!(token.verify_with_key(KEY));
    }

    #[test]
    fn parse_errors_are_specific() {
        let sig = utf8_percent_encode(&BASE64.encode([1u8; 32]), UNRESERVED).to_string();
        let p = |s: &str| SasToken::parse(s).unwrap_err();
        assert_eq!(p("Bearer abc"), SasError::MissingPrefix);
        assert_eq!(p("sharedaccesssignature sr=a"), SasError::MissingPrefix);
        assert_eq!(
            p(&format!("SharedAccessSignature sr=a&sig={sig}")),
            SasError::MissingField("se")
        );
        assert_eq!(
            p(&format!("SharedAccessSignature sig={sig}&se=1")),
            SasError::MissingField("sr")
        );
        assert_eq!(
            p("SharedAccessSignature sr=a&se=1"),
            SasError::MissingField("sig")
        );
        assert_eq!(
            p(&format!("SharedAccessSignature sr=a&sr=b&sig={sig}&se=1")),
            SasError::DuplicateField("sr")
        );
        assert_eq!(
            p(&format!("SharedAccessSignature sr=&sig={sig}&se=1")),
            SasError::EmptyField("sr")
        );
        assert_eq!(
            p(&format!("SharedAccessSignature sr=a&sig={sig}&se=1&skn=")),
            SasError::EmptyField("skn")
        );
        assert_eq!(
            p(&format!("SharedAccessSignature sr=a&sig={sig}&se=+1")),
            SasError::InvalidExpiry
        );
        assert_eq!(
            p(&format!("SharedAccessSignature sr=a&sig={sig}&se=-1")),
            SasError::InvalidExpiry
        );
        assert_eq!(
            p(&format!(
                "SharedAccessSignature sr=a&sig={sig}&se=99999999999999999999999"
            )),
            SasError::InvalidExpiry
        );
        assert_eq!(
            p("SharedAccessSignature sr=a&sig=%%%&se=1"),
            SasError::InvalidSignatureEncoding
        );
        assert_eq!(
            p("SharedAccessSignature sr=a&sig=not*base64&se=1"),
            SasError::InvalidSignatureEncoding
        );
        assert_eq!(
            p("SharedAccessSignature sr=a&sig=AAAA&se=1"),
            SasError::InvalidSignatureLength(3)
        );
        assert_eq!(
            p(&format!("SharedAccessSignature sr=a&sig={sig}&se=1&")),
            SasError::MalformedField { index: 3 }
        );
        assert_eq!(
            p(&format!("SharedAccessSignature sr=a&sig={sig}&se=1&x")),
            SasError::MalformedField { index: 3 }
        );
        assert_eq!(
            p(&format!("SharedAccessSignature sr=a&sig={sig}&se=1&=v")),
            SasError::MalformedField { index: 3 }
        );
        assert_eq!(
            p(&format!(
                "SharedAccessSignature sr=a&sig={sig}&se=1&foo=bar"
            )),
            SasError::UnknownField { name: "foo".into() }
        );
        assert_eq!(
            p(&format!("SharedAccessSignature sr=%FF&sig={sig}&se=1")),
            SasError::InvalidEncoding("sr")
        );
        assert_eq!(p(&"x".repeat(MAX_TOKEN_LEN + 1)), SasError::TooLong);
    }

    #[test]
    fn foreign_key_name_is_kept_for_the_caller() {
        let token = generate_token(KEY, "a", 1, Some("iothubowner"));
        let parsed = SasToken::parse(&token).unwrap();
        assert_eq!(parsed.key_name(), Some("iothubowner"));
        assert!(!parsed.has_registration_key_name());
    }

    #[test]
    fn debug_redacts_signature() {
        let token = SasToken::parse(&generate_token(KEY, "a", 1, None)).unwrap();
        let debug = format!("{token:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains(&BASE64.encode(token.signature())));
    }

    #[test]
    fn signs_over_se_as_transmitted() {
        // A client that wrote "0005" signed over "0005", not "5".
        let sig = hmac_sha256(KEY, b"a\n0005");
        let token = format!(
            "SharedAccessSignature sr=a&sig={}&se=0005",
            utf8_percent_encode(&BASE64.encode(sig), UNRESERVED)
        );
        let parsed = SasToken::parse(&token).unwrap();
        assert_eq!(parsed.expiry(), 5);
        assert!(parsed.verify_with_key(KEY));
    }
}
