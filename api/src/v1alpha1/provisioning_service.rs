//! `ProvisioningService`: one registration service per namespace.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{AllocationPolicy, Condition, CustomAllocation};

/// Default number of registration service replicas.
pub const DEFAULT_REPLICAS: i32 = 1;
/// Default port of the registration endpoint (gRPC and DPS HTTPS on one TLS port).
pub const DEFAULT_PORT: i32 = 8443;
/// Registrations (including status polls) one registration ID may make per minute when
/// `rateLimits.perDevicePerMinute` is not set.
pub const DEFAULT_PER_DEVICE_PER_MINUTE: u32 = 30;

/// A kdps registration service: the operator runs it as a Deployment and Service in this
/// namespace. The IoTHubLinks and enrollments in the same namespace belong to it; one
/// ProvisioningService per namespace.
// clippy takes the repeated `type_ = ...` of the printcolumn entries for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kdps.io",
    version = "v1alpha1",
    kind = "ProvisioningService",
    namespaced,
    status = "ProvisioningServiceStatus",
    derive = "PartialEq",
    shortname = "dps",
    shortname = "provsvc",
    category = "kdps",
    doc = "A kdps registration service (a self-hosted Device Provisioning Service instance); one per namespace.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "ID Scope", type_ = "string", json_path = ".status.idScope"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".spec.allocationPolicy"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = (
    "!has(self.allocationPolicy) || self.allocationPolicy != 'custom' || has(self.customAllocation)",
    "allocationPolicy custom requires customAllocation.webhookUrl"
))]
#[x_kube(validation = (
    "!has(oldSelf.idScope) || (has(self.idScope) && self.idScope == oldSelf.idScope)",
    "idScope cannot be changed or removed once set: devices are configured with it"
))]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningServiceSpec {
    /// The ID scope devices use (e.g. `0ne00000A11`). Generated when empty and published in
    /// `status.idScope`; immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 4, max = 32))]
    #[x_kube(validation = (
        "self.matches('^[A-Za-z0-9]+$')",
        "must be 4-32 letters and digits"
    ))]
    pub id_scope: Option<String>,

    /// Number of registration service replicas (the service is stateless and scales out).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// Container image of the registration service; defaults to the image the operator was
    /// built with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,

    /// Default allocation policy for enrollments that set none: `hashed` (weighted hashing),
    /// `geoLatency` (region of the client address, see `regions`), `static` (the enrollment's
    /// single hub) or `custom` (the webhook in `customAllocation`).
    #[serde(default)]
    pub allocation_policy: AllocationPolicy,

    /// Default custom-allocation webhook, used by enrollments with policy `custom` that do not
    /// name their own. Required when `allocationPolicy` is `custom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation: Option<CustomAllocation>,

    /// How devices reach the registration endpoint.
    #[serde(default)]
    pub endpoint: ServiceEndpoint,

    /// Serving certificate. When unset the operator issues one from its own CA and publishes
    /// the CA in `status.caBundle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServiceTls>,

    /// Registration rate limits; requests over a limit get HTTP 429 with Retry-After.
    #[serde(default)]
    pub rate_limits: RateLimits,

    /// Region map for `geoLatency` allocation: a client address in one of a region's CIDRs is
    /// assigned to a link of that region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub regions: Vec<Region>,
}

fn default_replicas() -> i32 {
    DEFAULT_REPLICAS
}

/// Kubernetes Service type of the registration endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[schemars(transform = crate::v1alpha1::common::drop_description)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Exposed on a port of every node.
    NodePort,
    /// Exposed through a cloud load balancer.
    LoadBalancer,
}

/// How devices reach the registration endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEndpoint {
    /// Kubernetes Service type: ClusterIP, NodePort or LoadBalancer.
    #[serde(default)]
    pub service_type: ServiceType,
    /// TLS port serving both gRPC and the DPS-compatible HTTPS API.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Extra DNS names for the serving certificate (the in-cluster Service names are always
    /// included), e.g. the public name devices connect to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = (
        "self.all(n, n.matches('^([*][.])?[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'))",
        "every entry must be a lower-case DNS name (a leading '*.' wildcard is allowed)"
    ))]
    pub dns_names: Vec<String>,
    /// Fixed node port for serviceType NodePort or LoadBalancer (e.g. 30443, so a kind
    /// cluster can map it to the host); chosen by Kubernetes when unset. Ignored for ClusterIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub node_port: Option<i32>,
}

impl Default for ServiceEndpoint {
    fn default() -> Self {
        Self {
            service_type: ServiceType::default(),
            port: DEFAULT_PORT,
            dns_names: Vec::new(),
            node_port: None,
        }
    }
}

fn default_port() -> i32 {
    DEFAULT_PORT
}

/// A user-supplied serving certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTls {
    /// Name of a `kubernetes.io/tls` Secret in this namespace (`tls.crt`, `tls.key`, and
    /// optionally `ca.crt`, which is published as `status.caBundle`).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Registration rate limits.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    /// Requests (registrations and status polls) one registration ID may make per minute.
    /// Unset means 30; 0 means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // `int32`: Kubernetes does not know the `uint32` format schemars would emit.
    #[schemars(range(max = 100000), extend("format" = "int32"))]
    pub per_device_per_minute: Option<u32>,
    /// Registrations the whole service (each replica) accepts per second. Unset or 0 means
    /// unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000000), extend("format" = "int32"))]
    pub global_per_second: Option<u32>,
}

impl RateLimits {
    /// Effective per-device limit per minute; None = unlimited.
    pub fn per_device_per_minute(&self) -> Option<u32> {
        match self.per_device_per_minute {
            None => Some(DEFAULT_PER_DEVICE_PER_MINUTE),
            Some(0) => None,
            Some(n) => Some(n),
        }
    }

    /// Effective global limit per second; None = unlimited.
    pub fn global_per_second(&self) -> Option<u32> {
        self.global_per_second.filter(|n| *n > 0)
    }
}

/// A region for geo-latency allocation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Region {
    /// Region name, referenced by IoTHubLink `region`.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = (
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        "must be a DNS label: lower-case letters, digits and '-'"
    ))]
    pub name: String,
    /// Client address ranges of the region, as CIDRs (e.g. `10.1.0.0/16`, `fd00::/8`).
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 43)))]
    #[x_kube(validation = (
        "self.all(c, isCIDR(c))",
        "every entry must be a CIDR such as 10.0.0.0/8 or fd00::/8"
    ))]
    pub cidrs: Vec<String>,
}

/// Observed state of a ProvisioningService.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningServiceStatus {
    /// The ID scope devices use (the spec value, or the generated one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_scope: Option<String>,
    /// `host:port` devices in the cluster connect to, e.g. `dps.iot.svc:8443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// PEM CA certificate(s) that verify the serving certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Registration service replicas that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions; `Ready` is true when the configuration is valid and the service
    /// is serving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
