//! Crash consistency: what `commit` acknowledged survives a crash, and what it refused leaves
//! no trace. A storage backend shared across "process lifetimes" starts failing every write and
//! fsync (a dying disk, a power cut mid-commit); the database is dropped without a clean close
//! and reopened on the same bytes.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::StorageBackend;
use redb::backends::InMemoryBackend;
use tandem_store::{Store, WriteOp};

#[derive(Debug, Clone)]
struct FlakyDisk {
    bytes: Arc<InMemoryBackend>,
    failing: Arc<AtomicBool>,
}

impl FlakyDisk {
    fn check(&self) -> Result<(), io::Error> {
        if self.failing.load(Ordering::SeqCst) {
            Err(io::Error::other("injected disk failure"))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for FlakyDisk {
    fn len(&self) -> Result<u64, io::Error> {
        self.bytes.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.bytes.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.check()?;
        self.bytes.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        self.check()?;
        self.bytes.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.check()?;
        self.bytes.write(offset, data)
    }
}

#[test]
fn acknowledged_commits_survive_a_crash_and_failed_ones_leave_nothing() {
    let disk = FlakyDisk {
        bytes: Arc::new(InMemoryBackend::new()),
        failing: Arc::new(AtomicBool::new(false)),
    };
    {
        let store = Store::open_with_backend(disk.clone()).expect("open");
        let acked = [WriteOp::Append {
            doc: "d",
            seq: 1,
            update: b"acknowledged",
            author: None,
        }];
        store
            .commit(&acked, 1, true)
            .expect("first commit succeeds");
        disk.failing.store(true, Ordering::SeqCst);
        let refused = [
            WriteOp::Append {
                doc: "d",
                seq: 2,
                update: b"never acknowledged",
                author: None,
            },
            WriteOp::Append {
                doc: "e",
                seq: 1,
                update: b"nor this",
                author: None,
            },
        ];
        assert!(
            store.commit(&refused, 2, true).is_err(),
            "a commit on a failing disk must fail"
        );
        // The process dies here: the store is dropped while the disk still fails.
    }
    disk.failing.store(false, Ordering::SeqCst);
    let store = Store::open_with_backend(disk.clone()).expect("reopen after the crash");
    let doc = store.load_doc("d").expect("load");
    assert_eq!(doc.updates, vec![b"acknowledged".to_vec()]);
    assert_eq!(doc.last_seq, 1);
    assert!(store.doc_meta("e").expect("meta").is_none());
    // The doc keeps working: the next seq after the acknowledged one is accepted.
    store
        .commit(
            &[WriteOp::Append {
                doc: "d",
                seq: 2,
                update: b"after",
                author: None,
            }],
            3,
            true,
        )
        .expect("commit");
    assert_eq!(store.load_doc("d").expect("load").updates.len(), 2);
}
