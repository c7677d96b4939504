//! Tier-3 harness: a real kube-apiserver (from `tests/control-plane/up`), temporary
//! namespaces, least-privilege ServiceAccount kubeconfigs and `kdps-registration serve`
//! processes.
//!
//! - [`cluster`] runs `tests/control-plane/up` once per test binary, under a file lock shared
//!   by every test binary, so parallel binaries use one control plane. It never stops it:
//!   `.ci/run` (or the developer) runs `tests/control-plane/down`. When the harness cannot
//!   start, the test fails with the harness's own error output — never a skip.
//! - [`TempNs`] creates a uniquely named namespace and deletes it when dropped.
//! - [`ServiceIdentity`] applies `tests/k8s/service-rbac.yaml` for a service namespace and its
//!   linked hub namespaces and writes a kubeconfig with a TokenRequest token of the
//!   ServiceAccount, so the service runs with exactly the permissions the operator grants.
//! - [`Serve`] runs `kdps-registration serve` on loopback ports with its own serving
//!   certificate.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{free_port, http_get, repo_path};

/// The running control plane.
#[derive(Debug)]
pub struct Cluster {
    /// Admin kubeconfig (system:masters).
    pub kubeconfig: PathBuf,
    /// Directory holding kubectl, helm and the control-plane binaries.
    pub bin_dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// Base64 PEM of the cluster CA (kubeconfig `certificate-authority-data`).
    pub ca_data: String,
}

/// Undoes the `%q` quoting of bash's `printf` for the simple paths `up` prints.
fn unquote(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("$'")
        .and_then(|r| r.strip_suffix('\''))
        .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        .or_else(|| s.strip_prefix('"').and_then(|r| r.strip_suffix('"')))
        .unwrap_or(s);
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses the stdout of `tests/control-plane/up`: `(KUBECONFIG, bin dir)`.
pub fn parse_up_exports(stdout: &str) -> Option<(PathBuf, PathBuf)> {
    let mut kubeconfig = None;
    let mut bin = None;
    for line in stdout.lines() {
        if let Some(v) = line.strip_prefix("export KUBECONFIG=") {
            kubeconfig = Some(PathBuf::from(unquote(v)));
        } else if let Some(v) = line.strip_prefix("export PATH=") {
            // `<bin>:"$PATH"`
            let v = v.trim_end_matches("\"$PATH\"").trim_end_matches(':');
            bin = Some(PathBuf::from(unquote(v)));
        }
    }
    Some((kubeconfig?, bin?))
}

/// The shared control plane, started (or found running) on first use, with the kdps CRDs
/// applied and established. Panics with the harness's output when it cannot start.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let up = repo_path("tests/control-plane/up");
        // One `up` at a time across test binaries; `up` is idempotent, so the second one
        // finds the control plane ready and only prints the exports.
        let lock_path = std::env::temp_dir().join("kdps-tests-control-plane.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
        lock.lock()
            .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
        let out = Command::new(&up)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", up.display()));
        drop(lock);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "tests/control-plane/up failed ({}); the Kubernetes tests need it (see docs/control-plane.md):\n{stderr}",
            out.status
        );
        let (kubeconfig, bin_dir) = parse_up_exports(&stdout).unwrap_or_else(|| {
            panic!("tests/control-plane/up printed no exports:\n{stdout}\n{stderr}")
        });
        let mut cluster = Cluster {
            kubeconfig,
            bin_dir,
            server: String::new(),
            ca_data: String::new(),
        };
        cluster.server = cluster.kubectl_ok(&[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]);
        cluster.ca_data = cluster.kubectl_ok(&[
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ]);
        cluster.install_crds();
        cluster
    })
}

impl Cluster {
    /// `kubectl` (the harness's build) with the admin kubeconfig.
    pub fn kubectl_cmd(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .arg("--request-timeout=60s")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl with `args`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"))
    }

    /// Runs kubectl with `args`, asserts success, returns trimmed stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `kubectl apply --server-side` of `yaml` (multi-document) as the admin.
    pub fn apply(&self, yaml: &str) {
        let mut child = self
            .kubectl_cmd()
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=kdps-tests",
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write manifest to kubectl");
        let out = child.wait_with_output().expect("kubectl apply");
        assert!(
            out.status.success(),
            "kubectl apply failed:\n{}\nmanifest:\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl get KIND -n NS -o json` items (all pages: kubectl follows continue tokens).
    pub fn get_items(
        &self,
        namespace: &str,
        kind: &str,
        selector: Option<&str>,
    ) -> Vec<serde_json::Value> {
        let mut args = vec![
            "get",
            kind,
            "-n",
            namespace,
            "-o",
            "json",
            "--show-managed-fields",
        ];
        if let Some(s) = selector {
            args.extend(["-l", s]);
        }
        let out = self.kubectl_ok(&args);
        let list: serde_json::Value = serde_json::from_str(&out).expect("kubectl JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// One object as JSON, `None` when it does not exist.
    pub fn get(&self, namespace: &str, kind: &str, name: &str) -> Option<serde_json::Value> {
        let out = self.kubectl(&[
            "get",
            kind,
            name,
            "-n",
            namespace,
            "-o",
            "json",
            "--show-managed-fields",
        ]);
        if out.status.success() {
            return Some(serde_json::from_slice(&out.stdout).expect("kubectl JSON"));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("NotFound") || err.contains("not found"),
            "kubectl get {kind} {name}: {err}"
        );
        None
    }

    /// Applies `crds/` and waits until every kdps.io CRD is Established.
    fn install_crds(&self) {
        let dir = repo_path("crds");
        self.kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=kdps-tests",
            "-f",
            dir.to_str().expect("utf-8 path"),
        ]);
        for entry in std::fs::read_dir(&dir).expect("crds/") {
            let path = entry.expect("crds/ entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .expect("CRD file name")
                    .to_owned();
                self.kubectl_ok(&[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    &format!("crd/{name}"),
                ]);
            }
        }
    }

    /// A kubeconfig for `token` against this cluster, written to `path`.
    pub fn write_token_kubeconfig(&self, path: &Path, token: &str, namespace: &str) {
        let yaml = format!(
            r#"apiVersion: v1
kind: Config
clusters:
- name: kdps
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: service
  user:
    token: {token}
contexts:
- name: service
  context: {{cluster: kdps, user: service, namespace: {namespace}}}
current-context: service
"#,
            server = self.server,
            ca = self.ca_data,
        );
        std::fs::write(path, yaml).expect("write kubeconfig");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    /// An async kube client for the admin kubeconfig.
    pub async fn admin_client(&self) -> kube::Client {
        client_for(&self.kubeconfig).await
    }
}

/// An async kube client for a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
    kube::Client::try_from(config).expect("kube client")
}

/// A namespace with a unique name, deleted (without waiting) when dropped.
pub struct TempNs {
    /// The namespace name.
    pub name: String,
}

impl TempNs {
    /// Creates `PREFIX-<pid>-<n>-<random>` (at most 63 characters).
    pub fn new(prefix: &str) -> TempNs {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let mut name = format!(
            "{prefix}-{}-{}-{:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            nanos & 0xffff
        );
        name.truncate(63);
        cluster().kubectl_ok(&["create", "namespace", &name]);
        TempNs { name }
    }
}

impl Drop for TempNs {
    fn drop(&mut self) {
        let _ = cluster()
            .kubectl_cmd()
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The ServiceAccount name the RBAC manifest uses.
pub const SERVICE_ACCOUNT: &str = "kdps-registration";

/// The RBAC manifest of the registration service: the part for the service namespace and
/// the part for each linked hub namespace, with the placeholders filled in.
pub fn service_rbac(service_ns: &str, hub_namespaces: &[&str]) -> String {
    let text = std::fs::read_to_string(repo_path("tests/k8s/service-rbac.yaml"))
        .expect("tests/k8s/service-rbac.yaml");
    let (service_part, hub_part) = text
        .split_once("# ---- per linked hub namespace ----")
        .expect("service-rbac.yaml has the hub-namespace marker");
    let fill = |s: &str, hub: &str| {
        s.replace("${SERVICE_NAMESPACE}", service_ns)
            .replace("${SERVICE_ACCOUNT}", SERVICE_ACCOUNT)
            .replace("${HUB_NAMESPACE}", hub)
    };
    let mut out = fill(service_part, "");
    for hub in hub_namespaces {
        out.push_str("\n---\n");
        out.push_str(&fill(hub_part, hub));
    }
    out
}

/// The registration service's identity: RBAC applied, a token kubeconfig written.
pub struct ServiceIdentity {
    /// Kubeconfig authenticating as the ServiceAccount.
    pub kubeconfig: PathBuf,
    /// `system:serviceaccount:NS:NAME`.
    pub user: String,
    _dir: tempfile::TempDir,
}

impl ServiceIdentity {
    /// Applies the service RBAC for `service_ns` and `hub_namespaces` and issues a token
    /// (TokenRequest API, as a projected ServiceAccount token would be in a pod).
    pub fn new(service_ns: &str, hub_namespaces: &[&str]) -> ServiceIdentity {
        let c = cluster();
        c.apply(&service_rbac(service_ns, hub_namespaces));
        let token = c.kubectl_ok(&[
            "create",
            "token",
            SERVICE_ACCOUNT,
            "-n",
            service_ns,
            "--duration=2h",
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        c.write_token_kubeconfig(&kubeconfig, &token, service_ns);
        ServiceIdentity {
            kubeconfig,
            user: format!("system:serviceaccount:{service_ns}:{SERVICE_ACCOUNT}"),
            _dir: dir,
        }
    }

    /// `kubectl auth can-i VERB RESOURCE -n NS` as this identity.
    pub fn can_i(&self, verb: &str, resource: &str, namespace: &str) -> bool {
        let out = cluster().kubectl(&[
            "auth", "can-i", verb, resource, "-n", namespace, "--as", &self.user,
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    }

    /// `kubectl auth can-i VERB RESOURCE --all-namespaces` as this identity.
    pub fn can_i_cluster_wide(&self, verb: &str, resource: &str) -> bool {
        let out = cluster().kubectl(&[
            "auth",
            "can-i",
            verb,
            resource,
            "--all-namespaces",
            "--as",
            &self.user,
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    }
}

/// A running `kdps-registration serve`.
pub struct Serve {
    child: std::sync::Mutex<Option<Child>>,
    /// Temp folder: `tls/` (CA and serving certificate) and `service.log`.
    pub dir: tempfile::TempDir,
    /// Device port.
    pub port: u16,
    /// Admin port.
    pub admin_port: u16,
}

impl Serve {
    /// Starts `serve` for `namespace` with `kubeconfig` and waits until `/readyz` is 200.
    pub fn start(kubeconfig: &Path, namespace: &str, extra_args: &[&str]) -> Serve {
        let s = Self::spawn(kubeconfig, namespace, extra_args);
        s.wait_ready();
        s
    }

    /// Starts `serve` without waiting for readiness.
    pub fn spawn(kubeconfig: &Path, namespace: &str, extra_args: &[&str]) -> Serve {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        kdps_registration::tls::ensure_self_managed(&dir.path().join("tls"), &names)
            .expect("serving certificate");
        let s = Serve {
            child: std::sync::Mutex::new(None),
            dir,
            port: free_port(),
            admin_port: free_port(),
        };
        let log = std::fs::File::create(s.log_path()).expect("log file");
        let tls = s.dir.path().join("tls");
        let child = Command::new(crate::bin("kdps-registration"))
            .arg("serve")
            .args(["--namespace", namespace])
            .args(["--listen", &format!("127.0.0.1:{}", s.port)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", s.admin_port)])
            .arg("--tls-cert")
            .arg(tls.join("server.pem"))
            .arg("--tls-key")
            .arg(tls.join("server-key.pem"))
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig)
            .env("KDPS_LOG", "info,kdps_registration=debug")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn kdps-registration serve");
        *s.child.lock().expect("child lock") = Some(child);
        s
    }

    /// The service's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("service.log")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The CA of the serving certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("tls/ca.pem")
    }

    /// `https://localhost:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    /// Waits up to 60 s for `/readyz` 200; panics with the log when the process exits first.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(self.admin(), "/readyz") {
                return;
            }
            assert!(
                self.exit_status().is_none(),
                "kdps-registration serve exited:\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "kdps-registration serve not ready after 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().expect("child lock");
        child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits for the process to exit (for start-up failures); returns its status and log.
    pub fn wait_exit(&self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "kdps-registration serve did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the process (SIGKILL, like a crash).
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().expect("child lock").take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Options for an in-process registration against this service (gRPC, its CA).
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
    pub fn register(
        &self,
        id_scope: &str,
        registration_id: &str,
        args: &[&str],
    ) -> crate::DeviceRun {
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
            ca.to_str().expect("utf-8 path"),
        ];
        all.extend_from_slice(args);
        crate::kdps_device(&all)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_up_output() {
        let out = "export KUBECONFIG=/root/.cache/kdps/cp-run/kubeconfig\nexport PATH=/root/.cache/kdps/control-plane/abc/bin:\"$PATH\"\n";
        let (k, b) = parse_up_exports(out).unwrap();
        assert_eq!(k, PathBuf::from("/root/.cache/kdps/cp-run/kubeconfig"));
        assert_eq!(b, PathBuf::from("/root/.cache/kdps/control-plane/abc/bin"));
        let quoted = "export KUBECONFIG=/tmp/a\\ b/kubeconfig\nexport PATH='/x y/bin':\"$PATH\"\n";
        let (k, b) = parse_up_exports(quoted).unwrap();
        assert_eq!(k, PathBuf::from("/tmp/a b/kubeconfig"));
        assert_eq!(b, PathBuf::from("/x y/bin"));
        assert!(parse_up_exports("nothing").is_none());
    }
}
