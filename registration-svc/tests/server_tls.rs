//! Real-socket tests of the device port and the admin port: `Server::run` on 127.0.0.1:0
//! with the self-managed TLS certificates, a tonic TLS client (gRPC over h2), reqwest
//! (HTTP/1.1 and HTTP/2 over the same TLS port, plain HTTP on the admin port) and raw TCP
//! clients that never finish their handshakes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod server_common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, body::Bytes, routing::post};
use kdps_proto::registration::v1::{
    register_response::Result as RegisterResult,
    registration_service_client::RegistrationServiceClient,
};
use kdps_registration::{
    metrics::Metrics,
    server::{DeviceApi, DeviceAttestation, Limits, Readiness, Server},
    tls,
};
use rustls::pki_types::{CertificateDer, pem::PemObject as _};
use server_common::{FakeBackend, symmetric_register};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

struct Running {
    device: SocketAddr,
    admin: SocketAddr,
    ca_pem: String,
    backend: Arc<FakeBackend>,
    readiness: Readiness,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), kdps_registration::server::ServerError>>,
    _data: tempfile::TempDir,
}

async fn start(limits: Limits) -> Running {
    let data = tempfile::tempdir().unwrap();
    let names = tls::default_server_names("127.0.0.1", &[]);
    let managed = tls::ensure_self_managed(&data.path().join("tls"), &names).unwrap();
    let ca_pem = managed.ca_pem.clone();
    let server_tls = tls::server_config(managed.identity).unwrap();

    let backend = Arc::new(FakeBackend::default());
    let (registry, metrics) = Metrics::with_new_registry();
    let api = DeviceApi::new(backend.clone(), metrics.clone(), &limits)
        .unwrap()
        // The seam for the DPS HTTPS front end; here a test route that reads its body.
        .merge(Router::new().route(
            "/test/echo",
            post(|body: Bytes| async move { body.len().to_string() }),
        ));
    let readiness = Readiness::new();
    let device = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (device_addr, admin_addr) = (device.local_addr().unwrap(), admin.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = Server {
        admin_routes: axum::Router::new(),
        tls: server_tls,
        api,
        metrics,
        registry: Arc::new(registry),
        readiness: readiness.clone(),
        limits,
    };
    let task = tokio::spawn(server.run(device, admin, shutdown.clone()));
    Running {
        device: device_addr,
        admin: admin_addr,
        ca_pem,
        backend,
        readiness,
        shutdown,
        task,
        _data: data,
    }
}

impl Running {
    async fn channel(&self, identity: Option<Identity>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Channel::from_shared(format!("https://127.0.0.1:{}", self.device.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn https(&self, http1_only: bool) -> reqwest::Client {
        let builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .resolve("localhost", self.device);
        let builder = if http1_only {
            builder.http1_only()
        } else {
            builder
        };
        builder.build().unwrap()
    }

    fn device_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.device.port())
    }

    async fn admin_get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text().await.unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

async fn wait_for_health(channel: Channel, service: &str, want: ServingStatus) {
    let mut health = HealthClient::new(channel);
    for _ in 0..200 {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("health of {service:?} never became {want:?}");
}

#[tokio::test]
async fn grpc_over_tls_register_health_and_reflection() {
    let server = start(Limits::default()).await;
    let channel = server.channel(None).await;

    // Register over TLS + h2; the backend sees the client's address and no certificate.
    let mut client = RegistrationServiceClient::new(channel.clone());
    let response = client
        .register(symmetric_register("dev-tls"))
        .await
        .unwrap()
        .into_inner();
    match response.result {
        Some(RegisterResult::Assignment(s)) => assert_eq!(s.assigned_hub, "hub.example"),
        other => panic!("{other:?}"),
    }
    let seen = server.backend.last();
    assert_eq!(
        seen.peer.addr.ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert!(seen.peer.chain.is_empty());

    // Health follows the readiness flag.
    let service = "kdps.registration.v1.RegistrationService";
    wait_for_health(channel.clone(), "", ServingStatus::NotServing).await;
    server.readiness.set_ready(true);
    wait_for_health(channel.clone(), "", ServingStatus::Serving).await;
    wait_for_health(channel.clone(), service, ServingStatus::Serving).await;
    server.readiness.set_ready(false);
    wait_for_health(channel.clone(), service, ServingStatus::NotServing).await;

    // Reflection lists the services and serves the registration descriptor.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(service.to_owned())),
        },
    ];
    let mut stream = reflection
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let listed = stream.message().await.unwrap().unwrap();
    match listed.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            assert!(names.contains(&service.to_owned()), "{names:?}");
            assert!(
                names.contains(&"grpc.health.v1.Health".to_owned()),
                "{names:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let file = stream.message().await.unwrap().unwrap();
    match file.message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => {
            use prost::Message as _;
            let names: Vec<String> = files
                .file_descriptor_proto
                .iter()
                .map(|b| {
                    prost_types::FileDescriptorProto::decode(b.as_slice())
                        .unwrap()
                        .name()
                        .to_owned()
                })
                .collect();
            assert!(
                names.contains(&"kdps/registration/v1/registration.proto".to_owned()),
                "{names:?}"
            );
        }
        other => panic!("{other:?}"),
    }

    let metrics = server.metrics().await;
    assert!(metrics.contains(
        r#"kdps_registration_registrations_total{protocol="grpc",attestation="symmetric_key",outcome="assigned"} 1"#
    ), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn x509_client_certificate_reaches_the_backend() {
    let server = start(Limits::default()).await;
    // A device certificate from a CA the server has never heard of.
    let device_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "device CA");
    let device_ca = ca_params.self_signed(&device_ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(device_ca.der(), &device_ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "x509-dev");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let identity = Identity::from_pem(
        format!("{}{}", leaf.pem(), device_ca.pem()),
        leaf_key.serialize_pem(),
    );

    let mut client = RegistrationServiceClient::new(server.channel(Some(identity)).await);
    let mut request = symmetric_register("x509-dev");
    request.attestation = Some(kdps_proto::registration::v1::Attestation {
        mechanism: Some(kdps_proto::registration::v1::attestation::Mechanism::X509(
            Default::default(),
        )),
    });
    client.register(request).await.unwrap();
    let seen = server.backend.last();
    assert_eq!(seen.attestation, DeviceAttestation::X509);
    assert_eq!(
        seen.peer.chain.as_slice(),
        &[leaf.der().clone(), device_ca.der().clone()]
    );
    assert_eq!(seen.peer.client_certificate(), Some(leaf.der()));
    server.stop().await;
}

#[tokio::test]
async fn https_routes_share_the_tls_port_over_http1_and_http2() {
    let server = start(Limits::default()).await;
    for http1_only in [true, false] {
        let client = server.https(http1_only);
        let response = client
            .put(
                server
                    .device_url("/0ne00000A11/registrations/dev-1/register?api-version=2021-06-01"),
            )
            .json(&serde_json::json!({"registrationId": "dev-1"}))
            .send()
            .await
            .unwrap();
        let expected_version = if http1_only {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!(response.version(), expected_version);
        // Until the DPS HTTPS front end is merged, DPS paths get a DPS-style 404.
        assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);
        assert_eq!(response.headers().get("x-ms-error-code").unwrap(), "404000");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["errorCode"], 404_000);
        assert!(body["trackingId"].is_string() && body["timestampUtc"].is_string());

        // Merged routes are reachable and body sizes are bounded.
        let ok = client
            .post(server.device_url("/test/echo"))
            .body(vec![b'a'; 1000])
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), reqwest::StatusCode::OK);
        assert_eq!(ok.text().await.unwrap(), "1000");
        let too_big = client
            .post(server.device_url("/test/echo"))
            .body(vec![b'a'; 200 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(too_big.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
    }
    server.stop().await;
}

#[tokio::test]
async fn admin_endpoints() {
    let server = start(Limits::default()).await;
    let health = server.admin_get("/healthz").await;
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    assert_eq!(
        server.admin_get("/readyz").await.status(),
        reqwest::StatusCode::SERVICE_UNAVAILABLE
    );
    server.readiness.set_ready(true);
    assert_eq!(
        server.admin_get("/readyz").await.status(),
        reqwest::StatusCode::OK
    );
    // Families without series are not exported; make one registration first.
    let mut client = RegistrationServiceClient::new(server.channel(None).await);
    client
        .register(symmetric_register("throttled"))
        .await
        .unwrap_err();
    let metrics = server.admin_get("/metrics").await;
    assert_eq!(metrics.status(), reqwest::StatusCode::OK);
    assert!(
        metrics
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("# TYPE kdps_registration_registrations counter"),
        "{text}"
    );
    assert!(text.contains(
        r#"kdps_registration_registrations_total{protocol="grpc",attestation="symmetric_key",outcome="throttled"} 1"#
    ));
    assert!(text.contains("# UNIT kdps_registration_request_duration_seconds seconds"));
    assert!(text.ends_with("# EOF\n"));
    assert_eq!(
        server.admin_get("/nope").await.status(),
        reqwest::StatusCode::NOT_FOUND
    );
    server.stop().await;
}

#[tokio::test]
async fn failed_and_stalled_handshakes_are_counted_and_closed() {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = start(limits).await;

    // Not TLS at all.
    let mut garbage = TcpStream::connect(server.device).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut buf)).await;

    // Connects and says nothing: closed after the handshake timeout.
    let mut silent = TcpStream::connect(server.device).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte))
        .await
        .expect("the server closes a silent connection");
    assert!(matches!(read, Ok(0) | Err(_)));

    // A client that does not trust the server's CA aborts the handshake.
    let other = tls::ensure_self_managed(
        &tempfile::tempdir().unwrap().path().join("tls"),
        &["localhost".to_owned()],
    )
    .unwrap();
    let wrong = Channel::from_shared(format!("https://127.0.0.1:{}", server.device.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&other.ca_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await;
    assert!(wrong.is_err());

    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = server.metrics().await;
        if metrics.contains(r#"tls_handshake_failures_total{reason="timeout"} 1"#)
            && metrics.contains(r#"tls_handshake_failures_total{reason="error"} 2"#)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics.contains(r#"kdps_registration_tls_handshake_failures_total{reason="timeout"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"kdps_registration_tls_handshake_failures_total{reason="error"} 2"#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns() {
    let server = start(Limits::default()).await;
    let ca = CertificateDer::from_pem_slice(server.ca_pem.as_bytes()).unwrap();
    assert!(!ca.is_empty());
    let device = server.device;
    let admin = server.admin;
    server.stop().await;
    assert!(TcpStream::connect(device).await.is_err());
    assert!(TcpStream::connect(admin).await.is_err());
}
