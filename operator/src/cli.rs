//! Command line: `kdps-operator [run] [FLAGS]` runs the operator, `kdps-operator crdgen`
//! prints the CRDs. Every flag has an environment fallback (`KDPS_OPERATOR_*`), which the Helm
//! chart uses.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use k8s_openapi::api::coordination::v1::Lease;
use kdps_api::v1alpha1::{
    Device, DeviceRegistration, EnrollmentGroup, IndividualEnrollment, IoTHubLink,
    ProvisioningService,
};
use kube::{
    Api, Client, Resource,
    api::{ListParams, PartialObjectMeta},
    core::DeserializeGuard,
};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, AdminState},
    controller::{self, Context, Settings},
    crdgen,
    lease::{self, LeaseConfig},
    metrics::Metrics,
    telemetry::{self, LogFormat},
};

/// Registration service image used when a ProvisioningService names none: the release built
/// together with this operator.
pub const DEFAULT_REGISTRATION_IMAGE: &str = concat!(
    "ghcr.io/kdps-io/kdps-registration:",
    env!("CARGO_PKG_VERSION")
);

/// The kdps operator.
#[derive(Debug, Parser)]
#[command(
    name = "kdps-operator",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Flags of `run` (the default command).
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print all kdps.io CustomResourceDefinitions as multi-document YAML, or write one file
    /// per CRD with --out-dir, or Helm templates with --chart-dir.
    Crdgen {
        /// Write `<plural>.kdps.io.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Also write the CRDs as Helm templates (gated by `crds.enabled`, kept on uninstall
        /// with `crds.keep`) into this directory, e.g. charts/kdps/templates/crds.
        #[arg(long)]
        chart_dir: Option<PathBuf>,
    },
    /// Run the operator (the default).
    Run(RunArgs),
}

/// Image pull policy of the registration service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Always pull.
    #[value(name = "Always")]
    Always,
    /// Pull when the node does not have the image (what `kind load` / `minikube image load`
    /// need).
    #[value(name = "IfNotPresent")]
    IfNotPresent,
    /// Never pull.
    #[value(name = "Never")]
    Never,
}

impl PullPolicy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Flags of `kdps-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Only reconcile kdps.io objects in this namespace (default: every namespace).
    #[arg(long, env = "KDPS_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Namespace the operator runs in: holds the operator CA Secret `kdps-ca` and the leader
    /// Lease. The Helm chart sets it from the pod's namespace.
    #[arg(long, env = "KDPS_OPERATOR_NAMESPACE", default_value = "kdps-system")]
    pub operator_namespace: String,
    /// Registration service image for ProvisioningServices that set no `spec.image`.
    #[arg(long, env = "KDPS_OPERATOR_REGISTRATION_IMAGE", default_value = DEFAULT_REGISTRATION_IMAGE)]
    pub registration_image: String,
    /// Pull policy of the registration service image.
    #[arg(
        long,
        env = "KDPS_OPERATOR_REGISTRATION_IMAGE_PULL_POLICY",
        value_enum,
        default_value = "IfNotPresent"
    )]
    pub registration_image_pull_policy: PullPolicy,
    /// Address of the admin server (`/healthz`, `/readyz`, `/metrics`).
    #[arg(
        long,
        env = "KDPS_OPERATOR_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_listen: SocketAddr,
    /// Reconciles that run at once, per controller.
    #[arg(long, env = "KDPS_OPERATOR_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Seconds a published `deviceCount` / `registrationCount` stands before a changed count
    /// replaces it (bounds status writes during registration bursts).
    #[arg(long, env = "KDPS_OPERATOR_COUNT_INTERVAL_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub count_interval_seconds: u64,
    /// Seconds to wait at start for the kdps.io CRDs to be served before giving up.
    #[arg(long, env = "KDPS_OPERATOR_CRD_WAIT_SECONDS", default_value_t = 60)]
    pub crd_wait_seconds: u64,
    /// Leader election.
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Leader election flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderArgs {
    /// Elect a leader with a Lease; needed when more than one replica runs.
    #[arg(long, env = "KDPS_OPERATOR_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Name of the Lease (in the operator namespace).
    #[arg(
        long,
        env = "KDPS_OPERATOR_LEASE_NAME",
        default_value = "kdps-operator"
    )]
    pub lease_name: String,
    /// Seconds a Lease stays valid without renewal (failover time).
    #[arg(long, env = "KDPS_OPERATOR_LEASE_DURATION_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_duration_seconds: u64,
    /// This replica's identity in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// Logging flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter, `RUST_LOG` syntax.
    #[arg(long, env = "KDPS_OPERATOR_LOG", default_value = "info,kube=warn")]
    pub log_filter: String,
    /// Log format.
    #[arg(
        long,
        env = "KDPS_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// Errors of the operator process.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// CRD generation failed.
    #[error(transparent)]
    Crdgen(#[from] crdgen::CrdgenError),
    /// Logging could not be set up.
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
    /// The async runtime could not start.
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    /// No usable kube config (in-cluster or KUBECONFIG).
    #[error("connecting to Kubernetes: {0}")]
    Client(kube::Error),
    /// The admin server failed.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    /// A CRD is not installed or not served.
    #[error(
        "the {kind} CRD is not served: {detail}; install the CRDs with `kubectl apply -f crds/` (or the Helm chart with crds.enabled=true)"
    )]
    CrdMissing {
        /// Kind.
        kind: String,
        /// What the apiserver said.
        detail: String,
    },
    /// The leader Lease was lost.
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
}

impl Args {
    /// Parse the command line and run the chosen command.
    pub fn parse_and_run() -> Result<ExitCode, RunError> {
        let args = Self::parse();
        match args.command {
            Some(Command::Crdgen { out_dir, chart_dir }) => {
                crdgen::run(out_dir.as_deref(), chart_dir.as_deref())?;
                Ok(ExitCode::SUCCESS)
            }
            Some(Command::Run(run)) => run.run(),
            None => args.run.run(),
        }
    }
}

impl RunArgs {
    /// Run the operator until SIGTERM/SIGINT (exit 0) or a fatal error.
    pub fn run(self) -> Result<ExitCode, RunError> {
        telemetry::init(&self.log.log_filter, self.log.log_format)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(RunError::Runtime)?;
        runtime.block_on(self.run_async())?;
        Ok(ExitCode::SUCCESS)
    }

    async fn run_async(self) -> Result<(), RunError> {
        let Self {
            watch_namespace,
            operator_namespace,
            registration_image,
            registration_image_pull_policy,
            admin_listen,
            concurrency,
            count_interval_seconds,
            crd_wait_seconds,
            leader:
                LeaderArgs {
                    leader_election,
                    lease_name,
                    lease_duration_seconds,
                    identity,
                },
            log: _,
        } = self;
        let identity = identity.unwrap_or_else(default_identity);
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            %identity,
            watch_namespace = watch_namespace.as_deref().unwrap_or("<all>"),
            %operator_namespace,
            "starting kdps-operator"
        );
        let client = Client::try_default().await.map_err(RunError::Client)?;
        let metrics = Arc::new(Metrics::new());
        let admin_state = Arc::new(AdminState::new(metrics.clone()));
        let (listener, bound) = admin::bind(admin_listen).await?;
        tracing::info!(address = %bound, "admin server listening (/healthz, /readyz, /metrics)");

        let shutdown = CancellationToken::new();
        tokio::spawn(signal_handler(shutdown.clone()));
        let admin_task = tokio::spawn(admin::serve(
            listener,
            admin_state.clone(),
            shutdown.clone(),
        ));

        wait_for_crds(
            &client,
            watch_namespace.as_deref(),
            Duration::from_secs(crd_wait_seconds),
            &shutdown,
        )
        .await?;

        let lease_cfg = LeaseConfig {
            namespace: operator_namespace.clone(),
            name: lease_name,
            identity: identity.clone(),
            duration: Duration::from_secs(lease_duration_seconds),
            renew_every: Duration::from_secs((lease_duration_seconds / 3).max(1)),
        };
        let lease_api: Api<Lease> = Api::namespaced(client.clone(), &operator_namespace);
        // Standby replicas are healthy and ready; only the leader reconciles.
        admin_state.set_ready(true);
        if leader_election && !lease::acquire(&lease_api, &lease_cfg, &shutdown).await {
            tracing::info!("shut down before becoming the leader");
            return Ok(());
        }
        metrics.set_leader(true);

        let settings = Settings {
            operator_namespace,
            watch_namespace: watch_namespace.clone(),
            registration_image,
            registration_image_pull_policy: registration_image_pull_policy.as_str().to_owned(),
            concurrency,
            count_interval: std::time::Duration::from_secs(count_interval_seconds),
        };
        let (caches, cache_writers) = controller::cache::caches();
        let ctx = Arc::new(Context::new(
            client.clone(),
            settings,
            metrics.clone(),
            identity,
            caches,
        ));
        let controllers = async {
            tokio::join!(
                cache_writers.run(client.clone(), watch_namespace.clone(), shutdown.clone()),
                controller::provisioning_service::run(ctx.clone(), shutdown.clone()),
                controller::enrollment::run::<IndividualEnrollment>(ctx.clone(), shutdown.clone()),
                controller::enrollment::run::<EnrollmentGroup>(ctx.clone(), shutdown.clone()),
                controller::link::run(ctx.clone(), shutdown.clone()),
                controller::hub_rbac::run(client.clone(), watch_namespace, shutdown.clone()),
                // Devices live in hub namespaces, wherever the operator watches kdps.io objects.
                ctx.counts.devices.run(
                    Api::<PartialObjectMeta<Device>>::all(client.clone()),
                    shutdown.clone()
                ),
                ctx.counts.registrations.run(
                    ctx.scoped_api::<PartialObjectMeta<DeviceRegistration>>(),
                    shutdown.clone()
                ),
            );
        };
        let lease_task = async {
            if leader_election {
                lease::hold(&lease_api, &lease_cfg, &shutdown).await
            } else {
                shutdown.cancelled().await;
                Ok(())
            }
        };
        tracing::info!("controllers started");
        let result = tokio::select! {
            () = controllers => Ok(()),
            r = lease_task => r,
        };
        metrics.set_leader(false);
        shutdown.cancel();
        match admin_task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "admin server"),
            Err(e) => tracing::warn!(error = %e, "admin server task"),
            Ok(Ok(())) => {}
        }
        match result {
            Ok(()) => {
                tracing::info!("stopped");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "stopping: lost leadership");
                Err(e.into())
            }
        }
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "kdps-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

async fn signal_handler(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; finishing running reconciles");
    shutdown.cancel();
}

async fn crd_served<K>(client: &Client, namespace: Option<&str>) -> Result<(), String>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<DeserializeGuard<K>> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    api.list_metadata(&ListParams::default().limit(1))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Wait until every kdps.io kind is served (its CRD is Established).
async fn wait_for_crds(
    client: &Client,
    namespace: Option<&str>,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let checks = [
            (
                "ProvisioningService",
                crd_served::<ProvisioningService>(client, namespace).await,
            ),
            (
                "IoTHubLink",
                crd_served::<IoTHubLink>(client, namespace).await,
            ),
            (
                "IndividualEnrollment",
                crd_served::<IndividualEnrollment>(client, namespace).await,
            ),
            (
                "EnrollmentGroup",
                crd_served::<EnrollmentGroup>(client, namespace).await,
            ),
            (
                "DeviceRegistration",
                crd_served::<DeviceRegistration>(client, namespace).await,
            ),
            ("Device", crd_served::<Device>(client, namespace).await),
        ];
        let Some((kind, Err(detail))) = checks.into_iter().find(|(_, r)| r.is_err()) else {
            return Ok(());
        };
        if tokio::time::Instant::now() >= deadline || shutdown.is_cancelled() {
            return Err(RunError::CrdMissing {
                kind: kind.to_owned(),
                detail,
            });
        }
        tracing::info!(kind, %detail, "waiting for the kdps.io CRDs");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn run_is_the_default_and_flags_parse() {
        let a = Args::try_parse_from([
            "kdps-operator",
            "--watch-namespace",
            "iot",
            "--leader-election",
            "--registration-image-pull-policy",
            "Never",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(a.command.is_none());
        assert_eq!(a.run.watch_namespace.as_deref(), Some("iot"));
        assert!(a.run.leader.leader_election);
        assert_eq!(a.run.registration_image_pull_policy, PullPolicy::Never);
        assert_eq!(a.run.registration_image, DEFAULT_REGISTRATION_IMAGE);

        let b = Args::try_parse_from(["kdps-operator", "run", "--concurrency", "2"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            b.command,
            Some(Command::Run(RunArgs { concurrency: 2, .. }))
        ));
        assert!(Args::try_parse_from(["kdps-operator", "run", "--concurrency", "0"]).is_err());
        let c = Args::try_parse_from(["kdps-operator", "crdgen", "--chart-dir", "x"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(c.command, Some(Command::Crdgen { .. })));
    }
}
