//! A bare relay: the floor for a WebSocket hub on this machine.
//!
//! Peers on the same path form a room; every binary frame a peer sends goes to every other peer
//! of the room as it is, with no CRDT work, no storage and no checks. The only protocol it knows:
//! a sync step 1 is answered with an empty sync step 2, so y-websocket clients count as synced,
//! and is not forwarded. Writers batch like Tandem's (feed what is queued, flush once) and
//! sockets run with TCP_NODELAY, so the difference to Tandem is the work Tandem does.
//!
//! Usage: `relay [--port N]` (0 = any); prints `listening http://127.0.0.1:PORT`.

// A stand-alone floor, not the server: none of `Lifecycle`'s shutdown tracking.
#![allow(clippy::disallowed_methods)]
// tungstenite fixes the callback's error type.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Frames a slow reader may have queued before it is dropped.
const OUTBOX: usize = 4096;

type Room = DashMap<u64, mpsc::Sender<Bytes>>;

#[derive(Default)]
struct Rooms {
    rooms: DashMap<String, Arc<Room>>,
    next_id: AtomicU64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--port" {
            port = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening http://{}", listener.local_addr()?);
    let rooms = Arc::new(Rooms::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let _ = serve(stream, rooms).await;
        });
    }
}

async fn serve(
    stream: TcpStream,
    rooms: Arc<Rooms>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    stream.set_nodelay(true)?;
    let mut path = String::new();
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |request: &Request, response: Response| {
            path = request.uri().path().to_owned();
            Ok(response)
        },
        Some(config),
    )
    .await?;
    let (mut sink, mut source) = ws.split();
    let room = rooms.rooms.entry(path.clone()).or_default().clone();
    let id = rooms.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Bytes>(OUTBOX);
    room.insert(id, tx.clone());

    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.feed(Message::Binary(frame)).await.is_err() {
                return;
            }
            while let Ok(frame) = rx.try_recv() {
                if sink.feed(Message::Binary(frame)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });

    while let Some(message) = source.next().await {
        let frame = match message? {
            Message::Binary(frame) => frame,
            Message::Close(_) => break,
            _ => continue,
        };
        if frame.starts_with(&[0, 0]) {
            // Sync step 1: "synced" with an empty step 2 (an update with no structs, no deletes).
            let _ = tx.try_send(Bytes::from_static(&[0, 1, 2, 0, 0]));
            continue;
        }
        let mut slow = Vec::new();
        for other in room.iter() {
            if *other.key() != id && other.value().try_send(frame.clone()).is_err() {
                slow.push(*other.key());
            }
        }
        // A full outbox: that peer is too slow and is dropped, as a hub would (after the
        // iteration, which holds the map's read locks).
        for key in slow {
            room.remove(&key);
        }
    }
    room.remove(&id);
    drop(tx);
    let _ = writer.await;
    if room.is_empty() {
        rooms.rooms.remove_if(&path, |_, room| room.is_empty());
    }
    Ok(())
}
