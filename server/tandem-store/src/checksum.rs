//! Checksummed values (format version 2): every record that carries content is stored as an
//! 8-byte checksum followed by its payload, so a flipped bit, a torn page that redb did not
//! notice, or a value found under the wrong key is refused when read instead of served.
//!
//! The checksum is XXH3-64 (`xxhash-rust`) over the table name, the key and the payload, each
//! length-delimited (see `protocol-spec/storage.md`). It detects damage, not tampering: anyone
//! who can write the file can recompute it.
//!
//! Must not: hand out a payload whose checksum does not match. Readers turn [`Mismatch`] into
//! the `StoreError` variant of their record (`Corrupt { doc }` for a doc's records).

use xxhash_rust::xxh3::Xxh3;

use crate::error::StoreError;

/// Bytes of the checksum in front of every sealed value.
pub(crate) const CHECKSUM_BYTES: usize = 8;

/// A sealed value's checksum does not match its table, key and payload (or the value is too
/// short to hold one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mismatch;

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("checksum mismatch")
    }
}

/// A key as the checksum sees it: each part length-delimited, so no two keys feed the same
/// bytes.
pub(crate) trait ChecksumKey: Copy {
    /// Feeds the key's parts to `hasher`.
    fn feed(&self, hasher: &mut Xxh3);
}

impl ChecksumKey for &str {
    fn feed(&self, hasher: &mut Xxh3) {
        feed_bytes(hasher, self.as_bytes());
    }
}

impl ChecksumKey for u64 {
    fn feed(&self, hasher: &mut Xxh3) {
        hasher.update(&self.to_le_bytes());
    }
}

impl<A: ChecksumKey, B: ChecksumKey> ChecksumKey for (A, B) {
    fn feed(&self, hasher: &mut Xxh3) {
        self.0.feed(hasher);
        self.1.feed(hasher);
    }
}

fn feed_bytes(hasher: &mut Xxh3, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

fn checksum(table: &str, key: &impl ChecksumKey, payload: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    feed_bytes(&mut hasher, table.as_bytes());
    key.feed(&mut hasher);
    feed_bytes(&mut hasher, payload);
    hasher.digest()
}

/// The stored form of `payload` under `key` in `table`: checksum, then payload.
pub(crate) fn seal(table: &str, key: impl ChecksumKey, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKSUM_BYTES + payload.len());
    out.extend_from_slice(&checksum(table, &key, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a value read under `key` in `table`, if its checksum matches.
pub(crate) fn unseal<'a>(
    table: &str,
    key: impl ChecksumKey,
    stored: &'a [u8],
) -> Result<&'a [u8], Mismatch> {
    if stored.len() < CHECKSUM_BYTES {
        return Err(Mismatch);
    }
    let (sum, payload) = stored.split_at(CHECKSUM_BYTES);
    let sum = u64::from_le_bytes(sum.try_into().map_err(|_| Mismatch)?);
    if sum == checksum(table, &key, payload) {
        Ok(payload)
    } else {
        Err(Mismatch)
    }
}

/// The payload of a value of an activity or webhook table, or `StoreError::CorruptEntry`
/// naming its table and key.
pub(crate) fn unseal_entry<'a, K: ChecksumKey + std::fmt::Display>(
    table: &'static str,
    key: K,
    stored: &'a [u8],
) -> Result<&'a [u8], StoreError> {
    unseal(table, key, stored).map_err(|mismatch| StoreError::CorruptEntry {
        table,
        key: key.to_string(),
        detail: mismatch.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_reads_back_only_under_its_own_table_and_key() {
        let sealed = seal("updates", ("doc", 3u64), b"payload");
        assert_eq!(
            unseal("updates", ("doc", 3u64), &sealed),
            Ok(&b"payload"[..])
        );
        assert_eq!(unseal("updates", ("doc", 4u64), &sealed), Err(Mismatch));
        assert_eq!(unseal("updates", ("dod", 3u64), &sealed), Err(Mismatch));
        assert_eq!(unseal("snapshots", ("doc", 3u64), &sealed), Err(Mismatch));
        assert_eq!(
            unseal("updates", ("doc", 3u64), &sealed[..7]),
            Err(Mismatch)
        );
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut flipped = sealed.clone();
                flipped[byte] ^= 1 << bit;
                assert_eq!(
                    unseal("updates", ("doc", 3u64), &flipped),
                    Err(Mismatch),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn key_parts_are_delimited() {
        let sealed = seal("files", "ab", b"c");
        assert_eq!(unseal("files", "a", &sealed), Err(Mismatch));
        assert_eq!(unseal("file", "sab", &sealed), Err(Mismatch));
    }
}
