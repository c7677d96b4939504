//! Test support: one software TPM (`swtpm socket --tpm2`) per test, on free loopback ports,
//! killed when dropped. Missing swtpm is a test failure that says how to install it — never a
//! silent skip. Also shared by `registration-svc/tests/tpm_swtpm.rs` through `#[path]`.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "run scripts/install-test-deps.sh (installs swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config openssl)";

/// A running swtpm: commands on `port`, control channel on `port + 1`, state in a private dir.
pub struct Swtpm {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// Two consecutive free loopback ports (P, P+1), as the swtpm TCTI requires.
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free loopback ports found");
}

fn unique_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "kdps-swtpm-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Swtpm {
    /// Starts a fresh TPM (new EPS, empty NV) and waits until both ports accept connections.
    pub fn start() -> Swtpm {
        let dir = unique_dir();
        // A port can be taken between probing and swtpm's bind; try a few pairs.
        for _ in 0..10 {
            let port = free_port_pair();
            let spawned = Command::new("swtpm")
                .args(["socket", "--tpm2"])
                .args([
                    "--server",
                    &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                ])
                .args([
                    "--ctrl",
                    &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
                ])
                .args(["--tpmstate", &format!("dir={}", dir.display())])
                .args(["--flags", "not-need-init,startup-clear"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn();
            let child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    if e.kind() == std::io::ErrorKind::NotFound {
                        panic!("swtpm is not installed ({e}): {INSTALL_HINT}")
                    }
                    panic!("cannot start swtpm: {e}")
                }
            };
            let mut tpm = Swtpm {
                child,
                port,
                dir: dir.clone(),
            };
            if tpm.wait_ready() {
                return tpm;
            }
            // Exited (most likely a port clash): drop kills/reaps it; keep the dir for the retry.
            tpm.dir = PathBuf::new();
        }
        panic!("swtpm did not start on any port pair");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read as _;
                    let _ = e.read_to_string(&mut err);
                }
                eprintln!("swtpm exited early ({status}): {err}");
                return false;
            }
            let up = |p: u16| {
                TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], p)),
                    Duration::from_millis(200),
                )
                .is_ok()
            };
            if up(self.port + 1) && up(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("swtpm on port {} did not become ready", self.port);
    }

    /// The command port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TCTI string for tss-esapi and tpm2-tools.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// A scratch directory that lives as long as this TPM.
    pub fn scratch(&self) -> &Path {
        &self.dir
    }

    /// Runs a tpm2-tools command against this TPM (`TPM2TOOLS_TCTI`), with a timeout, and
    /// flushes the transient objects the tools leave behind (no resource manager).
    /// Only call it while no `Tpm` context is connected: swtpm serves one client at a time.
    pub fn tpm2(&self, tool: &str, args: &[&str]) -> Output {
        let out = self.run_tool(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let flush = self.run_tool("tpm2_flushcontext", &["-t"]);
        assert!(flush.status.success(), "tpm2_flushcontext -t failed");
        out
    }

    fn run_tool(&self, tool: &str, args: &[&str]) -> Output {
        let child = Command::new(tool)
            .args(args)
            .env("TPM2TOOLS_TCTI", self.tcti())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {tool} ({e}): {INSTALL_HINT}"));
        let (tx, rx) = std::sync::mpsc::channel();
        let pid = child.id();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                panic!("{tool} {args:?} timed out (is a Tpm context still connected?)");
            }
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
