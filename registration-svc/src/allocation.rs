//! Hub allocation policies and the reprovisioning decision.
//!
//! * [`allocate`] implements the built-in policies, pure and deterministic:
//!   - `hashed`: weighted rendezvous (highest-random-weight) hashing of the registration ID
//!     over the eligible links ([`allocate_hashed`]);
//!   - `static`: the one eligible link;
//!   - `geoLatency`: the links of the client address's region (by CIDR map), hashed among
//!     themselves, falling back to all links.
//! * [`WebhookClient`] implements `custom`: a DPS-compatible HTTPS webhook.
//! * [`decide_reprovision`] applies an enrollment's reprovision policy to a new allocation.
//!
//! See `docs/allocation.md` for why rendezvous hashing and the webhook contract.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::registry::{DeviceTwin, EnrollmentKind, HubAssignment, RegistrationRecord, Substatus};

/// Largest webhook response body accepted (DPS's message size limit).
pub const MAX_WEBHOOK_RESPONSE_BYTES: usize = 96 * 1024;

/// Allowed range of `IoTHubLink.allocationWeight`; values outside are clamped.
pub const WEIGHT_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;

/// An allocation policy, with the API names `hashed`, `geoLatency`, `static`, `custom`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AllocationPolicy {
    /// Weighted rendezvous hashing on the registration ID.
    Hashed,
    /// Region of the client address, hashed within it; fallback hashed over all links.
    GeoLatency,
    /// The single eligible link.
    Static,
    /// A custom-allocation webhook ([`WebhookClient`]).
    Custom,
}

impl std::str::FromStr for AllocationPolicy {
    type Err = AllocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hashed" => Ok(Self::Hashed),
            "geoLatency" => Ok(Self::GeoLatency),
            "static" => Ok(Self::Static),
            "custom" => Ok(Self::Custom),
            other => Err(AllocationError::UnknownPolicy(other.to_owned())),
        }
    }
}

/// A link a device may be allocated to (an eligible, `applyAllocationPolicy` `IoTHubLink`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkCandidate {
    /// `IoTHubLink` name; the hashing key.
    pub name: String,
    /// Hub host name (`spec.hostName`).
    pub host_name: String,
    /// Namespace for the link's Device objects.
    pub device_namespace: String,
    /// `allocationWeight`, 1..=1000 (clamped).
    pub weight: u32,
    /// Region for `geoLatency`.
    pub region: Option<String>,
}

impl LinkCandidate {
    /// The registry's view of this link.
    pub fn assignment(&self) -> HubAssignment {
        HubAssignment {
            host_name: self.host_name.clone(),
            link_name: self.name.clone(),
            device_namespace: self.device_namespace.clone(),
        }
    }
}

/// Client address → region, from `ProvisioningService.spec.regions`.
#[derive(Clone, Debug, Default)]
pub struct RegionMap {
    entries: Vec<(IpNet, String)>,
}

impl RegionMap {
    /// Builds the map from (region name, CIDRs) pairs.
    pub fn new<I, C>(regions: I) -> Self
    where
        I: IntoIterator<Item = (String, C)>,
        C: IntoIterator<Item = IpNet>,
    {
        let mut entries = Vec::new();
        for (name, cidrs) in regions {
            for net in cidrs {
                entries.push((net.trunc(), name.clone()));
            }
        }
        Self { entries }
    }

    /// Parses CIDR strings; the error names the offending entry.
    pub fn parse<'a, I, C>(regions: I) -> Result<Self, AllocationError>
    where
        I: IntoIterator<Item = (&'a str, C)>,
        C: IntoIterator<Item = &'a str>,
    {
        let mut parsed = Vec::new();
        for (name, cidrs) in regions {
            let mut nets = Vec::new();
            for cidr in cidrs {
                let net = cidr
                    .parse::<IpNet>()
                    .map_err(|e| AllocationError::InvalidRegionMap {
                        region: name.to_owned(),
                        reason: format!("'{cidr}' is not a CIDR: {e}"),
                    })?;
                nets.push(net);
            }
            parsed.push((name.to_owned(), nets));
        }
        Ok(Self::new(parsed))
    }

    /// The region of `addr`: the most specific (longest-prefix) CIDR containing it, earlier
    /// entries winning ties. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack
    /// listener reports IPv4 clients) are matched as IPv4.
    pub fn region_of(&self, addr: IpAddr) -> Option<&str> {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let mut best: Option<(u8, &str)> = None;
        for (net, region) in &self.entries {
            if net.contains(&addr) && best.is_none_or(|(len, _)| net.prefix_len() > len) {
                best = Some((net.prefix_len(), region));
            }
        }
        best.map(|(_, r)| r)
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Input of the built-in policies.
#[derive(Clone, Copy, Debug)]
pub struct AllocationInput<'a> {
    /// Eligible links (the enrollment's `iotHubs`, or all, with `applyAllocationPolicy`).
    pub links: &'a [LinkCandidate],
    /// The device's registration ID (compared case-insensitively).
    pub registration_id: &'a str,
    /// The client's address, for `geoLatency`.
    pub client_ip: Option<IpAddr>,
    /// Region map, for `geoLatency`.
    pub regions: &'a RegionMap,
}

/// Allocates with a built-in policy. `Custom` is refused with
/// [`AllocationError::CustomNeedsWebhook`]: use [`WebhookClient::allocate`].
pub fn allocate<'a>(
    policy: AllocationPolicy,
    input: &AllocationInput<'a>,
) -> Result<&'a LinkCandidate, AllocationError> {
    match policy {
        AllocationPolicy::Hashed => allocate_hashed(input.links, input.registration_id),
        AllocationPolicy::Static => allocate_static(input.links),
        AllocationPolicy::GeoLatency => allocate_geo_latency(input),
        AllocationPolicy::Custom => Err(AllocationError::CustomNeedsWebhook),
    }
}

/// `static`: the single eligible link.
pub fn allocate_static(links: &[LinkCandidate]) -> Result<&LinkCandidate, AllocationError> {
    match links {
        [only] => Ok(only),
        [] => Err(AllocationError::NoEligibleLinks),
        more => Err(AllocationError::StaticNeedsOneLink { count: more.len() }),
    }
}

/// `geoLatency`: hashed among the links in the client's region; hashed among all links when
/// the address has no region or no link is in it.
pub fn allocate_geo_latency<'a>(
    input: &AllocationInput<'a>,
) -> Result<&'a LinkCandidate, AllocationError> {
    if let Some(region) = input.client_ip.and_then(|ip| input.regions.region_of(ip)) {
        let best = input
            .links
            .iter()
            .filter(|l| l.region.as_deref() == Some(region))
            .max_by(|a, b| compare_scores(a, b, input.registration_id));
        if let Some(link) = best {
            return Ok(link);
        }
        tracing::debug!(
            region,
            "no link in the client's region; hashing over all links"
        );
    }
    allocate_hashed(input.links, input.registration_id)
}

/// `hashed`: weighted rendezvous hashing. Every link gets the score `-weight / ln(u)` with
/// `u` in (0, 1) derived from SHA-256(link name, registration ID); the highest score wins.
/// The result depends only on the link set, so every replica agrees, and adding or removing
/// a link moves only the devices that the change must move.
pub fn allocate_hashed<'a>(
    links: &'a [LinkCandidate],
    registration_id: &str,
) -> Result<&'a LinkCandidate, AllocationError> {
    links
        .iter()
        .max_by(|a, b| compare_scores(a, b, registration_id))
        .ok_or(AllocationError::NoEligibleLinks)
}

fn compare_scores(
    a: &LinkCandidate,
    b: &LinkCandidate,
    registration_id: &str,
) -> std::cmp::Ordering {
    hrw_score(a, registration_id)
        .total_cmp(&hrw_score(b, registration_id))
        // Ties (practically impossible) go to the smaller name, identically everywhere.
        .then_with(|| b.name.cmp(&a.name))
}

/// The weighted rendezvous score of `link` for `registration_id` (exposed for tests and
/// tooling).
pub fn hrw_score(link: &LinkCandidate, registration_id: &str) -> f64 {
    let weight = f64::from(
        link.weight
            .clamp(*WEIGHT_RANGE.start(), *WEIGHT_RANGE.end()),
    );
    let mut hasher = Sha256::new();
    // Length-prefix the name so ("ab", "c") and ("a", "bc") hash differently.
    hasher.update((link.name.len() as u64).to_be_bytes());
    hasher.update(link.name.as_bytes());
    hasher.update(registration_id.to_ascii_lowercase().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    // 53 bits, centred in their interval: u is strictly inside (0, 1), so ln(u) < 0.
    let bits = u64::from_be_bytes(first) >> 11;
    let u = (bits as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / u.ln()
}

// ---------------------------------------------------------------------------------------------
// Custom allocation webhook

/// Configuration of a custom-allocation webhook (`customAllocation` of an enrollment or the
/// service default).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// `https://` URL. A query string (e.g. an Azure Functions `code=`) is kept secret: it is
    /// never logged or put in an error.
    pub url: url::Url,
    /// PEM bundle of the CA certificate(s) to trust for the webhook. Required: kdps trusts no
    /// built-in roots.
    pub ca_bundle_pem: String,
    /// Timeout of the whole call (connect, request, response).
    pub timeout: Duration,
}

/// Default webhook timeout when the enrollment does not set one.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTPS client for one webhook. Build it once per configuration and reuse it (it keeps a
/// connection pool); cloning is cheap.
#[derive(Clone, Debug)]
pub struct WebhookClient {
    client: reqwest::Client,
    url: url::Url,
    timeout: Duration,
}

/// The enrollment the device registered through, as the JSON document sent to the webhook.
#[derive(Clone, Debug)]
pub struct EnrollmentDocument {
    /// Individual enrollment (`individualEnrollment`) or group (`enrollmentGroup`).
    pub kind: EnrollmentKind,
    /// The enrollment object as JSON (the caller decides its shape: DPS sends its enrollment
    /// schema, kdps the enrollment's spec with `registrationId`/`enrollmentGroupId`).
    pub document: Value,
}

/// The device's attestation as reported to the webhook. Never carries key material.
#[derive(Clone, Debug)]
pub enum RuntimeAttestation {
    /// `"symmetricKey": {}` — as DPS sends it, without keys.
    SymmetricKey,
    /// `"x509": {...}` — certificate information (subject, thumbprints, ...).
    X509(Value),
    /// `"tpm": {"endorsementKey", "storageRootKey"}` (public keys, base64).
    Tpm {
        /// Endorsement key (public), base64.
        endorsement_key: String,
        /// Storage root key (public), base64, if the device sent one.
        storage_root_key: Option<String>,
    },
}

/// What the webhook is told about the registering device (DPS `AllocationRequest`).
#[derive(Clone, Debug)]
pub struct CustomAllocationRequest {
    /// The enrollment.
    pub enrollment: EnrollmentDocument,
    /// Registration ID.
    pub registration_id: String,
    /// Hub the device is currently assigned to (re-provisioning only).
    pub current_hub_host_name: Option<String>,
    /// Device ID of the current assignment (re-provisioning only).
    pub current_device_id: Option<String>,
    /// How the device attested.
    pub attestation: RuntimeAttestation,
    /// The device's `payload`.
    pub payload: Option<Value>,
}

impl CustomAllocationRequest {
    /// The DPS `AllocationRequest` JSON body, with `linkedHubs` the host names of `links`.
    pub fn to_json(&self, links: &[LinkCandidate]) -> Value {
        let mut ctx = Map::new();
        ctx.insert("registrationId".into(), self.registration_id.clone().into());
        if let Some(hub) = &self.current_hub_host_name {
            ctx.insert("currentIotHubHostName".into(), hub.clone().into());
        }
        if let Some(dev) = &self.current_device_id {
            ctx.insert("currentDeviceId".into(), dev.clone().into());
        }
        match &self.attestation {
            RuntimeAttestation::SymmetricKey => {
                ctx.insert("symmetricKey".into(), Value::Object(Map::new()));
            }
            RuntimeAttestation::X509(info) => {
                ctx.insert("x509".into(), info.clone());
            }
            RuntimeAttestation::Tpm {
                endorsement_key,
                storage_root_key,
            } => {
                let mut tpm = Map::new();
                tpm.insert("endorsementKey".into(), endorsement_key.clone().into());
                if let Some(srk) = storage_root_key {
                    tpm.insert("storageRootKey".into(), srk.clone().into());
                }
                ctx.insert("tpm".into(), Value::Object(tpm));
            }
        }
        if let Some(payload) = &self.payload {
            ctx.insert("payload".into(), payload.clone());
        }
        let mut hubs: Vec<&str> = Vec::with_capacity(links.len());
        for link in links {
            if !hubs.iter().any(|h| h.eq_ignore_ascii_case(&link.host_name)) {
                hubs.push(&link.host_name);
            }
        }
        let enrollment_key = match self.enrollment.kind {
            EnrollmentKind::Individual => "individualEnrollment",
            EnrollmentKind::Group => "enrollmentGroup",
        };
        serde_json::json!({
            enrollment_key: self.enrollment.document,
            "deviceRuntimeContext": ctx,
            "linkedHubs": hubs,
        })
    }
}

/// The webhook's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomAllocation<'a> {
    /// The link whose host name the webhook returned.
    pub link: &'a LinkCandidate,
    /// Initial twin from the webhook; when present it overrides the enrollment's initial twin
    /// and the migration setting.
    pub initial_twin: Option<DeviceTwin>,
    /// Payload to return to the device in `registrationState.payload`.
    pub payload: Option<Value>,
}

#[derive(Deserialize)]
struct AllocationResponseWire {
    #[serde(rename = "iotHubHostName", alias = "iotHubHostname", default)]
    iot_hub_host_name: Option<String>,
    #[serde(rename = "initialTwin", default)]
    initial_twin: Option<InitialTwinWire>,
    #[serde(default)]
    payload: Option<Value>,
}

#[derive(Deserialize)]
struct InitialTwinWire {
    #[serde(default)]
    tags: Option<Value>,
    #[serde(default)]
    properties: Option<PropertiesWire>,
}

#[derive(Deserialize)]
struct PropertiesWire {
    #[serde(default)]
    desired: Option<Value>,
}

/// The URL without query and fragment, for messages.
fn redacted_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    if !shown.username().is_empty() || shown.password().is_some() {
        // Cannot fail for https URLs.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
    }
    shown.to_string()
}

/// The error and its causes, without the request URL (which may hold a secret query).
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl WebhookClient {
    /// Builds the client: HTTPS only, trusting exactly the configured CA bundle, no redirects.
    pub fn new(config: &WebhookConfig) -> Result<Self, AllocationError> {
        if config.url.scheme() != "https" {
            return Err(AllocationError::WebhookConfig(format!(
                "webhook URL {} must use https",
                redacted_url(&config.url)
            )));
        }
        if config.url.host_str().is_none() {
            return Err(AllocationError::WebhookConfig(
                "webhook URL has no host".into(),
            ));
        }
        if config.timeout.is_zero() {
            return Err(AllocationError::WebhookConfig(
                "webhook timeout must be positive".into(),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("kdps-registration/", env!("CARGO_PKG_VERSION")));
        let mut count = 0;
        for der in CertificateDer::pem_slice_iter(config.ca_bundle_pem.as_bytes()) {
            let der = der.map_err(|e| {
                AllocationError::WebhookConfig(format!("caBundle is not valid PEM: {e}"))
            })?;
            let cert = reqwest::Certificate::from_der(der.as_ref()).map_err(|e| {
                AllocationError::WebhookConfig(format!(
                    "caBundle certificate {} is invalid: {}",
                    count + 1,
                    describe(e)
                ))
            })?;
            builder = builder.add_root_certificate(cert);
            count += 1;
        }
        if count == 0 {
            return Err(AllocationError::WebhookConfig(
                "caBundle holds no PEM certificate; the webhook's CA must be given explicitly"
                    .into(),
            ));
        }
        let client = builder.build().map_err(|e| {
            AllocationError::WebhookConfig(format!("cannot build HTTPS client: {}", describe(e)))
        })?;
        Ok(Self {
            client,
            url: config.url.clone(),
            timeout: config.timeout,
        })
    }

    /// Calls the webhook and maps its answer onto one of `links`.
    pub async fn allocate<'a>(
        &self,
        request: &CustomAllocationRequest,
        links: &'a [LinkCandidate],
    ) -> Result<CustomAllocation<'a>, AllocationError> {
        if links.is_empty() {
            return Err(AllocationError::NoEligibleLinks);
        }
        let body = request.to_json(links);
        let url = redacted_url(&self.url);
        let map_send = |e: reqwest::Error| {
            if e.is_timeout() {
                AllocationError::WebhookTimeout {
                    url: url.clone(),
                    timeout: self.timeout,
                }
            } else {
                AllocationError::WebhookUnreachable {
                    url: url.clone(),
                    reason: describe(e),
                }
            }
        };
        let mut response = self
            .client
            .post(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .json(&body)
            .send()
            .await
            .map_err(map_send)?;
        let status = response.status();
        if !status.is_success() {
            return Err(AllocationError::WebhookStatus {
                status: status.as_u16(),
            });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(map_send)? {
            if bytes.len() + chunk.len() > MAX_WEBHOOK_RESPONSE_BYTES {
                return Err(AllocationError::WebhookInvalidResponse(format!(
                    "response body is larger than {MAX_WEBHOOK_RESPONSE_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        parse_allocation_response(&bytes, links)
    }
}

/// Parses a DPS `AllocationResponse` and finds the link of its hub (host names compared
/// case-insensitively; the first matching link wins).
pub fn parse_allocation_response<'a>(
    body: &[u8],
    links: &'a [LinkCandidate],
) -> Result<CustomAllocation<'a>, AllocationError> {
    let wire: AllocationResponseWire = serde_json::from_slice(body).map_err(|e| {
        AllocationError::WebhookInvalidResponse(format!(
            "not an AllocationResponse JSON object: {e}"
        ))
    })?;
    let host = wire
        .iot_hub_host_name
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            AllocationError::WebhookInvalidResponse("iotHubHostName is missing".into())
        })?;
    let link = links
        .iter()
        .find(|l| l.host_name.eq_ignore_ascii_case(&host))
        .ok_or_else(|| AllocationError::HubNotLinked {
            host_name: host.clone(),
        })?;
    let initial_twin = match wire.initial_twin {
        None => None,
        Some(twin) => {
            let tags = object_or_empty(twin.tags, "initialTwin.tags")?;
            let desired = object_or_empty(
                twin.properties.and_then(|p| p.desired),
                "initialTwin.properties.desired",
            )?;
            Some(DeviceTwin { tags, desired })
        }
    };
    Ok(CustomAllocation {
        link,
        initial_twin,
        payload: wire.payload.filter(|p| !p.is_null()),
    })
}

fn object_or_empty(value: Option<Value>, field: &str) -> Result<Value, AllocationError> {
    match value {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(AllocationError::WebhookInvalidResponse(format!(
            "{field} must be a JSON object"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why no hub could be allocated.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AllocationError {
    /// No link is eligible (none linked, none in the enrollment's `iotHubs`, or all with
    /// `applyAllocationPolicy: false`).
    #[error("no IoT hub could be assigned: no eligible IoTHubLink")]
    NoEligibleLinks,
    /// `static` with zero or several eligible links.
    #[error("static allocation needs exactly one eligible IoTHubLink, found {count}")]
    StaticNeedsOneLink {
        /// How many links were eligible.
        count: usize,
    },
    /// `allocate` was called with the `custom` policy.
    #[error("custom allocation needs a webhook; use WebhookClient::allocate")]
    CustomNeedsWebhook,
    /// An unknown policy name.
    #[error("unknown allocation policy '{0}' (expected hashed, geoLatency, static or custom)")]
    UnknownPolicy(String),
    /// The region map has a bad entry.
    #[error("region '{region}' is invalid: {reason}")]
    InvalidRegionMap {
        /// Region name.
        region: String,
        /// What is wrong.
        reason: String,
    },
    /// The webhook configuration is unusable (URL, CA bundle, timeout).
    #[error("Custom allocation failed: invalid webhook configuration: {0}")]
    WebhookConfig(String),
    /// The webhook could not be reached (DNS, connect, TLS, broken connection).
    #[error("Custom allocation failed: webhook {url} unreachable: {reason}")]
    WebhookUnreachable {
        /// Webhook URL without query.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The webhook did not answer in time.
    #[error("Custom allocation failed: webhook {url} did not answer within {}s", .timeout.as_secs_f64())]
    WebhookTimeout {
        /// Webhook URL without query.
        url: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The webhook answered with a non-2xx status (DPS's wording).
    #[error("Custom allocation failed with status code: {status}")]
    WebhookStatus {
        /// HTTP status.
        status: u16,
    },
    /// The webhook's body is not a valid `AllocationResponse`.
    #[error("Custom allocation failed: invalid response: {0}")]
    WebhookInvalidResponse(String),
    /// The webhook chose a hub that is not among the eligible links.
    #[error(
        "no IoT hub could be assigned: the custom allocation webhook returned '{host_name}', which is not one of the linked hubs"
    )]
    HubNotLinked {
        /// The host name returned.
        host_name: String,
    },
}

impl AllocationError {
    /// DPS error code: 400207 for webhook failures (DPS: "Custom allocation failed ..."),
    /// 400208 when no hub could be assigned (`DPS_HUB_ERROR_NO_HUB`), including a webhook
    /// choosing a hub that is not linked; 500000 for configuration/programming errors.
    pub fn dps_error_code(&self) -> u32 {
        match self {
            Self::NoEligibleLinks | Self::StaticNeedsOneLink { .. } | Self::HubNotLinked { .. } => {
                400_208
            }
            Self::WebhookConfig(_)
            | Self::WebhookUnreachable { .. }
            | Self::WebhookTimeout { .. }
            | Self::WebhookStatus { .. }
            | Self::WebhookInvalidResponse(_) => 400_207,
            Self::CustomNeedsWebhook | Self::UnknownPolicy(_) | Self::InvalidRegionMap { .. } => {
                500_000
            }
        }
    }

    /// gRPC status code: `Unavailable` for failures a retry may cure (webhook unreachable,
    /// timed out, 429 or 5xx), `FailedPrecondition` for configuration the device cannot fix,
    /// `Internal` for programming errors.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::WebhookUnreachable { .. } | Self::WebhookTimeout { .. } => {
                tonic::Code::Unavailable
            }
            Self::WebhookStatus { status } if *status == 429 || *status >= 500 => {
                tonic::Code::Unavailable
            }
            Self::CustomNeedsWebhook => tonic::Code::Internal,
            _ => tonic::Code::FailedPrecondition,
        }
    }

    /// Whether a retry of the same registration may succeed.
    pub fn is_retryable(&self) -> bool {
        self.grpc_code() == tonic::Code::Unavailable
    }
}

// ---------------------------------------------------------------------------------------------
// Reprovisioning

/// An enrollment's `reprovisionPolicy`. Both default to `true`, as in DPS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    /// Re-evaluate the hub on every registration after the first; `false` keeps the hub.
    #[serde(default = "yes")]
    pub update_hub_assignment: bool,
    /// When the device moves, carry its twin and capabilities over (`true`) or reset them
    /// to the enrollment's initial state (`false`).
    #[serde(default = "yes")]
    pub migrate_device_data: bool,
}

fn yes() -> bool {
    true
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        Self {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

/// Where the twin (tags, desired properties) of the Device to write comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwinSource {
    /// Carry over the twin of the device's current Device (same hub, or moved with
    /// migration). If that Device no longer exists, use the enrollment's initial twin.
    Migrate,
    /// The enrollment's `initialTwin` (first assignment, or moved with reset).
    Reset,
}

/// Outcome of [`decide_reprovision`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReprovisionDecision {
    /// The hub to assign.
    pub hub: HubAssignment,
    /// The substatus to record.
    pub substatus: Substatus,
    /// Twin source for the Device. A custom webhook's `initialTwin` overrides it.
    pub twin: TwinSource,
    /// Whether the device leaves its previous hub (the previous Device gets retired).
    pub moved: bool,
    /// The hub of the first assignment, to store in the registration.
    pub initial_hub: HubAssignment,
}

impl ReprovisionPolicy {
    /// The hub to keep without allocating, if any: `updateHubAssignment: false`, a previous
    /// assignment, and its link still eligible. The engine can skip allocation (and a custom
    /// webhook call) when this is `Some`.
    pub fn sticky_hub<'r>(
        &self,
        previous: Option<&'r RegistrationRecord>,
        previous_hub_eligible: bool,
    ) -> Option<&'r HubAssignment> {
        if self.update_hub_assignment || !previous_hub_eligible {
            return None;
        }
        previous.and_then(|p| p.assigned_hub.as_ref())
    }
}

/// Applies the reprovision policy (dps-protocol §6).
///
/// * No previous assignment → `allocated`, `initialAssignment`, twin from the enrollment.
/// * `updateHubAssignment: false` and the previous hub's link still eligible → keep the
///   previous hub and its substatus, keep the twin. (DPS: "never re-provision". When the link
///   is gone the device is moved as below, since it cannot stay on an unlinked hub.)
/// * `allocated` is the current hub → stay, keep the previous substatus, keep the twin.
///   Real DPS was observed answering both `initialAssignment` and
///   `reprovisionedToInitialAssignment` here; keeping the substatus makes a repeated
///   registration idempotent.
/// * `allocated` is a different hub:
///   - it is the hub of the initial assignment → `reprovisionedToInitialAssignment`;
///   - else `migrateDeviceData` → `deviceDataMigrated`, otherwise `deviceDataReset`;
///   - the twin is migrated or reset per `migrateDeviceData` in both cases.
pub fn decide_reprovision(
    previous: Option<&RegistrationRecord>,
    allocated: &HubAssignment,
    previous_hub_eligible: bool,
    policy: ReprovisionPolicy,
) -> ReprovisionDecision {
    let Some((prev, current)) = previous.and_then(|p| p.assigned_hub.as_ref().map(|h| (p, h)))
    else {
        return ReprovisionDecision {
            hub: allocated.clone(),
            substatus: Substatus::InitialAssignment,
            twin: TwinSource::Reset,
            moved: false,
            initial_hub: allocated.clone(),
        };
    };
    let initial_hub = prev.initial_hub.clone().unwrap_or_else(|| current.clone());
    let kept_substatus = prev.substatus.unwrap_or(Substatus::InitialAssignment);
    if let Some(hub) = policy.sticky_hub(Some(prev), previous_hub_eligible) {
        return ReprovisionDecision {
            hub: hub.clone(),
            substatus: kept_substatus,
            twin: TwinSource::Migrate,
            moved: false,
            initial_hub,
        };
    }
    if allocated.same_hub(current) {
        return ReprovisionDecision {
            hub: allocated.clone(),
            substatus: kept_substatus,
            twin: TwinSource::Migrate,
            moved: false,
            initial_hub,
        };
    }
    let twin = if policy.migrate_device_data {
        TwinSource::Migrate
    } else {
        TwinSource::Reset
    };
    let substatus = if allocated.same_hub(&initial_hub) {
        Substatus::ReprovisionedToInitialAssignment
    } else if policy.migrate_device_data {
        Substatus::DeviceDataMigrated
    } else {
        Substatus::DeviceDataReset
    };
    ReprovisionDecision {
        hub: allocated.clone(),
        substatus,
        twin,
        moved: true,
        initial_hub,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::{AttestationType, EnrollmentRef, RegistrationStatus};
    use std::collections::HashMap;

    fn link(name: &str, weight: u32, region: Option<&str>) -> LinkCandidate {
        LinkCandidate {
            name: name.into(),
            host_name: format!("{name}.example.com"),
            device_namespace: format!("ns-{name}"),
            weight,
            region: region.map(Into::into),
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("device-{i:06}")).collect()
    }

    fn assign<'a>(links: &'a [LinkCandidate], ids: &[String]) -> HashMap<String, &'a str> {
        ids.iter()
            .map(|id| {
                (
                    id.clone(),
                    allocate_hashed(links, id).unwrap().name.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn hashed_is_deterministic_and_order_independent() {
        let links = vec![link("a", 1, None), link("b", 2, None), link("c", 5, None)];
        let mut reversed = links.clone();
        reversed.reverse();
        for id in ids(2000) {
            let one = allocate_hashed(&links, &id).unwrap();
            let two = allocate_hashed(&links, &id).unwrap();
            let three = allocate_hashed(&reversed, &id).unwrap();
            assert_eq!(one, two);
            assert_eq!(one.name, three.name, "link order must not matter");
            // Case-insensitive registration IDs.
            let upper = allocate_hashed(&links, &id.to_ascii_uppercase()).unwrap();
            assert_eq!(one.name, upper.name);
        }
        // Known answers, computed independently (Python: hashlib.sha256 of the 8-byte
        // big-endian name length, the name and the lower-cased ID; top 53 bits of the first
        // 8 bytes; u = (bits + 0.5) / 2^53; score = -w / ln u). A change to the hash would
        // silently move every device.
        for (name, weight, id, score) in [
            ("b", 2, "device-000001", 105.500_719_901_372_82),
            ("a", 1, "gw-01", 4.666_497_934_076_667),
            ("c", 5, "device-000002", 12.104_884_701_943_755),
        ] {
            let got = hrw_score(&link(name, weight, None), id);
            assert!((got - score).abs() < 1e-9, "{name}/{id}: {got} != {score}");
        }
        let pinned: Vec<&str> = ["device-000000", "device-000001", "device-000002", "gw-01"]
            .iter()
            .map(|id| allocate_hashed(&links, id).unwrap().name.as_str())
            .collect();
        assert_eq!(pinned, KNOWN_ANSWERS);
    }

    const KNOWN_ANSWERS: [&str; 4] = ["b", "b", "c", "b"];

    #[test]
    fn hashed_respects_weights() {
        let links = vec![link("light", 1, None), link("heavy", 3, None)];
        let all = ids(10_000);
        let heavy = all
            .iter()
            .filter(|id| allocate_hashed(&links, id).unwrap().name == "heavy")
            .count();
        let share = heavy as f64 / all.len() as f64;
        assert!((share - 0.75).abs() <= 0.02, "heavy share {share}");

        // Equal weights over three links: each within ±2 pp of a third.
        let three = vec![link("x", 7, None), link("y", 7, None), link("z", 7, None)];
        let map = assign(&three, &all);
        for name in ["x", "y", "z"] {
            let n = map.values().filter(|v| **v == name).count() as f64 / all.len() as f64;
            assert!((n - 1.0 / 3.0).abs() <= 0.02, "{name}: {n}");
        }
    }

    #[test]
    fn adding_a_link_moves_only_its_fair_share() {
        let before_links = vec![link("a", 1, None), link("b", 1, None), link("c", 2, None)];
        let mut after_links = before_links.clone();
        after_links.push(link("d", 1, None));
        let all = ids(10_000);
        let before = assign(&before_links, &all);
        let after = assign(&after_links, &all);
        let moved: Vec<&String> = all.iter().filter(|id| before[*id] != after[*id]).collect();
        // Every moved device moved to the new link, none between old links.
        assert!(moved.iter().all(|id| after[*id] == "d"));
        // Fair share of d: 1 / (1+1+2+1) = 20 %.
        let share = moved.len() as f64 / all.len() as f64;
        assert!((share - 0.2).abs() <= 0.02, "moved {share}");
    }

    #[test]
    fn removing_a_link_moves_only_its_devices() {
        let before_links = vec![link("a", 1, None), link("b", 3, None), link("c", 2, None)];
        let after_links: Vec<LinkCandidate> = before_links
            .iter()
            .filter(|l| l.name != "b")
            .cloned()
            .collect();
        let all = ids(10_000);
        let before = assign(&before_links, &all);
        let after = assign(&after_links, &all);
        for id in &all {
            if before[id] != "b" {
                assert_eq!(before[id], after[id], "{id} moved although its link stayed");
            } else {
                assert_ne!(after[id], "b");
            }
        }
        // Weight changes also move devices only toward the heavier link.
        let mut heavier = before_links.clone();
        heavier[0].weight = 4;
        let reweighted = assign(&heavier, &all);
        assert!(
            all.iter()
                .filter(|id| before[*id] != reweighted[*id])
                .all(|id| reweighted[id] == "a")
        );
    }

    #[test]
    fn weights_are_clamped() {
        let zero = vec![link("a", 0, None), link("b", 1, None)];
        let one = vec![link("a", 1, None), link("b", 1, None)];
        let big = vec![link("a", 5000, None), link("b", 1, None)];
        let thousand = vec![link("a", 1000, None), link("b", 1, None)];
        for id in ids(500) {
            assert_eq!(
                allocate_hashed(&zero, &id).unwrap().name,
                allocate_hashed(&one, &id).unwrap().name
            );
            assert_eq!(
                allocate_hashed(&big, &id).unwrap().name,
                allocate_hashed(&thousand, &id).unwrap().name
            );
        }
    }

    #[test]
    fn static_and_empty() {
        let one = vec![link("only", 1, None)];
        assert_eq!(allocate_static(&one).unwrap().name, "only");
        let two = vec![link("a", 1, None), link("b", 1, None)];
        let err = allocate_static(&two).unwrap_err();
        assert!(matches!(
            err,
            AllocationError::StaticNeedsOneLink { count: 2 }
        ));
        assert_eq!(err.dps_error_code(), 400_208);
        assert!(matches!(
            allocate_static(&[]),
            Err(AllocationError::NoEligibleLinks)
        ));
        assert!(matches!(
            allocate_hashed(&[], "x"),
            Err(AllocationError::NoEligibleLinks)
        ));
        let regions = RegionMap::default();
        let input = AllocationInput {
            links: &one,
            registration_id: "x",
            client_ip: None,
            regions: &regions,
        };
        assert_eq!(
            allocate(AllocationPolicy::Static, &input).unwrap().name,
            "only"
        );
        assert!(matches!(
            allocate(AllocationPolicy::Custom, &input),
            Err(AllocationError::CustomNeedsWebhook)
        ));
    }

    #[test]
    fn geo_latency_prefers_region_and_falls_back() {
        let regions = RegionMap::parse([
            ("west", vec!["10.0.0.0/8", "2001:db8::/32"]),
            ("east", vec!["10.1.0.0/16"]),
        ])
        .unwrap();
        assert_eq!(regions.region_of("10.2.3.4".parse().unwrap()), Some("west"));
        // Longest prefix wins over the earlier, wider entry.
        assert_eq!(regions.region_of("10.1.3.4".parse().unwrap()), Some("east"));
        assert_eq!(
            regions.region_of("::ffff:10.1.0.9".parse().unwrap()),
            Some("east")
        );
        assert_eq!(
            regions.region_of("2001:db8::1".parse().unwrap()),
            Some("west")
        );
        assert_eq!(regions.region_of("192.168.1.1".parse().unwrap()), None);

        let links = vec![
            link("w1", 1, Some("west")),
            link("w2", 1, Some("west")),
            link("e1", 1, Some("east")),
            link("n1", 1, None),
        ];
        let all = ids(500);
        for id in &all {
            let input = |ip: &str| AllocationInput {
                links: &links,
                registration_id: id,
                client_ip: Some(ip.parse().unwrap()),
                regions: &regions,
            };
            let west = allocate(AllocationPolicy::GeoLatency, &input("10.9.9.9")).unwrap();
            assert!(west.name.starts_with('w'), "{id}: {}", west.name);
            let east = allocate(AllocationPolicy::GeoLatency, &input("10.1.1.1")).unwrap();
            assert_eq!(east.name, "e1");
            // Unknown region: same as hashed over all links.
            let other = allocate(AllocationPolicy::GeoLatency, &input("192.0.2.1")).unwrap();
            assert_eq!(other, allocate_hashed(&links, id).unwrap());
        }
        // A region without links falls back to all links.
        let only_east = vec![link("e1", 1, Some("east")), link("e2", 1, Some("east"))];
        let input = AllocationInput {
            links: &only_east,
            registration_id: "dev",
            client_ip: Some("10.9.9.9".parse().unwrap()),
            regions: &regions,
        };
        assert_eq!(
            allocate(AllocationPolicy::GeoLatency, &input).unwrap(),
            allocate_hashed(&only_east, "dev").unwrap()
        );
        // Both west links are used, hashed among themselves.
        let w1 = all
            .iter()
            .filter(|id| {
                let input = AllocationInput {
                    links: &links,
                    registration_id: id,
                    client_ip: Some("10.9.9.9".parse().unwrap()),
                    regions: &regions,
                };
                allocate_geo_latency(&input).unwrap().name == "w1"
            })
            .count();
        assert!((150..=350).contains(&w1), "w1 got {w1} of 500");
        assert!(RegionMap::parse([("bad", vec!["10.0.0.0/33"])]).is_err());
    }

    #[test]
    fn policy_names() {
        for (s, p) in [
            ("hashed", AllocationPolicy::Hashed),
            ("geoLatency", AllocationPolicy::GeoLatency),
            ("static", AllocationPolicy::Static),
            ("custom", AllocationPolicy::Custom),
        ] {
            assert_eq!(s.parse::<AllocationPolicy>().unwrap(), p);
            assert_eq!(serde_json::to_value(p).unwrap(), s);
        }
        assert!("Hashed".parse::<AllocationPolicy>().is_err());
    }

    #[test]
    fn allocation_request_json_matches_dps() {
        let links = vec![link("a", 1, None), link("b", 1, None)];
        let req = CustomAllocationRequest {
            enrollment: EnrollmentDocument {
                kind: EnrollmentKind::Group,
                document: serde_json::json!({"enrollmentGroupId": "g"}),
            },
            registration_id: "dev-1".into(),
            current_hub_host_name: Some("a.example.com".into()),
            current_device_id: Some("dev-1".into()),
            attestation: RuntimeAttestation::SymmetricKey,
            payload: Some(serde_json::json!({"model": "t1"})),
        };
        assert_eq!(
            req.to_json(&links),
            serde_json::json!({
                "enrollmentGroup": {"enrollmentGroupId": "g"},
                "deviceRuntimeContext": {
                    "registrationId": "dev-1",
                    "currentIotHubHostName": "a.example.com",
                    "currentDeviceId": "dev-1",
                    "symmetricKey": {},
                    "payload": {"model": "t1"}
                },
                "linkedHubs": ["a.example.com", "b.example.com"]
            })
        );
        let tpm = CustomAllocationRequest {
            enrollment: EnrollmentDocument {
                kind: EnrollmentKind::Individual,
                document: serde_json::json!({}),
            },
            current_hub_host_name: None,
            current_device_id: None,
            payload: None,
            attestation: RuntimeAttestation::Tpm {
                endorsement_key: "ek".into(),
                storage_root_key: None,
            },
            ..req
        };
        let v = tpm.to_json(&links);
        assert_eq!(v["individualEnrollment"], serde_json::json!({}));
        assert_eq!(v["deviceRuntimeContext"]["tpm"]["endorsementKey"], "ek");
        assert!(
            v["deviceRuntimeContext"]
                .get("currentIotHubHostName")
                .is_none()
        );
        assert!(v["deviceRuntimeContext"].get("payload").is_none());
    }

    #[test]
    fn allocation_response_parsing() {
        let links = vec![link("a", 1, None), link("b", 1, None)];
        let ok = parse_allocation_response(
            br#"{"iotHubHostName":"B.example.com","initialTwin":{"tags":{"t":1},"properties":{"desired":{"d":2}}},"payload":{"p":3}}"#,
            &links,
        )
        .unwrap();
        assert_eq!(ok.link.name, "b");
        let twin = ok.initial_twin.unwrap();
        assert_eq!(twin.tags, serde_json::json!({"t": 1}));
        assert_eq!(twin.desired, serde_json::json!({"d": 2}));
        assert_eq!(ok.payload, Some(serde_json::json!({"p": 3})));
        // The alternate spelling in DPS's docs table.
        let alt =
            parse_allocation_response(br#"{"iotHubHostname":"a.example.com"}"#, &links).unwrap();
        assert_eq!(alt.link.name, "a");
        assert!(alt.initial_twin.is_none());
        let e = parse_allocation_response(br#"{"iotHubHostName":"c.example.com"}"#, &links)
            .unwrap_err();
        assert!(matches!(e, AllocationError::HubNotLinked { .. }), "{e}");
        let e = parse_allocation_response(b"{}", &links).unwrap_err();
        assert!(e.to_string().contains("iotHubHostName is missing"), "{e}");
        let e = parse_allocation_response(b"[1,2]", &links).unwrap_err();
        assert_eq!(e.dps_error_code(), 400_207);
        let e = parse_allocation_response(
            br#"{"iotHubHostName":"a.example.com","initialTwin":{"tags":5}}"#,
            &links,
        )
        .unwrap_err();
        assert!(e.to_string().contains("initialTwin.tags"), "{e}");
    }

    #[test]
    fn webhook_config_is_checked() {
        let cfg = |url: &str, pem: &str| WebhookConfig {
            url: url.parse().unwrap(),
            ca_bundle_pem: pem.into(),
            timeout: Duration::from_secs(1),
        };
        let e = WebhookClient::new(&cfg("http://x.example/?code=SECRET", "")).unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let e = WebhookClient::new(&cfg("https://x.example/", "")).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = WebhookClient::new(&cfg(
            "https://x.example/",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("caBundle"), "{e}");
    }

    fn hub(name: &str) -> HubAssignment {
        HubAssignment {
            host_name: format!("{name}.example.com"),
            link_name: name.into(),
            device_namespace: format!("ns-{name}"),
        }
    }

    fn previous(current: &str, initial: &str, substatus: Substatus) -> RegistrationRecord {
        let mut r = RegistrationRecord::new(
            "dev",
            EnrollmentRef {
                kind: EnrollmentKind::Group,
                name: "g".into(),
            },
            AttestationType::SymmetricKey,
            RegistrationStatus::Assigned,
        );
        r.assigned_hub = Some(hub(current));
        r.initial_hub = Some(hub(initial));
        r.substatus = Some(substatus);
        r.device_id = Some("dev".into());
        r
    }

    const MIGRATE: ReprovisionPolicy = ReprovisionPolicy {
        update_hub_assignment: true,
        migrate_device_data: true,
    };
    const RESET: ReprovisionPolicy = ReprovisionPolicy {
        update_hub_assignment: true,
        migrate_device_data: false,
    };
    const NEVER: ReprovisionPolicy = ReprovisionPolicy {
        update_hub_assignment: false,
        migrate_device_data: true,
    };

    #[test]
    fn reprovision_first_assignment() {
        let d = decide_reprovision(None, &hub("a"), false, MIGRATE);
        assert_eq!(d.hub, hub("a"));
        assert_eq!(d.substatus, Substatus::InitialAssignment);
        assert_eq!(d.twin, TwinSource::Reset);
        assert!(!d.moved);
        assert_eq!(d.initial_hub, hub("a"));
        // A record that never got a hub (failed/disabled) is still a first assignment.
        let mut failed = previous("a", "a", Substatus::InitialAssignment);
        failed.assigned_hub = None;
        failed.status = RegistrationStatus::Failed;
        let d = decide_reprovision(Some(&failed), &hub("b"), true, NEVER);
        assert_eq!(d.substatus, Substatus::InitialAssignment);
        assert_eq!(d.hub, hub("b"));
    }

    #[test]
    fn reprovision_never_keeps_the_hub() {
        let prev = previous("a", "a", Substatus::InitialAssignment);
        assert_eq!(NEVER.sticky_hub(Some(&prev), true), Some(&hub("a")));
        let d = decide_reprovision(Some(&prev), &hub("b"), true, NEVER);
        assert_eq!(d.hub, hub("a"));
        assert_eq!(d.substatus, Substatus::InitialAssignment);
        assert_eq!(d.twin, TwinSource::Migrate);
        assert!(!d.moved);
        // The previous substatus is kept.
        let migrated = previous("b", "a", Substatus::DeviceDataMigrated);
        let d = decide_reprovision(Some(&migrated), &hub("c"), true, NEVER);
        assert_eq!(
            (d.hub, d.substatus),
            (hub("b"), Substatus::DeviceDataMigrated)
        );
        // The previous hub is no longer linked: the device has to move.
        assert_eq!(NEVER.sticky_hub(Some(&prev), false), None);
        let d = decide_reprovision(Some(&prev), &hub("b"), false, NEVER);
        assert_eq!(
            (d.hub, d.substatus),
            (hub("b"), Substatus::DeviceDataMigrated)
        );
        assert!(d.moved);
    }

    #[test]
    fn reprovision_same_hub_keeps_everything() {
        for sub in [
            Substatus::InitialAssignment,
            Substatus::DeviceDataReset,
            Substatus::ReprovisionedToInitialAssignment,
        ] {
            let prev = previous("a", "b", sub);
            for policy in [MIGRATE, RESET] {
                let d = decide_reprovision(Some(&prev), &hub("a"), true, policy);
                assert_eq!(d.hub, hub("a"));
                assert_eq!(d.substatus, sub);
                assert_eq!(d.twin, TwinSource::Migrate);
                assert!(!d.moved);
                assert_eq!(d.initial_hub, hub("b"));
            }
        }
        // Host names compare case-insensitively; a renamed link with the same hub is no move.
        let prev = previous("a", "a", Substatus::InitialAssignment);
        let mut renamed = hub("a");
        renamed.link_name = "a-renamed".into();
        renamed.host_name = renamed.host_name.to_uppercase();
        let d = decide_reprovision(Some(&prev), &renamed, true, MIGRATE);
        assert!(!d.moved);
        assert_eq!(d.hub, renamed);
    }

    #[test]
    fn reprovision_moves() {
        let prev = previous("a", "a", Substatus::InitialAssignment);
        let d = decide_reprovision(Some(&prev), &hub("b"), true, MIGRATE);
        assert_eq!(
            (d.hub.clone(), d.substatus, d.twin, d.moved),
            (
                hub("b"),
                Substatus::DeviceDataMigrated,
                TwinSource::Migrate,
                true
            )
        );
        assert_eq!(d.initial_hub, hub("a"));
        let d = decide_reprovision(Some(&prev), &hub("b"), true, RESET);
        assert_eq!(
            (d.substatus, d.twin, d.moved),
            (Substatus::DeviceDataReset, TwinSource::Reset, true)
        );
        // Back to the initial hub.
        let moved = previous("b", "a", Substatus::DeviceDataMigrated);
        let d = decide_reprovision(Some(&moved), &hub("a"), true, MIGRATE);
        assert_eq!(
            (d.hub.clone(), d.substatus, d.twin, d.moved),
            (
                hub("a"),
                Substatus::ReprovisionedToInitialAssignment,
                TwinSource::Migrate,
                true
            )
        );
        let d = decide_reprovision(Some(&moved), &hub("a"), true, RESET);
        assert_eq!(
            (d.substatus, d.twin),
            (
                Substatus::ReprovisionedToInitialAssignment,
                TwinSource::Reset
            )
        );
        // No recorded initial hub (older record): the current hub counts as initial.
        let mut legacy = previous("b", "b", Substatus::DeviceDataMigrated);
        legacy.initial_hub = None;
        let d = decide_reprovision(Some(&legacy), &hub("c"), true, MIGRATE);
        assert_eq!(d.initial_hub, hub("b"));
        assert_eq!(d.substatus, Substatus::DeviceDataMigrated);
    }

    #[test]
    fn error_codes() {
        assert_eq!(
            AllocationError::WebhookStatus { status: 400 }.to_string(),
            "Custom allocation failed with status code: 400"
        );
        assert_eq!(
            AllocationError::WebhookStatus { status: 400 }.dps_error_code(),
            400_207
        );
        assert_eq!(
            AllocationError::WebhookStatus { status: 503 }.grpc_code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            AllocationError::WebhookStatus { status: 404 }.grpc_code(),
            tonic::Code::FailedPrecondition
        );
        assert!(!AllocationError::NoEligibleLinks.is_retryable());
        assert_eq!(
            AllocationError::HubNotLinked {
                host_name: "x".into()
            }
            .dps_error_code(),
            400_208
        );
    }
}
