//! The log lines of every server in the test process, for tests that check what an operator
//! would read.
//!
//! A tracing subscriber is global to the process, and all the tests share one process (one test
//! binary), so it is installed once, here, by the first test that asks, and it captures for all
//! of them: a test finds its own lines by something only its server logged (an `error_id`, a
//! path), never by the log being otherwise empty.

use std::sync::{Arc, Mutex, OnceLock};

/// Appends what the log writes to the shared buffer.
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = logs.clone();
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        // The servers' admin view reads the newest warnings through `ErrorLayer`, as in `main`.
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || LogWriter(writer.clone())),
            )
            .with(tandem_server::ErrorLayer)
            .with(tracing_subscriber::filter::LevelFilter::WARN)
            .try_init()
            .expect("the only log subscriber of this process");
        logs
    })
}

/// Starts capturing every warning and error logged in this process from now on (the first call
/// installs the subscriber; later calls do nothing). Call it before starting the server whose
/// lines the test reads.
pub fn capture_logs() {
    buffer();
}

/// Every warning and error captured since the first [`capture_logs`], as text.
pub fn logged_text() -> String {
    let logs = buffer()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    String::from_utf8_lossy(&logs).into_owned()
}
