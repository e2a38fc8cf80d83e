//! API keys: made, hashed, looked up (with a short cache), and rate limits per tenant.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use forklift::{Store, TenantId};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};

use crate::http::error::ApiError;

/// A new API key: shown once, then only its hash is kept.
pub struct NewKey {
    /// `fk_<prefix>_<secret>`: give this to the client.
    pub key: String,
    /// Tells keys apart in listings and logs without revealing them.
    pub prefix: String,
    pub hash: String,
}

/// Makes a key with 128 random bits of secret. SHA-256 suffices to store it: the secret
/// is random, not a password, so there is nothing for a slow hash to protect.
pub fn new_key() -> NewKey {
    let prefix = hex::encode(rand::random::<[u8; 4]>());
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let key = format!("fk_{prefix}_{secret}");
    let hash = hash_key(&key);
    NewKey { key, prefix, hash }
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Creates a key for `tenant` in the store and returns it (the only time it is seen).
pub async fn issue_key(store: &dyn Store, tenant: TenantId) -> forklift::Result<NewKey> {
    let key = new_key();
    store.api_key_insert(tenant, &key.prefix, &key.hash).await?;
    Ok(key)
}

/// Whether `key` has the shape [`new_key`] gives (`fk_`, 8 hex, `_`, 32 hex): anything
/// else cannot be a key, and is refused without a database look-up.
pub fn is_well_formed(key: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match key
        .strip_prefix("fk_")
        .and_then(|rest| rest.split_once('_'))
    {
        Some((prefix, secret)) => hex(prefix, 8) && hex(secret, 32),
        None => false,
    }
}

/// The most entries each of the hit and miss caches holds before it starts over.
const CACHE_ENTRIES: usize = 10_000;

/// Database look-ups of keys at once; more callers wait. Requests with keys nobody has
/// seen (a flood of made-up keys) use at most this many of the API's connections.
const CONCURRENT_LOOKUPS: usize = 4;

/// How long a request waits for its turn to look a key up before it is answered 503.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// Finds the tenant of a key. Answers are cached for `ttl` (default 10 s), misses as well
/// as hits, so a revoked key stops working within that time, and a flood of requests with
/// one unknown key costs one look-up per `ttl`. Malformed keys are refused without a
/// look-up, and at most [`CONCURRENT_LOOKUPS`] run at once.
pub struct KeyCache {
    store: Arc<dyn Store>,
    ttl: Duration,
    answers: Mutex<Answers>,
    lookups: tokio::sync::Semaphore,
}

#[derive(Default)]
struct Answers {
    hits: HashMap<String, (TenantId, Instant)>,
    misses: HashMap<String, Instant>,
}

impl KeyCache {
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        KeyCache {
            store,
            ttl,
            answers: Mutex::default(),
            lookups: tokio::sync::Semaphore::new(CONCURRENT_LOOKUPS),
        }
    }

    pub async fn tenant_of(&self, key: &str) -> Result<Option<TenantId>, ApiError> {
        if !is_well_formed(key) {
            return Ok(None);
        }
        let hash = hash_key(key);
        if let Some(known) = self.cached(&hash) {
            return Ok(known);
        }
        let _turn = match tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire()).await {
            Ok(turn) => turn.expect("the semaphore is never closed"),
            Err(_) => {
                // Look-ups are backed up (a flood of made-up keys): a key that was valid a
                // moment ago (at most three TTLs) goes on with that answer; anyone else is
                // asked to retry.
                if let Some(tenant) = self.last_hit(&hash) {
                    return Ok(Some(tenant));
                }
                return Err(ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        "too many API keys are being checked; try again",
                    )
                });
            }
        };
        // Another caller may have looked the same key up while this one waited.
        if let Some(known) = self.cached(&hash) {
            return Ok(known);
        }
        let tenant = self.store.api_key_tenant(&hash).await?;
        let mut answers = self.answers.lock().unwrap();
        match tenant {
            Some(t) => {
                if answers.hits.len() >= CACHE_ENTRIES {
                    answers.hits.clear(); // bounded memory; the next requests refill it
                }
                answers.hits.insert(hash, (t, Instant::now()));
            }
            None => {
                if answers.misses.len() >= CACHE_ENTRIES {
                    answers.misses.clear();
                }
                answers.misses.insert(hash, Instant::now());
            }
        }
        Ok(tenant)
    }

    /// The last tenant found for a key's hash, if at most three TTLs old: long enough to
    /// ride out a burst of look-ups, short enough that a flood cannot keep a revoked key
    /// working.
    fn last_hit(&self, hash: &str) -> Option<TenantId> {
        let answers = self.answers.lock().unwrap();
        let (tenant, at) = answers.hits.get(hash)?;
        (at.elapsed() < self.ttl * 3).then_some(*tenant)
    }

    /// The cached answer for a key's hash, if still fresh: `Some(None)` is a cached miss.
    fn cached(&self, hash: &str) -> Option<Option<TenantId>> {
        let answers = self.answers.lock().unwrap();
        if let Some((tenant, at)) = answers.hits.get(hash)
            && at.elapsed() < self.ttl
        {
            return Some(Some(*tenant));
        }
        match answers.misses.get(hash) {
            Some(at) if at.elapsed() < self.ttl => Some(None),
            _ => None,
        }
    }
}

/// A token bucket per tenant: `per_second` requests on average, bursts of `burst`.
pub struct Limiter {
    inner: Option<DefaultKeyedRateLimiter<TenantId>>,
}

impl Limiter {
    /// `per_second` 0 turns limiting off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let inner = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Limiter { inner }
    }

    pub fn check(&self, tenant: TenantId) -> Result<(), ApiError> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        limiter.check_key(&tenant).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            ApiError {
                retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests for this tenant; slow down",
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_hash_stably() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a.key, b.key);
        assert!(a.key.starts_with(&format!("fk_{}_", a.prefix)));
        assert_eq!(a.key.len(), 3 + 8 + 1 + 32);
        assert_eq!(hash_key(&a.key), a.hash);
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn only_keys_of_the_issued_shape_are_well_formed() {
        assert!(is_well_formed(&new_key().key));
        for bad in [
            "",
            "fk_",
            "fk_0123abcd",
            "fk_0123abcd_",
            "fk_0123abcg_0123456789abcdef0123456789abcdef",
            "fk_0123abcd_0123456789abcdef0123456789abcde",
            "xx_0123abcd_0123456789abcdef0123456789abcdef",
        ] {
            assert!(!is_well_formed(bad), "{bad}");
        }
    }

    #[test]
    fn limiter_refuses_past_the_burst_with_a_retry_after() {
        let limiter = Limiter::new(1, 2);
        let t = TenantId::DEFAULT;
        assert!(limiter.check(t).is_ok() && limiter.check(t).is_ok());
        let err = limiter.check(t).unwrap_err();
        assert_eq!(
            (err.status, err.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(1))
        );
        assert!(
            limiter.check(TenantId(uuid::Uuid::new_v4())).is_ok(),
            "other tenants have their own bucket"
        );
    }

    #[test]
    fn zero_rate_turns_limiting_off() {
        let limiter = Limiter::new(0, 0);
        assert!((0..10_000).all(|_| limiter.check(TenantId::DEFAULT).is_ok()));
    }
}
