//! Raw DPS HTTPS requests, byte for byte as each Azure device SDK sends them
//! (dps-protocol.md §1–§4), replayed against the real standalone service over TLS with
//! HTTP/1.1 and HTTP/2 (hyper client, new connection per request).
//!
//! Covered: every SAS form of §2 (Node raw `sr`, Node TPM `encodeURIComponent` `sr`, Python
//! `quote(safe="")` without `skn`, azure-sdk-for-c `%2f`, azure-iot-sdk-c `URL_EncodeString` with
//! the `UserAgent` header and URL-encoded path segments, the docs' parameter order); a body on
//! GET; `payload: null`; api-versions; bad `skn`; expired token; unknown ID scope; 429 with
//! `Retry-After` (registrations and polls); 202 + operation polling; terminal `disabled` and `failed`; the registration
//! status lookup; X.509 from the TLS client certificate; the TPM two-step flow (401 challenge,
//! SAS signed with the imported key, `tpm.authenticationKey` on assignment).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kdps_proto::sas::{self, SrEncoding};
use kdps_tests::Standalone;
use kdps_tests::pki::{Leaf, indent};
use kdps_tests::webhook::Webhook;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};

const SCOPE: &str = "0ne00000A11";
const HUB: &str = "hub-raw.example.com";
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const DEVICE_KEY: &str = "c2Vuc29yLWtleS0wMDAwMDAwMDAwMDAwMDAwMDAwMDA=";
const NODE_UA: &str = "azure-iot-provisioning-device/1.9.1";
const PER_DEVICE_PER_MINUTE: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    H1,
    H2,
}

const BOTH: [Version; 2] = [Version::H1, Version::H2];

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
    text: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A minimal HTTPS client: one TLS connection per request, exact headers and body.
struct Client {
    port: u16,
    roots: Arc<rustls::RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl Client {
    fn new(svc: &Standalone) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(svc.ca()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        Client {
            port: svc.port,
            roots: Arc::new(roots),
            identity: None,
        }
    }

    fn with_certificate(&self, leaf: &Leaf) -> Client {
        let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        Client {
            port: self.port,
            roots: self.roots.clone(),
            identity: Some((chain, Arc::new(key))),
        }
    }

    async fn send(
        &self,
        version: Version,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![match version {
            Version::H1 => b"http/1.1".to_vec(),
            Version::H2 => b"h2".to_vec(),
        }];
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let authority = format!("localhost:{}", self.port);
        let mut request = http::Request::builder().method(method);
        request = match version {
            Version::H1 => request.uri(path).header("host", &authority),
            Version::H2 => request.uri(format!("https://{authority}{path}")),
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .unwrap();
        let response = match version {
            Version::H1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                sender.send_request(request).await.unwrap()
            }
            Version::H2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                sender.send_request(request).await.unwrap()
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn key(b64: &str) -> Vec<u8> {
    B64.decode(b64).unwrap()
}

fn group_device_key(registration_id: &str) -> Vec<u8> {
    kdps_proto::keys::derive_device_key(&key(GROUP_KEY), registration_id).to_vec()
}

/// A token with `sr` written as `encoding`, signed over exactly that `sr`.
fn token(key: &[u8], id: &str, encoding: SrEncoding, skn: Option<&str>, se: u64) -> String {
    let sr = sas::encode_sr(SCOPE, id, encoding);
    sas::generate_token(key, &sr, se, skn)
}

fn register_path(id_segment: &str, api_version: Option<&str>) -> String {
    match api_version {
        Some(v) => format!("/{SCOPE}/registrations/{id_segment}/register?api-version={v}"),
        None => format!("/{SCOPE}/registrations/{id_segment}/register"),
    }
}

/// Node's headers.
fn node_headers(auth: &str) -> Vec<(&'static str, String)> {
    vec![
        ("accept", "application/json".into()),
        ("content-type", "application/json; charset=utf-8".into()),
        ("user-agent", NODE_UA.into()),
        ("request-id", "6d1bbdb1-0000-4000-8000-000000000001".into()),
        ("authorization", auth.into()),
    ]
}

fn as_refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

/// Follows a register answer (200 or 202) to its terminal 200 by polling as Node does (GET
/// with a `{}` body, same headers), waiting `Retry-After` between polls.
async fn follow(
    client: &Client,
    version: Version,
    id_segment: &str,
    headers: &[(&str, &str)],
    first: Resp,
) -> Resp {
    let mut resp = first;
    for _ in 0..30 {
        if resp.status != 202 {
            return resp;
        }
        assert_eq!(resp.body["status"], "assigning", "{}", resp.text);
        let retry_after: u64 = resp.header("retry-after").unwrap().parse().unwrap();
        assert!(retry_after >= 1);
        let operation_id = resp.body["operationId"].as_str().unwrap().to_owned();
        tokio::time::sleep(Duration::from_secs(retry_after)).await;
        let path = format!(
            "/{SCOPE}/registrations/{id_segment}/operations/{operation_id}?api-version=2019-03-31"
        );
        let mut with_length = headers.to_vec();
        with_length.push(("content-length", "2"));
        resp = client
            .send(version, "GET", &path, &with_length, Some("{}"))
            .await;
    }
    panic!("still pending after 30 polls: {}", resp.text);
}

fn assert_assigned(resp: &Resp, id: &str) {
    assert_eq!(resp.status, 200, "{id}: {}", resp.text);
    assert_eq!(resp.body["status"], "assigned", "{id}: {}", resp.text);
    let state = &resp.body["registrationState"];
    assert_eq!(state["registrationId"], id, "{}", resp.text);
    assert_eq!(state["assignedHub"], HUB, "{}", resp.text);
    assert_eq!(state["status"], "assigned");
    assert!(state["deviceId"].is_string(), "{}", resp.text);
    assert!(state["substatus"].is_string(), "{}", resp.text);
    for field in ["createdDateTimeUtc", "lastUpdatedDateTimeUtc"] {
        let t = state[field].as_str().unwrap();
        // 2022-08-31T22:02:50.5163352Z
        assert_eq!(t.len(), 28, "{field}: {t}");
        assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{field}: {t}");
    }
    assert!(
        resp.body["operationId"]
            .as_str()
            .is_some_and(|o| !o.is_empty())
    );
}

fn assert_dps_error(resp: &Resp, status: u16, code: u32) {
    assert_eq!(resp.status, status, "{}", resp.text);
    assert_eq!(resp.body["errorCode"], code, "{}", resp.text);
    assert_eq!(
        resp.header("x-ms-error-code"),
        Some(code.to_string().as_str())
    );
    assert!(resp.body["trackingId"].is_string(), "{}", resp.text);
    assert!(resp.body["message"].is_string(), "{}", resp.text);
    assert!(resp.body["timestampUtc"].is_string(), "{}", resp.text);
}

/// A software TPM (EK and SRK from keys the openssl CLI generates, fast in debug builds).
fn soft_tpm(dir: &std::path::Path) -> kdps_proto::tpm::SoftTpm {
    use rsa::pkcs8::DecodePrivateKey as _;
    let gen_key = |name: &str| {
        let path = dir.join(name);
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&path)
            .output()
            .expect("openssl is needed (scripts/install-test-deps.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        rsa::RsaPrivateKey::read_pkcs8_pem_file(&path).unwrap()
    };
    kdps_proto::tpm::SoftTpm::from_keys(gen_key("ek.pem"), gen_key("srk.pem")).unwrap()
}

fn manifests(hook: &Webhook, x509: &Leaf, tpm_ek: &str) -> String {
    let custom = |name: &str| {
        format!(
            r#"---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: {name}, namespace: iot}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: device-keys}}}}}}
  allocationPolicy: custom
  customAllocation:
    webhookUrl: "{}"
    timeoutSeconds: 20
    caBundle: |
{}"#,
            hook.url(),
            indent(hook.ca_pem(), 6)
        )
    };
    format!(
        r#"
apiVersion: kdps.io/v1alpha1
kind: ProvisioningService
metadata: {{name: dps, namespace: iot}}
spec: {{idScope: {SCOPE}, rateLimits: {{perDevicePerMinute: {PER_DEVICE_PER_MINUTE}}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-raw, namespace: iot}}
spec: {{hostName: {HUB}, deviceNamespace: hub-raw}}
---
apiVersion: v1
kind: Secret
metadata: {{name: group-keys, namespace: iot}}
stringData: {{primaryKey: "{GROUP_KEY}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: device-keys, namespace: iot}}
stringData: {{primaryKey: "{DEVICE_KEY}"}}
---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: raw-fleet, namespace: iot}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: group-keys}}}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: raw-individual, namespace: iot}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: device-keys}}}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: raw-disabled, namespace: iot}}
spec:
  provisioningStatus: disabled
  attestation: {{symmetricKey: {{secretRef: {{name: device-keys}}}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: raw-x509, namespace: iot}}
spec:
  attestation:
    x509:
      clientCertificates:
        primary:
          certificate: |
{leaf}---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: raw-tpm, namespace: iot}}
spec:
  attestation:
    tpm: {{endorsementKey: "{tpm_ek}"}}
{slow}{fail}"#,
        leaf = indent(&x509.cert_pem, 12),
        slow = custom("raw-slow"),
        fail = custom("raw-fail"),
    )
}

#[test]
fn raw_dps_requests_of_every_sdk() {
    let work = tempfile::tempdir().unwrap();
    // The webhook answers slowly for raw-slow (so that register answers 202 and the device
    // polls) and refuses raw-fail.
    let hook = Webhook::start(|request| {
        let id = request["deviceRuntimeContext"]["registrationId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if id == "raw-fail" {
            return (400, json!({"message": "not this one"}));
        }
        std::thread::sleep(Duration::from_millis(2500));
        (
            200,
            json!({"iotHubHostName": HUB, "payload": {"slow": true}}),
        )
    });
    let x509 = Leaf::self_signed("raw-x509");
    let mut tpm = soft_tpm(work.path());
    let ek = B64.encode(tpm.endorsement_key().to_tpm2b());
    let srk = B64.encode(tpm.storage_root_key().to_tpm2b());
    let svc = Standalone::start(&manifests(&hook, &x509, &ek));
    let client = Client::new(&svc);
    let rt = kdps_tests::runtime();
    let group = |id: &str| group_device_key(id);

    rt.block_on(async {
        let se = now() + 3600;

        // --- Every SAS form of §2, each over HTTP/1.1 and HTTP/2 (one device per form and
        //     version, so the per-device rate limit stays out of the way). ---
        for version in BOTH {
            let v = format!("{version:?}").to_lowercase();
            // Node symmetric key: raw sr, skn=registration, Node's headers and body.
            let id = format!("node-raw-{v}");
            let auth = token(&group(&id), &id, SrEncoding::Raw, Some("registration"), se);
            let h = node_headers(&auth);
            let body = json!({"registrationId": id}).to_string();
            let resp = client
                .send(version, "PUT", &register_path(&id, Some("2019-03-31")), &as_refs(&h), Some(&body))
                .await;
            let resp = follow(&client, version, &id, &as_refs(&h), resp).await;
            assert_assigned(&resp, &id);
            assert_eq!(
                resp.body["registrationState"]["symmetricKey"]["enrollmentGroupId"],
                "raw-fleet"
            );

            // Node TPM-step form: encodeURIComponent(sr) (%2F), used here with a symmetric key.
            let id = format!("node-encoded-{v}");
            let sr = sas::encode_uri_component(&sas::resource_uri(SCOPE, &id));
            let auth = sas::generate_token(&group(&id), &sr, se, Some("registration"));
            assert!(auth.contains("%2F"), "{auth}");
            let h = node_headers(&auth);
            let resp = client
                .send(version, "PUT", &register_path(&id, Some("2019-03-31")), &as_refs(&h), Some(&json!({"registrationId": id}).to_string()))
                .await;
            assert_assigned(&follow(&client, version, &id, &as_refs(&h), resp).await, &id);

            // Python: quote(uri, safe="") and no skn; body always has `payload`, null when
            // unset, keys sorted.
            let id = format!("python-{v}");
            let auth = token(&group(&id), &id, SrEncoding::UrlEncodedUpper, None, se);
            assert!(!auth.contains("skn="), "{auth}");
            let h = vec![
                ("content-type", "application/json".to_owned()),
                ("authorization", auth),
            ];
            let body = format!(r#"{{"payload": null, "registrationId": "{id}"}}"#);
            let resp = client
                .send(version, "PUT", &register_path(&id, Some("2019-03-31")), &as_refs(&h), Some(&body))
                .await;
            assert_assigned(&follow(&client, version, &id, &as_refs(&h), resp).await, &id);

            // azure-sdk-for-c: literal lower-case %2f separators, skn=registration.
            let id = format!("sdk-for-c-{v}");
            let auth = token(&group(&id), &id, SrEncoding::AzureSdkForC, Some("registration"), se);
            assert!(auth.contains("%2fregistrations%2f"), "{auth}");
            let h = vec![("authorization", auth)];
            let resp = client
                .send(version, "PUT", &register_path(&id, Some("2019-03-31")), &as_refs(&h), Some(&json!({"registrationId": id}).to_string()))
                .await;
            assert_assigned(&follow(&client, version, &id, &as_refs(&h), resp).await, &id);

            // azure-iot-sdk-c: URL_EncodeString (lower-case hex), `UserAgent` instead of
            // `User-Agent`, keep-alive, URL-encoded path segments (':' -> %3a).
            let id = format!("c-sdk:{v}");
            let auth = token(&group(&id), &id, SrEncoding::UrlEncodedLower, Some("registration"), se);
            assert!(auth.contains("%2f") && auth.contains("%3a"), "{auth}");
            let mut h = vec![
                ("useragent", "prov_device_client/1.0".to_owned()),
                ("accept", "application/json".to_owned()),
                ("content-type", "application/json; charset=utf-8".to_owned()),
                ("authorization", auth),
            ];
            if version == Version::H1 {
                h.push(("connection", "keep-alive".to_owned()));
            }
            let segment = format!("c-sdk%3a{v}");
            let body = json!({"registrationId": id}).to_string();
            let resp = client
                .send(version, "PUT", &register_path(&segment, Some("2021-06-01")), &as_refs(&h), Some(&body))
                .await;
            let resp = follow(&client, version, &segment, &as_refs(&h), resp).await;
            assert_assigned(&resp, &id);

            // The docs' parameter order (sig, se, skn, sr).
            let id = format!("docs-order-{v}");
            let sr = sas::encode_sr(SCOPE, &id, SrEncoding::UrlEncodedUpper);
            let signed = sas::generate_token(&group(&id), &sr, se, Some("registration"));
            let sig = signed.split("sig=").nth(1).unwrap().split('&').next().unwrap();
            let auth = format!("SharedAccessSignature sig={sig}&se={se}&skn=registration&sr={sr}");
            let h = vec![("authorization", auth), ("content-encoding", "utf-8".to_owned())];
            let resp = client
                .send(version, "PUT", &register_path(&id, Some("2021-10-01")), &as_refs(&h), Some(&json!({"registrationId": id}).to_string()))
                .await;
            assert_assigned(&follow(&client, version, &id, &as_refs(&h), resp).await, &id);
        }

        // --- api-version values actually sent, and none at all. ---
        for (i, api) in [
            Some("2017-08-31-preview"),
            Some("2019-03-31"),
            Some("2021-06-01"),
            Some("2021-10-01"),
            Some("2025-07-01-preview"),
            Some("2026-11-02-preview"),
            None,
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("api-version-{i}");
            let auth = token(&group(&id), &id, SrEncoding::Raw, Some("registration"), se);
            let h = [("authorization", auth.as_str())];
            let resp = client
                .send(Version::H1, "PUT", &register_path(&id, api), &h, Some(&json!({"registrationId": id}).to_string()))
                .await;
            assert_assigned(&follow(&client, Version::H1, &id, &h, resp).await, &id);
        }

        // --- Refusals with DPS error bodies. ---
        let id = "raw-individual";
        let good = |skn: Option<&str>, se: u64| token(&key(DEVICE_KEY), id, SrEncoding::Raw, skn, se);
        let put = |auth: String, version: Version| {
            let client = &client;
            async move {
                let h = [("authorization", auth.as_str())];
                client
                    .send(version, "PUT", &register_path(id, Some("2019-03-31")), &h, Some("{}"))
                    .await
            }
        };
        // Each refusal on its own device, so that the per-device rate limit stays out of it.
        let refused = |rid: &'static str, auth: String, version: Version| {
            let client = &client;
            async move {
                let h = [("authorization", auth.as_str())];
                client
                    .send(version, "PUT", &register_path(rid, Some("2019-03-31")), &h, Some("{}"))
                    .await
            }
        };
        // Bad skn.
        let rid = "refuse-skn";
        let resp = refused(rid, token(&group(rid), rid, SrEncoding::Raw, Some("iothubowner"), se), Version::H2).await;
        assert_eq!(resp.status, 401, "{}", resp.text);
        assert!(resp.body["errorCode"].as_u64().is_some_and(|c| c / 1000 == 401));
        // Expired (beyond the 5-minute clock skew).
        let rid = "refuse-expired";
        let resp = refused(rid, token(&group(rid), rid, SrEncoding::Raw, Some("registration"), now() - 3600), Version::H1).await;
        assert_eq!(resp.status, 401, "{}", resp.text);
        assert!(resp.text.contains("expired"), "{}", resp.text);
        // Wrong key.
        let wrong = token(&key(GROUP_KEY), id, SrEncoding::Raw, Some("registration"), se);
        let resp = put(wrong, Version::H2).await;
        assert_dps_error(&resp, 401, 401_002);
        // A token for another registration ID.
        let rid = "refuse-resource";
        let resp = refused(rid, token(&group(rid), "someone-else", SrEncoding::Raw, Some("registration"), se), Version::H1).await;
        assert_eq!(resp.status, 401, "{}", resp.text);
        // Unknown ID scope.
        let h = [("authorization", good(Some("registration"), se))];
        let resp = client
            .send(Version::H1, "PUT", "/0ne99999999/registrations/raw-individual/register?api-version=2019-03-31", &as_refs(&h), Some("{}"))
            .await;
        assert_dps_error(&resp, 404, 404_000);
        // Body registrationId that is not the path's; a body that is not JSON; csr.
        let resp = client
            .send(Version::H1, "PUT", &register_path(id, Some("2019-03-31")), &as_refs(&h), Some(r#"{"registrationId": "someone-else"}"#))
            .await;
        assert_dps_error(&resp, 400, 400_000);
        let resp = client
            .send(Version::H2, "PUT", &register_path(id, Some("2019-03-31")), &as_refs(&h), Some("{oops"))
            .await;
        assert_dps_error(&resp, 400, 400_000);
        // Wrong method and unknown path.
        let resp = client
            .send(Version::H1, "DELETE", &register_path(id, Some("2019-03-31")), &as_refs(&h), None)
            .await;
        assert_dps_error(&resp, 405, 405_000);
        let resp = client
            .send(Version::H1, "GET", "/nothing/here", &[], None)
            .await;
        assert_dps_error(&resp, 404, 404_000);
        // Unknown operation id.
        let resp = client
            .send(Version::H1, "GET", &format!("/{SCOPE}/registrations/{id}/operations/kdps.nope?api-version=2019-03-31"), &as_refs(&h), Some("{}"))
            .await;
        assert_dps_error(&resp, 404, 404_000);

        // --- Individual enrollment: register, then the registration status lookup. ---
        let resp = put(good(Some("registration"), se), Version::H1).await;
        let resp = follow(&client, Version::H1, id, &as_refs(&h), resp).await;
        assert_assigned(&resp, id);
        assert!(resp.body["registrationState"].get("symmetricKey").is_none());
        let lookup = client
            .send(Version::H2, "POST", &format!("/{SCOPE}/registrations/{id}?api-version=2021-10-01"), &as_refs(&h), Some(&json!({"registrationId": id}).to_string()))
            .await;
        assert_eq!(lookup.status, 200, "{}", lookup.text);
        assert_eq!(lookup.body["registrationId"], id, "bare DeviceRegistrationResult: {}", lookup.text);
        assert_eq!(lookup.body["status"], "assigned");
        assert_eq!(lookup.body["assignedHub"], HUB);
        assert_eq!(lookup.body["etag"], resp.body["registrationState"]["etag"]);
        assert!(lookup.body.get("registrationState").is_none());
        // Lookup of a device that never registered.
        let nid = "never-registered";
        let nh = [("authorization", token(&group(nid), nid, SrEncoding::Raw, Some("registration"), se))];
        let lookup = client
            .send(Version::H1, "POST", &format!("/{SCOPE}/registrations/{nid}?api-version=2021-10-01"), &as_refs(&nh), None)
            .await;
        assert_dps_error(&lookup, 404, 404_000);

        // --- Terminal statuses: disabled, failed. ---
        let did = "raw-disabled";
        let dh = [("authorization", token(&key(DEVICE_KEY), did, SrEncoding::Raw, Some("registration"), se))];
        let resp = client
            .send(Version::H1, "PUT", &register_path(did, Some("2019-03-31")), &as_refs(&dh), Some("{}"))
            .await;
        let resp = follow(&client, Version::H1, did, &as_refs(&dh), resp).await;
        assert_eq!(resp.status, 200, "{}", resp.text);
        assert_eq!(resp.body["status"], "disabled", "{}", resp.text);
        assert_eq!(resp.body["registrationState"]["status"], "disabled");
        assert!(resp.body["registrationState"]["errorCode"].is_u64());

        let fid = "raw-fail";
        let fh = [("authorization", token(&key(DEVICE_KEY), fid, SrEncoding::Raw, Some("registration"), se))];
        let resp = client
            .send(Version::H2, "PUT", &register_path(fid, Some("2019-03-31")), &as_refs(&fh), Some(r#"{"payload": {"x": 1}}"#))
            .await;
        let resp = follow(&client, Version::H2, fid, &as_refs(&fh), resp).await;
        assert_eq!(resp.status, 200, "{}", resp.text);
        assert_eq!(resp.body["status"], "failed", "{}", resp.text);
        assert_eq!(resp.body["registrationState"]["errorCode"], 400_207, "{}", resp.text);
        assert!(resp.body["registrationState"]["errorMessage"].is_string());

        // --- 202 + Location + Retry-After, then polling (GET with a body) to 200. ---
        let sid = "raw-slow";
        let sh = node_headers(&token(&key(DEVICE_KEY), sid, SrEncoding::Raw, Some("registration"), se));
        let first = client
            .send(Version::H1, "PUT", &register_path(sid, Some("2019-03-31")), &as_refs(&sh), Some(r#"{"registrationId":"raw-slow","payload":{"ask":"slowly"}}"#))
            .await;
        assert_eq!(first.status, 202, "{}", first.text);
        assert_eq!(first.body["status"], "assigning");
        assert!(first.body["operationId"].is_string());
        assert!(first.header("retry-after").is_some_and(|r| r.parse::<u64>().is_ok()));
        assert_eq!(
            first.header("location").unwrap(),
            format!("https://localhost:{}/{SCOPE}/registrations/raw-slow/register", svc.port)
        );
        // One immediate poll while the webhook still works: 202 again.
        let operation_id = first.body["operationId"].as_str().unwrap().to_owned();
        let poll = client
            .send(Version::H2, "GET", &format!("/{SCOPE}/registrations/{sid}/operations/{operation_id}?api-version=2019-03-31"), &as_refs(&sh), Some("{}"))
            .await;
        assert_eq!(poll.status, 202, "{}", poll.text);
        assert_eq!(poll.body["operationId"], operation_id.as_str());
        assert!(poll.header("retry-after").is_some());
        let done = follow(&client, Version::H1, sid, &as_refs(&sh), first).await;
        assert_assigned(&done, sid);
        assert_eq!(done.body["operationId"], operation_id.as_str());
        assert_eq!(done.body["registrationState"]["payload"], json!({"slow": true}));

        // --- Throttling: 429 with Retry-After once the per-device limit is used up. ---
        let tid = "throttled-device";
        let th = [("authorization", token(&group(tid), tid, SrEncoding::Raw, Some("registration"), se))];
        let mut throttled = None;
        for _ in 0..=PER_DEVICE_PER_MINUTE {
            let resp = client
                .send(Version::H1, "PUT", &register_path(tid, Some("2019-03-31")), &as_refs(&th), Some("{}"))
                .await;
            if resp.status == 429 {
                throttled = Some(resp);
                break;
            }
            assert!(resp.status == 200 || resp.status == 202, "{}", resp.text);
        }
        let throttled = throttled.expect("no 429 after exceeding perDevicePerMinute");
        assert_dps_error(&throttled, 429, 429_000);
        let retry: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "retry-after {retry}");

        // --- Polls are limited as DPS documents: 5 per 10 s per device. ---
        let pid = "poll-limit";
        let ph = [("authorization", token(&group(pid), pid, SrEncoding::Raw, Some("registration"), se))];
        let poll_path = format!("/{SCOPE}/registrations/{pid}/operations/kdps.unknown?api-version=2019-03-31");
        for _ in 0..5 {
            let resp = client.send(Version::H2, "GET", &poll_path, &as_refs(&ph), None).await;
            assert_dps_error(&resp, 404, 404_000);
        }
        let resp = client.send(Version::H2, "GET", &poll_path, &as_refs(&ph), None).await;
        assert_dps_error(&resp, 429, 429_000);
        assert!(resp.header("retry-after").is_some_and(|r| r.parse::<u64>().is_ok_and(|r| r >= 1)));

        // --- X.509 from the TLS client certificate, no Authorization. ---
        let x509_client = client.with_certificate(&x509);
        for version in BOTH {
            let resp = x509_client
                .send(version, "PUT", &register_path("raw-x509", Some("2021-06-01")), &[("useragent", "prov_device_client/1.0")], Some(r#"{"registrationId":"raw-x509"}"#))
                .await;
            let resp = follow(&x509_client, version, "raw-x509", &[], resp).await;
            assert_assigned(&resp, "raw-x509");
            let info = &resp.body["registrationState"]["x509"]["certificateInfo"];
            assert!(info["sha256Thumbprint"].is_string(), "{}", resp.text);
        }
        // The same path without a certificate.
        let resp = client
            .send(Version::H1, "PUT", &register_path("raw-x509", Some("2021-06-01")), &[], Some("{}"))
            .await;
        assert_eq!(resp.status, 401, "{}", resp.text);

        // --- TPM two-step (Node's form): 401 challenge, SAS signed with the imported key. ---
        let tpm_body = json!({"registrationId": "raw-tpm", "tpm": {"endorsementKey": ek, "storageRootKey": srk}}).to_string();
        let challenge = client
            .send(Version::H1, "PUT", &register_path("raw-tpm", Some("2019-03-31")), &[("user-agent", NODE_UA)], Some(&tpm_body))
            .await;
        assert_eq!(challenge.status, 401, "{}", challenge.text);
        assert_eq!(challenge.body["keyName"], "registration");
        assert!(challenge.body["unencryptedAuthenticationKey"].is_null());
        assert!(challenge.body["message"].is_string());
        let blob = B64.decode(challenge.body["authenticationKey"].as_str().unwrap()).unwrap();
        tpm.import_activation(&blob).unwrap();
        let sr = sas::encode_uri_component(&sas::resource_uri(SCOPE, "raw-tpm"));
        let sig = tpm.hmac(sas::string_to_sign(&sr, se).as_bytes()).unwrap();
        let auth = sas::format_token(&sr, &sig, se, Some("registration"));
        let h = node_headers(&auth);
        let resp = client
            .send(Version::H2, "PUT", &register_path("raw-tpm", Some("2019-03-31")), &as_refs(&h), Some(&tpm_body))
            .await;
        let resp = follow(&client, Version::H2, "raw-tpm", &as_refs(&h), resp).await;
        assert_assigned(&resp, "raw-tpm");
        let hub_blob = B64
            .decode(resp.body["registrationState"]["tpm"]["authenticationKey"].as_str().unwrap())
            .unwrap();
        // The hub key blob is an activation blob for the same TPM.
        tpm.activate(&hub_blob).unwrap();

        // --- TPM two-step, azure-iot-sdk-c's form: `UserAgent`, URL_EncodeString (lower-case
        //     hex) resource, `skn` = the challenge's keyName. ---
        let c_headers = [
            ("useragent", "prov_device_client/1.0"),
            ("accept", "application/json"),
            ("content-type", "application/json; charset=utf-8"),
        ];
        let challenge = client
            .send(Version::H1, "PUT", &register_path("raw-tpm", Some("2021-06-01")), &c_headers, Some(&tpm_body))
            .await;
        assert_eq!(challenge.status, 401, "{}", challenge.text);
        let key_name = challenge.body["keyName"].as_str().unwrap().to_owned();
        let blob = B64.decode(challenge.body["authenticationKey"].as_str().unwrap()).unwrap();
        tpm.import_activation(&blob).unwrap();
        let sr = sas::encode_sr(SCOPE, "raw-tpm", SrEncoding::UrlEncodedLower);
        assert!(sr.contains("%2f"), "{sr}");
        let sig = tpm.hmac(sas::string_to_sign(&sr, se).as_bytes()).unwrap();
        let auth = sas::format_token(&sr, &sig, se, Some(&key_name));
        let mut h = c_headers.to_vec();
        h.push(("authorization", auth.as_str()));
        let resp = client
            .send(Version::H1, "PUT", &register_path("raw-tpm", Some("2021-06-01")), &h, Some(&tpm_body))
            .await;
        let resp = follow(&client, Version::H1, "raw-tpm", &h, resp).await;
        assert_assigned(&resp, "raw-tpm");
        // Re-registering keeps the hub key: the new blob carries the same key.
        let again = B64
            .decode(resp.body["registrationState"]["tpm"]["authenticationKey"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            tpm.activate(&again).unwrap().as_bytes(),
            tpm.activate(&hub_blob).unwrap().as_bytes()
        );
    });

    // The same store as gRPC: the records exist.
    let records = svc.registrations();
    for id in [
        "raw-individual",
        "raw-slow",
        "raw-x509",
        "raw-tpm",
        "c-sdk:h1",
        "node-raw-h2",
    ] {
        assert!(
            records.iter().any(|r| r["registrationId"] == id),
            "no record for {id}"
        );
    }
}

/// `kdps-device register --protocol https`: the device CLI speaking the DPS HTTPS protocol to
/// the same service: symmetric keys (individual, group), X.509, TPM on swtpm, 202 polling with
/// a webhook payload, and the error classes (disabled, wrong key).
#[test]
fn kdps_device_registers_over_https() {
    let hook = Webhook::start(|request| {
        let echo = request["deviceRuntimeContext"]["payload"].clone();
        std::thread::sleep(Duration::from_millis(2500));
        (
            200,
            json!({"iotHubHostName": HUB, "payload": {"echo": echo}}),
        )
    });
    let x509 = Leaf::self_signed("raw-x509");
    let work = tempfile::tempdir().unwrap();
    let (_, cert, key_file) = x509.write(work.path(), "device");
    let tpm = kdps_tests::swtpm::Swtpm::start();
    let ek = kdps_tests::kdps_device(&["tpm", "endorsement-key", "--tpm", &tpm.tcti()]).json();
    let tpm_id = ek["registrationId"].as_str().unwrap().to_owned();
    let yaml = manifests(&hook, &x509, ek["endorsementKey"].as_str().unwrap()).replace(
        "name: raw-tpm, namespace: iot}\nspec:",
        &format!("name: raw-tpm, namespace: iot}}\nspec:\n  registrationId: {tpm_id}"),
    );
    // An X.509 group: a root CA enrolled, the device signed by an intermediate.
    let root = kdps_tests::pki::Ca::root("kdps raw test root");
    let grouped = root
        .intermediate("kdps raw test intermediate")
        .leaf("cli-x509-grouped");
    let (grouped_chain, _, grouped_key) = grouped.write(work.path(), "grouped");
    let yaml = format!(
        r#"{yaml}---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: raw-x509-fleet, namespace: iot}}
spec:
  attestation:
    x509:
      signingCertificates:
        primary:
          certificate: |
{}"#,
        indent(root.pem(), 12)
    );
    let svc = Standalone::start(&yaml);
    let https = |id: &str, args: &[&str]| {
        let mut all = vec!["--protocol", "https"];
        all.extend_from_slice(args);
        svc.register(SCOPE, id, &all)
    };

    let out = https("raw-individual", &["--symmetric-key", DEVICE_KEY]).json();
    assert_eq!(out["status"], "assigned");
    assert_eq!(out["assignedHub"], HUB);
    assert_eq!(out["deviceId"], "raw-individual");
    assert_eq!(out["substatus"], "initialAssignment");

    let out = https("cli-sensor-1", &["--group-key", GROUP_KEY]).json();
    assert_eq!(out["deviceId"], "cli-sensor-1");
    assert_eq!(out["enrollmentGroupId"], "raw-fleet");

    let out = https(
        "raw-x509",
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key_file.to_str().unwrap(),
        ],
    )
    .json();
    assert_eq!(out["deviceId"], "raw-x509");

    let out = https(
        "cli-x509-grouped",
        &[
            "--cert",
            grouped_chain.to_str().unwrap(),
            "--key",
            grouped_key.to_str().unwrap(),
        ],
    )
    .json();
    assert_eq!(out["deviceId"], "cli-x509-grouped");
    assert_eq!(out["enrollmentGroupId"], "raw-x509-fleet");

    let out = https(&tpm_id, &["--tpm", &tpm.tcti()]).json();
    assert_eq!(out["status"], "assigned", "{out}");
    assert_eq!(out["registrationId"], tpm_id.as_str());

    // 202 + polling until the slow webhook answered; the payload goes both ways.
    let out = https(
        "raw-slow",
        &["--symmetric-key", DEVICE_KEY, "--payload", r#"{"fw": 7}"#],
    )
    .json();
    assert_eq!(out["payload"], json!({"echo": {"fw": 7}}));
    // The register call answered 202 (pending), counted under the HTTPS front end.
    let (_, metrics) = kdps_tests::http_get(svc.admin(), "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kdps_registration_registrations_total{")
                && l.contains("protocol=\"https\"")
                && l.contains("outcome=\"pending\"")),
        "no pending HTTPS registration counted:\n{metrics}"
    );

    https("raw-disabled", &["--symmetric-key", DEVICE_KEY]).assert_error(4, "disabled");
    https("raw-individual", &["--symmetric-key", GROUP_KEY]).assert_error(3, "unauthorized");
    // Same data for gRPC and HTTPS: the HTTPS registration is the one gRPC sees again.
    let grpc = svc
        .register(SCOPE, "cli-sensor-1", &["--group-key", GROUP_KEY])
        .json();
    assert_eq!(grpc["deviceId"], "cli-sensor-1");
    assert_eq!(grpc["substatus"], "initialAssignment");
}
