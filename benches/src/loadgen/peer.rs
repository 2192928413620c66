//! A simulated client: a real yrs doc behind a y-websocket connection.
//!
//! It answers the server's sync step 1, applies step 2 and every update it receives (at once,
//! or after the measured window with [`Apply::Deferred`], so that a load generator sharing two
//! cores with the server does not spend them on CRDT work while it measures), and can be
//! checked for convergence through its text. Edits are small appends; each is stamped in
//! its peer's send log under the clock of its first struct, which every server forwards unchanged,
//! so a receiver finds the send time of each update it reads from a few header bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// The name of the shared text every peer edits.
pub const TEXT: &str = "t";

/// How a peer frames messages for its server.
#[derive(Debug, Clone)]
pub enum Framing {
    /// y-websocket: one message per frame, the doc named by the URL.
    Plain,
    /// Hocuspocus: every message starts with the doc name; the first one authenticates.
    Hocuspocus { doc: String },
}

/// When received updates are applied to the peer's doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// As they arrive.
    Immediate,
    /// Kept as bytes and applied when the peer closes.
    Deferred,
    /// Never: the peer only counts and times what arrives.
    Never,
    /// Never, and without a WebSocket library: the peer reads frames straight off the socket
    /// into one reused buffer and counts its sync step 2 (the join storm's 20 MB joiners; see
    /// `bulk.rs`). It can send raw messages but not edit.
    Bulk,
}

/// State shared by every peer of one run.
///
/// What every delivery touches is read without locks and without writes to shared cache lines,
/// so that the 20 saturation peers, which read more than a million updates a second on the
/// cores the server uses too, cost as little per delivery as the servers' own code paths: each
/// peer counts into its own [`Counters`], and each editing peer stamps its edits' send times in
/// its own [`SendLog`], which receivers find once by client id and then read directly.
pub struct Shared {
    /// The zero of every [`SendLog`] stamp.
    epoch: Instant,
    /// The send log of each peer that has edited, by client id.
    logs: DashMap<u64, Arc<SendLog>>,
    /// The counters of every peer that has connected (closed ones included, so sums only grow).
    counters: Mutex<Vec<Arc<Counters>>>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            epoch: Instant::now(),
            logs: DashMap::new(),
            counters: Mutex::new(Vec::new()),
        }
    }
}

impl Shared {
    /// Updates from other peers received, by all peers.
    pub fn deliveries(&self) -> u64 {
        self.sum(|counters| &counters.deliveries)
    }

    /// Awareness frames received, by all peers.
    pub fn awareness_deliveries(&self) -> u64 {
        self.sum(|counters| &counters.awareness)
    }

    fn sum(&self, field: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        let counters = self.counters.lock().expect("counters lock");
        counters
            .iter()
            .map(|c| field(c).load(Ordering::Relaxed))
            .sum()
    }

    fn register(&self) -> Arc<Counters> {
        let counters = Arc::new(Counters::default());
        self.counters
            .lock()
            .expect("counters lock")
            .push(counters.clone());
        counters
    }

    /// Microseconds since the epoch, plus one (a stamp is never zero: zero is "not stamped").
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }
}

/// One peer's counters, on a cache line of their own.
#[derive(Default)]
#[repr(align(128))]
struct Counters {
    deliveries: AtomicU64,
    awareness: AtomicU64,
}

/// Send times of one client's edits, by the clock of each edit's first struct (clocks count
/// characters, so a peer's edits index it densely), in chunks allocated on first use; clocks
/// past its capacity (a million) go unstamped.
struct SendLog {
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl SendLog {
    const CHUNK: usize = 4096;
    const CHUNKS: usize = 256;

    fn new() -> SendLog {
        SendLog {
            chunks: (0..Self::CHUNKS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The chunk and the slot in it of `clock`.
    fn index(clock: u32) -> (usize, usize) {
        (clock as usize / Self::CHUNK, clock as usize % Self::CHUNK)
    }

    /// The slot of `clock`, its chunk allocated first if need be (before the caller reads the
    /// time, so that the allocation is not counted as latency).
    fn slot(&self, clock: u32) -> Option<&AtomicU64> {
        let (chunk, slot) = Self::index(clock);
        let chunk = self
            .chunks
            .get(chunk)?
            .get_or_init(|| (0..Self::CHUNK).map(|_| AtomicU64::new(0)).collect());
        Some(&chunk[slot])
    }

    fn get(&self, clock: u32) -> Option<u64> {
        let (chunk, slot) = Self::index(clock);
        let at = self.chunks.get(chunk)?.get()?[slot].load(Ordering::Acquire);
        (at != 0).then_some(at)
    }
}

/// What a peer can be asked to do.
pub enum Command {
    /// Append `len` characters and send the update.
    Edit { len: usize },
    /// Send an awareness update for this client (a fresh clock, a small JSON state).
    Awareness,
    /// Hand over the latency histogram collected so far and start a new one.
    TakeLatencies(oneshot::Sender<Histogram<u64>>),
    /// Send a raw y-websocket message (already encoded, without framing).
    Raw(Vec<u8>),
    /// Close the connection and report.
    Close,
}

/// What a peer reports when it ends.
pub struct Report {
    /// Delivery latency in microseconds of every update received since the last take.
    pub latencies: Histogram<u64>,
    /// The text after applying everything received (empty with [`Apply::Never`]).
    pub text: String,
    /// Bytes of the sync step 2 the server sent.
    pub step2_bytes: usize,
}

/// A connected peer.
pub struct PeerHandle {
    pub commands: mpsc::Sender<Command>,
    pub task: tokio::task::JoinHandle<Result<Report>>,
    /// Time from the start of the TCP connect to the server's sync step 2 being read.
    pub synced_after: Duration,
    /// Whether (and when) this peer applies what it receives.
    pub apply: Apply,
}

pub struct PeerOptions {
    pub url: String,
    pub framing: Framing,
    pub apply: Apply,
    /// An update to apply before connecting (the peer then offers it in its sync step 2).
    pub initial: Option<Vec<u8>>,
}

/// Connects, completes the sync handshake and returns the running peer.
pub async fn connect(options: PeerOptions, shared: Arc<Shared>) -> Result<PeerHandle> {
    let (synced_tx, synced_rx) = oneshot::channel();
    let (commands, commands_rx) = mpsc::channel(1024);
    let apply = options.apply;
    let task = if apply == Apply::Bulk {
        tokio::spawn(super::bulk::run(options, commands_rx, synced_tx))
    } else {
        tokio::spawn(run(options, shared, commands_rx, synced_tx))
    };
    match tokio::time::timeout(Duration::from_secs(120), synced_rx).await {
        Ok(Ok(synced_after)) => Ok(PeerHandle {
            commands,
            task,
            synced_after,
            apply,
        }),
        Ok(Err(_)) => match task.await {
            Ok(Err(error)) => Err(error),
            Ok(Ok(_)) => bail!("peer ended before it synced"),
            Err(error) => Err(error.into()),
        },
        Err(_) => {
            task.abort();
            bail!("no sync step 2 within 120 s")
        }
    }
}

/// A random client id in yjs's range (a nonzero u32, as yjs makes them; yrs keeps only the
/// low 32 bits of what it is given on the wire).
fn client_id() -> u64 {
    u64::from(rand::random::<u32>().max(1))
}

struct Peer {
    doc: Doc,
    text: yrs::TextRef,
    client: u64,
    /// The clock of this client's next edit.
    clock: u32,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    /// This peer's send log, made at its first edit.
    log: Option<Arc<SendLog>>,
    /// Other peers' send logs, once found in `shared`.
    logs: HashMap<u64, Arc<SendLog>>,
    framing: Framing,
    apply: Apply,
    /// Updates received and not applied yet, each with its length before it, in one buffer.
    deferred: Vec<u8>,
    /// `LOADGEN_DEBUG` set: print the start of every frame received.
    debug: bool,
    latencies: Histogram<u64>,
    awareness_clock: u32,
    step2_bytes: usize,
}

async fn run(
    options: PeerOptions,
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
    synced: oneshot::Sender<Duration>,
) -> Result<Report> {
    let started = Instant::now();
    let host = options
        .url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .context("ws:// URL")?
        .to_owned();
    let stream = TcpStream::connect(&host).await.context("connect")?;
    stream.set_nodelay(true)?;
    // Small buffers, so ten thousand idle peers fit beside the server (the join storm's bulk
    // receivers read without tungstenite: see `bulk.rs`).
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 30))
        .max_frame_size(Some(1 << 30));
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(options.url.as_str(), stream, Some(config))
            .await
            .context("websocket handshake")?;
    let (mut sink, mut stream) = ws.split();

    let client = client_id();
    let doc = Doc::with_client_id(client);
    let text = doc.get_or_insert_text(TEXT);
    if let Some(initial) = &options.initial {
        doc.transact_mut()
            .apply_update(Update::decode_v1(initial)?)?;
    }
    let clock = doc
        .transact()
        .state_vector()
        .get(&yrs::block::ClientID::new(client));
    let counters = shared.register();
    let mut peer = Peer {
        doc,
        text,
        client,
        clock,
        shared,
        counters,
        log: None,
        logs: HashMap::new(),
        framing: options.framing,
        apply: options.apply,
        deferred: Vec::new(),
        debug: std::env::var_os("LOADGEN_DEBUG").is_some(),
        latencies: new_histogram(),
        awareness_clock: 0,
        step2_bytes: 0,
    };

    if let Framing::Hocuspocus { .. } = peer.framing {
        sink.send(peer.frame(&hocuspocus_auth())).await?;
    }
    let step1 = sync_step1(&peer.doc.transact().state_vector());
    sink.send(peer.frame(&step1)).await?;

    let mut synced = Some(synced);
    loop {
        tokio::select! {
            frame = stream.next() => {
                let frame = match frame {
                    Some(Ok(WsMessage::Binary(frame))) => frame,
                    Some(Ok(WsMessage::Close(close))) => bail!("server closed: {close:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Err(error.into()),
                    None => bail!("connection ended"),
                };
                let replies = peer.receive(&frame)?;
                if !replies.is_empty() {
                    for reply in replies {
                        sink.feed(peer.frame(&reply)).await?;
                    }
                    sink.flush().await?;
                }
                if peer.step2_bytes > 0
                    && let Some(synced) = synced.take()
                {
                    let _ = synced.send(started.elapsed());
                }
            }
            command = commands.recv() => match command {
                Some(Command::Edit { len }) => {
                    let message = peer.edit(len);
                    sink.send(peer.frame(&message)).await?;
                }
                Some(Command::Awareness) => {
                    let message = peer.awareness();
                    sink.send(peer.frame(&message)).await?;
                }
                Some(Command::Raw(message)) => {
                    sink.send(peer.frame(&message)).await?;
                }
                Some(Command::TakeLatencies(reply)) => {
                    let taken = std::mem::replace(&mut peer.latencies, new_histogram());
                    let _ = reply.send(taken);
                }
                Some(Command::Close) | None => break,
            }
        }
    }
    let _ = sink.send(WsMessage::Close(None)).await;
    // Deferred updates are applied now, outside the measured window, a thousand to a
    // transaction: fewer commits than one each, and each commit squashes the runs of
    // characters it integrated (in one transaction, a million unsquashed items piled up).
    let deferred = std::mem::take(&mut peer.deferred);
    let mut cursor = Cursor::new(&deferred);
    while cursor.has_content() {
        let mut txn = peer.doc.transact_mut();
        for _ in 0..1000 {
            if !cursor.has_content() {
                break;
            }
            txn.apply_update(Update::decode_v1(cursor.read_buf()?)?)?;
        }
    }
    let text = if peer.apply == Apply::Never {
        String::new()
    } else {
        peer.text.get_string(&peer.doc.transact())
    };
    Ok(Report {
        latencies: peer.latencies,
        text,
        step2_bytes: peer.step2_bytes,
    })
}

pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// A y-websocket message in the target's framing (Hocuspocus prefixes the doc name).
pub(super) fn framed(framing: &Framing, message: &[u8]) -> Vec<u8> {
    match framing {
        Framing::Plain => message.to_vec(),
        Framing::Hocuspocus { doc } => {
            let mut out = Vec::with_capacity(doc.len() + 1 + message.len());
            out.write_string(doc);
            out.extend_from_slice(message);
            out
        }
    }
}

/// Hocuspocus's first message: auth (2), token (0), empty; no auth hook is configured, so any
/// token passes.
pub(super) fn hocuspocus_auth() -> Vec<u8> {
    let mut auth = Vec::new();
    auth.write_var(2u32);
    auth.write_var(0u32);
    auth.write_string("");
    auth
}

/// A sync step 1 offering `state`.
pub(super) fn sync_step1(state: &StateVector) -> Vec<u8> {
    let mut message = Vec::new();
    message.write_var(0u32);
    message.write_var(0u32);
    message.write_buf(state.encode_v1());
    message
}

impl Peer {
    fn frame(&self, message: &[u8]) -> WsMessage {
        WsMessage::Binary(framed(&self.framing, message).into())
    }

    /// Handles one frame; returns the messages to send back.
    fn receive(&mut self, frame: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut cursor = Cursor::new(frame);
        if let Framing::Hocuspocus { .. } = self.framing {
            let _doc: &str = cursor.read_string()?;
        }
        // Every server here sends one message per frame.
        let mut replies = Vec::new();
        let kind: u32 = cursor.read_var()?;
        if self.debug {
            eprintln!(
                "peer {} got {:?}",
                self.client,
                &frame[..frame.len().min(24)]
            );
        }
        match kind {
            0 => {
                let step: u32 = cursor.read_var()?;
                let payload = cursor.read_buf()?;
                match step {
                    0 => {
                        let sv = StateVector::decode_v1(payload)?;
                        let diff = self.doc.transact().encode_diff_v1(&sv);
                        let mut reply = Vec::new();
                        reply.write_var(0u32);
                        reply.write_var(1u32);
                        reply.write_buf(&diff);
                        replies.push(reply);
                    }
                    1 => {
                        self.step2_bytes = payload.len().max(1);
                        if self.apply != Apply::Never {
                            self.apply_update(payload)?;
                        }
                    }
                    2 => self.update(payload)?,
                    other => bail!("unknown sync step {other}"),
                }
            }
            1 => {
                self.counters.awareness.fetch_add(1, Ordering::Relaxed);
            }
            2 => {
                // y-protocols Auth: 0 = permission denied. Hocuspocus answers its auth message
                // with the same type (2 = authenticated).
                let verdict: u32 = cursor.read_var()?;
                if verdict == 0 {
                    let reason = cursor.read_string().unwrap_or_default();
                    bail!("permission denied: {reason}");
                }
            }
            // Query awareness, and Hocuspocus' own messages (stateless, sync status, close …).
            _ => {}
        }
        Ok(replies)
    }

    fn update(&mut self, update: &[u8]) -> Result<()> {
        // An echo of our own edit (y-websocket and y-sweet send updates to their origin too) is
        // not a delivery, but it is still applied: a server may merge updates of several
        // clients into one, and the header names only the first.
        match simple_update_id(update) {
            Some((client, clock, len)) => self.delivered(client, clock, len),
            None => {
                // Several edits in one frame (Hocuspocus merges what arrives in one turn of its
                // event loop): every edit in it counts, by the clock range of each client.
                if let Ok(decoded) = Update::decode_v1(update) {
                    for (client, ranges) in decoded.insertions(true).iter() {
                        for range in ranges.iter() {
                            self.delivered(client.get(), range.start, range.end - range.start);
                        }
                    }
                }
            }
        }
        match self.apply {
            Apply::Immediate => self.apply_update(update)?,
            Apply::Deferred => self.deferred.write_buf(update),
            Apply::Never | Apply::Bulk => {}
        }
        Ok(())
    }

    /// Counts `edits` one-character edits of `client` from `clock` on as delivered (not our own:
    /// y-websocket and y-sweet echo updates to their origin, which is no delivery).
    fn delivered(&mut self, client: u64, clock: u32, edits: u32) {
        if client == self.client {
            return;
        }
        let log = match self.logs.get(&client) {
            Some(log) => Some(log),
            None => match self.shared.logs.get(&client) {
                Some(log) => Some(&*self.logs.entry(client).or_insert(log.clone())),
                None => None,
            },
        };
        if let Some(log) = log {
            let now = self.shared.now();
            for clock in clock..clock + edits {
                if let Some(sent) = log.get(clock) {
                    let _ = self.latencies.record(now.saturating_sub(sent).max(1));
                }
            }
        }
        // Only this peer writes its counter: a plain load and store, no locked instruction.
        let delivered = self.counters.deliveries.load(Ordering::Relaxed) + u64::from(edits);
        self.counters.deliveries.store(delivered, Ordering::Relaxed);
    }

    fn apply_update(&mut self, update: &[u8]) -> Result<()> {
        let update = Update::decode_v1(update)?;
        self.doc.transact_mut().apply_update(update)?;
        Ok(())
    }

    fn edit(&mut self, len: usize) -> Vec<u8> {
        let clock = self.clock;
        let update = {
            let mut txn = self.doc.transact_mut();
            let at = self.text.len(&txn);
            let chunk: String = (0..len)
                .map(|i| char::from(b'a' + ((clock as usize + i) % 26) as u8))
                .collect();
            self.text.insert(&mut txn, at, &chunk);
            txn.encode_update_v1()
        };
        // Characters a-z: one clock unit each.
        self.clock += len as u32;
        let log = self.log.get_or_insert_with(|| {
            let log = Arc::new(SendLog::new());
            self.shared.logs.insert(self.client, log.clone());
            log
        });
        if let Some(slot) = log.slot(clock) {
            slot.store(self.shared.now(), Ordering::Release);
        }
        let mut message = Vec::with_capacity(update.len() + 4);
        message.write_var(0u32);
        message.write_var(2u32);
        message.write_buf(&update);
        message
    }

    fn awareness(&mut self) -> Vec<u8> {
        self.awareness_clock += 1;
        let state = format!(
            r##"{{"user":{{"name":"peer {}","color":"#2563eb","colorLight":"#2563eb33"}},"cursor":{{"anchor":{{"type":null,"tname":"t","item":null,"assoc":0}},"head":{{"type":null,"tname":"t","item":null,"assoc":0}}}},"n":{}}}"##,
            self.client % 10_000,
            self.awareness_clock
        );
        let mut payload = EncoderV1::new();
        payload.write_var(1u32);
        payload.write_var(self.client);
        payload.write_var(self.awareness_clock);
        payload.write_string(&state);
        let mut message = Vec::new();
        message.write_var(1u32);
        message.write_buf(payload.to_vec());
        message
    }
}

/// The (client, clock, length) of a v1 update that holds one string insert of one client (an
/// edit, or consecutive edits of one client squashed into one struct, as Hocuspocus' merged
/// broadcasts hold them), read from its first bytes; `None` for anything else.
pub fn simple_update_id(update: &[u8]) -> Option<(u64, u32, u32)> {
    let mut cursor = Cursor::new(update);
    let clients: u32 = cursor.read_var().ok()?;
    let structs: u32 = cursor.read_var().ok()?;
    if clients != 1 || structs != 1 {
        return None;
    }
    let client: u64 = cursor.read_var().ok()?;
    let clock: u32 = cursor.read_var().ok()?;
    let info = cursor.read_u8().ok()?;
    let (has_origin, has_right_origin, has_parent_sub) =
        (info & 0x80 != 0, info & 0x40 != 0, info & 0x20 != 0);
    if has_origin {
        let _: (u64, u32) = (cursor.read_var().ok()?, cursor.read_var().ok()?);
    }
    if has_right_origin {
        let _: (u64, u32) = (cursor.read_var().ok()?, cursor.read_var().ok()?);
    }
    if !has_origin && !has_right_origin {
        let named_parent: u32 = cursor.read_var().ok()?;
        if named_parent == 1 {
            let _ = cursor.read_string().ok()?;
        } else {
            let _: (u64, u32) = (cursor.read_var().ok()?, cursor.read_var().ok()?);
        }
        if has_parent_sub {
            let _ = cursor.read_string().ok()?;
        }
    }
    // Content ref 4: a string, as long (in UTF-16 units, which is clock units) as it reads.
    if info & 0x1f != 4 {
        return None;
    }
    let text = cursor.read_string().ok()?;
    Some((client, clock, text.encode_utf16().count() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_edit_is_identified_by_its_client_and_its_clock_before_the_edit() {
        let doc = Doc::with_client_id(12345);
        let text = doc.get_or_insert_text(TEXT);
        text.insert(&mut doc.transact_mut(), 0, "hello");
        let update = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 5, "abc");
            txn.encode_update_v1()
        };
        assert_eq!(simple_update_id(&update), Some((12345, 5, 3)));
        assert_eq!(simple_update_id(&[0, 0]), None);
        // The first edit has no origin: its parent is the root type, by name.
        let fresh = Doc::with_client_id(9);
        let root = fresh.get_or_insert_text(TEXT);
        let first = {
            let mut txn = fresh.transact_mut();
            root.insert(&mut txn, 0, "héllo");
            txn.encode_update_v1()
        };
        assert_eq!(simple_update_id(&first), Some((9, 0, 5)));
    }
}
