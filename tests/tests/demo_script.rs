//! The README's demo command, `scripts/demo`, run as is (build, standalone service on
//! `examples/standalone`, symmetric-key, X.509 and TPM devices), so it cannot rot. It gets free
//! ports and this test's own target directory, so its build step reuses the test build.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

/// Two consecutive free loopback ports (swtpm uses P and P+1).
fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let p = kdps_tests::free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free ports");
}

#[test]
fn readme_demo_command_registers_every_example_device() {
    // target/debug/deps/demo_script-HASH -> target
    let exe = std::env::current_exe().unwrap();
    let target_dir = exe.ancestors().nth(3).unwrap().to_path_buf();
    assert!(
        target_dir.join("debug").is_dir(),
        "unexpected test location {}",
        exe.display()
    );
    let out = Command::new("bash")
        .arg(kdps_tests::repo_path("scripts/demo"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("KDPS_DEMO_PORT", kdps_tests::free_port().to_string())
        .env("KDPS_DEMO_ADMIN_PORT", kdps_tests::free_port().to_string())
        .env("KDPS_DEMO_TPM_PORT", free_port_pair().to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/demo failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let summary = stdout
        .split("==> outcome")
        .nth(1)
        .unwrap_or_else(|| panic!("no outcome section:\n{stdout}"));
    for expected in [
        "sensor-01 (group symmetric key)          assigned -> hub-",
        "gateway-01 (individual symmetric key)    assigned -> hub-west.example.com (device ID gw-01",
        "sensor-13 (disabled enrollment)          refused: disabled",
        "x509-device-01 (X.509 group, openssl)    assigned -> hub-",
        // CI installs swtpm (scripts/install-test-deps.sh): the TPM device must not be skipped.
        "tpm-device-01 (TPM, swtpm)               assigned -> hub-",
    ] {
        assert!(
            summary.contains(expected),
            "missing {expected:?} in:\n{summary}"
        );
    }
    // The listing printed by `kdps-registration list registrations`: one line per device.
    let listed = stdout
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("\"registrationId\""))
        .count();
    assert_eq!(listed, 4, "{stdout}");
}
