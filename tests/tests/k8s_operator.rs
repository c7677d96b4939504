//! Tier 3: the kdps CRDs and `kdps-operator` against a real kube-apiserver (+ etcd and the
//! kube-controller-manager's garbage collector) from `tests/control-plane/up`.
//!
//! - the CRDs are Established, and their CEL rules reject invalid objects with readable
//!   messages (two attestations, TPM on a group, bad registration ID, weight 0/1001, custom
//!   without webhook, static with two hubs, idScope change);
//! - the operator, run as a local process, creates the registration service's children with
//!   owner references (hub-namespace RBAC by label), fills status (idScope generated and
//!   stable across restarts, endpoint, caBundle that verifies the serving certificate with
//!   openssl, conditions), grants the service exactly its permissions, removes hub RBAC but
//!   never Devices when a link goes away, and lets the garbage collector remove the rest;
//! - an enrollment with a missing Secret is Ready=False/SecretNotFound (with a Warning Event)
//!   and becomes Ready when the Secret appears; a link to a missing namespace is
//!   HubNamespaceMissing until the namespace exists;
//! - `helm lint` and `helm install` of charts/kdps, then the operator running with the chart's
//!   ServiceAccount (impersonated) reconciles a service — the chart's RBAC is sufficient.
//!
//! No kubelet runs: pods never start, so Deployment readiness is simulated by writing the
//! Deployment status as the deployment controller would. Every test uses its own namespaces
//! and its own operator (`--watch-namespace`), so tests and test binaries can share one
//! control plane.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    future::Future,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Secret, Service, ServiceAccount},
        events::v1::Event,
        rbac::v1::{Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference},
};
use kdps_api::v1alpha1::{
    Device, EnrollmentGroup, IndividualEnrollment, IoTHubLink, ProvisioningService,
};
use kdps_tests::k8s::{TempNs, client_for, cluster};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A running `kdps-operator run`, stopped when dropped.
struct Operator {
    child: Option<Child>,
    log: PathBuf,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

impl Operator {
    /// Starts the operator for `watch_ns` with its CA and Lease in `operator_ns`.
    fn start(watch_ns: &str, operator_ns: &str) -> Operator {
        Self::start_with(watch_ns, operator_ns, &[], &[])
    }

    fn start_with(
        watch_ns: &str,
        operator_ns: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("operator.log");
        let file = std::fs::File::create(&log).unwrap();
        let admin = free_addr();
        let child = Command::new(kdps_tests::bin("kdps-operator"))
            .arg("run")
            .args(["--watch-namespace", watch_ns])
            .args(["--operator-namespace", operator_ns])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--registration-image", "kdps-registration:test"])
            .args(["--log-filter", "info,kdps_operator=debug"])
            .args(args)
            .envs(env.iter().copied())
            .env("KUBECONFIG", &cluster().kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn kdps-operator");
        Operator {
            child: Some(child),
            log,
            admin,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait for a graceful exit.
    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the operator did not stop within 30 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("the operator exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Poll `f` every 200 ms until it returns `Some`, or fail after `timeout` with `what` and the
/// operator's log.
async fn eventually<T, F, Fut>(op: &mut Operator, timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        op.assert_running();
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}\n--- operator log ---\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const WAIT: Duration = Duration::from_secs(60);

async fn admin() -> Client {
    client_for(&cluster().kubeconfig).await
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn ready_of(conditions: &[Condition]) -> Option<(String, String, String)> {
    condition(conditions, "Ready").map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn assert_owned_by(owners: Option<&Vec<OwnerReference>>, ps: &ProvisioningService, what: &str) {
    let owners = owners.unwrap_or_else(|| panic!("{what} has no ownerReferences"));
    assert_eq!(owners.len(), 1, "{what}: {owners:?}");
    let o = &owners[0];
    assert_eq!(o.api_version, "kdps.io/v1alpha1", "{what}");
    assert_eq!(o.kind, "ProvisioningService", "{what}");
    assert_eq!(o.name, ps.name_any(), "{what}");
    assert_eq!(Some(&o.uid), ps.metadata.uid.as_ref(), "{what}");
    assert_eq!(o.controller, Some(true), "{what}");
}

fn can_i(user: &str, verb: &str, resource: &str, namespace: &str) -> bool {
    let out = cluster().kubectl(&[
        "auth", "can-i", verb, resource, "-n", namespace, "--as", user,
    ]);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

fn openssl_verify(ca_pem: &str, cert_pem: &str, host: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert_pem).unwrap();
    let out = Command::new("openssl")
        .args([
            "verify",
            "-purpose",
            "sslserver",
            "-verify_hostname",
            host,
            "-CAfile",
        ])
        .arg(dir.path().join("ca.pem"))
        .arg(dir.path().join("cert.pem"))
        .output()
        .expect("openssl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn secret_text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// 32 random-looking bytes, base64.
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

// ---------------------------------------------------------------------------------------------
// CRDs and CEL

#[tokio::test]
async fn crds_are_established() {
    let crds: Api<CustomResourceDefinition> = Api::all(admin().await);
    for plural in [
        "provisioningservices",
        "iothublinks",
        "individualenrollments",
        "enrollmentgroups",
        "deviceregistrations",
        "devices",
    ] {
        let crd = crds.get(&format!("{plural}.kdps.io")).await.unwrap();
        let conditions = crd.status.unwrap().conditions.unwrap_or_default();
        for t in ["Established", "NamesAccepted"] {
            let c = conditions.iter().find(|c| c.type_ == t).unwrap();
            assert_eq!(c.status, "True", "{plural} {t}: {c:?}");
        }
    }
}

/// Creates `yaml` (dry run) and returns the apiserver's error message, or None when accepted.
async fn dry_run_create(client: &Client, ns: &str, yaml: &str) -> Option<String> {
    let obj: DynamicObject = serde_yaml::from_str(yaml).unwrap();
    let ar = match obj.types.as_ref().unwrap().kind.as_str() {
        "IndividualEnrollment" => ApiResource::erase::<IndividualEnrollment>(&()),
        "EnrollmentGroup" => ApiResource::erase::<EnrollmentGroup>(&()),
        "IoTHubLink" => ApiResource::erase::<IoTHubLink>(&()),
        "ProvisioningService" => ApiResource::erase::<ProvisioningService>(&()),
        other => panic!("no ApiResource for {other}"),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match api.create(&pp, &obj).await {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            Some(status.message.clone())
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn cel_rejects_invalid_objects_with_readable_messages() {
    let ns = TempNs::new("kdps-cel");
    let client = admin().await;
    let n = &ns.name;
    let reject = |yaml: String, expected: &'static [&'static str]| {
        let client = client.clone();
        let n = n.clone();
        async move {
            let message = dry_run_create(&client, &n, &yaml)
                .await
                .unwrap_or_else(|| panic!("accepted, but should be rejected:\n{yaml}"));
            for e in expected {
                assert!(message.contains(e), "message {message:?} lacks {e:?}");
            }
            message
        }
    };
    let ie = |spec: &str| {
        format!(
            "apiVersion: kdps.io/v1alpha1\nkind: IndividualEnrollment\nmetadata: {{name: dev-1, namespace: {n}}}\nspec:\n{spec}"
        )
    };
    let eg = |spec: &str| {
        format!(
            "apiVersion: kdps.io/v1alpha1\nkind: EnrollmentGroup\nmetadata: {{name: grp, namespace: {n}}}\nspec:\n{spec}"
        )
    };
    let link = |spec: &str| {
        format!(
            "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: hub, namespace: {n}}}\nspec: {spec}"
        )
    };

    // A valid object is accepted (the rules below are what reject the others).
    assert_eq!(
        dry_run_create(
            &client,
            n,
            &ie("  attestation: {symmetricKey: {secretRef: {name: k}}}")
        )
        .await,
        None
    );

    reject(
        ie("  attestation:\n    symmetricKey: {secretRef: {name: k}}\n    tpm: {endorsementKey: AAAA}"),
        &["spec.attestation", "exactly one of tpm, x509 or symmetricKey must be set"],
    )
    .await;
    // Without strict field validation the unknown `tpm` is pruned, and the group has no
    // attestation left.
    reject(
        eg("  attestation: {tpm: {endorsementKey: AAAA}}"),
        &["spec.attestation", "enrollment groups do not support tpm"],
    )
    .await;
    reject(
        ie("  registrationId: 'bad id!'\n  attestation: {symmetricKey: {secretRef: {name: k}}}"),
        &[
            "spec.registrationId",
            "letters, digits and '-', '.', '_', ':'",
        ],
    )
    .await;
    reject(
        link("{hostName: h.example.com, deviceNamespace: hub, allocationWeight: 0}"),
        &["spec.allocationWeight", "greater than or equal to 1"],
    )
    .await;
    reject(
        link("{hostName: h.example.com, deviceNamespace: hub, allocationWeight: 1001}"),
        &["spec.allocationWeight", "less than or equal to 1000"],
    )
    .await;
    reject(
        eg("  attestation: {symmetricKey: {secretRef: {name: k}}}\n  allocationPolicy: custom"),
        &["allocationPolicy custom requires customAllocation.webhookUrl"],
    )
    .await;
    reject(
        eg("  attestation: {symmetricKey: {secretRef: {name: k}}}\n  allocationPolicy: static\n  iotHubs: [a, b]"),
        &["allocationPolicy static requires exactly one hub in iotHubs"],
    )
    .await;
    reject(
        link("{hostName: 'not a host', deviceNamespace: Hub_NS}"),
        &[
            "spec.hostName",
            "must be a DNS host name",
            "spec.deviceNamespace",
        ],
    )
    .await;

    // Strict field validation (what `kubectl apply` uses) names the unknown field.
    let group: DynamicObject =
        serde_yaml::from_str(&eg("  attestation: {tpm: {endorsementKey: AAAA}}")).unwrap();
    let ar = ApiResource::erase::<EnrollmentGroup>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), n, &ar);
    let err = api
        .patch(
            "grp",
            &PatchParams::apply("kdps-tests")
                .dry_run()
                .validation_strict(),
            &Patch::Apply(&group),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("tpm") && msg.contains("field not declared in schema"),
        "{msg}"
    );

    // Transition rule: a set idScope cannot change.
    let ps_api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        n,
        &ApiResource::erase::<ProvisioningService>(&()),
    );
    let ps: DynamicObject = serde_yaml::from_str(&format!(
        "apiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {{name: dps, namespace: {n}}}\nspec: {{idScope: 0ne00000A11}}"
    ))
    .unwrap();
    ps_api.create(&PostParams::default(), &ps).await.unwrap();
    let err = ps_api
        .patch(
            "dps",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"idScope": "0ne00000B22"}})),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("idScope cannot be changed or removed once set"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// ProvisioningService

#[tokio::test]
async fn operator_reconciles_a_provisioning_service() {
    let svc_ns = TempNs::new("kdps-op-svc");
    let hub_ns = TempNs::new("kdps-op-hub");
    let other_ns = TempNs::new("kdps-op-other");
    let op_ns = TempNs::new("kdps-op-sys");
    let (n, hub) = (svc_ns.name.clone(), hub_ns.name.clone());
    let client = admin().await;
    let mut op = Operator::start(&n, &op_ns.name);

    cluster().apply(&format!(
        r#"apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-a, namespace: {n}}}
spec: {{hostName: hub-a.example.com, deviceNamespace: {hub}}}
---
apiVersion: kdps.io/v1alpha1
kind: ProvisioningService
metadata: {{name: dps, namespace: {n}}}
spec:
  replicas: 2
  endpoint: {{serviceType: NodePort, port: 443, nodePort: 30443, dnsNames: [dps.example.com]}}
"#
    ));
    let services: Api<ProvisioningService> = Api::namespaced(client.clone(), &n);
    let ps = eventually(&mut op, WAIT, "ProvisioningService status", || async {
        let ps = services.get("dps").await.ok()?;
        let st = ps.status.as_ref()?;
        (st.ca_bundle.is_some()
            && condition(&st.conditions, "Reconciled").is_some_and(|c| c.status == "True"))
        .then_some(ps)
    })
    .await;
    let status = ps.status.clone().unwrap();
    let id_scope = status.id_scope.clone().unwrap();
    assert!(
        id_scope.len() == 11
            && id_scope.starts_with("0ne")
            && id_scope[3..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
        "{id_scope}"
    );
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("dps.{n}.svc:443").as_str())
    );
    assert_eq!(status.observed_generation, ps.metadata.generation);
    assert_eq!(status.ready_replicas, Some(0));
    let (s, reason, message) = ready_of(&status.conditions).unwrap();
    assert_eq!(
        (s.as_str(), reason.as_str()),
        ("False", "ReplicasNotReady"),
        "{message}"
    );
    let reconciled = condition(&status.conditions, "Reconciled").unwrap();
    assert!(reconciled.message.contains(&hub), "{}", reconciled.message);

    // Children in the service namespace, all owned by the ProvisioningService.
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), &n)
        .get("dps")
        .await
        .unwrap();
    assert_owned_by(sa.metadata.owner_references.as_ref(), &ps, "ServiceAccount");
    let role = Api::<Role>::namespaced(client.clone(), &n)
        .get("dps")
        .await
        .unwrap();
    assert_owned_by(role.metadata.owner_references.as_ref(), &ps, "Role");
    let binding = Api::<RoleBinding>::namespaced(client.clone(), &n)
        .get("dps")
        .await
        .unwrap();
    assert_owned_by(
        binding.metadata.owner_references.as_ref(),
        &ps,
        "RoleBinding",
    );
    let tls = Api::<Secret>::namespaced(client.clone(), &n)
        .get("dps-tls")
        .await
        .unwrap();
    assert_owned_by(tls.metadata.owner_references.as_ref(), &ps, "TLS Secret");
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &n);
    let deployment = deployments.get("dps").await.unwrap();
    assert_owned_by(
        deployment.metadata.owner_references.as_ref(),
        &ps,
        "Deployment",
    );
    assert_eq!(deployment.spec.replicas, Some(2));
    let pod = deployment.spec.template.spec.clone().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("dps"));
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("kdps-registration:test")
    );
    assert_eq!(
        pod.containers[0].args.as_deref(),
        Some(&["serve".to_owned()][..])
    );
    let service = Api::<Service>::namespaced(client.clone(), &n)
        .get("dps")
        .await
        .unwrap();
    assert_owned_by(service.metadata.owner_references.as_ref(), &ps, "Service");
    let port = &service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!((port.port, port.node_port), (443, Some(30443)));

    // Hub namespace RBAC: no owner reference (owners cannot be in another namespace).
    let hub_role = Api::<Role>::namespaced(client.clone(), &hub)
        .get(&format!("kdps-registration-{n}"))
        .await
        .unwrap();
    assert!(hub_role.metadata.owner_references.is_none());
    assert_eq!(
        hub_role.labels()["kdps.io/provisioning-service-uid"],
        ps.metadata.uid.clone().unwrap()
    );
    Api::<RoleBinding>::namespaced(client.clone(), &hub)
        .get(&format!("kdps-registration-{n}"))
        .await
        .unwrap();

    // The serving certificate verifies against the published CA bundle (openssl), for the
    // in-cluster name and the extra DNS name; the CA is the operator's kdps-ca.
    let ca_bundle = status.ca_bundle.clone().unwrap();
    for host in [format!("dps.{n}.svc"), "dps.example.com".to_owned()] {
        let (ok, out) = openssl_verify(&ca_bundle, &secret_text(&tls, "tls.crt"), &host);
        assert!(ok, "openssl verify for {host}: {out}");
    }
    let (ok, _) = openssl_verify(
        &ca_bundle,
        &secret_text(&tls, "tls.crt"),
        "evil.example.com",
    );
    assert!(!ok, "the certificate must not cover other names");
    let ca_secret = Api::<Secret>::namespaced(client.clone(), &op_ns.name)
        .get("kdps-ca")
        .await
        .unwrap();
    assert_eq!(secret_text(&ca_secret, "tls.crt"), ca_bundle);

    // The service's ServiceAccount has exactly its permissions.
    let user = format!("system:serviceaccount:{n}:dps");
    assert!(can_i(&user, "create", "devices.kdps.io", &hub));
    assert!(can_i(&user, "patch", "secrets", &hub));
    assert!(!can_i(&user, "delete", "devices.kdps.io", &hub));
    assert!(!can_i(&user, "create", "devices.kdps.io", &other_ns.name));
    assert!(!can_i(&user, "get", "secrets", &other_ns.name));
    assert!(can_i(&user, "get", "secrets", &n));
    assert!(!can_i(&user, "list", "secrets", &n));
    assert!(can_i(&user, "watch", "individualenrollments.kdps.io", &n));
    assert!(can_i(&user, "create", "deviceregistrations.kdps.io", &n));
    assert!(!can_i(&user, "delete", "deviceregistrations.kdps.io", &n));

    // Ready follows the Deployment (written here as the deployment controller would).
    deployments
        .patch_status(
            "dps",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"replicas": 2, "readyReplicas": 1, "availableReplicas": 1}})),
        )
        .await
        .unwrap();
    eventually(
        &mut op,
        WAIT,
        "Ready=True after a replica is ready",
        || async {
            let ps = services.get("dps").await.ok()?;
            let st = ps.status?;
            let (s, reason, _) = ready_of(&st.conditions)?;
            (s == "True" && reason == "Available" && st.ready_replicas == Some(1)).then_some(())
        },
    )
    .await;

    // Graceful stop; a restarted operator keeps the ID scope and the certificate.
    let exit = op.stop();
    assert!(exit.success(), "exit status {exit}:\n{}", op.log());
    assert!(op.log().contains("stopped"), "{}", op.log());
    let mut op = Operator::start(&n, &op_ns.name);
    // A spec change makes sure the new operator has reconciled before we compare.
    services
        .patch(
            "dps",
            &PatchParams::apply("kdps-tests").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "kdps.io/v1alpha1", "kind": "ProvisioningService",
                "spec": {"replicas": 3, "endpoint": {"serviceType": "NodePort", "port": 443, "nodePort": 30443, "dnsNames": ["dps.example.com"]}}
            })),
        )
        .await
        .unwrap();
    eventually(
        &mut op,
        WAIT,
        "the restarted operator applies replicas 3",
        || async {
            let d = deployments.get("dps").await.ok()?;
            let ps = services.get("dps").await.ok()?;
            (d.spec.replicas == Some(3) && ps.status?.observed_generation == ps.metadata.generation)
                .then_some(())
        },
    )
    .await;
    let after = services.get("dps").await.unwrap().status.unwrap();
    assert_eq!(
        after.id_scope.as_deref(),
        Some(id_scope.as_str()),
        "idScope must be stable"
    );
    assert_eq!(after.ca_bundle.as_deref(), Some(ca_bundle.as_str()));
    let tls_after = Api::<Secret>::namespaced(client.clone(), &n)
        .get("dps-tls")
        .await
        .unwrap();
    assert_eq!(
        secret_text(&tls_after, "tls.crt"),
        secret_text(&tls, "tls.crt"),
        "a valid serving certificate is kept"
    );

    // Removing the link removes the hub RBAC, never the Devices written there.
    cluster().apply(&format!(
        r#"apiVersion: kdps.io/v1alpha1
kind: Device
metadata: {{name: dev-1, namespace: {hub}}}
spec:
  deviceId: dev-1
  hub: {{hostName: hub-a.example.com, linkName: hub-a}}
  authentication: {{type: sas, symmetricKey: {{secretRef: {{name: kdps-device-dev-1}}}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: kdps-device-dev-1, namespace: {hub}, labels: {{kdps.io/hub-link: hub-a}}}}
stringData: {{primaryKey: {KEY}}}
"#
    ));
    Api::<IoTHubLink>::namespaced(client.clone(), &n)
        .delete("hub-a", &DeleteParams::default())
        .await
        .unwrap();
    let hub_roles: Api<Role> = Api::namespaced(client.clone(), &hub);
    let hub_bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &hub);
    let name = format!("kdps-registration-{n}");
    eventually(&mut op, WAIT, "hub RBAC removed with the link", || async {
        (hub_roles.get_opt(&name).await.ok()?.is_none()
            && hub_bindings.get_opt(&name).await.ok()?.is_none())
        .then_some(())
    })
    .await;
    assert!(
        Api::<Device>::namespaced(client.clone(), &hub)
            .get("dev-1")
            .await
            .is_ok()
    );
    assert!(
        Api::<Secret>::namespaced(client.clone(), &hub)
            .get("kdps-device-dev-1")
            .await
            .is_ok()
    );

    // Deleting the service: the garbage collector removes the owned children.
    services
        .delete("dps", &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        &mut op,
        Duration::from_secs(120),
        "children garbage-collected",
        || async {
            let gone = deployments.get_opt("dps").await.ok()?.is_none()
                && Api::<Secret>::namespaced(client.clone(), &n)
                    .get_opt("dps-tls")
                    .await
                    .ok()?
                    .is_none()
                && Api::<Role>::namespaced(client.clone(), &n)
                    .get_opt("dps")
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        },
    )
    .await;
    assert!(
        Api::<Device>::namespaced(client.clone(), &hub)
            .get("dev-1")
            .await
            .is_ok()
    );
    op.assert_running();
}

#[tokio::test]
async fn hub_rbac_of_a_deleted_service_is_removed() {
    let svc_ns = TempNs::new("kdps-gc-svc");
    let hub_ns = TempNs::new("kdps-gc-hub");
    let (n, hub) = (svc_ns.name.clone(), hub_ns.name.clone());
    let client = admin().await;
    let mut op = Operator::start(&n, &n);
    cluster().apply(&format!(
        "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: hub-a, namespace: {n}}}\nspec: {{hostName: hub-a.example.com, deviceNamespace: {hub}}}\n---\napiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {{name: dps, namespace: {n}}}\nspec: {{idScope: 0ne00000A11}}\n"
    ));
    let roles: Api<Role> = Api::namespaced(client.clone(), &hub);
    let name = format!("kdps-registration-{n}");
    eventually(&mut op, WAIT, "hub Role created", || async {
        roles.get_opt(&name).await.ok()?.map(|_| ())
    })
    .await;
    let services: Api<ProvisioningService> = Api::namespaced(client.clone(), &n);
    let id_scope = eventually(&mut op, WAIT, "status.idScope", || async {
        services.get("dps").await.ok()?.status?.id_scope
    })
    .await;
    assert_eq!(id_scope, "0ne00000A11", "a spec idScope is published as is");
    // Delete while the operator is down: the sweep at start-up removes the hub RBAC.
    assert!(op.stop().success());
    services
        .delete("dps", &DeleteParams::default())
        .await
        .unwrap();
    let mut op = Operator::start(&n, &n);
    eventually(
        &mut op,
        WAIT,
        "hub RBAC of the deleted service removed",
        || async {
            (roles.get_opt(&name).await.ok()?.is_none()
                && Api::<RoleBinding>::namespaced(client.clone(), &hub)
                    .get_opt(&name)
                    .await
                    .ok()?
                    .is_none())
            .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn invalid_service_reports_why() {
    let ns = TempNs::new("kdps-bad-svc");
    let n = ns.name.clone();
    let client = admin().await;
    let mut op = Operator::start(&n, &n);
    cluster().apply(&format!(
        "apiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {{name: dps, namespace: {n}}}\nspec: {{tls: {{secretName: my-cert}}}}\n"
    ));
    let services: Api<ProvisioningService> = Api::namespaced(client.clone(), &n);
    let message = eventually(&mut op, WAIT, "Ready=False SecretNotFound", || async {
        let st = services.get("dps").await.ok()?.status?;
        let (s, reason, message) = ready_of(&st.conditions)?;
        (s == "False" && reason == "SecretNotFound").then_some(message)
    })
    .await;
    assert!(
        message.contains("Secret \"my-cert\" does not exist"),
        "{message}"
    );
    // Nothing was deployed for an invalid service.
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &n)
            .get_opt("dps")
            .await
            .unwrap()
            .is_none()
    );

    // A second service in the same namespace is a conflict.
    cluster().apply(&format!(
        "apiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {{name: dps2, namespace: {n}}}\nspec: {{}}\n"
    ));
    eventually(&mut op, WAIT, "second service Conflict", || async {
        let st = services.get("dps2").await.ok()?.status?;
        let (s, reason, _) = ready_of(&st.conditions)?;
        (s == "False" && reason == "Conflict").then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Enrollments and links

async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

#[tokio::test]
async fn enrollment_ready_follows_its_secret() {
    let ns = TempNs::new("kdps-enr");
    let hub_ns = TempNs::new("kdps-enr-hub");
    let (n, hub) = (ns.name.clone(), hub_ns.name.clone());
    let client = admin().await;
    let mut op = Operator::start(&n, &n);
    cluster().apply(&format!(
        r#"apiVersion: kdps.io/v1alpha1
kind: IoTHubLink
metadata: {{name: hub-a, namespace: {n}}}
spec: {{hostName: hub-a.example.com, deviceNamespace: {hub}}}
---
apiVersion: kdps.io/v1alpha1
kind: EnrollmentGroup
metadata: {{name: sensors, namespace: {n}}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: sensors-keys}}}}}}
  iotHubs: [hub-a]
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: gateway-01, namespace: {n}}}
spec:
  registrationId: Gateway-01
  attestation: {{x509: {{clientCertificates: {{primary: {{certificate: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"}}}}}}}}
---
apiVersion: kdps.io/v1alpha1
kind: IndividualEnrollment
metadata: {{name: dev-2, namespace: {n}}}
spec:
  attestation: {{symmetricKey: {{secretRef: {{name: dev-2-keys}}}}}}
  iotHubs: [hub-missing]
"#
    ));
    let groups: Api<EnrollmentGroup> = Api::namespaced(client.clone(), &n);
    let message = eventually(
        &mut op,
        WAIT,
        "group Ready=False SecretNotFound",
        || async {
            let st = groups.get("sensors").await.ok()?.status?;
            let (s, reason, message) = ready_of(&st.conditions)?;
            (s == "False" && reason == "SecretNotFound").then_some(message)
        },
    )
    .await;
    assert_eq!(
        message,
        format!(
            "spec.attestation.symmetricKey.secretRef.name: Secret \"sensors-keys\" does not exist in namespace \"{n}\""
        )
    );
    let warning = eventually(&mut op, WAIT, "Warning Event SecretNotFound", || async {
        events_for(&client, &n, "sensors")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SecretNotFound"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert_eq!(
        warning.reporting_controller.as_deref(),
        Some("kdps-operator")
    );

    let individuals: Api<IndividualEnrollment> = Api::namespaced(client.clone(), &n);
    let st = eventually(&mut op, WAIT, "individual InvalidCertificate", || async {
        let st = individuals.get("gateway-01").await.ok()?.status?;
        let (s, reason, _) = ready_of(&st.conditions)?;
        (s == "False" && reason == "InvalidCertificate").then_some(st)
    })
    .await;
    // Registration IDs are compared case-insensitively: status holds the canonical form.
    assert_eq!(st.registration_id.as_deref(), Some("gateway-01"));
    let message = eventually(
        &mut op,
        WAIT,
        "dev-2 SecretNotFound and UnknownIoTHub",
        || async {
            let st = individuals.get("dev-2").await.ok()?.status?;
            let (s, reason, message) = ready_of(&st.conditions)?;
            (s == "False" && reason == "SecretNotFound").then_some(message)
        },
    )
    .await;
    assert!(
        message.contains("IoTHubLink \"hub-missing\" does not exist"),
        "{message}"
    );

    // The link appears: the enrollment is re-validated at once (triggered from the operator's
    // link cache, which already holds the new link).
    cluster().apply(&format!(
        "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: hub-missing, namespace: {n}}}\nspec: {{hostName: hub-b.example.com, deviceNamespace: {hub}}}\n"
    ));
    eventually(
        &mut op,
        Duration::from_secs(30),
        "dev-2 no longer UnknownIoTHub",
        || async {
            let st = individuals.get("dev-2").await.ok()?.status?;
            let (_, reason, message) = ready_of(&st.conditions)?;
            (reason == "SecretNotFound" && !message.contains("IoTHubLink")).then_some(())
        },
    )
    .await;

    // The Secret appears: Ready flips without waiting for a periodic resync (minutes).
    let started = Instant::now();
    cluster().apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: sensors-keys, namespace: {n}}}\nstringData: {{primaryKey: {KEY}}}\n"
    ));
    eventually(
        &mut op,
        Duration::from_secs(30),
        "group Ready=True after the Secret appears",
        || async {
            let st = groups.get("sensors").await.ok()?.status?;
            let (s, reason, _) = ready_of(&st.conditions)?;
            (s == "True" && reason == "Valid").then_some(())
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    let normal = eventually(&mut op, WAIT, "Normal Event Valid", || async {
        events_for(&client, &n, "sensors")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Valid"))
    })
    .await;
    assert_eq!(normal.type_.as_deref(), Some("Normal"));
    let st = groups.get("sensors").await.unwrap().status.unwrap();
    assert_eq!(st.registration_count, Some(0));

    // A key that is too short: InvalidKey, and the message never contains the key.
    cluster().apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: sensors-keys, namespace: {n}}}\nstringData: {{primaryKey: c2hvcnQta2V5}}\n"
    ));
    let message = eventually(&mut op, WAIT, "group Ready=False InvalidKey", || async {
        let st = groups.get("sensors").await.ok()?.status?;
        let (s, reason, message) = ready_of(&st.conditions)?;
        (s == "False" && reason == "InvalidKey").then_some(message)
    })
    .await;
    assert!(!message.contains("c2hvcnQta2V5"), "{message}");
}

#[tokio::test]
async fn link_to_a_missing_namespace_waits_for_it() {
    let ns = TempNs::new("kdps-link");
    let n = ns.name.clone();
    let later = format!("{n}-later");
    let client = admin().await;
    let mut op = Operator::start(&n, &n);
    cluster().apply(&format!(
        "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: hub-later, namespace: {n}}}\nspec: {{hostName: hub-later.example.com, deviceNamespace: {later}}}\n---\napiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {{name: dps, namespace: {n}}}\nspec: {{}}\n"
    ));
    let links: Api<IoTHubLink> = Api::namespaced(client.clone(), &n);
    let message = eventually(&mut op, WAIT, "link HubNamespaceMissing", || async {
        let st = links.get("hub-later").await.ok()?.status?;
        let (s, reason, message) = ready_of(&st.conditions)?;
        (s == "False" && reason == "HubNamespaceMissing").then_some(message)
    })
    .await;
    assert!(
        message.contains(&format!("namespace \"{later}\" does not exist")),
        "{message}"
    );
    let services: Api<ProvisioningService> = Api::namespaced(client.clone(), &n);
    eventually(
        &mut op,
        WAIT,
        "service reports the waiting link",
        || async {
            let st = services.get("dps").await.ok()?.status?;
            condition(&st.conditions, "Reconciled")?
                .message
                .contains("waiting for the device namespaces of IoTHubLinks hub-later")
                .then_some(())
        },
    )
    .await;

    cluster().kubectl_ok(&["create", "namespace", &later]);
    let _cleanup = scopeguard_ns(later.clone());
    eventually(
        &mut op,
        WAIT,
        "link Ready=True once the namespace exists",
        || async {
            let st = links.get("hub-later").await.ok()?.status?;
            let (s, _, _) = ready_of(&st.conditions)?;
            (s == "True" && st.device_count == Some(0)).then_some(())
        },
    )
    .await;
    let roles: Api<Role> = Api::namespaced(client.clone(), &later);
    eventually(&mut op, WAIT, "hub RBAC in the new namespace", || async {
        roles
            .get_opt(&format!("kdps-registration-{n}"))
            .await
            .ok()?
            .map(|_| ())
    })
    .await;
}

/// `deviceCount` comes from a watch of the Devices labelled with the link, published at most
/// once per `--count-interval-seconds`.
#[tokio::test]
async fn link_device_count_follows_devices() {
    let ns = TempNs::new("kdps-count");
    let n = ns.name.clone();
    let hub = format!("{n}-hub");
    cluster().kubectl_ok(&["create", "namespace", &hub]);
    let _cleanup = scopeguard_ns(hub.clone());
    let client = admin().await;
    let mut op = Operator::start_with(&n, &n, &["--count-interval-seconds", "1"], &[]);
    let device = |i: usize, link: &str| {
        format!(
            "---\napiVersion: kdps.io/v1alpha1\nkind: Device\nmetadata: {{name: dev-{i}, namespace: {hub}, labels: {{kdps.io/hub-link: {link}}}}}\nspec: {{deviceId: dev-{i}, hub: {{hostName: hub.example.com, linkName: {link}}}, authentication: {{type: certificateAuthority}}}}\n"
        )
    };
    let mut yaml = format!(
        "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: hub, namespace: {n}}}\nspec: {{hostName: hub.example.com, deviceNamespace: {hub}}}\n"
    );
    for i in 0..3 {
        yaml.push_str(&device(i, "hub"));
    }
    yaml.push_str(&device(3, "other"));
    cluster().apply(&yaml);
    let links: Api<IoTHubLink> = Api::namespaced(client.clone(), &n);
    eventually(&mut op, WAIT, "deviceCount 3", || async {
        let st = links.get("hub").await.ok()?.status?;
        (st.device_count == Some(3)).then_some(())
    })
    .await;
    // More devices, then any change of the link: the new count once the interval has passed.
    cluster().apply(&(device(4, "hub") + &device(5, "hub")));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster().kubectl_ok(&["-n", &n, "annotate", "iothublink", "hub", "touched=1"]);
    eventually(&mut op, WAIT, "deviceCount 5", || async {
        let st = links.get("hub").await.ok()?.status?;
        (st.device_count == Some(5)).then_some(())
    })
    .await;
}

/// Deletes namespace `name` when dropped.
fn scopeguard_ns(name: String) -> impl Drop {
    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = cluster()
                .kubectl_cmd()
                .args(["delete", "namespace", &self.0, "--wait=false"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    Guard(name)
}

// ---------------------------------------------------------------------------------------------
// Leader election

#[tokio::test]
async fn only_the_lease_holder_reconciles() {
    let ns = TempNs::new("kdps-lease");
    let n = ns.name.clone();
    let client = admin().await;
    let args = ["--leader-election", "--lease-duration-seconds", "6"];
    let mut first = Operator::start_with(&n, &n, &args, &[("POD_NAME", "op-a")]);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &n);
    eventually(&mut first, WAIT, "op-a holds the Lease", || async {
        let l = leases.get_opt("kdps-operator").await.ok()??;
        (l.spec?.holder_identity.as_deref() == Some("op-a")).then_some(())
    })
    .await;
    let mut second = Operator::start_with(&n, &n, &args, &[("POD_NAME", "op-b")]);
    let second_admin = second.admin;
    // The standby is ready (probes pass) but does not reconcile.
    eventually(&mut second, WAIT, "op-b /readyz", || async {
        kdps_tests::http_get(second_admin, "/readyz")
            .ok()
            .and_then(|(code, _)| (code == 200).then_some(()))
    })
    .await;
    let metrics = kdps_tests::http_get(second_admin, "/metrics").unwrap().1;
    assert!(metrics.contains("kdps_operator_leader 0"), "{metrics}");
    cluster().apply(&format!(
        "apiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {{name: dps, namespace: {n}}}\nspec: {{}}\n"
    ));
    let services: Api<ProvisioningService> = Api::namespaced(client.clone(), &n);
    eventually(&mut first, WAIT, "the leader reconciles", || async {
        services
            .get("dps")
            .await
            .ok()?
            .status?
            .ca_bundle
            .map(|_| ())
    })
    .await;
    assert!(!second.log().contains("reconciled"), "{}", second.log());

    // The leader stops (releasing the Lease): the standby takes over.
    assert!(first.stop().success());
    eventually(&mut second, WAIT, "op-b takes the Lease", || async {
        let l = leases.get_opt("kdps-operator").await.ok()??;
        (l.spec?.holder_identity.as_deref() == Some("op-b")).then_some(())
    })
    .await;
    services
        .patch(
            "dps",
            &PatchParams::apply("kdps-tests").force(),
            &Patch::Apply(serde_json::json!({"apiVersion": "kdps.io/v1alpha1", "kind": "ProvisioningService", "spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &n);
    eventually(&mut second, WAIT, "the new leader reconciles", || async {
        (deployments.get("dps").await.ok()?.spec.replicas == Some(2)).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Helm

fn helm(args: &[&str]) -> (bool, String) {
    let out = Command::new(cluster().bin_dir.join("helm"))
        .args(args)
        .env("KUBECONFIG", &cluster().kubeconfig)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("kdps-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("kdps-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("kdps-helm-data"),
        )
        .stdin(Stdio::null())
        .output()
        .expect("run helm");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn helm_chart_installs_and_its_rbac_runs_the_operator() {
    let chart = kdps_tests::repo_path("charts/kdps");
    let chart = chart.to_str().unwrap();
    let (ok, out) = helm(&["lint", "--strict", chart]);
    assert!(ok, "helm lint:\n{out}");
    assert!(out.contains("0 chart(s) failed"), "{out}");

    let release_ns = TempNs::new("kdps-helm");
    let svc_ns = TempNs::new("kdps-helm-svc");
    let hub_ns = TempNs::new("kdps-helm-hub");
    let (rns, n, hub) = (
        release_ns.name.clone(),
        svc_ns.name.clone(),
        hub_ns.name.clone(),
    );
    let release = format!("r{}", std::process::id());
    // The CRDs already exist (applied by the test harness): the release takes them over, as
    // a `helm install` after `kubectl apply -f crds/` would with --take-ownership.
    let (ok, out) = helm(&[
        "install",
        &release,
        chart,
        "--namespace",
        &rns,
        "--take-ownership",
        "--set",
        "image.repository=kdps-operator",
        "--set",
        "image.tag=test",
        "--set",
        &format!("operator.watchNamespace={n}"),
    ]);
    assert!(ok, "helm install:\n{out}");
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(out.contains("kdps-ca.pem"), "NOTES.txt: {out}");

    let client = admin().await;
    let fullname = format!("{release}-kdps-operator");
    let deployment = Api::<Deployment>::namespaced(client.clone(), &rns)
        .get(&fullname)
        .await
        .unwrap();
    let ctr = &deployment.spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(ctr.image.as_deref(), Some("kdps-operator:test"));
    let sc = ctr.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let env: Vec<_> = ctr
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect();
    assert!(env.contains(&("KDPS_OPERATOR_WATCH_NAMESPACE".to_owned(), Some(n.clone()))));
    assert!(env.contains(&(
        "KDPS_OPERATOR_LEADER_ELECTION".to_owned(),
        Some("false".to_owned())
    )));
    Api::<ServiceAccount>::namespaced(client.clone(), &rns)
        .get(&fullname)
        .await
        .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(client.clone())
        .get(&fullname)
        .await
        .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(client.clone())
        .get(&fullname)
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), &rns)
        .get(&fullname)
        .await
        .unwrap();
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get("provisioningservices.kdps.io")
        .await
        .unwrap();
    assert_eq!(
        crd.annotations()
            .get("helm.sh/resource-policy")
            .map(String::as_str),
        Some("keep")
    );
    assert_eq!(
        crd.annotations().get("meta.helm.sh/release-name"),
        Some(&release)
    );

    // No kubelet runs the operator pod, so run the operator binary with exactly the chart's
    // ServiceAccount permissions (impersonated): the ClusterRole must be enough to create
    // the registration service's objects and to grant its Roles in a hub namespace.
    let user = format!("system:serviceaccount:{rns}:{fullname}");
    let mut op = Operator::start_with(
        &n,
        &rns,
        &["--lease-name", &fullname, "--leader-election"],
        &[("KUBE_RS_DEBUG_IMPERSONATE_USER", &user)],
    );
    cluster().apply(&format!(
        "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: hub-a, namespace: {n}}}\nspec: {{hostName: hub-a.example.com, deviceNamespace: {hub}}}\n---\napiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {{name: dps, namespace: {n}}}\nspec: {{}}\n---\napiVersion: kdps.io/v1alpha1\nkind: EnrollmentGroup\nmetadata: {{name: sensors, namespace: {n}}}\nspec: {{attestation: {{symmetricKey: {{secretRef: {{name: missing}}}}}}}}\n"
    ));
    let services: Api<ProvisioningService> = Api::namespaced(client.clone(), &n);
    eventually(
        &mut op,
        WAIT,
        "the chart's operator identity reconciles",
        || async {
            let st = services.get("dps").await.ok()?.status?;
            condition(&st.conditions, "Reconciled")
                .is_some_and(|c| c.status == "True")
                .then_some(())
        },
    )
    .await;
    Api::<Role>::namespaced(client.clone(), &hub)
        .get(&format!("kdps-registration-{n}"))
        .await
        .expect("hub Role created with the chart's permissions");
    Api::<Secret>::namespaced(client.clone(), &rns)
        .get("kdps-ca")
        .await
        .expect("CA Secret in the release namespace");
    let groups: Api<EnrollmentGroup> = Api::namespaced(client.clone(), &n);
    eventually(
        &mut op,
        WAIT,
        "enrollment status and Event with the chart's permissions",
        || async {
            let st = groups.get("sensors").await.ok()?.status?;
            let (_, reason, _) = ready_of(&st.conditions)?;
            let event = events_for(&client, &n, "sensors").await.into_iter().next();
            (reason == "SecretNotFound" && event.is_some()).then_some(())
        },
    )
    .await;
    assert!(op.log().contains("impersonating user"), "{}", op.log());
    assert!(!op.log().contains("forbidden"), "{}", op.log());
    assert!(op.stop().success());

    // Uninstall keeps the CRDs (crds.keep) and so every kdps.io object.
    let (ok, out) = helm(&["uninstall", &release, "--namespace", &rns]);
    assert!(ok, "helm uninstall:\n{out}");
    assert!(
        Api::<CustomResourceDefinition>::all(client.clone())
            .get_opt("provisioningservices.kdps.io")
            .await
            .unwrap()
            .is_some()
    );
    assert!(services.get_opt("dps").await.unwrap().is_some());
    assert!(
        Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(client.clone())
            .get_opt(&fullname)
            .await
            .unwrap()
            .is_none()
    );
}
