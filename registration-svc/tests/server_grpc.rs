//! In-memory gRPC tests: the device router served by `serve_connection` over a
//! `tokio::io::duplex` pipe (tonic's mock pattern), with a fake backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod server_common;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use kdps_proto::{
    grpc_convert::{json_to_value, value_to_json},
    registration::v1::{
        self as pb, register_response::Result as RegisterResult,
        registration_service_client::RegistrationServiceClient,
    },
};
use kdps_registration::{
    metrics::{self, Metrics},
    server::{DeviceApi, DeviceAttestation, HttpVersion, Limits, PeerInfo, serve_connection},
};
use prometheus_client::registry::Registry;
use rustls::pki_types::CertificateDer;
use server_common::{FakeBackend, TPM_CHALLENGE_BLOB, TPM_HUB_KEY_BLOB, symmetric_register};
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Request,
    transport::{Channel, Endpoint, Uri},
};

struct Harness {
    client: RegistrationServiceClient<Channel>,
    backend: Arc<FakeBackend>,
    registry: Registry,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

fn peer() -> PeerInfo {
    PeerInfo {
        addr: "192.0.2.7:40000".parse::<SocketAddr>().unwrap(),
        chain: Arc::new(vec![CertificateDer::from(vec![0x30, 0x00])]),
    }
}

async fn harness_with(limits: Limits) -> Harness {
    let backend = Arc::new(FakeBackend::default());
    let (registry, metrics) = Metrics::with_new_registry();
    let api = DeviceApi::new(backend.clone(), metrics, &limits).unwrap();
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            serve_connection(
                server_io,
                peer(),
                api.into_router(),
                &limits,
                HttpVersion::Http2,
                shutdown,
            )
            .await;
        }
    });
    let mut client_io = Some(client_io);
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let io = client_io.take();
            async move {
                io.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the in-memory connection is used"))
            }
        }))
        .await
        .unwrap();
    Harness {
        client: RegistrationServiceClient::new(channel),
        backend,
        registry,
        shutdown,
        server,
    }
}

async fn harness() -> Harness {
    harness_with(Limits::default()).await
}

fn assignment(response: pb::RegisterResponse) -> pb::RegistrationState {
    match response.result {
        Some(RegisterResult::Assignment(state)) => state,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

#[tokio::test]
async fn register_symmetric_key_reaches_backend_with_peer_payload_and_deadline() {
    let mut h = harness().await;
    let payload = serde_json::json!({"model": "x1", "slots": [1, 2], "tuning": 0.5});
    let mut message = symmetric_register("dev-1");
    message.payload = Some(json_to_value(payload.clone()));
    let mut request = Request::new(message);
    request.set_timeout(Duration::from_secs(5));
    let state = assignment(h.client.register(request).await.unwrap().into_inner());

    assert_eq!(state.registration_id, "dev-1");
    assert_eq!(state.assigned_hub, "hub.example");
    assert_eq!(state.device_id, "dev-1");
    assert_eq!(state.status(), pb::RegistrationStatus::Assigned);
    assert_eq!(
        state.substatus(),
        pb::RegistrationSubstatus::InitialAssignment
    );
    assert_eq!(state.etag, "etag-1");
    assert!(state.created_time.is_some() && state.last_updated_time.is_some());
    assert_eq!(value_to_json(state.payload.unwrap()).unwrap(), payload);

    let seen = h.backend.last();
    assert_eq!(seen.peer, peer());
    assert_eq!(seen.payload, Some(payload));
    assert!(matches!(
        seen.attestation,
        DeviceAttestation::SymmetricKey { ref sas_token } if sas_token.starts_with("SharedAccessSignature")
    ));
    // 5 s client timeout minus a safety margin of 10 % (at most 1 s).
    let budget = seen.budget.unwrap();
    assert!(
        budget > Duration::from_millis(3000) && budget <= Duration::from_millis(4500),
        "{budget:?}"
    );

    // Without a client deadline the server's maximum wait applies.
    h.client
        .register(symmetric_register("dev-2"))
        .await
        .unwrap();
    let budget = h.backend.last().budget.unwrap();
    assert!(budget > Duration::from_secs(29), "{budget:?}");

    let text = metrics::encode(&h.registry).unwrap();
    assert!(text.contains(
        r#"kdps_registration_registrations_total{protocol="grpc",attestation="symmetric_key",outcome="assigned"} 2"#
    ), "{text}");
    h.shutdown.cancel();
    h.server.await.unwrap();
}

#[tokio::test]
async fn tpm_registration_gets_a_challenge_then_an_assignment() {
    let mut h = harness().await;
    let tpm = |sas: Option<&str>| pb::RegisterRequest {
        id_scope: "0ne00000A11".into(),
        registration_id: "tpm-dev".into(),
        attestation: Some(pb::Attestation {
            mechanism: Some(pb::attestation::Mechanism::Tpm(pb::TpmAttestation {
                endorsement_key: vec![1, 58, 0, 1],
                storage_root_key: vec![0, 10, 0, 1],
                sas_token: sas.map(str::to_owned),
            })),
        }),
        payload: None,
    };
    let first = h.client.register(tpm(None)).await.unwrap().into_inner();
    match first.result {
        Some(RegisterResult::TpmChallenge(c)) => {
            assert_eq!(c.authentication_key, TPM_CHALLENGE_BLOB);
            assert_eq!(c.key_name, "registration");
        }
        other => panic!("expected a TPM challenge, got {other:?}"),
    }
    match h.backend.last().attestation {
        DeviceAttestation::Tpm {
            endorsement_key,
            storage_root_key,
            sas_token,
        } => {
            assert_eq!(endorsement_key, vec![1, 58, 0, 1]);
            assert_eq!(storage_root_key, vec![0, 10, 0, 1]);
            assert_eq!(sas_token, None);
        }
        other => panic!("{other:?}"),
    }
    let second = h
        .client
        .register(tpm(Some(
            "SharedAccessSignature sr=a&sig=b&se=1&skn=registration",
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(assignment(second).tpm_authentication_key, TPM_HUB_KEY_BLOB);
    let text = metrics::encode(&h.registry).unwrap();
    assert!(text.contains(r#"attestation="tpm",outcome="challenge"} 1"#));
    assert!(text.contains(r#"attestation="tpm",outcome="assigned"} 1"#));
}

#[tokio::test]
async fn slow_registration_answers_pending_before_the_client_deadline_and_can_be_polled() {
    let mut h = harness().await;
    let mut request = Request::new(symmetric_register("slow"));
    request.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    // The client gives up after 1 s: an answer means the server answered before that.
    let response = h.client.register(request).await.unwrap().into_inner();
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "waited for the deadline"
    );
    let pending = match response.result {
        Some(RegisterResult::Pending(p)) => p,
        other => panic!("expected pending, got {other:?}"),
    };
    assert_eq!(pending.operation_id, "op-slow");
    assert_eq!(pending.retry_after.unwrap().seconds, 2);
    assert_eq!(pending.status(), pb::RegistrationStatus::Assigning);

    let attestation = symmetric_register("slow").attestation;
    let poll = |op: &str| pb::GetOperationStatusRequest {
        id_scope: "0ne00000A11".into(),
        registration_id: "slow".into(),
        operation_id: op.into(),
        attestation: attestation.clone(),
    };
    let done = h
        .client
        .get_operation_status(poll("op-slow"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.operation_id, "op-slow");
    match done.result {
        Some(pb::get_operation_status_response::Result::Assignment(s)) => {
            assert_eq!(s.status(), pb::RegistrationStatus::Assigned)
        }
        other => panic!("{other:?}"),
    }
    let running = h
        .client
        .get_operation_status(poll("op-running"))
        .await
        .unwrap()
        .into_inner();
    match running.result {
        Some(pb::get_operation_status_response::Result::Pending(p)) => {
            let d = p.retry_after.unwrap();
            assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
        }
        other => panic!("{other:?}"),
    }
    let missing = h
        .client
        .get_operation_status(poll("op-nope"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(h.backend.last().operation, "operation_status");
    let text = metrics::encode(&h.registry).unwrap();
    assert!(text.contains(r#"outcome="pending"} 1"#));
    assert!(text.contains(
        r#"kdps_registration_request_duration_seconds_count{protocol="grpc",operation="operation_status"} 3"#
    ));
}

#[tokio::test]
async fn backend_errors_become_grpc_statuses() {
    let mut h = harness().await;
    let e = h
        .client
        .register(symmetric_register("throttled"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(e.metadata().get("retry-after").unwrap(), "3");
    assert_eq!(e.metadata().get("dps-error-code").unwrap(), "429000");

    let e = h
        .client
        .register(symmetric_register("intruder"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(e.message(), "Invalid certificate.");
    assert_eq!(e.metadata().get("dps-error-code").unwrap(), "401002");

    let e = h
        .client
        .register(symmetric_register("broken"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert!(!e.message().contains("fire"), "internal detail leaked");

    let disabled = assignment(
        h.client
            .register(symmetric_register("disabled"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(disabled.status(), pb::RegistrationStatus::Disabled);
    assert_eq!(disabled.error_code, 401_003);
    assert_eq!(disabled.assigned_hub, "");

    let text = metrics::encode(&h.registry).unwrap();
    for outcome in ["throttled", "unauthorized", "failed", "disabled"] {
        assert!(
            text.contains(&format!(
                r#"attestation="symmetric_key",outcome="{outcome}"}} 1"#
            )),
            "{outcome}: {text}"
        );
    }
}

#[tokio::test]
async fn malformed_requests_are_rejected_before_the_backend() {
    let mut h = harness().await;
    let mut no_attestation = symmetric_register("dev");
    no_attestation.attestation = None;
    let e = h.client.register(no_attestation).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("attestation"), "{}", e.message());

    let mut no_id = symmetric_register("");
    no_id.registration_id = String::new();
    let e = h.client.register(no_id).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("registration_id"));

    let mut non_finite = symmetric_register("dev");
    non_finite.payload = Some(prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
    });
    let e = h.client.register(non_finite).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let e = h
        .client
        .get_registration_state(pb::GetRegistrationStateRequest {
            id_scope: "0ne00000A11".into(),
            registration_id: "dev".into(),
            attestation: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Oversized messages are refused by the decoder (limit 96 KiB).
    let mut big = symmetric_register("dev");
    big.payload = Some(json_to_value(serde_json::Value::String(
        "x".repeat(100 * 1024),
    )));
    let e = h.client.register(big).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );

    assert!(
        h.backend.seen().is_empty(),
        "the backend must not be called"
    );
    let text = metrics::encode(&h.registry).unwrap();
    assert!(
        text.contains(r#"attestation="symmetric_key",outcome="invalid"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn registration_state_lookup() {
    let mut h = harness().await;
    let attestation = symmetric_register("x").attestation;
    let state = h
        .client
        .get_registration_state(pb::GetRegistrationStateRequest {
            id_scope: "0ne00000A11".into(),
            registration_id: "dev-9".into(),
            attestation: attestation.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .registration_state
        .unwrap();
    assert_eq!(state.registration_id, "dev-9");
    assert_eq!(state.status(), pb::RegistrationStatus::Assigned);
    let e = h
        .client
        .get_registration_state(pb::GetRegistrationStateRequest {
            id_scope: "0ne00000A11".into(),
            registration_id: "unknown".into(),
            attestation,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(h.backend.last().operation, "registration_state");
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_call_finish() {
    let mut h = harness().await;
    let call = tokio::spawn({
        let mut client = h.client.clone();
        async move {
            let mut request = Request::new(symmetric_register("slow"));
            request.set_timeout(Duration::from_millis(600));
            client.register(request).await
        }
    });
    // Let the call reach the backend, then start the shutdown.
    for _ in 0..100 {
        if !h.backend.seen().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.shutdown.cancel();
    let response = call.await.unwrap().unwrap().into_inner();
    assert!(matches!(response.result, Some(RegisterResult::Pending(_))));
    tokio::time::timeout(Duration::from_secs(5), h.server)
        .await
        .expect("the connection closes after draining")
        .unwrap();
    // New calls fail: the connection is gone.
    assert!(h.client.register(symmetric_register("dev")).await.is_err());
}
