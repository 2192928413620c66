//! Tandem's sans-IO core: the y-websocket protocol and the shared document.
//!
//! Nothing in this crate performs I/O, spawns a task, reads a clock or the environment, or
//! panics on bytes from a peer. That is what makes it deterministic, property-testable and
//! fuzzable. The real-time engine (`tandem-hub`) and the server (`tandem-server`) are the I/O
//! shell around it.
//!
//! # Layout
//!
//! - [`protocol`]: frame bytes to typed messages, with limits; encoders; `ProtocolError` and its
//!   close codes; the decoder of Yjs snapshots posted over HTTP.
//! - [`hocuspocus`]: the Hocuspocus framing (a routing key before each message), its limits and
//!   the server's answers.
//! - [`shared_doc`]: `SharedDoc` (a yrs `Doc` plus presence), `receive(peer, message) -> Effects`,
//!   and `covers(snapshot)`, whether the doc holds everything a replica has.
//! - [`awareness`]: presence states, each owned by the connection that introduced it.
//! - [`presence`]: what a presence state's JSON says (the user it names), read once while it is
//!   decoded, and the stamping of a verified identity into it.
//! - [`doc_id`]: `DocId`, a document name validated once at the edge.
//! - [`limits`]: `Limits`, the bounds on what a peer can make the server hold.
//! - [`restore`]: the update that takes a doc back to an earlier state as a change on top.
//! - [`text_file`]: a root text read and written as a whole file; a save becomes the smallest
//!   change that keeps what others typed since the saver read it.
//! - [`rate`]: `TokenBucket` and `ConnectionRates`, the per-connection rate limits.
//! - `fuzzing` (hidden): the bodies of the cargo-fuzz targets in `fuzz/`, also run by proptest.

pub mod awareness;
pub mod doc_id;
#[doc(hidden)]
pub mod fuzzing;
pub mod hocuspocus;
pub mod limits;
pub mod presence;
pub mod protocol;
pub mod rate;
pub mod restore;
pub mod shared_doc;
pub mod text_file;

pub use awareness::{PeerId, REMOTE_PEER_BASE};
pub use doc_id::{DocId, DocIdError};
pub use limits::Limits;
pub use presence::{Identity, PresentUser};
pub use protocol::{Message, ProtocolError};
pub use shared_doc::{
    Effects, LoadError, MergedSnapshot, PeerAccess, ReceiveError, SharedDoc, merge_snapshots,
};
