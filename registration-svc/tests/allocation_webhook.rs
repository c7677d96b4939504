//! The custom-allocation webhook client against a real HTTPS webhook on 127.0.0.1, served by
//! axum over tokio-rustls with a certificate from a throwaway rcgen CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use kdps_registration::allocation::{
    AllocationError, CustomAllocationRequest, EnrollmentDocument, LinkCandidate,
    RuntimeAttestation, WebhookClient, WebhookConfig,
};
use kdps_registration::registry::EnrollmentKind;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

type Seen = Arc<Mutex<Vec<Value>>>;

struct Webhook {
    addr: SocketAddr,
    ca_pem: String,
    seen: Seen,
}

impl Webhook {
    fn config(&self, path: &str, timeout: Duration) -> WebhookConfig {
        WebhookConfig {
            url: format!("https://{}{path}?code=TOPSECRET", self.addr)
                .parse()
                .unwrap(),
            ca_bundle_pem: self.ca_pem.clone(),
            timeout,
        }
    }

    fn client(&self, path: &str) -> WebhookClient {
        WebhookClient::new(&self.config(path, Duration::from_secs(5))).unwrap()
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn pki() -> (String, rustls::ServerConfig) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kdps test webhook CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca_cert.pem(), config)
}

async fn record(State(seen): State<Seen>, Json(body): Json<Value>) {
    seen.lock().unwrap().push(body);
}

async fn start_webhook() -> Webhook {
    let (ca_pem, tls) = pki();
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/ok",
            post(|state: State<Seen>, body: Json<Value>| async move {
                let hubs = body.0["linkedHubs"].clone();
                record(state, body).await;
                Json(json!({
                    "iotHubHostName": hubs[1],
                    "initialTwin": {
                        "tags": {"deviceType": "toaster"},
                        "properties": {"desired": {"state": "ready"}}
                    },
                    "payload": {"welcome": true}
                }))
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Json(json!({"iotHubHostName": "a.example.com"}))
            }),
        )
        .route(
            "/error",
            post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route(
            "/reject",
            post(|| async { (StatusCode::BAD_REQUEST, "unknown device model") }),
        )
        .route(
            "/outside",
            post(|| async { Json(json!({"iotHubHostName": "rogue.example.com"})) }),
        )
        .route("/garbage", post(|| async { "this is { not json" }))
        .route(
            "/huge",
            post(|| async {
                let big = "x".repeat(200 * 1024);
                Json(json!({"iotHubHostName": "a.example.com", "payload": {"big": big}}))
            }),
        )
        .route(
            "/redirect",
            post(|| async {
                Response::builder()
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    .header("location", "/ok")
                    .body(axum::body::Body::empty())
                    .unwrap()
                    .into_response()
            }),
        )
        .with_state(Arc::clone(&seen));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    Webhook { addr, ca_pem, seen }
}

fn links() -> Vec<LinkCandidate> {
    ["a", "b"]
        .iter()
        .map(|n| LinkCandidate {
            name: format!("link-{n}"),
            host_name: format!("{n}.example.com"),
            device_namespace: format!("hub-{n}"),
            weight: 1,
            region: None,
        })
        .collect()
}

fn request() -> CustomAllocationRequest {
    CustomAllocationRequest {
        enrollment: EnrollmentDocument {
            kind: EnrollmentKind::Group,
            document: json!({"enrollmentGroupId": "toasters", "allocationPolicy": "custom"}),
        },
        registration_id: "breakroom499-contoso-tstrsd-007".into(),
        current_hub_host_name: Some("a.example.com".into()),
        current_device_id: Some("breakroom499-contoso-tstrsd-007".into()),
        attestation: RuntimeAttestation::SymmetricKey,
        payload: Some(json!({"model": "toaster-9000"})),
    }
}

#[tokio::test]
async fn success_returns_hub_twin_and_payload() {
    let hook = start_webhook().await;
    let links = links();
    let got = hook
        .client("/ok")
        .allocate(&request(), &links)
        .await
        .unwrap();
    assert_eq!(got.link.name, "link-b");
    let twin = got.initial_twin.unwrap();
    assert_eq!(twin.tags, json!({"deviceType": "toaster"}));
    assert_eq!(twin.desired, json!({"state": "ready"}));
    assert_eq!(got.payload, Some(json!({"welcome": true})));

    // The webhook saw a DPS AllocationRequest.
    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0],
        json!({
            "enrollmentGroup": {"enrollmentGroupId": "toasters", "allocationPolicy": "custom"},
            "deviceRuntimeContext": {
                "registrationId": "breakroom499-contoso-tstrsd-007",
                "currentIotHubHostName": "a.example.com",
                "currentDeviceId": "breakroom499-contoso-tstrsd-007",
                "symmetricKey": {},
                "payload": {"model": "toaster-9000"}
            },
            "linkedHubs": ["a.example.com", "b.example.com"]
        })
    );
}

#[tokio::test]
async fn timeout_is_reported_as_such() {
    let hook = start_webhook().await;
    let client = WebhookClient::new(&hook.config("/slow", Duration::from_millis(300))).unwrap();
    let started = Instant::now();
    let err = client.allocate(&request(), &links()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "timeout not honoured"
    );
    assert!(
        matches!(err, AllocationError::WebhookTimeout { .. }),
        "{err}"
    );
    assert_eq!(err.dps_error_code(), 400_207);
    assert_eq!(err.grpc_code(), tonic::Code::Unavailable);
    assert!(err.to_string().contains("0.3s"), "{err}");
    assert!(!err.to_string().contains("TOPSECRET"), "{err}");
}

#[tokio::test]
async fn error_statuses_use_dps_wording() {
    let hook = start_webhook().await;
    let err = hook
        .client("/error")
        .allocate(&request(), &links())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Custom allocation failed with status code: 500"
    );
    assert_eq!(err.dps_error_code(), 400_207);
    assert!(err.is_retryable());
    let err = hook
        .client("/reject")
        .allocate(&request(), &links())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Custom allocation failed with status code: 400"
    );
    assert!(!err.is_retryable());
    // Redirects are not followed.
    let err = hook
        .client("/redirect")
        .allocate(&request(), &links())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AllocationError::WebhookStatus { status: 307 }),
        "{err}"
    );
    assert!(
        hook.seen.lock().unwrap().is_empty(),
        "/ok must not be reached"
    );
}

#[tokio::test]
async fn hub_outside_the_links_is_refused() {
    let hook = start_webhook().await;
    let err = hook
        .client("/outside")
        .allocate(&request(), &links())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AllocationError::HubNotLinked { host_name } if host_name == "rogue.example.com"),
        "{err}"
    );
    assert_eq!(err.dps_error_code(), 400_208);
}

#[tokio::test]
async fn garbage_and_oversized_bodies_are_refused() {
    let hook = start_webhook().await;
    let err = hook
        .client("/garbage")
        .allocate(&request(), &links())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AllocationError::WebhookInvalidResponse(_)),
        "{err}"
    );
    assert!(err.to_string().contains("AllocationResponse"), "{err}");
    let err = hook
        .client("/huge")
        .allocate(&request(), &links())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[tokio::test]
async fn untrusted_certificate_and_unreachable_webhook() {
    let hook = start_webhook().await;
    // A client trusting another CA must not talk to the webhook.
    let (other_ca, _) = pki();
    let mut config = hook.config("/ok", Duration::from_secs(5));
    config.ca_bundle_pem = other_ca;
    let err = WebhookClient::new(&config)
        .unwrap()
        .allocate(&request(), &links())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AllocationError::WebhookUnreachable { .. }),
        "{err}"
    );
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "the TLS reason should be visible: {err}"
    );
    assert!(!err.to_string().contains("TOPSECRET"), "{err}");
    assert!(hook.seen.lock().unwrap().is_empty());

    // Nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let config = WebhookConfig {
        url: format!("https://{addr}/allocate?code=TOPSECRET")
            .parse()
            .unwrap(),
        ca_bundle_pem: hook.ca_pem.clone(),
        timeout: Duration::from_secs(2),
    };
    let err = WebhookClient::new(&config)
        .unwrap()
        .allocate(&request(), &links())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AllocationError::WebhookUnreachable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(!err.to_string().contains("TOPSECRET"), "{err}");
    assert!(err.is_retryable());

    // No links: refused before any call.
    let err = hook
        .client("/ok")
        .allocate(&request(), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, AllocationError::NoEligibleLinks));
}
