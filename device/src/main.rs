//! `kdps-device`: register a device with kdps (design.md §5).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kdps_device::client::{Credential, Protocol, ProvisioningClient, RegisterOptions, RetryPolicy};
use kdps_device::error::DeviceError;

/// The kdps device client: registers a device with a kdps (or Azure DPS-compatible) service.
#[derive(Debug, Parser)]
#[command(name = "kdps-device", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `kdps_device=debug`.
    #[arg(long, env = "KDPS_LOG", default_value = "warn", global = true)]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register this device and print the assignment as JSON.
    Register(Box<RegisterArgs>),
    /// TPM utilities.
    #[command(subcommand)]
    Tpm(TpmCommand),
}

#[derive(Debug, Subcommand)]
enum TpmCommand {
    /// Print the TPM's endorsement key in the form an IndividualEnrollment takes
    /// (`spec.attestation.tpm.endorsementKey`), and the registration ID DPS derives from it.
    EndorsementKey {
        /// TCTI of the TPM, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
        #[arg(long, env = "KDPS_TPM")]
        tpm: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProtocolArg {
    /// gRPC (`kdps.registration.v1`).
    Grpc,
    /// The Azure DPS HTTPS protocol.
    Https,
}

#[derive(Debug, Args)]
struct RegisterArgs {
    /// Registration endpoint, `https://host[:port]`.
    #[arg(long, env = "KDPS_ENDPOINT")]
    endpoint: String,
    /// ID scope of the provisioning service.
    #[arg(long, env = "KDPS_ID_SCOPE")]
    id_scope: String,
    /// Registration ID of this device (for X.509: the certificate's subject CN).
    #[arg(long, env = "KDPS_REGISTRATION_ID")]
    registration_id: String,
    /// PEM file with the CA certificate(s) that sign the server certificate (default: the
    /// system trust store).
    #[arg(long, env = "KDPS_CA_CERT")]
    ca_cert: Option<PathBuf>,
    #[command(flatten)]
    credential: CredentialArgs,
    /// Custom data (JSON) passed to a custom-allocation webhook.
    #[arg(long)]
    payload: Option<String>,
    /// Wire protocol.
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: ProtocolArg,
    /// Write the result and the device's hub credentials to this file (mode 0600).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Attempts before giving up on connection failures and throttling.
    #[arg(long, default_value_t = 6)]
    max_attempts: u32,
    /// Seconds allowed for one call.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Debug, Args)]
// The struct's own group only requires a credential (--key belongs to it too); the arguments'
// `group = "cred"` makes them mutually exclusive (an implicit group allows one member).
#[group(required = true, multiple = true)]
struct CredentialArgs {
    /// Symmetric key (base64): an individual enrollment's key, or an already derived key.
    #[arg(
        long,
        env = "KDPS_SYMMETRIC_KEY",
        hide_env_values = true,
        group = "cred"
    )]
    symmetric_key: Option<String>,
    /// Enrollment-group key (base64); the device key is derived from it and the registration ID.
    #[arg(long, env = "KDPS_GROUP_KEY", hide_env_values = true, group = "cred")]
    group_key: Option<String>,
    /// X.509 certificate (PEM, leaf first, optionally followed by intermediates).
    #[arg(long, requires = "key", group = "cred")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of the X.509 certificate.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// TCTI of the TPM, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    #[arg(long, group = "cred")]
    tpm: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Register(args) => runtime.block_on(register(*args)),
        Command::Tpm(TpmCommand::EndorsementKey { tpm }) => endorsement_key(&tpm),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Distinct exit codes per error class so scripts can react without parsing text.
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<DeviceError>().map(DeviceError::kind) {
        Some("unauthorized") => 3,
        Some("disabled") => 4,
        Some("no_hub") => 5,
        Some("throttled") => 6,
        Some("server_not_trusted") => 7,
        Some("cannot_reach") => 8,
        Some("config" | "identity") => 2,
        _ => 1,
    }
}

async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let c = args.credential;
    let mut device_key: Option<Vec<u8>> = None;
    let credential = if let Some(key) = c.symmetric_key {
        let key = kdps_proto::keys::decode_key(&key)
            .map_err(|e| DeviceError::Config(format!("--symmetric-key: {e}")))?;
        device_key = Some(key.clone());
        Credential::SymmetricKey(key)
    } else if let Some(group_key) = c.group_key {
        let group_key = kdps_proto::keys::decode_key(&group_key)
            .map_err(|e| DeviceError::Config(format!("--group-key: {e}")))?;
        let key = kdps_proto::keys::derive_device_key(&group_key, &args.registration_id).to_vec();
        device_key = Some(key.clone());
        Credential::SymmetricKey(key)
    } else if let (Some(cert), Some(key)) = (c.cert, c.key) {
        Credential::X509(kdps_device::x509::X509Identity::from_pem_files(
            &cert, &key,
        )?)
    } else if let Some(tcti) = c.tpm {
        tpm_credential(tcti)?
    } else {
        return Err(DeviceError::Config(
            "one of --symmetric-key, --group-key, --cert/--key or --tpm is required".into(),
        )
        .into());
    };
    let payload = match args.payload {
        Some(p) => Some(
            serde_json::from_str(&p)
                .map_err(|e| DeviceError::Config(format!("--payload is not valid JSON: {e}")))?,
        ),
        None => None,
    };
    let opts = RegisterOptions {
        endpoint: args.endpoint,
        id_scope: args.id_scope,
        registration_id: args.registration_id,
        ca_cert: args.ca_cert,
        credential,
        payload,
        protocol: match args.protocol {
            ProtocolArg::Grpc => Protocol::Grpc,
            ProtocolArg::Https => Protocol::Https,
        },
        retry: RetryPolicy {
            max_attempts: args.max_attempts.max(1),
            ..RetryPolicy::default()
        },
        call_timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let mut client = ProvisioningClient::new(opts)?;
    let result = client.register().await?;
    let printed = serde_json::to_string_pretty(&result)?;
    println!("{printed}");
    if let Some(out) = args.out {
        let mut doc = serde_json::to_value(&result)?;
        if let (Some(key), Some(obj)) = (&device_key, doc.as_object_mut()) {
            let key = b64.encode(key);
            obj.insert(
                "connectionString".into(),
                format!(
                    "HostName={};DeviceId={};SharedAccessKey={key}",
                    result.assigned_hub, result.device_id
                )
                .into(),
            );
            obj.insert("symmetricKey".into(), key.into());
        }
        if let (Some(blob), Some(obj)) = (&result.tpm_authentication_key, doc.as_object_mut()) {
            obj.insert("tpmAuthenticationKey".into(), b64.encode(blob).into());
        }
        write_private(&out, &serde_json::to_vec_pretty(&doc)?)?;
    }
    Ok(())
}

#[cfg(feature = "tpm")]
fn tpm_credential(tcti: String) -> anyhow::Result<Credential> {
    Ok(Credential::Tpm(tcti))
}

#[cfg(not(feature = "tpm"))]
fn tpm_credential(_tcti: String) -> anyhow::Result<Credential> {
    Err(DeviceError::Config("this kdps-device was built without TPM support".into()).into())
}

#[cfg(feature = "tpm")]
fn endorsement_key(tcti: &str) -> anyhow::Result<()> {
    use base64::Engine as _;
    let mut tpm = kdps_device::tpm::Tpm::open(tcti).map_err(DeviceError::from)?;
    let ek = tpm.endorsement_key().map_err(DeviceError::from)?;
    let out = serde_json::json!({
        "endorsementKey": base64::engine::general_purpose::STANDARD.encode(&ek),
        "registrationId": kdps_proto::tpm::registration_id_from_ek(&ek),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

#[cfg(not(feature = "tpm"))]
fn endorsement_key(_tcti: &str) -> anyhow::Result<()> {
    Err(DeviceError::Config("this kdps-device was built without TPM support".into()).into())
}

/// Writes a file readable only by its owner (it holds device credentials).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write --out {}: {e}", path.display()))?;
    // An existing file keeps its old mode on open; tighten it explicitly.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exactly_one_credential_is_required() {
        let base = [
            "kdps-device",
            "register",
            "--endpoint",
            "https://localhost:8443",
            "--id-scope",
            "0ne00000A11",
            "--registration-id",
            "d1",
        ];
        assert!(Cli::try_parse_from(base).is_err());
        let mut two = base.to_vec();
        two.extend(["--symmetric-key", "a2V5", "--tpm", "swtpm:"]);
        assert!(Cli::try_parse_from(two).is_err());
        let mut cert_only = base.to_vec();
        cert_only.extend(["--cert", "c.pem"]);
        assert!(Cli::try_parse_from(cert_only).is_err());
        let mut ok = base.to_vec();
        ok.extend(["--cert", "c.pem", "--key", "k.pem"]);
        assert!(Cli::try_parse_from(ok).is_ok());
    }
}
