//! HTTP Basic credentials verified recently: [`CredentialCache`], so that a desktop client's
//! hundreds of requests a minute cost one Argon2 hash, not hundreds. Pure bookkeeping under one
//! std mutex with the time passed in (unit-tested without a clock, like `limiter.rs`); it never
//! reads the store or logs.
//!
//! Invariants:
//! - No secret is kept: an entry is found by HMAC-SHA256, under a key drawn at random when the
//!   process starts, of the name and the secret. A memory dump shows neither, and the key dies
//!   with the process.
//! - An entry says *how* the credentials were verified ([`Via`]), and the caller re-reads the
//!   account on every hit and checks that this still holds: the same password hash, or the same
//!   app password still there. So a password change, a revoked app password or a removed
//!   account is refused at the next request, on every node, even one whose cache was not told.
//!   The service also drops an account's entries at once when it changes the account here.
//! - An entry lives [`CREDENTIAL_CACHE_TTL`] at most, and there are at most
//!   [`MAX_CACHED_CREDENTIALS`]; when full, the entry closest to expiry makes room. Entries are
//!   only added after a successful verification, so failed guesses cannot fill the cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;
use tandem_store::UserRecord;

use super::app_password;

/// How long verified credentials are trusted without hashing again. Short, so that the cache
/// is never the only thing between a changed password and its old value for long (the re-read
/// of the account on each hit already refuses changed credentials).
pub const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most cached credentials: a few per active client. About 150 bytes each.
pub const MAX_CACHED_CREDENTIALS: usize = 4096;

/// What a cached verification rested on, checked again against the account on every hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Via {
    /// The account password, when the account's password hash was this (SHA-256 of the PHC
    /// string).
    Password {
        /// SHA-256 of the stored PHC string.
        hash_sha256: [u8; 32],
    },
    /// The app password `id`, whose secret hashes to `secret_sha256`.
    AppPassword {
        /// Its id.
        id: String,
        /// SHA-256 of its secret, as stored.
        secret_sha256: [u8; 32],
    },
}

impl Via {
    /// The account password of `user`.
    pub(super) fn password(user: &UserRecord) -> Via {
        Via::Password {
            hash_sha256: app_password::secret_sha256(&user.password_hash),
        }
    }

    /// Whether `user`, as stored now, still accepts what was verified.
    pub(super) fn holds_for(&self, user: &UserRecord) -> bool {
        match self {
            Via::Password { hash_sha256 } => {
                app_password::secret_sha256(&user.password_hash) == *hash_sha256
            }
            Via::AppPassword { id, secret_sha256 } => user
                .app_passwords
                .iter()
                .any(|app| app.id == *id && app.secret_sha256 == *secret_sha256),
        }
    }
}

/// The lookup key of a name and a secret.
pub(super) type CacheKey = [u8; 32];

/// Recently verified credentials; see the module docs.
pub(super) struct CredentialCache {
    /// The HMAC key, random for each process.
    key: [u8; 32],
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<CacheKey, Entry>>,
}

struct Entry {
    sub: String,
    via: Via,
    expires: Instant,
}

impl CredentialCache {
    pub(super) fn new(ttl: Duration, capacity: usize) -> CredentialCache {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        CredentialCache {
            key,
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key of `name` and `secret`: the name's length first, so that no two pairs collide
    /// by moving bytes between them.
    pub(super) fn key_of(&self, name: &str, secret: &str) -> CacheKey {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name.as_bytes());
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The account and the verification cached under `key`, unless expired at `now`.
    pub(super) fn get(&self, key: &CacheKey, now: Instant) -> Option<(String, Via)> {
        let mut entries = self.entries.lock().expect("cache lock is never poisoned");
        match entries.get(key) {
            Some(entry) if entry.expires > now => Some((entry.sub.clone(), entry.via.clone())),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers that `key` was verified at `now` as the account `sub`, through `via`.
    pub(super) fn insert(&self, key: CacheKey, sub: &str, via: Via, now: Instant) {
        let mut entries = self.entries.lock().expect("cache lock is never poisoned");
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, entry| entry.expires > now);
            if entries.len() >= self.capacity {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.expires)
                    .map(|(key, _)| *key);
                if let Some(soonest) = soonest {
                    entries.remove(&soonest);
                }
            }
        }
        entries.insert(
            key,
            Entry {
                sub: sub.to_owned(),
                via,
                expires: now + self.ttl,
            },
        );
    }

    /// Forgets `key`.
    pub(super) fn remove(&self, key: &CacheKey) {
        self.entries
            .lock()
            .expect("cache lock is never poisoned")
            .remove(key);
    }

    /// Forgets every entry of the account `sub` (its password, app passwords or existence
    /// changed). Linear, and rare: account changes are admin actions.
    pub(super) fn forget_account(&self, sub: &str) {
        self.entries
            .lock()
            .expect("cache lock is never poisoned")
            .retain(|_, entry| entry.sub != sub);
    }

    /// How many entries are held, expired ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries
            .lock()
            .expect("cache lock is never poisoned")
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via(n: u8) -> Via {
        Via::Password {
            hash_sha256: [n; 32],
        }
    }

    #[test]
    fn keys_depend_on_name_secret_and_process() {
        let cache = CredentialCache::new(CREDENTIAL_CACHE_TTL, 8);
        let key = cache.key_of("ada", "secret");
        assert_eq!(key, cache.key_of("ada", "secret"));
        assert_ne!(key, cache.key_of("ada", "secreT"));
        assert_ne!(key, cache.key_of("bob", "secret"));
        // The length prefix keeps "ad" + "asecret" apart from "ada" + "secret".
        assert_ne!(key, cache.key_of("ad", "asecret"));
        let other_process = CredentialCache::new(CREDENTIAL_CACHE_TTL, 8);
        assert_ne!(key, other_process.key_of("ada", "secret"));
    }

    #[test]
    fn an_entry_is_found_until_its_ttl_ends() {
        let cache = CredentialCache::new(Duration::from_secs(60), 8);
        let start = Instant::now();
        let key = cache.key_of("ada", "secret");
        assert_eq!(cache.get(&key, start), None);
        cache.insert(key, "ada", via(1), start);
        let hit = Some(("ada".to_owned(), via(1)));
        assert_eq!(cache.get(&key, start), hit);
        assert_eq!(cache.get(&key, start + Duration::from_secs(59)), hit);
        assert_eq!(cache.get(&key, start + Duration::from_secs(60)), None);
        // The expired entry was dropped, not just hidden.
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn forgetting_an_account_drops_only_its_entries() {
        let cache = CredentialCache::new(CREDENTIAL_CACHE_TTL, 8);
        let now = Instant::now();
        let ada_password = cache.key_of("ada", "password");
        let ada_app = cache.key_of("ada", "tandem_app_x");
        let bob = cache.key_of("bob", "password");
        cache.insert(ada_password, "ada", via(1), now);
        cache.insert(ada_app, "ada", via(2), now);
        cache.insert(bob, "bob", via(3), now);
        cache.forget_account("ada");
        assert_eq!(cache.get(&ada_password, now), None);
        assert_eq!(cache.get(&ada_app, now), None);
        assert_eq!(cache.get(&bob, now), Some(("bob".to_owned(), via(3))));
        cache.remove(&bob);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_full_cache_drops_expired_entries_then_the_one_closest_to_expiry() {
        let cache = CredentialCache::new(Duration::from_secs(60), 3);
        let start = Instant::now();
        let keys: Vec<CacheKey> = (0..5)
            .map(|n| cache.key_of(&format!("user{n}"), "secret"))
            .collect();
        cache.insert(keys[0], "user0", via(0), start);
        cache.insert(keys[1], "user1", via(1), start + Duration::from_secs(10));
        cache.insert(keys[2], "user2", via(2), start + Duration::from_secs(20));
        // Full, nothing expired: the oldest (user0) makes room.
        let later = start + Duration::from_secs(30);
        cache.insert(keys[3], "user3", via(3), later);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&keys[0], later), None);
        assert!(cache.get(&keys[1], later).is_some());
        // Full again; at +75 s user1 (expires +70 s) has expired and is pruned first.
        let much_later = start + Duration::from_secs(75);
        cache.insert(keys[4], "user4", via(4), much_later);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&keys[1], much_later), None);
        for key in &keys[2..] {
            assert!(cache.get(key, much_later).is_some());
        }
        // Re-inserting a key that is present evicts nothing.
        cache.insert(keys[4], "user4", via(4), much_later);
        assert_eq!(cache.len(), 3);
    }
}
