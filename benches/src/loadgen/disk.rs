//! The disk's floor: what one durable write costs on the filesystem the servers store to,
//! measured in the same run as the scenario it is set beside.
//!
//! Tandem commits every update (redb page writes and an fsync) before it broadcasts it, so on a
//! quiet host its latency above the relay's is mostly this figure, and the many-documents
//! target is stated in it: Tandem's p99 at most the relay's p99 plus two such commits.

use std::fs::File;
use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rustix::fs::{Mode, OFlags};

/// The size of one write: a page, as `dd bs=4k oflag=dsync` writes.
pub const WRITE_BYTES: usize = 4096;

/// Times `writes` appends of 4 KiB to a new file opened with `O_DSYNC`, in a fresh temporary
/// directory (where `tempfile` puts the servers' data directories, so on the same
/// filesystem). Each write returns once the data and the file size are on the disk, like
/// `dd if=/dev/zero bs=4k count=<writes> oflag=dsync`. Returns microseconds per write.
pub fn dsync_writes(writes: usize) -> Result<Histogram<u64>> {
    let dir = tempfile::tempdir().context("a directory for the fsync floor")?;
    let path = dir.path().join("floor");
    let fd = rustix::fs::open(
        &path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::DSYNC | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .with_context(|| format!("opening {} with O_DSYNC", path.display()))?;
    let mut file = File::from(fd);
    let page = [0x5au8; WRITE_BYTES];
    let mut latencies = Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for _ in 0..writes {
        let started = Instant::now();
        file.write_all(&page).context("an O_DSYNC write")?;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        latencies.saturating_record(micros.max(1));
    }
    Ok(latencies)
}
