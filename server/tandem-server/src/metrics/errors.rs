//! The newest warn/error log events of the process, for the admin view: a tracing [`Layer`]
//! that copies each such event into a bounded ring.
//!
//! The ring is the process's, like the subscriber it belongs to: `main.rs` installs the layer
//! beside the log output, and so does whoever embeds the server (the tests install it in their
//! one subscriber). A process without the layer simply shows no errors. An event costs one
//! short lock and a few small strings, and only warn/error events reach it (debug and info
//! never do), so the hot path pays nothing.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Events kept.
const MAX_EVENTS: usize = 100;
/// Longest message kept, in bytes; the rest is cut.
const MAX_MESSAGE_BYTES: usize = 1024;
/// Fields kept per event beyond the message.
const MAX_FIELDS: usize = 16;
/// Longest field value kept, in bytes.
const MAX_FIELD_BYTES: usize = 256;

/// One warn or error event.
#[derive(Debug, Clone)]
pub(crate) struct LogEvent {
    pub(crate) at_ms: u64,
    pub(crate) level: &'static str,
    pub(crate) target: String,
    pub(crate) message: String,
    /// The event's other fields, as text (`peer`, `error`, ...). Logs never carry tokens or
    /// document contents (house rule), so neither does this.
    pub(crate) fields: Vec<(&'static str, String)>,
}

fn ring() -> &'static Mutex<VecDeque<LogEvent>> {
    static RING: OnceLock<Mutex<VecDeque<LogEvent>>> = OnceLock::new();
    RING.get_or_init(|| Mutex::new(VecDeque::with_capacity(MAX_EVENTS)))
}

/// The events kept, newest first.
pub(super) fn newest() -> Vec<LogEvent> {
    let ring = ring()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    ring.iter().rev().cloned().collect()
}

/// The tracing layer that keeps warn and error events for `GET /api/admin/overview`. Install it
/// in the process's subscriber, e.g.
/// `tracing_subscriber::registry().with(fmt_layer).with(ErrorLayer)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorLayer;

impl<S: Subscriber> Layer<S> for ErrorLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let metadata = event.metadata();
        let level = match *metadata.level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            _ => return,
        };
        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);
        let entry = LogEvent {
            at_ms: tandem_hub::clock::now_ms(),
            level,
            target: metadata.target().to_owned(),
            message: visitor.message,
            fields: visitor.fields,
        };
        let mut ring = ring()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if ring.len() == MAX_EVENTS {
            ring.pop_front();
        }
        ring.push_back(entry);
    }
}

#[derive(Default)]
struct FieldVisitor {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.keep(field, text);
    }
}

impl FieldVisitor {
    fn keep(&mut self, field: &Field, mut value: String) {
        if field.name() == "message" {
            truncate(&mut value, MAX_MESSAGE_BYTES);
            self.message = value;
        } else if self.fields.len() < MAX_FIELDS {
            truncate(&mut value, MAX_FIELD_BYTES);
            self.fields.push((field.name(), value));
        }
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}
