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

/// Finds the tenant of a key. Hits are cached for `ttl` (default 10 s), so a revoked key
/// stops working within that time; misses are not cached.
pub struct KeyCache {
    store: Arc<dyn Store>,
    ttl: Duration,
    hits: Mutex<HashMap<String, (TenantId, Instant)>>,
}

impl KeyCache {
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        KeyCache {
            store,
            ttl,
            hits: Mutex::default(),
        }
    }

    pub async fn tenant_of(&self, key: &str) -> Result<Option<TenantId>, ApiError> {
        let hash = hash_key(key);
        if let Some((tenant, at)) = self.hits.lock().unwrap().get(&hash).copied()
            && at.elapsed() < self.ttl
        {
            return Ok(Some(tenant));
        }
        let tenant = self.store.api_key_tenant(&hash).await?;
        let mut hits = self.hits.lock().unwrap();
        if hits.len() > 10_000 {
            hits.clear(); // bounded memory; the next requests refill it
        }
        if let Some(t) = tenant {
            hits.insert(hash, (t, Instant::now()));
        }
        Ok(tenant)
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
