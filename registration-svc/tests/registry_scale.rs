//! Scale and crash recovery of the embedded registry. `cargo test` runs it with 3 000 devices;
//! with `KDPS_MEASURE_N` it is the measurement of docs/storage.md:
//!
//! ```sh
//! KDPS_MEASURE_N=200000 cargo test --release -p kdps-registration --test registry_scale \
//!     -- --nocapture --test-threads=1
//! ```
//!
//! Writes N symmetric-key identities (Secret + Device + registration each) through
//! `write_identity` from 256 concurrent tasks (`KDPS_MEASURE_WORKERS`), then reports file size per device, write rate,
//! point-read latency, a full listing, and the process's peak RSS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use kdps_registration::registry::embedded::{EmbeddedOptions, EmbeddedRegistry};
use kdps_registration::registry::sample::symmetric_key_write;
use kdps_registration::registry::{HubAssignment, IdentityWrite, Registry};

fn write_for(i: usize) -> IdentityWrite {
    let id = format!("sensor-{i:08}");
    let ns = ["hub-west", "hub-east", "hub-north"][i % 3];
    let hub = HubAssignment {
        host_name: format!("{ns}.example.com"),
        link_name: ns.into(),
        device_namespace: ns.into(),
    };
    let mut write = symmetric_key_write(&id, "sensors", hub, (vec![7; 32], vec![9; 32]), None);
    write.device.registration.namespace = Some("iot".into());
    write
}

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.trim_start_matches(field).trim().to_owned())
        .unwrap_or_else(|| "n/a".into())
}

/// Devices written by the tests; `KDPS_MEASURE_N` raises it for a measurement (docs/storage.md).
fn devices() -> usize {
    std::env::var("KDPS_MEASURE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_embedded_registry() {
    let n = devices();
    let durable = std::env::var("KDPS_MEASURE_DURABLE").map_or(true, |v| v != "0");
    let dir = tempfile::tempdir().unwrap();
    // KDPS_MEASURE_DIR keeps the store for `measure_reopen`.
    let path = std::env::var_os("KDPS_MEASURE_DIR")
        .map_or_else(|| dir.path().to_path_buf(), Into::into)
        .join("registry.redb");
    let reg = Arc::new(
        EmbeddedRegistry::open_with(
            &path,
            EmbeddedOptions {
                durable,
                cache_size: std::env::var("KDPS_MEASURE_CACHE_MB")
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .map_or(EmbeddedOptions::default().cache_size, |mb| mb << 20),
                ..EmbeddedOptions::default()
            },
        )
        .unwrap(),
    );
    println!("before: VmRSS {}", proc_status("VmRSS:"));

    let started = Instant::now();
    let workers: usize = std::env::var("KDPS_MEASURE_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let reg = Arc::clone(&reg);
            tokio::spawn(async move {
                for i in (w..n).step_by(workers) {
                    reg.write_identity(write_for(i)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let write_secs = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(&path).unwrap().len();
    println!(
        "wrote {n} identities from {workers} tasks in {write_secs:.1} s = {:.0}/s (durable: {durable}); file {:.1} MiB = {:.0} B/device",
        n as f64 / write_secs,
        size as f64 / 1048576.0,
        size as f64 / n as f64
    );
    let stats = reg.stats().await.unwrap();
    println!(
        "{stats:?}: per device stored {:.0} B, metadata {:.0} B, fragmented {:.0} B",
        stats.stored_bytes as f64 / n as f64,
        stats.metadata_bytes as f64 / n as f64,
        stats.fragmented_bytes as f64 / n as f64
    );
    println!(
        "after writes: VmRSS {}, VmHWM {}",
        proc_status("VmRSS:"),
        proc_status("VmHWM:")
    );

    if std::env::var_os("KDPS_MEASURE_CRASH").is_some() {
        // Simulate a crash: no clean close, so the next open has to repair.
        println!("aborting without closing the store");
        std::process::abort();
    }

    // Point reads of random records.
    let reads = 20_000;
    let started = Instant::now();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % n as u64) as usize;
        let id = format!("sensor-{i:08}");
        assert!(reg.get_registration(&id).await.unwrap().is_some());
    }
    println!(
        "{reads} random get_registration: {:.1} µs each",
        started.elapsed().as_secs_f64() * 1e6 / reads as f64
    );

    // Full listing in pages.
    let started = Instant::now();
    let mut count = 0;
    let mut after: Option<String> = None;
    loop {
        let page = reg
            .list_devices(None, after.as_deref(), 1000)
            .await
            .unwrap();
        count += page.items.len();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(count, n);
    println!(
        "listed {count} devices in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(reg.count_registrations().await.unwrap(), n as u64);
    println!(
        "end: VmRSS {}, VmHWM {}",
        proc_status("VmRSS:"),
        proc_status("VmHWM:")
    );

    // Reopen: time to open a store of this size.
    drop(reg);
    let started = Instant::now();
    let reg = EmbeddedRegistry::open(&path).unwrap();
    println!("reopen: {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(reg.count_registrations().await.unwrap(), n as u64);
    drop(reg);

    // What an offline compaction would reclaim.
    let started = Instant::now();
    let mut db = redb::Database::open(&path).unwrap();
    while db.compact().unwrap() {}
    drop(db);
    let compacted = std::fs::metadata(&path).unwrap().len();
    println!(
        "compacted in {:.1} s: {:.1} MiB = {:.0} B/device",
        started.elapsed().as_secs_f64(),
        compacted as f64 / 1048576.0,
        compacted as f64 / n as f64
    );
}

/// A store whose writer process died without closing it (`abort()` right after its last
/// durable commit) opens, after redb's repair, with every acknowledged write: the writer is
/// this test binary itself, running `measure_embedded_registry` with `KDPS_MEASURE_CRASH`.
#[tokio::test]
async fn store_of_a_crashed_writer_reopens_complete() {
    let dir = tempfile::tempdir().unwrap();
    let n = devices();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "measure_embedded_registry", "--nocapture"])
        .env("KDPS_MEASURE_DIR", dir.path())
        .env("KDPS_MEASURE_CRASH", "1")
        .env("KDPS_MEASURE_N", n.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "the writer was to abort: {stdout}"
    );
    assert!(
        stdout.contains("aborting without closing the store"),
        "the writer died before its writes were done: {stdout}"
    );

    let path = dir.path().join("registry.redb");
    let started = Instant::now();
    let reg = EmbeddedRegistry::open(&path).unwrap();
    println!(
        "opened after a crash in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(reg.count_registrations().await.unwrap(), n as u64);
    let last = format!("sensor-{:08}", n - 1);
    assert!(reg.get_registration(&last).await.unwrap().is_some());
    let page = reg.list_registrations(None, 10).await.unwrap();
    assert_eq!(page.items.len(), 10.min(n));
}
