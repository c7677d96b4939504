//! `kdps-bench`: the kdps load generator and benchmark helpers (see `bench/run`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Parser, Subcommand, ValueEnum};
use kdps_bench::fixtures::{self, DeviceCa};
use kdps_bench::load::{self, LoadConfig, Workload};
use kdps_bench::tls::ClientIdentity;
use kdps_bench::tpm::SoftTpmDevice;
use kdps_bench::{handshake, populate, procfs, report, serving};

/// kdps load generator and benchmark helpers.
#[derive(Debug, Parser)]
#[command(name = "kdps-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate devices registering (or, for the baseline, TLS handshakes), each over a new
    /// TLS connection; print a summary (JSON on stdout, one line on stderr).
    Load(LoadArgs),
    /// The handshake baseline server: the service's TLS configuration, nothing else.
    HandshakeServer {
        /// Address to listen on (loopback).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Server certificate chain (PEM); use the service's `DATA/tls/server.pem`.
        #[arg(long)]
        cert: PathBuf,
        /// Its key (PEM); the service's `DATA/tls/server-key.pem`.
        #[arg(long)]
        key: PathBuf,
    },
    /// Write the X.509 CA hierarchy, software TPMs and the manifests that enroll them.
    Fixtures {
        /// Run folder (manifests/, x509/, tpm/ are written into it).
        #[arg(long)]
        out: PathBuf,
        /// Number of software TPMs (one individual enrollment each).
        #[arg(long, default_value_t = 0)]
        tpm: usize,
        /// Cache of generated RSA keys (slow to make).
        #[arg(long)]
        key_cache: PathBuf,
    },
    /// Pre-populate an embedded store with registered devices (no TLS).
    Populate {
        /// The redb file (`DATA/registry.redb`); must not hold these devices yet.
        #[arg(long)]
        store: PathBuf,
        /// Devices to write.
        #[arg(long)]
        count: usize,
        /// Registration IDs are PREFIX-NNNNNNNN.
        #[arg(long, default_value = "pop")]
        prefix: String,
        /// Concurrent writers (their writes are group-committed).
        #[arg(long, default_value_t = 1024)]
        tasks: usize,
        /// Append the report (JSON) to this file.
        #[arg(long)]
        results: Option<PathBuf>,
    },
    /// Measure restart-to-serving: time from the service's start to /readyz 200 and to the
    /// first successful registration.
    Serving {
        /// Admin address of the service.
        #[arg(long)]
        admin: SocketAddr,
        /// Device endpoint.
        #[arg(long)]
        endpoint: String,
        /// CA of the server certificate.
        #[arg(long)]
        ca_cert: PathBuf,
        /// ID scope.
        #[arg(long)]
        id_scope: String,
        /// Group key (base64) of the symmetric-key group.
        #[arg(long, env = "KDPS_BENCH_GROUP_KEY", hide_env_values = true)]
        group_key: String,
        /// When the service process was started (Unix nanoseconds, `date +%s%N`).
        #[arg(long)]
        started_ns: u128,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Name of the record.
        #[arg(long, default_value = "serving")]
        label: String,
        /// Append the record (JSON) to this file.
        #[arg(long)]
        results: Option<PathBuf>,
    },
    /// Baseline for the Kubernetes backend: raw creates of the Secret, Device and
    /// DeviceRegistration of each device (KUBECONFIG selects the apiserver).
    KubeCreate {
        /// Row name.
        #[arg(long, default_value = "kube-raw-create")]
        label: String,
        /// Namespace of the ProvisioningService (DeviceRegistrations go there).
        #[arg(long)]
        namespace: String,
        /// Devices to create.
        #[arg(long)]
        devices: usize,
        /// Devices in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Registration IDs are PREFIX-NNNNNNNN.
        #[arg(long)]
        prefix: String,
        /// kube-apiserver is the server; etcd and the operator are other processes to sample.
        #[command(flatten)]
        sampling: Sampling,
    },
    /// Record the current and peak RSS of processes (e.g. operator and service after the
    /// 100k-device rows) and their sum.
    Rss {
        /// Name of the record.
        #[arg(long)]
        label: String,
        /// Processes, NAME=PID.
        #[arg(long = "pid", value_parser = parse_watch, required = true)]
        pids: Vec<(String, u32)>,
        /// Append the record (JSON) to this file.
        #[arg(long)]
        results: Option<PathBuf>,
    },
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
    /// Summarise a results file.
    Report {
        /// The results file (JSON lines).
        #[arg(long)]
        results: PathBuf,
        /// What to print.
        #[arg(long, value_enum, default_value = "result-line")]
        format: ReportFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    /// `RESULT embedded-symkey … handshake-baseline … ratio …%`.
    ResultLine,
    /// Markdown tables of rows and ratios.
    Markdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Attestation {
    /// Member of the symmetric-key enrollment group (key derived per device).
    SymmetricKey,
    /// Certificate signed by the bench intermediate CA (group enrolled with the root).
    X509,
    /// Software TPM (kdps_proto::tpm::SoftTpm) with an individual enrollment.
    Tpm,
    /// Baseline: TLS handshake only.
    Handshake,
    /// Baseline: TLS handshake with a client certificate (as X.509 devices present).
    HandshakeClientCert,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProtocolArg {
    /// kdps.registration.v1 over gRPC.
    Grpc,
    /// The Azure DPS HTTPS protocol.
    Https,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Row name in the results.
    #[arg(long)]
    label: String,
    /// `https://host:port` of the service or handshake server.
    #[arg(long)]
    endpoint: String,
    /// CA that signs the server certificate (the service's `DATA/tls/ca.pem`).
    #[arg(long)]
    ca_cert: PathBuf,
    /// ID scope.
    #[arg(long, default_value = "0ne0000BE4C")]
    id_scope: String,
    /// Operations (devices) in the measured phase.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Operations before the measured phase (not counted).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// What each device does.
    #[arg(long, value_enum)]
    attestation: Attestation,
    /// Registration protocol (TPM: gRPC only).
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: ProtocolArg,
    /// Registration ID prefix (use a new one per row: IDs must be new devices).
    #[arg(long, default_value = "dev")]
    prefix: String,
    /// Group key (base64) of the symmetric-key group.
    #[arg(long, env = "KDPS_BENCH_GROUP_KEY", hide_env_values = true)]
    group_key: Option<String>,
    /// Run folder of `kdps-bench fixtures` (X.509 CA, software TPMs).
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// Seconds allowed for one call.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    #[command(flatten)]
    sampling: Sampling,
}

/// The processes sampled around a row, and where its summary goes.
#[derive(Debug, clap::Args)]
struct Sampling {
    /// Server PID to sample (peak RSS from /proc/PID/status VmHWM, CPU time).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Other processes to sample, NAME=PID (e.g. apiserver=123, etcd=456, operator=789).
    #[arg(long = "watch-pid", value_parser = parse_watch)]
    watch: Vec<(String, u32)>,
    /// Append the summary (JSON) to this file.
    #[arg(long)]
    results: Option<PathBuf>,
}

fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=PID"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("{s:?}: {pid:?} is not a PID"))?;
    Ok((name.to_owned(), pid))
}

/// Samples extra processes around a row and records them in the summary's `extra`.
struct Watch(Vec<(String, u32, Option<procfs::ProcSample>)>);

impl Watch {
    fn start(pids: &[(String, u32)]) -> Watch {
        Watch(
            pids.iter()
                .map(|(n, p)| (n.clone(), *p, procfs::sample(*p)))
                .collect(),
        )
    }

    fn finish(self, summary: &mut kdps_bench::stats::Summary) {
        for (name, pid, before) in self.0 {
            let (Some(before), Some(after)) = (before, procfs::sample(pid)) else {
                summary.extra.insert(
                    name,
                    serde_json::json!({"pid": pid, "error": "process gone"}),
                );
                continue;
            };
            let cpu = after.cpu_seconds - before.cpu_seconds;
            summary.extra.insert(
                name,
                serde_json::json!({
                    "pid": pid,
                    "peak_rss_mib": after.vm_hwm_kib as f64 / 1024.0,
                    "rss_mib": after.vm_rss_kib as f64 / 1024.0,
                    "cpu_seconds": cpu,
                    "cpu_us_per_op": if summary.ok > 0 { cpu * 1e6 / summary.ok as f64 } else { 0.0 },
                }),
            );
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn append(path: Option<&Path>, json: &str) -> anyhow::Result<()> {
    if let Some(path) = path {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{json}").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn group_key(b64: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let b64 = b64.context("--group-key (or KDPS_BENCH_GROUP_KEY) is required")?;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .context("--group-key is not base64")
}

fn fixtures_dir(args: &LoadArgs) -> anyhow::Result<&Path> {
    args.fixtures
        .as_deref()
        .context("--fixtures (the run folder of `kdps-bench fixtures`) is required")
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Load(args) => load_cmd(args).await,
        Command::HandshakeServer { listen, cert, key } => {
            handshake::serve(listen, &cert, &key).await?;
            Ok(())
        }
        Command::Fixtures {
            out,
            tpm,
            key_cache,
        } => {
            let out2 = out.clone();
            tokio::task::spawn_blocking(move || fixtures::write_fixtures(&out2, tpm, &key_cache))
                .await??;
            eprintln!("fixtures written to {}", out.display());
            Ok(())
        }
        Command::Populate {
            store,
            count,
            prefix,
            tasks,
            results,
        } => {
            let report = populate::populate(&store, count, &prefix, tasks).await?;
            let mut json = serde_json::to_value(&report)?;
            json["record"] = "populate".into();
            eprintln!(
                "populated {} devices in {:.1} s ({:.0}/s); store {:.1} MiB; {} registrations after reopening",
                report.devices,
                report.seconds,
                report.per_second,
                report.file_mib,
                report.registrations_in_store
            );
            let json = json.to_string();
            println!("{json}");
            append(results.as_deref(), &json)
        }
        Command::Serving {
            admin,
            endpoint,
            ca_cert,
            id_scope,
            group_key: key,
            started_ns,
            timeout_secs,
            label,
            results,
        } => {
            let probe = serving::Probe {
                admin,
                endpoint,
                ca_cert,
                id_scope,
                group_key: group_key(Some(&key))?,
                timeout: Duration::from_secs(timeout_secs),
            };
            let times = serving::wait_serving(&probe, started_ns).await?;
            let mut json = serde_json::to_value(times)?;
            json["record"] = "serving".into();
            json["label"] = label.clone().into();
            eprintln!(
                "{label}: ready after {:.3} s, first registration after {:.3} s",
                times.ready_seconds, times.first_registration_seconds
            );
            let json = json.to_string();
            println!("{json}");
            append(results.as_deref(), &json)
        }
        Command::KubeCreate {
            label,
            namespace,
            devices,
            concurrency,
            prefix,
            sampling,
        } => {
            let watch = Watch::start(&sampling.watch);
            let mut summary = kdps_bench::kube::raw_create(kdps_bench::kube::CreateConfig {
                label,
                namespace,
                devices,
                concurrency,
                prefix,
                server_pid: sampling.server_pid,
            })
            .await?;
            watch.finish(&mut summary);
            emit(&summary, sampling.results.as_deref())
        }
        Command::Rss {
            label,
            pids,
            results,
        } => {
            let mut processes = serde_json::Map::new();
            let (mut rss, mut peak) = (0.0, 0.0);
            for (name, pid) in pids {
                let sample = procfs::sample(pid)
                    .ok_or_else(|| anyhow::anyhow!("process {name} (PID {pid}) is gone"))?;
                let (r, p) = (
                    sample.vm_rss_kib as f64 / 1024.0,
                    sample.vm_hwm_kib as f64 / 1024.0,
                );
                rss += r;
                peak += p;
                processes.insert(
                    name,
                    serde_json::json!({"pid": pid, "rss_mib": r, "peak_rss_mib": p}),
                );
            }
            eprintln!("{label}: RSS {rss:.1} MiB (sum of peaks {peak:.1} MiB)");
            let json = serde_json::json!({
                "record": "memory",
                "label": label,
                "processes": processes,
                "total_rss_mib": rss,
                "total_peak_rss_mib": peak,
            })
            .to_string();
            println!("{json}");
            append(results.as_deref(), &json)
        }
        Command::FreePort => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", listener.local_addr()?.port());
            Ok(())
        }
        Command::Report { results, format } => {
            let rows = report::read_rows(&results)?;
            match format {
                ReportFormat::ResultLine => println!("{}", report::result_line(&rows)?),
                ReportFormat::Markdown => {
                    println!("{}", report::markdown_rows(&rows));
                    println!("{}", report::markdown_ratios(&rows));
                }
            }
            Ok(())
        }
    }
}

async fn load_cmd(args: LoadArgs) -> anyhow::Result<()> {
    let workload = match args.attestation {
        Attestation::SymmetricKey => Workload::SymmetricKey {
            group_key: group_key(args.group_key.as_deref())?,
        },
        Attestation::X509 => {
            let ca = DeviceCa::load(fixtures_dir(&args)?)?;
            let (prefix, count) = (args.prefix.clone(), args.devices);
            let warm_prefix = format!("{}-w", args.prefix);
            let warm = args.warmup;
            // Certificates for the warm-up and the measured devices, made before timing.
            let (measured, warmup) = tokio::task::spawn_blocking(move || {
                let measured = Workload::x509(&ca, &prefix, count)?;
                let warmup = Workload::x509(&ca, &warm_prefix, warm)?;
                Ok::<_, kdps_bench::error::BenchError>((measured, warmup))
            })
            .await??;
            if args.warmup > 0 {
                // Warm-up devices need certificates of their own; run them as a separate phase.
                let config = load_config(&args, args.warmup, 0, format!("{}-w", args.prefix));
                load::run(config, warmup).await?;
            }
            return finish_load(&args, measured, 0).await;
        }
        Attestation::Tpm => {
            let dir = fixtures_dir(&args)?.to_path_buf();
            let tpms = tokio::task::spawn_blocking(move || fixtures::load_tpms(&dir)).await??;
            Workload::Tpm {
                devices: tpms
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| SoftTpmDevice::new(fixtures::tpm_registration_id(i), t))
                    .collect(),
            }
        }
        Attestation::Handshake => Workload::Handshake { identity: None },
        Attestation::HandshakeClientCert => {
            let ca = DeviceCa::load(fixtures_dir(&args)?)?;
            let (chain, key) = ca.device("handshake-client")?;
            use rustls::pki_types::pem::PemObject as _;
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("device certificate PEM")?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                .context("device key PEM")?;
            Workload::Handshake {
                identity: Some(ClientIdentity { chain, key }),
            }
        }
    };
    let warmup = args.warmup;
    finish_load(&args, workload, warmup).await
}

fn load_config(args: &LoadArgs, devices: usize, warmup: usize, prefix: String) -> LoadConfig {
    LoadConfig {
        label: args.label.clone(),
        endpoint: args.endpoint.clone(),
        ca_cert: args.ca_cert.clone(),
        id_scope: args.id_scope.clone(),
        devices,
        concurrency: args.concurrency,
        warmup,
        protocol: match args.protocol {
            ProtocolArg::Grpc => kdps_device::client::Protocol::Grpc,
            ProtocolArg::Https => kdps_device::client::Protocol::Https,
        },
        prefix,
        timeout: Duration::from_secs(args.timeout_secs),
        server_pid: args.sampling.server_pid,
    }
}

async fn finish_load(args: &LoadArgs, workload: Workload, warmup: usize) -> anyhow::Result<()> {
    let config = load_config(args, args.devices, warmup, args.prefix.clone());
    let watch = Watch::start(&args.sampling.watch);
    let mut summary = load::run(config, workload).await?;
    watch.finish(&mut summary);
    emit(&summary, args.sampling.results.as_deref())
}

/// Prints a row (one line on stderr, JSON on stdout), appends it to the results file, and
/// fails when nothing succeeded.
fn emit(summary: &kdps_bench::stats::Summary, results: Option<&Path>) -> anyhow::Result<()> {
    eprintln!("{}", summary.line());
    let json = serde_json::to_string(summary)?;
    println!("{json}");
    append(results, &json)?;
    if summary.ok == 0 {
        anyhow::bail!("no operation succeeded ({:?})", summary.errors);
    }
    Ok(())
}
