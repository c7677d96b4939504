//! Test harness for kdps end-to-end tests: runs the real `kdps-registration` and
//! `kdps-device` binaries as processes, on loopback, in temporary folders.
//!
//! The binaries come from the workspace's target directory (`cargo test --workspace` builds
//! them); a missing binary fails the test with the command that builds it.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod k8s;
pub mod pki;
#[path = "../../device/tests/support/swtpm.rs"]
pub mod swtpm;
pub mod webhook;

/// Path of a workspace binary (next to the test executable's `deps/` folder).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p {}` (or run `cargo test --workspace`)",
        path.display(),
        match name {
            "kdps-registration" => "kdps-registration",
            "kdps-device" => "kdps-device",
            other => other,
        }
    );
    path
}

/// A free TCP port on 127.0.0.1 (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A plain-HTTP GET on loopback; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // The admin server may answer chunked; de-chunk simply.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A running `kdps-registration standalone` process with its own folders and ports.
pub struct Standalone {
    child: Option<Child>,
    /// Root temp folder (manifests/, data/, service.log).
    pub dir: tempfile::TempDir,
    /// Device port.
    pub port: u16,
    /// Admin port.
    pub admin_port: u16,
    extra_args: Vec<String>,
}

impl Standalone {
    /// Writes `manifests` as `manifests/service.yaml` and starts the service.
    pub fn start(manifests: &str) -> Standalone {
        Self::start_with(manifests, &[])
    }

    /// Like [`Standalone::start`] with extra command-line arguments.
    pub fn start_with(manifests: &str, extra_args: &[&str]) -> Standalone {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        std::fs::write(dir.path().join("manifests/service.yaml"), manifests).unwrap();
        let mut s = Standalone {
            child: None,
            dir,
            port: free_port(),
            admin_port: free_port(),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
        };
        s.spawn();
        s
    }

    /// Like [`Standalone::start_with`] with the device port fixed to `port` instead of a free
    /// one: 443 for clients that always dial it (the Azure Node SDK's HTTP transport). Ports
    /// below 1024 need root; the caller serializes tests that share a fixed port.
    pub fn start_on(manifests: &str, port: u16, extra_args: &[&str]) -> Standalone {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        std::fs::write(dir.path().join("manifests/service.yaml"), manifests).unwrap();
        let mut s = Standalone {
            child: None,
            dir,
            port,
            admin_port: free_port(),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(bin("kdps-registration"))
            .arg("standalone")
            .arg("--manifests")
            .arg(self.manifests_dir())
            .arg("--data")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", self.admin_port))
            .args(&self.extra_args)
            .env("KDPS_LOG", "info,kdps_registration=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn kdps-registration");
        self.child = Some(child);
        self.wait_ready();
    }

    /// The manifest folder.
    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// The data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The service's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("service.log")
    }

    /// The service's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The CA that signs the generated server certificate.
    pub fn ca(&self) -> PathBuf {
        self.data_dir().join("tls/ca.pem")
    }

    /// `https://localhost:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    /// Waits until `/readyz` answers 200 (the configuration loaded).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(self.admin(), "/readyz") {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("kdps-registration exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "kdps-registration not ready after 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces a manifest file and waits until the service logged a reload. The file is
    /// written under a hidden name and renamed, so the service never reads half of it.
    pub fn write_manifest(&self, name: &str, yaml: &str) {
        let before = self.log().matches("manifests changed; reloaded").count();
        let tmp = self.manifests_dir().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.manifests_dir().join(name)).unwrap();
        self.wait_reload(before, name);
    }

    /// Deletes a manifest file and waits until the service logged a reload.
    pub fn remove_manifest(&self, name: &str) {
        let before = self.log().matches("manifests changed; reloaded").count();
        std::fs::remove_file(self.manifests_dir().join(name)).unwrap();
        self.wait_reload(before, name);
    }

    fn wait_reload(&self, before: usize, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches("manifests changed; reloaded").count() == before {
            assert!(
                Instant::now() < deadline,
                "no reload logged after writing {name}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Loading happens before the log line; give the swap a moment.
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Stops the process (SIGKILL: no graceful shutdown, like a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts the process on the same folders and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Every registration record (admin listing), following pages.
    pub fn registrations(&self) -> Vec<serde_json::Value> {
        self.list("/registrations")
    }

    /// Every device record (admin listing), following pages.
    pub fn devices(&self) -> Vec<serde_json::Value> {
        self.list("/devices")
    }

    fn list(&self, path: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let url = match &after {
                Some(a) => format!("{path}?limit=1000&after={}", urlencode(a)),
                None => format!("{path}?limit=1000"),
            };
            let (status, body) = http_get(self.admin(), &url).unwrap();
            assert_eq!(status, 200, "GET {url}: {body}");
            let page: serde_json::Value = serde_json::from_str(&body).unwrap();
            out.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => return out,
            }
        }
    }

    /// Options for an in-process registration ([`kdps_device::client::ProvisioningClient`])
    /// against this service: gRPC, this service's CA, a short retry back-off.
    pub fn options(
        &self,
        id_scope: &str,
        registration_id: &str,
        credential: kdps_device::client::Credential,
    ) -> kdps_device::client::RegisterOptions {
        kdps_device::client::RegisterOptions {
            endpoint: self.endpoint(),
            id_scope: id_scope.to_owned(),
            registration_id: registration_id.to_owned(),
            ca_cert: Some(self.ca()),
            credential,
            payload: None,
            protocol: kdps_device::client::Protocol::Grpc,
            retry: kdps_device::client::RetryPolicy {
                max_attempts: 8,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                max_polls: 60,
            },
            call_timeout: Duration::from_secs(60),
        }
    }

    /// Runs `kdps-device register` against this service with `args` added.
    pub fn register(&self, id_scope: &str, registration_id: &str, args: &[&str]) -> DeviceRun {
        let ca = self.ca();
        let endpoint = self.endpoint();
        let mut all = vec![
            "register",
            "--endpoint",
            &endpoint,
            "--id-scope",
            id_scope,
            "--registration-id",
            registration_id,
            "--ca-cert",
            ca.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        kdps_device(&all)
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for Standalone {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The result of a `kdps-device` run.
#[derive(Debug)]
pub struct DeviceRun {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl DeviceRun {
    /// The JSON object printed on success; panics with the output otherwise.
    pub fn json(&self) -> serde_json::Value {
        assert!(
            self.status.success(),
            "kdps-device failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("kdps-device printed no JSON ({e}):\n{}", self.stdout))
    }

    /// Asserts failure with `code` and an error message containing `needle`.
    pub fn assert_error(&self, code: i32, needle: &str) {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit code {code}:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr does not mention {needle:?}:\n{}",
            self.stderr
        );
    }
}

/// Runs `kdps-device` with `args`.
pub fn kdps_device(args: &[&str]) -> DeviceRun {
    let out = Command::new(bin("kdps-device"))
        .args(args)
        .env("KDPS_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("spawn kdps-device");
    DeviceRun {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Path to a file in the repository (tests run with the package folder as CWD).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Registers every device in `devices` in-process (real TLS connections to the real service,
/// one per device), at most `concurrency` at a time; results in input order.
pub async fn register_all(
    devices: Vec<kdps_device::client::RegisterOptions>,
    concurrency: usize,
) -> Vec<Result<kdps_device::client::RegistrationResult, kdps_device::error::DeviceError>> {
    use futures::StreamExt as _;
    futures::stream::iter(devices)
        .map(|opts| async move {
            kdps_device::client::ProvisioningClient::new(opts)?
                .register()
                .await
        })
        .buffered(concurrency.max(1))
        .collect()
        .await
}

/// A multi-threaded tokio runtime for in-process clients in synchronous tests.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
