//! The Hocuspocus protocol (as spoken by `@hocuspocus/provider` 2.x-4.x): frame bytes to one
//! typed message addressed to one document, and the encoders of the server's answers.
//!
//! Every frame is `[var-string routing key][var-uint type][payload]`. The routing key is the
//! document name, or `name + "\0" + session id` from a session-aware provider; answers are
//! addressed with the key exactly as the client sent it. After the key, Sync, Awareness and
//! QueryAwareness are the y-websocket messages of [`crate::protocol`], so their payloads decode
//! with the same code and the same limits, and the doc sees the same [`Message`]s.
//!
//! Like `protocol`, this never panics on peer bytes: every length is checked against the frame
//! before anything is read or allocated, and the routing key has a hard limit of its own.
//! `protocol-spec/hocuspocus.md` is the contract; the frames are those of
//! `benches/peers/PROTOCOLS.md`, section 2.

use bytes::{BufMut, Bytes, BytesMut};

use crate::limits::Limits;
use crate::protocol::{
    AwarenessPayload, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, Message, ProtocolError, Reader,
    decode_awareness, decode_sync, write_var_u64,
};

/// Message type: a Sync message (y-protocols).
pub const HP_SYNC: u64 = MSG_SYNC;
/// Message type: an Awareness update.
pub const HP_AWARENESS: u64 = MSG_AWARENESS;
/// Message type: authentication (a token from the client; permission denied or authenticated
/// from the server).
pub const HP_AUTH: u64 = 2;
/// Message type: a request for every awareness state.
pub const HP_QUERY_AWARENESS: u64 = MSG_QUERY_AWARENESS;
/// Message type: a Sync message whose step 1 asks for no step 1 back; handled like Sync.
pub const HP_SYNC_REPLY: u64 = 4;
/// Message type: an application string, relayed to the doc's other Hocuspocus peers.
pub const HP_STATELESS: u64 = 5;
/// Message type: a client detaches from one document (the server answers with a reason).
pub const HP_CLOSE: u64 = 7;
/// Message type: the server's acknowledgement of one update (`1` stored, `0` refused).
pub const HP_SYNC_STATUS: u64 = 8;
/// Message type: the provider's answer to an application-level ping, sent without a routing key.
pub const HP_PONG: u64 = 10;

/// Auth sub-type: the client's token.
pub const AUTH_TOKEN: u64 = 0;
/// Auth sub-type: the server refuses the token for this document, with a reason.
pub const AUTH_PERMISSION_DENIED: u64 = 1;
/// Auth sub-type: the server accepts the token, with the scope it grants.
pub const AUTH_AUTHENTICATED: u64 = 2;

/// The scope of a peer that may write.
pub const SCOPE_READ_WRITE: &str = "read-write";
/// The scope of a read-only peer: its updates are answered with SyncStatus `0`.
pub const SCOPE_READ_ONLY: &str = "readonly";

/// Longest routing key accepted: a document name (255 bytes) plus a session id, with room.
pub const MAX_ROUTING_KEY_BYTES: u64 = 512;
/// Longest token accepted in an Auth message (a JWT with many claims stays far below).
pub const MAX_TOKEN_BYTES: u64 = 16 * 1024;
/// Longest stateless payload accepted and relayed.
pub const MAX_STATELESS_BYTES: u64 = 64 * 1024;

/// What one Hocuspocus frame from a client asks.
#[derive(Debug)]
pub enum ClientFrame {
    /// A message for one document.
    ToDoc {
        /// The routing key exactly as sent (document name, maybe `\0` and a session id).
        key: String,
        /// What it asks of that document.
        message: HpMessage,
    },
    /// The provider's answer to a ping (one byte `[10]`, no routing key); nothing to do.
    Pong,
}

/// A message for one document.
#[derive(Debug)]
pub enum HpMessage {
    /// Sync, Awareness or QueryAwareness: what a y-websocket peer sends, handled the same way.
    Doc(Message),
    /// The token for this document.
    Auth {
        /// The token; empty when the provider has none.
        token: String,
    },
    /// An application string for the document's other Hocuspocus peers.
    Stateless(Bytes),
    /// The client detaches from this document.
    Close,
}

impl ClientFrame {
    /// The document part of a routing key: everything before the first `\0`.
    pub fn doc_name(key: &str) -> &str {
        key.split('\0').next().unwrap_or(key)
    }
}

/// Decodes one binary frame from a Hocuspocus client.
///
/// The frame size limit is checked first, then the routing key's announced length, before it
/// is read. A frame carries exactly one message: trailing bytes are refused, except after an
/// Auth message (the provider appends its version there).
pub fn decode_client_frame(frame: &Bytes, limits: &Limits) -> Result<ClientFrame, ProtocolError> {
    if frame.len() as u64 > limits.max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge {
            len: frame.len() as u64,
            max: limits.max_frame_bytes,
        });
    }
    if frame.is_empty() {
        return Err(ProtocolError::Malformed("empty frame"));
    }
    if frame[..] == [HP_PONG as u8] {
        return Ok(ClientFrame::Pong);
    }
    let mut reader = Reader::new(frame);
    let key_len = {
        // Peek at the announced length without consuming, so the limit is checked first.
        let mut peek = Reader::new(frame);
        peek.read_var_u64()?
    };
    if key_len > MAX_ROUTING_KEY_BYTES {
        return Err(ProtocolError::NameTooLong {
            len: key_len,
            max: MAX_ROUTING_KEY_BYTES,
        });
    }
    let key = reader.read_string()?.to_owned();
    let message = match reader.read_var_u64()? {
        HP_SYNC | HP_SYNC_REPLY => HpMessage::Doc(decode_sync(&mut reader)?),
        HP_AWARENESS => {
            let raw = reader.read_buf()?;
            let entries = decode_awareness(&raw, limits)?;
            HpMessage::Doc(Message::Awareness(AwarenessPayload { raw, entries }))
        }
        HP_QUERY_AWARENESS => HpMessage::Doc(Message::QueryAwareness),
        HP_AUTH => {
            if reader.read_var_u64()? != AUTH_TOKEN {
                return Err(ProtocolError::Malformed(
                    "auth from a client must carry a token",
                ));
            }
            let token = reader.read_string()?;
            if token.len() as u64 > MAX_TOKEN_BYTES {
                return Err(ProtocolError::Malformed("token longer than 16 KiB"));
            }
            let token = token.to_owned();
            // The provider's version may follow; it is not needed.
            return Ok(ClientFrame::ToDoc {
                key,
                message: HpMessage::Auth { token },
            });
        }
        HP_STATELESS => {
            let payload = reader.read_buf()?;
            if payload.len() as u64 > MAX_STATELESS_BYTES {
                return Err(ProtocolError::StatelessTooLarge {
                    len: payload.len() as u64,
                    max: MAX_STATELESS_BYTES,
                });
            }
            if std::str::from_utf8(&payload).is_err() {
                return Err(ProtocolError::Malformed("string is not utf-8"));
            }
            HpMessage::Stateless(payload)
        }
        HP_CLOSE => HpMessage::Close,
        other => return Err(ProtocolError::UnsupportedMessage(other)),
    };
    if !reader.is_empty() {
        return Err(ProtocolError::Malformed("trailing bytes after message"));
    }
    Ok(ClientFrame::ToDoc { key, message })
}

/// The var-string routing key that starts every frame to the client.
pub fn encode_key(key: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(key.len() + 2);
    write_var_u64(&mut out, key.len() as u64);
    out.put_slice(key.as_bytes());
    out.freeze()
}

fn with_key(key: &str, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(key.len() + 16);
    write_var_u64(&mut out, key.len() as u64);
    out.put_slice(key.as_bytes());
    body(&mut out);
    out.freeze()
}

fn write_string(out: &mut BytesMut, text: &str) {
    write_var_u64(out, text.len() as u64);
    out.put_slice(text.as_bytes());
}

/// `[key][2][2][scope]`: the token is accepted with `scope`.
pub fn encode_authenticated(key: &str, scope: &str) -> Bytes {
    with_key(key, |out| {
        write_var_u64(out, HP_AUTH);
        write_var_u64(out, AUTH_AUTHENTICATED);
        write_string(out, scope);
    })
}

/// `[key][2][1][reason]`: the token is refused for this document.
pub fn encode_permission_denied(key: &str, reason: &str) -> Bytes {
    with_key(key, |out| {
        write_var_u64(out, HP_AUTH);
        write_var_u64(out, AUTH_PERMISSION_DENIED);
        write_string(out, reason);
    })
}

/// `[key][7][reason]`: this document is detached; the socket stays open.
pub fn encode_close(key: &str, reason: &str) -> Bytes {
    with_key(key, |out| {
        write_var_u64(out, HP_CLOSE);
        write_string(out, reason);
    })
}

/// `[8][applied]` without a routing key: the doc actor's acknowledgement of one update, which
/// the connection prefixes with the key on the way out.
pub fn encode_sync_status(applied: bool) -> Bytes {
    Bytes::from_static(if applied { &[8, 1] } else { &[8, 0] })
}

/// `[5][payload]` without a routing key: a stateless message relayed through the doc actor.
pub fn encode_stateless(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 6);
    write_var_u64(&mut out, HP_STATELESS);
    write_var_u64(&mut out, payload.len() as u64);
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_awareness_raw, encode_sync_step1, encode_sync_update};
    use yrs::{Doc, StateVector, Text, Transact};

    fn limits() -> Limits {
        Limits::default()
    }

    fn frame(key: &str, body: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        out.put_slice(&encode_key(key));
        out.put_slice(body);
        out.freeze()
    }

    fn text_update(content: &str) -> Vec<u8> {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.push(&mut txn, content);
        txn.encode_update_v1()
    }

    #[test]
    fn the_providers_auth_with_its_version_decodes() {
        // `d1`, Auth, Token "", then the provider's version "4.7.0" (PROTOCOLS.md, section 2).
        let bytes = Bytes::from_static(&[
            0x02, b'd', b'1', 0x02, 0x00, 0x00, 0x05, b'4', b'.', b'7', b'.', b'0',
        ]);
        let ClientFrame::ToDoc { key, message } = decode_client_frame(&bytes, &limits()).unwrap()
        else {
            panic!("expected a doc message")
        };
        assert_eq!(key, "d1");
        assert!(matches!(message, HpMessage::Auth { token } if token.is_empty()));
    }

    #[test]
    fn sync_awareness_and_query_decode_as_y_websocket_messages() {
        let update = text_update("hello");
        let step1 = frame("team/notes.md", &encode_sync_step1(&StateVector::default()));
        let upd = frame("team/notes.md", &encode_sync_update(&update));
        let awareness = frame(
            "a",
            &encode_awareness_raw(b"\x01\x01\x03\x17{\"user\":{\"name\":\"Ada\"}}"),
        );
        let query = frame("a", &[3]);
        for (bytes, check) in [
            (step1, "step1"),
            (upd, "update"),
            (awareness, "awareness"),
            (query, "query"),
        ] {
            let ClientFrame::ToDoc { message, .. } =
                decode_client_frame(&bytes, &limits()).expect(check)
            else {
                panic!("{check}: expected a doc message")
            };
            let ok = matches!(
                (check, &message),
                ("step1", HpMessage::Doc(Message::SyncStep1(_)))
                    | ("update", HpMessage::Doc(Message::Update(_)))
                    | ("awareness", HpMessage::Doc(Message::Awareness(_)))
                    | ("query", HpMessage::Doc(Message::QueryAwareness))
            );
            assert!(ok, "{check}: {message:?}");
        }
    }

    #[test]
    fn a_composite_key_names_the_document_before_the_nul() {
        assert_eq!(ClientFrame::doc_name("team/a.md\0s3ss10n"), "team/a.md");
        assert_eq!(ClientFrame::doc_name("plain"), "plain");
    }

    #[test]
    fn close_stateless_and_pong_decode() {
        let close = decode_client_frame(&frame("d", &[7]), &limits()).unwrap();
        assert!(matches!(
            close,
            ClientFrame::ToDoc {
                message: HpMessage::Close,
                ..
            }
        ));
        let stateless = decode_client_frame(&frame("d", &[5, 2, b'h', b'i']), &limits()).unwrap();
        assert!(matches!(
            stateless,
            ClientFrame::ToDoc { message: HpMessage::Stateless(p), .. } if &p[..] == b"hi"
        ));
        assert!(matches!(
            decode_client_frame(&Bytes::from_static(&[10]), &limits()),
            Ok(ClientFrame::Pong)
        ));
    }

    #[test]
    fn hostile_frames_are_refused_with_the_right_error() {
        let mut huge_key = BytesMut::new();
        write_var_u64(&mut huge_key, 1 << 20);
        huge_key.put_slice(&[b'a'; 16]);
        let cases: Vec<(Bytes, ProtocolError)> = vec![
            (Bytes::new(), ProtocolError::Malformed("empty frame")),
            (
                huge_key.freeze(),
                ProtocolError::NameTooLong {
                    len: 1 << 20,
                    max: MAX_ROUTING_KEY_BYTES,
                },
            ),
            (
                Bytes::from_static(&[5, b'a']),
                ProtocolError::Malformed("length prefix exceeds frame"),
            ),
            (
                Bytes::from_static(&[1, 0xff, 0]),
                ProtocolError::Malformed("string is not utf-8"),
            ),
            (
                frame("d", &[]),
                ProtocolError::Malformed("truncated var-uint"),
            ),
            (frame("d", &[6]), ProtocolError::UnsupportedMessage(6)),
            (frame("d", &[8, 1]), ProtocolError::UnsupportedMessage(8)),
            (frame("d", &[99]), ProtocolError::UnsupportedMessage(99)),
            (
                frame("d", &[0, 9]),
                ProtocolError::UnsupportedSyncMessage(9),
            ),
            (
                frame("d", &[3, 3]),
                ProtocolError::Malformed("trailing bytes after message"),
            ),
            (
                frame("d", &[2, 2, 1, b'x']),
                ProtocolError::Malformed("auth from a client must carry a token"),
            ),
            (
                frame("d", &[5, 1, 0xff]),
                ProtocolError::Malformed("string is not utf-8"),
            ),
        ];
        for (bytes, expected) in cases {
            let got = decode_client_frame(&bytes, &limits())
                .map(|_| ())
                .unwrap_err();
            assert_eq!(got, expected, "frame {:02x?}", &bytes[..]);
        }
    }

    #[test]
    fn an_oversized_stateless_payload_is_refused() {
        let mut body = BytesMut::new();
        write_var_u64(&mut body, HP_STATELESS);
        write_var_u64(&mut body, MAX_STATELESS_BYTES + 1);
        body.put_slice(&vec![b'a'; MAX_STATELESS_BYTES as usize + 1]);
        let got = decode_client_frame(&frame("d", &body), &limits()).map(|_| ());
        assert_eq!(
            got.unwrap_err(),
            ProtocolError::StatelessTooLarge {
                len: MAX_STATELESS_BYTES + 1,
                max: MAX_STATELESS_BYTES
            }
        );
    }

    #[test]
    fn the_servers_answers_match_the_verified_bytes() {
        assert_eq!(
            &encode_authenticated("d1", SCOPE_READ_WRITE)[..],
            b"\x02d1\x02\x02\x0aread-write"
        );
        assert_eq!(
            &encode_permission_denied("d1", "no")[..],
            b"\x02d1\x02\x01\x02no"
        );
        assert_eq!(
            &encode_close("d1", "provider_initiated")[..],
            b"\x02d1\x07\x12provider_initiated"
        );
        assert_eq!(&encode_sync_status(true)[..], &[8, 1]);
        assert_eq!(&encode_stateless(b"hi")[..], &[5, 2, b'h', b'i']);
    }

    /// Any bytes decode to a frame or an error, never a panic: a seeded sweep of random frames
    /// and of every truncation and one-byte corruption of valid ones.
    #[test]
    fn random_and_mutated_frames_never_panic() {
        let update = text_update("fuzz");
        let valid = [
            frame("doc", &encode_sync_update(&update)),
            frame("doc", &encode_sync_step1(&StateVector::default())),
            Bytes::from_static(&[
                0x02, b'd', b'1', 0x02, 0x00, 0x00, 0x05, b'4', b'.', b'7', b'.', b'0',
            ]),
            frame("doc", &[5, 2, b'h', b'i']),
            frame("doc", &encode_awareness_raw(b"\x01\x01\x01\x02{}")),
        ];
        for bytes in &valid {
            for cut in 0..bytes.len() {
                let _ = decode_client_frame(&bytes.slice(..cut), &limits());
            }
            for at in 0..bytes.len() {
                for value in [0u8, 1, 0x7f, 0x80, 0xff] {
                    let mut mutated = bytes.to_vec();
                    mutated[at] = value;
                    let _ = decode_client_frame(&Bytes::from(mutated), &limits());
                }
            }
        }
        // xorshift: deterministic, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (state.rotate_left(i as u32 * 5) & 0xff) as u8)
                .collect();
            let _ = decode_client_frame(&Bytes::from(bytes), &limits());
        }
    }
}
