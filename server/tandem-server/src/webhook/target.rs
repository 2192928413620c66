//! Webhook targets: a URL taken apart by the WHATWG parser, its host resolved, and every address
//! checked against the internal ranges a webhook may not reach unless `--webhook-allow-private`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// A webhook URL taken apart.
pub(super) struct Target {
    pub(super) host: Host<String>,
    pub(super) port: u16,
    /// The URL as parsed: the delivery client sends to it, so it reads it the same way.
    pub(super) url: Url,
}

impl Target {
    /// Parses and checks a webhook URL: http or https, a host, no user name or password.
    pub(super) fn parse(text: &str) -> Result<Target, String> {
        let url = Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err("the URL must start with http:// or https://".into()),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the URL must not contain a user name or password".into());
        }
        let host = url.host().ok_or("the URL has no host")?.to_owned();
        // `port()` is `None` for the scheme's default, which the parser drops.
        let port = url.port().unwrap_or(if https { 443 } else { 80 });
        Ok(Target { host, port, url })
    }

    /// The host as TLS names it: a DNS name, or an address without brackets.
    #[cfg(test)]
    pub(super) fn host_name(&self) -> String {
        host_name(&self.host)
    }

    /// `host[:port]` as the `Host` header sends it (an IPv6 host in brackets, a default port
    /// left out).
    #[cfg(test)]
    pub(super) fn host_header(&self) -> String {
        let host_text = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(port) => format!("{host_text}:{port}"),
            None => host_text.to_owned(),
        }
    }

    /// Path and query as the request line sends them; a fragment is never sent.
    #[cfg(test)]
    pub(super) fn path(&self) -> String {
        let mut path = self.url.path().to_owned();
        if let Some(query) = self.url.query() {
            path.push('?');
            path.push_str(query);
        }
        path
    }
}

/// A host as TLS names it: a DNS name, or an address without brackets.
fn host_name(host: &Host<String>) -> String {
    match host {
        Host::Domain(name) => name.clone(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    }
}

/// Why a webhook target cannot be sent to.
#[derive(Debug, thiserror::Error)]
pub(super) enum TargetError {
    /// The host does not resolve (yet, or any more).
    #[error("resolving {host}: {detail}")]
    Unresolved { host: String, detail: String },
    /// The host is or resolves to an internal address and `--webhook-allow-private` is off.
    #[error("{host} ({addr}) is a {kind} address; refused (see --webhook-allow-private)")]
    Refused {
        host: String,
        addr: IpAddr,
        kind: &'static str,
    },
}

/// The addresses of `host` (with `port`), every one of them checked unless `allow_private`.
pub(super) async fn resolve(
    host: &Host<String>,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, TargetError> {
    let addrs: Vec<SocketAddr> = match host {
        Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(*ip), port)],
        Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(*ip), port)],
        Host::Domain(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|error| TargetError::Unresolved {
                host: name.clone(),
                detail: error.to_string(),
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(TargetError::Unresolved {
            host: host_name(host),
            detail: "no address".into(),
        });
    }
    if !allow_private {
        for addr in &addrs {
            if let Some(kind) = refused_kind(addr.ip()) {
                return Err(TargetError::Refused {
                    host: host_name(host),
                    addr: addr.ip(),
                    kind,
                });
            }
        }
    }
    Ok(addrs)
}

/// The addresses `name` resolves to (with port 0), every one of them checked unless
/// `allow_private`: the resolver of the delivery client.
pub(super) async fn resolve_name(
    name: &str,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, TargetError> {
    resolve(&Host::Domain(name.to_owned()), 0, allow_private).await
}

/// What kind of internal address `ip` is, if it is one a webhook may not reach by default:
/// loopback, private (RFC 1918, IPv6 unique local), link-local, shared (RFC 6598, carrier-grade
/// NAT), unspecified or "this network", broadcast and reserved (240.0.0.0/4), multicast. An IPv6
/// address that embeds an IPv4 one (mapped, compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`)
/// is judged by the IPv4 address it reaches.
fn refused_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => refused_kind_v4(ip),
        IpAddr::V6(ip) => refused_kind_v6(ip),
    }
}

fn refused_kind_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared")
    } else if a == 198 && (18..20).contains(&b) {
        // 198.18.0.0/15, for benchmarking network devices: lab and internal gear lives there.
        Some("benchmarking")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        // 192.0.0.0/24, IETF protocol assignments (DS-Lite and NAT64 gateways among them).
        Some("protocol assignment")
    } else if a == 0 {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if a >= 240 {
        // 255.255.255.255 and the rest of 240.0.0.0/4.
        Some("broadcast or reserved")
    } else {
        None
    }
}

fn refused_kind_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    let embedded = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if segments[..5] == [0; 5] && (segments[5] == 0xffff || segments[5] == 0) {
        return refused_kind_v4(embedded(segments[6], segments[7]));
    }
    // NAT64 reaches the IPv4 address in its last 32 bits, 6to4 the one in bits 16..48.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return refused_kind_v4(embedded(segments[6], segments[7]));
    }
    // 64:ff9b:1::/48, NAT64 for local use (RFC 8215): a translator inside the network.
    if segments[..3] == [0x64, 0xff9b, 1] {
        return Some("private");
    }
    if segments[0] == 0x2002 {
        return refused_kind_v4(embedded(segments[1], segments[2]));
    }
    match segments[0] {
        first if first & 0xfe00 == 0xfc00 => Some("private"),
        first if first & 0xffc0 == 0xfe80 => Some("link-local"),
        // Site-local, deprecated but still routed inside some networks.
        first if first & 0xffc0 == 0xfec0 => Some("private"),
        first if first & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

/// The check of a new registration's target: refused if it is or resolves to an internal
/// address (unless allowed). A name that does not resolve yet is accepted; every attempt
/// resolves and checks it again.
pub(super) async fn check_new_target(url: &str, allow_private: bool) -> Result<(), String> {
    let target = Target::parse(url).map_err(|error| format!("url: {error}"))?;
    match resolve(&target.host, target.port, allow_private).await {
        Ok(_) | Err(TargetError::Unresolved { .. }) => Ok(()),
        Err(error @ TargetError::Refused { .. }) => Err(format!("url: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn urls_with_bad_ports_schemes_or_credentials_are_refused() {
        for bad in [
            "http://example.test:99999/",
            "http://example.test:65536/",
            "http://example.test:-1/",
            "http://example.test:80a/",
            "http://example.test:+80/",
            "ftp://example.test/",
            "javascript:alert(1)",
            "http://user:pass@example.test/",
            "http://user@example.test/",
            "http://",
            "http://:80/",
            "not a url",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        let target = Target::parse("http://example.test:80/").unwrap();
        assert_eq!(
            (target.port, target.host_header().as_str()),
            (80, "example.test")
        );
        let target = Target::parse("http://example.test:8080").unwrap();
        assert_eq!(
            (
                target.port,
                target.host_header().as_str(),
                target.path().as_str()
            ),
            (8080, "example.test:8080", "/")
        );
    }

    #[test]
    fn internal_addresses_are_refused_in_every_spelling() {
        let refused = [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "198.18.0.1",
            "198.19.255.254",
            "192.0.0.8",
            "64:ff9b:1::a00:1",
        ];
        for ip in refused {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(refused_kind(ip).is_some(), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "100.128.0.1",
            "198.20.0.1",
            "192.0.2.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(refused_kind(ip), None, "{ip}");
        }
        // The WHATWG parser reads the shorthand forms a client would connect to.
        for url in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://[::ffff:7f00:1]/",
        ] {
            let target = Target::parse(url).unwrap();
            let ip = match target.host {
                Host::Ipv4(ip) => IpAddr::V4(ip),
                Host::Ipv6(ip) => IpAddr::V6(ip),
                Host::Domain(name) => panic!("{url} parsed as the name {name}"),
            };
            assert_eq!(refused_kind(ip), Some("loopback"), "{url}");
        }
    }
}
