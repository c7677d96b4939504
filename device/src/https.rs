//! The Azure DPS HTTPS device protocol (dps-protocol.md §1–§4) as a transport of
//! [`crate::client::ProvisioningClient`] (`--protocol https`): `PUT …/register`,
//! `GET …/operations/{operationId}`, the TPM 401 challenge, DPS error bodies and `Retry-After`.
//!
//! Requests look like azure-iot-sdk-c's (URL-encoded path segments, `Authorization: <SAS>`,
//! `Accept`/`Content-Type: application/json`), so the same client also works against Azure DPS.
//! Answers are turned into the gRPC messages the client already understands, so retries,
//! polling and error classes are shared with the gRPC path.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kdps_proto::registration::v1 as pb;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::client::{Retry, Step};
use crate::error::DeviceError;

/// The api-version this client sends (the current GA REST version).
pub const API_VERSION: &str = "2021-10-01";

/// Wait before polling when the service sends no `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Longest `Retry-After` honoured; anything above is treated as this (a broken header must not
/// park the device for days).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Path segments: RFC 3986 unreserved characters stay, everything else is encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An HTTPS connection pool to one DPS endpoint.
pub(crate) struct HttpsTransport {
    client: reqwest::Client,
    base: String,
    endpoint: String,
}

impl HttpsTransport {
    /// A transport to `https://host:port`; `tls` carries the trust roots and, for X.509, the
    /// client certificate. ALPN offers HTTP/2 and HTTP/1.1.
    pub(crate) fn new(
        endpoint: &str,
        host: &str,
        port: u16,
        mut tls: rustls::ClientConfig,
        timeout: Duration,
    ) -> Result<Self, DeviceError> {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("kdps-device/", env!("CARGO_PKG_VERSION")))
            .https_only(true)
            .build()
            .map_err(|e| DeviceError::Config(format!("HTTPS client setup: {e}")))?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Ok(Self {
            client,
            base: format!("https://{host}:{port}"),
            endpoint: endpoint.to_owned(),
        })
    }

    /// `PUT /{idScope}/registrations/{id}/register` with the device's attestation.
    pub(crate) async fn register(
        &self,
        id_scope: &str,
        registration_id: &str,
        attestation: &pb::Attestation,
        payload: Option<&Value>,
    ) -> Result<Step, Retry> {
        let url = format!(
            "{}/{}/registrations/{}/register?api-version={API_VERSION}",
            self.base,
            encode(id_scope),
            encode(registration_id)
        );
        let (auth, tpm) = split_attestation(attestation);
        let mut body = json!({ "registrationId": registration_id });
        if let Some((ek, srk)) = tpm {
            body["tpm"] = json!({
                "endorsementKey": B64.encode(ek),
                "storageRootKey": B64.encode(srk),
            });
        }
        if let Some(p) = payload {
            body["payload"] = p.clone();
        }
        // Only an unsigned TPM request may be answered with a challenge.
        let challenge_allowed = tpm.is_some() && auth.is_none();
        let request = self.client.put(url).json(&body);
        self.exchange(request, auth, challenge_allowed).await
    }

    /// `GET /{idScope}/registrations/{id}/operations/{operationId}` with the register call's
    /// credentials.
    pub(crate) async fn poll(
        &self,
        id_scope: &str,
        registration_id: &str,
        operation_id: &str,
        attestation: &pb::Attestation,
    ) -> Result<Step, Retry> {
        let url = format!(
            "{}/{}/registrations/{}/operations/{}?api-version={API_VERSION}",
            self.base,
            encode(id_scope),
            encode(registration_id),
            encode(operation_id)
        );
        let (auth, _) = split_attestation(attestation);
        self.exchange(self.client.get(url), auth, false).await
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        auth: Option<&str>,
        challenge_allowed: bool,
    ) -> Result<Step, Retry> {
        let mut request = request.header(reqwest::header::ACCEPT, "application/json");
        if let Some(auth) = auth {
            request = request.header(reqwest::header::AUTHORIZATION, auth);
        }
        let response = request
            .send()
            .await
            .map_err(|e| classify_transport_error(&self.endpoint, &e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| classify_transport_error(&self.endpoint, &e))?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                Retry::Fatal(DeviceError::Protocol(format!(
                    "HTTP {status} with a body that is not JSON: {e}"
                )))
            })?
        };
        classify_response(status, retry_after, &body, challenge_allowed)
    }
}

fn encode(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// A TPM's marshalled EK and SRK public areas.
type TpmKeys<'a> = (&'a [u8], &'a [u8]);

/// The `Authorization` value and, for TPM, the EK and SRK to put in the body.
fn split_attestation(a: &pb::Attestation) -> (Option<&str>, Option<TpmKeys<'_>>) {
    use pb::attestation::Mechanism;
    match &a.mechanism {
        Some(Mechanism::SymmetricKey(s)) => (Some(s.sas_token.as_str()), None),
        Some(Mechanism::Tpm(t)) => (
            t.sas_token.as_deref(),
            Some((t.endorsement_key.as_slice(), t.storage_root_key.as_slice())),
        ),
        Some(Mechanism::X509(_)) | None => (None, None),
    }
}

/// `Retry-After` in seconds (DPS sends whole seconds), bounded.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        secs.min(MAX_RETRY_AFTER.as_secs_f64()),
    ))
}

fn error_message(body: &Value, status: u16) -> (i32, String) {
    let code = body["errorCode"]
        .as_i64()
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or_else(|| i32::from(status) * 1000);
    let message = body["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    (code, message)
}

/// Maps one HTTP answer to the next step or an error, as `classify_status` does for gRPC.
fn classify_response(
    status: u16,
    retry_after: Option<Duration>,
    body: &Value,
    challenge_allowed: bool,
) -> Result<Step, Retry> {
    match status {
        200 => Ok(Step::Done(Box::new(state_from_json(
            body.get("registrationState").unwrap_or(body),
        )?))),
        202 => {
            let operation_id = body["operationId"]
                .as_str()
                .filter(|o| !o.is_empty())
                .ok_or_else(|| {
                    Retry::Fatal(DeviceError::Protocol("202 without an operationId".into()))
                })?;
            Ok(Step::Pending {
                operation_id: operation_id.to_owned(),
                retry_after: retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            })
        }
        401 if challenge_allowed && body.get("authenticationKey").is_some() => {
            let blob = body["authenticationKey"]
                .as_str()
                .and_then(|k| B64.decode(k).ok())
                .ok_or_else(|| {
                    Retry::Fatal(DeviceError::Protocol(
                        "TPM challenge without a valid base64 authenticationKey".into(),
                    ))
                })?;
            Ok(Step::Challenge(blob))
        }
        401 | 403 => Err(Retry::Fatal(DeviceError::Unauthorized(
            error_message(body, status).1,
        ))),
        400 | 413 | 415 => Err(Retry::Fatal(DeviceError::InvalidRequest(
            error_message(body, status).1,
        ))),
        404 => {
            let (code, message) = error_message(body, status);
            Err(Retry::Fatal(DeviceError::Failed { code, message }))
        }
        429 => {
            let retry_after = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
            Err(Retry::After(
                DeviceError::Throttled {
                    retry_after,
                    attempts: 0,
                },
                retry_after,
            ))
        }
        // A concurrent registration of the same device (409203 "Precondition failed.").
        409 | 412 => {
            let (code, message) = error_message(body, status);
            Err(Retry::After(
                DeviceError::Failed { code, message },
                retry_after.unwrap_or_default(),
            ))
        }
        500..=599 => {
            let (code, message) = error_message(body, status);
            Err(Retry::After(
                DeviceError::Failed { code, message },
                retry_after.unwrap_or_default(),
            ))
        }
        other => {
            let (code, message) = error_message(body, other);
            Err(Retry::Fatal(DeviceError::Protocol(format!(
                "unexpected HTTP {other} (error code {code}): {message}"
            ))))
        }
    }
}

fn classify_transport_error(endpoint: &str, e: &reqwest::Error) -> Retry {
    if let Some(tls) = crate::client::find_rustls_error(e) {
        return Retry::Fatal(DeviceError::ServerNotTrusted(tls));
    }
    Retry::After(
        DeviceError::CannotReach {
            endpoint: endpoint.to_owned(),
            reason: if e.is_timeout() {
                format!("timed out: {e}")
            } else {
                error_chain(e)
            },
        },
        Duration::ZERO,
    )
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn status_from_name(name: &str) -> pb::RegistrationStatus {
    use pb::RegistrationStatus as S;
    match name.to_ascii_lowercase().as_str() {
        "unassigned" => S::Unassigned,
        "assigning" => S::Assigning,
        "assigned" => S::Assigned,
        "failed" => S::Failed,
        // `blacklisted` is the legacy name of a disabled enrollment.
        "disabled" | "blacklisted" => S::Disabled,
        _ => S::Unspecified,
    }
}

fn substatus_from_name(name: &str) -> pb::RegistrationSubstatus {
    use pb::RegistrationSubstatus as S;
    match name {
        "initialAssignment" => S::InitialAssignment,
        "deviceDataMigrated" => S::DeviceDataMigrated,
        "deviceDataReset" => S::DeviceDataReset,
        "reprovisionedToInitialAssignment" => S::ReprovisionedToInitialAssignment,
        _ => S::Unspecified,
    }
}

fn timestamp(v: &Value) -> Option<prost_types::Timestamp> {
    let t: jiff::Timestamp = v.as_str()?.parse().ok()?;
    Some(prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    })
}

/// A DPS `registrationState` (dps-protocol §1.4) as the gRPC message.
fn state_from_json(s: &Value) -> Result<pb::RegistrationState, Retry> {
    let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
    let status = s["status"].as_str().ok_or_else(|| {
        Retry::Fatal(DeviceError::Protocol(
            "200 without a registrationState.status".into(),
        ))
    })?;
    let tpm_authentication_key = match s["tpm"]["authenticationKey"].as_str() {
        Some(k) => B64.decode(k).map_err(|e| {
            Retry::Fatal(DeviceError::Protocol(format!(
                "registrationState.tpm.authenticationKey is not base64: {e}"
            )))
        })?,
        None => Vec::new(),
    };
    let enrollment_group_id = s["symmetricKey"]["enrollmentGroupId"]
        .as_str()
        .or_else(|| s["x509"]["enrollmentGroupId"].as_str())
        .unwrap_or_default()
        .to_owned();
    Ok(pb::RegistrationState {
        registration_id: text("registrationId"),
        assigned_hub: text("assignedHub"),
        device_id: text("deviceId"),
        status: status_from_name(status).into(),
        substatus: substatus_from_name(s["substatus"].as_str().unwrap_or_default()).into(),
        etag: text("etag"),
        created_time: timestamp(&s["createdDateTimeUtc"]),
        last_updated_time: timestamp(&s["lastUpdatedDateTimeUtc"]),
        error_code: s["errorCode"]
            .as_i64()
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or_default(),
        error_message: text("errorMessage"),
        payload: s
            .get("payload")
            .filter(|p| !p.is_null())
            .cloned()
            .map(kdps_proto::grpc_convert::json_to_value),
        tpm_authentication_key,
        enrollment_group_id,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn done(step: Result<Step, Retry>) -> pb::RegistrationState {
        match step {
            Ok(Step::Done(s)) => *s,
            _ => panic!("not done"),
        }
    }

    #[test]
    fn assigned_answer_converts_every_field() {
        let body = json!({
            "operationId": "op",
            "status": "assigned",
            "registrationState": {
                "registrationId": "dev-1",
                "createdDateTimeUtc": "2022-08-31T22:02:50.5163352Z",
                "assignedHub": "hub.example",
                "deviceId": "dev-1",
                "status": "assigned",
                "substatus": "deviceDataMigrated",
                "lastUpdatedDateTimeUtc": "2022-08-31T22:02:51.0000000Z",
                "etag": "ImEi",
                "payload": {"a": 1},
                "tpm": {"authenticationKey": "AQID"},
                "symmetricKey": {"enrollmentGroupId": "sensors"}
            }
        });
        let s = done(classify_response(200, None, &body, true));
        assert_eq!(s.status(), pb::RegistrationStatus::Assigned);
        assert_eq!(s.substatus(), pb::RegistrationSubstatus::DeviceDataMigrated);
        assert_eq!(s.assigned_hub, "hub.example");
        assert_eq!(s.created_time.unwrap().nanos, 516_335_200);
        assert_eq!(s.tpm_authentication_key, vec![1, 2, 3]);
        assert_eq!(s.enrollment_group_id, "sensors");
        assert_eq!(
            kdps_proto::grpc_convert::value_to_json(s.payload.unwrap()).unwrap(),
            json!({"a": 1})
        );
    }

    #[test]
    fn pending_challenge_and_errors() {
        match classify_response(
            202,
            Some(Duration::from_secs(3)),
            &json!({"operationId": "op-1", "status": "assigning"}),
            true,
        ) {
            Ok(Step::Pending {
                operation_id,
                retry_after,
            }) => {
                assert_eq!(operation_id, "op-1");
                assert_eq!(retry_after, Duration::from_secs(3));
            }
            _ => panic!("not pending"),
        }
        let challenge = json!({"authenticationKey": "AQID", "keyName": "registration"});
        assert!(matches!(
            classify_response(401, None, &challenge, true),
            Ok(Step::Challenge(b)) if b == vec![1, 2, 3]
        ));
        // A challenge in answer to a poll or a signed request is a refusal.
        assert!(matches!(
            classify_response(401, None, &challenge, false),
            Err(Retry::Fatal(DeviceError::Unauthorized(_)))
        ));
        let err = json!({"errorCode": 401002, "message": "Invalid certificate."});
        match classify_response(401, None, &err, true) {
            Err(Retry::Fatal(DeviceError::Unauthorized(m))) => {
                assert_eq!(m, "Invalid certificate.")
            }
            _ => panic!("not unauthorized"),
        }
        match classify_response(429, Some(Duration::from_secs(7)), &json!({}), true) {
            Err(Retry::After(DeviceError::Throttled { retry_after, .. }, floor)) => {
                assert_eq!(retry_after, Duration::from_secs(7));
                assert_eq!(floor, Duration::from_secs(7));
            }
            _ => panic!("not throttled"),
        }
        assert!(matches!(
            classify_response(400, None, &json!({}), true),
            Err(Retry::Fatal(DeviceError::InvalidRequest(_)))
        ));
        assert!(matches!(
            classify_response(500, None, &json!({}), true),
            Err(Retry::After(DeviceError::Failed { code: 500_000, .. }, _))
        ));
        assert!(matches!(
            classify_response(202, None, &json!({}), true),
            Err(Retry::Fatal(DeviceError::Protocol(_)))
        ));
    }

    #[test]
    fn terminal_statuses_map_through_the_shared_classification() {
        let failed = json!({"status": "failed", "registrationState": {
            "registrationId": "d", "status": "failed", "errorCode": 400207, "errorMessage": "m"}});
        let s = done(classify_response(200, None, &failed, true));
        assert_eq!(s.status(), pb::RegistrationStatus::Failed);
        assert_eq!(s.error_code, 400_207);
        let disabled = json!({"registrationId": "d", "status": "disabled"});
        assert_eq!(
            done(classify_response(200, None, &disabled, true)).status(),
            pb::RegistrationStatus::Disabled
        );
    }

    #[test]
    fn retry_after_is_bounded() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(" 1.5 "),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("dev:1/x"), "dev%3A1%2Fx");
        assert_eq!(encode("0ne00000A11"), "0ne00000A11");
    }
}
