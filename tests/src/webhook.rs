//! A custom-allocation webhook for tests: a real HTTPS server (hyper + tokio-rustls) on
//! 127.0.0.1, with a server certificate from its own rcgen CA, answering each DPS
//! `AllocationRequest` with whatever the test's handler returns. Every request body is kept
//! for the test to inspect.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What the handler answers: HTTP status and JSON body.
pub type Answer = (u16, serde_json::Value);

type Handler = dyn Fn(&serde_json::Value) -> Answer + Send + Sync;

/// A running webhook; stopped when dropped.
pub struct Webhook {
    addr: SocketAddr,
    ca_pem: String,
    requests: Arc<Mutex<Vec<serde_json::Value>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Webhook {
    /// Starts the webhook; `handler` gets each request's JSON body.
    pub fn start(
        handler: impl Fn(&serde_json::Value) -> Answer + Send + Sync + 'static,
    ) -> Webhook {
        // CA + server certificate for 127.0.0.1.
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kdps test webhook CA");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let mut server_params = CertificateParams::default();
        server_params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(server_cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .expect("server TLS config");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind webhook");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("webhook addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let seen = requests.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("webhook runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut stop_rx => return,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let acceptor = acceptor.clone();
                    let handler = handler.clone();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |req| {
                            serve(req, handler.clone(), seen.clone())
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        Webhook {
            addr,
            ca_pem: ca_cert.pem(),
            requests,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:PORT/allocate`.
    pub fn url(&self) -> String {
        format!("https://{}/allocate", self.addr)
    }

    /// The CA that signs the webhook's certificate (for `customAllocation.caBundle`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Every request body received so far.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.requests.lock().expect("requests lock").clone()
    }
}

async fn serve(
    req: hyper::Request<Incoming>,
    handler: Arc<Handler>,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let method_ok = req.method() == http::Method::POST && req.uri().path() == "/allocate";
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (status, answer) = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(json) if method_ok => {
            seen.lock().expect("requests lock").push(json.clone());
            handler(&json)
        }
        Ok(_) => (404, serde_json::json!({"error": "POST /allocate only"})),
        Err(e) => (400, serde_json::json!({"error": e.to_string()})),
    };
    let response = hyper::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(answer.to_string())))
        .expect("response");
    Ok(response)
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
