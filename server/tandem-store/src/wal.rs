//! The write-ahead log of document updates: what makes a typing-sized commit cost one page write
//! and one `fdatasync` instead of redb's ~10 page writes, its fsync and its freed-page
//! bookkeeping.
//!
//! A batch of appends (the hub's group commit) goes to redb in a *non-durable* transaction
//! (applied in memory, visible to every reader at once, on disk at the next durable commit) and,
//! before that transaction commits, to this log as one record, written with one `pwrite` and
//! made durable with `fdatasync`. Every so often (see [`Store::checkpoint_if_due`]) one durable
//! redb transaction makes all of it durable in the file and moves the *checkpoint*; the log then
//! starts over at offset 0 under the next *epoch*. Any durable commit by the writer (a
//! compaction, a version, a batch too large for the log) moves the checkpoint too.
//!
//! File `<db file>.wal`, beside the database; its space is written with zeros before records go
//! there, so an append never changes the file's size and `fdatasync` has no metadata to write.
//! Each record: `len: u32 LE` (of the payload), `0u32`, `epoch: u64 LE`, `XXH3-64 of (epoch,
//! payload): u64 LE`, then the payload: `now_ms: u64`, `n_ops: u32`, and per append `doc`
//! (`u32` length + bytes), `seq: u64`, `author` (`u32` length + 1, 0 for none, + bytes), `update`
//! (`u32` length + bytes). All integers little-endian.
//!
//! The checkpoint `(epoch, offset)` lives in redb's `meta` table (`wal_epoch`, `wal_offset`): every
//! record of an older epoch, and of this epoch before `offset`, is in the database durably.
//! Opening the store reads the records of the checkpoint's epoch from its offset until the first
//! that is short, of another epoch or fails its checksum (a torn tail: never acknowledged), and
//! applies those whose seq the doc does not have yet, then checkpoints. Replaying is idempotent:
//! a doc's seqs only grow, and nothing but the writer's commits and `discard_after` (which moves
//! the checkpoint) removes log entries.
//!
//! Must not: acknowledge a batch before its record is synced; reuse an offset of the current
//! epoch for a record that may be replayed unless the record there was undone first.
//!
//! [`Store::checkpoint_if_due`]: crate::Store::checkpoint_if_due

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use xxhash_rust::xxh3::Xxh3;

use crate::WriteOp;

/// Bytes of a record's header.
const HEADER_BYTES: usize = 24;
/// Largest payload one record holds; a bigger batch commits to redb durably instead.
pub(crate) const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;
/// Log bytes after which the writer checkpoints.
pub(crate) const CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;
/// Age of the oldest record not yet checkpointed after which the writer checkpoints.
pub(crate) const CHECKPOINT_AGE: std::time::Duration = std::time::Duration::from_secs(1);
/// Bytes of zeros written at a time when the file's space runs out.
const GROW_STEP: u64 = 1024 * 1024;

/// An open log: where the next record goes, in which epoch.
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    /// Bytes of the file, all of them written (zeros or records).
    len: u64,
    /// The epoch records are written under now.
    pub(crate) epoch: u64,
    /// Where the next record goes.
    pub(crate) offset: u64,
    /// Where this epoch's records not yet covered by a durable redb commit start.
    pub(crate) checkpoint_offset: u64,
    /// When the first record after the checkpoint was written.
    pub(crate) oldest: Option<Instant>,
    /// Reused for encoding records.
    buf: Vec<u8>,
}

/// One replayed append, owned.
pub(crate) struct Replayed {
    pub(crate) doc: String,
    pub(crate) seq: u64,
    pub(crate) update: Vec<u8>,
    pub(crate) author: Option<Vec<u8>>,
}

/// One replayed record: the commit's time and its appends.
pub(crate) struct ReplayedRecord {
    pub(crate) now_ms: u64,
    pub(crate) appends: Vec<Replayed>,
}

/// The path of the log of database file `db`.
pub(crate) fn path_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".wal");
    PathBuf::from(name)
}

impl Wal {
    /// Opens (or creates) the log at `path`, positioned at checkpoint `(epoch, offset)`.
    pub(crate) fn open(path: &Path, epoch: u64, offset: u64) -> io::Result<Wal> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(Wal {
            file,
            path: path.to_owned(),
            len,
            epoch,
            offset,
            checkpoint_offset: offset,
            oldest: None,
            buf: Vec::new(),
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The records of the current epoch from the current offset on, up to the first that is
    /// missing, torn or of another epoch; leaves the offset after the last one read.
    pub(crate) fn replay(&mut self) -> io::Result<Vec<ReplayedRecord>> {
        let mut out = Vec::new();
        let mut header = [0u8; HEADER_BYTES];
        loop {
            let at = self.offset;
            if at + HEADER_BYTES as u64 > self.len {
                break;
            }
            self.file.read_exact_at(&mut header, at)?;
            let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
            let epoch = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            let sum = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
            if len == 0
                || len > MAX_RECORD_BYTES as u64
                || epoch != self.epoch
                || at + HEADER_BYTES as u64 + len > self.len
            {
                break;
            }
            let mut payload = vec![0u8; len as usize];
            self.file
                .read_exact_at(&mut payload, at + HEADER_BYTES as u64)?;
            if checksum(epoch, &payload) != sum {
                break;
            }
            let Some(record) = decode(&payload) else {
                tracing::warn!(
                    offset = at,
                    "write-ahead log record unreadable; replay stops there"
                );
                break;
            };
            out.push(record);
            self.offset = at + HEADER_BYTES as u64 + len;
        }
        if self.offset > self.checkpoint_offset {
            self.oldest = Some(Instant::now());
        }
        Ok(out)
    }

    /// Whether `ops` (appends only) fit in one record.
    pub(crate) fn fits(ops: &[WriteOp<'_>]) -> bool {
        let mut n = 12usize;
        for op in ops {
            let WriteOp::Append {
                doc,
                update,
                author,
                ..
            } = op
            else {
                return false;
            };
            n += 4 + doc.len() + 8 + 4 + author.map_or(0, <[u8]>::len) + 4 + update.len();
            if n > MAX_RECORD_BYTES {
                return false;
            }
        }
        true
    }

    /// Writes `ops` (appends only; see [`Wal::fits`]) as one record and syncs it. Returns the
    /// offset the record starts at, for [`Wal::undo`].
    pub(crate) fn append(&mut self, now_ms: u64, ops: &[WriteOp<'_>]) -> io::Result<u64> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(HEADER_BYTES, 0);
        buf.extend_from_slice(&now_ms.to_le_bytes());
        buf.extend_from_slice(&(ops.len() as u32).to_le_bytes());
        for op in ops {
            if let WriteOp::Append {
                doc,
                seq,
                update,
                author,
            } = op
            {
                put_bytes(&mut buf, doc.as_bytes());
                buf.extend_from_slice(&seq.to_le_bytes());
                match author {
                    Some(author) => {
                        buf.extend_from_slice(&(author.len() as u32 + 1).to_le_bytes());
                        buf.extend_from_slice(author);
                    }
                    None => buf.extend_from_slice(&0u32.to_le_bytes()),
                }
                put_bytes(&mut buf, update);
            }
        }
        let len = (buf.len() - HEADER_BYTES) as u32;
        let sum = checksum(self.epoch, &buf[HEADER_BYTES..]);
        buf[0..4].copy_from_slice(&len.to_le_bytes());
        buf[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        buf[16..24].copy_from_slice(&sum.to_le_bytes());
        let at = self.offset;
        let result = self.write_synced(at, &buf);
        self.buf = buf;
        if let Err(error) = result {
            // It may have reached the disk whole: take it back, as far as the disk allows.
            let _ = self.undo(at);
            return Err(error);
        }
        self.offset = at + u64::from(len) + HEADER_BYTES as u64;
        self.oldest.get_or_insert_with(Instant::now);
        Ok(at)
    }

    fn write_synced(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        let end = at + bytes.len() as u64;
        if end > self.len {
            self.grow(end)?;
        }
        self.file.write_all_at(bytes, at)?;
        self.file.sync_data()
    }

    /// Writes zeros up to at least `end` (in steps, so that appends rarely change the file's
    /// size) and syncs them with the new size.
    fn grow(&mut self, end: u64) -> io::Result<()> {
        let target = end.div_ceil(GROW_STEP) * GROW_STEP;
        let zeros = vec![0u8; GROW_STEP as usize];
        let mut at = self.len;
        while at < target {
            let n = (target - at).min(GROW_STEP) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.len = target;
        Ok(())
    }

    /// Takes back the record written at `at` (its transaction did not commit): its header is
    /// zeroed and synced, and the next record goes there.
    pub(crate) fn undo(&mut self, at: u64) -> io::Result<()> {
        self.offset = at;
        self.file.write_all_at(&[0u8; HEADER_BYTES], at)?;
        self.file.sync_data()
    }

    /// Positions the log at checkpoint `(epoch, offset)` as the database records it (after the
    /// file was reopened), for [`Wal::replay`].
    pub(crate) fn reposition(&mut self, epoch: u64, offset: u64) {
        self.epoch = epoch;
        self.offset = offset;
        self.checkpoint_offset = offset;
        self.oldest = None;
    }

    /// Bytes written since the checkpoint.
    pub(crate) fn pending_bytes(&self) -> u64 {
        self.offset - self.checkpoint_offset
    }

    /// A durable redb commit recorded checkpoint `(epoch, 0)`: records start over there.
    pub(crate) fn start_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.offset = 0;
        self.checkpoint_offset = 0;
        self.oldest = None;
    }
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

fn checksum(epoch: u64, payload: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&epoch.to_le_bytes());
    hasher.update(payload);
    hasher.digest()
}

fn decode(payload: &[u8]) -> Option<ReplayedRecord> {
    let mut r = payload;
    let now_ms = take_u64(&mut r)?;
    let n = take_u32(&mut r)?;
    let mut appends = Vec::with_capacity((n as usize).min(4096));
    for _ in 0..n {
        let doc = String::from_utf8(take_bytes(&mut r)?.to_vec()).ok()?;
        let seq = take_u64(&mut r)?;
        let author = match take_u32(&mut r)? {
            0 => None,
            n => Some(take(&mut r, n as usize - 1)?.to_vec()),
        };
        let update = take_bytes(&mut r)?.to_vec();
        appends.push(Replayed {
            doc,
            seq,
            update,
            author,
        });
    }
    r.is_empty().then_some(ReplayedRecord { now_ms, appends })
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Some(head)
}

fn take_u32(r: &mut &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(take(r, 4)?.try_into().ok()?))
}

fn take_u64(r: &mut &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(take(r, 8)?.try_into().ok()?))
}

fn take_bytes<'a>(r: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = take_u32(r)? as usize;
    take(r, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append<'a>(doc: &'a str, seq: u64, update: &'a [u8]) -> WriteOp<'a> {
        WriteOp::Append {
            doc,
            seq,
            update,
            author: None,
        }
    }

    #[test]
    fn records_replay_until_a_torn_or_foreign_one() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("x.wal");
        let mut wal = Wal::open(&path, 3, 0).expect("open");
        wal.append(7, &[append("a", 1, b"one"), append("b", 1, b"two")])
            .expect("append");
        let second = wal
            .append(
                8,
                &[WriteOp::Append {
                    doc: "a",
                    seq: 2,
                    update: b"three",
                    author: Some(b"who"),
                }],
            )
            .expect("append");
        let third = wal.append(9, &[append("a", 3, b"four")]).expect("append");
        // The third record is torn: one byte of its payload flipped.
        wal.file
            .write_all_at(&[0xff], third + HEADER_BYTES as u64 + 2)
            .expect("flip");
        drop(wal);

        let mut wal = Wal::open(&path, 3, 0).expect("reopen");
        let records = wal.replay().expect("replay");
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].now_ms, 7);
        assert_eq!(records[0].appends[1].doc, "b");
        assert_eq!(records[0].appends[1].update, b"two");
        assert_eq!(records[1].appends[0].author.as_deref(), Some(&b"who"[..]));
        assert_eq!(wal.offset, third);

        // From the second record's offset, only it; under another epoch, nothing.
        let mut wal = Wal::open(&path, 3, second).expect("reopen");
        assert_eq!(wal.replay().expect("replay").len(), 1);
        let mut wal = Wal::open(&path, 4, 0).expect("reopen");
        assert!(wal.replay().expect("replay").is_empty());
    }

    #[test]
    fn an_undone_record_is_not_replayed_and_its_place_is_reused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("x.wal");
        let mut wal = Wal::open(&path, 1, 0).expect("open");
        wal.append(1, &[append("a", 1, b"kept")]).expect("append");
        let at = wal.append(2, &[append("a", 2, b"undone")]).expect("append");
        wal.undo(at).expect("undo");
        let mut wal = Wal::open(&path, 1, 0).expect("reopen");
        let records = wal.replay().expect("replay");
        assert_eq!(records.len(), 1);
        assert_eq!(wal.offset, at);
        wal.append(3, &[append("a", 2, b"again")]).expect("append");
        let mut wal = Wal::open(&path, 1, 0).expect("reopen");
        let records = wal.replay().expect("replay");
        assert_eq!(records[1].appends[0].update, b"again");
    }

    #[test]
    fn the_file_grows_in_steps_of_zeros() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("x.wal");
        let mut wal = Wal::open(&path, 1, 0).expect("open");
        let big = vec![7u8; 1_500_000];
        wal.append(1, &[append("a", 1, &big)]).expect("append");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 2 * GROW_STEP);
        wal.start_epoch(2);
        wal.append(1, &[append("a", 2, b"small")]).expect("append");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 2 * GROW_STEP);
    }
}
