//! A receive-only joiner ([`Apply::Bulk`]): it connects, sends its sync step 1 like any
//! y-websocket client and reads the server's frames straight off the socket into one reused
//! buffer, counting the bytes of the sync step 2 instead of putting the message together.
//!
//! A join storm puts 150 copies of a 20 MB state through the load generator, on the same two
//! cores as the server. Through tungstenite every joiner reserved a fresh 20 MB buffer, zeroed it
//! chunk by chunk and read into it: three gigabytes of page faults and memset that were the load
//! generator's, not the server's. Here the only copy is the kernel's.
//!
//! [`Apply::Bulk`]: super::peer::Apply::Bulk

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use yrs::StateVector;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

use super::peer::{
    Command, Framing, PeerOptions, Report, framed, hocuspocus_auth, new_histogram, sync_step1,
};

/// Bytes read from the socket at a time.
const READ_BYTES: usize = 256 * 1024;
/// Payload bytes of a message's first frame needed to tell what the message is.
const PREFIX_BYTES: usize = 64;

const BINARY: OpCode = OpCode::Data(Data::Binary);

/// What the frame being read belongs to.
enum State {
    /// Waiting for a frame header.
    Header,
    /// Skipping `remaining` payload bytes of a data frame.
    Payload { remaining: u64, fin: bool },
}

pub(super) async fn run(
    options: PeerOptions,
    mut commands: mpsc::Receiver<Command>,
    synced: oneshot::Sender<Duration>,
) -> Result<Report> {
    let started = Instant::now();
    let rest = options.url.strip_prefix("ws://").context("ws:// URL")?;
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let stream = TcpStream::connect(host).await.context("connect")?;
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    writer.write_all(request.as_bytes()).await?;

    let mut buf = vec![0u8; READ_BYTES];
    let mut end = 0usize;
    let mut start = loop {
        if let Some(i) = buf[..end].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]);
            ensure!(
                head.starts_with("HTTP/1.1 101"),
                "websocket handshake refused: {}",
                head.lines().next().unwrap_or("")
            );
            break i + 4;
        }
        ensure!(end < buf.len(), "handshake response too long");
        let n = reader.read(&mut buf[end..]).await?;
        ensure!(n > 0, "connection ended during the handshake");
        end += n;
    };

    if let Framing::Hocuspocus { .. } = options.framing {
        send(
            &mut writer,
            BINARY,
            &framed(&options.framing, &hocuspocus_auth()),
        )
        .await?;
    }
    let step1 = sync_step1(&StateVector::default());
    send(&mut writer, BINARY, &framed(&options.framing, &step1)).await?;
    // This joiner's doc is empty: its answer to the server's step 1 is the empty update.
    let mut step2 = Vec::new();
    step2.write_var(0u32);
    step2.write_var(1u32);
    Write::write_buf(&mut step2, [0u8, 0]);
    let step2 = framed(&options.framing, &step2);

    let mut synced = Some(synced);
    let mut state = State::Header;
    let mut step2_bytes = 0usize;
    // Whether the message being read is the server's sync step 2.
    let mut in_step2 = false;
    loop {
        // Take apart everything the buffer holds.
        loop {
            match state {
                State::Header => {
                    let Some((header, len, header_len)) = parse_header(&buf[start..end])? else {
                        break;
                    };
                    let fin = header.is_final;
                    let available = end - start - header_len;
                    match header.opcode {
                        OpCode::Control(Control::Close) => bail!("server closed"),
                        OpCode::Control(control @ (Control::Ping | Control::Pong)) => {
                            if available < len as usize {
                                break;
                            }
                            let payload =
                                &buf[start + header_len..start + header_len + len as usize];
                            if control == Control::Ping {
                                send(&mut writer, OpCode::Control(Control::Pong), payload).await?;
                            }
                            start += header_len + len as usize;
                        }
                        OpCode::Data(Data::Continue) => {
                            start += header_len;
                            state = State::Payload {
                                remaining: len,
                                fin,
                            };
                        }
                        _ => {
                            // The first frame of a message: read what it is.
                            let need = PREFIX_BYTES.min(len as usize);
                            if available < need {
                                break;
                            }
                            let prefix = &buf[start + header_len..start + header_len + need];
                            match classify(&options.framing, prefix)? {
                                Kind::ServerStep1 => send(&mut writer, BINARY, &step2).await?,
                                Kind::Step2(bytes) => {
                                    step2_bytes = bytes.max(1);
                                    in_step2 = true;
                                }
                                Kind::Other => {}
                            }
                            start += header_len;
                            state = State::Payload {
                                remaining: len,
                                fin,
                            };
                        }
                    }
                }
                State::Payload { remaining, fin } => {
                    let take = remaining.min((end - start) as u64);
                    start += take as usize;
                    if take < remaining {
                        state = State::Payload {
                            remaining: remaining - take,
                            fin,
                        };
                        break;
                    }
                    state = State::Header;
                    if fin && in_step2 {
                        in_step2 = false;
                        if let Some(synced) = synced.take() {
                            let _ = synced.send(started.elapsed());
                        }
                    }
                }
            }
        }
        // Keep what is left (a partial header) at the front.
        buf.copy_within(start..end, 0);
        end -= start;
        start = 0;

        tokio::select! {
            n = reader.read(&mut buf[end..]) => {
                let n = n?;
                ensure!(n > 0, "connection ended");
                end += n;
            }
            command = commands.recv() => match command {
                Some(Command::Raw(message)) => {
                    send(&mut writer, BINARY, &framed(&options.framing, &message)).await?;
                }
                Some(Command::TakeLatencies(reply)) => {
                    let _ = reply.send(new_histogram());
                }
                Some(Command::Edit { .. } | Command::Awareness) => {
                    bail!("a bulk receiver neither edits nor sends presence")
                }
                Some(Command::Close) | None => break,
            }
        }
    }
    let _ = send(&mut writer, OpCode::Control(Control::Close), &[]).await;
    Ok(Report {
        latencies: new_histogram(),
        text: String::new(),
        step2_bytes,
    })
}

enum Kind {
    ServerStep1,
    /// A sync step 2 whose update has this many bytes.
    Step2(usize),
    Other,
}

fn classify(framing: &Framing, prefix: &[u8]) -> Result<Kind> {
    let mut cursor = Cursor::new(prefix);
    if let Framing::Hocuspocus { .. } = framing {
        let _doc: &str = cursor.read_string()?;
    }
    let kind: u32 = cursor.read_var()?;
    if kind != 0 {
        return Ok(Kind::Other);
    }
    let step: u32 = cursor.read_var()?;
    Ok(match step {
        0 => Kind::ServerStep1,
        1 => Kind::Step2(cursor.read_var::<u64>()? as usize),
        _ => Kind::Other,
    })
}

/// Parses a server frame's header: the header, the payload length and the header's length;
/// `None` until the whole header is in `bytes`.
fn parse_header(bytes: &[u8]) -> Result<Option<(FrameHeader, u64, usize)>> {
    let mut cursor = std::io::Cursor::new(bytes);
    let Some((header, len)) = FrameHeader::parse(&mut cursor)? else {
        return Ok(None);
    };
    ensure!(header.mask.is_none(), "the server sent a masked frame");
    Ok(Some((header, len, cursor.position() as usize)))
}

/// Sends one masked client frame (RFC 6455 requires clients to mask).
async fn send(writer: &mut OwnedWriteHalf, opcode: OpCode, payload: &[u8]) -> Result<()> {
    let header = FrameHeader {
        opcode,
        mask: Some(rand::random()),
        ..FrameHeader::default()
    };
    let mut frame = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
    Frame::from_payload(header, Bytes::copy_from_slice(payload)).format(&mut frame)?;
    writer.write_all(&frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opcode, FIN, payload length and header length of a parsed header.
    fn parsed(bytes: &[u8]) -> Option<(OpCode, bool, u64, usize)> {
        parse_header(bytes)
            .unwrap()
            .map(|(header, len, header_len)| (header.opcode, header.is_final, len, header_len))
    }

    #[test]
    fn headers_of_every_length_form_parse() {
        assert_eq!(parsed(&[0x82]), None);
        assert_eq!(parsed(&[0x82, 5]), Some((BINARY, true, 5, 2)));
        assert_eq!(parsed(&[0x02, 126, 1]), None);
        assert_eq!(parsed(&[0x02, 126, 1, 0]), Some((BINARY, false, 256, 4)));
        let mut long = vec![0x80, 127];
        long.extend_from_slice(&(20_000_000u64).to_be_bytes());
        assert_eq!(
            parsed(&long),
            Some((OpCode::Data(Data::Continue), true, 20_000_000, 10))
        );
        // A masked frame is known once its mask is in.
        assert!(
            parse_header(&[0x82, 0x85, 1, 2, 3, 4]).is_err(),
            "masked server frame"
        );
    }

    #[test]
    fn messages_are_told_apart_by_their_prefix() {
        let plain = Framing::Plain;
        assert!(matches!(
            classify(&plain, &[0, 0, 1, 0]).unwrap(),
            Kind::ServerStep1
        ));
        // Step 2 of a 300-byte update: varint 300 is [0xac, 0x02].
        assert!(matches!(
            classify(&plain, &[0, 1, 0xac, 0x02, 7]).unwrap(),
            Kind::Step2(300)
        ));
        assert!(matches!(classify(&plain, &[1, 3]).unwrap(), Kind::Other));
        let hocuspocus = Framing::Hocuspocus { doc: "big".into() };
        let mut message = framed(&hocuspocus, &[0, 1, 5]);
        message.extend_from_slice(&[1, 2, 3, 4, 5]);
        assert!(matches!(
            classify(&hocuspocus, &message).unwrap(),
            Kind::Step2(5)
        ));
    }
}
