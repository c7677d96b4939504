//! Standalone mode (design.md §5): the registration service configured from a folder of YAML
//! manifests, storing registrations and devices in an embedded redb file. No cluster needed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kdps_api::v1alpha1::{EnrollmentGroup, IndividualEnrollment, IoTHubLink, ProvisioningService};
use kube::ResourceExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, SecretData};
use crate::engine::{Engine, EngineConfig};
use crate::manifests::{self, ManifestProblem, RawObject};
use crate::metrics::Metrics;
use crate::registry::embedded::EmbeddedRegistry;
use crate::server::admin::Readiness;
use crate::server::{DeviceApi, Limits, Server};
use crate::tls;

/// Settings of a standalone service.
#[derive(Clone, Debug)]
pub struct StandaloneConfig {
    /// Folder of manifests.
    pub manifests: PathBuf,
    /// Data folder: `registry.redb` and `tls/`.
    pub data: PathBuf,
    /// Device port.
    pub listen: SocketAddr,
    /// Admin port (`/metrics`, `/healthz`, `/readyz`, `/registrations`, `/devices`).
    pub admin_listen: SocketAddr,
    /// Serving certificate and key (PEM); generated under `DATA/tls` when absent.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    /// Extra DNS names / IPs for the generated server certificate.
    pub extra_names: Vec<String>,
    /// Namespace whose ProvisioningService to serve, when the folder has several.
    pub namespace: Option<String>,
    /// How often the manifest folder is checked for changes.
    pub reload_interval: Duration,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Device-port limits.
    pub limits: Limits,
}

/// Errors that stop standalone mode from starting.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// The data folder is unusable.
    #[error("data folder {path}: {source}")]
    Data {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The embedded store could not be opened.
    #[error("opening the registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The server failed.
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    /// The manifest folder is unreadable.
    #[error(transparent)]
    Manifests(#[from] manifests::ManifestError),
}

/// The result of loading a manifest folder.
#[derive(Debug)]
pub struct Loaded {
    /// The catalog, when the folder holds a usable ProvisioningService.
    pub catalog: Option<Catalog>,
    /// Everything that was not used, with file, object and reason.
    pub problems: Vec<ManifestProblem>,
}

/// Loads and validates a manifest folder into a catalog, with the same validation the
/// operator applies. Bad objects are reported and left out; they do not stop the others.
pub fn load(
    dir: &Path,
    namespace: Option<&str>,
    now: SystemTime,
) -> Result<Loaded, manifests::ManifestError> {
    let set = manifests::load_dir(dir)?;
    let mut problems = set.problems;
    let report = |problems: &mut Vec<ManifestProblem>, obj: &RawObject, reason: String| {
        problems.push(ManifestProblem {
            file: obj.file.clone(),
            object: obj.display_name(),
            reason,
        });
    };

    // Which namespace: the flag, else the one ProvisioningService's.
    let services: Vec<&RawObject> = set
        .objects
        .iter()
        .filter(|o| o.kind == "ProvisioningService")
        .collect();
    let namespace = match namespace {
        Some(ns) => ns.to_owned(),
        None => {
            let mut namespaces: Vec<String> = services
                .iter()
                .map(|o| o.namespace.clone().unwrap_or_else(|| "default".into()))
                .collect();
            namespaces.sort();
            namespaces.dedup();
            match namespaces.as_slice() {
                [one] => one.clone(),
                [] => {
                    problems.push(ManifestProblem {
                        file: dir.to_path_buf(),
                        object: "ProvisioningService".into(),
                        reason: "no ProvisioningService in the manifest folder".into(),
                    });
                    return Ok(Loaded {
                        catalog: None,
                        problems,
                    });
                }
                many => {
                    problems.push(ManifestProblem {
                        file: dir.to_path_buf(),
                        object: "ProvisioningService".into(),
                        reason: format!(
                            "ProvisioningServices in several namespaces ({}); choose one with --namespace",
                            many.join(", ")
                        ),
                    });
                    return Ok(Loaded {
                        catalog: None,
                        problems,
                    });
                }
            }
        }
    };

    let mut service: Option<ProvisioningService> = None;
    let mut links = Vec::new();
    let mut individuals = Vec::new();
    let mut groups = Vec::new();
    let mut secrets: HashMap<String, SecretData> = HashMap::new();
    let mut rejected = HashMap::new();
    let crds: HashMap<String, _> = kdps_api::v1alpha1::crds()
        .into_iter()
        .map(|c| (c.spec.names.kind.clone(), c))
        .collect();
    for obj in &set.objects {
        // Objects without a namespace belong to the served one, as with `kubectl apply -n`.
        let obj_ns = obj.namespace.clone().unwrap_or_else(|| namespace.clone());
        if obj_ns != namespace {
            continue;
        }
        if obj.name.is_empty() {
            report(&mut problems, obj, "metadata.name is required".into());
            continue;
        }
        let mut value = obj.value.clone();
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.insert("namespace".into(), obj_ns.clone().into());
        }
        if obj.api_version == "v1" && obj.kind == "Secret" {
            match manifests::secret_data(obj) {
                Ok(data) => {
                    secrets.insert(obj.name.clone(), data);
                }
                Err(reason) => report(&mut problems, obj, reason),
            }
            continue;
        }
        if obj.api_version != "kdps.io/v1alpha1" {
            report(
                &mut problems,
                obj,
                format!(
                    "unsupported apiVersion {:?} (expected kdps.io/v1alpha1)",
                    obj.api_version
                ),
            );
            continue;
        }
        if let Some(crd) = crds.get(obj.kind.as_str()) {
            let unknown = kdps_api::validation::check_unknown_fields(crd, &value);
            if !unknown.is_empty() {
                report(
                    &mut problems,
                    obj,
                    kdps_api::validation::summarize(&unknown).1,
                );
                continue;
            }
        }
        macro_rules! typed {
            ($t:ty) => {
                match serde_json::from_value::<$t>(value) {
                    Ok(v) => v,
                    Err(e) => {
                        report(&mut problems, obj, format!("invalid {}: {e}", obj.kind));
                        continue;
                    }
                }
            };
        }
        match obj.kind.as_str() {
            "ProvisioningService" => {
                let ps = typed!(ProvisioningService);
                if let Err(p) = kdps_api::validation::validate_provisioning_service(&ps, now) {
                    report(&mut problems, obj, kdps_api::validation::summarize(&p).1);
                    continue;
                }
                if service.is_some() {
                    report(
                        &mut problems,
                        obj,
                        "a second ProvisioningService in this namespace; only one is allowed"
                            .into(),
                    );
                    continue;
                }
                service = Some(ps);
            }
            "IoTHubLink" => {
                let link = typed!(IoTHubLink);
                match kdps_api::validation::validate_iot_hub_link(&link) {
                    Ok(()) => links.push((obj, link)),
                    Err(p) => report(&mut problems, obj, kdps_api::validation::summarize(&p).1),
                }
            }
            "IndividualEnrollment" => {
                let ie = typed!(IndividualEnrollment);
                if let Err(p) = kdps_api::validation::validate_individual_enrollment(&ie, now) {
                    let reason = kdps_api::validation::summarize(&p).1;
                    report(&mut problems, obj, reason.clone());
                    rejected.insert(ie.name_any(), reason);
                }
                individuals.push((obj, ie));
            }
            "EnrollmentGroup" => {
                let g = typed!(EnrollmentGroup);
                match kdps_api::validation::validate_enrollment_group(&g, now) {
                    Ok(()) => groups.push((obj, g)),
                    Err(p) => report(&mut problems, obj, kdps_api::validation::summarize(&p).1),
                }
            }
            "DeviceRegistration" | "Device" => {
                report(
                    &mut problems,
                    obj,
                    "written by the service; ignored in a manifest folder".into(),
                );
            }
            other => report(&mut problems, obj, format!("unknown kind {other}")),
        }
    }

    let Some(service) = service else {
        problems.push(ManifestProblem {
            file: dir.to_path_buf(),
            object: format!("ProvisioningService in namespace {namespace}"),
            reason: "no valid ProvisioningService".into(),
        });
        return Ok(Loaded {
            catalog: None,
            problems,
        });
    };

    // Cross-object checks, as the operator's Ready conditions report them.
    let link_objs: Vec<IoTHubLink> = links.iter().map(|(_, l)| l.clone()).collect();
    for (obj, link) in &links {
        if let Err(p) = kdps_api::validation::validate_link_references(link, Some(&service.spec)) {
            report(&mut problems, obj, kdps_api::validation::summarize(&p).1);
        }
    }
    let mut individual_objs = Vec::new();
    for (obj, ie) in individuals {
        if let Err(p) = kdps_api::validation::validate_enrollment_references(
            &ie.spec.settings(),
            Some(&service.spec),
            &link_objs,
        ) {
            let reason = kdps_api::validation::summarize(&p).1;
            report(&mut problems, obj, reason.clone());
            rejected.entry(ie.name_any()).or_insert(reason);
        }
        individual_objs.push(ie);
    }
    let mut group_objs = Vec::new();
    for (obj, g) in groups {
        match kdps_api::validation::validate_enrollment_references(
            &g.spec.settings(),
            Some(&service.spec),
            &link_objs,
        ) {
            Ok(()) => group_objs.push(g),
            Err(p) => report(&mut problems, obj, kdps_api::validation::summarize(&p).1),
        }
    }

    match Catalog::build(
        &service,
        &link_objs,
        &individual_objs,
        &group_objs,
        &secrets,
        &rejected,
    ) {
        Ok(catalog) => {
            for p in &catalog.problems {
                problems.push(ManifestProblem {
                    file: dir.to_path_buf(),
                    object: p.object.clone(),
                    reason: p.reason.clone(),
                });
            }
            Ok(Loaded {
                catalog: Some(catalog),
                problems,
            })
        }
        Err(p) => {
            problems.push(ManifestProblem {
                file: dir.to_path_buf(),
                object: p.object,
                reason: p.reason,
            });
            Ok(Loaded {
                catalog: None,
                problems,
            })
        }
    }
}

fn log_loaded(loaded: &Loaded) {
    for p in &loaded.problems {
        tracing::warn!(file = %p.file.display(), object = %p.object, reason = %p.reason, "manifest not used");
    }
    match &loaded.catalog {
        Some(c) => {
            let (individuals, groups) = c.enrollment_counts();
            tracing::info!(
                id_scope = %c.service.id_scope,
                namespace = %c.service.namespace,
                links = c.links.len(),
                individual_enrollments = individuals,
                enrollment_groups = groups,
                problems = loaded.problems.len(),
                "configuration loaded"
            );
        }
        None => tracing::error!(
            "no usable configuration; registrations are refused until the manifests are fixed"
        ),
    }
}

/// Runs standalone mode until `shutdown` is cancelled.
pub async fn run(
    config: StandaloneConfig,
    shutdown: CancellationToken,
) -> Result<(), StandaloneError> {
    std::fs::create_dir_all(&config.data).map_err(|source| StandaloneError::Data {
        path: config.data.clone(),
        source,
    })?;
    let registry = Arc::new(EmbeddedRegistry::open(config.data.join("registry.redb"))?);

    let identity = match &config.tls_cert {
        Some((cert, key)) => tls::ServerIdentity::from_pem_files(cert, key)?,
        None => {
            let host = config.listen.ip().to_string();
            let names = tls::default_server_names(&host, &config.extra_names);
            let managed = tls::ensure_self_managed(&config.data.join("tls"), &names)?;
            tracing::info!(
                ca = %managed.ca_path.display(),
                ca_generated = managed.ca_generated,
                "serving with a self-managed certificate; devices must trust this CA"
            );
            managed.identity
        }
    };
    let tls_config = tls::server_config(identity)?;

    // Fingerprint before loading: a file changed while we load is then seen as a change by
    // the watcher instead of being missed until the next edit.
    let fingerprint = manifests::fingerprint(&config.manifests).ok();
    let loaded = load(
        &config.manifests,
        config.namespace.as_deref(),
        SystemTime::now(),
    )?;
    log_loaded(&loaded);
    let readiness = Readiness::new();
    readiness.set_ready(loaded.catalog.is_some());
    let (catalog_tx, catalog_rx) = watch::channel(loaded.catalog.map(Arc::new));

    let engine = Arc::new(Engine::new(
        catalog_rx,
        registry.clone(),
        config.engine.clone(),
    ));
    let (metrics_registry, metrics) = Metrics::with_new_registry();
    let backend = Arc::new(engine.clone());
    let api = DeviceApi::new(backend.clone(), metrics.clone(), &config.limits)?.merge(
        crate::dps_https::routes(
            backend,
            metrics.clone(),
            crate::dps_https::DpsHttpsConfig::from_limits(&config.limits),
        ),
    );
    let device = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| crate::server::ServerError::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| crate::server::ServerError::Listen {
            addr: config.admin_listen.to_string(),
            source,
        })?;
    tracing::info!(
        listen = %device.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "kdps-registration standalone serving"
    );

    let reload = tokio::spawn(watch_manifests(
        config.manifests.clone(),
        fingerprint,
        config.namespace.clone(),
        config.reload_interval,
        catalog_tx,
        readiness.clone(),
        shutdown.clone(),
    ));
    let server = Server {
        tls: tls_config,
        api,
        metrics,
        registry: Arc::new(metrics_registry),
        readiness,
        limits: config.limits.clone(),
        admin_routes: crate::admin_api::routes(registry.clone()),
    };
    let result = server.run(device, admin, shutdown.clone()).await;
    shutdown.cancel();
    let _ = reload.await;
    result.map_err(StandaloneError::from)
}

/// Polls the manifest folder and swaps in a new catalog when it changes. A folder that no
/// longer yields a usable configuration keeps the last good one serving.
async fn watch_manifests(
    dir: PathBuf,
    mut last: Option<Vec<(PathBuf, u64, Option<SystemTime>)>>,
    namespace: Option<String>,
    interval: Duration,
    tx: watch::Sender<Option<Arc<Catalog>>>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = manifests::fingerprint(&dir).ok();
        if now == last {
            continue;
        }
        last = now;
        let dir2 = dir.clone();
        let ns = namespace.clone();
        let loaded = match tokio::task::spawn_blocking(move || {
            load(&dir2, ns.as_deref(), SystemTime::now())
        })
        .await
        {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reloading manifests failed; keeping the previous configuration");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "reload task failed");
                continue;
            }
        };
        tracing::info!(folder = %dir.display(), "manifests changed; reloaded");
        log_loaded(&loaded);
        if let Some(catalog) = loaded.catalog {
            tx.send_replace(Some(Arc::new(catalog)));
            readiness.set_ready(true);
        }
    }
}
