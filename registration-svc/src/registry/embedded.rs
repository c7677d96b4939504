//! The embedded registry: one [redb] file, ACID, for `standalone` mode.
//!
//! Tables (keys are redb tuples of strings, values compact JSON):
//!
//! | table           | key                          | value                        |
//! |-----------------|------------------------------|------------------------------|
//! | `registrations` | canonical registration ID    | [`RegistrationRecord`]       |
//! | `devices`       | (namespace, device ID)       | [`DeviceRecord`]             |
//! | `secrets`       | (namespace, Secret name)     | the two keys, base64         |
//! | `meta`          | `"schema_version"`           | `u64`                        |
//!
//! Nothing is cached in memory beyond redb's page cache, so the store holds millions of
//! devices in bounded RAM; listings page through key ranges.
//!
//! # Atomicity and write order
//!
//! Each [`write_identity`](Registry::write_identity) runs entirely inside one redb write
//! transaction, so a crash leaves either all of Secret, Device and registration or none of
//! them: the embedded backend gets the crash safety the Kubernetes backend has to earn through
//! ordering and idempotence for free. It still performs the writes in the same logical order
//! (Secret → Device → retire previous Device → registration), so both backends behave alike.
//!
//! # Threads and group commit
//!
//! redb calls block, so they never run on the async executor. Reads run on
//! `tokio::task::spawn_blocking` under MVCC read transactions (they never wait for the
//! writer). Writes go to one dedicated writer thread, which drains every write that is queued
//! when it starts a transaction (up to [`EmbeddedOptions::max_batch`]) and applies them in a
//! single transaction and a single fsync ("group commit"). Each write is still checked and
//! applied on its own — its etag precondition sees the writes queued before it — and its
//! caller gets its result only after the commit is durable. A storage failure fails the whole
//! batch (nothing of it is committed), which callers see as a retryable
//! [`RegistryError::Storage`].

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jiff::Timestamp;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    Table, TableDefinition,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{
    BoxFuture, DeviceRecord, DeviceRef, DeviceSecret, IdentityWrite, MAX_PAGE_SIZE, Page,
    RegistrationRecord, Registry, RegistryError, canonical_registration_id, validate_failure,
};

/// File name of the store inside the `--data` directory.
pub const DEFAULT_FILE_NAME: &str = "registry.redb";

/// Default page-cache bound: 64 MiB (redb's own default is 1 GiB, which alone would break
/// the 512 MiB memory target for a million devices).
pub const DEFAULT_CACHE_SIZE: usize = 64 * 1024 * 1024;

const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REGISTRATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("registrations");
const DEVICES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("devices");
const SECRETS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("secrets");

/// Tuning of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Upper bound of redb's page cache (read cache plus write buffer) in bytes; default
    /// [`DEFAULT_CACHE_SIZE`]. redb reads the file with `pread`, so pages that fall out of
    /// this cache are usually still in the OS page cache, which does not count against the
    /// process's memory.
    pub cache_size: usize,
    /// fsync every commit (default `true`). `false` uses `Durability::None`: commits survive a
    /// process crash only if a later durable commit follows, and are lost on power loss —
    /// only for benchmarks and throwaway stores.
    pub durable: bool,
    /// Largest number of queued writes committed in one transaction (default 256).
    pub max_batch: usize,
    /// Depth of the write queue before writers wait (default 4096).
    pub queue_depth: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            cache_size: DEFAULT_CACHE_SIZE,
            durable: true,
            max_batch: 256,
            queue_depth: 4096,
        }
    }
}

/// Space accounting of an [`EmbeddedRegistry`] (see redb's `DatabaseStats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreStats {
    /// Size of the file on disk.
    pub file_bytes: u64,
    /// Bytes of keys and values.
    pub stored_bytes: u64,
    /// Bytes of B-tree structure (branch pages, per-page headers).
    pub metadata_bytes: u64,
    /// Bytes allocated in pages but unused (slack inside partly filled pages).
    pub fragmented_bytes: u64,
    /// Height of the tallest B-tree.
    pub tree_height: u32,
}

/// The redb-backed [`Registry`]. Cheap to share behind an `Arc`; dropping it waits for the
/// queued writes and closes the file.
pub struct EmbeddedRegistry {
    db: Arc<Database>,
    path: PathBuf,
    writer: Option<mpsc::Sender<WriteJob>>,
    writer_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedRegistry")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

enum WriteOp {
    Identity(Box<IdentityWrite>),
    Failure {
        registration: Box<RegistrationRecord>,
        expected_etag: Option<String>,
    },
}

struct WriteJob {
    op: WriteOp,
    reply: oneshot::Sender<Result<RegistrationRecord, RegistryError>>,
}

/// On-disk form of a Secret: keys base64-encoded, name and namespace in the key.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredSecret {
    primary_key: String,
    secondary_key: String,
}

fn storage(operation: &'static str) -> impl Fn(&dyn std::fmt::Display) -> RegistryError {
    move |e| RegistryError::Storage {
        operation,
        message: e.to_string(),
    }
}

macro_rules! st {
    ($op:expr, $e:expr) => {
        $e.map_err(|e| storage($op)(&e))
    };
}

impl EmbeddedRegistry {
    /// Opens (or creates) the store at `path` with default options. Blocking: call it at
    /// start-up or inside `spawn_blocking`. Fails if another process has the file open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RegistryError> {
        Self::open_with(path, EmbeddedOptions::default())
    }

    /// Opens (or creates) the store at `path`. A new file is created with mode 0600: it holds
    /// device keys.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: EmbeddedOptions,
    ) -> Result<Self, RegistryError> {
        let path = path.as_ref().to_path_buf();
        create_private_file(&path)?;
        let mut builder = Database::builder();
        builder.set_cache_size(options.cache_size);
        let db = builder.create(&path).map_err(|e| RegistryError::Storage {
            operation: "open",
            message: format!("{}: {e}", path.display()),
        })?;
        init_schema(&db)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
        let writer_db = Arc::clone(&db);
        let max_batch = options.max_batch.max(1);
        let durable = options.durable;
        let writer_thread = std::thread::Builder::new()
            .name("kdps-registry-writer".into())
            .spawn(move || writer_loop(&writer_db, rx, max_batch, durable))
            .map_err(|e| storage("start writer thread")(&e))?;
        Ok(Self {
            db,
            path,
            writer: Some(tx),
            writer_thread: Some(writer_thread),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Space accounting of the store (for metrics and `docs/storage.md`). Briefly takes the
    /// write lock, between two group commits.
    pub async fn stats(&self) -> Result<StoreStats, RegistryError> {
        let db = Arc::clone(&self.db);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let op = "stats";
            let file_bytes = std::fs::metadata(&path).map_err(|e| storage(op)(&e))?.len();
            let txn = st!(op, db.begin_write())?;
            let stats = st!(op, txn.stats())?;
            st!(op, txn.abort())?;
            Ok(StoreStats {
                file_bytes,
                stored_bytes: stats.stored_bytes(),
                metadata_bytes: stats.metadata_bytes(),
                fragmented_bytes: stats.fragmented_bytes(),
                tree_height: stats.tree_height(),
            })
        })
        .await
        .map_err(|e| storage("stats")(&e))?
    }

    fn submit(&self, op: WriteOp) -> BoxFuture<'_, Result<RegistrationRecord, RegistryError>> {
        Box::pin(async move {
            let closed = || RegistryError::Storage {
                operation: "write",
                message: "the registry writer has stopped".into(),
            };
            let writer = self.writer.as_ref().ok_or_else(closed)?;
            let (reply, rx) = oneshot::channel();
            writer
                .send(WriteJob { op, reply })
                .await
                .map_err(|_| closed())?;
            rx.await.map_err(|_| closed())?
        })
    }

    fn read<T, F>(&self, operation: &'static str, f: F) -> BoxFuture<'_, Result<T, RegistryError>>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, RegistryError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let txn = st!(operation, db.begin_read())?;
                f(&txn)
            })
            .await
            .map_err(|e| storage(operation)(&e))?
        })
    }

    /// A point read (one key) run on the calling task. Such a read takes microseconds (an
    /// MVCC snapshot and one B-tree descent, from redb's cache or the OS page cache), less
    /// than handing it to the blocking pool and back, which costs two thread wake-ups per
    /// read (found profiling `bench/`; see BENCHMARKS.md). Listings stay on [`Self::read`].
    fn read_point<T, F>(
        &self,
        operation: &'static str,
        f: F,
    ) -> BoxFuture<'_, Result<T, RegistryError>>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, RegistryError> + Send + 'static,
    {
        Box::pin(async move {
            let txn = st!(operation, self.db.begin_read())?;
            f(&txn)
        })
    }
}

impl Drop for EmbeddedRegistry {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit; joining it makes
        // sure the file is closed when drop returns, so it can be reopened at once.
        self.writer.take();
        if let Some(handle) = self.writer_thread.take()
            && handle.join().is_err()
        {
            tracing::error!("registry writer thread panicked");
        }
    }
}

fn create_private_file(path: &Path) -> Result<(), RegistryError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .map(drop)
        .map_err(|e| RegistryError::Storage {
            operation: "open",
            message: format!("{}: {e}", path.display()),
        })
}

fn init_schema(db: &Database) -> Result<(), RegistryError> {
    let op = "initialise schema";
    let txn = st!(op, db.begin_write())?;
    {
        let mut meta = st!(op, txn.open_table(META))?;
        let stored = st!(op, meta.get("schema_version"))?.map(|v| v.value());
        match stored {
            None => {
                st!(op, meta.insert("schema_version", SCHEMA_VERSION))?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(RegistryError::Corrupt {
                    key: "meta/schema_version".into(),
                    reason: format!(
                        "schema version {other} is not supported (this build reads version {SCHEMA_VERSION})"
                    ),
                });
            }
        }
        st!(op, txn.open_table(REGISTRATIONS))?;
        st!(op, txn.open_table(DEVICES))?;
        st!(op, txn.open_table(SECRETS))?;
    }
    st!(op, txn.commit())
}

fn decode<T: serde::de::DeserializeOwned>(key: String, bytes: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Corrupt {
        key,
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(value).map_err(|e| RegistryError::Invalid(format!("cannot encode: {e}")))
}

fn new_etag() -> String {
    B64.encode(format!("\"{}\"", uuid::Uuid::new_v4()))
}

fn decode_secret(namespace: &str, name: &str, bytes: &[u8]) -> Result<DeviceSecret, RegistryError> {
    let key = format!("secrets/{namespace}/{name}");
    let stored: StoredSecret = decode(key.clone(), bytes)?;
    let corrupt = |what: &str| RegistryError::Corrupt {
        key: key.clone(),
        reason: format!("{what} is not valid base64"),
    };
    Ok(DeviceSecret {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        primary_key: B64
            .decode(&stored.primary_key)
            .map_err(|_| corrupt("primaryKey"))?,
        secondary_key: B64
            .decode(&stored.secondary_key)
            .map_err(|_| corrupt("secondaryKey"))?,
    })
}

// ---------------------------------------------------------------------------------------------
// Writer

fn writer_loop(db: &Database, mut rx: mpsc::Receiver<WriteJob>, max_batch: usize, durable: bool) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let results = run_batch(db, &jobs, durable);
        for (job, result) in jobs.into_iter().zip(results) {
            // The caller may have given up (future dropped); the write stands regardless.
            let _ = job.reply.send(result);
        }
    }
}

struct Tables<'txn> {
    registrations: Table<'txn, &'static str, &'static [u8]>,
    devices: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    secrets: Table<'txn, (&'static str, &'static str), &'static [u8]>,
}

/// Applies `jobs` in one transaction; one result per job. A storage error aborts the
/// transaction and is reported to every job.
fn run_batch(
    db: &Database,
    jobs: &[WriteJob],
    durable: bool,
) -> Vec<Result<RegistrationRecord, RegistryError>> {
    let fail_all = |e: RegistryError| jobs.iter().map(|_| Err(e.clone())).collect::<Vec<_>>();
    let op = "write";
    let mut txn = match st!(op, db.begin_write()) {
        Ok(txn) => txn,
        Err(e) => return fail_all(e),
    };
    if !durable && let Err(e) = st!(op, txn.set_durability(Durability::None)) {
        return fail_all(e);
    }
    let applied = (|| {
        let mut tables = Tables {
            registrations: st!(op, txn.open_table(REGISTRATIONS))?,
            devices: st!(op, txn.open_table(DEVICES))?,
            secrets: st!(op, txn.open_table(SECRETS))?,
        };
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            results.push(apply(&mut tables, &job.op)?);
        }
        Ok::<_, RegistryError>(results)
    })();
    match applied {
        Ok(results) => match st!("commit", txn.commit()) {
            Ok(()) => results,
            Err(e) => fail_all(e),
        },
        Err(e) => {
            // Dropping would abort too; abort explicitly to surface nothing half-written.
            if let Err(abort) = txn.abort() {
                tracing::warn!(error = %abort, "aborting registry transaction failed");
            }
            fail_all(e)
        }
    }
}

/// One write inside the batch transaction. The outer error is a storage failure that aborts
/// the batch; the inner result is this job's outcome. All checks happen before the first
/// insert, so a job that fails its checks leaves nothing behind.
fn apply(
    t: &mut Tables<'_>,
    op: &WriteOp,
) -> Result<Result<RegistrationRecord, RegistryError>, RegistryError> {
    let (registration, expected_etag, identity) = match op {
        WriteOp::Identity(w) => {
            if let Err(e) = w.validate() {
                return Ok(Err(e));
            }
            (&w.registration, &w.expected_etag, Some(w.as_ref()))
        }
        WriteOp::Failure {
            registration,
            expected_etag,
        } => {
            if let Err(e) = validate_failure(registration) {
                return Ok(Err(e));
            }
            (registration.as_ref(), expected_etag, None)
        }
    };
    let id = canonical_registration_id(&registration.registration_id);
    let stored: Option<RegistrationRecord> = match st!("read", t.registrations.get(id.as_str()))? {
        Some(guard) => match decode(format!("registrations/{id}"), guard.value()) {
            Ok(r) => Some(r),
            Err(e) => return Ok(Err(e)),
        },
        None => None,
    };
    let stored_etag = stored.as_ref().map(|r| r.etag.clone());
    if stored_etag != *expected_etag {
        return Ok(Err(RegistryError::Conflict {
            registration_id: id,
            expected: expected_etag.clone(),
            found: stored_etag,
        }));
    }

    // Prepare every value before the first insert.
    let now = Timestamp::now();
    let mut record = registration.clone();
    record.registration_id = id.clone();
    record.etag = new_etag();
    record.created_at = stored.as_ref().map_or(now, |r| r.created_at);
    record.updated_at = now;
    let record_bytes = match encode(&record) {
        Ok(b) => b,
        Err(e) => return Ok(Err(e)),
    };

    if let Some(w) = identity {
        let mut device = w.device.clone();
        device.registration.registration_id = id.clone();
        let device_bytes = match encode(&device) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        let secret_bytes = match &w.secret {
            Some(s) => match encode(&StoredSecret {
                primary_key: B64.encode(&s.primary_key),
                secondary_key: B64.encode(&s.secondary_key),
            }) {
                Ok(b) => Some(b),
                Err(e) => return Ok(Err(e)),
            },
            None => None,
        };
        let retired = match retire_previous(t, w.previous_device.as_ref(), &device) {
            Ok(r) => r,
            Err(RetireError::Storage(e)) => return Err(e),
            Err(RetireError::Job(e)) => return Ok(Err(e)),
        };

        // Secret → Device → retire previous Device → registration.
        if let (Some(s), Some(bytes)) = (&w.secret, &secret_bytes) {
            st!(
                "write secret",
                t.secrets
                    .insert((s.namespace.as_str(), s.name.as_str()), bytes.as_slice())
            )?;
        }
        st!(
            "write device",
            t.devices.insert(
                (device.namespace.as_str(), device.device_id.as_str()),
                device_bytes.as_slice()
            )
        )?;
        if let Some((prev, bytes)) = &retired {
            st!(
                "retire previous device",
                t.devices.insert(
                    (prev.namespace.as_str(), prev.device_id.as_str()),
                    bytes.as_slice()
                )
            )?;
        }
    }
    st!(
        "write registration",
        t.registrations.insert(id.as_str(), record_bytes.as_slice())
    )?;
    Ok(Ok(record))
}

enum RetireError {
    Storage(RegistryError),
    Job(RegistryError),
}

/// The previous Device, disabled and encoded, if there is one to retire.
fn retire_previous(
    t: &Tables<'_>,
    previous: Option<&DeviceRef>,
    new: &DeviceRecord,
) -> Result<Option<(DeviceRef, Vec<u8>)>, RetireError> {
    let Some(prev) = previous else {
        return Ok(None);
    };
    if prev.namespace == new.namespace && prev.device_id == new.device_id {
        return Ok(None);
    }
    let existing = t
        .devices
        .get((prev.namespace.as_str(), prev.device_id.as_str()))
        .map_err(|e| RetireError::Storage(storage("read previous device")(&e)))?;
    let Some(guard) = existing else {
        return Ok(None);
    };
    let mut old: DeviceRecord = decode(
        format!("devices/{}/{}", prev.namespace, prev.device_id),
        guard.value(),
    )
    .map_err(RetireError::Job)?;
    old.enabled = false;
    let bytes = encode(&old).map_err(RetireError::Job)?;
    Ok(Some((prev.clone(), bytes)))
}

// ---------------------------------------------------------------------------------------------
// Reads

fn clamp_limit(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE_SIZE)
}

/// Continuation token of a device listing: `namespace/deviceId` (namespaces never contain
/// `/`).
fn device_token(namespace: &str, device_id: &str) -> String {
    format!("{namespace}/{device_id}")
}

fn parse_device_token(token: &str) -> Result<(&str, &str), RegistryError> {
    token.split_once('/').ok_or_else(|| {
        RegistryError::Invalid(format!(
            "continuation token '{token}' is not of the form namespace/deviceId"
        ))
    })
}

impl Registry for EmbeddedRegistry {
    fn get_registration<'a>(
        &'a self,
        registration_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RegistrationRecord>, RegistryError>> {
        let id = canonical_registration_id(registration_id);
        self.read_point("get registration", move |txn| {
            let table = st!("get registration", txn.open_table(REGISTRATIONS))?;
            let found = st!("get registration", table.get(id.as_str()))?;
            found
                .map(|g| decode(format!("registrations/{id}"), g.value()))
                .transpose()
        })
    }

    fn write_identity(
        &self,
        write: IdentityWrite,
    ) -> BoxFuture<'_, Result<RegistrationRecord, RegistryError>> {
        self.submit(WriteOp::Identity(Box::new(write)))
    }

    fn record_failure(
        &self,
        registration: RegistrationRecord,
        expected_etag: Option<String>,
    ) -> BoxFuture<'_, Result<RegistrationRecord, RegistryError>> {
        self.submit(WriteOp::Failure {
            registration: Box::new(registration),
            expected_etag,
        })
    }

    fn get_device<'a>(
        &'a self,
        namespace: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<DeviceRecord>, RegistryError>> {
        let (ns, id) = (namespace.to_owned(), device_id.to_owned());
        self.read_point("get device", move |txn| {
            let table = st!("get device", txn.open_table(DEVICES))?;
            let found = st!("get device", table.get((ns.as_str(), id.as_str())))?;
            found
                .map(|g| decode(format!("devices/{ns}/{id}"), g.value()))
                .transpose()
        })
    }

    fn get_secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<DeviceSecret>, RegistryError>> {
        let (ns, name) = (namespace.to_owned(), name.to_owned());
        self.read_point("get secret", move |txn| {
            let table = st!("get secret", txn.open_table(SECRETS))?;
            let found = st!("get secret", table.get((ns.as_str(), name.as_str())))?;
            found
                .map(|g| decode_secret(&ns, &name, g.value()))
                .transpose()
        })
    }

    fn list_registrations<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<RegistrationRecord>, RegistryError>> {
        let after = after.map(str::to_owned);
        let limit = clamp_limit(limit);
        self.read("list registrations", move |txn| {
            let op = "list registrations";
            let table = st!(op, txn.open_table(REGISTRATIONS))?;
            let start = match &after {
                Some(a) => Bound::Excluded(a.as_str()),
                None => Bound::Unbounded,
            };
            let mut items = Vec::with_capacity(limit);
            let mut more = false;
            for entry in st!(op, table.range::<&str>((start, Bound::Unbounded)))? {
                let (k, v) = st!(op, entry)?;
                if items.len() == limit {
                    more = true;
                    break;
                }
                items.push(decode::<RegistrationRecord>(
                    format!("registrations/{}", k.value()),
                    v.value(),
                )?);
            }
            let next = if more {
                items.last().map(|r| r.registration_id.clone())
            } else {
                None
            };
            Ok(Page { items, next })
        })
    }

    fn list_devices<'a>(
        &'a self,
        namespace: Option<&'a str>,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<DeviceRecord>, RegistryError>> {
        let namespace = namespace.map(str::to_owned);
        let after = after.map(str::to_owned);
        let limit = clamp_limit(limit);
        self.read("list devices", move |txn| {
            let op = "list devices";
            let table = st!(op, txn.open_table(DEVICES))?;
            let cursor = after.as_deref().map(parse_device_token).transpose()?;
            if let (Some(ns), Some((token_ns, _))) = (&namespace, cursor)
                && ns != token_ns
            {
                return Err(RegistryError::Invalid(format!(
                    "continuation token is for namespace '{token_ns}', not '{ns}'"
                )));
            }
            let start = match (cursor, &namespace) {
                (Some(key), _) => Bound::Excluded(key),
                (None, Some(ns)) => Bound::Included((ns.as_str(), "")),
                (None, None) => Bound::Unbounded,
            };
            let mut items: Vec<DeviceRecord> = Vec::with_capacity(limit);
            let mut more = false;
            for entry in st!(op, table.range::<(&str, &str)>((start, Bound::Unbounded)))? {
                let (k, v) = st!(op, entry)?;
                let (ns, id) = k.value();
                if namespace.as_deref().is_some_and(|want| want != ns) {
                    break;
                }
                if items.len() == limit {
                    more = true;
                    break;
                }
                items.push(decode(format!("devices/{ns}/{id}"), v.value())?);
            }
            let next = if more {
                items
                    .last()
                    .map(|d| device_token(&d.namespace, &d.device_id))
            } else {
                None
            };
            Ok(Page { items, next })
        })
    }

    fn count_registrations(&self) -> BoxFuture<'_, Result<u64, RegistryError>> {
        self.read("count registrations", |txn| {
            let table = st!("count registrations", txn.open_table(REGISTRATIONS))?;
            st!("count registrations", table.len())
        })
    }
}
