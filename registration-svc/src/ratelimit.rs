//! Rate limits per registration ID and global.
//!
//! Each limit is a token bucket, implemented as GCRA (the "generic cell rate algorithm": one
//! timestamp per bucket, the theoretical arrival time). A [`Quota`] of `burst` requests per
//! `period` lets `burst` requests through at once and refills one every `period / burst`.
//! A refused request gets [`RetryAfter`] with the time until it would pass.
//!
//! Per-ID buckets live in a sharded map bounded by [`RateLimitConfig::max_tracked_ids`]. A
//! bucket that has refilled completely carries no information, so when a shard is full the
//! limiter first drops those; if a flood of distinct IDs keeps every bucket busy it drops the
//! half closest to full. Memory therefore stays bounded whatever IDs clients send, and the
//! worst an attacker achieves by churning IDs is resetting other IDs' buckets — the global
//! limit still holds.
//!
//! Time comes from `tokio::time::Instant`, so tests can pause and advance it; every check
//! also has a `*_at(now)` form taking the time explicitly.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

const SHARDS: usize = 16;
/// Keys longer than this are stored as their SHA-256, so junk keys cannot inflate memory.
const MAX_KEY_LEN: usize = 128;

/// `burst` requests per `period`: up to `burst` at once, then one per `period / burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Bucket size (requests allowed back to back). At least 1.
    pub burst: u32,
    /// Time to refill the whole bucket. Must be positive.
    pub period: Duration,
}

impl Quota {
    /// `burst` requests per `period` (`burst` is raised to 1, `period` to 1 ms).
    pub const fn new(burst: u32, period: Duration) -> Self {
        Self { burst, period }
    }

    /// `n` requests per minute.
    pub const fn per_minute(n: u32) -> Self {
        Self::new(n, Duration::from_secs(60))
    }

    /// `n` requests per second.
    pub const fn per_second(n: u32) -> Self {
        Self::new(n, Duration::from_secs(1))
    }

    /// DPS's device polling limit: 5 status polls per 10 s per device.
    pub const DPS_STATUS_POLLS: Quota = Quota::new(5, Duration::from_secs(10));

    fn params(self) -> Gcra {
        let burst = self.burst.max(1);
        let period = self.period.max(Duration::from_millis(1));
        let interval = period / burst;
        Gcra {
            interval,
            tolerance: interval * (burst - 1),
        }
    }
}

/// Limiter configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Limit for each registration ID; `None` for none.
    pub per_id: Option<Quota>,
    /// Limit for all requests together; `None` for none.
    pub global: Option<Quota>,
    /// Most per-ID buckets kept (about 100 bytes each). At least 16.
    pub max_tracked_ids: usize,
}

impl Default for RateLimitConfig {
    /// 10 registrations per minute per ID, no global limit, 100 000 tracked IDs.
    fn default() -> Self {
        Self {
            per_id: Some(Quota::per_minute(10)),
            global: None,
            max_tracked_ids: 100_000,
        }
    }
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    /// The limit of this registration ID.
    RegistrationId,
    /// The service-wide limit.
    Global,
}

impl std::fmt::Display for LimitScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RegistrationId => "for this registration ID",
            Self::Global => "for the service",
        })
    }
}

/// A refused request: try again after `after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many requests {scope}; retry after {} s", self.retry_after_secs())]
pub struct RetryAfter {
    /// Time until the request would be allowed.
    pub after: Duration,
    /// The limit that refused it.
    pub scope: LimitScope,
}

impl RetryAfter {
    /// Whole seconds for a `Retry-After` header: rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.after.as_secs() + u64::from(self.after.subsec_nanos() > 0);
        secs.max(1)
    }

    /// DPS error code (429 "too many requests").
    pub fn dps_error_code(&self) -> u32 {
        429_001
    }

    /// gRPC status code.
    pub fn grpc_code(&self) -> tonic::Code {
        tonic::Code::ResourceExhausted
    }
}

#[derive(Clone, Copy, Debug)]
struct Gcra {
    /// Time one request "costs".
    interval: Duration,
    /// How far the theoretical arrival time may run ahead of now (burst - 1 intervals).
    tolerance: Duration,
}

impl Gcra {
    /// The new theoretical arrival time if a request at `now` is allowed, else the wait.
    fn check(&self, tat: Option<Instant>, now: Instant) -> Result<Instant, Duration> {
        let tat = tat.map_or(now, |t| t.max(now));
        let ahead = tat.saturating_duration_since(now);
        if ahead > self.tolerance {
            Err(ahead - self.tolerance)
        } else {
            Ok(tat + self.interval)
        }
    }
}

struct Shard {
    tats: HashMap<Box<str>, Instant>,
}

/// Rate limiter over registration IDs and the whole service. Thread-safe; share it behind an
/// `Arc`.
pub struct RateLimiter {
    per_id: Option<Gcra>,
    global: Option<(Gcra, Mutex<Option<Instant>>)>,
    shards: Vec<Mutex<Shard>>,
    shard_capacity: usize,
    hasher: RandomState,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_id", &self.per_id)
            .field("global", &self.global.as_ref().map(|(g, _)| g))
            .field("tracked_ids", &self.tracked_ids())
            .finish()
    }
}

impl RateLimiter {
    /// A limiter with `config`.
    pub fn new(config: RateLimitConfig) -> Self {
        let max = config.max_tracked_ids.max(SHARDS);
        Self {
            per_id: config.per_id.map(Quota::params),
            global: config.global.map(|q| (q.params(), Mutex::new(None))),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        tats: HashMap::new(),
                    })
                })
                .collect(),
            shard_capacity: max / SHARDS,
            hasher: RandomState::new(),
        }
    }

    /// The status-poll limiter: DPS's 5 polls per 10 s per device, no global limit.
    pub fn status_polls(max_tracked_ids: usize) -> Self {
        Self::new(RateLimitConfig {
            per_id: Some(Quota::DPS_STATUS_POLLS),
            global: None,
            max_tracked_ids,
        })
    }

    /// Admits or refuses one request for `registration_id` (ASCII case-insensitive) now.
    pub fn check(&self, registration_id: &str) -> Result<(), RetryAfter> {
        self.check_at(registration_id, Instant::now())
    }

    /// [`check`](Self::check) at an explicit time. A request refused by one limit consumes
    /// nothing from the other.
    pub fn check_at(&self, registration_id: &str, now: Instant) -> Result<(), RetryAfter> {
        let Some(per_id) = self.per_id else {
            return self.check_global(now);
        };
        let key = normalize_key(registration_id);
        let shard_index = (self.hasher.hash_one(&*key) as usize) % SHARDS;
        let Some(shard) = self.shards.get(shard_index) else {
            return self.check_global(now);
        };
        let mut shard = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let new_tat = per_id
            .check(shard.tats.get(&*key).copied(), now)
            .map_err(|after| RetryAfter {
                after,
                scope: LimitScope::RegistrationId,
            })?;
        self.check_global(now)?;
        if !shard.tats.contains_key(&*key) && shard.tats.len() >= self.shard_capacity {
            evict(&mut shard.tats, now);
        }
        shard.tats.insert(key, new_tat);
        Ok(())
    }

    fn check_global(&self, now: Instant) -> Result<(), RetryAfter> {
        let Some((gcra, tat)) = &self.global else {
            return Ok(());
        };
        let mut tat = tat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let new_tat = gcra.check(*tat, now).map_err(|after| RetryAfter {
            after,
            scope: LimitScope::Global,
        })?;
        *tat = Some(new_tat);
        Ok(())
    }

    /// Number of per-ID buckets currently held.
    pub fn tracked_ids(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .tats
                    .len()
            })
            .sum()
    }
}

fn normalize_key(id: &str) -> Box<str> {
    if id.len() > MAX_KEY_LEN {
        let digest = Sha256::digest(id.to_ascii_lowercase().as_bytes());
        format!("#{}", hex::encode(digest)).into_boxed_str()
    } else {
        id.to_ascii_lowercase().into_boxed_str()
    }
}

/// Frees room in a full shard: drop the buckets that are full again (their state equals no
/// entry); if that frees less than a quarter, drop the half that is closest to full.
fn evict(tats: &mut HashMap<Box<str>, Instant>, now: Instant) {
    let before = tats.len();
    tats.retain(|_, tat| *tat > now);
    if tats.len() > before - before / 4 {
        let mut times: Vec<Instant> = tats.values().copied().collect();
        let half = times.len() / 2;
        if half > 0 {
            let (_, cutoff, _) = times.select_nth_unstable(half);
            let cutoff = *cutoff;
            tats.retain(|_, tat| *tat > cutoff);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limiter(per_id: Option<Quota>, global: Option<Quota>, max: usize) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            per_id,
            global,
            max_tracked_ids: max,
        })
    }

    #[test]
    fn per_id_burst_then_refill() {
        let l = limiter(Some(Quota::new(3, Duration::from_secs(3))), None, 1000);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check_at("dev", t0).unwrap();
        }
        let err = l.check_at("dev", t0).unwrap_err();
        assert_eq!(err.scope, LimitScope::RegistrationId);
        assert_eq!(err.after, Duration::from_secs(1));
        assert_eq!(err.retry_after_secs(), 1);
        // Case-insensitive: the same device.
        assert!(l.check_at("DEV", t0).is_err());
        // Another device is unaffected.
        l.check_at("other", t0).unwrap();
        // Not yet...
        let e = l
            .check_at("dev", t0 + Duration::from_millis(400))
            .unwrap_err();
        assert_eq!(e.after, Duration::from_millis(600));
        // ... one token after 1 s, exactly one.
        l.check_at("dev", t0 + Duration::from_secs(1)).unwrap();
        assert!(l.check_at("dev", t0 + Duration::from_secs(1)).is_err());
        // Fully refilled after the whole period.
        let t1 = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            l.check_at("dev", t1).unwrap();
        }
        assert!(l.check_at("dev", t1).is_err());
    }

    #[test]
    fn global_limit_and_no_double_charge() {
        let l = limiter(
            Some(Quota::new(1, Duration::from_secs(60))),
            Some(Quota::new(3, Duration::from_secs(1))),
            1000,
        );
        let t0 = Instant::now();
        l.check_at("a", t0).unwrap();
        // Refused per ID: must not consume a global token.
        for _ in 0..10 {
            assert_eq!(
                l.check_at("a", t0).unwrap_err().scope,
                LimitScope::RegistrationId
            );
        }
        l.check_at("b", t0).unwrap();
        l.check_at("c", t0).unwrap();
        let e = l.check_at("d", t0).unwrap_err();
        assert_eq!(e.scope, LimitScope::Global);
        assert!(e.after > Duration::ZERO && e.after <= Duration::from_millis(334));
        // Refused globally: "d" keeps its own token for later.
        l.check_at("d", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(e.dps_error_code(), 429_001);
        assert_eq!(e.grpc_code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn status_polls_follow_dps() {
        let l = RateLimiter::status_polls(1000);
        let t0 = Instant::now();
        for _ in 0..5 {
            l.check_at("dev", t0).unwrap();
        }
        let e = l.check_at("dev", t0).unwrap_err();
        assert_eq!(e.after, Duration::from_secs(2));
        assert_eq!(e.retry_after_secs(), 2);
        // 5 per 10 s sustained: one every 2 s.
        l.check_at("dev", t0 + Duration::from_secs(2)).unwrap();
        assert!(l.check_at("dev", t0 + Duration::from_secs(3)).is_err());
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_ids() {
        let l = limiter(Some(Quota::new(2, Duration::from_secs(60))), None, 1600);
        let t0 = Instant::now();
        // All buckets busy (not refilled): eviction must still bound the map.
        for i in 0..100_000 {
            l.check_at(&format!("random-{i}"), t0 + Duration::from_micros(i))
                .unwrap();
            if i % 1000 == 0 {
                assert!(l.tracked_ids() <= 1600);
            }
        }
        assert!(l.tracked_ids() <= 1600, "{}", l.tracked_ids());
        // Idle buckets are the first to go: after a quiet minute, a new wave replaces them.
        let later = t0 + Duration::from_secs(3600);
        for i in 0..5000 {
            l.check_at(&format!("wave2-{i}"), later).unwrap();
        }
        assert!(l.tracked_ids() <= 1600);
        // A device being limited right now keeps its state while idle entries are evicted.
        let l = limiter(Some(Quota::new(2, Duration::from_secs(60))), None, 160);
        let base = Instant::now() + Duration::from_secs(10_000);
        for i in 0..10_000 {
            l.check_at(&format!("junk-{i}"), base).unwrap();
        }
        let busy_at = base + Duration::from_secs(40);
        l.check_at("busy", busy_at).unwrap();
        l.check_at("busy", busy_at).unwrap();
        assert!(l.check_at("busy", busy_at).is_err());
        for i in 0..10_000 {
            l.check_at(&format!("junk2-{i}"), busy_at).unwrap();
        }
        assert!(l.tracked_ids() <= 160);
        assert!(
            l.check_at("busy", busy_at).is_err(),
            "busy bucket was evicted"
        );
        // Very long keys are stored hashed.
        let long = "x".repeat(10_000);
        l.check_at(&long, busy_at).unwrap();
        l.check_at(&long, busy_at).unwrap();
        assert!(l.check_at(&long, busy_at).is_err());
        assert!(
            l.check_at(&"X".repeat(10_000), busy_at).is_err(),
            "case-insensitive"
        );
    }

    #[test]
    fn disabled_limits_allow_everything() {
        let l = limiter(None, None, 16);
        let t0 = Instant::now();
        for _ in 0..1000 {
            l.check_at("dev", t0).unwrap();
        }
        assert_eq!(l.tracked_ids(), 0);
    }

    #[test]
    fn retry_after_rounds_up() {
        let r = |ms| RetryAfter {
            after: Duration::from_millis(ms),
            scope: LimitScope::Global,
        };
        assert_eq!(r(1).retry_after_secs(), 1);
        assert_eq!(r(1000).retry_after_secs(), 1);
        assert_eq!(r(1001).retry_after_secs(), 2);
        assert_eq!(r(0).retry_after_secs(), 1);
        assert!(r(1500).to_string().contains("retry after 2 s"));
    }
}
