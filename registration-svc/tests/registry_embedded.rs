//! The embedded (redb) registry against real files in a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;

use kdps_registration::registry::embedded::{DEFAULT_FILE_NAME, EmbeddedOptions, EmbeddedRegistry};
use kdps_registration::registry::sample::{group_member as write_for, hub};
use kdps_registration::registry::{
    AttestationType, DeviceAuthentication, DeviceRef, EnrollmentKind, EnrollmentRef, IdentityWrite,
    LastError, RegistrationRecord, RegistrationStatus, Registry, RegistryError, device_secret_name,
};

fn open(dir: &tempfile::TempDir) -> EmbeddedRegistry {
    EmbeddedRegistry::open(dir.path().join(DEFAULT_FILE_NAME)).unwrap()
}

#[tokio::test]
async fn write_read_and_etags() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir);
    assert!(reg.get_registration("dev-1").await.unwrap().is_none());
    assert_eq!(reg.count_registrations().await.unwrap(), 0);

    let first = reg
        .write_identity(write_for("Dev-1", "hub-a", None))
        .await
        .unwrap();
    assert_eq!(first.registration_id, "dev-1");
    assert!(!first.etag.is_empty());
    assert_eq!(first.status, RegistrationStatus::Assigned);

    // Case-insensitive lookup returns exactly what was stored.
    let read = reg.get_registration("DEV-1").await.unwrap().unwrap();
    assert_eq!(read, first);
    let device = reg.get_device("hub-a", "dev-1").await.unwrap().unwrap();
    assert_eq!(device.registration.registration_id, "dev-1");
    assert!(device.enabled);
    assert_eq!(device.twin.tags["site"], "lab");
    // Device IDs are case-sensitive.
    assert!(reg.get_device("hub-a", "DEV-1").await.unwrap().is_none());
    let secret = reg
        .get_secret("hub-a", &device_secret_name("dev-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(secret.primary_key, vec![1; 32]);
    assert_eq!(secret.secondary_key, vec![2; 32]);
    assert!(!format!("{secret:?}").contains("1, 1"));

    // Rewriting with the right etag: new etag, same creation time, later update time.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = reg
        .write_identity(write_for("dev-1", "hub-a", Some(first.etag.clone())))
        .await
        .unwrap();
    assert_ne!(second.etag, first.etag);
    assert_eq!(second.created_at, first.created_at);
    assert!(second.updated_at > first.updated_at);
    assert_eq!(reg.count_registrations().await.unwrap(), 1);
}

#[tokio::test]
async fn stale_or_missing_etags_conflict_and_retry_converges() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir);
    let first = reg
        .write_identity(write_for("dev", "hub-a", None))
        .await
        .unwrap();

    // "Must not exist" but it does.
    let err = reg
        .write_identity(write_for("dev", "hub-b", None))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Conflict { .. }), "{err}");
    assert_eq!(err.dps_error_code(), 409_203);
    assert!(err.is_retryable());
    assert!(err.to_string().contains("re-read"), "{err}");
    // Stale etag.
    let err = reg
        .write_identity(write_for("dev", "hub-b", Some("stale".into())))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Conflict { .. }));
    // Expected an existing record that is not there.
    let err = reg
        .write_identity(write_for("other", "hub-b", Some(first.etag.clone())))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Conflict { found: None, .. }),
        "{err}"
    );
    // Nothing of the refused writes is stored.
    assert!(reg.get_device("hub-b", "dev").await.unwrap().is_none());
    assert!(reg.get_device("hub-b", "other").await.unwrap().is_none());
    assert_eq!(reg.get_registration("dev").await.unwrap().unwrap(), first);

    // The loser re-reads and retries: converges.
    let current = reg.get_registration("dev").await.unwrap().unwrap();
    let mut retry = write_for("dev", "hub-b", Some(current.etag));
    retry.previous_device = Some(DeviceRef {
        namespace: "hub-a".into(),
        device_id: "dev".into(),
    });
    let moved = reg.write_identity(retry).await.unwrap();
    assert_eq!(moved.assigned_hub, Some(hub("hub-b")));
    // The old identity is kept but retired; the new one is live.
    let old = reg.get_device("hub-a", "dev").await.unwrap().unwrap();
    assert!(!old.enabled);
    assert!(
        reg.get_device("hub-b", "dev")
            .await
            .unwrap()
            .unwrap()
            .enabled
    );
}

#[tokio::test]
async fn racing_writers_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let reg: Arc<dyn Registry> = Arc::new(open(&dir));
    // 32 concurrent first registrations of one device (likely in one group-commit batch).
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let reg = Arc::clone(&reg);
            let ns = if i % 2 == 0 { "hub-a" } else { "hub-b" };
            tokio::spawn(async move { reg.write_identity(write_for("racy", ns, None)).await })
        })
        .collect();
    let mut wins = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => wins.push(r),
            Err(RegistryError::Conflict { .. }) => conflicts += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(wins.len(), 1, "exactly one writer wins");
    assert_eq!(conflicts, 31);
    let stored = reg.get_registration("racy").await.unwrap().unwrap();
    assert_eq!(stored, wins[0]);
    // Only the winner's Device exists.
    let winner_ns = stored.assigned_hub.unwrap().device_namespace;
    let loser_ns = if winner_ns == "hub-a" {
        "hub-b"
    } else {
        "hub-a"
    };
    assert!(reg.get_device(&winner_ns, "racy").await.unwrap().is_some());
    assert!(reg.get_device(loser_ns, "racy").await.unwrap().is_none());
}

#[tokio::test]
async fn inconsistent_writes_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir);
    type Mutation = Box<dyn Fn(&mut IdentityWrite)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "namespace",
            Box::new(|w| w.device.namespace = "elsewhere".into()),
        ),
        ("host", Box::new(|w| w.device.hub_host_name = "x".into())),
        (
            "device id",
            Box::new(|w| w.registration.device_id = Some("x".into())),
        ),
        (
            "back-reference",
            Box::new(|w| w.device.registration.registration_id = "x".into()),
        ),
        ("no secret", Box::new(|w| w.secret = None)),
        (
            "secret name",
            Box::new(|w| w.secret.as_mut().unwrap().name = "x".into()),
        ),
        (
            "empty key",
            Box::new(|w| w.secret.as_mut().unwrap().secondary_key.clear()),
        ),
        (
            "status",
            Box::new(|w| w.registration.status = RegistrationStatus::Failed),
        ),
        ("no hub", Box::new(|w| w.registration.assigned_hub = None)),
        (
            "secret for x509",
            Box::new(|w| {
                w.device.authentication = DeviceAuthentication::CertificateAuthority {};
            }),
        ),
    ];
    for (name, mutate) in cases {
        let mut w = write_for("dev", "hub-a", None);
        mutate(&mut w);
        let err = reg.write_identity(w).await.unwrap_err();
        assert!(matches!(err, RegistryError::Invalid(_)), "{name}: {err}");
        assert!(!err.is_retryable());
        // No key bytes in messages.
        assert!(!err.to_string().contains("[1, 1"), "{name}: {err}");
    }
    assert!(reg.get_registration("dev").await.unwrap().is_none());
    let page = reg.list_devices(None, None, 100).await.unwrap();
    assert!(page.items.is_empty());

    // An X.509 device needs no Secret.
    let mut w = write_for("x509dev", "hub-a", None);
    w.secret = None;
    w.device.authentication = DeviceAuthentication::X509 {
        primary_sha1: "aa".into(),
        primary_sha256: "bb".into(),
        secondary_sha1: None,
        secondary_sha256: None,
    };
    w.registration.attestation = AttestationType::X509;
    reg.write_identity(w).await.unwrap();
}

#[tokio::test]
async fn failures_are_recorded_without_identities() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir);
    let mut failed = RegistrationRecord::new(
        "Broken",
        EnrollmentRef {
            kind: EnrollmentKind::Individual,
            name: "broken".into(),
        },
        AttestationType::Tpm,
        RegistrationStatus::Failed,
    );
    failed.last_error = Some(LastError {
        code: 400_207,
        message: "Custom allocation failed with status code: 500".into(),
    });
    let stored = reg.record_failure(failed.clone(), None).await.unwrap();
    assert_eq!(stored.registration_id, "broken");
    assert_eq!(stored.last_error.as_ref().unwrap().code, 400_207);
    assert!(
        reg.list_devices(None, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Same precondition as identity writes.
    let err = reg.record_failure(failed.clone(), None).await.unwrap_err();
    assert!(matches!(err, RegistryError::Conflict { .. }));
    let mut disabled = failed.clone();
    disabled.status = RegistrationStatus::Disabled;
    let d = reg
        .record_failure(disabled, Some(stored.etag.clone()))
        .await
        .unwrap();
    assert_eq!(d.status, RegistrationStatus::Disabled);
    assert_eq!(d.created_at, stored.created_at);

    // Only failed/disabled.
    let mut assigned = failed;
    assigned.status = RegistrationStatus::Assigned;
    let err = reg
        .record_failure(assigned, Some(d.etag.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(_)), "{err}");

    // A failed device can later be assigned (with the failure record's etag).
    let ok = reg
        .write_identity(write_for("broken", "hub-a", Some(d.etag)))
        .await
        .unwrap();
    assert_eq!(ok.status, RegistrationStatus::Assigned);
    assert_eq!(ok.created_at, stored.created_at);
}

#[tokio::test]
async fn survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DEFAULT_FILE_NAME);
    let written = {
        let reg = EmbeddedRegistry::open(&path).unwrap();
        // A second open of the same file is refused while the first is alive.
        let err = EmbeddedRegistry::open(&path).unwrap_err();
        assert!(matches!(err, RegistryError::Storage { .. }), "{err}");
        let w = reg
            .write_identity(write_for("persist", "hub-a", None))
            .await
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "store must not be group/world readable: {mode:o}"
            );
        }
        w
    };
    let reg = EmbeddedRegistry::open(&path).unwrap();
    assert_eq!(
        reg.get_registration("persist").await.unwrap().unwrap(),
        written
    );
    assert!(reg.get_device("hub-a", "persist").await.unwrap().is_some());
    assert!(
        reg.get_secret("hub-a", &device_secret_name("persist"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(reg.count_registrations().await.unwrap(), 1);
}

#[tokio::test]
async fn corrupt_records_and_unknown_schema_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DEFAULT_FILE_NAME);
    {
        let reg = EmbeddedRegistry::open(&path).unwrap();
        reg.write_identity(write_for("good", "hub-a", None))
            .await
            .unwrap();
    }
    // Damage one record behind the registry's back (the table layout is documented).
    {
        use redb::{Database, TableDefinition};
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: TableDefinition<&str, &[u8]> = TableDefinition::new("registrations");
            let mut t = txn.open_table(table).unwrap();
            t.insert("bad", b"{not json".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    {
        let reg = EmbeddedRegistry::open(&path).unwrap();
        let err = reg.get_registration("bad").await.unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("registrations/bad"), "{err}");
        assert!(reg.list_registrations(None, 10).await.is_err());
        // Other records stay readable, and a write over the bad one is refused, not guessed.
        assert!(reg.get_registration("good").await.unwrap().is_some());
        let err = reg
            .write_identity(write_for("bad", "hub-a", None))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt { .. }), "{err}");
    }
    // A store from a future version is not opened.
    {
        use redb::{Database, TableDefinition};
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: TableDefinition<&str, u64> = TableDefinition::new("meta");
            txn.open_table(meta)
                .unwrap()
                .insert("schema_version", 99)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let err = EmbeddedRegistry::open(&path).unwrap_err();
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_records_page_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Arc::new(open(&dir));
    const N: usize = 20_000;
    // Concurrent writers exercise group commit; namespaces spread the devices.
    let mut tasks = Vec::new();
    for worker in 0..64 {
        let reg = Arc::clone(&reg);
        tasks.push(tokio::spawn(async move {
            for i in (worker..N).step_by(64) {
                let ns = ["hub-a", "hub-b", "hub-c"][i % 3];
                reg.write_identity(write_for(&format!("dev-{i:05}"), ns, None))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(reg.count_registrations().await.unwrap(), N as u64);

    // Registrations: ordered, complete, no duplicates, pages of at most `limit`.
    let mut seen = Vec::with_capacity(N);
    let mut after: Option<String> = None;
    loop {
        let page = reg
            .list_registrations(after.as_deref(), 1500)
            .await
            .unwrap();
        assert!(page.items.len() <= 1000, "clamped to MAX_PAGE_SIZE");
        seen.extend(page.items.iter().map(|r| r.registration_id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), N);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "strictly ordered");

    // Devices of one namespace.
    let mut in_b = 0;
    let mut after: Option<String> = None;
    loop {
        let page = reg
            .list_devices(Some("hub-b"), after.as_deref(), 700)
            .await
            .unwrap();
        assert!(page.items.iter().all(|d| d.namespace == "hub-b"));
        in_b += page.items.len();
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(in_b, (0..N).filter(|i| i % 3 == 1).count());

    // All devices across namespaces, ordered by (namespace, id).
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = reg
            .list_devices(None, after.as_deref(), 1000)
            .await
            .unwrap();
        all.extend(
            page.items
                .iter()
                .map(|d| (d.namespace.clone(), d.device_id.clone())),
        );
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(all.len(), N);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), N);

    // A token from another namespace is refused.
    let err = reg
        .list_devices(Some("hub-a"), Some("hub-b/dev-00001"), 10)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(_)), "{err}");
    // The last page has no continuation.
    let tail = reg.list_registrations(Some("dev-19998"), 10).await.unwrap();
    assert_eq!(tail.items.len(), 1);
    assert!(tail.next.is_none());
}

#[tokio::test]
async fn non_durable_mode_still_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let reg = EmbeddedRegistry::open_with(
        dir.path().join("fast.redb"),
        EmbeddedOptions {
            durable: false,
            ..EmbeddedOptions::default()
        },
    )
    .unwrap();
    reg.write_identity(write_for("fast", "hub-a", None))
        .await
        .unwrap();
    assert!(reg.get_registration("fast").await.unwrap().is_some());
}
