//! `kdps-registration`: the kdps registration service (design.md §5).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kdps_registration::engine::EngineConfig;
use kdps_registration::kube::ServeConfig;
use kdps_registration::server::Limits;
use kdps_registration::standalone::{self, StandaloneConfig};
use tokio_util::sync::CancellationToken;

/// The kdps registration service: attests devices, allocates hubs, writes identities.
#[derive(Debug, Parser)]
#[command(name = "kdps-registration", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Args)]
struct LogArgs {
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(
        long = "log-level",
        env = "KDPS_LOG",
        default_value = "info",
        global = true
    )]
    level: String,
    /// Log format.
    #[arg(
        long = "log-format",
        env = "KDPS_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run from a folder of YAML manifests with an embedded store (no cluster needed).
    Standalone(StandaloneArgs),
    /// Run in a cluster with the Kubernetes store.
    Serve(ServeArgs),
    /// List registrations or devices of a running service (through its admin port).
    List {
        /// What to list.
        #[arg(value_enum)]
        what: ListWhat,
        /// Admin address of the service.
        #[arg(long, env = "KDPS_ADMIN", default_value = "http://127.0.0.1:8081")]
        admin: String,
        /// Only devices in this namespace.
        #[arg(long)]
        namespace: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ListWhat {
    /// DeviceRegistration records.
    Registrations,
    /// Device identities.
    Devices,
}

#[derive(Debug, Args)]
struct StandaloneArgs {
    /// Folder of YAML manifests (kdps.io resources and Secrets); reloaded on change.
    #[arg(long, env = "KDPS_MANIFESTS")]
    manifests: PathBuf,
    /// Data folder: the embedded store and the generated TLS files.
    #[arg(long, env = "KDPS_DATA", default_value = "./.kdps")]
    data: PathBuf,
    /// Device port (gRPC and DPS HTTPS over TLS).
    #[arg(long, env = "KDPS_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Admin port (plain HTTP): /metrics, /healthz, /readyz, /registrations, /devices.
    #[arg(long, env = "KDPS_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
    /// Serving certificate chain (PEM); a CA and certificate are generated when absent.
    #[arg(long, env = "KDPS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "KDPS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the generated server certificate.
    #[arg(long = "tls-name", value_delimiter = ',')]
    tls_names: Vec<String>,
    /// Serve the ProvisioningService of this namespace (needed when the folder has several).
    #[arg(long, env = "KDPS_NAMESPACE")]
    namespace: Option<String>,
    /// Seconds between checks of the manifest folder.
    #[arg(long, default_value_t = 1)]
    reload_seconds: u64,
    /// Seconds of clock skew allowed on SAS token expiry.
    #[arg(long, default_value_t = 300)]
    clock_skew_seconds: u64,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Namespace of the ProvisioningService to serve (its links, enrollments and their
    /// Secrets; DeviceRegistrations are written there).
    #[arg(long, env = "KDPS_NAMESPACE")]
    namespace: String,
    /// Name of the ProvisioningService; optional when the namespace has exactly one.
    #[arg(long, env = "KDPS_SERVICE_NAME")]
    service_name: Option<String>,
    /// Device port (gRPC and DPS HTTPS over TLS).
    #[arg(long, env = "KDPS_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Admin port (plain HTTP): /metrics, /healthz, /readyz, /registrations, /devices.
    #[arg(long, env = "KDPS_ADMIN_LISTEN", default_value = "0.0.0.0:8081")]
    admin_listen: SocketAddr,
    /// Serving certificate chain (PEM), e.g. the tls.crt of a kubernetes.io/tls Secret.
    #[arg(long, env = "KDPS_TLS_CERT")]
    tls_cert: PathBuf,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "KDPS_TLS_KEY")]
    tls_key: PathBuf,
    /// Field manager of every server-side apply.
    #[arg(long, env = "KDPS_FIELD_MANAGER", default_value = kdps_registration::kube::DEFAULT_FIELD_MANAGER)]
    field_manager: String,
    /// Seconds between re-reads of each Secret an enrollment references (key rotation).
    #[arg(long, env = "KDPS_SECRET_REFRESH_SECONDS", default_value_t = 30)]
    secret_refresh_seconds: u64,
    /// Seconds of clock skew allowed on SAS token expiry.
    #[arg(long, default_value_t = 300)]
    clock_skew_seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Standalone(args) => {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            let config = StandaloneConfig {
                manifests: args.manifests,
                data: args.data,
                listen: args.listen,
                admin_listen: args.admin_listen,
                tls_cert: args.tls_cert.zip(args.tls_key),
                extra_names: args.tls_names,
                namespace: args.namespace,
                reload_interval: Duration::from_secs(args.reload_seconds.max(1)),
                engine: EngineConfig {
                    clock_skew: Duration::from_secs(args.clock_skew_seconds),
                    ..EngineConfig::default()
                },
                limits: Limits::default(),
            };
            standalone::run(config, shutdown).await?;
            Ok(())
        }
        Command::Serve(args) => {
            let ServeArgs {
                namespace,
                service_name,
                listen,
                admin_listen,
                tls_cert,
                tls_key,
                field_manager,
                secret_refresh_seconds,
                clock_skew_seconds,
            } = args;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            let config = ServeConfig {
                namespace,
                service_name,
                listen,
                admin_listen,
                tls_cert,
                tls_key,
                field_manager,
                secret_refresh: Duration::from_secs(secret_refresh_seconds.max(1)),
                engine: EngineConfig {
                    clock_skew: Duration::from_secs(clock_skew_seconds),
                    ..EngineConfig::default()
                },
                limits: Limits::default(),
            };
            kdps_registration::kube::run(config, shutdown).await?;
            Ok(())
        }
        Command::List {
            what,
            admin,
            namespace,
        } => list(what, &admin, namespace.as_deref()).await,
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
async fn stop_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    token.cancel();
}

/// Prints every record, one JSON object per line, following pages.
async fn list(what: ListWhat, admin: &str, namespace: Option<&str>) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let path = match what {
        ListWhat::Registrations => "registrations",
        ListWhat::Devices => "devices",
    };
    let mut after: Option<String> = None;
    loop {
        let mut url = url::Url::parse(admin)?.join(path)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("limit", "1000");
            if let Some(a) = &after {
                q.append_pair("after", a);
            }
            if let Some(ns) = namespace {
                q.append_pair("namespace", ns);
            }
        }
        let response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the admin port at {admin}: {e}"))?;
        if !response.status().is_success() {
            anyhow::bail!("{url} answered {}", response.status());
        }
        let page: serde_json::Value = response.json().await?;
        for item in page["items"].as_array().into_iter().flatten() {
            println!("{item}");
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
