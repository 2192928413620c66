//! The client's address behind trusted proxies: which peers are trusted, what they may tell us
//! (`X-Forwarded-For`, RFC 7239 `Forwarded`, the PROXY protocol), and the [`ClientAddr`] every
//! request carries in its extensions.
//!
//! Only a peer inside `--trusted-proxies` is believed; from anyone else these headers are ignored,
//! so a client cannot choose the address it is counted under. A forwarding header is read from
//! the right: each proxy appends the address it received the request from, so the rightmost
//! address that is not itself a trusted proxy is the first one no trusted hop can vouch beyond,
//! and everything to its left is the client's own (forgeable) claim. Only one of the two headers
//! is read, the one `--forwarded-header` names (`X-Forwarded-For` by default, which the common
//! proxies append to): a proxy passes the other through untouched, so believing it would let the
//! client choose its address. In `Forwarded`, quoted strings and their `\` escapes are honoured,
//! and an element without `for=`, or whose quote never closes, ends the walk like an unknown node.
//!
//! This module parses; `listener.rs` decides where the result is counted.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
use axum::http::header::{FORWARDED, HeaderName};
use ipnet::IpNet;

/// `X-Forwarded-For`, which `http` has no constant for.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Longest PROXY header read: a v1 header is at most 107 bytes; a v2 header is 16 bytes plus its
/// addresses and TLVs, which haproxy keeps far below this.
pub(crate) const MAX_PROXY_HEADER_BYTES: usize = 4096;

/// The peers whose forwarding headers and PROXY headers are believed (`--trusted-proxies`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts the networks in `nets`; an empty list trusts nobody.
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { nets }
    }

    /// The default: loopback (127.0.0.0/8 and ::1), where a local reverse proxy runs.
    pub fn loopback() -> TrustedProxies {
        TrustedProxies::new(vec![
            IpNet::from_str("127.0.0.0/8").expect("a valid literal"),
            IpNet::from_str("::1/128").expect("a valid literal"),
        ])
    }

    /// Whether `ip` is a trusted proxy. An IPv4 peer of a dual-stack socket (`::ffff:a.b.c.d`)
    /// is matched as `a.b.c.d`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The trusted networks, for the start-up log.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list as `--trusted-proxies` takes it (`10.0.0.0/8,::1`, or `none`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let entries = text
            .split(',')
            .map(TrustedProxyArg::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies::new(
            entries.into_iter().filter_map(|entry| entry.0).collect(),
        ))
    }
}

/// One entry of `--trusted-proxies`: a CIDR (`10.0.0.0/8`), a bare address, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxyArg(pub Option<IpNet>);

impl FromStr for TrustedProxyArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("none") {
            return Ok(TrustedProxyArg(None));
        }
        if let Ok(net) = IpNet::from_str(text) {
            return Ok(TrustedProxyArg(Some(net.trunc())));
        }
        IpAddr::from_str(text)
            .map(|ip| TrustedProxyArg(Some(IpNet::from(ip))))
            .map_err(|_| format!("`{text}` is not an address, a CIDR block or `none`"))
    }
}

impl<'de> serde::Deserialize<'de> for TrustedProxyArg {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a request came from. Every request carries one in its extensions (`listener.rs` puts
/// it there); handlers, the sign-in limiter and the log spans use `ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr {
    /// The client: the TCP peer's address, or the one a trusted proxy vouched for.
    pub(crate) ip: IpAddr,
    /// The TCP peer: the proxy itself when `proxied`.
    pub(crate) peer: SocketAddr,
    /// Whether `ip` came from a trusted proxy (a PROXY header or a forwarding header).
    pub(crate) proxied: bool,
}

impl ClientAddr {
    /// A client that connected directly.
    pub(crate) fn direct(peer: SocketAddr) -> ClientAddr {
        ClientAddr {
            ip: peer.ip().to_canonical(),
            peer,
            proxied: false,
        }
    }

    /// The proxy's address for the logs, when there is one.
    pub(crate) fn proxy(&self) -> Option<SocketAddr> {
        self.proxied.then_some(self.peer)
    }

    /// Whether the per-address cap leaves this client alone: a process on this machine that no
    /// proxy forwarded (a load test, a local script) is bounded by the total cap only.
    pub(crate) fn is_local(&self) -> bool {
        !self.proxied && self.ip.is_loopback()
    }
}

/// Which forwarding header names the client (`--forwarded-header`). Only that one is read; the
/// other is ignored, because a proxy passes a header it does not write through untouched, and a
/// client could then choose its own address in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For`, which nginx (`$proxy_add_x_forwarded_for`), haproxy (`option
    /// forwardfor`) and the cloud balancers append to.
    #[default]
    #[value(name = "xff")]
    #[serde(rename = "xff")]
    XForwardedFor,
    /// RFC 7239 `Forwarded`, for a proxy that appends only to it.
    #[value(name = "forwarded")]
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// What a trusted peer's forwarding header says about the client of one request: `None` when
/// the header is absent; otherwise the rightmost address no trusted hop can vouch beyond, or
/// `Some(None)` when the header names no address to believe. Call it only for a trusted peer.
pub(crate) fn forwarded_client(
    headers: &HeaderMap,
    trusted: &TrustedProxies,
    header: ForwardedHeader,
) -> Option<Option<IpAddr>> {
    match header {
        ForwardedHeader::XForwardedFor => {
            if !headers.contains_key(&X_FORWARDED_FOR) {
                return None;
            }
            let hops = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
                .map(|hop| parse_xff_hop(hop.trim_ascii()));
            Some(rightmost_untrusted(hops, trusted))
        }
        ForwardedHeader::Forwarded => {
            if !headers.contains_key(FORWARDED) {
                return None;
            }
            let hops = headers
                .get_all(FORWARDED)
                .iter()
                .flat_map(|value| split_forwarded_elements(value.as_bytes()))
                .map(|element| element.and_then(forwarded_for));
            Some(rightmost_untrusted(hops, trusted))
        }
    }
}

/// Walks the hops from the right and returns the first one that is not a trusted proxy. A hop
/// that cannot be parsed (`unknown`, an obfuscated name, an element without `for=`, garbage)
/// ends the walk: nothing to its left can be vouched for, so the last trusted hop is taken as
/// the client. When every hop is trusted the leftmost is the client.
fn rightmost_untrusted(
    hops: impl Iterator<Item = Option<IpAddr>>,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    // The header lists are small (one entry per hop); collecting lets us walk from the right.
    let hops: Vec<Option<IpAddr>> = hops.collect();
    let mut client = None;
    for hop in hops.into_iter().rev() {
        let Some(ip) = hop else { break };
        let ip = ip.to_canonical();
        client = Some(ip);
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_xff_hop(hop: &[u8]) -> Option<IpAddr> {
    parse_node(std::str::from_utf8(hop).ok()?)
}

/// An address as it appears in a forwarding header: bare, bracketed IPv6, with or without port.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(text) {
        return Some(ip);
    }
    if let Ok(addr) = SocketAddr::from_str(text) {
        return Some(addr.ip());
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    IpAddr::from_str(inner).ok()
}

/// Splits `value` at each `separator` outside a quoted string, honouring the `\` escapes of
/// quoted strings (RFC 7230 quoted-pair). The last part is `None` when its quote never closes:
/// it swallowed the rest of the value, so it cannot be trusted to end where it seems to.
fn split_outside_quotes(value: &[u8], separator: u8) -> Vec<Option<&[u8]>> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (index, &byte) in value.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match byte {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if byte == separator && !quoted => {
                parts.push(Some(&value[start..index]));
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push((!quoted).then_some(&value[start..]));
    parts
}

/// The comma-separated elements of one `Forwarded` value (RFC 7239 section 4); `None` for an
/// element whose quote never closes.
fn split_forwarded_elements(value: &[u8]) -> Vec<Option<&[u8]>> {
    split_outside_quotes(value, b',')
}

/// The address in the `for=` of one `Forwarded` element; `None` when there is none to believe:
/// no `for=`, two of them, an unknown or obfuscated node (`unknown`, `_hidden`), or a malformed
/// pair.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    let mut node = None;
    for pair in split_outside_quotes(element, b';') {
        let pair = std::str::from_utf8(pair?).ok()?.trim();
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("for") {
            continue;
        }
        if node.is_some() {
            return None;
        }
        node = Some(unquote(value.trim())?);
    }
    parse_node(&node?)
}

/// A `Forwarded` value as a token, or a quoted string with its escapes resolved.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return (!value.contains(['"', '\\'])).then(|| value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut text = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.push(chars.next()?),
            '"' => return None,
            c => text.push(c),
        }
    }
    Some(text)
}

/// What a PROXY header said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyHeader {
    /// The balancer relays a client at this address.
    Client(SocketAddr),
    /// The balancer speaks for itself (v2 `LOCAL`: its own health check, say).
    Local,
    /// The balancer relays a connection whose source it cannot name (v1 `UNKNOWN`, a v2 `PROXY`
    /// of a unix socket or an unspecified family): its bytes are someone else's, so they are
    /// counted under the balancer's address and their forwarding headers are not believed.
    Unknown,
}

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProxyHeaderError {
    #[error("malformed PROXY header")]
    Malformed,
    #[error("PROXY header longer than {MAX_PROXY_HEADER_BYTES} bytes")]
    TooLong,
}

/// Whether `bytes` can still become a PROXY header (v1 `PROXY ` or the v2 signature): a plain
/// HTTP request from a trusted peer is served as it is.
pub(crate) fn may_be_proxy_header(bytes: &[u8]) -> bool {
    let v1 = b"PROXY ";
    let v2 = ppp::v2::PROTOCOL_PREFIX;
    let n1 = bytes.len().min(v1.len());
    let n2 = bytes.len().min(v2.len());
    bytes[..n1] == v1[..n1] || bytes[..n2] == v2[..n2]
}

/// Parses a PROXY header at the start of `bytes`: `Ok(None)` when more bytes are needed,
/// otherwise the header and its length in bytes. Call it only when [`may_be_proxy_header`].
pub(crate) fn parse_proxy_header(
    bytes: &[u8],
) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    use ppp::PartialResult;
    let parsed = ppp::HeaderResult::parse(bytes);
    if parsed.is_incomplete() {
        // ppp calls a v1 header with missing fields incomplete even once its line has ended;
        // past the CRLF no byte can complete it.
        let v1_line_ended = bytes.starts_with(b"PROXY ") && bytes.windows(2).any(|w| w == b"\r\n");
        return if v1_line_ended {
            Err(ProxyHeaderError::Malformed)
        } else if bytes.len() >= MAX_PROXY_HEADER_BYTES {
            Err(ProxyHeaderError::TooLong)
        } else {
            Ok(None)
        };
    }
    match parsed {
        ppp::HeaderResult::V1(Ok(header)) => {
            let header_len = header.header.len();
            let said = match header.addresses {
                ppp::v1::Addresses::Tcp4(ip) => ProxyHeader::Client(SocketAddr::new(
                    IpAddr::V4(ip.source_address),
                    ip.source_port,
                )),
                ppp::v1::Addresses::Tcp6(ip) => ProxyHeader::Client(SocketAddr::new(
                    IpAddr::V6(ip.source_address),
                    ip.source_port,
                )),
                ppp::v1::Addresses::Unknown => ProxyHeader::Unknown,
            };
            Ok(Some((said, header_len)))
        }
        ppp::HeaderResult::V2(Ok(header)) => {
            let header_len = header.len();
            if header_len > MAX_PROXY_HEADER_BYTES {
                return Err(ProxyHeaderError::TooLong);
            }
            let said = match (header.command, header.addresses) {
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(ip)) => ProxyHeader::Client(
                    SocketAddr::new(IpAddr::V4(ip.source_address), ip.source_port),
                ),
                (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(ip)) => ProxyHeader::Client(
                    SocketAddr::new(IpAddr::V6(ip.source_address), ip.source_port),
                ),
                (ppp::v2::Command::Local, _) => ProxyHeader::Local,
                // A family we do not route (unix sockets, unspecified).
                (ppp::v2::Command::Proxy, _) => ProxyHeader::Unknown,
            };
            Ok(Some((said, header_len)))
        }
        ppp::HeaderResult::V1(Err(_)) | ppp::HeaderResult::V2(Err(_)) => {
            Err(ProxyHeaderError::Malformed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip literal")
    }

    /// One header line of a test case: name and value.
    type Header = (&'static str, &'static str);

    fn headers(pairs: &[Header]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            nets.iter()
                .map(|net| {
                    net.parse::<TrustedProxyArg>()
                        .expect("net")
                        .0
                        .expect("some")
                })
                .collect(),
        )
    }

    #[test]
    fn the_rightmost_untrusted_forwarded_for_address_is_the_client() {
        use ForwardedHeader::{Forwarded, XForwardedFor};
        let proxies = trusted(&["10.0.0.0/8", "127.0.0.1"]);
        // The header read, the request's headers, and what it names (`None`: no header).
        type Case<'a> = (ForwardedHeader, &'a [Header], Option<Option<&'a str>>);
        let cases: &[Case] = &[
            (
                XForwardedFor,
                &[("x-forwarded-for", "203.0.113.7")],
                Some(Some("203.0.113.7")),
            ),
            // A client's forged entry sits to the left of the one the proxy appended.
            (
                XForwardedFor,
                &[("x-forwarded-for", "1.2.3.4, 203.0.113.7")],
                Some(Some("203.0.113.7")),
            ),
            (
                XForwardedFor,
                &[("x-forwarded-for", "1.2.3.4, 203.0.113.7, 10.1.2.3")],
                Some(Some("203.0.113.7")),
            ),
            // Several header lines form one list, in order.
            (
                XForwardedFor,
                &[
                    ("x-forwarded-for", "1.2.3.4"),
                    ("x-forwarded-for", "203.0.113.7 , 10.0.0.9"),
                ],
                Some(Some("203.0.113.7")),
            ),
            (
                XForwardedFor,
                &[("x-forwarded-for", "[2001:db8::1]:4711")],
                Some(Some("2001:db8::1")),
            ),
            (
                XForwardedFor,
                &[("x-forwarded-for", "::ffff:203.0.113.7")],
                Some(Some("203.0.113.7")),
            ),
            // Every hop trusted: the leftmost is the client.
            (
                XForwardedFor,
                &[("x-forwarded-for", "10.0.0.1, 10.0.0.2")],
                Some(Some("10.0.0.1")),
            ),
            // Garbage ends the walk at the last trusted hop.
            (
                XForwardedFor,
                &[("x-forwarded-for", "203.0.113.7, garbage, 10.0.0.2")],
                Some(Some("10.0.0.2")),
            ),
            (XForwardedFor, &[("x-forwarded-for", "garbage")], Some(None)),
            // Only the configured header is read: a client's Forwarded, passed through by a
            // proxy that appends to X-Forwarded-For, is ignored, and the other way round.
            (XForwardedFor, &[("forwarded", "for=6.6.6.6")], None),
            (
                XForwardedFor,
                &[
                    ("forwarded", "for=6.6.6.6"),
                    ("x-forwarded-for", "203.0.113.7"),
                ],
                Some(Some("203.0.113.7")),
            ),
            (Forwarded, &[("x-forwarded-for", "6.6.6.6")], None),
            (
                Forwarded,
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("forwarded", "for=203.0.113.7"),
                ],
                Some(Some("203.0.113.7")),
            ),
            (
                Forwarded,
                &[(
                    "forwarded",
                    r#"for=198.51.100.1;proto=https, for="[2001:db8:cafe::17]:4711""#,
                )],
                Some(Some("2001:db8:cafe::17")),
            ),
            (
                Forwarded,
                &[("forwarded", "For=198.51.100.1, for=10.0.0.3;by=x")],
                Some(Some("198.51.100.1")),
            ),
            (Forwarded, &[("forwarded", "for=unknown")], Some(None)),
            (Forwarded, &[("forwarded", "proto=https")], Some(None)),
            // An escaped quote does not end a quoted string: the proxy's element is still its
            // own, and the client's 6.6.6.6 is never reached.
            (
                Forwarded,
                &[("forwarded", r#"for=6.6.6.6, x="\",y", for=203.0.113.7"#)],
                Some(Some("203.0.113.7")),
            ),
            (
                Forwarded,
                &[("forwarded", r#"for=6.6.6.6, x="\",y", for=10.0.0.3"#)],
                Some(Some("10.0.0.3")),
            ),
            // A quoted semicolon is part of its value, not a new pair.
            (
                Forwarded,
                &[("forwarded", r#"x="a;for=7.7.7.7", for=10.0.0.3"#)],
                Some(Some("10.0.0.3")),
            ),
            (
                Forwarded,
                &[("forwarded", r#"x="a;for=7.7.7.7";for=203.0.113.7"#)],
                Some(Some("203.0.113.7")),
            ),
            // An element without `for=`, or whose quote never closes, ends the walk.
            (
                Forwarded,
                &[("forwarded", "for=6.6.6.6, proto=http, for=10.0.0.3")],
                Some(Some("10.0.0.3")),
            ),
            (
                Forwarded,
                &[("forwarded", r#"for=6.6.6.6, x="open, for=10.0.0.3"#)],
                Some(None),
            ),
            (
                Forwarded,
                &[("forwarded", r#"for=6.6.6.6, x="\", for=10.0.0.3"#)],
                Some(None),
            ),
            (
                Forwarded,
                &[("forwarded", "for=1.2.3.4;for=5.6.7.8")],
                Some(None),
            ),
            (XForwardedFor, &[], None),
            (Forwarded, &[], None),
        ];
        for (header, pairs, expected) in cases {
            assert_eq!(
                forwarded_client(&headers(pairs), &proxies, *header),
                expected.map(|named| named.map(ip)),
                "{header:?} {pairs:?}"
            );
        }
    }

    #[test]
    fn trusted_proxy_arguments_are_cidrs_addresses_or_none() {
        assert_eq!("none".parse::<TrustedProxyArg>(), Ok(TrustedProxyArg(None)));
        assert_eq!("".parse::<TrustedProxyArg>(), Ok(TrustedProxyArg(None)));
        let net = "10.1.2.3/8".parse::<TrustedProxyArg>().expect("cidr").0;
        assert_eq!(net.map(|n| n.to_string()), Some("10.0.0.0/8".to_owned()));
        let one = "::1".parse::<TrustedProxyArg>().expect("address").0;
        assert_eq!(one.map(|n| n.to_string()), Some("::1/128".to_owned()));
        assert!("10.0.0.0/33".parse::<TrustedProxyArg>().is_err());
        assert!("localhost".parse::<TrustedProxyArg>().is_err());
        let loopback = TrustedProxies::loopback();
        assert!(loopback.contains(ip("127.0.0.2")));
        assert!(loopback.contains(ip("::ffff:127.0.0.1")));
        assert!(loopback.contains(ip("::1")));
        assert!(!loopback.contains(ip("10.0.0.1")));
    }

    #[test]
    fn proxy_headers_v1_and_v2_give_the_source_address_and_their_length() {
        let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n";
        assert!(may_be_proxy_header(v1));
        let (said, len) = parse_proxy_header(v1).expect("valid").expect("complete");
        assert_eq!(
            said,
            ProxyHeader::Client("203.0.113.7:5555".parse().unwrap())
        );
        assert_eq!(&v1[len..len + 3], b"GET");
        assert_eq!(parse_proxy_header(&v1[..20]), Ok(None));
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse_proxy_header(unknown),
            Ok(Some((ProxyHeader::Unknown, unknown.len())))
        );

        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:4711".parse::<SocketAddr>().unwrap(),
                "[::1]:80".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .expect("v2 header");
        let mut bytes = v2.clone();
        bytes.extend_from_slice(b"GET");
        assert!(may_be_proxy_header(&bytes[..5]));
        let (said, len) = parse_proxy_header(&bytes)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            said,
            ProxyHeader::Client("[2001:db8::7]:4711".parse().unwrap())
        );
        assert_eq!(len, v2.len());
        assert_eq!(parse_proxy_header(&v2[..10]), Ok(None));

        // A relayed unix-socket connection names no client; a LOCAL one is the balancer's own.
        let unix = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            ppp::v2::Unix::new([0; 108], [0; 108]),
        )
        .build()
        .expect("v2 unix header");
        assert_eq!(
            parse_proxy_header(&unix),
            Ok(Some((ProxyHeader::Unknown, unix.len())))
        );
        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .expect("v2 local header");
        assert_eq!(
            parse_proxy_header(&local),
            Ok(Some((ProxyHeader::Local, local.len())))
        );

        assert!(!may_be_proxy_header(b"GET / HTTP/1.1\r\n"));
        assert_eq!(
            parse_proxy_header(b"PROXY TCP4 nonsense\r\n"),
            Err(ProxyHeaderError::Malformed)
        );
    }
}
