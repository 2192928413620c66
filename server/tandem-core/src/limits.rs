//! Size and count limits that bound what one peer can make the server hold.
//!
//! The values are plain data: the server fills them from its configuration and passes them down.
//! Nothing here reads the environment.

/// Limits applied to every peer of every document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket frame accepted, in bytes. Larger frames close the connection with 1009.
    pub max_frame_bytes: u64,
    /// Largest JSON text of one awareness state, in bytes.
    pub max_awareness_state_bytes: usize,
    /// How many awareness client ids one connection may own at once. A y-websocket client uses
    /// one; a few more allow for several Y.Docs sharing a socket in other providers.
    pub max_awareness_clients_per_peer: usize,
    /// An awareness state not renewed for this long is removed (y-protocols `outdatedTimeout`).
    pub awareness_timeout_ms: u64,
    /// Messages one connection may send per second, on average; it may burst to
    /// [`MESSAGE_BURST_SECONDS`] times this. `0` disables the limit. A breach closes with 4429.
    pub max_messages_per_second: u64,
    /// Bytes one connection may send per second, on average; the burst is this or
    /// `max_frame_bytes`, whichever is larger, so one maximal frame always fits. `0` disables the
    /// limit. A breach closes with 4429.
    pub max_bytes_per_second: u64,
    /// Awareness messages one connection may send per second, on average; it may burst to
    /// [`AWARENESS_BURST_SECONDS`] times this. `0` disables the limit. A breach closes with 4429.
    pub max_awareness_per_second: u64,
    /// Largest stored size of one document, in bytes: its snapshot plus its update log. An update
    /// that would take a document past it is refused and its sender closed with 1009.
    pub max_doc_bytes: u64,
}

/// Default largest frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u64 = 16 * 1024 * 1024;
/// Default largest awareness state: 64 KiB, far above a name, a colour and a cursor.
pub const DEFAULT_MAX_AWARENESS_STATE_BYTES: usize = 64 * 1024;
/// Default awareness client ids per connection.
pub const DEFAULT_MAX_AWARENESS_CLIENTS_PER_PEER: usize = 4;
/// Default awareness expiry: 30 s, as in y-protocols; clients renew every 15 s.
pub const DEFAULT_AWARENESS_TIMEOUT_MS: u64 = 30_000;
/// Default messages per second per connection: 500. A person typing sends one update per
/// keystroke (well under 50/s) and a paste is one update; ten times the fastest typist leaves room
/// for scripts and reconnect bursts while one connection cannot monopolise its doc actor.
pub const DEFAULT_MAX_MESSAGES_PER_SECOND: u64 = 500;
/// Default bytes per second per connection: 8 MiB/s, a large paste every few seconds. One
/// connection cannot fill the redb writer with more than that on its own.
pub const DEFAULT_MAX_BYTES_PER_SECOND: u64 = 8 * 1024 * 1024;
/// Default awareness messages per second per connection: 60. y-codemirror.next sends one on every
/// selection change, unthrottled, so dragging a selection sends about one per displayed frame and
/// holding an arrow key one per key repeat (about 30/s); renewals add one every 15 s. Awareness is
/// relayed to every peer of the doc, so this is the limit that bounds fan-out from one connection.
pub const DEFAULT_MAX_AWARENESS_PER_SECOND: u64 = 60;
/// Default largest document: 256 MiB stored. Every byte of an open doc is held in memory too
/// (and more, as yrs structures), so this bounds what one doc can make the server hold.
pub const DEFAULT_MAX_DOC_BYTES: u64 = 256 * 1024 * 1024;
/// A connection may send this many seconds' worth of messages at once before the rate applies:
/// a reconnecting client sends its handshake, its presence and queued edits together.
pub const MESSAGE_BURST_SECONDS: u64 = 2;
/// A connection may send this many seconds' worth of awareness at once: a quick drag selection
/// runs above the average rate for a moment.
pub const AWARENESS_BURST_SECONDS: u64 = 2;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_awareness_state_bytes: DEFAULT_MAX_AWARENESS_STATE_BYTES,
            max_awareness_clients_per_peer: DEFAULT_MAX_AWARENESS_CLIENTS_PER_PEER,
            awareness_timeout_ms: DEFAULT_AWARENESS_TIMEOUT_MS,
            max_messages_per_second: DEFAULT_MAX_MESSAGES_PER_SECOND,
            max_bytes_per_second: DEFAULT_MAX_BYTES_PER_SECOND,
            max_awareness_per_second: DEFAULT_MAX_AWARENESS_PER_SECOND,
            max_doc_bytes: DEFAULT_MAX_DOC_BYTES,
        }
    }
}
