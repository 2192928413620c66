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
}

/// Default largest frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u64 = 16 * 1024 * 1024;
/// Default largest awareness state: 64 KiB, far above a name, a colour and a cursor.
pub const DEFAULT_MAX_AWARENESS_STATE_BYTES: usize = 64 * 1024;
/// Default awareness client ids per connection.
pub const DEFAULT_MAX_AWARENESS_CLIENTS_PER_PEER: usize = 4;
/// Default awareness expiry: 30 s, as in y-protocols; clients renew every 15 s.
pub const DEFAULT_AWARENESS_TIMEOUT_MS: u64 = 30_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_awareness_state_bytes: DEFAULT_MAX_AWARENESS_STATE_BYTES,
            max_awareness_clients_per_peer: DEFAULT_MAX_AWARENESS_CLIENTS_PER_PEER,
            awareness_timeout_ms: DEFAULT_AWARENESS_TIMEOUT_MS,
        }
    }
}
