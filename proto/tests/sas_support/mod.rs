//! Independent reference implementations for the SAS/key known-answer tests: the `openssl` CLI,
//! python3's `hmac`/`urllib` and node's `crypto`. They run as child processes so that the expected
//! values never come from our own code. A missing tool fails the test (CI installs all three).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

fn run(program: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (needed by this known-answer test): {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// HMAC-SHA256 of `message` under `key`, computed by `openssl dgst`.
pub fn openssl_hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let macopt = format!("hexkey:{}", hex(key));
    let out = run(
        "openssl",
        &[
            "dgst", "-sha256", "-mac", "HMAC", "-macopt", &macopt, "-binary",
        ],
        message,
    );
    assert_eq!(out.len(), 32, "openssl returned {} bytes", out.len());
    out
}

/// Runs a python3 program with `args` and returns its stdout, trimmed.
pub fn python(program: &str, args: &[&str]) -> String {
    let mut all = vec!["-c", program];
    all.extend_from_slice(args);
    String::from_utf8(run("python3", &all, b""))
        .unwrap()
        .trim()
        .to_owned()
}

/// Runs a node program with `args` (available as `process.argv.slice(1)`) and returns its stdout, trimmed.
pub fn node(program: &str, args: &[&str]) -> String {
    let mut all = vec!["-e", program, "--"];
    all.extend_from_slice(args);
    String::from_utf8(run("node", &all, b""))
        .unwrap()
        .trim()
        .to_owned()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
