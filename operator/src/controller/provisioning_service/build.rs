//! Build step: the registration service's objects for one ProvisioningService, as pure
//! functions of the validated inputs (no API calls, no clock, no randomness).

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
            HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
            Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
            SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
            TopologySpreadConstraint, Volume, VolumeMount,
        },
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kdps_api::v1alpha1::{ProvisioningService, ServiceType};
use kube::Resource;

use super::validate::Validated;
use crate::{
    controller::{
        ANNOTATION_SERVICE, APP_NAME, Error, LABEL_INSTANCE, LABEL_NAME, Settings, common_labels,
    },
    pki::{CA_CRT, ServingCert, TLS_CRT, TLS_KEY},
};

/// Port the registration container listens on for devices (gRPC + DPS HTTPS over TLS). The
/// Service maps `spec.endpoint.port` to it, so ports below 1024 need no privileges.
pub const CONTAINER_PORT: i32 = 8443;
/// Admin port of the registration container (`/healthz`, `/readyz`, `/metrics`).
pub const ADMIN_PORT: i32 = 8081;
/// Where the serving certificate Secret is mounted.
pub const TLS_MOUNT: &str = "/etc/kdps/tls";
/// Pod-template annotation with the SHA-256 of the serving certificate: a renewed
/// certificate rolls the pods.
pub const ANNOTATION_CERT_SHA256: &str = "kdps.io/tls-cert-sha256";
/// UID and GID the registration container runs as (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;

/// The serving certificate the Deployment mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    /// Name of the `kubernetes.io/tls` Secret mounted at [`TLS_MOUNT`].
    pub secret_name: String,
    /// Operator-issued certificate and the CA PEM: the operator writes the Secret. None when
    /// the user supplies the Secret.
    pub managed: Option<(ServingCert, String)>,
    /// SHA-256 (hex) of the certificate PEM.
    pub cert_sha256: String,
}

/// Every object the operator keeps for one ProvisioningService. Debug output never shows the
/// TLS Secret's data.
#[derive(Clone, PartialEq)]
pub struct Children {
    /// The service's identity.
    pub service_account: ServiceAccount,
    /// Its permissions in its own namespace.
    pub role: Role,
    /// Binds `role` to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// A Role and RoleBinding in every hub namespace (Devices and Secrets only). These carry
    /// no owner reference (owners must be in the same namespace); they are found by label.
    pub hub_rbac: Vec<(Role, RoleBinding)>,
    /// The operator-issued serving certificate Secret (None when the user supplies one).
    pub tls_secret: Option<Secret>,
    /// The registration service.
    pub deployment: Deployment,
    /// How devices reach it.
    pub service: Service,
}

impl std::fmt::Debug for Children {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Children")
            .field("service_account", &self.service_account)
            .field("role", &self.role)
            .field("role_binding", &self.role_binding)
            .field("hub_rbac", &self.hub_rbac)
            .field(
                "tls_secret",
                &self
                    .tls_secret
                    .as_ref()
                    .map(crate::controller::describe_secret),
            )
            .field("deployment", &self.deployment)
            .field("service", &self.service)
            .finish()
    }
}

/// The Secret holding the operator-issued serving certificate of service `name`.
pub fn tls_secret_name(name: &str) -> String {
    format!("{name}-tls")
}

/// Name of the Role and RoleBinding in hub namespaces for the service of `namespace` (one
/// ProvisioningService per namespace).
pub fn hub_rbac_name(namespace: &str) -> String {
    format!("kdps-registration-{namespace}")
}

/// `host:port` of the in-cluster endpoint.
pub fn endpoint(name: &str, namespace: &str, port: i32) -> String {
    format!("{name}.{namespace}.svc:{port}")
}

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(strs(resources)),
        verbs: strs(verbs),
        ..PolicyRule::default()
    }
}

/// The rules of the service's Role in its own namespace: read the configuration (the service
/// fetches referenced Secrets by name, never lists them), write DeviceRegistrations (list for
/// the admin port's paged listing), publish Events. Same rules as
/// `tests/k8s/service-rbac.yaml`.
pub fn service_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            "kdps.io",
            &[
                "provisioningservices",
                "iothublinks",
                "individualenrollments",
                "enrollmentgroups",
            ],
            &["get", "list", "watch"],
        ),
        rule(
            "kdps.io",
            &["deviceregistrations"],
            &["get", "list", "create", "patch", "update"],
        ),
        rule(
            "kdps.io",
            &["deviceregistrations/status"],
            &["get", "patch", "update"],
        ),
        rule("", &["secrets"], &["get"]),
        rule("events.k8s.io", &["events"], &["create", "patch"]),
    ]
}

/// The rules of the service's Roles in hub namespaces: write Devices and their key Secrets;
/// no delete, so removing a link or the service never removes identities.
pub fn hub_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            "kdps.io",
            &["devices"],
            &["get", "list", "create", "patch", "update"],
        ),
        rule("kdps.io", &["devices/status"], &["get", "patch", "update"]),
        rule("", &["secrets"], &["get", "create", "patch", "update"]),
    ]
}

fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_INSTANCE.to_owned(), name.to_owned()),
    ])
}

/// Build every child of `ps`.
pub fn build(
    ps: &ProvisioningService,
    v: &Validated,
    tls: &TlsMaterial,
    settings: &Settings,
) -> Result<Children, Error> {
    let owner = ps
        .controller_owner_ref(&())
        .ok_or_else(|| Error::MissingField {
            key: format!("ProvisioningService/{}/{}", v.namespace, v.name),
            field: "metadata.uid",
        })?;
    let labels = common_labels(&v.name, &v.namespace, &v.uid);
    let annotations = BTreeMap::from([(
        ANNOTATION_SERVICE.to_owned(),
        format!("{}/{}", v.namespace, v.name),
    )]);
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(v.namespace.clone()),
        labels: Some(labels.clone()),
        annotations: Some(annotations.clone()),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };
    let subject = Subject {
        kind: "ServiceAccount".to_owned(),
        name: v.name.clone(),
        namespace: Some(v.namespace.clone()),
        ..Subject::default()
    };

    let service_account = ServiceAccount {
        metadata: meta(&v.name),
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    };
    let role = Role {
        metadata: meta(&v.name),
        rules: Some(service_rules()),
    };
    let role_binding = RoleBinding {
        metadata: meta(&v.name),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: v.name.clone(),
        },
        subjects: Some(vec![subject.clone()]),
    };

    let hub_name = hub_rbac_name(&v.namespace);
    let hub_rbac = v
        .hub_namespaces
        .iter()
        .map(|hub_ns| {
            let hub_meta = ObjectMeta {
                name: Some(hub_name.clone()),
                namespace: Some(hub_ns.clone()),
                labels: Some(labels.clone()),
                annotations: Some(annotations.clone()),
                ..ObjectMeta::default()
            };
            (
                Role {
                    metadata: hub_meta.clone(),
                    rules: Some(hub_rules()),
                },
                RoleBinding {
                    metadata: hub_meta,
                    role_ref: RoleRef {
                        api_group: Some("rbac.authorization.k8s.io".to_owned()),
                        kind: "Role".to_owned(),
                        name: hub_name.clone(),
                    },
                    subjects: Some(vec![subject.clone()]),
                },
            )
        })
        .collect();

    let tls_secret = tls.managed.as_ref().map(|(cert, ca_pem)| Secret {
        metadata: meta(&tls.secret_name),
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (
                TLS_CRT.to_owned(),
                ByteString(cert.cert_pem.clone().into_bytes()),
            ),
            (
                TLS_KEY.to_owned(),
                ByteString(cert.key_pem.clone().into_bytes()),
            ),
            (CA_CRT.to_owned(), ByteString(ca_pem.clone().into_bytes())),
        ])),
        ..Secret::default()
    });

    let image = ps
        .spec
        .image
        .clone()
        .unwrap_or_else(|| settings.registration_image.clone());
    let deployment = Deployment {
        metadata: meta(&v.name),
        spec: DeploymentSpec {
            replicas: Some(ps.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&v.name)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: pod_template(v, tls, &labels, image, settings),
            ..DeploymentSpec::default()
        },
        status: None,
    };

    let service = Service {
        metadata: meta(&v.name),
        spec: Some(ServiceSpec {
            type_: Some(
                match ps.spec.endpoint.service_type {
                    ServiceType::ClusterIP => "ClusterIP",
                    ServiceType::NodePort => "NodePort",
                    ServiceType::LoadBalancer => "LoadBalancer",
                }
                .to_owned(),
            ),
            selector: Some(selector_labels(&v.name)),
            ports: Some(vec![ServicePort {
                name: Some("https".to_owned()),
                protocol: Some("TCP".to_owned()),
                port: ps.spec.endpoint.port,
                target_port: Some(IntOrString::String("https".to_owned())),
                node_port: node_port(ps),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    };

    Ok(Children {
        service_account,
        role,
        role_binding,
        hub_rbac,
        tls_secret,
        deployment,
        service,
    })
}

/// `spec.endpoint.nodePort`, for NodePort and LoadBalancer Services only.
fn node_port(ps: &ProvisioningService) -> Option<i32> {
    match ps.spec.endpoint.service_type {
        ServiceType::ClusterIP => None,
        ServiceType::NodePort | ServiceType::LoadBalancer => ps.spec.endpoint.node_port,
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn pod_template(
    v: &Validated,
    tls: &TlsMaterial,
    labels: &BTreeMap<String, String>,
    image: String,
    settings: &Settings,
) -> PodTemplateSpec {
    let container = Container {
        name: "registration".to_owned(),
        image: Some(image),
        image_pull_policy: Some(settings.registration_image_pull_policy.clone()),
        args: Some(vec!["serve".to_owned()]),
        env: Some(vec![
            EnvVar {
                name: "KDPS_NAMESPACE".to_owned(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.namespace".to_owned(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            env("KDPS_SERVICE_NAME", v.name.clone()),
            env("KDPS_LISTEN", format!("0.0.0.0:{CONTAINER_PORT}")),
            env("KDPS_ADMIN_LISTEN", format!("0.0.0.0:{ADMIN_PORT}")),
            env("KDPS_TLS_CERT", format!("{TLS_MOUNT}/{TLS_CRT}")),
            env("KDPS_TLS_KEY", format!("{TLS_MOUNT}/{TLS_KEY}")),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("https".to_owned()),
                container_port: CONTAINER_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".to_owned()),
                container_port: ADMIN_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("100m".to_owned())),
                ("memory".to_owned(), Quantity("64Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("256Mi".to_owned()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "tls".to_owned(),
                mount_path: TLS_MOUNT.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".to_owned(),
                mount_path: "/tmp".to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_CERT_SHA256.to_owned(),
                tls.cert_sha256.clone(),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(v.name.clone()),
            automount_service_account_token: Some(true),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: Some(vec![
                Volume {
                    name: "tls".to_owned(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(tls.secret_name.clone()),
                        default_mode: Some(0o440),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: "tmp".to_owned(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(Quantity("16Mi".to_owned())),
                        ..EmptyDirVolumeSource::default()
                    }),
                    ..Volume::default()
                },
            ]),
            topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "kubernetes.io/hostname".to_owned(),
                when_unsatisfiable: "ScheduleAnyway".to_owned(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(&v.name)),
                    ..LabelSelector::default()
                }),
                ..TopologySpreadConstraint::default()
            }]),
            ..PodSpec::default()
        }),
    }
}

/// The owner reference every same-namespace child carries (for tests and checks).
pub fn owner_of(children: &Children) -> Option<&OwnerReference> {
    children
        .deployment
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.first())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::{collections::BTreeSet, time::SystemTime};

    use kube::ResourceExt;

    use super::*;
    use crate::{
        controller::NamespaceState,
        controller::provisioning_service::validate::{Dereferenced, validate},
        controller::{LABEL_MANAGED_BY, LABEL_SERVICE_UID, MANAGED_BY},
    };

    fn settings() -> Settings {
        Settings {
            operator_namespace: "kdps-system".into(),
            watch_namespace: None,
            registration_image: "ghcr.io/kdps-io/kdps-registration:0.1.0".into(),
            registration_image_pull_policy: "IfNotPresent".into(),
            concurrency: 4,
            count_interval: std::time::Duration::from_secs(60),
        }
    }

    fn service(spec: &str) -> ProvisioningService {
        serde_yaml::from_str(&format!(
            "apiVersion: kdps.io/v1alpha1\nkind: ProvisioningService\nmetadata: {{name: dps, namespace: iot, uid: 6f1c2a9e-0000-4000-8000-000000000001}}\nspec: {spec}"
        ))
        .unwrap()
    }

    fn link(name: &str) -> kdps_api::v1alpha1::IoTHubLink {
        serde_yaml::from_str(&format!(
            "apiVersion: kdps.io/v1alpha1\nkind: IoTHubLink\nmetadata: {{name: {name}, namespace: iot}}\nspec: {{hostName: {name}.example.com, deviceNamespace: {name}}}"
        ))
        .unwrap()
    }

    fn managed_tls() -> TlsMaterial {
        TlsMaterial {
            secret_name: tls_secret_name("dps"),
            managed: Some((
                ServingCert {
                    cert_pem: "CERT".into(),
                    key_pem: "KEY".into(),
                    not_after: 0,
                },
                "CA".into(),
            )),
            cert_sha256: "abc".into(),
        }
    }

    fn build_for(spec: &str, hubs: &[&str]) -> Children {
        let ps = service(spec);
        let deref = Dereferenced {
            links: hubs.iter().map(|h| link(h)).collect(),
            namespaces: hubs
                .iter()
                .map(|h| ((*h).to_owned(), NamespaceState::Active))
                .collect(),
            ..Dereferenced::default()
        };
        let uid = ps.uid().unwrap();
        let v = validate(&ps, "dps", "iot", &uid, &deref, SystemTime::now()).unwrap();
        build(&ps, &v, &managed_tls(), &settings()).unwrap()
    }

    #[test]
    fn every_same_namespace_child_is_owned_and_labelled() {
        let c = build_for("{}", &["hub-west"]);
        let owner = owner_of(&c).unwrap();
        assert_eq!(owner.kind, "ProvisioningService");
        assert_eq!(owner.name, "dps");
        assert_eq!(owner.controller, Some(true));
        let metas = [
            &c.service_account.metadata,
            &c.role.metadata,
            &c.role_binding.metadata,
            &c.deployment.metadata,
            &c.service.metadata,
            &c.tls_secret.as_ref().unwrap().metadata,
        ];
        for m in metas {
            assert_eq!(m.namespace.as_deref(), Some("iot"));
            assert_eq!(m.owner_references.as_ref().unwrap(), &vec![owner.clone()]);
            let labels = m.labels.as_ref().unwrap();
            assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY);
            assert_eq!(
                labels[LABEL_SERVICE_UID],
                "6f1c2a9e-0000-4000-8000-000000000001"
            );
        }
        assert_eq!(
            c.tls_secret.as_ref().unwrap().metadata.name.as_deref(),
            Some("dps-tls")
        );
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let c = build_for("{}", &[]);
        let text = format!("{c:?}");
        assert!(text.contains("values redacted"), "{text}");
        // "KEY" is the fixture's private key PEM.
        assert!(
            !text.contains("75, 69, 89") && !text.contains("\"KEY\""),
            "{text}"
        );
    }

    #[test]
    fn hub_rbac_is_one_role_per_hub_namespace_without_owner_references() {
        let c = build_for("{}", &["hub-west", "hub-east"]);
        let namespaces: BTreeSet<_> = c
            .hub_rbac
            .iter()
            .map(|(r, _)| r.metadata.namespace.clone().unwrap())
            .collect();
        assert_eq!(
            namespaces,
            BTreeSet::from(["hub-east".into(), "hub-west".into()])
        );
        for (role, binding) in &c.hub_rbac {
            assert_eq!(role.metadata.name.as_deref(), Some("kdps-registration-iot"));
            assert!(role.metadata.owner_references.is_none());
            assert_eq!(
                role.metadata.annotations.as_ref().unwrap()[ANNOTATION_SERVICE],
                "iot/dps"
            );
            // Devices and Secrets only.
            let rules = role.rules.as_ref().unwrap();
            let resources: Vec<_> = rules
                .iter()
                .flat_map(|r| r.resources.clone().unwrap())
                .collect();
            assert_eq!(resources, ["devices", "devices/status", "secrets"]);
            assert!(
                rules
                    .iter()
                    .all(|r| !r.verbs.contains(&"delete".to_owned()))
            );
            let secrets = rules
                .iter()
                .find(|r| r.resources.as_ref().unwrap()[0] == "secrets")
                .unwrap();
            assert_eq!(secrets.verbs, ["get", "create", "patch", "update"]);
            let subject = &binding.subjects.as_ref().unwrap()[0];
            assert_eq!(
                (
                    subject.kind.as_str(),
                    subject.name.as_str(),
                    subject.namespace.as_deref()
                ),
                ("ServiceAccount", "dps", Some("iot"))
            );
            assert_eq!(binding.role_ref.name, "kdps-registration-iot");
        }
    }

    #[test]
    fn own_namespace_role_reads_configuration_and_writes_registrations() {
        let c = build_for("{}", &[]);
        let rules = c.role.rules.unwrap();
        let find = |res: &str| {
            rules
                .iter()
                .find(|r| r.resources.as_ref().unwrap().contains(&res.to_owned()))
                .unwrap()
                .verbs
                .clone()
        };
        assert_eq!(find("individualenrollments"), ["get", "list", "watch"]);
        // Secrets only by name: no list or watch.
        assert_eq!(find("secrets"), ["get"]);
        assert_eq!(
            find("deviceregistrations"),
            ["get", "list", "create", "patch", "update"]
        );
        assert_eq!(
            find("deviceregistrations/status"),
            ["get", "patch", "update"]
        );
        assert!(
            rules
                .iter()
                .all(|r| !r.verbs.contains(&"delete".to_owned()))
        );
        assert!(c.hub_rbac.is_empty());
        assert_eq!(c.role_binding.role_ref.name, "dps");
    }

    /// (group, resource) -> sorted verbs.
    fn normalize(rules: &[PolicyRule]) -> BTreeMap<(String, String), Vec<String>> {
        let mut out = BTreeMap::new();
        for r in rules {
            for g in r.api_groups.clone().unwrap_or_default() {
                for res in r.resources.clone().unwrap_or_default() {
                    let mut verbs = r.verbs.clone();
                    verbs.sort();
                    out.insert((g.clone(), res), verbs);
                }
            }
        }
        out
    }

    #[test]
    fn rules_match_the_service_rbac_manifest() {
        // tests/k8s/service-rbac.yaml is what the registration service's own tests run with.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/k8s/service-rbac.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let (own, hub) = text
            .split_once("# ---- per linked hub namespace ----")
            .unwrap();
        let role_rules = |part: &str| -> Vec<PolicyRule> {
            serde_yaml::Deserializer::from_str(part)
                .map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap())
                .find(|doc| doc["kind"] == "Role")
                .map(|doc| serde_json::from_value(doc["rules"].clone()).unwrap())
                .unwrap()
        };
        assert_eq!(normalize(&service_rules()), normalize(&role_rules(own)));
        assert_eq!(normalize(&hub_rules()), normalize(&role_rules(hub)));
    }

    #[test]
    fn deployment_runs_serve_hardened_with_probes_on_the_admin_port() {
        let c = build_for("{replicas: 3}", &[]);
        let spec = c.deployment.spec;
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("dps"));
        let psc = pod.security_context.unwrap();
        assert_eq!(
            (psc.run_as_non_root, psc.run_as_user),
            (Some(true), Some(65532))
        );
        let ctr = &pod.containers[0];
        assert_eq!(
            ctr.image.as_deref(),
            Some("ghcr.io/kdps-io/kdps-registration:0.1.0")
        );
        assert_eq!(ctr.args.as_deref(), Some(&["serve".to_owned()][..]));
        let sc = ctr.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        let env: BTreeMap<_, _> = ctr
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.clone()))
            .collect();
        assert_eq!(env["KDPS_SERVICE_NAME"].as_deref(), Some("dps"));
        assert_eq!(env["KDPS_LISTEN"].as_deref(), Some("0.0.0.0:8443"));
        assert_eq!(env["KDPS_ADMIN_LISTEN"].as_deref(), Some("0.0.0.0:8081"));
        assert_eq!(
            env["KDPS_TLS_CERT"].as_deref(),
            Some("/etc/kdps/tls/tls.crt")
        );
        assert_eq!(
            env["KDPS_TLS_KEY"].as_deref(),
            Some("/etc/kdps/tls/tls.key")
        );
        assert_eq!(env["KDPS_NAMESPACE"], None); // from the downward API
        let live = ctr
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(
            (live.path.as_deref(), &live.port),
            (Some("/healthz"), &IntOrString::String("admin".into()))
        );
        let ready = ctr
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert!(ctr.resources.as_ref().unwrap().limits.is_some());
        let tls_volume = pod.volumes.as_ref().unwrap()[0].secret.as_ref().unwrap();
        assert_eq!(tls_volume.secret_name.as_deref(), Some("dps-tls"));
        let template_annotations = spec.template.metadata.unwrap().annotations.unwrap();
        assert_eq!(template_annotations[ANNOTATION_CERT_SHA256], "abc");
    }

    #[test]
    fn image_and_service_follow_the_spec() {
        let c = build_for(
            "{image: 'example.org/reg:1', endpoint: {serviceType: NodePort, port: 443, nodePort: 30443}}",
            &[],
        );
        let ctr = &c.deployment.spec.template.spec.unwrap().containers[0];
        assert_eq!(ctr.image.as_deref(), Some("example.org/reg:1"));
        let svc = c.service.spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("NodePort"));
        let port = &svc.ports.unwrap()[0];
        assert_eq!((port.port, port.node_port), (443, Some(30443)));
        assert_eq!(port.target_port, Some(IntOrString::String("https".into())));
        assert_eq!(
            svc.selector.unwrap(),
            BTreeMap::from([
                (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
                (LABEL_INSTANCE.to_owned(), "dps".to_owned())
            ])
        );
    }

    #[test]
    fn user_supplied_tls_is_mounted_not_written() {
        let ps = service("{tls: {secretName: my-cert}}");
        let v = Validated {
            name: "dps".into(),
            namespace: "iot".into(),
            uid: ps.uid().unwrap(),
            id_scope: "0ne00000A11".into(),
            id_scope_source: crate::idscope::Source::Spec,
            hub_namespaces: BTreeSet::new(),
            waiting_links: vec![],
            user_tls: None,
        };
        let tls = TlsMaterial {
            secret_name: "my-cert".into(),
            managed: None,
            cert_sha256: "def".into(),
        };
        let c = build(&ps, &v, &tls, &settings()).unwrap();
        assert!(c.tls_secret.is_none());
        let pod = c.deployment.spec.template.spec.unwrap();
        assert_eq!(
            pod.volumes.unwrap()[0]
                .secret
                .as_ref()
                .unwrap()
                .secret_name
                .as_deref(),
            Some("my-cert")
        );
    }

    #[test]
    fn clusterip_ignores_node_port_and_missing_uid_is_an_error() {
        let c = build_for("{endpoint: {nodePort: 30443}}", &[]);
        assert_eq!(c.service.spec.unwrap().ports.unwrap()[0].node_port, None);
        let mut ps = service("{}");
        let v = validate(
            &ps,
            "dps",
            "iot",
            "u",
            &Dereferenced::default(),
            SystemTime::now(),
        )
        .unwrap();
        ps.metadata.uid = None;
        assert!(matches!(
            build(&ps, &v, &managed_tls(), &settings()),
            Err(Error::MissingField {
                field: "metadata.uid",
                ..
            })
        ));
    }
}
