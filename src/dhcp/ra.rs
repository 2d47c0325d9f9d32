//! Router advertisements (RFC 4861) for the VM, sent from the bridge's link-local
//! address: periodically, and in answer to a Router Solicitation. The pure part builds
//! the advertisement from a [`DhcpV6Config`] ([`advertisement`]) and recognises a
//! solicitation ([`is_router_solicitation`]); [`RaSender`] owns the raw ICMPv6 socket.
//!
//! What the VM learns: the bridge is its default router (router lifetime), addresses
//! come from DHCPv6 (managed flag, and other-config for DNS by DHCPv6), the pod's prefix
//! is on-link but not for SLAAC (the autonomous flag stays off: the VM takes exactly the
//! pod's address), the pod's MTU, and the DNS servers and search list (RDNSS and DNSSL,
//! RFC 8106) for guests without a DHCPv6 client.
//!
//! The raw socket needs CAP_NET_RAW in the pod's network namespace.

use crate::dhcp::stats::unix_now;
use crate::dhcp::v6::DhcpV6Config;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockProtocol, SockType, setsockopt, socket, sockopt,
};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// ICMPv6 types.
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;

/// All-nodes and all-routers link-local groups.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// Unsolicited advertisements this often (RFC 4861's MaxRtrAdvInterval is 4-1800 s).
pub const INTERVAL: Duration = Duration::from_secs(120);
/// The least time between two multicast advertisements answering solicitations.
pub const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);
/// How long the VM keeps the bridge as default router, and the DNS options: well over
/// three intervals (RFC 8106 5.1), so one lost advertisement changes nothing.
pub const ROUTER_LIFETIME_SECS: u16 = 1800;

/// Managed (addresses by DHCPv6) and other-config (more by DHCPv6) flags.
const FLAG_MANAGED: u8 = 0x80;
const FLAG_OTHER: u8 = 0x40;
/// Prefix information: on-link flag (the autonomous flag 0x40 stays off).
const PREFIX_ON_LINK: u8 = 0x80;

/// The router advertisement for the VM described by `config`, ICMPv6 header included
/// (the kernel fills the checksum of a raw ICMPv6 socket).
pub fn advertisement(config: &DhcpV6Config) -> Vec<u8> {
    let mut p = vec![
        ROUTER_ADVERTISEMENT,
        0,
        0,
        0,  // checksum, by the kernel
        64, // current hop limit
        FLAG_MANAGED | FLAG_OTHER,
    ];
    p.extend(ROUTER_LIFETIME_SECS.to_be_bytes());
    p.extend(0u32.to_be_bytes()); // reachable time: unspecified
    p.extend(0u32.to_be_bytes()); // retrans timer: unspecified
    // Source link-layer address (type 1).
    p.extend([1, 1]);
    p.extend(config.server_mac.0);
    // MTU (type 5).
    p.extend([5, 1, 0, 0]);
    p.extend(config.mtu.to_be_bytes());
    // Prefix information (type 3), unless the pod's address is a lone /128.
    if config.prefix < 128 {
        p.extend([3, 4, config.prefix, PREFIX_ON_LINK]);
        p.extend(config.lease_secs.to_be_bytes()); // valid
        p.extend(config.lease_secs.to_be_bytes()); // preferred
        p.extend(0u32.to_be_bytes());
        p.extend(network(config.address, config.prefix).octets());
    }
    let dns_lifetime = u32::from(ROUTER_LIFETIME_SECS);
    // RDNSS (type 25): length in 8-byte units, 1 + 2 per address.
    if !config.dns.is_empty() {
        let len = u8::try_from(1 + 2 * config.dns.len()).unwrap_or(u8::MAX);
        let dns = &config.dns[..usize::from((len - 1) / 2)];
        p.extend([25, len, 0, 0]);
        p.extend(dns_lifetime.to_be_bytes());
        for a in dns {
            p.extend(a.octets());
        }
    }
    // DNSSL (type 31): names in DNS wire format, zero-padded to 8 bytes.
    if !config.search.is_empty() {
        let mut names = Vec::new();
        for d in &config.search {
            for label in d.split('.') {
                // check_search_domain kept labels of 1-63 bytes.
                names.push(u8::try_from(label.len()).unwrap_or(63));
                names.extend(label.as_bytes());
            }
            names.push(0);
        }
        names.resize(names.len().div_ceil(8) * 8, 0);
        let body = 8 + names.len();
        if let Ok(len) = u8::try_from(body / 8) {
            p.extend([31, len, 0, 0]);
            p.extend(dns_lifetime.to_be_bytes());
            p.extend(names);
        }
    }
    p
}

/// Whether an ICMPv6 message (header first, as a raw socket returns it) is a Router
/// Solicitation (RFC 4861 6.1.1: code 0, at least 8 bytes).
pub fn is_router_solicitation(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] == ROUTER_SOLICITATION && packet[1] == 0
}

fn network(addr: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0);
    Ipv6Addr::from(u128::from(addr) & mask)
}

/// What the sender did, for the control API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RaStats {
    pub bridge: String,
    /// Unsolicited advertisements sent.
    pub periodic: u64,
    /// Router Solicitations heard.
    pub solicitations: u64,
    /// Advertisements sent in answer to one.
    pub solicited: u64,
    pub send_errors: u64,
    /// Unix seconds of the last advertisement sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sent_at: Option<u64>,
}

/// The live RA counters, shared between the sender and readers.
pub type RaStatsHandle = crate::dhcp::StatsHandle<RaStats>;

/// A failure of the RA sender's socket.
#[derive(Debug, thiserror::Error)]
#[error("router advertisements on bridge {bridge}: {what}: {source}")]
pub struct RaError {
    pub bridge: String,
    pub what: &'static str,
    pub source: io::Error,
}

/// The raw ICMPv6 socket on the bridge and the advertisement it sends.
pub struct RaSender {
    socket: std::net::UdpSocket,
    ifindex: u32,
    bridge: String,
    packet: Vec<u8>,
    stats: RaStatsHandle,
}

impl RaSender {
    /// Open the socket on `config.bridge` (hop limit 255, in the all-routers group).
    /// Call it inside the pod's network namespace.
    pub fn bind(config: &DhcpV6Config) -> Result<Self, RaError> {
        let bridge = config.bridge.clone();
        let err = |what: &'static str, e: nix::errno::Errno| RaError {
            bridge: bridge.clone(),
            what,
            source: e.into(),
        };
        let ifindex =
            nix::net::if_::if_nametoindex(bridge.as_str()).map_err(|e| err("if_nametoindex", e))?;
        let fd = socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::IcmpV6,
        )
        .map_err(|e| err("raw ICMPv6 socket (needs CAP_NET_RAW)", e))?;
        setsockopt(&fd, sockopt::BindToDevice, &OsString::from(&bridge))
            .map_err(|e| err("SO_BINDTODEVICE", e))?;
        // RFC 4861 6.1.2: a receiver drops neighbour discovery with a hop limit below 255.
        setsockopt(&fd, sockopt::Ipv6MulticastHops, &255)
            .map_err(|e| err("IPV6_MULTICAST_HOPS", e))?;
        setsockopt(&fd, sockopt::Ipv6Ttl, &255).map_err(|e| err("IPV6_UNICAST_HOPS", e))?;
        // A UdpSocket is only the fd's carrier here: tokio's UdpSocket reads and writes
        // any datagram socket, and a raw socket is one.
        let socket = std::net::UdpSocket::from(fd);
        let io_err = |what: &'static str, source: io::Error| RaError {
            bridge: bridge.clone(),
            what,
            source,
        };
        socket
            .join_multicast_v6(&ALL_ROUTERS, ifindex)
            .map_err(|e| io_err("join ff02::2", e))?;
        // Our own advertisements need not come back to us.
        socket
            .set_multicast_loop_v6(false)
            .map_err(|e| io_err("IPV6_MULTICAST_LOOP", e))?;
        let stats = RaStatsHandle::default();
        stats.update(|s| s.bridge.clone_from(&bridge));
        Ok(RaSender {
            socket,
            ifindex,
            packet: advertisement(config),
            bridge,
            stats,
        })
    }

    pub fn stats(&self) -> RaStatsHandle {
        self.stats.clone()
    }

    /// Advertise now, every [`INTERVAL`], and on a Router Solicitation, until the future
    /// is dropped. Every advertisement goes to all nodes (the VM is the only other node
    /// on the bridge; the anti-spoofing rules keep it off the pod network): measured,
    /// unicast answers to the solicitor's link-local address did not reach a guest.
    pub async fn run(self) -> Result<(), RaError> {
        let bridge = self.bridge.clone();
        let socket = tokio::net::UdpSocket::from_std(self.socket).map_err(|source| RaError {
            bridge: bridge.clone(),
            what: "register with the runtime",
            source,
        })?;
        info!(%bridge, "sending router advertisements");
        let all_nodes = SocketAddrV6::new(ALL_NODES, 0, 0, self.ifindex);
        let mut tick = tokio::time::interval(INTERVAL);
        let mut buf = vec![0u8; 2048];
        let mut last_sent: Option<Instant> = None;
        loop {
            let (to, solicited) = tokio::select! {
                _ = tick.tick() => (all_nodes, false),
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, std::net::SocketAddr::V6(from))) if is_router_solicitation(&buf[..n]) => {
                        self.stats.update(|s| s.solicitations += 1);
                        // RFC 4861 6.2.6: at most one multicast answer per 3 s; the
                        // solicitor asks again if it missed the last advertisement.
                        if last_sent.is_some_and(|t: Instant| t.elapsed() < MIN_DELAY_BETWEEN_RAS) {
                            debug!(%bridge, %from, "router solicitation within 3 s of an advertisement: not answered");
                            continue;
                        }
                        (all_nodes, true)
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        warn!(%bridge, error = %e, "ICMPv6 receive failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let sent = socket.send_to(&self.packet, to).await;
            last_sent = Some(Instant::now());
            let now = unix_now();
            match &sent {
                Ok(_) => debug!(%bridge, %to, solicited, "router advertisement sent"),
                Err(e) => warn!(%bridge, %to, error = %e, "router advertisement not sent"),
            }
            self.stats.update(|s| match sent {
                Ok(_) => {
                    s.last_sent_at = Some(now);
                    if solicited {
                        s.solicited += 1;
                    } else {
                        s.periodic += 1;
                    }
                }
                Err(_) => s.send_errors += 1,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DhcpV6Config {
        DhcpV6Config::from_facts(
            &crate::dhcp::v4::tests::facts(),
            "k6t-eth0",
            "02:00:00:00:00:01".parse().unwrap(),
            "52:54:00:12:34:56".parse().unwrap(),
        )
        .unwrap()
    }

    /// The options of an advertisement, by type, as (type, body after type and length).
    fn options(p: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = &p[16..];
        while !rest.is_empty() {
            let len = usize::from(rest[1]) * 8;
            assert!(len >= 8 && len <= rest.len(), "option length {len}");
            out.push((rest[0], rest[2..len].to_vec()));
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn advertisement_makes_the_bridge_the_router_with_dhcpv6_and_dns() {
        let p = advertisement(&config());
        assert_eq!(&p[..4], &[134, 0, 0, 0]);
        assert_eq!(p[5], FLAG_MANAGED | FLAG_OTHER);
        assert_eq!(u16::from_be_bytes([p[6], p[7]]), ROUTER_LIFETIME_SECS);
        let opts = options(&p);
        let kinds: Vec<u8> = opts.iter().map(|o| o.0).collect();
        assert_eq!(kinds, [1, 5, 3, 25, 31]);
        assert_eq!(opts[0].1, [2, 0, 0, 0, 0, 1]);
        assert_eq!(opts[1].1[2..], 1450u32.to_be_bytes());
        let prefix = &opts[2].1;
        assert_eq!((prefix[0], prefix[1]), (64, PREFIX_ON_LINK));
        assert_eq!(
            Ipv6Addr::from(<[u8; 16]>::try_from(&prefix[14..30]).unwrap()),
            "fd00::".parse::<Ipv6Addr>().unwrap()
        );
        let rdnss = &opts[3].1;
        assert_eq!(
            Ipv6Addr::from(<[u8; 16]>::try_from(&rdnss[6..22]).unwrap()),
            "fd00::10".parse::<Ipv6Addr>().unwrap()
        );
        let dnssl = &opts[4].1[6..];
        assert!(dnssl.starts_with(b"\x07default\x03svc\x07cluster\x05local\x00\x03svc"));
        assert_eq!(p.len() % 8, 0);
    }

    #[test]
    fn a_lone_128_gets_no_prefix_and_no_dns_no_options() {
        let mut c = config();
        c.prefix = 128;
        c.dns.clear();
        c.search.clear();
        let kinds: Vec<u8> = options(&advertisement(&c)).iter().map(|o| o.0).collect();
        assert_eq!(kinds, [1, 5]);
    }

    #[test]
    fn solicitations_are_recognised() {
        assert!(is_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[133, 0]));
    }
}
